"""Tables from trial records: labels, per-variant summaries, the comparison of arms with the
baseline, the Pareto front, and the cell formats every report uses. Pure pandas and numpy:
one row per trial (variant × seed) in the record vocabulary (timm's names) in, DataFrames
and strings out. Accuracy comes from "complete" trials only; cost means use every trial
that has them.
"""
from __future__ import annotations

import math
from typing import Any, Mapping

import numpy as np
import pandas as pd

from bench.config import COLLAPSE_SUMMARY
from bench.console import fmt
from bench.errors import did_you_mean
from bench.spec import BASELINE
from bench.variant import FIELD_TYPES

VARIANT_FIELDS: list[str] = list(FIELD_TYPES)
IDENTITY_COLS = ["trial", "key", "status", "seed", "error"]
COST_COLS = ["param_count", "infer_gmacs", "infer_macts", "train_gmacs", "infer_samples_per_sec",
             "infer_step_time", "infer_batch_size", "train_samples_per_sec", "train_step_time",
             "train_batch_size"]
COLLAPSE_COLS = list(COLLAPSE_SUMMARY)
ACCURACY_COLS = ["top1", "top1_per_epoch", "train_loss", "epochs", "train_time_s"]
ENV_COLS = ["device", "device_name", "dtype", "torch_version", "timm_version", "bench_version"]
MINUS = "−"  # every signed figure in report.md uses this sign, never ASCII '-'
_FIELD_ORDER = ["depth", "attention", "embed_dim"]  # the paper's axes first: tables, labels, sort order
_FIELD_ORDER += [f for f in VARIANT_FIELDS if f not in _FIELD_ORDER]


# --- labels ---------------------------------------------------------------------------

def varying_fields(df: pd.DataFrame) -> list[str]:
    """Variant fields that take more than one value in ``df`` (None counts as a value)."""
    return [f for f in _FIELD_ORDER if f in df and df[f].nunique(dropna=False) > 1]


def is_missing(value: Any) -> bool:
    return value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value))


def show_value(field: str, value: Any) -> str:
    if is_missing(value):
        return "all" if field == "re_blocks" else "–"  # re_blocks None: every block
    return fmt(value)


def variant_label(row: Mapping[str, Any], varying: list[str]) -> str:
    """``"depth=4 attention=re"``: the fields that tell this variant apart in its sweep."""
    return " ".join(f"{f}={show_value(f, row.get(f))}" for f in varying if f in row) or "all"


# --- tables ---------------------------------------------------------------------------

def _work(df: pd.DataFrame) -> pd.DataFrame:
    """Variant fields plus the numbers to aggregate; accuracy only from complete trials."""
    status = df["status"].astype(str) if "status" in df else pd.Series("complete", index=df.index)
    nan = pd.Series(np.nan, index=df.index)
    top1 = pd.to_numeric(df["top1"], errors="coerce") if "top1" in df else nan
    cols = {"_top1": top1.where((status == "complete") & np.isfinite(top1)),
            "_diverged": status == "diverged", "_failed": status == "failed"}
    cols.update({c: pd.to_numeric(df[c], errors="coerce") if c in df else nan for c in COST_COLS + COLLAPSE_COLS})
    return df[[f for f in VARIANT_FIELDS if f in df]].assign(**cols)


def _aggregate(work: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    named = {"trials": ("_top1", "size"), "n": ("_top1", "count"), "top1_mean": ("_top1", "mean"),
             "top1_std": ("_top1", "std"),  # ddof=1; NaN for n < 2
             "top1_min": ("_top1", "min"), "top1_max": ("_top1", "max"),
             "diverged": ("_diverged", "sum"), "failed": ("_failed", "sum"),
             **{c: (c, "mean") for c in COST_COLS + COLLAPSE_COLS}}
    return work.groupby(keys, dropna=False, sort=True, observed=True).agg(**named).reset_index()


def summarize(df: pd.DataFrame) -> pd.DataFrame:
    """One row per variant: top-1 mean/std/min/max over seeds, mean costs, failure counts."""
    keys = [f for f in _FIELD_ORDER if f in df]
    if not keys:
        raise ValueError("no variant fields in the trial records: expected some of " + ", ".join(VARIANT_FIELDS))
    out = _aggregate(_work(df), keys)
    varying = varying_fields(df)
    labels = [variant_label(r, varying) for r in out[keys].to_dict("records")]
    return out.assign(variant=labels)[["variant", *out.columns]]


def _match(df: pd.DataFrame, where: Mapping[str, Any]) -> np.ndarray:
    mask = np.ones(len(df), dtype=bool)
    for field, value in where.items():
        col = df[field]
        if is_missing(value):
            mask &= col.isna().to_numpy(dtype=bool)
        else:
            mask &= col.eq(value).fillna(False).to_numpy(dtype=bool)
    return mask


def comparison(df: pd.DataFrame, compare: Mapping[str, Any]) -> pd.DataFrame:
    """Baseline then each arm, per group of ``compare["by"]``, with deltas against the baseline.

    Deltas: ``d_top1`` in percentage points, ``d_*_pct`` in percent of the baseline,
    ``d_top1_per_gmac`` in points per added GMAC (NaN where the arm adds none). An arm
    row with no baseline in its group keeps its own figures and NaN deltas.
    """
    by = list(compare.get("by") or [])
    arms = {BASELINE: dict(compare["baseline"]), **dict(compare.get("arms") or {})}
    if BASELINE in (compare.get("arms") or {}):
        raise ValueError(f"compare: an arm may not be called {BASELINE!r}")
    named = [*by, *(f for where in arms.values() for f in where)]
    missing = sorted({f for f in named if f not in df})
    if missing:
        hints = "".join(did_you_mean(f, df.columns) for f in missing)
        raise ValueError(f"compare names {', '.join(missing)}, not a column of the trial records{hints}")
    keys = by or ["_all"]
    work = _work(df).assign(**{f: df[f] for f in by if f not in VARIANT_FIELDS}, _all=0)
    parts = [work[m].assign(arm=arm) for arm, where in arms.items() if (m := _match(df, where)).any()]
    cols = [*by, "arm", "n", "top1_mean", "top1_std", "d_top1", "infer_gmacs", "d_gmacs_pct",
            "param_count", "d_params_pct", "train_samples_per_sec", "d_train_sps_pct",
            "d_top1_per_gmac", "trials", "diverged", "failed"]
    if not parts:
        return pd.DataFrame(columns=cols)
    stats = _aggregate(pd.concat(parts, ignore_index=True), [*keys, "arm"])
    base_cols = ["top1_mean", "infer_gmacs", "param_count", "train_samples_per_sec"]
    base = stats[stats["arm"] == BASELINE].set_index(keys)[base_cols].add_prefix("base_")
    out = stats.merge(base, left_on=keys, right_index=True, how="left")  # NaN keys match NaN keys
    added = out["infer_gmacs"] - out["base_infer_gmacs"]
    out["d_top1"] = out["top1_mean"] - out["base_top1_mean"]
    out["d_gmacs_pct"] = added / out["base_infer_gmacs"] * 100
    out["d_params_pct"] = (out["param_count"] / out["base_param_count"] - 1) * 100
    out["d_train_sps_pct"] = (out["train_samples_per_sec"] / out["base_train_samples_per_sec"] - 1) * 100
    out["d_top1_per_gmac"] = (out["d_top1"] / added).where(added > 0)
    out["arm"] = pd.Categorical(out["arm"], categories=list(arms), ordered=True)
    out = out.sort_values([*keys, "arm"], kind="stable").reset_index(drop=True)
    out["arm"] = out["arm"].astype(str)
    return out[cols]


def pareto_front(gmacs: Any, top1: Any) -> np.ndarray:
    """Mask of points no other point dominates (≤ GMACs and ≥ top-1, one strictly).

    Equal points do not dominate each other, so ties are all on the front; NaN points
    are never on it. O(n log n): sort by cost, compare with the best top-1 at lower cost.
    """
    g, t = np.asarray(gmacs, dtype=float), np.asarray(top1, dtype=float)
    mask = np.zeros(g.shape, dtype=bool)
    ok = np.flatnonzero(np.isfinite(g) & np.isfinite(t))
    if not ok.size:
        return mask
    order = ok[np.lexsort((-t[ok], g[ok]))]  # cost ascending, top-1 descending within a cost
    gs, ts = g[order], t[order]
    start = np.searchsorted(gs, gs, side="left")  # first index of each point's equal-cost run
    best = np.maximum.accumulate(ts)
    cheaper_best = np.where(start > 0, best[np.maximum(start - 1, 0)], -np.inf)
    mask[order] = (ts > cheaper_best) & (ts == ts[start])
    return mask



# --- cells ----------------------------------------------------------------------------

def num(value: Any) -> str:
    if is_missing(value) or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    return fmt(value)


def signed(value: Any, digits: int | None = 1, unit: str = "") -> str:
    """``+1.2``, ``−0.4 %``; ``digits=None`` keeps four significant digits."""
    if is_missing(value) or not math.isfinite(value):
        return "–"
    text = fmt(abs(float(value))) if digits is None else f"{abs(value):,.{digits}f}"
    sign = "" if float(text.replace(",", "")) == 0 else "+" if value > 0 else MINUS
    return f"{sign}{text}{unit}"


def md_table(headers: list[str], rows: list[list[str]], left: int = 0) -> str:
    """A pipe table; the first ``left`` columns left-aligned, the rest right-aligned."""
    def line(cells):
        return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"
    rule = ["---" if i < left else "---:" for i in range(len(headers))]
    return "\n".join([line(headers), line(rule), *(line(r) for r in rows)])


def has_accuracy(df: pd.DataFrame) -> bool:
    return bool(_work(df)["_top1"].notna().any()) if "top1" in df else False
