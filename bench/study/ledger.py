"""The sweep ledger: one Optuna study per sweep, and the only code that reads or writes it.

Each trial (variant × seed) is one Optuna trial whose ``record`` user attribute holds the
resolved config, the cost figures, accuracy, versions and device: every report is rebuilt
from these alone.

Resumption: a trial's ``key`` names its variant × seed. A rerun skips keys already
complete (or diverged: a result, not a crash), reruns interrupted ones (Ctrl-C, or a
worker that died: its trial is left RUNNING), and reruns failed ones only when asked.

Many workers: the grid points to run are queued once as WAITING trials (user attributes:
key, variant, seed). A worker claims one by moving it to RUNNING, which the storage does
atomically (Optuna's own trial queue), then records heartbeats while it runs. A claim whose
key another trial already holds (running or done: two workers queued the same point at the
same moment) is dropped as a duplicate, so no point is completed twice; a worker that dies
leaves a RUNNING trial that the next plan closes (dead pid on this host, or a heartbeat
silent past the grace period) and queues again, so none is lost.

Searches ask and tell through it too (``ask``, ``drop``, ``repeat``). Every trial, grid or
search, reports each epoch's top-1 through it (``report``) as an Optuna intermediate value at
step = epoch (from 1): live learning curves in optuna-dashboard; the pruner, where a study has
one, decides on the same values. Its storage access past ``optuna.Study`` (SQL fast paths or
the storage API) and its heartbeats live in ``bench.study.queries``.
"""
from __future__ import annotations

import math
import os
import socket
import time
import warnings
from dataclasses import dataclass, field
from datetime import datetime
from functools import cached_property
from pathlib import Path
from typing import Any, Iterable

import optuna
from optuna.trial import TrialState

from bench import sequential, spec
from bench.config import DATA_ROOT_ENV
from bench.errors import BenchError, SpecError
from bench.records import DETAILS, Status
from bench.study.queries import DONE, Heartbeats, Queries
from bench.study.storage import HEARTBEAT, default_url, open_study
from bench.variant import Variant

WORKER = f"{socket.gethostname()}:{os.getpid()}"
RANK = {TrialState.COMPLETE: 3, TrialState.PRUNED: 3, TrialState.RUNNING: 2, TrialState.WAITING: 1}
# the spec's sections a worker rebuilds its sweep from: it takes its points from the queue, so no grid
STORED = tuple(s for s in spec.SECTIONS if s not in ("grid", "seeds", "compare"))


def _alive(trial: optuna.trial.FrozenTrial, grace: float) -> bool:
    """Whether the worker running ``trial`` still runs. Known for workers on this host (their
    pid); one on another host is alive until its heartbeat goes silent (``fail_stale_trials``).
    A trial claimed but not yet signed by its worker is alive for ``grace`` seconds."""
    worker = trial.user_attrs.get("worker")
    if not worker:
        start = trial.datetime_start
        return start is not None and (datetime.now(start.tzinfo) - start).total_seconds() < grace
    if worker == WORKER:  # ours cannot be running now: an earlier process with our pid
        return False
    host, _, pid = worker.rpartition(":")
    if host != socket.gethostname():
        return True
    try:
        os.kill(int(pid), 0)
    except (ValueError, ProcessLookupError):
        return False
    except PermissionError:
        return True
    return True


def interrupted(trial: optuna.trial.FrozenTrial) -> bool:
    """A closed trial that never finished: no record (its worker died), or a record that says
    so. Read from the record itself, which one write stores: a second Ctrl-C between two
    writes cannot turn an interrupted trial into a failed one."""
    record = trial.user_attrs.get("record")
    return record is None or record.get("status") == Status.INTERRUPTED or bool(trial.user_attrs.get("interrupted"))


def _differences(stored: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """``section.key: old → new`` for every stored setting the current run changes. A section
    or key the study has never stored (one a newer bench added) is not a difference."""
    out = []
    for section, before in stored.items():
        now = current.get(section)
        if isinstance(before, dict) and isinstance(now, dict):
            out += [f"{section}.{k}: {v!r} → {now.get(k)!r}" for k, v in before.items() if now.get(k) != v]
        elif before != now:
            out.append(f"{section}: {before!r} → {now!r}")
    return out


@dataclass
class Plan:
    todo: list[spec.Trial] = field(default_factory=list)  # in sweep order
    done: int = 0
    failed_skipped: int = 0
    interrupted: int = 0
    running_elsewhere: int = 0
    queued: int = 0  # waiting in the study's queue for a worker


class Ledger:
    """The sweep's study: which trials are done, and where each new one is recorded. ``url``:
    where it lives (for messages and reports; shown through ``safe_url`` only)."""

    def __init__(self, study: optuna.Study, url: str = "") -> None:
        self.study, self.url = study, url
        self.queries = Queries.of(study)  # tests set a GenericQueries to compare the two paths
        self.heartbeats = Heartbeats(self.queries.storage)

    @classmethod
    def open(cls, url: str, name: str, *, create: bool = False, direction: str | list[str] = "maximize",
             heartbeat: tuple[int, int] = HEARTBEAT) -> Ledger:
        return cls(open_study(url, name, create=create, direction=direction, heartbeat=heartbeat), url)

    @classmethod
    def locate(cls, name: str, storage: str | None, results: str | Path) -> Ledger:
        """Study ``name``, opened: in ``storage`` when given, else in its own file under
        results/name (as `bench run` made it)."""
        return cls.open(storage or default_url(results, name), name)

    @classmethod
    def for_sweep(cls, sweep: spec.Sweep, url: str) -> Ledger:
        """The sweep's study, made if new; one whose objectives differ is refused (use --name)."""
        directions = sweep.directions()
        ledger = cls.open(url, sweep.name, create=True, direction=directions if len(directions) > 1 else directions[0])
        have = [d.name.lower() for d in ledger.study.directions]
        stored = ((ledger.spec or {}).get("study") or {}).get("objectives")
        wanted = sweep.study.objectives if sweep.study is not None else None
        if have != directions or (stored is not None and stored != wanted):
            what = ", ".join(stored) if stored else ", ".join(have)
            raise SpecError("name", sweep.name, f"this study's values are {what}, not "
                            f"{', '.join(wanted or directions)}; pass --name NEW for a new study", sweep.path)
        return ledger

    def with_sampler(self, sampler: Any, pruner: Any) -> Ledger:
        """The same study, asked through ``sampler`` and ``pruner`` (a study's worker)."""
        return Ledger(optuna.load_study(study_name=self.study.study_name, storage=self.queries.storage,
                                        sampler=sampler, pruner=pruner), self.url)

    def alone_and_empty(self) -> bool:
        """Whether the storage holds this study alone, without a trial (a failed start's own)."""
        return self.queries.studies() == 1 and not self.study.get_trials(deepcopy=False)

    def close(self) -> None:
        """Close the storage's connections (before its file is removed)."""
        self.queries.close()

    # --- the spec ---------------------------------------------------------------------

    @property
    def spec(self) -> dict[str, Any] | None:
        return self.study.user_attrs.get("spec")

    def bind(self, sweep: spec.Sweep) -> None:
        """Record the sweep's spec; refuse one whose settings (data, train, profile, collapse)
        differ from those the study's records were made with: they would not compare."""
        stored = self.study.user_attrs.get("settings")
        diffs = _differences(stored or {}, sweep.settings())
        if diffs:
            raise SpecError("name", sweep.name, "this study's records were made with other settings ("
                            + "; ".join(diffs[:5]) + "); pass --name NEW for a new study", sweep.path)
        rung = self.study.user_attrs.get("rung")
        if sweep.rung is not None and rung is not None and rung != sweep.rung:
            shown = lambda sets: ", ".join(f"{k}={v}" for k, v in sets.items())  # noqa: E731
            raise SpecError("name", sweep.name, f"this study is the rung {shown(rung)} of another ladder, not "
                            f"{shown(sweep.rung)}; pass --name NEW for a new calibration", sweep.path)
        if sweep.rung is not None and rung is None:  # new, or made before rungs were stored: the trials
            self.study.set_user_attr("rung", sweep.rung)  # outside the current sweep are left out when read
        if stored != sweep.settings():
            self.study.set_user_attr("settings", sweep.settings())
        if self.study.user_attrs.get("objective_columns") != sweep.objective_columns():  # for close_dead
            self.study.set_user_attr("objective_columns", sweep.objective_columns())
        self.study.set_user_attr("spec", sweep.to_dict())

    def stored_sweep(self) -> spec.Sweep:
        """The sweep the study was made from (its stored spec), for a worker that has no file."""
        stored = self.spec
        if stored is None:
            raise BenchError(f"study {self.study.study_name!r} has no bench spec: start it with `bench run SWEEP` "
                             "(or `bench study SPEC`) first")
        raw = {k: stored[k] for k in STORED if stored.get(k) is not None or k in ("train", "collapse")}
        if "search" in raw:
            raw["seeds"] = stored["seeds"]
        return spec.parse(raw, f"study {stored['name']!r}", default_name=stored["name"])

    def check_data(self, found: dict[str, Any] | None, where: str) -> None:
        """The data a worker loaded (``found``: its fingerprint, bench.data.cache.identity) is the
        data the study was made with — whatever path each machine keeps it at (``where``): the
        first to load it records it, every later load is held to it."""
        if found is None:  # the built-in dataset: generated, the same everywhere
            return
        stored = self.study.user_attrs.get("data_fingerprint")
        if stored is None:
            self.study.set_user_attr("data_fingerprint", found)
            return
        differ = [what for what, bad in (
            (f"classes {found['classes'][:3]}… against its {stored['classes'][:3]}…", found["classes"] != stored["classes"]),
            (f"{found['files']} files against its {stored['files']}", found["files"] != stored["files"]),
            ("the same counts, other files (paths or sizes)", found["listing"] != stored["listing"]))
            if bad]
        if differ:
            raise BenchError(f"data at {where} is not the dataset study {self.study.study_name!r} was made with "
                             f"({differ[0]}); point --data-root (${DATA_ROOT_ENV}) at the same data")

    @property
    def sequential(self) -> dict[str, Any] | None:
        """How the study grew seed by seed (``--until-decided``), or None (a fixed design)."""
        return self.study.user_attrs.get("sequential")

    def mark_sequential(self, max_seeds: int) -> None:
        """Remember that the study grows seed by seed, up to ``max_seeds`` (the largest any run
        asked for): its reports read it with the sequential interval from now on."""
        before = self.sequential or {}
        mark = {"max_seeds": max(int(max_seeds), int(before.get("max_seeds") or 0)), "first": sequential.FIRST,
                "horizon": sequential.HORIZON, "share": sequential.SHARE, "level": sequential.LEVEL}
        if mark != before:
            self.study.set_user_attr("sequential", mark)

    def side_by_side(self) -> dict[str, Any] | None:
        """The last side-by-side timing pass (bench.side_by_side) over the study's variants."""
        return self.study.user_attrs.get("side_by_side")

    def save_side_by_side(self, result: dict[str, Any]) -> None:
        self.study.set_user_attr("side_by_side", result)

    # --- reading ------------------------------------------------------------------------

    def trials(self, states: tuple[TrialState, ...] | None = None) -> list[optuna.trial.FrozenTrial]:
        """The study's trials in number order, without dropped duplicate claims."""
        return [t for t in self.queries.trials(states) if not t.user_attrs.get("dropped")]

    def latest(self) -> dict[str, optuna.trial.FrozenTrial]:
        """The trial that speaks for each key: its newest finished one (complete or diverged),
        else the one running, else the one queued, else its newest (failed or interrupted)."""
        out: dict[str, optuna.trial.FrozenTrial] = {}
        for t in self.trials():  # in number order
            key = t.user_attrs.get("key")
            if key is not None and (key not in out or RANK.get(t.state, 0) >= RANK.get(out[key].state, 0)):
                out[key] = t
        return out

    def known_trials(self) -> list[spec.Trial]:
        """Every point ever queued in the study, in queue order."""
        seen: dict[str, spec.Trial] = {}
        # dropped duplicate claims too: when two workers drop theirs at once, only they remember the point
        for t in self.queries.trials():
            a = t.user_attrs
            if "key" in a and "variant" in a and a["key"] not in seen:
                seen[a["key"]] = spec.Trial(a["key"], Variant.from_dict(a["variant"]), int(a.get("seed", 0)))
        return list(seen.values())

    def holders(self, key: str) -> list[int]:
        """Ids of the running or done (not dropped) trials of ``key``."""
        return self.queries.holders(key)

    def records(self) -> list[dict[str, Any]]:
        """The newest finished record of each key, with its trial number (the report's rows)."""
        latest: dict[str, dict[str, Any]] = {}
        for number, a in self.queries.attrs(("key", "record")):  # by number: the newest wins
            key, record = a.get("key"), a.get("record")
            if key is None or record is None or record.get("status") == Status.INTERRUPTED:
                continue
            if record.get("status") == Status.FAILED and latest.get(key, {}).get("status") in (Status.COMPLETE,
                                                                                               Status.DIVERGED):
                continue  # a failure never over a result
            latest[key] = {"trial": number, "key": key, **record}
        return list(latest.values())

    def details(self, numbers: list[int], attr: str = DETAILS[0]) -> dict[int, Any]:
        """The ``attr`` detail (see ``DETAILS``) of the trials numbered ``numbers``."""
        wanted = set(numbers)
        if not wanted:
            return {}
        return {n: a[attr] for n, a in self.queries.attrs((attr,), numbers=sorted(wanted)) if attr in a}

    # --- the queue ----------------------------------------------------------------------

    def close_dead(self) -> int:
        """Close every RUNNING trial whose worker died (a dead pid on this host, a heartbeat
        silent past the grace period, a claim never signed): FAIL with no record, interrupted —
        unless its worker died between writing its result and closing it (its record says
        complete, diverged or pruned): then closed as ``finish`` would have, with its values."""
        stale = set(self.queries.stale())  # RUNNING, heartbeat silent: its worker died
        closed = 0
        for t in self.trials((TrialState.RUNNING,)):
            if self.queries.id_of(t) in stale or not _alive(t, self.queries.grace()):
                state, values = self._closing(t.user_attrs.get("record"))
                closed += self.queries.set_state(self.queries.id_of(t), state, values)  # False: closed by another
        return closed

    def _closing(self, record: dict[str, Any] | None) -> tuple[TrialState, list[float] | None]:
        """The state (and values) a trial whose worker died with ``record`` written ends in."""
        status = (record or {}).get("status")
        if status in (Status.DIVERGED, Status.PRUNED):
            return TrialState.PRUNED, None
        if status == Status.COMPLETE:
            cols = self.study.user_attrs.get("objective_columns") or []
            values = [record.get(c) for c in cols]
            if cols and all(isinstance(v, (int, float)) and math.isfinite(v) for v in values):
                return TrialState.COMPLETE, values
        return TrialState.FAIL, None

    def plan(self, trials: Iterable[spec.Trial], retry_failed: bool = False) -> Plan:
        """Which of ``trials`` still need a run. Closes dead workers' trials first, so their
        points count as interrupted and go to ``todo`` again."""
        plan = Plan()
        self.close_dead()
        latest = self.latest()
        for trial in trials:
            prev = latest.get(trial.key)
            if prev is None:
                plan.todo.append(trial)
            elif prev.state in DONE:
                plan.done += 1
            elif prev.state == TrialState.RUNNING:
                plan.running_elsewhere += 1
            elif prev.state == TrialState.WAITING:
                plan.queued += 1
            elif (prev.user_attrs.get("record") or {}).get("status") in (Status.COMPLETE, Status.DIVERGED):
                plan.done += 1  # closed as failed with its result written (a study from before close_dead kept it)
            elif interrupted(prev):  # never finished
                plan.interrupted += 1
                plan.todo.append(trial)
            elif retry_failed:
                plan.todo.append(trial)
            else:
                plan.failed_skipped += 1
        return plan

    def enqueue(self, trials: Iterable[spec.Trial]) -> int:
        """Queue each trial as a WAITING trial for any worker."""
        n = 0
        for t in trials:
            self.study.enqueue_trial({}, user_attrs=_attrs(t))
            n += 1
        return n

    def claim(self) -> tuple[optuna.Trial, spec.Trial] | None:
        """Take the next queued trial: (handle, its point), or None when the queue is empty.
        The move WAITING → RUNNING is atomic in the storage, so two workers never take the
        same queue entry; an entry whose key another live or finished trial holds (queued
        twice in a race) is dropped."""
        q = self.queries
        while True:
            ids = q.waiting()
            won = next((tid for tid in ids if q.set_state(tid, TrialState.RUNNING)), None)
            if won is None:
                if not ids:
                    return None
                continue  # all taken by others meanwhile: look again
            t = q.get(won)
            if "key" not in t.user_attrs:  # queued by something else than bench
                q.set_attr(won, "dropped", "not a bench trial")
                q.set_state(won, TrialState.FAIL)
                continue
            handle = optuna.Trial(self.study, won)
            try:
                self._own(handle)
                # checked after our claim: of two simultaneous claims, at least one sees the other and steps back
                if any(tid != won for tid in self.holders(t.user_attrs["key"])):
                    self.heartbeats.stop(won)
                    handle.set_user_attr("dropped", "duplicate")
                    q.set_state(won, TrialState.FAIL)
                    continue
            except KeyboardInterrupt:  # Ctrl-C or SIGTERM before the trial ran: recorded, so a rerun redoes it
                self.interrupt(handle)
                raise
            a = t.user_attrs
            return handle, spec.Trial(a["key"], Variant.from_dict(a["variant"]), int(a["seed"]))

    # --- a search's trials: asked of its sampler ----------------------------------------------

    def ask(self) -> optuna.Trial:
        """A new trial from the study's sampler (a queued one first, as Optuna's ``ask``)."""
        with warnings.catch_warnings():  # Optuna warns of heartbeats outside optimize(): ours come from here
            warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed")
            return self.study.ask()

    def drop(self, handle: optuna.Trial, why: str) -> None:
        """Close an asked trial unrun (FAIL, ``dropped``): it speaks for no point and counts for nothing."""
        handle.set_user_attr("dropped", why)
        self.study.tell(handle, state=TrialState.FAIL)

    def repeat(self, handle: optuna.Trial, key: str, prev: optuna.trial.FrozenTrial) -> int:
        """Close an asked trial with the values of ``prev``, which measured its point before;
        returns the number of the trial that first measured it."""
        first = prev.user_attrs.get("same_as", prev.number)
        handle.set_user_attr("key", key)
        handle.set_user_attr("same_as", first)
        if prev.state == TrialState.COMPLETE:
            self.study.tell(handle, prev.values if len(prev.values) > 1 else prev.values[0])
        else:
            self.study.tell(handle, state=TrialState.PRUNED)
        return first

    def report(self, handle: optuna.Trial, value: float, step: int, *, prune: bool = False) -> bool:
        """Record ``value`` (an epoch's top-1) as the trial's intermediate value at ``step`` (its
        epoch, counted from 1), in the storage at once: optuna-dashboard draws a running trial's
        curve from these. With ``prune`` (a study that has a pruner), whether the pruner says to
        stop; else False. Every trial reports, one write per epoch; only pruned studies ask."""
        if self._multi_objective:  # Trial.report refuses multi-objective studies, their storage does not
            self.queries.report(self.queries.id_of(handle), step, value)
            return False
        handle.report(value, step)  # Optuna's own path: its pruner reads the values from the handle
        return prune and handle.should_prune()

    @cached_property
    def _multi_objective(self) -> bool:
        return len(self.study.directions) > 1

    # --- running and recording ------------------------------------------------------------

    def adopt(self, handle: optuna.Trial, trial: spec.Trial) -> None:
        """Sign a trial a sampler made (``ask``) with its point and this worker."""
        self._own(handle)
        for k, v in _attrs(trial).items():
            handle.set_user_attr(k, v)

    def _own(self, handle: optuna.Trial) -> None:
        self.heartbeats.start(self.queries.id_of(handle))
        handle.set_user_attr("worker", WORKER)
        handle.set_user_attr("started_at", time.time())

    def interrupt(self, handle: optuna.Trial, record: dict[str, Any] | None = None) -> None:
        """Record the trial ``handle`` as interrupted (Ctrl-C, SIGTERM): its rerun redoes it."""
        self.finish(handle, {**(record or {}), "status": Status.INTERRUPTED.value, "error": "interrupted"}, [])

    def finish(self, handle: optuna.Trial, record: dict[str, Any], objectives: str | list[str]) -> None:
        """Store ``record``; its ``status`` picks the trial state (complete; diverged or pruned:
        PRUNED; failed or interrupted: FAIL) and ``objectives`` (record columns) its values.
        Bulky per-block details (``DETAILS``) get their own attributes: reports load them
        only for the trials they draw."""
        self.heartbeats.stop(self.queries.id_of(handle))
        cols = [objectives] if isinstance(objectives, str) else list(objectives)
        values = [record.get(c) for c in cols]
        if record["status"] == Status.COMPLETE and not all(isinstance(v, (int, float)) and math.isfinite(v)
                                                           for v in values):
            missing = ", ".join(c for c, v in zip(cols, values, strict=True) if not isinstance(v, (int, float)))
            record = {**record, "status": Status.FAILED.value, "error": f"objective not measured: {missing}"}
        for key in DETAILS:
            if key in record:
                handle.set_user_attr(key, record[key])
        handle.set_user_attr("record", {k: v for k, v in record.items() if k not in DETAILS})
        status = record["status"]
        if status == Status.COMPLETE:
            self.study.tell(handle, values if len(values) > 1 else values[0])
        elif status in (Status.DIVERGED, Status.PRUNED):
            self.study.tell(handle, state=TrialState.PRUNED)
        else:  # interrupted: the record says so (``interrupted``)
            self.study.tell(handle, state=TrialState.FAIL)


def _attrs(trial: spec.Trial) -> dict[str, Any]:
    return {"key": trial.key, "variant": trial.variant.to_dict(), "seed": trial.seed}
