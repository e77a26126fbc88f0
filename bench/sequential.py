"""Deciding as seeds are added: a group-sequential t-test whose boundary stays valid however
often one looks, and however late one stops.

A comparison grown seed by seed (``--until-decided``) is looked at after every seed. A plain
t-interval checked at each look decides too often when there is no effect — 17 % of the time
over looks at 3…10 seeds instead of 5 % (``tests/test_sequential.py``). Here the look at n
seeds (n ≥ 3) uses its own boundary c_n on |t| = |mean| / se, fixed in advance for every n,
so that under no effect P(|t_n| > c_n at some look n) ≤ α:

- α is *spent* over the looks (Lan & DeMets 1983): by n seeds, ``spent(n)`` of it —
  ``SHARE`` of α along a quadratic in the seeds past 2 up to ``HORIZON`` seeds (little at the
  first looks, whose t has one or two degrees of freedom and almost no power: the
  O'Brien–Fleming idea), the rest spread over any later seeds. The schedule does not depend
  on where a study stops: stopping at any look, at ``--max-seeds`` K, or a later run raising K,
  all keep the guarantee (the boundary of a look is the same whatever came before it).
- c_n is calibrated so that the first crossing at look n has probability exactly
  α·(spent(n) − spent(n−1)) under no effect, for Gaussian paired differences. The sequence of
  t-statistics is then pivotal (free of the unknown spread), so one table serves every study:
  ``BOUNDARY``, computed once by ``calibrate`` (4 million simulated studies) and checked
  against a fresh simulation by the tests. Past ``len(BOUNDARY) + 2`` seeds each look gets
  its increment on its own (Bonferroni): valid, and a little conservative.
- The interval reported at n seeds is the repeated confidence interval mean ± c_n·se
  (Jennison & Turnbull 1989): it covers the true difference at every look at once with
  probability ≥ 1 − α, so the one shown where a study stopped is valid whatever made it stop.
- With per-example results the standard error holds the test set's share too (a component
  shared by every seed, which more seeds do not shrink: ``bench.stats.two_way``); the t
  sequence is then no longer pivotal, but only less likely to cross (the shared part makes
  looks alike): the error rate stays at or below α (simulated in the tests).

An arm out of reach — not even the far end of its 80 % interval would be decided by the last
seed with 80 % power (``out_of_reach``, from 4 seeds) — gets no more seeds: racing's
elimination. It decides nothing, so the error rate can only fall.

The guarantee is per arm: across the arms of one table, as many wrong decisions as arms times
α are possible (the fixed design's report uses Holm's correction; a sequential one says so).
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np

LEVEL = 0.95
ALPHA = 1 - LEVEL
FIRST = 3        # the first look: fewer seeds decide nothing (one degree of freedom, or none)
HORIZON = 10     # seeds by which SHARE of α is spent: the default --max-seeds
SHARE = 0.95     # of α, spent by HORIZON seeds; the rest over any later seeds (halving every TAIL)
TAIL = 5         # seeds
# c_n for n = FIRST, FIRST + 1, …: calibrate(20_000_000, seed=0) at α = 0.05 (tests recompute it)
BOUNDARY = (
    36.556, 9.687, 5.769, 4.350, 3.625, 3.177, 2.863, 2.627, 2.988, 3.240,
    3.413, 3.528, 3.613, 3.678, 3.734, 3.769, 3.805, 3.827, 3.860, 3.892,
    3.915, 3.935, 3.965, 3.988, 4.015, 4.039, 4.059, 4.085, 4.119, 4.127,
    4.156, 4.187, 4.192, 4.229, 4.260, 4.301, 4.335, 4.341,
)


def spent(n: int) -> float:
    """The share of α spent by the look at ``n`` seeds (0 before FIRST, → 1 as n grows)."""
    if n < FIRST:
        return 0.0
    if n <= HORIZON:
        return SHARE * ((n - FIRST + 1) / (HORIZON - FIRST + 1)) ** 2
    return SHARE + (1 - SHARE) * (1 - 0.5 ** ((n - HORIZON) / TAIL))


def boundary(n: int) -> float:
    """c_n: the bound |t| must pass at the look at ``n`` seeds (inf below FIRST)."""
    if n < FIRST:
        return math.inf
    if n - FIRST < len(BOUNDARY):
        return BOUNDARY[n - FIRST]
    from scipy import special  # on use: the CLI starts without scipy

    increment = ALPHA * (spent(n) - spent(n - 1))  # on its own: a union bound over the looks
    return float(special.stdtrit(n - 1, 1 - increment / 2))


def calibrate(sims: int, seed: int = 0, looks: int = len(BOUNDARY), alpha: float = ALPHA,
              chunk: int = 1 << 20) -> list[float]:
    """c_n for n = FIRST … FIRST + looks − 1 by simulating ``sims`` studies of standard normal
    paired differences: at each look, the threshold that the surviving studies' |t| passes in
    exactly α·(spent(n) − spent(n − 1)) of all studies. Memory: a few floats per study."""
    rng = np.random.default_rng(seed)
    last = FIRST + looks - 1
    total = np.zeros(sims)
    squares = np.zeros(sims)
    alive = np.ones(sims, bool)
    out = []
    for n in range(1, last + 1):
        for a in range(0, sims, chunk):
            x = rng.standard_normal(min(chunk, sims - a))
            total[a:a + len(x)] += x
            squares[a:a + len(x)] += x * x
        if n < FIRST:
            continue
        mean = total / n
        var = np.maximum(squares - n * mean * mean, 0.0) / (n - 1)
        with np.errstate(divide="ignore", invalid="ignore"):
            t = np.abs(mean) / np.sqrt(var / n)
        survivors = t[alive]
        k = int(round(alpha * (spent(n) - spent(n - 1)) * sims))  # crossings this look may have
        if k <= 0:
            c = float(survivors.max()) if len(survivors) else math.inf
        elif k >= len(survivors):
            c = 0.0
        else:
            c = float(np.partition(survivors, len(survivors) - k - 1)[len(survivors) - k - 1])
        out.append(c)
        alive &= ~(t > c)
    return out


def crossed(t: float, n: int) -> bool:
    """Whether a look at ``n`` seeds with statistic ``t`` decides (|t| past its boundary)."""
    return abs(t) > boundary(n)


def seeds_needed(effect: float, seed_var: float, test_var: float, n: int, cap: int,
                 sequential: bool, power: float = 0.8) -> int | None:
    """The seeds at which a comparison with true difference ``effect`` (points), per-seed
    variance ``seed_var`` of the paired difference and the test set's variance ``test_var`` of
    its mean (shared by every seed: no number of seeds removes it) would be decided with
    probability ``power``: the least n' ≥ ``n`` up to ``cap``, else None ("beyond cap").
    Approximates the statistic as noncentral t with n' − 1 degrees of freedom against the
    sequential boundary (``sequential``) or the fixed-n t quantile."""
    from scipy import special  # on use: the CLI starts without scipy

    if not (math.isfinite(effect) and effect != 0 and seed_var >= 0 and test_var >= 0):
        return None
    for k in range(max(n, FIRST if sequential else 2), cap + 1):
        se = math.sqrt(seed_var / k + test_var)
        if se == 0:
            return k
        ncp = abs(effect) / se
        q = boundary(k) if sequential else float(special.stdtrit(k - 1, 0.5 + LEVEL / 2))
        reach = special.nctdtr(k - 1, ncp, q)  # P(t < q)
        low = special.nctdtr(k - 1, ncp, -q)   # P(t < −q)
        if 1 - reach + low >= power:
            return k
    return None


FUTILE_FROM = 4   # the first look at which an arm can be dropped as out of reach
OPTIMISM = 0.8    # the two-sided level of the interval whose far end a dropped arm could not reach either


def out_of_reach(effect: float, seed_var: float, test_var: float, n: int, cap: int) -> bool:
    """Whether an undecided arm should get no more seeds (racing's elimination, F-Race's idea):
    even an effect at the far end of its 80 % interval (|Δ| + t·se) would not be decided with
    80 % power by ``cap`` seeds. From FUTILE_FROM seeds on. Dropping never decides anything, so
    it can only lower the error rate; it costs a little power (tests/test_sequential.py)."""
    from scipy import special

    if n < FUTILE_FROM or n >= cap or not (math.isfinite(effect) and seed_var >= 0):
        return False
    se = math.sqrt(seed_var / n + test_var)
    optimistic = abs(effect) + float(special.stdtrit(n - 1, 0.5 + OPTIMISM / 2)) * se
    return seeds_needed(optimistic, seed_var, test_var, n, cap, sequential=True) is None


def repeated_interval(mean: float, se: float, n: int) -> tuple[float, float] | None:
    """The repeated confidence interval at the look at ``n`` seeds: mean ± c_n·se; None below
    FIRST seeds or without spread."""
    c = boundary(n)
    if not (math.isfinite(c) and se > 0):
        return None
    return mean - c * se, mean + c * se


def naive_crossings(t_by_look: Sequence[float], first: int = FIRST) -> bool:
    """What a plain t-interval rechecked after every seed would decide (for the tests and the
    docs: the method this module replaces)."""
    from scipy import special

    return any(abs(t) > float(special.stdtrit(n - 1, 0.5 + LEVEL / 2))
               for n, t in enumerate(t_by_look, start=first))
