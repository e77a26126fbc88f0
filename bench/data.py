"""Datasets for proxy training, held in (device) memory with on-device augmentation.

- ``shapes``: bench's built-in procedural dataset. No download, deterministic from a
  seed, generated in a fraction of a second. Each image holds one of ten outline-or-
  filled shapes at a random place, size and colour on a random background, with
  distractor blobs and pixel noise growing with ``difficulty``. The class is the
  shape, so pixel statistics (colour, brightness, where the ink is) say nothing
  about it: a linear classifier on raw pixels stays far below a small ViT.
- ``cifar10`` / ``cifar100``: torchvision's on-disk format (the python pickles).
- ``imagefolder``: ``root/train/<class>/*.png`` and ``root/val/<class>/*.png``,
  resized to the model's image size.

Everything becomes uint8 tensors (N, C, H, W) + int64 labels; ``Loader`` keeps them
on the training device and augments there (random crop with padding, horizontal
flip), so a GPU never waits on a DataLoader.
"""
from __future__ import annotations

import math
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import torch
import torch.nn.functional as F

from bench.config import CIFAR_FOLDERS, NUM_CLASSES, DataConfig
from bench.errors import BenchError, missing_data

SHAPES = ("disc", "ring", "square", "frame", "diamond", "plus", "cross", "triangle", "hbars", "vbars")
CIFAR = {"cifar10": (CIFAR_FOLDERS["cifar10"], "labels", [f"data_batch_{i}" for i in range(1, 6)], "test_batch"),
         "cifar100": (CIFAR_FOLDERS["cifar100"], "fine_labels", ["train"], "test")}
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".ppm", ".webp")
MEAN = (0.5, 0.5, 0.5)  # images are scaled to [-1, 1]: the datasets here are not ImageNet-like
STD = (0.5, 0.5, 0.5)


@dataclass
class Split:
    images: torch.Tensor  # (N, C, H, W) uint8
    labels: torch.Tensor  # (N,) int64

    def __len__(self) -> int:
        return len(self.labels)


@dataclass
class Dataset:
    name: str
    train: Split
    test: Split
    classes: list[str]

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def img_size(self) -> int:
        return self.train.images.shape[-1]

    def subset(self, train_size: int | None, test_size: int | None) -> Dataset:
        """The first ``train_size`` / ``test_size`` images of each split (None: all)."""
        cut = lambda s, n: s if n is None else Split(s.images[:n], s.labels[:n])  # noqa: E731
        return Dataset(self.name, cut(self.train, train_size), cut(self.test, test_size), self.classes)


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

def cifar(name: str, root: str | Path, *, download: bool = False) -> Dataset:
    """CIFAR-10/100 from torchvision's on-disk format under ``root``."""
    folder, label_key, train_files, test_file = CIFAR[name]
    base = Path(root).expanduser() / folder
    if not base.is_dir() and download:
        import torchvision  # on use: only a download needs it
        cls = torchvision.datasets.CIFAR10 if name == "cifar10" else torchvision.datasets.CIFAR100
        try:
            cls(str(Path(root).expanduser()), train=True, download=True)
        except Exception as err:  # no network, a full disk: say what failed
            raise BenchError(f"{name}: download to {root} failed ({type(err).__name__}: {err})") from None
    if not base.is_dir():
        raise missing_data(name, base, f"Set data.download: true on a machine with internet, or unpack "
                       f"{folder} (from https://www.cs.toronto.edu/~kriz/cifar.html) under {root}.")

    def load(files: list[str]) -> Split:
        images, labels = [], []
        for fname in files:
            path = base / fname
            if not path.is_file():
                raise missing_data(f"{name} file {fname}", base, "The extracted archive is incomplete.")
            with open(path, "rb") as f:
                entry = pickle.load(f, encoding="latin1")
            images.append(torch.as_tensor(entry["data"], dtype=torch.uint8).view(-1, 3, 32, 32))
            labels.append(torch.as_tensor(entry[label_key], dtype=torch.int64))
        return Split(torch.cat(images), torch.cat(labels))

    meta_file = base / ("batches.meta" if name == "cifar10" else "meta")
    classes: list[str] = []
    if meta_file.is_file():
        with open(meta_file, "rb") as f:
            meta = pickle.load(f, encoding="latin1")
        classes = list(meta.get("label_names") or meta.get("fine_label_names") or [])
    train, test = load(train_files), load([test_file])
    return Dataset(name, train, test, classes or [str(i) for i in range(NUM_CLASSES[name])])


def imagefolder(root: str | Path, *, img_size: int, train_dir: str = "train", test_dir: str = "val") -> Dataset:
    """``root/<train_dir>/<class>/<image>`` and ``root/<test_dir>/<class>/<image>``, resized."""
    from PIL import Image  # on use: only image folders need it

    base = Path(root).expanduser()
    splits = {}
    classes: list[str] | None = None
    for split in (train_dir, test_dir):
        folder = base / split
        if not folder.is_dir():
            raise missing_data(f"imagefolder split {split!r}", folder,
                           f"Expected {base}/{train_dir}/<class>/*.png and {base}/{test_dir}/<class>/*.png.")
        found = sorted(p.name for p in folder.iterdir() if p.is_dir())
        if classes is None:
            classes = found
        elif found != classes:
            raise BenchError(f"imagefolder: {folder} has classes {found}, {base / train_dir} has {classes}")
        images, labels = [], []
        for idx, cls in enumerate(classes):
            for path in sorted((folder / cls).iterdir()):
                if path.suffix.lower() not in IMAGE_SUFFIXES:
                    continue
                try:
                    with Image.open(path) as im:
                        im = im.convert("RGB").resize((img_size, img_size), Image.BILINEAR)
                        images.append(torch.frombuffer(bytearray(im.tobytes()), dtype=torch.uint8)
                                      .view(img_size, img_size, 3).permute(2, 0, 1))
                except OSError as err:
                    raise BenchError(f"imagefolder: cannot read {path}: {err}") from None
                labels.append(idx)
        if not images:
            raise missing_data(f"imagefolder images ({', '.join(IMAGE_SUFFIXES)})", folder,
                           "Each class folder needs image files.")
        # a fixed shuffle: read class by class, but any first-N subset (train_size, the
        # collapse batch) must hold every class
        order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(0))
        splits[split] = Split(torch.stack(images)[order], torch.tensor(labels, dtype=torch.int64)[order])
    return Dataset(base.name, splits[train_dir], splits[test_dir], classes or [])


def load(cfg: DataConfig, img_size: int) -> Dataset:
    """The dataset a spec's ``data`` section names, at the model's image size (shapes are
    drawn at it, folders resized)."""
    if cfg.name == "shapes":
        train_size, test_size = cfg.shapes_sizes()
        return shapes(train_size=train_size, test_size=test_size, img_size=img_size,
                      difficulty=cfg.difficulty, seed=cfg.seed)
    if cfg.name in CIFAR:
        ds = cifar(cfg.name, cfg.root, download=cfg.download)
    else:
        ds = imagefolder(cfg.root, img_size=img_size, train_dir=cfg.train_dir, test_dir=cfg.test_dir)
    return ds.subset(cfg.train_size, cfg.test_size)


# --- device-resident batches with augmentation --------------------------------------

class Loader:
    """Batches of one split kept on ``device``: shuffled per epoch, augmented there.

    Augmentation is torchvision's CIFAR recipe done as tensor ops on the whole batch:
    a random crop after zero padding by ``crop_padding`` pixels, and a horizontal
    flip with probability ½. Output: float images normalised to [-1, 1].
    """

    def __init__(self, split: Split, *, batch_size: int, device: torch.device, train: bool,
                 crop_padding: int = 0, flip: bool = False, seed: int = 0, drop_last: bool | None = None) -> None:
        self.images = split.images.to(device)
        self.labels = split.labels.to(device)
        self.batch_size, self.device, self.train = batch_size, device, train
        self.crop_padding, self.flip = crop_padding, flip
        self.drop_last = train if drop_last is None else drop_last
        self.gen = torch.Generator(device=device).manual_seed(seed)
        self.mean = torch.tensor(MEAN, device=device).view(1, 3, 1, 1) * 255
        self.std = torch.tensor(STD, device=device).view(1, 3, 1, 1) * 255

    def __len__(self) -> int:
        n = len(self.labels)
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        n = len(self.labels)
        order = (torch.randperm(n, device=self.device, generator=self.gen) if self.train
                 else torch.arange(n, device=self.device))
        for i in range(len(self)):
            idx = order[i * self.batch_size:(i + 1) * self.batch_size]
            x = self.images[idx]
            if self.train:
                x = self.augment(x)
            yield (x.float() - self.mean) / self.std, self.labels[idx]

    def augment(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        if self.crop_padding:
            p = self.crop_padding
            padded = F.pad(x, (p, p, p, p))
            # one gather per batch: per-image offsets into the padded image
            oy = torch.randint(0, 2 * p + 1, (b, 1, 1), device=x.device, generator=self.gen)
            ox = torch.randint(0, 2 * p + 1, (b, 1, 1), device=x.device, generator=self.gen)
            rows = (oy + torch.arange(h, device=x.device).view(1, h, 1)).expand(b, h, w)
            cols = (ox + torch.arange(w, device=x.device).view(1, 1, w)).expand(b, h, w)
            flat = (rows * (w + 2 * p) + cols).view(b, 1, h * w).expand(-1, x.shape[1], -1)
            x = padded.flatten(2).gather(2, flat).view_as(x)
        if self.flip:
            mask = torch.rand(b, device=x.device, generator=self.gen) < 0.5
            x = torch.where(mask.view(b, 1, 1, 1), x.flip(-1), x)
        return x
