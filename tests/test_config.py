"""One home per rule: each default and rule of a spec lives beside its config (bench.config),
and every caller asks it. Each test here would have caught a copy that disagreed."""
import pytest
import torch

from bench import config, spec
from bench.cli import build_parser
from bench.costs import closed_form, estimated_macs
from bench.device import autocast
from bench.errors import SpecError, first_line
from bench.models import build_model
from bench.profiling import profile_model
from bench.variant import FIELD_TYPES, Variant, is_re_option, variant_label, varying_fields


def test_zero_warm_up_means_zero_in_profiling_and_in_the_plan(sweep_file):
    assert config.ProfileConfig(warmup=0).steps("cpu") == (0, 5)
    assert config.ProfileConfig().steps("cuda") == (10, 50) and config.ProfileConfig(iters=3).steps("cpu") == (2, 3)
    sweep = spec.load(sweep_file)  # profile: {batch_size: 4, warmup: 0, iters: 1}; 48 train, 24 test, 1 epoch
    v = sweep.variants[0]
    cf = closed_form(v)
    by_hand = 48 * cf["train_macs"] + 24 * cf["macs"] + (0 + 1) * 4 * (cf["train_macs"] + cf["macs"])
    assert estimated_macs(sweep, v, "cpu") == pytest.approx(by_hand)  # the old estimate took 2 warm-ups
    record = profile_model(build_model(v), v, config.ProfileConfig(dtype="fp32", batch_size=2, warmup=0, iters=1),
                           device=torch.device("cpu"))
    assert (record["warmup"], record["iters"]) == (0, 1)


def test_a_study_budget_is_its_grid_for_the_grid_sampler():
    dims = config.parse_space({"depth": [1, 2, 3], "attention": ["self", "re"]})
    assert config.StudyConfig(sampler="grid").budget(dims) == 6
    assert config.StudyConfig(sampler="grid", n_trials=4).budget(dims) == 4
    assert config.StudyConfig().budget(dims) == config.DEFAULT_N_TRIALS


def test_re_attention_options_exist_only_with_re_attention():
    options = [f for f in FIELD_TYPES if is_re_option(f)]
    assert options == ["re_blocks", "re_norm", "re_transform_scale"]
    vit = Variant(attention="self", re_norm="layer", re_transform_scale=True, re_blocks=3)
    assert all(getattr(vit, f) == getattr(Variant(), f) for f in options)  # reset: one spelling per model
    assert not any(vit.applies(f) for f in options) and all(Variant(attention="re").applies(f) for f in options)
    grid = [Variant(depth=2, attention=a, re_norm=n) for a in ("self", "re") for n in ("batch", "layer")]
    fields = varying_fields(grid)
    assert variant_label(grid[0], fields) == "attention=self"  # no re_norm in a ViT's label
    assert variant_label(grid[3], fields) == "attention=re re_norm=layer"


def test_one_set_of_dtypes_for_specs_profiling_and_the_cli():
    assert config.DTYPE_SETTINGS == ("auto", *config.DTYPES)
    for section in (config.TrainConfig, config.ProfileConfig):
        with pytest.raises(SpecError, match="expected auto, fp32, bf16"):
            section(dtype="fp16")
        assert section(dtype="auto").dtype == "auto"
    for dtype in config.DTYPES:
        with autocast(torch.device("cpu"), dtype):
            assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == (torch.bfloat16 if dtype == "bf16" else torch.float32)
    profile = build_parser()._subparsers._group_actions[0].choices["profile"]
    assert next(a for a in profile._actions if a.dest == "dtype").choices == config.DTYPE_SETTINGS
    assert config.resolve_dtype("auto", "cuda") == "bf16" and config.resolve_dtype("auto", torch.device("cpu")) == "fp32"


def test_first_line_of_an_error():
    assert first_line(RuntimeError("\n  boom in [x]  \nsecond line")) == "boom in [x]"
    assert first_line("") == "" and first_line(ValueError()) == ""


@pytest.mark.parametrize("key, value", [("data.train_size", 99999999999), ("data.test_size", 2**31),
                                        ("train.batch_size", 2**40), ("train.epochs", 2**31),
                                        ("profile.iters", 2**33), ("collapse.images", 2**31)])
def test_a_size_past_two_to_the_31_is_refused_where_it_is_given(sweep_file, key, value):
    with pytest.raises(SpecError) as err:
        spec.load(sweep_file, {key: value})
    assert str(err.value) == f"--set: {key}={value}: must be at most 2,147,483,647"


def test_a_size_the_machine_cannot_hold_is_refused_before_it_is_allocated(sweep_file, tmp_path, capsys):
    from bench.cli import main
    code = main(["run", str(sweep_file), "--device", "cpu", "--quiet", "--set", f"data.train_size={2**31 - 1}",
                 "--results", str(tmp_path / "r")])
    err = capsys.readouterr().err.strip()
    assert code == 1 and len(err.splitlines()) == 1 and "GiB of memory" in err and "data.train_size" in err
    assert not (tmp_path / "r").exists()  # nothing made: the study is not left behind


def test_a_learning_rate_that_overflows_is_refused_and_huge_numbers_print_short(sweep_file):
    with pytest.raises(SpecError, match=r"train.lr=1e\+300: must be in \(0, 10\]"):
        spec.load(sweep_file, {"train.lr": 1.0e300})
    from bench.console import fmt
    assert fmt(1e300) == "1e+300" and fmt(123456.0) == "123,456" and fmt(0.0001234) == "0.000123"
    assert fmt(-2.5e-9) == "-2.5e-09"
