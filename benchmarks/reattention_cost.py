"""Re-attention cost: train-step time of DeepViT relative to ViT at the same config.

Arms: ViT with timm's fused SDPA (the baseline), ViT with explicit attention,
DeepViT as bench builds it (folded mixing + closed-form BatchNorm statistics), and
DeepViT in the official formulation (Conv2d + BatchNorm2d over the B×H×N×N map).
Interleaved rounds, medians. Target: bench DeepViT / ViT-SDPA ≤ 1.3 on CPU.

    python benchmarks/reattention_cost.py              # 12 blocks, 384 wide, 224², batch 32: ~8 min on 2 cores
"""
from __future__ import annotations

import copy

import torch

from bench.models import Variant, build_model
from bench.profiling import time_steps, train_step
from bench.reattention import ReAttention
from benchmarks.common import header, parser, run_rounds


def main() -> None:
    p = parser(__doc__.splitlines()[0], batch_size=32)
    p.add_argument("--depth", type=int, default=12)
    p.add_argument("--embed-dim", type=int, default=384)
    p.add_argument("--img-size", type=int, default=224)
    args = p.parse_args()
    dev = header(args)
    base = Variant(depth=args.depth, embed_dim=args.embed_dim, img_size=args.img_size)
    print(f"config: depth={base.depth} embed_dim={base.embed_dim} heads={base.num_heads} "
          f"img={base.img_size} tokens={base.seq_len}")

    torch.manual_seed(0)
    vit = build_model(base)
    vit_explicit = copy.deepcopy(vit)
    for block in vit_explicit.blocks:
        block.attn.fused_attn = False
    deepvit = build_model(base.replace(attention="re"))
    deepvit_official = copy.deepcopy(deepvit)
    for block in deepvit_official.blocks:  # the official Conv2d + BatchNorm2d path
        block.attn.forward = block.attn.reference_forward
    assert all(isinstance(b.attn, ReAttention) for b in deepvit.blocks)

    x = torch.randn(args.batch_size, 3, base.img_size, base.img_size, device=dev)
    y = torch.randint(base.num_classes, (args.batch_size,), device=dev)

    def arm(model):
        model = model.to(dev)
        step = train_step(model, x, y, args.dtype, torch.optim.AdamW(model.parameters(), lr=1e-4))
        return lambda: time_steps(step, warmup=args.warmup, iters=args.iters, device=dev).median

    ms = run_rounds({"ViT (fused SDPA)": arm(vit), "ViT (explicit attention)": arm(vit_explicit),
                     "DeepViT (bench)": arm(deepvit), "DeepViT (official Conv2d+BN)": arm(deepvit_official)},
                    args.rounds)
    ref = ms["ViT (fused SDPA)"]
    for name, t in ms.items():
        print(f"{name:<30} {t:9.1f} ms/step   {t / ref:5.3f}x ViT-SDPA")
    print(f"re-attention train-step ratio (bench DeepViT / ViT-SDPA): {ms['DeepViT (bench)'] / ref:.3f} "
          "(target <= 1.3)")


if __name__ == "__main__":
    main()
