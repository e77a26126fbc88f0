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
  Welch t-intervals over each variant's seeds (the multiplier's by inverting the gain's test).
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Sequence

import numpy as np
from scipy import optimize, special
from scipy import stats as st

from bench.sequential import repeated_interval

LEVEL = 0.95


@dataclass(frozen=True)
class Delta:
    """arm − baseline in top-1 points."""

    mean: float
    low: float | None = None     # the 95 % interval; None without one (one seed on a side, no spread, or too
    high: float | None = None    # few seeds for a sequential look): nothing decided
    p_value: float | None = None  # two-sided, of the fixed-n test that gave the interval (None: sequential)
    p_improve: float | None = None  # P(arm > baseline) over seed pairs, ties counting one half
    paired: bool | None = None    # True: by seed; False: Welch; None: no test
    n: int = 0                    # pairs (paired) or the smaller side's seeds
    m: int = 0                    # test images both arms were scored on, one by one (0: not known)
    seed_var: float | None = None  # of the paired difference between seeds, per seed (points²)
    test_var: float | None = None  # the test set's share of the mean's variance: shared by every seed (points²)
    sequential: bool = False      # the interval is the sequential boundary's (bench.sequential)
    discordant: tuple[int, int] | None = None  # one seed: images only the arm / only the baseline got right

    @property
    def excludes_zero(self) -> bool:
        return self.low is not None and (self.low > 0 or self.high < 0)

    @property
    def se(self) -> float | None:
        """The standard error of the mean difference (both parts), when known."""
        if self.seed_var is None or self.n < 2:
            return None
        return math.sqrt(max(self.seed_var / self.n + (self.test_var or 0.0), 0.0))


@dataclass(frozen=True)
class TwoWay:
    """A paired difference over seeds × test images (arm's correctness − the baseline's, on the
    same images, by seed), split the way a crossed two-way random-effects model splits it:
    D[s, i] = μ + a_s + b_i + e_si. ``seed_var``: the variance between seeds' mean differences
    (σ²_a + σ²_e/m, what more seeds shrink); ``test_var``: the test set's share of the
    mean's variance (σ²_b/m, shared by every seed: more seeds never shrink it, more images
    do); ``var``: the mean's variance, unbiased: seed_var/n + test_var (estimated as
    S²_seeds/n + S²_images/m − MS_residual/(n·m)); ``df``: Satterthwaite's."""

    n: int
    m: int
    mean: float
    seed_var: float
    test_var: float
    var: float
    df: float


def two_way(diffs: np.ndarray) -> TwoWay:
    """``diffs``: (seeds, images) of arm − baseline correctness (−1, 0, 1; or means of several
    variants), in points when multiplied by 100 — done here. At least two seeds."""
    d = np.asarray(diffs, float) * 100.0
    n, m = d.shape
    grand = float(d.mean())
    rows, cols = d.mean(1), d.mean(0)
    s_seed = float(rows.var(ddof=1))
    s_item = float(cols.var(ddof=1)) if m > 1 else 0.0
    ss_res = float(((d - grand) ** 2).sum() - m * ((rows - grand) ** 2).sum() - n * ((cols - grand) ** 2).sum())
    ms_res = max(ss_res, 0.0) / max((n - 1) * (m - 1), 1)
    parts = (s_seed / n, s_item / m, -ms_res / (n * m))
    var = max(sum(parts), 0.0)
    dfs = (n - 1, max(m - 1, 1), max((n - 1) * (m - 1), 1))
    denom = sum(p * p / f for p, f in zip(parts, dfs, strict=True))
    df = var * var / denom if denom > 0 else math.inf
    test = max(s_item - ms_res / n, 0.0) / m
    return TwoWay(n, m, grand, s_seed, test, var, df)


def delta(arm: dict[int, float], base: dict[int, float], level: float = LEVEL, *,
          examples: tuple[dict[int, np.ndarray], dict[int, np.ndarray]] | None = None,
          sequential: bool = False) -> Delta:
    """Δ of two arms' top-1 by seed (``{seed: top1}``): paired over their common seeds when
    there are at least two, else Welch's unequal-variance t over all seeds.

    ``examples``: each seed's per-example correctness (arm's, baseline's: bool arrays over the
    same test list): then the paired difference is taken image by image too, and its variance
    holds the test set's share (``two_way``) — a fixed test set is one sample of images that
    every seed shares. With one common seed it gives McNemar's discordant counts (no interval:
    the seed part is unknown). ``sequential``: the interval is the repeated confidence interval
    of bench.sequential's boundary at this many seeds (no p-value; at least 3 seeds).
    No spread at all gives no interval: it is no evidence of the noise."""
    a, b = np.array(list(arm.values()), float), np.array(list(base.values()), float)
    if not len(a) or not len(b):
        return Delta(mean=math.nan)
    mean = float(a.mean() - b.mean())
    common = sorted(set(arm) & set(base))
    p_improve = float(st.mannwhitneyu(a, b).statistic) / (len(a) * len(b)) if len(a) and len(b) else None
    shared = [s for s in common if examples and s in examples[0] and s in examples[1]
              and len(examples[0][s]) == len(examples[1][s])]
    if examples is not None and shared and len(shared) == len(common):
        return _per_example(examples, shared, p_improve, level, sequential)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # zero variance: scipy says NaN, and so do we
        if len(common) >= 2:
            x, y = np.array([arm[s] for s in common]), np.array([base[s] for s in common])
            diff = x - y
            paired, n, flat = True, len(common), np.ptp(diff) == 0
            mean = float(diff.mean())
            if sequential:
                var = float(diff.var(ddof=1))
                out = Delta(mean, None, None, None, p_improve, True, n, seed_var=var, test_var=0.0, sequential=True)
                return _sequential(out)
            test = None if flat else st.ttest_rel(x, y)
            seed_var = float(diff.var(ddof=1))
        elif len(a) >= 2 and len(b) >= 2:
            paired, n, flat = False, min(len(a), len(b)), np.ptp(a) == 0 and np.ptp(b) == 0
            test = None if flat or sequential else st.ttest_ind(a, b, equal_var=False)
            seed_var = None
        else:
            return Delta(mean=mean, n=min(len(a), len(b)), p_improve=p_improve)
    if test is None:  # no spread between seeds (or unpaired seeds for a sequential look): nothing decided
        return Delta(mean, None, None, None, p_improve, paired, n, seed_var=seed_var, test_var=0.0)
    ci = test.confidence_interval(level)
    return Delta(mean, float(ci.low), float(ci.high), float(test.pvalue), p_improve, paired, n,
                 seed_var=seed_var, test_var=0.0)


def _per_example(examples: tuple[dict[int, np.ndarray], dict[int, np.ndarray]], seeds: list[int],
                 p_improve: float | None, level: float, sequential: bool) -> Delta:
    arm, base = examples
    diffs = np.stack([np.asarray(arm[s], float) - np.asarray(base[s], float) for s in seeds])
    m = diffs.shape[1]
    if len(seeds) == 1:  # McNemar: the images only one of the two got right
        only_arm, only_base = int((diffs[0] > 0).sum()), int((diffs[0] < 0).sum())
        p = float(st.binomtest(only_arm, only_arm + only_base).pvalue) if only_arm + only_base else None
        return Delta(float(diffs.mean() * 100), None, None, p, p_improve, True, 1, m, discordant=(only_arm, only_base))
    w = two_way(diffs)
    out = Delta(w.mean, None, None, None, p_improve, True, w.n, w.m, w.seed_var, w.test_var, sequential)
    if w.var <= 0:
        return out
    if sequential:
        return _sequential(out, var=w.var)
    se = math.sqrt(w.var)
    q = float(special.stdtrit(w.df, 0.5 + level / 2)) if math.isfinite(w.df) else float(st.norm.ppf(0.5 + level / 2))
    p = float(2 * special.stdtr(w.df, -abs(w.mean) / se)) if math.isfinite(w.df) else \
        float(2 * st.norm.sf(abs(w.mean) / se))
    return Delta(w.mean, w.mean - q * se, w.mean + q * se, p, p_improve, True, w.n, w.m, w.seed_var, w.test_var)


def _sequential(d: Delta, var: float | None = None) -> Delta:
    """``d`` with the repeated confidence interval of its look (bench.sequential)."""
    var = d.seed_var / d.n + d.test_var if var is None else var
    found = repeated_interval(d.mean, math.sqrt(var), d.n) if var > 0 else None
    if found is None:
        return d
    return Delta(d.mean, found[0], found[1], None, d.p_improve, d.paired, d.n, d.m, d.seed_var, d.test_var, True,
                 d.discordant)


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


@dataclass(frozen=True)
class Resolved:
    """Kendall's τ over the pairs of variants the reference orders (the interval of their
    difference excludes 0): concordant minus discordant pairs over those pairs, a tie in the
    other ranking counting neither. A pair the reference cannot order is neither agreement nor
    disagreement, as an undecided decision is never agreement. With a 95 % bootstrap interval
    over variants."""

    tau: float        # NaN when the reference orders no pair
    ordered: int      # pairs the reference orders
    pairs: int        # pairs of variants in all
    low: float | None = None
    high: float | None = None


def resolved_tau(x: Sequence[float], order: np.ndarray, level: float = LEVEL, resamples: int = 1000,
                 seed: int = 0) -> Resolved:
    """τ of the ranking ``x`` (one value per variant) against the reference's ``order``: a
    (variants × variants) matrix of sign(reference i − reference j) where the reference resolves
    the pair, 0 where it does not (bench.report.fidelity builds it)."""
    x = np.asarray(x, float)
    ours = np.sign(x[:, None] - x[None, :])
    upper = np.triu(np.ones_like(order, dtype=bool), 1)

    def tau(idx: np.ndarray) -> float:
        o, r = order[np.ix_(idx, idx)], ours[np.ix_(idx, idx)]
        mask = upper[: len(idx), : len(idx)] & (o != 0)
        return float((o * r)[mask].sum() / mask.sum()) if mask.any() else math.nan
    n = len(x)
    every = np.arange(n)
    ordered = int(((order != 0) & upper).sum())
    found = Resolved(tau(every), ordered, n * (n - 1) // 2)
    if ordered == 0 or n < 4:
        return found
    rng = np.random.default_rng(seed)
    boot = np.array([tau(np.sort(rng.integers(0, n, n))) for _ in range(resamples)])
    boot = boot[np.isfinite(boot)]
    if not len(boot):
        return found
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(boot, [tail, 100 - tail])
    return Resolved(found.tau, ordered, found.pairs, float(low), float(high))


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


def _interpolated_spread(arm: tuple[float, int], left: tuple[float, int], right: tuple[float, int],
                        t: np.ndarray | float, level: float) -> tuple[np.ndarray, np.ndarray]:
    """The standard error of arm's mean − ((1 − t)·left's mean + t·right's mean), seeds
    independent between variants, and the t quantile of its Welch–Satterthwaite degrees of
    freedom; vectorised over ``t``. Each variant comes as (its seeds' variance / n, n). A zero
    standard error gives a zero quantile (no spread: the interval is the point)."""
    t = np.asarray(t, float)
    parts = [np.full_like(t, arm[0]), (1 - t) ** 2 * left[0], t ** 2 * right[0]]
    var = sum(parts)
    denom = sum(p ** 2 / (n - 1) for p, (_, n) in zip(parts, (arm, left, right), strict=True))
    with np.errstate(divide="ignore", invalid="ignore"):
        df = np.where(denom > 0, var ** 2 / np.where(denom > 0, denom, 1.0), math.inf)
    q = np.where(var > 0, special.stdtrit(df, 0.5 + level / 2), 0.0)  # scipy.stats.t.ppf, without its overhead
    return np.sqrt(var), q


GRID = 256  # points per width segment where the multiplier's confidence set is searched, then refined


@dataclass(frozen=True)
class _Band:
    """What ``iso_cost``'s intervals read the width curve with: the arm's mean top-1, the curve
    (log cost ``x``, mean top-1 ``y``, sorted by cost), each variant's (variance of its mean,
    seeds) — the arm's, then the width points' in the curve's order — and the level."""

    arm_mean: float
    x: np.ndarray
    y: np.ndarray
    arm: tuple[float, int]
    width: list[tuple[float, int]]
    level: float


def _gain_half(band: _Band, arm_cost: float) -> float:
    """The half-width of the gain's interval at ``arm_cost``: q·se of arm − ((1 − t)·ȳ_L + t·ȳ_R),
    the two width points around the arm's cost with the interpolation weight t (in log cost)."""
    x = band.x
    c = math.log(arm_cost)
    j = int(np.clip(np.searchsorted(x, c), 1, len(x) - 1))
    t = (c - x[j - 1]) / (x[j] - x[j - 1]) if x[j] > x[j - 1] else 0.0
    se, q = _interpolated_spread(band.arm, band.width[j - 1], band.width[j], t, band.level)
    return float(q * se)


def _along(u: np.ndarray | float | list[float], band: _Band) -> tuple[np.ndarray, np.ndarray]:
    """arm − curve(u), and q·se there; u in [0, K − 1] runs along the curve of K points,
    segment k = floor(u) (the last segment at its end), weight u − k."""
    last = len(band.x) - 1
    y = band.y
    u = np.atleast_1d(np.asarray(u, float))
    k = np.clip(np.floor(u).astype(int), 0, last - 1)
    t = u - k
    gap, spread = band.arm_mean - ((1 - t) * y[k] + t * y[k + 1]), np.empty_like(u)
    for seg in np.unique(k):
        m = k == seg
        se, q = _interpolated_spread(band.arm, band.width[seg], band.width[seg + 1], t[m], band.level)
        spread[m] = q * se
    return gap, spread


def _excess(u: np.ndarray | float, band: _Band) -> np.ndarray:
    """|arm − curve(u)| − q·se: ≤ 0 where the curve cannot be told from the arm."""
    gap, spread = _along(u, band)
    return np.abs(gap) - spread


def _excess_at(v: float, band: _Band) -> float:
    """``_excess`` at one point, as a float (the function ``_edge``'s root-finding solves)."""
    return float(_excess(v, band)[0])


def _cost_at(u: float, x: np.ndarray, base: float) -> float:
    """The cost (× ``base``, the narrowest) at u along the curve of log costs ``x``."""
    last = len(x) - 1
    k = min(int(math.floor(u)), last - 1)
    return math.exp(x[k] + (u - k) * (x[k + 1] - x[k])) / base


def _edge(i: int, j: int, u: np.ndarray, h: np.ndarray, band: _Band) -> float:
    """The boundary between u[i] (outside the confidence set) and u[j] (inside), ``h`` the
    excess on the grid ``u``: the point itself for a crossing with no spread at all, else the
    root of the excess between them."""
    if h[j] > 0:
        return float(u[j])
    return float(optimize.brentq(_excess_at, u[i], u[j], args=(band,), xtol=1e-13))


def _multiplier_interval(band: _Band, base: float, multiplier: float) -> tuple[float, float]:
    """The multiplier's interval (× ``base``): the span of the costs whose t-interval of
    arm − curve(c) contains 0, searched on a grid of ``GRID`` points per segment with the
    curve's crossings of the arm added, and refined by root-finding; ×1 joins it when the arm
    is not significantly above the narrowest point, inf when not significantly below the
    widest. An empty set gives ``multiplier`` itself at both ends."""
    x, y, arm_mean, last = band.x, band.y, band.arm_mean, len(band.x) - 1
    u = np.linspace(0.0, last, GRID * last + 1)
    crossings = [k + (arm_mean - y[k]) / (y[k + 1] - y[k]) for k in range(last)
                 if y[k + 1] != y[k] and min(y[k], y[k + 1]) <= arm_mean <= max(y[k], y[k + 1])]
    u = np.unique(np.concatenate([u, crossings]))
    h = _excess(u, band)
    inside = np.flatnonzero((h <= 0) | np.isin(u, crossings))  # a crossing is plausible, rounding aside
    lows, highs = [], []
    (gap0, gap1), (spread0, spread1) = _along([0.0, float(last)], band)
    if gap0 <= spread0:  # the arm is not significantly above the narrowest point: ×1 (none needed) is plausible
        lows.append(1.0)
        highs.append(1.0)
    if gap1 >= -spread1:  # not significantly below the widest: widening may never reach it
        lows.append(math.inf)
        highs.append(math.inf)
    if len(inside):
        i, j = inside[0], inside[-1]
        low = u[i] if i == 0 else _edge(i - 1, i, u, h, band)  # the set's ends, refined unless at the curve's
        high = u[j] if j == len(u) - 1 else _edge(j + 1, j, u, h, band)
        lows.append(_cost_at(low, x, base))
        highs.append(_cost_at(high, x, base))
    return (min(lows), max(highs)) if lows else (multiplier,) * 2


def iso_cost(arm: Sequence[float], arm_cost: float, width: Sequence[tuple[float, Sequence[float]]],
             level: float = LEVEL) -> IsoCost:
    """``arm``: the re-attention arm's top-1 over seeds, at ``arm_cost``; ``width``: (cost,
    top-1 over seeds) of each width point, narrowest (the baseline) included.

    The intervals are Welch t-intervals, not a bootstrap: with 3 seeds a percentile bootstrap
    over each variant's seeds is far too narrow (a resample of 3 seeds spreads about
    sqrt(2/3) as much as the mean does, and the normal tails stand in for t's with 2 degrees of
    freedom: 78.6 % coverage for a nominal 95 % in the simulation of tests/test_stats.py).

    - the gain: the curve's top-1 at the arm's cost is (1 − t)·ȳ_L + t·ȳ_R, the means of the
      two width points around it with the interpolation weight t (in log cost), so

          gain ± q·se,  se² = s_A²/n_A + (1 − t)²·s_L²/n_L + t²·s_R²/n_R,

      q the t quantile at Welch–Satterthwaite's degrees of freedom
      df = se⁴ / Σ (c_i²·s_i²/n_i)² / (n_i − 1), c_i the three weights (1, 1 − t, t).
      Seeds are treated as independent between variants: when the variants share seeds
      (same data order) and their results correlate positively, this is conservative.
    - the multiplier (the cost widening needs to match the arm), by inverting that test:
      the costs c whose t-interval of arm − curve(c) contains 0 — the costs at which the
      width curve cannot be told from the arm — found on a grid in log cost and refined by
      root-finding; ×1 joins them when the arm is not significantly above the narrowest
      point, and "beyond the widest" (inf) when it is not significantly below the widest.
      The interval is the span of that set (Fieller's interval for an inverse reading).

    No interval when any variant has a single seed."""
    costs = [c for c, _ in width]
    base = min(costs)
    means = [float(np.mean(s)) for _, s in width]
    arm_mean = float(np.mean(arm))
    at = top1_at(arm_cost, costs, means)
    out = dict(cost_ratio=arm_cost / base, widest_ratio=max(costs) / base, width_top1=at,
               gain=None if at is None else arm_mean - at, multiplier=cost_to_reach(arm_mean, costs, means) / base)
    points = [np.asarray(s, float) for s in (arm, *(s for _, s in width))]
    if min(len(s) for s in points) < 2 or len(set(costs)) < 2:
        return IsoCost(**out)

    x, y = _curve(costs, means)
    order = np.argsort(costs, kind="stable")
    spreads = [(s.var(ddof=1) / len(s), len(s)) for s in points]  # each variant's (variance of its mean, seeds)
    band = _Band(arm_mean, x, y, spreads[0], [spreads[1 + i] for i in order], level)  # width points sorted by cost
    if at is not None:  # the gain's interval
        half = _gain_half(band, arm_cost)
        out["gain_low"], out["gain_high"] = out["gain"] - half, out["gain"] + half
    out["mult_low"], out["mult_high"] = _multiplier_interval(band, base, out["multiplier"])
    return IsoCost(**out)
