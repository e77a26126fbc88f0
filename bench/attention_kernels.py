"""Fair kernels: each attention type runs the fastest *exact* kernel this device has for its
dtype and shape, so a speed comparison measures the architecture, not a kernel choice.

Self-attention has two exact kernels in timm: fused ``scaled_dot_product_attention`` (SDPA) and
the explicit product (softmax(QKᵀ)·V as two matmuls). Which is faster depends on the device and
dtype: on a CPU with bf16 matrix units, SDPA's CPU kernel runs *slower* in bf16 than in fp32
while the explicit matmuls run faster — left to defaults, a bf16 CPU sweep credits
re-attention (always explicit: its map must exist to be mixed) with speed that says nothing
about it. Like cuDNN's benchmark mode, the choice is made by measurement, once per device ×
dtype × torch version × shape (an attention block's forward and backward, interleaved), kept
in bench's cache folder, and recorded with the trial (``attn_kernel``). Re-attention runs its
folded path (``folded``; ``materialised`` for ``re_norm: layer``, which needs the full map).
"""
from __future__ import annotations

import re
import statistics
import time
from pathlib import Path
from typing import Any, Callable

import torch
from timm.layers import Attention
from torch import nn

from bench.device import autocast
from bench.own_files import KERNELS_FILE, Memo, default_dir, remembered
from bench.reattention import ReAttention

SELF_KERNELS = ("sdpa", "explicit")
_chosen: dict[str, str] = {}  # this process's choices
CHOICES = Memo("attention-kernel", re.compile(r".+ \| (fp32|bf16) \| torch \S+ \| dim \d+ heads \d+ tokens \d+ "
                                              r"batch \d+"),
               lambda v: (isinstance(v, dict) and v.get("kernel") in SELF_KERNELS) or v in SELF_KERNELS)


def _ms(run: Callable[[], Any], device: torch.device, iters: int = 2) -> float:
    """The median ms of ``iters`` calls (synchronised on CUDA)."""
    out = []
    for _ in range(iters):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        run()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        out.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(out)


def _tokens(model: nn.Module) -> int | None:
    embed = getattr(model, "patch_embed", None)
    patches = getattr(embed, "num_patches", None)
    return None if patches is None else patches + getattr(model, "num_prefix_tokens", 0)


def time_kernels(dim: int, heads: int, tokens: int, batch: int, *, device: torch.device, dtype: str,
                 rounds: int = 3) -> dict[str, list[float]]:
    """ms of one self-attention block's forward + backward with each kernel, in each of
    ``rounds`` interleaved rounds (drift hits both alike)."""
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):  # the caller's streams untouched
        torch.manual_seed(0)
        block = Attention(dim, num_heads=heads, qkv_bias=True).to(device)
        x = torch.randn(batch, tokens, dim, device=device, requires_grad=True)

    def step(fused: bool):
        def run() -> None:
            block.fused_attn = fused
            with autocast(device, dtype):
                out = block(x)
            out.float().sum().backward()
        return run
    steps = {k: step(k == "sdpa") for k in SELF_KERNELS}
    for s in steps.values():
        s()  # warm-up
    ms: dict[str, list[float]] = {k: [] for k in SELF_KERNELS}
    for r in range(rounds):
        for k in (SELF_KERNELS if r % 2 == 0 else SELF_KERNELS[::-1]):
            ms[k].append(_ms(steps[k], device))
    return ms


CLOSE = 0.05  # kernels whose medians are within this of each other are a tie: timm's default stands
MORE_ROUNDS = 3  # a close or disagreeing measurement is made again with this many times the rounds


def pick(ms: dict[str, list[float]]) -> dict[str, Any]:
    """The faster kernel of a measurement (``time_kernels``'), its ``margin`` (the slower's median
    over the faster's, less 1), and whether every round agreed on it."""
    med = {k: statistics.median(v) for k, v in ms.items()}
    fast = min(med, key=med.get)
    slow = max(med, key=med.get)
    agree = all(a <= b for a, b in zip(ms[fast], ms[slow], strict=True))
    return {"kernel": fast, "margin": med[slow] / med[fast] - 1, "rounds": len(ms[fast]), "agree": agree}


def decide(measure: Callable[[int], dict[str, list[float]]], rounds: int = 3) -> dict[str, Any]:
    """The kernel to keep, measured by ``measure(rounds)``: the faster when it wins by more than
    CLOSE and in every round; a close or disagreeing result (a machine under load, a tie) is
    measured again with MORE_ROUNDS times the rounds, and if it is still one, timm's default
    (SDPA) stands. The margin and rounds are kept beside the choice."""
    found = pick(measure(rounds))
    if found["margin"] < CLOSE or not found["agree"]:
        found = pick(measure(rounds * MORE_ROUNDS))
        if found["margin"] < CLOSE or not found["agree"]:
            found = {**found, "kernel": "sdpa", "why": f"within {CLOSE:.0%} or the rounds disagree: timm's default"}
    return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in found.items()}


def choose_kernels(model: nn.Module, *, device: torch.device, dtype: str, batch: int, device_name: str,
                   cache_dir: Path | None = None) -> str:
    """Set every self-attention block of ``model`` to the faster exact kernel for ``device``,
    ``dtype`` and this shape (measured once, then remembered), and name the kernels that run:
    ``sdpa`` or ``explicit`` for self-attention, ``folded`` or ``materialised`` for
    re-attention, joined by ``+`` in a model with both. A model whose token count is unknown
    (not a ViT) keeps timm's default (``sdpa``)."""
    selfs = [m for m in model.modules() if isinstance(m, Attention) and not isinstance(m, ReAttention)]
    res = [m for m in model.modules() if isinstance(m, ReAttention)]
    names = []
    tokens = _tokens(model)
    if selfs:
        kernel = "sdpa" if selfs[0].fused_attn else "explicit"
        if tokens is not None:
            a = selfs[0]
            key = (f"{device_name} | {dtype} | torch {torch.__version__} | dim {a.head_dim * a.num_heads} "
                   f"heads {a.num_heads} tokens {tokens} batch {batch}")
            if key not in _chosen:
                def measure() -> dict[str, Any]:
                    return decide(lambda rounds: time_kernels(a.head_dim * a.num_heads, a.num_heads, tokens, batch,
                                                              device=device, dtype=dtype, rounds=rounds))
                found = remembered(Path(cache_dir or default_dir()) / KERNELS_FILE, key, measure, CHOICES)
                _chosen[key] = found["kernel"] if isinstance(found, dict) else found  # a memo from before margins
            kernel = _chosen[key]
            for m in selfs:
                m.fused_attn = kernel == "sdpa"
        names.append(kernel)
    if res:
        names.append("materialised" if any(m.re_norm == "layer" or m.materialize for m in res) else "folded")
    return "+".join(names) or "none"
