"""Eager against torch.compile, per attention type: train samples/s side by side, and what the
compile costs the first time and the next (a new process, inductor's cache in bench's folder).

Models: the quickstart's (q4x64: depth 4, dim 64, 32², batch 32) and a wider one (c6x128: depth
6, dim 128, batch 128), self- and re-attention, each on its fastest exact kernel
(bench.attention_kernels). Compiled with bench.device.compile_model (fullgraph=True: a graph break is an
error, so re-attention's line proves it compiles whole).

    python -m benchmarks.compile_speed                       # fp32 and bf16 interleaved; ~10 min on 2 cores
    python -m benchmarks.compile_speed --dtypes bf16
"""
from __future__ import annotations

import subprocess
import sys
import time

import torch

from bench.attention_kernels import choose_kernels
from bench.device import compile_model, device_name
from bench.models import Variant, build_model
from bench.profiling import time_steps, train_step
from benchmarks.common import header, parser, run_rounds

MODELS = {"q4x64": (4, 64, 32), "c6x128": (6, 128, 128)}
_AGAIN = """
import sys, time, torch
from bench.attention_kernels import choose_kernels
from bench.device import compile_model, device_name
from bench.models import Variant, build_model
from bench.profiling import train_step
depth, dim, batch, attention, dtype = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5]
v = Variant(img_size=32, patch_size=4, embed_dim=dim, depth=depth, num_heads=4, mlp_ratio=2.0, num_classes=10,
            attention=attention)
model = build_model(v)
choose_kernels(model, device=torch.device("cpu"), dtype=dtype, batch=batch, device_name=device_name(torch.device("cpu")))
step = train_step(compile_model(model), torch.randn(batch, 3, 32, 32), torch.randint(10, (batch,)), dtype,
                  torch.optim.AdamW(model.parameters()))
t0 = time.perf_counter(); step(); print(time.perf_counter() - t0)
"""


def main() -> None:
    torch._dynamo.config.recompile_limit = 64  # eight compiled models live at once, each its own shapes
    p = parser(__doc__.splitlines()[0], batch_size=0)
    p.add_argument("--dtypes", default="fp32,bf16")
    args = p.parse_args()
    dev = header(args)
    arms, batches, first = {}, {}, {}
    for name, (depth, dim, batch) in MODELS.items():
        for attention in ("self", "re"):
            v = Variant(img_size=32, patch_size=4, embed_dim=dim, depth=depth, num_heads=4, mlp_ratio=2.0,
                        num_classes=10, attention=attention)
            for dtype, mode in [(d, m) for d in args.dtypes.split(",") for m in ("eager", "compile")]:
                torch.manual_seed(0)
                model = build_model(v).to(dev)
                kernel = choose_kernels(model, device=dev, dtype=dtype, batch=batch, device_name=device_name(dev))
                net = compile_model(model, fresh=False) if mode == "compile" else model  # all live at once
                x, y = torch.randn(batch, 3, 32, 32, device=dev), torch.randint(10, (batch,), device=dev)
                step = train_step(net, x, y, dtype, torch.optim.AdamW(model.parameters(), lr=1e-4))
                t0 = time.perf_counter()
                step()  # compiles
                key = f"{name} {attention} {dtype} {mode}"
                first[key] = (time.perf_counter() - t0, kernel)
                arms[key] = lambda s=step: time_steps(s, warmup=args.warmup, iters=args.iters, device=dev).median
                batches[key] = batch
    ms = run_rounds(arms, args.rounds)
    print(f"\n{'arm':<30}{'kernel':<10}{'img/s':>9}{'vs eager fp32':>15}{'first step s':>14}")
    for key, t in ms.items():
        name, attention = key.split()[:2]
        base = ms.get(f"{name} {attention} fp32 eager")
        ratio = f"{base / t:>15.2f}" if base else f"{'–':>15}"
        print(f"{key:<30}{first[key][1]:<10}{batches[key] / (t / 1e3):>9.0f}{ratio}{first[key][0]:>14.2f}")
    print("\nthe next process's compile of the same shapes (inductor's cache in bench's cache folder):")
    dtype = args.dtypes.split(",")[0]
    for name, (depth, dim, batch) in MODELS.items():
        for attention in ("self", "re"):
            out = subprocess.run([sys.executable, "-c", _AGAIN, str(depth), str(dim), str(batch), attention,
                                  dtype], capture_output=True, text=True, check=True).stdout.split()[-1]
            print(f"  {name} {attention} {dtype}: first step {float(out):.2f} s "
                  f"(this process's first: {first[f'{name} {attention} {dtype} compile'][0]:.2f} s)")


if __name__ == "__main__":
    main()
