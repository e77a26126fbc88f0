"""Is the built-in `shapes` task more than pixel statistics? A linear classifier on raw
pixels against small ViTs, trained with the same recipe and budget.

    python -m benchmarks.shapes_baselines [--sweep sweeps/quickstart.yaml] [--set train.epochs=12]

Uses the sweep's data, train settings and base model (at --depth); every model sees
the same images, epochs, batches, augmentation and optimiser. Prints top-1 per model.
"""
from __future__ import annotations

import argparse

import torch
from torch import nn

from bench import spec
from bench.cli import parse_sets
from bench.data.sources import load as load_data
from bench.device import resolve_device
from bench.models import build_model
from bench.training import train


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sweep", default="sweeps/quickstart.yaml")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--depth", type=int, default=4)
    p.add_argument("--device", default=None)
    args = p.parse_args()
    sweep = spec.load(args.sweep, parse_sets(args.set))
    dev = resolve_device(args.device)
    base = sweep.variants[0].replace(depth=args.depth)
    data = load_data(sweep.data, base.img_size)
    d = sweep.data
    print(f"{d.name}: {len(data.train)} train / {len(data.test)} test images, difficulty {d.difficulty}, "
          f"{sweep.train.epochs} epochs, batch {sweep.train.batch_size}, lr {sweep.train.lr}", flush=True)
    pixels = base.in_chans * base.img_size ** 2
    models = {
        "linear on raw pixels": lambda: nn.Sequential(nn.Flatten(), nn.Linear(pixels, data.num_classes)),
        f"ViT {base.depth} blocks (self-attention)": lambda: build_model(base),
        f"ViT {base.depth} blocks (re-attention)": lambda: build_model(base.replace(attention="re")),
    }
    for name, make in models.items():
        torch.manual_seed(0)
        model = make()
        r = train(model, data, sweep.train, device=dev, seed=0, recipe=d)
        params = sum(p.numel() for p in model.parameters()) / 1e6
        curve = " ".join(f"{t:.1f}" for t in r["top1_per_epoch"])
        print(f"{name:<34} top-1 {r['top1']:5.1f} %  ({params:.3f} M params, {r['train_time_s']:.0f} s; "
              f"per epoch: {curve})", flush=True)


if __name__ == "__main__":
    main()
