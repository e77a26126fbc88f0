"""Every cost figure bench shows, one definition each: MACs, train MACs, FLOPs, PMACs and the
plan's estimates. The report, ``bench plan``, ``bench calibrate`` and MFU all read them here.

- **Forward MACs** (``infer_gmacs``): fvcore's count of one forward pass, per image (timm
  benchmark.py's method, MACs called "flops" by fvcore) with two fixes: fused
  ``scaled_dot_product_attention`` is counted (fvcore has no handle and counts it as zero), and a
  ``matmul`` with a broadcast batch (re-attention's head mixing) counts the batch. LayerNorms at
  fvcore's 5 MACs per element. ``closed_form(v)["macs"]`` is the same number from the
  architecture alone; tests hold the two equal.
- **Train MACs** (``train_gmacs``): the matrix products of one forward and backward pass, per
  image, as the model's mathematics defines them: every product forward, then its two gradients
  — except the patch embedding's input gradient, which nobody computes (the image needs none).
  No recomputation (flash attention recomputes QKᵀ in its backward; PaLM's MFU leaves that out
  too), no implementation shortcut (re-attention's BatchNorm statistics as a Gram matrix), no
  elementwise work. So a model costs the same whichever attention kernel times it:
  ``train_macs(v) = 3 × matmul MACs − patch-embedding MACs``, and ``count_train_macs`` counts
  it independently with PyTorch's ``FlopCounterMode`` on the model's math formulation (SDPA's
  math backend, re-attention's ``reference_forward``); tests hold the two equal.
- **FLOPs** = 2 × MACs (``FLOPS_PER_MAC``); **train TFLOP/s** = 2 × train MACs × samples/s;
  **MFU** = that over the measured peak (bench.utilisation).
- **Train PMACs** of a trial = train MACs per image × the images it trained (steps × batch
  size; training drops the last partial batch); the plan's estimate is the same product before
  anything runs.

torch and fvcore are imported on use: specs and reports load without them.
"""
from __future__ import annotations

import contextlib
import copy
import math
from typing import TYPE_CHECKING, Any, Iterator

from bench.data.folders import split_sizes
from bench.spec import Sweep
from bench.variant import Variant

if TYPE_CHECKING:
    from torch import nn

FLOPS_PER_MAC = 2  # a multiply-accumulate is two floating-point operations
LAYERNORM_MACS_PER_ELEMENT = 5  # fvcore's convention for an affine norm
# how reports say it, in one place
TRAIN_MACS_SAID = ("train MACs per image: the matrix products of one forward and backward pass as the model's "
                   "math defines them (no recomputation; bench.costs)")
TRAIN_PMACS_SAID = f"train PMACs: {TRAIN_MACS_SAID} × the images trained, summed over the trials"
MFU_SAID = (f"Train TFLOP/s: 2 FLOPs per train MAC ({TRAIN_MACS_SAID}: PaLM's model FLOPs) at the train "
            "samples/s shown; MFU: its share of this device's measured GEMM peak in the same dtype "
            "(bench.utilisation).")


# --- per image, from the architecture ----------------------------------------------------------

def closed_form(v: Variant) -> dict[str, int]:
    """MACs per image and parameters of ``v``, from its architecture alone.

    ``matmul_macs``: patch embedding, QKV, QKᵀ, AV, head mixing (re-attention blocks:
    N²·H²), output projection, MLP and head. ``norm_macs``: the LayerNorms, at fvcore's
    5 per element (``re_norm='layer'`` adds one over the heads of the N×N map;
    ``'batch'`` is folded into the mixing weights and costs nothing per element).
    ``macs``: the two together (the forward MACs). ``train_macs``: forward + backward (the
    module's definition). Softmax, GELU, residual adds and biases are not counted, as fvcore
    does not.
    """
    N, D, H, hid = v.seq_len, v.embed_dim, v.num_heads, v.mlp_hidden
    patch = v.num_patches * v.in_chans * v.patch_size ** 2 * D  # patch embedding (a conv)
    per_block = N * D * 3 * D + 2 * N * N * D + N * D * D + 2 * N * D * hid
    matmul = patch + v.depth * per_block + v.n_re_blocks * N * N * H * H + D * v.num_classes  # head: class token
    norms = (2 * v.depth + 1) * N * D * LAYERNORM_MACS_PER_ELEMENT
    if v.re_norm == "layer":  # LayerNorm over the heads of every (query, key) pair
        norms += v.n_re_blocks * N * N * H * LAYERNORM_MACS_PER_ELEMENT
    return {"matmul_macs": matmul, "norm_macs": norms, "macs": matmul + norms,
            "train_macs": 3 * matmul - patch, "params": _params(v)}


def _params(v: Variant) -> int:
    D, H, hid = v.embed_dim, v.num_heads, v.mlp_hidden
    block = (2 * D  # norm1
             + 3 * D * D + (3 * D if v.qkv_bias else 0) + D * D + D  # qkv, proj
             + 2 * D  # norm2
             + D * hid + hid + hid * D + D)  # mlp
    re = H * H + H + {"batch": 2 * H, "layer": 2 * H, "none": 0}[v.re_norm]
    return (v.in_chans * v.patch_size ** 2 * D + D  # patch embedding
            + D + v.seq_len * D  # class token, position embedding
            + v.depth * block + v.n_re_blocks * re
            + 2 * D + D * v.num_classes + v.num_classes)  # final norm, head


def train_macs(v: Variant) -> int:
    """Train MACs per image of ``v`` (forward + backward; the module's definition)."""
    return closed_form(v)["train_macs"]


# --- per image, counted on a built model ----------------------------------------------------------

def param_count(model: nn.Module) -> float:
    """Parameters in millions (timm benchmark.py's ``param_count``)."""
    return sum(p.numel() for p in model.parameters()) / 1e6


def _shape(value) -> list[int]:
    from fvcore.nn.jit_handles import get_shape  # fvcore on use: its import costs ~1 s
    return get_shape(value)


def _matmul_macs(inputs, outputs) -> int:
    a, out = _shape(inputs[0]), _shape(outputs[0])
    return math.prod(out) * a[-1]  # every output element is a K-long dot product


def _sdpa_macs(inputs, outputs) -> int:
    q, k, v = (_shape(x) for x in inputs[:3])
    return math.prod(q[:-1]) * k[-2] * (q[-1] + v[-1])  # QKᵀ then AV


def _sdpa_activations(inputs, outputs) -> int:
    q, k = _shape(inputs[0]), _shape(inputs[1])
    return math.prod(q[:-1]) * k[-2] + math.prod(_shape(outputs[0]))  # the map and the output


def count_macs(model: nn.Module, input_size: tuple[int, ...]) -> tuple[int, int]:
    """fvcore forward MACs and activations for one image of ``input_size`` (C, H, W)."""
    import warnings

    import torch
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # fvcore uses torch.jit
        from fvcore.nn import ActivationCountAnalysis, FlopCountAnalysis  # on use, as above

    model = model.eval()
    param = next(model.parameters())
    x = torch.zeros(1, *input_size, device=param.device, dtype=param.dtype)
    handles = {"aten::matmul": _matmul_macs, "aten::scaled_dot_product_attention": _sdpa_macs}
    counts = []
    for analysis, extra in ((FlopCountAnalysis, handles),
                            (ActivationCountAnalysis, {"aten::scaled_dot_product_attention": _sdpa_activations})):
        a = analysis(model, x).set_op_handle(**extra)
        a.unsupported_ops_warnings(False)
        a.uncalled_modules_warnings(False)
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # fvcore traces with torch.jit
            counts.append(int(a.total()))
    return counts[0], counts[1]


@contextlib.contextmanager
def math_formulation(model: nn.Module) -> Iterator[nn.Module]:
    """A copy of ``model`` that computes its mathematics plainly, and PyTorch's FlopCounterMode
    counting it: attention through SDPA's math backend (matmuls, no fused kernel that recomputes),
    re-attention through its ``reference_forward`` (the official Conv2d-and-norm formulation, no
    Gram-matrix statistics). Yields the copy; the counter is ``copy.counter``."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    plain = copy.deepcopy(model)
    for module in plain.modules():
        reference = getattr(module, "reference_forward", None)
        if callable(reference):
            module.forward = reference
    plain.counter = FlopCounterMode(display=False)
    with sdpa_kernel(SDPBackend.MATH), plain.counter:
        yield plain


def count_matmul_macs(model: nn.Module, input_size: tuple[int, ...], *, train: bool) -> int:
    """MACs per image of the matrix products of one forward pass (``train``: forward and
    backward, in training mode), counted by FlopCounterMode on the math formulation."""
    import torch

    param = next(model.parameters())
    x = torch.randn(2, *input_size, device=param.device, dtype=param.dtype)
    with math_formulation(model.train(train)) as plain:
        if train:
            plain(x).float().logsumexp(-1).sum().backward()
        else:
            with torch.no_grad():
                plain(x)
    return plain.counter.get_total_flops() // FLOPS_PER_MAC // len(x)


def count_train_macs(model: nn.Module, input_size: tuple[int, ...]) -> int:
    """Train MACs per image of ``model`` (the module's definition), counted: for a bench variant
    equal to ``train_macs(variant)``; for a timm model by name, the only figure there is."""
    was = model.training
    try:
        return count_matmul_macs(model, input_size, train=True)
    finally:
        model.train(was)


# --- rates and totals --------------------------------------------------------------------------

def train_tflops(train_gmacs: Any, samples_per_sec: Any) -> Any:
    """Achieved train TFLOP/s of a model of ``train_gmacs`` train GMACs per image training at
    ``samples_per_sec`` (numbers or pandas columns alike)."""
    return FLOPS_PER_MAC * train_gmacs * 1e9 * samples_per_sec / 1e12


def images_trained(n_train: int, batch_size: int, epochs: int) -> int:
    """Images one trial trains on: whole batches only (training drops the last partial batch)."""
    return epochs * (n_train // batch_size) * batch_size


def trained_pmacs(train_gmacs: Any, steps: Any, batch_size: Any) -> Any:
    """A trial's train PMACs from its record: train GMACs per image × steps × batch size."""
    return train_gmacs * steps * batch_size / 1e6


def planned_train_pmacs(sweep: Sweep, v: Variant) -> float:
    """The train PMACs one trial of ``v`` will count, before it runs: ``train_macs(v)`` × the
    images it will train (``images_trained``). Equal to what its record will say."""
    if sweep.train is None:
        return 0.0
    t = sweep.train
    return train_macs(v) * images_trained(split_sizes(sweep.data)[0], t.batch_size, t.epochs) / 1e15


def estimated_macs(sweep: Sweep, v: Variant, device: Any) -> float:
    """Every MAC one trial of ``v`` runs, for ``bench plan``'s time estimate: each epoch's
    training (train MACs) and evaluation (forward MACs), and the profiling steps (warm-up and
    timed, inference and train)."""
    cf = closed_form(v)
    work = 0.0
    if sweep.train is not None:
        t = sweep.train
        n_train, n_test = split_sizes(sweep.data)
        work += images_trained(n_train, t.batch_size, t.epochs) * cf["train_macs"] + t.epochs * n_test * cf["macs"]
    if sweep.profile.speed:
        work += sum(sweep.profile.steps(device)) * sweep.profile.batch_size * (cf["train_macs"] + cf["macs"])
    return work
