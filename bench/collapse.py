"""Attention-collapse metrics (DeepViT, Zhou et al. 2021, arXiv 2103.11886, Fig. 1).

``A^p_h`` is block p's attention map for head h: (N, N), rows = queries, after the
softmax (for re-attention, by default the re-generated map that multiplies V). The
column ``A^p_{h,:,t}`` says how much token t feeds every output token.

- cross-layer similarity ``M^{p,q}_{h,t} = cos(A^p_{h,:,t}, A^q_{h,:,t})``;
  ``similarity[p, q]`` is its mean over images, heads and tokens;
- ``similar_ratio[k][p]``: share of (image, head, token) with ``M^{p,p+k} > threshold``;
- block p >= 1 is *similar* when ``similarity[p-1, p] > threshold``; ``similar_blocks``
  counts them (the paper's "#Similar Blocks");
- cross-head similarity in block p: mean of ``cos(A^p_{h,:,t}, A^p_{g,:,t})`` over
  head pairs h != g, images and tokens, and the share above ``head_threshold``.

All are sums over images, accumulated chunk by chunk, so the result does not depend on
how the evaluation batch is split. A column of zeros has cosine 0 with anything.
Metrics only: ``bench.api`` runs them on a named model or a sweep's trial.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable

import torch
from torch import nn

from bench.config import CollapseConfig
from bench.models import capture_attention, capture_blocks

KS = (1, 2, 3)


@dataclass
class CollapseStats:
    """Running sums over an evaluation batch; ``result()`` gives the metrics."""

    threshold: float = CollapseConfig.threshold  # the thresholds' one home: CollapseConfig
    head_threshold: float = CollapseConfig.head_threshold
    gram: torch.Tensor | None = None          # (D, D) Σ cos over (b, h, t), float64
    above: dict[int, torch.Tensor] = field(default_factory=dict)  # k -> (D - k,) counts of M^{p,p+k} > thr
    head_sum: torch.Tensor | None = None      # (D,) Σ cos over head pairs
    head_above: torch.Tensor | None = None    # (D,) counts above head_threshold
    columns: int = 0                          # (b, h, t) triples seen per block
    head_pairs: int = 0                       # (b, h != g, t) seen per block

    def update(self, maps: Iterable[torch.Tensor]) -> None:
        """Add one chunk: one (B, H, N, N) map per block, in block order."""
        cols = torch.stack([_unit_columns(a) for a in maps])  # (D, B, H, N_q, N_t)
        d, b, h, _, n = cols.shape
        flat = cols.flatten(1)
        gram = (flat @ flat.T).double()                        # Σ_{b,h,i,t} Â^p Â^q = Σ_{b,h,t} M^{p,q}
        self.gram = gram if self.gram is None else self.gram + gram
        off = ~torch.eye(h, dtype=torch.bool, device=cols.device)
        head_sum, head_above = torch.zeros(d, dtype=torch.float64), torch.zeros(d, dtype=torch.float64)
        for p in range(d):  # block by block: temporaries stay one block's size
            for k in KS:
                if p + k < d:
                    m = (cols[p] * cols[p + k]).sum(-2)       # (B, H, N_t): M^{p,p+k}
                    self.above.setdefault(k, torch.zeros(d - k, dtype=torch.float64))
                    self.above[k][p] += (m > self.threshold).sum().item()
            between = torch.einsum("bhit,bgit->bhgt", cols[p], cols[p])[:, off]  # (B, H(H-1), N_t)
            head_sum[p] = between.double().sum()
            head_above[p] = (between > self.head_threshold).sum().item()
        self.head_sum = head_sum if self.head_sum is None else self.head_sum + head_sum
        self.head_above = head_above if self.head_above is None else self.head_above + head_above
        self.columns += b * h * n
        self.head_pairs += b * h * (h - 1) * n

    def result(self) -> dict[str, Any]:
        if self.gram is None:
            raise ValueError("no attention maps were added")
        sim = (self.gram / self.columns).float()
        d = sim.shape[0]
        adjacent = [float(sim[p - 1, p]) for p in range(1, d)]
        out: dict[str, Any] = {
            "similarity": sim.tolist(),
            "adjacent_similarity": adjacent,
            "similar_ratio": {str(k): (self.above[k] / self.columns).tolist() if k in self.above else []
                              for k in KS},
            "similar_blocks": sum(s > self.threshold for s in adjacent),
            "adjacent_similarity_mean": sum(adjacent) / len(adjacent) if adjacent else None,
            "threshold": self.threshold, "head_threshold": self.head_threshold,
        }
        if self.head_pairs:
            head = (self.head_sum / self.head_pairs).tolist()
            out.update(cross_head_similarity=head,
                       cross_head_share=(self.head_above / self.head_pairs).tolist(),
                       cross_head_similarity_mean=sum(head) / len(head))
        else:  # one head: no pairs
            out.update(cross_head_similarity=[], cross_head_share=[], cross_head_similarity_mean=None)
        return out


def _unit_columns(a: torch.Tensor) -> torch.Tensor:
    """Each column ``a[b, h, :, t]`` scaled to unit length (zero columns stay zero)."""
    a = a.float()
    norm = a.norm(dim=-2, keepdim=True)
    return a / torch.where(norm > 0, norm, torch.ones_like(norm))  # tiny columns normalised too


@dataclass
class TokenStats:
    """Collapse measured on each block's output tokens, the same way for every attention type
    (running sums over images; ``result()`` gives the means). Per image, over its patch
    tokens X (N × D) in block p:

    - ``cka[p][q]``: linear CKA (Kornblith et al. 2019) between blocks p and q with the tokens
      as samples: ⟨K_p, K_q⟩ / (‖K_p‖ ‖K_q‖), K = X̃X̃ᵀ with X̃ centred over tokens. 1 when the
      tokens' geometry is the same up to rotation and scale. (Raghu et al. 2021 compare ViT
      layers this way across images; here within each image, so it needs no images at once.)
    - ``token_uniformity[p]``: mean cosine between different patch tokens (over-smoothing,
      Gong et al. 2021): 1 when all tokens point the same way, 0 when orthogonal.
    - ``rank_residual[p]``: ‖X − 1·x̄ᵀ‖ / ‖X‖, the relative distance to the nearest matrix
      with identical rows (rank collapse, Dong et al. 2021): 0 when every token is the same.

    A zero Gram (identical tokens) has CKA 0 with anything, as a zero column has cosine 0.
    """

    cka_sum: torch.Tensor | None = None       # (D, D) Σ over images, float64
    uniformity_sum: torch.Tensor | None = None  # (D,)
    residual_sum: torch.Tensor | None = None    # (D,)
    images: int = 0

    def update(self, outputs: list[torch.Tensor], prefix: int = 1) -> None:
        """Add one chunk: one (B, N, D) output per block, in block order; the first ``prefix``
        tokens (class token) left out."""
        x = torch.stack([o[:, prefix:].float() for o in outputs])    # (P, B, N, D)
        centred = x - x.mean(-2, keepdim=True)
        gram = centred @ centred.transpose(-1, -2)                    # (P, B, N, N)
        flat = gram.flatten(2)                                         # (P, B, N²)
        norm = flat.norm(dim=-1)                                       # (P, B)
        unit = flat / torch.where(norm > 0, norm, torch.ones_like(norm)).unsqueeze(-1)
        cka = torch.einsum("pbk,qbk->pq", unit, unit).double()         # Σ_b CKA_b(p, q)
        tokens = x.norm(dim=-1, keepdim=True)
        u = x / torch.where(tokens > 0, tokens, torch.ones_like(tokens))
        n = x.shape[-2]
        uniform = ((u.sum(-2).pow(2).sum(-1) - (tokens.squeeze(-1) > 0).sum(-1)) / max(n * (n - 1), 1))
        whole = x.flatten(2).norm(dim=-1)
        residual = centred.flatten(2).norm(dim=-1) / torch.where(whole > 0, whole, torch.ones_like(whole))
        self.cka_sum = cka if self.cka_sum is None else self.cka_sum + cka
        sums = uniform.double().sum(-1), residual.double().sum(-1)    # (P,) each
        self.uniformity_sum = sums[0] if self.uniformity_sum is None else self.uniformity_sum + sums[0]
        self.residual_sum = sums[1] if self.residual_sum is None else self.residual_sum + sums[1]
        self.images += x.shape[1]

    def result(self) -> dict[str, Any]:
        if self.cka_sum is None:
            raise ValueError("no block outputs were added")
        cka = (self.cka_sum / self.images).float()
        adjacent = [float(cka[p - 1, p]) for p in range(1, cka.shape[0])]
        uniformity = (self.uniformity_sum / self.images).tolist()
        residual = (self.residual_sum / self.images).tolist()
        return {"cka": cka.tolist(), "cka_adjacent": adjacent, "token_uniformity": uniformity,
                "rank_residual": residual,
                "cka_adjacent_mean": sum(adjacent) / len(adjacent) if adjacent else None,
                "token_uniformity_last": uniformity[-1], "rank_residual_last": residual[-1]}


@torch.inference_mode()
def analyse(model: nn.Module, images: torch.Tensor, cfg: CollapseConfig | None = None, *, chunk: int | None = None,
            budget_mb: float = 256) -> dict[str, Any]:
    """Run ``images`` through ``model`` in chunks (eval mode) and measure attention collapse as
    ``cfg`` says (default: CollapseConfig's, the paper's thresholds): the map metrics
    (``CollapseStats``) and the token metrics (``TokenStats``), one dict.

    ``cfg.which='v'``: the map that multiplies V (re-generated for re-attention blocks);
    ``'raw'``: the softmax maps. Memory is bounded: ``chunk`` images at a time (default:
    as many as keep one copy of every block's maps under ``budget_mb``).
    """
    if chunk is None:
        blocks = [m for m in model.modules() if hasattr(m, "num_heads") and hasattr(m, "qkv")]
        tokens = _tokens(model, images)
        # at the peak: the captured maps, their unit-column copies, and the stack of those
        per_image = 3 * sum(m.num_heads for m in blocks) * tokens * tokens * 4 / 2**20
        chunk = max(1, int(budget_mb // max(per_image, 1e-9)))
    was_training = model.training
    model.eval()
    cfg = cfg or CollapseConfig()
    stats, tokens = CollapseStats(cfg.threshold, cfg.head_threshold), TokenStats()
    prefix = getattr(model, "num_prefix_tokens", 1)
    try:
        with capture_attention(model, which=cfg.which) as maps, capture_blocks(model) as outputs:
            for start in range(0, len(images), chunk):
                maps.clear()
                outputs.clear()
                model(images[start:start + chunk])
                stats.update(maps)
                maps.clear()
                tokens.update(outputs, prefix)
                outputs.clear()
    finally:
        model.train(was_training)
    return {**stats.result(), **tokens.result()}


def _tokens(model: nn.Module, images: torch.Tensor) -> int:
    """Sequence length of ``model`` on ``images`` (patches + prefix tokens), from timm's attributes."""
    grid = getattr(getattr(model, "patch_embed", None), "grid_size", None)
    if grid is None:
        return images.shape[-1] * images.shape[-2]  # a bound, not timm: be safe
    return grid[0] * grid[1] + getattr(model, "num_prefix_tokens", 1)


def per_block_rows(result: dict[str, Any], attention: list[str]) -> list[dict[str, Any]]:
    """One row per block: what ``bench collapse`` prints."""
    rows = []
    for p in range(len(result["similarity"])):
        row = {"block": p, "attention": attention[p] if p < len(attention) else "",
               "sim_prev": result["adjacent_similarity"][p - 1] if p else None}
        for k, ratios in result["similar_ratio"].items():
            row[f"share_k{k}"] = ratios[p - int(k)] if p >= int(k) else None
        if result["cross_head_similarity"]:
            row.update(cross_head=result["cross_head_similarity"][p], cross_head_share=result["cross_head_share"][p])
        if "cka" in result:  # token metrics (absent in results stored before they existed)
            row.update(cka_prev=result["cka_adjacent"][p - 1] if p else None,
                       uniformity=result["token_uniformity"][p], rank_residual=result["rank_residual"][p])
        rows.append(row)
    return rows
