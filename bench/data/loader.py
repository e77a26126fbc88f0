"""Datasets for proxy training, and the loader that feeds a model from them.

- ``shapes``: bench's built-in procedural dataset. No download, deterministic from a
  seed, generated in a fraction of a second. Each image holds one of ten outline-or-
  filled shapes at a random place, size and colour on a random background, with
  distractor blobs and pixel noise growing with ``difficulty``. The class is the
  shape, so pixel statistics (colour, brightness, where the ink is) say nothing
  about it: a linear classifier on raw pixels stays far below a small ViT.
- ``cifar10`` / ``cifar100``: torchvision's on-disk format (the python pickles).
- ``imagefolder``: ``root/train/<class>/…`` and ``root/val/<class>/…`` (ImageNet's layout
  too), at the model's image size.

Real data goes through ``bench.data.cache`` (decoded once, in parallel, into a memory-mappable
uint8 cache keyed by the files and the resolution); ``data.classes`` and the sizes select a
class subset and a class-balanced sample of it. ``Loader`` then feeds batches in one of two
residencies: ``device`` (the whole split in device memory, augmented there: no input
pipeline at all) or ``stream`` (batches read from the memory-mapped cache by a background
thread into pinned memory, so host memory stays a few batches however big the data). The
order of a seed is drawn on the host in both, so both give the same batches.
"""
from __future__ import annotations

import math
import os
import queue
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch
import torch.nn.functional as F

from bench import console
from bench.data import cache
from bench.config import DataConfig
from bench.errors import BenchError, missing_data

SHAPES = ("disc", "ring", "square", "frame", "diamond", "plus", "cross", "triangle", "hbars", "vbars")
MEAN = (0.5, 0.5, 0.5)  # images are scaled to [-1, 1]: the datasets here are not ImageNet-like
STD = (0.5, 0.5, 0.5)


@dataclass
class Split:
    images: torch.Tensor | np.ndarray  # (N, C, H, W) uint8; an ndarray: a read-only memory map of the cache
    labels: torch.Tensor  # (N,) int64

    def __len__(self) -> int:
        return len(self.labels)

    def rows(self, index: slice | torch.Tensor) -> torch.Tensor:
        """Images ``index`` as a uint8 tensor of their own (read out of a memory-mapped cache
        with positioned reads, so the file's pages do not stay in this process's memory)."""
        if isinstance(self.images, torch.Tensor):
            return self.images[index]
        return read_rows(self.images, index)


def mapped_file(images: Any) -> bool:
    """Whether ``images`` maps a whole file from its start (a cache's .npy as np.load maps it;
    a slice of one keeps the parent's offset and so does not count)."""
    import mmap
    return (isinstance(images, np.memmap) and bool(images.filename) and images.flags.c_contiguous
            and isinstance(images.base, mmap.mmap))


def read_rows(images: np.ndarray, index: slice | torch.Tensor, fd: int | None = None) -> torch.Tensor:
    """Rows ``index`` of ``images`` (N, ...) as a new uint8 tensor; from a whole-file memory
    map (a cache's .npy) by ``preadv`` — through ``fd`` when given (a loader keeps its file
    open: the data stays readable even if the cache is removed meanwhile) — a slice in one
    read per 256 MiB, an index array one read per row in ascending offsets."""
    if not mapped_file(images):
        picked = images[index] if isinstance(index, slice) else images[index.numpy()]
        return torch.from_numpy(np.array(picked, order="C"))
    row = int(np.prod(images.shape[1:])) * images.itemsize
    if isinstance(index, slice):
        start, stop, step = index.indices(len(images))
        if step != 1:
            return read_rows(images, torch.arange(start, stop, step), fd)
        out = torch.empty((max(0, stop - start), *images.shape[1:]), dtype=torch.uint8)
        flat = out.numpy().reshape(-1)
        reads = [(i, min(len(flat), i + 2**28)) for i in range(0, len(flat), 2**28)]
        offsets = [images.offset + start * row + a for a, _ in reads]
    else:
        idx = index.numpy()
        out = torch.empty((len(idx), *images.shape[1:]), dtype=torch.uint8)
        flat = out.numpy().reshape(-1)
        order = np.argsort(idx, kind="stable")  # ascending offsets: kinder to a disk
        reads = [(int(j) * row, (int(j) + 1) * row) for j in order]
        offsets = [images.offset + int(idx[j]) * row for j in order]
    own = fd is None
    fd = os.open(images.filename, os.O_RDONLY) if fd is None else fd
    try:
        for (a, b), offset in zip(reads, offsets):
            while a < b:  # a network or FUSE file system may return less than asked: read on
                got = os.preadv(fd, [memoryview(flat[a:b])], offset)
                if got <= 0:
                    raise BenchError(f"{images.filename}: ends at byte {offset} (a truncated cache? remove its "
                                     "folder to rebuild it)")
                a, offset = a + got, offset + got
    finally:
        if own:
            os.close(fd)
    return out


def to_device(split: Split, device: torch.device) -> torch.Tensor:
    """The split's images on ``device``; from a cache onto a GPU in 256 MiB pieces, so host
    memory holds one piece, not the split."""
    if isinstance(split.images, torch.Tensor) or device.type == "cpu":
        return split.rows(slice(None)).to(device)
    out = torch.empty(split.images.shape, dtype=torch.uint8, device=device)
    step = max(1, 2**28 // max(1, int(np.prod(split.images.shape[1:]))))
    for a in range(0, len(split), step):
        out[a:a + step] = split.rows(slice(a, a + step)).to(device)
    return out


@dataclass
class Dataset:
    name: str
    train: Split
    test: Split
    classes: list[str]
    source: Path | None = None  # the cache it was read from (None: in memory only)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def img_size(self) -> int:
        return self.train.images.shape[-1]

    @property
    def nbytes(self) -> int:
        return self.train.images.nbytes + self.test.images.nbytes


# --- the built-in procedural dataset -------------------------------------------------

def _stripes(t: torch.Tensor, period: torch.Tensor, width: torch.Tensor) -> torch.Tensor:
    """Distance to the nearest stripe centre line (stripes every ``period`` along ``t``)."""
    return ((t / period).remainder(1) - 0.5).abs() * period - width / 2


def _shape_distance(kind: int, dx: torch.Tensor, dy: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """Signed distance-like field of shape ``kind`` (inside where < 0), for pixel offsets
    ``dx``, ``dy`` from the shape's centre (M, S, S) and radius ``r`` (M, 1, 1)."""
    ax, ay = dx.abs(), dy.abs()
    w = (r * 0.28).clamp(min=1.0)  # stroke width
    cheb = torch.maximum(ax, ay)
    name = SHAPES[kind]
    if name in ("disc", "ring"):
        radius = torch.sqrt(dx * dx + dy * dy)
        return radius - r if name == "disc" else (radius - (r - w / 2)).abs() - w / 2
    if name == "square":
        return cheb - r * 0.85
    if name == "frame":
        return (cheb - (r * 0.85 - w / 2)).abs() - w / 2
    if name == "diamond":
        return ax + ay - r * 1.1
    if name == "plus":
        return torch.maximum(torch.minimum(ax, ay) - w / 2, cheb - r)
    if name == "cross":
        return torch.maximum((ax - ay).abs() / math.sqrt(2) - w / 2, cheb - r * 0.8)
    if name == "triangle":  # apex up
        return torch.maximum(dy - r * 0.7, 2 * ax - (dy + r * 0.7) * 0.9)
    return torch.maximum(cheb - r * 0.9, _stripes(dy if name == "hbars" else dx, r * 0.6, w))


def _shape_masks(kind: torch.Tensor, dx: torch.Tensor, dy: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """Soft-edged masks (M, S, S): one anti-aliased shape per image, class ``kind`` (M,)."""
    mask = torch.empty_like(dx)
    for k in range(len(SHAPES)):
        sel = (kind == k).nonzero().squeeze(1)
        if len(sel):
            mask[sel] = torch.sigmoid(-2.0 * _shape_distance(k, dx[sel], dy[sel], r[sel]))
    return mask


def make_shapes(n: int, *, img_size: int = 32, difficulty: float = 0.5, seed: int = 0,
                chunk: int = 4096) -> Split:
    """``n`` images of the procedural ``shapes`` task, deterministic in ``seed``.

    ``difficulty`` in [0, 1] scales size and colour variation, distractors and noise.
    """
    if not 0 <= difficulty <= 1:
        raise ValueError(f"difficulty={difficulty}: expected a value in [0, 1]")
    gen = torch.Generator().manual_seed(seed)
    labels = torch.randint(len(SHAPES), (n,), generator=gen)
    images = torch.empty(n, 3, img_size, img_size, dtype=torch.uint8)
    coords = torch.arange(img_size, dtype=torch.float32) + 0.5
    for start in range(0, n, chunk):
        kind = labels[start:start + chunk]
        m = len(kind)
        u = lambda *shape: torch.rand(*shape, generator=gen)  # noqa: E731
        s = img_size
        r = s * (0.22 + (0.1 - 0.08 * difficulty) * (2 * u(m, 1, 1) - 1))  # shape radius
        margin = r + 1
        jitter = (s / 2 - margin) * (0.3 + 0.7 * difficulty)  # how far from the centre it may sit
        cx = s / 2 + jitter * (2 * u(m, 1, 1) - 1)
        cy = s / 2 + jitter * (2 * u(m, 1, 1) - 1)
        dx = (coords.view(1, 1, s) - cx).expand(m, s, s)
        dy = (coords.view(1, s, 1) - cy).expand(m, s, s)
        mask = _shape_masks(kind, dx, dy, r)  # (m, S, S)

        # colours: background and foreground differ in brightness by at least `contrast`
        contrast = 0.55 - 0.3 * difficulty
        bg = u(m, 3, 1, 1)
        fg = u(m, 3, 1, 1)
        gap = (fg.mean(1, keepdim=True) - bg.mean(1, keepdim=True))
        sign = torch.where(gap >= 0, 1.0, -1.0)
        fg = (fg + sign * (contrast - gap.abs()).clamp(min=0)).clamp(0, 1)
        # a smooth background gradient so the mean pixel says nothing
        gx, gy = (u(m, 1, 1, 1) - 0.5) * 0.6 * difficulty, (u(m, 1, 1, 1) - 0.5) * 0.6 * difficulty
        ramp = gx * (coords.view(1, 1, 1, s) / s - 0.5) + gy * (coords.view(1, 1, s, 1) / s - 0.5)
        img = (bg + ramp) * (1 - mask.unsqueeze(1)) + fg * mask.unsqueeze(1)

        # distractors: small blobs in the foreground colour (up to 3 at difficulty 1)
        n_blobs = round(3 * difficulty)
        for _ in range(n_blobs):
            bx, by = u(m, 1, 1) * s, u(m, 1, 1) * s
            br = s * (0.03 + 0.04 * u(m, 1, 1))
            blob = torch.sigmoid(-(torch.sqrt((coords.view(1, 1, s) - bx) ** 2
                                              + (coords.view(1, s, 1) - by) ** 2) - br) * 2.0)
            keep = (u(m, 1, 1) < 0.8).float()
            img = img + (fg - img) * (blob * keep).unsqueeze(1)
        img = img + torch.randn(img.shape, generator=gen) * (0.02 + 0.1 * difficulty)
        images[start:start + m] = (img.clamp(0, 1) * 255).round().to(torch.uint8)
    return Split(images, labels)


def shapes(*, train_size: int, test_size: int, img_size: int = 32, difficulty: float = 0.5,
           seed: int = 0) -> Dataset:
    """The built-in dataset; train and test come from disjoint random streams."""
    return Dataset("shapes", make_shapes(train_size, img_size=img_size, difficulty=difficulty, seed=seed),
                   make_shapes(test_size, img_size=img_size, difficulty=difficulty, seed=seed + 1_000_003),
                   list(SHAPES))


# --- real datasets on disk -----------------------------------------------------------

def cifar_download(name: str, root: str | Path) -> None:
    """Fetch CIFAR ``name`` into ``root`` with torchvision (only when asked to)."""
    import torchvision  # on use: only a download needs it
    cls = torchvision.datasets.CIFAR10 if name == "cifar10" else torchvision.datasets.CIFAR100
    try:
        cls(str(Path(root).expanduser()), train=True, download=True)
    except Exception as err:  # no network, a full disk: say what failed
        raise BenchError(f"{name}: download to {root} failed ({type(err).__name__}: {err})") from None


def _from_cache(name: str, c: cache.Cached) -> Dataset:
    return Dataset(name, Split(c.train_images, torch.from_numpy(c.train_labels)),
                   Split(c.test_images, torch.from_numpy(c.test_labels)), list(c.classes), source=c.path)


def cifar(name: str, root: str | Path, *, img_size: int = 32, download: bool = False, classes: Any = None,
          train_size: int | None = None, test_size: int | None = None, cache_dir: str | Path | None = None,
          workers: int | None = None, quiet: bool = True) -> Dataset:
    """CIFAR-10/100 from torchvision's on-disk format under ``root``, through the cache."""
    base, _ = cache.cifar_files(name, Path(root))
    if not base.is_dir() and download:
        cifar_download(name, root)
    if not base.is_dir():
        raise missing_data(name, base, f"Set data.download: true on a machine with internet, or unpack "
                           f"{base.name} (from https://www.cs.toronto.edu/~kriz/cifar.html) under {root}.")
    c = cache.cifar(name, Path(root), img_size, classes=classes, train_size=train_size, test_size=test_size,
                    cache_dir=Path(cache_dir) if cache_dir else None, workers=workers, quiet=quiet)
    return _from_cache(name, c)


def imagefolder(root: str | Path, *, img_size: int, train_dir: str = "train", test_dir: str = "val",
                classes: Any = None, train_size: int | None = None, test_size: int | None = None,
                cache_dir: str | Path | None = None, workers: int | None = None, quiet: bool = True) -> Dataset:
    """``root/<train_dir>/<class>/<image>`` and ``root/<test_dir>/<class>/<image>``, through the cache."""
    c = cache.folder(Path(root), img_size, train_dir=train_dir, test_dir=test_dir, classes=classes,
                     train_size=train_size, test_size=test_size, cache_dir=Path(cache_dir) if cache_dir else None,
                     workers=workers, quiet=quiet)
    return _from_cache(Path(root).expanduser().name, c)


def load(cfg: DataConfig, img_size: int, quiet: bool = True) -> Dataset:
    """The dataset a spec's ``data`` section names, at the model's image size (shapes are
    drawn at it, real images cached at it)."""
    if cfg.name == "shapes":
        train_size, test_size = cfg.shapes_sizes()
        return shapes(train_size=train_size, test_size=test_size, img_size=img_size,
                      difficulty=cfg.difficulty, seed=cfg.seed)
    t0 = time.perf_counter()
    common = dict(classes=cfg.classes, train_size=cfg.train_size, test_size=cfg.test_size, cache_dir=cfg.cache_dir,
                  workers=cfg.cache_workers, quiet=quiet)
    if cfg.name in cache.CIFAR:
        ds = cifar(cfg.name, cfg.root, img_size=img_size, download=cfg.download, **common)
    else:
        ds = imagefolder(cfg.root, img_size=img_size, train_dir=cfg.train_dir, test_dir=cfg.test_dir, **common)
    if not quiet:
        console.info(f"{ds.name} at {img_size}px: {len(ds.train)} + {len(ds.test)} images, {ds.num_classes} classes, "
                     f"{ds.nbytes / 2**20:.1f} MiB cached in {ds.source} ({time.perf_counter() - t0:.1f} s)")
    return ds


def host_memory() -> int:
    """Bytes of host memory available now (Linux), else 0."""
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 0


def residency(ds: Dataset, device: torch.device, setting: str = "auto", budget_gb: float | None = None,
              host_transform: bool = False) -> tuple[str, str]:
    """Where ``ds`` lives while training on ``device``: ("device" or "stream", why).

    ``auto``: in device memory when its images fit the budget (default: a quarter of the
    GPU's memory, or half the host memory available now on a CPU), else streamed; on a
    GPU, a host-side transform (RandAugment) streams too, since it needs the images on the
    host anyway."""
    size = ds.nbytes
    if budget_gb is not None:
        budget = budget_gb * 2**30
    elif device.type == "cuda":
        budget = torch.cuda.get_device_properties(device).total_memory / 4
    else:
        budget = host_memory() / 2
    where = f"{size / 2**20:.1f} MiB of images, budget {budget / 2**20:.0f} MiB"
    if setting != "auto":
        return setting, f"data.residency: {setting} ({where})"
    if host_transform and device.type == "cuda":
        return "stream", f"RandAugment runs on the host ({where})"
    if size <= budget:
        return "device", where
    return "stream", f"{where}: over budget"


# --- batches, device-resident or streamed -------------------------------------------------

Transform = Callable[[np.ndarray], np.ndarray]  # a host-side transform of a uint8 batch (RandAugment); picklable


def seeded(transform: Transform, images: np.ndarray, seed: int) -> np.ndarray:
    """``transform(images)`` with Python's and numpy's global generators (which timm's host
    transforms draw from) seeded with ``seed``, and restored after: the batch's result
    depends on its seed alone, in this process or in any worker."""
    import random
    state, np_state = random.getstate(), np.random.get_state()
    random.seed(seed)
    np.random.seed(seed % 2**32)
    try:
        return transform(images)
    finally:
        random.setstate(state)
        np.random.set_state(np_state)


class Loader:
    """Batches of one split: shuffled per epoch, augmented, normalised to [-1, 1].

    ``residency``: ``device`` keeps the split on ``device`` and gathers batches there;
    ``stream`` leaves it where it is (a memory-mapped cache, read with positioned reads
    so that what was read does not stay in this process's memory) and a background thread
    reads up to ``prefetch`` batches ahead, into pinned memory on a GPU. The batch order is
    drawn on the host from ``seed`` in both, so they give the same batches.

    Augmentation (training only): ``host_transform`` on the host's uint8 batch (RandAugment),
    seeded per batch from the order stream; with ``host_workers`` (streaming only) in that
    many worker processes, ahead of time, else in this thread. Then on the device either a
    random-resized crop (``resized_crop``: the smallest area kept, as timm's
    RandomResizedCrop with aspect 3/4–4/3, bilinear; a crop that would not fit is clamped to
    the image rather than redrawn) or torchvision's CIFAR recipe as tensor ops on the whole batch: a random
    crop after zero padding by ``crop_padding`` pixels and a horizontal flip with
    probability ½. ``repeats`` > 1: repeated augmentation (DeiT) — each epoch draws 1/r of
    the images and shows each r times in a row (in one batch when the batch size is a
    multiple of r), differently augmented.
    """

    _pool: Any = None  # host-transform workers, started on first use
    _fd: int | None = None  # the cache file a streaming loader reads

    def __init__(self, split: Split, *, batch_size: int, device: torch.device, train: bool,
                 crop_padding: int = 0, flip: bool = False, seed: int = 0, drop_last: bool | None = None,
                 residency: str = "device", prefetch: int = 4, host_transform: Transform | None = None,
                 host_workers: int = 0, repeats: int = 1, resized_crop: float | None = None) -> None:
        if residency not in ("device", "stream"):
            raise ValueError(f"residency={residency!r}: expected device or stream")
        self.split, self.stream = split, residency == "stream"
        self.images = split.images if self.stream else to_device(split, device)
        self.labels = split.labels if self.stream else split.labels.to(device)
        self.batch_size, self.device, self.train = batch_size, device, train
        self.crop_padding, self.flip, self.repeats, self.resized_crop = crop_padding, flip, repeats, resized_crop
        self.prefetch, self.host_transform = max(1, prefetch), host_transform if train else None
        self.host_workers = host_workers if self.stream and self.host_transform is not None else 0
        self._fd = os.open(split.images.filename, os.O_RDONLY) if self.stream and mapped_file(split.images) else None
        self.drop_last = train if drop_last is None else drop_last
        self.gen = torch.Generator(device=device).manual_seed(seed)  # augmentation, where it runs
        # batch order, on the host: on a CPU the same stream (as bench always drew it there)
        self.order_gen = self.gen if device.type == "cpu" else torch.Generator().manual_seed(seed)
        self.mean = torch.tensor(MEAN, device=device).view(1, 3, 1, 1) * 255
        self.std = torch.tensor(STD, device=device).view(1, 3, 1, 1) * 255
        self.pin = self.stream and device.type == "cuda"

    def __len__(self) -> int:
        n = len(self.split)
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def state(self) -> dict[str, torch.Tensor]:
        return {"augment": self.gen.get_state(), "order": self.order_gen.get_state()}  # one stream twice on a CPU

    def set_state(self, state: Any) -> None:
        if isinstance(state, torch.Tensor):  # a checkpoint from before the order had its own stream
            self.gen.set_state(state)
            return
        self.gen.set_state(state["augment"])
        self.order_gen.set_state(state["order"])

    def order(self) -> torch.Tensor:
        """This epoch's order of the split (draws from the order stream when training)."""
        n = len(self.split)
        if not self.train:
            return torch.arange(n)
        perm = torch.randperm(n, generator=self.order_gen)
        if self.repeats > 1:
            perm = perm[:math.ceil(n / self.repeats)].repeat_interleave(self.repeats)[:n]
        return perm

    def close(self) -> None:
        """Stop the host-transform workers, if any, and close the cache file."""
        if self._pool is not None:
            self._pool.shutdown(cancel_futures=True)
            self._pool = None
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __del__(self) -> None:
        self.close()

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        order = self.order()
        # the host transform's seed for this epoch (drawn only when there is one: other runs'
        # order streams stay as they were)
        base = int(torch.randint(2**62, (1,), generator=self.order_gen)) if self.host_transform else 0
        batches = [order[i * self.batch_size:(i + 1) * self.batch_size] for i in range(len(self))]
        source = self._streamed(batches, base) if self.stream else (
            (self.images[idx], self.labels[idx]) for idx in (b.to(self.device) for b in batches))
        for i, (x, y) in enumerate(source):
            if self.train:
                if self.host_transform is not None and not self.host_workers:
                    x = torch.from_numpy(seeded(self.host_transform, x.cpu().numpy(), base + i))
                    x = x.to(self.device, non_blocking=True)
                x = self.augment(x)
            yield x.float().sub_(self.mean).div_(self.std), y

    def _read(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self._fd is not None:
            return read_rows(self.split.images, idx, self._fd), self.labels[idx]
        return self.split.rows(idx), self.labels[idx]

    def _streamed(self, batches: list[torch.Tensor], base: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        pool = None
        if self.host_workers:
            if self._pool is None:
                import multiprocessing
                from concurrent.futures import ProcessPoolExecutor
                self._pool = ProcessPoolExecutor(self.host_workers, mp_context=multiprocessing.get_context("spawn"))
            pool = self._pool
        # with workers, enough batches in flight to keep every one busy
        q: queue.Queue = queue.Queue(maxsize=max(self.prefetch, 2 * self.host_workers))
        stop = threading.Event()

        def produce() -> None:
            try:
                for i, idx in enumerate(batches):
                    if stop.is_set():
                        return
                    x, y = self._read(idx)
                    if pool is not None:  # transformed in a worker; collected in order below
                        q.put((pool.submit(seeded, self.host_transform, x.numpy(), base + i), y))
                    else:
                        q.put((x.pin_memory(), y.pin_memory()) if self.pin else (x, y))
                q.put(None)
            except BaseException as err:  # handed to the consumer, raised there
                q.put(err)

        thread = threading.Thread(target=produce, name="bench-prefetch", daemon=True)
        thread.start()
        try:
            while (item := q.get()) is not None:
                if isinstance(item, BaseException):
                    raise item
                x, y = item
                if not isinstance(x, torch.Tensor):  # a worker's future
                    x = torch.from_numpy(x.result())
                    x = x.pin_memory() if self.pin else x
                yield x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
        finally:
            stop.set()
            while thread.is_alive():  # unblock a producer waiting to put
                try:
                    q.get_nowait()
                except queue.Empty:
                    thread.join(0.01)

    def _resized_crop(self, x: torch.Tensor) -> torch.Tensor:
        """Per image: a window of a random share of the area (``resized_crop``…1) and aspect
        (3/4…4/3, log-uniform) at a random place, resampled bilinearly to the full size: one
        ``grid_sample`` for the batch. Returns float images in [0, 255]."""
        b, c, h, w = x.shape
        dev, g = x.device, self.gen
        area = torch.empty(b, device=dev).uniform_(self.resized_crop, 1.0, generator=g)
        ratio = torch.empty(b, device=dev).uniform_(math.log(3 / 4), math.log(4 / 3), generator=g).exp()
        cw, ch = (area * ratio).sqrt().clamp(max=1.0), (area / ratio).sqrt().clamp(max=1.0)  # shares of w, h
        cx = (torch.rand(b, device=dev, generator=g) * (1 - cw) + cw / 2) * 2 - 1  # centres, in [-1, 1]
        cy = (torch.rand(b, device=dev, generator=g) * (1 - ch) + ch / 2) * 2 - 1
        theta = torch.zeros(b, 2, 3, device=dev)
        theta[:, 0, 0], theta[:, 0, 2], theta[:, 1, 1], theta[:, 1, 2] = cw, cx, ch, cy
        grid = F.affine_grid(theta, [b, c, h, w], align_corners=False)
        return F.grid_sample(x.float(), grid, mode="bilinear", padding_mode="border", align_corners=False)

    def augment(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        if self.resized_crop is not None:
            x = self._resized_crop(x)
        elif self.crop_padding:
            p = self.crop_padding
            padded = F.pad(x, (p, p, p, p))
            # per-image offsets; two gathers (rows, then columns) with broadcast index views: no
            # per-pixel index tensor, so a 224² batch needs no more than one padded copy
            oy = torch.randint(0, 2 * p + 1, (b, 1, 1, 1), device=x.device, generator=self.gen)
            ox = torch.randint(0, 2 * p + 1, (b, 1, 1, 1), device=x.device, generator=self.gen)
            rows = (oy + torch.arange(h, device=x.device).view(1, 1, h, 1)).expand(b, c, h, w + 2 * p)
            x = padded.gather(2, rows)
            cols = (ox + torch.arange(w, device=x.device).view(1, 1, 1, w)).expand(b, c, h, w)
            x = x.gather(3, cols)
        if self.flip:
            mask = torch.rand(b, device=x.device, generator=self.gen) < 0.5
            x = torch.where(mask.view(b, 1, 1, 1), x.flip(-1), x)
        return x
