"""The proxy trainer's step throughput against a bare PyTorch loop, side by side.

    python -m benchmarks.trainer_overhead [--device cuda] [--steps 40] [--rounds 3]

Same model (the quickstart's depth-4 ViT unless --set), batch, device and recipe in both
arms: AdamW, label-smoothed cross-entropy, gradient clipping, autocast on CUDA. The bare
loop cycles over batches already on the device; the trainer (bench.training.train)
adds what it adds: device-side shuffling and augmentation (crop + flip), the LR
schedule, divergence checks, progress callbacks and a one-image evaluation. Arms are
interleaved per round; the medians are compared. Target: trainer/bare >= 0.95 in every mode
(--dtype fp32|bf16, --compile): both arms run the same attention kernel (bench.attention_kernels) and,
compiled, leave the compiling first step out (the trainer's ``compile_s``).
"""
from __future__ import annotations

import time

import torch
import torch.nn.functional as F
from torch import nn

from bench.attention_kernels import choose_kernels
from bench.cli import parse_sets
from bench.config import DataConfig, TrainConfig
from bench.data.loader import MEAN, STD
from bench.data.sources import Dataset, Split, make_shapes
from bench.device import autocast, compile_model, device_name
from bench.models import Variant, build_model
from bench.training import Hooks, param_groups, train
from benchmarks.common import header, parser, run_rounds

QUICKSTART = dict(img_size=32, patch_size=4, embed_dim=64, num_heads=4, mlp_ratio=2.0, depth=4, num_classes=10)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> None:
    p = parser(__doc__.splitlines()[0], batch_size=32)
    p.add_argument("--steps", type=int, default=40, help="train steps per arm per round")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="change a model field")
    p.add_argument("--compile", action="store_true", help="torch.compile both arms (bench.device.compile_model)")
    args = p.parse_args()
    dev = header(args)
    variant = Variant(**{**QUICKSTART, **parse_sets(args.set)})
    cfg = TrainConfig(epochs=1, batch_size=args.batch_size, warmup_epochs=0.1,
                      dtype=args.dtype if dev.type == "cpu" else "bf16", compile=args.compile)
    dtype = cfg.resolved_dtype(dev)
    n = args.steps * args.batch_size
    split = make_shapes(n, img_size=variant.img_size, seed=0)
    data = Dataset("shapes", split, Split(split.images[:1], split.labels[:1]), [str(i) for i in range(10)])
    mean = torch.tensor(MEAN, device=dev).view(1, 3, 1, 1) * 255
    std = torch.tensor(STD, device=dev).view(1, 3, 1, 1) * 255
    batches = [((split.images[i:i + args.batch_size].to(dev).float() - mean) / std,
                split.labels[i:i + args.batch_size].to(dev)) for i in range(0, n, args.batch_size)]
    print(f"model: {variant.depth} blocks, dim {variant.embed_dim}, {variant.seq_len} tokens | "
          f"{args.steps} steps per arm | dtype {dtype}{' | compiled' if args.compile else ''}", flush=True)

    def bare() -> float:
        torch.manual_seed(0)
        model = build_model(variant).to(dev).train()
        choose_kernels(model, device=dev, dtype=dtype, batch=args.batch_size, device_name=device_name(dev))
        net = compile_model(model) if args.compile else model
        opt = torch.optim.AdamW(param_groups(model, cfg.weight_decay), lr=cfg.lr, fused=dev.type == "cuda" or None)
        skip = 1 if args.compile else 0  # a compiling first step is left out, as the trainer's compile_s
        t0 = None
        for i, (x, y) in enumerate(batches):
            if i == skip:
                sync(dev)
                t0 = time.perf_counter()
            with autocast(dev, dtype):
                loss = F.cross_entropy(net(x), y, label_smoothing=cfg.label_smoothing)
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip, foreach=True)
            opt.step()
            opt.zero_grad(set_to_none=True)
        sync(dev)
        return (time.perf_counter() - t0) * 1e3 / (len(batches) - skip)

    def trainer() -> float:
        torch.manual_seed(0)
        model = build_model(variant)
        sync(dev)
        t0 = time.perf_counter()
        result = train(model, data, cfg, device=dev, seed=0, recipe=DataConfig(crop_padding=2, flip=True),
                       hooks=Hooks(on_step=lambda *_: None))
        sync(dev)
        return (time.perf_counter() - t0 - result.get("compile_s", 0.0)) * 1e3 / result["steps"]

    bare(), trainer()  # warm-up: allocator, kernels, first-call overheads
    ms = run_rounds({"bare PyTorch loop": bare, "bench trainer": trainer}, args.rounds)
    ratio = ms["bare PyTorch loop"] / ms["bench trainer"]
    print(f"bare: {args.batch_size / ms['bare PyTorch loop'] * 1e3:.1f} samples/s | "
          f"trainer: {args.batch_size / ms['bench trainer'] * 1e3:.1f} samples/s | "
          f"trainer/bare throughput = {ratio:.3f} (target >= 0.95)")


if __name__ == "__main__":
    main()
