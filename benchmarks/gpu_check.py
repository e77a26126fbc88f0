"""One GPU check: everything only a GPU can show, in one run of at most ten minutes on one
H100/H200, written as a markdown page (``--out docs/gpu-check.md``; docs/gpu.md says how to read it).

1. The paper's six models (ViT and DeepViT, 16/24/32 blocks, 224², batch 64): train samples/s in
   fp32 and bf16 eager and bf16 ``torch.compile``d (the first step, compile included, apart), each
   attention type on its fastest exact kernel (bench.attention_kernels), achieved TFLOP/s (6 FLOPs per
   counted forward MAC) and MFU against the measured GEMM peak and the datasheet's.
2. CUDA-event step times against wall-clock (synchronised perf_counter) for the same steps.
3. Peak memory: ``max_memory_allocated`` against a second measure, the device's used memory
   (``mem_get_info``) at the peak step, which also holds the caching allocator's reserve.
4. The data pipeline's device parts: a device-resident loader's batched crop and flip on the GPU.
5. A 2-trial sweep interrupted (SIGTERM after the first checkpoint) and resumed, against the
   same sweep uninterrupted: the CUDA RNG state travels in the checkpoint.

    python -m benchmarks.gpu_check --out docs/gpu-check.md      # on a GPU
    python -m benchmarks.gpu_check --device cpu --smoke         # the test suite's: tiny models, seconds
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from bench.attention_kernels import choose_kernels
from bench.config import DataConfig
from bench.costs import train_macs, train_tflops
from bench.data.loader import Loader
from bench.data.sources import make_shapes
from bench.device import compile_model, device_name, resolve_device
from bench.models import VARIANTS, build_model
from bench.profiling import time_steps, train_step
from bench.utilisation import datasheet_tflops, measured_peak
from bench.variant import Variant

PAPER = ["vit_16b", "vit_24b", "vit_32b", "deepvit_16b", "deepvit_24b", "deepvit_32b"]
MICRO = ["vit_micro", "deepvit_micro"]
SWEEP = """name: gpu-check
data: {name: shapes, train_size: %(n)d, test_size: 64}
model: {img_size: 16, patch_size: 4, embed_dim: 16, num_heads: 2, mlp_ratio: 2}
train: {epochs: 2, batch_size: 16, check_every: 1}
profile: {batch_size: 4, warmup: 0, iters: 1, rounds: 0}
grid: {attention: [self, re]}
seeds: [0]
"""


def models_table(names: list[str], dev: torch.device, dtypes: list[str], compiles: list[bool], batch: int,
                 iters: int) -> list[dict]:
    rows = []
    for name in names:
        v: Variant = VARIANTS[name]
        gmacs = train_macs(v) / 1e9  # train GMACs per image (bench.costs)
        for dtype in dtypes:
            peak = measured_peak(dev, dtype, device_name(dev))
            sheet = datasheet_tflops(device_name(dev), dtype)
            for compiled in compiles if dtype == "bf16" or len(compiles) == 1 else [False]:  # compile: bf16 only
                torch.manual_seed(0)
                model = build_model(v).to(dev)
                kernel = choose_kernels(model, device=dev, dtype=dtype, batch=batch, device_name=device_name(dev))
                net = compile_model(model) if compiled else model
                x = torch.randn(batch, v.in_chans, v.img_size, v.img_size, device=dev)
                y = torch.randint(v.num_classes, (batch,), device=dev)
                step = train_step(net, x, y, dtype, torch.optim.AdamW(model.parameters(), lr=1e-4))
                t0 = time.perf_counter()
                step()
                _sync(dev)
                first = time.perf_counter() - t0
                ms = time_steps(step, warmup=2, iters=iters, device=dev).median
                sps = batch / (ms / 1e3)
                tf = train_tflops(gmacs, sps)
                rows.append({"model": name, "dtype": dtype, "mode": "compile" if compiled else "eager", "kernel": kernel,
                             "samples/s": round(sps, 1), "TFLOP/s": round(tf, 3), "MFU": round(tf / peak, 3),
                             "MFU (datasheet)": None if sheet is None else round(tf / sheet, 3),
                             "first step s": round(first, 2)})
                print(rows[-1], flush=True)
                del model, net, step
                _free(dev)
    return rows


def events_vs_wall(dev: torch.device, name: str, batch: int, iters: int) -> dict:
    """The same steps timed by CUDA events (bench's timer) and by a synchronised wall clock."""
    v = VARIANTS[name]
    model = build_model(v).to(dev)
    x = torch.randn(batch, v.in_chans, v.img_size, v.img_size, device=dev)
    y = torch.randint(v.num_classes, (batch,), device=dev)
    step = train_step(model, x, y, "bf16" if dev.type == "cuda" else "fp32", torch.optim.AdamW(model.parameters()))
    events = time_steps(step, warmup=2, iters=iters, device=dev).median
    _sync(dev)
    t0 = time.perf_counter()
    for _ in range(iters):
        step()
    _sync(dev)
    wall = (time.perf_counter() - t0) * 1e3 / iters
    return {"model": name, "events ms": round(events, 3), "wall ms": round(wall, 3),
            "wall / events": round(wall / events, 3)}


def memory_check(dev: torch.device, name: str, batch: int) -> dict:
    """Peak allocated memory of a train step against the device's used memory at that step."""
    if dev.type != "cuda":
        return {"model": name, "note": "CPU: no device memory to measure"}
    _free(dev)
    v = VARIANTS[name]
    model = build_model(v).to(dev)
    x = torch.randn(batch, v.in_chans, v.img_size, v.img_size, device=dev)
    y = torch.randint(v.num_classes, (batch,), device=dev)
    step = train_step(model, x, y, "bf16", torch.optim.AdamW(model.parameters()))
    step()
    torch.cuda.synchronize(dev)
    torch.cuda.reset_peak_memory_stats(dev)
    free0, total = torch.cuda.mem_get_info(dev)
    step()
    torch.cuda.synchronize(dev)
    allocated = torch.cuda.max_memory_allocated(dev) / 2**20
    reserved = torch.cuda.max_memory_reserved(dev) / 2**20
    used = (total - torch.cuda.mem_get_info(dev)[0]) / 2**20
    return {"model": name, "max allocated MiB": round(allocated), "max reserved MiB": round(reserved),
            "device used MiB (mem_get_info)": round(used), "allocated ≤ reserved ≤ used":
                allocated <= reserved <= used + 1}


def loader_check(dev: torch.device, n: int, size: int) -> dict:
    """A device-resident loader's crop and flip: images per second through one epoch."""
    split = make_shapes(n, img_size=size, seed=0)
    loader = Loader(split, batch_size=256, device=dev, train=True, seed=0,
                    recipe=DataConfig(crop_padding=4, flip=True), residency="device")
    for _ in loader:  # warm-up epoch
        pass
    _sync(dev)
    t0 = time.perf_counter()
    seen = 0
    for x, _ in loader:
        seen += len(x)
    _sync(dev)
    loader.close()
    return {"images": seen, "px": size, "images/s": round(seen / (time.perf_counter() - t0)),
            "on": str(x.device)}


def resume_check(dev: torch.device, n: int, work: Path) -> dict:
    """The same 2-trial sweep uninterrupted and interrupted (SIGTERM once the first trial's first
    checkpoint exists) then rerun: the top-1 of each trial, side by side."""
    spec = work / "gpu-check.yaml"
    spec.write_text(SWEEP % {"n": n})
    env = {**os.environ, "BENCH_CACHE_DIR": str(work / "cache")}
    cmd = [sys.executable, "-m", "bench.cli", "run", str(spec), "--device", dev.type, "--quiet"]
    subprocess.run([*cmd, "--results", str(work / "straight")], check=True, env=env, capture_output=True)
    cut = work / "cut"
    proc = subprocess.Popen([*cmd, "--results", str(cut)], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None and not list((cut / "gpu-check" / "checkpoints").glob("*.pt")):
        time.sleep(0.05)
    interrupted = proc.poll() is None
    if interrupted:
        proc.send_signal(signal.SIGTERM)
    proc.wait()
    subprocess.run([*cmd, "--results", str(cut)], check=True, env=env, capture_output=True)
    top1 = {}
    for run in ("straight", "cut"):
        for r in json.loads(subprocess.run([sys.executable, "-c", _READ, str(work / run)], check=True, env=env,
                                           capture_output=True, text=True).stdout):
            top1.setdefault(r["key"], {})[run] = r["top1"]
    return {"interrupted mid-trial": interrupted,
            "trials": {k: v for k, v in sorted(top1.items())},
            "same top-1": all(v.get("straight") == v.get("cut") for v in top1.values())}


_READ = ("import json, sys; from bench.study.ledger import Ledger; "
         "print(json.dumps([{'key': r['key'], 'top1': r.get('top1')} for r in "
         "Ledger.locate('gpu-check', None, sys.argv[1]).records()]))")


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def _free(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.empty_cache()


def markdown(sections: dict, dev: torch.device, seconds: float) -> str:
    lines = [f"# GPU check: {device_name(dev)}", "",
             f"torch {torch.__version__}; `python -m benchmarks.gpu_check`; {seconds / 60:.1f} min.", ""]
    for title, rows in sections.items():
        lines += [f"## {title}", ""]
        rows = rows if isinstance(rows, list) else [rows]
        keys = list(dict.fromkeys(k for r in rows for k in r))
        lines += ["| " + " | ".join(keys) + " |", "|" + " --- |" * len(keys)]
        lines += ["| " + " | ".join("–" if r.get(k) is None else str(r.get(k)) for k in keys) + " |" for r in rows]
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default=None, help="cuda (default when available) or cpu")
    p.add_argument("--smoke", action="store_true", help="tiny models and sizes: that the script runs, in seconds")
    p.add_argument("--no-compile", action="store_true", help="eager only")
    p.add_argument("--out", default=None, help="write the markdown page here (default: print it)")
    args = p.parse_args(argv)
    dev = resolve_device(args.device)
    t0 = time.perf_counter()
    names = MICRO if args.smoke else PAPER
    batch, iters = (8, 2) if args.smoke else (64, 20)
    compiles = [False] if args.no_compile else [False, True]
    table = models_table(names, dev, ["fp32", "bf16"], [False] if args.smoke else compiles, batch, iters)
    if args.smoke and not args.no_compile:  # one compile, not four: that the path runs
        table += models_table(names[-1:], dev, ["bf16"], [True], batch, iters)
    sections = {"Train step per model, dtype and mode": table,
                "CUDA events against wall-clock": events_vs_wall(dev, names[0], batch, iters),
                "Peak memory, two measures": memory_check(dev, names[-1], batch),
                "Data pipeline on the device": loader_check(dev, 512 if args.smoke else 50_000,
                                                            16 if args.smoke else 32)}
    with tempfile.TemporaryDirectory() as work:
        sections["A sweep interrupted and resumed"] = resume_check(dev, 48 if args.smoke else 2048, Path(work))
    text = markdown(sections, dev, time.perf_counter() - t0)
    if args.out:
        Path(args.out).write_text(text)
        print(args.out)
    else:
        print(text)
    return 0 if sections["A sweep interrupted and resumed"]["same top-1"] else 1


if __name__ == "__main__":
    sys.exit(main())
