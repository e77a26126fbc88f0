"""Intervals, probability of improvement, Holm, and the width curve against hand-computed answers."""
import math

import pytest
import torch

from bench.stats import cost_to_reach, delta, holm, iso_cost, mean_interval, top1_at
from bench.timing import interleave, side_by_side
from bench.variant import Variant


def test_paired_interval_by_hand():
    d = delta({0: 60.0, 1: 62.0, 2: 65.0}, {0: 50.0, 1: 55.0, 2: 54.0})  # differences 10, 7, 11
    sd = math.sqrt(((10 - 28 / 3) ** 2 + (7 - 28 / 3) ** 2 + (11 - 28 / 3) ** 2) / 2)
    half = 4.302653 * sd / math.sqrt(3)  # t(0.975, 2 df), from a table
    assert d.paired and d.n == 3 and d.mean == pytest.approx(28 / 3)
    assert (d.low, d.high) == (pytest.approx(28 / 3 - half, rel=1e-6), pytest.approx(28 / 3 + half, rel=1e-6))
    assert d.excludes_zero and d.p_improve == 1.0


def test_welch_when_the_arms_share_no_seeds():
    from scipy.stats import t
    d = delta({0: 60.0, 1: 62.0}, {2: 50.0, 3: 55.0})
    se = math.sqrt(2 / 2 + 12.5 / 2)  # sample variances 2 and 12.5, two seeds each
    df = se ** 4 / ((2 / 2) ** 2 / 1 + (12.5 / 2) ** 2 / 1)  # Welch–Satterthwaite
    half = t.ppf(0.975, df) * se
    assert not d.paired and d.mean == 8.5
    assert (d.low, d.high) == (pytest.approx(8.5 - half), pytest.approx(8.5 + half))
    assert not d.excludes_zero  # two seeds a side and a wide spread: not distinguishable from 0


def test_one_seed_gives_no_interval_and_no_probability():
    d = delta({0: 61.0}, {0: 60.0, 1: 58.0})
    assert d.mean == 2.0 and d.low is None and d.p_value is None and d.paired is None
    assert mean_interval([61.0]) is None


def test_probability_of_improvement_counts_ties_as_half():
    assert delta({0: 1.0, 1: 2.0}, {0: 2.0, 1: 3.0}).p_improve == pytest.approx(0.5 / 4)


def test_the_same_difference_on_every_seed_is_a_point_not_a_test():
    d = delta({0: 73.0, 1: 75.0}, {0: 70.0, 1: 72.0})
    assert (d.low, d.high, d.p_value) == (3.0, 3.0, None)


def test_holm_by_hand():
    # sorted 0.01, 0.03, 0.04 → ×3, ×2, ×1 → 0.03, 0.06, 0.04 → running max 0.03, 0.06, 0.06
    assert holm([0.01, 0.04, None, 0.03]) == [pytest.approx(0.03), pytest.approx(0.06), None, pytest.approx(0.06)]
    assert holm([0.5, 0.9]) == [1.0, 1.0]


WIDTH = [(1.0, [59.0, 61.0]), (2.0, [69.0, 71.0]), (4.0, [79.0, 81.0])]  # +10 points per doubling


def test_a_width_curve_linear_in_log_cost_is_read_exactly():
    costs, top1 = [c for c, _ in WIDTH], [60.0, 70.0, 80.0]
    assert top1_at(1.5, costs, top1) == pytest.approx(60 + 10 * math.log2(1.5))
    assert top1_at(0.5, costs, top1) is None and top1_at(5.0, costs, top1) is None  # no extrapolation
    assert cost_to_reach(75.0, costs, top1) == pytest.approx(2 ** 1.5)
    assert cost_to_reach(55.0, costs, top1) == 1.0 and cost_to_reach(85.0, costs, top1) == math.inf
    r = iso_cost([74.0, 76.0], 1.1, WIDTH, resamples=500)
    assert r.width_top1 == pytest.approx(60 + 10 * math.log2(1.1)) and r.gain == pytest.approx(75 - r.width_top1)
    assert r.multiplier == pytest.approx(2 ** 1.5) and r.cost_ratio == pytest.approx(1.1) and r.widest_ratio == 4
    assert r.gain_low < r.gain < r.gain_high and r.mult_low < r.multiplier < r.mult_high


def test_an_arm_beyond_the_widest_is_flagged_not_extrapolated():
    r = iso_cost([90.0, 92.0], 1.05, WIDTH, resamples=200)
    assert math.isinf(r.multiplier) and math.isinf(r.mult_high) and r.widest_ratio == 4
    assert iso_cost([90.0], 1.05, WIDTH).mult_low is None  # one seed: no interval


def test_side_by_side_rounds_interleave_the_variants():
    calls = []
    steps = {name: (lambda name=name: calls.append(name)) for name in "abc"}
    ms = interleave(steps, rounds=3, iters=2, warmup=1, device=torch.device("cpu"))
    assert calls == list("abc") + list("aabbcc") + list("bbccaa") + list("ccaabb")  # rotated every round
    assert {k: len(v) for k, v in ms.items()} == {"a": 3, "b": 3, "c": 3}  # one median per visit


def test_side_by_side_times_every_variant():
    base = Variant(img_size=16, patch_size=4, embed_dim=16, depth=1, num_heads=2, mlp_ratio=2.0, num_classes=10)
    result = side_by_side({"self": base, "re": base.replace(attention="re")}, device=torch.device("cpu"),
                          dtype="fp32", batch_size=4, rounds=3, iters=2, warmup=1)
    assert set(result["variants"]) == {"self", "re"} and result["rounds"] == 3
    for figures in result["variants"].values():
        assert figures["train_sps_p10"] <= figures["train_samples_per_sec"] <= figures["train_sps_p90"]
        assert figures["train_samples_per_sec"] == pytest.approx(4 / (figures["train_step_time"] / 1e3), rel=0.5)
