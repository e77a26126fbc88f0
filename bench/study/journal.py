"""Journal files, checked and repaired before anything appends to them (``bench.study.storage``
opens them): a file whose first line is no journal record is refused and left as it was; a line
torn by a full disk or a crash, or damaged in place, sets aside only the records that depend on
it, kept beside the journal in ``PATH.torn-<time>`` (never deleted), and one line says what.

Reads Optuna's journal format (``optuna.storages.journal``: one JSON record a line) at the byte
level: no Optuna object is built, so a foreign file is never parsed as a study.
"""
from __future__ import annotations

import enum
import json
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench import console
from bench.errors import BenchError

try:  # Optuna's names for its journal operations: its own enum, which Optuna keeps in a private module
    from optuna.storages.journal._storage import JournalOperation
except ImportError:  # the numbers are the on-disk format, fixed since Optuna 3.1: the same names, here
    class JournalOperation(enum.IntEnum):  # type: ignore[no-redef]
        CREATE_STUDY, DELETE_STUDY, SET_STUDY_USER_ATTR, SET_STUDY_SYSTEM_ATTR, CREATE_TRIAL = range(5)
        SET_TRIAL_PARAM, SET_TRIAL_STATE_VALUES, SET_TRIAL_INTERMEDIATE_VALUE, SET_TRIAL_USER_ATTR = range(5, 9)
        SET_TRIAL_SYSTEM_ATTR, DISCARD_TRIALS = 9, 10

STUDY_OPS = (JournalOperation.DELETE_STUDY, JournalOperation.SET_STUDY_USER_ATTR,
             JournalOperation.SET_STUDY_SYSTEM_ATTR)
TRIAL_OPS = (JournalOperation.SET_TRIAL_PARAM, JournalOperation.SET_TRIAL_STATE_VALUES,
             JournalOperation.SET_TRIAL_INTERMEDIATE_VALUE, JournalOperation.SET_TRIAL_USER_ATTR,
             JournalOperation.SET_TRIAL_SYSTEM_ATTR)
# the id each operation refers to: a line without it is no journal record
_OP_FIELDS = {JournalOperation.CREATE_STUDY: ("study_name", str),
              **{op: ("study_id", int) for op in (*STUDY_OPS, JournalOperation.CREATE_TRIAL)},
              **{op: ("trial_id", int) for op in TRIAL_OPS}, JournalOperation.DISCARD_TRIALS: (None, None)}
_START = b'{"op_code":'  # how Optuna writes every record: op_code first, then worker_id, then the id
_OP = re.compile(rb'\{"op_code":(\d+),')
_ID = re.compile(rb'"(study_id|trial_id)":(\d+)[,}]')  # where it stands in a damaged line (quotes in strings are escaped)
_WORKER = re.compile(rb'"worker_id":"([^"\\\n]*)')  # its readable start, even when cut inside it
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


def check_journal(path: Path, create: bool) -> None:
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
        if op == JournalOperation.CREATE_STUDY and rec["study_name"] not in self.studies:
            self.studies[rec["study_name"]] = self.names_add(rec["study_name"])
        elif op == JournalOperation.DELETE_STUDY and rec["study_id"] in self.names:
            self.studies.pop(self.names.pop(rec["study_id"]), None)
        elif op == JournalOperation.CREATE_TRIAL and rec["study_id"] in self.names:
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
    rec = {"op_code": JournalOperation.CREATE_TRIAL, "worker_id": "bench-journal-repair", "study_id": study_id,
           "datetime_start": now, "datetime_complete": now, "state": FAIL, "value": None, "values": None,
           "params": {}, "distributions": {}, "user_attrs": {"dropped": "torn in the journal (set aside by bench)"},
           "system_attrs": {}, "intermediate_values": {}}
    return json.dumps(rec, separators=(",", ":")).encode() + b"\n"


def plan_repair(data: bytes) -> Repair | None:
    """How to repair a journal's bytes, or None when every line is a whole record.

    A damaged line sets aside the least that keeps the journal consistent:
    - a write cut short (no newline), alone or followed by the next write on its line: the
      torn part only. No reader could read it, so nothing written later refers to it.
    - a record on a trial: it, and the later records on that trial (which stays as it was before);
      one cut before its trial id names its trial by the records around it (``_nearby_trials``).
    - a record on a study's attributes: it alone (it created nothing).
    - a trial's creation: it, replaced by a failed stand-in trial that keeps later trial ids
      and numbers right, and the later records on that trial.
    - a study's creation, or a record whose kind cannot be read: it and every later record
      (study and trial ids after it cannot be trusted). A trial's creation cut before its study
      id belongs to the journal's only study, when it has one.
    Raises BenchError when the data is not a journal (its first line is no record)."""
    lines = data.splitlines(keepends=True)
    recs = [_record(line) for line in lines]
    if all(rec is not None for rec in recs):
        return None
    if lines and _record(lines[0]) is None and not (len(lines) == 1 and lines[0].startswith(_START)
                                                    and not lines[0].endswith(b"\n")):
        raise BenchError("not an Optuna journal (its first line is not a journal record)")
    plan = _Planner()
    for at, line in enumerate(lines):
        plan.line(recs, at, line)
    return plan.result(data)


class _Planner:
    """A repair as ``plan_repair`` plans it, line by line: the lines kept and set aside, what
    Optuna would replay of those kept, and the trials whose later records go aside."""

    def __init__(self) -> None:
        self.out: list[bytes] = []
        self.aside: list[bytes] = []
        self.rep = Repair(b"", b"")
        self.replay = _Replay()
        self.dead: set[int] = set()  # trials whose later records go aside
        self.touched: set[int] = set()

    def line(self, recs: list[dict[str, Any] | None], at: int, line: bytes) -> None:
        """Keep or set aside line ``at`` (``recs[at]``: it as a record, or None)."""
        rec, rep = recs[at], self.rep
        if rec is None and not rep.unreadable:
            cut = _salvage(line)
            if cut or not line.endswith(b"\n"):  # a write cut short: a whole record may follow on its line
                rep.cut_short += 1
                self.aside.append(line[:cut] if cut else line)
                if not cut:
                    return
                line, rec = line[cut:], _record(line[cut:])
            else:
                self.damaged(recs, at, line)
                return
        if rep.unreadable:  # every record after an unreadable one
            self.after_unreadable(line, rec)
            return
        if rec.get("trial_id") in self.dead:
            self.aside.append(line)
            rep.dependent += 1
            return
        self.out.append(line)
        self.replay.apply(rec)

    def damaged(self, recs: list[dict[str, Any] | None], at: int, line: bytes) -> None:
        """Set aside a whole line damaged in place, and what depends on it (``plan_repair``)."""
        rep, replay = self.rep, self.replay
        rep.damaged += 1
        self.aside.append(line)
        op, kind, ident = _readable(line)
        if op in TRIAL_OPS and kind is None:  # cut before its trial id: which trial, from around it
            kind, ident = "trial_id", _nearby_trials(recs, at, line)
        if op == JournalOperation.CREATE_TRIAL and kind is None and len(replay.names) == 1:  # one study: its trial
            kind, ident = "study_id", next(iter(replay.names))
        ids = ident if isinstance(ident, set) else {ident} - {None}
        if op in TRIAL_OPS and kind == "trial_id" and ids:
            self.dead.update(ids)
            self.touched.update(ids)
        elif op in STUDY_OPS and kind == "study_id":
            study = replay.names.get(ident, f"study {ident}")
            rep.studies[study] = rep.studies.get(study, 0) + 1
        elif op == JournalOperation.DISCARD_TRIALS or (op == JournalOperation.CREATE_TRIAL and kind == "study_id"
                                                       and ident not in replay.names):
            pass  # it changed nothing Optuna replays
        elif op == JournalOperation.CREATE_TRIAL and kind == "study_id":
            stand_in = _stand_in(ident)
            self.out.append(stand_in)
            self.dead.add(len(replay.trials))
            self.touched.add(len(replay.trials))
            replay.apply(_record(stand_in))
            rep.stand_ins += 1
        else:
            rep.unreadable = True

    def after_unreadable(self, line: bytes, rec: dict[str, Any] | None) -> None:
        """Set aside a line after a damaged record of unknown kind, noting the trials it touched."""
        self.aside.append(line)
        if rec is None:
            self.rep.damaged += 1
            return
        self.rep.dependent += 1
        self.replay.apply(rec)
        if rec["op_code"] == JournalOperation.CREATE_TRIAL and rec["study_id"] in self.replay.names:
            self.touched.add(len(self.replay.trials) - 1)
        if "trial_id" in rec:
            self.touched.add(rec["trial_id"])

    def result(self, data: bytes) -> Repair:
        """The repair planned, once every line of ``data`` is through ``line``."""
        rep = self.rep
        for tid in sorted(self.touched):
            found = self.replay.label(tid)
            if found:
                rep.trials.setdefault(found[0], []).append(found[1])
        rep.keep, rep.aside = b"".join(self.out), b"".join(self.aside)
        rep.tail = rep.intact and rep.cut_short == 1 and data == rep.keep + rep.aside
        return rep


def _readable(line: bytes) -> tuple[int | None, str | None, int | None]:
    """What a damaged line still says: its operation, and the id it refers to (study or trial)."""
    head = _OP.match(line)
    found = _ID.search(line, head.end()) if head else None
    return (int(head[1]) if head else None, found[1].decode() if found else None,
            int(found[2]) if found else None)


def _nearby_trials(recs: list[dict[str, Any] | None], at: int, line: bytes) -> set[int]:
    """The trial a trial operation cut before its id most likely wrote to, from the whole
    records around it by the same worker (its id's readable start): bench writes a trial's
    result (user attribute ``record``) just before the state that finishes it, and claims a
    trial (its state) just before signing it (user attribute ``worker``); failing those, the
    trials of the nearest records before and after it (both, when they differ)."""
    found = _WORKER.search(line)
    prefix = found[1].decode("utf-8", "replace").rstrip("\ufffd") if found else ""

    def near(step: int) -> dict[str, Any] | None:
        i = at + step
        while 0 <= i < len(recs):
            r = recs[i]
            if r is not None and "trial_id" in r and r["worker_id"].startswith(prefix):
                return r
            i += step
        return None
    before, after = near(-1), near(+1)
    if (before is not None and before["op_code"] == JournalOperation.SET_TRIAL_USER_ATTR
            and "record" in before.get("user_attr", {})):
        return {before["trial_id"]}
    if (after is not None and after["op_code"] == JournalOperation.SET_TRIAL_USER_ATTR
            and "worker" in after.get("user_attr", {})):
        return {after["trial_id"]}
    return {r["trial_id"] for r in (before, after) if r is not None}


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
