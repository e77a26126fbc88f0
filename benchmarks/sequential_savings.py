"""What --until-decided spent against fixed designs, per arm, on a real study.

    python -m benchmarks.sequential_savings NAME [--results DIR] [--seeds 10]

Study NAME was grown with ``bench run SWEEP --until-decided --max-seeds K`` and then extended to
fixed seeds 0…K−1 (the rerun trains only the missing seeds), so every arm has K seeds. Replayed on
those records, seed by seed in the order --until-decided added them: per arm, the decision and the
seeds of the sequential run (the first look whose sequential interval excludes 0, or that finds
the arm out of reach, else K: what --until-decided does, and on a CPU the same numbers), of a
fixed design of the sweep's first 3 seeds (the report's t-interval, Holm-free: per arm), and of
fixed K seeds; then the trials each design spends (an arm's variants and its group's baseline's,
the baseline as many seeds as its most demanding arm) and whether the designs' decisions agree.
Prints a markdown table (docs/example-calibrate holds the figures) and the totals.
"""
from __future__ import annotations

import argparse

import pandas as pd

from bench.report.formats import interval, md_table, signed
from bench.report.tables import comparison
from bench.sequential import out_of_reach
from bench.spec import BASELINE
from bench.study.ledger import Ledger
from bench.study.stored_reports import records_frame
from bench.variant import show_value


def decision(row: dict) -> str:
    if row.get("dropped"):
        return "undecided (dropped: out of reach)"
    if pd.isna(row["d_low"]):
        return "undecided (no interval)"
    if row["d_low"] > 0 or row["d_high"] < 0:
        return ("+" if row["d_top1"] > 0 else "−") + " decided"
    return "undecided"


def missed(made: dict[str, str], k: int) -> bool:
    """Whether fixed K seeds decide an arm (a sign: "+ decided", "− decided") that the sequential
    run does not decide the same way ("undecided" is no decision, though it ends in "decided")."""
    fixed = made[f"fixed {k}"]
    return fixed.endswith(" decided") and made["sequential"] != fixed


def at_seeds(frame: pd.DataFrame, seeds: list[int]) -> pd.DataFrame:
    return frame[frame["seed"].isin(seeds)]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("name")
    p.add_argument("--results", default="results")
    p.add_argument("--storage", default=None)
    p.add_argument("--seeds", type=int, default=10, help="K: the seeds every arm has now")
    args = p.parse_args()
    ledger = Ledger.locate(args.name, args.storage, args.results)
    frame = records_frame(ledger)
    compare = (ledger.spec or {})["compare"]
    by = list(compare.get("by") or [])
    order = sorted(frame["seed"].unique())[:args.seeds]
    k = len(order)
    fixed3 = comparison(at_seeds(frame, order[:3]), compare)
    fixedk = comparison(at_seeds(frame, order), compare)
    key = lambda r: tuple([*(r[f] for f in by), r["arm"]])  # noqa: E731
    seq: dict[tuple, tuple[int, dict]] = {}
    for n in range(3, k + 1):  # the looks --until-decided made, in its order of seeds
        for r in comparison(at_seeds(frame, order[:n]), compare, sequential=True).to_dict("records"):
            if r["arm"] == BASELINE or key(r) in seq:
                continue
            dropped = out_of_reach(r["d_top1"], r["seed_var"], 0.0 if pd.isna(r["test_var"]) else r["test_var"],
                                   n, k) if not pd.isna(r["seed_var"]) else False
            if r["significant"] or dropped or n == k:
                seq[key(r)] = (n, {**r, "dropped": dropped})
    variants = {key(r): int(r["variants"]) for r in fixedk.to_dict("records")}
    rows, spent = [], {"sequential": 0, "fixed 3": 0, f"fixed {k}": 0}
    groups: dict[tuple, int] = {}
    disagree = []
    f3 = {key(r): r for r in fixed3.to_dict("records")}
    for r in fixedk.to_dict("records"):
        if r["arm"] == BASELINE:
            continue
        n, s = seq[key(r)]
        groups[key(r)[:-1]] = max(groups.get(key(r)[:-1], 0), n)
        spent["sequential"] += n * variants[key(r)]
        spent["fixed 3"] += 3 * variants[key(r)]
        spent[f"fixed {k}"] += k * variants[key(r)]
        made = {"sequential": decision(s), "fixed 3": decision(f3[key(r)]), f"fixed {k}": decision(r)}
        if missed(made, k):
            disagree.append(" ".join(map(str, key(r))))
        rows.append([*(show_value(f, r[f]) for f in by), r["arm"],
                     f"{made['sequential']} after {n} seeds: {signed(s['d_top1'])}{interval(s['d_low'], s['d_high'])}",
                     f"{made['fixed 3']}: {signed(f3[key(r)]['d_top1'])}"
                     f"{interval(f3[key(r)]['d_low'], f3[key(r)]['d_high'])}",
                     f"{made[f'fixed {k}']}: {signed(r['d_top1'])}{interval(r['d_low'], r['d_high'])}"])
    for group, n in groups.items():  # each group's baseline: as many seeds as its most demanding arm
        base = variants[(*group, BASELINE)]
        spent["sequential"] += n * base
        spent["fixed 3"] += 3 * base
        spent[f"fixed {k}"] += k * base
    print(md_table([*by, "arm", "sequential (--until-decided)", "fixed, 3 seeds", f"fixed, {k} seeds"], rows,
                   left=len(by) + 1))
    print()
    print("trials: " + ", ".join(f"{name} {n}" for name, n in spent.items())
          + f"; sequential / fixed {k}: {spent['sequential'] / spent[f'fixed {k}']:.0%}")
    print("decisions fixed " + str(k) + " makes that the sequential run does not: " + (", ".join(disagree) or "none"))


if __name__ == "__main__":
    main()
