"""The device and everything bench does to run on it: resolving ``--device`` and naming the
device, the environment recorded with every figure, autocast, torch.compile (inductor's cache in
bench's folder, and its faults recovered from), and the out-of-memory check.
"""
from __future__ import annotations

import gc
import os
import platform
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Callable, TypeVar

import timm
import torch
from torch import nn

from bench import __version__, console
from bench.errors import BenchError, first_line
from bench.own_files import INDUCTOR_DIR, default_dir, hold_folder

_AMP = {"bf16": torch.bfloat16}  # config.DTYPES that run under autocast (fp32 runs as is)


# --- which device, and what it is -----------------------------------------------------------

def resolve_device(name: str | None) -> torch.device:
    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise BenchError(f"--device {name}: CUDA is not available on this machine (try --device cpu)")
    try:
        return torch.device(name)
    except RuntimeError:
        raise BenchError(f"--device {name}: expected cpu or cuda") from None


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{cpu} ({torch.get_num_threads()} threads)"


def environment(device: torch.device, dtype: str) -> dict[str, Any]:
    """What every figure is recorded with."""
    return {"device": device.type, "device_name": device_name(device), "dtype": dtype,
            "torch_version": torch.__version__, "timm_version": timm.__version__,
            "bench_version": __version__}


def autocast(device: torch.device, dtype: str) -> Any:
    """The autocast context of ``dtype`` on ``device`` (bf16), or none (fp32): every timed or
    trained step enters it."""
    amp = _AMP.get(dtype)
    return torch.autocast(device.type, dtype=amp) if amp is not None else nullcontext()


# --- torch.compile ----------------------------------------------------------------------------

def inductor_dir() -> tuple[Path, bool]:
    """Where torch.compile's cache goes, and whether that folder is bench's own: its cache folder's
    ``inductor`` (unless $TORCHINDUCTOR_CACHE_DIR names another, the user's, which bench never
    moves or prunes)."""
    from torch._inductor.runtime.cache_dir_utils import default_cache_dir  # on use: compiling only

    given = os.environ.get("TORCHINDUCTOR_CACHE_DIR")  # torch sets its default here on first use
    ours = default_dir() / INDUCTOR_DIR
    if given is None or os.path.abspath(given) in (os.path.abspath(default_cache_dir()), os.path.abspath(ours)):
        return ours, True
    return Path(given), False


def compile_model(model: nn.Module, fresh: bool = True) -> nn.Module:
    """``torch.compile(model, fullgraph=True, dynamic=False)`` (inductor): a graph break is an
    error, not a slow path (re-attention has none: bench.reattention traces plain ops when
    compiling), and every model is compiled for its own static shapes. ``fresh`` (the default:
    one compiled model at a time, as in a trial) first clears this process's compiled code:
    otherwise the next variant's other shapes would recompile the same ``forward`` as a
    dynamic-shape graph (slower kernels, and no cache hit in the next process), and past
    dynamo's recompile limit run eager. Inductor's cache lives in bench's cache folder
    ($TORCHINDUCTOR_CACHE_DIR when set), so the next trial of the same shapes, in any
    process, compiles from it; this process holds it (``bench cache --prune`` passes over it).
    The compile happens at the first call: ``compiled_call`` makes it and recovers from a
    damaged or unwritable cache."""
    folder, ours = inductor_dir()
    if ours:
        hold_folder(folder)  # made, marked as bench's, held while this process lives
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(folder)
    if fresh:
        torch._dynamo.reset()
    return torch.compile(model, fullgraph=True, dynamic=False)


T = TypeVar("T")


def _compile_fault(err: BaseException) -> bool:
    """Whether ``err`` (or what it wraps) came from compiling, not from the model: dynamo's or
    inductor's errors (a cache file that does not import, a C++ build that fails) and the
    file system's (a full disk, a folder that cannot be written)."""
    seen: set[int] = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, OSError) or type(err).__module__.startswith(("torch._inductor", "torch._dynamo")):
            return True
        err = err.__cause__ or err.__context__
    return False


def compiled_call(model: nn.Module, first: Callable[[nn.Module], T], reset: Callable[[], None] | None = None,
                  fresh: bool = True) -> tuple[nn.Module, T, str | None]:
    """Compile ``model`` and make its first call ``first(net)`` — where inductor compiles, reading
    and writing its cache — so that a fault there never fails the run: a damaged cache (files
    that no longer import) is set aside as ``inductor.damaged-<time>`` and the model compiled
    afresh, once; a cache that cannot be written (a full disk), a folder that is not bench's,
    or a second fault runs the model eager. ``reset()`` runs before a retry (the caller's
    state as it was before the failed call). Returns (what ran, ``first``'s result, why it
    runs eager — one line naming the folder — or None); each fault is said on stderr. ``fresh``:
    as compile_model's (False when several compiled models must live at once)."""
    for attempt in (0, 1):
        try:
            net = compile_model(model, fresh=fresh and attempt == 0)
            return net, first(net), None
        except Exception as err:
            if not _compile_fault(err):
                raise
            folder, ours = inductor_dir()
            why = f"{type(err).__name__}: {first_line(err)[:200]}"
            if reset is not None:
                reset()
            torch._dynamo.reset()
            if attempt == 0 and ours and not isinstance(err, OSError) and _set_aside(folder):
                console.info(f"torch.compile: the cache {folder} is damaged ({why}); set aside beside it, "
                             "compiling afresh")
                continue
            note = f"torch.compile failed, the model runs eager: {why} (inductor's cache: {folder})"
            console.info(note)
            return model, first(model), note
    raise AssertionError("unreachable")


def _set_aside(folder: Path) -> bool:
    """Rename bench's inductor folder to ``<folder>.damaged-<time>`` (pruned by ``bench cache
    --prune``); False when it cannot be."""
    side = folder.with_name(f"{folder.name}.damaged-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}")
    try:
        os.rename(folder, side)
    except OSError:
        return False
    return True


# --- out of memory ---------------------------------------------------------------------------

def is_oom(err: BaseException) -> bool:
    if isinstance(err, torch.OutOfMemoryError):
        return True
    text = str(err).lower()
    return isinstance(err, RuntimeError) and ("out of memory" in text or "can't allocate memory" in text)


def free_memory(device: torch.device) -> None:
    """What an out-of-memory retry frees first: Python's garbage and CUDA's cached blocks."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
