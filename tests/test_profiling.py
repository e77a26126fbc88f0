"""Cost figures against closed forms and an independent counter."""
import pytest
import timm
import torch
from torch import nn

from bench.config import ProfileConfig
from bench.errors import BenchError
from bench.models import VARIANTS, build_model
from bench.profiling import (Request, Timing, closed_form, count_macs, count_train_macs, flop_counter,
                             measure_speed, profile, time_steps)

MICRO = VARIANTS["vit_micro"]
SHAPES = {  # varied so that no term of the closed form can hide behind another
    "vit": MICRO,
    "deepvit": MICRO.replace(attention="re"),
    "deepvit_last1_layer": MICRO.replace(attention="re", re_blocks=1, re_norm="layer", depth=3),
    "odd": MICRO.replace(img_size=24, patch_size=4, embed_dim=48, num_heads=6, mlp_ratio=2.5,
                         num_classes=7, in_chans=1, qkv_bias=False),
    "deepvit_odd": MICRO.replace(img_size=24, patch_size=4, embed_dim=48, num_heads=6,
                                 mlp_ratio=2.5, attention="re", re_transform_scale=True),
}


def set_fused(model, fused):
    for m in model.modules():
        if hasattr(m, "fused_attn") and type(m).__name__ == "Attention":
            m.fused_attn = fused
    return model


def size(v):
    return (v.in_chans, v.img_size, v.img_size)


def test_closed_form_by_hand():
    # vit_micro: N = 17 tokens, D = 32, hidden 64, 4 heads, 4 blocks, 10 classes
    block = 17 * 32 * 96 + 2 * 17 * 17 * 32 + 17 * 32 * 32 + 2 * 17 * 32 * 64
    expected = 16 * 192 * 32 + 4 * block + 32 * 10
    assert closed_form(MICRO)["matmul_macs"] == expected
    assert closed_form(MICRO.replace(attention="re"))["matmul_macs"] == expected + 4 * 17 * 17 * 16
    assert closed_form(MICRO)["norm_macs"] == 9 * 17 * 32 * 5


@pytest.mark.parametrize("name", list(SHAPES))
@pytest.mark.parametrize("fused", [True, False])
def test_fvcore_count_equals_closed_form(name, fused):
    v = SHAPES[name]
    macs, acts = count_macs(set_fused(build_model(v), fused), size(v))
    assert macs == closed_form(v)["macs"]  # exact; the requirement is 0.5%
    assert acts > 0


@pytest.mark.parametrize("name", list(SHAPES))
def test_flop_counter_mode_agrees_on_the_matmuls(name):
    """PyTorch's counter sees kernels, not the traced graph: an independent check."""
    v = SHAPES[name]
    model = build_model(v).eval()
    counter = flop_counter()
    with counter, torch.no_grad():
        model(torch.zeros(1, *size(v)))
    assert counter.get_total_flops() == 2 * closed_form(v)["matmul_macs"]


def test_vit_base_counts_attention():
    """DESIGN.md: fvcore alone says 16.87 GMACs for ViT-B/16; attention makes it 17.58."""
    model = timm.create_model("vit_base_patch16_224")
    assert model.blocks[0].attn.fused_attn  # timm's default: SDPA, invisible to plain fvcore
    macs, _ = count_macs(model, (3, 224, 224))
    assert round(macs / 1e9, 2) == 17.58
    v = MICRO.replace(img_size=224, patch_size=16, embed_dim=768, depth=12, num_heads=12,
                      mlp_ratio=4.0, num_classes=1000)
    assert macs == closed_form(v)["macs"]


@pytest.mark.parametrize("fused", [True, False])
def test_train_step_macs_are_counted_not_assumed(fused):
    v = MICRO
    model = set_fused(build_model(v), fused)
    cf = closed_form(v)
    patch = v.num_patches * v.in_chans * v.patch_size ** 2 * v.embed_dim
    # backward = 2× every matmul, but the image needs no gradient: no input grad for the patch conv
    explicit = 3 * cf["matmul_macs"] - patch
    train = count_train_macs(model, size(v))
    if fused:  # flash-attention backward recomputes QKᵀ: one more N²·D per block
        assert train == explicit + v.depth * v.seq_len ** 2 * v.embed_dim
    else:
        assert train == explicit


def test_reattention_train_macs_include_batchnorm_statistics():
    v = MICRO.replace(attention="re")
    cf = closed_form(v)
    patch = v.num_patches * v.in_chans * v.patch_size ** 2 * v.embed_dim
    mixing = v.seq_len ** 2 * v.num_heads ** 2
    # the Gram matrix of the maps for the BatchNorm statistics (forward), and its
    # backward as one accumulating GEMM: 2 more N²·H² per block; the rest is H×H algebra
    expected = 3 * cf["matmul_macs"] - patch + 2 * v.depth * mixing
    assert count_train_macs(build_model(v), size(v)) == pytest.approx(expected, rel=0.005)


def test_timing_quantiles_and_call_count():
    t = Timing([4.0, 1.0, 3.0, 2.0, 5.0])
    assert t.median == 3.0 and t.quantile(0.0) == 1.0 and t.quantile(1.0) == 5.0
    assert t.quantile(0.1) == pytest.approx(1.4)
    calls = []
    timing = time_steps(lambda: calls.append(1), warmup=3, iters=7, device=torch.device("cpu"))
    assert len(calls) == 10 and len(timing.samples) == 7 and all(s >= 0 for s in timing.samples)


class OOMAbove(nn.Module):
    """Raises CUDA's out-of-memory error for batches larger than ``limit``."""

    def __init__(self, limit):
        super().__init__()
        self.limit, self.lin, self.num_classes = limit, nn.Linear(4, 3), 3

    def forward(self, x):
        if x.shape[0] > self.limit:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return self.lin(x)


def test_out_of_memory_retries_at_half_batch():
    retries = []
    for mode in ("infer", "train"):
        r = measure_speed(OOMAbove(5), (4,), ProfileConfig(dtype="fp32", batch_size=32, warmup=1, iters=2), mode=mode,
                          device=torch.device("cpu"), on_retry=retries.append)
        assert r[f"{mode}_batch_size"] == 4
    assert len(retries) == 6 and "retrying at batch size 4" in retries[-1]


def test_out_of_memory_at_batch_one_is_a_clear_error():
    with pytest.raises(BenchError, match="out of memory .* at batch size 1"):
        measure_speed(OOMAbove(0), (4,), ProfileConfig(dtype="fp32", batch_size=2, warmup=0, iters=1), mode="infer",
                      device=torch.device("cpu"))


def test_profile_record():
    r = profile("deepvit_micro", {"depth": 2}, Request(batch_size=4, warmup=1, iters=3), device="cpu")
    v = VARIANTS["deepvit_micro"].replace(depth=2)
    assert r["depth"] == 2 and r["attention"] == "re"
    assert r["infer_gmacs"] * 1e9 == pytest.approx(closed_form(v)["macs"])
    assert r["param_count"] * 1e6 == closed_form(v)["params"]
    assert r["infer_step_time_p10"] <= r["infer_step_time"] <= r["infer_step_time_p90"]
    assert r["infer_samples_per_sec"] == pytest.approx(4 / (r["infer_step_time"] / 1e3))
    assert r["train_batch_size"] == 4 and r["train_peak_mem_mb"] is None  # CPU: not measured
    assert r["device"] == "cpu" and r["torch_version"] == torch.__version__
    assert r["timm_version"] == timm.__version__ and r["dtype"] == "fp32"


def test_profile_bf16_and_timm_names():
    r = profile("test_vit", None, Request(dtype="bf16", batch_size=2, warmup=0, iters=1), device="cpu")
    assert r["dtype"] == "bf16" and r["infer_gmacs"] > 0 and "depth" not in r


def test_profile_rejects_bad_requests():
    with pytest.raises(BenchError, match="unknown model 'vit_mikro'.*did you mean 'vit_micro'"):
        profile("vit_mikro")
    with pytest.raises(BenchError, match="--dtype fp16"):
        profile("vit_micro", None, Request(dtype="fp16"))
    if not torch.cuda.is_available():
        with pytest.raises(BenchError, match="CUDA is not available"):
            profile("vit_micro", device="cuda")


def test_a_timm_vit_built_at_another_size_is_counted_at_that_size():
    """`bench profile vit_tiny_patch16_224 --set img_size=32` fed it 224² images (its pretrained
    config's) and failed with an AssertionError: the model's own patch embedding says its size."""
    from bench.profiling import profile
    from bench.variant import Variant
    record = profile("vit_tiny_patch16_224", {"img_size": 32}, Request(speed=False), device="cpu")
    same = Variant(img_size=32, patch_size=16, embed_dim=192, depth=12, num_heads=3, mlp_ratio=4.0, num_classes=1000)
    assert record["img_size"] == 32
    assert record["infer_gmacs"] == pytest.approx(closed_form(same)["macs"] / 1e9, rel=1e-9)
