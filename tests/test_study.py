"""Optuna studies: search spaces in sweep field names, objectives, samplers, pruning, report."""
import subprocess
import sys

import optuna
import pandas as pd
import pytest

from bench import spec
from bench.cli import main
from bench.costs import closed_form
from bench.errors import SpecError
from bench.study import search
from bench.study.ledger import Ledger
from bench.study.storage import default_url
from bench.variant import Variant

STUDY = """
name: st
data: {name: shapes, train_size: 64, test_size: 32}
model: {img_size: 16, patch_size: 4, embed_dim: 16, num_heads: 2, mlp_ratio: 2}
train: {epochs: 2, batch_size: 16, check_every: 1}
profile: {batch_size: 4, warmup: 0, iters: 1}
collapse: null
search:
  depth: {low: 1, high: 3}
  attention: [self, re]
  re_norm: [batch, layer]
study: {objectives: [top1, gmacs], sampler: nsga2, n_trials: 5, seed: 0}
"""


@pytest.fixture
def study_file(tmp_path):
    path = tmp_path / "st.yaml"
    path.write_text(STUDY)
    return path


def load(path, **sets):
    return spec.load(path, {k.replace("__", "."): v for k, v in sets.items()})


def trials(tmp_path, name="st"):
    return Ledger.open(default_url(tmp_path / "results", name), name).study.get_trials()


@pytest.mark.parametrize("sets, key, message", [
    ({"study.pruner": "median"}, "study.pruner", "cannot prune a multi-objective study"),
    ({"search.dpeth": [1, 2]}, "search.dpeth", "did you mean 'depth'"),
    ({"search.attention": ["self"]}, "search.re_norm", "no searched variant uses attention: re"),
    ({"study.sampler": "grid", "search.mlp_ratio": {"low": 1.0, "high": 2.0}}, "search.mlp_ratio",
     "the grid sampler needs a list"),
    ({"search.embed_dim": [16, 15]}, "search.embed_dim", "embed_dim=15"),  # 2 heads do not divide 15
    ({"search.depth": {"low": 3, "high": 1}}, "search.depth", "needs low < high"),
    ({"seeds": [0, 1]}, "seeds", "give one seed"),
    ({"grid": {"depth": [1]}}, "grid", "leave out grid and compare"),
    ({"study.objectives": ["top1", "flops"]}, "study.objectives", "unknown objective"),
    ({"study.objectives": ["latency"], "profile.speed": False}, "study.objectives", "needs profile.speed"),
])
def test_bad_study_specs_name_the_key(study_file, sets, key, message):
    with pytest.raises(SpecError) as info:
        spec.load(study_file, sets)
    assert info.value.key == key and message in str(info.value)


def test_re_attention_options_are_asked_only_with_re_attention(study_file):
    sweep = spec.load(study_file)
    base = sweep.variants[0]
    v = search.suggest(optuna.trial.FixedTrial({"depth": 2, "attention": "self"}), sweep.search, base)
    assert (v.depth, v.attention, v.re_norm) == (2, "self", "batch")  # re_norm never asked: FixedTrial lacks it
    v = search.suggest(optuna.trial.FixedTrial({"depth": 3, "attention": "re", "re_norm": "layer"}),
                       sweep.search, base)
    assert (v.depth, v.attention, v.re_norm) == (3, "re", "layer")
    with pytest.raises(ValueError):  # the grid sampler asks every field: its grid is fixed
        search.suggest(optuna.trial.FixedTrial({"depth": 2, "attention": "self"}), sweep.search, base, grid=True)


def test_a_two_objective_study_records_like_a_sweep_and_reports_its_front(study_file, tmp_path, run):
    summary = run(study_file)
    ts = trials(tmp_path)
    counted = [t for t in ts if t.state.name in ("COMPLETE", "PRUNED")]
    assert len(counted) == 5  # n_trials, repeats of a measured point included
    trained = [t for t in counted if "record" in t.user_attrs]
    assert len(trained) == len(summary["records"]) == len({t.user_attrs["key"] for t in trained})
    for t in trained:  # the Optuna values are the record's top-1 and closed-form GMACs
        r = t.user_attrs["record"]
        v = Variant.from_dict(t.user_attrs["variant"])
        assert t.values == [r["top1"], pytest.approx(closed_form(v)["macs"] / 1e9)]
        assert ("re_norm" in t.params) == (r["attention"] == "re")  # conditional: asked only with re
    for t in counted:
        if "same_as" in t.user_attrs:
            assert t.values == ts[t.user_attrs["same_as"]].values
    out = tmp_path / "results" / "st"
    text = (out / "report.md").read_text()
    assert "## Study" in text and "### Pareto front" in text and "### Parameter importances" in text
    assert "### Best trials by top1" in text
    assert (out / "pareto.png").stat().st_size > 1000
    df = pd.read_csv(out / "runs.csv")
    front = search_front(df)
    for trial in front:
        assert f"| {trial} |" in text
    # the same runs.csv schema as a grid sweep over the same variants
    grid = STUDY.split("search:")[0] + "grid: {depth: [1, 2], attention: [self, re]}\n"
    grid_file = tmp_path / "grid.yaml"
    grid_file.write_text(grid.replace("name: st", "name: grid"))
    run(grid_file)
    grid_df = pd.read_csv(tmp_path / "results" / "grid" / "runs.csv")
    assert list(grid_df.columns) == list(df.columns)


def search_front(df):
    """Trials no other complete trial beats in both top-1 (higher) and GMACs (lower), by hand."""
    ok = df[df["status"] == "complete"]
    front = []
    for _, a in ok.iterrows():
        if not any((b["top1"] >= a["top1"] and b["infer_gmacs"] <= a["infer_gmacs"]
                    and (b["top1"] > a["top1"] or b["infer_gmacs"] < a["infer_gmacs"])) for _, b in ok.iterrows()):
            front.append(int(a["trial"]))
    return front


def test_the_grid_sampler_runs_every_point_once_and_repeats_equal_variants(study_file, tmp_path, run):
    run(study_file, {"study.sampler": "grid", "study.n_trials": None, "search.depth": [1, 2]})
    ts = trials(tmp_path)
    assert len(ts) == 8  # 2 depths × 2 attentions × 2 norms
    trained = [t for t in ts if "record" in t.user_attrs]
    assert len(trained) == 6  # self-attention has no re_norm: its two "norms" are one variant, measured once
    assert sum("same_as" in t.user_attrs for t in ts) == 2
    assert all(t.state.name == "COMPLETE" for t in ts)


def test_pruning_stops_a_trial_at_an_epoch_and_records_it_as_pruned(study_file, tmp_path, monkeypatch, run):
    class Always(optuna.pruners.BasePruner):
        def prune(self, study, trial):
            return trial.last_step is not None and trial.last_step >= 1

    monkeypatch.setattr(search, "make_pruner", lambda cfg, epochs: Always())
    run(study_file, {"study.objectives": ["top1"], "study.pruner": "median", "study.n_trials": 2,
                               "study.sampler": "random"})
    ts = [t for t in trials(tmp_path) if "record" in t.user_attrs]
    assert ts and all(t.state.name == "PRUNED" for t in ts)
    for t in ts:
        r = t.user_attrs["record"]
        assert r["status"] == "pruned" and r["epochs"] == 1 and len(r["top1_per_epoch"]) == 1
        assert t.intermediate_values == {1: r["top1_per_epoch"][0]}  # reported per epoch
    text = (tmp_path / "results" / "st" / "report.md").read_text()
    assert "## Pruned trials" in text or "Pruned trials" in text


def test_a_single_objective_study_with_a_real_pruner_reports_its_best_trials(study_file, tmp_path, run):
    run(study_file, {"study.objectives": ["top1"], "study.pruner": "hyperband", "study.n_trials": 4,
                               "study.sampler": "tpe"})
    ts = trials(tmp_path)
    assert sum(t.state.name in ("COMPLETE", "PRUNED") for t in ts) == 4
    for t in ts:
        if "record" in t.user_attrs and t.state.name == "COMPLETE":
            assert len(t.intermediate_values) == 2  # both epochs reported to the pruner
    text = (tmp_path / "results" / "st" / "report.md").read_text()
    assert "### Best trials by top1" in text and "Pareto" not in text


def test_rerunning_a_study_adds_only_the_missing_trials(study_file, tmp_path, capsys, run):
    run(study_file, {"study.n_trials": 2})
    code = main(["study", str(study_file), "--n-trials", "3", "--results", str(tmp_path / "results"),
                 "--device", "cpu", "--quiet"])
    assert code == 0
    assert sum(t.state.name in ("COMPLETE", "PRUNED") for t in trials(tmp_path)) == 3
    code = main(["study", str(study_file), "--results", str(tmp_path / "results"), "--device", "cpu",
                 "--set", "study.objectives=[top1, params]"])
    assert code == 2 and "--name NEW" in capsys.readouterr().err  # other objectives: another study


def test_plan_of_a_grid_study_counts_its_grid(study_file, capsys):
    code = main(["plan", str(study_file), "--no-estimate", "--set", "study.sampler=grid", "--set", "study.n_trials=null",
                 "--set", "search.depth=[1, 2]"])
    assert code == 0 and "a study of 8 trials" in capsys.readouterr().out  # 2 depths × 2 attentions × 2 norms


def test_study_command_refuses_a_grid_file_and_peak_memory_on_cpu(study_file, tmp_path, capsys):
    grid_file = tmp_path / "grid.yaml"
    grid_file.write_text(STUDY.split("search:")[0] + "grid: {depth: [1]}\n")
    assert main(["study", str(grid_file), "--device", "cpu"]) == 2
    assert "no search section" in capsys.readouterr().err
    code = main(["study", str(study_file), "--device", "cpu", "--results", str(tmp_path / "r"),
                 "--set", "study.objectives=[top1, peak_mem]"])
    assert code == 1 and "peak CUDA memory" in capsys.readouterr().err


def test_two_workers_share_a_study_without_training_a_point_twice(study_file, tmp_path):
    results = tmp_path / "results"
    proc = subprocess.run([sys.executable, "-m", "bench.cli", "study", str(study_file), "--workers", "2",
                           "--n-trials", "6", "--results", str(results), "--device", "cpu", "--quiet"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    ts = trials(tmp_path)
    counted = [t for t in ts if t.state.name in ("COMPLETE", "PRUNED")]
    assert len(counted) == 6
    keys = [t.user_attrs["key"] for t in counted if "record" in t.user_attrs]
    assert len(keys) == len(set(keys))  # no variant trained twice
    assert (results / "st" / "report.md").is_file()
