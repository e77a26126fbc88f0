"""bench: a benchmark and sweep harness for ViT/DeepViT attention-collapse studies.

``import bench`` is light (the CLI starts fast; reports load no torch). The model API
loads on first use: touching ``bench.Variant``, ``bench.build_model``, ``bench.VARIANTS``
(or importing ``bench.models``) registers the paper's models with timm, so
``timm.create_model("deepvit_16b")`` works from then on.
"""
from bench.errors import BenchError, SpecError

__version__ = "0.1.0"
__all__ = ["BenchError", "SpecError", "VARIANTS", "ReAttention", "Variant", "build_model",
           "capture_attention", "__version__"]

_LAZY = {"VARIANTS": "bench.models", "Variant": "bench.variant", "build_model": "bench.models",
         "capture_attention": "bench.models", "ReAttention": "bench.reattention"}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib
        import bench.models  # noqa: F401 (registers the models with timm)
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'bench' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
