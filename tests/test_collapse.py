"""Attention-collapse metrics against hand-built maps."""
import math

import pytest
import torch

from bench.collapse import CollapseStats, analyse
from bench.config import CollapseConfig
from bench.models import build_model, resolve


def metrics(maps_per_block, threshold=0.8, head_threshold=0.5):
    """The map metrics of one set of maps (one (B, H, N, N) tensor per block), in one update."""
    stats = CollapseStats(threshold, head_threshold)
    stats.update(maps_per_block)
    return stats.result()


def softmaxed(*shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g).mul(3).softmax(-1)


def test_identical_maps_in_every_block_are_fully_similar():
    a = softmaxed(2, 3, 5, 5)
    r = metrics([a.clone() for _ in range(6)])
    assert torch.allclose(torch.tensor(r["similarity"]), torch.ones(6, 6), atol=1e-6)
    assert r["similar_blocks"] == 5 and r["adjacent_similarity_mean"] == pytest.approx(1.0)
    assert r["similar_ratio"]["1"] == pytest.approx([1.0] * 5) and len(r["similar_ratio"]["3"]) == 3


def test_one_hot_maps_with_disjoint_columns_are_dissimilar():
    n, depth = 6, 4
    eye = torch.eye(n)
    # block p: query i attends only to token (i + p) mod n, so column t is non-zero at a different query per block
    maps = [eye.roll(p, dims=1).expand(1, 2, n, n) for p in range(depth)]
    r = metrics(maps)
    assert torch.allclose(torch.tensor(r["similarity"]), torch.eye(depth), atol=1e-6)
    assert r["similar_blocks"] == 0 and r["similar_ratio"]["2"] == [0.0, 0.0]


def test_similarity_is_the_cosine_of_columns():
    # one head, 2 tokens; column 0 is (1, 0) then (1, 1)/√2: cos = 0.707; column 1 is zero then (0, 1)
    a = torch.tensor([[1.0, 0.0], [0.0, 0.0]]).view(1, 1, 2, 2)
    b = torch.tensor([[0.5, 0.0], [0.5, 1.0]]).view(1, 1, 2, 2)
    r = metrics([a, b])
    expected = (1 / math.sqrt(2) + 0.0) / 2  # a zero column has cosine 0
    assert r["similarity"][0][1] == pytest.approx(expected, abs=1e-6)
    assert r["similar_ratio"]["1"] == [0.0] and r["similar_blocks"] == 0
    assert metrics([a, b], threshold=0.7)["similar_ratio"]["1"] == [0.5]  # 0.707 > 0.7 for 1 of 2 columns


def test_cross_head_similarity_by_hand():
    same = softmaxed(1, 1, 4, 4).expand(1, 2, 4, 4)        # two identical heads
    n = 4
    disjoint = torch.stack([torch.eye(n), torch.eye(n).roll(1, dims=1)]).unsqueeze(0)  # (1, 2, 4, 4)
    r = metrics([same, disjoint])
    assert r["cross_head_similarity"] == pytest.approx([1.0, 0.0], abs=1e-6)
    assert r["cross_head_share"] == pytest.approx([1.0, 0.0])


def test_head_permutations():
    maps = [softmaxed(2, 4, 5, 5, seed=s) for s in range(3)]
    base = metrics(maps)
    perm = torch.tensor([2, 0, 3, 1])
    everywhere = metrics([m[:, perm] for m in maps])  # the same relabelling in every block
    for key in ("similarity", "cross_head_similarity", "cross_head_share"):
        assert torch.allclose(torch.tensor(everywhere[key]), torch.tensor(base[key]), atol=1e-6)
    one_block = metrics([maps[0][:, perm], maps[1], maps[2]])  # head h of block 0 now meets another head
    assert one_block["similarity"][0][1] != pytest.approx(base["similarity"][0][1], abs=1e-4)
    assert one_block["cross_head_similarity"] == pytest.approx(base["cross_head_similarity"], abs=1e-6)


def test_result_does_not_depend_on_chunking():
    maps = [softmaxed(7, 3, 6, 6, seed=s) for s in range(5)]
    whole = metrics(maps)
    stats = CollapseStats()
    for lo, hi in ((0, 2), (2, 3), (3, 7)):
        stats.update([m[lo:hi] for m in maps])
    parts = stats.result()
    for key in ("similarity", "cross_head_similarity", "cross_head_share"):
        assert torch.allclose(torch.tensor(parts[key]), torch.tensor(whole[key]), atol=1e-6)
    for k in ("1", "2", "3"):
        assert parts["similar_ratio"][k] == pytest.approx(whole["similar_ratio"][k])


def test_analyse_a_model_in_chunks_and_both_maps():
    torch.manual_seed(0)
    model = build_model(resolve("deepvit_micro", {"depth": 3}))
    images = torch.randn(10, 3, 32, 32)
    one = analyse(model, images, chunk=10)
    three = analyse(model, images, chunk=3)
    assert torch.allclose(torch.tensor(one["similarity"]), torch.tensor(three["similarity"]), atol=1e-5)
    assert len(one["similarity"]) == 3 and len(one["cross_head_similarity"]) == 3
    raw = analyse(model, images, CollapseConfig(which="raw"), chunk=4)
    assert not torch.allclose(torch.tensor(raw["similarity"]), torch.tensor(one["similarity"]), atol=1e-3)
    assert model.training  # analyse switches to eval and back
    assert all(0.0 <= s <= 1.0 + 1e-6 for row in raw["similarity"] for s in row)  # softmax maps: cos >= 0


def test_tiny_columns_are_normalised_not_zeroed():
    a = torch.tensor([[1e-20, 0.0], [2e-20, 1.0]]).view(1, 1, 2, 2)  # column 0 is tiny but not zero
    r = metrics([a, a.clone()])
    assert r["similarity"][0][1] == pytest.approx(1.0, abs=1e-6)  # both columns match themselves


# --- token metrics: the same for every attention type ------------------------------------

from bench.collapse import TokenStats  # noqa: E402


def tokens_result(blocks, prefix=0):
    stats = TokenStats()
    stats.update(blocks, prefix)
    return stats.result()


def test_identical_tokens_are_fully_uniform_with_no_residual():
    x = torch.randn(3, 1, 8).expand(3, 5, 8).clone()  # every token of an image the same
    r = tokens_result([x])
    assert r["token_uniformity"] == [pytest.approx(1.0)] and r["rank_residual"] == [pytest.approx(0.0, abs=1e-6)]


def test_orthogonal_tokens_have_uniformity_zero():
    x = torch.eye(6)[:4].unsqueeze(0)  # four orthonormal tokens
    r = tokens_result([x])
    assert r["token_uniformity"] == [pytest.approx(0.0)]
    assert r["rank_residual"] == [pytest.approx(math.sqrt(3 / 4))]  # ‖X − 1x̄ᵀ‖² = 4 − 4·¼ of ‖X‖² = 4


def test_cka_is_invariant_to_rotation_and_scale_and_matches_a_direct_computation():
    torch.manual_seed(0)
    x = torch.randn(4, 7, 5, dtype=torch.float64)
    q, _ = torch.linalg.qr(torch.randn(5, 5, dtype=torch.float64))
    y = torch.randn(4, 7, 5, dtype=torch.float64)
    r = tokens_result([x, x @ q, 3.0 * x, y])
    assert r["cka"][0][1] == pytest.approx(1.0) and r["cka"][0][2] == pytest.approx(1.0)

    def direct(a, b):  # feature-space linear CKA per image (Kornblith et al.), then the mean
        out = []
        for ai, bi in zip(a, b, strict=True):
            ai, bi = ai - ai.mean(0), bi - bi.mean(0)
            out.append(float((bi.T @ ai).norm() ** 2 / ((ai.T @ ai).norm() * (bi.T @ bi).norm())))
        return sum(out) / len(out)
    assert r["cka"][0][3] == pytest.approx(direct(x, y), rel=1e-5)
    assert r["cka_adjacent"] == [pytest.approx(v, rel=1e-5) for v in (1.0, 1.0, direct(3 * x, y))]


def test_token_metrics_do_not_depend_on_chunking():
    torch.manual_seed(1)
    blocks = [torch.randn(6, 9, 4) for _ in range(3)]
    whole = tokens_result(blocks, prefix=1)
    stats = TokenStats()
    for part in ((0, 1), (1, 4), (4, 6)):
        stats.update([b[part[0]:part[1]] for b in blocks], 1)
    chunked = stats.result()
    for key in ("cka", "token_uniformity", "rank_residual"):
        assert torch.allclose(torch.tensor(whole[key]), torch.tensor(chunked[key]), atol=1e-6)


def test_analyse_reports_token_metrics_for_both_attention_types():
    torch.manual_seed(0)
    images = torch.randn(6, 3, 32, 32)
    for name in ("vit_micro", "deepvit_micro"):
        r = analyse(build_model(resolve(name)), images, chunk=4)
        d = len(r["similarity"])
        assert len(r["cka"]) == d and len(r["token_uniformity"]) == d and len(r["rank_residual"]) == d
        assert -1 <= r["token_uniformity_last"] <= 1 and 0 <= r["rank_residual_last"] <= 1
        assert all(abs(v) <= 1 + 1e-5 for row in r["cka"] for v in row)
