"""Study storage: opening the Optuna storage a sweep's ledger lives in (``bench.study.ledger``).

SQLite under ``results/<name>/study.db`` by default; a journal file for several local
workers; any Optuna storage URL (PostgreSQL when several machines share a sweep). A dead
database, a missing driver or an unknown study is one clear error. A storage URL is shown
to people only through ``safe_url`` (its password masked), and a driver's message only
through ``scrub`` (any form of the password masked). A journal file is checked and repaired
by ``bench.study.journal`` before Optuna opens it.
"""
from __future__ import annotations

import contextlib
import logging
import random
import re
import sqlite3
import time
import warnings
from pathlib import Path
from typing import Any
from urllib.parse import quote, quote_plus, unquote, unquote_plus

import optuna

from bench import console
from bench.errors import BenchError, first_line
from bench.study.journal import check_journal, repair_journal

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
        tables = _tables(path, "ro")
    except sqlite3.DatabaseError as err:
        if not _hot_journal(path):
            raise BenchError(f"cannot open study storage sqlite:///{path}: {err}") from None
        tables = _roll_back(path)
    if tables and "studies" not in tables:
        raise BenchError(f"{path} is an SQLite database, but not a study's (no Optuna tables); "
                         "left as it was")
    if not tables and not create:
        raise BenchError(f"{path} holds no study (an empty database); left as it was")


def _tables(path: Path, mode: str) -> set[str]:
    """The tables of the SQLite file ``path``, opened with ``mode`` (``ro``, ``rw``, or ``ro`` with
    ``immutable=1``: the file as it lies, its journal and locks ignored)."""
    with contextlib.closing(sqlite3.connect(f"file:{path}?mode={mode}", uri=True)) as con:
        return {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}


JOURNAL_MAGIC = bytes.fromhex("d9d505f920a163d7")  # the header of a rollback journal that still holds a write


def _hot_journal(path: Path) -> bool:
    """Whether a writer died in a transaction on ``path`` (kill -9, a crash, a power cut): its
    rollback journal is left, with its header. SQLite rolls it back at the next read-write
    open; a read-only open cannot, and fails ("attempt to write a readonly database")."""
    try:
        with open(f"{path}-journal", "rb") as f:
            return f.read(len(JOURNAL_MAGIC)) == JOURNAL_MAGIC
    except OSError:
        return False


def _roll_back(path: Path) -> set[str]:
    """Roll back the write a killed process left in ``path``'s hot journal, as SQLite does at
    the next read-write open, when the file is a study database (read first as it lies: a
    foreign database is left as it was); its tables after. Says so in one line."""
    journal = f"{path.name}-journal"
    try:
        tables = _tables(path, "ro&immutable=1")
    except sqlite3.DatabaseError:
        tables = None
    if tables is None or (tables and "studies" not in tables):
        what = "cannot be read" if tables is None else "is an SQLite database, but not a study's (no Optuna tables)"
        raise BenchError(f"{path} {what}, and an interrupted write left {journal} beside it; left as it was")
    try:
        tables = _tables(path, "rw")
    except sqlite3.DatabaseError as err:
        raise BenchError(f"cannot open study storage sqlite:///{path}: a killed process left an interrupted write "
                         f"({journal}) that only a read-write open can roll back, and that failed ({err}); give "
                         "this user write access to the file and its folder, or run where it has it") from None
    console.info(f"study database {path}: rolled back a write a killed process left unfinished ({journal}); "
                 "the study is as it was before that write")
    return tables


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
            check_journal(path, create)
            repair_journal(path)
        storage = optuna.storages.JournalStorage(JournalFileBackend(str(path)))
    except OSError as err:
        raise BenchError(f"cannot open journal file {path}: {err.strerror or err}") from None
    try:
        return _create_or_load(storage, name, create, direction)
    except KeyError:
        names = ", ".join(s.study_name for s in optuna.get_all_study_summaries(storage)) or "none"
        raise BenchError(f"no study named {name!r} in {safe_url(url)} (studies there: {names})") from None
    except OSError as err:
        raise BenchError(f"cannot open journal file {path}: {err.strerror or err}") from None
