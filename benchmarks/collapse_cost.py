"""Cost of the attention-collapse analysis of a 32-block model, against a training epoch.

    python -m benchmarks.collapse_cost [--device cuda] [--images 64] [--steps 3]

Model: sweeps/depth.yaml's deepest DeepViT (32 blocks, embed_dim 192, 6 heads, 32² images,
65 tokens); data: the built-in shapes at depth.yaml's 50,000 training images and batch 256.
The epoch time is the measured train-step time (median of --steps) × steps per epoch.
Memory: peak RSS growth during the analysis on CPU (the process's high-water mark, taken
before anything else big runs), peak allocated memory on CUDA; the analysis holds at most
``budget_mb`` of maps at once. Target: analysis < 1/10 of an epoch, memory bounded.
"""
from __future__ import annotations

import argparse
import time

import torch

from bench import spec
from bench.collapse import analyse
from bench.config import ProfileConfig
from bench.data.sources import Dataset, make_shapes
from bench.device import device_name, resolve_device
from bench.models import build_model
from bench.profiling import measure_speed
from bench.study.trials import eval_images


def peak_rss_mb() -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM")) / 1024


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default=None)
    p.add_argument("--images", type=int, default=64)
    p.add_argument("--steps", type=int, default=3, help="timed train steps for the epoch estimate")
    p.add_argument("--budget-mb", type=float, default=256)
    args = p.parse_args()
    dev = resolve_device(args.device)
    sweep = spec.load("sweeps/depth.yaml")
    v = sweep.variants[-1]
    assert v.depth == 32 and v.attention == "re"
    torch.manual_seed(0)
    model = build_model(v).to(dev)
    test = make_shapes(args.images, img_size=v.img_size, seed=1)
    images = eval_images(Dataset("shapes", test, test, []), args.images, dev)
    print(f"{device_name(dev)} | {v.depth} blocks, dim {v.embed_dim}, {v.num_heads} heads, {v.seq_len} tokens | "
          f"{args.images} images", flush=True)
    maps_mb = args.images * v.depth * v.num_heads * v.seq_len ** 2 * 4 / 2**20
    if dev.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated() / 2**20
    else:
        base = peak_rss_mb()
    t0 = time.perf_counter()
    result = analyse(model, images, budget_mb=args.budget_mb)
    if dev.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    peak = (torch.cuda.max_memory_allocated() / 2**20 if dev.type == "cuda" else peak_rss_mb()) - base
    steps = sweep.data.train_size // sweep.train.batch_size
    speed = measure_speed(model, (3, v.img_size, v.img_size),
                          ProfileConfig(dtype=sweep.train.resolved_dtype(dev), batch_size=sweep.train.batch_size,
                                        warmup=1, iters=args.steps), mode="train", device=dev)
    epoch = speed["train_step_time"] / 1e3 * steps
    print(f"analysis: {seconds:.2f} s (similar blocks {result['similar_blocks']}) | peak memory growth "
          f"{peak:.0f} MB; all maps at once would be {maps_mb:.0f} MB (budget {args.budget_mb:.0f} MB)")
    print(f"train step: {speed['train_step_time']:.0f} ms at batch {sweep.train.batch_size} -> epoch of "
          f"{sweep.data.train_size} images ({steps} steps): {epoch:.0f} s")
    print(f"analysis / epoch = {seconds / epoch:.4f} (target < 0.1)")


if __name__ == "__main__":
    main()
