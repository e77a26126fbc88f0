"""ViT and DeepViT models built on timm: building a variant (bench.variant), the registry, any
model by name (bench's or timm's) and its input size, trained weights (safetensors), attention
capture.

DeepViT (Zhou et al. 2021, arXiv 2103.11886) is a ViT with one part swapped:
self-attention becomes re-attention (bench.reattention), passed to timm's
``VisionTransformer`` as ``attn_layer``. The paper's six models are registered with
timm, so ``timm.create_model("deepvit_24b")`` works anywhere once this module is imported
(``import bench.models``, or any use of ``bench.Variant``, ``bench.build_model`` & co.).
"""
from __future__ import annotations

import functools
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Mapping

import timm
import torch
from timm.layers import Attention
from timm.models import register_model
from timm.models.vision_transformer import Block, VisionTransformer
from torch import nn

from bench.errors import BenchError, did_you_mean
from bench.own_files import atomic_write
from bench.reattention import ReAttention
from bench.variant import ATTENTION_TYPES, FIELD_TYPES, Variant  # noqa: F401 (re-exported)

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


def create(name: str, overrides: dict[str, Any] | None = None) -> tuple[nn.Module, Variant | None]:
    """A bench variant or any timm model by name; ``overrides`` change its fields."""
    variant = resolve(name, overrides)
    if variant is not None:
        return build_model(variant), variant
    if not timm.is_model(name):
        known = list(VARIANTS) + timm.list_models()
        raise BenchError(f"unknown model {name!r}{did_you_mean(name, known)}; "
                         "`bench models` lists bench's, `timm.list_models()` timm's")
    try:
        return timm.create_model(name, **(overrides or {})), None
    except TypeError as err:
        raise BenchError(f"{name}: {err}") from None


def input_size_of(model: nn.Module, variant: Variant | None) -> tuple[int, int, int]:
    """(C, H, W) of one input: the variant's, else what the timm model was built for. A ViT made
    at another size (``--set img_size=32``) keeps its pretrained config's 224: its patch
    embedding knows the size it was built for."""
    if variant is not None:
        return (variant.in_chans, variant.img_size, variant.img_size)
    from timm.data import resolve_model_data_config  # on use: only timm models by name need it
    size = tuple(resolve_model_data_config(model)["input_size"])
    built = getattr(getattr(model, "patch_embed", None), "img_size", None)
    chans = getattr(getattr(getattr(model, "patch_embed", None), "proj", None), "in_channels", size[0])
    if isinstance(built, (tuple, list)) and len(built) == 2 and all(isinstance(n, int) for n in built):
        return (chans, *built)
    return size


# --- weights ------------------------------------------------------------------------

def save_weights(model: nn.Module, path: str | Path) -> Path:
    """The model's state (parameters and buffers) as safetensors, written atomically."""
    from safetensors.torch import save  # on use: only --save-weights needs it

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    blob = save({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()})
    atomic_write(path, lambda f: f.write(blob), binary=True)
    return path


def load_weights(model: nn.Module, path: str | Path) -> nn.Module:
    """Load safetensors weights (plain tensors: no pickled code runs) into ``model``."""
    from safetensors import SafetensorError  # on use, as above
    from safetensors.torch import load_file

    device = next(model.parameters()).device
    try:
        state = load_file(str(path), device=str(device))
    except (OSError, SafetensorError) as err:
        raise BenchError(f"cannot read weights {path}: {err}") from None
    try:
        model.load_state_dict(state)
    except RuntimeError as err:  # missing, unexpected or mis-shaped tensors
        lines = str(err).strip().splitlines()
        raise BenchError(f"weights {path} do not fit this model: {lines[min(1, len(lines) - 1)].strip()}") from None
    return model


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


@contextmanager
def capture_blocks(model: nn.Module) -> Iterator[list[torch.Tensor]]:
    """Record every transformer block's output tokens during forward passes: a list that
    fills, per forward, with one (B, N, D) tensor per block of ``model.blocks``."""
    blocks = list(getattr(model, "blocks", []))
    if not blocks:
        raise ValueError(f"{type(model).__name__} has no .blocks to capture")
    outputs: list[torch.Tensor] = []
    hooks = [b.register_forward_hook(lambda _mod, _inp, out: outputs.append(out.detach())) for b in blocks]
    try:
        yield outputs
    finally:
        for h in hooks:
            h.remove()


class _restore:
    """Undo handle that sets an attribute back, like a hook's ``remove()``."""

    def __init__(self, obj: Any, attr: str, value: Any) -> None:
        self.obj, self.attr, self.value = obj, attr, value

    def remove(self) -> None:
        setattr(self.obj, self.attr, self.value)
