"""Short-schedule proxy training: AdamW, linear warm-up then cosine decay, label
smoothing, gradient clipping, bf16 autocast on GPU. Seeded, so a CPU rerun gives the
same accuracy; a loss that turns NaN/inf stops the run and marks it diverged. The
settings and their defaults are ``bench.config.TrainConfig``.
"""
from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from bench.cache import cores
from bench.augment import Recipe, seed_streams, set_streams_state, streams_state
from bench.config import DataConfig, TrainConfig
from bench.data import Dataset, Loader, residency
from bench.files import atomic_write
from bench.profiling import autocast


def _save(path: Path, epochs: int, step: int, model: nn.Module, optimizer: Any, schedule: Any, loader: Loader,
          result: dict[str, Any]) -> None:
    state = {"epochs": epochs, "step": step, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
             "schedule": schedule.state_dict(), "loader": loader.state(), "streams": streams_state(),
             "torch": torch.get_rng_state(),
             "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
             "result": {k: result[k] for k in ("top1_per_epoch", "train_loss_per_epoch")}}
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    atomic_write(Path(path), lambda f: torch.save(state, f), binary=True)


def _resume(path: Path, model: nn.Module, optimizer: Any, schedule: Any, loader: Loader,
            result: dict[str, Any]) -> tuple[int, int]:
    """Load a checkpoint written by ``_save``: (epochs done, steps done)."""
    state = torch.load(path, map_location="cpu", weights_only=True)  # tensors and plain data only
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    schedule.load_state_dict(state["schedule"])
    loader.set_state(state["loader"])
    if "streams" in state:
        set_streams_state(state["streams"])
    torch.set_rng_state(state["torch"])
    if state["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    result.update({k: list(v) for k, v in state["result"].items()})
    return state["epochs"], state["step"]


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
          recipe: DataConfig | None = None, on_step: Progress | None = None,
          on_epoch: Callable[[int, float, float], bool | None] | None = None,
          checkpoint: Path | None = None) -> dict[str, Any]:
    """Train ``model`` on ``data.train`` for ``cfg.epochs``; top-1 on ``data.test`` after each epoch.

    ``recipe``: the data section's augmentation (crop, flip, ``augment``: bench.augment) and
    residency (bench.data.residency); None: no augmentation, data on the device.
    ``on_epoch(epoch, top1, loss)`` returning True stops training there (pruning): the result
    then has ``stopped`` set and ``epochs`` the epochs run. ``checkpoint``: after every epoch
    the whole state (model, optimizer, schedule, the result so far, every random stream
    including the loader's) is written there atomically, and a run that finds one resumes
    from it: on the CPU, to the same final top-1 as a run never interrupted.
    Returns top1, top1_per_epoch, train_loss (last epoch's mean), train_loss_per_epoch,
    diverged, stopped, epochs, steps, train_time_s, train_dtype, data_residency.
    """
    model.to(device)
    dtype = cfg.resolved_dtype(device)
    recipe = recipe or DataConfig(crop_padding=0, flip=False)
    aug = Recipe(recipe.augment, num_classes=data.num_classes, img_size=data.img_size,
                 label_smoothing=cfg.label_smoothing, device=device)
    where, _ = residency(data, device, recipe.residency, recipe.memory_budget_gb, host_transform=aug.host is not None)
    batch = min(cfg.batch_size, len(data.train))
    if aug.mixup is not None:
        batch -= batch % 2  # Mixup/CutMix pair images within a batch
    seed_streams(seed)
    workers = recipe.host_workers
    if workers is None:  # a GPU waits on the host's RandAugment unless every spare core does it
        workers = max(1, min(16, cores() - 1)) if device.type == "cuda" else 0
    train_loader = Loader(data.train, batch_size=batch, device=device, train=True, crop_padding=recipe.crop_padding,
                          flip=recipe.flip, seed=seed, residency=where, prefetch=recipe.prefetch,
                          host_transform=aug.host, host_workers=workers, repeats=recipe.augment.repeats,
                          resized_crop=recipe.augment.resized_crop)
    test_loader = Loader(data.test, batch_size=cfg.eval_batch_size, device=device, train=False, residency=where,
                         prefetch=recipe.prefetch)
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
                              "train_dtype": dtype, "data_residency": where}
    start = time.perf_counter()
    step, first = 0, 0
    try:
        if checkpoint is not None and Path(checkpoint).is_file():
            first, step = _resume(checkpoint, model, optimizer, schedule, train_loader, result)
        for epoch in range(first, cfg.epochs):
            model.train()
            loss_sum = torch.zeros((), device=device)  # summed on device: no sync per step
            for i, (x, y) in enumerate(train_loader, 1):
                if aug.active:
                    x, y = aug(x, y)
                with autocast(device, dtype):
                    loss = aug.loss(model(x), y)
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
            if checkpoint is not None and epoch + 1 < cfg.epochs:
                _save(checkpoint, epoch + 1, step, model, optimizer, schedule, train_loader, result)
            if on_epoch and on_epoch(epoch + 1, top1, result["train_loss_per_epoch"][-1]):
                result["stopped"] = True
                break
    finally:
        train_loader.close()  # its RandAugment workers, if any, and cache files
        test_loader.close()
    result.update(top1=result["top1_per_epoch"][-1], train_loss=result["train_loss_per_epoch"][-1],
                  epochs=len(result["top1_per_epoch"]), steps=step, train_time_s=time.perf_counter() - start)
    if not all(torch.isfinite(p).all() for p in params):  # the last steps can break weights after the last check
        result.update(diverged=True, top1=None)
    return result
