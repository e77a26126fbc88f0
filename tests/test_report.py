"""Reports against hand-built trial records whose means, deltas and fronts are known."""
import json
import math

import numpy as np
import pandas as pd
import pytest

from bench.own_files import atomic_write
from bench.report import plots
from bench.report.fidelity import fidelity, fidelity_markdown
from bench.report.markdown import markdown, study_section, write_report
from bench.report.tables import VARIANT_FIELDS, comparison, pareto_front, ranking_by_epoch, summarize
from bench.study.stored_reports import report_study, shown_storage
from bench.variant import variant_label, Variant

MICRO = Variant(img_size=32, patch_size=8, embed_dim=64, depth=4, num_heads=4, mlp_ratio=2.0,
                num_classes=10).to_dict()
ENV = {"device": "cpu", "device_name": "Test CPU (2 threads)", "dtype": "fp32", "torch_version": "2.14.1",
       "timm_version": "1.0.20", "bench_version": "0.1.0"}
COMPARE = {"by": ["depth"], "baseline": {"attention": "self", "embed_dim": 64},
           "arms": {"wider ×1.5": {"attention": "self", "embed_dim": 96},
                    "re-attention": {"attention": "re", "embed_dim": 64}}}
SPEC = {"name": "handmade", "data": {"dataset": "cifar10", "subset": 512}, "model": {},
        "train": {"epochs": 2, "lr": 0.001}, "profile": {}, "grid": [], "seeds": [0, 1], "compare": COMPARE}
INFO = {"generated": "2026-11-27 21:00 UTC", "storage": "study.db (in the results folder)"}


def records(rows):
    """rows: (variant changes, top1, status, costs); trial, key and seed filled in."""
    out = []
    for i, (changes, top1, status, costs) in enumerate(rows):
        v = {**MICRO, **changes}
        out.append({"trial": i, "key": f"k{i}", "status": status, "seed": i % 2,
                    "error": "RuntimeError: out of memory\ntraceback" if status == "failed" else None,
                    **v, "param_count": 0.04, "infer_gmacs": 0.001, "infer_macts": 0.01, "train_gmacs": 0.003,
                    "infer_samples_per_sec": 5000.0, "infer_step_time": 6.4, "infer_batch_size": 32,
                    "train_samples_per_sec": 1000.0, "train_step_time": 32.0, "train_batch_size": 32,
                    **costs, "top1": top1, "top1_per_epoch": None if top1 is None else [top1 - 10.0, top1],
                    "train_loss": 1.0, "epochs": 2, "train_time_s": 3.0, **ENV})
    return pd.DataFrame(out)


BASE, WIDE, RE = {}, {"embed_dim": 96}, {"attention": "re"}
WIDE_COST = {"infer_gmacs": 0.002, "param_count": 0.09, "train_samples_per_sec": 800.0}
RE_COST = {"infer_gmacs": 0.001, "param_count": 0.04, "train_samples_per_sec": 900.0}


@pytest.fixture
def sweep():
    """depth 4: all three arms, two seeds each; depth 8: re-attention only (no baseline)."""
    return records([
        (BASE, 70.0, "complete", {}), (BASE, 72.0, "complete", {}),
        (WIDE, 73.0, "complete", WIDE_COST), (WIDE, 75.0, "complete", WIDE_COST),
        (RE, 71.0, "complete", RE_COST), (RE, 73.0, "complete", RE_COST),
        (RE, None, "failed", {**RE_COST, "param_count": None}), (RE, 5.0, "diverged", RE_COST),
        ({**RE, "depth": 8}, 80.0, "complete", {"infer_gmacs": 0.002, "param_count": 0.08}),
    ])


def test_variant_label_names_only_varying_fields():
    row = {**MICRO, "attention": "re", "re_blocks": None}
    assert variant_label(row, ["depth", "attention", "re_blocks"]) == "depth=4 attention=re re_blocks=all"
    assert variant_label({**row, "mlp_ratio": 2.5}, ["mlp_ratio"]) == "mlp_ratio=2.5"
    assert variant_label(row, []) == "base" and variant_label(row, ["depth"], 3) == "depth=4 seed=3"
    assert VARIANT_FIELDS[:2] == ["img_size", "patch_size"] and "re_transform_scale" in VARIANT_FIELDS


def test_summary_mean_std_and_exclusions():
    df = records([
        (BASE, 70.0, "complete", {}), (BASE, 72.0, "complete", {}), (BASE, 74.0, "complete", {}),
        (BASE, 99.0, "diverged", {}),  # a stale top-1 on a diverged trial must not count
        (BASE, None, "failed", {"param_count": None}),
        (WIDE, 80.0, "complete", {"param_count": 0.09}),
        (WIDE, float("inf"), "complete", {"param_count": 0.09}),  # not finite: not a seed
    ])
    s = summarize(df).set_index("embed_dim")
    assert len(s) == 2
    a = s.loc[64]
    assert (a["n"], a["trials"], a["diverged"], a["failed"]) == (3, 5, 1, 1)
    assert a["top1_mean"] == pytest.approx(72.0) and a["top1_std"] == pytest.approx(2.0)  # ddof=1
    assert (a["top1_min"], a["top1_max"]) == (70.0, 74.0)
    assert a["param_count"] == pytest.approx(0.04) and a["variant"] == "embed_dim=64"
    b = s.loc[96]
    assert b["n"] == 1 and b["top1_mean"] == 80.0 and math.isnan(b["top1_std"])


@pytest.mark.parametrize("as_float", [False, True])
def test_re_blocks_none_groups_as_one_variant(as_float):
    df = records([
        (RE, 60.0, "complete", {}), (RE, 62.0, "complete", {}),
        ({**RE, "re_blocks": 2}, 70.0, "complete", {}), (BASE, 50.0, "complete", {}),
    ])
    if as_float:  # what a round trip through storage or CSV gives: 2.0 and NaN
        df["re_blocks"] = df["re_blocks"].astype(float)
    s = summarize(df)
    assert len(s) == 3
    by_label = dict(zip(s["variant"], s["top1_mean"], strict=True))
    assert by_label == {"attention=re re_blocks=all": 61.0, "attention=re re_blocks=2": 70.0,
                        "attention=self": 50.0}  # re-attention's options label re-attention only


def test_comparison_deltas(sweep):
    c = comparison(sweep, COMPARE)
    assert list(zip(c["depth"], c["arm"], strict=True)) == [
        (4, "baseline"), (4, "wider ×1.5"), (4, "re-attention"), (8, "re-attention")]
    base, wide, re4, re8 = (c.iloc[i] for i in range(4))
    assert base["top1_mean"] == 71.0 and base["top1_std"] == pytest.approx(math.sqrt(2))
    assert math.isnan(base["d_top1"]) and math.isnan(base["d_low"])  # the baseline has no delta
    assert wide["d_top1"] == pytest.approx(3.0) and wide["paired"] and wide["pairs"] == 2
    assert math.isnan(wide["d_low"]) and math.isnan(wide["d_high"])  # +3 on both seeds: no spread, no interval
    assert wide["p_improve"] == 1.0 and re4_improve(c) == 0.75  # 71>70, 71<72, 73>70, 73>72
    assert wide["d_gmacs_pct"] == pytest.approx(100.0)
    assert wide["d_params_pct"] == pytest.approx(125.0)
    assert wide["d_train_sps_pct"] == pytest.approx(-20.0)
    # re-attention at depth 4: failed and diverged trials excluded; adds no GMACs here
    assert (re4["n"], re4["failed"], re4["diverged"]) == (2, 1, 1)
    assert re4["d_top1"] == pytest.approx(1.0) and re4["d_gmacs_pct"] == 0
    assert re4["param_count"] == pytest.approx(0.04)  # the failed trial's missing count is skipped
    # depth 8 has no baseline: the arm's own figures, NaN deltas
    assert re8["top1_mean"] == 80.0 and re8["infer_gmacs"] == 0.002
    assert all(math.isnan(re8[k]) for k in ("d_top1", "d_gmacs_pct", "d_params_pct", "d_low", "p_holm"))
    assert not re8["significant"]


def re4_improve(c):
    return c.iloc[2]["p_improve"]


def test_comparison_names_unknown_field(sweep):
    with pytest.raises(ValueError, match="dept.*did you mean 'depth'"):
        comparison(sweep, {**COMPARE, "by": ["dept"]})
    with pytest.raises(ValueError, match="attn"):
        comparison(sweep, {**COMPARE, "arms": {"x": {"attn": "re"}}})


def test_pareto_front_by_hand():
    g = [1, 1, 1, 2, 3, 0.5, np.nan, 4, 4, 5, 0.5]
    t = [50, 50, 40, 60, 60, 30, 99, 70, 70, 65, 20]
    # equal points are both on the front; same cost lower top-1, or same top-1 higher cost, are not
    expected = [True, True, False, True, False, True, False, True, True, False, False]
    assert pareto_front(g, t).tolist() == expected
    assert pareto_front([], []).tolist() == []


def test_pareto_front_matches_brute_force():
    rng = np.random.default_rng(0)
    g, t = rng.integers(0, 20, 400).astype(float), rng.integers(0, 20, 400).astype(float)  # many ties
    dominated = [((g <= g[i]) & (t >= t[i]) & ((g < g[i]) | (t > t[i]))).any() for i in range(len(g))]
    assert pareto_front(g, t).tolist() == [not d for d in dominated]


def test_markdown_cells(sweep):
    text = markdown(sweep, SPEC, INFO)
    assert text.startswith("# handmade")
    assert "generated: 2026-11-27 21:00 UTC · storage: study.db (in the results folder)" in text
    assert "9 trials (7 complete, " in text and "1 failed" in text and "1 diverged" in text
    assert "4 variants × 2 seeds" in text
    assert "Test CPU (2 threads) · fp32 · torch 2.14.1 · timm 1.0.20 · bench 0.1.0" in text
    assert "dataset=cifar10, subset=512" in text and "epochs=2, lr=0.001" in text
    assert "| 4 | baseline | 71.0 ± 1.4 (n=2) |  |  | 0.001 |  |" in text
    wide = "| 4 | wider ×1.5 | 74.0 ± 1.4 (n=2) | +3.0 (—) | 1.00 | 0.002 | +100.0 % | 0.09 | +125.0 % | 800 | −20.0 % |"
    assert wide in text  # the same +3 on both seeds: no spread, so no interval, no test and no ✓
    assert "| 4 | re-attention | 72.0 ± 1.4 (n=2) | +1.0 (—) | 0.75 | 0.001 | 0.0 % | 0.04 | 0.0 % | 900 | −10.0 % |" in text
    assert "| 8 | re-attention | 80.0 (n=1) | – | — | 0.002 |" in text  # no baseline at depth 8
    assert "timed inside each trial, minutes apart" in text
    assert "## Width or re-attention, at equal cost" in text
    assert "At depth 4, re-attention's +1.0 points would cost ×1.26 GMACs by widening" in text
    assert "median 1.41 and max 1.41" in text and "about 2.8 points" in text
    assert "- trial 6 · depth=4 attention=re embed_dim=64 · seed 0: `RuntimeError: out of memory`" in text
    assert "## Diverged trials (1)" in text and "- trial 7 · depth=4 attention=re embed_dim=64 · seed 1" in text
    assert "![top1_vs_gmacs](top1_vs_gmacs.png)" in text
    assert "-20.0" not in text  # one minus sign throughout


def test_markdown_without_spread_or_compare(sweep):
    one_seed = sweep.drop_duplicates(["depth", "attention", "embed_dim"])
    text = markdown(one_seed, {**SPEC, "compare": None}, {})
    assert "## Comparison" not in text and "no estimate of seed noise" in text


def test_write_report_files(sweep, tmp_path):
    sweep.loc[0, "top1_per_epoch"] = json.dumps([60.0, 70.0])  # already a JSON string: kept as is
    paths = write_report(sweep, SPEC, tmp_path / "out", INFO)
    assert set(paths) == {"runs.csv", "report.md", "top1_vs_gmacs.png", "top1_vs_depth.png",
                          "throughput_vs_depth.png", "width_vs_reattention.png", "ranking_by_epoch.png"}
    for path in paths.values():
        assert path.exists() and path.stat().st_size > 0
    assert paths["top1_vs_gmacs.png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not [p for p in (tmp_path / "out").iterdir() if p.name.endswith(".tmp")]
    runs = pd.read_csv(paths["runs.csv"])
    assert len(runs) == len(sweep)
    assert list(runs.columns[:6]) == ["trial", "key", "status", "seed", "error", "img_size"]
    cols = list(runs.columns)
    assert cols.index("re_transform_scale") < cols.index("param_count") < cols.index("top1") < cols.index("device")
    assert json.loads(runs.loc[0, "top1_per_epoch"]) == [60.0, 70.0]
    assert json.loads(runs.loc[1, "top1_per_epoch"]) == [62.0, 72.0]
    assert runs["top1"].iloc[:2].tolist() == [70.0, 72.0]
    assert "74.0 ± 1.4 (n=2)" in paths["report.md"].read_text(encoding="utf-8")


def test_profile_only_sweep(sweep, tmp_path):
    df = sweep.drop(columns=["top1", "top1_per_epoch", "train_loss", "epochs", "train_time_s"])
    df["status"] = "complete"
    paths = write_report(df, {**SPEC, "train": None}, tmp_path, INFO)
    assert set(paths) == {"runs.csv", "report.md", "throughput_vs_depth.png", "gmacs_vs_depth.png"}
    text = paths["report.md"].read_text(encoding="utf-8")
    assert "none (profile only)" in text and "top-1" not in text and "Seed-to-seed" not in text
    assert "| 4 | wider ×1.5 | 0.002 | +100.0 % | 0.09 | +125.0 % | 800 | −20.0 % |" in text
    assert len(pd.read_csv(paths["runs.csv"])) == len(df)
    # no speed measured either: only the cost-vs-depth plot is left
    no_speed = df.assign(train_samples_per_sec=np.nan, infer_samples_per_sec=np.nan)
    assert set(write_report(no_speed, {**SPEC, "train": None}, tmp_path / "b", INFO)) == {
        "runs.csv", "report.md", "gmacs_vs_depth.png"}


def test_atomic_write_keeps_the_old_file_on_a_crash(tmp_path):
    path = tmp_path / "report.md"
    path.write_text("old")

    def crash(f):
        f.write("half")
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        atomic_write(path, crash)
    assert path.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["report.md"]


def test_ranking_by_epoch_by_hand():
    # three variants, two epochs: after epoch 1 the order is b > a > c, at the end a > b > c
    rows = [({"depth": 2}, 60.0, [55.0, 60.0]), ({"depth": 3}, 58.0, [57.0, 58.0]), ({"depth": 4}, 40.0, [30.0, 40.0])]
    df = records([(v, top1, "complete", {}) for v, top1, _ in rows])
    df["top1_per_epoch"] = [curve for _, _, curve in rows]
    df["key"] = [f"v{i}-s0" for i in range(3)]
    taus = ranking_by_epoch(df)
    assert taus["tau"].tolist() == [pytest.approx(1 / 3), 1.0]  # one discordant pair of three
    assert "Kendall τ between the ranking of the 3 variants" in markdown(df, {**SPEC, "compare": None}, INFO)


def fid_frame(top1_by_variant, seeds=(0, 1, 2)):
    """Each variant's seeds at its mean −1, 0, +1, each seed moved a little (k·(+0.1, −0.2, +0.1) for
    the k-th variant): paired differences with a small spread, and means as given."""
    costs = {"embed_dim": WIDE_COST, "attention": {**RE_COST, "infer_gmacs": 0.0015}}  # re-attention: ×1.5 GMACs
    rows = []
    for k, (changes, top1) in enumerate(top1_by_variant, 1):
        for s in seeds:
            jitter = k * (0.1, -0.2, 0.1)[s % 3]
            rows.append((changes, top1 + (s - 1) + jitter, "complete",
                         next((c for key, c in costs.items() if key in changes), {})))
    df = records(rows)
    df["seed"] = [s for _ in top1_by_variant for s in seeds]
    df["key"] = [f"{Variant(**{**MICRO, **c}).to_dict()['depth']}{c.get('attention', 'self')}{c.get('embed_dim', 64)}"
                 f"-s{s}" for c, _ in top1_by_variant for s in seeds]
    return df


def test_fidelity_of_two_studies_with_one_variant_swapped():
    proxy = fid_frame([(BASE, 70.0), (WIDE, 74.0), (RE, 72.0), ({"depth": 8}, 60.0)])
    ref = fid_frame([(BASE, 70.0), (WIDE, 72.0), (RE, 74.0), ({"depth": 8}, 60.0)])  # wide and re swapped
    r = fidelity(proxy, ref, COMPARE, resamples=200)
    # ranks proxy: depth8 < base < re < wide; reference: depth8 < base < wide < re → one discordant pair of 6
    assert r["variants"] == 4 and r["agreement"].tau == pytest.approx(1 - 2 / 6)
    assert r["agreement"].rho == pytest.approx(1 - 6 * 2 / (4 * 15))  # Σd² = 2
    d = r["decisions"].set_index("arm")
    assert d.loc["wider ×1.5", "sign_agrees"] and d.loc["re-attention", "sign_agrees"]  # both still beat the base
    # proxy: widening reaches re-attention's 72.5 at ×√2 < its ×1.5, so widening is the cheaper route;
    # reference: no width point reaches 74.5, so re-attention is
    assert (d.loc["re-attention", "iso_proxy"], d.loc["re-attention", "iso_ref"]) == ("width", "re")
    assert d["state"].tolist() == ["kept", "kept"]  # the reference's intervals (about +2 and +4 ± 0.6) exclude 0
    assert not d.loc["re-attention", "iso_agrees"]
    text = fidelity_markdown(r, ("short", "long"), (SPEC, {**SPEC, "train": {"epochs": 30}}))
    assert text.startswith("# Fidelity: short against long") and "**Reference:** data dataset=cifar10, " \
        "subset=512; train epochs=30" in text
    assert f"over every pair {1 - 2 / 6:.2f} [" in text and "over the 6 of 6 pairs of variants the reference orders" in text
    assert "The decisions (the sign of Δtop-1, each side's 95 % interval deciding): kept and decided for 2 of 2 arm(s)" \
        in text
    assert "| 4 | re-attention | +2.0 [+1.1, +2.9] | +4.0 [+3.1, +4.9] | ✓ | width / re ✗ |" in text
    assert "| 4 | wider ×1.5 | +4.0 [" in text and "nan" not in text  # no iso-cost verdict for a width arm: –


def test_a_sign_the_reference_cannot_tell_from_noise_is_undecided_never_agreement():
    proxy = fid_frame([(BASE, 70.0), (WIDE, 74.0), (RE, 72.0)])
    ref = fid_frame([(BASE, 70.0), (WIDE, 68.0), (RE, 72.0)])
    ref.loc[ref["key"].str.contains("re") & (ref["seed"] == 1), "top1"] = 60.0  # re's deltas: +2, −10, +2: spans 0
    d = fidelity(proxy, ref, COMPARE, resamples=50)["decisions"].set_index("arm")
    assert d.loc["re-attention", "d_top1_ref"] < 0 and not d.loc["re-attention", "sign_agrees"]
    assert d.loc["re-attention", "d_low_ref"] < 0 < d.loc["re-attention", "d_high_ref"]
    assert d.loc["re-attention", "state"] == "undecided"
    assert d.loc["wider ×1.5", "state"] == "wrong"  # +4 against −2 (± 0.6): both decided, opposite sides
    text = fidelity_markdown(fidelity(proxy, ref, COMPARE, resamples=50), ("short", "long"), (SPEC, SPEC))
    assert "decided and wrong for 1 of 2 arm(s), undecided at the reference for 1" in text
    assert text.count("| undecided |") == 1 and text.count("| ✗ decided and wrong |") == 1


def test_one_registry_chooses_and_draws_the_plots(sweep, tmp_path):
    names = plots.plot_names(sweep, COMPARE)
    assert names == ["top1_vs_gmacs.png", "width_vs_reattention.png", "ranking_by_epoch.png", "top1_vs_depth.png",
                     "throughput_vs_depth.png"]  # PLOTS' order, report.md's
    assert [p.name for p in plots.plots(sweep, tmp_path, COMPARE)] == names
    assert plots.plot_names(sweep.drop(columns=["depth"]), None) == ["top1_vs_gmacs.png", "ranking_by_epoch.png"]


def test_a_study_section_takes_its_default_objectives_from_study_config(sweep, tmp_path):
    spec = {**SPEC, "search": {"embed_dim": [64, 96]}, "study": {"sampler": "tpe"}}  # no objectives: top1, gmacs
    found = {"top1": {"embed_dim": 0.75}, "gmacs": {"embed_dim": 1.0}}
    lines, paths = study_section(sweep, spec, tmp_path, found)
    text = "\n".join(lines)
    assert "Objectives: maximize top1 (top-1 % after the proxy schedule), minimize gmacs (" in text
    assert "### Pareto front" in text and [p.name for p in paths] == ["pareto.png"]
    assert "| field | top1 | gmacs |" in text and "| embed_dim | 0.75 | 1.00 |" in text
    lines, _ = study_section(sweep, spec, tmp_path, "Not computed: too few trials")
    assert lines[-2] == "Not computed: too few trials"


def test_reports_name_the_storage_without_a_machine_path(tmp_path, monkeypatch):
    results = tmp_path / "results"
    folder = results / "tiny"
    assert shown_storage(f"sqlite:///{folder / 'study.db'}", folder, results) == "study.db (in the results folder)"
    assert shown_storage(f"journal:{folder / 'a' / 'x.journal'}", folder, results) == \
        "a/x.journal (in the results folder)"
    assert shown_storage(f"journal:{results / 'shared.journal'}", folder, results) == \
        "../shared.journal (relative to the results folder)"
    assert shown_storage("postgresql://u:hunter2@db-host/bench", folder, results) == "postgresql://u:***@db-host/bench"
    elsewhere = f"sqlite:///{tmp_path / 'mine.db'}"
    assert shown_storage(elsewhere, folder, results) == elsewhere  # the user's own choice, shown as given
    monkeypatch.chdir(tmp_path)  # relative paths, as `--results results` gives them
    assert shown_storage("sqlite:///results/tiny/study.db", "results/tiny", "results") == \
        "study.db (in the results folder)"


def test_a_report_rebuilt_from_a_run_carries_no_machine_path(make_spec, run, tmp_path):
    results = tmp_path / "results"
    run(make_spec("two", grid={"depth": [1]}))  # TINY's grid at depth 1: self and re, one seed
    paths = report_study("two", results_dir=results)
    text = paths["report.md"].read_text(encoding="utf-8")
    assert "storage: study.db (in the results folder)" in text and "2 trials (2 complete)" in text
    assert str(tmp_path) not in text and str(tmp_path) not in paths["runs.csv"].read_text()


def test_a_delta_of_exactly_zero_has_no_sign_to_flip():
    from bench.report.fidelity import decision_state
    decided = {"d_top1": 1.0, "d_low": 0.5, "d_high": 1.5}
    open_ = lambda d: {"d_top1": d, "d_low": d - 25.4, "d_high": d + 25.4}  # noqa: E731
    assert decision_state(open_(0.0), decided) == "unsure"  # was "flipped": 0.0 [−25.4, +25.4] marked ✗
    assert decision_state(open_(-0.1), decided) == "flipped" and decision_state(open_(0.1), decided) == "unsure"
    assert decision_state({"d_top1": -1.0, "d_low": -1.5, "d_high": -0.5}, decided) == "wrong"
    assert decision_state({"d_top1": 2.0, "d_low": 1.5, "d_high": 2.5}, decided) == "kept"
    assert decision_state(decided, open_(1.0)) == "undecided"


def test_one_label_for_a_variant_everywhere():
    """The runner, report.md, bench time, plan and searches named variants with four functions:
    one now, linear in the variants (plan's 10,000 corners took minutes quadratically), and a
    self-attention variant is never labelled with re-attention options."""
    from bench.variant import Variant, varying_fields
    base = Variant(**{**MICRO, "attention": "self"})
    variants = [base, base.replace(attention="re", re_norm="layer"), base.replace(embed_dim=48, num_heads=4)]
    fields = varying_fields(variants)
    assert fields == ["attention", "embed_dim", "re_norm"]  # the paper's axes first
    assert [variant_label(v, fields) for v in variants] == [
        "attention=self embed_dim=64", "attention=re embed_dim=64 re_norm=layer", "attention=self embed_dim=48"]
    frame = pd.DataFrame([v.to_dict() for v in variants])  # records: the same fields, the same labels
    assert varying_fields(frame) == fields
    assert [variant_label(r, fields) for r in frame.to_dict("records")] == [variant_label(v, fields) for v in variants]
    many = [base.replace(depth=d) for d in range(1, 10_001)]
    assert varying_fields(many) == ["depth"] and variant_label(many[-1], ["depth"], 0) == "depth=10000 seed=0"
