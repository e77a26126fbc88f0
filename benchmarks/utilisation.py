"""Utilisation: achieved train TFLOP/s and MFU against this device's measured GEMM peak.

First the peak in each dtype (bench.utilisation.gemm_tflops, measured now, not read from the
cache); then, in interleaved rounds, train steps of a pure-GEMM model — four bias-free 1024×1024
linear layers on inputs that need gradients, so a step is exactly 3× its forward GEMMs: if the
accounting is right it reaches ≥ 0.8 of the peak — and of the quickstart's model (q4x64: depth 4,
dim 64, 32², batch 32) and a wider one (c6x128: depth 6, dim 128, batch 128), self- and
re-attention. Train FLOPs = 2 × train MACs per image (bench.costs: for the GEMM model 3× its forward,
every input needing its gradient).

    python -m benchmarks.utilisation                    # fp32 and bf16, about 2 minutes on 2 cores
"""
from __future__ import annotations

import copy

import torch
from torch import nn

from bench.attention_kernels import choose_kernels
from bench.costs import train_macs, train_tflops
from bench.device import device_name
from bench.models import Variant, build_model
from bench.profiling import time_steps, train_step
from bench.utilisation import gemm_tflops
from benchmarks.common import header, parser, run_rounds

GEMM_DIM, GEMM_LAYERS, GEMM_BATCH = 1024, 4, 2048  # large GEMMs: M = 2048 in every pass


class Gemms(nn.Module):
    """Bias-free linear layers: nothing but GEMMs (its logits are its last layer's output)."""

    def __init__(self) -> None:
        super().__init__()
        self.layers = nn.Sequential(*[nn.Linear(GEMM_DIM, GEMM_DIM, bias=False) for _ in range(GEMM_LAYERS)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


def main() -> None:
    p = parser(__doc__.splitlines()[0], batch_size=0)
    p.add_argument("--dtypes", default="fp32,bf16")
    args = p.parse_args()
    dev = header(args)
    dtypes = args.dtypes.split(",")
    peaks = {d: max(gemm_tflops(dev, d, n, 4) for n in (1024, 2048)) for d in dtypes}
    for d, v in peaks.items():
        print(f"measured GEMM peak {d}: {v * 1e3:.1f} GFLOP/s", flush=True)

    models = {"gemm": (Gemms(), 3 * GEMM_LAYERS * GEMM_DIM ** 2 / 1e9, GEMM_BATCH, (GEMM_DIM,))}  # train GMACs
    for name, depth, dim, batch in (("q4x64", 4, 64, 32), ("c6x128", 6, 128, 128)):
        for attention in ("self", "re"):
            v = Variant(img_size=32, patch_size=4, embed_dim=dim, depth=depth, num_heads=4, mlp_ratio=2.0,
                        num_classes=10, attention=attention)
            torch.manual_seed(0)
            models[f"{name} {attention}"] = (build_model(v), train_macs(v) / 1e9, batch,
                                             (3, v.img_size, v.img_size))
    arms, info = {}, {}
    for name, (base, gmacs, batch, shape) in models.items():
        for d in dtypes:
            model = copy.deepcopy(base).to(dev)  # one per dtype: each runs its own fastest kernel
            kernel = choose_kernels(model, device=dev, dtype=d, batch=batch, device_name=device_name(dev))
            x = torch.randn(batch, *shape, device=dev, requires_grad=name == "gemm")  # every layer's input grad
            y = torch.randint(GEMM_DIM if name == "gemm" else 10, (batch,), device=dev)
            step = train_step(model, x, y, d, torch.optim.AdamW(model.parameters(), lr=1e-4))
            step()
            arms[f"{name} {d}"] = (lambda s=step: time_steps(s, warmup=args.warmup, iters=args.iters,
                                                             device=dev).median)
            info[f"{name} {d}"] = (gmacs, batch, d, kernel)
    ms = run_rounds(arms, args.rounds)
    print(f"\n{'arm':<18}{'kernel':<10}{'img/s':>10}{'TFLOP/s':>10}{'MFU':>8}{'bf16/fp32':>11}")
    for arm, t in ms.items():
        gmacs, batch, d, kernel = info[arm]
        sps = batch / (t / 1e3)
        tf = train_tflops(gmacs, sps)
        fp32 = ms.get(arm.rsplit(" ", 1)[0] + " fp32")
        gain = f"{fp32 / t:>11.2f}" if d != "fp32" and fp32 else f"{'':>11}"
        print(f"{arm:<18}{kernel:<10}{sps:>10.0f}{tf:>10.4f}{tf / peaks[d]:>8.2f}{gain}")


if __name__ == "__main__":
    main()
