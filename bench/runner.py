"""Running sweeps: one function measures one variant (profile, then proxy-train); the
sweep runner calls it for every variant × seed not yet in the ledger, records each
result as it lands, and writes the report at the end.
"""
from __future__ import annotations

import copy
import math
import os
import time
import traceback
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import torch

from bench import console
from bench.collapse import SUMMARY, analyse
from bench.data import Dataset, Loader, Split
from bench.errors import BenchError, SpecError
from bench.models import Variant, build_model, save_weights
from bench.profiling import closed_form, environment, is_oom, profile_model, resolve_device, resolve_dtype
from bench.report import report_ledger, variant_label
from bench.spec import SHAPES_SIZES, CollapseConfig, ProfileConfig, Sweep, Trial
from bench.storage import DONE, Ledger, default_url, open_study, safe_url
from bench.training import TrainConfig, train


def measure(variant: Variant, seed: int, *, device: torch.device, profile: ProfileConfig,
            train_cfg: TrainConfig | None = None, data: Dataset | None = None,
            crop_padding: int = 0, flip: bool = False, collapse: CollapseConfig | None = None,
            weights_path: Path | None = None, on_phase: Callable[[str], None] | None = None,
            on_step: Callable[[int, int, float | None], None] | None = None,
            on_epoch: Callable[[int, float, float], bool | None] | None = None) -> dict[str, Any]:
    """Profile ``variant`` and (with ``train_cfg``) proxy-train it from ``seed``: one flat record.

    With ``collapse``, the trained model's attention collapse on the first test images (and,
    ``at_init``, the untrained one's); with ``weights_path``, the trained weights saved there.
    ``on_epoch(epoch, top1, loss)`` returning True stops training (a pruned trial).
    ``status`` is "complete", "diverged" or "pruned"; exceptions propagate to the caller.
    """
    say = on_phase or (lambda _msg: None)
    torch.manual_seed(seed)
    model = build_model(variant)
    weights = copy.deepcopy(model.state_dict()) if train_cfg is not None else None
    t0 = time.perf_counter()
    record: dict[str, Any] = profile_model(
        model, variant, device=device, dtype=resolve_dtype(profile.dtype, device), batch_size=profile.batch_size,
        warmup=profile.warmup, iters=profile.iters, speed=profile.speed, on_progress=say)
    record["time_profile_s"] = time.perf_counter() - t0
    record["status"] = "complete"
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
        result = train(model, data, train_cfg, device=device, seed=seed, crop_padding=crop_padding,
                       flip=flip, on_step=on_step, on_epoch=on_epoch)
        record["time_train_s"] = time.perf_counter() - t0
        if result.pop("diverged"):
            record["status"] = "diverged"
        elif result.pop("stopped"):
            record["status"] = "pruned"
        result.pop("stopped", None)
        record.update(result)
        if weights_path is not None and record["status"] == "complete":
            record["weights"] = str(save_weights(model, weights_path).resolve())
        if collapse and record["status"] == "complete":
            say("attention collapse")
            try:  # the trained result stands even if its analysis fails
                _add_collapse(record, model, images, collapse)
            except Exception as err:
                record["collapse_error"] = f"{type(err).__name__}: {_first_line(err)}"
    return record


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else ""


def eval_images(data: Dataset, n: int, device: torch.device) -> torch.Tensor:
    """The fixed evaluation batch: the first ``n`` test images, normalised as in training."""
    first = Split(data.test.images[:n], data.test.labels[:n])
    return next(iter(Loader(first, batch_size=len(first), device=device, train=False)))[0]


def _add_collapse(record: dict[str, Any], model: torch.nn.Module, images: torch.Tensor,
                  cfg: CollapseConfig, prefix: str = "") -> None:
    t0 = time.perf_counter()
    result = analyse(model, images, which=cfg.which, threshold=cfg.threshold, head_threshold=cfg.head_threshold)
    record[f"{prefix}collapse"] = result
    for key in SUMMARY:
        record[f"{prefix}{key}"] = result[key]
    record[f"time_{prefix}collapse_s"] = time.perf_counter() - t0


def _line(record: dict[str, Any]) -> str:
    status = record["status"]
    if status == "failed":
        return f"[red]failed[/]: {console.escape(record['error'])}"
    if status == "diverged":
        return f"[yellow]diverged[/] (loss {record.get('train_loss')}) after {record.get('steps')} steps"
    parts = [f"{record['param_count']:.3g} M params", f"{record['infer_gmacs']:.3g} GMACs"]
    if record.get("top1") is not None:
        parts.insert(0, f"top-1 {record['top1']:.2f} %")
    parts.append(f"{record['time_trial_s']:.1f} s")
    return ", ".join(parts)


def label(v: Variant, variants: list[Variant], seed: int | None = None) -> str:
    """The fields of ``v`` that vary across ``variants`` (the sweep's grid), plus the seed."""
    fields = [f for f in v.to_dict() if len({getattr(x, f) for x in variants}) > 1
              and not (f.startswith("re_") and v.attention != "re")]  # no re-attention options without it
    text = variant_label(v.to_dict(), fields) if fields else "base"  # as the report labels it
    return text if seed is None else f"{text} seed={seed}"


POLL_S = 5.0  # how often an idle worker looks for dead workers' trials to take over


def open_ledger(sweep: Sweep, url: str) -> Ledger:
    """The sweep's study, made if new; one whose objectives differ is refused (use --name)."""
    directions = sweep.directions()
    ledger = Ledger(open_study(url, sweep.name, create=True,
                               direction=directions if len(directions) > 1 else directions[0]))
    have = [d.name.lower() for d in ledger.study.directions]
    stored = ((ledger.spec or {}).get("study") or {}).get("objectives")
    wanted = sweep.study.objectives if sweep.study is not None else None
    if have != directions or (stored is not None and stored != wanted):
        what = ", ".join(stored) if stored else ", ".join(have)
        raise SpecError("name", sweep.name, f"this study's values are {what}, not "
                        f"{', '.join(wanted or directions)}; pass --name NEW for a new study", sweep.path)
    return ledger


def run_sweep(sweep: Sweep, *, storage: str | None = None, results_dir: str | Path = "results",
              device: str | None = None, retry_failed: bool = False, quiet: bool = False,
              report: bool = True, save_weights: bool = False, workers: int = 1,
              poll: float = POLL_S) -> dict[str, Any]:
    """Queue every trial of ``sweep`` that the study lacks, run the queue, write the report.

    ``workers`` > 1 starts that many local worker processes (one per GPU where there are
    several) instead of working here. Other workers (``bench worker``, or ``bench run``
    elsewhere with the same ``storage``) take from the same queue. ``save_weights``: keep
    each trained model as results_dir/name/weights/KEY.safetensors."""
    dev = resolve_device(device)
    if sweep.study is not None and "peak_mem" in sweep.study.objectives and dev.type != "cuda":
        raise BenchError(f"objective peak_mem is peak CUDA memory: this run's device is {dev.type}")
    url = storage or default_url(results_dir, sweep.name, workers)
    ledger = open_ledger(sweep, url)
    ledger.bind(sweep)
    where = f" | {safe_url(url)} | " + (f"{workers} workers" if workers > 1 else
                                        environment(dev, 'fp32')['device_name'])
    plan = None
    if sweep.search is None:
        plan = ledger.plan(sweep.trials(), retry_failed=retry_failed)
        ledger.enqueue(plan.todo)
        total = len(plan.todo) + plan.queued
        if not quiet:
            console.info(f"{sweep.name}: {len(sweep.trials())} trials, {plan.done} already done, {total} to run"
                         + (f" ({plan.interrupted} interrupted before)" if plan.interrupted else "")
                         + (f"; {plan.failed_skipped} failed skipped (--retry-failed reruns them)"
                            if plan.failed_skipped else "")
                         + (f"; {plan.running_elsewhere} running in other workers" if plan.running_elsewhere
                            else "") + where)
    elif not quiet:
        from bench.search import budget_used
        cfg = sweep.study
        console.info(f"{sweep.name}: study of {cfg.n_trials or ('the grid' if cfg.sampler == 'grid' else 20)} "
                     f"trials, {budget_used(ledger)} already in it · objectives {', '.join(cfg.objectives)} · "
                     f"sampler {cfg.sampler} · pruner {cfg.pruner or 'none'}" + where)
    if workers > 1:
        finished = spawn_workers(sweep.name, url, workers, dev, results_dir, save_weights, quiet)
    elif sweep.search is None:
        finished = work(ledger, sweep, dev, results_dir=results_dir, quiet=quiet, save_weights=save_weights,
                        total=total, poll=poll)
    else:
        from bench.search import run_search
        finished = run_search(sweep, ledger, dev, results_dir=results_dir, quiet=quiet, save_weights=save_weights,
                              poll=poll)
    summary = {"url": url, "ran": len(finished), "plan": plan, "records": finished}
    if report:
        summary["report"] = report_ledger(ledger, sweep.name, url, results_dir)
    return summary


def work(ledger: Ledger, sweep: Sweep, dev: torch.device, *, results_dir: str | Path = "results",
         quiet: bool = False, save_weights: bool = False, total: int | None = None, poll: float = POLL_S,
         tag: str = "", own: bool = True) -> list[dict[str, Any]]:
    """Run queued trials until the queue is empty and no other worker runs one: a worker that
    died meanwhile has its trial closed and queued again, so whoever is left finishes it.
    ``own``: ``sweep``'s grid points are this worker's to see done (False for a worker that
    joined by name: its sweep is the stored spec, whose points are those queued)."""
    datasets: dict[int, Dataset] = {}
    finished: list[dict[str, Any]] = []
    known = _known(ledger)
    variants = list(dict.fromkeys([*(sweep.variants if own else []), *(t.variant for t in known)])) \
        or sweep.variants
    if total is None:
        latest = ledger.latest()
        total = sum(1 for t in known if t.key not in latest or latest[t.key].state not in DONE)
    with console.SweepProgress(total, quiet=quiet, tag=tag) as progress:
        while True:
            claimed = ledger.claim()
            if claimed is not None:
                handle, attrs = claimed
                trial = Trial(attrs["key"], Variant.from_dict(attrs["variant"]), int(attrs["seed"]))
                if trial.variant not in variants:
                    variants.append(trial.variant)
                name = label(trial.variant, variants, trial.seed)
                progress.start(name)
                weights = Path(results_dir) / sweep.name / "weights" / f"{trial.key}.safetensors" \
                    if save_weights and sweep.train else None
                record = _run_trial(trial, sweep, dev, datasets, ledger, progress, weights, handle)
                finished.append(record)
                progress.finish(name, _line(record))
                continue
            points = {t.key: t for t in [*(sweep.trials() if own else []), *_known(ledger)]}
            plan = ledger.plan(points.values())  # closes dead workers' trials: theirs to redo
            if plan.todo:
                ledger.enqueue(plan.todo)
                continue
            if plan.queued:
                continue  # queued by another worker between our claim and our plan
            if not plan.running_elsewhere:
                return finished
            progress.waiting(f"waiting for {plan.running_elsewhere} trial(s) running in other workers "
                             "(taken over if their worker dies)")
            time.sleep(poll)


def _known(ledger: Ledger) -> list[Trial]:
    return [Trial(key, Variant.from_dict(v), int(seed)) for key, v, seed in ledger.known_trials()]


def stored_sweep(ledger: Ledger) -> Sweep:
    """The sweep a study was made from (its stored spec), for a worker that has no file."""
    from bench import spec
    stored = ledger.spec
    if stored is None:
        raise BenchError(f"study {ledger.study.study_name!r} has no bench spec: start it with `bench run SWEEP` "
                         "(or `bench study SPEC`) first")
    raw = {k: stored[k] for k in ("name", "description", "data", "model", "train", "profile", "collapse",
                                  "search", "study") if stored.get(k) is not None or k in ("train", "collapse")}
    if "search" in raw:
        raw["seeds"] = stored["seeds"]
    return spec.parse(raw, f"study {stored['name']!r}", default_name=stored["name"])


def spawn_workers(name: str, url: str, n: int, dev: torch.device, results_dir: str | Path,
                  save_weights: bool, quiet: bool) -> list[dict[str, Any]]:
    """Start ``n`` local ``bench worker`` processes on study ``name`` and wait for them; with
    several GPUs each worker gets its own (CUDA_VISIBLE_DEVICES). Ctrl-C stops them all
    (each marks its trial interrupted). Returns the records they finished."""
    import signal
    import subprocess
    import sys
    gpus = torch.cuda.device_count() if dev.type == "cuda" else 0
    procs = []
    for i in range(n):
        env = dict(os.environ)
        if gpus > 1:
            env["CUDA_VISIBLE_DEVICES"] = str(i % gpus)
        if dev.type == "cpu" and "OMP_NUM_THREADS" not in env:  # share the cores, do not oversubscribe them
            env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // n))
        cmd = [sys.executable, "-m", "bench.cli", "worker", name, "--storage", url, "--results", str(results_dir),
               "--device", dev.type, "--quiet", "--tag", f"w{i}", "--no-report"]
        if save_weights:
            cmd.append("--save-weights")
        procs.append(subprocess.Popen(cmd, env=env))
    started = time.time()
    try:
        codes = [p.wait() for p in procs]
    except KeyboardInterrupt:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGINT)
        for p in procs:
            p.wait()
        raise
    if any(codes):
        raise BenchError(f"{sum(c != 0 for c in codes)} of {n} workers failed (exit codes {codes}); "
                         "rerun the same command to finish the sweep")
    ledger = Ledger(open_study(url, name, create=False))
    return [r for r in ledger.records() if r.get("finished_at") and _after(r["finished_at"], started)]


def _after(iso: str, t: float) -> bool:
    return datetime.fromisoformat(iso).timestamp() >= int(t)


def _run_trial(trial: Trial, sweep: Sweep, dev: torch.device, datasets: dict[int, Dataset],
               ledger: Ledger, progress: console.SweepProgress, weights: Path | None,
               handle: Any, on_epoch: Callable[[int, float, float], bool | None] | None = None) -> dict[str, Any]:
    objectives = sweep.objective_columns()
    t0 = time.perf_counter()
    # the resolved config: with it, every record stands alone
    base = {"seed": trial.seed, **trial.variant.to_dict(), "sweep": sweep.name,
            "config": {k: v for k, v in sweep.to_dict().items() if k in ("data", "train", "profile", "collapse")}}
    try:
        data = None
        if sweep.train is not None:
            img = trial.variant.img_size
            if img not in datasets:
                progress.phase("loading data")
                datasets[img] = sweep.data.load(img)
            data = datasets[img]
        record = measure(trial.variant, trial.seed, device=dev, profile=sweep.profile, train_cfg=sweep.train,
                         data=data, crop_padding=sweep.data.crop_padding if sweep.data else 0,
                         flip=bool(sweep.data and sweep.data.flip), collapse=sweep.collapse,
                         weights_path=weights, on_phase=progress.phase,
                         on_step=progress.step, on_epoch=on_epoch)
        record = {**base, **record}
    except KeyboardInterrupt:
        ledger.finish(handle, {**base, "status": "interrupted", "error": "interrupted"}, objectives)
        raise
    except BenchError as err:  # a dataset that vanished, OOM at batch 1: recorded, the sweep goes on
        record = {**base, "status": "failed", "error": str(err)}
    except Exception as err:
        if os.environ.get("BENCH_DEBUG"):
            traceback.print_exc()
        kind = "out of memory" if is_oom(err) else type(err).__name__
        record = {**base, "status": "failed", "error": f"{kind}: {_first_line(err)}"[:500]}
        if is_oom(err) and dev.type == "cuda":
            torch.cuda.empty_cache()
    if record["status"] == "failed":
        record.update(environment(dev, resolve_dtype(sweep.profile.dtype, dev)))
    record["finished_at"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    record["time_trial_s"] = time.perf_counter() - t0
    ledger.finish(handle, _jsonable(record), objectives)
    return record


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


# --- plans --------------------------------------------------------------------------------

def plan_rows(sweep: Sweep, device: str | None = None, calibrate: bool = True) -> list[dict[str, Any]]:
    """Params, GMACs and an estimated time per trial, training nothing.

    Time = (train samples × epochs × train MACs per sample + profiling steps) divided by
    this device's MAC rate, measured by timing a few train steps of the cheapest variant.
    """
    dev = resolve_device(device)
    rows = []
    variants = sweep.variants
    if sweep.search is not None:  # a study: its cheapest and dearest corners bound every trial
        from bench.search import corners
        variants = corners(sweep.search, sweep.variants[0])
    for v in variants:
        cf = closed_form(v)
        rows.append({"variant": label(v, variants), "depth": v.depth, "embed_dim": v.embed_dim,
                     "attention": v.attention, "param_count": cf["params"] / 1e6,
                     "infer_gmacs": cf["macs"] / 1e9, "_variant": v})
    rate = _calibrate(min(variants, key=lambda v: closed_form(v)["macs"]), sweep, dev) if calibrate else None
    for row in rows:
        v = row.pop("_variant")
        if rate is None:
            row["est_trial_s"] = None
            continue
        train_macs = 3 * closed_form(v)["macs"]  # forward + backward ≈ 3× forward
        work = 0.0
        if sweep.train is not None:
            n_train, n_test = _split_sizes(sweep)
            work += sweep.train.epochs * (n_train * train_macs + n_test * train_macs / 3)
        if sweep.profile.speed:
            steps = (sweep.profile.warmup or (10 if dev.type == "cuda" else 2)) + \
                (sweep.profile.iters or (50 if dev.type == "cuda" else 5))
            work += steps * sweep.profile.batch_size * (train_macs + train_macs / 3)
        row["est_trial_s"] = work / rate + 1.0  # + build, count, record
    return rows


def _split_sizes(sweep: Sweep) -> tuple[int, int]:
    """Train and test images per epoch, without loading the data."""
    d = sweep.data
    if d.name == "shapes":
        return d.train_size or SHAPES_SIZES[0], d.test_size or SHAPES_SIZES[1]
    if d.name in ("cifar10", "cifar100"):
        full = (50000, 10000)
    else:
        full = tuple(sum(1 for p in (d.root_path / split).rglob("*") if p.is_file())
                     for split in (d.train_dir, d.test_dir))
    return min(full[0], d.train_size or full[0]), min(full[1], d.test_size or full[1])


def _calibrate(v: Variant, sweep: Sweep, dev: torch.device) -> float:
    """Train-step MACs per second of ``v`` on ``dev`` (a few timed steps)."""
    from bench.profiling import measure_speed
    batch = sweep.train.batch_size if sweep.train else sweep.profile.batch_size
    model = build_model(v).to(dev)
    r = measure_speed(model, (v.in_chans, v.img_size, v.img_size), mode="train", device=dev,
                      dtype=resolve_dtype(sweep.train.dtype if sweep.train else sweep.profile.dtype, dev),
                      batch_size=batch, warmup=1, iters=3)
    return 3 * closed_form(v)["macs"] * r["train_samples_per_sec"]
