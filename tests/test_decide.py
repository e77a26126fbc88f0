"""What a decision would cost and where the noise comes from (bench.report.decide), and the
per-image results that feed both: kept with every trial, paired image by image, split into the
seeds' part and the test set's; studies from before them keep their seed-only intervals."""
import math

import numpy as np
import pandas as pd
import pytest

from bench import sequential as seq
from bench.records import list_key, pack_bits, unpack_bits
from bench.report.decide import needed_cell, projections, spread
from bench.report.markdown import markdown, runs_frame
from bench.report.tables import comparison
from bench.variant import Variant

MICRO = Variant(img_size=32, patch_size=8, embed_dim=64, depth=2, num_heads=4, mlp_ratio=2.0,
                num_classes=10).to_dict()
COMPARE = {"by": ["depth"], "baseline": {"attention": "self"}, "arms": {"re": {"attention": "re"}}}


def test_bits_round_trip_and_name_their_test_list():
    rng = np.random.default_rng(0)
    for n in (0, 1, 7, 8, 9, 10_000):
        bits = rng.random(n) < 0.3
        text = pack_bits(bits)
        assert np.array_equal(unpack_bits(text), bits)
    assert len(pack_bits(np.ones(10_000, bool))) == len("10000:") + 4 * math.ceil(1250 / 3)  # 1,250 bytes, base64
    assert unpack_bits("junk") is None and unpack_bits(None) is None and unpack_bits("5:!!") is None
    assert list_key([1, 2, 3]) == list_key(np.array([1, 2, 3])) != list_key([1, 3, 2])


@pytest.mark.parametrize("effect, sd", [(2.0, 2.0), (3.0, 2.0), (5.0, 4.0)])
def test_the_seeds_needed_decide_four_times_in_five(effect, sd):
    """At the seeds seeds_needed names, simulated studies with that effect and spread pass the
    sequential boundary at that look about 80 % of the time; one seed fewer, less often."""
    n = seq.seeds_needed(effect, sd ** 2, 0.0, 3, 40, sequential=True)
    assert n is not None and n >= 3
    rng = np.random.default_rng(int(effect * 10 + sd))

    def rate(k):
        x = rng.normal(effect, sd, (40_000, k))
        t = x.mean(1) / (x.std(1, ddof=1) / math.sqrt(k))
        return float((np.abs(t) > seq.boundary(k)).mean())
    assert rate(n) >= 0.8 - 0.01
    if n > 3:
        assert rate(n - 1) < 0.8 + 0.01


def test_a_test_set_share_no_seeds_can_remove_is_beyond_any_number_of_seeds():
    assert seq.seeds_needed(1.0, 1.0, 4.0, 3, 1000, sequential=True) is None  # se ≥ 2 whatever the seeds
    assert seq.seeds_needed(1.0, 1.0, 0.0, 3, 1000, sequential=True) is not None


def records(top1, bits=None):
    """Records of baseline and re-attention at depth 2: ``top1[arm]`` per seed, ``bits[arm]`` per seed."""
    rows = []
    for arm in ("self", "re"):
        for seed, t in enumerate(top1[arm]):
            row = {**MICRO, "attention": arm, "seed": seed, "status": "complete", "top1": t, "trial": len(rows),
                   "key": f"{arm}-s{seed}", "train_gmacs": 0.003, "steps": 10, "time_trial_s": 60.0,
                   "config": {"train": {"batch_size": 32}}}
            if bits is not None:
                row.update({"test_correct": pack_bits(bits[arm][seed]), "test_list": "200-abc"})
            rows.append(row)
    return pd.DataFrame(rows)


def test_projections_price_the_missing_seeds_at_the_studys_own_trials():
    df = records({"self": [50.0, 51.0, 49.5], "re": [52.5, 52.0, 53.0]})  # +2.33, per-seed sd 1.26: open at 3
    found = projections(comparison(df, COMPARE), ["depth"], cap=10)
    (p,) = found.to_dict("records")
    n = seq.seeds_needed(p["d_top1"], p["seed_var"], 0.0, 3, 10, sequential=True)
    assert p["seeds"] == 3 and p["needed"] == n and n > 3
    assert p["trials"] == 2 * (n - 3)  # the arm's variant and the baseline's, one trial per seed
    assert p["minutes"] == pytest.approx(2 * (n - 3) * 60.0 / 60)
    assert p["pmacs"] == pytest.approx(2 * (n - 3) * 0.003 * 10 * 32 / 1e6)
    assert needed_cell(p).startswith(f"{n} (+{n - 3} seeds: {2 * (n - 3)} trials")


def test_per_image_results_split_the_spread_and_enter_the_interval():
    rng = np.random.default_rng(1)
    bits = {arm: [rng.random(200) < 0.3 for _ in range(3)] for arm in ("self", "re")}
    for seed in range(3):  # images that favour one arm on every seed: the test set's own share of the noise
        bits["re"][seed][:20], bits["self"][seed][:20] = True, False
        bits["self"][seed][20:30], bits["re"][seed][20:30] = True, False
    top1 = {arm: [100 * b.mean() for b in bits[arm]] for arm in bits}
    df = records(top1, bits)
    c = comparison(df, COMPARE).set_index("arm")
    assert c.loc["re", "m"] == 200 and c.loc["re", "test_var"] > 0
    split = spread(df)
    assert list(split["images"]) == [200, 200] and (split["test_share"] > 0).all()
    text = markdown(df, {"name": "m", "compare": COMPARE}, {})
    assert "### The seeds' part and the test set's" in text and "200-image test set" in text
    assert "by test image (the 200 images every trial was scored on" in text
    assert "test_correct" not in runs_frame(df.drop(columns=["test_correct"])).columns


def test_one_seed_shows_mcnemars_discordant_counts_and_decides_nothing():
    base = np.zeros(100, bool)
    base[:40] = True
    arm = base.copy()
    arm[40:60] = True  # 20 images only the arm gets right
    arm[:5] = False    # 5 only the baseline
    df = records({"self": [40.0], "re": [55.0]}, {"self": [base], "re": [arm]})
    row = comparison(df, COMPARE).set_index("arm").loc["re"]
    assert row["discordant"] == (20, 5) and pd.isna(row["d_low"])
    assert "+15.0 (—; one seed: 20 images only the arm got right, 5 only the baseline)" in markdown(
        df, {"name": "m", "compare": COMPARE}, {})


def test_a_study_from_before_per_image_results_keeps_its_seed_only_intervals_and_says_so():
    df = records({"self": [50.0, 51.0, 49.5], "re": [53.5, 54.0, 52.0]})
    row = comparison(df, COMPARE).set_index("arm").loc["re"]
    assert row["m"] == 0 and row["d_low"] > 0
    text = markdown(df, {"name": "m", "compare": COMPARE}, {})
    assert "kept no per-image results" in text and "by test image" not in text


def test_the_report_prices_the_decidable_arms_and_says_when_none_is():
    decidable = records({"self": [50.0, 51.0, 49.5], "re": [52.5, 52.0, 53.0]})  # +2.33: decided by ~5 seeds
    text = markdown(decidable, {"name": "m", "compare": COMPARE}, {})
    n = seq.seeds_needed(2.333333, np.var([2.5, 1.0, 3.5], ddof=1), 0.0, 3, seq.HORIZON, sequential=True)
    assert f"Deciding the 1 decidable arm(s): {2 * (n - 3)} trials" in text
    assert "`bench run SWEEP --until-decided`" in text
    hopeless = records({"self": [50.0, 56.0, 44.0], "re": [50.5, 44.0, 57.0]})  # +0.5 under a 6-point spread
    text = markdown(hopeless, {"name": "m", "compare": COMPARE}, {})
    assert f"No undecided arm is decidable within {seq.HORIZON} seeds (1 arm(s) beyond {seq.HORIZON} seeds)." in text
    assert "Deciding the 0" not in text and "0 trials" not in text
