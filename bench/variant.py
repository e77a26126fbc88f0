"""The architecture spec: one ViT/DeepViT variant in timm's vocabulary, validated on
construction. Pure data (no torch), so specs, ledgers and reports load without it;
``bench.models.build_model`` turns a variant into a timm ``VisionTransformer``.
"""
from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Iterable, Mapping

from bench.console import fmt
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


# --- names: how every command and report calls a variant -------------------------------------

LABEL_ORDER = ["depth", "attention", "embed_dim"]  # the paper's axes first: labels, tables, sort order
LABEL_ORDER += [f for f in FIELD_TYPES if f not in LABEL_ORDER]


def is_missing(value: Any) -> bool:
    """None, pandas' NA or NaN: a cell with no figure (pandas not imported: specs load without it)."""
    return value is None or type(value).__name__ == "NAType" or (isinstance(value, float) and math.isnan(value))


def show_value(field: str, value: Any) -> str:
    """A variant field's value as labels and table cells show it."""
    if is_missing(value):
        return "all" if field == "re_blocks" else "–"  # re_blocks None: every block
    return fmt(value)


def varying_fields(rows: Any) -> list[str]:
    """The variant fields, in LABEL_ORDER, that take more than one value among ``rows``: Variants,
    mappings, or a DataFrame of records (None and NaN count as a value). Linear in the rows."""
    if hasattr(rows, "columns"):  # a DataFrame: pandas counts it column by column
        return [f for f in LABEL_ORDER if f in rows and rows[f].nunique(dropna=False) > 1]
    seen: dict[str, set[Any]] = {f: set() for f in LABEL_ORDER}
    for row in rows:
        get = row.get if isinstance(row, Mapping) else lambda f, r=row: getattr(r, f, None)
        for f in LABEL_ORDER:
            value = get(f)
            seen[f].add("–" if is_missing(value) else value)
    return [f for f in LABEL_ORDER if len(seen[f]) > 1]


def variant_label(row: Any, fields: Iterable[str], seed: int | None = None) -> str:
    """``"depth=4 attention=re"``: the ``fields`` (``varying_fields``', over the variants it is told apart
    from) that mean something for this variant — re-attention options only with re-attention —
    and the seed when given; ``base`` when nothing tells it apart. The one label of a variant: the
    runner's progress lines, report.md and its plots, ``bench time``, ``bench plan`` and searches."""
    get = row.get if isinstance(row, Mapping) else lambda f: getattr(row, f, None)
    shown = [f"{f}={show_value(f, get(f))}" for f in fields
             if (get(f) is not None or f == "re_blocks") and (not is_re_option(f) or get("attention") == "re")]
    text = " ".join(shown) or "base"
    return text if seed is None else f"{text} seed={seed}"
