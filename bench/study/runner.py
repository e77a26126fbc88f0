"""Running a sweep in this process: check and make its folders, queue every variant × seed the
ledger lacks, load its data, and work the queue (a grid here, a study through
bench.study.search); then the summary and the side-by-side timing. Each trial runs through
bench.study.trials. Local worker processes are bench.study.workers'; bench.api puts the pieces
together (``run_sweep``) and writes the report.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from bench import console
from bench.config import resolve_compile, resolve_dtype
from bench.data.augment import RandAugment
from bench.data.loader import residency
from bench.device import device_name, environment
from bench.errors import BenchError, first_line
from bench.own_files import check_writable
from bench.records import Status
from bench.side_by_side import Pass, side_by_side
from bench.spec import Sweep, variant_key
from bench.study.artifacts import open_store
from bench.study.context import RunContext
from bench.study.ledger import DONE, Ledger, Plan
from bench.study.search import budget_used, run_search
from bench.study.storage import check_workers, safe_url
from bench.study.trials import load_checked, result_line, run_trial
from bench.variant import Variant, variant_label, varying_fields


@dataclass
class Run:
    """A sweep started by ``start``: its context (storage URL filled in), ledger, plan (a grid's;
    None for a study), data loaded by image size, and the number of trials to run."""

    ctx: RunContext
    ledger: Ledger
    plan: Plan | None
    datasets: dict[int, Any]
    total: int | None


def start(sweep: Sweep, ctx: RunContext) -> Run:
    """Everything before the first trial: the device checked, the results folders made and
    writable, the study made and bound to ``sweep``, the trials it lacks queued, the data
    loaded. A start that fails (data that cannot load, weights that cannot be written)
    removes what it made (the study's file, empty folders), never what was there."""
    dev = ctx.device
    if sweep.study is not None and "peak_mem" in sweep.study.objectives and dev.type != "cuda":
        raise BenchError(f"objective peak_mem is peak CUDA memory: this run's device is {dev.type}")
    ctx = ctx.replace(study=sweep.name)
    ctx = ctx.replace(storage=ctx.url())  # the default depends on the study and the workers
    url, out = ctx.storage, ctx.folder
    check_workers(url, ctx.workers)  # before anything is made: SQLite does not serve several workers
    folders = [out] + ([out / "checkpoints"] if sweep.train else []) + ([out / "weights"] if ctx.save_weights
                                                                        and sweep.train else [])
    made = _Made(folders, url)
    ledger = None
    try:
        for folder in folders:  # before any work, and before the study is made: results must land somewhere
            check_folder(folder)
        ledger = Ledger.for_sweep(sweep, url)
        ledger.bind(sweep)
        if ctx.artifacts:  # checked before any work, and remembered: workers joining by name find it
            open_store(ctx.artifacts)
            if ledger.study.user_attrs.get("artifacts") != ctx.artifacts:
                ledger.study.set_user_attr("artifacts", ctx.artifacts)
        where = f" | {safe_url(url)} | " + (f"{ctx.workers} workers" if ctx.workers > 1 else
                                            environment(dev, 'fp32')['device_name'])
        plan = None
        total = None
        if sweep.search is None:
            plan = ledger.plan(sweep.trials(), retry_failed=ctx.retry_failed)
            datasets = preload(sweep, dev, ledger, ctx.quiet) if sweep.train is not None and (plan.todo or plan.queued) \
                and not ctx.queue_only else {}
            ledger.enqueue(plan.todo)
            total = len(plan.todo) + plan.queued
            if not ctx.quiet:
                console.info(f"{sweep.name}: {len(sweep.trials())} trials, {plan.done} already done, {total} to run"
                             + (f" ({plan.interrupted} interrupted before)" if plan.interrupted else "")
                             + (f"; {plan.failed_skipped} failed skipped (--retry-failed reruns them)"
                                if plan.failed_skipped else "")
                             + (f"; {plan.running_elsewhere} running in other workers" if plan.running_elsewhere
                                else "") + where)
        elif not ctx.quiet:
            cfg = sweep.study
            console.info(f"{sweep.name}: study of {sweep.budget()} trials, {budget_used(ledger)} already in it · "
                         f"objectives {', '.join(cfg.objectives)} · sampler {cfg.sampler} · "
                         f"pruner {cfg.pruner or 'none'}" + where)
        if sweep.search is not None:
            datasets = preload(sweep, dev, ledger, ctx.quiet) if sweep.train is not None else {}
    except BaseException:  # no trial has run: what this call made goes, what was there stays
        made.undo(ledger)
        raise
    return Run(ctx, ledger, plan, datasets, total)


def work_here(sweep: Sweep, run: Run) -> list[dict[str, Any]]:
    """Work a started sweep's queue in this process: a grid's queued trials, or a study's share."""
    if sweep.search is None:
        return work(run.ledger, sweep, run.ctx, total=run.total, datasets=run.datasets)
    return run_search(sweep, run.ledger, run.ctx, datasets=run.datasets)


def summary(sweep: Sweep, run: Run, finished: list[dict[str, Any]]) -> dict[str, Any]:
    """What ``run_sweep`` returns, but the report: the storage URL, the trials run now, and
    ``failure``: one line when trials of this run failed (not diverged or pruned: a failure is
    the machine's or bench's, not the model's), None when none did. Times the variants side by
    side when the sweep asks for it."""
    failed = [r for r in finished if r.get("status") == Status.FAILED]
    out = {"url": run.ctx.storage, "ran": len(finished), "plan": run.plan, "records": finished,
           "failed": len(failed),
           "failure": f"{len(failed)} of {len(finished)} trials run now failed (the first: "
                      f"{first_line(str(failed[0].get('error')))[:300]}); the report lists them, "
                      "--retry-failed reruns them" if failed else None}
    if sweep.search is None and sweep.profile.speed and sweep.profile.rounds and len(sweep.variants) > 1:
        out["side_by_side"] = time_side_by_side(run.ledger, sweep, run.ctx.device, quiet=run.ctx.quiet)
    return out


def check_folder(folder: Path) -> None:
    """``folder`` made and writable (bench.own_files.check_writable); a file in the way is named,
    and left as it was (not bench's)."""
    blocker = next((p for p in [folder, *folder.parents] if os.path.lexists(p) and not p.is_dir()), None)
    if blocker is not None:
        raise BenchError(f"cannot write results to {folder}: {blocker} is a file, not a folder "
                         "(not bench's: left as it was; move it away or pass another --results)")
    check_writable(folder)


class _Made:
    """What a run makes before its first trial: its results folders and its study's file
    (SQLite or journal), noted before, so that ``undo`` removes exactly what this call made:
    folders only when empty, the study's file only when it holds nothing but an empty study."""

    def __init__(self, folders: list[Path], url: str) -> None:
        self.folders: list[Path] = []  # missing now, parents first
        for folder in folders:
            missing = [p for p in [folder, *folder.parents] if not os.path.lexists(p)]
            self.folders += [p for p in reversed(missing) if p not in self.folders]
        path = url[len("sqlite:///"):] if url.startswith("sqlite:///") else \
            url[len("journal:"):] if url.startswith("journal:") else None
        self.file = Path(path).expanduser() if path and not os.path.lexists(Path(path).expanduser()) else None

    def undo(self, ledger: Ledger | None) -> None:
        if self.file is not None and self.file.is_file():
            try:  # ours only if it holds our study and nothing else: another process may have made it
                empty = self.file.stat().st_size == 0 if ledger is None else ledger.alone_and_empty()
                if empty:
                    if ledger is not None:
                        ledger.close()  # its connections closed before its file goes
                    self.file.unlink()
            except Exception:  # best effort: never hide why the run stopped
                pass
        for folder in reversed(self.folders):
            try:
                folder.rmdir()  # only an empty one: never what something was written into
            except OSError:
                pass


def preload(sweep: Sweep, dev: torch.device, ledger: Ledger, quiet: bool = False) -> dict[int, Any]:
    """The sweep's data at each image size its variants use, loaded (a real dataset: its
    cache built) before any work: a missing or unreadable file, or a RandAugment string timm
    cannot read, stops the run here with one message rather than failing every trial in
    turn. Says where the data will live while training (bench.data.loader.residency)."""
    datasets = {}
    augment = sweep.data.augment
    for img in sorted({v.img_size for v in sweep.variants}):
        if augment.rand_augment:
            RandAugment(augment.rand_augment, img)  # a string timm cannot read fails here
        datasets[img] = ds = load_checked(sweep, img, ledger, quiet=quiet)
        if not quiet:
            where, why = residency(ds, dev, sweep.data.residency, sweep.data.memory_budget_gb,
                                   host_transform=augment.rand_augment is not None)
            console.info(f"data at {img}px: " + ("in device memory" if where == "device" else
                                                 f"streamed, {sweep.data.prefetch} batches read ahead") + f" ({why})")
    return datasets


def time_side_by_side(ledger: Ledger, sweep: Sweep, dev: torch.device, *, rounds: int | None = None,
                      quiet: bool = False, again: bool = False, variants: list[Variant] | None = None
                      ) -> dict[str, Any]:
    """Time every variant of the study side by side on ``dev`` (bench.side_by_side) and store the
    pass in the ledger, where reports find it. A stored pass over the same variants on the
    same device is kept unless ``again``. ``variants``: those to time (default: the sweep's
    and every one the study queued; a stored sweep's own is only its base model)."""
    if variants is None:
        variants = [*sweep.variants, *(t.variant for t in ledger.known_trials())]
    if not variants:
        raise BenchError(f"study {sweep.name!r} has no variant to time")
    variants = {variant_key(v): v for v in variants}
    dtype = resolve_dtype(sweep.profile.dtype, dev)
    compiled = resolve_compile(sweep.profile.compile, dev)  # timed as the trials were
    rounds = sweep.profile.rounds if rounds is None else rounds
    if rounds < 1:  # no round, no figure (statistics.median of nothing)
        raise BenchError(f"side-by-side timing needs at least 1 round, not {rounds}")
    stored = ledger.side_by_side()
    if (not again and stored and set(stored["variants"]) >= set(variants) and stored["device_name"] == device_name(dev)
            and stored["dtype"] == dtype and bool(stored.get("compiled")) == compiled):
        return stored
    warmup, iters = sweep.profile.steps(dev)
    with console.status("side-by-side timing", quiet=quiet) as update:
        how = Pass(dtype, sweep.profile.batch_size, rounds, iters, max(warmup, 1), compiled)
        result = side_by_side(variants, how, device=dev, on_progress=update)
    ledger.save_side_by_side(result)
    if not quiet:
        console.info(f"{sweep.name}: {len(variants)} variants timed side by side, {rounds} interleaved rounds "
                     f"on {result['device_name']} in {result['seconds']:.1f} s")
    return result


def work(ledger: Ledger, sweep: Sweep, ctx: RunContext, *, total: int | None = None, own: bool = True,
         datasets: dict[int, Any] | None = None) -> list[dict[str, Any]]:
    """Run queued trials until the queue is empty and no other worker runs one: a worker that
    died meanwhile has its trial closed and queued again, so whoever is left finishes it.
    ``own``: ``sweep``'s grid points are this worker's to see done (False for a worker that
    joined by name: its sweep is the stored spec, whose points are those queued)."""
    datasets = {} if datasets is None else datasets  # loaded once per image size, kept for every trial
    finished: list[dict[str, Any]] = []
    known = ledger.known_trials()
    variants = list(dict.fromkeys([*(sweep.variants if own else []), *(t.variant for t in known)])) \
        or sweep.variants
    if total is None:
        latest = ledger.latest()
        total = sum(1 for t in known if t.key not in latest or latest[t.key].state not in DONE)
    with console.SweepProgress(total, quiet=ctx.quiet, tag=ctx.tag) as progress:
        while True:
            claimed = ledger.claim()
            if claimed is not None:
                handle, trial = claimed
                if trial.variant not in variants:
                    variants.append(trial.variant)
                name = variant_label(trial.variant, varying_fields(variants), trial.seed)
                record = run_trial(trial, sweep, ctx, loaded=datasets, ledger=ledger, progress=progress,
                                   handle=handle, name=name)
                finished.append(record)
                progress.finish(name, result_line(record))
                continue
            points = {t.key: t for t in [*(sweep.trials() if own else []), *ledger.known_trials()]}
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
            time.sleep(ctx.poll)
