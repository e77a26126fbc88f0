"""Short-schedule proxy training: AdamW, linear warm-up then cosine decay, label
smoothing, gradient clipping, bf16 autocast on GPU. Seeded, so a CPU rerun gives the
same accuracy; a loss that turns NaN/inf stops the run and marks it diverged.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from bench.data import Dataset, Loader
from bench.errors import SpecError, check_fields
from bench.profiling import autocast, resolve_dtype


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 10
    batch_size: int = 128
    lr: float = 1e-3            # peak, reached after warm-up
    min_lr: float = 1e-5        # cosine floor
    warmup_epochs: float = 1.0
    weight_decay: float = 0.05  # not applied to norms, biases, position embedding, class token
    beta1: float = 0.9
    beta2: float = 0.999
    label_smoothing: float = 0.1
    grad_clip: float | None = 1.0  # max global grad norm; null = off
    dtype: str = "auto"         # auto: bf16 autocast on CUDA, fp32 on CPU
    eval_batch_size: int = 500
    check_every: int = 20       # steps between divergence checks / progress updates (a GPU sync each)

    def __post_init__(self) -> None:
        check_fields(self)
        if self.dtype not in ("auto", "fp32", "bf16"):
            raise SpecError("dtype", self.dtype, "expected auto, fp32 or bf16")
        for name in ("epochs", "batch_size", "eval_batch_size", "check_every"):
            if getattr(self, name) < 1:
                raise SpecError(name, getattr(self, name), "must be at least 1")
        checks = [("lr", self.lr > 0, "must be positive"),
                  ("min_lr", 0 <= self.min_lr <= self.lr, f"must be in [0, lr={self.lr}]"),
                  ("warmup_epochs", 0 <= self.warmup_epochs <= self.epochs, f"must be in [0, epochs={self.epochs}]"),
                  ("weight_decay", self.weight_decay >= 0, "must be at least 0"),
                  ("label_smoothing", 0 <= self.label_smoothing < 1, "must be in [0, 1)"),
                  ("beta1", 0 <= self.beta1 < 1, "must be in [0, 1)"),
                  ("beta2", 0 <= self.beta2 < 1, "must be in [0, 1)")]
        for key, ok, reason in checks:
            if not ok:
                raise SpecError(key, getattr(self, key), reason)
        if self.grad_clip is not None and self.grad_clip <= 0:
            raise SpecError("grad_clip", self.grad_clip, "must be positive (or null for no clipping)")

    def resolved_dtype(self, device: torch.device) -> str:
        return resolve_dtype(self.dtype, device)


def lr_lambda(step: int, *, total: int, warmup: int, floor: float) -> float:
    """Multiplier of the peak lr: linear warm-up over ``warmup`` steps, then cosine to ``floor``."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Decay only matrices (timm's convention): 1-d params and the model's ``no_weight_decay``
    names (position embedding, class token) are exempt."""
    skip = set(getattr(model, "no_weight_decay", lambda: set())())
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim <= 1 or name in skip else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


@torch.inference_mode()
def evaluate(model: nn.Module, loader: Loader, dtype: str) -> float:
    """Top-1 accuracy in percent."""
    model.eval()
    correct = torch.zeros((), dtype=torch.int64, device=loader.device)
    total = 0
    for x, y in loader:
        with autocast(x.device, dtype):
            correct += (model(x).argmax(-1) == y).sum()
        total += len(y)
    return 100.0 * correct.item() / max(1, total)


Progress = Callable[[int, int, float | None], None]  # (step, total steps, mean loss so far)


def train(model: nn.Module, data: Dataset, cfg: TrainConfig, *, device: torch.device, seed: int,
          crop_padding: int = 0, flip: bool = False, on_step: Progress | None = None,
          on_epoch: Callable[[int, float, float], bool | None] | None = None) -> dict[str, Any]:
    """Train ``model`` on ``data.train`` for ``cfg.epochs``; top-1 on ``data.test`` after each epoch.

    ``on_epoch(epoch, top1, loss)`` returning True stops training there (pruning): the result
    then has ``stopped`` set and ``epochs`` the epochs run.
    Returns top1, top1_per_epoch, train_loss (last epoch's mean), train_loss_per_epoch,
    diverged, stopped, epochs, steps, train_time_s, train_dtype.
    """
    model.to(device)
    dtype = cfg.resolved_dtype(device)
    train_loader = Loader(data.train, batch_size=min(cfg.batch_size, len(data.train)), device=device,
                          train=True, crop_padding=crop_padding, flip=flip, seed=seed)
    test_loader = Loader(data.test, batch_size=cfg.eval_batch_size, device=device, train=False)
    steps_per_epoch = len(train_loader)
    total = cfg.epochs * steps_per_epoch
    warmup = round(cfg.warmup_epochs * steps_per_epoch)
    fused = device.type == "cuda"
    optimizer = torch.optim.AdamW(param_groups(model, cfg.weight_decay), lr=cfg.lr,
                                  betas=(cfg.beta1, cfg.beta2), fused=fused or None)
    floor = cfg.min_lr / cfg.lr
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_lambda(s, total=total, warmup=warmup, floor=floor))
    params = [p for p in model.parameters() if p.requires_grad]

    result: dict[str, Any] = {"top1": None, "top1_per_epoch": [], "train_loss": None,
                              "train_loss_per_epoch": [], "diverged": False, "stopped": False, "epochs": 0, "steps": 0,
                              "train_dtype": dtype}
    start = time.perf_counter()
    step = 0
    for epoch in range(cfg.epochs):
        model.train()
        loss_sum = torch.zeros((), device=device)  # summed on device: no sync per step
        for i, (x, y) in enumerate(train_loader, 1):
            with autocast(device, dtype):
                loss = F.cross_entropy(model(x), y, label_smoothing=cfg.label_smoothing)
            loss.backward()
            if cfg.grad_clip is not None:
                nn.utils.clip_grad_norm_(params, cfg.grad_clip, foreach=True)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            schedule.step()
            loss_sum += loss.detach().float()
            step += 1
            if i % cfg.check_every == 0 or i == steps_per_epoch:
                mean = loss_sum.item() / i
                if not math.isfinite(mean):
                    result.update(diverged=True, train_loss=mean, steps=step, epochs=epoch + 1,
                                  train_time_s=time.perf_counter() - start)
                    return result
                if on_step:
                    on_step(step, total, mean)
        top1 = evaluate(model, test_loader, dtype)
        result["top1_per_epoch"].append(top1)
        result["train_loss_per_epoch"].append(loss_sum.item() / steps_per_epoch)
        if on_epoch and on_epoch(epoch + 1, top1, result["train_loss_per_epoch"][-1]):
            result["stopped"] = True
            break
    result.update(top1=result["top1_per_epoch"][-1], train_loss=result["train_loss_per_epoch"][-1],
                  epochs=len(result["top1_per_epoch"]), steps=step, train_time_s=time.perf_counter() - start)
    if not all(torch.isfinite(p).all() for p in params):  # the last steps can break weights after the last check
        result.update(diverged=True, top1=None)
    return result
