"""bench calibrate: a budget ladder's rungs read together (hand-made studies whose τ, ρ and
decisions are computed by hand), the stopping rule, and real tiny ladders (each rung run once,
a rerun runs nothing, a new rung runs alone)."""
import json

import pandas as pd
import pytest

from bench import api, spec
from bench.cli import main
from bench.errors import SpecError
from bench.report.calibration import RungStudy, agreement, calibration, rung_cost, write_calibration
from bench.study.context import RunContext
from bench.variant import Variant

MICRO = Variant(img_size=32, patch_size=8, embed_dim=64, depth=2, num_heads=4, mlp_ratio=2.0,
                num_classes=10).to_dict()
COMPARE = {"by": ["depth"], "baseline": {"attention": "self", "embed_dim": 64},
           "arms": {"wider ×1.5": {"embed_dim": 96}, "re-attention": {"attention": "re"}}}
ARMS = {"base": {}, "wide": {"embed_dim": 96}, "re": {"attention": "re"}}
GMACS = {"base": 0.001, "wide": 0.002, "re": 0.00101}
ORDER = [(2, "base"), (2, "wide"), (2, "re"), (4, "base"), (4, "wide"), (4, "re")]
TOP = [50.0, 52.0, 55.0, 60.0, 62.0, 66.0]  # every arm above its baseline, ranked in ORDER


OFFSETS = {"base": (-1.0, 0.0, 1.0), "wide": (-1.1, 0.1, 1.0), "re": (-0.9, -0.1, 1.0)}  # each seed's, by arm
DEEPER = (0.1, -0.2, 0.1)  # depth 4's variants move a little more: every pair of variants has some spread


def study(means, epochs=2, noise=None):
    """Records of the six variants of ORDER with ``means`` (the same order), three seeds whose
    offsets (OFFSETS: about −1, 0, +1, a little apart between arms, so paired deltas spread by
    about 0.1) are each variant's unless ``noise`` gives it others."""
    rows = []
    for (depth, arm), mean in zip(ORDER, means, strict=True):
        own = tuple(o + (d if depth == 4 else 0.0) for o, d in zip(OFFSETS[arm], DEEPER))
        for seed, offset in enumerate((noise or {}).get((depth, arm), own)):
            rows.append({**MICRO, **ARMS[arm], "depth": depth, "trial": len(rows), "key": f"{depth}{arm}-s{seed}",
                         "seed": seed, "status": "complete", "top1": mean + offset, "infer_gmacs": GMACS[arm] * depth,
                         "param_count": 0.1 * depth, "train_gmacs": 3 * GMACS[arm] * depth, "steps": 10 * epochs,
                         "train_time_s": 1.5 * epochs, "config": {"train": {"batch_size": 32, "epochs": epochs}},
                         "train_samples_per_sec": 1000.0})
    return pd.DataFrame(rows)


def rungs(*means_and_noise):
    out = []
    for i, item in enumerate(means_and_noise):
        means, noise = item if isinstance(item, tuple) else (item, None)
        epochs = 2 ** (i + 1)
        out.append(RungStudy(f"epochs={epochs}", f"hand@epochs={epochs}", study(means, epochs, noise),
                             {"compare": COMPARE}, {"train.epochs": epochs}))
    return out


SWAP = [50.0, 52.0, 61.0, 60.0, 62.0, 66.0]  # depth 2's re-attention and depth 4's baseline swapped: 1 of 15 pairs
REVERSED = [50.0, 52.0, 55.0, 60.0, 58.0, 57.0]  # depth 4's arms fall below their baseline: 3 of 15 pairs


def test_the_cost_of_a_rung_is_its_measured_train_time_and_counted_train_macs():
    cost = rung_cost(study(TOP, epochs=4))
    images = 10 * 4 * 32  # steps × batch size
    macs = sum(3 * GMACS[arm] * depth for depth, arm in ORDER) * 3 * images  # 3 seeds
    assert cost == {"trials": 18, "train_s": pytest.approx(18 * 6.0), "train_pmacs": pytest.approx(macs / 1e6)}


def test_stable_from_the_second_rung_with_tau_rho_and_decisions_by_hand():
    result = calibration(rungs(REVERSED, SWAP, TOP), COMPARE, resamples=100)
    first, second, top = result["rows"]
    # the largest rung orders all 15 pairs (every difference at least 2 points, seeds moving by 0.1–0.3)
    assert (first["ordered_top"], first["pairs_top"]) == (15, 15)
    assert first["tau_top"] == pytest.approx(1 - 2 * 3 / 15) and first["rho_top"] == pytest.approx(1 - 6 * 8 / 210)
    assert second["tau_top"] == pytest.approx(1 - 2 * 1 / 15) and second["rho_top"] == pytest.approx(1 - 6 * 2 / 210)
    # the first against the next (SWAP): depth 4's three pairs, and depth 2's re-attention against depth 4's
    # baseline (55 < 60 there, 61 > 60 here): 4 discordant of 15
    assert first["tau_next"] == pytest.approx(1 - 2 * 4 / 15)
    # depth 4's two arms: −2 and −3 points with tight intervals, against +2 and +6 at the largest: decided and wrong
    assert (first["kept"], first["wrong"], first["flipped"], first["undecided"]) == (2, 2, 0, 0)
    assert (second["kept"], second["wrong"], second["undecided"]) == (4, 0, 0)
    assert [first["agrees"], second["agrees"], top["agrees"]] == [False, True, None]
    assert first["why"] == "τ 0.60 < 0.8 over 15 ordered pairs, 2 decided and wrong"
    assert [r["cost_x"] for r in result["rows"]] == pytest.approx([1, 2, 4])
    assert result["stable_from"] == 1
    assert result["conclusion"] == (
        "Decided and wrong: at epochs=2, depth=4 wider ×1.5; at epochs=2, depth=4 re-attention — the rung's "
        "interval excludes 0 on the other side of the largest rung's: a proxy there answers, and wrongly. From rung "
        "epochs=4 on (×2 the cost of the first), the ranking agrees with the largest rung over the pairs it orders "
        "(τ ≥ 0.8) and every decision it makes is made and kept there — a proxy at epochs=4 is worth running. Of the "
        "largest rung's 4 decision(s), each cheaper rung makes on its own: epochs=2 2, epochs=4 4.")
    v = result["verdicts"].set_index(["rung", "depth", "arm"])
    assert v.loc[("epochs=2", 4, "re-attention"), "d_top1"] == pytest.approx(-3.0)
    assert v.loc[("epochs=2", 4, "re-attention"), "state"] == "wrong"


def test_never_stable_when_a_middle_rung_decides_wrongly_even_if_the_first_agrees():
    flip = [50.0, 49.0, 55.0, 60.0, 62.0, 66.0]  # depth 2's wider arm a point below its baseline, tightly
    result = calibration(rungs(TOP, flip, TOP), COMPARE, resamples=100)
    assert [r["agrees"] for r in result["rows"]] == [True, False, None]
    assert result["rows"][1]["tau_top"] == pytest.approx(1 - 2 / 15)  # τ alone would pass
    assert result["stable_from"] is None
    assert result["conclusion"] == (
        "Decided and wrong: at epochs=4, depth=2 wider ×1.5 — the rung's interval excludes 0 on the other side of "
        "the largest rung's: a proxy there answers, and wrongly. No rung agrees with the largest yet. Of the largest "
        "rung's 4 decision(s), each cheaper rung makes on its own: epochs=2 4, epochs=4 3.")


def test_a_rung_that_leans_without_deciding_is_flipped_or_unsure_never_kept():
    """Only a decision both rungs make, on one side, keeps: a rung whose own interval spans 0 is
    'flipped' when it leans the other way and 'unsure' when it leans the same way."""
    lean = {(4, "wide"): (-8.0, 0.5, 6.0), (4, "re"): (-9.0, 1.0, 10.0)}  # both open at the rung
    means = [50.0, 52.0, 55.0, 60.0, 59.5, 63.0]  # depth 4: wider leans below its baseline, re-attention above
    result = calibration(rungs((means, lean), TOP), COMPARE, resamples=100)
    v = result["verdicts"].set_index(["rung", "depth", "arm"])
    assert v.loc[("epochs=2", 4, "wider ×1.5"), "state"] == "flipped"
    assert v.loc[("epochs=2", 4, "re-attention"), "state"] == "unsure"
    row = result["rows"][0]
    assert (row["kept"], row["flipped"], row["unsure"], row["wrong"]) == (2, 1, 1, 0) and not row["agrees"]
    assert "flipped but undecided at the proxy for depth=4 wider ×1.5" in result["conclusion"]
    assert "kept in sign but undecided at the proxy for depth=4 re-attention" in result["conclusion"]


def test_an_arm_the_largest_rung_cannot_decide_is_never_agreement_and_comes_first():
    noisy = {(4, "re"): (-5.0, 0.0, 5.0)}  # paired deltas 1, 6, 11 against (−1, 0, 1): its interval spans 0
    result = calibration(rungs(TOP, TOP, (TOP, noisy)), COMPARE, resamples=100, command="bench calibrate x")
    assert [(r["kept"], r["undecided"]) for r in result["rows"][:2]] == [(3, 1), (3, 1)]
    assert result["stable_from"] is None
    assert result["conclusion"].startswith("The largest rung (epochs=8) leaves 1 arm(s) undecided; the seeds that "
                                           "would decide each there (80 % power): depth=4 re-attention: ")
    assert result["conclusion"].endswith("Next: `bench calibrate x`.")
    assert len(result["open"]) == 1


def test_tau_counts_only_the_pairs_the_reference_orders():
    """Two variants the largest rung cannot tell apart (its interval of their difference spans 0)
    are neither agreement nor disagreement: swapping them at a cheaper rung costs τ nothing."""
    close = [50.0, 52.0, 55.0, 60.0, 62.0, 62.0]  # depth 4's wider and re-attention level at the largest
    swapped = [50.0, 52.0, 55.0, 60.0, 62.5, 62.0]  # the cheaper rung puts wider ahead
    result = calibration(rungs(swapped, close), COMPARE, resamples=100)
    row = result["rows"][0]
    assert row["ordered_top"] == 14 and row["pairs_top"] == 15  # their difference, −0.2/+0.2/0 by seed: spans 0
    assert row["tau_top"] == pytest.approx(1.0) and row["tau_all_top"] < 1.0


def test_no_rung_reaches_tau_says_so():
    shuffled = [66.0, 62.0, 60.0, 55.0, 52.0, 50.0]  # reversed: τ = −1, every delta negative
    result = calibration(rungs(shuffled, TOP), COMPARE, resamples=100)
    assert result["rows"][0]["tau_top"] == pytest.approx(-1.0)
    assert "no rung's ranking reaches τ 0.8 against the largest over the pairs it orders (best −1.00)" in \
        result["conclusion"]


def test_the_stopping_rule_is_agreement_of_two_successive_rungs():
    as_rung = lambda means: RungStudy("r", "s", study(means), {"compare": COMPARE})  # noqa: E731
    assert agreement(as_rung(SWAP), as_rung(TOP), COMPARE, resamples=50)["agrees"]
    found = agreement(as_rung(REVERSED), as_rung(TOP), COMPARE, resamples=50)
    assert not found["agrees"] and found["why"] == "τ 0.60 < 0.8 over 15 ordered pairs, 2 decided and wrong"


def test_the_climb_stops_exactly_when_two_successive_rungs_agree(monkeypatch, tmp_path):
    """run_sweep and the ledgers stood in for: rungs 1–2 disagree, 2–3 agree, so rung 4 never runs."""
    frames = {"hand@epochs=2": study(REVERSED, 2), "hand@epochs=4": study(SWAP, 4), "hand@epochs=8": study(TOP, 8),
              "hand@epochs=16": study(TOP, 16)}
    ran = []
    monkeypatch.setattr(api, "run_sweep", lambda sweep, context=None, **o: ran.append(sweep.name) or {"ran": 18})
    monkeypatch.setattr(api, "rung_study", lambda rung, sweep, **o: RungStudy(
        rung.label, sweep.name, frames[sweep.name], {"compare": COMPARE}, rung.sets))
    path = tmp_path / "hand.yaml"
    path.write_text("name: hand\ndata: {name: shapes, train_size: 48, test_size: 24}\n"
                    "model: {img_size: 16, patch_size: 4, embed_dim: 16, num_heads: 2}\ngrid: {depth: [1]}\n")
    out = api.calibrate(path, spec.parse_ladder(["train.epochs=2,4,8,16"]), stop_when_stable=True,
                        context=RunContext(results_dir=tmp_path / "results", quiet=True))
    assert ran == ["hand@epochs=2", "hand@epochs=4", "hand@epochs=8"]
    assert out["stopped"] == ("rungs epochs=4 and epochs=8 agree (τ 0.87 over the pairs the higher orders, every "
                              "decision kept); not run: epochs=16")
    text = (tmp_path / "results" / "hand" / "calibration.md").read_text()
    assert "Stopped climbing (`--stop-when-stable`): rungs epochs=4 and epochs=8 agree" in text
    assert json.loads((tmp_path / "results" / "hand" / "calibration.json").read_text())["stable_from"] == "epochs=4"
    ran.clear()
    api.calibrate(path, spec.parse_ladder(["train.epochs=2,4,8,16"]),
                  context=RunContext(results_dir=tmp_path / "results", quiet=True))
    assert ran == ["hand@epochs=2", "hand@epochs=4", "hand@epochs=8", "hand@epochs=16"]  # without it: every rung


def test_files_name_the_ladder_keys(tmp_path):
    ladder = rungs(REVERSED, SWAP, TOP)
    result = calibration(ladder, COMPARE, resamples=50)
    paths = write_calibration(result, name="hand", ladder={"train.epochs": [2, 4, 8]}, spec={}, out_dir=tmp_path)
    assert sorted(paths) == ["calibration.json", "calibration.md", "calibration_agreement.png",
                             "calibration_verdicts.png"]
    assert all(p.stat().st_size > 1000 for p in paths.values() if p.suffix == ".png")
    text = paths["calibration.md"].read_text()
    assert text.startswith("# Calibration: hand over train.epochs\n") and "`train.epochs` = 2, 4, 8" in text
    assert "| depth | arm | epochs=2 | epochs=4 | epochs=8 |" in text
    assert "| 4 | re-attention | −3.0 [−3.2, −2.8] ✗✗ | +6.0 [+5.8, +6.2] | +6.0 [+5.8, +6.2] |" in text
    record = json.loads(paths["calibration.json"].read_text())  # strict JSON: no NaN
    assert [r["rung"] for r in record["rungs"]] == ["epochs=2", "epochs=4", "epochs=8"]
    assert record["rungs"][-1]["tau_top"] is None


# --- the ladder itself ------------------------------------------------------------------------

def test_ladders_zip_rung_by_rung_and_name_their_studies():
    rs = spec.parse_ladder(["train.epochs=2,4", "data.train_size=1000,3000"])
    assert [(r.label, r.sets) for r in rs] == [("epochs=2,train_size=1000", {"train.epochs": 2, "data.train_size": 1000}),
                                               ("epochs=4,train_size=3000", {"train.epochs": 4, "data.train_size": 3000})]
    assert rs[0].study("q") == "q@epochs=2,train_size=1000"
    assert [r.label for r in spec.parse_ladder(["a.x=1,2", "b.x=3,4"])] == ["a.x=1,b.x=3", "a.x=2,b.x=4"]


@pytest.mark.parametrize("items, says", [
    (["train.epochs"], "expected KEY=V1,V2,…"),
    (["train.epochs=2"], "1 rung(s): a ladder needs 2 to 12"),
    (["train.epochs=2,4", "data.train_size=1,2,3"], "each needs as many values (train.epochs: 2, data.train_size: 3)"),
    (["train.epochs=2,2"], "two rungs are alike"),
    (["train.epochs=2,[4]"], "each rung's value must be a number or a word"),
    (["train.epochs=2,"], "each rung's value must be a number or a word"),
    (["train.epochs=2,4", "train.epochs=3,5"], "is climbed twice"),
    (["train.epochs=" + ",".join(map(str, range(1, 14)))], "13 rung(s)"),
])
def test_a_bad_ladder_is_one_message_naming_it(items, says):
    with pytest.raises(SpecError) as err:
        spec.parse_ladder(items)
    assert str(err.value).startswith("--ladder: ") and says in str(err.value)


def test_a_rung_the_spec_refuses_fails_before_anything_runs(sweep_file, tmp_path, capsys):
    code = main(["calibrate", str(sweep_file), "--ladder", "train.epochs=1,0", "--results", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert code == 2 and "--ladder: train.epochs=0: must be at least 1" in err
    assert not (tmp_path / "r").exists()
    code = main(["calibrate", str(sweep_file), "--ladder", "train.epochs=1,2", "--set", "train.epochs=3",
                 "--results", str(tmp_path / "r")])
    assert code == 2 and "is both set (--set) and climbed (--ladder)" in capsys.readouterr().err
    code = main(["calibrate", str(sweep_file), "--ladder", "data.name=shapes,a/b", "--results", str(tmp_path / "r")])
    assert code == 2 and not (tmp_path / "r").exists()


def test_a_rung_that_cannot_name_a_study_or_a_search_is_refused(sweep_file, make_spec):
    with pytest.raises(SpecError, match="cannot name a study: is too long"):
        spec.load_rungs(sweep_file, {}, spec.parse_ladder(["train.epochs=1,2"]), name="n" * 195)
    study = make_spec("searched", grid=None, compare=None, search={"embed_dim": [16, 32]})
    with pytest.raises(SpecError, match="a ladder climbs a grid sweep"):
        spec.load_rungs(study, {}, spec.parse_ladder(["train.epochs=1,2"]))


# --- real tiny ladders ------------------------------------------------------------------------

def test_each_rung_runs_once_a_rerun_runs_nothing_and_a_new_rung_runs_alone(make_spec, tmp_path, capsys):
    path = make_spec(seeds=[0, 1])
    results = str(tmp_path / "results")
    args = ["calibrate", str(path), "--device", "cpu", "--quiet", "--results", results]
    assert main([*args, "--ladder", "train.epochs=1,2"]) == 0
    out = json.loads((tmp_path / "results" / "tiny" / "calibration.json").read_text())
    assert [r["study"] for r in out["rungs"]] == ["tiny@epochs=1", "tiny@epochs=2"]
    assert all(r["trials"] == 8 for r in out["rungs"])
    capsys.readouterr()

    def ran(ladder):
        found = api.calibrate(path, spec.parse_ladder(ladder),
                              context=RunContext(results_dir=results, device="cpu", quiet=True))
        return [r["ran"] for r in found["rungs"]], found

    assert ran(["train.epochs=1,2"])[0] == [0, 0]  # a rerun runs nothing
    counts, found = ran(["train.epochs=1,2,3"])
    assert counts == [0, 0, 8]  # one more rung: only it
    assert [r["rung"] for r in found["result"]["rows"]] == ["epochs=1", "epochs=2", "epochs=3"]
    text = (tmp_path / "results" / "tiny" / "calibration.md").read_text()
    assert "# Calibration: tiny over train.epochs" in text and "| epochs=3 | 8 |" in text
    assert (tmp_path / "results" / "tiny@epochs=3" / "report.md").is_file()  # each rung is a study with its report


def test_plan_states_the_ladders_cost_before_anything_runs(sweep_file, tmp_path, capsys):
    code = main(["plan", str(sweep_file), "--ladder", "train.epochs=1,2,4", "--no-estimate", "--json"])
    rows = json.loads(capsys.readouterr().out)
    assert code == 0 and [r["rung"] for r in rows] == ["epochs=1", "epochs=2", "epochs=4"]
    assert [r["trials"] for r in rows] == [4, 4, 4]
    assert rows[1]["train_pmacs"] == pytest.approx(2 * rows[0]["train_pmacs"])
    assert rows[2]["train_pmacs"] == pytest.approx(4 * rows[0]["train_pmacs"]) and rows[0]["train_pmacs"] > 0
    assert not (tmp_path / "results").exists()


def test_a_ladder_whose_key_changes_nothing_is_refused(make_spec, tmp_path, capsys):
    """A grid that fixes depth makes `--ladder model.depth=1,2` train depth-1 models at both rungs:
    the rungs are compared by what they would train, not by their labels."""
    path = make_spec(grid={"depth": [1], "attention": ["self", "re"]})
    base = ["calibrate", str(path), "--device", "cpu", "--quiet", "--results", str(tmp_path / "r")]
    assert main([*base, "--ladder", "model.depth=1,2"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == ("error: --ladder: model.depth changes nothing this sweep trains: every rung would run the same "
                   "trials (the grid or another setting fixes it); a ladder must change what is trained")
    assert main([*base, "--ladder", "train.epochs=1,2", "--ladder", "model.depth=1,2"]) == 2  # zipped: one idle key
    err = capsys.readouterr().err.strip()
    assert "model.depth=1,2: changes nothing this sweep trains" in err and len(err.splitlines()) == 1
    assert main([*base, "--ladder", "profile.rounds=1,2"]) == 2  # the pass after the trials: the same trials
    capsys.readouterr()
    assert main([*base, "--ladder", "model.depth=1,2,3", "--set", "grid={depth: [1, 3], attention: [self]}"]) == 2
    assert "rungs depth=1 and depth=3 would run the same trials" not in capsys.readouterr().err  # 1 and 3 differ
    assert not (tmp_path / "r").exists()


def test_a_rung_study_of_another_ladder_is_refused(make_spec, tmp_path, capsys):
    path = make_spec(grid=None, model={"depth": 1})
    base = ["calibrate", str(path), "--device", "cpu", "--quiet", "--results", str(tmp_path / "r"),
            "--set", "grid={attention: [self, re]}"]
    assert main([*base, "--ladder", "model.depth=1,2"]) == 0
    capsys.readouterr()
    assert main([*base, "--ladder", "grid.depth=1,2"]) == 2  # the same study names, depth=1 and depth=2
    err = capsys.readouterr().err
    assert "the rung model.depth=1 of another ladder, not grid.depth=1" in err and "--name NEW" in err


def test_a_rung_reads_only_the_trials_of_the_current_sweep(make_spec, tmp_path, capsys):
    """Seeds edited from [0, 1] to [0] between two calibrations: each rung's study keeps the seed-1
    trials, but its verdict and cost come from this sweep's trials alone, and that is said."""
    results = tmp_path / "results"
    args = ["calibrate", "--device", "cpu", "--quiet", "--results", str(results), "--ladder", "train.epochs=1,2"]
    assert main([args[0], str(make_spec(seeds=[0, 1])), *args[1:]]) == 0
    before = json.loads((results / "tiny" / "calibration.json").read_text())
    assert [r["trials"] for r in before["rungs"]] == [8, 8]
    found = api.calibrate(make_spec(seeds=[0]), spec.parse_ladder(["train.epochs=1,2"]),
                          context=RunContext(results_dir=results, device="cpu", quiet=False))
    err = capsys.readouterr().err
    assert "rung epochs=1: 4 trial(s) of study tiny@epochs=1 are not in this sweep" in err
    rows = found["result"]["rows"]
    assert [(r["trials"], r["left_out"]) for r in rows] == [(4, 4), (4, 4)]
    assert rows[1]["train_pmacs"] == pytest.approx(2 * rows[0]["train_pmacs"])  # ×2, not ×2 against a mix
    assert rows[0]["train_pmacs"] == pytest.approx(before["rungs"][0]["train_pmacs"] / 2)
    text = (results / "tiny" / "calibration.md").read_text()
    assert "Left out: trials of the rung's study that are not in this sweep" in text and "epochs=1 (4)" in text


def test_a_reference_rung_with_no_usable_trial_says_so():
    failed = study(TOP).assign(status="failed", top1=float("nan"))
    ladder = rungs(TOP, TOP)
    ladder[-1] = RungStudy("epochs=4", "hand@epochs=4", failed, {"compare": COMPARE}, {"train.epochs": 4})
    result = calibration(ladder, COMPARE, resamples=20)
    assert result["conclusion"].startswith("The largest rung (epochs=4) has no usable trial (18 failed): there is "
                                           "nothing to calibrate against.")
    assert "spend more" not in result["conclusion"]


from hypothesis import given, settings, strategies as st  # noqa: E402


@settings(max_examples=300, deadline=None)
@given(st.lists(st.text(max_size=40), min_size=0, max_size=3))
def test_any_ladder_text_parses_or_is_one_spec_error(items):
    """Whatever follows --ladder: rungs whose labels name a study, or one SpecError on --ladder."""
    try:
        rungs = spec.parse_ladder(items)
    except SpecError as err:
        assert str(err).startswith("--ladder") and "\n" not in str(err).strip()
        return
    assert 2 <= len(rungs) <= spec.MAX_RUNGS and len({r.label for r in rungs}) == len(rungs)
    for r in rungs:
        try:
            assert r.study("q").startswith("q@")
        except SpecError as err:
            assert str(err).startswith("--ladder: rung ")
