"""Files bench writes: whole or not at all, and only its own (memo files carry a marker); bench's
own folder (``default_dir``) and the name of every non-data file bench keeps in it, here and
nowhere else: the decoded-data caches beside them are bench.data.cache's."""
from __future__ import annotations

import errno
import json
import os
import re
import stat
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from bench import console
from bench.errors import BenchError


PEAKS_FILE = "peak-flops.json"  # bench.utilisation's measured GEMM peaks (a memo)
KERNELS_FILE = "attention-kernels.json"  # bench.attention_kernels' measured choices (a memo)
INDUCTOR_DIR = "inductor"  # torch.compile's cache (bench.device.compile_model): a folder bench holds
_OWN_NAME = re.compile(rf"{re.escape(PEAKS_FILE)}|{re.escape(KERNELS_FILE)}|{INDUCTOR_DIR}(\.damaged-[0-9-]+)?")


def default_dir() -> Path:
    """bench's own folder: ``$BENCH_CACHE_DIR``, else ``$XDG_CACHE_HOME/bench``, else ``~/.cache/bench``."""
    if os.environ.get("BENCH_CACHE_DIR"):
        return Path(os.environ["BENCH_CACHE_DIR"]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or "~/.cache").expanduser() / "bench"


def is_own_name(name: str) -> bool:
    """Whether ``name`` in bench's folder is one of its non-data files (a memo, the compile cache or
    a damaged copy of it set aside)."""
    return _OWN_NAME.fullmatch(name) is not None


def atomic_write(path: Path, write: Callable[[Any], Any], binary: bool = False) -> None:
    """Write through a temp file in the same folder, then rename: never a half-written file."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")  # not mkstemp: keep umask perms
    try:
        with open(tmp, "xb" if binary else "x", **({} if binary else {"encoding": "utf-8", "newline": ""})) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def check_writable(folder: Path) -> Path:
    """Make ``folder`` (a results folder: bench's own) and prove a file can be written in it,
    before any work whose results would land there; one clear error if not."""
    folder = Path(folder)
    probe = folder / f".write-test.{uuid.uuid4().hex[:8]}"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"bench")
        probe.unlink()
    except OSError as err:
        raise BenchError(f"cannot write results to {folder}: {err.strerror or err}") from None
    return folder


MEMO_FORMAT = "bench-memo"  # the marker of a memo file bench wrote: only such a file is ever rewritten
MEMO_MAX_BYTES = 1 << 20  # a memo holds a few hundred bytes per device: anything larger is not one
_warned: set[str] = set()  # memo files said to be foreign, once per process


@dataclass(frozen=True)
class Memo:
    """A measurement kept across processes in a small JSON file of bench's cache folder (a GEMM
    peak, an attention-kernel choice): ``{"format": "bench-memo", "kind": KIND, "entries":
    {key: value}}``. ``key`` must match ``keys`` and a value pass ``valid``. A file written
    before the marker existed counts as bench's when every key and value is one it writes."""

    kind: str
    keys: re.Pattern[str]
    valid: Callable[[Any], bool]

    def read(self, path: Path) -> tuple[dict[str, Any] | None, str | None]:
        """(the valid entries, None) when ``path`` is absent or bench's own memo; (None, why not)
        for anything else: never followed through a link, never read past MEMO_MAX_BYTES, never a
        device or a FIFO."""
        try:
            data = _read_regular(path, MEMO_MAX_BYTES)
        except FileNotFoundError:
            return {}, None
        except OSError as err:
            return None, err.strerror or str(err)
        try:
            found = json.loads(data)
        except ValueError:
            return None, "not JSON"
        if isinstance(found, dict) and found.get("format") == MEMO_FORMAT:
            entries = found.get("entries")
            if found.get("kind") != self.kind or not isinstance(entries, dict):
                return None, f"a bench memo, but not of {self.kind}"
            return {k: v for k, v in entries.items() if self.valid(v)}, None
        if isinstance(found, dict) and all(isinstance(k, str) and self.keys.fullmatch(k) and self.valid(v)
                                           for k, v in found.items()):
            return dict(found), None  # written by a bench from before the marker
        return None, f"not a bench memo of {self.kind}"

    def write(self, path: Path, entries: dict[str, Any]) -> None:
        atomic_write(path, lambda f: json.dump({"format": MEMO_FORMAT, "version": 1, "kind": self.kind,
                                                "entries": entries}, f, indent=1))


def _read_regular(path: Path, limit: int) -> bytes:
    """The bytes of the regular file ``path`` (not through a symbolic link), at most ``limit``;
    OSError naming why otherwise."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)  # NONBLOCK: a FIFO cannot hang us
    except OSError as err:
        if err.errno == errno.ELOOP:
            raise OSError(err.errno, "a symbolic link") from None
        raise
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise OSError(errno.EINVAL, "not a regular file")
        if st.st_size > limit:
            raise OSError(errno.EFBIG, f"{st.st_size:,} bytes: larger than any memo")
        chunks, size = [], 0
        while size <= limit:
            chunk = os.read(fd, limit + 1 - size)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        if size > limit:  # grew as we read it
            raise OSError(errno.EFBIG, "larger than any memo")
        return b"".join(chunks)
    finally:
        os.close(fd)


def remembered(path: Path, key: str, measure: Callable[[], Any], memo: Memo,
               trust: Callable[[Any], bool] = lambda _value: True) -> Any:
    """``key``'s value in the memo file at ``path`` (when ``trust`` accepts it: a remembered figure
    this machine cannot have is measured over), else ``measure()``, then kept there. Only a
    file that is absent or bench's own memo is ever written; a foreign one (not JSON, another
    program's, a link, a device, a huge file) is left byte-identical, said once, and the value
    is measured for this process. A file that cannot be written is left as it was (measured
    again next time): never an error."""
    known, why = memo.read(path)
    if known is not None and key in known and trust(known[key]):
        return known[key]
    value = measure()
    if why is not None:
        if str(path) not in _warned:
            _warned.add(str(path))
            console.info(f"{path}: {why}, not bench's {memo.kind} memo; left as it was (this run keeps its "
                         "measurement in memory; move the file away to let bench remember it)")
        return value
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        now, _ = memo.read(path)  # again: another process may have added its own, or put a file there
        if now is not None:
            memo.write(path, {**known, **now, key: value})
    except OSError:
        pass
    return value


# --- folders bench makes for a tool (torch.compile's cache) ---------------------------------------

MARK = ".bench-owned"  # in a folder bench made for a tool's cache: proof that bench may remove it
_held: dict[str, int] = {}  # folder → the open mark this process holds a shared lock on


def hold_folder(folder: Path) -> None:
    """Make ``folder`` (a tool's cache that bench points at, e.g. torch.compile's), mark it as
    bench's own, note its use (the mark's mtime) and hold a shared lock on the mark while this
    process lives: ``prune_folders`` passes over a held folder. OSError when it cannot be made."""
    import fcntl

    folder = Path(folder)
    mark = folder / MARK
    fd = _held.get(str(folder))
    if fd is not None and same_file(fd, mark):
        return
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(mark, os.O_RDONLY | os.O_CREAT | os.O_NOFOLLOW, 0o666)
    try:
        os.utime(fd)  # its last use: what a prune goes by (a cache hit writes nothing else)
        fcntl.flock(fd, fcntl.LOCK_SH)
    except OSError:  # no flock on this file system: held by the mark's time alone
        pass
    if str(folder) in _held:
        os.close(_held[str(folder)])  # the folder it held was moved away (set aside)
    _held[str(folder)] = fd


def same_file(fd: int, path: Path) -> bool:
    """Whether the open ``fd`` is still the file at ``path`` (not removed or replaced since; a
    link at ``path`` is not followed)."""
    try:
        a, b = os.fstat(fd), os.lstat(path)
    except OSError:
        return False
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def prune_folders(root: Path, name: str, days: float) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Remove ``root/name`` and the copies set aside beside it (``name.damaged-*``) when each is
    provably bench's (a folder, not a link, holding bench's mark), unused for ``days`` days (its
    mark and everything in it older) and held by no process; returns (removed, left alone with
    why), as ``bench.data.cache.prune`` does for data caches."""
    import fcntl
    import glob
    import shutil
    import time

    cutoff = time.time() - days * 86400
    removed: list[dict[str, Any]] = []
    kept: list[dict[str, Any]] = []
    for path in sorted([*Path(root).glob(glob.escape(name)), *Path(root).glob(glob.escape(name) + ".damaged-*")]):
        entry = {"cache": path.name, "path": str(path)}
        try:
            st = os.lstat(path)
            if not stat.S_ISDIR(st.st_mode):
                kept.append({**entry, "why": "not bench's (not a folder)"})
                continue
            if not stat.S_ISREG(os.lstat(path / MARK).st_mode):
                raise FileNotFoundError
        except FileNotFoundError:
            kept.append({**entry, "why": f"not bench's (no {MARK} in it)"})
            continue
        except OSError as err:
            kept.append({**entry, "why": err.strerror or str(err)})
            continue
        newest, size = 0.0, 0
        for dirpath, dirnames, filenames in os.walk(path):
            for n in [*dirnames, *filenames]:
                try:
                    s = os.lstat(os.path.join(dirpath, n))
                except OSError:
                    continue
                newest = max(newest, s.st_mtime)
                size += s.st_size if stat.S_ISREG(s.st_mode) else 0
        newest = max(newest, os.lstat(path / MARK).st_mtime)
        if newest > cutoff:
            continue
        fd = os.open(path / MARK, os.O_RDONLY | os.O_NOFOLLOW)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                kept.append({**entry, "why": "in use (a process compiles with it)"})
                continue
            except OSError:
                pass
            shutil.rmtree(path)  # never follows a link inside it
        finally:
            os.close(fd)
        removed.append({**entry, "kind": "compile cache", "gib": size / 2**30})
    return removed, kept
