"""`bench report` on a study of 10,000 records: seconds to rebuild runs.csv, report.md and plots.

    python -m benchmarks.report_speed [--records 10000] [--variants 50] [--keep DIR] [--repeat 3]

Fills a fresh SQLite study (in a temporary folder) with synthetic records in bench's
record vocabulary, each with its attention-collapse details (a depth × depth similarity
matrix and per-block arrays, stored beside the record as bench does), then times the
report: in-process (load the study + write every file), and the `bench report` command
end to end (Python start-up and imports included). Target: <= 5 s for 10,000 records.
``--keep DIR`` fills DIR once and reuses it on later runs (filling takes minutes), so two
versions of bench can be timed on the same study. Also times ``pareto_front`` on 10,000 points.
"""
from __future__ import annotations

import argparse
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna
from optuna.trial import TrialState, create_trial

import numpy as np

from bench.report.tables import pareto_front
from bench.spec import trial_key
from bench.study.storage import default_url, open_study
from bench.study.stored_reports import report_study
from bench.variant import Variant


def fake_record(v: Variant, seed: int, rng: random.Random) -> dict:
    status = rng.choices(["complete", "diverged", "failed"], [96, 2, 2])[0]
    wide = (v.embed_dim / 384) ** 2
    top1 = None if status != "complete" else 40 + v.depth + 3 * (v.attention == "re") + 4 * (wide - 1) \
        + rng.gauss(0, 1)
    error = "RuntimeError: boom" if status == "failed" else None
    return {**v.to_dict(), "seed": seed, "status": status, "error": error,
            "param_count": v.depth * 0.3 * wide,
            "infer_gmacs": v.depth * 0.02 * wide * (1.006 if v.attention == "re" else 1),
            "infer_macts": 1.0, "train_gmacs": v.depth * 0.06, "infer_samples_per_sec": 1e4 / v.depth,
            "infer_step_time": v.depth * 2.0, "infer_batch_size": 256, "train_samples_per_sec": 3e3 / v.depth,
            "train_step_time": v.depth * 6.0, "train_batch_size": 256, "top1": top1,
            "top1_per_epoch": [rng.random() * 100 for _ in range(30)], "train_loss": 1.0, "epochs": 30,
            "train_time_s": 100.0, "similar_blocks": rng.randint(0, v.depth - 1),
            "adjacent_similarity_mean": rng.random(), "cross_head_similarity_mean": rng.random(),
            "device": "cuda", "device_name": "NVIDIA H100", "dtype": "bf16",
            "torch_version": "2.14.1", "timm_version": "1.0.31", "bench_version": "0.1.0"}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--records", type=int, default=10_000)
    p.add_argument("--variants", type=int, default=50)
    p.add_argument("--keep", default=None, metavar="DIR", help="fill DIR once, reuse it later")
    p.add_argument("--repeat", type=int, default=3, help="in-process reports timed")
    p.add_argument("--width", action="store_true", help="a third of the variants 1.5x wider, and a width arm "
                   "in the comparison: the iso-cost section (bootstrap intervals) is computed too")
    args = p.parse_args()
    name = "speed"
    if args.keep:
        Path(args.keep).mkdir(parents=True, exist_ok=True)
        if not (Path(args.keep) / name / "study.db").is_file():
            fill(args.keep, name, args.records, args.variants, args.width)
        time_report(args.keep, name, args.repeat)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            fill(tmp, name, args.records, args.variants, args.width)
            time_report(tmp, name, args.repeat)
    rng = np.random.default_rng(0)
    g, t = rng.random(10_000), rng.random(10_000)
    t0 = time.perf_counter()
    pareto_front(g, t)
    print(f"pareto_front on 10,000 points: {(time.perf_counter() - t0) * 1e3:.1f} ms")


def fill(tmp: str, name: str, n_records: int, n_variants: int, width: bool = False) -> None:
    rng = random.Random(0)
    per = 3 if width else 2  # per depth: self, re (and self 1.5x wider)
    depths = [2 * (i // per + 1) for i in range(n_variants)]
    kinds = [{"attention": "self"}, {"attention": "re"}, {"embed_dim": 576}][:per]
    variants = [Variant(depth=d, **kinds[i % per]) for i, d in enumerate(depths)]
    arms = {"re-attention": {"attention": "re"}, **({"wider x1.5": {"embed_dim": 576}} if width else {})}
    url = default_url(tmp, name)
    (Path(tmp) / name).mkdir(parents=True, exist_ok=True)  # a run makes its results folder
    study = open_study(url, name, create=True)
    study.set_user_attr("spec", {"name": name, "train": {"epochs": 30},
                                 "compare": {"by": ["depth"], "arms": arms, "baseline": {
                                     "attention": "self", **({"embed_dim": 384} if width else {})}}})
    t0 = time.perf_counter()
    trials = []
    for i in range(n_records):
        v, seed = variants[i % len(variants)], i // len(variants)
        record = fake_record(v, seed, rng)
        state = {"complete": TrialState.COMPLETE, "diverged": TrialState.PRUNED}.get(record["status"],
                                                                                  TrialState.FAIL)
        d = v.depth
        details = {"similarity": [[rng.random() for _ in range(d)] for _ in range(d)],
                   "adjacent_similarity": [rng.random() for _ in range(d - 1)],
                   "similar_ratio": {str(k): [rng.random() for _ in range(d - k)] for k in (1, 2, 3)},
                   "cross_head_similarity": [rng.random() for _ in range(d)],
                   "cross_head_share": [rng.random() for _ in range(d)]}
        trials.append(create_trial(state=state, value=record["top1"] if state == TrialState.COMPLETE else None,
                                   user_attrs={"key": trial_key(v, seed), "record": record, "collapse": details}))
    study.add_trials(trials)
    print(f"filled {n_records} records ({len(variants)} variants) in {time.perf_counter() - t0:.1f} s")


def time_report(tmp: str, name: str, repeat: int) -> None:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        report_study(name, results_dir=tmp)
        times.append(time.perf_counter() - t0)
    print(f"in-process report (load study + write files): {', '.join(f'{t:.2f}' for t in times)} s")
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "bench.cli", "report", name, "--results", tmp], check=True,
                   stdout=subprocess.DEVNULL)
    print(f"`bench report` end to end (interpreter start and imports included): "
          f"{time.perf_counter() - t0:.2f} s  (target <= 5 s)")
    print(f"rows in runs.csv: {sum(1 for _ in open(Path(tmp) / name / 'runs.csv')) - 1}")


if __name__ == "__main__":
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    main()
