"""Cost of one model: parameters, MACs, activations, speed and peak memory.

The counts and their definitions are bench.costs'; the model by name is bench.models'; this
module counts it there and times it.

Timing: warm-up, then one measurement per iteration (CUDA events on GPU,
``time.perf_counter`` on CPU), reported as median and p10/p90.
"""
from __future__ import annotations

import copy
import dataclasses
import math
import statistics
import time
from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from bench.attention_kernels import choose_kernels
from bench.config import ProfileConfig, resolve_compile, resolve_dtype
from bench.costs import count_macs, count_train_macs, param_count
from bench.device import autocast, compiled_call, device_name, environment, free_memory, is_oom, resolve_device
from bench.errors import BenchError
from bench.models import Variant, create, input_size_of
from bench.utilisation import utilisation


# --- timing ---------------------------------------------------------------------------

@dataclass
class Timing:
    """Milliseconds per step over the measured iterations."""

    samples: list[float]

    @property
    def median(self) -> float:
        return statistics.median(self.samples)

    def quantile(self, q: float) -> float:
        s = sorted(self.samples)
        pos = q * (len(s) - 1)
        lo, hi = math.floor(pos), math.ceil(pos)
        return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def time_steps(step: Callable[[], Any], *, warmup: int, iters: int, device: torch.device) -> Timing:
    """Time ``step`` ``iters`` times after ``warmup`` untimed calls."""
    for _ in range(warmup):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
                  for _ in range(iters)]
        for start, end in events:
            start.record()
            step()
            end.record()
        torch.cuda.synchronize(device)
        return Timing([s.elapsed_time(e) for s, e in events])
    samples = []
    for _ in range(iters):
        t0 = time.perf_counter()
        step()
        samples.append((time.perf_counter() - t0) * 1e3)
    return Timing(samples)


def inference_step(model: nn.Module, x: torch.Tensor, dtype: str) -> Callable[[], Any]:
    model.eval()

    def step():
        with torch.inference_mode(), autocast(x.device, dtype):
            return model(x)
    return step


def train_step(model: nn.Module, x: torch.Tensor, y: torch.Tensor, dtype: str,
               optimizer: torch.optim.Optimizer) -> Callable[[], Any]:
    """One optimisation step: forward, loss, backward, optimizer step."""
    model.train()

    def step():
        with autocast(x.device, dtype):
            loss = F.cross_entropy(model(x), y)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return step


def measure_speed(model: nn.Module, input_size: tuple[int, ...], cfg: ProfileConfig, *, mode: str,
                  device: torch.device, on_retry: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Time inference or a train step as ``cfg`` says (its dtype, batch size, warm-up and timed
    steps; ``auto`` and unset ones resolved for ``device``); on out-of-memory retry at half the batch.

    Returns timm benchmark.py's columns prefixed ``infer_`` or ``train_``, plus
    p10/p90 of the step time and the peak CUDA memory (None on CPU).
    """
    dtype, batch_size = resolve_dtype(cfg.dtype, device), cfg.batch_size
    warmup, iters = cfg.steps(device)
    compiled = resolve_compile(cfg.compile, device)
    while True:
        try:
            return _measure_once(model, input_size, mode, device, dtype, batch_size, (warmup, iters), compiled)
        except RuntimeError as err:  # torch.OutOfMemoryError is a RuntimeError
            if not is_oom(err):
                raise
            free_memory(device)
            if batch_size == 1:
                raise BenchError(f"out of memory on {device_name(device)} at batch size 1 "
                                 f"({mode}, {dtype})") from None
            batch_size //= 2
            if on_retry:
                on_retry(f"{mode}: out of memory, retrying at batch size {batch_size}")


def _measure_once(model, input_size, mode, device, dtype, batch_size, steps, compiled):
    warmup, iters = steps
    num_classes = getattr(model, "num_classes", 0) or 1000
    x = torch.randn(batch_size, *input_size, device=device)
    if mode not in ("infer", "train"):
        raise ValueError(f"mode={mode!r}: expected 'infer' or 'train'")
    if mode == "train":
        model = copy.deepcopy(model)  # the caller's weights and norm statistics stay as they were
    y = torch.randint(num_classes, (batch_size,), device=device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4) if mode == "train" else None

    def make(net: nn.Module) -> Callable[[], Any]:
        return inference_step(net, x, dtype) if mode == "infer" else train_step(net, x, y, dtype, optimizer)
    step = make(model)
    extra: dict[str, Any] = {}
    if compiled:  # the first call compiles: timed apart, never in the throughput
        def first(net: nn.Module) -> float:
            return time_steps(make(net), warmup=0, iters=1, device=device).median / 1e3
        net, seconds, why = compiled_call(model, first)
        step = make(net)
        extra[f"{mode}_compile_s" if why is None else "compile_error"] = seconds if why is None else why
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    timing = time_steps(step, warmup=warmup, iters=iters, device=device)
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
    return {
        f"{mode}_samples_per_sec": batch_size / (timing.median / 1e3),
        f"{mode}_step_time": timing.median,
        f"{mode}_step_time_p10": timing.quantile(0.1),
        f"{mode}_step_time_p90": timing.quantile(0.9),
        f"{mode}_batch_size": batch_size,
        f"{mode}_peak_mem_mb": peak,
        **extra,
    }


# --- one model ------------------------------------------------------------------------

def profile(name: str, overrides: dict[str, Any] | None = None, cfg: ProfileConfig | None = None, *,
            device: str | None = None, on_progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Every cost figure of one model (a bench variant or a timm name), as one flat record,
    measured as ``cfg`` says — by default ProfileConfig's defaults, the same as a sweep's
    profile section (``bench profile``'s flags override them)."""
    dev = resolve_device(device)
    model, variant = create(name, overrides)
    return {"model": name, **profile_model(model, variant, cfg or ProfileConfig(), device=dev,
                                           on_progress=on_progress)}


def profile_model(model: nn.Module, variant: Variant | None, cfg: ProfileConfig, *, device: torch.device,
                  on_progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Params, MACs, activations, and (``cfg.speed``) inference and train-step timing of ``model``,
    as ``cfg`` says (its dtype, batch size, warm-up and timed steps, resolved for ``device``).

    The model's weights, gradients and norm statistics are left as they were.
    """
    cuda = device.type == "cuda"
    dtype, batch_size, speed = resolve_dtype(cfg.dtype, device), cfg.batch_size, cfg.speed
    warmup, iters = cfg.steps(device)
    say = on_progress or (lambda _msg: None)
    size = input_size_of(model, variant)
    record: dict[str, Any] = {**(variant.to_dict() if variant else {}),
                              "img_size": size[-1], "param_count": param_count(model)}
    say("counting MACs (fvcore)")
    macs, acts = count_macs(model, size)
    record.update(infer_gmacs=macs / 1e9, infer_macts=acts / 1e6)
    say("counting train-step MACs (FlopCounterMode, the math formulation)")
    record["train_gmacs"] = count_train_macs(model, size) / 1e9
    if speed:
        if cuda:
            torch.backends.cudnn.benchmark = True
        model.to(device)
        say("choosing the attention kernels (measured once per device, dtype and shape)")
        record["attn_kernel"] = choose_kernels(model, device=device, dtype=dtype, batch=batch_size,
                                               device_name=device_name(device))
        timed = dataclasses.replace(cfg, dtype=dtype, warmup=warmup, iters=iters)  # resolved once, for both
        say(f"timing inference (batch {batch_size}, {warmup} warm-up + {iters} iterations)")
        record.update(measure_speed(model, size, timed, mode="infer", device=device, on_retry=say))
        say(f"timing train step (batch {batch_size}, {warmup} warm-up + {iters} iterations)")
        record.update(measure_speed(model, size, timed, mode="train", device=device, on_retry=say))
        record.update(warmup=warmup, iters=iters)
        say(f"measuring this device's {dtype} GEMM peak (once per device, dtype and torch version)")
        record.update(utilisation(record["train_gmacs"], record.get("train_samples_per_sec"), device=device,
                                  dtype=dtype, device_name=device_name(device)))
    record.update(environment(device, dtype))
    return record
