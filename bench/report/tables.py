"""Tables from trial records: labels, per-variant summaries, the comparison of arms with the
baseline, width against re-attention at equal cost, rankings and the Pareto front. Pure pandas
and numpy: one row per trial (variant × seed) in the record vocabulary (timm's names, bench.records)
in, DataFrames out; the cells they become are bench.report.formats'. Accuracy comes from complete
trials only; cost means use every trial that has them.
"""
from __future__ import annotations

import math
import warnings
from typing import Any, Mapping

import numpy as np
import pandas as pd
from scipy.stats import kendalltau

from bench.costs import train_tflops, trained_pmacs
from bench.errors import did_you_mean
from bench.records import COLLAPSE_COLS, COST_COLS, PER_EXAMPLE, TEST_LIST, Status, unpack_bits
from bench.spec import BASELINE, variant_of
from bench.stats import LEVEL, Delta, delta, holm, iso_cost, mean_interval
from bench.variant import FIELD_TYPES, LABEL_ORDER, is_missing, variant_label, varying_fields

VARIANT_FIELDS: list[str] = list(FIELD_TYPES)
# --- tables ---------------------------------------------------------------------------

def work(df: pd.DataFrame) -> pd.DataFrame:
    """Variant fields plus the numbers to aggregate (private ``_`` columns: top-1, seed, status
    counts, each image's result and its test list, a trial's train PMACs and seconds, its
    variant's key); accuracy only from complete trials.
    Measured speed comes from the side-by-side pass (``side_*`` columns) where there is one."""
    status = df["status"].astype(str) if "status" in df else pd.Series(Status.COMPLETE.value, index=df.index)
    nan = pd.Series(np.nan, index=df.index)
    num = lambda c: pd.to_numeric(df[c], errors="coerce") if c in df else nan  # noqa: E731
    top1 = num("top1")
    cols = {"_top1": top1.where((status == Status.COMPLETE.value) & np.isfinite(top1)),
            "_diverged": status == Status.DIVERGED.value, "_failed": status == Status.FAILED.value,
            "_seed": df["seed"] if "seed" in df else pd.Series(0, index=df.index)}
    cols.update({c: num(c) for c in COST_COLS + COLLAPSE_COLS})
    for mode in ("infer", "train"):
        side = num(f"side_{mode}_samples_per_sec")
        cols[f"{mode}_samples_per_sec"] = side.where(side.notna(), cols[f"{mode}_samples_per_sec"])
    # utilisation from the speed compared (side by side where timed so) against the record's measured peak
    cols["train_tflops"] = train_tflops(cols["train_gmacs"], cols["train_samples_per_sec"])
    cols["train_mfu"] = cols["train_tflops"] / num("peak_tflops")
    cols["_side"] = num("side_train_samples_per_sec").notna()
    cols["train_spread"] = num("side_train_spread")  # p90/p10 over rounds
    none = pd.Series([None] * len(df), index=df.index, dtype=object)
    cols["_correct"] = df[PER_EXAMPLE].where(cols["_top1"].notna(), None) if PER_EXAMPLE in df else none
    cols["_test_list"] = df[TEST_LIST] if TEST_LIST in df else none
    cols["_pmacs"] = train_pmacs(df)
    cols["_seconds"] = num("time_trial_s")
    cols["_variant"] = df["key"].map(variant_of) if "key" in df else pd.Series(range(len(df)), index=df.index)
    return df[[f for f in VARIANT_FIELDS if f in df]].assign(**cols)


def train_pmacs(df: pd.DataFrame) -> pd.Series:
    """Each trial's train PMACs (bench.costs.trained_pmacs: its train MACs per image × the images
    it trained); NaN where the record does not say."""
    num = lambda c: pd.to_numeric(df[c], errors="coerce") if c in df else pd.Series(np.nan, index=df.index)  # noqa: E731
    configs = df["config"] if "config" in df else pd.Series([None] * len(df), index=df.index)
    batch = pd.Series([((c or {}).get("train") or {}).get("batch_size") if isinstance(c, dict) else None
                       for c in configs], index=df.index, dtype=float)
    return trained_pmacs(num("train_gmacs"), num("steps"), batch)


def _aggregate(work: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    named = {"trials": ("_top1", "size"), "n": ("_top1", "count"), "top1_mean": ("_top1", "mean"),
             "top1_std": ("_top1", "std"),  # ddof=1; NaN for n < 2
             "top1_min": ("_top1", "min"), "top1_max": ("_top1", "max"),
             Status.DIVERGED.value: ("_diverged", "sum"), Status.FAILED.value: ("_failed", "sum"),  # counts
             "side_by_side": ("_side", "all"), "train_spread": ("train_spread", "max"),
             "trial_pmacs": ("_pmacs", "mean"), "trial_seconds": ("_seconds", "mean"), "variants": ("_variant", "nunique"),
             **{c: (c, "mean") for c in COST_COLS + COLLAPSE_COLS}}
    return work.groupby(keys, dropna=False, sort=True, observed=True).agg(**named).reset_index()


def by_seed(rows: pd.DataFrame) -> dict[int, float]:
    """{seed: top-1} of complete trials (several variants matching one arm: their mean)."""
    ok = rows[rows["_top1"].notna()]
    return ok.groupby("_seed")["_top1"].mean().to_dict() if len(ok) else {}


def examples_by_seed(rows: pd.DataFrame) -> tuple[dict[int, np.ndarray], str | None]:
    """({seed: each test image's result}, the test list) of complete trials that kept them
    (several variants matching one arm: their mean per image); ({}, None) when any complete
    trial lacks them, or two were scored on different test lists."""
    ok = rows[rows["_top1"].notna()]
    lists = set(ok["_test_list"])
    if not len(ok) or len(lists) != 1 or None in lists or ok["_correct"].isna().any():
        return {}, None
    out: dict[int, list[np.ndarray]] = {}
    for seed, text in zip(ok["_seed"], ok["_correct"], strict=True):
        bits = unpack_bits(text)
        if bits is None:
            return {}, None
        out.setdefault(seed, []).append(bits.astype(float))
    if len({len(b) for v in out.values() for b in v}) != 1:
        return {}, None
    return {s: np.mean(v, axis=0) for s, v in out.items()}, lists.pop()


def summarize(df: pd.DataFrame) -> pd.DataFrame:
    """One row per variant: top-1 mean/std/min/max over seeds, mean costs, failure counts."""
    keys = [f for f in LABEL_ORDER if f in df]
    if not keys:
        raise ValueError("no variant fields in the trial records: expected some of " + ", ".join(VARIANT_FIELDS))
    out = _aggregate(work(df), keys)
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


def _arms(compare: Mapping[str, Any], df: pd.DataFrame) -> dict[str, dict[str, Any]]:
    by = list(compare.get("by") or [])
    arms = {BASELINE: dict(compare["baseline"]), **dict(compare.get("arms") or {})}
    if BASELINE in (compare.get("arms") or {}):
        raise ValueError(f"compare: an arm may not be called {BASELINE!r}")
    named = [*by, *(f for where in arms.values() for f in where)]
    missing = sorted({f for f in named if f not in df})
    if missing:
        hints = "".join(did_you_mean(f, df.columns) for f in missing)
        raise ValueError(f"compare names {', '.join(missing)}, not a column of the trial records{hints}")
    return arms


def _arm_rows(df: pd.DataFrame, compare: Mapping[str, Any]) -> tuple[pd.DataFrame, list[str], list[str]]:
    """Every trial matched to its arm(s): (rows with ``arm``, group keys, arm names in order)."""
    arms = _arms(compare, df)
    by = list(compare.get("by") or [])
    rows_ = work(df).assign(**{f: df[f] for f in by if f not in VARIANT_FIELDS}, _all=0)
    parts = [rows_[m].assign(arm=arm) for arm, where in arms.items() if (m := _match(df, where)).any()]
    rows = pd.concat(parts, ignore_index=True) if parts else rows_.iloc[:0].assign(arm="")
    return rows, by or ["_all"], list(arms)


def _groups(rows: pd.DataFrame, keys: list[str]):
    """(group key tuple, its rows) with NaN keys kept (pandas drops them by default)."""
    filled = rows[keys].astype(object).where(rows[keys].notna(), "\0none")
    for key, part in filled.groupby(keys, sort=True):
        yield (key if isinstance(key, tuple) else (key,)), rows.loc[part.index]


def _deltas(rows: pd.DataFrame, keys: list[str], sequential: bool) -> dict[tuple, Delta]:
    """Each arm's delta against the baseline of its group (keyed by (*group, arm)), image by image
    where both kept the same test list; none for the baseline itself or a group without one."""
    deltas: dict[tuple, Delta] = {}
    for group, g in _groups(rows, keys):
        base = g[g["arm"] == BASELINE]
        base_seeds, (base_ex, base_list) = by_seed(base), examples_by_seed(base)
        for arm in g["arm"].unique():
            if arm != BASELINE and base_seeds:
                mine = g[g["arm"] == arm]
                arm_ex, arm_list = examples_by_seed(mine)
                same = arm_ex and base_ex and arm_list == base_list
                deltas[(*group, arm)] = delta(by_seed(mine), base_seeds, examples=(arm_ex, base_ex) if same else None,
                                              sequential=sequential)
    return deltas


def _delta_columns(out: pd.DataFrame, found: list[Delta | None], sequential: bool) -> None:
    """``comparison``'s delta columns, in place, from each row's delta (None: no baseline, or the
    baseline itself: NaN, None or 0); ``p_holm`` adjusted over every arm of the table."""
    nan = float("nan")
    out["d_top1"] = [d.mean if d else nan for d in found]
    out["d_low"] = [d.low if d and d.low is not None else nan for d in found]
    out["d_high"] = [d.high if d and d.high is not None else nan for d in found]
    out["paired"] = [d.paired if d else None for d in found]
    out["pairs"] = [d.n if d else 0 for d in found]
    out["p_improve"] = [d.p_improve if d and d.p_improve is not None else nan for d in found]
    out["p_value"] = [d.p_value if d and d.p_value is not None else nan for d in found]
    adjusted = holm([d.p_value if d else None for d in found])
    out["p_holm"] = [nan if p is None else p for p in adjusted]
    out["significant"] = out["p_holm"] < 0.05
    if sequential:
        out["significant"] = [bool(d and d.excludes_zero) for d in found]
    out["sequential"] = sequential
    out["m"] = [d.m if d else 0 for d in found]
    out["seed_var"] = [d.seed_var if d and d.seed_var is not None else nan for d in found]
    out["test_var"] = [d.test_var if d and d.test_var is not None else nan for d in found]
    out["discordant"] = [d.discordant if d else None for d in found]


def comparison(df: pd.DataFrame, compare: Mapping[str, Any], sequential: bool = False) -> pd.DataFrame:
    """Baseline then each arm, per group of ``compare["by"]``, with deltas against the baseline.

    ``d_top1`` in percentage points with its 95 % interval (``d_low``, ``d_high``: paired by
    seed, or Welch; see bench.stats; image by image too where the trials kept each test image's
    result, the test set's share in its variance: ``m`` images, ``seed_var``, ``test_var``; one
    seed: McNemar's ``discordant`` counts), ``p_improve`` = P(arm > baseline), ``p_holm`` the
    arm's p-value adjusted (Holm) over every arm of the table, ``significant`` when that is
    below 0.05 — or, ``sequential`` (a study grown by --until-decided), when the arm's
    interval (bench.sequential's boundary at its seeds) excludes 0, a guarantee per arm;
    ``d_*_pct`` in percent of the baseline. Speed is the side-by-side pass's
    where there is one (``side_by_side``), with its spread (``train_spread``: p90/p10 over
    rounds). An arm row with no baseline in its group keeps its own figures, NaN deltas.
    """
    rows, keys, order = _arm_rows(df, compare)
    by = list(compare.get("by") or [])
    cols = [*by, "arm", "n", "top1_mean", "top1_std", "d_top1", "d_low", "d_high", "paired", "pairs",
            "p_improve", "p_value", "p_holm", "significant", "infer_gmacs", "d_gmacs_pct", "param_count",
            "d_params_pct", "train_samples_per_sec", "d_train_sps_pct", "train_tflops", "train_mfu", "side_by_side",
            "train_spread", "trials", Status.DIVERGED.value, Status.FAILED.value, "sequential", "m", "seed_var",
            "test_var", "discordant", "trial_pmacs", "trial_seconds", "variants"]
    if rows.empty:
        return pd.DataFrame(columns=cols)
    stats = _aggregate(rows, [*keys, "arm"])
    base_cols = ["top1_mean", "infer_gmacs", "param_count", "train_samples_per_sec"]
    base = stats[stats["arm"] == BASELINE].set_index(keys)[base_cols].add_prefix("base_")
    out = stats.merge(base, left_on=keys, right_index=True, how="left")  # NaN keys match NaN keys
    out["d_gmacs_pct"] = (out["infer_gmacs"] / out["base_infer_gmacs"] - 1) * 100
    out["d_params_pct"] = (out["param_count"] / out["base_param_count"] - 1) * 100
    out["d_train_sps_pct"] = (out["train_samples_per_sec"] / out["base_train_samples_per_sec"] - 1) * 100
    deltas = _deltas(rows, keys, sequential)
    filled = out[keys].astype(object).where(out[keys].notna(), "\0none")
    found = [deltas.get((*k, a)) for k, a in zip(filled.itertuples(index=False, name=None), out["arm"], strict=True)]
    _delta_columns(out, found, sequential)
    out["arm"] = pd.Categorical(out["arm"], categories=order, ordered=True)
    out = out.sort_values([*keys, "arm"], kind="stable").reset_index(drop=True)
    out["arm"] = out["arm"].astype(str)
    return out[cols]


# --- width against re-attention, at equal cost ------------------------------------------------

WIDTH_FIELDS = ("embed_dim", "num_heads", "mlp_ratio")  # hidden-dimension expansion changes only these
COST_AXES = {"infer_gmacs": "GMACs", "param_count": "params", "train_time": "train time per sample"}


def width_and_re_arms(compare: Mapping[str, Any]) -> tuple[list[str], list[str]]:
    """(width arms, re-attention arms) of a comparison: a width arm differs from the baseline
    only in WIDTH_FIELDS; a re-attention arm sets attention: re."""
    base = dict(compare["baseline"])
    width, re = [], []
    for arm, where in (compare.get("arms") or {}).items():
        changed = {k for k, v in where.items() if base.get(k, v) != v or k not in base}
        if where.get("attention", base.get("attention")) == "re" and base.get("attention", "self") != "re":
            re.append(arm)
        elif changed and changed <= set(WIDTH_FIELDS):
            width.append(arm)
    return width, re


def arm_points(df: pd.DataFrame, compare: Mapping[str, Any]) -> pd.DataFrame:
    """Per group, each width point (baseline included) and re-attention arm: GMACs, mean top-1
    and its 95 % t-interval over seeds (``low``/``high``: NaN for one seed) — what the
    width-against-re-attention plot draws."""
    width, re_arms = width_and_re_arms(compare)
    by = list(compare.get("by") or [])
    rows, keys, _ = _arm_rows(df, compare)
    out = []
    for group, g in _groups(rows, keys):
        for arm in (BASELINE, *width, *re_arms):
            seeds = list(by_seed(g[g["arm"] == arm]).values())
            if not seeds:
                continue
            ci = mean_interval(seeds) or (math.nan, math.nan)
            out.append({**dict(zip(by, group, strict=False)), "arm": arm, "kind": "re" if arm in re_arms else "width",
                        "infer_gmacs": float(g.loc[g["arm"] == arm, "infer_gmacs"].mean()),
                        "top1_mean": float(np.mean(seeds)), "low": ci[0], "high": ci[1], "n": len(seeds)})
    return pd.DataFrame(out, columns=[*by, "arm", "kind", "infer_gmacs", "top1_mean", "low", "high", "n"])


def iso_costs(df: pd.DataFrame, compare: Mapping[str, Any], level: float = LEVEL) -> pd.DataFrame:
    """Per group and re-attention arm, along each cost of COST_AXES: the width curve's top-1 at
    the arm's cost and the arm's gain over it, and the cost multiplier widening needs to
    match the arm (bench.stats.iso_cost), with Welch t-intervals over seeds at ``level``. Train time
    per sample is 1 / train samples/s (side by side where measured so)."""
    width, re_arms = width_and_re_arms(compare)
    cols = [*(compare.get("by") or []), "arm", "axis", "arm_top1", "d_top1", "points", "cost_ratio", "widest_ratio",
            "width_top1", "gain", "gain_low", "gain_high", "multiplier", "mult_low", "mult_high", "side_by_side"]
    if not width or not re_arms:
        return pd.DataFrame(columns=cols)
    rows, keys, _ = _arm_rows(df, compare)
    rows = rows.assign(train_time=1 / rows["train_samples_per_sec"])
    by = list(compare.get("by") or [])
    out = []
    for group, g in _groups(rows, keys):
        curve = [a for a in (BASELINE, *width) if (g["arm"] == a).any() and by_seed(g[g["arm"] == a])]
        if BASELINE not in curve or len(curve) < 2:
            continue
        for arm in re_arms:
            arm_rows = g[g["arm"] == arm]
            seeds = by_seed(arm_rows)
            if not seeds:
                continue
            for axis in COST_AXES:
                points = [(float(g.loc[g["arm"] == a, axis].mean()), list(by_seed(g[g["arm"] == a]).values()))
                          for a in curve]
                cost = float(arm_rows[axis].mean())
                if not all(np.isfinite(c) and c > 0 for c, _ in points) or not (np.isfinite(cost) and cost > 0):
                    continue
                r = iso_cost(list(seeds.values()), cost, points, level)
                head = dict(zip(by, group, strict=False)) if by else {}
                base_mean = float(np.mean(points[0][1]))
                out.append({**{k: (None if v == "\0none" else v) for k, v in head.items()}, "arm": arm, "axis": axis,
                            "arm_top1": float(np.mean(list(seeds.values()))),
                            "d_top1": float(np.mean(list(seeds.values()))) - base_mean, "points": len(points),
                            **r.__dict__, "side_by_side": bool(arm_rows["_side"].all()) if axis == "train_time"
                            else None})
    return pd.DataFrame(out, columns=cols)


# --- rankings ----------------------------------------------------------------------------------

def variant_means(df: pd.DataFrame) -> pd.DataFrame:
    """Complete trials grouped by variant (its key without the seed): mean top-1 and per-epoch top-1."""
    ok = df[work(df)["_top1"].notna()] if "top1" in df else df.iloc[:0]
    if ok.empty or "key" not in ok:
        return pd.DataFrame(columns=["variant", "top1", "per_epoch"])
    rows = []
    for key, g in ok.groupby(ok["key"].map(variant_of), sort=True):
        curves = [c for c in g.get("top1_per_epoch", pd.Series(dtype=object)) if isinstance(c, list) and c]
        same = curves and len({len(c) for c in curves}) == 1
        rows.append({"variant": key, "top1": float(pd.to_numeric(g["top1"]).mean()),
                     "per_epoch": np.mean(np.array(curves, float), 0).tolist() if same else None})
    return pd.DataFrame(rows)


def ranking_by_epoch(df: pd.DataFrame) -> pd.DataFrame:
    """How early the ranking of variants settles: Kendall's τ-b between the ranking after each
    epoch (mean top-1 over seeds) and after the last, over the variants that ran every epoch.
    Costs no training: it reads each record's ``top1_per_epoch``, the very values each trial
    reported to Optuna as its intermediate values (step = epoch; tests hold the two equal). Both
    live in the storage; the record is read because every report (and runs.csv, ``bench
    fidelity``) is rebuilt from the records alone, and studies made before every trial reported
    hold intermediate values for pruned trials only."""
    means = variant_means(df)
    curves = [c for c in means.get("per_epoch", []) if c is not None]
    if len(curves) < 3 or len({len(c) for c in curves}) != 1:
        return pd.DataFrame(columns=["epoch", "tau", "variants"])
    table = np.array(curves, float)  # (variants, epochs)
    final = table[:, -1]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a constant ranking (all equal at epoch 1): NaN
        taus = [float(kendalltau(table[:, e], final).statistic) for e in range(table.shape[1])]
    return pd.DataFrame({"epoch": range(1, table.shape[1] + 1), "tau": taus, "variants": len(curves)})


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


def has_accuracy(df: pd.DataFrame) -> bool:
    """Whether any trial finished with a top-1 (else the report is about cost alone)."""
    return bool(work(df)["_top1"].notna().any()) if "top1" in df else False
