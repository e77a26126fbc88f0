"""report.md and runs.csv from a study's records (one DataFrame row per trial), and the plots
they link.

The question (DeepViT, Zhou et al. 2021, arXiv 2103.11886): as a ViT gets deeper, does
re-attention buy more top-1 per unit of cost than making it wider? The tables
(bench.report.tables), cells (bench.report.formats) and plots (bench.report.plots) are derived
from the records alone. Profile-only sweeps (no ``top1``) get cost reports; studies (a
``search``) get their Pareto front, best trials and the importances bench.study computed.
No torch, no storage: bench.study.stored_reports reads the ledger and hands the records over.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import pandas as pd

from bench.config import NOISY, OBJECTIVES, StudyConfig
from bench.costs import MFU_SAID
from bench.errors import first_line
from bench.own_files import atomic_write
from bench.report import plots
from bench.report.decide import needed_cell, projections, spread, spread_sentence, totals
from bench.report.formats import (interval, md_table, multiplier, num, ratio, settings, signed, space,
                                  top1_cell)
from bench.report.tables import (COST_AXES, VARIANT_FIELDS, comparison, has_accuracy, iso_costs, pareto_front,
                                 ranking_by_epoch, summarize, width_and_re_arms)
from bench.records import ACCURACY_COLS, COST_COLS, DETAILS, ENV_COLS, IDENTITY_COLS, PER_EXAMPLE, Status
from bench.sequential import HORIZON, out_of_reach
from bench.spec import BASELINE, variant_of
from bench.variant import is_missing, show_value, variant_label, varying_fields, is_re_option

_MAX_LISTED = 50  # failed/diverged trials named in report.md; runs.csv has them all
# searched fields' importance for each objective ({objective: {field: share}}), or why there are none
Importances = Mapping[str, Mapping[str, float]] | str


# --- report.md ------------------------------------------------------------------------

def _comparison_md(cmp: pd.DataFrame, compare: Mapping[str, Any], accuracy: bool,
                   side: Mapping[str, Any] | None) -> list[str]:
    base = compare["baseline"]
    arms = ", ".join(f"**{a}**: " + (" ".join(f"{k}={show_value(k, v)}" for k, v in w.items() if base.get(k) != v)
                                     or "same as baseline") for a, w in (compare.get("arms") or {}).items())
    lines = ["## Comparison", "",
             f"Baseline: {' '.join(f'{k}={show_value(k, v)}' for k, v in base.items())}. Arms: {arms}. "
             f"Per {', '.join(compare.get('by') or ['sweep'])}; Δ = arm − baseline"
             + (", Δtop-1 in percentage points." if accuracy else "."), ""]
    by = list(compare.get("by") or [])
    if cmp.empty:
        return lines + ["No trial matches the baseline or any arm.", ""]
    speed = cmp["train_samples_per_sec"].notna().any()
    headers = [*by, "arm"] + (["top-1 %", "Δtop-1 [95 % CI]", "P(arm > base)"] if accuracy else [])
    headers += ["GMACs", "ΔGMACs", "M params", "Δparams"]
    headers += ["train samples/s", "Δtrain samples/s"] if speed else []
    mfu = speed and cmp["train_mfu"].notna().any()
    headers += ["train TFLOP/s (MFU)"] if mfu else []
    rows = []
    for r in cmp.to_dict("records"):
        d = signed if r["arm"] != BASELINE else (lambda v, **kw: "")  # the baseline has no deltas
        cells = [show_value(f, r[f]) for f in by] + [r["arm"]]
        if accuracy:
            mark = " ✓" if r["significant"] else ""
            ci = interval(r["d_low"], r["d_high"]) or (_no_interval(r) if r["arm"] != BASELINE
                                                           and not is_missing(r["d_top1"]) else "")
            improve = "" if r["arm"] == BASELINE else "—" if is_missing(r["p_improve"]) else f"{r['p_improve']:.2f}"
            cells += [top1_cell(r), d(r["d_top1"]) + ci + mark if r["arm"] != BASELINE else "", improve]
        cells += [num(r["infer_gmacs"]), d(r["d_gmacs_pct"], unit=" %"),
                  num(r["param_count"]), d(r["d_params_pct"], unit=" %")]
        if speed:
            noisy = " ⚠" if not is_missing(r["train_spread"]) and r["train_spread"] > NOISY else ""
            cells += [num(r["train_samples_per_sec"]) + noisy, d(r["d_train_sps_pct"], unit=" %")]
        if mfu:
            cells += ["–" if is_missing(r["train_mfu"]) else f"{num(r['train_tflops'])} ({r['train_mfu']:.0%})"]
        rows.append(cells)
    lines += [md_table(headers, rows, left=len(by) + 1), ""]
    notes = []
    if accuracy:
        notes.append(_delta_note(cmp))
    if speed:
        if side is not None and cmp["side_by_side"].all():
            how = "compiled with torch.compile" if side.get("compiled") else "eager (not compiled)"
            notes.append(f"Train samples/s: timed side by side — every variant of the study in {side['rounds']} "
                         f"interleaved rounds on {side['device_name']} ({side['dtype']}, batch {side['batch_size']}, "
                         f"{how}), the median over rounds; ⚠: p90/p10 over rounds above {NOISY} (noisy).")
        else:
            notes.append("Train samples/s: timed inside each trial, minutes apart from its comparison, so drift "
                         "on a shared machine can masquerade as a difference; `bench time NAME` times every "
                         "variant side by side.")
    if mfu:
        notes.append(MFU_SAID)
    return lines + [" ".join(notes), ""] if notes else lines


def _no_interval(r: Mapping[str, Any]) -> str:
    """The Δ cell's tail when there is no interval: why, and McNemar's counts for one seed."""
    d = r.get("discordant")
    if isinstance(d, (tuple, list)) and len(d) == 2:
        return f" (—; one seed: {d[0]} images only the arm got right, {d[1]} only the baseline)"
    return " (—)"


def _delta_note(cmp: pd.DataFrame) -> str:
    """How the Δtop-1 column was computed: paired or Welch, by image or by seed, fixed or sequential."""
    arms = cmp[cmp["arm"] != BASELINE]
    tested = arms[arms["d_low"].notna()]
    paired = tested["paired"].astype(bool) if len(tested) else pd.Series([True])
    how = ("paired by seed (a seed fixes the data order and augmentation for every arm)" if paired.all()
           else "Welch's unequal-variance t (the arms share fewer than two seeds)" if not paired.any()
           else "paired by seed where the arms share two or more seeds, Welch's t otherwise")
    by_image = arms["m"].fillna(0).astype(int)
    if len(arms) and (by_image > 0).all():
        how += (f" and by test image (the {int(by_image.max()):,} images every trial was scored on, one by one: the "
                "interval holds the test set's share of the noise, which more seeds do not remove)")
    elif (by_image > 0).any():
        how += "; by test image too where every trial kept each image's result"
    text = (f"Δtop-1: mean over seeds with its 95 % interval, {how}; (—): no interval, so nothing decided (a "
            "single seed on a side, or no spread at all: no evidence of the noise). ")
    if len(cmp) and bool(cmp["sequential"].any()):
        text += ("This study grew seed by seed (`--until-decided`): each interval is the sequential one "
                 "(bench.sequential: a group-sequential t-boundary with α spent over the looks, valid wherever "
                 "the study stopped); ✓: it excludes 0. The guarantee is per arm: across the "
                 f"{len(tested)} arm(s) of this table no correction is made.")
    else:
        text += (f"✓: the difference holds after Holm's correction over the {len(tested)} arm(s) tested in this "
                 "table (adjusted p < 0.05).")
    return text + (" P(arm > base): the chance that a seed of the arm beats a seed of the baseline, over all seed "
                   "pairs, ties counting one half (rliable's probability of improvement).")


def arm_states(cmp: pd.DataFrame, by: list[str], cap: int) -> list[str]:
    """``depth=4 re-attention: decided after 3 seeds`` for each arm of a study grown seed by seed."""
    out = []
    for r in cmp[(cmp["arm"] != BASELINE) & cmp["d_top1"].notna()].to_dict("records"):
        name = " ".join([*(f"{f}={show_value(f, r[f])}" for f in by), r["arm"]])
        n = int(r["pairs"] or 0)
        reach = not is_missing(r["seed_var"]) and out_of_reach(r["d_top1"], r["seed_var"],
                                                               0.0 if is_missing(r["test_var"]) else r["test_var"], n, cap)
        state = (f"decided after {n} seeds" if r["significant"] else f"undecided at {n} seeds" if n >= cap
                 else f"undecided, dropped at {n} seeds: out of reach by {cap}" if reach
                 else f"undecided at {n} of at most {cap} seeds (rerun with --until-decided to go on)")
        out.append(f"{name}: {state}")
    return out


def _grown_md(cmp: pd.DataFrame, by: list[str], cap: int) -> list[str]:
    states = arm_states(cmp, by, cap)
    return [f"**Grown seed by seed (`--until-decided`, at most {cap} seeds):** " + "; ".join(states) + ".", ""] \
        if states else []


def _decide_md(cmp: pd.DataFrame, by: list[str], cap: int, sequential: bool) -> list[str]:
    """What deciding each undecided arm would cost (bench.report.decide)."""
    found = projections(cmp, by, cap)
    if found.empty:
        return []
    rows = [[show_value(f, p[f]) for f in by] + [p["arm"], signed(p["d_top1"]), str(p["seeds"]), needed_cell(p)]
            for p in found.to_dict("records")]
    t = totals(found, by)
    share = " (the test set's share alone may be too large: see the spread below)" if (found["test_var"] > 0).any() \
        else ""
    return ["## What would decide the undecided arms", "",
            md_table([*by, "arm", "Δtop-1", "seeds", "seeds that decide it (80 % power): what they cost"], rows,
                     left=len(by) + 1), "",
            f"At each arm's observed Δ and spread, the seeds at which `--until-decided` would decide it 4 times in 5 "
            f"(its sequential boundary); \"beyond {cap}\": the effect is smaller than {cap} seeds can resolve{share}. "
            "Cost: one trial per seed for the arm's variants and its baseline's, priced at this study's own trials "
            f"(train PMACs, measured minutes). {_deciding_said(t, cap, sequential)}", ""]


def _deciding_said(t: Mapping[str, Any], cap: int, sequential: bool) -> str:
    """What deciding the decidable arms would cost, and what cannot be decided within ``cap`` seeds."""
    beyond = f"{t['beyond']} arm(s) beyond {cap} seeds" if t["beyond"] else ""
    if not t["decidable"]:
        return f"No undecided arm is decidable within {cap} seeds ({beyond})." if beyond else ""
    said = (f"Deciding the {t['decidable']} decidable arm(s): {t['trials']:.0f} trials, {t['pmacs']:.3g} train "
            f"PMACs, {t['minutes']:.0f} min" + (f"; {beyond}." if beyond else "."))
    return said + ("" if sequential else " Grow the study: `bench run SWEEP --until-decided`.")


def _iso_md(iso: pd.DataFrame, compare: Mapping[str, Any]) -> list[str]:
    """Width against re-attention at equal cost: one sentence per group, then the table."""
    by = list(compare.get("by") or [])
    width, _ = width_and_re_arms(compare)
    lines = ["## Width or re-attention, at equal cost", ""]
    for _, g in iso.groupby(by, dropna=False, sort=False) if by else [((), iso)]:
        first = g[g["axis"] == "infer_gmacs"]
        where = " ".join(f"{f} {show_value(f, first.iloc[0][f])}" for f in by) if by and len(first) else "this sweep"
        for r in first.to_dict("records"):
            gain = signed(r["d_top1"])
            if r["multiplier"] <= 1 + 1e-9:
                lines.append(f"At {where}, {r['arm']}'s {gain} points need no widening to match: the baseline "
                             "already reaches them.")
            elif math.isinf(r["multiplier"]):
                ci = "" if is_missing(r["mult_low"]) or math.isinf(r["mult_low"]) else (
                    f" (95 % CI ×{r['mult_low']:.3g}–beyond the widest arm)")
                lines.append(f"At {where}, {r['arm']}'s {gain} points would cost more than ×{r['widest_ratio']:.3g} "
                             f"GMACs by widening: beyond the widest arm, which does not reach them{ci}.")
            else:
                ci = "" if is_missing(r["mult_low"]) else (
                    f" (95 % CI ×{r['mult_low']:.3g}–" + ("beyond the widest arm" if math.isinf(r["mult_high"])
                                                          else f"×{r['mult_high']:.3g}") + ")")
                lines.append(f"At {where}, {r['arm']}'s {gain} points would cost ×{r['multiplier']:.3g} GMACs by "
                             f"widening{ci}, for ×{r['cost_ratio']:.3g} GMACs with re-attention.")
            lines.append("")
    headers = [*by, "arm", "cost", "arm's cost", "width curve's top-1 there", "arm's gain [95 % CI]",
               "widening to match [95 % CI]"]
    rows = []
    for r in iso.to_dict("records"):
        at = "– (outside the width curve)" if is_missing(r["width_top1"]) else f"{r['width_top1']:.1f}"
        axis = COST_AXES[r["axis"]] + (" (side by side)" if r["side_by_side"] else " (per trial)"
                                       if r["axis"] == "train_time" else "")
        gain = "–" if is_missing(r["gain"]) else signed(r["gain"]) + interval(r["gain_low"], r["gain_high"])
        rows.append([show_value(f, r[f]) for f in by] + [r["arm"], axis, ratio(r["cost_ratio"]), at, gain,
                                                          multiplier(r)])
    lines += [md_table(headers, rows, left=len(by) + 2), "",
              f"The width curve: the baseline and the arms that differ from it only in hidden dimension "
              f"({', '.join(width)}), top-1 against cost, linear in log cost between points and never "
              "extrapolated. Costs are multiples of the baseline's. Intervals (95 %) over each variant's seeds: "
              "the gain's a Welch t-interval (the arm's seed variance and the two neighbouring width points', "
              "weighted as the interpolation weights them; Welch–Satterthwaite degrees of freedom); the widening's, "
              "the costs at which that interval of the arm against the curve contains 0.", ""]
    return lines


def _spread_md(summary: pd.DataFrame, split: pd.DataFrame) -> list[str]:
    std = summary.loc[summary["n"] >= 2, "top1_std"].dropna()
    if std.empty:
        return ["## Seed-to-seed spread", "", "No variant has two finished seeds, so there is no estimate "
                "of seed noise: read every Δtop-1 as unconfirmed.", ""]
    worst = summary.loc[std.idxmax(), "variant"]
    lines = ["## Seed-to-seed spread", "",
             f"Across {len(std)} variants with at least two finished seeds, the top-1 standard deviation "
             f"has median {std.median():.2f} and max {std.max():.2f} points ({worst}). "
             f"A Δtop-1 smaller than about {2 * std.median():.1f} points (2× the median std) is within "
             "seed noise.", ""]
    if split.empty:
        return lines + ["The trials kept no per-image results (a study from before they were kept): the test "
                        "set's share of the noise is not known, and the intervals hold the seeds' alone.", ""]
    rows = [[r["variant"], str(r["seeds"]), f"{r['images']:,}", f"{r['se']:.2f}", f"{r['seed_se']:.2f}",
             f"{r['test_se']:.2f}", f"{r['test_share']:.0%}", f"×{r['test_x5']:.2f}", f"×{r['seeds_x4']:.2f}"]
            for r in split.to_dict("records")]
    return lines + ["### The seeds' part and the test set's", "", spread_sentence(split), "",
                    md_table(["variant", "seeds", "test images", "se of top-1", "seeds' part", "test set's part",
                              "test set's share", "interval with 5× the images", "with 4× the seeds"], rows, left=1),
                    "", "Standard errors in points, from each test image's result (seeds × images, a crossed "
                    "two-way model): the seeds' part shrinks with more seeds, the test set's with more images only "
                    "(every seed is scored on the same ones). Their variances add.", ""]


def _settling_md(taus: pd.DataFrame) -> list[str]:
    if taus.empty:
        return []
    shown = ", ".join(f"{t:.2f}" if math.isfinite(t) else "–" for t in taus["tau"])
    settled = taus[taus["tau"] >= 0.9]
    first = int(settled["epoch"].iloc[0]) if len(settled) else None
    return ["## How early the ranking settles", "",
            f"Kendall τ between the ranking of the {int(taus['variants'].iloc[0])} variants (mean top-1 over seeds) "
            f"after each epoch and after the last: {shown}. "
            + (f"From epoch {first} of {len(taus)} on, τ ≥ 0.9." if first else
               "τ stays below 0.9 until the end: the ranking is still moving.")
            + " A ranking that settles late says the proxy's verdicts are about speed of learning; "
            "`bench fidelity NAME --reference REF` compares them with a longer run. "
            "![ranking by epoch](ranking_by_epoch.png)", ""]


def _summary_md(summary: pd.DataFrame, df: pd.DataFrame, accuracy: bool, limit: int = 500) -> list[str]:
    varying = varying_fields(df) or ["variant"]
    cols = {"param_count": "M params", "infer_gmacs": "GMACs", "infer_samples_per_sec": "infer samples/s",
            "train_samples_per_sec": "train samples/s", "similar_blocks": "similar blocks",
            "adjacent_similarity_mean": "adjacent sim.", "cross_head_similarity_mean": "cross-head sim.",
            "cka_adjacent_mean": "token CKA to prev.", "token_uniformity_last": "token uniformity (last)",
            "rank_residual_last": "rank residual (last)"}
    cols = {c: h for c, h in cols.items() if summary[c].notna().any()}
    counts = [c for c in (Status.DIVERGED.value, Status.FAILED.value) if summary[c].any()]
    headers = varying + (["top-1 %", "min–max"] if accuracy else []) + list(cols.values()) + counts
    rows = []
    for r in summary.head(limit).to_dict("records"):
        cells = [show_value(f, r[f]) for f in varying]
        if accuracy:
            cells += [top1_cell(r), f"{r['top1_min']:.1f}–{r['top1_max']:.1f}" if r["n"] else "–"]
        rows.append(cells + [num(r[c]) for c in cols] + [str(int(r[c])) for c in counts])
    more = ["", f"… and {len(summary) - limit} more variants (runs.csv has every trial)."] \
        if len(summary) > limit else []
    return ["## Variants", "", md_table(headers, rows, left=len(varying)), *more, ""]


def _trials_md(df: pd.DataFrame, status: Status) -> list[str]:
    """"## Failed trials (2)" and each one: trial, variant, seed and its error's first line."""
    if "status" not in df:
        return []
    bad = df[df["status"] == status.value]
    if bad.empty:
        return []
    varying = varying_fields(df)
    lines = [f"## {status.value.capitalize()} trials ({len(bad)})", ""]
    for r in bad.head(_MAX_LISTED).to_dict("records"):
        err = r.get("error")
        err = first_line(err)[:200].replace("`", "'") if isinstance(err, str) else ""
        head = " · ".join(x for x in (f"trial {r['trial']}" if "trial" in r else "",
                                      variant_label(r, varying), f"seed {r['seed']}" if "seed" in r else "") if x)
        lines.append(f"- {head}" + (f": `{err}`" if err else ""))
    if len(bad) > _MAX_LISTED:
        lines.append(f"- … and {len(bad) - _MAX_LISTED} more (runs.csv)")
    return lines + [""]


def markdown(df: pd.DataFrame, spec: Mapping[str, Any], info: Mapping[str, Any],
             extra: list[str] | None = None, side: Mapping[str, Any] | None = None) -> str:
    """report.md: the run, ``extra`` (a study's section), the comparison, the noise level, every
    variant, what went wrong, plots."""
    accuracy = has_accuracy(df)
    summary = summarize(df)
    env = []
    for col, prefix in (("device_name", ""), ("dtype", ""), ("torch_version", "torch "),
                        ("timm_version", "timm "), ("bench_version", "bench ")):
        if col in df and df[col].notna().any():
            env.append(prefix + ", ".join(map(str, df[col].dropna().unique())))
    if "attn_kernel" in df and df["attn_kernel"].notna().any():  # bench.attention_kernels: the fastest exact, measured
        by_type = df.dropna(subset=["attn_kernel"]).groupby("attention")["attn_kernel"].unique() \
            if "attention" in df else {}
        env.append("attention kernels " + "; ".join(f"{t}: {', '.join(map(str, k))}" for t, k in dict(by_type).items()))
    if "compiled" in df and df["compiled"].fillna(False).astype(bool).any():
        env.append("torch.compile")
    if "compile_error" in df and df["compile_error"].notna().any():
        env.append(f"{int(df['compile_error'].notna().sum())} trial(s) ran eager: torch.compile failed "
                   f"({first_line(str(df['compile_error'].dropna().iloc[0]))[:160]}; runs.csv's compile_error)")
    counts = df["status"].value_counts() if "status" in df else pd.Series({Status.COMPLETE.value: len(df)})
    trials = f"{len(df)} trials (" + ", ".join(f"{v} {k}" for k, v in counts.items()) + ")"
    seeds = f" × {df['seed'].nunique()} seeds" if "seed" in df else ""
    lines = [f"# {spec.get('name', 'sweep')}: {'accuracy against cost' if accuracy else 'cost'}", "",
             *([" · ".join(f"{k}: {v}" for k, v in info.items()), ""] if info else []),
             f"**Run:** {trials}: {len(summary)} variants{seeds} · {' · '.join(env)}  ",
             f"**Data:** {settings(spec.get('data'))}  ",
             f"**Train:** {settings(spec.get('train')) if spec.get('train') else 'none (profile only)'}", ""]
    lines += extra or []
    compare = spec.get("compare")
    if compare:
        seq = spec.get("sequential")
        cmp = comparison(df, compare, sequential=bool(seq))
        lines += _comparison_md(cmp, compare, accuracy, side)
        if accuracy:
            cap = (seq or {}).get("max_seeds") or HORIZON
            lines += _grown_md(cmp, list(compare.get("by") or []), cap) if seq else []
            lines += _decide_md(cmp, list(compare.get("by") or []), cap, bool(seq))
        iso = iso_costs(df, compare) if accuracy else None
        if iso is not None and not iso.empty:
            lines += _iso_md(iso, compare)
    if accuracy:
        lines += _spread_md(summary, spread(df)) + _settling_md(ranking_by_epoch(df))
    lines += _summary_md(summary, df, accuracy)
    for status in (Status.FAILED, Status.DIVERGED, Status.PRUNED):
        lines += _trials_md(df, status)
    names = plots.plot_names(df, compare)
    if names:
        lines += ["## Plots", ""] + [f"![{n.removesuffix('.png')}]({n})\n" for n in names]
    return "\n".join(lines)


# --- a study's section -----------------------------------------------------------------

def study_objectives(spec: Mapping[str, Any]) -> list[str]:
    """The objectives of the study ``spec`` describes (a spec without them: StudyConfig's default)."""
    return list((spec.get("study") or {}).get("objectives") or StudyConfig().objectives)


def study_section(df: pd.DataFrame, spec: Mapping[str, Any], out_dir: Path,
                  importances: Importances | None = None) -> tuple[list[str], list[Path]]:
    """report.md's study part: objectives and budget, the Pareto front (table and plot) or the
    best trials, and parameter importances. Returns (markdown lines, plot paths)."""
    cfg = spec.get("study") or {}
    objectives = study_objectives(spec)
    cols = [OBJECTIVES[o][0] for o in objectives]
    lines = ["## Study", "",
             "Objectives: " + ", ".join(f"{OBJECTIVES[o][1]} {o} ({OBJECTIVES[o][2]})" for o in objectives)
             + f" · sampler: {cfg.get('sampler')} · pruner: {cfg.get('pruner') or 'none'}"
             + f" · search space: {', '.join(f'{k}: {space(v)}' for k, v in (spec.get('search') or {}).items())}",
             ""]
    ok = df[df["status"] == Status.COMPLETE.value] if "status" in df else df
    ok = ok.dropna(subset=[c for c in cols if c in ok])
    if ok.empty or not all(c in ok for c in cols):
        return lines + ["No complete trial yet.", ""], []
    searched = [k for k in (spec.get("search") or {}) if k in ok]
    show = ["trial", *searched, *cols]
    extra = [c for c in ("infer_gmacs", "param_count", "top1") if c not in show and c in ok]

    def cell(r: Any, c: str) -> str:  # re-attention options do not exist without re-attention
        return "–" if is_re_option(c) and r.get("attention") != "re" else show_value(c, r[c])

    def table(title: str, rows_df: Any) -> list[str]:
        rows = [[str(int(r["trial"])), *[cell(r, c) for c in searched], *[num(r[c]) for c in cols + extra]]
                for _, r in rows_df.iterrows()]
        return [f"### {title}", "", md_table(["trial", *searched, *cols, *extra], rows, left=1 + len(searched)), ""]

    first = ok.sort_values(cols[0], ascending=OBJECTIVES[objectives[0]][1] == "minimize").head(5)
    best = first
    if len(cols) == 2:
        sign = [1 if OBJECTIVES[o][1] == "minimize" else -1 for o in objectives]
        # pareto_front minimises its first argument and maximises its second
        cost_i = 0 if sign[0] == 1 else 1
        front = pareto_front(ok[cols[cost_i]] * sign[cost_i], -ok[cols[1 - cost_i]] * sign[1 - cost_i])
        best = ok[front].sort_values(cols[cost_i])
        lines += table(f"Pareto front ({len(best)} of {len(ok)} complete trials: no other is better in both)", best)
        lines += ["![pareto](pareto.png)", ""]
    lines += table(f"Best trials by {objectives[0]} (top {len(first)} of {len(ok)} complete)", first)
    lines += _importances_md(importances, objectives)
    paths = [plots.pareto_plot(ok, best, cols, objectives, out_dir / "pareto.png")] if len(cols) == 2 else []
    return lines, paths


def _importances_md(importances: Importances | None, objectives: list[str]) -> list[str]:
    """fANOVA importances of the searched fields for each objective (bench.study computes them)."""
    out = ["### Parameter importances", "",
           "How much of each objective's variance over complete trials each searched field explains "
           "(Optuna's fANOVA; re-attention options only where sampled).", ""]
    if importances is None:
        return out + ["Not computed: no study to compute them from.", ""]
    if isinstance(importances, str):
        return out + [importances, ""]
    params = list(dict.fromkeys(p for imp in importances.values() for p in imp))
    if not params:
        return out + ["Not computed: no searched field varies among complete trials.", ""]
    rows = [[p, *[f"{importances[o].get(p, 0.0):.2f}" for o in objectives]] for p in params]
    return out + [md_table(["field", *objectives], rows, left=1), ""]


# --- files ----------------------------------------------------------------------------

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


def with_side_by_side(df: pd.DataFrame, side: Mapping[str, Any] | None) -> pd.DataFrame:
    """``df`` with the side-by-side pass's speed of each row's variant (``side_*`` columns;
    NaN for variants it did not time). The per-trial figures stay as they are."""
    if not side or "key" not in df:
        return df
    figures = side.get("variants", {})
    variant = df["key"].map(variant_of)
    get = lambda k: variant.map(lambda v: figures.get(v, {}).get(k))  # noqa: E731
    out = df.assign(side_train_samples_per_sec=get("train_samples_per_sec"),
                    side_infer_samples_per_sec=get("infer_samples_per_sec"))
    out["side_train_spread"] = pd.to_numeric(get("train_sps_p90"), errors="coerce") / \
        pd.to_numeric(get("train_sps_p10"), errors="coerce")
    return out


def write_report(df: pd.DataFrame, spec: Mapping[str, Any], out_dir: Path, info: Mapping[str, Any], *,
                 importances: Importances | None = None, side: Mapping[str, Any] | None = None) -> dict[str, Path]:
    """runs.csv, report.md and the plots in ``out_dir``; paths by file name. ``info``: the header
    line (when generated, the storage as shown); ``importances``: a search's parameter
    importances (bench.study.stored_reports computes them from the Optuna study); ``side``: the
    side-by-side timing pass (bench.side_by_side), whose speeds the tables compare."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"runs.csv": out_dir / "runs.csv", "report.md": out_dir / "report.md"}
    details = [c for c in (*DETAILS, PER_EXAMPLE) if c in df]  # per-block arrays and per-image bits: in the study
    atomic_write(paths["runs.csv"], lambda f: runs_frame(df.drop(columns=details)).to_csv(f, index=False))
    extra: list[str] = []
    if spec.get("search"):
        extra, study_plots = study_section(df, spec, out_dir, importances)
        paths.update({p.name: p for p in study_plots})
    df = with_side_by_side(df, side)
    # the plots first: report.md links only files that were written (a full disk stops both)
    paths.update({p.name: p for p in plots.plots(df, out_dir, spec.get("compare"))})
    text = markdown(df, spec, info, extra, side)
    atomic_write(paths["report.md"], lambda f: f.write(text))
    return paths
