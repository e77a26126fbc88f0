"""Profile the paper's six models and write a markdown table (meant for one GPU).

    python -m benchmarks.paper_table --device cuda --out docs/paper_models_gpu.md   # ~3 min on one H100

Each model in fp32 and bf16 (autocast): params, GMACs, inference and train-step
throughput, peak CUDA memory. The card's name, torch and timm versions head the table.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from bench.config import ProfileConfig
from bench.models import VARIANTS
from bench.profiling import profile

PAPER = ["vit_16b", "deepvit_16b", "vit_24b", "deepvit_24b", "vit_32b", "deepvit_32b"]
COLUMNS = ["model", "dtype", "param_count", "infer_gmacs", "train_gmacs", "infer_batch_size",
           "infer_samples_per_sec", "infer_step_time", "infer_peak_mem_mb", "train_batch_size",
           "train_samples_per_sec", "train_step_time", "train_peak_mem_mb"]


def cell(value) -> str:
    if value is None:
        return "–"
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default=None)
    p.add_argument("--models", nargs="+", default=PAPER, choices=list(VARIANTS))
    p.add_argument("--dtypes", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"])
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--warmup", type=int, default=None)
    p.add_argument("--iters", type=int, default=None)
    p.add_argument("--out", type=Path, default=None, help="markdown file to write (default: print only)")
    args = p.parse_args()

    rows = []
    for name in args.models:
        for dtype in args.dtypes:
            tag = f"{name} {dtype}"
            settings = ProfileConfig(dtype=dtype, batch_size=args.batch_size, warmup=args.warmup, iters=args.iters,
                                     compile=False)  # eager: the paper's table times the models as written
            r = profile(name, None, settings, device=args.device,
                        on_progress=lambda msg, tag=tag: print(f"  {tag}: {msg}", flush=True))
            rows.append(r)
            print(" | ".join(cell(r.get(c)) for c in COLUMNS), flush=True)
    env = rows[0]
    lines = [f"Device: {env['device_name']} · torch {env['torch_version']} · timm {env['timm_version']} · "
             f"warm-up {env['warmup']}, {env['iters']} timed steps, medians",
             "", "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(cell(r.get(c)) for c in COLUMNS) + " |" for r in rows]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        tmp = args.out.with_suffix(".tmp")
        tmp.write_text(text)
        tmp.replace(args.out)  # never a half-written table


if __name__ == "__main__":
    main()
