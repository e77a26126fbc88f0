"""Costs timed side by side: every variant of a sweep in interleaved rounds on one device.

A trial times its own model minutes apart from the next one, so drift on a shared machine
(other jobs, clocks, thermals) lands on some variants and not others: one quickstart run
measured the same model at 724 and 1,179 train samples/s. Here every variant is built once
and visited once per round, in an order rotated every round (round r starts at variant r),
``iters`` steps per visit; a variant's figure is the median over rounds of its per-visit
median, and its spread the p10/p90 over rounds, so drift hits every variant alike and shows
as spread. The same step functions as ``bench.profiling`` (inference; forward + loss +
backward + AdamW), CUDA events on GPU, ``time.perf_counter`` on CPU.
"""
from __future__ import annotations

import copy
import statistics
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Callable, Mapping

import torch

from bench.attention_kernels import choose_kernels
from bench.device import compiled_call, device_name, is_oom
from bench.models import build_model
from bench.profiling import Timing, inference_step, time_steps, train_step
from bench.variant import Variant

def interleave(steps: Mapping[str, Callable[[], Any]], *, rounds: int, iters: int, warmup: int,
               device: torch.device, on_round: Callable[[int], None] | None = None) -> dict[str, list[float]]:
    """ms per step of every callable: one median per visit, ``rounds`` visits each. Round r
    visits the callables in their order rotated by r, after ``warmup`` untimed calls of each."""
    names = list(steps)
    for _ in range(warmup):
        for name in names:
            steps[name]()
    out: dict[str, list[float]] = {n: [] for n in names}
    for r in range(rounds):
        k = r % len(names)
        for name in names[k:] + names[:k]:
            out[name].append(time_steps(steps[name], warmup=0, iters=iters, device=device).median)
        if on_round:
            on_round(r + 1)
    return out


def _spread(values: list[float]) -> tuple[float, float, float]:
    t = Timing(values)
    return t.median, t.quantile(0.1), t.quantile(0.9)


@dataclass(frozen=True)
class Pass:
    """How a side-by-side pass times: the dtype and batch, ``rounds`` interleaved rounds of
    ``iters`` steps after ``warmup`` untimed ones, and whether through torch.compile (as the
    trials were timed when they were)."""

    dtype: str
    batch_size: int
    rounds: int
    iters: int
    warmup: int
    compiled: bool = False


def side_by_side(variants: Mapping[str, Variant], how: Pass, *, device: torch.device,
                 on_progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Infer and train throughput of every variant (by name), timed in interleaved rounds as
    ``how`` says; compiled, each model's compile is in the set-up, never in a round, and a
    variant that cannot compile runs eager, its figures saying why (``compile_error``).

    Returns ``{"variants": {name: figures}, ...settings}``; figures use the record's
    names (``train_samples_per_sec``, ``train_step_time``, …) plus ``*_sps_p10``/``_p90``
    over rounds and, on CUDA, ``*_peak_mem_mb`` (this variant's weights, optimizer state
    and activations: the peak of its visits above what the other variants hold)."""
    say = on_progress or (lambda _msg: None)
    dtype, batch_size, rounds, iters, warmup, compiled = (how.dtype, how.batch_size, how.rounds, how.iters,
                                                          how.warmup, how.compiled)
    cuda = device.type == "cuda"
    limit = torch._dynamo.config.recompile_limit
    if compiled:  # every variant's forward is one code object to dynamo: each model is its own entry
        torch._dynamo.reset()
        torch._dynamo.config.recompile_limit = max(limit, 4 * len(variants) + 8)
    try:
        steps, resident, kernels, failed = _set_up(variants, how, device)
    except BaseException:
        torch._dynamo.config.recompile_limit = limit
        raise
    peaks: dict[str, float] = {}
    if cuda:  # each visit's peak above what is resident, per step function
        steps = {k: _peak_tracked(k, f, device, peaks) for k, f in steps.items()}
    t0 = time.perf_counter()
    try:
        ms = interleave(steps, rounds=rounds, iters=iters, warmup=warmup, device=device,
                        on_round=lambda r: say(f"side-by-side timing: round {r} of {rounds}"))
    except RuntimeError as err:
        if is_oom(err):
            raise RuntimeError(f"out of memory holding all {len(variants)} variants at batch {batch_size}: "
                               "lower profile.batch_size for the side-by-side pass") from None
        raise
    finally:
        torch._dynamo.config.recompile_limit = limit
    out: dict[str, dict[str, Any]] = {}
    for name in variants:
        figures: dict[str, Any] = {}
        for mode in ("infer", "train"):
            sps = [batch_size / (t / 1e3) for t in ms[f"{name}/{mode}"]]
            median, p10, p90 = _spread(sps)
            figures.update({f"{mode}_samples_per_sec": median, f"{mode}_sps_p10": p10, f"{mode}_sps_p90": p90,
                            f"{mode}_step_time": statistics.median(ms[f"{name}/{mode}"])})
            if cuda:
                figures[f"{mode}_peak_mem_mb"] = (peaks.get(f"{name}/{mode}", 0) + resident[name]) / 2**20
        out[name] = {**figures, "attn_kernel": kernels[name], **({"compile_error": failed[name]} if name in failed
                                                                   else {})}
    return {"variants": out, "device": device.type, "device_name": device_name(device), "dtype": dtype,
            "compiled": compiled,
            "batch_size": batch_size, "rounds": rounds, "iters": iters, "warmup": warmup,
            "seconds": time.perf_counter() - t0,
            "when": datetime.now(timezone.utc).isoformat(timespec="seconds")}


def _set_up(variants: Mapping[str, Variant], how: Pass, device: torch.device
            ) -> tuple[dict[str, Callable[[], Any]], dict[str, int], dict[str, str], dict[str, str]]:
    """Build every variant (seed 0) with its batch and optimizer, and compile its step functions
    when ``how.compiled`` (the first call, out of every round). Returns (the step functions, by
    ``name/mode``; the bytes each variant holds on CUDA, else 0; its attention kernel; why it
    could not compile, for those that could not)."""
    dtype, batch_size, compiled = how.dtype, how.batch_size, how.compiled
    steps: dict[str, Callable[[], Any]] = {}
    resident: dict[str, int] = {}
    kernels: dict[str, str] = {}
    failed: dict[str, str] = {}
    cuda = device.type == "cuda"
    for name, v in variants.items():
        before = torch.cuda.memory_allocated(device) if cuda else 0
        torch.manual_seed(0)
        model = build_model(v).to(device)
        kernels[name] = choose_kernels(model, device=device, dtype=dtype, batch=batch_size,
                                       device_name=device_name(device))
        x = torch.randn(batch_size, v.in_chans, v.img_size, v.img_size, device=device)
        y = torch.randint(v.num_classes, (batch_size,), device=device)
        trained = copy.deepcopy(model)
        opt = torch.optim.AdamW(trained.parameters(), lr=1e-4)
        make = {"infer": lambda n, x=x: inference_step(n, x, dtype),
                "train": lambda n, x=x, y=y, opt=opt: train_step(n, x, y, dtype, opt)}
        for mode, m in (("infer", model), ("train", trained)):
            if compiled:  # the first call compiles (and recovers from a damaged cache), out of every round
                net, _, why = compiled_call(m, lambda n, mode=mode: make[mode](n)(), fresh=False)
                if why is not None:
                    failed[name] = why
            else:
                net = m
                if mode == "train":
                    make[mode](net)()  # optimizer state exists from here on
            steps[f"{name}/{mode}"] = make[mode](net)
        resident[name] = (torch.cuda.memory_allocated(device) - before) if cuda else 0
    return steps, resident, kernels, failed


def _peak_tracked(name: str, step: Callable[[], Any], device: torch.device, peaks: dict[str, float]):
    def run() -> Any:
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        result = step()
        peaks[name] = max(peaks.get(name, 0), torch.cuda.max_memory_allocated(device) - base)
        return result
    return run
