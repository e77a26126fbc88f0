"""torch.compile: both attention types compile with fullgraph=True (no graph break: re-attention
traces plain ops instead of its custom autograd Function) and give eager's loss, gradients and
BatchNorm statistics; train.compile and profile.compile time the compile apart."""
import copy

import pytest
import torch
import torch.nn.functional as F

from bench.config import ProfileConfig, TrainConfig, resolve_compile
from bench.data.sources import Dataset, make_shapes
from bench.device import compile_model
from bench.errors import SpecError
from bench.models import build_model
from bench.own_files import INDUCTOR_DIR
from bench.profiling import measure_speed
from bench.training import train
from bench.variant import Variant

TINY = Variant(img_size=16, patch_size=4, embed_dim=16, depth=2, num_heads=2, mlp_ratio=2.0, num_classes=10)


def test_compile_settings():
    assert [resolve_compile(s, "cpu") for s in (False, True, "auto")] == [False, True, False]
    assert [resolve_compile(s, torch.device("cuda")) for s in (False, True, "auto")] == [False, True, True]
    assert TrainConfig().compile == "auto" and ProfileConfig(compile=True).compile is True
    for bad in ("yes", 1, None):
        with pytest.raises(SpecError, match="compile"):
            TrainConfig(compile=bad)


@pytest.mark.slow
@pytest.mark.parametrize("attention", ["self", "re"])
def test_compiled_fullgraph_gives_eagers_loss_and_gradients(attention, cache_dir):
    torch.manual_seed(0)
    eager = build_model(TINY.replace(attention=attention))
    twin = copy.deepcopy(eager)
    compiled = compile_model(twin)  # fullgraph=True: a graph break raises
    x, y = torch.randn(8, 3, 16, 16), torch.randint(10, (8,))
    for _ in range(2):  # twice: the second step runs the compiled graph with updated BatchNorm statistics
        losses = [F.cross_entropy(m(x), y) for m in (eager, compiled)]
        for loss in losses:
            loss.backward()
        assert losses[1].item() == pytest.approx(losses[0].item(), abs=1e-5)
        for (name, a), b in zip(eager.named_parameters(), twin.parameters(), strict=True):
            assert torch.allclose(a.grad, b.grad, atol=1e-5, rtol=1e-4), name
            a.grad = b.grad = None
    for a, b in zip(eager.buffers(), twin.buffers(), strict=True):  # re-attention's running mean and variance
        assert torch.allclose(a.float(), b.float(), atol=1e-6)
    assert (cache_dir / INDUCTOR_DIR).is_dir()  # inductor's cache in bench's cache folder


@pytest.mark.slow
def test_train_and_profile_compile_time_it_apart(cache_dir):
    torch.manual_seed(0)
    data = Dataset("shapes", make_shapes(48, img_size=16, seed=0), make_shapes(16, img_size=16, seed=1),
                   [str(i) for i in range(10)])
    cfg = TrainConfig(epochs=1, batch_size=6, compile=True)  # shapes no other test compiles
    result = train(build_model(TINY.replace(attention="re")), data, cfg, device=torch.device("cpu"), seed=0)
    assert result["compiled"] and result["compile_s"] > 1 and result["train_time_s"] > 0
    again = train(build_model(TINY.replace(attention="re")), data, cfg, device=torch.device("cpu"), seed=0)
    assert again["compile_s"] < result["compile_s"] / 4  # the next trial of the same shapes: from the caches
    assert again["top1"] == result["top1"]
    figures = measure_speed(build_model(TINY), (3, 16, 16), ProfileConfig(batch_size=4, warmup=1, iters=2,
                                                                         compile=True),
                            mode="train", device=torch.device("cpu"))
    assert figures["train_compile_s"] > 0 and figures["train_samples_per_sec"] > 0
    eager = train(build_model(TINY.replace(attention="re")), data, TrainConfig(epochs=1, batch_size=8, compile=False),
                  device=torch.device("cpu"), seed=0)
    assert not eager["compiled"] and "compile_s" not in eager


@pytest.mark.slow
def test_bench_profile_compile_prints_the_compile_apart(capsys, cache_dir):
    from bench.cli import main
    assert main(["profile", "vit_micro", "--compile", "--device", "cpu", "--batch-size", "4", "--warmup", "1",
                 "--iters", "1", "--json"]) == 0
    import json
    record = json.loads(capsys.readouterr().out)
    assert record["train_compile_s"] > 0 and record["infer_compile_s"] > 0 and record["train_samples_per_sec"] > 0
    assert record["attn_kernel"] in ("sdpa", "explicit") and record["train_mfu"] > 0


# --- faults in inductor's cache: said in one line, recovered from ------------------------------------

def train_compiled(data, compile=True):
    torch.manual_seed(0)
    cfg = TrainConfig(epochs=1, batch_size=6, compile=compile)
    return train(build_model(TINY.replace(depth=1)), data, cfg, device=torch.device("cpu"), seed=0)


@pytest.fixture
def shapes16():
    return Dataset("shapes", make_shapes(24, img_size=16, seed=0), make_shapes(12, img_size=16, seed=1),
                   [str(i) for i in range(10)])


@pytest.mark.slow
def test_a_damaged_inductor_cache_is_set_aside_and_compiled_afresh(cache_dir, shapes16, capsys):
    """Cache files overwritten with random bytes made every rerun an "internal error: InductorError:
    … Failed to import"; now the folder is set aside (kept, for `bench cache --prune`) and the
    model compiled afresh, to the same result."""
    import os
    import subprocess
    import sys
    here = os.path.dirname(os.path.abspath(__file__))
    code = (f"import sys, torch; sys.path.insert(0, {here!r}); from test_compile import *; "
            "r = train_compiled(Dataset('shapes', make_shapes(24, img_size=16, seed=0), "
            "make_shapes(12, img_size=16, seed=1), [str(i) for i in range(10)])); "
            "print(r['top1'], r['compiled'], r.get('compile_error'))")
    env = {**os.environ, "BENCH_CACHE_DIR": str(cache_dir)}
    env.pop("TORCHINDUCTOR_CACHE_DIR")  # bench's own folder, as for a user
    first = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert first.returncode == 0, first.stderr[-2000:]
    folder = cache_dir / INDUCTOR_DIR
    files = [p for p in folder.rglob("*") if p.is_file() and p.name != ".bench-owned"]
    assert files
    for p in files:  # every file of the cache overwritten in place
        p.write_bytes(os.urandom(max(1, p.stat().st_size)))
    again = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert again.returncode == 0, again.stderr[-2000:]
    assert again.stdout.split() == first.stdout.split() == [first.stdout.split()[0], "True", "None"]
    said = [line for line in again.stderr.splitlines() if line.startswith("torch.compile:")]
    assert len(said) == 1 and f"the cache {folder} is damaged" in said[0] and "compiling afresh" in said[0]
    assert len(list(cache_dir.glob(f"{INDUCTOR_DIR}.damaged-*"))) == 1 and folder.is_dir()


@pytest.mark.slow
def test_a_cache_that_cannot_be_written_runs_eager_and_the_trial_says_why(tmp_path, monkeypatch, shapes16, capsys):
    blocked = tmp_path / "a-file"
    blocked.write_text("not a folder")
    monkeypatch.setenv("BENCH_CACHE_DIR", str(blocked / "cache"))  # as a full or read-only disk: nothing written
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR")
    result = train_compiled(shapes16)
    eager = train_compiled(shapes16, compile=False)
    assert not result["compiled"] and result["top1"] == eager["top1"]  # eager's numbers, from the same start
    assert result["compile_error"].startswith("torch.compile failed, the model runs eager: NotADirectoryError")
    assert str(blocked / "cache" / INDUCTOR_DIR) in result["compile_error"]
    assert capsys.readouterr().err.count("torch.compile failed") == 1


def test_prune_removes_only_bench_s_unused_compile_caches(tmp_path, capsys):
    import os
    import time
    from bench.cli import main
    from bench.own_files import MARK, hold_folder
    root = tmp_path / "cache"
    old = time.time() - 40 * 86400
    for name in ("inductor", "inductor.damaged-20260101-000000-1"):
        (root / name / "ab").mkdir(parents=True)
        (root / name / "ab" / "x.so").write_bytes(b"x" * 1000)
        (root / name / MARK).touch()
    (root / "inductor.damaged-20260101-000000-2" / "ab").mkdir(parents=True)  # no mark: not provably bench's
    for p in root.rglob("*"):
        os.utime(p, (old, old))
    assert main(["cache", "--dir", str(root), "--prune", "30"]) == 0
    err = capsys.readouterr().err
    assert sorted(p.name for p in root.iterdir()) == ["inductor.damaged-20260101-000000-2"]
    assert "2 torch.compile cache(s)" in err and "no .bench-owned in it" in err
    hold_folder(root / "inductor")  # a process compiling with it right now
    assert main(["cache", "--dir", str(root), "--prune", "0"]) == 0
    assert (root / "inductor").is_dir() and "in use" in capsys.readouterr().err


@pytest.mark.slow
def test_the_side_by_side_pass_times_compiled_models_when_the_trials_were(make_spec, run, tmp_path):
    """profile.compile: true timed each trial compiled, but the side-by-side pass — whose figures the
    report prefers — timed eager models: a comparison of compiled trials against eager speeds."""
    path = make_spec(grid={"depth": [1], "attention": ["self", "re"]}, train=None, collapse=None,
                     profile={"compile": True, "rounds": 1, "iters": 1, "warmup": 1})
    summary = run(path)
    side = summary["side_by_side"]
    assert side["compiled"] is True and len(side["variants"]) == 2
    assert all(f["train_samples_per_sec"] > 0 and "compile_error" not in f for f in side["variants"].values())
    text = (tmp_path / "results" / "tiny" / "report.md").read_text()
    assert "compiled with torch.compile" in text
