"""Re-attention (DeepViT, Zhou et al. 2021, arXiv 2103.11886), a drop-in for timm's Attention.

``RA(Q,K,V) = Norm(Θᵀ softmax(QKᵀ/√d)) V``: Θ (H×H, plus bias) mixes the H heads'
attention maps after the softmax, then a norm over heads. Passed to timm's
``VisionTransformer`` as ``attn_layer`` (see bench.models).
"""
from __future__ import annotations

import functools
import math

import torch
from timm.layers import Attention
from timm.layers.attention import maybe_add_mask, resolve_self_attn_mask
from torch import nn

from bench.variant import RE_NORMS


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
        if torch.compiler.is_compiling():  # _Remix's nested autograd.grad cannot be traced: plain ops, fused
            stats = _head_stats(a, dropout) if self._batch_stats_needed() else None  # by inductor instead
            W, b = self._fold(stats, *params)
            return _mix_heads(W, a).view_as(attn), b
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

    def _maps(self, x: torch.Tensor, attn_mask: torch.Tensor | None, is_causal: bool):
        """The raw attention maps (B, H, N, N), after softmax and dropout, and V (B, H, N, d)."""
        B, N, C = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        q, k = self.q_norm(q), self.k_norm(k)
        attn = (q * self.scale) @ k.transpose(-2, -1)
        attn = maybe_add_mask(attn, resolve_self_attn_mask(N, attn, attn_mask, is_causal))
        return self.attn_drop(attn.softmax(dim=-1)), v  # attn_drop: hook point for raw capture

    def _project(self, x: torch.Tensor) -> torch.Tensor:
        """(B, H, N, d) heads → (B, N, C) output."""
        B, H, N, d = x.shape
        return self.proj_drop(self.proj(self.norm(x.transpose(1, 2).reshape(B, N, H * d))))

    def reference_forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None,
                          is_causal: bool = False) -> torch.Tensor:
        """The official formulation, unfused: Conv2d then the norm over the (B, H, N, N) map.

        Slower; kept as the yardstick for tests and benchmarks/reattention_cost.py.
        """
        attn, v = self._maps(x, attn_mask, is_causal)
        mixed = self.reatten_matrix(attn)
        if self.re_norm == "layer":
            mixed = self.var_norm(mixed.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        else:
            mixed = self.var_norm(mixed)
        return self._project((mixed * self.reatten_scale) @ v)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None,
                is_causal: bool = False) -> torch.Tensor:
        attn, v = self._maps(x, attn_mask, is_causal)
        if self.materialize or self.re_norm == "layer":
            return self._project(self.attn_map(self.mixed_map(attn)) @ v)
        mixed, b = self._mix(attn)  # the bias multiplies Σⱼ Vⱼ, not the N×N map
        return self._project(mixed @ v + b.to(v.dtype)[:, None, None] * v.sum(2, keepdim=True))


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
        by_leaf = {id(t): g for t, g in zip(wrt, grads, strict=True)}
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
