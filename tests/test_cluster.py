"""A real launcher, tested for real: a small study run by a Slurm job array (single-node Slurm from
Debian's slurm-wlm and munge, started by .ci/slurm) whose tasks share the throw-away PostgreSQL and
an artifact folder. One task is cancelled (scancel: Slurm's SIGTERM) in the middle of a trial; the
other task — or a resubmitted one — resumes that trial from the checkpoint the first left in the
store. Every point is complete exactly once, with the top-1 of a run never interrupted."""
import os
import signal
import subprocess
import sys
import time

import pytest

from bench.study.artifacts import CHECKPOINT
from bench.study.ledger import Ledger

pytestmark = pytest.mark.slow

SWEEP = """
name: slurm{tag}
data: {{name: shapes, train_size: 1536, test_size: 32}}
model: {{img_size: 16, patch_size: 4, embed_dim: 16, num_heads: 2, mlp_ratio: 2}}
train: {{epochs: 4, batch_size: 32, check_every: 1}}
profile: {{batch_size: 4, warmup: 0, iters: 1, rounds: 0}}
collapse: null
grid: {{depth: [1, 2], attention: [self, re]}}
seeds: [0]
"""
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
JOB = """#!/usr/bin/env bash
#SBATCH --output={out}/task-%a-%A.log
#SBATCH --cpus-per-task=1
echo "pid $$"
exec {python} -m bench.cli worker {name} --device cpu --results {out}/results-$SLURM_ARRAY_TASK_ID
"""


@pytest.fixture
def slurm():
    if not os.environ.get("BENCH_TEST_SLURM"):
        if os.environ.get("BENCH_REQUIRE_SLURM"):
            pytest.fail("BENCH_REQUIRE_SLURM is set but no Slurm was started (.ci/slurm)")
        pytest.skip('no Slurm: eval "$(.ci/slurm)" starts a single-node one (.ci/run does)')


def sh(*cmd, env=None):
    return subprocess.run([str(c) for c in cmd], capture_output=True, text=True, check=True, env=env or ENV).stdout


def squeue(job):
    out = subprocess.run(["squeue", "-h", "-j", str(job), "-o", "%i %T"], capture_output=True, text=True, env=ENV)
    return dict(line.split() for line in out.stdout.splitlines()) if out.returncode == 0 else {}


def wait_done(job, seconds=600):
    deadline = time.monotonic() + seconds
    while squeue(job) and time.monotonic() < deadline:
        time.sleep(1)
    assert not squeue(job), f"job {job} still queued after {seconds} s"


def test_a_slurm_array_shares_a_study_and_a_cancelled_task_is_resumed_elsewhere(slurm, pg, tmp_path):
    tag = str(time.time_ns())[-9:]
    name = f"slurm{tag}"
    sweep = tmp_path / "s.yaml"
    sweep.write_text(SWEEP.format(tag=tag))
    store = tmp_path / "artifacts"
    env = {**ENV, "BENCH_STORAGE": pg}  # the URL with its password in the environment, not in any argv
    ref = subprocess.run([sys.executable, "-m", "bench.cli", "run", sweep, "--device", "cpu", "--quiet",
                          "--results", tmp_path / "ref"], env=ENV, capture_output=True, text=True)
    assert ref.returncode == 0, ref.stderr[-2000:]
    expected = {r["key"]: r["top1"] for r in Ledger.locate(name, None, tmp_path / "ref").records()}
    queued = subprocess.run([sys.executable, "-m", "bench.cli", "run", sweep, "--queue-only", "--storage", pg,
                             "--artifacts", store, "--results", tmp_path / "login"], env=env, capture_output=True,
                            text=True)
    assert queued.returncode == 0 and "4 trial(s) queued" in queued.stderr, queued.stderr
    script = tmp_path / "job.sh"
    script.write_text(JOB.format(out=tmp_path, python=sys.executable, name=name))
    job = sh("sbatch", "--parsable", "--array=0-1", script, env=env).strip().split(";")[0]
    ledger = Ledger.open(pg, name)
    # task 0's pid, then one of its trials with a checkpoint in the store: cancel task 0 there. The
    # task is frozen (SIGSTOP) before the trial is confirmed mid-run, so the trial cannot finish
    # between the look and the cancel; Slurm sends SIGCONT before its SIGTERM.
    deadline, victim = time.monotonic() + 300, None
    while time.monotonic() < deadline and victim is None:
        log = tmp_path / f"task-0-{job}.log"
        pid = int(log.read_text().split()[1]) if log.is_file() and log.read_text().startswith("pid ") else None
        if pid and _held(ledger, pid):
            os.kill(pid, signal.SIGSTOP)
            victim = _held(ledger, pid)
            if victim is None:  # it finished in between: let it go on
                os.kill(pid, signal.SIGCONT)
        time.sleep(0.2)
    assert victim, "task 0 never held a trial with a checkpoint in the store"
    sh("scancel", f"{job}_0")  # Slurm's SIGTERM, as on preemption
    wait_done(job)
    if "COMPLETE" not in _states(ledger, victim):  # task 1 had finished before: a resubmitted task takes it
        again = sh("sbatch", "--parsable", "--array=1", script, env=env).strip().split(";")[0]
        wait_done(again)
    logs = "".join(p.read_text() for p in tmp_path.glob("task-*.log"))
    assert "fetched from the artifact store" in logs  # the cancelled trial resumed from task 0's checkpoint
    assert "recorded as interrupted" in logs or "terminated (SIGTERM)" in logs
    states = {key: _states(ledger, key) for key in expected}
    assert all(s.count("COMPLETE") == 1 for s in states.values()), states  # every point exactly once
    assert {r["key"]: r["top1"] for r in ledger.records()} == expected  # as if never interrupted


def _held(ledger, pid):
    """The key of the trial worker ``pid`` is running with a checkpoint in the store, or None."""
    for t in ledger.study.get_trials():
        if t.state.name == "RUNNING" and t.user_attrs.get("worker", "").endswith(f":{pid}") \
                and CHECKPOINT in t.user_attrs:
            return t.user_attrs["key"]
    return None


def _states(ledger, key):
    return [t.state.name for t in ledger.study.get_trials() if t.user_attrs.get("key") == key
            and not t.user_attrs.get("dropped")]
