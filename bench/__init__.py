"""bench: a benchmark and sweep harness for ViT/DeepViT attention-collapse studies.

``import bench`` is light (the CLI starts fast; reports load no torch). The model API
loads on first use: touching ``bench.Variant``, ``bench.build_model``, ``bench.VARIANTS``
(or importing ``bench.models``) registers the paper's models with timm, so
``timm.create_model("deepvit_16b")`` works from then on.

The package is layered; a module imports only from the layers before it in this list, and
each sub-package's modules stand together (``tests/test_layers.py`` holds it to that;
``docs/architecture.md`` draws it):

1. base: ``errors``, ``console``, ``own_files``, ``records`` — one-line errors, all terminal
   output, files written whole and only bench's own (its folder and the names in it), the
   record's vocabulary
2. config: ``variant``, ``config``, ``sequential``, ``stats`` — torch-free: an architecture, the
   spec's sections with their defaults and rules; the sequential boundary; intervals and
   iso-cost readings
3. ``bench.data`` — datasets, the decoded cache, the loader, augmentation
4. ``spec`` — the sweep file, validated (torch-free)
5. the measuring core: ``costs``, ``device``, ``reattention``, ``models``, ``attention_kernels``,
   ``utilisation``, ``profiling``, ``side_by_side``, ``training``, ``collapse`` — every cost
   figure's one definition (torch on use), the device (naming, environment, autocast, compile,
   out-of-memory), DeepViT's re-attention, timm models, each attention type's fastest exact
   kernel, achieved FLOP/s against the device's peak, one model's cost, timing every variant
   side by side, the proxy, collapse metrics
6. ``bench.report`` — tables, plots and report files from records (torch-free)
7. ``bench.study`` — storage, the ledger, trials, sweeps and their workers, searches, reports
   of a stored study
8. front: ``api``, ``cli`` — the Python entry points and the ``bench`` command
"""
from bench.errors import BenchError, SpecError

__version__ = "0.1.0"
__all__ = ["BenchError", "SpecError", "VARIANTS", "ReAttention", "Variant", "build_model",
           "capture_attention", "__version__"]

_LAZY = {"VARIANTS": "bench.models", "Variant": "bench.variant", "build_model": "bench.models",
         "capture_attention": "bench.models", "ReAttention": "bench.reattention"}


def __getattr__(name: str):
    if name in _LAZY:  # on first use: keeps `import bench` (and the CLI's start) free of torch
        import importlib
        importlib.import_module("bench.models")  # registers the models with timm
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'bench' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
