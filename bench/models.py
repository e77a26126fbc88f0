"""ViT and DeepViT variants built on timm.

DeepViT (Zhou et al. 2021, arXiv 2103.11886) is a ViT with one part swapped:
self-attention becomes *re-attention*, ``RA(Q,K,V) = Norm(Θᵀ softmax(QKᵀ/√d)) V``,
where Θ (H×H, plus bias) mixes the H heads' attention maps after the softmax.
``ReAttention`` is a drop-in for timm's ``Attention`` and is passed to timm's
``VisionTransformer`` as ``attn_layer``; the paper's six models are registered with
timm, so ``timm.create_model("deepvit_24b")`` works anywhere once ``bench`` is imported.
"""
from __future__ import annotations

import dataclasses
import difflib
import functools
import math
from contextlib import contextmanager
from typing import Any, Iterator, Mapping

import torch
from timm.layers import Attention
from timm.layers.attention import maybe_add_mask, resolve_self_attn_mask
from timm.models import register_model
from timm.models.vision_transformer import Block, VisionTransformer
from torch import nn

from bench.errors import SpecError

ATTENTION_TYPES = ("self", "re")
RE_NORMS = ("batch", "layer", "none")


class ReAttention(Attention):
    """Re-attention: self-attention whose per-head maps are re-mixed across heads.

    Same constructor and forward signature as ``timm.layers.Attention``, plus
    ``re_norm`` (``batch``: BatchNorm2d over heads, the official choice; ``layer``:
    LayerNorm over heads, as other public versions do; ``none``) and
    ``re_transform_scale`` (multiply the mixed map by head_dim^-0.5, the official
    ``transform_scale``). Parameter names follow the official code
    (``reatten_matrix``, ``var_norm``) so its checkpoints map one to one.

    Speed: the official code runs Conv2d + BatchNorm2d over the (B, H, N, N) map. Both
    are affine per head, so here they are folded into one H×H matrix and bias before a
    single mixing matmul; in training the BatchNorm statistics come in closed form
    from the H×H Gram matrix of the maps (softmax rows sum to one, so each head's mean
    is 1/N). The bias is applied to V (``b · Σⱼ Vⱼ``), never to the N×N map.
    """

    re_norm: str = "batch"
    re_transform_scale: bool = False

    def __init__(self, dim: int, num_heads: int = 8, *, re_norm: str | None = None,
                 re_transform_scale: bool | None = None, device=None, dtype=None, **kwargs):
        super().__init__(dim, num_heads=num_heads, device=device, dtype=dtype, **kwargs)
        if kwargs.get("gated") or kwargs.get("dim_out") not in (None, dim):
            raise ValueError("ReAttention supports neither gated attention nor dim_out != dim")
        self.re_norm = re_norm if re_norm is not None else type(self).re_norm
        if self.re_norm not in RE_NORMS:
            raise ValueError(f"re_norm={self.re_norm!r}: expected one of {', '.join(RE_NORMS)}")
        if re_transform_scale is not None:
            self.re_transform_scale = re_transform_scale
        self.fused_attn = False  # the map must exist to be mixed
        H, dd = num_heads, {"device": device, "dtype": dtype}
        self.reatten_matrix = nn.Conv2d(H, H, 1, **dd)  # Θᵀ as weight (H_out, H_in, 1, 1)
        if self.re_norm == "batch":
            self.var_norm = nn.BatchNorm2d(H, **dd)
        elif self.re_norm == "layer":
            self.var_norm = nn.LayerNorm(H, **dd)
        else:
            self.var_norm = nn.Identity()
        self.reatten_scale = self.head_dim ** -0.5 if self.re_transform_scale else 1.0
        self.attn_map = nn.Identity()  # hook point for the re-generated map (see capture_attention)
        self.materialize = False  # True: build the full mixed map (capture); False: fast path

    @classmethod
    @functools.cache
    def configure(cls, re_norm: str = "batch", re_transform_scale: bool = False) -> type[ReAttention]:
        """A subclass with these defaults: timm's ``attn_layer`` must be a class."""
        if re_norm not in RE_NORMS:
            raise ValueError(f"re_norm={re_norm!r}: expected one of {', '.join(RE_NORMS)}")
        name = f"ReAttention_{re_norm}{'_ts' if re_transform_scale else ''}"
        return type(name, (cls,), {"re_norm": re_norm, "re_transform_scale": re_transform_scale,
                                   "__module__": __name__})

    def _norm_params(self) -> tuple[torch.Tensor | None, ...]:
        """Θ (H_out, H_in), its bias, and the BatchNorm affine weight and bias (or None)."""
        conv, bn = self.reatten_matrix, self.var_norm
        affine = self.re_norm == "batch" and bn.affine
        return (conv.weight.flatten(1), conv.bias, bn.weight if affine else None,
                bn.bias if affine else None)

    def _fold(self, stats, W, b, gamma, beta) -> tuple[torch.Tensor, torch.Tensor]:
        """Θ, its bias and the norm folded into one (H, H) weight and (H,) bias.

        ``stats``: ``(E[A_h A_k], E[A_h], n)`` of this batch for BatchNorm in training,
        None for the running statistics (or no norm).
        """
        if self.re_norm == "batch":
            bn = self.var_norm
            if stats is not None:
                gram, m, n = stats
                W32, b32 = W.to(gram.dtype), b.to(gram.dtype)
                mean = (W32 @ m + b32).to(W.dtype)
                var = ((W32 @ (gram - torch.outer(m, m))) * W32).sum(1).clamp_min(0).to(W.dtype)
                if self.training and bn.track_running_stats:
                    self._update_running_stats(mean, var, n)
            else:
                mean, var = bn.running_mean, bn.running_var
            s = torch.rsqrt(var + bn.eps)
            if gamma is not None:
                s = s * gamma
            W, b = W * s[:, None], (b - mean) * s
            if beta is not None:
                b = b + beta
        return W * self.reatten_scale, b * self.reatten_scale

    def _batch_stats_needed(self) -> bool:
        return self.re_norm == "batch" and (self.training or not self.var_norm.track_running_stats)

    def _mix(self, attn: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``W_eff · A`` (B, H, N, N) and ``b_eff`` (H,): the mixed map is their sum."""
        B, H, N, _ = attn.shape
        a = attn.reshape(B, H, N * N)
        params = self._norm_params()
        dropout = self.training and self.attn_drop.p > 0
        if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (a, *params)):
            mixed, b = _Remix.apply(a, self._fold, self._batch_stats_needed(), dropout, *params)
        else:
            stats = _head_stats(a, dropout) if self._batch_stats_needed() else None
            W, b = self._fold(stats, *params)
            mixed = _mix_heads(W, a)
        return mixed.view_as(attn), b

    @torch.no_grad()
    def _update_running_stats(self, mean: torch.Tensor, var: torch.Tensor, n: int) -> None:
        bn = self.var_norm
        bn.num_batches_tracked.add_(1)
        mom = bn.momentum if bn.momentum is not None else 1.0 / float(bn.num_batches_tracked)
        bn.running_mean.lerp_(mean.detach().to(bn.running_mean.dtype), mom)
        unbiased = var.detach().to(bn.running_var.dtype) * (n / max(n - 1, 1))
        bn.running_var.lerp_(unbiased, mom)

    def mixed_map(self, attn: torch.Tensor) -> torch.Tensor:
        """The re-generated map that multiplies V, materialised: (B, H, N, N)."""
        if self.re_norm == "layer":
            mixed = self.reatten_matrix(attn)  # (B, H, N, N)
            mixed = self.var_norm(mixed.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
            return mixed * self.reatten_scale
        mixed, b = self._mix(attn)
        return mixed + b.to(mixed.dtype)[:, None, None]

    def reference_forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None,
                          is_causal: bool = False) -> torch.Tensor:
        """The official formulation, unfused: Conv2d then the norm over the (B, H, N, N) map.

        Slower; kept as the yardstick for tests and benchmarks/reattention_cost.py.
        """
        if attn_mask is not None or is_causal:
            raise NotImplementedError("reference_forward takes no mask")
        B, N, C = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        attn = self.attn_drop(((q * self.scale) @ k.transpose(-2, -1)).softmax(dim=-1))
        mixed = self.reatten_matrix(attn)
        if self.re_norm == "layer":
            mixed = self.var_norm(mixed.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        else:
            mixed = self.var_norm(mixed)
        x = ((mixed * self.reatten_scale) @ v).transpose(1, 2).reshape(B, N, self.attn_dim)
        return self.proj_drop(self.proj(self.norm(x)))

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None,
                is_causal: bool = False) -> torch.Tensor:
        B, N, C = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # (B, H, N, d)
        q, k = self.q_norm(q), self.k_norm(k)
        attn = (q * self.scale) @ k.transpose(-2, -1)  # (B, H, N, N)
        attn = maybe_add_mask(attn, resolve_self_attn_mask(N, attn, attn_mask, is_causal))
        attn = self.attn_drop(attn.softmax(dim=-1))  # raw map; hook point for capture
        if self.materialize or self.re_norm == "layer":
            x = self.attn_map(self.mixed_map(attn)) @ v
        else:
            mixed, b = self._mix(attn)  # the bias multiplies Σⱼ Vⱼ, not the N×N map
            x = mixed @ v + b.to(v.dtype)[:, None, None] * v.sum(2, keepdim=True)
        x = x.transpose(1, 2).reshape(B, N, self.attn_dim)
        x = self.norm(x)
        return self.proj_drop(self.proj(x))


def _mix_heads(W: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    """(H, H) · (B, H, X) → (B, H, X): one batched GEMM (a broadcast matmul is 2× slower on CPU)."""
    return torch.bmm(W.to(a.dtype).expand(a.shape[0], -1, -1), a)


def _head_stats(a: torch.Tensor, dropout: bool) -> tuple[torch.Tensor, torch.Tensor, int]:
    """``(E[A_h A_k], E[A_h], n)`` over batch and positions of a (B, H, X) stack of maps, fp32."""
    B, H, X = a.shape
    n = B * X
    with torch.autocast(a.device.type, enabled=False):  # the variance cancels: fp32 at least
        a = a if a.dtype == torch.float64 else a.float()
        gram = torch.bmm(a, a.transpose(1, 2)).sum(0) / n
        if dropout:  # dropped entries break rows summing to one
            m = a.sum((0, 2)) / n
        else:
            m = torch.full((H,), 1.0 / math.isqrt(X), device=a.device, dtype=a.dtype)
    return gram, m, n


class _Remix(torch.autograd.Function):
    """Head mixing with folded BatchNorm, in as few passes over the (B, H, N²) maps as possible.

    Forward: the Gram matrix (one read) and the mixing GEMM (one read, one write).
    Backward: ∂W from one GEMM, and ∂A = W_effᵀ ∂M + (∂G + ∂Gᵀ) A / n as one GEMM plus one
    accumulating GEMM (baddbmm), where autograd alone would materialise both terms, add
    them, and copy for the broadcast matmul. The H×H folding is differentiated by
    autograd on a small side graph.
    """

    @staticmethod
    def forward(ctx, a, fold, batch_stats, dropout, *params):
        with torch.enable_grad():
            leaves = [p.detach().requires_grad_(p.requires_grad) if p is not None else None
                      for p in params]
            stats = None
            if batch_stats:
                gram, m, n = _head_stats(a.detach(), dropout)
                stats = (gram.requires_grad_(), m.requires_grad_(dropout), n)
            W, b = fold(stats, *leaves)
        with torch.autocast(a.device.type, enabled=False):
            mixed = _mix_heads(W.detach(), a)
        ctx.save_for_backward(a)
        ctx.graph = (W, b, stats, leaves)
        return mixed, b.detach()

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g_mixed, g_b):
        (a,) = ctx.saved_tensors
        W, b, stats, leaves = ctx.graph
        B, H, X = a.shape
        g_mixed = g_mixed.to(a.dtype)
        g_W = torch.bmm(g_mixed, a.transpose(1, 2)).sum(0)  # (H, H)
        wrt = [t for t in leaves if t is not None and t.requires_grad]
        if stats is not None:
            wrt += [t for t in stats[:2] if t.requires_grad]
        grads = torch.autograd.grad(
            [W, b], wrt, [g_W.to(W.dtype), g_b if g_b is not None else torch.zeros_like(b)],
            allow_unused=True, retain_graph=True) if wrt else []  # retained: gradcheck re-enters
        by_leaf = {id(t): g for t, g in zip(wrt, grads)}
        g_a = _mix_heads(W.detach().t(), g_mixed)
        if stats is not None:
            gram, m, n = stats
            g_gram = by_leaf.get(id(gram))
            if g_gram is not None:
                sym = ((g_gram + g_gram.t()) / n).to(a.dtype)
                torch.baddbmm(g_a, sym.expand(B, -1, -1), a, out=g_a)  # accumulate: no copy
            g_m = by_leaf.get(id(m))
            if g_m is not None:
                g_a = g_a + (g_m / n).to(a.dtype)[None, :, None]
        return (g_a, None, None, None,
                *(by_leaf.get(id(t)) if t is not None else None for t in leaves))


# --- variants -------------------------------------------------------------------------

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
            _check_type(f.name, getattr(self, f.name), FIELD_TYPES[f.name])
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
        for key in values:
            if key not in FIELD_TYPES:
                raise SpecError(key, values[key], "unknown model field" + did_you_mean(key, FIELD_TYPES))
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


def _check_type(name: str, value: Any, expected: Any) -> None:
    allowed = expected if isinstance(expected, tuple) else (expected,)
    if value is None and None in allowed:
        return
    for t in allowed:
        if t is None or isinstance(value, bool) != (t is bool):
            continue  # bool is an int in Python; keep them apart
        if isinstance(value, t) or (t is float and isinstance(value, int)):
            return
    names = " or ".join("null" if t is None else t.__name__ for t in allowed)
    raise SpecError(name, value, f"expected {names}, got {type(value).__name__}")


def did_you_mean(word: str, choices) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


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
