"""The architecture spec: one ViT/DeepViT variant in timm's vocabulary, validated on
construction. Pure data (no torch), so specs, ledgers and reports load without it;
``bench.models.build_model`` turns a variant into a timm ``VisionTransformer``.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Mapping

from bench.errors import SpecError, check_keys, check_type

RE_NORMS = ("batch", "layer", "none")  # how re-attention normalises the mixed maps over heads
ATTENTION_TYPES = ("self", "re")
MAX_SIZE = 2**31 - 1  # any size field, and the MLP's width: past it no model builds, and MAC counts overflow floats


def is_re_option(field: str) -> bool:
    """Re-attention options (``re_*``) exist only in variants whose attention is ``re``: they
    reset to their defaults otherwise, are sampled only then, and are labelled only then."""
    return field.startswith("re_")


@dataclasses.dataclass(frozen=True)
class Variant:
    """One ViT/DeepViT architecture, in timm's vocabulary.

    ``attention='re'`` swaps in re-attention: in every block, or only in the last
    ``re_blocks`` blocks (DeepViT-S/L use 5 of 16 and 12 of 32).
    """

    img_size: int = 224
    patch_size: int = 16
    in_chans: int = 3
    embed_dim: int = 384
    depth: int = 12
    num_heads: int = 12
    mlp_ratio: float = 3.0
    qkv_bias: bool = True
    num_classes: int = 1000
    drop_path_rate: float = 0.0
    attention: str = "self"
    re_blocks: int | None = None  # None: re-attention in all blocks
    re_norm: str = "batch"
    re_transform_scale: bool = False

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            check_type(f.name, getattr(self, f.name), FIELD_TYPES[f.name])
        positive = ("img_size", "patch_size", "in_chans", "embed_dim", "depth", "num_heads",
                    "num_classes")
        for name in positive:
            if getattr(self, name) < 1:
                raise SpecError(name, getattr(self, name), "must be at least 1")
            if getattr(self, name) > MAX_SIZE:
                raise SpecError(name, getattr(self, name), f"must be at most {MAX_SIZE:,}")
        if self.mlp_ratio <= 0:
            raise SpecError("mlp_ratio", self.mlp_ratio, "must be positive")
        if self.embed_dim * self.mlp_ratio > MAX_SIZE:
            raise SpecError("mlp_ratio", self.mlp_ratio, f"gives an MLP wider than {MAX_SIZE:,} at "
                            f"embed_dim={self.embed_dim}")
        if int(self.embed_dim * self.mlp_ratio) < 1:
            raise SpecError("mlp_ratio", self.mlp_ratio, f"gives an empty MLP at embed_dim={self.embed_dim}")
        if not 0 <= self.drop_path_rate < 1:
            raise SpecError("drop_path_rate", self.drop_path_rate, "must be in [0, 1)")
        if self.embed_dim % self.num_heads:
            raise SpecError("embed_dim", self.embed_dim,
                            f"is not divisible by num_heads={self.num_heads}")
        if self.img_size % self.patch_size:
            raise SpecError("img_size", self.img_size,
                            f"is not divisible by patch_size={self.patch_size}")
        if self.attention not in ATTENTION_TYPES:
            raise SpecError("attention", self.attention, f"expected one of: {', '.join(ATTENTION_TYPES)}")
        if self.re_norm not in RE_NORMS:
            raise SpecError("re_norm", self.re_norm, f"expected one of: {', '.join(RE_NORMS)}")
        if self.re_blocks is not None and not 0 <= self.re_blocks <= self.depth:
            raise SpecError("re_blocks", self.re_blocks,
                            f"re-attention needs 0..depth={self.depth} blocks")
        self._canonicalise()

    def _canonicalise(self) -> None:
        """One spelling per architecture, so equal models get equal trial keys: floats as
        floats (``mlp_ratio: 4`` is 4.0), re-attention options at their defaults when no
        block re-attends, and ``re_blocks: depth`` as null (all blocks)."""
        fix = functools.partial(object.__setattr__, self)
        for name in ("mlp_ratio", "drop_path_rate"):
            fix(name, float(getattr(self, name)))
        if self.attention != "re" or self.re_blocks == 0:
            fix("attention", "self")
            for f in dataclasses.fields(self):
                if is_re_option(f.name):
                    fix(f.name, f.default)
        elif self.re_blocks == self.depth:
            fix("re_blocks", None)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any], base: Variant | None = None) -> Variant:
        """A variant from ``base`` (default: the paper's ViT-12B) with ``values`` changed.

        Unknown keys raise a SpecError with a "did you mean" suggestion.
        """
        check_keys(values, FIELD_TYPES, "model field")
        return dataclasses.replace(base or cls(), **values)

    def replace(self, **changes: Any) -> Variant:
        return Variant.from_dict(changes, base=self)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def applies(self, field: str) -> bool:
        """Whether ``field`` means anything for this variant (re-attention options only with it)."""
        return not is_re_option(field) or self.attention == "re"

    @property
    def num_patches(self) -> int:
        return (self.img_size // self.patch_size) ** 2

    @property
    def seq_len(self) -> int:
        return self.num_patches + 1  # + class token

    @property
    def head_dim(self) -> int:
        return self.embed_dim // self.num_heads

    @property
    def mlp_hidden(self) -> int:
        return int(self.embed_dim * self.mlp_ratio)  # timm's rounding

    @property
    def first_re_block(self) -> int:
        """Index of the first re-attention block (``depth`` when there is none)."""
        if self.attention != "re":
            return self.depth
        return self.depth - (self.depth if self.re_blocks is None else self.re_blocks)

    @property
    def n_re_blocks(self) -> int:
        return self.depth - self.first_re_block


FIELD_TYPES: dict[str, Any] = {
    "img_size": int, "patch_size": int, "in_chans": int, "embed_dim": int, "depth": int,
    "num_heads": int, "mlp_ratio": float, "qkv_bias": bool, "num_classes": int,
    "drop_path_rate": float, "attention": str, "re_blocks": (int, None), "re_norm": str,
    "re_transform_scale": bool,
}
