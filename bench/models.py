"""ViT and DeepViT variants built on timm: the variant spec, the registry, attention capture.

DeepViT (Zhou et al. 2021, arXiv 2103.11886) is a ViT with one part swapped:
self-attention becomes re-attention (bench.reattention), passed to timm's
``VisionTransformer`` as ``attn_layer``. The paper's six models are registered with
timm, so ``timm.create_model("deepvit_24b")`` works anywhere once ``bench`` is imported.
"""
from __future__ import annotations

import dataclasses
import functools
from contextlib import contextmanager
from typing import Any, Iterator, Mapping

import torch
from timm.layers import Attention
from timm.models import register_model
from timm.models.vision_transformer import Block, VisionTransformer
from torch import nn

from bench.errors import SpecError, check_keys, check_type
from bench.reattention import RE_NORMS, ReAttention

ATTENTION_TYPES = ("self", "re")


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
        if self.mlp_ratio <= 0:
            raise SpecError("mlp_ratio", self.mlp_ratio, "must be positive")
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


def _block_fn(*, depth: int, attn_layer, first_re: int, re_layer, **kwargs) -> Block:
    """timm passes each block its index as ``depth``: re-attention from ``first_re`` on."""
    return Block(depth=depth, attn_layer=re_layer if depth >= first_re else attn_layer, **kwargs)


def build_model(variant: Variant, **timm_kwargs: Any) -> VisionTransformer:
    """A timm ``VisionTransformer`` for ``variant``; extra kwargs go to timm."""
    v = variant
    extra: dict[str, Any] = {}
    if v.n_re_blocks:
        re_layer = ReAttention.configure(v.re_norm, v.re_transform_scale)
        if v.n_re_blocks == v.depth:
            extra["attn_layer"] = re_layer
        else:
            extra["block_fn"] = functools.partial(_block_fn, first_re=v.first_re_block, re_layer=re_layer)
    return VisionTransformer(
        img_size=v.img_size, patch_size=v.patch_size, in_chans=v.in_chans,
        num_classes=v.num_classes, embed_dim=v.embed_dim, depth=v.depth,
        num_heads=v.num_heads, mlp_ratio=v.mlp_ratio, qkv_bias=v.qkv_bias,
        drop_path_rate=v.drop_path_rate, **extra, **timm_kwargs)


# --- registry -------------------------------------------------------------------------

_PAPER = Variant()  # patch 16, 224², embed_dim 384, 12 heads, mlp_ratio 3, qkv_bias
_MICRO = Variant(img_size=32, patch_size=8, embed_dim=32, depth=4, num_heads=4,
                 mlp_ratio=2.0, num_classes=10)

VARIANTS: dict[str, Variant] = {
    "vit_16b": _PAPER.replace(depth=16),
    "vit_24b": _PAPER.replace(depth=24),
    "vit_32b": _PAPER.replace(depth=32),
    "deepvit_16b": _PAPER.replace(depth=16, attention="re"),
    "deepvit_24b": _PAPER.replace(depth=24, attention="re"),
    "deepvit_32b": _PAPER.replace(depth=32, attention="re"),
    # tiny variants for tests and smoke runs (32², 17 tokens, ~40k params)
    "vit_micro": _MICRO,
    "deepvit_micro": _MICRO.replace(attention="re"),
    "deepvit_micro_last2": _MICRO.replace(attention="re", re_blocks=2),
}


def _entrypoint(name: str, variant: Variant):
    def create(pretrained: bool = False, **kwargs: Any) -> VisionTransformer:
        if pretrained:
            raise ValueError(f"{name}: bench ships no pretrained weights")
        for key in ("pretrained_cfg", "pretrained_cfg_overlay", "cache_dir"):
            kwargs.pop(key, None)
        fields = {k: kwargs.pop(k) for k in list(kwargs) if k in FIELD_TYPES}
        return build_model(variant.replace(**fields), **kwargs)

    create.__name__ = create.__qualname__ = name
    create.__module__ = __name__
    create.__doc__ = f"bench variant {name}: {variant}"
    return create


for _name, _variant in VARIANTS.items():  # module attributes too, as timm's entrypoints are
    globals()[_name] = register_model(_entrypoint(_name, _variant))


def resolve(name: str, overrides: Mapping[str, Any] | None = None) -> Variant | None:
    """The bench variant called ``name`` with ``overrides``; None if ``name`` is not bench's."""
    if name not in VARIANTS:
        return None
    return VARIANTS[name].replace(**(overrides or {}))


# --- attention capture ----------------------------------------------------------------

@contextmanager
def capture_attention(model: nn.Module, which: str = "v") -> Iterator[list[torch.Tensor]]:
    """Record every attention block's map during forward passes, outputs unchanged.

    Yields a list that fills, per forward, with one (B, H, N, N) tensor per attention
    module in call order. ``which='v'``: the map that multiplies V (for re-attention,
    the re-generated map); ``which='raw'``: the softmax output before any mixing.
    Fused SDPA is switched off meanwhile (the map must exist) and restored after.
    """
    if which not in ("v", "raw"):
        raise ValueError(f"which={which!r}: expected 'v' or 'raw'")
    maps: list[torch.Tensor] = []
    record = lambda _mod, _inp, out: maps.append(out.detach())  # noqa: E731
    undo = []
    for module in model.modules():
        if not isinstance(module, Attention):
            continue
        if isinstance(module, ReAttention) and which == "v":
            undo.append(module.attn_map.register_forward_hook(record))
            module.materialize = True
            undo.append(_restore(module, "materialize", False))
        else:
            undo.append(module.attn_drop.register_forward_hook(record))
            undo.append(_restore(module, "fused_attn", module.fused_attn))
            module.fused_attn = False
    if not undo:
        raise ValueError(f"{type(model).__name__} has no timm attention module to capture")
    try:
        yield maps
    finally:
        for u in undo:
            u.remove()


class _restore:
    """Undo handle that sets an attribute back, like a hook's ``remove()``."""

    def __init__(self, obj: Any, attr: str, value: Any) -> None:
        self.obj, self.attr, self.value = obj, attr, value

    def remove(self) -> None:
        setattr(self.obj, self.attr, self.value)
