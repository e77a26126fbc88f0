"""Sweeps end to end: the ledger, resumption after Ctrl-C and kill -9, failures, reports, CLI."""
import math
import os
import signal
import sqlite3
import subprocess
import sys
import time
import warnings

import optuna
import pandas as pd
import pytest

from conftest import TINY

from bench import spec, api
from bench.cli import main
from bench.costs import closed_form
from bench.errors import BenchError, SpecError
from bench.records import COLLAPSE_SUMMARY
from bench.study import stored_reports as report, trials
from bench.study.context import RunContext
from bench.study.ledger import Ledger
from bench.training import Hooks

def states(lg):
    return [t.state.name for t in lg.study.get_trials()]


def test_a_sweep_records_every_trial_and_writes_the_report(sweep_file, tmp_path, run, ledger):
    summary = run(sweep_file)
    assert summary["ran"] == 4 and states(ledger()) == ["COMPLETE"] * 4
    lg = ledger()
    records = lg.records()
    details = lg.details([r["trial"] for r in records])  # per-block arrays, stored beside each record
    sweep = spec.load(sweep_file)
    for r in records:
        v = next(v for v in sweep.variants if v.depth == r["depth"] and v.attention == r["attention"])
        assert r["param_count"] == pytest.approx(closed_form(v)["params"] / 1e6)
        assert r["infer_gmacs"] == pytest.approx(closed_form(v)["macs"] / 1e9)
        assert 0 <= r["top1"] <= 100 and r["epochs"] == 1 and r["steps"] == 3
        assert r["torch_version"] and r["device_name"] and r["key"] == spec.trial_key(v, 0)
        # per-trial overhead: everything but profiling and training
        assert r["time_trial_s"] >= r["time_profile_s"] + r["time_train_s"]
        # attention collapse of the trained model, per block
        d = r["depth"]
        c = details[r["trial"]]
        assert "collapse" not in r and len(c["similarity"]) == d and len(c["cross_head_similarity"]) == d
        assert r["similar_blocks"] == c["similar_blocks"] and 0 <= r["similar_blocks"] <= d - 1
        assert all(r[k] == c[k] for k in COLLAPSE_SUMMARY)  # the summary columns runs.csv carries
    out = tmp_path / "results" / "tiny"
    csv = pd.read_csv(out / "runs.csv")
    assert len(csv) == 4 and list(csv.columns[:4]) == ["trial", "key", "status", "seed"]
    assert set(COLLAPSE_SUMMARY) <= set(csv.columns)
    assert sorted(csv["top1"]) == sorted(r["top1"] for r in records)
    text = (out / "report.md").read_text()
    assert "re-attention" in text and "top1_vs_gmacs.png" in text
    # every variant timed side by side after the trials, and the comparison uses those figures
    side = lg.side_by_side()
    assert set(side["variants"]) == {spec.variant_key(v) for v in sweep.variants} and side["rounds"] == 5
    assert "Train samples/s: timed side by side" in text
    assert {p.name for p in out.glob("*.png")} >= {"top1_vs_gmacs.png", "top1_vs_depth.png",
                                                   "throughput_vs_depth.png"}


def test_collapse_at_initialisation_too(sweep_file, tmp_path, run):
    summary = run(sweep_file, sets={"collapse.at_init": True, "grid.depth": [2], "grid.attention": ["self"],
                                                     "compare": None})
    r = summary["records"][0]
    assert len(r["init_collapse"]["similarity"]) == 2 and "init_similar_blocks" in r
    assert r["init_collapse"]["similarity"] != r["collapse"]["similarity"]  # training changed the maps
    assert r["time_init_collapse_s"] > 0 and r["time_collapse_s"] > 0


def test_collapse_null_turns_it_off(sweep_file, tmp_path, run):
    one = {"grid.depth": [1], "grid.attention": ["self"], "compare": None}
    r = run(sweep_file, sets={"collapse": None, **one})
    assert "collapse" not in r["records"][0] and "similar_blocks" not in r["records"][0]


def test_rerun_skips_finished_trials_and_is_reproducible(sweep_file, tmp_path, run, ledger):
    first = run(sweep_file)
    again = run(sweep_file)
    assert again["ran"] == 0 and again["plan"].done == 4 and len(states(ledger())) == 4
    # same spec, fresh study: the same accuracies (seeded CPU training)
    other = tmp_path / "other"
    other.mkdir()
    redo = api.run_sweep(spec.load(sweep_file), RunContext(results_dir=other, device="cpu", quiet=True, report=False))
    results = lambda s: sorted((r["depth"], r["attention"], r["top1"], r["train_loss"])  # noqa: E731
                               for r in s["records"])
    assert results(first) == results(redo)


def fail_depth_2(real):
    """trials.train, raising for the 2-block variants."""
    def flaky(model, *args, **kwargs):
        if len(model.blocks) == 2:
            raise RuntimeError("boom in [/tmp/x]\nsecond line")  # brackets: not rich markup
        return real(model, *args, **kwargs)
    return flaky


def test_failures_are_recorded_and_retried_only_on_request(sweep_file, tmp_path, monkeypatch, run, ledger):
    real = trials.train
    monkeypatch.setattr(trials, "train", fail_depth_2(real))
    summary = run(sweep_file)
    failed = [r for r in summary["records"] if r["status"] == "failed"]
    assert len(failed) == 2 and failed[0]["error"] == "RuntimeError: boom in [/tmp/x]"
    assert sorted(states(ledger())) == ["COMPLETE", "COMPLETE", "FAIL", "FAIL"]
    report = (tmp_path / "results" / "tiny" / "report.md").read_text()
    assert "RuntimeError: boom in [/tmp/x]" in report

    monkeypatch.setattr(trials, "train", real)
    assert run(sweep_file)["ran"] == 0  # failed ones wait for --retry-failed
    retried = run(sweep_file, retry_failed=True)
    assert retried["ran"] == 2 and all(r["status"] == "complete" for r in retried["records"])
    rows = ledger().records()
    assert len(rows) == 4 and {r["status"] for r in rows} == {"complete"}  # newest record per key


def test_ctrl_c_marks_the_trial_interrupted_and_a_rerun_redoes_it(sweep_file, tmp_path, monkeypatch, run, ledger):
    real, calls = trials.train, []

    def interrupt_second(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(trials, "train", interrupt_second)
    with pytest.raises(KeyboardInterrupt):
        run(sweep_file)
    assert states(ledger()) == ["COMPLETE", "FAIL", "WAITING", "WAITING"]  # the rest stay queued
    monkeypatch.setattr(trials, "train", real)
    summary = run(sweep_file)
    assert summary["plan"].interrupted == 1 and summary["ran"] == 3
    assert len(ledger().records()) == 4


def test_an_interrupted_trial_resumes_from_its_last_epoch(sweep_file, tmp_path, monkeypatch, run, ledger):
    three = {"train.epochs": 3, "grid.depth": [2], "grid.attention": ["re"], "compare": None}
    real = trials.train

    def killed_in_epoch_3(*args, **kwargs):
        def on_epoch(epoch, top1, loss):
            if epoch == 2:
                raise KeyboardInterrupt  # after epoch 2's checkpoint
        return real(*args, **{**kwargs, "hooks": Hooks(kwargs["hooks"].on_step, on_epoch)})

    monkeypatch.setattr(trials, "train", killed_in_epoch_3)
    with pytest.raises(KeyboardInterrupt):
        run(sweep_file, three)
    (checkpoint,) = (tmp_path / "results" / "tiny" / "checkpoints").glob("*.pt")
    monkeypatch.setattr(trials, "train", real)
    resumed = run(sweep_file, three)["records"][0]
    assert resumed["resumed"] and not checkpoint.exists()  # done: its checkpoint removed
    clean = api.run_sweep(spec.load(sweep_file, three),
                          RunContext(results_dir=tmp_path / "clean", device="cpu", quiet=True))
    assert resumed["top1_per_epoch"] == clean["records"][0]["top1_per_epoch"]  # to the last digit
    assert resumed["top1"] == clean["records"][0]["top1"] and not clean["records"][0]["resumed"]


def curves(lg):
    """{trial number: its intermediate values} of the study's trials, as optuna-dashboard reads them."""
    return {t.number: t.intermediate_values for t in lg.study.get_trials()}


def test_every_grid_trial_reports_each_epoch_s_top1_as_it_ends(make_spec, tmp_path, monkeypatch, run, ledger):
    path = make_spec(train={"epochs": 2})
    real, seen, dashboard = trials.train, [], []

    def watched(*args, **kwargs):  # a dashboard's view of the storage, the moment each epoch is told
        told = kwargs["hooks"].on_epoch

        def on_epoch(epoch, top1, loss):
            stop = told(epoch, top1, loss)
            dashboard[:] = dashboard or [ledger()]  # its own connection to the study
            (running,) = dashboard[0].study.get_trials(states=(optuna.trial.TrialState.RUNNING,))
            seen.append((epoch, dict(running.intermediate_values)))
            return stop
        return real(*args, **{**kwargs, "hooks": Hooks(kwargs["hooks"].on_step, on_epoch)})

    monkeypatch.setattr(trials, "train", watched)
    summary = run(path)
    assert [e for e, _ in seen] == [1, 2] * 4 and all(max(values) == e for e, values in seen)  # live, one per epoch
    lg = ledger()
    by_number = curves(lg)
    records = lg.records()
    assert len(records) == 4
    for r in records:  # the values "how early the ranking settles" reads are the ones in the storage
        assert len(r["top1_per_epoch"]) == 2
        assert by_number[r["trial"]] == dict(enumerate(r["top1_per_epoch"], 1))  # step = epoch, from 1
    # reporting moves no random stream: the same numbers as a run that reports nothing
    monkeypatch.setattr(trials, "train", real)
    monkeypatch.setattr(trials, "_reporting", lambda ledger, handle, prune: (None, None))
    silent = api.run_sweep(spec.load(path),
                           RunContext(results_dir=tmp_path / "silent", device="cpu", quiet=True, report=False))
    numbers = lambda s: sorted((r["depth"], r["attention"], r["top1_per_epoch"],  # noqa: E731
                                r["train_loss_per_epoch"]) for r in s["records"])
    assert numbers(summary) == numbers(silent)
    assert not any(curves(Ledger.locate("tiny", None, tmp_path / "silent")).values())


def test_a_search_without_a_pruner_reports_each_epoch_too(make_spec, run, ledger):
    # objectives top1 and gmacs: a two-objective study, no pruner
    path = make_spec(grid=None, compare=None, train={"epochs": 2}, collapse=None,
                     search={"depth": [1, 2]}, study={"objectives": ["top1", "gmacs"], "sampler": "random",
                                                      "n_trials": 2, "seed": 0})
    run(path, report=False)
    ts = [t for t in ledger().study.get_trials() if "record" in t.user_attrs]
    assert ts
    for t in ts:
        assert t.intermediate_values == dict(enumerate(t.user_attrs["record"]["top1_per_epoch"], 1))


def test_a_resumed_trial_reports_every_epoch_once_from_its_checkpoint_on(sweep_file, tmp_path, monkeypatch, run,
                                                                         ledger):
    three = {"train.epochs": 3, "grid.depth": [2], "grid.attention": ["re"], "compare": None}
    real = trials.train

    def killed_after_epoch_2(*args, **kwargs):
        told = kwargs["hooks"].on_epoch

        def on_epoch(epoch, top1, loss):
            told(epoch, top1, loss)  # reported, then the worker dies before epoch 3
            if epoch == 2:
                raise KeyboardInterrupt
        return real(*args, **{**kwargs, "hooks": Hooks(kwargs["hooks"].on_step, on_epoch,
                                                       kwargs["hooks"].on_resume)})

    monkeypatch.setattr(trials, "train", killed_after_epoch_2)
    with pytest.raises(KeyboardInterrupt):
        run(sweep_file, three)
    monkeypatch.setattr(trials, "train", real)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        resumed = run(sweep_file, three, report=False)["records"][0]
    assert not [w for w in caught if "already reported" in str(w.message)]  # Optuna ignores a step told twice
    assert resumed["resumed"] and len(resumed["top1_per_epoch"]) == 3
    first, second = ledger().study.get_trials()  # a resumed trial is a new Optuna trial
    assert first.state.name == "FAIL" and second.state.name == "COMPLETE"
    assert second.intermediate_values == dict(enumerate(resumed["top1_per_epoch"], 1))  # epochs 1-2 from the checkpoint
    assert first.intermediate_values == {1: resumed["top1_per_epoch"][0], 2: resumed["top1_per_epoch"][1]}


def test_diverged_is_a_result_not_a_crash(sweep_file, tmp_path, monkeypatch, run, ledger):
    real = trials.train

    def nan_for_re(model, *args, **kwargs):
        result = real(model, *args, **kwargs)
        if type(model.blocks[0].attn).__name__ != "Attention":
            result.update(diverged=True, top1=None, train_loss=math.nan)
        return result

    monkeypatch.setattr(trials, "train", nan_for_re)
    run(sweep_file)
    assert sorted(states(ledger())) == ["COMPLETE", "COMPLETE", "PRUNED", "PRUNED"]
    assert run(sweep_file, retry_failed=True)["ran"] == 0
    df = pd.read_csv(tmp_path / "results" / "tiny" / "runs.csv")
    assert sorted(df["status"]) == ["complete", "complete", "diverged", "diverged"]
    assert df.loc[df["status"] == "diverged", "top1"].isna().all()


def test_kill_9_leaves_a_running_trial_that_the_rerun_redoes(sweep_file, tmp_path, run, ledger):
    slow = TINY.replace("train_size: 48", "train_size: 4000").replace("epochs: 1", "epochs: 50")
    sweep_file.write_text(slow)
    results = tmp_path / "results"
    proc = subprocess.Popen([sys.executable, "-m", "bench.cli", "run", str(sweep_file), "--results", str(results),
                             "--device", "cpu", "--quiet"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    db = results / "tiny" / "study.db"
    deadline = time.time() + 60
    running = 0
    while time.time() < deadline and not running:
        time.sleep(0.5)
        if db.exists():
            try:
                with sqlite3.connect(db) as con:
                    running = con.execute(  # claimed and signed by its worker
                        "select count(*) from trials t join trial_user_attributes a on a.trial_id = t.trial_id "
                        "where t.state = 'RUNNING' and a.key = 'worker'").fetchone()[0]
            except sqlite3.OperationalError:
                pass  # tables not created yet
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert running == 1, proc.stderr.read().decode()
    assert states(ledger()) == ["RUNNING", "WAITING", "WAITING", "WAITING"]

    sweep_file.write_text(TINY)  # other data and train settings: refused, nothing recorded
    with pytest.raises(SpecError, match="other settings.*--name"):
        run(sweep_file)
    sweep_file.write_text(slow)
    lg = ledger()
    plan = lg.plan(spec.load(sweep_file).trials())  # what `bench run` does first: the dead worker's trial
    assert plan.interrupted == 1 and len(plan.todo) == 1 and plan.queued == 3  # is closed, to be queued again
    closed = lg.study.get_trials()
    assert [t.state.name for t in closed] == ["FAIL", "WAITING", "WAITING", "WAITING"]
    assert "record" not in closed[0].user_attrs
    assert lg.plan(spec.load(sweep_file).trials()).interrupted == 1  # still to redo, not a failure


def test_time_command_times_the_study_again(sweep_file, tmp_path, capsys, run, ledger):
    run(sweep_file, sets={"profile.rounds": 0})  # no pass during the run
    assert ledger().side_by_side() is None
    assert "timed inside each trial" in (tmp_path / "results" / "tiny" / "report.md").read_text()
    code = main(["time", "tiny", "--rounds", "2", "--results", str(tmp_path / "results"), "--device", "cpu",
                 "--quiet"])
    assert code == 0 and ledger().side_by_side()["rounds"] == 2
    assert "timed side by side" in (tmp_path / "results" / "tiny" / "report.md").read_text()
    assert main(["time", "tiny", "--rounds", "0", "--results", str(tmp_path / "results")]) == 2
    assert run(sweep_file)["ran"] == 0  # rounds is no setting the records depend on: the same study


def wait_for_signed_trial(db, proc, timeout=90):
    """Wait until a trial of the SQLite study at ``db`` is claimed and signed by its worker."""
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        time.sleep(0.3)
        if db.exists():
            try:
                with sqlite3.connect(db) as con:
                    if con.execute("select count(*) from trials t join trial_user_attributes a on "
                                   "a.trial_id = t.trial_id where t.state = 'RUNNING' and a.key = 'worker'"
                                   ).fetchone()[0]:
                        return True
            except sqlite3.OperationalError:
                pass  # tables not created yet
    return False


def test_sigterm_records_the_trial_as_interrupted_and_a_rerun_redoes_exactly_it(sweep_file, tmp_path, run, ledger):
    sweep_file.write_text(TINY.replace("train_size: 48", "train_size: 4000").replace("epochs: 1", "epochs: 50"))
    results = tmp_path / "results"
    proc = subprocess.Popen([sys.executable, "-m", "bench.cli", "run", str(sweep_file), "--results", str(results),
                             "--device", "cpu", "--quiet"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    assert wait_for_signed_trial(results / "tiny" / "study.db", proc), proc.stderr.read().decode()
    proc.send_signal(signal.SIGTERM)  # what Slurm or Kubernetes send on preemption
    assert proc.wait(timeout=60) == 143
    err = proc.stderr.read().decode()
    assert "terminated (SIGTERM)" in err and "Traceback" not in err
    first = ledger().study.get_trials()
    assert [t.state.name for t in first] == ["FAIL", "WAITING", "WAITING", "WAITING"]
    assert first[0].user_attrs["record"]["status"] == "interrupted"
    plan = ledger().plan(spec.load(sweep_file).trials())
    assert plan.interrupted == 1 and [t.key for t in plan.todo] == [first[0].user_attrs["key"]] and plan.queued == 3


def test_an_interrupted_record_without_its_flag_is_still_interrupted(sweep_file, tmp_path, ledger):
    """A second Ctrl-C used to split the record from its flag: the state now comes from the record."""
    from bench.study.ledger import Ledger
    from bench.study.storage import default_url
    sweep = spec.load(sweep_file)
    (tmp_path / "results" / "tiny").mkdir(parents=True)
    lg = Ledger.for_sweep(sweep, default_url(tmp_path / "results", "tiny"))
    lg.bind(sweep)
    trial = sweep.trials()[0]
    handle = lg.ask()
    lg.adopt(handle, trial)
    handle.set_user_attr("record", {"status": "interrupted", "error": "interrupted", "seed": 0})
    lg.study.tell(handle, state=optuna.trial.TrialState.FAIL)  # no "interrupted" attribute
    plan = lg.plan([trial])
    assert plan.interrupted == 1 and plan.todo == [trial] and plan.failed_skipped == 0


def test_fidelity_command_compares_a_proxy_with_a_longer_run(sweep_file, tmp_path, capsys, run):
    run(sweep_file, {"profile.rounds": 0})
    api.run_sweep(spec.load(sweep_file, {"train.epochs": 2, "profile.rounds": 0, "name": "tiny-ref"}),
                  RunContext(results_dir=tmp_path / "results", device="cpu", quiet=True))
    code = main(["fidelity", "tiny", "--reference", "tiny-ref", "--results", str(tmp_path / "results")])
    out = capsys.readouterr().out
    assert code == 0 and "4 variants, Kendall τ" in out
    text = (tmp_path / "results" / "tiny" / "fidelity-tiny-ref.md").read_text()
    assert "Over the 4 variants both studies measured" in text and "## Decisions" in text
    assert main(["fidelity", "tiny", "--reference", "nothing", "--results", str(tmp_path / "results")]) == 1


def test_report_command_rebuilds_from_the_study_alone(sweep_file, tmp_path, capsys, run):
    run(sweep_file)
    out = tmp_path / "results" / "tiny"
    (out / "report.md").unlink()
    (out / "runs.csv").unlink()
    code = main(["report", "tiny", "--results", str(tmp_path / "results")])
    assert code == 0 and (out / "report.md").is_file() and len(pd.read_csv(out / "runs.csv")) == 4
    assert str(out / "report.md") in capsys.readouterr().out


def test_bad_spec_exits_2_and_writes_nothing(tmp_path, capsys):
    path = tmp_path / "bad.yaml"
    path.write_text(TINY.replace("epochs: 1", "epochs: one"))
    results = tmp_path / "results"
    code = main(["run", str(path), "--results", str(results), "--device", "cpu"])
    err = capsys.readouterr().err
    assert code == 2 and f"{path}: train.epochs='one': expected int, got str" in err.replace("\n", "")
    assert not results.exists()
    code = main(["plan", str(path)])
    assert code == 2


def test_dead_or_missing_storage_is_one_clear_error(sweep_file, tmp_path, capsys):
    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(b"this is not a database" * 100)
    code = main(["run", str(sweep_file), "--storage", f"sqlite:///{garbage}", "--device", "cpu"])
    err = capsys.readouterr().err
    assert code == 1 and "cannot open study storage sqlite:///" in err and "Traceback" not in err
    with pytest.raises(BenchError, match="no study database"):
        report.report_study("nothing", results_dir=tmp_path)
    code = main(["run", str(sweep_file), "--storage", "postgresql://u:secret@127.0.0.1:9/db", "--device", "cpu"])
    err = capsys.readouterr().err
    assert code == 1 and "secret" not in err and "postgresql://u:***@127.0.0.1:9/db" in err


def test_plan_lists_closed_form_costs(sweep_file, capsys):
    import json
    code = main(["plan", str(sweep_file), "--no-estimate", "--json"])
    rows = json.loads(capsys.readouterr().out)
    sweep = spec.load(sweep_file)
    assert code == 0 and len(rows) == 4
    assert rows[3]["infer_gmacs"] == pytest.approx(closed_form(sweep.variants[3])["macs"] / 1e9)
    code = main(["plan", str(sweep_file), "--json"])
    rows = json.loads(capsys.readouterr().out)
    assert code == 0 and all(r["est_trial_s"] > 1.0 for r in rows)
    assert rows[3]["est_trial_s"] > rows[0]["est_trial_s"]  # deeper, re-attention: more work


def test_optuna_trials_carry_the_key_and_the_objective(sweep_file, tmp_path, run, ledger):
    run(sweep_file)
    study = ledger().study
    assert study.direction == optuna.study.StudyDirection.MAXIMIZE
    for t in study.get_trials():
        assert t.value == t.user_attrs["record"]["top1"] and t.user_attrs["key"].endswith("-s0")
    assert study.user_attrs["spec"]["name"] == "tiny"


def test_saved_weights_reload_to_the_same_model(sweep_file, tmp_path, run, ledger):
    import torch

    from bench.models import build_model, load_weights
    from bench.variant import FIELD_TYPES, Variant

    run(sweep_file, save_weights=True)
    r = next(r for r in ledger().records() if r["depth"] == 2 and r["attention"] == "re")
    path = RunContext(study="tiny", results_dir=tmp_path / "results").weights_path(r["key"])
    assert r["weights"] == str(path) and path.is_file()

    def initial():  # the trial's model before training: built from its seed, as the trial built it
        torch.manual_seed(r["seed"])
        return build_model(Variant(**{k: r[k] for k in FIELD_TYPES})).eval()

    model, fresh = load_weights(initial(), path).eval(), initial()
    x = torch.randn(2, 3, 16, 16)
    assert not torch.allclose(model(x), fresh(x))  # trained weights loaded over the same initial ones
    assert model.blocks[1].attn.var_norm.num_batches_tracked.item() == 3  # buffers too (3 steps)
    with pytest.raises(BenchError, match="do not fit this model"):
        load_weights(build_model(Variant(**{**{k: r[k] for k in FIELD_TYPES}, "depth": 1})), path)
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x00" * 16)
    with pytest.raises(BenchError, match="cannot read weights"):
        load_weights(fresh, bad)


def test_collapse_of_a_trial_reproduces_its_record(sweep_file, tmp_path, capsys, run, ledger):
    import json

    run(sweep_file, save_weights=True)
    record = next(r for r in ledger().records() if r["depth"] == 2 and r["attention"] == "re")
    out = tmp_path / "col"
    code = main(["collapse", "tiny", "--trial", str(record["trial"]), "--results", str(tmp_path / "results"),
                 "--device", "cpu", "--out", str(out), "--json"])
    got = json.loads(capsys.readouterr().out)
    import torch
    assert code == 0
    stored = ledger().details([record["trial"]])[record["trial"]]["similarity"]
    assert torch.allclose(torch.tensor(got["similarity"]), torch.tensor(stored), atol=1e-5)
    assert got["similar_blocks"] == record["similar_blocks"]
    assert {p.name for p in out.iterdir()} == {"similarity_heatmap.png", "similarity_per_block.png",
                                               "collapse.json"}


def test_collapse_of_a_trial_without_weights_says_how(sweep_file, tmp_path, capsys, run):
    run(sweep_file)
    code = main(["collapse", "tiny", "--trial", "0", "--results", str(tmp_path / "results")])
    err = capsys.readouterr().err
    assert code == 1 and "has no saved weights" in err and "--save-weights" in err
    code = main(["collapse", "tiny", "--trial", "99", "--results", str(tmp_path / "results")])
    assert code == 1 and "no finished trial '99'" in capsys.readouterr().err


def test_name_option_and_report_from_a_yaml_path(sweep_file, tmp_path, capsys):
    results = str(tmp_path / "results")
    code = main(["run", str(sweep_file), "--name", "other", "--results", results, "--device", "cpu", "--quiet",
                 "--set", "grid.depth=[1]", "--set", "seeds=[0]"])
    assert code == 0 and (tmp_path / "results" / "other" / "report.md").is_file()
    code = main(["run", str(sweep_file), "--name", "../x", "--results", results])
    assert code == 2 and "--name: name='../x': must be a plain file name" in capsys.readouterr().err
    sweep_file.write_text(TINY.replace("name: tiny", "name: other"))
    assert main(["report", str(sweep_file), "--results", results]) == 0


def test_a_failing_analysis_keeps_the_trained_result(sweep_file, tmp_path, monkeypatch, run):
    def broken(*args, **kwargs):
        raise MemoryError("no room for the maps")

    monkeypatch.setattr(trials, "analyse", broken)
    r = run(sweep_file, sets={"grid.depth": [1], "grid.attention": ["self"], "compare": None},
            save_weights=True)["records"][0]
    assert r["status"] == "complete" and r["top1"] is not None and "similar_blocks" not in r
    assert r["collapse_error"] == "MemoryError: no room for the maps" and r["weights"]


def test_collapse_finds_weights_in_a_moved_results_folder(sweep_file, tmp_path, capsys, run):
    import json
    import shutil

    run(sweep_file, sets={"grid.depth": [1], "grid.attention": ["re"], "compare": None},
        save_weights=True)
    moved = tmp_path / "elsewhere"
    shutil.move(str(tmp_path / "results"), str(moved))
    code = main(["collapse", "tiny", "--trial", "0", "--results", str(moved), "--json", "--out", str(tmp_path / "c")])
    assert code == 0 and json.loads(capsys.readouterr().out)["weights"].startswith(str(moved))


