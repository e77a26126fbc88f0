"""Per-trial overhead of a sweep: wall time outside profiling and training.

    python -m benchmarks.sweep_overhead [--trials 8] [--storage sqlite|journal|URL]

Runs a sweep of tiny trials (16x16 images, 1-2 blocks, one short epoch) into a
temporary folder and splits each trial's wall time into profiling, training and the
rest: model build, seeding, ledger writes (queueing, claiming, recording), progress, data
set-up (the first trial generates the dataset). Target: overhead <= 1 s per trial.
``--storage``: SQLite (default), a journal file, or a database URL (a PostgreSQL one: a
fresh study each run).
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from bench import spec
from bench.api import run_sweep
from bench.study.context import RunContext
from bench.study.storage import safe_url

SWEEP = """
name: overhead
data: {name: shapes, train_size: 256, test_size: 64}
model: {img_size: 16, patch_size: 4, embed_dim: 32, num_heads: 4, mlp_ratio: 2}
train: {epochs: 1, batch_size: 32}
profile: {batch_size: 8, warmup: 1, iters: 2}
grid: {depth: [1, 2], attention: [self, re]}
"""


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--trials", type=int, default=8, help="a multiple of 4")
    p.add_argument("--storage", default="sqlite", help="sqlite, journal, or an Optuna storage URL")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "overhead.yaml"
        path.write_text(SWEEP + f"seeds: {list(range(max(1, args.trials // 4)))}\n")
        sweep = spec.load(path)
        url = {"sqlite": None, "journal": f"journal:{Path(tmp) / 'study.journal'}"}.get(args.storage, args.storage)
        if url and "://" in url and not url.startswith("sqlite"):
            import dataclasses
            import uuid
            sweep = dataclasses.replace(sweep, name=f"overhead-{uuid.uuid4().hex[:8]}")
        t0 = time.perf_counter()
        summary = run_sweep(sweep,
                            RunContext(storage=url, results_dir=Path(tmp) / "results", device="cpu", quiet=True,
                                       report=False))
        wall = time.perf_counter() - t0
        records = summary["records"]
        inside = [r["time_trial_s"] - r["time_profile_s"] - r["time_train_s"] for r in records]
        outside = (wall - sum(r["time_trial_s"] for r in records)) / len(records)
        mean = lambda key: statistics.mean(r[key] for r in records)  # noqa: E731
        print(f"storage: {safe_url(args.storage)} | {len(records)} trials in {wall:.2f} s | "
              f"profiling {mean('time_profile_s'):.2f} s/trial | training {mean('time_train_s'):.2f} s/trial")
        print(f"overhead inside a trial (build, seed, ledger start, data): mean {statistics.mean(inside):.3f} s, "
              f"max {max(inside):.3f} s (first trial generates the data: {inside[0]:.3f} s)")
        print(f"overhead between trials (ledger write, next claim, progress; plus opening the study once): "
              f"{outside:.3f} s/trial")
        print(f"per-trial overhead = {statistics.mean(inside) + outside:.3f} s (target <= 1 s)")


if __name__ == "__main__":
    main()
