"""One trial: measure a variant (profile, then proxy-train, then attention collapse) and
record the result in the ledger. Grid sweeps (bench.study.runner) and studies (bench.study.search)
both run their trials through ``run_trial``.
"""
from __future__ import annotations

import copy
import dataclasses
import math
import os
import signal
import time
import traceback
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterator

import torch

from bench import console
from bench.collapse import analyse
from bench.config import CollapseConfig, resolve_dtype
from bench.data.loader import Loader
from bench.data.sources import Dataset, Split, load as load_data
from bench.device import environment, is_oom
from bench.errors import BenchError, first_line
from bench.models import build_model, save_weights
from bench.profiling import profile_model
from bench.records import COLLAPSE_SUMMARY, Status
from bench.spec import Sweep, Trial
from bench.study.artifacts import CHECKPOINT, WEIGHTS, TrialFiles, open_store
from bench.study.context import RunContext
from bench.study.ledger import Ledger
from bench.training import Checkpoint, Hooks, train
from bench.variant import variant_label


@contextmanager
def signals_held() -> Iterator[None]:
    """SIGINT and SIGTERM ignored meanwhile (in the main thread; elsewhere a no-op)."""
    try:
        old = {s: signal.signal(s, signal.SIG_IGN) for s in (signal.SIGINT, signal.SIGTERM)}
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)


def measure(trial: Trial, sweep: Sweep, ctx: RunContext, *, data: Dataset | None = None,
            progress: console.SweepProgress | None = None, hooks: Hooks | None = None) -> dict[str, Any]:
    """Profile ``trial``'s variant and (with the sweep's train section) proxy-train it from its
    seed, on ``ctx.device``: one flat record. ``data``: the dataset at the variant's image size.
    Training resumes from ``ctx.checkpoint_path`` if that exists and was made by this very
    trial (variant, seed, data, train settings, versions: bench.training.identity), and writes
    it every epoch; ``resumed`` says whether it did.

    With the sweep's collapse section, the trained model's attention collapse on the first test
    images (and, ``at_init``, the untrained one's); with ``ctx.save_weights``, the trained weights
    kept at ``ctx.weights_path``. ``progress``: told each phase and step. ``hooks``: what the
    caller hears of training (bench.training.Hooks: each epoch, where True stops it — a pruned
    trial —, a resumption's earlier epochs, each checkpoint written); its ``on_step`` is the
    progress display's. ``status`` is complete, diverged or pruned; exceptions propagate.
    """
    variant, seed, device = trial.variant, trial.seed, ctx.device
    profile, train_cfg, collapse = sweep.profile, sweep.train, sweep.collapse
    checkpoint = ctx.checkpoint_path(trial.key) if train_cfg is not None else None
    weights_to = ctx.weights_path(trial.key) if ctx.save_weights and train_cfg is not None else None
    on_step = progress.step if progress is not None else None
    say = progress.phase if progress is not None else (lambda _msg: None)
    torch.manual_seed(seed)
    model = build_model(variant)
    weights = copy.deepcopy(model.state_dict()) if train_cfg is not None else None
    t0 = time.perf_counter()
    record: dict[str, Any] = profile_model(model, variant, profile, device=device, on_progress=say)
    record["time_profile_s"] = time.perf_counter() - t0
    record["status"] = Status.COMPLETE.value
    if train_cfg is not None:
        if data is None:
            raise ValueError("training needs a dataset")
        model.load_state_dict(weights)  # profiling used the model: start from the seeded weights
        torch.manual_seed(seed)         # and the seeded random stream (drop path)
        images = eval_images(data, collapse.images, device) if collapse else None
        if collapse and collapse.at_init:
            say("attention collapse at initialisation")
            _add_collapse(record, model.to(device), images, collapse, prefix="init_")
        say("training")
        t0 = time.perf_counter()
        result = train(model, data, train_cfg, device=device, seed=seed, recipe=sweep.data,
                       hooks=dataclasses.replace(hooks or Hooks(), on_step=on_step),
                       checkpoint=Checkpoint(checkpoint, {"variant": variant.to_dict()}))
        record["resumed"] = result.pop("resumed", False)
        record["time_train_s"] = time.perf_counter() - t0
        if result.pop("diverged"):
            record["status"] = Status.DIVERGED.value
        elif result.pop("stopped"):
            record["status"] = Status.PRUNED.value
        result.pop("stopped", None)
        record.update(result)
        _after_training(record, model, images, collapse, weights_to, say)
    return record


def _after_training(record: dict[str, Any], model: torch.nn.Module, images: torch.Tensor | None,
                    collapse: CollapseConfig | None, weights_to: Path | None, say: Callable[[str], None]) -> None:
    """For a completed training (``measure``): its weights kept at ``weights_to``, then (with
    ``collapse``) its attention collapse on ``images``, into ``record``. Either failing is noted
    in ``record`` (``weights_error``, ``collapse_error``): the trained result stands."""
    if weights_to is not None and record["status"] == Status.COMPLETE:
        try:  # the trained result stands even if its weights cannot be kept
            record["weights"] = str(save_weights(model, weights_to).resolve())
        except OSError as err:
            record["weights_error"] = f"cannot write {weights_to}: {err.strerror or err}"
    if collapse and record["status"] == Status.COMPLETE:
        say("attention collapse")
        try:  # the trained result stands even if its analysis fails
            _add_collapse(record, model, images, collapse)
        except Exception as err:
            record["collapse_error"] = f"{type(err).__name__}: {first_line(err)}"


def load_checked(sweep: Sweep, img: int, ledger: Ledger, quiet: bool = True) -> Dataset:
    """The sweep's data at ``img`` pixels, from where this machine keeps it (bench.config's
    DataConfig.root_path), held to the data the study was made with (Ledger.check_data)."""
    ds = load_data(sweep.data, img, quiet=quiet)
    ledger.check_data(ds.fingerprint, str(sweep.data.root_path))
    return ds


def eval_images(data: Dataset, n: int, device: torch.device) -> torch.Tensor:
    """The fixed evaluation batch: the first ``n`` test images, normalised as in training."""
    first = Split(data.test.rows(slice(0, n)), data.test.labels[:n])
    return next(iter(Loader(first, batch_size=len(first), device=device, train=False)))[0]


def _add_collapse(record: dict[str, Any], model: torch.nn.Module, images: torch.Tensor,
                  cfg: CollapseConfig, prefix: str = "") -> None:
    t0 = time.perf_counter()
    result = analyse(model, images, cfg)
    record[f"{prefix}collapse"] = result
    for key in COLLAPSE_SUMMARY:
        record[f"{prefix}{key}"] = result[key]
    record[f"time_{prefix}collapse_s"] = time.perf_counter() - t0


def result_line(record: dict[str, Any]) -> str:
    """How a finished trial reads in the progress display (rich markup)."""
    status = record["status"]
    if status == Status.FAILED:
        return f"[red]failed[/]: {console.escape(record['error'])}"
    if status == Status.DIVERGED:
        return f"[yellow]diverged[/] (loss {record.get('train_loss')}) after {record.get('steps')} steps"
    parts = [f"{record['param_count']:.3g} M params", f"{record['infer_gmacs']:.3g} GMACs"]
    if record.get("top1") is not None:
        parts.insert(0, f"top-1 {record['top1']:.2f} %")
    parts.append(f"{record['time_trial_s']:.1f} s")
    return ", ".join(parts)


def run_trial(trial: Trial, sweep: Sweep, ctx: RunContext, *, loaded: dict[int, Dataset], ledger: Ledger,
              progress: console.SweepProgress, handle: Any, name: str = "") -> dict[str, Any]:
    """Measure ``trial`` and record it under ``handle``: its result, or its failure (a failed
    trial does not stop the sweep), or, on Ctrl-C, its interruption (then re-raised).
    Each epoch's top-1 goes to the ledger as the epoch ends (``Ledger.report``: an intermediate
    value at step = epoch, from 1); in a study with a pruner, the pruner may stop the trial there.
    ``loaded``: datasets by image size, loaded once per worker; ``name``: the trial as the
    progress display shows it (told first, inside the interruption's handling). Training checkpoints every
    epoch (``ctx.checkpoint_path``); an interrupted trial leaves its checkpoint for whichever
    worker redoes it, a finished one removes it unless ``ctx.keep_checkpoints`` (a failed one
    keeps it: ``--retry-failed`` resumes it)."""
    dev = ctx.device
    checkpoint = ctx.checkpoint_path(trial.key) if sweep.train is not None else None
    objectives = sweep.objective_columns()
    t0 = time.perf_counter()
    # the resolved config: with it, every record stands alone
    base = {"seed": trial.seed, **trial.variant.to_dict(), "sweep": sweep.name,
            "config": {k: v for k, v in sweep.to_dict().items() if k in ("data", "train", "profile", "collapse")}}
    try:
        progress.start(name or variant_label(trial.variant, [], trial.seed))
        data = _trial_data(trial, sweep, loaded, ledger, progress)
        prune = sweep.study is not None and bool(sweep.study.pruner)  # a study with a pruner may stop it early
        on_epoch, on_resume = _reporting(ledger, handle, prune)
        files = trial_files(ctx, ledger)
        upload = None
        if files is not None and checkpoint is not None:
            _fetch_checkpoint(files, trial.key, checkpoint)
            upload = lambda path, epochs: files.upload(handle, path, CHECKPOINT, epochs=epochs)  # noqa: E731
        record = measure(trial, sweep, ctx, data=data, progress=progress,
                         hooks=Hooks(on_epoch=on_epoch, on_resume=on_resume, on_checkpoint=upload))
        if files is not None and record.get("weights"):
            files.upload(handle, Path(record["weights"]), WEIGHTS)
        record = {**base, **record}
    except KeyboardInterrupt:
        with signals_held():  # a second Ctrl-C must not cut the write that records the first
            ledger.interrupt(handle, base)
        raise
    except BenchError as err:  # a dataset that vanished, OOM at batch 1: recorded, the sweep goes on
        record = {**base, "status": Status.FAILED.value, "error": str(err)}
    except Exception as err:
        if os.environ.get("BENCH_DEBUG"):
            traceback.print_exc()
        kind = "out of memory" if is_oom(err) else type(err).__name__
        record = {**base, "status": Status.FAILED.value, "error": f"{kind}: {first_line(err)}"[:500]}
        if is_oom(err) and dev.type == "cuda":
            torch.cuda.empty_cache()
    if record["status"] == Status.FAILED:
        record.update(environment(dev, resolve_dtype(sweep.profile.dtype, dev)))
    record["finished_at"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    record["time_trial_s"] = time.perf_counter() - t0
    ledger.finish(handle, _jsonable(record), objectives)
    if checkpoint is not None and not ctx.keep_checkpoints and record["status"] != Status.FAILED:
        _remove_checkpoints(ctx, ledger, trial.key, checkpoint)
    return record


def _trial_data(trial: Trial, sweep: Sweep, loaded: dict[int, Dataset], ledger: Ledger,
                progress: console.SweepProgress) -> Dataset | None:
    """The dataset ``trial`` trains on (None without the sweep's train section): from ``loaded``
    (by image size), else loaded now (``load_checked``) and kept there for the worker's next trials."""
    if sweep.train is None:
        return None
    img = trial.variant.img_size
    if img not in loaded:
        progress.phase("loading data")
        loaded[img] = load_checked(sweep, img, ledger)
    return loaded[img]


def _remove_checkpoints(ctx: RunContext, ledger: Ledger, key: str, checkpoint: Path) -> None:
    """A recorded trial's checkpoints removed (``run_trial``): this machine's at ``checkpoint``,
    and every checkpoint the trials of point ``key`` left in the study's artifact store."""
    checkpoint.unlink(missing_ok=True)  # recorded: the checkpoint's work is done
    files = trial_files(ctx, ledger)
    if files is not None:  # and every checkpoint the point's trials left in the store
        for t in ledger.queries.trials():
            meta = t.user_attrs.get(CHECKPOINT) if t.user_attrs.get("key") == key else None
            if isinstance(meta, dict):
                files.remove(meta["artifact_id"])


def trial_files(ctx: RunContext, ledger: Ledger) -> TrialFiles | None:
    """The study's artifact store (``ctx.artifacts``, else the one the study was started with),
    or None: files stay in this machine's results folder."""
    where = ctx.artifacts or ledger.study.user_attrs.get("artifacts")
    return TrialFiles(open_store(where), ledger) if where else None


def _fetch_checkpoint(files: TrialFiles, key: str, local: Path) -> None:
    """Bring the newest checkpoint any worker uploaded for point ``key`` beside this machine's
    results, unless the one here is newer; checked against its sha256 (set aside if it fails)."""
    meta = files.newest(key)
    if meta is None:
        return
    if local.is_file() and local.stat().st_mtime >= meta.get("written", 0):
        return
    if files.fetch(meta, local):
        console.info(f"checkpoint of {key} ({meta.get('epochs')} epoch(s)) fetched from the artifact store")


def _reporting(ledger: Ledger, handle: Any, prune: bool) -> tuple[Callable[[int, float, float], bool],
                                                                  Callable[[list[float]], None]]:
    """The training hooks that report a trial's per-epoch top-1 to its ledger: each epoch as it
    ends (asking the pruner only with ``prune``), and, for a training resumed from a checkpoint,
    the epochs it carries over. A resumed trial is a new Optuna trial, so its curve would
    otherwise start at the resumed epoch; those epochs are told, never asked: the pruner spoke
    on them in the run that trained them. Reporting only writes the storage: no random stream
    or training order depends on it."""
    failed: list[str] = []

    def tell(top1: float, epoch: int) -> None:
        """A value only a dashboard reads: a storage hiccup must not fail the trial it shows."""
        try:
            ledger.report(handle, top1, epoch)
        except Exception as err:
            if not failed:  # said once per trial
                console.info(f"epoch {epoch}'s top-1 not stored as an intermediate value ({first_line(err)}); "
                             "the trial goes on, its record keeps every epoch")
            failed.append(str(epoch))

    def on_epoch(epoch: int, top1: float, loss: float) -> bool:
        if prune:  # the pruner reads the stored value: a storage error is the trial's
            return ledger.report(handle, top1, epoch, prune=True)
        tell(top1, epoch)
        return False

    def on_resume(top1_per_epoch: list[float]) -> None:
        for epoch, top1 in enumerate(top1_per_epoch, 1):
            tell(top1, epoch)
    return on_epoch, on_resume


def _jsonable(record: dict[str, Any]) -> dict[str, Any]:
    """Optuna stores user attributes as JSON: no NaN/inf (JSON has none)."""
    def fix(v: Any) -> Any:
        if isinstance(v, float) and not math.isfinite(v):
            return str(v)
        if isinstance(v, list):
            return [fix(x) for x in v]
        if isinstance(v, dict):
            return {k: fix(x) for k, x in v.items()}
        return v
    return {k: fix(v) for k, v in record.items()}
