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


# --- bench's memo files (GEMM peaks, kernel choices) in the cache folder -------------------------

MEMOS = ("peak-flops.json", "attention-kernels.json")


@pytest.fixture(autouse=True)
def new_process(monkeypatch):
    """Each test as a new process: nothing measured or said yet."""
    from bench import attention_kernels, own_files, utilisation
    monkeypatch.setattr(utilisation, "_measured", {})
    monkeypatch.setattr(attention_kernels, "_chosen", {})
    monkeypatch.setattr(own_files, "_warned", set())


def _profile(cache_dir):
    """A model profiled with speed (a GEMM peak and a kernel choice are looked up), as a user runs it."""
    return main(["profile", "vit_micro", "--device", "cpu", "--warmup", "0", "--iters", "1", "--batch-size", "2",
                 "--json"])


@pytest.mark.parametrize("content", ["my notes, not json", '["a list", 1]', '{"owner": "me", "peak": 3}', ""])
@pytest.mark.parametrize("memo", MEMOS)
def test_a_foreign_memo_file_is_left_byte_identical(cache_dir, memo, content, capsys):
    cache_dir.mkdir(parents=True, exist_ok=True)
    (cache_dir / memo).write_text(content)
    assert _profile(cache_dir) == 0
    assert (cache_dir / memo).read_text() == content
    err = capsys.readouterr().err
    assert err.count(f"{cache_dir / memo}:") == 1 and "left as it was" in err  # said once


@pytest.mark.parametrize("memo", MEMOS)
def test_a_memo_link_is_never_followed_nor_replaced(cache_dir, tmp_path, memo):
    cache_dir.mkdir(parents=True, exist_ok=True)
    target = tmp_path / "foreign.json"
    target.write_text('{"mine": 1}')
    (cache_dir / memo).symlink_to(target)
    assert _profile(cache_dir) == 0
    assert (cache_dir / memo).is_symlink() and target.read_text() == '{"mine": 1}'


@pytest.mark.parametrize("special", ["/dev/zero", "fifo", "huge"])
def test_a_memo_that_is_a_device_a_fifo_or_huge_is_not_read(cache_dir, special, capsys):
    """``ln -s /dev/zero peak-flops.json`` made every trial fail with MemoryError (and, without a
    memory limit, ate the machine): memo files are read as regular files only, with a size cap."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    for memo in MEMOS:
        path = cache_dir / memo
        if special == "/dev/zero":
            path.symlink_to("/dev/zero")
        elif special == "fifo":
            os.mkfifo(path)  # a reader with no writer would wait for ever
        else:
            with open(path, "wb") as f:
                f.truncate(8 << 30)  # 8 GiB, sparse
    started = time.monotonic()
    assert _profile(cache_dir) == 0
    assert time.monotonic() - started < 120
    err = capsys.readouterr().err
    assert all(f"{cache_dir / memo}:" in err for memo in MEMOS) and "MemoryError" not in err
