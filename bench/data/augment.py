"""Training-time augmentation from timm's data API (``data.augment``; bench.config.AugmentConfig).

Where each transform runs, in order, on one training batch:

1. RandAugment (``rand_augment``: timm's ``rand-m9-mstd0.5-inc1`` strings) — on the host, per
   image, on PIL images (timm's implementation is PIL's), each batch seeded from the
   loader's order stream. Streaming (``data.residency: auto`` streams on a GPU when it is on),
   ``data.host_workers`` processes transform batches ahead of time; otherwise the training
   thread does (on the CPU, where the model's step needs the cores anyway).
2. Random-resized crop (``resized_crop``) or a random crop after zero padding
   (``data.crop_padding``), then a horizontal flip (``data.flip``) — on the device, as
   batched tensor ops (bench.data.loader.Loader).
3. Normalisation to [-1, 1], then random erasing (``random_erasing``: timm's RandomErasing,
   per-pixel noise) — on the device.
4. Mixup / CutMix (``mixup``, ``cutmix``: ``timm.data.Mixup``, batch mode) — on the device;
   the targets become soft (label smoothing folded in) and the loss timm's
   ``SoftTargetCrossEntropy``.

timm draws random erasing from Python's ``random`` and Mixup from numpy's global generator
(RandAugment too, but each batch under its own seed: bench.data.loader.seeded); ``seed_streams``
seeds both and ``streams_state`` / ``set_streams_state`` carry them through a checkpoint,
so a seeded run repeats and a resumed one matches.
"""
from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from bench.config import AugmentConfig
from bench.data.loader import MEAN
from bench.errors import BenchError


class RandAugment:
    """timm's RandAugment ``spec`` as a transform of a (B, 3, H, W) uint8 numpy batch, per
    image through PIL. Picklable (worker processes rebuild timm's transform from the spec).
    An invalid string is a BenchError naming it."""

    def __init__(self, spec: str, img_size: int) -> None:
        self.spec, self.img_size = spec, img_size
        self._build()

    def _build(self) -> None:
        from timm.data.auto_augment import rand_augment_transform

        # magnitude_max just under timm's 10: at 10, the inc1 ops' Posterize keeps 0 bits, which
        # this Pillow refuses (ValueError): about 1 image in 1000 at m9-mstd0.5, so a crash within a
        # few dozen steps of batch 32. At 9.99 it keeps 1 bit; every other op moves by 0.1 %
        hparams = {"translate_const": int(self.img_size * 0.45), "img_mean": tuple(round(255 * m) for m in MEAN),
                   "magnitude_max": 9.99}
        try:
            self._transform = rand_augment_transform(self.spec, hparams)
        except Exception as err:  # timm asserts on unknown sections
            raise BenchError(f"data.augment.rand_augment={self.spec!r}: timm cannot read it "
                             f"({type(err).__name__}: {err}); expected e.g. rand-m9-mstd0.5-inc1") from None

    def __getstate__(self) -> dict[str, Any]:
        return {"spec": self.spec, "img_size": self.img_size}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.spec, self.img_size = state["spec"], state["img_size"]
        self._build()

    def __call__(self, images: np.ndarray) -> np.ndarray:
        from PIL import Image

        out = np.stack([np.asarray(self._transform(Image.fromarray(a)), dtype=np.uint8)
                        for a in images.transpose(0, 2, 3, 1)])
        return np.ascontiguousarray(out.transpose(0, 3, 1, 2))


class Recipe:
    """The device-side half of a recipe (random erasing, Mixup/CutMix) and its loss; the host
    half (``host``: RandAugment, or None) goes to the loader."""

    def __init__(self, cfg: AugmentConfig, *, num_classes: int, img_size: int, label_smoothing: float,
                 device: torch.device) -> None:
        from timm.data import Mixup
        from timm.data.random_erasing import RandomErasing
        from timm.loss import SoftTargetCrossEntropy

        self.cfg, self.label_smoothing = cfg, label_smoothing
        self.host = RandAugment(cfg.rand_augment, img_size) if cfg.rand_augment else None
        self.erase = (RandomErasing(cfg.random_erasing, mode="pixel", max_count=1, device=str(device))
                      if cfg.random_erasing > 0 else None)
        self.mixup = (Mixup(mixup_alpha=cfg.mixup, cutmix_alpha=cfg.cutmix, prob=cfg.mix_prob,
                            switch_prob=cfg.switch_prob, mode="batch", label_smoothing=label_smoothing,
                            num_classes=num_classes) if cfg.mixes else None)
        self.soft_loss = SoftTargetCrossEntropy()

    @property
    def active(self) -> bool:
        return self.erase is not None or self.mixup is not None

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """A normalised batch and its labels → the batch to train on and its targets (soft with Mixup)."""
        if self.erase is not None:
            x = self.erase(x)
        if self.mixup is not None:
            x, y = self.mixup(x, y)
        return x, y

    def loss(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if self.mixup is not None:  # soft targets: cross entropy against the mixed distribution
            return self.soft_loss(logits.float(), target)
        return F.cross_entropy(logits, target, label_smoothing=self.label_smoothing)


def seed_streams(seed: int) -> None:
    """Seed the global generators timm's transforms draw from (Python's and numpy's)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)


def streams_state() -> dict[str, Any]:
    """Both streams' state in plain types and tensors (a checkpoint loads with weights_only)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return {"random": random.getstate(), "numpy": [torch.from_numpy(keys.astype(np.int64)), int(pos),
                                                   int(has_gauss), float(cached)]}


def set_streams_state(state: dict[str, Any]) -> None:
    random.setstate(tuple(tuple(s) if isinstance(s, list) else s for s in state["random"]))
    keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state(("MT19937", keys.numpy().astype(np.uint32), pos, has_gauss, cached))
