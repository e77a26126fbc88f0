"""Checkpoints and trials under faults (issue 17): a checkpoint resumes only the very trial
that made it, a damaged one is set aside (never deleted) and the trial starts again, failed
trials make the run exit 1, and a run stopped before its first trial leaves only what was
there before it."""
import dataclasses
import os
import random

import pytest

from bench import spec, training, api
from bench.cli import main
from bench.config import DataConfig, TrainConfig
from bench.errors import BenchError
from bench.study import trials
from bench.study.context import RunContext

# one trial of two epochs: a checkpoint after the first
ONE = {"grid.depth": [2], "grid.attention": ["re"], "compare": None, "train.epochs": 2}


def interrupt_after_epoch_1(monkeypatch, run, sweep_file, sets, **kwargs):
    """Run ``sets`` until its trial's first checkpoint is written, then stop it (as a kill
    between epochs does); the checkpoint's path."""
    real = trials.train

    def killed(*args, **kw):
        def on_epoch(epoch, top1, loss):
            if epoch == 1:
                raise KeyboardInterrupt  # after epoch 1's checkpoint
        return real(*args, **{**kw, "hooks": training.Hooks(kw["hooks"].on_step, on_epoch)})

    monkeypatch.setattr(trials, "train", killed)
    with pytest.raises(KeyboardInterrupt):
        run(sweep_file, sets, **kwargs)
    monkeypatch.setattr(trials, "train", real)
    sweep = spec.load(sweep_file, sets)
    path = RunContext(study=sweep.name, results_dir=run.results).checkpoint_path(sweep.trials()[0].key)
    assert path.is_file()
    return path


def fresh(sweep_file, tmp_path, sets):
    """The record of ``sets``'s one trial run from scratch in a folder of its own."""
    (record,) = api.run_sweep(spec.load(sweep_file, sets),
                              RunContext(results_dir=tmp_path / "fresh", device="cpu", quiet=True))["records"]
    assert record["resumed"] is False
    return record


@pytest.fixture
def run(run, tmp_path):
    run.results = tmp_path / "results"
    return run


def same_numbers(a, b):
    keys = ("status", "top1", "top1_per_epoch", "train_loss_per_epoch", "epochs", "steps")
    return {k: a.get(k) for k in keys} == {k: b.get(k) for k in keys}


@pytest.mark.parametrize("change", [{"train.lr": 0.01, "train.epochs": 4}, {"train.epochs": 3},
                                    {"data.crop_padding": 0}])
def test_a_checkpoint_made_with_other_settings_is_discarded_never_resumed(change, sweep_file, tmp_path, monkeypatch,
                                                                            run, capsys):
    checkpoint = interrupt_after_epoch_1(monkeypatch, run, sweep_file, ONE)
    capsys.readouterr()
    other = {**ONE, **change}  # another study (its own storage), the same results folder
    (record,) = run(sweep_file, other, storage=f"sqlite:///{tmp_path / 'other.db'}")["records"]
    err = capsys.readouterr().err
    assert record["resumed"] is False and record["status"] == "complete"
    assert same_numbers(record, fresh(sweep_file, tmp_path, other))  # as if no checkpoint had been there
    assert len(record["top1_per_epoch"]) == other["train.epochs"]
    (line,) = [x for x in err.splitlines() if "discarded" in x]
    assert str(checkpoint) in line and all(k in line for k in change)  # names the trial and what differs


def test_a_checkpoint_of_the_same_settings_still_resumes(sweep_file, tmp_path, monkeypatch, run):
    interrupt_after_epoch_1(monkeypatch, run, sweep_file, ONE)
    (record,) = run(sweep_file, ONE, storage=f"sqlite:///{tmp_path / 'other.db'}")["records"]
    assert record["resumed"] is True and same_numbers(record, fresh(sweep_file, tmp_path, ONE))


def test_a_checkpoint_s_identity_holds_every_setting_and_the_versions():
    import timm
    import torch

    import bench
    cfg = TrainConfig(epochs=2)
    ident = training.identity(cfg, DataConfig(), 0, "fp32", {"variant": {"depth": 2}})
    assert ident["version.torch"] == f'"{torch.__version__}"' and ident["version.timm"] == f'"{timm.__version__}"'
    assert ident["version.bench"] == f'"{bench.__version__}"' and ident["variant.depth"] == "2"
    assert {f"train.{f.name}" for f in dataclasses.fields(TrainConfig)} <= set(ident)  # every one: epochs too
    assert ident["seed"] == "0" and ident["dtype"] == '"fp32"' and "data.crop_padding" in ident


@pytest.mark.parametrize("damage", ["truncated", "random bytes"])
def test_a_damaged_checkpoint_is_set_aside_and_the_trial_starts_again(damage, sweep_file, tmp_path, monkeypatch,
                                                                       run, ledger, capsys):
    checkpoint = interrupt_after_epoch_1(monkeypatch, run, sweep_file, ONE)
    good = checkpoint.read_bytes()
    bad = good[:len(good) // 2] if damage == "truncated" else random.Random(0).randbytes(len(good))
    checkpoint.write_bytes(bad)
    capsys.readouterr()
    (record,) = run(sweep_file, ONE)["records"]
    err = capsys.readouterr().err
    assert record["status"] == "complete" and record["resumed"] is False
    assert same_numbers(record, fresh(sweep_file, tmp_path, ONE))
    (aside,) = checkpoint.parent.glob(f"{checkpoint.name}.damaged-*")
    assert aside.read_bytes() == bad  # kept as it was, beside
    (line,) = [x for x in err.splitlines() if "damaged" in x]
    assert str(checkpoint) in line and aside.name in line
    assert run(sweep_file, ONE)["ran"] == 0 and [r["status"] for r in ledger().records()] == ["complete"]


def test_a_failed_trial_keeps_its_checkpoint_for_retry_failed(sweep_file, tmp_path, monkeypatch, run):
    checkpoint = interrupt_after_epoch_1(monkeypatch, run, sweep_file, ONE)
    real = trials.train

    def oom(*args, **kwargs):
        raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(trials, "train", oom)
    assert run(sweep_file, ONE)["records"][0]["status"] == "failed"
    assert checkpoint.is_file()
    monkeypatch.setattr(trials, "train", real)
    (record,) = run(sweep_file, ONE, retry_failed=True)["records"]
    assert record["resumed"] is True and same_numbers(record, fresh(sweep_file, tmp_path, ONE))


def vanishing_cache(real):
    """trials.train, failing for the 2-block variants as a pruned cache does under a run."""
    def train(model, *args, **kwargs):
        if len(model.blocks) == 2:
            raise FileNotFoundError(2, "No such file or directory", "/cache/shapes-16/train.images.npy")
        return real(model, *args, **kwargs)
    return train


def test_a_run_with_failed_trials_exits_1_with_one_line(sweep_file, tmp_path, monkeypatch, capsys):
    real = trials.train
    monkeypatch.setattr(trials, "train", vanishing_cache(real))
    args = ["run", str(sweep_file), "--results", str(tmp_path / "results"), "--device", "cpu", "--quiet"]
    code = main(args)
    err = capsys.readouterr().err
    (line,) = [x for x in err.splitlines() if x.startswith("error:")]
    assert code == 1 and "2 of 4 trials run now failed" in line
    assert "FileNotFoundError" in line and "/cache/shapes-16/train.images.npy" in line
    assert main(args) == 0  # nothing run now: the failed ones wait for --retry-failed
    monkeypatch.setattr(trials, "train", real)
    assert main([*args, "--retry-failed"]) == 0 and "error" not in capsys.readouterr().err


def test_diverged_trials_are_results_and_exit_0(sweep_file, tmp_path, monkeypatch, capsys):
    real = trials.train

    def diverged(*args, **kwargs):
        result = real(*args, **kwargs)
        result.update(diverged=True, top1=None, train_loss=float("nan"))
        return result

    monkeypatch.setattr(trials, "train", diverged)
    code = main(["run", str(sweep_file), "--results", str(tmp_path / "results"), "--device", "cpu", "--quiet"])
    assert code == 0 and "error" not in capsys.readouterr().err


def unreadable(*_args, **_kwargs):
    raise BenchError("cannot read /data/cifar-10-batches-py/data_batch_1: No such file or directory")


@pytest.mark.parametrize("storage", [None, "sqlite", "journal"])
def test_a_run_stopped_before_any_trial_removes_what_it_made(storage, sweep_file, tmp_path, monkeypatch, run):
    url = {None: None, "sqlite": f"sqlite:///{tmp_path / 's.db'}", "journal": f"journal:{tmp_path / 's.journal'}"}
    monkeypatch.setattr(trials, "load_data", unreadable)
    before = sorted(os.listdir(tmp_path))
    with pytest.raises(BenchError, match="cannot read"):
        run(sweep_file, storage=url[storage])
    assert sorted(os.listdir(tmp_path)) == before  # no results folder, no study file


def test_a_run_stopped_before_any_trial_leaves_what_was_there(sweep_file, tmp_path, monkeypatch, run, ledger):
    run(sweep_file, {"grid.depth": [1]})  # a study with two results
    out = tmp_path / "results" / "tiny"
    (out / "notes.txt").write_text("mine")
    (out / "checkpoints" / "keep.txt").write_text("also mine")
    files = {p: p.read_bytes() for p in out.rglob("*") if p.is_file() and p.name != "study.db"}
    monkeypatch.setattr(trials, "load_data", unreadable)
    with pytest.raises(BenchError, match="cannot read"):
        run(sweep_file)  # depth 2 to run: its data cannot load
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file() and p.name != "study.db"} == files
    assert len(ledger().records()) == 2 and (out / "checkpoints").is_dir()


@pytest.mark.parametrize("folder", ["checkpoints", "weights"])
def test_a_file_where_a_results_folder_goes_is_named_and_kept(folder, sweep_file, tmp_path, capsys):
    out = tmp_path / "results" / "tiny"
    out.mkdir(parents=True)
    (out / folder).write_bytes(b"not bench's\n")
    code = main(["run", str(sweep_file), "--results", str(tmp_path / "results"), "--device", "cpu", "--quiet",
                 "--save-weights"])
    err = capsys.readouterr().err
    assert code == 1 and f"{out / folder} is a file, not a folder" in err and err.count("error") == 1
    assert (out / folder).read_bytes() == b"not bench's\n"
    assert os.listdir(out) == [folder]  # no study.db, no checkpoints/ left behind


def test_a_storage_hiccup_while_reporting_an_epoch_does_not_fail_the_trial(sweep_file, monkeypatch, run, capsys):
    """The per-epoch intermediate value is for dashboards: a storage error writing it (a lock
    timeout, a dropped connection) is said once per trial, and the trial completes with its
    result, as one that never reported."""
    from bench.study.ledger import Ledger
    calls = []

    def flaky(self, handle, value, step, *, prune=False):
        calls.append(step)
        raise RuntimeError("database is locked")
    monkeypatch.setattr(Ledger, "report", flaky)
    summary = run(sweep_file)
    records = summary["records"]
    assert len(records) == 4 and all(r["status"] == "complete" for r in records)
    assert len(calls) == 4  # one epoch per trial, each tried once
    assert capsys.readouterr().err.count("not stored as an intermediate value (database is locked)") == 4
