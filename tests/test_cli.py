"""The bench command: output, errors and exit codes."""
import json
import os
import subprocess
import sys

import pytest
import torch

from bench.cli import main, parse_sets
from bench.config import ProfileConfig
from bench.errors import SpecError


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_models_lists_registered_variants(capsys):
    code, out, _ = run(capsys, "models", "--json")
    rows = {r["model"]: r for r in json.loads(out)}
    assert code == 0 and {"vit_16b", "deepvit_32b", "vit_micro"} <= set(rows)
    assert rows["deepvit_32b"]["param_count"] == pytest.approx(48.1, rel=0.005)
    code, out, _ = run(capsys, "models")
    assert code == 0 and "deepvit_24b" in out


def test_profile_json(capsys):
    code, out, _ = run(capsys, "profile", "deepvit_micro", "--set", "depth=2", "--set", "re_norm=none",
                       "--batch-size", "4", "--warmup", "0", "--iters", "2", "--json")
    record = json.loads(out)
    assert code == 0 and record["depth"] == 2 and record["re_norm"] == "none"
    for key in ("param_count", "infer_gmacs", "infer_macts", "train_gmacs", "infer_samples_per_sec",
                "infer_step_time", "infer_batch_size", "train_samples_per_sec", "train_step_time",
                "train_batch_size", "device_name", "dtype", "torch_version", "timm_version"):
        assert key in record


def test_profile_measures_as_a_sweeps_profile_section_does(capsys, monkeypatch):
    """`bench profile` had its own defaults (fp32, batch 32, eager) beside the profile section's
    (auto, 64, compiled on CUDA): on a GPU the two measured different things. One set now,
    ProfileConfig's; each flag overrides one."""
    import bench.profiling
    seen = []
    monkeypatch.setattr(bench.profiling, "profile_model", lambda model, v, cfg, **kw: seen.append(cfg) or {})
    assert run(capsys, "profile", "vit_micro", "--json")[0] == 0
    assert seen[-1] == ProfileConfig()
    assert run(capsys, "profile", "vit_micro", "--batch-size", "8", "--no-compile", "--dtype", "bf16", "--json")[0] == 0
    assert seen[-1] == ProfileConfig(batch_size=8, compile=False, dtype="bf16")
    assert run(capsys, "profile", "vit_micro", "--compile", "--no-speed", "--json")[0] == 0
    assert seen[-1] == ProfileConfig(compile=True, speed=False)
    code, _, err = run(capsys, "profile", "vit_micro", "--iters", "0")
    assert code == 1 and "--iters 0: must be at least 1" in err


def test_profile_table(capsys):
    code, out, _ = run(capsys, "profile", "vit_micro", "--no-speed")
    assert code == 0 and "infer_gmacs" in out and "0.000754" in out


@pytest.mark.parametrize("argv,code,words", [
    (["profile", "vit_micro", "--set", "dept=2"], 2, "--set: dept=2: unknown model field (did you mean 'depth'?)"),
    (["profile", "vit_micro", "--set", "embed_dim=30"], 2, "embed_dim=30: is not divisible by num_heads=4"),
    (["profile", "vit_micro", "--set", "depth"], 2, "expected key=value"),
    (["profile", "vit_micro", "--set", "depth=[1"], 2, "not a valid YAML value"),
    (["profile", "no_such_model"], 1, "unknown model 'no_such_model'"),
    (["profile", "vit_micro", "--batch-size", "0"], 1, "--batch-size 0"),
])
def test_errors_are_one_line_with_exit_code(capsys, argv, code, words):
    got, out, err = run(capsys, *argv)
    assert got == code and out == ""
    assert words in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_parse_sets_reads_yaml_values():
    assert parse_sets(["depth=6", "attention=re", "mlp_ratio=2.5", "qkv_bias=false", "re_blocks=null"]) == {
        "depth": 6, "attention": "re", "mlp_ratio": 2.5, "qkv_bias": False, "re_blocks": None}
    with pytest.raises(SpecError):
        parse_sets(["=3"])


@pytest.mark.parametrize("cmd", [[], ["models"], ["profile"]])
def test_help_everywhere(cmd):
    proc = subprocess.run([sys.executable, "-m", "bench.cli", *cmd, "--help"], capture_output=True, text=True,
                          env={**os.environ, "COLUMNS": "100"})
    assert proc.returncode == 0 and "usage: bench" in proc.stdout


def test_console_script_error_has_no_traceback():
    script = os.path.join(os.path.dirname(sys.executable), "bench")  # the installed console script
    proc = subprocess.run([script, "profile", "no_such_model"], capture_output=True, text=True)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.startswith("error:")


def test_out_of_memory_and_bugs_are_one_line(capsys, monkeypatch):
    import bench.profiling

    def boom(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB\nmore detail")

    monkeypatch.setattr(bench.profiling, "profile", boom)
    code, out, err = run(capsys, "profile", "vit_micro")
    assert code == 1 and err.strip() == "error: out of memory: CUDA out of memory. Tried to allocate 20.00 GiB"

    monkeypatch.setattr(bench.profiling, "profile", lambda *a, **k: 1 / 0)
    code, out, err = run(capsys, "profile", "vit_micro")
    assert code == 1 and "internal error: ZeroDivisionError" in err and "Traceback" not in err


def test_collapse_of_a_registered_model(capsys, tmp_path):
    code, out, _ = run(capsys, "collapse", "vit_micro", "--set", "depth=3", "--images", "8", "--out",
                       str(tmp_path), "--json", "--device", "cpu")
    result = json.loads(out)
    assert code == 0 and len(result["similarity"]) == 3 and result["images"] == 8
    assert result["attention"] == ["self"] * 3 and result["weights"] == "initialisation"
    assert (tmp_path / "similarity_heatmap.png").is_file() and (tmp_path / "collapse.json").is_file()
    code, out, _ = run(capsys, "collapse", "deepvit_micro", "--images", "4", "--out", str(tmp_path))
    assert code == 0 and "similar blocks:" in out and "cross-head" in out
