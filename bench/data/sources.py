"""The datasets, and the one factory a spec's ``data`` section goes through (``load``).

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
class subset and a class-balanced sample of it. A ``Dataset`` is two ``Split``s of uint8 images:
tensors in memory, or read-only memory maps of the cache.
"""
from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench import console
from bench.config import DataConfig
from bench.data import cache
from bench.data.folders import CIFAR_FOLDERS, cifar_dir
from bench.errors import BenchError

SHAPES = ("disc", "ring", "square", "frame", "diamond", "plus", "cross", "triangle", "hbars", "vbars")


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


@dataclass
class Dataset:
    name: str
    train: Split
    test: Split
    classes: list[str]
    source: Path | None = None  # the cache it was read from (None: in memory only)
    fingerprint: dict[str, Any] | None = None  # real data: its classes, files and listing (cache.identity)

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
    """The built-in dataset; train and test come from disjoint random streams. Held in memory:
    a size this machine cannot hold is one error before anything is allocated."""
    need = (train_size + test_size + 16 * min(4096, max(train_size, test_size))) * 3 * img_size ** 2  # the
    # images (uint8), and a chunk drawn in float32 with its few temporaries
    have = cache.host_memory()
    if have and need > have:
        raise BenchError(f"data: {train_size:,} + {test_size:,} shapes images at {img_size}px need "
                         f"{need / 2**30:,.1f} GiB of memory, {have / 2**30:,.1f} GiB is available; lower "
                         "data.train_size / data.test_size")
    return Dataset("shapes", make_shapes(train_size, img_size=img_size, difficulty=difficulty, seed=seed),
                   make_shapes(test_size, img_size=img_size, difficulty=difficulty, seed=seed + 1_000_003),
                   list(SHAPES))


# --- real datasets on disk -----------------------------------------------------------

def cifar_download(cfg: DataConfig) -> None:
    """Fetch CIFAR ``data.name`` into ``data.root`` with torchvision (only when asked to)."""
    import torchvision  # on use: only a download needs it
    cls = torchvision.datasets.CIFAR10 if cfg.name == "cifar10" else torchvision.datasets.CIFAR100
    try:
        cls(str(cfg.root_path), train=True, download=True)
    except Exception as err:  # no network, a full disk: say what failed
        raise BenchError(f"{cfg.name}: download to {cfg.root} failed ({type(err).__name__}: {err})") from None


def _from_cache(name: str, c: cache.Cached) -> Dataset:
    return Dataset(name, Split(c.train_images, torch.from_numpy(c.train_labels)),
                   Split(c.test_images, torch.from_numpy(c.test_labels)), list(c.classes), source=c.path,
                   fingerprint=c.fingerprint)


def cifar(cfg: DataConfig, img_size: int = 32, quiet: bool = True) -> Dataset:
    """CIFAR-10/100 (``data.name``) from torchvision's on-disk format under ``data.root``, through the cache."""
    if not cifar_dir(cfg, must_exist=False).is_dir() and cfg.download:
        cifar_download(cfg)
    cifar_dir(cfg)  # there, or an error saying how to get it
    return _from_cache(cfg.name, cache.cifar(cfg, img_size, quiet=quiet))


def imagefolder(cfg: DataConfig, img_size: int, quiet: bool = True) -> Dataset:
    """``root/<train_dir>/<class>/<image>`` and ``root/<test_dir>/<class>/<image>``, through the cache."""
    return _from_cache(cfg.root_path.name, cache.folder(cfg, img_size, quiet=quiet))


def load(cfg: DataConfig, img_size: int, quiet: bool = True) -> Dataset:
    """The dataset a spec's ``data`` section names, at the model's image size (shapes are
    drawn at it, real images cached at it)."""
    if cfg.name == "shapes":
        train_size, test_size = cfg.shapes_sizes()
        return shapes(train_size=train_size, test_size=test_size, img_size=img_size,
                      difficulty=cfg.difficulty, seed=cfg.seed)
    t0 = time.perf_counter()
    ds = (cifar if cfg.name in CIFAR_FOLDERS else imagefolder)(cfg, img_size, quiet)
    if not quiet:
        console.info(f"{ds.name} at {img_size}px: {len(ds.train)} + {len(ds.test)} images, {ds.num_classes} classes, "
                     f"{ds.nbytes / 2**20:.1f} MiB cached in {ds.source} ({time.perf_counter() - t0:.1f} s)")
    return ds
