"""--until-decided: seeds go where a verdict is open (an arm and its baseline, paired), never to a
decided arm; the study grows and remembers it; a rerun resumes, a larger K continues; the report
reads it with the sequential interval and says per arm where it stands."""
import pandas as pd
import pytest

from bench import spec
from bench.cli import main
from bench.study.grow import arms, next_round, seed_sequence
from bench.study.ledger import Ledger

GRID = [{"depth": [1], "attention": ["self", "re"]}, {"depth": [1], "embed_dim": [24]}]
COMPARE = {"by": ["depth"], "baseline": {"attention": "self", "embed_dim": 16},
           "arms": {"re": {"attention": "re"}, "wide": {"embed_dim": 24}}}


@pytest.fixture
def sweep(make_spec):
    return spec.load(make_spec(grid=GRID, compare=COMPARE, seeds=[0, 1, 2], collapse=None))


def frame(sweep, top1):
    """Complete records of the sweep's variants: ``top1[(arm, seed)]`` (arm: base, re, wide)."""
    names = {v: ("re" if v.attention == "re" else "wide" if v.embed_dim == 24 else "base") for v in sweep.variants}
    rows = []
    for v, arm in names.items():
        for seed in sorted({s for a, s in top1 if a == arm}):
            rows.append({**v.to_dict(), "seed": seed, "status": "complete", "top1": top1[(arm, seed)],
                         "key": spec.trial_key(v, seed), "trial": len(rows)})
    return pd.DataFrame(rows)


def test_the_next_round_goes_to_open_arms_and_their_baseline_only(sweep):
    base = {("base", s): 50.0 + d for s, d in enumerate([0.0, 1.0, -1.0])}
    re = {("re", s): 60.0 + d for s, d in enumerate([0.2, 0.9, -1.1])}  # +10, tight: decided at 3 seeds
    wide = {("wide", s): 50.0 + d for s, d in enumerate([1.0, -1.0, 2.5])}  # +0.5, noisy: open
    trials, states = next_round(sweep, frame(sweep, {**base, **re, **wide}), max_seeds=10)
    assert states == {"1 re": "decided after 3 seeds", "1 wide": "growing: seed 3 (4 of at most 10)"}
    assert sorted((t.variant.embed_dim, t.variant.attention, t.seed) for t in trials) == [(16, "self", 3), (24, "self", 3)]
    trials, states = next_round(sweep, frame(sweep, {**base, **re, **wide}), max_seeds=3)
    assert trials == [] and states["1 wide"] == "undecided at 3 seeds"


def test_a_seed_that_failed_is_passed_over(sweep):
    rows = frame(sweep, {**{("base", s): 50.0 + s for s in range(3)}, **{("wide", s): 50.0 - s for s in range(3)},
                         **{("re", s): 50.0 + s for s in range(3)}})
    failed = rows.iloc[:1].assign(seed=3, status="failed", top1=float("nan"), key="x")  # the baseline failed at 3
    trials, _ = next_round(sweep, pd.concat([rows, failed], ignore_index=True), max_seeds=10)
    assert {t.seed for t in trials} == {4}


def test_seeds_follow_the_sweeps_own_then_the_next_integers(sweep):
    assert seed_sequence(sweep, 5) == [0, 1, 2, 3, 4]
    assert seed_sequence(spec.Sweep(**{**sweep.__dict__, "seeds": [7, 3]}), 4) == [7, 3, 8, 9]
    assert [(a.name, a.group, len(a.variants), len(a.baseline)) for a in arms(sweep)] == [("re", (1,), 1, 1),
                                                                                       ("wide", (1,), 1, 1)]


def test_until_decided_grows_the_study_resumes_and_continues(make_spec, tmp_path, capsys):
    path = make_spec(grid=GRID, compare=COMPARE, seeds=[0, 1, 2], collapse=None, data={"test_size": 48})
    results = str(tmp_path / "results")
    base = ["run", str(path), "--device", "cpu", "--results", results, "--until-decided"]
    assert main([*base, "--max-seeds", "4"]) == 0
    err = capsys.readouterr().err
    lg = Ledger.locate("tiny", None, results)
    seeds = lambda: sorted({(r["embed_dim"], r["attention"], r["seed"]) for r in lg.records()})  # noqa: E731
    have = seeds()
    assert lg.sequential["max_seeds"] == 4
    assert "round 1 of --until-decided" in err and "(at most 4 seeds)" in err
    arms_at_4 = {(e, a) for e, a, s in have if s == 3}
    assert (16, "self") in arms_at_4 or not arms_at_4  # the baseline grows with any open arm: pairs stay paired
    assert all(s <= 3 for _, _, s in have)
    assert main([*base, "--max-seeds", "4", "--quiet"]) == 0 and seeds() == have  # a rerun: nothing new
    assert main([*base, "--max-seeds", "5", "--quiet"]) == 0
    assert all(s <= 4 for _, _, s in seeds()) and lg.sequential["max_seeds"] == 5
    text = (tmp_path / "results" / "tiny" / "report.md").read_text()
    assert "**Grown seed by seed (`--until-decided`, at most 5 seeds):**" in text
    assert "each interval is the sequential one" in text


def test_until_decided_needs_a_comparison_and_its_flags_go_together(make_spec, tmp_path, capsys):
    results = str(tmp_path / "results")
    assert main(["run", str(make_spec(compare=None)), "--until-decided", "--results", results]) == 2
    assert "--until-decided grows the arms of a comparison" in capsys.readouterr().err
    assert main(["run", str(make_spec()), "--max-seeds", "5", "--results", results]) == 2
    assert "--max-seeds and --budget go with --until-decided" in capsys.readouterr().err
    assert main(["run", str(make_spec()), "--until-decided", "--max-seeds", "2", "--results", results]) == 2
    assert "--max-seeds: max_seeds=2: must be in 3…1000" in capsys.readouterr().err
    assert not (tmp_path / "results").exists()


def test_a_spent_budget_adds_no_seed(make_spec, tmp_path, capsys):
    path = make_spec(grid=GRID, compare=COMPARE, seeds=[0, 1, 2], collapse=None)
    assert main(["run", str(path), "--device", "cpu", "--results", str(tmp_path / "r"), "--until-decided",
                 "--budget", "0.0001"]) == 0
    err = capsys.readouterr().err
    assert "of --until-decided" not in err and "budget of 0.0001 min is spent" in err
    assert {r["seed"] for r in Ledger.locate("tiny", None, tmp_path / "r").records()} == {0, 1, 2}


def test_calibrate_grows_the_reference_rung_first_and_names_the_next_step(make_spec, tmp_path, capsys):
    path = make_spec(grid=GRID, compare=COMPARE, seeds=[0, 1, 2], collapse=None)
    results = tmp_path / "results"
    code = main(["calibrate", str(path), "--device", "cpu", "--results", str(results), "--ladder",
                 "train.epochs=1,2", "--until-decided", "--max-seeds", "4"])
    err = capsys.readouterr().err
    assert code == 0, err
    first = err.index("rung 2 of 2: epochs=2 (study tiny@epochs=2) — the reference, grown first")
    assert first < err.index("rung 1 of 2: epochs=1")
    for rung in ("tiny@epochs=1", "tiny@epochs=2"):
        assert Ledger.locate(rung, None, results).sequential["max_seeds"] == 4
    text = (results / "tiny" / "calibration.md").read_text()
    out = __import__("json").loads((results / "tiny" / "calibration.json").read_text())
    if "leaves" in out["conclusion"]:  # the reference still has open arms: the sentence ends with the command
        assert out["conclusion"].endswith(f"Next: `bench calibrate {path} --ladder train.epochs=1,2 --until-decided "
                                          "--max-seeds 4`.")
        assert "## What would decide the largest rung" in text
    assert "**Sweep (first rung), set apart from the defaults:** data name=shapes, train_size=48, test_size=24" in text


def test_plan_from_an_earlier_study_says_what_deciding_each_arm_costs(make_spec, tmp_path, capsys):
    path = make_spec(grid=GRID, compare=COMPARE, seeds=[0, 1, 2], collapse=None)
    results = str(tmp_path / "results")
    assert main(["run", str(path), "--device", "cpu", "--quiet", "--results", results]) == 0
    capsys.readouterr()
    assert main(["plan", str(path), "--from", "tiny", "--results", results, "--json", "--no-estimate",
                 "--set", "train.epochs=2"]) == 0
    rows = __import__("json").loads(capsys.readouterr().out)
    assert [(r["depth"], r["arm"]) for r in rows] == [(1, "re"), (1, "wide")]
    for r in rows:
        assert r["needed"] is None or (r["needed"] >= 3 and r["trials"] == 2 * r["needed"])
        assert r["needed"] is not None or r["why"] == "beyond 10 seeds at that effect and spread"
    assert main(["plan", str(path), "--from", "nothing", "--results", results]) == 1
    assert "no study database" in capsys.readouterr().err


def test_the_savings_replay_counts_only_decisions_fixed_k_makes():
    """benchmarks/sequential_savings.py names the decisions fixed K seeds make and the sequential
    run does not; an arm undecided by both is no disagreement ("undecided" ends in "decided")."""
    from benchmarks.sequential_savings import decision, missed

    assert not missed({"sequential": "undecided (dropped: out of reach)", "fixed 10": "undecided"}, 10)
    assert missed({"sequential": "undecided (dropped: out of reach)", "fixed 10": "+ decided"}, 10)
    assert not missed({"sequential": "− decided", "fixed 10": "− decided"}, 10)
    assert decision({"d_low": 0.01, "d_high": 12.0, "d_top1": 6.0}) == "+ decided"
    assert decision({"d_low": -6.3, "d_high": 10.6, "d_top1": 2.1}) == "undecided"
    assert decision({"dropped": True, "d_low": -1.0, "d_high": 1.0, "d_top1": 0.0}).startswith("undecided (dropped")
