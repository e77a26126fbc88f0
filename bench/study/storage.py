"""Study storage: opening the Optuna storage a sweep's ledger lives in (``bench.study.ledger``).

SQLite under ``results/<name>/study.db`` by default; a journal file for several local
workers; any Optuna storage URL (PostgreSQL when several machines share a sweep). A dead
database, a missing driver or an unknown study is one clear error. A storage URL is shown
to people only through ``safe_url`` (its password masked), and a driver's message only
through ``scrub`` (any form of the password masked). A file that is not a journal is
never written to; a journal torn in the middle loses only what depends on the torn record.
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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, quote_plus, unquote, unquote_plus

import optuna

from bench import console
from bench.errors import BenchError, first_line

HEARTBEAT = (30, 120)  # seconds: a worker's heartbeat interval, and the silence that makes its trial stale
STORAGE_ENV = "BENCH_STORAGE"  # how `bench run --workers N` hands its storage to its workers (not argv: ps shows it)


def default_url(results_dir: str | Path, name: str, workers: int = 1) -> str:
    """The sweep's own storage under results_dir/name: the one already there (a journal file,
    or SQLite), else SQLite for one process and a journal file for several (SQLite's locking
    does not serve concurrent writers)."""
    folder = Path(results_dir) / name
    if (folder / "study.journal").is_file() or (workers > 1 and not (folder / "study.db").is_file()):
        return f"journal:{folder / 'study.journal'}"
    return f"sqlite:///{folder / 'study.db'}"


def check_workers(url: str, workers: int) -> None:
    """Several local workers need a storage that serves concurrent writers: SQLite's locking
    does not (two workers can claim the same trial, and one then dies on the other's result)."""
    if workers > 1 and url.partition("://")[0].split("+")[0] == "sqlite":
        raise BenchError(f"--workers {workers} cannot share the SQLite storage {safe_url(url)}: SQLite does not "
                         "serve several writing processes (two workers can run the same trial); use a journal "
                         "file (--storage journal:PATH, the default for a new study), PostgreSQL, or --workers 1")


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
        raise BenchError(f"storage {safe_url(url)!r}: expected a database URL (sqlite:///path/study.db, "
                         "postgresql://user:password@host/db) or journal:PATH (a journal file)")
    _check_url(url)
    made: list[Path] = []
    if url.startswith("sqlite:///"):
        path = Path(url[len("sqlite:///"):])
        _check_sqlite(path, create)
        # the files SQLite would make: removed again if this open fails (a full disk leaves a 0-byte study.db)
        made = [p for p in (path, *(Path(f"{path}{s}") for s in ("-journal", "-wal", "-shm"))) if not p.exists()]
    try:
        return _open_rdb(url, name, create, direction, heartbeat)
    except BaseException:
        _remove_made(made)
        raise


def _open_rdb(url: str, name: str, create: bool, direction: str | list[str],
              heartbeat: tuple[int, int]) -> optuna.Study:
    # Optuna reads the URL as a format template ({SCHEMA_VERSION}): a brace in a password is no field
    template = url.replace("{", "{{").replace("}", "}}").replace("{{SCHEMA_VERSION}}", "{SCHEMA_VERSION}")
    for attempt in range(6):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                storage = optuna.storages.RDBStorage(template, heartbeat_interval=heartbeat[0],
                                                     grace_period=heartbeat[1])
            try:
                return _create_or_load(storage, name, create, direction)
            except KeyError:
                names = ", ".join(s.study_name for s in optuna.get_all_study_summaries(storage)) or "none"
                raise BenchError(f"no study named {name!r} in {safe_url(url)} (studies there: {names})") from None
        except BenchError:
            raise
        except (ImportError, ModuleNotFoundError) as err:
            raise BenchError(f"storage {safe_url(url)}: {_missing_driver(url, err)}") from None
        except Exception as err:  # sqlalchemy's OperationalError & co: unreachable, locked, not a database
            text = str(err)
            if attempt < 5 and any(m in text for m in RACES):  # workers starting at once: try again
                time.sleep(0.2 + random.random() * (attempt + 1))
                continue
            first = explain(err) or first_line(text) or type(err).__name__
            raise BenchError(f"cannot open study storage {safe_url(url)}: {scrub(first, url)}") from None
    raise AssertionError("unreachable")


def _remove_made(paths: list[Path]) -> None:
    """Remove the files a failed open made, where they hold nothing: another process may have
    made the same new file meanwhile, and a study database is never empty."""
    for p in paths:
        with contextlib.suppress(OSError):
            if p.is_file() and p.stat().st_size == 0:
                p.unlink()


# the module a database driver is imported as → what to install for it
DRIVERS = {"psycopg": "'psycopg[binary]'", "psycopg2": "psycopg2-binary (or use postgresql+psycopg://)",
           "MySQLdb": "mysqlclient (or use mysql+pymysql:// with pymysql)", "pymysql": "pymysql",
           "mysql": "mysql-connector-python", "mariadb": "mariadb", "pg8000": "pg8000", "asyncpg": "asyncpg",
           "oracledb": "oracledb", "cx_Oracle": "cx_Oracle", "pyodbc": "pyodbc", "pymssql": "pymssql"}


def _missing_driver(url: str, err: ImportError) -> str:
    """What to install for the driver of ``url``'s dialect: the module its import missed (Optuna
    wraps that ImportError in its own)."""
    cause: BaseException | None = err
    for _ in range(8):  # a short chain: never loop on a cycle
        if cause is None or getattr(cause, "name", None):
            break
        cause = cause.__cause__ or cause.__context__
    module = (getattr(cause, "name", None) or "").split(".")[0]
    dialect = url.partition("://")[0].split("+")[0]
    what = DRIVERS.get(module)
    how = f"pip install {what}" if what else "install the Python package that provides it"
    return f"the {dialect} database driver is missing (no module named {module or '?'!r}); {how}"


def _check_url(url: str) -> None:
    """A URL SQLAlchemy (the driver's parser) reads as written: an unencoded '@' in the password
    would make it connect elsewhere and quote the rest of the password as a host name."""
    from sqlalchemy.engine import make_url

    try:
        parsed = make_url(url)
    except Exception:  # a port that is no number (a ':' in the password), or no URL at all
        raise BenchError(f"storage {safe_url(url)}: not a database URL SQLAlchemy can read; percent-encode "
                         "'@', ':', '/' and '%' in the user name and password (%40, %3A, %2F, %25)") from None
    query_at = any("@" in m[3] for m in _QUERY.finditer(_split(url)[1]) if _is_password_key(m[2]))
    if "@" in (parsed.host or "") or query_at:
        raise BenchError(f"storage {safe_url(url)}: the password holds an unencoded '@', so the host would be "
                         "read from the password; percent-encode it as %40")


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


def _create_or_load(storage: Any, name: str, create: bool, direction: str | list[str]) -> optuna.Study:
    if create:
        many = isinstance(direction, (list, tuple))
        return optuna.create_study(storage=storage, study_name=name, load_if_exists=True,
                                   **({"directions": direction} if many else {"direction": direction}))
    return optuna.load_study(study_name=name, storage=storage)


# ---------------------------------------------------------------------------------------------
# Passwords: one rendering of a URL for people, and the forms of its password to scrub from
# what a driver says.

_USER = re.compile(r"[^:/]*:")  # SQLAlchemy's reading: the user name runs to the first ':' and holds no '/'
_QUERY = re.compile(r"([?&])([^=&?]*)=([^&]*)")  # key=value pieces of a query string


def _split(url: str) -> tuple[str, str]:
    """(scheme + '://', the rest); a text that is no URL (an error quotes it) is all rest."""
    scheme, sep, rest = url.partition("://")
    return (scheme + sep, rest) if sep else ("", url)


def _password_span(rest: str) -> tuple[int, int] | None:
    """Where the password of the user info lies in ``rest`` (the URL after '://'): from the
    user name's ':' to the LAST '@'. SQLAlchemy ends it at the first '@'; a naive reader of a
    password with an unencoded '@' or '/' sees more of it: the span covers every reading."""
    m = _USER.match(rest)
    if not m:
        return None
    at = rest.rfind("@")
    return (m.end(), at) if at >= m.end() else None


def _is_password_key(key: str) -> bool:
    return "password" in unquote_plus(key).lower()  # password, sslpassword, any case, even percent-encoded


def safe_url(url: str) -> str:
    """``url`` as shown to people (every message, the report): its password masked, in the user
    info (to the last '@', whatever a parser makes of an unencoded '@' or '/') and in the query
    string (any ``password`` key). SQLAlchemy's parser, the one the driver uses, then checks that
    none of the password it reads is left in sight; if any is, all but the scheme is masked."""
    if url.startswith("journal:"):
        return url  # a file path: no password
    head, rest = _split(url)
    spans = _password_spans(rest)
    shown, end = [], 0
    for start, stop in spans:
        shown += [rest[end:start], "***"]
        end = stop
    shown.append(rest[end:])
    visible = "\0".join(shown[::2])
    if any(p in visible for p in _parsed_passwords(url)):  # a reading the masks above did not foresee
        return f"{head}***"
    return head + "".join(shown)


def _password_spans(rest: str) -> list[tuple[int, int]]:
    """Every stretch of ``rest`` that some reading takes for a password (the user info's, and
    each ``password`` value of the query, read on the whole text: a query can sit inside what
    SQLAlchemy reads as the user info), merged, in order."""
    spans = [s for s in [_password_span(rest)] if s]
    spans += [m.span(3) for m in _QUERY.finditer(rest) if _is_password_key(m[2]) and m[3]]
    merged: list[tuple[int, int]] = []
    for start, stop in sorted(spans):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(stop, merged[-1][1]))
        else:
            merged.append((start, stop))
    return merged


def _parsed_passwords(url: str) -> list[str]:
    """The passwords SQLAlchemy reads from ``url`` (user info and query), decoded."""
    from sqlalchemy.engine import make_url

    try:
        parsed = make_url(url)
    except Exception:
        return []
    out = [parsed.password] if parsed.password else []
    for key, value in parsed.query.items():
        if _is_password_key(key):
            out += [v for v in (value if isinstance(value, (list, tuple)) else [value]) if v]
    return [str(p) for p in out]


def password_forms(url: str) -> list[str]:
    """Every form in which ``url``'s password may appear in a message, longest first: as
    written, percent-decoded and -encoded, as SQLAlchemy reads it, and its pieces between '@'
    and '/' as a naive parser splits them (pieces of 3+ characters: a shorter one tells next to
    nothing, and masking every 'a' would garble the message)."""
    if url.startswith("journal:"):
        return []
    _, rest = _split(url)
    found = _parsed_passwords(url)
    span = _password_span(rest)
    if span:
        found.append(rest[span[0]:span[1]])
    found += [m[3] for m in _QUERY.finditer(rest) if _is_password_key(m[2])]
    forms: set[str] = set()
    for raw in filter(None, found):
        for form in {raw, unquote(raw), unquote_plus(raw), quote(raw), quote(raw, safe=""), quote_plus(raw)}:
            forms.add(form)
            forms.update(p for p in re.split("[@/]", form) if len(p) >= 3)
    return sorted(filter(None, forms), key=len, reverse=True)


def scrub(text: str, url: str) -> str:
    """``text`` (a driver's message) with every form of ``url``'s password masked."""
    for secret in password_forms(url):
        text = text.replace(secret, "***")
    return text


# ---------------------------------------------------------------------------------------------
# Journal files

def _open_journal(url: str, name: str, *, create: bool, direction: str | list[str]) -> optuna.Study:
    """A journal file (``journal:PATH``): an append-only log that several processes on one
    machine (or on a shared file system) can write at once. It has no heartbeats: a dead
    worker is noticed on its own host only (PostgreSQL notices it anywhere). A file that is not
    a journal is refused before anything (Optuna included) writes to it."""
    path = Path(url[len("journal:"):]).expanduser()
    if not create and not path.is_file():
        raise BenchError(f"no journal file at {path} (run `bench run` on the sweep first, or pass --storage)")
    if not path.parent.is_dir():
        raise BenchError(f"folder {path.parent} does not exist (for the journal file {path.name}); "
                         "create it, or leave out --storage to use the results folder")
    try:
        from optuna.storages.journal import JournalFileBackend  # on use: only journal files need it
        if path.exists():
            _check_journal(path, create)
            repair_journal(path)
        storage = optuna.storages.JournalStorage(JournalFileBackend(str(path)))
        return _create_or_load(storage, name, create, direction)
    except KeyError:
        names = ", ".join(s.study_name for s in optuna.get_all_study_summaries(storage)) or "none"
        raise BenchError(f"no study named {name!r} in {safe_url(url)} (studies there: {names})") from None
    except OSError as err:
        raise BenchError(f"cannot open journal file {path}: {err.strerror or err}") from None


# Optuna's journal operations (optuna.storages.journal JournalOperation) and the id each refers
# to: a line without them is no journal record
CREATE_STUDY, CREATE_TRIAL = 0, 4
_OP_FIELDS = {0: ("study_name", str), 1: ("study_id", int), 2: ("study_id", int), 3: ("study_id", int),
              4: ("study_id", int), 5: ("trial_id", int), 6: ("trial_id", int), 7: ("trial_id", int),
              8: ("trial_id", int), 9: ("trial_id", int), 10: (None, None)}
_START = b'{"op_code":'  # how Optuna writes every record: op_code first, then worker_id, then the id
_HEAD = re.compile(rb'\{"op_code":(\d+),"worker_id":"[^"\\]*"(?:,"(study_id|trial_id)":(\d+))?')
_FIRST_LINE_MAX = 1 << 20  # a journal's first record (a study's creation) is far shorter
FAIL, WAITING = 3, 4  # optuna TrialState values, as the journal stores them


def _record(line: bytes) -> dict[str, Any] | None:
    """``line`` (whole, with its newline) as a journal record, or None."""
    if not line.endswith(b"\n"):
        return None
    try:
        rec = json.loads(line)
    except ValueError:  # not JSON, or not UTF-8
        return None
    if not isinstance(rec, dict) or type(rec.get("op_code")) is not int or not isinstance(rec.get("worker_id"), str):
        return None
    spec = _OP_FIELDS.get(rec["op_code"])
    if spec is None or (spec[0] is not None and type(rec.get(spec[0])) is not spec[1]):
        return None
    return rec


def _check_journal(path: Path, create: bool) -> None:
    """Refuse, before anything writes to it, a file that is not a journal: its first line must
    be a journal record (or, alone in the file, the start of one: a first write cut short). An
    empty file is a new journal only to create a study in."""
    with open(path, "rb") as f:
        first = f.readline(_FIRST_LINE_MAX)
        alone = not f.read(1)
    if not first:
        if create:
            return
        raise BenchError(f"journal file {path} is empty: it holds no study (left as it was)")
    if _record(first) is None and not (alone and not first.endswith(b"\n") and first.startswith(_START)):
        raise BenchError(f"{path} is not an Optuna journal file (its first line is not a journal record); "
                         "left as it was")


@dataclass
class Repair:
    """What repairing a journal keeps and sets aside (``plan_repair``)."""

    keep: bytes  # the journal as repaired
    aside: bytes  # the lines set aside, as they were
    cut_short: int = 0  # writes cut short (no newline): never readable, so never read by any worker
    damaged: int = 0  # whole lines damaged since (their newline kept): once read, now lost
    dependent: int = 0  # whole records set aside because they depend on a damaged one
    trials: dict[str, list[int]] = field(default_factory=dict)  # study name → numbers of the trials touched
    studies: dict[str, int] = field(default_factory=dict)  # study name → its damaged attribute records
    stand_ins: int = 0  # failed trials standing in for damaged creations, so later ids stay right
    unreadable: bool = False  # a damaged record of unknown kind: every later record was set aside
    tail: bool = False  # only a last write cut short was set aside

    @property
    def intact(self) -> bool:
        """Nothing any worker ever read was set aside."""
        return not (self.damaged or self.dependent or self.unreadable)


class _Replay:
    """Optuna's id assignment, replayed: a study's id counts the studies created before it; a
    trial's id counts every trial created before it, in any study; its number, those of its study."""

    def __init__(self) -> None:
        self.studies: dict[str, int] = {}  # live study name → id
        self.names: dict[int, str] = {}
        self.next_study = 0
        self.trials: dict[int, tuple[int, int]] = {}  # trial id → (study id, number)
        self.counts: dict[int, int] = {}

    def apply(self, rec: dict[str, Any]) -> None:
        op = rec["op_code"]
        if op == CREATE_STUDY and rec["study_name"] not in self.studies:
            self.studies[rec["study_name"]] = self.names_add(rec["study_name"])
        elif op == 1 and rec["study_id"] in self.names:
            self.studies.pop(self.names.pop(rec["study_id"]), None)
        elif op == CREATE_TRIAL and rec["study_id"] in self.names:
            sid = rec["study_id"]
            self.trials[len(self.trials)] = (sid, self.counts.get(sid, 0))
            self.counts[sid] = self.counts.get(sid, 0) + 1

    def names_add(self, name: str) -> int:
        sid, self.next_study = self.next_study, self.next_study + 1
        self.names[sid] = name
        return sid

    def label(self, trial_id: int) -> tuple[str, int] | None:
        if trial_id not in self.trials:
            return None
        sid, number = self.trials[trial_id]
        return self.names.get(sid, f"study {sid}"), number


def _stand_in(study_id: int) -> bytes:
    """A failed trial in the place of a torn trial creation: Optuna numbers trials by counting
    creations, so without it every later record would land on the trial after its own."""
    now = time.strftime("%Y-%m-%dT%H:%M:%S.000000")
    rec = {"op_code": CREATE_TRIAL, "worker_id": "bench-journal-repair", "study_id": study_id,
           "datetime_start": now, "datetime_complete": now, "state": FAIL, "value": None, "values": None,
           "params": {}, "distributions": {}, "user_attrs": {"dropped": "torn in the journal (set aside by bench)"},
           "system_attrs": {}, "intermediate_values": {}}
    return json.dumps(rec, separators=(",", ":")).encode() + b"\n"


def plan_repair(data: bytes) -> Repair | None:
    """How to repair a journal's bytes, or None when every line is a whole record.

    A damaged line sets aside the least that keeps the journal consistent:
    - a write cut short (no newline), alone or followed by the next write on its line: the
      torn part only. No reader could read it, so nothing written later refers to it.
    - a record on a trial: it, and the later records on that trial (which stays as it was before).
    - a record on a study's attributes: it alone (it created nothing).
    - a trial's creation: it, replaced by a failed stand-in trial that keeps later trial ids
      and numbers right, and the later records on that trial.
    - a study's creation, or a record whose kind cannot be read: it and every later record
      (study and trial ids after it cannot be trusted).
    Raises BenchError when the data is not a journal (its first line is no record)."""
    lines = data.splitlines(keepends=True)
    if all(_record(line) is not None for line in lines):
        return None
    if lines and _record(lines[0]) is None and not (len(lines) == 1 and lines[0].startswith(_START)
                                                    and not lines[0].endswith(b"\n")):
        raise BenchError("not an Optuna journal (its first line is not a journal record)")
    out, aside = [], []
    rep = Repair(b"", b"")
    replay = _Replay()
    dead: set[int] = set()  # trials whose later records go aside
    touched: set[int] = set()

    for line in lines:
        rec = _record(line)
        if rec is None and not rep.unreadable:
            cut = _salvage(line)
            if cut or not line.endswith(b"\n"):  # a write cut short: a whole record may follow on its line
                rep.cut_short += 1
                aside.append(line[:cut] if cut else line)
                if not cut:
                    continue
                line, rec = line[cut:], _record(line[cut:])
            else:
                rep.damaged += 1
                aside.append(line)
                head = _HEAD.match(line)
                op = int(head[1]) if head else None
                ident = int(head[3]) if head and head[3] is not None else None
                kind = head[2].decode() if head and head[2] else None
                if op in (5, 6, 7, 8, 9) and kind == "trial_id":
                    dead.add(ident)
                    touched.add(ident)
                elif op in (1, 2, 3) and kind == "study_id":
                    study = replay.names.get(ident, f"study {ident}")
                    rep.studies[study] = rep.studies.get(study, 0) + 1
                elif op == 10 or (op == CREATE_TRIAL and kind == "study_id" and ident not in replay.names):
                    pass  # it changed nothing Optuna replays
                elif op == CREATE_TRIAL and kind == "study_id":
                    stand_in = _stand_in(ident)
                    out.append(stand_in)
                    dead.add(len(replay.trials))
                    touched.add(len(replay.trials))
                    replay.apply(_record(stand_in))
                    rep.stand_ins += 1
                else:
                    rep.unreadable = True
                continue
        if rep.unreadable:  # every record after an unreadable one
            aside.append(line)
            if rec is None:
                rep.damaged += 1
                continue
            rep.dependent += 1
            replay.apply(rec)
            if rec["op_code"] == CREATE_TRIAL and rec["study_id"] in replay.names:
                touched.add(len(replay.trials) - 1)
            if "trial_id" in rec:
                touched.add(rec["trial_id"])
            continue
        if rec.get("trial_id") in dead:
            aside.append(line)
            rep.dependent += 1
            continue
        out.append(line)
        replay.apply(rec)
    for tid in sorted(touched):
        found = replay.label(tid)
        if found:
            rep.trials.setdefault(found[0], []).append(found[1])
    rep.keep, rep.aside = b"".join(out), b"".join(aside)
    rep.tail = rep.intact and rep.cut_short == 1 and data == rep.keep + rep.aside
    return rep


def _salvage(line: bytes) -> int | None:
    """Where a whole record starts inside a damaged line (the write that followed a torn one on
    the same line), or None. Optuna writes ``{"op_code":`` only at a record's start: inside a
    JSON string its quotes are escaped."""
    at = line.find(_START, 1)
    while at != -1:
        if _record(line[at:]) is not None:
            return at
        at = line.find(_START, at + 1)
    return None


def repair_journal(path: Path) -> int:
    """Set aside the damage of a journal (a write cut by a full disk or a crash, a line
    corrupted in place) before anything is appended, by ``plan_repair``: what goes aside is
    kept in ``PATH.torn-<time>`` beside it (never deleted), under the journal's own lock.
    Returns the bytes set aside (0: the journal was whole) and says what on stderr. A file
    that is not a journal is refused (BenchError) and left as it was."""
    from optuna.storages.journal import JournalFileSymlinkLock  # the lock JournalFileBackend takes

    if _plan(path) is None:
        return 0
    lock = JournalFileSymlinkLock(str(path))
    lock.acquire()
    try:
        data = path.read_bytes()  # again, under the lock: another worker may have repaired it
        rep = _plan(path, data)
        if rep is None:
            return 0
        side = path.with_name(f"{path.name}.torn-{time.strftime('%Y%m%d-%H%M%S')}")
        n = 1
        while side.exists():  # two repairs in one second: keep both
            side = path.with_name(f"{path.name}.torn-{time.strftime('%Y%m%d-%H%M%S')}-{n}")
            n += 1
        _write(side, rep.aside)
        if data.startswith(rep.keep):  # only the end goes: cut in place (workers may be reading it)
            with open(path, "r+b") as f:
                f.truncate(len(rep.keep))
                f.flush()
                os.fsync(f.fileno())
        else:  # a new whole file, swapped in at once: never a half-written journal
            tmp = path.with_name(f".{path.name}.repair-{os.getpid()}")
            _write(tmp, rep.keep)
            os.chmod(tmp, path.stat().st_mode & 0o7777)
            os.replace(tmp, path)
    finally:
        lock.release()
    console.info(_describe(path, side, rep))
    return len(rep.aside)


def _plan(path: Path, data: bytes | None = None) -> Repair | None:
    try:
        return plan_repair(path.read_bytes() if data is None else data)
    except BenchError as err:
        raise BenchError(f"{path} is {str(err)}; left as it was") from None


def _write(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _describe(path: Path, side: Path, rep: Repair) -> str:
    """The one line a repair says: exactly what was set aside, and what that costs."""
    if rep.tail:
        lines = rep.aside.count(b"\n") + (not rep.aside.endswith(b"\n"))
        return (f"journal {path}: its last {len(rep.aside)} bytes ({lines} line(s)) were torn, as a full disk or a "
                f"crash leaves them; set aside in {side}, the rest of the study is intact")
    lost = "; ".join(f"trial{'s' if len(n) > 1 else ''} {', '.join(f'#{i}' for i in n)} of study {s!r}"
                     for s, n in rep.trials.items())
    what = [f"{rep.cut_short} write(s) cut short (never readable by any worker)"] if rep.cut_short else []
    what += [f"{rep.damaged} record(s) damaged in place"] if rep.damaged else []
    what += [f"{rep.dependent} later record(s) that depend on them"] if rep.dependent else []
    line = f"journal {path}: {', '.join(what)} set aside in {side}"
    if rep.unreadable:
        line += "; a damaged record of unknown kind: every record after it too, as later ids cannot be trusted"
    if lost:
        line += f"; records of {lost} lost" if rep.unreadable else f"; {lost}: back as before the damage"
    if rep.stand_ins:
        line += f" ({rep.stand_ins} failed stand-in trial(s) keep later trials' numbers)"
    for study, n in rep.studies.items():
        line += f"; {n} attribute record(s) of study {study!r} lost"
    if rep.intact:
        return line + "; every whole record is kept, the study is intact"
    return line + "; every other record is kept as it was; rerun the sweep to redo what was set aside"
