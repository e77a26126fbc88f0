"""How close a train step runs to the machine's limit: achieved train FLOP/s from the counted
MACs, and its fraction of the device's peak in that dtype (model FLOPs utilisation, MFU).

Convention (PaLM's model FLOPs): 2 FLOPs per multiply-accumulate, times the train MACs per image
(bench.costs: the matrix products of forward and backward as the model's math defines them —
no recomputation, no norms, softmax or activations), times samples per second. The peak is *measured* once per
device × dtype × torch version: the best FLOP/s of large square matmuls in that dtype, cached in
bench's cache folder (peak-flops.json); for known GPUs the datasheet's dense peak is recorded
beside it. MFU is against the measured peak: what this machine's GEMM can do, not a brochure.
"""
from __future__ import annotations

import math
import re
import time
from pathlib import Path
from typing import Any

import torch

from bench.costs import FLOPS_PER_MAC, train_tflops
from bench.own_files import PEAKS_FILE, Memo, default_dir, remembered

# dense (no sparsity) peak TFLOP/s by GPU name and dtype; fp32 is the plain (non-tensor-core) rate
DATASHEET = {"H100": {"bf16": 989.0, "fp32": 67.0}, "H200": {"bf16": 989.0, "fp32": 67.0},
             "A100": {"bf16": 312.0, "fp32": 19.5}}
_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
_SIZES = {"cpu": (1024, 2048), "cuda": (4096, 8192)}
_REPS = {"cpu": 4, "cuda": 20}
_measured: dict[str, float] = {}  # this process's measurements, whichever cache folder
PEAK_RANGE = (1e-3, 1e5)  # TFLOP/s: slower than any computer bench runs on, faster than any chip made
QUICK = {"cpu": 256, "cuda": 2048}  # a quick matmul's size: what a remembered peak is checked against
QUICK_RANGE = (0.25, 200.0)  # a device's peak over its quick matmul's rate, at the extremes seen


def plausible(value: object) -> bool:
    """A peak bench could have measured: a number (not a bool), finite, within PEAK_RANGE."""
    return type(value) in (int, float) and math.isfinite(value) and PEAK_RANGE[0] <= value <= PEAK_RANGE[1]


PEAKS = Memo("GEMM peak", re.compile(r".+ \| (fp32|bf16) \| torch \S+"), plausible)


def datasheet_tflops(device_name: str, dtype: str) -> float | None:
    """The datasheet's dense peak for a known GPU (by a name in ``device_name``), else None."""
    found = [peaks for gpu, peaks in DATASHEET.items() if gpu in device_name.upper()]
    return found[0].get(dtype) if found else None


def gemm_tflops(device: torch.device, dtype: str, size: int, reps: int) -> float:
    """The best TFLOP/s of ``reps`` square ``size`` matmuls in ``dtype`` on ``device``."""
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):  # the caller's streams untouched
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
    return FLOPS_PER_MAC * size ** 3 / best / 1e12  # size³ multiply-accumulates


def measured_peak(device: torch.device, dtype: str, device_name: str, cache_dir: Path | None = None) -> float:
    """The device's GEMM peak in ``dtype`` (TFLOP/s): from the cache when measured before on this
    device × dtype × torch version, else measured now (under a second on a CPU) and cached. A
    remembered peak is trusted only when plausible for this device: within the datasheet's
    reach where there is one, and within QUICK_RANGE of a quick matmul's rate (milliseconds);
    anything else is measured over. A memo file that is not bench's is left alone, never an
    error."""
    key = f"{device_name} | {dtype} | torch {torch.__version__}"
    if key not in _measured:
        kind = "cuda" if device.type == "cuda" else "cpu"

        def trust(peak: float) -> bool:
            sheet = datasheet_tflops(device_name, dtype)
            if sheet is not None and peak > 2 * sheet:
                return False
            quick = gemm_tflops(device, dtype, QUICK[kind], 2)
            return QUICK_RANGE[0] <= peak / quick <= QUICK_RANGE[1]
        _measured[key] = float(remembered(
            Path(cache_dir or default_dir()) / PEAKS_FILE, key,
            lambda: max(gemm_tflops(device, dtype, n, _REPS[kind]) for n in _SIZES[kind]), PEAKS, trust))
    return _measured[key]


def utilisation(train_gmacs: float, samples_per_sec: float | None, *, device: torch.device, dtype: str,
                device_name: str) -> dict[str, Any]:
    """The record's utilisation columns: ``train_tflops``, ``train_mfu`` (against the measured
    peak), ``peak_tflops`` and, for a known GPU, ``datasheet_tflops``."""
    if not samples_per_sec or not math.isfinite(samples_per_sec) or dtype not in _DTYPES:
        return {}
    achieved = train_tflops(train_gmacs, samples_per_sec)
    peak = measured_peak(device, dtype, device_name)
    return {"train_tflops": achieved, "train_mfu": achieved / peak, "peak_tflops": peak,
            "datasheet_tflops": datasheet_tflops(device_name, dtype)}
