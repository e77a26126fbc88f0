"""Study storage: opening the Optuna storage a sweep's ledger lives in (``bench.ledger``).

SQLite under ``results/<name>/study.db`` by default; a journal file for several local
workers; any Optuna storage URL (PostgreSQL when several machines share a sweep). A dead
database, a missing driver or an unknown study is one clear error, with any password masked.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import random
import re
import sqlite3
import time
import warnings
from pathlib import Path
from typing import Any

import optuna

from bench import console
from bench.errors import BenchError, first_line

HEARTBEAT = (30, 120)  # seconds: a worker's heartbeat interval, and the silence that makes its trial stale


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
    if url.startswith("sqlite:///"):
        _check_sqlite(Path(url[len("sqlite:///"):]), create)
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
            first = explain(err) or first_line(text) or type(err).__name__
            for secret in _secrets(url):
                first = first.replace(secret, "***")
            raise BenchError(f"cannot open study storage {safe_url(url)}: {first}") from None
    raise AssertionError("unreachable")


# several workers creating the tables or the study at the same moment: harmless, retried
RACES = ("duplicate key", "already exists", "UniqueViolation", "database is locked", "IntegrityError")


def _check_sqlite(path: Path, create: bool) -> None:
    """Before Optuna touches an SQLite file: its folder exists (bench makes only its own
    results folders), and a file opened for reading is a study database (reading never
    writes: Optuna would create its tables in any file it opens)."""
    if create:
        if not path.parent.is_dir():
            raise BenchError(f"folder {path.parent} does not exist (for the study database {path.name}); "
                             "create it, or leave out --storage to use the results folder")
        if not path.is_file():
            return
    elif not path.is_file():
        raise BenchError(f"no study database at {path} (run `bench run` on the sweep first, "
                         "or pass --storage / --results)")
    try:
        with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as con:
            tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    except sqlite3.DatabaseError as err:
        raise BenchError(f"cannot open study storage sqlite:///{path}: {err}") from None
    if tables and "studies" not in tables:
        raise BenchError(f"{path} is an SQLite database, but not a study's (no Optuna tables); "
                         "left as it was")
    if not tables and not create:
        raise BenchError(f"{path} holds no study (an empty database); left as it was")


# what SQLite says, under the wrappers of sqlalchemy and Optuna
SQLITE_CAUSES = ("database or disk is full", "attempt to write a readonly database", "database disk image is malformed",
                 "file is not a database", "unable to open database file", "disk I/O error")


def explain(err: BaseException) -> str | None:
    """The storage's own reason behind ``err`` (Optuna reports SQLite's as "e.g. exceeding
    max length"), found in its chain of causes; None when there is none to tell."""
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        text = str(err)
        for cause in SQLITE_CAUSES:
            if cause in text:
                return cause
        err = err.__cause__ or err.__context__
    return None


def _secrets(url: str) -> list[str]:
    """The password of ``url``, in its user info or its query string, to mask in messages."""
    rest = url.partition("://")[2]
    netloc, _, tail = rest.partition("/")
    out = []
    if "@" in netloc:  # an unencoded '@' in the password: the host follows the last one
        creds = netloc.rpartition("@")[0]
        if ":" in creds:
            out.append(creds.split(":", 1)[1])
    out += [m for m in re.findall(r"(?i)password=([^&]*)", tail) if m]
    return out


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
    if not path.parent.is_dir():
        raise BenchError(f"folder {path.parent} does not exist (for the journal file {path.name}); "
                         "create it, or leave out --storage to use the results folder")
    try:
        from optuna.storages.journal import JournalFileBackend  # on use: only journal files need it
        if path.is_file():
            repair_journal(path)
        storage = optuna.storages.JournalStorage(JournalFileBackend(str(path)))
        return _create_or_load(storage, name, create, direction)
    except KeyError:
        names = ", ".join(s.study_name for s in optuna.get_all_study_summaries(storage)) or "none"
        raise BenchError(f"no study named {name!r} in {url} (studies there: {names})") from None
    except OSError as err:
        raise BenchError(f"cannot open journal file {path}: {err.strerror or err}") from None


def repair_journal(path: Path) -> int:
    """Set aside a torn tail (a write cut by a full disk or a crash) before anything is
    appended: from the first line that is not a whole JSON record to the end, into
    ``PATH.torn-<time>`` beside it (kept, never deleted), under the journal's own lock.
    Returns the bytes set aside (0: the journal was whole) and says so on stderr."""
    from optuna.storages.journal import JournalFileSymlinkLock  # the lock JournalFileBackend takes

    data = path.read_bytes()
    cut = _torn_at(data)
    if cut is None:
        return 0
    lock = JournalFileSymlinkLock(str(path))
    lock.acquire()
    try:
        data = path.read_bytes()  # again, under the lock: another worker may have repaired it
        cut = _torn_at(data)
        if cut is None:
            return 0
        side = path.with_name(f"{path.name}.torn-{time.strftime('%Y%m%d-%H%M%S')}")
        side.write_bytes(data[cut:])
        with open(path, "r+b") as f:
            f.truncate(cut)
            f.flush()
            os.fsync(f.fileno())
    finally:
        lock.release()
    lines = data[cut:].count(b"\n") + (not data.endswith(b"\n"))
    console.info(f"journal {path}: its last {len(data) - cut} bytes ({lines} line(s)) were torn, as a full disk or "
                 f"a crash leaves them; set aside in {side}, the rest of the study is intact")
    return len(data) - cut


def _torn_at(data: bytes) -> int | None:
    """The offset of the first line that is not a whole JSON record, or None."""
    start = 0
    while start < len(data):
        end = data.find(b"\n", start)
        if end == -1:  # a last line without its newline: cut mid-write
            return start
        try:
            json.loads(data[start:end])
        except ValueError:
            return start
        start = end + 1
    return None


def safe_url(url: str) -> str:
    """The URL without its password (in the user info, even with an unencoded '@', or in
    the query string)."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    netloc, slash, tail = rest.partition("/")
    if "@" in netloc:
        creds, _, host = netloc.rpartition("@")
        if ":" in creds:
            netloc = f"{creds.split(':', 1)[0]}:***@{host}"
    tail = re.sub(r"(?i)(password=)[^&]*", r"\1***", tail)
    return f"{scheme}{sep}{netloc}{slash}{tail}"
