"""``--until-decided``: after a sweep's own seeds, grow it one seed at a time where a verdict is
still open — racing's idea (F-Race: spend on contenders, not on what is settled), with an error
rate that stays valid however often one looks (bench.sequential).

Each round reads the comparison with the sequential interval, and gives the next seed to every
arm whose interval spans 0 — and to its group's baseline, so pairs stay paired by seed — until
every arm is decided, has K seeds (``--max-seeds``), or the wall-clock budget is spent. An arm
already decided gets no more seeds, and neither does one out of reach (not even the far end of
its 80 % interval would be decided by K: bench.sequential.out_of_reach). The study simply grows: the extra trials are ordinary
trials of the same sweep (a rerun resumes them; a later run with a larger K continues), and
the study remembers that it grew this way, so its reports read it with the sequential
interval (``Ledger.mark_sequential``).
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable

import pandas as pd

from bench import console
from bench.records import Status
from bench.report.tables import comparison
from bench.sequential import out_of_reach
from bench.spec import BASELINE, Sweep, Trial, trial_key
from bench.study.ledger import Ledger
from bench.study.stored_reports import records_frame
from bench.variant import FIELD_TYPES, Variant


@dataclass(frozen=True)
class Arm:
    """One arm of one group of a sweep's comparison: its variants and its baseline's."""

    name: str
    group: tuple[Any, ...]
    variants: tuple[Variant, ...]
    baseline: tuple[Variant, ...]

    @property
    def label(self) -> str:
        return " ".join([*(str(g) for g in self.group), self.name])


def arms(sweep: Sweep) -> list[Arm]:
    """The sweep's arms, per group of ``compare.by``, with the variants each matches."""
    compare = sweep.compare or {}
    by = list(compare.get("by") or [])
    match = lambda v, where: all(getattr(v, k) == x for k, x in where.items())  # noqa: E731
    out = []
    groups = dict.fromkeys(tuple(getattr(v, f) for f in by) for v in sweep.variants)
    for group in groups:
        members = [v for v in sweep.variants if tuple(getattr(v, f) for f in by) == group]
        base = tuple(v for v in members if match(v, compare["baseline"]))
        for name, where in (compare.get("arms") or {}).items():
            mine = tuple(v for v in members if match(v, where))
            if mine and base:
                out.append(Arm(name, group, mine, base))
    return out


def seed_sequence(sweep: Sweep, k: int) -> list[int]:
    """The first ``k`` seeds an arm gets: the sweep's own, then the next integers past them."""
    seeds = list(sweep.seeds)
    nxt = max(seeds) + 1
    while len(seeds) < k:
        seeds.append(nxt)
        nxt += 1
    return seeds[:k]


def next_round(sweep: Sweep, frame: pd.DataFrame, max_seeds: int) -> tuple[list[Trial], dict[str, str]]:
    """The trials of the next round, and each arm's state now (``decided after n seeds``,
    ``undecided at K``, or ``growing``): every arm whose sequential interval spans 0 and that has
    fewer than ``max_seeds`` seeds in common with its baseline gets the next seed of
    ``seed_sequence`` that none of its or its baseline's trials has failed on."""
    cmp = comparison(frame, sweep.compare, sequential=True) if len(frame) else pd.DataFrame()
    by = list((sweep.compare or {}).get("by") or [])
    decided = {tuple([*(r[f] for f in by), r["arm"]]): r for r in cmp.to_dict("records") if r["arm"] != BASELINE}
    done, failed = _seeds(frame)
    todo: dict[str, Trial] = {}
    states: dict[str, str] = {}
    for arm in arms(sweep):
        r = decided.get((*arm.group, arm.name)) or {"significant": False, "pairs": 0}
        pairs = int(r["pairs"] or 0)
        if r["significant"]:
            states[arm.label] = f"decided after {pairs} seeds"
            continue
        if "seed_var" in r and not pd.isna(r["seed_var"]) and out_of_reach(
                r["d_top1"], r["seed_var"], 0.0 if pd.isna(r["test_var"]) else r["test_var"], pairs, max_seeds):
            states[arm.label] = f"dropped after {pairs} seeds: out of reach by {max_seeds}"
            continue
        both = [*arm.variants, *arm.baseline]
        common = set.intersection(*(done.get(v, set()) for v in both))
        if len(common) >= max_seeds:
            states[arm.label] = f"undecided at {max_seeds} seeds"
            continue
        bad = set().union(*(failed.get(v, set()) for v in both))
        candidates = [s for s in seed_sequence(sweep, max_seeds + len(bad)) if s not in common and s not in bad]
        if not candidates:
            states[arm.label] = f"undecided: its seeds failed ({', '.join(map(str, sorted(bad)))})"
            continue
        seed = candidates[0]
        states[arm.label] = f"growing: seed {seed} ({len(common) + 1} of at most {max_seeds})"
        for v in both:
            if seed not in done.get(v, set()):
                key = trial_key(v, seed)
                todo[key] = Trial(key, v, seed)
    return list(todo.values()), states


def _seeds(frame: pd.DataFrame) -> tuple[dict[Variant, set[int]], dict[Variant, set[int]]]:
    """Per variant: the seeds it finished (complete or diverged: results), and those that failed."""
    done: dict[Variant, set[int]] = {}
    failed: dict[Variant, set[int]] = {}
    for r in frame.to_dict("records") if len(frame) else []:
        if not all(k in r for k in FIELD_TYPES):
            continue
        v = Variant.from_dict({k: r[k] for k in FIELD_TYPES})
        if r.get("status") in (Status.COMPLETE, Status.DIVERGED):
            done.setdefault(v, set()).add(int(r["seed"]))
        elif r.get("status") == Status.FAILED:
            failed.setdefault(v, set()).add(int(r["seed"]))
    return done, failed


def grow(sweep: Sweep, ledger: Ledger, run_queue: Callable[[int], list[dict[str, Any]]], *, max_seeds: int,
         budget_s: float | None = None, quiet: bool = False, started: float | None = None) -> dict[str, Any]:
    """Grow the study round by round (``next_round``), running each round's trials with
    ``run_queue(count)`` (this process's worker loop, or local worker processes), until every
    arm is decided or at ``max_seeds``, or ``budget_s`` seconds have passed since ``started``.
    Returns the records run, the rounds, each arm's final state, and why it stopped."""
    started = time.monotonic() if started is None else started
    ledger.mark_sequential(max_seeds)
    finished: list[dict[str, Any]] = []
    rounds = 0
    while True:
        trials, states = next_round(sweep, records_frame(ledger), max_seeds)
        if not trials:
            why = "every arm decided" if all(s.startswith("decided") for s in states.values()) else \
                f"nothing left to add (decided, or at {max_seeds} seeds)"
            break
        if budget_s is not None and time.monotonic() - started >= budget_s:
            why = f"the budget of {budget_s / 60:g} min is spent"
            break
        plan = ledger.plan(trials)
        if not plan.todo and not plan.queued and not plan.running_elsewhere:
            why = "the next seeds' trials failed before (--retry-failed reruns them)"
            break
        ledger.enqueue(plan.todo)
        rounds += 1
        if not quiet:
            open_ = sum(s.startswith("growing") for s in states.values())
            console.info(f"{sweep.name}: round {rounds} of --until-decided: {open_} arm(s) undecided, "
                         f"{len(plan.todo)} trial(s) queued (at most {max_seeds} seeds)")
        finished += run_queue(len(plan.todo) + plan.queued)
    if not quiet:
        console.info(f"{sweep.name}: --until-decided stopped adding seeds after {rounds} round(s): {why}")
        for arm, state in states.items():
            console.info(f"{sweep.name}: {arm}: {state}")
    return {"records": finished, "rounds": rounds, "states": states, "stopped": why}
