"""Verdict against budget: one sweep run at every rung of a budget ladder (more epochs, more
images), each rung a study of its own, read together. Per rung: what it cost (measured train
time, train PMACs: bench.costs), how its ranking agrees with the largest rung's and the next rung's
(Kendall τ, Spearman ρ, bootstrap intervals: bench.report.fidelity), and whether each decision
(the sign of an arm's Δtop-1) holds against the largest rung; then the cheapest rung from which
everything agrees, or that none does. Written as calibration.md, calibration.json and two plots;
bench.study.stored_reports reads the rungs' ledgers.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import pandas as pd

from bench.costs import TRAIN_PMACS_SAID
from bench.own_files import atomic_write
from bench.report import plots
from bench.report.decide import needed_cell, projections
from bench.report.fidelity import (FLIPPED, KEPT, STATE_SAID, STATES, UNDECIDED, UNSURE, WRONG, decision_state, fidelity,
                                   verdicts)
from bench.records import Status
from bench.report.formats import changed_settings, interval, md_table, signed, two_places
from bench.report.tables import comparison, has_accuracy, train_pmacs
from bench.sequential import HORIZON
from bench.variant import is_missing, show_value

THRESHOLD = 0.8  # Kendall τ from which two rankings count as agreeing (NAS-Bench-201: ≈ 0.9, 12 vs 200 epochs)
FILES = ("calibration.md", "calibration.json", "calibration_verdicts.png", "calibration_agreement.png")


@dataclass(frozen=True)
class RungStudy:
    """One rung as run: its label (``epochs=4``), the values it set, its study's name, records
    and stored spec."""

    label: str
    study: str
    frame: pd.DataFrame
    spec: Mapping[str, Any] = field(default_factory=dict)
    sets: Mapping[str, Any] = field(default_factory=dict)
    left_out: int = 0  # trials of the study outside the sweep at this rung (another ladder's, an edited grid)
    sequential: dict[str, Any] | None = None  # how it grew seed by seed (--until-decided), if it did


def rung_cost(frame: pd.DataFrame) -> dict[str, Any]:
    """What a rung cost: its finished trials, their measured train time (seconds, summed), and
    their train PMACs (bench.costs: train MACs per image × images trained, summed; evaluation
    and profiling left out). NaN where the records do not say."""
    ok = frame[frame["status"].isin([Status.COMPLETE.value, Status.DIVERGED.value])] if "status" in frame else frame
    seconds = pd.to_numeric(ok.get("train_time_s", pd.Series(dtype=float)), errors="coerce")
    macs = train_pmacs(ok)
    return {"trials": len(ok), "train_s": float(seconds.sum()) if seconds.notna().all() and len(ok) else math.nan,
            "train_pmacs": float(macs.sum()) if len(macs) and np.isfinite(macs).all() else math.nan}


def agreement(rung: RungStudy, reference: RungStudy, compare: Mapping[str, Any] | None,
              resamples: int = 1000) -> dict[str, Any]:
    """``rung`` against ``reference`` (fidelity's comparison) with ``agrees``: τ ≥ THRESHOLD over
    the pairs of variants the reference orders, and every decision kept and decided at the rung
    (both intervals exclude 0, one sign) — never a decision the reference cannot make — and
    ``why`` not in words ("" when it agrees)."""
    found = fidelity(rung.frame, reference.frame, compare, resamples=resamples,
                     sequential=(bool(rung.sequential), bool(reference.sequential)))
    a, res, d = found["agreement"], found["resolved"], found["decisions"]
    why = []
    if a is None:
        why.append("no ranking to compare")
    elif res is None or not res.ordered:
        why.append("the largest rung orders no pair of variants")
    elif not math.isfinite(res.tau) or res.tau < THRESHOLD:
        why.append(f"τ {two_places(res.tau)} < {THRESHOLD} over {res.ordered} ordered pairs")
    states = d["state"].tolist() if len(d) else []
    for state in STATES:
        if state != KEPT and state in states:
            why.append(f"{states.count(state)} {STATE_SAID[state]}")
    return {**found, "agrees": not why, "why": ", ".join(why)}


def calibration(rungs: list[RungStudy], compare: Mapping[str, Any] | None, resamples: int = 1000,
                command: str | None = None) -> dict[str, Any]:
    """Read a ladder's rungs (cheapest first, the last the reference): a row per rung (cost,
    τ over the pairs the largest rung orders and ρ, against the largest and against the next
    rung; its decisions against the largest's by state; ``agrees``), every rung's own verdicts
    (Δtop-1 with its interval, iso-cost verdict, state against the largest), ``stable_from``
    (the first rung from which every rung below the largest agrees with it; None when none
    does), what would decide the largest rung's open arms, and the conclusion in one paragraph
    ending with ``command`` (the next step) when the largest rung is undecided."""
    if len(rungs) < 2:
        raise ValueError("a calibration compares at least two rungs")
    top = rungs[-1]
    by = list((compare or {}).get("by") or [])
    costs = [rung_cost(r.frame) for r in rungs]
    first = costs[0]["train_pmacs"]
    against_top = [agreement(r, top, compare, resamples) for r in rungs[:-1]]
    against_next = [agreement(a, b, compare, resamples) for a, b in zip(rungs, rungs[1:-1])]
    against_next.append(against_top[-1])  # the rung below the largest: its next is the largest
    rows = []
    for i, (r, cost) in enumerate(zip(rungs, costs, strict=True)):
        t = against_top[i] if i < len(rungs) - 1 else None
        n = against_next[i] if i < len(rungs) - 1 else None
        states = t["decisions"]["state"].tolist() if t is not None and len(t["decisions"]) else []
        rows.append({"rung": r.label, "study": r.study, **cost, "left_out": r.left_out,
                     "cost_x": cost["train_pmacs"] / first if first and math.isfinite(first) else math.nan,
                     **_ranks("top", t), **_ranks("next", n), **{s: states.count(s) for s in STATES},
                     "agrees": None if t is None else t["agrees"], "why": None if t is None else t["why"],
                     "agrees_next": None if n is None else n["agrees"]})
    table = _verdict_table(rungs, compare, by) if compare else pd.DataFrame()
    stable = None
    for i in range(len(rungs) - 2, -1, -1):  # the first rung from which every rung agrees with the largest
        if not rows[i]["agrees"]:
            break
        stable = i
    open_ = pd.DataFrame()
    if compare and has_accuracy(top.frame):
        cap = (top.sequential or {}).get("max_seeds") or HORIZON
        open_ = projections(comparison(top.frame, compare, bool(top.sequential)), by, cap)
    said = conclusion(rows, table, by, stable, open_, command) if has_accuracy(top.frame) else reference_failed(top)
    return {"rows": rows, "verdicts": table, "by": by, "stable_from": stable, "open": open_, "conclusion": said}


def reference_failed(top: RungStudy) -> str:
    """The conclusion when the largest rung has no top-1 to compare with: why, not "spend more"."""
    counts = top.frame["status"].value_counts().to_dict() if "status" in top.frame else {}
    how = ", ".join(f"{n} {s}" for s, n in counts.items()) or "no finished trial"
    return (f"The largest rung ({top.label}) has no usable trial ({how}): there is nothing to calibrate against. "
            f"Its report (study {top.study}) says why; fix that, then rerun (--retry-failed reruns failed trials).")


def _ranks(prefix: str, found: dict[str, Any] | None) -> dict[str, Any]:
    """τ over the ordered pairs (``tau``, its interval, ``ordered`` of ``pairs``), τ over every
    pair (``tau_all``) and ρ, each suffixed ``_top`` or ``_next``."""
    a = None if found is None else found["agreement"]
    res = None if found is None else found["resolved"]
    nan = math.nan
    out = {"tau": nan if res is None else res.tau, "tau_low": nan if res is None or res.low is None else res.low,
           "tau_high": nan if res is None or res.high is None else res.high,
           "ordered": 0 if res is None else res.ordered, "pairs": 0 if res is None else res.pairs,
           "tau_all": nan if a is None else a.tau,
           **{n: (nan if a is None or getattr(a, n) is None else getattr(a, n)) for n in ("rho", "rho_low", "rho_high")}}
    return {f"{k}_{prefix}": v for k, v in out.items()}


def _verdict_table(rungs: list[RungStudy], compare: Mapping[str, Any], by: list[str]) -> pd.DataFrame:
    """Every rung's own verdicts, one row per rung × group × arm, each with its state against the
    largest rung's."""
    found = [verdicts(r.frame, compare, bool(r.sequential)).assign(rung=r.label, order=i) for i, r in enumerate(rungs)]
    table = pd.concat(found, ignore_index=True) if found else pd.DataFrame()
    if table.empty:
        return table
    top = {(*[r[f] for f in by], r["arm"]): r for r in found[-1].to_dict("records")}
    key = lambda r: (*[r[f] for f in by], r["arm"])  # noqa: E731
    records = table.to_dict("records")
    table["state"] = [decision_state(r, top[key(r)]) if key(r) in top else None for r in records]
    table["iso_top"] = [(top.get(key(r)) or {}).get("iso") for r in records]
    return table


def _arm_name(r: Mapping[str, Any], by: list[str]) -> str:
    return " ".join([*(f"{f}={show_value(f, r[f])}" for f in by), str(r["arm"])])


def conclusion(rows: list[dict[str, Any]], table: pd.DataFrame, by: list[str], stable: int | None,
               open_: pd.DataFrame | None = None, command: str | None = None) -> str:
    """The calibration in a few sentences, the dangerous case first: a rung that decides an arm
    the wrong way; then what would decide the largest rung's own open arms (the first advice when
    it has any); whether a rung agrees, and from which; how many of the largest rung's decisions
    each cheaper rung makes on its own; what keeps the rest from agreeing; the next command."""
    n, found = len(rows), table.to_dict("records") if len(table) else []
    open_ = open_ if open_ is not None else pd.DataFrame()

    def arms(test: Any, lo: int = 0, hi: int = n - 1) -> list[str]:  # arms for which test holds at rungs lo..hi-1
        return sorted({_arm_name(r, by) for r in found if lo <= r["order"] < hi and test(r)})

    said = []
    wrong = [(r["rung"], _arm_name(r, by)) for r in found if r["state"] == WRONG and r["order"] < n - 1]
    if wrong:
        said.append("Decided and wrong: " + "; ".join(f"at {rung}, {arm}" for rung, arm in wrong)
                    + " — the rung's interval excludes 0 on the other side of the largest rung's: a proxy there "
                    "answers, and wrongly.")
    if len(open_):
        cells = [f"{_arm_name(p, by)}: {needed_cell(p)}" for p in open_.to_dict("records")]
        said.append(f"The largest rung ({rows[-1]['rung']}) leaves {len(open_)} arm(s) undecided; the seeds that "
                    f"would decide each there (80 % power): {'; '.join(cells)}.")
    iso = lambda r: not (is_missing(r["iso"]) or is_missing(r["iso_top"])) and r["iso"] != r["iso_top"]  # noqa: E731
    if stable is not None:
        r = rows[stable]
        cost = f" (×{r['cost_x']:.3g} the cost of the first)" if math.isfinite(r["cost_x"]) else ""
        text = (f"From rung {r['rung']} on{cost}, the ranking agrees with the largest rung over the pairs it orders "
                f"(τ ≥ {THRESHOLD}) and every decision it makes is made and kept there — a proxy at {r['rung']} is "
                "worth running.")
        notes = [f"the cheaper route at equal GMACs still changes for {', '.join(x)}" for x in [arms(iso, stable)] if x]
        said.append(text + (f" ({'; '.join(notes)}.)" if notes else ""))
    else:
        notes = [f"{STATE_SAID[s]} for {', '.join(x)}" for s in (FLIPPED, UNSURE)
                 for x in [arms(lambda r, s=s: r["state"] == s)] if x]
        notes += [f"the cheaper route at equal GMACs changes for {', '.join(x)}" for x in [arms(iso)] if x]
        taus = [r["tau_top"] for r in rows[:-1] if math.isfinite(r["tau_top"])]
        if taus and max(taus) < THRESHOLD:
            notes.append(f"no rung's ranking reaches τ {THRESHOLD} against the largest over the pairs it orders (best "
                         f"{two_places(max(taus))})")
        said.append("No rung agrees with the largest yet" + (f" ({'; '.join(notes)})." if notes else "."))
    decided = sum(rows[-2][s] for s in STATES if s != UNDECIDED) if n > 1 else 0
    if decided:
        made = [f"{r['rung']} {r[KEPT]}" for r in rows[:-1]]
        said.append(f"Of the largest rung's {decided} decision(s), each cheaper rung makes on its own: "
                    f"{', '.join(made)}.")
    if command and len(open_):
        said.append(f"Next: `{command}`.")
    return " ".join(said)


# --- the files ----------------------------------------------------------------------------------

def _tau_cell(r: Mapping[str, Any], p: str) -> str:
    """Kendall's τ against rung ``p`` (top: the largest, next: the next one) with its interval and
    the pairs it orders; – when not finite."""
    if not math.isfinite(r[f"tau_{p}"]):
        return "–"
    return (f"{two_places(r[f'tau_{p}'])}{interval(r[f'tau_low_{p}'], r[f'tau_high_{p}'], two_places)} "
            f"({r[f'ordered_{p}']} of {r[f'pairs_{p}']})")


def _rho_cell(r: Mapping[str, Any], p: str) -> str:
    """Spearman's ρ against rung ``p``; – when not finite."""
    return "–" if not math.isfinite(r[f"rho_{p}"]) else two_places(r[f"rho_{p}"])


def _agreement_section(rows: list[dict[str, Any]]) -> list[str]:
    """calibration.md's "Cost and agreement per rung": one row per rung, then what the columns mean."""
    cells = []
    for r in rows:
        decided = "–" if r["agrees"] is None else ", ".join(f"{r[st]} {st}" for st in STATES if r[st] or st == KEPT)
        agrees = "reference" if r["agrees"] is None else ("✓" if r["agrees"] else f"✗ ({r['why']})")
        cells.append([r["rung"], str(r["trials"]), _minutes(r["train_s"]),
                      "–" if not math.isfinite(r["train_pmacs"]) else f"{r['train_pmacs']:.3g}",
                      "–" if not math.isfinite(r["cost_x"]) else f"×{r['cost_x']:.3g}", _tau_cell(r, "top"),
                      _rho_cell(r, "top"), _tau_cell(r, "next"), _rho_cell(r, "next"), decided, agrees])
    return ["## Cost and agreement per rung", "",
            md_table(["rung", "trials", "train time", "train PMACs", "cost", "τ vs largest [95 % CI] (pairs)",
                      "ρ vs largest", "τ vs next [95 % CI] (pairs)", "ρ vs next", "decisions vs largest",
                      "agrees with largest"], cells, left=1), "",
            "τ: Kendall's, over the pairs of variants the other rung orders (the interval of their difference "
            "excludes 0: a pair it cannot order is neither agreement nor disagreement), with how many of all "
            "pairs that is; ρ: Spearman's over every variant both measured (mean top-1 over seeds); 95 % "
            f"bootstrap intervals over variants. A rung agrees with the largest when τ ≥ {THRESHOLD} and every "
            "decision is *kept*: both rungs' 95 % intervals exclude 0, on the same side. The other states, the "
            "dangerous one first: *wrong* — both exclude 0, on opposite sides; *flipped* — the largest rung "
            "decides, the rung leans the other way without deciding; *unsure* — the rung leans the same way "
            "without deciding; *undecided* — the largest rung's own interval spans 0, never counted as "
            f"agreement. Train time: the trials' measured training, summed; {TRAIN_PMACS_SAID} (evaluation and "
            "profiling left out); cost: against the first rung.", "",
            "![Ranking agreement against cost](calibration_agreement.png)", ""]


def _open_section(open_: pd.DataFrame, by: list[str]) -> list[str]:
    """calibration.md's "What would decide the largest rung": the seeds each open arm needs."""
    cells = [[show_value(f, p[f]) for f in by] + [p["arm"], signed(p["d_top1"]), str(p["seeds"]), needed_cell(p)]
             for p in open_.to_dict("records")]
    return ["## What would decide the largest rung", "",
            md_table([*by, "arm", "Δtop-1", "seeds", "seeds that decide it (80 % power): what they cost"], cells,
                     left=len(by) + 1), "",
            "At each open arm's observed Δ and spread at the largest rung: the seeds at which `--until-decided` "
            "would decide it 4 times in 5, and their cost at that rung's own trials. The largest rung is the "
            "reference: until it decides, no rung can be said to agree on that arm.", ""]


def _verdict_section(rows: list[dict[str, Any]], table: pd.DataFrame, by: list[str]) -> list[str]:
    """calibration.md's "Verdict against budget": each arm's Δtop-1 at every rung, marked by its
    decision state, then the cheaper route at equal GMACs where any rung has one."""
    labels = [r["rung"] for r in rows]
    groups = table.drop_duplicates([*by, "arm"])[[*by, "arm"]].to_dict("records")
    marks = {KEPT: "", WRONG: " ✗✗", FLIPPED: " ✗", UNSURE: " ~", UNDECIDED: " ?", None: ""}
    delta_rows, iso_rows = [], []
    for g in groups:
        mine = table[np.logical_and.reduce([table[f] == g[f] for f in [*by, "arm"]])].set_index("rung")
        head = [show_value(f, g[f]) for f in by] + [g["arm"]]
        delta_rows.append(head + [
            signed(mine.loc[x, "d_top1"]) + interval(mine.loc[x, "d_low"], mine.loc[x, "d_high"])
            + marks.get(None if is_missing(mine.loc[x, "state"]) else mine.loc[x, "state"], "")
            if x in mine.index else "–" for x in labels])
        if mine["iso"].notna().any():
            iso_rows.append(head + [mine.loc[x, "iso"] or "–" if x in mine.index else "–" for x in labels])
    lines = ["## Verdict against budget", "", "![Δtop-1 against cost per rung](calibration_verdicts.png)", "",
             "Δtop-1 against the baseline, percentage points (95 % interval, as each rung's report computes "
             "it) at each rung; ✗✗: decided and wrong (the rung's interval excludes 0 on the other side of the "
             "largest rung's), ✗: flipped (the other sign, undecided at the rung), ~: the same sign but "
             "undecided at the rung, ?: the largest rung cannot tell the sign (its interval spans 0).", "",
             md_table([*by, "arm", *labels], delta_rows, left=len(by) + 1), ""]
    if iso_rows:
        lines += ["The cheaper route at equal GMACs per rung (re: re-attention beats what widening buys for "
                  "the same cost; width: widening matches it for less):", "",
                  md_table([*by, "arm", *labels], iso_rows, left=len(by) + 1), ""]
    return lines


def calibration_markdown(result: Mapping[str, Any], name: str, ladder: Mapping[str, list[Any]],
                         spec: Mapping[str, Any], stopped: str | None = None) -> str:
    """calibration.md from ``calibration``'s result; ``ladder``: key → values (those run),
    ``spec``: the first rung's stored spec, ``stopped``: why the climb stopped early, if it did."""
    rows, table, by = result["rows"], result["verdicts"], result["by"]
    keys = ", ".join(f"`{k}` = {', '.join(map(str, v))}" for k, v in ladder.items())
    lines = [f"# Calibration: {name} over {', '.join(ladder)}", "",
             f"**Ladder:** {keys} — {len(rows)} rungs, each its own study (`{rows[0]['study']}` … "
             f"`{rows[-1]['study']}`); the last is the reference.  ",
             f"**Sweep (first rung), set apart from the defaults:** {changed_settings(spec)}", "",
             f"**{result['conclusion']}**", ""]
    if stopped:
        lines += [f"Stopped climbing (`--stop-when-stable`): {stopped}", ""]
    outside = [f"{r['rung']} ({r['left_out']})" for r in rows if r.get("left_out")]
    if outside:
        lines += ["Left out: trials of the rung's study that are not in this sweep (another ladder's, or a grid or "
                  f"seeds edited since): {', '.join(outside)}. Every figure below comes from this sweep's own trials.",
                  ""]
    lines += _agreement_section(rows)
    open_ = result.get("open")
    if open_ is not None and len(open_):
        lines += _open_section(open_, by)
    if len(table):
        lines += _verdict_section(rows, table, by)
    return "\n".join(lines)


def _minutes(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "–"
    return f"{seconds / 60:.1f} min" if seconds >= 60 else f"{seconds:.1f} s"


def write_calibration(result: Mapping[str, Any], *, name: str, ladder: Mapping[str, list[Any]],
                      spec: Mapping[str, Any], out_dir: Path, stopped: str | None = None) -> dict[str, Path]:
    """calibration.md, calibration.json and the two plots into ``out_dir``; returns their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows, table = result["rows"], result["verdicts"]
    x = [r["train_pmacs"] for r in rows]
    axis = "train PMACs"
    if not all(math.isfinite(v) and v > 0 for v in x):
        x, axis = list(range(1, len(rows) + 1)), "rung"
    at = dict(zip([r["rung"] for r in rows], x, strict=True))
    paths = plots.calibration_figures(
        table.assign(cost=table["rung"].map(at)) if len(table) else table,
        pd.DataFrame(rows).assign(cost=x), result["by"], out, axis)
    text = calibration_markdown(result, name, ladder, spec, stopped)
    atomic_write(out / FILES[0], lambda f: f.write(text))
    record = {"name": name, "ladder": ladder, "stopped": stopped, "conclusion": result["conclusion"],
              "stable_from": None if result["stable_from"] is None else rows[result["stable_from"]]["rung"],
              "rungs": rows, "verdicts": table.to_dict("records") if len(table) else []}
    atomic_write(out / FILES[1], lambda f: json.dump(_plain(record), f, indent=1, allow_nan=False))
    return {FILES[0]: out / FILES[0], FILES[1]: out / FILES[1], **{p.name: p for p in paths}}


def _plain(value: Any) -> Any:
    """A JSON value: numpy scalars as Python's, NaN as null (JSON has no NaN)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, (np.integer, np.floating, np.bool_)):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value if value is None or isinstance(value, (str, int, float, bool)) else str(value)
