"""Shared set-up for the benchmark scripts: one model, one batch, interleaved rounds."""
from __future__ import annotations

import argparse
import statistics
from typing import Callable

import torch

from bench.device import device_name, environment, resolve_device


def parser(doc: str, batch_size: int) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=doc)
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"])
    p.add_argument("--batch-size", type=int, default=batch_size)
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds (drift hits every arm alike)")
    p.add_argument("--iters", type=int, default=3, help="timed steps per arm per round")
    p.add_argument("--warmup", type=int, default=1)
    return p


def run_rounds(arms: dict[str, Callable[[], float]], rounds: int) -> dict[str, float]:
    """Call each arm (returns ms per step) once per round, interleaved; the median per arm."""
    samples: dict[str, list[float]] = {name: [] for name in arms}
    for r in range(rounds):
        for name, arm in arms.items():
            samples[name].append(arm())
            print(f"  round {r + 1}/{rounds} {name:<28} {samples[name][-1]:9.1f} ms/step", flush=True)
    return {name: statistics.median(s) for name, s in samples.items()}


def header(args: argparse.Namespace) -> torch.device:
    dev = resolve_device(args.device)
    env = environment(dev, args.dtype)
    print(f"device: {device_name(dev)} | dtype {args.dtype} | batch {args.batch_size} | "
          f"torch {env['torch_version']} | timm {env['timm_version']}", flush=True)
    return dev
