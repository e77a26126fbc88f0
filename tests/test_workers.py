"""Many workers on one study: a shared queue, kill -9 mid-trial, each grid point complete once.

The PostgreSQL tests need a server: ``eval "$(.ci/postgres)"`` starts a throw-away one and
exports BENCH_TEST_POSTGRES (``.ci/run`` does this, and sets BENCH_REQUIRE_POSTGRES so that a
missing server fails the run instead of skipping)."""
import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid

import pytest

from bench import api, spec
from bench.cli import main
from bench.study.context import RunContext
from bench.study.ledger import Ledger
from bench.study.storage import default_url

SWEEP = """
name: {name}
data: {{name: shapes, train_size: {train_size}, test_size: 24}}
model: {{img_size: 16, patch_size: 4, embed_dim: 16, num_heads: 2, mlp_ratio: 2}}
train: {{epochs: {epochs}, batch_size: 16, check_every: 1}}
profile: {{batch_size: 4, warmup: 0, iters: 1}}
collapse: null
grid: {{depth: [1, 2, 3], attention: [self, re]}}
seeds: [0]
"""


def write_sweep(tmp_path, train_size=48, epochs=1):
    name = f"w{uuid.uuid4().hex[:10]}"  # one study per test in the shared database
    path = tmp_path / f"{name}.yaml"
    path.write_text(SWEEP.format(name=name, train_size=train_size, epochs=epochs))
    return path, name


def bench_cmd(*args):
    return [sys.executable, "-m", "bench.cli", *map(str, args)]


def signed_running(url, name, pid):
    """Whether the worker with ``pid`` is running a trial of study ``name`` (claimed and signed)."""
    import sqlalchemy as sa
    engine = sa.create_engine(url)
    try:
        with engine.connect() as con:
            return con.execute(sa.text(
                "SELECT count(*) FROM trials t JOIN studies s ON s.study_id = t.study_id "
                "JOIN trial_user_attributes a ON a.trial_id = t.trial_id WHERE s.study_name = :name "
                "AND t.state = 'RUNNING' AND a.key = 'worker' AND a.value_json = :worker"),
                {"name": name, "worker": json.dumps(f"{socket.gethostname()}:{pid}")}).scalar() > 0
    except Exception:  # tables not created yet
        return False
    finally:
        engine.dispose()


def outcome(url, name):
    """Per key: the states of its trials (dropped duplicate claims left out), and the workers
    that completed it."""
    trials = Ledger.open(url, name).study.get_trials()
    states, done_by = {}, {}
    for t in trials:
        if t.user_attrs.get("dropped"):
            assert t.state.name == "FAIL" and "record" not in t.user_attrs  # dropped before any work
            continue
        key = t.user_attrs["key"]
        states.setdefault(key, []).append(t.state.name)
        if t.state.name == "COMPLETE":
            done_by.setdefault(key, []).append(t.user_attrs["worker"])
    return states, done_by


def test_three_workers_share_a_grid_and_one_killed_mid_trial_loses_nothing(tmp_path, pg):
    path, name = write_sweep(tmp_path, train_size=1500, epochs=2)
    keys = {t.key for t in spec.load(path).trials()}
    cmd = bench_cmd("run", path, "--storage", pg, "--results", tmp_path / "results", "--device", "cpu", "--quiet")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env) for _ in range(3)]
    victim = procs[0]
    deadline = time.time() + 120
    while time.time() < deadline and victim.poll() is None and not signed_running(pg, name, victim.pid):
        time.sleep(0.2)
    assert victim.poll() is None, victim.stderr.read().decode()
    os.kill(victim.pid, signal.SIGKILL)  # mid-trial: its trial stays RUNNING, nobody told
    victim.wait()
    for p in procs[1:]:
        assert p.wait(timeout=300) == 0, p.stderr.read().decode()

    states, done_by = outcome(pg, name)
    assert set(states) == keys
    assert all(s.count("COMPLETE") == 1 for s in states.values()), states  # every point, exactly once
    killed = [k for k, s in states.items() if "FAIL" in s]
    assert len(killed) == 1 and states[killed[0]] == ["FAIL", "COMPLETE"]  # closed, then redone by another
    assert not done_by[killed[0]][0].endswith(f":{victim.pid}")
    assert len(Ledger.open(pg, name).records()) == len(keys)


def test_workers_option_starts_local_processes_on_a_journal_file(tmp_path):
    path, name = write_sweep(tmp_path, train_size=400)
    results = tmp_path / "results"
    code = main(["run", str(path), "--workers", "2", "--results", str(results), "--device", "cpu", "--quiet"])
    url = default_url(results, name)
    assert code == 0 and url == f"journal:{results / name / 'study.journal'}"  # several processes: not SQLite
    states, done_by = outcome(url, name)
    assert len(states) == 6 and all(s == ["COMPLETE"] for s in states.values())
    assert (results / name / "report.md").is_file()
    # the default storage is now the journal: a plain rerun finds everything done
    summary = api.run_sweep(spec.load(path), RunContext(results_dir=results, device="cpu", quiet=True))
    assert summary["ran"] == 0 and summary["plan"].done == 6


def test_a_worker_joins_by_name_and_takes_the_queue(tmp_path, pg, capsys):
    path, name = write_sweep(tmp_path)
    sweep = spec.load(path)
    lg = Ledger.for_sweep(sweep, pg)
    lg.bind(sweep)
    assert lg.enqueue(lg.plan(sweep.trials()).todo) == 6  # queued, nobody working yet
    lg.enqueue(sweep.trials()[:2])  # a second worker queued the same points in a race
    code = main(["worker", name, "--storage", pg, "--results", str(tmp_path / "results"), "--device", "cpu",
                 "--quiet"])
    assert code == 0
    states, _ = outcome(pg, name)
    assert sorted(states) == sorted(t.key for t in sweep.trials())
    assert all(s == ["COMPLETE"] for s in states.values())  # the duplicates were dropped, not rerun
    dropped = [t for t in lg.study.get_trials() if t.user_attrs.get("dropped")]
    assert len(dropped) == 2


def test_wrong_password_or_dead_server_is_one_line_with_the_password_masked(tmp_path, pg, capsys):
    path, _ = write_sweep(tmp_path)
    wrong = pg.replace("bench-secret", "not-the-password")
    dead = "postgresql://bench:hunter2@127.0.0.1:9/bench"
    for url in (wrong, dead):
        code = main(["run", str(path), "--storage", url, "--device", "cpu", "--results", str(tmp_path / "r")])
        err = capsys.readouterr().err
        assert code == 1 and "cannot open study storage postgresql://bench:***@127.0.0.1" in err
        assert "not-the-password" not in err and "hunter2" not in err and "Traceback" not in err
    assert not (tmp_path / "r").exists()
    code = main(["worker", "nosuch", "--storage", pg, "--device", "cpu"])
    assert code == 1 and "no study named 'nosuch'" in capsys.readouterr().err


def children_of(pid):
    """Pids whose parent is ``pid`` (from /proc: no procps needed)."""
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = open(f"/proc/{entry}/stat").read()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                out.append(entry)
    return out


def long_run_with_two_workers(tmp_path, signed=1):
    """`bench run --workers 2` on a sweep long enough to be stopped mid-trial, once ``signed``
    workers have signed their trials: (process, its two workers' pids, sweep file, name, results)."""
    path, name = write_sweep(tmp_path, train_size=4000, epochs=50)
    results = tmp_path / "results"
    proc = subprocess.Popen(bench_cmd("run", path, "--workers", "2", "--results", results, "--device", "cpu",
                                      "--quiet"), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    journal = results / name / "study.journal"
    deadline = time.time() + 90
    while time.time() < deadline and not (journal.exists() and journal.read_bytes().count(b'"worker"') >= signed):
        time.sleep(0.3)
    children = children_of(proc.pid)
    assert len(children) == 2
    return proc, children, path, name, results


def test_sigterm_stops_every_local_worker(tmp_path):
    proc, children, path, name, results = long_run_with_two_workers(tmp_path)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=90) == 143
    assert "terminated (SIGTERM)" in proc.stderr.read().decode()
    for pid in children:  # no orphan keeps running
        with pytest.raises(ProcessLookupError):
            os.kill(int(pid), 0)
    lg = Ledger.open(default_url(results, name), name)
    plan = lg.plan(spec.load(path).trials())
    assert plan.running_elsewhere == 0 and plan.interrupted >= 1  # their trials: interrupted, to redo


def test_workers_stop_when_their_parent_is_killed(tmp_path):
    """kill -9 of `bench run --workers 2` cannot tell its workers: they notice by themselves
    (the kernel's parent-death signal, or their poll of the parent), record their trials as
    interrupted, and exit; none goes on taking trials."""
    proc, children, path, name, results = long_run_with_two_workers(tmp_path, signed=2)
    proc.kill()
    proc.wait()
    deadline = time.time() + 60
    alive = children
    while alive and time.time() < deadline:
        alive = [pid for pid in alive if os.path.exists(f"/proc/{pid}") and
                 "Z" not in open(f"/proc/{pid}/stat").read().split(")")[-1].split()[0]]
        time.sleep(0.2)
    assert not alive, f"workers {alive} outlived their parent"
    lg = Ledger.open(default_url(results, name), name)
    plan = lg.plan(spec.load(path).trials())
    assert plan.running_elsewhere == 0 and plan.interrupted >= 2  # both trials recorded, to redo


@pytest.mark.parametrize("granted, count, expected", [
    ("2,3", 8, ["2", "3", "2"]),                        # Slurm/Kubernetes granted GPUs 2 and 3: never 0 or 1
    ("GPU-a1b2,GPU-c3d4", 2, ["GPU-a1b2", "GPU-c3d4", "GPU-a1b2"]),  # UUIDs, as given
    ("MIG-x/1/0, MIG-x/2/0", 1, ["MIG-x/1/0", "MIG-x/2/0", "MIG-x/1/0"]),
    ("5", 1, [None, None, None]),                       # one device granted: every worker shares it
    ("", 0, [None, None, None]),                        # none granted: none taken
    (None, 2, ["0", "1", "0"]),                         # nothing inherited: the devices this process sees
    (None, 1, [None, None, None]),
])
def test_each_local_worker_gets_a_device_the_scheduler_granted(monkeypatch, tmp_path, granted, count, expected):
    import subprocess
    import torch
    from bench.study import workers
    from bench.study.context import RunContext
    from bench.study.ledger import Ledger
    started = []

    class Done:
        def wait(self, timeout=None):
            return 0

    monkeypatch.setattr(subprocess, "Popen", lambda cmd, env=None, **kw: started.append(env) or Done())
    monkeypatch.setattr(Ledger, "open", classmethod(lambda cls, u, name, **kw: type("L", (), {"records": list})()))
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)
    if granted is None:
        monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    else:
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", granted)
    workers.spawn_workers(RunContext(study="tiny", storage="journal:x", workers=3, device=torch.device("cuda"),
                                     results_dir=tmp_path, quiet=True))
    got = [env.get("CUDA_VISIBLE_DEVICES") for env in started]
    assert got == [granted if e is None else e for e in expected]  # None: left as inherited


def test_after_ctrl_c_the_workers_get_one_wait_together_not_one_each(monkeypatch, tmp_path):
    """Ctrl-C gives the local workers STOP_WAIT_S together to record their trials as interrupted;
    then those still running are killed. Three workers that ignore SIGINT cost one wait, not three."""
    import torch

    from bench.study import workers

    real, started, asked = subprocess.Popen, [], []

    class Stubborn(real):
        def __init__(self, cmd, env=None, preexec_fn=None):
            super().__init__([sys.executable, "-c", "import signal, time; signal.signal(signal.SIGINT, "
                              "signal.SIG_IGN); print(flush=True); time.sleep(120)"], stdout=subprocess.PIPE)
            started.append(self)

        def wait(self, timeout=None):
            if timeout is None and not asked:  # the parent's first wait: Ctrl-C arrives there
                for p in started:
                    p.stdout.readline()  # each has set SIGINT aside
                asked.append(time.monotonic())
                raise KeyboardInterrupt
            return super().wait(timeout)

    monkeypatch.setattr(workers.subprocess, "Popen", Stubborn)
    monkeypatch.setattr(workers, "STOP_WAIT_S", 2.0)
    ctx = RunContext(study="s", storage=f"sqlite:///{tmp_path}/s.db", device=torch.device("cpu"), workers=3,
                     results_dir=tmp_path)
    with pytest.raises(KeyboardInterrupt):
        workers.spawn_workers(ctx)
    waited = time.monotonic() - asked[0]
    assert 2.0 <= waited < 4.0, waited  # one wait each would be 6 s
    assert all(p.poll() is not None for p in started)  # none left running
    for p in started:
        p.stdout.close()
