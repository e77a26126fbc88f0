"""Decode once, reuse everywhere: real datasets as memory-mappable uint8 caches.

The first load of an image folder (or CIFAR) at a resolution R decodes every image it
selects, with every core, into ``<cache dir>/<name>-<R>px-<key>/``: ``train.images.npy``
and ``test.images.npy`` ((N, 3, R, R) uint8, memory-mappable), ``train.labels.npy`` and
``test.labels.npy`` (int64) and ``meta.json`` (classes, counts, sources). The key hashes
the selected files' paths, sizes and mtimes with R and the selection (class subset,
sizes), so a changed folder builds a new cache and an unchanged one is reused by every
trial, worker and later run on the machine.

Safe with concurrent builders: whoever holds an flock on ``<dir>.lock`` builds, the others
wait and then read its result. A cache is built in ``<dir>.partial-<pid>-<random>`` and
renamed into place, so no reader ever sees half of one; a crash leaves a partial folder that
the next builder (or ``bench cache --prune``) removes. On a file system without flock, a
second finished build loses the rename and is discarded. Every file is allocated in full
before it is written (``posix_fallocate``), so a full disk is an error naming the folder,
never a SIGBUS in a memory map.

Trusted, not assumed: ``meta.json`` holds a checksum of each array (blake2b, in 8 MiB blocks
hashed in threads) and a run checks them before it uses the cache, once per host and state
of the files: a match is remembered in ``verified.json`` with each file's device, inode,
size, mtime and ctime, and later opens compare only those (microseconds). Any write to a
file — write(2), a store through a memory map, a truncation — moves its mtime and ctime, and
ctime cannot be set back, so a file overwritten in place is hashed again and refused. Not
caught: a change made while a run already holds the cache, and a writer that kept its map
of the file across our verification (its later stores to already-dirty pages need not move
the times); bit rot below the file system moves no times either. Labels outside the classes
are refused at every open. A process that opened a cache holds a shared flock on its
``meta.json`` as long as it holds the arrays; ``bench cache --prune`` passes over such a cache.

``bench cache --prune`` removes only what is provably bench's own (see ``prune``), file by
file, never a tree it has not read.

Geometry: the shorter side is resized to R (bilinear, antialiased) and the centre R×R kept;
for square sources (CIFAR, most proxies) that is a plain resize. 16-bit images are scaled
to 8 bits, not clipped. Every unreadable image is found while the cache is built and named
in one message, before any training.

What a source holds and which of it is taken (listing, class subsets, balanced samples,
decoding one image) is ``bench.data.folders``'s; this module keys, builds, checks and prunes.
torch-free (numpy; PIL on use), so its worker processes start fast.
"""
from __future__ import annotations

import errno
import glob
import hashlib
import io
import json
import math
import os
import re
import shutil
import stat
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from bench import console
from bench.config import DataConfig
from bench.data.folders import (cifar_classes, cifar_files, decode, fit, imagefolder_classes, list_split, read_cifar,
                                select_classes, selection)
from bench.errors import BenchError
from bench.own_files import default_dir, is_own_name, same_file

VERSION = 2  # bump when the cache's content or layout changes: old caches are then not read (2: checksums)
FORMAT = "bench-cache"  # meta.json's marker: prune removes only a folder that says this (or a version-1 cache)
MAX_NAMED = 20  # unreadable images named in the message; the rest counted
POOL_ABOVE_S = 3.0  # decoding that would take one process longer than this goes to every core
USED = "last-used"  # touched at every open
ARRAYS = ("train.images.npy", "train.labels.npy", "test.images.npy", "test.labels.npy")
VERIFIED = "verified.json"  # per host: the arrays' identities when their checksums last matched
OWN = frozenset({*ARRAYS, "meta.json", USED, VERIFIED})  # every file bench writes in a cache
HASH_BLOCK = 2**23  # checksums: blake2b of each 8 MiB block (in threads), then of their digests
_CACHE = re.compile(r"[^/]+-[1-9][0-9]*px-[0-9a-f]{20}")  # <name>-<size>px-<key>, as Entry names it
_PARTIAL = re.compile(rf"({_CACHE.pattern})\.partial-[0-9]+-[0-9a-f]+")
_LOCK = re.compile(rf"({_CACHE.pattern})\.lock")
_STAMP_TMP = re.compile(r"verified\.json\.[0-9]+-[0-9a-f]+")  # a verified.json being replaced


def host_memory() -> int:
    """Bytes of host memory a new allocation can have now without swapping (Linux's
    MemAvailable: free memory plus what the page cache would give back), else the free pages,
    else 0 (unknown)."""
    try:
        with open("/proc/meminfo", "rb") as f:
            for line in f:
                if line.startswith(b"MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 0


def cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


# --- decoding, with every core -----------------------------------------------------------


def _reason(err: BaseException) -> str:
    text = str(err).splitlines()[0] if str(err) else type(err).__name__
    if type(err).__name__ == "DecompressionBombError":
        return f"decompression bomb ({text})"
    return text


def _decode_into(out_path: str, start: int, items: Any, size: int) -> list[tuple[str, str]]:
    """Decode ``items`` (paths, or an (n, 3, h, w) uint8 array to resize) into rows
    ``start…`` of the .npy at ``out_path``: the (item, reason) of each that failed."""
    from PIL import Image

    out = np.load(out_path, mmap_mode="r+")
    failed = []
    for i, item in enumerate(items):
        try:
            if isinstance(item, np.ndarray):
                out[start + i] = fit(Image.fromarray(item.transpose(1, 2, 0)), size)
            else:
                out[start + i] = decode(item, size)
        except Exception as err:  # corrupt, truncated, a bomb, a format PIL lacks: all named at the end
            failed.append((str(item) if not isinstance(item, np.ndarray) else f"#{start + i}", _reason(err)))
    out.flush()
    del out
    return failed


def _decode_all(jobs: list[tuple[Path, Any]], size: int, workers: int, label: str, quiet: bool) -> list[tuple[str, str]]:
    """``jobs``: (an .npy to fill, its items). The first chunk is decoded here and timed;
    when the rest would take this process more than ``POOL_ABOVE_S``, every core decodes it
    (starting worker processes costs about a second: small or cheap images stay here)."""
    total = sum(len(items) for _, items in jobs)
    chunk = max(16, min(512, math.ceil(total / (workers * 16))))
    tasks = [(str(path), s, items[s:s + chunk]) for path, items in jobs for s in range(0, len(items), chunk)]
    failed: list[tuple[str, str]] = []
    with console.progress(label, total, quiet=quiet) as advance:
        t0 = time.perf_counter()
        path, s, items = tasks.pop(0)
        failed += _decode_into(path, s, items, size)
        advance(len(items))
        rest = total - len(items)
        if workers <= 1 or (time.perf_counter() - t0) / len(items) * rest < POOL_ABOVE_S:
            for path, s, items in tasks:
                failed += _decode_into(path, s, items, size)
                advance(len(items))
            return failed
        import multiprocessing  # spawned, not forked: the parent may hold threads (torch, heartbeats)

        from concurrent.futures.process import BrokenProcessPool

        pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"))
        try:
            futures = {pool.submit(_decode_into, path, s, items, size): (len(items), items) for path, s, items in tasks}
            for future in as_completed(futures):
                try:
                    failed += future.result()
                except BrokenProcessPool:
                    n, items = futures[future]
                    raise BenchError(f"{label}: a decoding process died (out of memory, or a decoder crashed) "
                                     f"on one of {n} images from {items[0]}; set data.cache_workers: 1 to find "
                                     "which") from None
                advance(futures[future][0])
        except BaseException:  # Ctrl-C, a dead worker: stop now, not after every chunk queued
            pool.shutdown(wait=False, cancel_futures=True)
            raise
        pool.shutdown()
    return failed


# --- the cache ------------------------------------------------------------------------------

class _Reading:
    """A shared flock on a cache's ``meta.json``, held while this process uses the cache:
    prune takes that lock exclusively without waiting, and passes over a cache it cannot take."""

    def __init__(self, fd: int | None) -> None:
        self.fd = fd

    @classmethod
    def take(cls, meta: Path) -> _Reading | None:
        """The lock on ``meta``; None when the cache is gone (pruned while we waited)."""
        import fcntl

        try:
            fd = os.open(meta, os.O_RDONLY)
        except FileNotFoundError:
            return None
        except OSError:  # unreadable: the open that follows says so, naming the folder
            return cls(None)
        try:
            fcntl.flock(fd, fcntl.LOCK_SH)  # waits only while a prune is removing it
        except OSError:  # no flock on this file system: prune cannot take it either, and passes over it
            pass
        if os.fstat(fd).st_nlink == 0:  # removed while we waited
            os.close(fd)
            return None
        return cls(fd)

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def __del__(self) -> None:
        self.close()


@dataclass
class Cached:
    """A cache on disk, opened: images are read-only memory maps. While they (or this) live,
    the cache is held (a shared lock): ``bench cache --prune`` leaves it alone."""
    path: Path
    classes: list[str]
    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    built_s: float | None  # seconds this process spent building it (None: it was there)
    reading: _Reading | None = field(default=None, repr=False)
    fingerprint: dict[str, Any] | None = None  # the dataset it holds, wherever it lies (listing: see identity())

    @property
    def nbytes(self) -> int:
        return self.train_images.nbytes + self.test_images.nbytes

    def close(self) -> None:
        """Let go of the cache now (a prune may then remove it), not when the arrays are freed."""
        if self.reading is not None:
            self.reading.close()


def _damaged(path: Path, why: str) -> BenchError:
    return BenchError(f"the data cache {path} is damaged ({why}); remove that folder and run again to rebuild it")


def _open(path: Path, built_s: float | None = None) -> Cached | None:
    """The cache at ``path``, checked (shapes, labels within the classes, checksums) and held;
    None if a prune removed it meanwhile."""
    reading = _Reading.take(path / "meta.json")
    if reading is None:
        return None
    try:
        try:
            meta = json.loads((path / "meta.json").read_text())
            arrays = {f"{s}_{k}": np.load(path / f"{s}.{k}.npy", mmap_mode="r" if k == "images" else None)
                      for s in ("train", "test") for k in ("images", "labels")}
            n_classes, px = len(meta["classes"]), meta["size"]
            for s in ("train", "test"):
                images, labels = arrays[f"{s}_images"], arrays[f"{s}_labels"]
                if not len(images) == len(labels) == meta["counts"][s]:
                    raise ValueError(f"{s}: {len(images)} images, {len(labels)} labels, {meta['counts'][s]} expected")
                if images.dtype != np.uint8 or images.shape[1:] != (3, px, px):
                    raise ValueError(f"{s}.images.npy holds {images.dtype} {images.shape}, "
                                     f"not uint8 (n, 3, {px}, {px})")
                if labels.dtype.kind not in "iu" or labels.ndim != 1:
                    raise ValueError(f"{s}.labels.npy holds {labels.dtype} {labels.shape}, not one integer per image")
                if len(labels) and (labels.min() < 0 or labels.max() >= n_classes):  # here, not as an IndexError
                    outside = (labels < 0) | (labels >= n_classes)                   # in the first trial
                    raise ValueError(f"{s}.labels.npy holds label {labels[outside][0]}, outside 0…{n_classes - 1} "
                                     f"for {n_classes} classes ({int(outside.sum())} such labels)")
            sums = meta.get("checksums")
            if not isinstance(sums, dict) or set(sums) != set(ARRAYS):
                raise ValueError("its meta.json has no checksums")
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise _damaged(path, f"{type(err).__name__}: {err}") from None
        _verify(path, sums)
    except BaseException:
        reading.close()
        raise
    try:  # when it was last used: what `bench cache --prune` goes by
        (path / USED).touch()
    except OSError:  # a read-only cache folder shared between users: fine, just not tracked
        pass
    for k in ("train_images", "test_images"):  # the arrays hold the lock: it lives as long as they do
        arrays[k]._bench_reading = reading
    return Cached(path, meta["classes"], built_s=built_s, reading=reading, **arrays)


# --- checksums ------------------------------------------------------------------------------

def checksum(path: Path) -> str:
    """blake2b (128 bits) of the file's size and the blake2b of each HASH_BLOCK of it. The
    blocks hash in threads (hashlib lets go of the GIL), so a large cache verifies at the
    disk's pace rather than one core's (about 1 GiB/s)."""
    from concurrent.futures import ThreadPoolExecutor

    fd = os.open(path, os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size

        def block(offset: int) -> bytes:
            buf = bytearray(min(HASH_BLOCK, size - offset))
            view, got = memoryview(buf), 0
            while got < len(buf):  # a network file system may return less than asked: read on
                n = os.preadv(fd, [view[got:]], offset + got)
                if n <= 0:
                    raise OSError(errno.EIO, f"{path} shrank while it was read")
                got += n
            return hashlib.blake2b(buf, digest_size=16).digest()

        offsets = range(0, size, HASH_BLOCK)
        if len(offsets) <= 1:
            digests = b"".join(map(block, offsets))
        else:
            with ThreadPoolExecutor(min(len(offsets), cores(), 16)) as pool:
                digests = b"".join(pool.map(block, offsets))
    finally:
        os.close(fd)
    return "blake2b-8m:" + hashlib.blake2b(size.to_bytes(8, "little") + digests, digest_size=16).hexdigest()


def _identities(folder: Path) -> dict[str, list[int]]:
    """What any write to an array changes: its device, inode, size, mtime and ctime. (Plain
    strings: this runs at every open, and a Path costs more than the stat.)"""
    where = os.fspath(folder)
    out = {}
    for f in ARRAYS:
        st = os.stat(f"{where}/{f}")
        out[f] = [st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns]
    return out


def _host() -> str:
    return os.uname().nodename


def _stamps(folder: Path) -> dict[str, Any]:
    try:
        fd = os.open(f"{os.fspath(folder)}/{VERIFIED}", os.O_RDONLY)
        try:
            chunks = [os.read(fd, 1 << 14)]  # small reads: os.read allocates what it is asked for
            while len(chunks[-1]) == 1 << 14:
                chunks.append(os.read(fd, 1 << 14))
            stamps = json.loads(b"".join(chunks))
        finally:
            os.close(fd)
    except (OSError, ValueError):
        return {}
    return stamps if isinstance(stamps, dict) else {}


def _stamp(folder: Path, ids: dict[str, list[int]]) -> None:
    """Remember that the arrays with identities ``ids`` matched their checksums on this host
    (per host: a file system shared by several shows each its own device numbers)."""
    stamps = _stamps(folder)
    stamps[_host()] = ids
    tmp = folder / f"{VERIFIED}.{os.getpid()}-{os.urandom(4).hex()}"
    try:
        tmp.write_text(json.dumps(dict(list(stamps.items())[-64:])))
        os.replace(tmp, folder / VERIFIED)
    except OSError:  # a read-only cache shared between users: verified again at every open
        tmp.unlink(missing_ok=True)


def _verify(path: Path, sums: dict[str, str]) -> None:
    """Check the arrays against their checksums, unless this host already did for these very
    files (same identities): then only five stats and a small read."""
    now = _identities(path)
    if _stamps(path).get(_host()) == now:
        return
    with _locked(path.with_name(path.name + ".lock"), path.name, quiet=True):  # one process hashes, others wait
        now = _identities(path)
        if _stamps(path).get(_host()) == now:
            return
        for f in ARRAYS:
            if checksum(path / f) != sums[f]:
                raise BenchError(f"the data cache {path} was changed after it was built ({f} does not match its "
                                 "checksum); remove that folder and run again to rebuild it")
        if _identities(path) == now:  # not written to while we read it
            _stamp(path, now)


# --- what is bench's own --------------------------------------------------------------------

def _own_file(folder: Path, name: str) -> bool:
    """Whether ``folder/name`` is a plain file of a name bench writes in a cache."""
    if name not in OWN and not _STAMP_TMP.fullmatch(name):
        return False
    try:
        return stat.S_ISREG(os.lstat(folder / name).st_mode)
    except OSError:
        return False


def _foreign(folder: Path) -> str | None:
    """The first entry of ``folder`` that bench never writes there, if any."""
    try:
        names = sorted(os.listdir(folder))
    except OSError as err:
        return f"cannot list it: {err.strerror or err}"
    return next((repr(n) for n in names if not _own_file(folder, n)), None)


def _whose(path: Path) -> tuple[str | None, str]:
    """("cache" | "partial" | "lock", "") when ``path`` is provably bench's own, else (None,
    why not). A cache: a folder named ``<name>-<px>px-<key>`` whose meta.json says FORMAT (or
    is a version-1 cache's) and names this very folder, holding only files bench writes. A
    partial: ``<cache>.partial-<pid>-<hex>`` holding only such files. A lock: an empty
    ``<cache>.lock``. Links are never followed."""
    try:
        st = os.lstat(path)
    except OSError as err:
        return None, err.strerror or str(err)
    name = path.name
    if stat.S_ISLNK(st.st_mode):
        return None, "a symbolic link"
    if stat.S_ISREG(st.st_mode):
        return ("lock", "") if _LOCK.fullmatch(name) and st.st_size == 0 else (None, "a file")
    if not stat.S_ISDIR(st.st_mode):
        return None, "not a folder"
    if _PARTIAL.fullmatch(name):
        bad = _foreign(path)
        return ("partial", "") if bad is None else (None, f"holds {bad}, which bench never writes")
    if not _CACHE.fullmatch(name):
        return None, "not named <name>-<px>px-<key>"
    try:
        if not stat.S_ISREG(os.lstat(path / "meta.json").st_mode):
            return None, "its meta.json is not a file"
        meta = json.loads((path / "meta.json").read_text())
    except (OSError, ValueError) as err:
        return None, f"no readable meta.json ({type(err).__name__})"
    if not isinstance(meta, dict) or not (meta.get("format") == FORMAT
                                          or ("format" not in meta and meta.get("version") == 1)):
        return None, "its meta.json is not a bench cache's"
    if f"{meta.get('name')}-{meta.get('size')}px-{meta.get('key')}" != name:
        return None, "its meta.json names another folder"
    bad = _foreign(path)
    return ("cache", "") if bad is None else (None, f"holds {bad}, which bench never writes")


def _remove_own(folder: Path) -> str | None:
    """Remove ``folder`` file by file if it holds only files bench writes (meta.json last, so
    a removal cut short still reads as a cache); else, or when it fails, why not."""
    bad = _foreign(folder)
    if bad is not None:
        return f"holds {bad}, which bench never writes"
    try:
        for name in sorted(os.listdir(folder), key=lambda n: n == "meta.json"):
            (folder / name).unlink(missing_ok=True)
        folder.rmdir()
    except OSError as err:
        return f"could not remove it: {err.strerror or err}"
    return None


@contextmanager
def _try_lock(path: Path, create: bool) -> Iterator[tuple[int | None, str | None]]:
    """(fd, None) holding an exclusive flock on ``path`` if nobody holds one, else (None, why);
    never waits."""
    import fcntl

    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | (os.O_CREAT if create else 0), 0o666)
    except OSError as err:
        yield None, f"cannot open {path.name}: {err.strerror or err}"
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield None, "in use"
        except OSError:
            yield None, "this file system has no flock, so whether it is in use cannot be told"
        else:
            yield fd, None
    finally:
        os.close(fd)


def _last_used(path: Path) -> float:
    used = path / USED
    return (used if used.is_file() else path / "meta.json").stat().st_mtime


def _gib(folder: Path) -> float:
    return sum(f.stat().st_size for f in folder.iterdir() if f.is_file() and not f.is_symlink()) / 2**30


def caches(cache_dir: Path | None = None) -> list[dict[str, Any]]:
    """Every cache under ``cache_dir`` (what ``_whose`` proves one): its folder, what it holds,
    its size on disk, when it was built and last used (newest use first)."""
    root = Path(cache_dir or default_dir())
    out = []
    for path in sorted(root.iterdir()) if root.is_dir() else []:
        if _whose(path)[0] != "cache":
            continue
        try:
            meta = json.loads((path / "meta.json").read_text())
            counts = meta.get("counts", {})
            images = sum(counts.values()) if isinstance(counts, dict) else None
            out.append({"cache": path.name, "px": meta.get("size"), "classes": len(meta.get("classes", [])),
                        "images": images, "gib": _gib(path), "built": meta.get("built"),
                        "source": (meta.get("sources") or {}).get("root"),
                        "last_used": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(_last_used(path))),
                        "path": str(path)})
        except (OSError, ValueError, TypeError, AttributeError):  # removed or rewritten as we read it
            continue
    return sorted(out, key=lambda c: c["last_used"], reverse=True)


def prune(days: float, cache_dir: Path | None = None) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Remove the caches not used for ``days`` days, what crashed builds left, and lock files
    nothing needs; returns (removed, left alone with why). Only what ``_whose`` proves bench's
    own is ever removed, and only the files bench writes, one by one (never a tree it has not
    read); everything else is "not a bench cache". A cache a process holds (a shared lock on
    its meta.json: loaded by a run, or streamed) or is building or verifying (its ``.lock``)
    is passed over, and so is a partial build whose builder holds its lock."""
    if not (math.isfinite(days) and days >= 0):  # nan compares false: it would remove everything
        raise ValueError(f"days={days}: expected a finite number, at least 0")
    root = Path(cache_dir or default_dir())
    cutoff = time.time() - days * 86400
    removed: list[dict[str, Any]] = []
    kept: list[dict[str, Any]] = []
    made: set[str] = set()  # lock files prune itself created: removed below, not counted

    def keep(path: Path, why: str) -> None:
        kept.append({"cache": path.name, "path": str(path), "why": why})

    for path in sorted(root.iterdir()) if root.is_dir() else []:
        if is_own_name(path.name) and not path.is_symlink():  # memos; the compile cache (own_files.prune_folders)
            continue
        kind, why = _whose(path)
        if kind is None:
            keep(path, f"not a bench cache ({why})")
            continue
        try:
            if kind == "lock" or (kind == "cache" and _last_used(path) > cutoff):
                continue
            gib = _gib(path)
        except OSError:  # removed as we looked
            continue
        final = path.name if kind == "cache" else _PARTIAL.fullmatch(path.name).group(1)
        # the reader's lock (a cache only), then the builder's (created: a builder starting now waits for us)
        with _try_lock(path / "meta.json", create=False) if kind == "cache" else _no_lock() as (_, busy):
            if busy:
                keep(path, f"{busy} (a process has this cache loaded)" if busy == "in use" else busy)
                continue
            if not os.path.lexists(root / f"{final}.lock"):
                made.add(f"{final}.lock")
            with _try_lock(root / f"{final}.lock", create=True) as (_, building):
                if building:
                    keep(path, f"{building} (being built or verified now)" if building == "in use" else building)
                    continue
                if _whose(path)[0] != kind:  # changed since we looked
                    keep(path, "changed while it was being pruned")
                    continue
                why = _remove_own(path)
        if why:
            keep(path, why)
        else:
            removed.append({"cache": path.name, "kind": kind, "gib": gib, "path": str(path)})
    removed += _prune_locks(root, made)
    return removed, kept


def _prune_locks(root: Path, made: set[str]) -> list[dict[str, Any]]:
    """Remove the lock files under ``root`` whose cache and builds are gone (those prune just
    removed included) and nobody holds; returns them, less those prune itself created (``made``)."""
    removed: list[dict[str, Any]] = []
    names = set(os.listdir(root)) if root.is_dir() else set()
    for name in sorted(names):
        path = root / name
        if _whose(path)[0] != "lock":
            continue
        final = name[:-len(".lock")]
        if final in names or any(n.startswith(final + ".partial-") for n in names):
            continue
        with _try_lock(path, create=False) as (fd, busy):
            # a builder that opened it but has not locked it yet sees it gone once it has, and takes a new one
            if fd is not None and same_file(fd, path):
                path.unlink()
                if name not in made:
                    removed.append({"cache": name, "kind": "lock", "gib": 0.0, "path": str(path)})
    return removed


@contextmanager
def _no_lock() -> Iterator[tuple[None, None]]:
    yield None, None


def fingerprint(files: Sequence[tuple[str, int, int]], root: Path, extra: dict[str, Any]) -> str:
    """sha256 of ``extra`` and each file's path (relative to ``root``), size and mtime."""
    h = hashlib.sha256(json.dumps({"version": VERSION, **extra}, sort_keys=True, default=str).encode())
    prefix = os.fspath(root).rstrip(os.sep) + os.sep
    h.update("\n".join(f"{p[len(prefix):] if p.startswith(prefix) else p}\t{size}\t{mtime}"
                       for p, size, mtime in files).encode())
    return h.hexdigest()[:20]


@contextmanager
def _locked(lock: Path, what: str, quiet: bool) -> Iterator[bool]:
    """Hold an exclusive flock on ``lock`` (waiting for it); yields False on a file system
    without flock (or a folder we cannot write), where the atomic rename alone keeps readers
    safe. A lock file that prune removed while we waited is replaced by a new one."""
    import fcntl

    while True:
        try:
            f = open(lock, "a")
        except OSError:
            yield False
            return
        with f:
            held = True
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                if not quiet:
                    console.info(f"{what}: another process is building this cache; waiting for it")
                fcntl.flock(f, fcntl.LOCK_EX)
            except OSError:
                held = False
            if held and not same_file(f.fileno(), lock):  # removed (by a prune) while we waited
                continue
            yield held
            return


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@dataclass(frozen=True)
class Entry:
    """One cache's place: ``<cache_dir>/<name>-<size>px-<key>`` (``key``: ``fingerprint``'s)."""
    cache_dir: Path
    name: str
    size: int
    key: str

    @property
    def path(self) -> Path:
        return Path(self.cache_dir) / f"{self.name}-{self.size}px-{self.key}"


# --- writing a cache ------------------------------------------------------------------------

def _npy_header(shape: tuple[int, ...], dtype: Any) -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)),
                                               "fortran_order": False, "shape": tuple(int(n) for n in shape)})
    return buf.getvalue()


def _allocate(path: Path, shape: tuple[int, ...], dtype: Any) -> int:
    """A new .npy of ``shape`` with every block allocated now (its header's length): a full
    disk fails here as ENOSPC, not later as a SIGBUS when a memory map's page is stored to.
    (A copy-on-write file system, btrfs or ZFS, may still need new blocks on overwrite.)"""
    header = _npy_header(shape, dtype)
    total = len(header) + math.prod(shape) * np.dtype(dtype).itemsize
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        if os.write(fd, header) != len(header):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        try:
            os.posix_fallocate(fd, 0, total)
        except AttributeError:  # not on this system (macOS): sparse, as before
            os.ftruncate(fd, total)
        except OSError as err:
            if err.errno not in (errno.EINVAL, errno.EOPNOTSUPP, getattr(errno, "ENOTSUP", errno.EOPNOTSUPP)):
                raise
            os.ftruncate(fd, total)  # this file system cannot allocate ahead (glibc emulates most that lack it)
    finally:
        os.close(fd)
    return len(header)


def _write_npy(path: Path, array: np.ndarray) -> None:
    """``array`` as an .npy, allocated first, with plain writes (a full disk: ENOSPC)."""
    array = np.ascontiguousarray(array)
    offset = _allocate(path, array.shape, array.dtype)
    data = memoryview(array.reshape(-1).view(np.uint8))
    fd = os.open(path, os.O_WRONLY)
    try:
        done = 0
        while done < len(data):
            done += os.pwrite(fd, data[done:done + 2**26], offset + done)
    finally:
        os.close(fd)


def _bytes(n: int) -> str:
    return (f"{n / 2**30:.2f} GiB" if n >= 2**30 / 100 else f"{n / 2**20:.2f} MiB" if n >= 2**20 / 100
            else f"{n} bytes")


def _needs(splits: dict[str, tuple[Any, np.ndarray]], size: int, meta: dict[str, Any], block: int) -> int:
    """Bytes the cache takes on disk: each file's exact size rounded up to whole blocks, and a
    block each for verified.json and the folder."""
    up = lambda n: -(-n // block) * block  # noqa: E731
    total = up(len(json.dumps(meta, indent=1, default=str))) + 2 * block
    for _, labels in splits.values():
        n = len(labels)
        total += up(len(_npy_header((n, 3, size, size), np.uint8)) + n * 3 * size * size)
        total += up(len(_npy_header((n,), np.int64)) + 8 * n)
    return total


def cached(entry: Entry, splits: dict[str, tuple[Any, np.ndarray]], classes: list[str], sources: dict[str, Any],
           *, workers: int | None = None, quiet: bool = False) -> Cached:
    """The cache at ``entry``: opened if it is there, else built from ``splits``
    ({"train"/"test": (paths or an (n, 3, h, w) uint8 array, labels)}) by ``workers`` processes
    (None: every core)."""
    final, name = entry.path, entry.name
    for _ in range(3):  # a prune may remove it between our look and our open: then it is built again
        if (final / "meta.json").is_file():
            c = _open(final)
            if c is not None:
                return c
        try:
            final.parent.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise BenchError(f"data.cache_dir (or BENCH_CACHE_DIR): cannot create {final.parent}: "
                             f"{err.strerror or err}") from None
        if not os.access(final.parent, os.W_OK):
            raise BenchError(f"data.cache_dir: {final.parent} is not writable; set data.cache_dir (or BENCH_CACHE_DIR)")
        built_s = None
        with _locked(final.with_name(final.name + ".lock"), name, quiet) as held:
            if not (final / "meta.json").is_file():  # else built by whoever held the lock before us
                built_s = _build(entry, splits, classes, sources, workers, quiet, held)
        c = _open(final, built_s=built_s)  # outside the lock: verifying takes it
        if c is not None:
            return c
    raise BenchError(f"{name}: the cache {final} was removed each time it was opened (a `bench cache --prune` "
                     "looping?); run again")


def _build(entry: Entry, splits: dict[str, tuple[Any, np.ndarray]], classes: list[str], sources: dict[str, Any],
           workers: int | None, quiet: bool, held: bool) -> float:
    """Build the cache at ``entry`` (under its lock when ``held``): the seconds it took."""
    final, name, size, key = entry.path, entry.name, entry.size, entry.key
    _check_labels(name, splits, classes)
    for stale in final.parent.glob(glob.escape(final.name) + ".partial-*") if held else ():
        if _whose(stale)[0] == "partial":  # a crashed build's leftovers (and only those)
            _remove_own(stale)
    w = max(1, min(workers or cores(), 64))
    meta = {"format": FORMAT, "version": VERSION, "name": name, "size": size, "key": key, "classes": classes,
            "counts": {s: int(len(labels)) for s, (_, labels) in splits.items()}, "sources": sources,
            "checksums": {f: "blake2b-8m:" + "0" * 32 for f in ARRAYS},
            "built": "0000-00-00T00:00:00Z", "build_s": 1e9, "workers": w}
    need = _check_space(entry, splits, meta)
    t0 = time.perf_counter()
    partial = final.with_name(f"{final.name}.partial-{os.getpid()}-{os.urandom(4).hex()}")
    try:
        try:
            _fill(partial, entry, splits, w, quiet)
            _finish(partial, final, meta, t0)
        except OSError as err:  # a full disk (the allocation), a vanished folder: name the cache
            if err.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)):
                raise BenchError(f"{name}: no space left writing the cache {final} ({_bytes(need)} needed); "
                                 f"free space in {final.parent} or set data.cache_dir elsewhere") from None
            raise BenchError(f"{name}: cannot write the cache {final}: {err.strerror or err}") from None
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)  # ours, made by this process
        raise
    return time.perf_counter() - t0


def _check_labels(name: str, splits: dict[str, tuple[Any, np.ndarray]], classes: list[str]) -> None:
    """Refuse a label outside ``classes`` before anything is written."""
    for split, (_, labels) in splits.items():
        labels = np.asarray(labels)
        outside = (labels < 0) | (labels >= len(classes))
        if outside.any():
            raise BenchError(f"{name}: {split} label {labels[outside][0]} is outside 0…{len(classes) - 1} "
                             f"({len(classes)} classes); no cache written")


def _check_space(entry: Entry, splits: dict[str, tuple[Any, np.ndarray]], meta: dict[str, Any]) -> int:
    """The bytes the cache at ``entry`` needs (``_needs``), refused when its folder has less free."""
    final, name, size = entry.path, entry.name, entry.size
    try:
        st = os.statvfs(final.parent)
        block, free = st.f_frsize or 4096, shutil.disk_usage(final.parent).free
    except OSError as err:
        raise BenchError(f"{name}: cannot read the free space of {final.parent}: {err.strerror or err}") from None
    need = _needs(splits, size, meta, block)
    if need > free:
        raise BenchError(f"{name}: the cache needs {_bytes(need)} at {size}px, {final.parent} has {_bytes(free)} "
                         "free; free space there or set data.cache_dir elsewhere")
    return need


def _fill(partial: Path, entry: Entry, splits: dict[str, tuple[Any, np.ndarray]], workers: int, quiet: bool) -> None:
    """Make ``partial`` and write every array into it (allocated first, then decoded by
    ``workers`` processes); every unreadable image is named in one error."""
    name, size = entry.name, entry.size
    partial.mkdir()
    jobs = []
    for split, (items, labels) in splits.items():
        out = partial / f"{split}.images.npy"
        if isinstance(items, np.ndarray) and items.shape[-1] == size and items.shape[-2] == size:
            _write_npy(out, np.ascontiguousarray(items, dtype=np.uint8))  # already at size: no decoding
        else:
            _allocate(out, (len(labels), 3, size, size), np.uint8)
            jobs.append((out, items))
        _write_npy(partial / f"{split}.labels.npy", np.asarray(labels, dtype=np.int64))
    todo = sum(len(items) for _, items in jobs)
    failed = _decode_all(jobs, size, workers, f"{name}: caching {todo} images at {size}px", quiet) if jobs else []
    if failed:
        named = "; ".join(f"{path}: {why}" for path, why in failed[:MAX_NAMED])
        more = f"; and {len(failed) - MAX_NAMED} more" if len(failed) > MAX_NAMED else ""
        raise BenchError(f"{name}: {len(failed)} unreadable image{'s' if len(failed) > 1 else ''}, "
                         f"no cache written (fix or remove them): {named}{more}")


def _finish(partial: Path, final: Path, meta: dict[str, Any], t0: float) -> None:
    """Seal the arrays written into ``partial`` (fsync, checksums, meta.json, the verified stamp)
    and rename it to ``final``; when another builder got there first, theirs stands."""
    for f in ARRAYS:
        _fsync(partial / f)
    meta["checksums"] = {f: checksum(partial / f) for f in ARRAYS}
    meta.update(built=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                build_s=round(time.perf_counter() - t0, 2))
    (partial / "meta.json").write_text(json.dumps(meta, indent=1, default=str))
    _fsync(partial / "meta.json")
    _stamp(partial, _identities(partial))  # hashed just now: verified here
    try:
        os.rename(partial, final)
    except OSError:  # someone else finished first (no flock here): theirs stands
        if not (final / "meta.json").is_file():
            raise
        shutil.rmtree(partial, ignore_errors=True)  # ours, made by this process
    else:
        _fsync(final.parent)


# --- the real sources' caches ---------------------------------------------------------------

def cache_dir(cfg: DataConfig) -> Path:
    """Where ``cfg``'s caches live: ``data.cache_dir``, else ``default_dir()``."""
    return Path(cfg.cache_dir) if cfg.cache_dir else default_dir()


def folder(cfg: DataConfig, size: int, *, quiet: bool = False) -> Cached:
    """The image folder ``data.root`` (``root/<split>/<class>/…``, ImageNet's layout included) at ``size``."""
    root = cfg.root_path
    chosen = select_classes(imagefolder_classes(cfg), cfg.classes, root / cfg.train_dir)
    listed = {s: list_split(root / d, chosen) for s, d in (("train", cfg.train_dir), ("test", cfg.test_dir))}
    keep = selection({s: lab for s, (_, lab) in listed.items()}, {"train": cfg.train_size, "test": cfg.test_size},
                     len(chosen), shuffle=True)
    picked = {s: [listed[s][0][i] for i in keep[s]] for s in listed}
    splits = {s: ([p for p, _, _ in picked[s]], listed[s][1][keep[s]]) for s in listed}
    key = fingerprint([f for s in picked for f in picked[s]], root,
                      {"size": size, "classes": chosen, "dirs": [cfg.train_dir, cfg.test_dir]})
    c = cached(Entry(cache_dir(cfg), root.name or "imagefolder", size, key), splits, chosen, {"root": str(root)},
               workers=cfg.cache_workers, quiet=quiet)
    c.fingerprint = identity(chosen, {s: [(p, n) for p, n, _ in picked[s]] for s in picked}, root)
    return c


def identity(classes: list[str], files: dict[str, list[tuple[str, int]]], root: Path) -> dict[str, Any]:
    """A dataset's identity wherever it lies: its classes, its files per split, and a hash of
    their paths (relative to ``root``) and sizes — the same on every machine that holds the same
    data at any path (no mtime: a copy has its own)."""
    prefix = os.fspath(root).rstrip(os.sep) + os.sep
    h = hashlib.sha256()
    for split in sorted(files):
        for p, n in files[split]:
            h.update(f"{split}\t{p[len(prefix):] if p.startswith(prefix) else Path(p).name}\t{n}\n".encode())
    return {"classes": list(classes), "files": {s: len(v) for s, v in sorted(files.items())},
            "listing": h.hexdigest()[:16]}


def cifar(cfg: DataConfig, size: int, *, quiet: bool = False) -> Cached:
    """CIFAR-10/100 (``data.name``) from torchvision's on-disk pickles at ``size`` (32: as stored)."""
    base, files = cifar_files(cfg)
    all_classes = cifar_classes(cfg)
    chosen = select_classes(all_classes, cfg.classes, base)
    stats = [(str(f), st.st_size, st.st_mtime_ns) for f in files for st in [os.stat(f)]]
    key = fingerprint(stats, base, {"size": size, "classes": chosen, "train_size": cfg.train_size,
                                    "test_size": cfg.test_size})
    entry = Entry(cache_dir(cfg), cfg.name, size, key)
    c = _open(entry.path) if (entry.path / "meta.json").is_file() else None
    if c is None:  # the pickles are read only to build it
        c = cached(entry, read_cifar(cfg, all_classes, chosen), chosen, {"root": str(base)},
                   workers=cfg.cache_workers, quiet=quiet)
    c.fingerprint = identity(chosen, {"files": [(p, n) for p, n, _ in stats]}, base)
    return c
