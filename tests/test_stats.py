"""Intervals, probability of improvement, Holm, and the width curve against hand-computed answers."""
import math

import numpy as np
import pytest
import torch

from bench.side_by_side import Pass, interleave, side_by_side
from bench.stats import cost_to_reach, delta, holm, iso_cost, mean_interval, top1_at
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


def test_the_same_difference_on_every_seed_is_no_evidence_so_nothing_is_decided():
    """Two seeds, both re 8/8 against self 7/7: +1.0 [+1.0, +1.0] counted as decided before. A
    spread of zero says nothing of the noise: no interval, no test, undecided."""
    for arm, base in [({0: 73.0, 1: 75.0}, {0: 70.0, 1: 72.0}), ({0: 8.0, 1: 8.0}, {0: 7.0, 1: 7.0})]:
        d = delta(arm, base)
        assert (d.low, d.high, d.p_value) == (None, None, None) and not d.excludes_zero
        assert d.mean == pytest.approx(3.0 if arm[0] == 73.0 else 1.0)


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
    r = iso_cost([74.0, 76.0], 1.1, WIDTH)
    assert r.width_top1 == pytest.approx(60 + 10 * math.log2(1.1)) and r.gain == pytest.approx(75 - r.width_top1)
    assert r.multiplier == pytest.approx(2 ** 1.5) and r.cost_ratio == pytest.approx(1.1) and r.widest_ratio == 4
    assert r.gain_low < r.gain < r.gain_high and r.mult_low < r.multiplier < r.mult_high


def test_an_arm_beyond_the_widest_is_flagged_not_extrapolated():
    r = iso_cost([90.0, 92.0], 1.05, WIDTH)
    assert math.isinf(r.multiplier) and math.isinf(r.mult_high) and r.widest_ratio == 4
    assert iso_cost([90.0], 1.05, WIDTH).mult_low is None  # one seed: no interval


def test_the_gain_interval_by_hand():
    from scipy.stats import t as student
    arm, left, right = [74.0, 76.0, 79.0], [59.0, 61.0, 60.5], [69.0, 72.0, 70.0]
    r = iso_cost(arm, 1.5, [(1.0, left), (2.0, right), (4.0, [79.0, 81.0, 80.0])])
    w = math.log(1.5) / math.log(2.0)  # the interpolation weight between cost 1 and cost 2
    gain = 229 / 3 - ((1 - w) * 180.5 / 3 + w * 211 / 3)
    var = lambda s: sum((v - sum(s) / 3) ** 2 for v in s) / 2  # noqa: E731
    parts = [var(arm) / 3, (1 - w) ** 2 * var(left) / 3, w ** 2 * var(right) / 3]  # 19/9, …
    se = math.sqrt(sum(parts))
    df = se ** 4 / sum(p ** 2 / 2 for p in parts)  # Welch–Satterthwaite, 3 seeds each
    half = student.ppf(0.975, df) * se
    assert r.gain == pytest.approx(gain, abs=1e-12)
    assert abs(r.gain_low - (gain - half)) < 1e-9 and abs(r.gain_high - (gain + half)) < 1e-9


def _gap_and_half(arm, width, c):
    """By hand: arm − curve at cost c, and the half-width of its 95 % Welch t-interval."""
    from scipy.stats import t as student
    (c0, s0), (c1, s1) = next(((p, q) for p, q in zip(width, width[1:], strict=False) if p[0] <= c <= q[0]))
    w = math.log(c / c0) / math.log(c1 / c0)
    mean = lambda s: sum(s) / len(s)  # noqa: E731
    parts = [sum((v - mean(s)) ** 2 for v in s) / (len(s) - 1) / len(s) * k ** 2
             for s, k in ((arm, 1.0), (s0, 1 - w), (s1, w))]
    se = math.sqrt(sum(parts))
    df = se ** 4 / sum(p ** 2 / (len(s) - 1) for p, s in zip(parts, (arm, s0, s1), strict=True))
    return mean(arm) - ((1 - w) * mean(s0) + w * mean(s1)), student.ppf(0.975, df) * se


def test_the_widening_interval_is_where_the_gain_test_turns():
    width = [(1.0, [59.0, 61.0, 60.0]), (2.0, [69.0, 71.0, 70.7]), (4.0, [79.0, 81.0, 80.0])]
    arm = [74.0, 76.0, 75.5]
    r = iso_cost(arm, 1.1, width)
    assert 1 < r.mult_low < r.multiplier < r.mult_high < 4
    for edge in (r.mult_low, r.mult_high):  # at each end, arm − curve sits on its interval's edge
        gap, half = _gap_and_half(arm, width, edge)
        assert abs(abs(gap) - half) < 1e-9
    gap, half = _gap_and_half(arm, width, r.multiplier)
    assert abs(gap) < 1e-9 and half > 0
    # far below the narrowest point: no widening needed, with confidence; far above the widest: beyond it
    assert (lambda x: (x.multiplier, x.mult_low, x.mult_high))(iso_cost([40.0, 41.0, 42.0], 1.1, width)) == (1, 1, 1)
    above = iso_cost([95.0, 96.0, 97.0], 1.1, width)
    assert math.isinf(above.multiplier) and math.isinf(above.mult_low) and math.isinf(above.mult_high)


def test_no_spread_between_seeds_gives_the_point():
    r = iso_cost([75.0, 75.0], 1.5, [(1.0, [60.0, 60.0]), (2.0, [70.0, 70.0]), (4.0, [80.0, 80.0])])
    assert r.gain_low == r.gain == r.gain_high and r.mult_low == pytest.approx(r.multiplier) == r.mult_high


# the simulation: 3 Gaussian seeds per variant, a width curve of 3 points linear in log cost (60, 70, 80
# at ×1, ×2, ×4; seed sds 1, 2, 3), a re-attention arm at ×1.5 with mean 75 (sd 2.5): true gain
# 75 − (60 + 10·log2 1.5), true widening ×2^1.5
STUDIES, SEEDS = 2000, 3
COSTS, MEANS, SDS = (1.0, 2.0, 4.0), np.array([60.0, 70.0, 80.0]), np.array([1.0, 2.0, 3.0])
ARM_COST, ARM_MEAN, ARM_SD = 1.5, 75.0, 2.5
TRUE_GAIN, TRUE_WIDENING = ARM_MEAN - (60 + 10 * math.log2(ARM_COST)), 2 ** 1.5


@pytest.fixture(scope="module")
def simulated():
    rng = np.random.default_rng(19)
    width = rng.normal(MEANS[None, :, None], SDS[None, :, None], (STUDIES, len(COSTS), SEEDS))
    return rng.normal(ARM_MEAN, ARM_SD, (STUDIES, SEEDS)), width


def test_a_nominal_95_percent_interval_covers_the_truth_with_three_seeds(simulated):
    arms, width = simulated
    gain = widening = 0
    for a, w in zip(arms, width, strict=True):
        r = iso_cost(a, ARM_COST, list(zip(COSTS, w, strict=True)))
        gain += r.gain_low <= TRUE_GAIN <= r.gain_high
        widening += r.mult_low <= TRUE_WIDENING <= r.mult_high
    # measured: gain 94.95 %, widening 95.85 % (rng seed 19); median gain interval 9.1 points wide
    assert 0.90 <= gain / STUDIES <= 0.995 and 0.90 <= widening / STUDIES <= 0.995


def test_the_former_percentile_bootstrap_under_covers(simulated):
    """The method iso_cost used before: resample each variant's seeds (1,000 times here), the 2.5 and
    97.5 percentiles of the gain; vectorised over the studies."""
    arms, width = simulated
    rng, resamples, t = np.random.default_rng(0), 1000, math.log2(ARM_COST)

    def means(x):  # (studies, resamples): each resample's mean of the seeds
        idx = rng.integers(0, SEEDS, (STUDIES, resamples, SEEDS))
        return np.take_along_axis(np.repeat(x[:, None, :], resamples, 1), idx, 2).mean(-1)

    gains = means(arms) - ((1 - t) * means(width[:, 0]) + t * means(width[:, 1]))
    low, high = np.percentile(gains, [2.5, 97.5], axis=1)
    coverage = float(np.mean((low <= TRUE_GAIN) & (TRUE_GAIN <= high)))
    assert coverage < 0.90  # measured: 78.55 % for a nominal 95 %, median width 4.4 points


def test_side_by_side_rounds_interleave_the_variants():
    calls = []
    steps = {name: (lambda name=name: calls.append(name)) for name in "abc"}
    ms = interleave(steps, rounds=3, iters=2, warmup=1, device=torch.device("cpu"))
    assert calls == list("abc") + list("aabbcc") + list("bbccaa") + list("ccaabb")  # rotated every round
    assert {k: len(v) for k, v in ms.items()} == {"a": 3, "b": 3, "c": 3}  # one median per visit


def test_side_by_side_times_every_variant():
    base = Variant(img_size=16, patch_size=4, embed_dim=16, depth=1, num_heads=2, mlp_ratio=2.0, num_classes=10)
    result = side_by_side({"self": base, "re": base.replace(attention="re")}, Pass("fp32", 4, 3, 2, 1),
                          device=torch.device("cpu"))
    assert set(result["variants"]) == {"self", "re"} and result["rounds"] == 3
    for figures in result["variants"].values():
        assert figures["train_sps_p10"] <= figures["train_samples_per_sec"] <= figures["train_sps_p90"]
        assert figures["train_samples_per_sec"] == pytest.approx(4 / (figures["train_step_time"] / 1e3), rel=0.5)
