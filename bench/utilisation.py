"""How close a train step runs to the machine's limit: achieved train FLOP/s from the counted
MACs, and its fraction of the device's peak in that dtype (model FLOPs utilisation, MFU).

Convention (nanoGPT's and PaLM's): 2 FLOPs per multiply-accumulate, and a train step costs 3×
its forward pass (the backward pass 2×), so train FLOPs per image = 6 × the forward MACs that
fvcore counts (``infer_gmacs``: attention's two matmuls and re-attention's head mixing included;
norms, softmax and activations are not — as the papers count). The peak is *measured* once per
device × dtype × torch version: the best FLOP/s of large square matmuls in that dtype, cached in
bench's cache folder (peak-flops.json); for known GPUs the datasheet's dense peak is recorded
beside it. MFU is against the measured peak: what this machine's GEMM can do, not a brochure.
"""
from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import torch

from bench.data.cache import PEAKS_FILE, default_dir
from bench.files import remembered
from bench.variant import train_tflops

# dense (no sparsity) peak TFLOP/s by GPU name and dtype; fp32 is the plain (non-tensor-core) rate
DATASHEET = {"H100": {"bf16": 989.0, "fp32": 67.0}, "H200": {"bf16": 989.0, "fp32": 67.0},
             "A100": {"bf16": 312.0, "fp32": 19.5}}
_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
_SIZES = {"cpu": (1024, 2048), "cuda": (4096, 8192)}
_REPS = {"cpu": 4, "cuda": 20}
_measured: dict[str, float] = {}  # this process's measurements, whichever cache folder


def datasheet_tflops(device_name: str, dtype: str) -> float | None:
    """The datasheet's dense peak for a known GPU (by a name in ``device_name``), else None."""
    found = [peaks for gpu, peaks in DATASHEET.items() if gpu in device_name.upper()]
    return found[0].get(dtype) if found else None


def gemm_tflops(device: torch.device, dtype: str, size: int, reps: int) -> float:
    """The best TFLOP/s of ``reps`` square ``size`` matmuls in ``dtype`` on ``device``."""
    a = torch.randn(size, size, device=device, dtype=_DTYPES[dtype])
    b = torch.randn(size, size, device=device, dtype=_DTYPES[dtype])
    a @ b  # warm-up: kernel choice, page faults
    best = math.inf
    for _ in range(reps):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            a @ b
            end.record()
            torch.cuda.synchronize(device)
            seconds = start.elapsed_time(end) / 1e3
        else:
            t0 = time.perf_counter()
            a @ b
            seconds = time.perf_counter() - t0
        best = min(best, seconds)
    return 2 * size ** 3 / best / 1e12


def measured_peak(device: torch.device, dtype: str, device_name: str, cache_dir: Path | None = None) -> float:
    """The device's GEMM peak in ``dtype`` (TFLOP/s): from the cache when measured before on this
    device × dtype × torch version, else measured now (under a second on a CPU) and cached. A
    cache file that cannot be read is measured over, never an error."""
    key = f"{device_name} | {dtype} | torch {torch.__version__}"
    if key not in _measured:
        kind = "cuda" if device.type == "cuda" else "cpu"
        _measured[key] = float(remembered(
            Path(cache_dir or default_dir()) / PEAKS_FILE, key,
            lambda: max(gemm_tflops(device, dtype, n, _REPS[kind]) for n in _SIZES[kind]),
            lambda v: isinstance(v, (int, float)) and math.isfinite(v) and v > 0))
    return _measured[key]


def utilisation(infer_gmacs: float, samples_per_sec: float | None, *, device: torch.device, dtype: str,
                device_name: str) -> dict[str, Any]:
    """The record's utilisation columns: ``train_tflops``, ``train_mfu`` (against the measured
    peak), ``peak_tflops`` and, for a known GPU, ``datasheet_tflops``."""
    if not samples_per_sec or not math.isfinite(samples_per_sec) or dtype not in _DTYPES:
        return {}
    achieved = train_tflops(infer_gmacs, samples_per_sec)
    peak = measured_peak(device, dtype, device_name)
    return {"train_tflops": achieved, "train_mfu": achieved / peak, "peak_tflops": peak,
            "datasheet_tflops": datasheet_tflops(device_name, dtype)}
