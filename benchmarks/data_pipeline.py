"""Real data at scale: cache build and reuse, streaming against device-resident training,
peak memory with a dataset larger than its budget, and the DeiT recipe's cost per step.

    python -m benchmarks.data_pipeline [--small 3000] [--large 1500] [--budget-mb 256] [--device cuda]

Every folder is written by the script itself (no download) under --work (a temporary
folder by default):

1. Cache build throughput (images/s, all cores and one) at 32² from 32×32 PNGs (CIFAR-like)
   and at 224² from 500×375 JPEGs (ImageNet-like; noise, so they decode as slowly as real
   photos or slower); then reuse: a cached load against building it, as a ratio (target
   ≥ 50×; a reuse still lists and stats every file, which is its key).
2. Streaming against device-resident training on the quickstart model (depth 4, dim 64, 32²,
   batch 32, crop + flip), one epoch over the 32² cache per arm, interleaved rounds
   (target: streaming ≥ 0.9× resident).
3. Peak RSS, in a fresh process per mode, with a 224² cache (from 96×96 JPEGs) 4× larger
   than --budget-mb: streamed (auto picks it) against forced device-resident; growth over
   the baseline for an epoch of the loader alone, then for an epoch of training a tiny
   224² ViT (target: bounded by the budget, not the dataset).
4. The DeiT preset's extra cost per training step on the quickstart model, interleaved
   against crop + flip alone, and what each of its transforms costs per batch.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.data.cache import cores  # noqa: E402

QUICKSTART = dict(img_size=32, patch_size=4, embed_dim=64, num_heads=4, mlp_ratio=2.0, depth=4, num_classes=10)


def write_folder(root: Path, n: int, size: tuple[int, int], fmt: str, classes: int = 10) -> Path:
    if (root / "done").is_file():
        return root
    rng = np.random.default_rng(0)
    from PIL import Image
    for split, count in (("train", n), ("val", max(classes, n // 10))):
        for i in range(count):
            folder = root / split / f"c{i % classes}"
            folder.mkdir(parents=True, exist_ok=True)
            base = rng.integers(0, 256, 3)
            noise = rng.normal(0, 40, (size[1], size[0], 3))
            arr = np.clip(base + noise, 0, 255).astype(np.uint8)
            Image.fromarray(arr).save(folder / f"{i}.{fmt}", **({"quality": 90} if fmt == "jpg" else {}))
    (root / "done").write_text("")
    return root


def build(root: Path, size: int, cache_dir: Path, workers: int) -> tuple[float, int]:
    from bench.config import DataConfig
    from bench.data import cache
    shutil.rmtree(cache_dir, ignore_errors=True)  # a build, not a reuse
    cache.POOL_ABOVE_S = 0.0 if workers > 1 else float("inf")  # this arm's processes, whatever the size
    t0 = time.perf_counter()
    c = cache.folder(DataConfig(name="imagefolder", root=str(root), cache_dir=str(cache_dir), cache_workers=workers),
                     size, quiet=True)
    assert c.built_s is not None
    return time.perf_counter() - t0, len(c.train_labels) + len(c.test_labels)


def part_cache(work: Path, small: int, large: int) -> None:
    from bench.config import DataConfig
    from bench.data import cache
    print(f"\n1. cache build and reuse ({cache.cores()} cores)", flush=True)
    for label, folder, size in (("32² from 32×32 PNG", write_folder(work / "png32", small, (32, 32), "png"), 32),
                                ("224² from 500×375 JPEG", write_folder(work / "jpg500", large, (500, 375), "jpg"),
                                 224)):
        times = {}
        default = cache.POOL_ABOVE_S
        for workers in (cache.cores(), 1):
            seconds, n = build(folder, size, work / f"cache-{size}-{workers}", workers)
            times[workers] = seconds
            print(f"  {label}: build with {workers} process{'es' if workers > 1 else ''}: {n} images in "
                  f"{seconds:.2f} s = {n / seconds:.0f} images/s", flush=True)
        cache.POOL_ABOVE_S = default
        loads = []
        for _ in range(5):
            t0 = time.perf_counter()
            c = cache.folder(DataConfig(name="imagefolder", root=str(folder),
                                        cache_dir=str(work / f"cache-{size}-{cache.cores()}")), size, quiet=True)
            loads.append(time.perf_counter() - t0)
            assert c.built_s is None
        load = statistics.median(loads)
        print(f"  {label}: cached load {load * 1e3:.1f} ms (median of 5) | build/load = "
              f"{times[cache.cores()] / load:.0f}x (all cores), {times[1] / load:.0f}x (one process) "
              "(target >= 50x)", flush=True)


def part_stream(work: Path, rounds: int, device: str) -> None:
    import torch

    from bench.data import sources as data
    from bench.config import DataConfig, TrainConfig
    from bench.models import Variant, build_model
    from bench.training import train

    dev = torch.device(device)
    print(f"\n2. streaming vs device-resident training (quickstart model, {dev})", flush=True)
    ds = data.imagefolder(DataConfig(name="imagefolder", root=str(work / "png32"),
                                     cache_dir=str(work / f"cache-32-{cores()}")), 32)
    cfg = TrainConfig(epochs=1, batch_size=32, warmup_epochs=0.1, eval_batch_size=500)
    variant = Variant(**QUICKSTART)
    samples: dict[str, list[float]] = {"device": [], "stream": []}
    for r in range(rounds + 1):
        for mode in samples:
            torch.manual_seed(0)
            result = train(build_model(variant), ds, cfg, device=dev, seed=0,
                           recipe=DataConfig(name="imagefolder", residency=mode))
            rate = result["steps"] * cfg.batch_size / result["train_time_s"]
            if r:  # round 0 warms up
                samples[mode].append(rate)
                print(f"  round {r}/{rounds} {mode:<7} {rate:8.1f} samples/s (top-1 {result['top1']:.2f})", flush=True)
    med = {m: statistics.median(s) for m, s in samples.items()}
    print(f"  streaming/resident throughput = {med['stream'] / med['device']:.3f} (target >= 0.9)", flush=True)


RSS_CHILD = """
import json, sys, time, torch
from pathlib import Path
from bench.config import DataConfig, TrainConfig
from bench.data import loader, sources
from bench.models import Variant, build_model
from bench.training import train

def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key):
            return int(line.split()[1]) * 1024

root, cache_dir, mode, budget_gb = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
ds = sources.imagefolder(DataConfig(name="imagefolder", root=root, cache_dir=cache_dir), 224)
v = Variant(img_size=224, patch_size=32, embed_dim=32, depth=1, num_heads=2, mlp_ratio=2, num_classes=10)
torch.manual_seed(0)
model = build_model(v)
model(torch.zeros(2, 3, 224, 224)).sum().backward()  # the model's own memory, before the baseline
recipe = DataConfig(name="imagefolder", residency=mode, memory_budget_gb=budget_gb)
where, _ = loader.residency(ds, torch.device("cpu"), mode, budget_gb)
base = status("VmRSS")
t0 = time.perf_counter()
n = sum(len(y) for _, y in loader.Loader(ds.train, batch_size=32, device=torch.device("cpu"), train=True,  # the data
                                         recipe=DataConfig(crop_padding=2, flip=True), residency=where))  # path alone
loader_peak, loader_s = status("VmHWM"), time.perf_counter() - t0
r = train(model, ds, TrainConfig(epochs=1, batch_size=32, eval_batch_size=64), device=torch.device("cpu"), seed=0,
          recipe=recipe)
print(json.dumps({"mode": r["data_residency"], "base": base, "loader_peak": loader_peak, "loader_s": loader_s,
                  "images": n, "peak": status("VmHWM"), "data": ds.nbytes, "steps": r["steps"],
                  "s": r["train_time_s"]}))
"""


def part_rss(work: Path, budget_mb: float) -> None:
    print(f"\n3. peak RSS with a dataset 4x larger than its budget ({budget_mb:.0f} MiB)", flush=True)
    n = int(4.05 * budget_mb * 2**20 / (3 * 224 * 224) / 1.1) + 1  # train + a tenth more for val: 4x the budget
    folder = write_folder(work / f"jpg96-{n}", n, (96, 96), "jpg")
    cache_dir = work / "cache-rss"
    from bench.config import DataConfig
    from bench.data import cache
    c = cache.folder(DataConfig(name="imagefolder", root=str(folder), cache_dir=str(cache_dir)), 224, quiet=True)
    print(f"  dataset: {len(c.train_labels)} + {len(c.test_labels)} images at 224² = {c.nbytes / 2**20:.0f} MiB "
          f"({c.nbytes / 2**20 / budget_mb:.1f}x the budget)", flush=True)
    for mode in ("auto", "device"):
        out = subprocess.run([sys.executable, "-c", RSS_CHILD, str(folder), str(cache_dir), mode,
                              str(budget_mb / 1024)], capture_output=True, text=True, check=True)
        r = json.loads(out.stdout.strip().splitlines()[-1])
        mib = lambda b: b / 2**20  # noqa: E731
        loader, grow = mib(r["loader_peak"] - r["base"]), mib(r["peak"] - r["base"])
        print(f"  residency {mode} -> {r['mode']}: baseline RSS {mib(r['base']):.0f} MiB | an epoch of the loader "
              f"alone ({r['images']} images, {r['loader_s']:.1f} s): +{loader:.0f} MiB = {loader / budget_mb:.2f}x "
              f"the budget | training an epoch ({r['steps']} steps, {r['s']:.1f} s): +{grow:.0f} MiB = "
              f"{grow / budget_mb:.2f}x the budget, {grow / mib(r['data']):.2f}x the dataset", flush=True)


def part_deit(work: Path, rounds: int, device: str) -> None:
    import torch

    from bench.data import sources as data
    from bench.data.augment import Recipe
    from bench.config import AugmentConfig, DataConfig, TrainConfig
    from bench.models import Variant, build_model
    from bench.training import train

    dev = torch.device(device)
    print(f"\n4. the DeiT preset's cost per step (quickstart model, batch 32, {dev})", flush=True)
    ds = data.imagefolder(DataConfig(name="imagefolder", root=str(work / "png32"),
                                     cache_dir=str(work / f"cache-32-{cores()}")), 32)
    cfg = TrainConfig(epochs=1, batch_size=32, warmup_epochs=0.1)
    variant = Variant(**QUICKSTART)
    arms = {"crop + flip": DataConfig(name="imagefolder"), "deit": DataConfig(name="imagefolder", augment="deit")}
    samples: dict[str, list[float]] = {a: [] for a in arms}
    for r in range(rounds + 1):
        for arm, recipe in arms.items():
            torch.manual_seed(0)
            result = train(build_model(variant), ds, cfg, device=dev, seed=0, recipe=recipe)
            ms = result["train_time_s"] * 1e3 / result["steps"]
            if r:
                samples[arm].append(ms)
                print(f"  round {r}/{rounds} {arm:<12} {ms:7.1f} ms/step (top-1 {result['top1']:.2f}, data "
                      f"{result['data_residency']})", flush=True)
    med = {a: statistics.median(s) for a, s in samples.items()}
    print(f"  deit - crop+flip = {med['deit'] - med['crop + flip']:+.1f} ms/step "
          f"({med['deit'] / med['crop + flip']:.2f}x; includes a test pass per epoch in both)", flush=True)
    recipe = Recipe(AugmentConfig.parse("deit"), num_classes=10, img_size=32, label_smoothing=0.1, device=dev)
    x8 = np.array(ds.train.images[:32])
    x = torch.randn(32, 3, 32, 32, device=dev)
    y = torch.arange(32, device=dev) % 10
    parts = {"RandAugment (host, per image)": lambda: recipe.host(x8),
             "random erasing (device)": lambda: recipe.erase(x.clone()),
             "Mixup/CutMix (device)": lambda: recipe.mixup(x.clone(), y)}
    big = data.imagefolder(DataConfig(name="imagefolder", root=str(work / "jpg500"),
                                      cache_dir=str(work / f"cache-224-{cores()}")), 224)
    host224 = Recipe(AugmentConfig.parse("deit"), num_classes=10, img_size=224, label_smoothing=0.1,
                     device=torch.device("cpu")).host
    x224 = np.array(big.train.images[:32])
    parts["RandAugment at 224² (host, per image)"] = lambda: host224(x224)
    for name, fn in parts.items():
        fn()
        sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
        sync()
        t0 = time.perf_counter()
        for _ in range(20):
            fn()
        sync()
        print(f"  {name}: {(time.perf_counter() - t0) * 1e3 / 20:.2f} ms per batch of 32", flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--small", type=int, default=3000, help="32×32 PNGs in the training split (CIFAR-like)")
    p.add_argument("--large", type=int, default=1500, help="500×375 JPEGs in the training split (ImageNet-like)")
    p.add_argument("--budget-mb", type=float, default=256, help="part 3's memory budget (its dataset: 4x this)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--work", type=Path, default=None, help="folder for the images and caches (default: a temp one)")
    p.add_argument("--parts", default="1234", help="which parts to run")
    p.add_argument("--device", default="cpu", help="parts 2 and 4: cpu or cuda (streaming then pins memory, and "
                   "RandAugment runs in worker processes)")
    args = p.parse_args()
    import torch
    print(f"CPU: {os.cpu_count()} threads | torch {torch.__version__} | torch threads {torch.get_num_threads()}")
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        write_folder(work / "png32", args.small, (32, 32), "png")
        if "1" in args.parts:
            part_cache(work, args.small, args.large)
        if "2" in args.parts:
            part_stream(work, args.rounds, args.device)
        if "3" in args.parts:
            part_rss(work, args.budget_mb)
        if "4" in args.parts:
            part_deit(work, args.rounds, args.device)


if __name__ == "__main__":
    main()
