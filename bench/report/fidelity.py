"""Proxy fidelity: how a cheap study's ranking and decisions agree with a reference study of the
same variants (a longer budget, more data, another dataset), computed from the two studies'
records and written as fidelity-<reference>.md. bench.study.stored_reports reads both ledgers.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import numpy as np
import pandas as pd

from bench.errors import BenchError
from bench.own_files import atomic_write
from bench.report.formats import interval, md_table, settings, signed, two_places
from bench.report.tables import by_seed, comparison, examples_by_seed, has_accuracy, iso_costs, variant_means, work
from bench.spec import BASELINE, variant_of
from bench.stats import delta, rank_agreement, resolved_tau
from bench.variant import is_missing, show_value

MIN_RANKED = 3  # shared variants τ and ρ need: with two, either is ±1 whatever the studies say
VERDICT_COLS = ("d_top1", "d_low", "d_high", "significant")  # what a study decides per arm, with iso
# a decision of a proxy (a rung) against its reference (decision_state), the dangerous one first
WRONG = "wrong"          # decided at both, opposite signs: it looks like an answer and is the wrong one
FLIPPED = "flipped"      # the reference decides; the proxy's sign is the other, but its interval spans 0
UNSURE = "unsure"        # the reference decides; the proxy's sign agrees (or is 0), but its interval spans 0
KEPT = "kept"            # decided at both, the same sign: the only state that makes a proxy worth running
UNDECIDED = "undecided"  # the reference's own interval spans 0: nothing to keep or flip
STATES = (WRONG, FLIPPED, UNSURE, KEPT, UNDECIDED)
STATE_CELLS = {WRONG: "✗ decided and wrong", FLIPPED: "✗ (undecided here)", UNSURE: "~ (undecided here)", KEPT: "✓",
               UNDECIDED: "undecided"}
STATE_SAID = {WRONG: "decided and wrong", FLIPPED: "flipped but undecided at the proxy",
              UNSURE: "kept in sign but undecided at the proxy", KEPT: "kept and decided",
              UNDECIDED: "undecided at the reference"}


def decided(row: Mapping[str, Any]) -> bool:
    """Whether a verdict row's interval (``d_low``, ``d_high``) excludes 0."""
    low, high = row.get("d_low"), row.get("d_high")
    return not (is_missing(low) or is_missing(high)) and (low > 0 or high < 0)


def verdicts(df: pd.DataFrame, compare: Mapping[str, Any], sequential: bool = False) -> pd.DataFrame:
    """Per group and arm of ``compare`` (the baseline left out), what one study decides: Δtop-1
    with its 95 % interval, and the iso-cost verdict at equal GMACs (``iso``: "re" when
    re-attention is the cheaper route — widening would need more than the arm's own cost to match
    it —, "width" when widening is; None for an arm with no iso-cost reading)."""
    by = list(compare.get("by") or [])
    iso = {}
    found = iso_costs(df, compare)
    for r in found[found["axis"] == "infer_gmacs"].to_dict("records"):
        iso[(*[r[f] for f in by], r["arm"])] = "re" if r["multiplier"] > r["cost_ratio"] else "width"
    rows = []
    for r in comparison(df, compare, sequential).to_dict("records"):
        if r["arm"] == BASELINE or is_missing(r["d_top1"]):
            continue
        rows.append({**{f: r[f] for f in by}, "arm": r["arm"], **{k: r[k] for k in VERDICT_COLS},
                     "iso": iso.get((*[r[f] for f in by], r["arm"]))})
    return pd.DataFrame(rows, columns=[*by, "arm", *VERDICT_COLS, "iso"])


def decision_state(proxy: Mapping[str, Any], reference: Mapping[str, Any]) -> str:
    """How a proxy's decision (its row of ``verdicts``: Δtop-1 and interval) stands against the
    reference's: ``undecided`` when the reference's interval spans 0 (a sign it cannot tell from
    noise is never agreement); else ``kept`` (both decide, one sign), ``wrong`` (both decide,
    opposite signs), ``flipped`` (the proxy cannot decide and leans the other way) or ``unsure``
    (the proxy cannot decide and leans the same way, or its Δ is exactly 0: no sign)."""
    if not decided(reference):
        return UNDECIDED
    same = np.sign(proxy["d_top1"]) == np.sign(reference["d_top1"])
    if decided(proxy):
        return KEPT if same else WRONG
    return FLIPPED if proxy["d_top1"] * reference["d_top1"] < 0 else UNSURE


def orders(df: pd.DataFrame, keys: list[str], sequential: bool = False) -> np.ndarray:
    """The reference's own resolution of each pair of variants (``keys``: variant keys): sign of
    their difference where its interval excludes 0 (paired by seed, by image where kept), else 0."""
    rows = work(df).assign(_key=df["key"].map(variant_of) if "key" in df else "")
    seeds = {k: (by_seed(g), examples_by_seed(g)) for k, g in rows.groupby("_key") if k in keys}
    out = np.zeros((len(keys), len(keys)))
    for i, a in enumerate(keys):
        for j in range(i + 1, len(keys)):
            b = keys[j]
            if a not in seeds or b not in seeds:
                continue
            (sa, (ea, la)), (sb, (eb, lb)) = seeds[a], seeds[b]
            d = delta(sa, sb, examples=(ea, eb) if ea and eb and la == lb else None, sequential=sequential)
            if d.excludes_zero:
                out[i, j], out[j, i] = np.sign(d.mean), -np.sign(d.mean)
    return out


def fidelity(proxy: pd.DataFrame, reference: pd.DataFrame, compare: Mapping[str, Any] | None,
             resamples: int = 1000, sequential: tuple[bool, bool] = (False, False)) -> dict[str, Any]:
    """How a proxy study's answers agree with a reference study of the same variants (a longer
    budget, more data, another dataset): Kendall τ and Spearman ρ between their mean top-1
    over the variants both measured, with bootstrap intervals (``agreement`` None with fewer than
    MIN_RANKED of them); and, per group and arm of ``compare``, whether the decision holds
    (``state``: decision_state, the reference's interval deciding), whether the bare signs of
    Δtop-1 agree (``sign_agrees``), and whether the iso-cost verdicts agree."""
    a, b = variant_means(proxy), variant_means(reference)
    both = a.merge(b, on="variant", suffixes=("_proxy", "_ref"))
    agreement = resolved = None
    if len(both) >= MIN_RANKED:  # else too few shared variants to rank
        agreement = rank_agreement(both["top1_proxy"], both["top1_ref"], resamples=resamples)
        resolved = resolved_tau(both["top1_proxy"], orders(reference, list(both["variant"]), sequential[1]),
                                resamples=resamples)
    decisions = []
    if compare:
        by = list(compare.get("by") or [])
        merged = verdicts(proxy, compare, sequential[0]).merge(verdicts(reference, compare, sequential[1]),
                                                               on=[*by, "arm"], suffixes=("_proxy", "_ref"))
        for r in merged.to_dict("records"):
            iso = tuple(None if is_missing(r[f"iso_{w}"]) else r[f"iso_{w}"] for w in ("proxy", "ref"))
            mine, ref = ({k: r[f"{k}_{w}"] for k in VERDICT_COLS} for w in ("proxy", "ref"))
            decisions.append({**{f: r[f] for f in by}, "arm": r["arm"],
                              **{f"{k}_{w}": r[f"{k}_{w}"] for k in VERDICT_COLS for w in ("proxy", "ref")},
                              "sign_agrees": bool(np.sign(r["d_top1_proxy"]) == np.sign(r["d_top1_ref"])),
                              "state": decision_state(mine, ref),
                              "iso_proxy": iso[0], "iso_ref": iso[1],
                              "iso_agrees": None if None in iso else iso[0] == iso[1]})
    return {"variants": len(both), "only_proxy": len(a) - len(both), "only_reference": len(b) - len(both),
            "agreement": agreement, "resolved": resolved, "decisions": pd.DataFrame(decisions), "pairs": both}


def states_said(d: pd.DataFrame) -> str:
    """``decided and wrong for 1 of 4 arm(s), kept and decided for 2, undecided at the reference for 1``:
    each state that occurs, the dangerous one first."""
    n = {s: int((d["state"] == s).sum()) for s in STATES}
    said = [f"{STATE_SAID[s]} for {n[s]}" for s in STATES if n[s]]
    if not said:
        return f"none of {len(d)} arm(s) compared"
    head, *rest = said
    return f"{head} of {len(d)} arm(s)" + "".join(f", {x}" for x in rest)


def resolved_said(res: Any) -> str:
    """``0.87 [0.60, 1.00] over the 12 of 15 pairs the reference orders`` (or why there is none)."""
    if res is None:
        return "–"
    if not res.ordered:
        return f"– (the reference orders none of the {res.pairs} pairs of variants: its intervals all span 0)"
    return (f"{two_places(res.tau)}{interval(res.low, res.high, two_places)} over the {res.ordered} of {res.pairs} "
            "pairs of variants the reference orders (its interval of their difference excludes 0; a pair it "
            "cannot order is neither agreement nor disagreement)")


def no_ranking(shared: int) -> str:
    """Why a fidelity comparison has no τ: too few variants both studies measured."""
    return f"they need at least {MIN_RANKED} variants both studies measured, {shared} here"


def fidelity_markdown(result: Mapping[str, Any], names: tuple[str, str],
                      specs: tuple[Mapping[str, Any], Mapping[str, Any]]) -> str:
    """fidelity-<reference>.md from ``fidelity``'s result; ``names`` and ``specs``: (proxy, reference)."""
    (proxy, reference), (spec_p, spec_r) = names, specs
    a, res = result["agreement"], result.get("resolved")
    ranks = (f"Kendall τ = {resolved_said(res)}; over every pair {two_places(a.tau)}"
             f"{interval(a.tau_low, a.tau_high, two_places)}, Spearman ρ = {two_places(a.rho)}"
             f"{interval(a.rho_low, a.rho_high, two_places)} (95 % bootstrap intervals over variants)."
             if a is not None else f"no Kendall τ or Spearman ρ: {no_ranking(result['variants'])}.")
    lines = [f"# Fidelity: {proxy} against {reference}", "",
             f"**Proxy:** data {settings(spec_p.get('data'))}; train {settings(spec_p.get('train'))}  ",
             f"**Reference:** data {settings(spec_r.get('data'))}; train {settings(spec_r.get('train'))}", "",
             f"Over the {result['variants']} variant{'s' * (result['variants'] != 1)} both studies measured "
             f"(mean top-1 over seeds): {ranks}"
             + (f" {result['only_proxy']} variant(s) only in the proxy, {result['only_reference']} only in the "
                "reference, left out." if result["only_proxy"] or result["only_reference"] else ""),
             "For scale: NAS-Bench-201 reports τ ≈ 0.9 between 12- and 200-epoch training on CIFAR; reduced-setting "
             "(EcoNAS-style) proxies re-evaluated by Abdelfattah et al. (ICLR 2021) reached ρ ≈ 0.61. Few variants "
             "make wide intervals: read them before the point values.", ""]
    d = result["decisions"]
    if len(d):
        by = list((spec_p.get("compare") or {}).get("by") or [])
        rows = []
        for r in d.to_dict("records"):
            iso = "–" if r["iso_agrees"] is None else (
                f"{r['iso_proxy']} / {r['iso_ref']} " + ("✓" if r["iso_agrees"] else "✗"))
            rows.append([show_value(f, r[f]) for f in by] + [
                r["arm"], signed(r["d_top1_proxy"]) + interval(r["d_low_proxy"], r["d_high_proxy"]),
                signed(r["d_top1_ref"]) + interval(r["d_low_ref"], r["d_high_ref"]),
                STATE_CELLS[r["state"]], iso])
        lines += ["## Decisions", "",
                  f"The decisions (the sign of Δtop-1, each side's 95 % interval deciding): {states_said(d)}"
                  + (f"; the iso-cost verdict for {int(d['iso_agrees'].dropna().sum())} of "
                     f"{int(d['iso_agrees'].notna().sum())}" if d["iso_agrees"].notna().any() else "") + ".", "",
                  md_table([*by, "arm", "proxy Δtop-1 [95 % CI]", "reference Δtop-1 [95 % CI]", "decision",
                            "cheaper route at equal GMACs (proxy / reference)"], rows, left=len(by) + 1), ""]
    return "\n".join(lines)


def write_fidelity(proxy: pd.DataFrame, reference: pd.DataFrame, *, names: tuple[str, str],
                   specs: tuple[Mapping[str, Any], Mapping[str, Any]], out_dir: Path) -> tuple[dict[str, Any], Path]:
    """Compare the two studies' records (``names``, ``specs``: proxy's, reference's) and write
    out_dir/fidelity-<reference>.md; returns (the comparison, its path)."""
    result = fidelity(proxy, reference, specs[0].get("compare"),
                      sequential=(bool(specs[0].get("sequential")), bool(specs[1].get("sequential"))))
    for name, frame in zip(names, (proxy, reference), strict=True):
        if not has_accuracy(frame):
            counts = frame["status"].value_counts().to_dict() if "status" in frame else {}
            raise BenchError(f"study {name!r} has no complete trial with a top-1 ("
                             + (", ".join(f"{n} {s}" for s, n in counts.items()) or "none finished")
                             + "): nothing to compare; its report says why")
    if not result["variants"]:
        raise BenchError(f"studies {names[0]!r} and {names[1]!r} share no variant: a reference runs the proxy's "
                         f"variants (e.g. bench run SWEEP --name {names[1]} --set train.epochs=...)")
    text = fidelity_markdown(result, names, specs)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"fidelity-{names[1]}.md"
    atomic_write(path, lambda f: f.write(text))
    return result, path
