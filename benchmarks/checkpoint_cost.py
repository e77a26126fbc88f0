"""Per-epoch training checkpoints: their size and write time, beside an epoch's cost.

    python -m benchmarks.checkpoint_cost [--variants quickstart deepvit_16b]

Builds each model with its AdamW state (one step taken, so the moments exist), then writes
the checkpoint bench.training writes after every epoch (model, optimizer, schedule, random
streams; atomic: temp file, fsync, rename) three times and prints its size and the median
write time. ``quickstart``: the quickstart's 4-block re-attention model; any other name is
a registered bench variant (``deepvit_16b``: the paper's 16-block DeepViT, 24.5 M params).
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from bench.config import TrainConfig
from bench.data.loader import Loader
from bench.data.sources import Split
from bench.models import VARIANTS, build_model
from bench.training import Parts, _save  # noqa: PLC2701 (the benchmark times the trainer's own writer)
from bench.variant import Variant

QUICKSTART = Variant(img_size=32, patch_size=4, embed_dim=64, depth=4, num_heads=4, mlp_ratio=2.0, num_classes=10,
                     attention="re")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--variants", nargs="+", default=["quickstart", "deepvit_16b"])
    args = p.parse_args()
    for name in args.variants:
        v = QUICKSTART if name == "quickstart" else VARIANTS[name]
        torch.manual_seed(0)
        model = build_model(v)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
        x = torch.randn(2, 3, v.img_size, v.img_size)
        F.cross_entropy(model(x), torch.zeros(2, dtype=torch.long)).backward()
        opt.step()
        split = Split(torch.zeros(4, 3, v.img_size, v.img_size, dtype=torch.uint8), torch.zeros(4, dtype=torch.long))
        loader = Loader(split, batch_size=2, device=torch.device("cpu"), train=True)
        result = {"top1_per_epoch": [1.0], "train_loss_per_epoch": [2.0]}
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "trial.pt"
            times = []
            for _ in range(3):
                t0 = time.perf_counter()
                _save(path, {}, 1, 10, Parts(model, opt, sched, loader), result)
                times.append(time.perf_counter() - t0)
            size = path.stat().st_size / 2**20
        params = sum(p.numel() for p in model.parameters()) / 1e6
        print(f"{name}: {params:.2f} M params, checkpoint {size:.1f} MiB, written in {statistics.median(times):.3f} s "
              f"(median of 3; {TrainConfig().epochs} epochs → {TrainConfig().epochs} writes a trial)")


if __name__ == "__main__":
    main()
