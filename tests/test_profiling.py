"""Cost figures against closed forms and an independent counter."""
import pytest
import timm
import torch
from torch import nn

from bench.config import ProfileConfig
from bench.costs import closed_form
from bench.errors import BenchError
from bench.models import VARIANTS
from bench.profiling import Timing, measure_speed, profile, time_steps

MICRO = VARIANTS["vit_micro"]
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
    r = profile("deepvit_micro", {"depth": 2}, ProfileConfig(batch_size=4, warmup=1, iters=3), device="cpu")
    v = VARIANTS["deepvit_micro"].replace(depth=2)
    assert r["depth"] == 2 and r["attention"] == "re"
    assert r["infer_gmacs"] * 1e9 == pytest.approx(closed_form(v)["macs"])
    assert r["param_count"] * 1e6 == closed_form(v)["params"]
    assert r["train_gmacs"] * 1e9 == closed_form(v)["train_macs"]  # the one definition (bench.costs)
    assert r["train_tflops"] == pytest.approx(2 * r["train_gmacs"] * r["train_samples_per_sec"] / 1e3)
    assert r["infer_step_time_p10"] <= r["infer_step_time"] <= r["infer_step_time_p90"]
    assert r["infer_samples_per_sec"] == pytest.approx(4 / (r["infer_step_time"] / 1e3))
    assert r["train_batch_size"] == 4 and r["train_peak_mem_mb"] is None  # CPU: not measured
    assert r["device"] == "cpu" and r["torch_version"] == torch.__version__
    assert r["timm_version"] == timm.__version__ and r["dtype"] == "fp32"


def test_profile_bf16_and_timm_names():
    r = profile("test_vit", None, ProfileConfig(dtype="bf16", batch_size=2, warmup=0, iters=1), device="cpu")
    assert r["dtype"] == "bf16" and r["infer_gmacs"] > 0 and "depth" not in r


def test_profile_rejects_bad_requests():
    with pytest.raises(BenchError, match="unknown model 'vit_mikro'.*did you mean 'vit_micro'"):
        profile("vit_mikro")
    with pytest.raises(BenchError, match="dtype='fp16'"):
        profile("vit_micro", None, ProfileConfig(dtype="fp16"))
    if not torch.cuda.is_available():
        with pytest.raises(BenchError, match="CUDA is not available"):
            profile("vit_micro", device="cuda")


def test_a_timm_vit_built_at_another_size_is_counted_at_that_size():
    """`bench profile vit_tiny_patch16_224 --set img_size=32` fed it 224² images (its pretrained
    config's) and failed with an AssertionError: the model's own patch embedding says its size."""
    from bench.profiling import profile
    from bench.variant import Variant
    record = profile("vit_tiny_patch16_224", {"img_size": 32}, ProfileConfig(speed=False), device="cpu")
    same = Variant(img_size=32, patch_size=16, embed_dim=192, depth=12, num_heads=3, mlp_ratio=4.0, num_classes=1000)
    assert record["img_size"] == 32
    assert record["infer_gmacs"] == pytest.approx(closed_form(same)["macs"] / 1e9, rel=1e-9)
