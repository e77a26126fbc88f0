"""Study storage: the sweep ledger, one Optuna study per sweep.

SQLite under ``results/<name>/study.db`` by default; any Optuna storage URL works
(PostgreSQL when several machines share a sweep). Each trial (variant × seed) is one
Optuna trial whose ``record`` user attribute holds the resolved config, the cost
figures, accuracy, versions and device: every report is rebuilt from these alone.

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
"""
from __future__ import annotations

import logging
import math
import os
import random
import socket
import threading
import time
import warnings
from datetime import datetime
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import optuna
from optuna.trial import TrialState

from bench.errors import BenchError, SpecError

WORKER = f"{socket.gethostname()}:{os.getpid()}"
DONE = (TrialState.COMPLETE, TrialState.PRUNED)  # PRUNED: diverged, a finished result
HEARTBEAT = (30, 120)  # seconds: a worker's heartbeat interval, and the silence that makes its trial stale
DETAILS = ("collapse", "init_collapse")  # per-block arrays: stored beside the record, not in it
RANK = {TrialState.COMPLETE: 3, TrialState.PRUNED: 3, TrialState.RUNNING: 2, TrialState.WAITING: 1}


def default_url(results_dir: str | Path, name: str, workers: int = 1) -> str:
    """The sweep's own storage under results_dir/name: the one already there (a journal file,
    or SQLite), else SQLite for one process and a journal file for several (SQLite's locking
    does not serve concurrent writers)."""
    folder = Path(results_dir) / name
    if (folder / "study.journal").is_file() or (workers > 1 and not (folder / "study.db").is_file()):
        return f"journal:{folder / 'study.journal'}"
    return f"sqlite:///{folder / 'study.db'}"


def _quiet_optuna() -> None:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    logging.getLogger("sqlalchemy").setLevel(logging.ERROR)


def open_study(url: str, name: str, *, create: bool, direction: str = "maximize",
               heartbeat: tuple[int, int] = HEARTBEAT) -> optuna.Study:
    """Load (or with ``create`` make) the study ``name``; a dead database is one clear error.

    ``heartbeat``: (interval, grace period) in seconds. A running trial's worker records a
    heartbeat every interval; one silent for the grace period is stale (its worker died)."""
    _quiet_optuna()
    if url.startswith("journal:"):
        return _open_journal(url, name, create=create, direction=direction)
    if "://" not in url:
        raise BenchError(f"storage {url!r}: expected a database URL (sqlite:///path/study.db, "
                         "postgresql://user:password@host/db) or journal:PATH (a journal file)")
    if create and url.startswith("sqlite:///"):
        Path(url[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
    elif not create and url.startswith("sqlite:///") and not Path(url[len("sqlite:///"):]).is_file():
        raise BenchError(f"no study database at {url[len('sqlite:///'):]} (run `bench run` on the sweep first, "
                         "or pass --storage / --results)")
    for attempt in range(6):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                storage = optuna.storages.RDBStorage(url, heartbeat_interval=heartbeat[0],
                                                     grace_period=heartbeat[1])
            return _create_or_load(storage, name, create, direction)
        except KeyError:
            names = ", ".join(s.study_name for s in optuna.get_all_study_summaries(storage)) or "none"
            raise BenchError(f"no study named {name!r} in {safe_url(url)} (studies there: {names})") from None
        except (ImportError, ModuleNotFoundError) as err:
            raise BenchError(f"storage {safe_url(url)}: database driver missing ({err}); for PostgreSQL: "
                             "pip install 'psycopg[binary]'") from None
        except Exception as err:  # sqlalchemy's OperationalError & co: unreachable, locked, not a database
            text = str(err)
            if attempt < 5 and any(m in text for m in RACES):  # workers starting at once: try again
                time.sleep(0.2 + random.random() * (attempt + 1))
                continue
            first = text.strip().splitlines()[0] if text.strip() else type(err).__name__
            password = _password(url)
            if password:
                first = first.replace(password, "***")
            raise BenchError(f"cannot open study storage {safe_url(url)}: {first}") from None
    raise AssertionError("unreachable")


# several workers creating the tables or the study at the same moment: harmless, retried
RACES = ("duplicate key", "already exists", "UniqueViolation", "database is locked", "IntegrityError")


def _password(url: str) -> str:
    rest = url.partition("://")[2]
    creds = rest.split("@", 1)[0] if "@" in rest else ""
    return creds.split(":", 1)[1] if ":" in creds else ""


def _create_or_load(storage: Any, name: str, create: bool, direction: str | list[str]) -> optuna.Study:
    if create:
        many = isinstance(direction, (list, tuple))
        return optuna.create_study(storage=storage, study_name=name, load_if_exists=True,
                                   **({"directions": direction} if many else {"direction": direction}))
    return optuna.load_study(study_name=name, storage=storage)


def _open_journal(url: str, name: str, *, create: bool, direction: str | list[str]) -> optuna.Study:
    """A journal file (``journal:PATH``): an append-only log that several processes on one
    machine (or on a shared file system) can write at once. It has no heartbeats: a dead
    worker is noticed on its own host only (PostgreSQL notices it anywhere)."""
    path = Path(url[len("journal:"):]).expanduser()
    if not create and not path.is_file():
        raise BenchError(f"no journal file at {path} (run `bench run` on the sweep first, or pass --storage)")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        from optuna.storages.journal import JournalFileBackend
        storage = optuna.storages.JournalStorage(JournalFileBackend(str(path)))
        return _create_or_load(storage, name, create, direction)
    except KeyError:
        names = ", ".join(s.study_name for s in optuna.get_all_study_summaries(storage)) or "none"
        raise BenchError(f"no study named {name!r} in {url} (studies there: {names})") from None
    except OSError as err:
        raise BenchError(f"cannot open journal file {path}: {err.strerror or err}") from None


def safe_url(url: str) -> str:
    """The URL without its password."""
    scheme, sep, rest = url.partition("://")
    if "@" in rest and ":" in rest.split("@", 1)[0]:
        user = rest.split("@", 1)[0].split(":", 1)[0]
        return f"{scheme}{sep}{user}:***@{rest.split('@', 1)[1]}"
    return url


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
    todo: list[Any] = field(default_factory=list)  # spec.Trial, in sweep order
    done: int = 0
    failed_skipped: int = 0
    interrupted: int = 0
    running_elsewhere: int = 0
    queued: int = 0  # waiting in the study's queue for a worker


class Ledger:
    """The sweep's study: which trials are done, and where each new one is recorded."""

    def __init__(self, study: optuna.Study) -> None:
        self.study = study
        self._beats: dict[int, threading.Event] = {}  # trial id -> stop signal of its heartbeat

    @property
    def spec(self) -> dict[str, Any] | None:
        return self.study.user_attrs.get("spec")

    def bind(self, sweep) -> None:
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

    def _trials(self, states: tuple[TrialState, ...] | None = None) -> list[optuna.trial.FrozenTrial]:
        """The study's trials in number order, without dropped duplicate claims."""
        return [t for t in self.study._storage.get_all_trials(self.study._study_id, deepcopy=False, states=states)
                if not t.user_attrs.get("dropped")]

    def latest(self) -> dict[str, optuna.trial.FrozenTrial]:
        """The trial that speaks for each key: its newest finished one (complete or diverged),
        else the one running, else the one queued, else its newest (failed or interrupted)."""
        out: dict[str, optuna.trial.FrozenTrial] = {}
        for t in self._trials():  # in number order
            key = t.user_attrs.get("key")
            if key is not None and (key not in out or RANK.get(t.state, 0) >= RANK.get(out[key].state, 0)):
                out[key] = t
        return out

    def _grace(self) -> float:
        storage = self.study._storage
        return float(getattr(storage, "grace_period", None) or HEARTBEAT[1])

    def close_dead(self) -> int:
        """Close (FAIL, no record: interrupted) every RUNNING trial whose worker died: a dead
        pid on this host, a heartbeat silent past the grace period, a claim never signed."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna.storages.fail_stale_trials(self.study)  # RUNNING, heartbeat silent: its worker died
        closed = 0
        for t in self._trials((TrialState.RUNNING,)):
            if not _alive(t, self._grace()):
                try:
                    closed += self.study._storage.set_trial_state_values(t._trial_id, TrialState.FAIL)
                except optuna.exceptions.UpdateFinishedTrialError:
                    pass  # another worker closed it first
        return closed

    def known_trials(self) -> list[tuple[str, dict[str, Any], int]]:
        """(key, variant, seed) of every point ever queued in the study, in queue order."""
        seen: dict[str, tuple[str, dict[str, Any], int]] = {}
        # dropped duplicate claims too: when two workers drop theirs at once, only they remember the point
        for t in self.study._storage.get_all_trials(self.study._study_id, deepcopy=False):
            a = t.user_attrs
            if "key" in a and "variant" in a and a["key"] not in seen:
                seen[a["key"]] = (a["key"], a["variant"], a.get("seed", 0))
        return list(seen.values())

    def plan(self, trials: Iterable[Any], retry_failed: bool = False) -> Plan:
        """Which of ``trials`` (objects with a ``key``) still need a run. Closes dead workers'
        trials first, so their points count as interrupted and go to ``todo`` again."""
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
            elif prev.user_attrs.get("interrupted") or "record" not in prev.user_attrs:  # never finished
                plan.interrupted += 1
                plan.todo.append(trial)
            elif retry_failed:
                plan.todo.append(trial)
            else:
                plan.failed_skipped += 1
        return plan

    def enqueue(self, trials: Iterable[Any]) -> int:
        """Queue each trial (``key``, ``variant``, ``seed``) as a WAITING trial for any worker."""
        n = 0
        for t in trials:
            self.study.enqueue_trial({}, user_attrs=self._attrs(t))
            n += 1
        return n

    @staticmethod
    def _attrs(trial: Any) -> dict[str, Any]:
        return {"key": trial.key, "variant": trial.variant.to_dict(), "seed": trial.seed}

    def claim(self) -> tuple[optuna.Trial, dict[str, Any]] | None:
        """Take the next queued trial: (handle, its user attributes), or None when the queue is
        empty. The move WAITING → RUNNING is atomic in the storage, so two workers never
        take the same queue entry; an entry whose key another live or finished trial holds
        (queued twice in a race) is dropped."""
        storage = self.study._storage
        while True:
            ids = self._waiting_sql()
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
            handle = optuna.Trial(self.study, t._trial_id)
            self._own(handle)
            if self._held_elsewhere(t.user_attrs["key"], t._trial_id):
                self._stop_beat(t._trial_id)
                handle.set_user_attr("dropped", "duplicate")
                storage.set_trial_state_values(t._trial_id, state=TrialState.FAIL)
                continue
            return handle, dict(t.user_attrs)

    def _waiting_sql(self, limit: int = 16) -> list[int] | None:
        """Ids of the first ``limit`` queued trials, by number, in one query; None for other
        storages or on error."""
        backend = getattr(self.study._storage, "_backend", self.study._storage)
        if not isinstance(backend, optuna.storages.RDBStorage):
            return None
        from sqlalchemy import text
        query = text("SELECT trial_id FROM trials WHERE study_id = :sid AND state = 'WAITING' "
                     "ORDER BY number LIMIT :n")
        try:
            with backend.engine.connect() as con:
                return [row[0] for row in con.execute(query, {"sid": self.study._study_id, "n": limit})]
        except Exception:
            return None

    def _held_elsewhere(self, key: str, trial_id: int) -> bool:
        """Whether another trial of ``key`` is running or done (checked after our claim: of
        two simultaneous claims, at least one sees the other and steps back)."""
        holders = self._holders_sql(key)
        if holders is None:
            holders = [t._trial_id for t in self._trials((TrialState.RUNNING, *DONE)) if t.user_attrs.get("key") == key]
        return any(tid != trial_id for tid in holders)

    def _holders_sql(self, key: str) -> list[int] | None:
        """Ids of the running or done, not dropped, trials of ``key`` in one query (a claim must
        not read every trial of a 10,000-trial study); None for other storages or on error."""
        backend = getattr(self.study._storage, "_backend", self.study._storage)
        if not isinstance(backend, optuna.storages.RDBStorage):
            return None
        import json

        from sqlalchemy import text
        query = text("SELECT t.trial_id FROM trials t JOIN trial_user_attributes a ON a.trial_id = t.trial_id "
                     "WHERE t.study_id = :sid AND t.state IN ('RUNNING', 'COMPLETE', 'PRUNED') "
                     "AND a.key = 'key' AND a.value_json = :key AND NOT EXISTS (SELECT 1 FROM "
                     "trial_user_attributes d WHERE d.trial_id = t.trial_id AND d.key = 'dropped')")
        try:
            with backend.engine.connect() as con:
                return [row[0] for row in con.execute(query, {"sid": self.study._study_id, "key": json.dumps(key)})]
        except Exception:  # a future schema: the API path
            return None

    def start(self, trial: Any) -> optuna.Trial:
        """A new running trial for ``trial`` in this worker, outside the queue."""
        storage = self.study._storage
        handle = optuna.Trial(self.study, storage.create_new_trial(self.study._study_id))
        for k, v in self._attrs(trial).items():
            handle.set_user_attr(k, v)
        self._own(handle)
        return handle

    def adopt(self, handle: optuna.Trial, trial: Any) -> None:
        """Sign a trial a sampler made (``study.ask()``) with its point and this worker."""
        self._own(handle)
        for k, v in self._attrs(trial).items():
            handle.set_user_attr(k, v)

    def _own(self, handle: optuna.Trial) -> None:
        self._beat(handle._trial_id)  # the first beat at once: from now a silence means death
        handle.set_user_attr("worker", WORKER)
        handle.set_user_attr("started_at", time.time())

    def _beat(self, trial_id: int) -> None:
        """Record a heartbeat for ``trial_id`` now and every interval until ``finish``."""
        storage = self.study._storage
        interval = storage.get_heartbeat_interval() if hasattr(storage, "get_heartbeat_interval") else None
        if not interval:
            return
        storage.record_heartbeat(trial_id)
        stop = self._beats[trial_id] = threading.Event()

        def run() -> None:
            while not stop.wait(interval):
                try:
                    storage.record_heartbeat(trial_id)
                except Exception:  # a database hiccup: the next beat may get through
                    pass
        threading.Thread(target=run, name=f"bench-heartbeat-{trial_id}", daemon=True).start()

    def _stop_beat(self, trial_id: int) -> None:
        stop = self._beats.pop(trial_id, None)
        if stop is not None:
            stop.set()

    def finish(self, handle: optuna.Trial, record: dict[str, Any], objectives: str | list[str]) -> None:
        """Store ``record``; its ``status`` picks the trial state (complete; diverged or pruned:
        PRUNED; failed or interrupted: FAIL) and ``objectives`` (record columns) its values.
        Bulky per-block details (``DETAILS``) get their own attributes: reports load them
        only for the trials they draw."""
        self._stop_beat(handle._trial_id)
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
        else:
            if status == "interrupted":
                handle.set_user_attr("interrupted", True)
            self.study.tell(handle, state=TrialState.FAIL)

    def records(self) -> list[dict[str, Any]]:
        """The newest finished record of each key, with its trial number (the report's rows)."""
        rows = self._attrs_sql(("key", "record"))
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
        rows = self._attrs_sql((attr,), numbers=sorted(wanted))
        if rows is None:
            return {t.number: t.user_attrs[attr] for t in self.study.get_trials(deepcopy=False)
                    if t.number in wanted and attr in t.user_attrs}
        return {n: a[attr] for n, a in rows if attr in a}

    def _attrs_sql(self, attrs: tuple[str, ...], numbers: list[int] | None = None
                   ) -> list[tuple[int, dict[str, Any]]] | None:
        """(number, {attr: value}) of finished trials in one query: 10x faster than building
        10,000 FrozenTrials. Reads Optuna's RDB tables directly (their schema has been
        stable since Optuna 2); None, and the API path, for other storages or on any error.
        A test holds this to the API path."""
        backend = getattr(self.study._storage, "_backend", self.study._storage)
        if not isinstance(backend, optuna.storages.RDBStorage):
            return None
        import json

        from sqlalchemy import bindparam, text
        query = ("SELECT t.number, a.key, a.value_json FROM trials t "
                 "JOIN trial_user_attributes a ON a.trial_id = t.trial_id "
                 "WHERE t.study_id = :sid AND t.state IN ('COMPLETE', 'PRUNED', 'FAIL') AND a.key IN :attrs")
        params: dict[str, Any] = {"sid": self.study._study_id, "attrs": list(attrs)}
        binds = [bindparam("attrs", expanding=True)]
        if numbers is not None:
            query += " AND t.number IN :numbers"
            params["numbers"] = list(numbers)
            binds.append(bindparam("numbers", expanding=True))
        try:
            with backend.engine.connect() as con:
                result = con.execute(text(query + " ORDER BY t.number").bindparams(*binds), params).all()
        except Exception:  # a future schema: fall back to the API
            return None
        by_number: dict[int, dict[str, Any]] = {}
        for number, attr, value in result:
            by_number.setdefault(number, {})[attr] = json.loads(value)
        return sorted(by_number.items())
