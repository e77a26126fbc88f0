"""Storage safety: a file that is not a journal is never written to; a journal torn in the
middle loses only what depends on the torn record, and says exactly what; a password never
shows (messages, reports, a driver's words, workers' argv); SQLite is refused for several
local workers; a missing driver is named; a failed open leaves no empty database behind."""
import importlib.util
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path
from urllib.parse import quote, quote_plus, unquote

import optuna
import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings, strategies as st

from bench import spec, api
from bench.cli import main
from bench.errors import BenchError
from bench.study import workers
from bench.study.context import RunContext
from bench.study.ledger import Ledger
from bench.study.storage import open_study, safe_url
from bench.study.stored_reports import report_ledger

from conftest import TINY

# --- a journal pointed at a foreign file -------------------------------------------------------


@pytest.mark.parametrize("content", [b"any text\n", b"any text", b'{"a": 1}\n', b"\x00\xff\xfe binary\n\x01",
                                     b'{"op_code": 99, "worker_id": "w"}\n{"op_code":0}\n'])
@pytest.mark.parametrize("command", ["report", "run"])
def test_a_file_that_is_not_a_journal_is_refused_and_left_byte_identical(content, command, sweep_file, tmp_path,
                                                                           capsys):
    foreign = tmp_path / "h.txt"
    foreign.write_bytes(content)
    before = sorted(p.name for p in tmp_path.iterdir())
    args = ["report", "tiny"] if command == "report" else ["run", str(sweep_file), "--device", "cpu"]
    code = main([*args, "--storage", f"journal:{foreign}", "--results", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert code == 1 and str(foreign) in err and "not an Optuna journal" in err and len(err.strip().splitlines()) == 1
    assert foreign.read_bytes() == content
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != "r") == before  # no side file, no lock left


def test_an_empty_file_is_a_new_journal_only_to_create_a_study_in(tmp_path):
    empty = tmp_path / "j"
    empty.write_bytes(b"")
    with pytest.raises(BenchError, match="is empty"):
        open_study(f"journal:{empty}", "tiny", create=False)
    assert empty.read_bytes() == b""
    open_study(f"journal:{empty}", "tiny", create=True)
    assert b'"study_name":"tiny"' in empty.read_bytes()


# --- a journal torn in the middle ----------------------------------------------------------------


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    """A journal written by a real run of the tiny sweep (4 finished trials), and its records."""
    tmp = tmp_path_factory.mktemp("journal")
    (tmp / "tiny.yaml").write_text(TINY)
    path = tmp / "study.journal"
    env = os.environ.get("BENCH_CACHE_DIR")
    os.environ["BENCH_CACHE_DIR"] = str(tmp / "cache")
    try:
        api.run_sweep(spec.load(tmp / "tiny.yaml"),
                      RunContext(storage=f"journal:{path}", results_dir=tmp / "results", device="cpu", quiet=True,
                                 report=False))
    finally:
        if env is None:
            os.environ.pop("BENCH_CACHE_DIR")
        else:
            os.environ["BENCH_CACHE_DIR"] = env
    return path.read_bytes(), _by_number(Ledger.open(f"journal:{path}", "tiny"))


def _by_number(ledger):
    return {r["trial"]: r for r in ledger.records()}


def _line(lines, op, trial_id=None, attr=None):
    """Index of the first line of operation ``op`` (on trial ``trial_id``, setting user attribute ``attr``)."""
    for i, line in enumerate(lines):
        if (line.startswith(b'{"op_code":%d,' % op) and (trial_id is None or b'"trial_id":%d,' % trial_id in line)
                and (attr is None or b'"user_attr":{"%s"' % attr.encode() in line)):
            return i
    raise AssertionError("no such line")


def _tear(line):
    return line[:len(line) // 2] + b"\n"  # cut in place: its newline kept, its end lost


def _repair(tmp_path, data, capsys):
    path = tmp_path / "study.journal"
    path.write_bytes(data)
    ledger = Ledger.open(f"journal:{path}", "tiny")
    err = capsys.readouterr().err
    (side,) = tmp_path.glob("study.journal.torn-*")
    return path, ledger, err, side.read_bytes()


def test_a_torn_trial_record_sets_aside_that_trial_s_later_records_only(written, tmp_path, capsys):
    data, before = written
    lines = data.splitlines(keepends=True)
    k = _line(lines, 8, trial_id=1, attr="record")  # trial #1's result, mid-journal
    done = next(i for i in range(k + 1, len(lines)) if lines[i].startswith(b'{"op_code":6,')
                and b'"trial_id":1,' in lines[i])  # its state COMPLETE: what depends on it
    assert k < done < len(lines) - 5
    torn = _tear(lines[k])
    path, ledger, err, side = _repair(tmp_path, b"".join(lines[:k] + [torn] + lines[k + 1:]), capsys)
    assert side == torn + lines[done]  # exactly the torn line and the one record that depends on it
    assert path.read_bytes() == b"".join(lines[:k] + lines[k + 1:done] + lines[done + 1:])
    assert "1 record(s) damaged in place, 1 later record(s) that depend on them" in err
    assert "trial #1 of study 'tiny': back as before" in err
    assert "intact" not in err
    after = _by_number(ledger)
    assert sorted(after) == [0, 2, 3] and all(after[n] == before[n] for n in after)


def test_a_torn_trial_creation_keeps_later_trials_and_their_numbers(written, tmp_path, capsys):
    """Optuna numbers trials by counting creations: a dropped creation would shift every later
    record onto the trial after its own. A failed stand-in keeps every later id right."""
    data, before = written
    lines = data.splitlines(keepends=True)
    k = [i for i, line in enumerate(lines) if line.startswith(b'{"op_code":4,')][1]  # trial #1's queue entry
    on_1 = [i for i in range(k + 1, len(lines)) if b'"trial_id":1,' in lines[i]]
    torn = _tear(lines[k])
    path, ledger, err, side = _repair(tmp_path, b"".join(lines[:k] + [torn] + lines[k + 1:]), capsys)
    assert side == torn + b"".join(lines[i] for i in on_1) and len(on_1) >= 6  # its claim, result, values, state…
    assert f"1 record(s) damaged in place, {len(on_1)} later record(s)" in err and "trial #1 of study 'tiny'" in err
    assert "intact" not in err
    after = _by_number(ledger)
    assert sorted(after) == [0, 2, 3] and all(after[n] == before[n] for n in after)  # same numbers, same results
    stand_in = ledger.study.get_trials()[1]
    assert stand_in.state == optuna.trial.TrialState.FAIL and stand_in.user_attrs["dropped"]


def test_a_damaged_study_attribute_sets_aside_itself_alone(written, tmp_path, capsys):
    data, before = written
    lines = data.splitlines(keepends=True)
    k = [i for i, line in enumerate(lines) if line.startswith(b'{"op_code":2,')][0]  # the study's settings
    assert k < 5
    torn = _tear(lines[k])
    path, ledger, err, side = _repair(tmp_path, b"".join(lines[:k] + [torn] + lines[k + 1:]), capsys)
    assert side == torn and path.read_bytes() == b"".join(lines[:k] + lines[k + 1:])
    assert "1 attribute record(s) of study 'tiny' lost" in err and "intact" not in err
    assert _by_number(ledger) == before


def test_a_write_cut_short_and_followed_on_its_line_loses_only_itself(written, tmp_path, capsys):
    """A write cut by a full disk has no newline: the next writer's record lands on the same
    line. No reader could read the torn one, so nothing depends on it: the next record stays."""
    data, before = written
    lines = data.splitlines(keepends=True)
    k = _line(lines, 8, trial_id=1, attr="collapse")
    part = lines[k][:40]
    path, ledger, err, side = _repair(tmp_path, b"".join(lines[:k] + [part + lines[k]] + lines[k + 1:]), capsys)
    assert side == part and path.read_bytes() == data
    assert "1 write(s) cut short" in err and "intact" in err
    assert _by_number(ledger) == before


def test_a_torn_record_of_unknown_kind_sets_aside_all_after_it_and_says_so(written, tmp_path, capsys):
    data, before = written
    lines = data.splitlines(keepends=True)
    k = _line(lines, 8, trial_id=2, attr="record")
    path, ledger, err, side = _repair(tmp_path, b"".join(lines[:k] + [b"#!garbage\n"] + lines[k + 1:]), capsys)
    later = len(lines) - k - 1
    assert side == b"#!garbage\n" + b"".join(lines[k + 1:]) and path.read_bytes() == b"".join(lines[:k])
    assert f"1 record(s) damaged in place, {later} later record(s)" in err and "trials #2, #3 of study" in err
    assert "intact" not in err
    after = _by_number(ledger)
    assert sorted(after) == [0, 1] and all(after[n] == before[n] for n in after)


# --- passwords -----------------------------------------------------------------------------------


@pytest.mark.parametrize("url, shown", [
    ("postgresql://u:pa/ss@db-host/bench", "postgresql://u:***@db-host/bench"),  # '/' in the password
    ("postgresql://u:p@ss/w@db-host/bench", "postgresql://u:***@db-host/bench"),
    ("postgresql://h/bench?PASSWORD=hunter2", "postgresql://h/bench?PASSWORD=***"),
    ("postgresql://h/bench?sslpassword=hunter2&user=u", "postgresql://h/bench?sslpassword=***&user=u"),
    ("u:hunter2@host/bench", "u:***@host/bench"),  # no scheme: still masked where an error quotes it
])
def test_every_password_is_masked(url, shown):
    assert safe_url(url) == shown


def test_a_password_split_by_an_unencoded_at_never_reaches_the_driver(capsys):
    code = main(["report", "tiny", "--storage", "postgresql://u:pw@zq9x@127.0.0.1:1/db"])
    err = capsys.readouterr().err
    assert code == 1 and "zq9x" not in err and "%40" in err  # told to percent-encode it


def test_a_worker_prints_its_storage_without_the_password(written, tmp_path, monkeypatch, capsys):
    data, _ = written
    journal = tmp_path / "study.journal"
    journal.write_bytes(data)
    url = "postgresql://u:hunter2/x@db-host/bench"
    opened = []
    monkeypatch.setattr(Ledger, "open", classmethod(
        lambda cls, u, name, **kw: opened.append(u) or Ledger(open_study(f"journal:{journal}", name, create=False), u)))
    code = main(["worker", "tiny", "--storage", url, "--results", str(tmp_path / "r"), "--device", "cpu",
                 "--no-report"])
    err = capsys.readouterr().err
    assert code == 0 and opened == [url] and "worker on tiny | postgresql://u:***@db-host/bench | cpu" in err
    assert "hunter2" not in err


def test_a_study_without_finished_trials_reports_no_password(tmp_path):
    study = Ledger.open(f"journal:{tmp_path / 'j'}", "tiny", create=True).study
    ledger = Ledger(study, "postgresql://u:hunter2/x@db-host/bench")  # as if opened there
    with pytest.raises(BenchError) as caught:
        report_ledger(ledger, "tiny", tmp_path)
    assert "has no finished trials" in str(caught.value) and "hunter2" not in str(caught.value)


class _Done:
    def wait(self, timeout=None):
        return 0

    def poll(self):
        return 0


def test_workers_get_the_storage_through_their_environment_not_argv(monkeypatch, tmp_path):
    url = "postgresql://u:hunter2@db-host/bench"
    started = []
    monkeypatch.setattr(subprocess, "Popen", lambda cmd, env=None, **kw: started.append((cmd, env)) or _Done())
    monkeypatch.setattr(Ledger, "open", classmethod(lambda cls, u, name, **kw: type("L", (), {"records": list})()))
    workers.spawn_workers(RunContext(study="tiny", storage=url, workers=2, device=torch.device("cpu"),
                                     results_dir=tmp_path, quiet=True))
    assert len(started) == 2
    for cmd, env in started:
        assert not any("hunter2" in str(a) or "db-host" in str(a) for a in cmd) and "--storage" not in cmd
        assert env["BENCH_STORAGE"] == url


def test_a_worker_takes_its_storage_from_the_environment(written, tmp_path, monkeypatch, capsys):
    data, _ = written
    journal = tmp_path / "elsewhere.journal"  # not where --results would lead: only the environment tells
    journal.write_bytes(data)
    monkeypatch.setenv("BENCH_STORAGE", f"journal:{journal}")
    code = main(["worker", "tiny", "--results", str(tmp_path / "r"), "--device", "cpu", "--no-report"])
    assert code == 0 and f"journal:{journal}" in capsys.readouterr().err


# printable ASCII, half of it the characters a URL gives a meaning to
ALPHABET = st.one_of(st.sampled_from("/@:%?#&+= {}"), st.characters(codec="ascii", min_codepoint=32, max_codepoint=126))
FORMS = {
    "raw": lambda pw: f"postgresql://u:{pw}@127.0.0.1:1/db",
    "encoded": lambda pw: f"postgresql://u:{quote(pw, safe='')}@127.0.0.1:1/db",
    "query": lambda pw: f"postgresql://127.0.0.1:1/db?user=u&password={quote_plus(pw)}",
    "raw query": lambda pw: f"postgresql://127.0.0.1:1/db?user=u&password={pw}",  # '&' there ends it: see below
}
_KNOWN: list[str] = []


def _said(url):
    try:
        open_study(url, "tiny", create=False)
    except BenchError as err:
        return str(err)
    raise AssertionError("a closed port opened")


def _known():
    """What the messages say with a plain password: a password that is part of it shows by chance."""
    if not _KNOWN:
        for form in FORMS.values():
            for pw in ("x", "x@y", "x:y@z", "x/y"):
                _KNOWN.append(safe_url(form(pw)) + " " + _said(form(pw)))
    return " ".join(_KNOWN)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(pw=st.text(ALPHABET, min_size=1, max_size=12), form=st.sampled_from(sorted(FORMS)))
def test_no_password_shows_in_a_rendered_url_or_a_dead_server_s_message(pw, form):
    if form == "raw query":  # '&' starts the next parameter: no reader can tell it from the password
        assume("&" not in pw)
    url = FORMS[form](pw)
    known = _known()
    hidden = {pw, unquote(pw)} | ({pw.replace("+", " ")} if "query" in form else set())
    assume(not any(h in known for h in hidden))
    shown, said = safe_url(url), _said(url)
    for h in hidden:
        assert h not in shown and h not in said, (url, shown, said)
    assert "cannot open study storage" in said or "percent-encode" in said


# --- several local workers on SQLite ------------------------------------------------------------


def test_sqlite_for_several_local_workers_is_refused_before_any_work(sweep_file, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(subprocess, "Popen", lambda *a, **k: pytest.fail("a worker was started"))
    db = tmp_path / "s.db"
    code = main(["run", str(sweep_file), "--workers", "2", "--storage", f"sqlite:///{db}", "--device", "cpu",
                 "--results", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert code in (1, 2) and len(err.strip().splitlines()) == 1
    assert "SQLite" in err and "journal:" in err and "PostgreSQL" in err
    assert not db.exists() and not (tmp_path / "r").exists()


# --- drivers and failed opens --------------------------------------------------------------------


def test_a_missing_driver_is_named_for_the_url_s_dialect(capsys):
    if importlib.util.find_spec("MySQLdb"):
        pytest.skip("MySQL's driver is installed here")
    code = main(["report", "tiny", "--storage", "mysql://u:hunter2@127.0.0.1:1/db"])
    err = capsys.readouterr().err
    assert code == 1 and "mysqlclient" in err and "psycopg" not in err and "hunter2" not in err


def _full_disk(created):
    import sqlalchemy

    def storage(url, **kw):  # what a full disk does: SQLite makes the file, then cannot write to it
        path = Path(url[len("sqlite:///"):])
        path.touch()
        created.append(path)
        raise sqlalchemy.exc.OperationalError("CREATE TABLE studies", {},
                                              sqlite3.OperationalError("database or disk is full"))
    return storage


def test_a_failed_open_removes_the_new_database_file_it_made(tmp_path, monkeypatch):
    created = []
    monkeypatch.setattr(optuna.storages, "RDBStorage", _full_disk(created))
    db = tmp_path / "s.db"
    with pytest.raises(BenchError, match="database or disk is full"):
        open_study(f"sqlite:///{db}", "tiny", create=True)
    assert created == [db] and not db.exists()


def test_a_failed_open_never_removes_a_file_that_was_there(tmp_path, monkeypatch):
    db = tmp_path / "s.db"
    Ledger.open(f"sqlite:///{db}", "tiny", create=True)
    before = db.read_bytes()
    empty = tmp_path / "e.db"
    empty.write_bytes(b"")
    monkeypatch.setattr(optuna.storages, "RDBStorage", _full_disk([]))
    for path in (db, empty):
        with pytest.raises(BenchError, match="database or disk is full"):
            open_study(f"sqlite:///{path}", "tiny", create=True)
    assert db.read_bytes() == before and empty.exists()


def test_an_unknown_study_is_one_plain_line(tmp_path):
    db = tmp_path / "s.db"
    Ledger.open(f"sqlite:///{db}", "tiny", create=True)
    with pytest.raises(BenchError) as caught:
        open_study(f"sqlite:///{db}", "other", create=False)
    assert str(caught.value) == f"no study named 'other' in sqlite:///{db} (studies there: tiny)"


# --- SQLite after kill -9: a hot journal --------------------------------------------------------

_HOLD_A_WRITE = """
import sqlite3, sys, time
con = sqlite3.connect(sys.argv[1], isolation_level=None)
con.execute("PRAGMA cache_size=1")  # spill changed pages into the file before any commit
con.execute("BEGIN IMMEDIATE")
con.execute("UPDATE trial_user_attributes SET value_json = value_json || ' '")
print("holding", flush=True)
time.sleep(600)
"""


def _killed_mid_write(db):
    """A process killed (SIGKILL) inside a write transaction on ``db``: its hot journal is left,
    as a kill -9 of bench during any SQLite write leaves it."""
    child = subprocess.Popen([sys.executable, "-c", _HOLD_A_WRITE, str(db)], stdout=subprocess.PIPE)
    assert child.stdout.readline() == b"holding\n"
    child.kill()
    child.wait()
    journal = Path(f"{db}-journal")
    assert journal.is_file() and journal.read_bytes()[:8] == bytes.fromhex("d9d505f920a163d7")  # hot
    return journal


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """The tiny sweep run to the end on its default storage (SQLite): its folder, and its records."""
    tmp = tmp_path_factory.mktemp("sqlite")
    (tmp / "tiny.yaml").write_text(TINY)
    env = os.environ.get("BENCH_CACHE_DIR")
    os.environ["BENCH_CACHE_DIR"] = str(tmp / "cache")
    try:
        api.run_sweep(spec.load(tmp / "tiny.yaml"),
                      RunContext(results_dir=tmp / "results", device="cpu", quiet=True, report=False))
    finally:
        if env is None:
            os.environ.pop("BENCH_CACHE_DIR")
        else:
            os.environ["BENCH_CACHE_DIR"] = env
    return tmp, _by_number(Ledger.locate("tiny", None, tmp / "results"))


@pytest.mark.parametrize("command", ["report", "run", "worker"])
def test_a_study_killed_mid_write_reopens_with_every_result(finished, tmp_path, command, capsys):
    src, before = finished
    shutil.copytree(src / "results", tmp_path / "results")
    db = tmp_path / "results" / "tiny" / "study.db"
    journal = _killed_mid_write(db)
    args = {"report": ["report", "tiny"], "run": ["run", str(src / "tiny.yaml"), "--device", "cpu", "--quiet"],
            "worker": ["worker", "tiny", "--device", "cpu", "--quiet"]}[command]
    code = main([*args, "--results", str(tmp_path / "results")])
    err = capsys.readouterr().err
    assert code == 0, err
    assert "rolled back a write a killed process left unfinished (study.db-journal)" in err
    assert "readonly" not in err and not journal.exists()
    assert _by_number(Ledger.locate("tiny", None, tmp_path / "results")) == before  # nothing redone, nothing lost


def test_a_foreign_database_with_a_hot_journal_is_left_as_it_was(tmp_path, capsys):
    db = tmp_path / "notes.db"
    with sqlite3.connect(db) as con:
        con.execute("CREATE TABLE trial_user_attributes (value_json TEXT)")  # not Optuna's: no studies table
        con.executemany("INSERT INTO trial_user_attributes VALUES (?)", [(f"mine {i}",) for i in range(2000)])
    journal = _killed_mid_write(db)
    before = db.read_bytes(), journal.read_bytes()
    code = main(["report", "tiny", "--storage", f"sqlite:///{db}"])
    err = capsys.readouterr().err
    assert code == 1 and "not a study's" in err and "left as it was" in err and len(err.strip().splitlines()) == 1
    assert (db.read_bytes(), journal.read_bytes()) == before


def _read_only(paths):
    """Make ``paths`` read-only even for root (which writes through permission bits): the
    immutable attribute where chattr works, else the permission bits (enough for a user)."""
    if os.geteuid() != 0:
        for p in paths:
            p.chmod(0o444)
        return lambda: [p.chmod(0o644) for p in paths]
    if subprocess.run(["chattr", "+i", *map(str, paths)], capture_output=True).returncode:
        pytest.skip("running as root, and chattr cannot make a file read-only here")
    return lambda: subprocess.run(["chattr", "-i", *map(str, paths)], check=True)


def test_a_read_only_study_is_read_and_refuses_writes_with_the_permission_message(finished, tmp_path, capsys):
    src, before = finished
    shutil.copytree(src / "results", tmp_path / "results")
    undo = _read_only([tmp_path / "results" / "tiny" / "study.db"])
    try:
        assert main(["report", "tiny", "--results", str(tmp_path / "results")]) == 0  # reading needs no write
        capsys.readouterr()
        code = main(["run", str(src / "tiny.yaml"), "--device", "cpu", "--quiet", "--retry-failed",
                     "--results", str(tmp_path / "results")])
    finally:
        undo()
    err = capsys.readouterr().err.strip()
    assert code == 1 and len(err.splitlines()) == 1 and "attempt to write a readonly database" in err, err


def test_a_read_only_study_with_a_hot_journal_names_what_it_needs(finished, tmp_path, capsys):
    src, _ = finished
    shutil.copytree(src / "results", tmp_path / "results")
    db = tmp_path / "results" / "tiny" / "study.db"
    undo = _read_only([db, _killed_mid_write(db)])
    try:
        code = main(["report", "tiny", "--results", str(tmp_path / "results")])
    finally:
        undo()
    err = capsys.readouterr().err.strip()
    assert code == 1 and len(err.splitlines()) == 1, err
    assert "only a read-write open can roll back" in err and "write access" in err


@pytest.mark.parametrize("which", ["result", "claim"])
def test_a_trial_state_cut_inside_its_worker_id_sets_aside_only_its_trial(written, tmp_path, capsys, which):
    """Cut before its trial id, the record's kind was unreadable and every later record went aside
    (trials #0–#3 lost, 27 records). Its kind is readable, its trial told by the records around it."""
    data, before = written
    lines = data.splitlines(keepends=True)
    trial = 0 if which == "result" else 1
    k = [i for i, line in enumerate(lines) if line.startswith(b'{"op_code":6,') and b'"trial_id":%d,' % trial in line]
    k = k[-1] if which == "result" else k[0]  # trial 0's state COMPLETE, or trial 1's claim (RUNNING)
    cut = lines[k][:lines[k].index(b'"worker_id":"') + 25] + b"\n"  # cut inside its worker_id
    later = [i for i in range(k + 1, len(lines)) if b'"trial_id":%d,' % trial in lines[i]]
    path, ledger, err, side = _repair(tmp_path, b"".join(lines[:k] + [cut] + lines[k + 1:]), capsys)
    assert side == cut + b"".join(lines[i] for i in later)
    assert f"trial #{trial} of study 'tiny': back as before" in err and "unknown kind" not in err
    after = _by_number(ledger)
    others = [n for n in before if n != trial]
    assert all(after[n] == before[n] for n in others)  # every other trial's result kept
