"""Model semantics: re-attention, variants, registration, attention capture."""
import copy

import pytest
import timm
import torch
from timm.layers import Attention

import bench
from bench.costs import closed_form, param_count
from bench.errors import SpecError
from bench.models import VARIANTS, Variant, build_model, capture_attention
from bench.reattention import ReAttention

MICRO = VARIANTS["vit_micro"]


@pytest.mark.parametrize("name,expected", [
    ("vit_16b", 24.5), ("vit_24b", 36.3), ("vit_32b", 48.1),
    ("deepvit_16b", 24.5), ("deepvit_24b", 36.3), ("deepvit_32b", 48.1),
])
def test_paper_models_match_official_parameter_counts(name, expected):
    with torch.device("meta"):  # full size, no memory
        model = timm.create_model(name)
    assert param_count(model) == pytest.approx(expected, rel=0.005)
    assert param_count(model) * 1e6 == closed_form(VARIANTS[name])["params"]
    n_re = sum(isinstance(b.attn, ReAttention) for b in model.blocks)
    assert n_re == (len(model.blocks) if name.startswith("deepvit") else 0)


def test_paper_config_is_the_official_one():
    v = VARIANTS["deepvit_24b"]
    assert (v.img_size, v.patch_size, v.embed_dim, v.num_heads, v.mlp_ratio, v.qkv_bias,
            v.num_classes, v.depth) == (224, 16, 384, 12, 3.0, True, 1000, 24)
    with torch.device("meta"):
        model = timm.create_model("deepvit_24b")
    assert model.blocks[0].norm1.eps == 1e-6


def test_reattention_with_identity_theta_is_self_attention():
    torch.manual_seed(0)
    attn = Attention(32, num_heads=4, qkv_bias=True)
    re = ReAttention(32, num_heads=4, qkv_bias=True, re_norm="none")
    re.load_state_dict(attn.state_dict(), strict=False)
    with torch.no_grad():
        re.reatten_matrix.weight.copy_(torch.eye(4)[:, :, None, None])
        re.reatten_matrix.bias.zero_()
    x = torch.randn(3, 17, 32)
    for fused in (True, False):
        attn.fused_attn = fused
        torch.testing.assert_close(re(x), attn(x), rtol=1e-5, atol=1e-6)
    with torch.no_grad():  # a non-trivial Θ changes the output
        re.reatten_matrix.weight.copy_(torch.randn(4, 4, 1, 1))
    assert (re(x) - attn(x)).abs().max() > 1e-2


@pytest.mark.parametrize("norm", ["batch", "layer", "none"])
@pytest.mark.parametrize("transform_scale", [False, True])
@pytest.mark.parametrize("training", [True, False])
def test_fast_reattention_equals_official_formulation(norm, transform_scale, training):
    torch.manual_seed(1)
    fast = ReAttention(32, num_heads=4, qkv_bias=True, re_norm=norm, re_transform_scale=transform_scale)
    with torch.no_grad():  # stats that are not the defaults, so eval mode is tested too
        fast.reatten_matrix.weight.mul_(20)
        if norm == "batch":
            fast.var_norm.running_mean.uniform_(-0.1, 0.1)
            fast.var_norm.running_var.uniform_(1e-4, 1e-3)
            fast.var_norm.weight.uniform_(0.5, 2)
            fast.var_norm.bias.uniform_(-1, 1)
    ref = copy.deepcopy(fast)
    fast.train(training), ref.train(training)
    x = torch.randn(3, 17, 32, requires_grad=True)
    y, y_ref = fast(x), ref.reference_forward(x)  # the official Conv2d + norm
    scale = y_ref.abs().max()
    torch.testing.assert_close(y / scale, y_ref / scale, rtol=0, atol=2e-5)
    params = [x, fast.reatten_matrix.weight, fast.qkv.weight]
    grads = torch.autograd.grad(y.square().sum(), params)
    grads_ref = torch.autograd.grad(y_ref.square().sum(),
                                    [x, ref.reatten_matrix.weight, ref.qkv.weight])
    for g, g_ref in zip(grads, grads_ref, strict=True):
        torch.testing.assert_close(g / g_ref.abs().max(), g_ref / g_ref.abs().max(), rtol=0, atol=5e-5)
    if norm == "batch":
        for buf in ("running_mean", "running_var", "num_batches_tracked"):
            torch.testing.assert_close(getattr(fast.var_norm, buf), getattr(ref.var_norm, buf),
                                       rtol=1e-4, atol=1e-7)


def test_reattention_in_last_k_blocks():
    model = timm.create_model("deepvit_micro", depth=6, re_blocks=2)
    kinds = [type(b.attn) for b in model.blocks]
    assert [issubclass(k, ReAttention) for k in kinds] == [False] * 4 + [True] * 2
    assert param_count(model) * 1e6 == closed_form(MICRO.replace(depth=6, attention="re", re_blocks=2))["params"]


def test_reattention_options_reach_the_blocks():
    model = build_model(MICRO.replace(attention="re", re_norm="layer", re_transform_scale=True))
    attn = model.blocks[0].attn
    assert attn.re_norm == "layer" and isinstance(attn.var_norm, torch.nn.LayerNorm)
    assert attn.reatten_scale == pytest.approx((32 // 4) ** -0.5)


@pytest.mark.parametrize("changes,key,words", [
    (dict(embed_dim=30), "embed_dim", "not divisible by num_heads=4"),
    (dict(img_size=30), "img_size", "not divisible by patch_size=8"),
    (dict(depth=0), "depth", "at least 1"),
    (dict(attention="cross"), "attention", "expected one of: self, re"),
    (dict(attention="re", re_blocks=5), "re_blocks", "0..depth=4"),
    (dict(re_norm="group"), "re_norm", "batch, layer, none"),
    (dict(depth="12"), "depth", "expected int, got str"),
    (dict(depth=True), "depth", "expected int, got bool"),
    (dict(qkv_bias=1), "qkv_bias", "expected bool, got int"),
    (dict(mlp_ratio=-1.0), "mlp_ratio", "must be positive"),
    (dict(dept=6), "dept", "did you mean 'depth'"),
])
def test_impossible_variants_name_field_and_value(changes, key, words):
    with pytest.raises(SpecError) as info:
        MICRO.replace(**changes)
    assert info.value.key == key
    assert words in str(info.value)
    assert str(info.value).startswith(f"{key}={changes[key]!r}")


def test_create_model_accepts_variant_fields_and_timm_kwargs():
    model = timm.create_model("vit_micro", depth=2, global_pool="avg")
    assert len(model.blocks) == 2 and model.global_pool == "avg"
    with pytest.raises(ValueError, match="no pretrained"):
        timm.create_model("vit_micro", pretrained=True)


@pytest.mark.parametrize("name", ["vit_micro", "deepvit_micro", "deepvit_micro_last2"])
def test_capture_attention_leaves_outputs_unchanged(name):
    torch.manual_seed(2)
    model = timm.create_model(name).eval()
    x = torch.randn(2, 3, 32, 32)
    y = model(x)
    with capture_attention(model) as maps:
        y_cap = model(x)
    torch.testing.assert_close(y_cap, y, rtol=1e-5, atol=1e-6)
    assert len(maps) == 4 and all(m.shape == (2, 4, 17, 17) for m in maps)
    assert all(b.attn.fused_attn == (not isinstance(b.attn, ReAttention)) for b in model.blocks)
    with capture_attention(model, which="raw") as raw:
        model(x)
    for m in raw:  # softmax rows
        torch.testing.assert_close(m.sum(-1), torch.ones(2, 4, 17))
    for block, m_v, m_raw in zip(model.blocks, maps, raw, strict=True):
        if isinstance(block.attn, ReAttention):
            torch.testing.assert_close(m_v, block.attn.mixed_map(m_raw))
            assert not torch.allclose(m_v, m_raw)
        else:
            torch.testing.assert_close(m_v, m_raw)


def test_captured_map_is_the_one_that_multiplies_v():
    torch.manual_seed(3)
    model = timm.create_model("deepvit_micro").eval()
    attn = model.blocks[1].attn
    x = torch.randn(2, 17, 32)
    with capture_attention(model) as maps:
        out = attn(x)
    B, N, C = x.shape
    v = attn.qkv(x).reshape(B, N, 3, 4, 8).permute(2, 0, 3, 1, 4)[2]
    expected = attn.proj((maps[0] @ v).transpose(1, 2).reshape(B, N, C))
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-6)


def test_bench_exports():
    assert bench.Variant is Variant and "deepvit_32b" in timm.list_models("deepvit_*")


@pytest.mark.parametrize("dropout", [False, True])
def test_remix_gradients_match_finite_differences(dropout):
    from bench.reattention import _Remix

    torch.manual_seed(4)
    mod = ReAttention(8, num_heads=4, attn_drop=0.1 if dropout else 0.0).double().train()
    a = torch.rand(2, 4, 3, 3, dtype=torch.double).softmax(-1).reshape(2, 4, 9).requires_grad_()
    params = [t.detach().clone().requires_grad_() for t in mod._norm_params()]
    params[0] = params[0] * 3  # a Θ far from the init, so the statistics matter

    def f(a, W, b, gamma, beta):
        mixed, b_eff = _Remix.apply(a, mod._fold, True, dropout, W, b, gamma, beta)
        return mixed, b_eff

    assert torch.autograd.gradcheck(f, (a, *params), eps=1e-6, atol=1e-6)


def test_reference_and_fast_paths_share_qk_norm():
    torch.manual_seed(5)
    mod = ReAttention(32, num_heads=4, qk_norm=True, norm_layer=torch.nn.LayerNorm).eval()
    with torch.no_grad():
        mod.q_norm.weight.uniform_(0.2, 3.0)  # a q_norm that matters
    x = torch.randn(2, 17, 32)
    torch.testing.assert_close(mod(x), mod.reference_forward(x), rtol=1e-5, atol=1e-6)
    with torch.no_grad():
        mod.q_norm.weight.fill_(1.0)
    assert (mod(x) - mod.reference_forward(x)).abs().max() < 1e-5  # same maps either way
