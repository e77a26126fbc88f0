"""The loader: batches of one split, shuffled per epoch, augmented, normalised to [-1, 1].

It feeds them in one of two residencies (``residency`` says which): ``device`` (the whole
split in device memory, augmented there: no input pipeline at all) or ``stream`` (batches
read from the memory-mapped cache by a background thread into pinned memory, so host memory
stays a few batches however big the data). The order of a seed is drawn on the host in both,
so both give the same batches. The crop and flip run here, on the device, as batched tensor
ops drawing from the loader's own seeded stream (a checkpoint carries it); timm's recipes are
``bench.data.augment``.
"""
from __future__ import annotations

import math
import os
import queue
import threading
from typing import Any, Callable, Iterator

import numpy as np
import torch
import torch.nn.functional as F

from bench.config import DataConfig
from bench.data.cache import cores, host_memory
from bench.data.sources import Dataset, Split, mapped_file, read_rows

MEAN = (0.5, 0.5, 0.5)  # images are scaled to [-1, 1]: the datasets here are not ImageNet-like
STD = (0.5, 0.5, 0.5)
# no augmentation: the one plain recipe (the loader's and training's default)
PLAIN = DataConfig(crop_padding=0, flip=False)


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
    reads up to ``data.prefetch`` batches ahead, into pinned memory on a GPU. The batch order
    is drawn on the host from ``seed`` in both, so they give the same batches.

    Augmentation (training only), as ``recipe`` (the data section; None: none) says:
    ``host_transform`` on the host's uint8 batch (RandAugment), seeded per batch from the
    order stream; streaming, in ``data.host_workers`` worker processes ahead of time (None:
    every core but one on a GPU), else in this thread. Then on the device either a
    random-resized crop (``augment.resized_crop``: the smallest area kept, as timm's
    RandomResizedCrop with aspect 3/4–4/3, bilinear; a crop that would not fit is clamped to
    the image rather than redrawn) or torchvision's CIFAR recipe as tensor ops on the whole batch: a random
    crop after zero padding by ``data.crop_padding`` pixels and a horizontal flip (``data.flip``)
    with probability ½. ``augment.repeats`` > 1: repeated augmentation (DeiT) — each epoch draws
    1/r of the images and shows each r times in a row (in one batch when the batch size is a
    multiple of r), differently augmented. A training loader drops the last partial batch.
    """

    _pool: Any = None  # host-transform workers, started on first use
    _fd: int | None = None  # the cache file a streaming loader reads

    def __init__(self, split: Split, *, batch_size: int, device: torch.device, train: bool, seed: int = 0,
                 recipe: DataConfig | None = None, residency: str = "device",
                 host_transform: Transform | None = None) -> None:
        if residency not in ("device", "stream"):
            raise ValueError(f"residency={residency!r}: expected device or stream")
        recipe = recipe or PLAIN
        self.split, self.stream = split, residency == "stream"
        self.images = split.images if self.stream else to_device(split, device)
        self.labels = split.labels if self.stream else split.labels.to(device)
        self.batch_size, self.device, self.train = batch_size, device, train
        self.crop_padding, self.flip = recipe.crop_padding, recipe.flip
        self.repeats, self.resized_crop = recipe.augment.repeats, recipe.augment.resized_crop
        self.prefetch, self.host_transform = max(1, recipe.prefetch), host_transform if train else None
        workers = recipe.host_workers
        if workers is None:  # a GPU waits on the host's RandAugment unless every spare core does it
            workers = max(1, min(16, cores() - 1)) if device.type == "cuda" else 0
        self.host_workers = workers if self.stream and self.host_transform is not None else 0
        self._fd = os.open(split.images.filename, os.O_RDONLY) if self.stream and mapped_file(split.images) else None
        self.drop_last = train
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
