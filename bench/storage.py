"""Study storage: opening the Optuna storage a sweep's ledger lives in (``bench.ledger``).

SQLite under ``results/<name>/study.db`` by default; a journal file for several local
workers; any Optuna storage URL (PostgreSQL when several machines share a sweep). A dead
database, a missing driver or an unknown study is one clear error, with any password masked.
"""
from __future__ import annotations

import logging
import random
import time
import warnings
from pathlib import Path
from typing import Any

import optuna

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
            first = first_line(text) or type(err).__name__
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
        from optuna.storages.journal import JournalFileBackend  # on use: only journal files need it
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
