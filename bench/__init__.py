"""bench: a benchmark and sweep harness for ViT/DeepViT attention-collapse studies.

``import bench`` is light (the CLI starts fast; reports load no torch). The model API
loads on first use: touching ``bench.Variant``, ``bench.build_model``, ``bench.VARIANTS``
(or importing ``bench.models``) registers the paper's models with timm, so
``timm.create_model("deepvit_16b")`` works from then on.

The package is layered; a module imports only from the layers above it in this list
(``tests/test_layers.py`` holds it to that):

1. ``errors``, ``console``, ``files``, ``cache`` — one-line errors, all terminal output, atomic
   writes; decoded datasets cached on disk (numpy and PIL, no torch)
2. ``variant``, ``config``, ``spec``, ``stats`` — torch-free: an architecture, the spec's
   sections with their defaults and rules, the sweep file; intervals and iso-cost readings
3. ``reattention``, ``models`` — DeepViT's re-attention; building and registering timm models
4. ``data``, ``augment``, ``profiling``, ``timing``, ``training``, ``collapse`` — datasets and
   their loader, timm's augmentation recipes, cost, costs timed side by side, the proxy,
   collapse metrics
5. ``storage``, ``ledger`` — opening the Optuna storage; the study ledger
6. ``tables``, ``plots``, ``report`` — torch-free tables, figures and report files
7. ``trials``, ``search``, ``runner`` — one trial; a study's search; a sweep and its workers
8. ``api``, ``cli`` — plans and collapse entry points; the ``bench`` command
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
