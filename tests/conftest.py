"""Shared specs and helpers: a tiny sweep that trains in seconds (and ``make_spec`` for its
variations), running it, reading its ledger, and the PostgreSQL server of the multi-worker tests."""
import os
import re

import pytest
import yaml

from bench import api, spec
from bench.study.context import RunContext
from bench.study.ledger import Ledger

# 16² images, 16-dim models, 48 training images: 4 trials in a few seconds on a CPU
TINY = """
name: tiny
data: {name: shapes, train_size: 48, test_size: 24}
model: {img_size: 16, patch_size: 4, embed_dim: 16, num_heads: 2, mlp_ratio: 2}
train: {epochs: 1, batch_size: 16, check_every: 1}
profile: {batch_size: 4, warmup: 0, iters: 1}
grid: {depth: [1, 2], attention: [self, re]}
seeds: [0]
compare: {baseline: {attention: self}, arms: {re-attention: {attention: re}}}
"""


@pytest.fixture(autouse=True)
def cache_dir(tmp_path, monkeypatch):
    """Every test's decoded-data caches in its own folder, never the user's ~/.cache."""
    monkeypatch.setenv("BENCH_CACHE_DIR", str(tmp_path / "cache"))
    # torch.compile's cache follows it (bench.device.compile_model): each test starts from torch's default
    from torch._inductor.runtime.cache_dir_utils import default_cache_dir
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", default_cache_dir())
    return tmp_path / "cache"


@pytest.fixture
def make_spec(tmp_path):
    """make_spec(name="tiny", **sections): a sweep file based on TINY, in tmp_path; its path.
    A section given as a mapping updates TINY's (``train={"epochs": 2}`` keeps the rest of
    train); any other value replaces it, None as the file's ``null`` (``collapse=None``: no
    analysis; ``grid=None, compare=None, search={...}``: a study)."""
    def make(name="tiny", **sections):
        raw = yaml.safe_load(TINY)
        raw["name"] = name
        for key, value in sections.items():
            if isinstance(value, dict) and isinstance(raw.get(key), dict):
                raw[key] = {**raw[key], **value}
            else:
                raw[key] = value
        path = tmp_path / (re.sub(r"[^\w.-]", "_", name) + ".yaml")  # a name that leads elsewhere stays here
        path.write_text(yaml.safe_dump(raw, sort_keys=False))
        return path
    return make


@pytest.fixture
def sweep_file(tmp_path):
    path = tmp_path / "tiny.yaml"
    path.write_text(TINY)
    return path


@pytest.fixture
def run(tmp_path):
    """run(path, sets=None, **fields): the sweep (or study) at ``path``, on the CPU,
    into tmp_path/results (bench.api.run_sweep with a RunContext of those fields)."""
    def run(path, sets=None, **kwargs):
        return api.run_sweep(spec.load(path, sets), RunContext(results_dir=tmp_path / "results", device="cpu",
                                                               quiet=True, **kwargs))
    return run


@pytest.fixture
def ledger(tmp_path):
    """ledger(name="tiny"): the ledger of a study run into tmp_path/results."""
    return lambda name="tiny": Ledger.locate(name, None, tmp_path / "results")


@pytest.fixture
def pg():
    url = os.environ.get("BENCH_TEST_POSTGRES")
    if not url:
        if os.environ.get("BENCH_REQUIRE_POSTGRES"):
            pytest.fail("BENCH_REQUIRE_POSTGRES is set but BENCH_TEST_POSTGRES is not")
        pytest.skip('no PostgreSQL server: eval "$(.ci/postgres)" starts one (.ci/run does)')
    return url
