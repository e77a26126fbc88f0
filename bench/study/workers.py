"""Workers: the local worker processes ``bench run --workers N`` starts (each a ``bench worker``,
stopped with its parent), and what one worker does once it joins a study by name: take the
queue its study's stored spec left (bench.study.runner.work) or its share of a search.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from datetime import datetime
from typing import Any

import torch

from bench import console
from bench.errors import BenchError
from bench.study.context import RunContext
from bench.study.ledger import Ledger
from bench.study.runner import check_folder, work
from bench.study.search import run_search
from bench.study.storage import STORAGE_ENV, safe_url

PARENT_ENV = "BENCH_PARENT_PID"  # set for the workers `bench run --workers N` starts
STOP_WAIT_S = 60.0  # after Ctrl-C or SIGTERM: how long the workers together get to record their trials as interrupted


def spawn_workers(ctx: RunContext) -> list[dict[str, Any]]:
    """Start ``ctx.workers`` local ``bench worker`` processes on study ``ctx.study`` (its storage
    ``ctx.storage``, a URL) and wait for them; with several GPUs each worker gets its own
    (``worker_devices``: those the scheduler granted, as CUDA_VISIBLE_DEVICES named them).
    Ctrl-C stops them all (each marks its trial interrupted). Returns the records they finished."""
    n, dev, url = ctx.workers, ctx.device, ctx.storage
    devices = worker_devices(n, os.environ.get("CUDA_VISIBLE_DEVICES"),
                             torch.cuda.device_count() if dev.type == "cuda" else 0)
    procs = []
    for i in range(n):
        env = dict(os.environ)
        if devices[i] is not None:
            env["CUDA_VISIBLE_DEVICES"] = devices[i]
        if dev.type == "cpu" and "OMP_NUM_THREADS" not in env:  # share the cores, do not oversubscribe them
            env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // n))
        env[STORAGE_ENV] = url  # not in argv: anyone on the machine can read a process's argv (ps), with its password
        cmd = [sys.executable, "-m", "bench.cli", "worker", ctx.study, "--results", str(ctx.results_dir),
               "--device", dev.type, "--quiet", "--tag", f"w{i}", "--no-report"]
        cmd += ["--save-weights"] if ctx.save_weights else []
        cmd += ["--keep-checkpoints"] if ctx.keep_checkpoints else []
        env[PARENT_ENV] = str(os.getpid())  # the worker stops when this process is gone (watch_parent)
        procs.append(subprocess.Popen(cmd, env=env, preexec_fn=_die_with_parent if sys.platform == "linux" else None))
    started = time.time()
    try:
        codes = [p.wait() for p in procs]
    except KeyboardInterrupt:  # Ctrl-C, or SIGTERM (bench.errors.Terminated): stop every worker
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGINT)  # each records its trial as interrupted
        deadline = time.monotonic() + STOP_WAIT_S  # one wait for all: N workers never take N minutes
        for p in procs:
            try:
                p.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        raise
    if any(codes):
        raise BenchError(f"{sum(c != 0 for c in codes)} of {n} workers failed (exit codes {codes}); "
                         "rerun the same command to finish the sweep")
    ledger = Ledger.open(url, ctx.study)
    return [r for r in ledger.records() if r.get("finished_at") and _after(r["finished_at"], started)]


def worker_devices(n: int, granted: str | None, count: int) -> list[str | None]:
    """The CUDA_VISIBLE_DEVICES of each of ``n`` local workers: worker i gets the i-th device the
    scheduler granted this job (``granted``: the inherited CUDA_VISIBLE_DEVICES — ids, UUIDs or
    MIG names, as given), round-robin when there are more workers than devices; with none
    granted, device i % ``count`` of the ``count`` this process sees. None: leave it as it is
    (one device, or none: every worker shares what this process has)."""
    if granted is not None:  # what the scheduler granted, even none (""): never another device
        listed = [d.strip() for d in granted.split(",") if d.strip()]
        return [listed[i % len(listed)] if len(listed) > 1 else None for i in range(n)]
    return [str(i % count) if count > 1 else None for i in range(n)]


def join(ctx: RunContext) -> tuple[Ledger, list[dict[str, Any]]]:
    """``bench worker``: run the trials queued in study ``ctx.study`` (a grid's, or a search's
    share) until none is left and no other worker runs one. Returns its ledger and the
    records this worker finished."""
    ledger = Ledger.locate(ctx.study, ctx.storage, ctx.results_dir)
    sweep = ledger.stored_sweep()
    check_folder(ctx.folder / "weights" if ctx.save_weights else ctx.folder)
    if not ctx.quiet:
        console.info(f"worker on {ctx.study} | {safe_url(ledger.url)} | {ctx.device}")
    if sweep.search is not None:
        offset = int(ctx.tag[1:]) if ctx.tag[1:].isdigit() else os.getpid()  # each worker samples its own points
        return ledger, run_search(sweep, ledger, ctx, seed=sweep.study.seed + 1 + offset)
    return ledger, work(ledger, sweep, ctx, own=False)


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
