"""How far to trust a comparison: intervals over seeds, the probability of improvement, a
multiple-comparison correction, and the iso-cost reading of a width curve.

- ``delta``: an arm's Δtop-1 against its baseline with a 95 % t-interval, paired by seed
  when the two share seeds (a seed fixes the data order and augmentation for every arm),
  Welch's otherwise; and rliable's probability of improvement P(arm > baseline) over all
  seed pairs (Agarwal et al. 2021), i.e. the Mann–Whitney U statistic over n·m. scipy.stats
  computes every test; n = 1 on either side gives no interval.
- ``holm``: Holm's step-down adjustment of the arms' p-values in one table.
- the width curve: top-1 against cost for the same model at growing hidden dimension,
  piecewise linear in log cost. ``top1_at`` reads it at a cost, ``cost_to_reach`` inverts it
  (the first cost at which widening reaches a top-1); neither extrapolates past the widest
  or below the narrowest point. ``iso_cost`` puts both around a re-attention arm, with
  bootstrap intervals from resampling each variant's seeds.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Sequence

import numpy as np
from scipy import stats as st

LEVEL = 0.95
RESAMPLES = 2000  # bootstrap resamples of an iso-cost figure


@dataclass(frozen=True)
class Delta:
    """arm − baseline in top-1 points."""

    mean: float
    low: float | None = None     # the 95 % interval; None when a side has one seed
    high: float | None = None
    p_value: float | None = None  # two-sided, of the test that gave the interval
    p_improve: float | None = None  # P(arm > baseline) over seed pairs, ties counting one half
    paired: bool | None = None    # True: by seed; False: Welch; None: no test
    n: int = 0                    # pairs (paired) or the smaller side's seeds

    @property
    def excludes_zero(self) -> bool:
        return self.low is not None and (self.low > 0 or self.high < 0)


def delta(arm: dict[int, float], base: dict[int, float], level: float = LEVEL) -> Delta:
    """Δ of two arms' top-1 by seed (``{seed: top1}``): paired over their common seeds when
    there are at least two, else Welch's unequal-variance t over all seeds."""
    a, b = np.array(list(arm.values()), float), np.array(list(base.values()), float)
    if not len(a) or not len(b):
        return Delta(mean=math.nan)
    mean = float(a.mean() - b.mean())
    common = sorted(set(arm) & set(base))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # zero variance: scipy says NaN, and so do we
        if len(common) >= 2:
            x, y = np.array([arm[s] for s in common]), np.array([base[s] for s in common])
            paired, n, flat = True, len(common), np.ptp(x - y) == 0
            mean = float((x - y).mean())
            test = None if flat else st.ttest_rel(x, y)
        elif len(a) >= 2 and len(b) >= 2:
            paired, n, flat = False, min(len(a), len(b)), np.ptp(a) == 0 and np.ptp(b) == 0
            test = None if flat else st.ttest_ind(a, b, equal_var=False)
        else:
            return Delta(mean=mean, n=min(len(a), len(b)))
    p_improve = float(st.mannwhitneyu(a, b).statistic) / (len(a) * len(b))
    if test is None:  # no spread between seeds: the interval is the point, and there is nothing to test
        return Delta(mean, mean, mean, None, p_improve, paired, n)
    ci = test.confidence_interval(level)
    return Delta(mean, float(ci.low), float(ci.high), float(test.pvalue), p_improve, paired, n)


def mean_interval(values: Sequence[float], level: float = LEVEL) -> tuple[float, float] | None:
    """The t-interval of the mean of ``values`` (seeds); None for fewer than two."""
    x = np.asarray(values, float)
    if len(x) < 2:
        return None
    half = float(st.t.ppf(0.5 + level / 2, len(x) - 1) * x.std(ddof=1) / math.sqrt(len(x)))
    return float(x.mean()) - half, float(x.mean()) + half


def holm(p_values: Sequence[float | None]) -> list[float | None]:
    """Holm's step-down adjusted p-values (None stays None): controls the chance of any false
    'excludes zero' among the arms of one table at the nominal level."""
    known = sorted((p, i) for i, p in enumerate(p_values) if p is not None)
    out: list[float | None] = [None] * len(p_values)
    running, m = 0.0, len(known)
    for rank, (p, i) in enumerate(known):
        running = max(running, min(1.0, (m - rank) * p))
        out[i] = running
    return out


@dataclass(frozen=True)
class Agreement:
    """How two rankings of the same variants agree: Kendall's τ-b and Spearman's ρ (ties
    handled), each with a 95 % percentile-bootstrap interval over variants."""

    n: int
    tau: float
    rho: float
    tau_low: float | None = None
    tau_high: float | None = None
    rho_low: float | None = None
    rho_high: float | None = None


def rank_agreement(x: Sequence[float], y: Sequence[float], level: float = LEVEL, resamples: int = 1000,
                   seed: int = 0) -> Agreement:
    """τ and ρ between ``x`` and ``y`` (one value per variant, in the same order)."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a constant ranking: scipy says NaN, and so do we
        tau, rho = float(st.kendalltau(x, y).statistic), float(st.spearmanr(x, y).statistic)
        if len(x) < 4:  # too few variants to resample
            return Agreement(len(x), tau, rho)
        # a paired bootstrap over variants; resamples whose ranking is constant (NaN) are left out
        idx = np.random.default_rng(seed).integers(0, len(x), (resamples, len(x)))
        taus = np.array([st.kendalltau(x[i], y[i]).statistic for i in idx])
        rhos = np.array([st.spearmanr(x[i], y[i]).statistic for i in idx])
    tail = (1 - level) / 2 * 100
    out = {}
    for name, values in (("tau", taus), ("rho", rhos)):
        values = values[np.isfinite(values)]
        if len(values):
            out[f"{name}_low"], out[f"{name}_high"] = (float(v) for v in np.percentile(values, [tail, 100 - tail]))
    return Agreement(len(x), tau, rho, **out)


# --- the width curve ----------------------------------------------------------------------

def _curve(costs: Sequence[float], top1: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    order = np.argsort(costs, kind="stable")
    return np.log(np.asarray(costs, float)[order]), np.asarray(top1, float)[order]


def top1_at(cost: float, costs: Sequence[float], top1: Sequence[float]) -> float | None:
    """The width curve's top-1 at ``cost`` (linear in log cost); None outside its range."""
    x, y = _curve(costs, top1)
    c = math.log(cost)
    if c < x[0] - 1e-12 or c > x[-1] + 1e-12:
        return None
    return float(np.interp(c, x, y))


def cost_to_reach(target: float, costs: Sequence[float], top1: Sequence[float]) -> float:
    """The first cost at which the width curve reaches ``target`` (linear in log cost between
    points): the narrowest cost when it already does, ``inf`` when even the widest does not."""
    x, y = _curve(costs, top1)
    if y[0] >= target:
        return float(math.exp(x[0]))
    for i in range(1, len(x)):
        if y[i] >= target:
            t = (target - y[i - 1]) / (y[i] - y[i - 1])
            return float(math.exp(x[i - 1] + t * (x[i] - x[i - 1])))
    return math.inf


@dataclass(frozen=True)
class IsoCost:
    """A re-attention arm read against the width curve, along one cost."""

    cost_ratio: float            # the arm's cost / the narrowest width point's
    widest_ratio: float          # the widest width point's cost / the narrowest's
    width_top1: float | None     # the curve's top-1 at the arm's cost (None: outside the curve)
    gain: float | None           # arm top-1 − width_top1
    gain_low: float | None = None
    gain_high: float | None = None
    multiplier: float = math.nan  # cost (× the narrowest) widening needs to match the arm; inf: beyond
    mult_low: float | None = None
    mult_high: float | None = None


def iso_cost(arm: Sequence[float], arm_cost: float, width: Sequence[tuple[float, Sequence[float]]],
             level: float = LEVEL, resamples: int = RESAMPLES, seed: int = 0) -> IsoCost:
    """``arm``: the re-attention arm's top-1 over seeds, at ``arm_cost``; ``width``: (cost,
    top-1 over seeds) of each width point, narrowest (the baseline) included. Intervals
    resample the seeds of every variant (percentile bootstrap); none when a variant has a
    single seed."""
    costs = [c for c, _ in width]
    base = min(costs)
    means = [float(np.mean(s)) for _, s in width]
    arm_mean = float(np.mean(arm))
    at = top1_at(arm_cost, costs, means)
    out = dict(cost_ratio=arm_cost / base, widest_ratio=max(costs) / base, width_top1=at,
               gain=None if at is None else arm_mean - at, multiplier=cost_to_reach(arm_mean, costs, means) / base)
    samples = [np.asarray(arm, float), *(np.asarray(s, float) for _, s in width)]
    if min(len(s) for s in samples) < 2:
        return IsoCost(**out)

    x, _ = _curve(costs, means)
    order = np.argsort(costs, kind="stable")
    c = math.log(arm_cost)

    def curve_means(w: tuple, axis: int) -> np.ndarray:  # (resamples, points), sorted by cost
        return np.stack([w[i].mean(axis=axis) for i in order], axis=-1)

    # the curve's top-1 at the arm's cost is a fixed mix of two points' means: vectorised
    j = int(np.clip(np.searchsorted(x, c), 1, len(x) - 1)) if at is not None else 1
    t = (c - x[j - 1]) / (x[j] - x[j - 1]) if x[j] > x[j - 1] else 0.0

    def gain(a, *w, axis=-1):
        y = curve_means(w, axis)
        return a.mean(axis=axis) - (y[..., j - 1] * (1 - t) + y[..., j] * t)

    def multiplier(a, *w, axis=-1):
        y, target = curve_means(w, axis), a.mean(axis=axis)
        y2, t2 = np.atleast_2d(y), np.atleast_1d(target)
        reached = y2 >= t2[:, None]
        first = np.where(reached.any(-1), reached.argmax(-1), -1)
        prev = np.maximum(first - 1, 0)
        rows = np.arange(len(t2))
        lo, hi = y2[rows, prev], y2[rows, np.maximum(first, 0)]
        frac = np.where(hi > lo, (t2 - lo) / np.where(hi > lo, hi - lo, 1.0), 0.0)
        logc = np.where(first <= 0, x[0], x[prev] + frac * (x[np.maximum(first, 0)] - x[prev]))
        out = np.where(first == -1, math.inf, np.exp(logc)) / base
        return out.reshape(np.shape(target))

    rng = np.random.default_rng(seed)
    for name, fn in (("gain", gain), ("mult", multiplier)):
        if name == "gain" and at is None:
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # degenerate resamples (all seeds equal) are fine here
            res = st.bootstrap(samples, fn, vectorized=True, paired=False, confidence_level=level,
                               n_resamples=resamples, method="percentile", random_state=rng)
        low, high = float(res.confidence_interval.low), float(res.confidence_interval.high)
        out[f"{name}_low"], out[f"{name}_high"] = low, high
    return IsoCost(**out)
