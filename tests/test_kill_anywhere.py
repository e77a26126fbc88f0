"""Kill anywhere, resume, lose nothing: a small sweep is stopped at random moments (SIGKILL,
SIGTERM, Ctrl-C twice), with one or two workers, then run again to the end. Every grid point
must be complete exactly once, and no trial's top-1 may differ from an uninterrupted run's.

The moments are drawn from a fixed seed (a failure names its round, signal and delay, so it
can be replayed); they span the whole run: start-up, queueing, training, checkpoints, the
report. Slow (a few minutes): run in CI, skipped by ``tox -e fast``."""
import os
import random
import signal
import subprocess
import sys
import time

import pytest

from bench.study.ledger import Ledger
from bench.study.storage import default_url

pytestmark = pytest.mark.slow

SWEEP = """
name: kill
data: {name: shapes, train_size: 384, test_size: 32}  # trials of a few seconds: an orphan would outlive the check
model: {img_size: 16, patch_size: 4, embed_dim: 16, num_heads: 2, mlp_ratio: 2}
train: {epochs: 3, batch_size: 32, check_every: 1}
profile: {batch_size: 4, warmup: 0, iters: 1}
collapse: null
grid: {depth: [1, 2], attention: [self, re]}
seeds: [0]
"""
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}  # one thread per process: the same arithmetic with 1 or 2 workers


def start(path, results, workers):
    cmd = [sys.executable, "-m", "bench.cli", "run", str(path), "--results", str(results), "--device", "cpu",
           "--quiet", *(["--workers", str(workers)] if workers > 1 else [])]
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=ENV,
                            start_new_session=True)  # a group of its own: the test can find its workers


def finish(path, results, workers=1):
    proc = start(path, results, workers)
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err.decode()[-2000:]


def outcome(results):
    """Per grid key: the states of its trials, and the newest record's top-1."""
    lg = Ledger.open(default_url(results, "kill"), "kill")
    states = {}
    for t in lg.study.get_trials():
        if t.user_attrs.get("dropped"):
            continue
        states.setdefault(t.user_attrs["key"], []).append(t.state.name)
    return states, {r["key"]: r["top1"] for r in lg.records()}


def group_alive(pgid):
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The uninterrupted run: its top-1 per key, and how long it took."""
    folder = tmp_path_factory.mktemp("kill-ref")
    path = folder / "kill.yaml"
    path.write_text(SWEEP)
    started = time.monotonic()
    finish(path, folder / "results")
    states, top1 = outcome(folder / "results")
    assert len(top1) == 4 and all(s == ["COMPLETE"] for s in states.values())
    return top1, time.monotonic() - started


SIGNALS = ["SIGKILL", "SIGTERM", "SIGINT x2"]
ROUNDS = [(how, workers) for how in SIGNALS for workers in (1, 2)]


@pytest.mark.parametrize("first,workers", ROUNDS)
def test_killed_at_a_random_moment_then_resumed_loses_nothing(tmp_path, reference, first, workers):
    top1_ref, seconds = reference
    rng = random.Random(f"{first}/{workers}")
    path = tmp_path / "kill.yaml"
    path.write_text(SWEEP)
    results = tmp_path / "results"
    kills = [first] + ([rng.choice(SIGNALS)] if rng.random() < 0.5 else [])  # sometimes killed again on resume
    for kill, how in enumerate(kills):
        delay = rng.uniform(0.2, seconds * (1.3 if workers > 1 else 1.0))
        proc = start(path, results, workers)
        time.sleep(delay)
        if proc.poll() is None:
            if how == "SIGKILL":
                proc.kill()  # the parent only: its workers must notice and stop by themselves
            elif how == "SIGTERM":
                proc.send_signal(signal.SIGTERM)
            else:
                proc.send_signal(signal.SIGINT)
                time.sleep(0.05)
                proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=120)
        # nothing of the killed run keeps running (local workers stop with their parent)
        deadline = time.monotonic() + 8  # a worker stops within seconds of its parent, mid-trial
        while group_alive(proc.pid) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not group_alive(proc.pid), f"{workers} worker(s), kill {kill} ({how} at {delay:.2f}s): orphans"
    finish(path, results, workers)
    states, top1 = outcome(results)
    where = f"{kills} with {workers} worker(s)"
    assert set(states) == set(top1_ref), where
    assert all(s.count("COMPLETE") == 1 for s in states.values()), (where, states)  # every point exactly once
    assert top1 == top1_ref, where  # resumed from a checkpoint or redone: the same numbers to the last digit


def _checkpoint_written(results, since):
    """Whether a checkpoint newer than ``since`` (ns) is in the sweep's folder: an epoch just ended,
    and the trial is writing to its study (the epoch's top-1, then soon its record)."""
    folder = results / "kill" / "checkpoints"
    try:
        return any(p.stat().st_mtime_ns > since for p in folder.glob("*.pt"))
    except OSError:  # removed as we looked: the trial is recording its result right now
        return True


@pytest.mark.parametrize("round_", range(3))
def test_killed_during_its_sqlite_writes_then_resumed_loses_nothing(tmp_path, reference, round_):
    """The default storage (SQLite, one worker) killed with SIGKILL just as a trial writes to it:
    a kill inside an SQLite transaction leaves a hot journal, which the next command must roll
    back by itself (a read-only look cannot)."""
    top1_ref, _ = reference
    rng = random.Random(f"sqlite/{round_}")
    path = tmp_path / "kill.yaml"
    path.write_text(SWEEP)
    results = tmp_path / "results"
    for kill in range(2):
        proc = start(path, results, 1)
        since = time.time_ns()
        deadline = time.monotonic() + 120
        while not _checkpoint_written(results, since) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(rng.uniform(0, 0.08))  # somewhere in the writes that follow an epoch
        proc.kill()
        proc.communicate(timeout=60)
    assert (results / "kill" / "study.db").is_file()
    finish(path, results)
    states, top1 = outcome(results)
    assert set(states) == set(top1_ref) and all(s.count("COMPLETE") == 1 for s in states.values()), states
    assert top1 == top1_ref
