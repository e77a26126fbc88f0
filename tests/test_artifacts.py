"""Checkpoints and weights any worker can reach (bench.study.artifacts): a trial interrupted on one
"machine" (its own results folder) is resumed on another from the checkpoint it left in a shared
artifact store; `bench collapse --trial` finds saved weights there; a damaged artifact is set
aside and the trial starts over; a store that cannot be written is one line."""
import os
import signal
import subprocess
import sys
import time

import pytest

from bench.cli import main
from bench.study.artifacts import CHECKPOINT, TrialFiles, open_store
from bench.study.ledger import Ledger

SWEEP = """
name: art
data: {name: shapes, train_size: 768, test_size: 32}
model: {img_size: 16, patch_size: 4, embed_dim: 16, num_heads: 2, mlp_ratio: 2}
train: {epochs: 4, batch_size: 32, check_every: 1}
profile: {batch_size: 4, warmup: 0, iters: 1, rounds: 0}
collapse: null
grid: {depth: [1, 2]}
seeds: [0]
"""
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def bench(*args):
    return [sys.executable, "-m", "bench.cli", *map(str, args)]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("art-ref")
    (tmp / "art.yaml").write_text(SWEEP)
    subprocess.run(bench("run", tmp / "art.yaml", "--device", "cpu", "--quiet", "--results", tmp / "r"), env=ENV,
                   check=True, capture_output=True)
    return {r["key"]: r["top1"] for r in Ledger.locate("art", None, tmp / "r").records()}


@pytest.mark.slow
def test_a_trial_interrupted_on_one_machine_resumes_on_another_from_the_shared_store(tmp_path, uninterrupted):
    """Two `bench worker` processes in separate results folders (two "machines") share a journal
    storage and an artifact folder; the first is killed (SIGKILL) once its first checkpoint is in
    the store, the second takes its trial over from that checkpoint."""
    (tmp_path / "art.yaml").write_text(SWEEP)
    store, storage = tmp_path / "shared-artifacts", f"journal:{tmp_path / 'shared.journal'}"
    subprocess.run(bench("run", tmp_path / "art.yaml", "--queue-only", "--results", tmp_path / "login", "--storage",
                         storage, "--artifacts", store), env=ENV, check=True, capture_output=True)
    a = subprocess.Popen(bench("worker", "art", "--device", "cpu", "--quiet", "--results", tmp_path / "machine-a",
                               "--storage", storage, "--save-weights"),
                         env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    # A's trial with a checkpoint recorded (uploaded and named in the study, not just a file in the
    # store): freeze A, confirm the trial is still running (it cannot finish in between), kill A
    ledger, deadline, held = Ledger.open(storage, "art"), time.monotonic() + 120, False
    while time.monotonic() < deadline and a.poll() is None and not held:
        if any(t.state.name == "RUNNING" and CHECKPOINT in t.user_attrs for t in ledger.study.get_trials()):
            os.killpg(a.pid, signal.SIGSTOP)
            held = any(t.state.name == "RUNNING" and CHECKPOINT in t.user_attrs
                       for t in ledger.study.get_trials())
            if not held:
                os.killpg(a.pid, signal.SIGCONT)
        time.sleep(0.05)
    assert held, "A never held a trial with a checkpoint in the store"
    os.killpg(a.pid, signal.SIGKILL)
    a.wait()
    b = subprocess.run(bench("worker", "art", "--device", "cpu", "--results", tmp_path / "machine-b",
                             "--storage", storage, "--save-weights"), env=ENV, capture_output=True, text=True)
    assert b.returncode == 0, b.stderr[-2000:]
    assert "fetched from the artifact store" in b.stderr  # B resumed A's trial from A's checkpoint
    lg = Ledger.open(storage, "art")
    states = {}
    for t in lg.study.get_trials():
        states.setdefault(t.user_attrs.get("key"), []).append(t.state.name)
    assert sorted(states) == sorted(uninterrupted) and all(s.count("COMPLETE") == 1 for s in states.values())
    assert {r["key"]: r["top1"] for r in lg.records()} == uninterrupted  # the same numbers as never interrupted
    assert not (tmp_path / "machine-b" / "art" / "checkpoints").is_dir() or \
        not list((tmp_path / "machine-b" / "art" / "checkpoints").glob("*.pt"))
    left = [t.user_attrs[CHECKPOINT]["artifact_id"] for t in lg.study.get_trials() if CHECKPOINT in t.user_attrs]
    assert all(not (store / i).exists() for i in left)  # recorded: no checkpoint left in the store
    # the weights were saved on B (or A) and are found from a third "machine" through the store
    (tmp_path / "machine-c").mkdir()
    c = subprocess.run(bench("collapse", "art", "--trial", lg.records()[0]["trial"], "--device", "cpu", "--json",
                             "--results", tmp_path / "machine-c", "--storage", storage,
                             "--out", tmp_path / "machine-c" / "collapse"), env=ENV, capture_output=True, text=True)
    assert c.returncode == 0, c.stderr[-2000:]


def test_a_damaged_checkpoint_artifact_is_set_aside_and_the_trial_starts_over(tmp_path, capsys):
    path = tmp_path / "art.yaml"
    path.write_text(SWEEP.replace("epochs: 4", "epochs: 1").replace("depth: [1, 2]", "depth: [1]"))
    store = tmp_path / "store"
    assert main(["run", str(path), "--device", "cpu", "--quiet", "--results", str(tmp_path / "r"), "--artifacts",
                 str(store), "--keep-checkpoints"]) == 0
    lg = Ledger.locate("art", None, tmp_path / "r")
    files = TrialFiles(open_store(str(store)), lg)
    key = lg.records()[0]["key"]
    meta = files.newest(key)
    assert meta is not None and (store / meta["artifact_id"]).is_file()  # kept: --keep-checkpoints
    (store / meta["artifact_id"]).write_bytes(b"not this checkpoint")
    assert not files.fetch(meta, tmp_path / "x.pt") and not (tmp_path / "x.pt").exists()
    assert "cannot be used (its sha256 does not match); set aside" in capsys.readouterr().err
    assert files.newest(key) is None  # never offered again


def test_a_store_that_cannot_be_written_is_one_line(tmp_path, capsys):
    blocked = tmp_path / "a-file"
    blocked.write_text("x")
    path = tmp_path / "art.yaml"
    path.write_text(SWEEP)
    assert main(["run", str(path), "--device", "cpu", "--quiet", "--results", str(tmp_path / "r"),
                 "--artifacts", str(blocked / "store")]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--artifacts" in err and "cannot write there" in err
    assert main(["run", str(path), "--results", str(tmp_path / "r"), "--artifacts", "ftp://host/x"]) == 1
    assert "expected a folder, file://PATH, s3://BUCKET or gs://BUCKET" in capsys.readouterr().err
