"""Specs and command arguments from anyone: an alias bomb, a study name that leaves --results,
`bench time` and `bench fidelity` on studies at their edges, and property-based tests
(hypothesis) over spec files and --set values: every input is exit 0, 1 or 2 with at most
one line of error, never a traceback or an "internal error", in bounded time."""
import datetime
import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, example, given, settings, strategies as st

from bench import spec, api
from bench.cli import main, parse_sets
from bench.errors import SpecError
from bench.study.context import RunContext

from conftest import TINY

ROOT = Path(__file__).parent.parent


def bomb(levels: int = 11, width: int = 9) -> str:
    """A "billion laughs" value: ``width`` aliases per level, ``levels`` deep (9**11 items unfolded)."""
    items = [f"&a0 [{', '.join(['lol'] * width)}]"]
    items += [f"&a{i} [{', '.join([f'*a{i - 1}'] * width)}]" for i in range(1, levels + 1)]
    return f"[{', '.join(items)}]"


def cli(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def one_line_error(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err and "internal error" not in err, err
    return lines[0]


# --- item 7: alias bombs ---------------------------------------------------------------------

@pytest.mark.parametrize("where", ["unknown top-level key", "description", "grid"])
def test_an_alias_bomb_in_any_key_is_refused_before_it_unfolds(tmp_path, where):
    text = {"unknown top-level key": TINY + f"junk: {bomb()}\n",
            "description": TINY + f"description: {bomb()}\n",
            "grid": TINY.replace("grid: {depth: [1, 2], attention: [self, re]}", f"grid: {{depth: {bomb()}}}")}[where]
    path = tmp_path / "bomb.yaml"
    path.write_text(text)
    started = time.perf_counter()
    with pytest.raises(SpecError) as err:
        spec.read_yaml(path)
    assert time.perf_counter() - started < 1.0
    assert err.value.exit_code == 2 and str(err.value).startswith(f"{path}: ")
    assert "aliases unfold to more than 100,000 values" in str(err.value)


def test_an_alias_bomb_in_a_set_value_is_refused():
    started = time.perf_counter()
    with pytest.raises(SpecError, match=r"^--set: description=.*more than 100,000 values") as err:
        parse_sets([f"description={bomb()}"])
    assert time.perf_counter() - started < 1.0 and len(str(err.value)) < 400  # the value quoted, cut short


def _limited(gib: int):
    def limit():
        import resource
        resource.setrlimit(resource.RLIMIT_DATA, (gib << 30, gib << 30))  # the heap: an unfolding bomb hits it
    return limit


@pytest.mark.parametrize("argv", [["plan", "{bomb}", "--no-estimate"], ["report", "{bomb}"],
                                  ["plan", "{ok}", "--no-estimate", "--set", f"junk={bomb()}"]])
def test_the_command_refuses_an_alias_bomb_in_bounded_memory(tmp_path, argv):
    """The issue's reproduction, as a user runs it: 22 GB before; now exit 2 at once, in under 2 GiB."""
    (tmp_path / "bomb.yaml").write_text(TINY + f"junk: {bomb()}\n")
    (tmp_path / "ok.yaml").write_text(TINY)
    argv = [a.format(bomb=tmp_path / "bomb.yaml", ok=tmp_path / "ok.yaml") for a in argv]
    proc = subprocess.run([sys.executable, "-m", "bench.cli", *argv], capture_output=True, text=True, timeout=120,
                          preexec_fn=_limited(2), cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "more than 100,000 values" in one_line_error(proc.stderr)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bomb.yaml", "ok.yaml"]  # nothing written


def test_ordinary_anchors_aliases_and_merge_keys_still_work(tmp_path):
    path = tmp_path / "anchors.yaml"
    path.write_text(textwrap.dedent("""
        name: anchors
        data: {name: shapes, train_size: 48, test_size: 24}
        base: &base {img_size: 16, patch_size: 4, embed_dim: 16, num_heads: 2, mlp_ratio: 2}
        model: {<<: *base, embed_dim: 32}
        train: {epochs: 1, batch_size: 16}
        grid:
          - {depth: &depths [1, 2], attention: [self]}
          - {depth: *depths, attention: [re], re_norm: [layer]}
        seeds: [0]
        compare: {baseline: {attention: self}, arms: {re-attention: {attention: re}}}
    """))
    raw = spec.read_yaml(path)  # a merge key (`<<: *base`) is no duplicate; the keys written beside it win
    assert raw["model"] == {"img_size": 16, "patch_size": 4, "embed_dim": 32, "num_heads": 2, "mlp_ratio": 2}
    assert raw["grid"][1]["depth"] is raw["grid"][0]["depth"] == [1, 2]
    with pytest.raises(SpecError, match="base=.*unknown section"):  # only the anchor's section is unknown
        spec.load(path)
    del raw["base"]
    sweep = spec.parse(raw, str(path))
    assert [(v.depth, v.embed_dim, v.attention, v.re_norm) for v in sweep.variants] == [
        (1, 32, "self", "batch"), (2, 32, "self", "batch"), (1, 32, "re", "layer"), (2, 32, "re", "layer")]
    # a fan-out below the bound is fine: 9 aliases x 4 levels unfold to 9**4 = 6561 values
    path.write_text(TINY + f"description: null\nx: {bomb(levels=4)}\n")
    small = spec.read_yaml(path)["x"]
    assert len(small) == 5 and len(small[4]) == 9 and small[4][0][0][0][0] == ["lol"] * 9


@pytest.mark.parametrize("tail,words", [
    ("junk: &x [*x]\n", "line 10: an alias refers to the value that contains it"),
    ("junk: &x {b: *x}\n", "line 10: an alias refers to the value that contains it"),
    ("junk: " + "[" * 5000 + "]" * 5000 + "\n", "nested more than 64 levels deep"),
    ("junk: " + "[" * 70 + "]" * 70 + "\n", "nested more than 64 levels deep"),
    ("? [a, b]\n: 1\n", "line 10, column 3: a list cannot be a key"),
    ("2020-01-01: 1\n", "2020-01-01=1: unknown section"),
])
def test_yaml_that_python_cannot_hold_is_one_spec_error(tmp_path, capsys, tail, words):
    """A value containing itself (the report's JSON copy: 'Circular reference detected'), a
    date as a key (JSON keys: TypeError), a list as a key (unhashable) and deep nesting
    (RecursionError) were internal errors."""
    path = tmp_path / "f.yaml"
    path.write_text(TINY + tail)
    code, out, err = cli(capsys, "plan", path, "--no-estimate", "--device", "cpu")
    assert code == 2 and out == ""
    line = one_line_error(err)
    assert line.startswith(f"error: {path}: ") and words in line


# --- studies shared by the command tests (7 trials in a few seconds) --------------------------

@pytest.fixture(scope="module")
def studies(tmp_path_factory):
    """results/: tiny (4 variants, no side-by-side pass during its run), one (1 of them, no
    compare) and two (depth 1: self and re, 2 epochs)."""
    root = tmp_path_factory.mktemp("studies")
    path = root / "tiny.yaml"
    path.write_text(TINY)
    results = root / "results"
    for sets in ({}, {"name": "one", "grid": {"depth": [1], "attention": ["self"]}, "compare": None},
                 {"name": "two", "grid": {"depth": [1], "attention": ["self", "re"]}, "train.epochs": 2}):
        api.run_sweep(spec.load(path, {"profile.rounds": 0, **sets}),
                      RunContext(results_dir=results, device="cpu", quiet=True))
    return results


def tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() if p.is_file() else b"<dir>" for p in sorted(root.rglob("*"))}


def copy_results(studies, tmp_path) -> Path:
    import shutil
    shutil.copytree(studies, tmp_path / "base" / "results")
    return tmp_path / "base" / "results"


# --- one study-name rule in every command ----------------------------------------------------

BAD_NAMES = ["../x", "a/b", "/abs/x", "..", ".hidden"]


@pytest.mark.parametrize("bad", BAD_NAMES)
@pytest.mark.parametrize("command", ["report", "worker", "time", "fidelity", "fidelity --reference", "collapse"])
def test_every_command_refuses_a_study_name_that_leaves_results(studies, tmp_path, capsys, command, bad):
    results = copy_results(studies, tmp_path)
    if bad.startswith("/"):
        bad = str(tmp_path / "abs" / "x")
    argv = {"report": ["report", bad], "worker": ["worker", bad, "--device", "cpu", "--quiet"],
            "time": ["time", bad, "--device", "cpu", "--quiet"],
            "fidelity": ["fidelity", bad, "--reference", "tiny"],
            "fidelity --reference": ["fidelity", "tiny", "--reference", bad],
            "collapse": ["collapse", bad, "--trial", "0", "--device", "cpu", "--images", "4"]}[command]
    before = tree(tmp_path)
    code, out, err = cli(capsys, *argv, "--results", results)
    assert code == 2 and out == ""
    line = one_line_error(err)
    flag = "--reference" if command == "fidelity --reference" else "NAME"
    assert line.startswith(f"error: {flag}: name=") and "must be a plain file name" in line
    assert tree(tmp_path) == before  # nothing written, inside --results or out of it


def test_a_good_name_still_works_in_those_commands(studies, tmp_path, capsys):
    results = copy_results(studies, tmp_path)
    code, out, err = cli(capsys, "report", "tiny", "--results", results)
    assert code == 0 and str(results / "tiny" / "report.md") in out


def test_report_names_the_file_whose_name_is_bad(tmp_path, capsys):
    path = tmp_path / "s.yaml"
    path.write_text(TINY.replace("name: tiny", "name: ../up"))
    code, out, err = cli(capsys, "report", path, "--results", tmp_path / "results")
    assert code == 2 and one_line_error(err).startswith(f"error: {path}: name='../up': must be a plain file name")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.yaml"]


# --- bench time: exactly the study's variants; a study with nothing finished --------------------

def test_time_times_exactly_the_studys_variants(studies, tmp_path, capsys):
    """The stored spec's base model (depth 12 here: TINY's model sets none) was timed too; and the
    spec's profile.rounds: 0 (no pass during runs) made `bench time` an internal StatisticsError."""
    from bench.study.ledger import Ledger
    from bench.study.storage import default_url
    results = copy_results(studies, tmp_path)
    code, out, err = cli(capsys, "time", "tiny", "--results", results, "--device", "cpu", "--quiet")
    assert code == 0, err
    side = Ledger.open(default_url(results, "tiny"), "tiny").side_by_side()
    assert set(side["variants"]) == {spec.variant_key(v) for v in spec.load(studies.parent / "tiny.yaml").variants}
    assert len(side["variants"]) == 4 and side["rounds"] == 5  # the default, where the spec's is 0
    code, out, err = cli(capsys, "time", "one", "--results", results, "--device", "cpu", "--quiet", "--rounds", "1")
    side = Ledger.open(default_url(results, "one"), "one").side_by_side()
    assert code == 0 and len(side["variants"]) == 1 and side["rounds"] == 1


def test_time_names_variants_as_the_report_does(studies, tmp_path, capsys):
    results = copy_results(studies, tmp_path)
    code, out, err = cli(capsys, "time", "tiny", "--results", results, "--device", "cpu", "--rounds", "1")
    assert code == 0, err
    for name in ("depth=1 attention=self", "depth=1 attention=re", "depth=2 attention=self", "depth=2 attention=re"):
        assert name in out
    assert not any(spec.variant_key(v) in out for v in spec.load(studies.parent / "tiny.yaml").variants)


def test_fidelity_against_a_study_whose_trials_all_failed_says_so(studies, tmp_path, capsys):
    import sqlite3
    results = copy_results(studies, tmp_path)
    with sqlite3.connect(results / "one" / "study.db") as con:  # every record failed, as when the data vanished
        for tid, value in con.execute("SELECT trial_id, value_json FROM trial_user_attributes WHERE key = 'record'"):
            record = {**json.loads(value), "status": "failed", "top1": None, "error": "gone"}
            con.execute("UPDATE trial_user_attributes SET value_json = ? WHERE trial_id = ? AND key = 'record'",
                        (json.dumps(record), tid))
    code, out, err = cli(capsys, "fidelity", "tiny", "--reference", "one", "--results", results)
    assert code == 1 and one_line_error(err) == ("error: study 'one' has no complete trial with a top-1 (1 failed): "
                                                 "nothing to compare; its report says why")


def test_time_on_a_study_with_no_finished_trials_is_one_line(tmp_path, capsys):
    from bench.study.ledger import Ledger
    from bench.study.storage import default_url
    path = tmp_path / "tiny.yaml"
    path.write_text(TINY)
    sweep = spec.load(path)
    (tmp_path / "results" / "tiny").mkdir(parents=True)
    ledger = Ledger.for_sweep(sweep, default_url(tmp_path / "results", "tiny"))
    ledger.bind(sweep)
    ledger.enqueue(sweep.trials())  # queued, none run
    before = tree(tmp_path)
    code, out, err = cli(capsys, "time", "tiny", "--results", tmp_path / "results", "--device", "cpu", "--quiet")
    assert code == 1
    assert one_line_error(err) == ("error: study 'tiny' has no finished trials yet: nothing to time "
                                   "(`bench run` it first)")
    assert ledger.side_by_side() is None and tree(tmp_path) == before  # nothing timed, nothing written


# --- bench fidelity with too few shared variants for a ranking ---------------------------------

def test_fidelity_with_one_shared_variant_says_tau_needs_three(studies, tmp_path, capsys):
    results = copy_results(studies, tmp_path)
    code, out, err = cli(capsys, "fidelity", "tiny", "--reference", "one", "--results", results)
    assert code == 0, err
    assert out.splitlines()[0] == ("tiny against one: 1 variant, no Kendall τ or Spearman ρ (they need at least 3 "
                                   "variants both studies measured, 1 here)")
    text = (results / "tiny" / "fidelity-one.md").read_text()
    assert "Over the 1 variant both studies measured (mean top-1 over seeds): no Kendall τ or Spearman ρ" in text
    assert "3 variant(s) only in the proxy" in text


def test_fidelity_with_two_shared_variants_still_compares_the_arm(studies, tmp_path, capsys):
    """Two variants rank either way (τ = ±1 whatever the studies say): no τ, but depth 1's
    re-attention arm exists in both, and its decision is compared."""
    results = copy_results(studies, tmp_path)
    code, out, err = cli(capsys, "fidelity", "tiny", "--reference", "two", "--results", results)
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].startswith("tiny against two: 2 variants, no Kendall τ or Spearman ρ (they need at least 3")
    assert lines[1].startswith("decisions: ") and " of 1 arm(s)" in lines[1]
    text = (results / "tiny" / "fidelity-two.md").read_text()
    assert "## Decisions" in text and "\n| 1 | re-attention | " in text  # depth 1's arm, in both studies


def test_fidelity_table_has_no_agreement_below_three_shared_variants():
    import pandas as pd
    from bench.report.fidelity import fidelity
    rows = lambda top1: pd.DataFrame([  # noqa: E731
        {"status": "complete", "top1": t, "seed": 0, "depth": d, "embed_dim": 16, "attention": "self",
         "key": f"v{d}-s0", "infer_gmacs": 0.1 * d, "param_count": 0.1 * d} for d, t in top1])
    assert fidelity(rows([(1, 50.0)]), rows([(1, 60.0)]), None)["agreement"] is None
    assert fidelity(rows([(1, 50.0), (2, 55.0)]), rows([(1, 60.0), (2, 50.0)]), None)["agreement"] is None
    three = fidelity(rows([(1, 50.0), (2, 55.0), (3, 60.0)]), rows([(1, 60.0), (2, 65.0), (3, 70.0)]), None)
    assert three["variants"] == 3 and three["agreement"].tau == pytest.approx(1.0)


# --- property-based: any spec file, any --set value ------------------------------------------

import dataclasses  # noqa: E402

from bench import config  # noqa: E402
from bench.variant import FIELD_TYPES  # noqa: E402

# every key a spec knows (so that examples reach deep into the checks), a few near misses, and anything
KNOWN = sorted({*spec.SECTIONS, *FIELD_TYPES, "by", "baseline", "arms", "preset", *config.RANGE_KEYS,
                *(f.name for cls in (config.DataConfig, config.TrainConfig, config.ProfileConfig,
                                     config.CollapseConfig, config.StudyConfig, config.AugmentConfig)
                  for f in dataclasses.fields(cls))})
WORDS = ["self", "re", "shapes", "cifar10", "cifar100", "imagefolder", "fp32", "bf16", "auto", "deit", "none",
         "batch", "layer", "top1", "gmacs", "latency", "peak_mem", "tpe", "grid", "random", "median", "stream",
         "device", "rand-m9-mstd0.5-inc1", "v", "raw", "re-attention", "wider", "~/data", "", " "]
keys = st.sampled_from(KNOWN) | st.sampled_from(["dept", "Name", "grid.depth", "<<", "?"]) | st.text(max_size=6) \
    | st.integers(-3, 3) | st.booleans() | st.none()
scalars = (st.none() | st.booleans() | st.integers(-3, 40) | st.integers() | st.sampled_from([2**31, 2**64, -2**63])
           | st.floats() | st.sampled_from([0.0, 0.5, 1.0, 1e308, -1e-308]) | st.sampled_from(WORDS)
           | st.text(max_size=10) | st.dates())
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(keys, inner, max_size=4),
                      max_leaves=10)
# YAML's own syntax, so that text parses more often than not, and breaks in YAML's own ways
TOKENS = ["name: ", "data: ", "model: ", "grid: ", "train: ", "seeds: ", "compare: ", "search: ", "study: ",
          "depth: ", "{", "}", "[", "]", ", ", ": ", "- ", " ", "\n", "\n  ", "&a ", "*a", "&b ", "*b", "!!str ",
          "!!python/object:os.system ", "!!binary ", "!!set ", "!!omap ", "!!int ", "!!float ", "!!timestamp ",
          "<<: ", "? ", "'", '"', "# ", "|\n  ", ">\n  ", "---\n", "...\n", "%YAML 1.1\n", "%TAG ! tag:x\n", "1",
          "-1", "1e999", ".nan", ".inf", "-.inf", "null", "~", "true", "no", "2020-01-01", "0x1F", "0o17", "1_000",
          "12:30:00", "%", "@", "`", "\t", "\x00", "\ufeff", "\x85", "\u2028", "é", "\\", "=", "."]
yamlish = st.lists(st.sampled_from(TOKENS) | st.text(max_size=4), max_size=30).map("".join)

PROPERTY = settings(max_examples=int(os.environ.get("BENCH_PROPERTY_EXAMPLES", 300)), deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
SLOW = settings(PROPERTY, max_examples=2000)


def check_outcome(capsys, argv) -> int:
    """``bench`` in-process: exit 0 (JSON on stdout), or 1 or 2 with exactly one line of error;
    never a traceback, never an "internal error"; a second at most."""
    started = time.perf_counter()
    try:
        code = main([str(a) for a in argv])
    except SystemExit as stop:  # argparse's own usage errors
        code = stop.code
    out, err = capsys.readouterr()
    assert time.perf_counter() - started < 5.0, argv  # bounded (a spec's check is milliseconds; 5 s: a busy host)
    assert code in (0, 1, 2), (code, err)
    if code == 0:
        assert isinstance(json.loads(out), list) and "error" not in err
    else:
        one_line_error(err)
    return code


def plan_argv(path, *extra):
    return ["plan", path, "--no-estimate", "--json", "--device", "cpu", *extra]  # validates in full, trains nothing


DELETE = object()  # an edit that removes the key


def put(raw: dict, path: list, value) -> dict:
    """``raw`` with ``value`` at ``path`` (a mapping made wherever one is missing; DELETE: removed)."""
    node = raw
    for key in path[:-1]:
        if not isinstance(node.get(key), dict):
            node[key] = {}
        node = node[key]
    if value is DELETE:
        node.pop(path[-1], None)
    else:
        node[path[-1]] = value
    return raw


def _fields(*classes) -> list[str]:
    return [f.name for cls in classes for f in dataclasses.fields(cls)]


TINY_RAW = yaml.safe_load(TINY)
# the paths a spec has, so that most examples pass the key checks and reach the value checks
PATHS = [[s] for s in spec.SECTIONS] + [
    *(["data", k] for k in sorted({k for ks in config.DATA_KEYS.values() for k in ks})),
    *(["data", "augment", k] for k in ["preset", *_fields(config.AugmentConfig)]),
    *([s, f] for s in ("model", "grid", "search") for f in FIELD_TYPES),
    *(["search", f, r] for f in ("depth", "embed_dim", "mlp_ratio", "attention") for r in config.RANGE_KEYS),
    *(["train", k] for k in _fields(config.TrainConfig)), *(["profile", k] for k in _fields(config.ProfileConfig)),
    *(["collapse", k] for k in _fields(config.CollapseConfig)), *(["study", k] for k in _fields(config.StudyConfig)),
    *(["compare", k] for k in ("by", "baseline", "arms")),
    *(["compare", *at, f] for at in (["baseline"], ["arms", "re-attention"], ["arms", "wider"]) for f in FIELD_TYPES)]
paths = st.sampled_from(PATHS) | st.tuples(st.sampled_from(PATHS), keys).map(lambda t: [*t[0], t[1]]) \
    | st.lists(keys, min_size=1, max_size=3)
plain = st.sampled_from([0, 1, 2, 3, 4, 8, 16, 32, 64, -1, 0.5, 1.5, 1e-9, 1e-300, 1e308, 10**12, 2**1100, True, False,
                         None, *WORDS])
edit_values = st.just(DELETE) | plain | st.lists(plain, max_size=4) | values
edits = st.lists(st.tuples(paths, edit_values), min_size=1, max_size=4)


@pytest.fixture(scope="module", autouse=True)
def _torch_loaded():
    import bench.api  # noqa: F401  (torch imported once, outside any example's time)


@PROPERTY
@given(edits=edits)
@example(edits=[(["data", "augment", "preset"], [])])  # found: a list looked up in a dict (TypeError)
@example(edits=[(["compare", "by"], [[]])])  # found: the same, in compare.by
@example(edits=[([datetime.date(2020, 1, 1)], 1)])  # a date as a key: JSON's TypeError in the copy --set made
def test_any_values_in_a_valid_spec_are_one_clear_outcome(tmp_path, capsys, edits):
    raw = json.loads(json.dumps(TINY_RAW))
    for path, value in edits:
        put(raw, path, value)
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(raw, allow_unicode=True, sort_keys=False), encoding="utf-8")
    check_outcome(capsys, plan_argv(path))


numbers = st.sampled_from([0, 1, 2, 3, 16, -1, 0.5, 1e-300, 1e308, -1e308, 10**12, 2**63, 2**1100, -2**1100])
SIZES = [p for p in PATHS if len(p) > 1 and p[0] in ("model", "search")  # where sizes multiply
         and FIELD_TYPES.get(p[1]) in (int, float, (int, None))]
study = {"grid": None, "compare": None, "search": {"depth": [1, 2]}, "study": {"objectives": ["top1"]}}


@PROPERTY
@given(edits=st.lists(st.tuples(st.sampled_from(SIZES) | st.sampled_from(PATHS), numbers), min_size=1, max_size=6),
       sampler=st.sampled_from([None, "tpe", "grid"]))
def test_extreme_numbers_anywhere_are_one_clear_outcome(tmp_path, capsys, edits, sampler):
    """Sizes past what a float holds, steps that make a grid of 10**300 values: an error, at once."""
    raw = json.loads(json.dumps(TINY_RAW))
    if sampler:  # a study: its search space gets the numbers too
        raw.update(json.loads(json.dumps(study)), study={"objectives": ["top1"], "sampler": sampler})
    for path, value in edits:
        put(raw, path, value)
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False), encoding="utf-8")
    check_outcome(capsys, plan_argv(path))


@PROPERTY
@given(text=yamlish, after_tiny=st.booleans())
def test_any_yaml_ish_text_is_one_clear_outcome(tmp_path, capsys, text, after_tiny):
    path = tmp_path / "spec.yaml"
    path.write_text((TINY if after_tiny else "") + text, encoding="utf-8", errors="surrogatepass")
    check_outcome(capsys, plan_argv(path))


set_keys = st.sampled_from(["train.epochs", "model.depth", "model.embed_dim", "grid.depth", "grid", "data.name",
                            "data", "name", "seeds", "compare.arms", "compare", "data.augment", "study.n_trials",
                            "search.depth", "profile.rounds", "train", "model", "description", "data.augment.mixup",
                            "grid.depth.x", "", ".", "a..b", " ", "name.x"]) | st.text(max_size=8)


@PROPERTY
@given(sets=st.lists(st.tuples(set_keys, st.sampled_from(["=", ""]), yamlish | st.text(max_size=12)), max_size=3))
def test_any_set_values_are_one_clear_outcome(sweep_file, capsys, sets):
    check_outcome(capsys, plan_argv(sweep_file, *(f"--set={k}{eq}{v}" for k, eq, v in sets)))


@pytest.mark.slow
@SLOW
@given(edits=edits, sets=st.lists(st.tuples(set_keys, values.map(lambda v: yaml.safe_dump(v).strip())), max_size=2))
def test_many_more_specs_and_set_values(tmp_path, capsys, edits, sets):
    raw = json.loads(json.dumps(TINY_RAW))
    for path, value in edits:
        put(raw, path, value)
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(raw, allow_unicode=True, sort_keys=False), encoding="utf-8")
    check_outcome(capsys, plan_argv(path, *(f"--set={k}={v}" for k, v in sets)))


STUDY = TINY.replace("grid: {depth: [1, 2], attention: [self, re]}", "search: {depth: [1, 2]}").replace(
    "compare: {baseline: {attention: self}, arms: {re-attention: {attention: re}}}", "study: {objectives: [top1]}")
GRID_STUDY = STUDY.replace("[top1]", "[top1], sampler: grid")
BIG = 2**1100


@pytest.mark.parametrize("text,sets,words", [
    # what the property tests found: each was an "internal error" (or a hang, or memory without end)
    (TINY, ["data.augment={preset: []}"], "data.augment=[]: unknown preset"),
    (TINY, ["data.name=[x]"], "data.name=['x']: expected str, got list"),
    (TINY, ["compare.by=[[]]"], "compare.by=[]: expected str, got list"),
    (STUDY, ["study.objectives=[[top1]]"], "study.objectives=['top1']: expected str, got list"),
    (TINY, [f"model.embed_dim={BIG}"], "model.embed_dim=135829852904938584...8948790552744165376: must be at most"),
    (TINY, [f"model.img_size={2**40}"], "model.img_size=1099511627776: must be at most 2,147,483,647"),
    (TINY, ["model.mlp_ratio=1.0e+308"], "model.mlp_ratio=1e+308: gives an MLP wider than 2,147,483,647"),
    (TINY, [f"data.difficulty={BIG}"], "data.difficulty=135829852904938584...8948790552744165376: must be a finite"),
    (TINY, ["train.epochs\n"], "--set: 'train.epochs\\n'='train.epochs\\n': expected key=value"),  # was 2 lines
    (TINY + "junk: !!int\n", [], "not valid YAML: a tagged value does not read as its tag (IndexError"),
    (TINY + "junk: !!timestamp\n", [], "not valid YAML: a tagged value does not read as its tag (AttributeError"),
    ("\x1f", [], "not valid YAML: unacceptable character #x001f"),
    (GRID_STUDY.replace("{depth: [1, 2]}", "{depth: {low: 1, high: 100000000000}}"), [],
     "search.depth={'high': 100000000000, 'low': 1, 'step': None}: the grid sampler would try 100,000,000,000"),
    (GRID_STUDY.replace("{depth: [1, 2]}", "{mlp_ratio: {low: 1, high: 1.0e+308, step: 1.0e-300}}"), [],
     "the grid sampler would try inf values of it: more than 10,000"),
    # counted before any is built (its first point is impossible: one error at once, before and after)
    (TINY, ["grid={depth: [1,2,3,4,5,6,7,8,9,10], embed_dim: [16,32,48,64,80,96,112,128,144,160], "
            "num_heads: [3,1,2,4,8], mlp_ratio: [1,2,3,4], img_size: [16,32,48], attention: [self, re]}"],
     "has 12,000 points: more than 10,000 (each is trained once per seed)"),
])
def test_inputs_the_property_tests_found(tmp_path, capsys, text, sets, words):
    path = tmp_path / "spec.yaml"
    path.write_text(text)
    started = time.perf_counter()
    code, out, err = cli(capsys, *plan_argv(path, *(f"--set={s}" for s in sets)))
    assert time.perf_counter() - started < 2.0 and code == 2 and out == ""
    assert words in one_line_error(err)
