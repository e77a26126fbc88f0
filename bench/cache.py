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
second finished build loses the rename and is discarded.

Geometry: the shorter side is resized to R (bilinear, antialiased) and the centre R×R kept;
for square sources (CIFAR, most proxies) that is a plain resize. 16-bit images are scaled
to 8 bits, not clipped. Every unreadable image is found while the cache is built and named
in one message, before any training.

torch-free (numpy; PIL on use), so its worker processes start fast.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import pickle
import shutil
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from bench import console
from bench.errors import BenchError, did_you_mean, missing_data

VERSION = 1  # bump when the cache's content or layout changes: old caches are then not read
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".ppm", ".webp", ".tif", ".tiff", ".gif")
_SUFFIXES = frozenset(s[1:] for s in IMAGE_SUFFIXES)
MAX_NAMED = 20  # unreadable images named in the message; the rest counted
POOL_ABOVE_S = 3.0  # decoding that would take one process longer than this goes to every core
CIFAR_FOLDERS = {"cifar10": "cifar-10-batches-py", "cifar100": "cifar-100-python"}  # torchvision's layout
CIFAR = {"cifar10": ("labels", [f"data_batch_{i}" for i in range(1, 6)], "test_batch", "batches.meta",
                     "label_names"),
         "cifar100": ("fine_labels", ["train"], "test", "meta", "fine_label_names")}
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
USED = "last-used"  # touched at every open
SHUFFLE_SEED = 0  # folders are read class by class: a fixed shuffle mixes them (any first-N holds every class)


def default_dir() -> Path:
    """``$BENCH_CACHE_DIR``, else ``$XDG_CACHE_HOME/bench``, else ``~/.cache/bench``."""
    if os.environ.get("BENCH_CACHE_DIR"):
        return Path(os.environ["BENCH_CACHE_DIR"]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or "~/.cache").expanduser() / "bench"


def cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


# --- what a folder holds -------------------------------------------------------------------

def _images_under(folder: Path) -> list[tuple[str, int, int]]:
    """(path, size, mtime in ns) of each image file under ``folder`` (recursively, following
    links), sorted by path; a directory link that leads back to one of its own ancestors is
    an error naming it. Plain strings and ``os.scandir``: a million files list in seconds."""
    parents = frozenset(os.path.realpath(p) for p in Path(os.path.abspath(folder)).parents)
    found: list[tuple[str, int, int]] = []
    stack = [(os.fspath(folder), parents)]
    while stack:
        here, above = stack.pop()
        real = os.path.realpath(here)
        if real in above:
            raise BenchError(f"imagefolder: {here} is a symlink loop (it leads back to {real}); remove the link")
        try:
            entries = list(os.scandir(here))
        except OSError as err:
            raise BenchError(f"imagefolder: cannot list {here}: {err.strerror or err}") from None
        for entry in entries:
            if entry.name.startswith("."):
                continue
            if entry.is_dir():
                stack.append((entry.path, above | {real}))
            elif "." in entry.name and entry.name.rpartition(".")[2].lower() in _SUFFIXES and entry.is_file():
                st = entry.stat()
                found.append((entry.path, st.st_size, st.st_mtime_ns))
    found.sort()
    return found


def class_folders(folder: Path) -> list[str]:
    """The class folders of one split (hidden ones skipped), sorted."""
    return sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def list_split(folder: Path, classes: Sequence[str]) -> tuple[list[tuple[str, int, int]], np.ndarray]:
    """Every image of ``classes`` under ``folder/<class>/`` as (path, size, mtime ns), and
    its label (index in ``classes``); an empty class folder is an error naming it."""
    files: list[tuple[str, int, int]] = []
    labels: list[int] = []
    for idx, cls in enumerate(classes):
        found = _images_under(folder / cls)
        if not found:
            raise BenchError(f"imagefolder: class folder {folder / cls} holds no images "
                             f"({', '.join(IMAGE_SUFFIXES)}); remove it or fill it")
        files += found
        labels += [idx] * len(found)
    return files, np.asarray(labels, dtype=np.int64)


def select_classes(found: Sequence[str], want: int | Sequence[str] | None, where: Any) -> list[str]:
    """``want``: None (all), N (the first N in sorted order) or an explicit list (in its order)."""
    if want is None:
        return list(found)
    if isinstance(want, int):
        if want > len(found):
            raise BenchError(f"data.classes={want}: {where} has only {len(found)} classes")
        return list(found[:want])
    missing = [c for c in want if c not in found]
    if missing:
        raise BenchError(f"data.classes: {missing[0]!r} is not a class of {where}"
                         + did_you_mean(missing[0], found) + (f" ({len(missing)} missing in all)"
                                                               if len(missing) > 1 else ""))
    return list(want)


def balanced(labels: np.ndarray, n: int | None, num_classes: int) -> np.ndarray:
    """Indices of ``n`` items with per-class counts as equal as the data allows (a class
    with too few gives all it has, the others share the rest), each class's first ones in
    order; returned in their original order. ``n`` None or ≥ len: everything."""
    if n is None or n >= len(labels):
        return np.arange(len(labels))
    have = np.bincount(labels, minlength=num_classes)
    lo, hi = 0, int(have.max())  # the highest level every class can be filled to within n
    while lo < hi:
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if np.minimum(have, mid).sum() <= n else (lo, mid - 1)
    take = np.minimum(have, lo)
    take[np.flatnonzero(have > lo)[:n - int(take.sum())]] += 1  # the rest: one more each, in class order
    rank = np.empty(len(labels), dtype=np.int64)  # position of each item within its class
    for k in range(num_classes):
        where = np.flatnonzero(labels == k)
        rank[where] = np.arange(len(where))
    return np.flatnonzero(rank < take[labels])


# --- decoding -------------------------------------------------------------------------------

def to_rgb(im: Any) -> Any:
    """A PIL image as 8-bit RGB: 16-bit (and 32-bit integer, float) grey scaled, not clipped."""
    from PIL import Image

    if im.mode.startswith("I;16") or im.mode in ("I", "F"):
        a = np.asarray(im, dtype=np.float64)
        top = 65535.0 if im.mode.startswith("I;16") or a.max(initial=0) > 255 else 255.0
        if im.mode == "F" and a.max(initial=0) <= 1.0:
            top = 1.0
        im = Image.fromarray(np.clip(np.rint(a * (255.0 / top)), 0, 255).astype(np.uint8), "L")
    return im if im.mode == "RGB" else im.convert("RGB")


def fit(im: Any, size: int) -> np.ndarray:
    """(3, size, size) uint8: shorter side to ``size``, centre crop."""
    from PIL import Image, ImageOps

    im = ImageOps.fit(to_rgb(im), (size, size), method=Image.BILINEAR)
    return np.asarray(im, dtype=np.uint8).transpose(2, 0, 1)


def decode(path: str | Path, size: int) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        if im.format == "JPEG":
            im.draft("RGB", (size, size))  # decode at the smallest JPEG scale still ≥ size: far faster
        return fit(im, size)


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

@dataclass
class Cached:
    """A cache on disk, opened: images are read-only memory maps."""
    path: Path
    classes: list[str]
    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    built_s: float | None  # seconds this process spent building it (None: it was there)

    @property
    def nbytes(self) -> int:
        return self.train_images.nbytes + self.test_images.nbytes


def _open(path: Path, built_s: float | None = None) -> Cached:
    try:
        meta = json.loads((path / "meta.json").read_text())
        arrays = {f"{s}_{k}": np.load(path / f"{s}.{k}.npy", mmap_mode="r" if k == "images" else None)
                  for s in ("train", "test") for k in ("images", "labels")}
        for s in ("train", "test"):
            if not len(arrays[f"{s}_images"]) == len(arrays[f"{s}_labels"]) == meta["counts"][s]:
                raise ValueError(f"{s}: {len(arrays[f'{s}_images'])} images, {len(arrays[f'{s}_labels'])} labels, "
                                 f"{meta['counts'][s]} expected")
    except (OSError, ValueError, KeyError) as err:
        raise BenchError(f"the data cache {path} is damaged ({type(err).__name__}: {err}); remove that folder "
                         "and run again to rebuild it") from None
    try:  # when it was last used: what `bench cache --prune` goes by
        (path / USED).touch()
    except OSError:  # a read-only cache folder shared between users: fine, just not tracked
        pass
    return Cached(path, meta["classes"], built_s=built_s, **arrays)


def caches(cache_dir: Path | None = None) -> list[dict[str, Any]]:
    """Every cache under ``cache_dir``: its folder, what it holds, its size on disk, when it
    was built and last used (newest use first)."""
    root = Path(cache_dir or default_dir())
    out = []
    for path in sorted(root.iterdir()) if root.is_dir() else []:
        if not (path / "meta.json").is_file():
            continue
        try:
            meta = json.loads((path / "meta.json").read_text())
        except (OSError, ValueError):
            meta = {}
        used = path / USED
        out.append({"cache": path.name, "px": meta.get("size"), "classes": len(meta.get("classes", [])),
                    "images": sum(meta.get("counts", {}).values()),
                    "gib": sum(f.stat().st_size for f in path.iterdir() if f.is_file()) / 2**30,
                    "built": meta.get("built"), "source": meta.get("sources", {}).get("root"),
                    "last_used": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(
                        (used if used.is_file() else path / "meta.json").stat().st_mtime)),
                    "path": str(path)})
    return sorted(out, key=lambda c: c["last_used"], reverse=True)


def prune(days: float, cache_dir: Path | None = None) -> list[dict[str, Any]]:
    """Remove the caches not used for ``days`` days, and what crashed builds left; the removed
    ones. A cache being built is skipped (its lock is held); a run still reading a removed
    cache keeps it (its loader holds the file open) until it ends."""
    import fcntl

    cutoff = time.time() - days * 86400
    removed = []
    for c in caches(cache_dir):
        path = Path(c["path"])
        used = path / USED
        if (used if used.is_file() else path / "meta.json").stat().st_mtime > cutoff:
            continue
        with open(path.with_name(path.name + ".lock"), "a") as f:  # the lock file stays: a builder may hold it open
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                continue
            shutil.rmtree(path, ignore_errors=True)
        removed.append(c)
    return removed + prune_partial(cache_dir)


def prune_partial(cache_dir: Path | None = None) -> list[dict[str, Any]]:
    """Remove what crashed builds left (``*.partial-*`` folders whose lock nobody holds)."""
    import fcntl

    root = Path(cache_dir or default_dir())
    removed = []
    for partial in sorted(root.glob("*.partial-*")) if root.is_dir() else []:
        final = partial.name.split(".partial-")[0]
        with open(root / f"{final}.lock", "a") as f:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:  # being built now
                continue
            size = sum(p.stat().st_size for p in partial.rglob("*") if p.is_file()) / 2**30
            shutil.rmtree(partial, ignore_errors=True)
        removed.append({"cache": partial.name, "gib": size, "path": str(partial)})
    return removed


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
    without flock, where the atomic rename alone keeps readers safe."""
    import fcntl

    with open(lock, "a") as f:
        held = True
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if not quiet:
                console.info(f"{what}: another process is building this cache; waiting for it")
            fcntl.flock(f, fcntl.LOCK_EX)
        except OSError:
            held = False
        yield held


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def cache_path(cache_dir: Path, name: str, size: int, key: str) -> Path:
    return Path(cache_dir) / f"{name}-{size}px-{key}"


def cached(name: str, size: int, key: str, splits: dict[str, tuple[Any, np.ndarray]], classes: list[str],
           sources: dict[str, Any], *, cache_dir: Path, workers: int | None = None, quiet: bool = False) -> Cached:
    """The cache ``<cache_dir>/<name>-<size>px-<key>``: opened if it is there, else built from
    ``splits`` ({"train"/"test": (paths or an (n, 3, h, w) uint8 array, labels)})."""
    final = cache_path(cache_dir, name, size, key)
    if (final / "meta.json").is_file():
        return _open(final)
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise BenchError(f"data.cache_dir (or BENCH_CACHE_DIR): cannot create {final.parent}: "
                         f"{err.strerror or err}") from None
    if not os.access(final.parent, os.W_OK):
        raise BenchError(f"data.cache_dir: {final.parent} is not writable; set data.cache_dir (or BENCH_CACHE_DIR)")
    with _locked(final.with_name(final.name + ".lock"), name, quiet) as held:
        if (final / "meta.json").is_file():  # built by whoever held the lock before us
            return _open(final)
        for stale in final.parent.glob(final.name + ".partial-*") if held else ():  # a crashed build's leftovers
            shutil.rmtree(stale, ignore_errors=True)
        n = sum(len(labels) for _, labels in splits.values())
        need = n * 3 * size * size
        free = shutil.disk_usage(final.parent).free
        if need > free:
            raise BenchError(f"{name}: the cache needs {need / 2**30:.2f} GiB at {size}px, {final.parent} has "
                             f"{free / 2**30:.2f} GiB free; set data.cache_dir elsewhere")
        t0 = time.perf_counter()
        partial = final.with_name(f"{final.name}.partial-{os.getpid()}-{os.urandom(4).hex()}")
        partial.mkdir()
        try:
            jobs = []
            for split, (items, labels) in splits.items():
                out = partial / f"{split}.images.npy"
                if isinstance(items, np.ndarray) and items.shape[-1] == size and items.shape[-2] == size:
                    np.save(out, np.ascontiguousarray(items, dtype=np.uint8))  # already at size: no decoding
                else:
                    np.lib.format.open_memmap(out, mode="w+", dtype=np.uint8, shape=(len(labels), 3, size, size))
                    jobs.append((out, items))
                np.save(partial / f"{split}.labels.npy", np.asarray(labels, dtype=np.int64))
            todo = sum(len(items) for _, items in jobs)
            w = max(1, min(workers or cores(), 64))
            failed = _decode_all(jobs, size, w, f"{name}: caching {todo} images at {size}px", quiet) if jobs else []
            if failed:
                named = "; ".join(f"{path}: {why}" for path, why in failed[:MAX_NAMED])
                more = f"; and {len(failed) - MAX_NAMED} more" if len(failed) > MAX_NAMED else ""
                raise BenchError(f"{name}: {len(failed)} unreadable image{'s' if len(failed) > 1 else ''}, "
                                 f"no cache written (fix or remove them): {named}{more}")
            meta = {"version": VERSION, "name": name, "size": size, "key": key, "classes": classes,
                    "counts": {s: int(len(labels)) for s, (_, labels) in splits.items()}, "sources": sources,
                    "built": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                    "build_s": round(time.perf_counter() - t0, 2), "workers": w}
            (partial / "meta.json").write_text(json.dumps(meta, indent=1, default=str))
            for f in partial.iterdir():
                _fsync(f)
            try:
                os.rename(partial, final)
            except OSError:  # someone else finished first (no flock here): theirs stands
                if not (final / "meta.json").is_file():
                    raise
                shutil.rmtree(partial, ignore_errors=True)
            else:
                _fsync(final.parent)
        except BaseException:
            shutil.rmtree(partial, ignore_errors=True)
            raise
        return _open(final, built_s=time.perf_counter() - t0)


# --- the sources ----------------------------------------------------------------------------

def _selection(labels: dict[str, np.ndarray], sizes: dict[str, int | None], n_classes: int,
               shuffle: bool) -> dict[str, np.ndarray]:
    """Per split: the indices kept, in a fixed (shuffled when ``shuffle``) order, class-balanced."""
    out = {}
    for split, lab in labels.items():
        order = np.random.default_rng(SHUFFLE_SEED).permutation(len(lab)) if shuffle else np.arange(len(lab))
        keep = balanced(lab[order], sizes[split], n_classes)
        out[split] = order[keep]
    return out


def folder(root: Path, size: int, *, train_dir: str = "train", test_dir: str = "val",
           classes: int | Sequence[str] | None = None, train_size: int | None = None, test_size: int | None = None,
           cache_dir: Path | None = None, workers: int | None = None, quiet: bool = False) -> Cached:
    """An image folder (``root/<split>/<class>/…``, ImageNet's layout included) at ``size``."""
    root = Path(root).expanduser()
    found: list[str] | None = None
    for split in (train_dir, test_dir):
        where = root / split
        if not where.is_dir():
            raise missing_data(f"imagefolder split {split!r}", where,
                               f"Expected {root}/{train_dir}/<class>/*.png and {root}/{test_dir}/<class>/*.png.")
        names = class_folders(where)
        if not names:
            raise missing_data("imagefolder class folders", where, "Each class needs its own folder of images.")
        if found is None:
            found = names
        elif names != found:
            only = sorted(set(names) ^ set(found))
            raise BenchError(f"imagefolder: {where} and {root / train_dir} hold different class folders "
                             f"({len(only)} in one only, e.g. {only[0]!r})")
    chosen = select_classes(found or [], classes, root / train_dir)
    listed = {s: list_split(root / d, chosen) for s, d in (("train", train_dir), ("test", test_dir))}
    keep = _selection({s: lab for s, (_, lab) in listed.items()}, {"train": train_size, "test": test_size},
                      len(chosen), shuffle=True)
    picked = {s: [listed[s][0][i] for i in keep[s]] for s in listed}
    splits = {s: ([p for p, _, _ in picked[s]], listed[s][1][keep[s]]) for s in listed}
    key = fingerprint([f for s in picked for f in picked[s]], root,
                      {"size": size, "classes": chosen, "dirs": [train_dir, test_dir]})
    return cached(root.name or "imagefolder", size, key, splits, chosen, {"root": str(root)},
                  cache_dir=cache_dir or default_dir(), workers=workers, quiet=quiet)


def cifar_files(name: str, root: Path) -> tuple[Path, list[Path]]:
    """The folder and the pickles of CIFAR ``name`` under ``root`` (torchvision's layout)."""
    label_key, train_files, test_file, meta_file, _ = CIFAR[name]
    base = Path(root).expanduser() / CIFAR_FOLDERS[name]
    return base, [base / f for f in (*train_files, test_file)]


def cifar(name: str, root: Path, size: int, *, classes: int | Sequence[str] | None = None,
          train_size: int | None = None, test_size: int | None = None, cache_dir: Path | None = None,
          workers: int | None = None, quiet: bool = False) -> Cached:
    """CIFAR-10/100 from torchvision's on-disk pickles at ``size`` (32: as stored)."""
    label_key, train_files, test_file, meta_file, names_key = CIFAR[name]
    base, files = cifar_files(name, root)
    for path in files:
        if not path.is_file():
            raise missing_data(f"{name} file {path.name}", base, "The extracted archive is incomplete.")
    all_classes = list(CIFAR10_CLASSES) if name == "cifar10" else [str(i) for i in range(100)]
    if (base / meta_file).is_file():
        with open(base / meta_file, "rb") as f:
            all_classes = list(pickle.load(f, encoding="latin1").get(names_key) or all_classes)
    chosen = select_classes(all_classes, classes, base)
    stats = [(str(f), st.st_size, st.st_mtime_ns) for f in files for st in [os.stat(f)]]
    key = fingerprint(stats, base, {"size": size, "classes": chosen, "train_size": train_size,
                                    "test_size": test_size})
    path = cache_path(cache_dir or default_dir(), name, size, key)
    if (path / "meta.json").is_file():
        return _open(path)

    def read(fnames: list[str]) -> tuple[np.ndarray, np.ndarray]:
        images, labels = [], []
        for fname in fnames:
            with open(base / fname, "rb") as f:
                entry = pickle.load(f, encoding="latin1")
            images.append(np.asarray(entry["data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
            labels.append(np.asarray(entry[label_key], dtype=np.int64))
        return np.concatenate(images), np.concatenate(labels)

    raw = {"train": read(train_files), "test": read([test_file])}
    remap = np.full(len(all_classes), -1, dtype=np.int64)
    remap[[all_classes.index(c) for c in chosen]] = np.arange(len(chosen))
    splits = {}
    for split, (images, labels) in raw.items():
        inside = np.flatnonzero(remap[labels] >= 0)
        keep = inside[balanced(remap[labels[inside]], {"train": train_size, "test": test_size}[split], len(chosen))]
        splits[split] = (images[keep], remap[labels[keep]])
    return cached(name, size, key, splits, chosen, {"root": str(base)}, cache_dir=cache_dir or default_dir(),
                  workers=workers, quiet=quiet)
