"""Utilisation: achieved train FLOP/s from counted MACs, against a measured GEMM peak that is
measured once and cached, and the report's MFU column."""
import json

import pandas as pd
import pytest
import torch

from bench import utilisation
from bench.costs import train_tflops
from bench.data.cache import prune
from bench.own_files import PEAKS_FILE
from bench.report.markdown import markdown
from bench.report.tables import comparison


def test_two_flops_per_train_mac_per_image():
    assert train_tflops(1.0, 1000.0) == pytest.approx(2.0)  # 1 train GMAC × 2 FLOPs × 1000 images/s
    assert train_tflops(0.0333, 335.0) == pytest.approx(2 * 0.0333e9 * 335 / 1e12)


def test_datasheet_peaks_for_known_gpus_only():
    assert utilisation.datasheet_tflops("NVIDIA H200", "bf16") == 989.0
    assert utilisation.datasheet_tflops("NVIDIA H100 80GB HBM3", "bf16") == 989.0
    assert utilisation.datasheet_tflops("NVIDIA A100-SXM4-80GB", "bf16") == 312.0
    assert utilisation.datasheet_tflops("Intel(R) Xeon(R) Processor (2 threads)", "bf16") is None


@pytest.fixture
def fresh(monkeypatch):
    """No peak remembered by this process; gemm_tflops counted and fixed at 0.2 TFLOP/s."""
    monkeypatch.setattr(utilisation, "_measured", {})
    calls = []
    monkeypatch.setattr(utilisation, "gemm_tflops", lambda device, dtype, size, reps: calls.append(size) or 0.2)
    return calls


def _entries(path):
    memo = json.loads(path.read_text())
    assert memo["format"] == "bench-memo" and memo["kind"] == "GEMM peak"
    return memo["entries"]


def test_the_peak_is_measured_once_per_device_dtype_and_torch_then_read(fresh, cache_dir, monkeypatch):
    cpu = torch.device("cpu")
    assert utilisation.measured_peak(cpu, "fp32", "cpu A") == 0.2
    assert fresh == [1024, 2048]  # the sizes tried, the best kept
    assert _entries(cache_dir / PEAKS_FILE) == {f"cpu A | fp32 | torch {torch.__version__}": 0.2}
    monkeypatch.setattr(utilisation, "_measured", {})  # a new process: from the file, checked by a quick matmul
    assert utilisation.measured_peak(cpu, "fp32", "cpu A") == 0.2 and fresh == [1024, 2048, 256]
    utilisation.measured_peak(cpu, "bf16", "cpu A")  # another dtype: measured, and kept beside the first
    assert fresh[3:] == [1024, 2048] and len(_entries(cache_dir / PEAKS_FILE)) == 2


@pytest.mark.parametrize("junk", ["not json", "[1, 2]", '{"cpu A | fp32 | torch X": -1}', "", '{"notes": 1}'])
def test_a_foreign_peak_file_is_left_byte_identical_and_the_peak_measured(fresh, cache_dir, junk, capsys):
    cache_dir.mkdir(parents=True, exist_ok=True)
    (cache_dir / PEAKS_FILE).write_text(junk.replace("X", torch.__version__))
    before = (cache_dir / PEAKS_FILE).read_bytes()
    assert utilisation.measured_peak(torch.device("cpu"), "fp32", "cpu A") == 0.2 and fresh
    assert (cache_dir / PEAKS_FILE).read_bytes() == before
    assert "left as it was" in capsys.readouterr().err


def test_a_peak_file_from_before_the_marker_is_read_and_upgraded(fresh, cache_dir):
    cache_dir.mkdir(parents=True, exist_ok=True)
    key = f"cpu A | fp32 | torch {torch.__version__}"
    (cache_dir / PEAKS_FILE).write_text(json.dumps({key: 0.3}))
    assert utilisation.measured_peak(torch.device("cpu"), "fp32", "cpu A") == 0.3 and fresh == [256]
    utilisation.measured_peak(torch.device("cpu"), "bf16", "cpu A")
    assert _entries(cache_dir / PEAKS_FILE) == {key: 0.3, key.replace("fp32", "bf16"): 0.2}


@pytest.mark.parametrize("stored", [5e-324, 1e308, True, "0.2", 0.2 * 1000, 0.2 / 10, float("nan")])
def test_a_remembered_peak_this_device_cannot_have_is_measured_over(fresh, cache_dir, stored):
    """5e-324 made MFU infinite, 1e308 made it 7e-311, true read as 1 TFLOP/s: a peak is a
    plausible number (finite, 0.001–100,000 TFLOP/s) within reach of a quick matmul's rate."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    key = f"cpu A | fp32 | torch {torch.__version__}"
    (cache_dir / PEAKS_FILE).write_text(json.dumps({"format": "bench-memo", "version": 1, "kind": "GEMM peak",
                                                    "entries": {key: stored}}))
    got = utilisation.utilisation(0.003, 1000.0, device=torch.device("cpu"), dtype="fp32", device_name="cpu A")
    assert got["peak_tflops"] == 0.2 and got["train_mfu"] == pytest.approx(0.03)
    assert _entries(cache_dir / PEAKS_FILE) == {key: 0.2}


def test_a_gpu_peak_above_its_datasheet_is_measured_over(fresh, cache_dir):
    cache_dir.mkdir(parents=True, exist_ok=True)
    key = f"NVIDIA H100 | bf16 | torch {torch.__version__}"
    (cache_dir / PEAKS_FILE).write_text(json.dumps({key: 5000.0}))  # 5× the datasheet's 989
    assert utilisation.measured_peak(torch.device("cpu"), "bf16", "NVIDIA H100") == 0.2


def test_utilisation_columns(fresh):
    got = utilisation.utilisation(0.003, 1000.0, device=torch.device("cpu"), dtype="fp32", device_name="cpu A")
    assert got == {"train_tflops": pytest.approx(0.006), "train_mfu": pytest.approx(0.03), "peak_tflops": 0.2,
                   "datasheet_tflops": None}
    assert utilisation.utilisation(0.001, None, device=torch.device("cpu"), dtype="fp32", device_name="A") == {}


def test_a_real_gemm_measures_a_plausible_rate():
    rate = utilisation.gemm_tflops(torch.device("cpu"), "fp32", 256, 2)
    assert 1e-4 < rate < 100  # TFLOP/s: more than a 1990s PC, less than a GPU


def test_prune_leaves_the_peak_file_alone_and_quiet(cache_dir):
    cache_dir.mkdir(parents=True, exist_ok=True)
    (cache_dir / PEAKS_FILE).write_text("{}")
    removed, kept = prune(0, cache_dir)
    assert removed == [] and kept == [] and (cache_dir / PEAKS_FILE).read_text() == "{}"


def test_the_report_shows_mfu_from_the_speed_it_compares():
    base = {"img_size": 32, "patch_size": 8, "in_chans": 3, "embed_dim": 64, "depth": 4, "num_heads": 4,
            "mlp_ratio": 2.0, "num_classes": 10, "status": "complete", "peak_tflops": 0.05}
    rows = [{**base, "attention": a, "seed": s, "key": f"{a}-s{s}", "trial": i, "top1": 50.0 + s,
             "infer_gmacs": 0.001, "train_gmacs": 0.003, "param_count": 0.1, "train_samples_per_sec": sps}
            for i, (a, s, sps) in enumerate([("self", 0, 1000.0), ("self", 1, 1000.0), ("re", 0, 500.0),
                                              ("re", 1, 500.0)])]
    df = pd.DataFrame(rows)
    compare = {"baseline": {"attention": "self"}, "arms": {"re-attention": {"attention": "re"}}}
    c = comparison(df, compare).set_index("arm")
    assert c.loc["baseline", "train_tflops"] == pytest.approx(0.006)
    assert c.loc["baseline", "train_mfu"] == pytest.approx(0.12) and c.loc["re-attention", "train_mfu"] == \
        pytest.approx(0.06)
    text = markdown(df, {"name": "m", "compare": compare}, {"generated": "now", "storage": "x"})
    assert "train TFLOP/s (MFU)" in text and "| 0.006 (12%) |" in text and "| 0.003 (6%) |" in text
