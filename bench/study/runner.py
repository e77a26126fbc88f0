"""Running sweeps: queue every variant × seed the ledger lacks, run the queue here or in
local worker processes (or let ``bench worker`` elsewhere take from it), and write the
report at the end. Each trial runs through bench.study.trials; studies through bench.study.search.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import torch

from bench import console
from bench.errors import BenchError, first_line
from bench.files import check_writable
from bench.study.ledger import DONE, Ledger
from bench.config import resolve_dtype
from bench.data.augment import RandAugment
from bench.data.loader import load as load_data, residency
from bench.profiling import device_name, environment, resolve_device
from bench.report.markdown import report_ledger
from bench.study.search import budget_used, run_search
from bench.spec import Sweep, variant_key
from bench.study.storage import STORAGE_ENV, check_workers, default_url, safe_url
from bench.timing import side_by_side
from bench.study.trials import label, result_line, run_trial
from bench.variant import Variant

POLL_S = 5.0  # how often an idle worker looks for dead workers' trials to take over


def run_sweep(sweep: Sweep, *, storage: str | None = None, results_dir: str | Path = "results",
              device: str | None = None, retry_failed: bool = False, quiet: bool = False,
              report: bool = True, save_weights: bool = False, keep_checkpoints: bool = False, workers: int = 1,
              poll: float = POLL_S) -> dict[str, Any]:
    """Queue every trial of ``sweep`` that the study lacks, run the queue, write the report.

    ``workers`` > 1 starts that many local worker processes (one per GPU where there are
    several) instead of working here. Other workers (``bench worker``, or ``bench run``
    elsewhere with the same ``storage``) take from the same queue. ``save_weights``: keep
    each trained model as results_dir/name/weights/KEY.safetensors. Each trial checkpoints its
    training after every epoch in results_dir/name/checkpoints/ (a reclaimed trial resumes
    from there); ``keep_checkpoints`` keeps them once the trial is done.

    A run stopped before its first trial (data that cannot load, weights that cannot be
    written) removes what it made (the study's file, empty folders), never what was there.
    ``summary["failure"]``: one line when trials of this run failed (not diverged or pruned:
    a failure is the machine's or bench's, not the model's), None when none did."""
    dev = resolve_device(device)
    if sweep.study is not None and "peak_mem" in sweep.study.objectives and dev.type != "cuda":
        raise BenchError(f"objective peak_mem is peak CUDA memory: this run's device is {dev.type}")
    out = Path(results_dir) / sweep.name
    url = storage or default_url(results_dir, sweep.name, workers)
    check_workers(url, workers)  # before anything is made: SQLite does not serve several workers
    folders = [out] + ([out / "checkpoints"] if sweep.train else []) + ([out / "weights"] if save_weights
                                                                        and sweep.train else [])
    made = _Made(folders, url)
    ledger = None
    try:
        for folder in folders:  # before any work, and before the study is made: results must land somewhere
            made.check(folder)
        ledger = Ledger.for_sweep(sweep, url)
        ledger.bind(sweep)
        where = f" | {safe_url(url)} | " + (f"{workers} workers" if workers > 1 else
                                            environment(dev, 'fp32')['device_name'])
        plan = None
        if sweep.search is None:
            plan = ledger.plan(sweep.trials(), retry_failed=retry_failed)
            datasets = preload(sweep, dev, quiet) if sweep.train is not None and (plan.todo or plan.queued) else {}
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
            cfg = sweep.study
            console.info(f"{sweep.name}: study of {sweep.budget()} trials, {budget_used(ledger)} already in it · "
                         f"objectives {', '.join(cfg.objectives)} · sampler {cfg.sampler} · "
                         f"pruner {cfg.pruner or 'none'}" + where)
        if sweep.search is not None:
            datasets = preload(sweep, dev, quiet) if sweep.train is not None else {}
    except BaseException:  # no trial has run: what this call made goes, what was there stays
        made.undo(ledger)
        raise
    if workers > 1:
        finished = spawn_workers(sweep.name, url, workers, dev, results_dir, save_weights, quiet, keep_checkpoints)
    elif sweep.search is None:
        finished = work(ledger, sweep, dev, results_dir=results_dir, quiet=quiet, save_weights=save_weights,
                        keep_checkpoints=keep_checkpoints, total=total, poll=poll, datasets=datasets)
    else:
        finished = run_search(sweep, ledger, dev, results_dir=results_dir, quiet=quiet, save_weights=save_weights,
                              keep_checkpoints=keep_checkpoints, poll=poll, datasets=datasets)
    failed = [r for r in finished if r.get("status") == "failed"]
    summary = {"url": url, "ran": len(finished), "plan": plan, "records": finished, "failed": len(failed),
               "failure": f"{len(failed)} of {len(finished)} trials run now failed (the first: "
                          f"{first_line(str(failed[0].get('error')))[:300]}); the report lists them, "
                          "--retry-failed reruns them" if failed else None}
    if sweep.search is None and sweep.profile.speed and sweep.profile.rounds and len(sweep.variants) > 1:
        summary["side_by_side"] = time_side_by_side(ledger, sweep, dev, quiet=quiet)
    if report:
        summary["report"] = report_ledger(ledger, sweep.name, url, results_dir)
    return summary


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

    def check(self, folder: Path) -> None:
        """``folder`` made and writable (bench.files.check_writable); a file in the way is
        named, and left as it was (not bench's)."""
        blocker = next((p for p in [folder, *folder.parents] if os.path.lexists(p) and not p.is_dir()), None)
        if blocker is not None:
            raise BenchError(f"cannot write results to {folder}: {blocker} is a file, not a folder "
                             "(not bench's: left as it was; move it away or pass another --results)")
        check_writable(folder)

    def undo(self, ledger: Ledger | None) -> None:
        if self.file is not None and self.file.is_file():
            try:  # ours only if it holds our study and nothing else: another process may have made it
                empty = (self.file.stat().st_size == 0 if ledger is None else
                         len(ledger.study._storage.get_all_studies()) == 1 and not ledger.study.get_trials(
                             deepcopy=False))
                if empty:
                    engine = getattr(getattr(ledger.study._storage, "_backend", None), "engine", None) \
                        if ledger is not None else None
                    if engine is not None:
                        engine.dispose()  # its connections closed before its file goes
                    self.file.unlink()
            except Exception:  # best effort: never hide why the run stopped
                pass
        for folder in reversed(self.folders):
            try:
                folder.rmdir()  # only an empty one: never what something was written into
            except OSError:
                pass


def preload(sweep: Sweep, dev: torch.device, quiet: bool = False) -> dict[int, Any]:
    """The sweep's data at each image size its variants use, loaded (a real dataset: its
    cache built) before any work: a missing or unreadable file, or a RandAugment string timm
    cannot read, stops the run here with one message rather than failing every trial in
    turn. Says where the data will live while training (bench.data.loader.residency)."""
    datasets = {}
    augment = sweep.data.augment
    for img in sorted({v.img_size for v in sweep.variants}):
        if augment.rand_augment:
            RandAugment(augment.rand_augment, img)  # a string timm cannot read fails here
        datasets[img] = ds = load_data(sweep.data, img, quiet=quiet)
        if not quiet:
            where, why = residency(ds, dev, sweep.data.residency, sweep.data.memory_budget_gb,
                                   host_transform=augment.rand_augment is not None)
            console.info(f"data at {img}px: " + ("in device memory" if where == "device" else
                                                 f"streamed, {sweep.data.prefetch} batches read ahead") + f" ({why})")
    return datasets


def time_side_by_side(ledger: Ledger, sweep: Sweep, dev: torch.device, *, rounds: int | None = None,
                      quiet: bool = False, again: bool = False, variants: list[Variant] | None = None
                      ) -> dict[str, Any]:
    """Time every variant of the study side by side on ``dev`` (bench.timing) and store the
    pass in the ledger, where reports find it. A stored pass over the same variants on the
    same device is kept unless ``again``. ``variants``: those to time (default: the sweep's
    and every one the study queued; a stored sweep's own is only its base model)."""
    if variants is None:
        variants = [*sweep.variants, *(t.variant for t in ledger.known_trials())]
    if not variants:
        raise BenchError(f"study {sweep.name!r} has no variant to time")
    variants = {variant_key(v): v for v in variants}
    dtype = resolve_dtype(sweep.profile.dtype, dev)
    rounds = sweep.profile.rounds if rounds is None else rounds
    if rounds < 1:  # no round, no figure (statistics.median of nothing)
        raise BenchError(f"side-by-side timing needs at least 1 round, not {rounds}")
    stored = ledger.side_by_side()
    if (not again and stored and set(stored["variants"]) >= set(variants)
            and stored["device_name"] == device_name(dev) and stored["dtype"] == dtype):
        return stored
    warmup, iters = sweep.profile.steps(dev)
    with console.status("side-by-side timing", quiet=quiet) as update:
        result = side_by_side(variants, device=dev, dtype=dtype, batch_size=sweep.profile.batch_size,
                              rounds=rounds, iters=iters, warmup=max(warmup, 1), on_progress=update)
    ledger.save_side_by_side(result)
    if not quiet:
        console.info(f"{sweep.name}: {len(variants)} variants timed side by side, {rounds} interleaved rounds "
                     f"on {result['device_name']} in {result['seconds']:.1f} s")
    return result


def work(ledger: Ledger, sweep: Sweep, dev: torch.device, *, results_dir: str | Path = "results",
         quiet: bool = False, save_weights: bool = False, keep_checkpoints: bool = False, total: int | None = None,
         poll: float = POLL_S,
         tag: str = "", own: bool = True, datasets: dict[int, Any] | None = None) -> list[dict[str, Any]]:
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
    with console.SweepProgress(total, quiet=quiet, tag=tag) as progress:
        while True:
            claimed = ledger.claim()
            if claimed is not None:
                handle, trial = claimed
                if trial.variant not in variants:
                    variants.append(trial.variant)
                name = label(trial.variant, variants, trial.seed)
                progress.start(name)
                record = run_trial(trial, sweep, dev, datasets, ledger, progress, handle, results_dir=results_dir,
                                   save=save_weights, keep_checkpoints=keep_checkpoints)
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
            time.sleep(poll)


def spawn_workers(name: str, url: str, n: int, dev: torch.device, results_dir: str | Path,
                  save_weights: bool, quiet: bool, keep_checkpoints: bool = False) -> list[dict[str, Any]]:
    """Start ``n`` local ``bench worker`` processes on study ``name`` and wait for them; with
    several GPUs each worker gets its own (CUDA_VISIBLE_DEVICES). Ctrl-C stops them all
    (each marks its trial interrupted). Returns the records they finished."""
    gpus = torch.cuda.device_count() if dev.type == "cuda" else 0
    procs = []
    for i in range(n):
        env = dict(os.environ)
        if gpus > 1:
            env["CUDA_VISIBLE_DEVICES"] = str(i % gpus)
        if dev.type == "cpu" and "OMP_NUM_THREADS" not in env:  # share the cores, do not oversubscribe them
            env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // n))
        env[STORAGE_ENV] = url  # not in argv: anyone on the machine can read a process's argv (ps), with its password
        cmd = [sys.executable, "-m", "bench.cli", "worker", name, "--results", str(results_dir),
               "--device", dev.type, "--quiet", "--tag", f"w{i}", "--no-report"]
        cmd += ["--save-weights"] if save_weights else []
        cmd += ["--keep-checkpoints"] if keep_checkpoints else []
        env[PARENT_ENV] = str(os.getpid())  # the worker stops when this process is gone (watch_parent)
        procs.append(subprocess.Popen(cmd, env=env, preexec_fn=_die_with_parent if sys.platform == "linux" else None))
    started = time.time()
    try:
        codes = [p.wait() for p in procs]
    except KeyboardInterrupt:  # Ctrl-C, or SIGTERM (bench.errors.Terminated): stop every worker
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGINT)  # each records its trial as interrupted
        for p in procs:
            try:
                p.wait(timeout=60)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        raise
    if any(codes):
        raise BenchError(f"{sum(c != 0 for c in codes)} of {n} workers failed (exit codes {codes}); "
                         "rerun the same command to finish the sweep")
    ledger = Ledger.open(url, name)
    return [r for r in ledger.records() if r.get("finished_at") and _after(r["finished_at"], started)]


PARENT_ENV = "BENCH_PARENT_PID"  # set for the workers `bench run --workers N` starts


def _die_with_parent() -> None:
    """In a local worker, before it runs (Linux): SIGTERM when the process that started it dies,
    even by kill -9, so no orphan goes on taking trials. Its trial is then recorded interrupted."""
    import ctypes
    PR_SET_PDEATHSIG = 1
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def watch_parent(interval: float = 1.0) -> None:
    """In a worker started by ``spawn_workers``: SIGTERM to itself once that parent is gone. On
    Linux the kernel does this at once (``_die_with_parent``); this poll also covers other
    systems, and a parent that died before the worker could ask the kernel."""
    import threading
    parent = os.environ.get(PARENT_ENV)
    if not parent or not parent.isdigit():
        return

    def poll() -> None:
        while os.getppid() == int(parent):
            time.sleep(interval)
        os.kill(os.getpid(), signal.SIGTERM)  # handled as Ctrl-C: the running trial is recorded interrupted
    threading.Thread(target=poll, name="bench-watch-parent", daemon=True).start()


def _after(iso: str, t: float) -> bool:
    return datetime.fromisoformat(iso).timestamp() >= int(t)
