"""Fair kernels: self-attention's two exact kernels give the same numbers, the faster is chosen by
measurement once per device × dtype × shape and remembered, and the trial records which ran."""
import json

import pytest
import torch

from bench import attention_kernels as kernels
from bench.data.cache import prune
from bench.models import build_model
from bench.own_files import KERNELS_FILE
from bench.variant import Variant

TINY = Variant(img_size=16, patch_size=4, embed_dim=16, depth=2, num_heads=2, mlp_ratio=2.0, num_classes=10)


def fused(model):
    return [m.fused_attn for m in model.modules() if type(m).__name__ == "Attention"]


@pytest.fixture
def timed(monkeypatch):
    """time_kernels stood in for: explicit is the faster; each call counted."""
    calls = []
    monkeypatch.setattr(kernels, "_chosen", {})
    monkeypatch.setattr(kernels, "time_kernels",
                        lambda *a, rounds=3, **k: calls.append(a) or {"sdpa": [2.0] * rounds, "explicit": [1.0] * rounds})
    return calls


def test_the_two_self_attention_kernels_are_exact():
    torch.manual_seed(0)
    model = build_model(TINY)
    x = torch.randn(4, 3, 16, 16)
    outs = []
    for flag in (True, False):
        for m in model.modules():
            if hasattr(m, "fused_attn"):
                m.fused_attn = flag
        outs.append(model(x))
    assert torch.allclose(outs[0], outs[1], atol=1e-5)


def test_the_faster_kernel_is_chosen_once_and_remembered(timed, cache_dir, monkeypatch):
    model = build_model(TINY)
    assert fused(model) == [True, True]  # timm's default: SDPA
    got = kernels.choose_kernels(model, device=torch.device("cpu"), dtype="bf16", batch=8, device_name="cpu A")
    assert got == "explicit" and fused(model) == [False, False] and timed == [(16, 2, 17, 8)]  # 16 patches + cls
    stored = json.loads((cache_dir / KERNELS_FILE).read_text())["entries"]
    assert list(stored.values()) == [{"kernel": "explicit", "margin": 1.0, "rounds": 3, "agree": True}]
    assert "bf16" in next(iter(stored))
    monkeypatch.setattr(kernels, "_chosen", {})  # a new process: read back, not measured
    assert kernels.choose_kernels(build_model(TINY), device=torch.device("cpu"), dtype="bf16", batch=8,
                                  device_name="cpu A") == "explicit" and len(timed) == 1
    kernels.choose_kernels(build_model(TINY), device=torch.device("cpu"), dtype="bf16", batch=16, device_name="cpu A")
    assert len(timed) == 2  # another shape: measured


def test_re_attention_names_its_path(timed):
    kw = dict(device=torch.device("cpu"), dtype="fp32", batch=4, device_name="cpu A")
    assert kernels.choose_kernels(build_model(TINY.replace(attention="re")), **kw) == "folded"
    assert kernels.choose_kernels(build_model(TINY.replace(attention="re", re_norm="layer")), **kw) == "materialised"
    mixed = build_model(TINY.replace(attention="re", re_blocks=1))  # the last block re-attends, the first not
    assert kernels.choose_kernels(mixed, **kw) == "explicit+folded"
    assert timed  # the self-attention block of the mixed model was measured


def test_a_real_measurement_times_both(cache_dir):
    times = kernels.time_kernels(16, 2, 17, 4, device=torch.device("cpu"), dtype="fp32", rounds=2)
    assert set(times) == {"sdpa", "explicit"} and all(len(t) == 2 and min(t) > 0 for t in times.values())


def test_the_choice_is_in_the_record(timed, cache_dir):
    from bench.config import ProfileConfig
    from bench.profiling import profile_model
    record = profile_model(build_model(TINY), TINY, ProfileConfig(batch_size=4, warmup=0, iters=1),
                           device=torch.device("cpu"))
    assert record["attn_kernel"] == "explicit"


def test_prune_leaves_the_choices_alone(cache_dir):
    cache_dir.mkdir(parents=True, exist_ok=True)
    (cache_dir / KERNELS_FILE).write_text("{}")
    assert prune(0, cache_dir) == ([], [])


def test_the_report_says_which_kernels_ran():
    import pandas as pd
    from bench.report.markdown import markdown
    rows = [{"img_size": 32, "patch_size": 8, "in_chans": 3, "embed_dim": 64, "depth": 4, "num_heads": 4,
             "mlp_ratio": 2.0, "num_classes": 10, "status": "complete", "seed": 0, "key": f"{a}-s0", "trial": i,
             "top1": 50.0, "infer_gmacs": 0.001, "param_count": 0.1, "attention": a, "attn_kernel": k}
            for i, (a, k) in enumerate([("self", "explicit"), ("re", "folded")])]
    text = markdown(pd.DataFrame(rows), {"name": "m"}, {"generated": "now"})
    assert "attention kernels re: folded; self: explicit" in text


@pytest.mark.parametrize("junk", ["[1]", "not json", '["a list", 1]', '{"%s": "fastest"}'])
def test_a_foreign_choices_file_is_left_byte_identical_and_measured_for_the_run(timed, cache_dir, junk, capsys):
    cache_dir.mkdir(parents=True, exist_ok=True)
    model = build_model(TINY)
    kernels.choose_kernels(build_model(TINY), device=torch.device("cpu"), dtype="fp32", batch=2, device_name="cpu B")
    memo = json.loads((cache_dir / KERNELS_FILE).read_text())
    assert memo["format"] == "bench-memo" and memo["kind"] == "attention-kernel"
    key = next(iter(memo["entries"]))
    (cache_dir / KERNELS_FILE).write_text(junk % key if "%s" in junk else junk)
    before = (cache_dir / KERNELS_FILE).read_bytes()
    kernels._chosen.clear()
    assert kernels.choose_kernels(model, device=torch.device("cpu"), dtype="fp32", batch=2,
                                  device_name="cpu B") == "explicit" and len(timed) == 2
    assert (cache_dir / KERNELS_FILE).read_bytes() == before
    assert "not bench's attention-kernel memo; left as it was" in capsys.readouterr().err


def test_measuring_kernels_or_a_peak_leaves_the_callers_random_stream_alone():
    """The kernel choice is measured inside a trial's training the first time a shape is seen: a
    reseed there made that trial's numbers depend on whether the memo existed."""
    from bench.utilisation import gemm_tflops
    torch.manual_seed(123)
    before = torch.get_rng_state()
    kernels.time_kernels(16, 2, 17, 4, device=torch.device("cpu"), dtype="fp32", rounds=1)
    gemm_tflops(torch.device("cpu"), "fp32", 64, 1)
    assert torch.equal(torch.get_rng_state(), before)


@pytest.mark.parametrize("rounds, expected", [
    ({"sdpa": [2.0, 2.1, 2.0], "explicit": [1.0, 1.1, 1.0]}, {"kernel": "explicit", "margin": 1.0, "agree": True}),
    ({"sdpa": [1.0, 1.0, 1.0], "explicit": [1.02, 0.99, 1.01]}, {"kernel": "sdpa", "why": "tie"}),  # within 5 %
    ({"sdpa": [2.0, 0.5, 2.0], "explicit": [1.0, 1.0, 1.0]}, {"kernel": "sdpa", "why": "tie"}),  # rounds disagree
])
def test_a_choice_measured_under_load_is_measured_again_or_left_to_timms_default(rounds, expected):
    """A tie, or rounds that disagree (another job sharing the cores), was remembered for good:
    now it is measured again with 3× the rounds, and if still one, timm's default stands — with
    the margin kept beside the choice."""
    asked = []

    def measure(n):
        asked.append(n)
        return {k: v * (n // 3) for k, v in rounds.items()}
    found = kernels.decide(measure)
    assert found["kernel"] == expected["kernel"]
    if "why" in expected:
        assert asked == [3, 9] and "timm's default" in found["why"] and found["rounds"] == 9
    else:
        assert asked == [3] and found["margin"] == pytest.approx(expected["margin"], abs=0.05)
