"""benchmarks/gpu_check.py's CPU smoke path: the GPU check cannot rot between GPU sessions."""
import pytest

from benchmarks import gpu_check


@pytest.mark.slow
def test_the_gpu_check_runs_on_a_cpu(tmp_path, cache_dir):
    out = tmp_path / "gpu.md"
    assert gpu_check.main(["--device", "cpu", "--smoke", "--out", str(out)]) == 0  # resumed = uninterrupted
    text = out.read_text()
    for section in ("## Train step per model, dtype and mode", "## CUDA events against wall-clock",
                    "## Peak memory, two measures", "## Data pipeline on the device",
                    "## A sweep interrupted and resumed"):
        assert section in text
    assert "| vit_micro | fp32 | eager |" in text and "| deepvit_micro | bf16 | compile | folded |" in text
    assert "| deepvit_micro | bf16 | eager | folded |" in text
