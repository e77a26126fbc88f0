"""Harness overhead: bench's timed train step against a bare PyTorch loop.

Same model weights, batch, optimizer and device, timed side by side in interleaved
rounds. The bare loop is timed as a whole (wall time / steps, one sync at the end);
bench's is timed per step as `bench profile` does. Target: bench ≥ 0.95× bare.

    python benchmarks/harness_overhead.py              # ~2 min on a 2-core CPU
"""
from __future__ import annotations

import copy
import time

import torch
import torch.nn.functional as F

from bench.device import autocast
from bench.models import VARIANTS, build_model
from bench.profiling import time_steps, train_step
from benchmarks.common import header, parser, run_rounds


def main() -> None:
    p = parser(__doc__.splitlines()[0], batch_size=16)
    p.add_argument("--model", default="vit_16b", help="a bench variant")
    p.add_argument("--depth", type=int, default=4, help="override the variant's depth (CPU-sized default)")
    args = p.parse_args()
    dev = header(args)
    variant = VARIANTS[args.model].replace(depth=args.depth)
    print(f"model: {args.model} depth={variant.depth} embed_dim={variant.embed_dim} img={variant.img_size}")
    torch.manual_seed(0)
    base = build_model(variant).to(dev)
    x = torch.randn(args.batch_size, 3, variant.img_size, variant.img_size, device=dev)
    y = torch.randint(variant.num_classes, (args.batch_size,), device=dev)

    bare_model = copy.deepcopy(base).train()
    bare_opt = torch.optim.AdamW(bare_model.parameters(), lr=1e-4)

    def bare() -> float:
        def one():
            with autocast(dev, args.dtype):
                loss = F.cross_entropy(bare_model(x), y)
            loss.backward()
            bare_opt.step()
            bare_opt.zero_grad(set_to_none=True)
        for _ in range(args.warmup):
            one()
        if dev.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(args.iters):
            one()
        if dev.type == "cuda":
            torch.cuda.synchronize()
        return (time.perf_counter() - t0) * 1e3 / args.iters

    bench_model = copy.deepcopy(base)
    bench_step = train_step(bench_model, x, y, args.dtype, torch.optim.AdamW(bench_model.parameters(), lr=1e-4))

    def harness() -> float:
        return time_steps(bench_step, warmup=args.warmup, iters=args.iters, device=dev).median

    ms = run_rounds({"bare PyTorch loop": bare, "bench train step": harness}, args.rounds)
    ratio = ms["bare PyTorch loop"] / ms["bench train step"]
    print(f"bare  {args.batch_size / ms['bare PyTorch loop'] * 1e3:8.2f} samples/s")
    print(f"bench {args.batch_size / ms['bench train step'] * 1e3:8.2f} samples/s")
    print(f"bench / bare throughput: {ratio:.3f} (target >= 0.95)")


if __name__ == "__main__":
    main()
