"""How long a worker takes to claim the next trial from a long queue, and to queue a sweep.

    python -m benchmarks.queue_speed [--points 2000] [--storage URL]

Queues N grid points (one WAITING trial each) in a fresh study, then claims and finishes
trials two ways side by side: the ledger's SQL path (the first 16 waiting ids, and the
claimed key's holders, one query each) and Optuna's API path (every waiting trial read as
a FrozenTrial, as Optuna's own trial queue does). A claim is overhead on every trial, so
it must not grow with the queue. Default storage: SQLite in a temporary folder.
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import uuid
from pathlib import Path

from bench import spec
from bench.study.ledger import Ledger
from bench.study.queries import GenericQueries
from bench.study.storage import default_url, safe_url

SWEEP = """
name: {name}
data: {{name: shapes, train_size: 48, test_size: 24}}
model: {{img_size: 16, patch_size: 4, embed_dim: 16, num_heads: 2, mlp_ratio: 2}}
train: {{epochs: 1, batch_size: 16}}
grid: {{depth: [1, 2], attention: [self, re]}}
seeds: {seeds}
"""


def claims(ledger, n: int) -> list[float]:
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        handle, trial = ledger.claim()
        times.append(time.perf_counter() - t0)
        ledger.finish(handle, {"status": "complete", "top1": 1.0, "seed": trial.seed}, "top1")
    return times


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--points", type=int, default=2000, help="grid points queued (a multiple of 4)")
    p.add_argument("--claims", type=int, default=10, help="claims timed per path")
    p.add_argument("--storage", default=None, help="an Optuna storage URL (default: SQLite in a temp folder)")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        name = f"queue-{uuid.uuid4().hex[:8]}"
        path = Path(tmp) / "queue.yaml"
        path.write_text(SWEEP.format(name=name, seeds=list(range(max(1, args.points // 4)))))
        sweep = spec.load(path)
        url = args.storage or default_url(tmp, name)
        (Path(tmp) / name).mkdir(parents=True, exist_ok=True)  # a run makes its results folder
        ledger = Ledger.for_sweep(sweep, url)
        ledger.bind(sweep)
        t0 = time.perf_counter()
        plan = ledger.plan(sweep.trials())
        ledger.enqueue(plan.todo)
        queued = time.perf_counter() - t0
        print(f"storage: {safe_url(url)} | planned and queued {len(plan.todo)} points in {queued:.2f} s "
              f"({queued / len(plan.todo) * 1e3:.1f} ms per point, once per sweep)")
        fast = claims(ledger, args.claims)
        ledger.queries = GenericQueries(ledger.study)  # the API path, for comparison
        slow = claims(ledger, args.claims)
        print(f"claim with {len(plan.todo)} queued: SQL path median {statistics.median(fast) * 1e3:.1f} ms, "
              f"API path median {statistics.median(slow) * 1e3:.1f} ms "
              f"(ratio {statistics.median(slow) / statistics.median(fast):.0f}x)")


if __name__ == "__main__":
    main()
