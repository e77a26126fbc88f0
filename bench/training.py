"""Short-schedule proxy training: AdamW, linear warm-up then cosine decay, label
smoothing, gradient clipping, bf16 autocast on GPU. Seeded, so a CPU rerun gives the
same accuracy; a loss that turns NaN/inf stops the run and marks it diverged. The
settings and their defaults are ``bench.config.TrainConfig``.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import timm
import torch
from torch import nn

from bench import __version__, console
from bench.attention_kernels import choose_kernels
from bench.config import DataConfig, TrainConfig, resolve_compile
from bench.data.augment import Recipe, seed_streams, set_streams_state, streams_state
from bench.data.loader import PLAIN, Loader, residency
from bench.data.sources import Dataset
from bench.device import autocast, compiled_call, device_name
from bench.errors import first_line
from bench.own_files import atomic_write
from bench.records import PER_EXAMPLE, TEST_LIST, list_key, pack_bits


def identity(cfg: TrainConfig, recipe: DataConfig, seed: int, dtype: str,
             extra: Mapping[str, Any] | None = None) -> dict[str, str]:
    """Everything a run's numbers depend on, flat (``train.lr`` → its JSON): every train
    setting (``epochs`` too: it shapes the schedule), the data's, the seed, the training
    dtype, the versions that change numerics, and ``extra`` (the caller's: the variant).
    A checkpoint carries it; one that does not match is never resumed."""
    sections = {"train": dataclasses.asdict(cfg), "data": recipe.settings(), "seed": seed, "dtype": dtype,
                "version": {"torch": torch.__version__, "timm": timm.__version__, "bench": __version__},
                **(extra or {})}
    flat = {}
    for section, value in sections.items():
        items = value.items() if isinstance(value, Mapping) else [(None, value)]
        flat.update({section if k is None else f"{section}.{k}": json.dumps(v, sort_keys=True, default=str)
                     for k, v in items})
    return flat


def _digest(fields: Mapping[str, str]) -> str:
    return hashlib.sha256(json.dumps(dict(fields), sort_keys=True).encode()).hexdigest()


CHECKPOINT_KEYS = ("identity", "epochs", "step", "model", "optimizer", "schedule", "loader", "torch", "cuda", "result")


@dataclass(frozen=True)
class Checkpoint:
    """Where a run writes its checkpoint after every epoch, and what else (beyond the train and
    data settings, the seed, the dtype and the versions) its numbers depend on: the variant,
    say. Both go into the checkpoint's ``identity``."""
    path: Path
    extra: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Hooks:
    """What a caller hears of a run: ``on_step(step, total steps, mean loss so far)`` every
    ``check_every`` steps; ``on_epoch(epoch, top1, loss)`` after each epoch, where True stops
    the run there (pruning); ``on_resume(top1_per_epoch)`` once, when a run resumes from a
    checkpoint, with the top-1 of the epochs it carries over (epochs 1..k, never told again
    through ``on_epoch``)."""
    on_step: Callable[[int, int, float | None], None] | None = None
    on_epoch: Callable[[int, float, float], bool | None] | None = None
    on_resume: Callable[[list[float]], None] | None = None
    on_checkpoint: Callable[[Path, int], None] | None = None  # after each checkpoint is written: (path, epochs)


@dataclass
class Parts:
    """The stateful parts of a run a checkpoint saves and restores."""
    model: nn.Module
    optimizer: Any
    schedule: Any
    loader: Loader


def _save(path: Path, ident: dict[str, str], epochs: int, step: int, parts: Parts, result: dict[str, Any]) -> None:
    model, optimizer, schedule, loader = parts.model, parts.optimizer, parts.schedule, parts.loader
    state = {"identity": {"hash": _digest(ident), "fields": ident},
             "epochs": epochs, "step": step, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
             "schedule": schedule.state_dict(), "loader": loader.state(), "streams": streams_state(),
             "torch": torch.get_rng_state(),
             "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
             "result": {k: result[k] for k in ("top1_per_epoch", "train_loss_per_epoch", PER_EXAMPLE) if k in result}}
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    atomic_write(Path(path), lambda f: torch.save(state, f), binary=True)


def _load(path: Path, ident: dict[str, str], model: nn.Module) -> dict[str, Any] | None:
    """The checkpoint at ``path`` if it resumes this very run, else None (start from scratch),
    before anything is touched. One that cannot be read whole (truncated, not a checkpoint)
    is set aside beside it, never deleted; one made with other settings (``identity``) or
    by another version is discarded. Each says so in one line."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)  # tensors and plain data only
        if not isinstance(state, dict):
            raise ValueError(f"holds a {type(state).__name__}, not a checkpoint")
    except (FileNotFoundError, PermissionError):
        raise  # not damage: the file's folder or rights; the trial fails and says which
    except Exception as err:  # truncated, random bytes, a pickle of something else
        return _damaged(path, err)
    stored = state.get("identity")
    fields = stored.get("fields") if isinstance(stored, dict) else None
    if not isinstance(fields, dict) or stored.get("hash") != _digest(ident):
        differ = [k for k in dict.fromkeys([*ident, *fields]) if ident.get(k) != fields.get(k)] \
            if isinstance(fields, dict) else []
        what = ("made with other settings (" + ", ".join(differ[:6])
                + (f" and {len(differ) - 6} more" if len(differ) > 6 else "") + ")" if differ
                else "made by a bench that did not record its settings" if not isinstance(fields, dict)
                else "its settings' hash does not match them")
        path.unlink(missing_ok=True)  # never resumed; this run's own takes its place after an epoch
        console.info(f"checkpoint {path}: {what}; discarded, the trial starts from scratch")
        return None
    try:  # the identity matches: what it holds must fit this model, or it is damaged
        missing = [k for k in CHECKPOINT_KEYS if k not in state]
        if missing:
            raise ValueError(f"no {', '.join(missing)}")
        ours, theirs = model.state_dict(), state["model"]
        if set(theirs) != set(ours) or any(tuple(theirs[k].shape) != tuple(v.shape) for k, v in ours.items()):
            raise ValueError("its weights do not fit the model")
    except Exception as err:
        return _damaged(path, err)
    return state


def _damaged(path: Path, err: BaseException) -> None:
    """Set the damaged checkpoint ``path`` aside as PATH.damaged-<time> (kept: never deleted)."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    side, n = path.with_name(f"{path.name}.damaged-{stamp}"), 1
    while side.exists():
        side, n = path.with_name(f"{path.name}.damaged-{stamp}-{n}"), n + 1
    os.replace(path, side)
    console.info(f"checkpoint {path} is damaged ({type(err).__name__}: {first_line(err)[:200]}); set aside as "
                 f"{side.name}, the trial starts from scratch")
    return None


def _resume(state: dict[str, Any], parts: Parts, result: dict[str, Any]) -> tuple[int, int]:
    """Continue from a checkpoint written by ``_save`` (``_load``): (epochs done, steps done)."""
    model, optimizer, schedule, loader = parts.model, parts.optimizer, parts.schedule, parts.loader
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    schedule.load_state_dict(state["schedule"])
    loader.set_state(state["loader"])
    if "streams" in state:
        set_streams_state(state["streams"])
    torch.set_rng_state(state["torch"])
    if state["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    result.update({k: v if isinstance(v, str) else list(v) for k, v in state["result"].items()})
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
def evaluate(model: nn.Module, loader: Loader, dtype: str) -> tuple[float, torch.Tensor]:
    """Top-1 accuracy in percent, and each test image's result (a bool per image, in the test
    list's order: comparisons pair arms image by image)."""
    model.eval()
    hits = []
    for x, y in loader:
        with autocast(x.device, dtype):
            hits.append(model(x).argmax(-1) == y)
    right = torch.cat(hits).cpu() if hits else torch.zeros(0, dtype=torch.bool)
    return 100.0 * int(right.sum()) / max(1, len(right)), right


def _snapshot(model: nn.Module, device: torch.device) -> Callable[[], None]:
    """What a training step changes besides the optimizer's state (gradients, BatchNorm
    statistics, the random streams), kept now; the function returned puts it back (a first
    step that failed to compile is redone as if it never ran)."""
    buffers = {k: b.detach().clone() for k, b in model.named_buffers()}
    cpu = torch.get_rng_state()
    cuda = torch.cuda.get_rng_state_all() if device.type == "cuda" else None

    def restore() -> None:
        with torch.no_grad():
            for k, b in model.named_buffers():
                b.copy_(buffers[k])
        for p in model.parameters():
            p.grad = None
        torch.set_rng_state(cpu)
        if cuda is not None:
            torch.cuda.set_rng_state_all(cuda)
    return restore


def _apart(result: dict[str, Any], steps: int) -> None:
    """Compile time out of train_time_s: ``compile_s`` becomes the first step's time less a
    typical step's (the others' mean), and train_time_s the run without it."""
    first = result.get("compile_s")
    if first is None or steps < 2:
        return
    typical = (result["train_time_s"] - first) / (steps - 1)
    result["compile_s"] = max(0.0, first - typical)
    result["train_time_s"] -= result["compile_s"]


@dataclass
class _Run:
    """One ``train`` call in progress: what ``_start`` sets up, and what its epochs share and
    move on. Fixed from the start: the settings, the device and dtype, the augmentation, the
    hooks, the stateful parts (``Parts``: the train loader among them), the test loader, the
    trained parameters, the step counts, whether to compile, and the checkpoint's path (None:
    none) with the run's ``identity``; ``start`` is when the clock started. Moving on: the
    ``result`` so far, ``net`` (what the steps call: the model, compiled at this run's first
    step), ``step`` (steps done, a resumed run's included) and ``first_step`` (where this
    run's own steps began: the step that compiles)."""
    cfg: TrainConfig
    device: torch.device
    dtype: str
    aug: Recipe
    hooks: Hooks
    parts: Parts
    test_loader: Loader
    params: list[nn.Parameter]
    steps_per_epoch: int
    total: int
    compiled: bool
    path: Path | None
    ident: dict[str, str]
    result: dict[str, Any]
    start: float
    net: nn.Module
    step: int = 0
    first_step: int = 0


def _loaders(data: Dataset, cfg: TrainConfig, device: torch.device, seed: int, recipe: DataConfig,
             aug: Recipe) -> tuple[Loader, Loader, str, int]:
    """The train and test loaders, where the data lives (bench.data.loader.residency) and the
    train batch: ``cfg.batch_size`` at most the training set, even under Mixup/CutMix. Every
    random stream is seeded here (``seed_streams``), just before the loaders are made."""
    where, _ = residency(data, device, recipe.residency, recipe.memory_budget_gb, host_transform=aug.host is not None)
    batch = min(cfg.batch_size, len(data.train))
    if aug.mixup is not None:
        batch -= batch % 2  # Mixup/CutMix pair images within a batch
    seed_streams(seed)
    train_loader = Loader(data.train, batch_size=batch, device=device, train=True, seed=seed, recipe=recipe,
                          residency=where, host_transform=aug.host)
    test_loader = Loader(data.test, batch_size=cfg.eval_batch_size, device=device, train=False, recipe=recipe,
                         residency=where)
    return train_loader, test_loader, where, batch


def _optimizer(model: nn.Module, cfg: TrainConfig, device: torch.device, steps_per_epoch: int) -> tuple[Any, Any, int]:
    """AdamW over ``param_groups`` (fused on CUDA) and its schedule (``lr_lambda``: warm-up,
    then cosine to ``cfg.min_lr``, stepped once per step); and the run's total steps."""
    total = cfg.epochs * steps_per_epoch
    warmup = round(cfg.warmup_epochs * steps_per_epoch)
    fused = device.type == "cuda"
    optimizer = torch.optim.AdamW(param_groups(model, cfg.weight_decay), lr=cfg.lr,
                                  betas=(cfg.beta1, cfg.beta2), fused=fused or None)
    floor = cfg.min_lr / cfg.lr
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_lambda(s, total=total, warmup=warmup, floor=floor))
    return optimizer, schedule, total


def _start(model: nn.Module, data: Dataset, cfg: TrainConfig, *, device: torch.device, seed: int,
           recipe: DataConfig | None, hooks: Hooks | None,
           checkpoint: Checkpoint | None) -> tuple[_Run, dict[str, Any] | None]:
    """Everything ``train`` does before its first step (its arguments, as ``train``'s), in this
    order: the model onto the device, the checkpoint read (``_load``: before anything is
    touched), the augmentation, the loaders (every stream seeded), the optimizer and its
    schedule, the attention kernel, whether to compile, the result's first fields, the clock.
    Returns the run and the checkpoint's state to resume from (None: from scratch)."""
    model.to(device)
    dtype = cfg.resolved_dtype(device)
    recipe = recipe or PLAIN
    hooks = hooks or Hooks()
    path = Path(checkpoint.path) if checkpoint is not None else None
    ident = identity(cfg, recipe, seed, dtype, checkpoint.extra if checkpoint is not None else None)
    state = _load(path, ident, model) if path is not None and path.is_file() else None
    aug = Recipe(recipe.augment, num_classes=data.num_classes, img_size=data.img_size,
                 label_smoothing=cfg.label_smoothing, device=device)
    train_loader, test_loader, where, batch = _loaders(data, cfg, device, seed, recipe, aug)
    steps_per_epoch = len(train_loader)
    optimizer, schedule, total = _optimizer(model, cfg, device, steps_per_epoch)
    params = [p for p in model.parameters() if p.requires_grad]
    parts = Parts(model, optimizer, schedule, train_loader)
    kernel = choose_kernels(model, device=device, dtype=dtype, batch=batch, device_name=device_name(device))
    compiled = resolve_compile(cfg.compile, device)
    result: dict[str, Any] = {TEST_LIST: list_key(data.test.labels), "top1": None, "top1_per_epoch": [], "train_loss": None,
                              "train_loss_per_epoch": [], "diverged": False, "stopped": False,
                              "resumed": state is not None, "epochs": 0, "steps": 0,
                              "train_dtype": dtype, "data_residency": where, "compiled": compiled,
                              "attn_kernel": kernel}
    # net: compiled at the first step (compiled_call); evaluation stays eager: one compile, not two
    run = _Run(cfg=cfg, device=device, dtype=dtype, aug=aug, hooks=hooks, parts=parts, test_loader=test_loader,
               params=params, steps_per_epoch=steps_per_epoch, total=total, compiled=compiled, path=path,
               ident=ident, result=result, start=time.perf_counter(), net=model)
    return run, state


def _forward_backward(run: _Run, x: torch.Tensor, y: torch.Tensor, net: nn.Module) -> torch.Tensor:
    """The loss of ``net`` on the batch (x, y), under the run's autocast, back-propagated."""
    with autocast(run.device, run.dtype):
        out = run.aug.loss(net(x), y)
    out.backward()
    return out


def _step(run: _Run, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """One optimisation step on the batch (x, y): forward and backward (compiling the model at
    this run's first step when the run compiles), clipping, the optimizer's step, the schedule's;
    the step's loss, on the device. ``run.step`` is the caller's to count."""
    parts = run.parts
    forward_backward = functools.partial(_forward_backward, run, x, y)
    if run.compiled and run.step == run.first_step:  # the first step compiles: its time, less a step's, is compile_s
        t0 = time.perf_counter()
        run.net, loss, why = compiled_call(parts.model, forward_backward, reset=_snapshot(parts.model, run.device))
        loss.item()  # waits for the device
        if why is None:
            run.result["compile_s"] = time.perf_counter() - t0
        else:  # a compile fault (bench.device.compiled_call): eager, and the trial says why
            run.result.update(compiled=False, compile_error=why)
    else:
        loss = forward_backward(run.net)
    if run.cfg.grad_clip is not None:
        nn.utils.clip_grad_norm_(run.params, run.cfg.grad_clip, foreach=True)
    parts.optimizer.step()
    parts.optimizer.zero_grad(set_to_none=True)
    parts.schedule.step()
    return loss


def train_one_epoch(run: _Run, epoch: int) -> torch.Tensor | None:
    """Epoch ``epoch`` (0-based) of training: a step per train batch (augmented when the recipe
    says so), the loss summed on the device; every ``cfg.check_every`` steps and at the epoch's
    end the mean so far is checked (one sync) and told to ``hooks.on_step``. Returns the
    epoch's summed loss, or None when the loss turned NaN/inf: ``run.result`` then says the
    run diverged, and is the run's result as it stands."""
    run.parts.model.train()
    loss_sum = torch.zeros((), device=run.device)  # summed on device: no sync per step
    for i, (x, y) in enumerate(run.parts.loader, 1):
        if run.aug.active:
            x, y = run.aug(x, y)
        loss = _step(run, x, y)
        loss_sum += loss.detach().float()
        run.step += 1
        if i % run.cfg.check_every == 0 or i == run.steps_per_epoch:
            mean = loss_sum.item() / i
            if not math.isfinite(mean):
                run.result.update(diverged=True, train_loss=mean, steps=run.step, epochs=epoch + 1,
                                  train_time_s=time.perf_counter() - run.start)
                run.result.pop(PER_EXAMPLE, None)  # an earlier epoch's: not this run's result
                return None
            if run.hooks.on_step:
                run.hooks.on_step(run.step, run.total, mean)
    return loss_sum


def _close_epoch(run: _Run, epoch: int, loss_sum: torch.Tensor) -> bool:
    """After epoch ``epoch`` (0-based) has trained: its top-1 (``evaluate``) and mean loss into
    the result, the checkpoint written (then ``hooks.on_checkpoint``), ``hooks.on_epoch`` told.
    True: the hook stops the run here (pruning; the result says ``stopped``)."""
    result, hooks = run.result, run.hooks
    top1, right = evaluate(run.parts.model, run.test_loader, run.dtype)
    result["top1_per_epoch"].append(top1)
    result[PER_EXAMPLE] = pack_bits(right.numpy())  # the last epoch's stands
    result["train_loss_per_epoch"].append(loss_sum.item() / run.steps_per_epoch)
    if run.path is not None:  # the last epoch's too: --keep-checkpoints keeps the final state
        _save(run.path, run.ident, epoch + 1, run.step, run.parts, result)
        if hooks.on_checkpoint:
            hooks.on_checkpoint(run.path, epoch + 1)
    if hooks.on_epoch and hooks.on_epoch(epoch + 1, top1, result["train_loss_per_epoch"][-1]):
        result["stopped"] = True
        return True
    return False


def _finish(run: _Run) -> dict[str, Any]:
    """The result of a run whose epochs are done (or stopped): the last epoch's top-1 and loss,
    the counts, the time (compile time apart: ``_apart``); weights that turned NaN/inf after
    the last check make it diverged after all."""
    result = run.result
    result.update(top1=result["top1_per_epoch"][-1], train_loss=result["train_loss_per_epoch"][-1],
                  epochs=len(result["top1_per_epoch"]), steps=run.step, train_time_s=time.perf_counter() - run.start)
    _apart(result, run.step - run.first_step)
    if not all(torch.isfinite(p).all() for p in run.params):  # the last steps can break weights after the last check
        result.update(diverged=True, top1=None)
        result.pop(PER_EXAMPLE, None)
    return result


def train(model: nn.Module, data: Dataset, cfg: TrainConfig, *, device: torch.device, seed: int,
          recipe: DataConfig | None = None, hooks: Hooks | None = None,
          checkpoint: Checkpoint | None = None) -> dict[str, Any]:
    """Train ``model`` on ``data.train`` for ``cfg.epochs``; top-1 on ``data.test`` after each epoch.

    ``recipe``: the data section's augmentation (crop, flip, ``augment``: bench.data.augment) and
    residency (bench.data.loader.residency); None: no augmentation, data on the device.
    ``hooks.on_epoch(epoch, top1, loss)`` returning True stops training there (pruning): the result
    then has ``stopped`` set and ``epochs`` the epochs run; ``hooks.on_resume`` hears a resumed
    run's earlier epochs (their top-1, from its checkpoint). ``checkpoint``: after every epoch
    the whole state (model, optimizer, schedule, the result so far, every random stream
    including the loader's) is written to ``checkpoint.path`` atomically, and a run that finds
    one there resumes from it: on the CPU, to the same final top-1 as a run never interrupted.
    A checkpoint carries the run's ``identity`` (with ``checkpoint.extra``: what else the
    numbers depend on, e.g. the variant): one made with other settings is discarded, a
    damaged one set aside, and the run starts from scratch (``resumed`` False).
    Returns top1, top1_per_epoch, train_loss (last epoch's mean), train_loss_per_epoch,
    diverged, stopped, resumed, epochs, steps, train_time_s, train_dtype, data_residency.
    """
    run, state = _start(model, data, cfg, device=device, seed=seed, recipe=recipe, hooks=hooks,
                        checkpoint=checkpoint)
    first = 0
    try:
        if state is not None:
            first, run.step = _resume(state, run.parts, run.result)
            run.result.pop("compile_s", None)  # this run compiles again
            del state  # its tensors: not held through the run
            if run.hooks.on_resume:  # after every stream is restored: the hook cannot move them
                run.hooks.on_resume(list(run.result["top1_per_epoch"]))
        run.first_step = run.step
        for epoch in range(first, cfg.epochs):
            loss_sum = train_one_epoch(run, epoch)
            if loss_sum is None:  # diverged: the result as it stands
                return run.result
            if _close_epoch(run, epoch, loss_sum):
                break
    finally:
        run.parts.loader.close()  # its RandAugment workers, if any, and cache files
        run.test_loader.close()
    return _finish(run)
