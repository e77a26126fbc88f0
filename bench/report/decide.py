"""What a decision would cost, and where the noise comes from: for every undecided arm of a
comparison, the seeds that would decide it at its observed effect and spread (80 % power, the
sequential boundary of ``--until-decided``; "beyond K" when the effect is smaller than the
noise can resolve), priced in trials, counted train PMACs and minutes from the study's own
trials; and each variant's spread split into its seeds' part and its test set's part (from the
per-image results), with what more seeds or a larger test set would buy. Pure pandas/numpy on
``bench.report.tables``' frames; report.md, calibration.md, ``bench plan --from`` and the
console read it.
"""
from __future__ import annotations

import math
from typing import Any, Mapping

import numpy as np
import pandas as pd

from bench.report.tables import examples_by_seed, work

from bench.sequential import HORIZON, seeds_needed
from bench.spec import BASELINE
from bench.stats import two_way
from bench.variant import is_missing, variant_label, varying_fields

POWER = 0.8


def undecided(cmp: pd.DataFrame) -> pd.DataFrame:
    """The arms of ``comparison`` whose interval spans 0 (or that have none), baseline rows aside."""
    arms = cmp[(cmp["arm"] != BASELINE) & cmp["d_top1"].notna()]
    return arms[~arms["significant"].astype(bool) & ~((arms["d_low"] > 0) | (arms["d_high"] < 0))]


def projections(cmp: pd.DataFrame, by: list[str], cap: int = HORIZON) -> pd.DataFrame:
    """Per undecided arm: ``seeds`` now, ``needed`` (the least seeds, up to ``cap``, that decide
    it with 80 % power at its observed Δ and spread; NaN: beyond ``cap``), and what the seeds
    still missing cost: ``trials`` (the arm's and its baseline's variants, one trial each per
    seed), ``pmacs`` (their counted train PMACs) and ``minutes`` (their measured trial times),
    each from the study's own trials. Arms with no spread estimate (one seed) need at least 3."""
    rows = []
    base = {tuple(b[f] for f in by): b for b in cmp[cmp["arm"] == BASELINE].to_dict("records")}
    for r in undecided(cmp).to_dict("records"):
        n = int(r["pairs"] or 0)
        seed_var = r["seed_var"] if not is_missing(r["seed_var"]) else math.nan
        test_var = r["test_var"] if not is_missing(r["test_var"]) else 0.0
        need = None
        if math.isfinite(seed_var):
            need = seeds_needed(r["d_top1"], seed_var, test_var, max(n, 3), cap, sequential=True, power=POWER)
        b = base.get(tuple(r[f] for f in by))
        extra = (need - n) if need is not None else math.nan
        per_seed = [a + c for a, c in zip(_per_seed(r), _per_seed(b) if b is not None else (0, 0.0, 0.0), strict=True)]
        rows.append({**{f: r[f] for f in by}, "arm": r["arm"], "d_top1": r["d_top1"], "seeds": n, "needed": need,
                     "cap": cap, "trials": extra * per_seed[0], "pmacs": extra * per_seed[1],
                     "minutes": extra * per_seed[2] / 60, "to_cap_trials": max(cap - n, 0) * per_seed[0],
                     "test_var": test_var, "seed_var": seed_var})
    return pd.DataFrame(rows, columns=[*by, "arm", "d_top1", "seeds", "needed", "cap", "trials", "pmacs", "minutes",
                                       "to_cap_trials", "test_var", "seed_var"])


def _per_seed(r: Mapping[str, Any] | pd.Series) -> tuple[int, float, float]:
    """(trials, train PMACs, seconds) one more seed of a comparison row's variants costs."""
    k = int(r["variants"]) if not is_missing(r["variants"]) else 1
    pm = float(r["trial_pmacs"]) if not is_missing(r["trial_pmacs"]) else math.nan
    sec = float(r["trial_seconds"]) if not is_missing(r["trial_seconds"]) else math.nan
    return k, k * pm, k * sec


def needed_cell(p: Mapping[str, Any]) -> str:
    """``7 (+4 seeds: 8 trials, 0.0031 PMACs, 6.2 min)`` or ``beyond 10``."""
    if is_missing(p["needed"]):
        return f"beyond {p['cap']}"
    extra = int(p["needed"] - p["seeds"])
    cost = [f"{int(p['trials'])} trials"]
    cost += [f"{p['pmacs']:.3g} train PMACs"] if math.isfinite(p["pmacs"]) else []
    cost += [f"{p['minutes']:.1f} min"] if math.isfinite(p["minutes"]) else []
    return f"{int(p['needed'])} (+{extra} seed{'s' * (extra != 1)}: {', '.join(cost)})"


def totals(found: pd.DataFrame, by: list[str]) -> dict[str, float]:
    """What deciding every arm that can be decided costs: per group its baseline's seeds once
    (the most any of its arms needs), each arm's own; and the trials ``--until-decided`` spends
    at most (every undecided arm, and its baseline, to the cap)."""
    ok = found[found["needed"].notna()]
    return {"decidable": len(ok), "beyond": int(found["needed"].isna().sum()),
            "trials": float(ok["trials"].sum()), "pmacs": float(ok["pmacs"].sum()),
            "minutes": float(ok["minutes"].sum())}


# --- where the noise comes from -------------------------------------------------------------------

def spread(df: pd.DataFrame) -> pd.DataFrame:
    """Per variant with two or more complete seeds and each test image's result: the standard
    error of its mean top-1 split into the seeds' part (between-seed variance / n) and the test
    set's (the images' share, which every seed shares: no number of seeds removes it), which
    dominates, and how much a 5× larger test set or 4× the seeds would shrink the interval."""
    rows = []
    w = work(df)
    varying = varying_fields(df)
    for _, g in w.groupby("_variant", sort=False):
        found, _ = examples_by_seed(g)
        if len(found) < 2:
            continue
        t = two_way(np.stack([found[s] for s in sorted(found)]))  # correctness, not a difference: its own spread
        seed_part, test_part = t.seed_var / t.n, t.test_var
        se = math.sqrt(max(seed_part + test_part, 0.0))
        if se == 0:
            continue
        bigger = math.sqrt(seed_part + test_part / 5) / se  # data.test_size × 5
        more = math.sqrt(seed_part / 4 + test_part) / se  # seeds × 4
        rows.append({"variant": variant_label(g.iloc[0], varying) if len(g) else "",
                     "seeds": t.n, "images": t.m, "se": se, "seed_se": math.sqrt(seed_part),
                     "test_se": math.sqrt(test_part), "test_share": test_part / (seed_part + test_part),
                     "test_x5": 1 / bigger, "seeds_x4": 1 / more})
    return pd.DataFrame(rows, columns=["variant", "seeds", "images", "se", "seed_se", "test_se", "test_share",
                                       "test_x5", "seeds_x4"])


def spread_sentence(table: pd.DataFrame) -> str:
    """Which part of the noise dominates over the variants, and what would halve the interval."""
    if table.empty:
        return ""
    worst = table.loc[table["test_share"].idxmax()] if table["test_share"].max() >= 0.5 else \
        table.loc[table["se"].idxmax()]
    part = "test set" if worst["test_share"] >= 0.5 else "seeds"
    images, share = int(worst["images"]), worst["test_share"]
    line = (f"Of {worst['variant']}'s {worst['se']:.2f} points of standard error, {worst['test_se']:.2f} is the "
            f"{images:,}-image test set ({share:.0%} of its variance) and {worst['seed_se']:.2f} its "
            f"{int(worst['seeds'])} seeds: the {part} dominate{'s' * (part == 'test set')}. A test set of "
            f"{5 * images:,} images would shrink its interval ×{worst['test_x5']:.2f}, 4× the seeds ×"
            f"{worst['seeds_x4']:.2f}.")
    mostly = int((table["test_share"] >= 0.5).sum())
    return line + f" The test set dominates for {mostly} of {len(table)} variant(s)."

