"""How the ledger reaches its study's storage past what ``optuna.Study`` offers: one ``Queries``
interface with ``GenericQueries`` (Optuna's storage API, any storage) and ``RdbQueries`` (SQL
fast paths for SQLite and PostgreSQL, falling back to the generic path on any error), chosen
once when the ledger opens; and ``Heartbeats``, a daemon thread per running trial. The only
module that touches Optuna's internals, each place with its reason."""
from __future__ import annotations

import json
import threading
from datetime import datetime, timedelta
from typing import Any

import optuna
from optuna.trial import TrialState
from sqlalchemy import DateTime, Integer, bindparam, func, select, text

from bench.study.storage import HEARTBEAT

DONE = (TrialState.COMPLETE, TrialState.PRUNED)  # PRUNED: diverged, a finished result


class Queries:
    """The ledger's access to its study's storage, past what ``optuna.Study`` offers: the queue's
    atomic claim, per-trial writes, heartbeats, and the reads a 10,000-trial study must not make
    by building every FrozenTrial. One interface, two implementations, as Optuna's storages
    have: ``GenericQueries`` (any storage, through Optuna's storage API) and ``RdbQueries`` (SQL
    over Optuna's RDB tables). ``Queries.of`` picks one when the ledger opens; this class and
    its two children are the only code in bench that touches Optuna's internals."""

    def __init__(self, study: optuna.Study) -> None:
        self.study = study
        # optuna.Study keeps its storage and id private, but the queue needs the storage's own
        # atomic state change (Study.ask pops its queue the same way) and per-trial calls
        self.storage, self.study_id = study._storage, study._study_id

    @staticmethod
    def of(study: optuna.Study) -> Queries:
        backend = getattr(study._storage, "_backend", study._storage)  # an RDB storage sits behind Optuna's cache
        return RdbQueries(study, backend) if isinstance(backend, optuna.storages.RDBStorage) else GenericQueries(study)

    @staticmethod
    def id_of(trial: optuna.Trial | optuna.trial.FrozenTrial) -> int:
        return trial._trial_id  # the storage's trial id: Optuna keeps it private, its storage calls take it

    # --- storage calls, the same for every storage ---------------------------------------------

    def trials(self, states: tuple[TrialState, ...] | None = None) -> list[optuna.trial.FrozenTrial]:
        """Every trial in number order, dropped claims too (no copies: never change them)."""
        return self.storage.get_all_trials(self.study_id, deepcopy=False, states=states)

    def get(self, trial_id: int) -> optuna.trial.FrozenTrial:
        return self.storage.get_trial(trial_id)

    def set_attr(self, trial_id: int, key: str, value: Any) -> None:
        self.storage.set_trial_user_attr(trial_id, key, value)

    def set_state(self, trial_id: int, state: TrialState, values: list[float] | None = None) -> bool:
        """Move the trial to ``state`` (with ``values``, for COMPLETE); False when another worker
        changed it first (a finished trial, or a queued one already claimed): the storage makes
        the move atomic."""
        try:
            return self.storage.set_trial_state_values(trial_id, state=state, values=values)
        except optuna.exceptions.UpdateFinishedTrialError:
            return False

    def report(self, trial_id: int, step: int, value: float) -> None:
        """The trial's intermediate value at ``step``, written as ``Trial.report`` writes it, which
        refuses multi-objective studies (their pruners cannot use it; optuna-dashboard can)."""
        self.storage.set_trial_intermediate_value(trial_id, int(step), float(value))

    def grace(self) -> float:
        """The silence after which a claim never signed by its worker is dead."""
        return float(getattr(self.storage, "grace_period", None) or HEARTBEAT[1])

    def studies(self) -> int:
        """How many studies the storage holds."""
        return len(self.storage.get_all_studies())

    def close(self) -> None:
        """Let go of the storage's connections (before its file is removed)."""

    # --- the queries, one implementation per kind of storage --------------------------------------

    def waiting(self, limit: int = 16) -> list[int]:
        """Ids of queued trials, by number (at least the first ``limit``)."""
        raise NotImplementedError

    def holders(self, key: str) -> list[int]:
        """Ids of the running or done, not dropped, trials of ``key`` (a claim must not read
        every trial of a 10,000-trial study)."""
        raise NotImplementedError

    def attrs(self, attrs: tuple[str, ...], numbers: list[int] | None = None) -> list[tuple[int, dict[str, Any]]]:
        """(number, {attr: value}) of finished (complete, pruned, failed) trials that hold any
        of ``attrs``, by number; only those numbered ``numbers`` when given."""
        raise NotImplementedError

    def stale(self) -> list[int]:
        """Ids of running trials whose heartbeat fell silent past the grace period: their worker
        died. Storages without heartbeats have none."""
        raise NotImplementedError


class GenericQueries(Queries):
    """Any storage (journal files, and the RDB's fallback): Optuna's storage API, which builds
    a FrozenTrial of every trial it reads."""

    def waiting(self, limit: int = 16) -> list[int]:
        return [self.id_of(t) for t in self.trials((TrialState.WAITING,))]

    def holders(self, key: str) -> list[int]:
        return [self.id_of(t) for t in self.trials((TrialState.RUNNING, *DONE))
                if t.user_attrs.get("key") == key and not t.user_attrs.get("dropped")]

    def attrs(self, attrs: tuple[str, ...], numbers: list[int] | None = None) -> list[tuple[int, dict[str, Any]]]:
        wanted = None if numbers is None else set(numbers)
        out = []
        for t in self.trials((*DONE, TrialState.FAIL)):
            found = {a: t.user_attrs[a] for a in attrs if a in t.user_attrs}
            if found and (wanted is None or t.number in wanted):
                out.append((t.number, found))
        return out

    def stale(self) -> list[int]:
        """Ids of RUNNING trials whose heartbeat fell silent past the grace period (their worker
        died), as Optuna's ``fail_stale_trials`` finds them; none without heartbeats."""
        from optuna.storages._heartbeat import BaseHeartbeat, is_heartbeat_enabled  # its own finder

        storage = self.storage
        if not isinstance(storage, BaseHeartbeat) or not is_heartbeat_enabled(storage):
            return []
        return list(storage._get_stale_trial_ids(self.study_id))


class RdbQueries(GenericQueries):
    """SQL fast paths over Optuna's RDB tables (their schema has been stable since Optuna 2):
    one query instead of building thousands of FrozenTrials. On any error (a future schema) a
    query takes the generic path; tests hold the two equal."""

    def __init__(self, study: optuna.Study, backend: optuna.storages.RDBStorage) -> None:
        super().__init__(study)
        self.backend, self.engine = backend, backend.engine

    def _rows(self, query: Any, params: dict[str, Any]) -> list[Any] | None:
        try:
            with self.engine.connect() as con:
                return con.execute(query, {"sid": self.study_id, **params}).all()
        except Exception:
            return None

    def close(self) -> None:
        self.engine.dispose()

    def waiting(self, limit: int = 16) -> list[int]:
        rows = self._rows(text("SELECT trial_id FROM trials WHERE study_id = :sid AND state = 'WAITING' "
                               "ORDER BY number LIMIT :n"), {"n": limit})
        return super().waiting(limit) if rows is None else [r[0] for r in rows]

    def holders(self, key: str) -> list[int]:
        rows = self._rows(text(
            "SELECT t.trial_id FROM trials t JOIN trial_user_attributes a ON a.trial_id = t.trial_id "
            "WHERE t.study_id = :sid AND t.state IN ('RUNNING', 'COMPLETE', 'PRUNED') "
            "AND a.key = 'key' AND a.value_json = :key AND NOT EXISTS (SELECT 1 FROM "
            "trial_user_attributes d WHERE d.trial_id = t.trial_id AND d.key = 'dropped')"), {"key": json.dumps(key)})
        return super().holders(key) if rows is None else [r[0] for r in rows]

    def attrs(self, attrs: tuple[str, ...], numbers: list[int] | None = None) -> list[tuple[int, dict[str, Any]]]:
        """10x faster than the API for a report's records."""
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
            return super().attrs(attrs, numbers)
        by_number: dict[int, dict[str, Any]] = {}
        for number, attr, value in rows:
            by_number.setdefault(number, {})[attr] = json.loads(value)
        return sorted(by_number.items())

    def now(self) -> datetime:
        """The database's clock, which stamps heartbeats (tests move it on instead of sleeping)."""
        with self.engine.connect() as con:
            return con.execute(select(func.now())).scalar()

    def stale(self) -> list[int]:
        """The generic path's answer, read in one query against the database's ``now()``."""
        if not self.backend.get_heartbeat_interval():
            return []
        grace = timedelta(seconds=self.backend.grace_period or 2 * self.backend.get_heartbeat_interval())
        try:
            rows = self._rows(text(
                "SELECT t.trial_id, h.heartbeat FROM trials t JOIN trial_heartbeats h ON h.trial_id = t.trial_id "
                "WHERE t.study_id = :sid AND t.state = 'RUNNING'").columns(trial_id=Integer, heartbeat=DateTime), {})
            # as Optuna does: PostgreSQL's now() carries a time zone, the stored heartbeat none
            now = self.now().replace(tzinfo=None) if rows is not None else None
        except Exception:
            rows = None
        if rows is None:
            return super().stale()
        return [trial_id for trial_id, beat in rows if now - beat > grace]


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
