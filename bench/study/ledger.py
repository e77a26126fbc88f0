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

Two helpers keep the class readable: ``RdbQueries`` (SQL fast paths over Optuna's RDB
tables, each with the API as fallback) and ``Heartbeats`` (a daemon thread per running trial).
"""
from __future__ import annotations

import json
import math
import os
import socket
import threading
import time
import warnings
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Iterable

import optuna
from optuna.trial import TrialState
from sqlalchemy import bindparam, text

from bench import spec
from bench.errors import BenchError, SpecError
from bench.schema import DETAILS
from bench.variant import Variant
from bench.study.storage import HEARTBEAT, open_study

WORKER = f"{socket.gethostname()}:{os.getpid()}"
DONE = (TrialState.COMPLETE, TrialState.PRUNED)  # PRUNED: diverged, a finished result
RANK = {TrialState.COMPLETE: 3, TrialState.PRUNED: 3, TrialState.RUNNING: 2, TrialState.WAITING: 1}


class RdbQueries:
    """SQL fast paths over Optuna's RDB tables (their schema has been stable since Optuna 2):
    one query instead of building thousands of FrozenTrials. Each returns None on any error
    (a future schema), and the ledger then takes the API path; tests hold the two equal."""

    def __init__(self, engine: Any, study_id: int) -> None:
        self.engine, self.study_id = engine, study_id

    @classmethod
    def of(cls, study: optuna.Study) -> RdbQueries | None:
        """The queries for ``study``, or None where its storage is not a database."""
        backend = getattr(study._storage, "_backend", study._storage)  # behind Optuna's cache, if any
        return cls(backend.engine, study._study_id) if isinstance(backend, optuna.storages.RDBStorage) else None

    def _rows(self, query: Any, params: dict[str, Any]) -> list[Any] | None:
        try:
            with self.engine.connect() as con:
                return con.execute(query, {"sid": self.study_id, **params}).all()
        except Exception:
            return None

    def waiting(self, limit: int = 16) -> list[int] | None:
        """Ids of the first ``limit`` queued trials, by number."""
        rows = self._rows(text("SELECT trial_id FROM trials WHERE study_id = :sid AND state = 'WAITING' "
                               "ORDER BY number LIMIT :n"), {"n": limit})
        return None if rows is None else [r[0] for r in rows]

    def holders(self, key: str) -> list[int] | None:
        """Ids of the running or done, not dropped, trials of ``key`` (a claim must not read
        every trial of a 10,000-trial study)."""
        rows = self._rows(text(
            "SELECT t.trial_id FROM trials t JOIN trial_user_attributes a ON a.trial_id = t.trial_id "
            "WHERE t.study_id = :sid AND t.state IN ('RUNNING', 'COMPLETE', 'PRUNED') "
            "AND a.key = 'key' AND a.value_json = :key AND NOT EXISTS (SELECT 1 FROM "
            "trial_user_attributes d WHERE d.trial_id = t.trial_id AND d.key = 'dropped')"), {"key": json.dumps(key)})
        return None if rows is None else [r[0] for r in rows]

    def attrs(self, attrs: tuple[str, ...], numbers: list[int] | None = None) -> list[tuple[int, dict[str, Any]]] | None:
        """(number, {attr: value}) of finished trials, by number: 10x faster than the API."""
        query = ("SELECT t.number, a.key, a.value_json FROM trials t "
                 "JOIN trial_user_attributes a ON a.trial_id = t.trial_id "
                 "WHERE t.study_id = :sid AND t.state IN ('COMPLETE', 'PRUNED', 'FAIL') AND a.key IN :attrs")
        params: dict[str, Any] = {"attrs": list(attrs)}
        binds = [bindparam("attrs", expanding=True)]
        if numbers is not None:
            query += " AND t.number IN :numbers"
            params["numbers"] = list(numbers)
            binds.append(bindparam("numbers", expanding=True))
        rows = self._rows(text(query + " ORDER BY t.number").bindparams(*binds), params)
        if rows is None:
            return None
        by_number: dict[int, dict[str, Any]] = {}
        for number, attr, value in rows:
            by_number.setdefault(number, {})[attr] = json.loads(value)
        return sorted(by_number.items())


class Heartbeats:
    """Heartbeats of the trials this process runs: one at once (from then on a silence means
    death), then one per interval in a daemon thread until stopped. Storages without
    heartbeats (journal files) get none: a dead worker there is noticed by its pid."""

    def __init__(self, storage: Any) -> None:
        self.storage = storage
        get = getattr(storage, "get_heartbeat_interval", None)
        self.interval = get() if get else None
        self._stops: dict[int, threading.Event] = {}

    def start(self, trial_id: int) -> None:
        if not self.interval:
            return
        self.storage.record_heartbeat(trial_id)
        stop = self._stops[trial_id] = threading.Event()

        def run() -> None:
            while not stop.wait(self.interval):
                try:
                    self.storage.record_heartbeat(trial_id)
                except Exception:  # a database hiccup: the next beat may get through
                    pass
        threading.Thread(target=run, name=f"bench-heartbeat-{trial_id}", daemon=True).start()

    def stop(self, trial_id: int) -> None:
        stop = self._stops.pop(trial_id, None)
        if stop is not None:
            stop.set()

    def stop_all(self) -> None:
        """What a process that dies does: no more beats for any of its trials."""
        for trial_id in list(self._stops):
            self.stop(trial_id)


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
    return record is None or record.get("status") == "interrupted" or bool(trial.user_attrs.get("interrupted"))


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
    """The sweep's study: which trials are done, and where each new one is recorded."""

    def __init__(self, study: optuna.Study) -> None:
        self.study = study
        self.sql = RdbQueries.of(study)  # None: the API path (tests set it so to compare)
        self.heartbeats = Heartbeats(study._storage)

    @classmethod
    def open(cls, url: str, name: str, *, create: bool = False, direction: str | list[str] = "maximize",
             heartbeat: tuple[int, int] = HEARTBEAT) -> Ledger:
        return cls(open_study(url, name, create=create, direction=direction, heartbeat=heartbeat))

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
        return Ledger(optuna.load_study(study_name=self.study.study_name, storage=self.study._storage,
                                        sampler=sampler, pruner=pruner))

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
        if stored != sweep.settings():
            self.study.set_user_attr("settings", sweep.settings())
        self.study.set_user_attr("spec", sweep.to_dict())

    def stored_sweep(self) -> spec.Sweep:
        """The sweep the study was made from (its stored spec), for a worker that has no file."""
        stored = self.spec
        if stored is None:
            raise BenchError(f"study {self.study.study_name!r} has no bench spec: start it with `bench run SWEEP` "
                             "(or `bench study SPEC`) first")
        raw = {k: stored[k] for k in ("name", "description", "data", "model", "train", "profile", "collapse",
                                      "search", "study") if stored.get(k) is not None or k in ("train", "collapse")}
        if "search" in raw:
            raw["seeds"] = stored["seeds"]
        return spec.parse(raw, f"study {stored['name']!r}", default_name=stored["name"])

    def side_by_side(self) -> dict[str, Any] | None:
        """The last side-by-side timing pass (bench.timing) over the study's variants."""
        return self.study.user_attrs.get("side_by_side")

    def save_side_by_side(self, result: dict[str, Any]) -> None:
        self.study.set_user_attr("side_by_side", result)

    # --- reading ------------------------------------------------------------------------

    def trials(self, states: tuple[TrialState, ...] | None = None) -> list[optuna.trial.FrozenTrial]:
        """The study's trials in number order, without dropped duplicate claims."""
        return [t for t in self.study._storage.get_all_trials(self.study._study_id, deepcopy=False, states=states)
                if not t.user_attrs.get("dropped")]

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
        for t in self.study._storage.get_all_trials(self.study._study_id, deepcopy=False):
            a = t.user_attrs
            if "key" in a and "variant" in a and a["key"] not in seen:
                seen[a["key"]] = spec.Trial(a["key"], Variant.from_dict(a["variant"]), int(a.get("seed", 0)))
        return list(seen.values())

    def holders(self, key: str) -> list[int]:
        """Ids of the running or done (not dropped) trials of ``key``."""
        found = self.sql.holders(key) if self.sql else None
        if found is None:
            found = [t._trial_id for t in self.trials((TrialState.RUNNING, *DONE)) if t.user_attrs.get("key") == key]
        return found

    def records(self) -> list[dict[str, Any]]:
        """The newest finished record of each key, with its trial number (the report's rows)."""
        rows = self.sql.attrs(("key", "record")) if self.sql else None
        if rows is None:
            rows = ((t.number, t.user_attrs.get("key"), t.user_attrs.get("record"))
                    for t in self.study.get_trials(deepcopy=False, states=(*DONE, TrialState.FAIL)))
        else:
            rows = ((n, a.get("key"), a.get("record")) for n, a in rows)
        latest: dict[str, dict[str, Any]] = {}
        for number, key, record in rows:  # in trial order: the newest wins, a failure never over a result
            if key is None or record is None or record.get("status") == "interrupted":
                continue
            if record.get("status") == "failed" and latest.get(key, {}).get("status") in ("complete", "diverged"):
                continue
            latest[key] = {"trial": number, "key": key, **record}
        return list(latest.values())

    def details(self, numbers: list[int], attr: str = "collapse") -> dict[int, Any]:
        """The ``attr`` detail (see ``DETAILS``) of the trials numbered ``numbers``."""
        wanted = set(numbers)
        if not wanted:
            return {}
        rows = self.sql.attrs((attr,), numbers=sorted(wanted)) if self.sql else None
        if rows is None:
            return {t.number: t.user_attrs[attr] for t in self.study.get_trials(deepcopy=False)
                    if t.number in wanted and attr in t.user_attrs}
        return {n: a[attr] for n, a in rows if attr in a}

    # --- the queue ----------------------------------------------------------------------

    def _grace(self) -> float:
        return float(getattr(self.study._storage, "grace_period", None) or HEARTBEAT[1])

    def close_dead(self) -> int:
        """Close (FAIL, no record: interrupted) every RUNNING trial whose worker died: a dead
        pid on this host, a heartbeat silent past the grace period, a claim never signed."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna.storages.fail_stale_trials(self.study)  # RUNNING, heartbeat silent: its worker died
        closed = 0
        for t in self.trials((TrialState.RUNNING,)):
            if not _alive(t, self._grace()):
                try:
                    closed += self.study._storage.set_trial_state_values(t._trial_id, TrialState.FAIL)
                except optuna.exceptions.UpdateFinishedTrialError:
                    pass  # another worker closed it first
        return closed

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
        storage = self.study._storage
        while True:
            ids = self.sql.waiting() if self.sql else None
            if ids is None:  # other storages: the API (reads every waiting trial)
                ids = [t._trial_id for t in storage.get_all_trials(self.study._study_id, deepcopy=False,
                                                                   states=(TrialState.WAITING,))]
            won = None
            for tid in ids:
                try:
                    if storage.set_trial_state_values(tid, state=TrialState.RUNNING):
                        won = tid
                        break
                except optuna.exceptions.UpdateFinishedTrialError:
                    continue
            if won is None:
                if not ids:
                    return None
                continue  # all taken by others meanwhile: look again
            t = storage.get_trial(won)
            if "key" not in t.user_attrs:  # queued by something else than bench
                storage.set_trial_user_attr(won, "dropped", "not a bench trial")
                storage.set_trial_state_values(won, state=TrialState.FAIL)
                continue
            handle = optuna.Trial(self.study, won)
            self._own(handle)
            # checked after our claim: of two simultaneous claims, at least one sees the other and steps back
            if any(tid != won for tid in self.holders(t.user_attrs["key"])):
                self.heartbeats.stop(won)
                handle.set_user_attr("dropped", "duplicate")
                storage.set_trial_state_values(won, state=TrialState.FAIL)
                continue
            a = t.user_attrs
            return handle, spec.Trial(a["key"], Variant.from_dict(a["variant"]), int(a["seed"]))

    # --- running and recording ------------------------------------------------------------

    def start(self, trial: spec.Trial) -> optuna.Trial:
        """A new running trial for ``trial`` in this worker, outside the queue."""
        handle = optuna.Trial(self.study, self.study._storage.create_new_trial(self.study._study_id))
        self.adopt(handle, trial)
        return handle

    def adopt(self, handle: optuna.Trial, trial: spec.Trial) -> None:
        """Sign a trial a sampler made (``study.ask()``) with its point and this worker."""
        self._own(handle)
        for k, v in _attrs(trial).items():
            handle.set_user_attr(k, v)

    def _own(self, handle: optuna.Trial) -> None:
        self.heartbeats.start(handle._trial_id)
        handle.set_user_attr("worker", WORKER)
        handle.set_user_attr("started_at", time.time())

    def finish(self, handle: optuna.Trial, record: dict[str, Any], objectives: str | list[str]) -> None:
        """Store ``record``; its ``status`` picks the trial state (complete; diverged or pruned:
        PRUNED; failed or interrupted: FAIL) and ``objectives`` (record columns) its values.
        Bulky per-block details (``DETAILS``) get their own attributes: reports load them
        only for the trials they draw."""
        self.heartbeats.stop(handle._trial_id)
        cols = [objectives] if isinstance(objectives, str) else list(objectives)
        values = [record.get(c) for c in cols]
        if record["status"] == "complete" and not all(isinstance(v, (int, float)) and math.isfinite(v)
                                                      for v in values):
            missing = ", ".join(c for c, v in zip(cols, values, strict=True) if not isinstance(v, (int, float)))
            record = {**record, "status": "failed", "error": f"objective not measured: {missing}"}
        for key in DETAILS:
            if key in record:
                handle.set_user_attr(key, record[key])
        handle.set_user_attr("record", {k: v for k, v in record.items() if k not in DETAILS})
        status = record["status"]
        if status == "complete":
            self.study.tell(handle, values if len(values) > 1 else values[0])
        elif status in ("diverged", "pruned"):
            self.study.tell(handle, state=TrialState.PRUNED)
        else:  # interrupted: the record says so (``interrupted``)
            self.study.tell(handle, state=TrialState.FAIL)


def _attrs(trial: spec.Trial) -> dict[str, Any]:
    return {"key": trial.key, "variant": trial.variant.to_dict(), "seed": trial.seed}
