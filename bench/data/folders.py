"""What real data holds on disk, and what bench takes from it: image folders and CIFAR's files
listed, the classes and a class-balanced sample chosen, one image decoded; and the one check,
run when a spec loads, that the data a spec names is there.

torch-free (numpy; PIL on use): the spec layer checks data through it, and the cache's decoding
processes use it.
"""
from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from bench.config import CIFAR_SIZES, NUM_CLASSES, DataConfig
from bench.errors import BenchError, did_you_mean, missing_data

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".ppm", ".webp", ".tif", ".tiff", ".gif")
_SUFFIXES = frozenset(s[1:] for s in IMAGE_SUFFIXES)
CIFAR_FOLDERS = {"cifar10": "cifar-10-batches-py", "cifar100": "cifar-100-python"}  # torchvision's layout
CIFAR = {"cifar10": ("labels", [f"data_batch_{i}" for i in range(1, 6)], "test_batch", "batches.meta",
                     "label_names"),
         "cifar100": ("fine_labels", ["train"], "test", "meta", "fine_label_names")}
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
CIFAR_URL = "https://www.cs.toronto.edu/~kriz/cifar.html"
SHUFFLE_SEED = 0  # folders are read class by class: a fixed shuffle mixes them (any first-N holds every class)


# --- is the data there ------------------------------------------------------------------------

def check_available(cfg: DataConfig) -> int:
    """Fail now, not at the first trial, when the data is missing: the number of classes trained on."""
    if cfg.name in CIFAR_FOLDERS:
        cifar_dir(cfg, must_exist=not cfg.download)  # a download fetches it at the first load
        return cfg.num_classes(NUM_CLASSES[cfg.name])
    if cfg.name == "imagefolder":
        return len(select_classes(imagefolder_classes(cfg), cfg.classes, cfg.root_path / cfg.train_dir))
    return NUM_CLASSES[cfg.name]


def cifar_dir(cfg: DataConfig, *, must_exist: bool = True) -> Path:
    """CIFAR's folder under ``data.root`` (torchvision's layout); missing when it must exist:
    an error saying where bench looked and how to get it."""
    base = cfg.root_path / CIFAR_FOLDERS[cfg.name]
    if must_exist and not base.is_dir():
        raise missing_data(cfg.name, base, "Set data.download: true on a machine with internet, or unpack "
                           f"{base.name} (from {CIFAR_URL}) under data.root={str(cfg.root_path)!r}.")
    return base


def imagefolder_classes(cfg: DataConfig) -> list[str]:
    """The class folders (sorted) both splits hold, ``root/<split>/<class>/…``; a split or its
    class folders missing, or the two splits holding different ones: an error naming the folder."""
    root = cfg.root_path
    found: list[str] | None = None
    for split in (cfg.train_dir, cfg.test_dir):
        where = root / split
        if not where.is_dir():
            raise missing_data(f"imagefolder split {split!r}", where, f"Expected {root}/{cfg.train_dir}/<class>/*.png "
                               f"and {root}/{cfg.test_dir}/<class>/*.png.")
        names = class_folders(where)
        if not names:
            raise missing_data("imagefolder class folders", where, "Each class needs its own folder of images.")
        if found is None:
            found = names
        elif names != found:
            only = sorted(set(names) ^ set(found))
            raise BenchError(f"imagefolder: {where} and {root / cfg.train_dir} hold different class folders "
                             f"({len(only)} in one only, e.g. {only[0]!r})")
    return found or []


def split_sizes(cfg: DataConfig) -> tuple[int, int]:
    """Train and test images per epoch, without loading the data (a folder is listed)."""
    if cfg.name == "shapes":
        return cfg.shapes_sizes()
    if cfg.name in CIFAR_FOLDERS:
        per_class = [n // NUM_CLASSES[cfg.name] for n in CIFAR_SIZES]
        full = tuple(n * cfg.num_classes(NUM_CLASSES[cfg.name]) for n in per_class)
    else:
        chosen = select_classes(class_folders(cfg.root_path / cfg.train_dir), cfg.classes,
                                cfg.root_path / cfg.train_dir)
        full = tuple(len(list_split(cfg.root_path / split, chosen)[0]) for split in (cfg.train_dir, cfg.test_dir))
    return min(full[0], cfg.train_size or full[0]), min(full[1], cfg.test_size or full[1])


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


# --- CIFAR's files ----------------------------------------------------------------------------

def cifar_files(cfg: DataConfig) -> tuple[Path, list[Path]]:
    """CIFAR's folder and its pickles, each there (torchvision's layout)."""
    _, train_files, test_file, _, _ = CIFAR[cfg.name]
    base = cifar_dir(cfg, must_exist=False)
    files = [base / f for f in (*train_files, test_file)]
    for path in files:
        if not path.is_file():
            raise missing_data(f"{cfg.name} file {path.name}", base, "The extracted archive is incomplete.")
    return base, files


def cifar_classes(cfg: DataConfig) -> list[str]:
    """CIFAR's class names, from its meta file when there."""
    _, _, _, meta_file, names_key = CIFAR[cfg.name]
    base = cifar_dir(cfg, must_exist=False)
    names = list(CIFAR10_CLASSES) if cfg.name == "cifar10" else [str(i) for i in range(100)]
    if (base / meta_file).is_file():
        with open(base / meta_file, "rb") as f:
            names = list(pickle.load(f, encoding="latin1").get(names_key) or names)
    return names


def read_cifar(cfg: DataConfig, all_classes: list[str], chosen: list[str]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per split: the ``chosen`` classes' (n, 3, 32, 32) uint8 images and labels (indices in
    ``chosen``), a class-balanced sample of ``data.train_size`` / ``test_size``."""
    label_key, train_files, test_file, _, _ = CIFAR[cfg.name]
    base = cifar_dir(cfg, must_exist=False)

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
        n = {"train": cfg.train_size, "test": cfg.test_size}[split]
        keep = inside[balanced(remap[labels[inside]], n, len(chosen))]
        splits[split] = (images[keep], remap[labels[keep]])
    return splits


# --- what is taken --------------------------------------------------------------------------

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


def selection(labels: dict[str, np.ndarray], sizes: dict[str, int | None], n_classes: int,
              shuffle: bool) -> dict[str, np.ndarray]:
    """Per split: the indices kept, in a fixed (shuffled when ``shuffle``) order, class-balanced."""
    out = {}
    for split, lab in labels.items():
        order = np.random.default_rng(SHUFFLE_SEED).permutation(len(lab)) if shuffle else np.arange(len(lab))
        keep = balanced(lab[order], sizes[split], n_classes)
        out[split] = order[keep]
    return out


# --- decoding one image -----------------------------------------------------------------------

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
