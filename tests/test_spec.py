"""Sweep specs: parsing, grid expansion, overrides, and one clear error per mistake."""
from pathlib import Path

import pytest
import yaml

from bench import spec
from bench.errors import SpecError
from bench.models import Variant

SWEEPS = sorted((Path(__file__).parent.parent / "sweeps").glob("*.yaml"))

BASE = """
name: t
data: {name: shapes, train_size: 64, test_size: 32}
model: {img_size: 16, patch_size: 4, embed_dim: 16, num_heads: 2, mlp_ratio: 2}
train: {epochs: 1, batch_size: 16}
grid: {depth: [1, 2], attention: [self, re]}
seeds: [0, 1]
compare: {baseline: {attention: self}, arms: {re-attention: {attention: re}}}
"""


def write(tmp_path, text, name="sweep.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def edit(text, **sections):
    raw = yaml.safe_load(text)
    for key, value in sections.items():
        if value is ...:
            raw.pop(key)
        else:
            raw[key] = value
    return yaml.safe_dump(raw, sort_keys=False)


@pytest.mark.parametrize("path", SWEEPS, ids=lambda p: p.name)
def test_shipped_sweeps_validate_and_open_with_their_command(path, tmp_path):
    sets = None
    if "name: imagefolder" in path.read_text():  # ImageNet's layout, class folders only: enough to validate
        for split in ("train", "val"):
            for k in range(100):
                (tmp_path / split / f"n{k:08d}").mkdir(parents=True)
        sets = {"data.root": str(tmp_path)}
    sweep = spec.load(path, sets)
    if sets:
        assert {v.num_classes for v in sweep.variants} == {100}
    assert sweep.variants and (sweep.trials() or sweep.search)  # a study's trials come from its sampler
    head = path.read_text().splitlines()
    command = f"bench {'study' if sweep.search else 'run'} sweeps/{path.name}"
    assert head[0].startswith("# ") and any(command in line for line in head[:12])


def test_grid_product_seeds_and_keys(tmp_path):
    sweep = spec.load(write(tmp_path, BASE))
    assert [(v.depth, v.attention) for v in sweep.variants] == [(1, "self"), (1, "re"), (2, "self"), (2, "re")]
    assert sweep.variants[0].num_classes == 10  # from the dataset
    trials = sweep.trials()
    assert len(trials) == 8 and len({t.key for t in trials}) == 8
    assert trials[0].key == spec.trial_key(sweep.variants[0], 0)  # stable: from the config alone
    assert sweep.compare == {"by": ["depth"], "baseline": {"attention": "self"},
                             "arms": {"re-attention": {"attention": "re"}}}


def test_grid_list_is_a_union_without_duplicates(tmp_path):
    text = edit(BASE, grid=[{"depth": [2], "embed_dim": [16, 32]}, {"depth": [2], "attention": ["self", "re"]}],
                compare={"baseline": {"attention": "self", "embed_dim": 16},
                         "arms": {"wider": {"embed_dim": 32}, "re": {"attention": "re"}}})
    sweep = spec.load(write(tmp_path, text))
    assert [(v.embed_dim, v.attention) for v in sweep.variants] == [(16, "self"), (32, "self"), (16, "re")]
    assert sweep.compare["arms"] == {"wider": {"attention": "self", "embed_dim": 32},
                                     "re": {"attention": "re", "embed_dim": 16}}


def test_sets_override_by_dotted_name(tmp_path):
    sweep = spec.load(write(tmp_path, BASE), {"train.epochs": 3, "grid.depth": [4], "seeds": [7],
                                              "profile.speed": False})
    assert sweep.train.epochs == 3 and [v.depth for v in sweep.variants] == [4, 4] and sweep.seeds == [7]
    assert sweep.profile.speed is False


def test_train_null_profiles_only_and_needs_no_data(tmp_path):
    sweep = spec.load(write(tmp_path, edit(BASE, train=None, data=...)))
    assert sweep.train is None and sweep.data is None and sweep.variants[0].num_classes == 1000


@pytest.mark.parametrize("sections,sets,message", [
    (dict(trian={"epochs": 1}), {}, "trian={'epochs': 1}: unknown section (did you mean 'train'?)"),
    (dict(model={"embed_dimm": 16}), {}, "model.embed_dimm=16: unknown model field (did you mean 'embed_dim'?)"),
    (dict(train={"epochs": "six"}), {}, "train.epochs='six': expected int, got str"),
    (dict(train={"epoch": 2}), {}, "train.epoch=2: unknown train key (did you mean 'epochs'?)"),
    (dict(grid={"embed_dim": [16, 15]}), {},
     "grid.embed_dim=15: is not divisible by num_heads=2 (at grid point embed_dim=15)"),
    (dict(grid={"depht": [1]}), {}, "grid.depht=[1]: unknown variant field (did you mean 'depth'?)"),
    (dict(grid={"depth": []}), {}, "grid.depth=[]: needs at least one value"),
    (dict(grid={"re_blocks": [13]}), {}, "grid.re_blocks=13: re-attention needs 0..depth=12 blocks"),
    (dict(data={"name": "imagenet"}), {}, "data.name='imagenet': expected one of: shapes, cifar10"),
    (dict(data={"name": "shapes", "difficulty": 2}), {}, "data.difficulty=2: must be in [0, 1]"),
    (dict(data=...), {}, "data=None: training needs a dataset"),
    (dict(seeds=[0, 0]), {}, "seeds=[0, 0]: lists a seed twice"),
    (dict(seeds=["a"]), {}, "seeds='a': expected int, got str"),
    (dict(compare={"baseline": {"attention": "self"}, "arms": {"re": {"attention": "ra"}}}), {},
     "compare.arms.re={'attention': 'ra'}: matches no variant of the grid"),
    (dict(compare={"baseline": {"attention": "self"}, "arms": {"re": {"atention": "re"}}}), {},
     "compare.arms.re.atention='re': unknown variant field (did you mean 'attention'?)"),
    (dict(compare={"by": "deep", "arms": {"re": {"attention": "re"}}}), {}, "unknown variant field"),
    (dict(model={"num_classes": 5, "img_size": 16, "patch_size": 4, "embed_dim": 16, "num_heads": 2}), {},
     "model.num_classes=5: data 'shapes' has 10 classes"),
    (dict(name="../escape"), {}, "name='../escape': must be a plain file name"),
    (dict(data={"name": "shapes", "root": "/data"}), {},
     "data.root='/data': unknown key for data 'shapes'"),
    (dict(grid={"num_classes": [5]}), {}, "grid.num_classes=5: data 'shapes' has 10 classes"),
    (dict(profile={"warmup": -1}), {}, "profile.warmup=-1: must be at least 0"),
    ({}, {"train.lr": "x"}, "--set: train.lr='x': expected float, got str"),
    ({}, {"trian.lr": 1}, "--set: trian={'lr': 1}: unknown section (did you mean 'train'?)"),
])
def test_errors_name_file_key_and_value(tmp_path, sections, sets, message):
    path = write(tmp_path, edit(BASE, **sections))
    with pytest.raises(SpecError) as err:
        spec.load(path, sets)
    text = str(err.value)
    assert message in text and err.value.exit_code == 2
    if not sets:
        assert text.startswith(f"{path}: ")


def test_missing_cifar_is_caught_before_any_work(tmp_path):
    text = edit(BASE, data={"name": "cifar10", "root": str(tmp_path / "nowhere")},
                model={"img_size": 32, "patch_size": 8, "embed_dim": 16, "num_heads": 2})
    with pytest.raises(Exception) as err:
        spec.load(write(tmp_path, text))
    assert "cifar10 not found: looked in" in str(err.value) and "nowhere" in str(err.value)


def test_cifar_at_another_resolution_and_a_class_subset(tmp_path):
    (tmp_path / "cifar-10-batches-py").mkdir()
    text = edit(BASE, data={"name": "cifar10", "root": str(tmp_path), "classes": 4})  # 16 px: cached resized
    sweep = spec.load(write(tmp_path, text))
    assert {(v.img_size, v.num_classes) for v in sweep.variants} == {(16, 4)}
    text = edit(text, model={"img_size": 16, "patch_size": 4, "embed_dim": 16, "num_heads": 2, "num_classes": 10})
    with pytest.raises(SpecError, match=r"model.num_classes=10: data 'cifar10' has 4 classes"):
        spec.load(write(tmp_path, text))


@pytest.mark.parametrize("text,message", [
    ("name: t\ngrid: {depth: [1, 2}\n", "not valid YAML: line 2"),
    ("name: t\nname: u\n", "duplicate key 'name'"),
    ("- a\n- b\n", "expected a mapping of sections"),
])
def test_malformed_yaml(tmp_path, text, message):
    path = write(tmp_path, text)
    with pytest.raises(SpecError) as err:
        spec.load(path)
    assert str(err.value).startswith(f"{path}: ") and message in str(err.value)


def test_unreadable_file(tmp_path):
    with pytest.raises(SpecError, match="cannot read the sweep file"):
        spec.load(tmp_path / "missing.yaml")


def test_apply_sets_leaves_the_original_alone():
    raw = {"train": {"epochs": 1}}
    assert spec.apply_sets(raw, {"train.epochs": 2, "profile.speed": False}) == {
        "train": {"epochs": 2}, "profile": {"speed": False}}
    assert raw == {"train": {"epochs": 1}}
    with pytest.raises(SpecError, match="train.epochs is not a section"):
        spec.apply_sets(raw, {"train.epochs.x": 1})


def test_trial_key_depends_on_every_field_that_changes_the_model():
    v = Variant(attention="re")
    assert spec.trial_key(v, 0) != spec.trial_key(v.replace(re_norm="layer"), 0) != spec.trial_key(v, 1)
    # one spelling per architecture: the same model, the same key
    assert spec.trial_key(Variant(mlp_ratio=2), 0) == spec.trial_key(Variant(mlp_ratio=2.0), 0)
    assert spec.trial_key(Variant(re_norm="layer"), 0) == spec.trial_key(Variant(), 0)  # no block re-attends
    assert spec.trial_key(v.replace(re_blocks=12), 0) == spec.trial_key(v, 0)


def test_grid_of_re_options_does_not_train_the_same_vit_twice(tmp_path):
    text = edit(BASE, grid={"attention": ["self", "re"], "re_norm": ["batch", "layer"]})
    sweep = spec.load(write(tmp_path, text))
    assert [(v.attention, v.re_norm) for v in sweep.variants] == [("self", "batch"), ("re", "batch"), ("re", "layer")]
