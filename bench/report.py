"""Reports from the ledger: runs.csv, report.md and plots of accuracy against cost.

The question (DeepViT, Zhou et al. 2021, arXiv 2103.11886): as a ViT gets deeper, does
re-attention buy more top-1 per unit of cost than making it wider? Input is a DataFrame
with one row per trial (variant × seed) in the record vocabulary (timm's names); every
figure here is derived from it alone. Accuracy comes from "complete" trials only; cost
means use every trial that has them. Profile-only sweeps (no ``top1``) get cost reports.
"""
from __future__ import annotations

import json
import math
import os
import uuid
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import pandas as pd

from bench.console import fmt
from bench.errors import BenchError, did_you_mean
from bench.variant import FIELD_TYPES

VARIANT_FIELDS: list[str] = list(FIELD_TYPES)
IDENTITY_COLS = ["trial", "key", "status", "seed", "error"]
COST_COLS = ["param_count", "infer_gmacs", "infer_macts", "train_gmacs", "infer_samples_per_sec",
             "infer_step_time", "infer_batch_size", "train_samples_per_sec", "train_step_time",
             "train_batch_size"]
COLLAPSE_COLS = ["similar_blocks", "adjacent_similarity_mean", "cross_head_similarity_mean"]  # bench.collapse
ACCURACY_COLS = ["top1", "top1_per_epoch", "train_loss", "epochs", "train_time_s"]
ENV_COLS = ["device", "device_name", "dtype", "torch_version", "timm_version", "bench_version"]
BASELINE = "baseline"
MINUS = "−"  # every signed figure in report.md uses this sign, never ASCII '-'
_FIELD_ORDER = ["depth", "attention", "embed_dim"]  # the paper's axes first: tables, labels, sort order
_FIELD_ORDER += [f for f in VARIANT_FIELDS if f not in _FIELD_ORDER]
_MAX_LISTED = 50  # failed/diverged trials named in report.md; runs.csv has them all


# --- labels ---------------------------------------------------------------------------

def varying_fields(df: pd.DataFrame) -> list[str]:
    """Variant fields that take more than one value in ``df`` (None counts as a value)."""
    return [f for f in _FIELD_ORDER if f in df and df[f].nunique(dropna=False) > 1]


def _missing(value: Any) -> bool:
    return value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value))


def _value(field: str, value: Any) -> str:
    if _missing(value):
        return "all" if field == "re_blocks" else "–"  # re_blocks None: every block
    return fmt(value)


def variant_label(row: Mapping[str, Any], varying: list[str]) -> str:
    """``"depth=4 attention=re"``: the fields that tell this variant apart in its sweep."""
    return " ".join(f"{f}={_value(f, row.get(f))}" for f in varying if f in row) or "all"


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
        if _missing(value):
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


# --- report.md ------------------------------------------------------------------------

def _num(value: Any) -> str:
    if _missing(value) or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    return fmt(value)


def _signed(value: Any, digits: int | None = 1, unit: str = "") -> str:
    """``+1.2``, ``−0.4 %``; ``digits=None`` keeps four significant digits."""
    if _missing(value) or not math.isfinite(value):
        return "–"
    text = fmt(abs(float(value))) if digits is None else f"{abs(value):,.{digits}f}"
    sign = "" if float(text.replace(",", "")) == 0 else "+" if value > 0 else MINUS
    return f"{sign}{text}{unit}"


def _top1_cell(row: Mapping[str, Any]) -> str:
    if not row["n"]:
        why = ", ".join(f"{int(row[k])} {k}" for k in ("diverged", "failed") if row.get(k))
        return f"– (n=0{', ' + why if why else ''})"
    std = row["top1_std"]
    spread = f" ± {std:.1f}" if math.isfinite(std) else ""
    return f"{row['top1_mean']:.1f}{spread} (n={int(row['n'])})"


def _md_table(headers: list[str], rows: list[list[str]], left: int = 0) -> str:
    """A pipe table; the first ``left`` columns left-aligned, the rest right-aligned."""
    def line(cells):
        return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"
    rule = ["---" if i < left else "---:" for i in range(len(headers))]
    return "\n".join([line(headers), line(rule), *(line(r) for r in rows)])


def _has_accuracy(df: pd.DataFrame) -> bool:
    return bool(_work(df)["_top1"].notna().any()) if "top1" in df else False


def _settings(section: Any) -> str:
    if not section:
        return "none"
    if not isinstance(section, Mapping):
        return str(section)
    return ", ".join(f"{k}={_settings(v) if isinstance(v, Mapping) else _num(v)}" for k, v in section.items())


def _comparison_md(cmp: pd.DataFrame, compare: Mapping[str, Any], accuracy: bool) -> list[str]:
    base = compare["baseline"]
    arms = ", ".join(f"**{a}**: " + (" ".join(f"{k}={_value(k, v)}" for k, v in w.items() if base.get(k) != v)
                                     or "same as baseline") for a, w in (compare.get("arms") or {}).items())
    lines = ["## Comparison", "",
             f"Baseline: {' '.join(f'{k}={_value(k, v)}' for k, v in base.items())}. Arms: {arms}. "
             f"Per {', '.join(compare.get('by') or ['sweep'])}; Δ = arm − baseline"
             + (", Δtop-1 in percentage points, Δtop-1/GMAC in points per added GMAC." if accuracy else "."), ""]
    by = list(compare.get("by") or [])
    if cmp.empty:
        return lines + ["No trial matches the baseline or any arm.", ""]
    speed = cmp["train_samples_per_sec"].notna().any()
    headers = [*by, "arm"] + (["top-1 %", "Δtop-1"] if accuracy else []) + ["GMACs", "ΔGMACs", "M params",
                                                                            "Δparams"]
    headers += ["train samples/s", "Δtrain samples/s"] if speed else []
    headers += ["Δtop-1/GMAC"] if accuracy else []
    rows = []
    for r in cmp.to_dict("records"):
        d = _signed if r["arm"] != BASELINE else (lambda v, **kw: "")  # the baseline has no deltas
        cells = [_value(f, r[f]) for f in by] + [r["arm"]]
        cells += [_top1_cell(r), d(r["d_top1"])] if accuracy else []
        cells += [_num(r["infer_gmacs"]), d(r["d_gmacs_pct"], unit=" %"),
                  _num(r["param_count"]), d(r["d_params_pct"], unit=" %")]
        cells += [_num(r["train_samples_per_sec"]), d(r["d_train_sps_pct"], unit=" %")] if speed else []
        cells += [d(r["d_top1_per_gmac"], digits=None)] if accuracy else []
        rows.append(cells)
    return lines + [_md_table(headers, rows, left=len(by) + 1), ""]


def _spread_md(summary: pd.DataFrame) -> list[str]:
    std = summary.loc[summary["n"] >= 2, "top1_std"].dropna()
    if std.empty:
        return ["## Seed-to-seed spread", "", "No variant has two finished seeds, so there is no estimate "
                "of seed noise: read every Δtop-1 as unconfirmed.", ""]
    worst = summary.loc[std.idxmax(), "variant"]
    return ["## Seed-to-seed spread", "",
            f"Across {len(std)} variants with at least two finished seeds, the top-1 standard deviation "
            f"has median {std.median():.2f} and max {std.max():.2f} points ({worst}). "
            f"A Δtop-1 smaller than about {2 * std.median():.1f} points (2× the median std) is within "
            "seed noise.", ""]


def _summary_md(summary: pd.DataFrame, df: pd.DataFrame, accuracy: bool, limit: int = 500) -> list[str]:
    varying = varying_fields(df) or ["variant"]
    cols = {"param_count": "M params", "infer_gmacs": "GMACs", "infer_samples_per_sec": "infer samples/s",
            "train_samples_per_sec": "train samples/s", "similar_blocks": "similar blocks",
            "adjacent_similarity_mean": "adjacent sim.", "cross_head_similarity_mean": "cross-head sim."}
    cols = {c: h for c, h in cols.items() if summary[c].notna().any()}
    counts = [c for c in ("diverged", "failed") if summary[c].any()]
    headers = varying + (["top-1 %", "min–max"] if accuracy else []) + list(cols.values()) + counts
    rows = []
    for r in summary.head(limit).to_dict("records"):
        cells = [_value(f, r[f]) for f in varying]
        if accuracy:
            cells += [_top1_cell(r), f"{r['top1_min']:.1f}–{r['top1_max']:.1f}" if r["n"] else "–"]
        rows.append(cells + [_num(r[c]) for c in cols] + [str(int(r[c])) for c in counts])
    more = ["", f"… and {len(summary) - limit} more variants (runs.csv has every trial)."] \
        if len(summary) > limit else []
    return ["## Variants", "", _md_table(headers, rows, left=len(varying)), *more, ""]


def _trials_md(df: pd.DataFrame, status: str, title: str) -> list[str]:
    if "status" not in df:
        return []
    bad = df[df["status"] == status]
    if bad.empty:
        return []
    varying = varying_fields(df)
    lines = [f"## {title} ({len(bad)})", ""]
    for r in bad.head(_MAX_LISTED).to_dict("records"):
        err = r.get("error")
        err = err.strip().splitlines()[0][:200].replace("`", "'") if isinstance(err, str) and err.strip() else ""
        head = " · ".join(x for x in (f"trial {r['trial']}" if "trial" in r else "",
                                      variant_label(r, varying), f"seed {r['seed']}" if "seed" in r else "") if x)
        lines.append(f"- {head}" + (f": `{err}`" if err else ""))
    if len(bad) > _MAX_LISTED:
        lines.append(f"- … and {len(bad) - _MAX_LISTED} more (runs.csv)")
    return lines + [""]


def markdown(df: pd.DataFrame, spec: Mapping[str, Any], info: Mapping[str, Any],
             extra: list[str] | None = None) -> str:
    """report.md: the run, ``extra`` (a study's section), the comparison, the noise level, every
    variant, what went wrong, plots."""
    accuracy = _has_accuracy(df)
    summary = summarize(df)
    env = []
    for col, prefix in (("device_name", ""), ("dtype", ""), ("torch_version", "torch "),
                        ("timm_version", "timm "), ("bench_version", "bench ")):
        if col in df and df[col].notna().any():
            env.append(prefix + ", ".join(map(str, df[col].dropna().unique())))
    counts = df["status"].value_counts() if "status" in df else pd.Series({"complete": len(df)})
    trials = f"{len(df)} trials (" + ", ".join(f"{v} {k}" for k, v in counts.items()) + ")"
    seeds = f" × {df['seed'].nunique()} seeds" if "seed" in df else ""
    lines = [f"# {spec.get('name', 'sweep')}: {'accuracy against cost' if accuracy else 'cost'}", "",
             *([" · ".join(f"{k}: {v}" for k, v in info.items()), ""] if info else []),
             f"**Run:** {trials}: {len(summary)} variants{seeds} · {' · '.join(env)}  ",
             f"**Data:** {_settings(spec.get('data'))}  ",
             f"**Train:** {_settings(spec.get('train')) if spec.get('train') else 'none (profile only)'}", ""]
    lines += extra or []
    if spec.get("compare"):
        lines += _comparison_md(comparison(df, spec["compare"]), spec["compare"], accuracy)
    if accuracy:
        lines += _spread_md(summary)
    lines += _summary_md(summary, df, accuracy)
    lines += _trials_md(df, "failed", "Failed trials") + _trials_md(df, "diverged", "Diverged trials")
    lines += _trials_md(df, "pruned", "Pruned trials")
    from bench.plots import plot_names  # plots use this module's summaries
    names = plot_names(df)
    if names:
        lines += ["## Plots", ""] + [f"![{n.removesuffix('.png')}]({n})\n" for n in names]
    return "\n".join(lines)


# --- files ----------------------------------------------------------------------------

def atomic_write(path: Path, write: Callable[[Any], Any], binary: bool = False) -> None:
    """Write through a temp file in the same folder, then rename: never a half-written file."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")  # not mkstemp: keep umask perms
    try:
        with open(tmp, "xb" if binary else "x", **({} if binary else {"encoding": "utf-8", "newline": ""})) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def runs_frame(df: pd.DataFrame) -> pd.DataFrame:
    """runs.csv's rows: one per trial, ordered by trial; lists and dicts as JSON strings."""
    extra_cost = [c for c in df if c.startswith(("infer_", "train_")) and c not in COST_COLS + ACCURACY_COLS]
    order = [*IDENTITY_COLS, *VARIANT_FIELDS, *COST_COLS, *extra_cost, *ACCURACY_COLS, *ENV_COLS]
    cols = [c for c in order if c in df] + [c for c in df if c not in order]
    out = df[cols].sort_values("trial", kind="stable") if "trial" in df else df[cols]
    nested = (list, tuple, dict, np.ndarray)
    for c in out.columns[out.dtypes.map(pd.api.types.is_object_dtype)]:
        if out[c].map(lambda v: isinstance(v, nested)).any():
            out[c] = out[c].map(lambda v: json.dumps(v.tolist() if isinstance(v, np.ndarray) else v)
                                if isinstance(v, nested) else v)
    return out


def write_report(df: pd.DataFrame, spec: Mapping[str, Any], out_dir: Path,
                 info: Mapping[str, Any], study: Any = None) -> dict[str, Path]:
    """runs.csv, report.md and the plots in ``out_dir``; paths by file name. ``study``: the
    Optuna study of a search (its Pareto front, best trials and importances go in too)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"runs.csv": out_dir / "runs.csv", "report.md": out_dir / "report.md"}
    details = [c for c in ("collapse", "init_collapse") if c in df]  # per-block arrays: in the study, not here
    atomic_write(paths["runs.csv"], lambda f: runs_frame(df.drop(columns=details)).to_csv(f, index=False))
    extra: list[str] = []
    if spec.get("search"):
        from bench.search import study_section
        extra, study_plots = study_section(study, df, spec, out_dir)
        paths.update({p.name: p for p in study_plots})
    text = markdown(df, spec, info, extra)
    atomic_write(paths["report.md"], lambda f: f.write(text))
    from bench.plots import plots
    paths.update({p.name: p for p in plots(df, out_dir)})
    return paths


# --- from the ledger ------------------------------------------------------------------

def report_ledger(ledger: Any, name: str, url: str, results_dir: str | Path) -> dict[str, Path]:
    """Write the report of the study behind ``ledger`` (a bench.storage.Ledger) to results_dir/name."""
    from datetime import datetime, timezone

    rows = ledger.records()
    if not rows:
        raise BenchError(f"study {name!r} in {url} has no finished trials yet")
    df = pd.DataFrame(rows)
    for col in ("top1", "train_loss"):  # stored as text when not finite (JSON has no NaN)
        if col in df:
            df[col] = pd.to_numeric(df[col], errors="coerce")
    # per-block details live beside the records: load the heatmaps' only (records from before
    # that change still carry theirs inside)
    from bench.plots import deepest_trials
    have = df["collapse"].map(lambda c: isinstance(c, dict)) if "collapse" in df else pd.Series(False, df.index)
    numbers = [int(n) for _, rows in deepest_trials(df) for n in rows["trial"]
               if not have[df.index[df["trial"] == n]].any()]
    if numbers:
        loaded = df["trial"].map(ledger.details(numbers))
        df["collapse"] = loaded.where(~have, df["collapse"]) if "collapse" in df else loaded
    from bench.storage import safe_url
    info = {"generated": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "storage": safe_url(url)}
    return write_report(df, ledger.spec or {"name": name}, Path(results_dir) / name, info, study=ledger.study)


def report_study(name: str, *, storage: str | None = None, results_dir: str | Path = "results") -> dict[str, Path]:
    """``bench report NAME``: rebuild runs.csv, report.md and the plots from the study alone."""
    from bench.storage import Ledger, default_url, open_study

    url = storage or default_url(results_dir, name)
    return report_ledger(Ledger(open_study(url, name, create=False)), name, url, results_dir)
