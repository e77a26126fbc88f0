"""bench: a benchmark and sweep harness for ViT/DeepViT attention-collapse studies.

Importing bench registers the paper's models with timm (``timm.create_model("deepvit_16b")``).
"""
from bench.errors import BenchError, SpecError
from bench.models import VARIANTS, Variant, build_model, capture_attention
from bench.reattention import ReAttention

__version__ = "0.1.0"
__all__ = ["BenchError", "SpecError", "VARIANTS", "ReAttention", "Variant", "build_model",
           "capture_attention", "__version__"]
