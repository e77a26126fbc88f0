"""Training-time augmentation from timm's data API (``data.augment``; bench.config.AugmentConfig).

Where each transform runs, in order, on one training batch:

1. RandAugment (``rand_augment``: timm's ``rand-m9-mstd0.5-inc1`` strings) — on the host, per
   image, on PIL images (timm's implementation is PIL's). On a GPU this keeps the data on
   the host (``data.residency: auto`` then streams), and runs in the training thread while
   the GPU still works through the previous step's queued kernels.
2. Random crop after zero padding, horizontal flip (``data.crop_padding``, ``data.flip``) —
   on the device, as batched tensor ops (bench.data.Loader).
3. Normalisation to [-1, 1], then random erasing (``random_erasing``: timm's RandomErasing,
   per-pixel noise) — on the device.
4. Mixup / CutMix (``mixup``, ``cutmix``: ``timm.data.Mixup``, batch mode) — on the device;
   the targets become soft (label smoothing folded in) and the loss timm's
   ``SoftTargetCrossEntropy``.

timm draws RandAugment and random erasing from Python's ``random`` and Mixup from numpy's
global generator; ``seed_streams`` seeds both and ``streams_state`` / ``set_streams_state``
carry them through a checkpoint, so a seeded run repeats and a resumed one matches.
"""
from __future__ import annotations

import random
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F

from bench.config import AugmentConfig
from bench.data import MEAN
from bench.errors import BenchError


def rand_augment(spec: str, img_size: int) -> Callable[[torch.Tensor], torch.Tensor]:
    """timm's RandAugment ``spec`` as a transform of a (B, 3, H, W) uint8 host batch.
    An invalid string is a BenchError naming it."""
    from PIL import Image
    from timm.data.auto_augment import rand_augment_transform

    hparams = {"translate_const": int(img_size * 0.45), "img_mean": tuple(round(255 * m) for m in MEAN)}
    try:
        transform = rand_augment_transform(spec, hparams)
    except Exception as err:  # timm asserts on unknown sections
        raise BenchError(f"data.augment.rand_augment={spec!r}: timm cannot read it ({type(err).__name__}: {err}); "
                         "expected e.g. rand-m9-mstd0.5-inc1") from None

    def apply(x: torch.Tensor) -> torch.Tensor:
        images = x.permute(0, 2, 3, 1).numpy()
        out = np.stack([np.asarray(transform(Image.fromarray(a)), dtype=np.uint8) for a in images])
        return torch.from_numpy(out).permute(0, 3, 1, 2).contiguous()
    return apply


class Recipe:
    """The device-side half of a recipe (random erasing, Mixup/CutMix) and its loss; the host
    half (``host``: RandAugment, or None) goes to the loader."""

    def __init__(self, cfg: AugmentConfig, *, num_classes: int, img_size: int, label_smoothing: float,
                 device: torch.device) -> None:
        from timm.data import Mixup
        from timm.data.random_erasing import RandomErasing
        from timm.loss import SoftTargetCrossEntropy

        self.cfg, self.label_smoothing = cfg, label_smoothing
        self.host = rand_augment(cfg.rand_augment, img_size) if cfg.rand_augment else None
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
