"""bench never writes what is not its own: every command, pointed at a folder of foreign files
(a text file as a journal, a foreign SQLite database, a folder that is no cache, folders named
like bench's partial builds), leaves each of them byte-identical, and adds nothing beside them.
Each refusal is one line and a non-zero exit."""
import hashlib
import os
import sqlite3
import time

import pytest

from bench.cli import main
from conftest import TINY


def snapshot(folder):
    """Every path under ``folder`` with a checksum of its bytes (folders: None) and its mode."""
    out = {}
    for p in sorted(folder.rglob("*")):
        rel = p.relative_to(folder).as_posix()
        out[rel] = (None if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mode)
    return out


@pytest.fixture
def foreign(tmp_path):
    """A user's folder: nothing in it is bench's."""
    f = tmp_path / "foreign"
    (f / "v" / "projectA").mkdir(parents=True)
    (f / "h.txt").write_text("any text\nthat is no journal\n")
    (f / "data.json").write_text('{"op_code": 0}\n{"a": 1}\n')  # JSON lines, but not Optuna's
    with sqlite3.connect(f / "foreign.db") as con:
        con.execute("CREATE TABLE notes (id INTEGER PRIMARY KEY, text TEXT)")
        con.execute("INSERT INTO notes (text) VALUES ('precious')")
    (f / "v" / "projectA" / "meta.json").write_text("{}")
    (f / "v" / "projectA" / "important.txt").write_text("precious")
    (f / "v" / "notes.partial-1").mkdir()
    (f / "v" / "notes.partial-1" / "draft.txt").write_text("precious too")
    (f / "v" / "old.lock").write_text("a user's lock file")
    old = time.time() - 40 * 86400
    for p in f.rglob("*"):
        os.utime(p, (old, old))  # unused for 40 days, as a prune would see a stale cache
    return f


def commands(f, sweep, results):
    journals = [f"journal:{f / 'h.txt'}", f"journal:{f / 'data.json'}", f"sqlite:///{f / 'foreign.db'}"]
    for url in journals:
        yield ["run", sweep, "--storage", url, "--results", results, "--device", "cpu", "--quiet"]
        yield ["report", "tiny", "--storage", url, "--results", results]
        yield ["worker", "tiny", "--storage", url, "--results", results, "--device", "cpu", "--quiet"]
        yield ["time", "tiny", "--storage", url, "--results", results, "--device", "cpu", "--quiet"]
        yield ["fidelity", "tiny", "--reference", "tiny2", "--storage", url, "--results", results]
        yield ["collapse", "tiny", "--trial", "0", "--storage", url, "--results", results, "--device", "cpu"]
    yield ["cache", "--dir", f / "v"]
    yield ["cache", "--dir", f / "v", "--prune", "30"]
    yield ["cache", "--dir", f / "v", "--prune", "0"]
    yield ["run", sweep, "--results", f / "h.txt", "--device", "cpu", "--quiet"]  # a file as the results folder


def test_no_command_touches_a_foreign_file(tmp_path, foreign, capsys):
    sweep = tmp_path / "tiny.yaml"
    sweep.write_text(TINY)
    before = snapshot(foreign)
    for argv in commands(foreign, sweep, tmp_path / "results"):
        argv = [str(a) for a in argv]
        code = main(argv)
        out, err = capsys.readouterr()
        assert snapshot(foreign) == before, argv  # byte-identical, nothing added, nothing removed
        assert "internal error" not in err and "Traceback" not in err, (argv, err)
        if argv[0] != "cache":
            assert code != 0, (argv, out, err)  # refused, not silently worked around
            assert len(err.strip().splitlines()) == 1, (argv, err)  # one line
