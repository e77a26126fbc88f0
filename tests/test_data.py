"""Datasets: the built-in shapes, CIFAR's on-disk format, ImageFolder. (The loader's tests are
test_loader.py.)"""
import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from bench.config import DataConfig
from bench.data import folders, sources as data
from bench.errors import BenchError


def folder_cfg(root, **kw) -> DataConfig:
    """The data section of the image folder at ``root``."""
    return DataConfig(name="imagefolder", root=str(root), **kw)


def test_shapes_are_deterministic_in_the_seed():
    a, b = data.make_shapes(64, seed=3), data.make_shapes(64, seed=3)
    c = data.make_shapes(64, seed=4)
    assert a.images.shape == (64, 3, 32, 32) and a.images.dtype == torch.uint8
    assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)
    assert not torch.equal(a.images, c.images)
    ds = data.shapes(train_size=50, test_size=20, seed=3)
    assert not torch.equal(ds.train.images[:20], ds.test.images)  # disjoint streams
    assert ds.num_classes == 10 and ds.img_size == 32


def test_shapes_classes_are_not_told_apart_by_pixel_statistics():
    split = data.make_shapes(4000, seed=0, difficulty=0.5)
    x = split.images.float() / 255
    per_image = torch.stack([x.mean((1, 2, 3)), x.std((1, 2, 3))], 1)  # brightness, contrast
    for stat in range(2):
        means = torch.stack([per_image[split.labels == k, stat].mean() for k in range(10)])
        spread = per_image[:, stat].std()
        assert (means.max() - means.min()) < 0.5 * spread  # classes overlap in every statistic
    assert torch.bincount(split.labels, minlength=10).min() > 300  # balanced


@pytest.mark.parametrize("kind", range(len(data.SHAPES)))
def test_every_shape_is_mirror_symmetric(kind):
    """Horizontal flips keep the label, so flip augmentation is safe on shapes."""
    c = torch.arange(-8, 9, dtype=torch.float32)
    dy, dx = torch.meshgrid(c, c, indexing="ij")
    r = torch.full((1, 1, 1), 6.0)
    d = data._shape_distance(kind, dx[None], dy[None], r)
    assert torch.allclose(d, d.flip(-1), atol=1e-5)
    assert (d < 0).sum() > 10  # the shape has ink


def test_difficulty_out_of_range():
    with pytest.raises(ValueError, match="difficulty"):
        data.make_shapes(4, difficulty=1.5)


def _write_cifar(root, name="cifar10", n=4):
    label_key, train_files, test_file, _, _ = folders.CIFAR[name]
    base = root / folders.CIFAR_FOLDERS[name]
    base.mkdir(parents=True)
    rng = np.random.default_rng(0)
    written = {}
    for i, fname in enumerate([*train_files, test_file]):
        arr = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        labels = [(i + j) % 10 for j in range(n)]
        with open(base / fname, "wb") as f:
            pickle.dump({"data": arr, label_key: labels}, f)
        written[fname] = (arr, labels)
    meta = ("batches.meta", {"label_names": [f"c{i}" for i in range(10)]}) if name == "cifar10" \
        else ("meta", {"fine_label_names": [f"f{i}" for i in range(100)]})
    with open(base / meta[0], "wb") as f:
        pickle.dump(meta[1], f)
    return written


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_cifar_on_disk_format(tmp_path, name):
    written = _write_cifar(tmp_path, name)
    ds = data.cifar(DataConfig(name=name, root=str(tmp_path)))
    _, train_files, test_file, _, _ = folders.CIFAR[name]
    assert len(ds.train) == 4 * len(train_files) and len(ds.test) == 4
    arr, labels = written[train_files[0]]
    # rows are 1024 red, 1024 green, 1024 blue values, each row-major 32×32
    assert ds.train.images[1, 2, 5, 7].item() == arr[1, 2 * 1024 + 5 * 32 + 7]
    assert ds.train.labels[:4].tolist() == labels
    assert ds.test.labels.tolist() == written[test_file][1]
    assert ds.num_classes == (10 if name == "cifar10" else 100)
    assert ds.classes[3] == ("c3" if name == "cifar10" else "f3")


def test_cifar_missing_says_where_and_how(tmp_path):
    with pytest.raises(BenchError) as err:
        data.cifar(DataConfig(name="cifar10", root=str(tmp_path)))
    text = str(err.value)
    assert str(tmp_path / "cifar-10-batches-py") in text and "download" in text


def _write_folder(root, colours, n_train=2):
    for split in ("train", "val"):
        for cls, rgb in colours.items():
            (root / split / cls).mkdir(parents=True)
            for i in range(n_train if split == "train" else 1):
                Image.new("RGB", (20, 12), rgb).save(root / split / cls / f"{i}.png")


def test_imagefolder_reads_and_resizes(tmp_path):
    _write_folder(tmp_path, {"red": (255, 0, 0), "blue": (0, 0, 255)})
    (tmp_path / "train" / "red" / "notes.txt").write_text("not an image")
    ds = data.imagefolder(folder_cfg(tmp_path), 8)
    assert ds.classes == ["blue", "red"]  # sorted, as torchvision's ImageFolder
    assert ds.train.images.shape == (4, 3, 8, 8) and ds.test.images.shape == (2, 3, 8, 8)
    assert sorted(ds.train.labels.tolist()) == [0, 0, 1, 1]
    assert torch.equal(data.imagefolder(folder_cfg(tmp_path), 8).train.labels, ds.train.labels)  # a fixed order
    red = ds.train.rows(slice(None))[ds.train.labels == 1][0]
    assert red[0].min().item() == 255 and red[1:].max().item() == 0


def test_imagefolder_subsets_hold_every_class(tmp_path):
    _write_folder(tmp_path, {"a": (255, 0, 0), "b": (0, 255, 0), "c": (0, 0, 255)}, n_train=10)
    ds = data.imagefolder(folder_cfg(tmp_path, train_size=6), 4)  # read class by class, shuffled once
    assert torch.bincount(ds.train.labels).tolist() == [2, 2, 2]
    assert ds.train.labels[:3].tolist() != [0, 0, 0] or ds.train.labels[3:].tolist() != [1, 1, 2]  # mixed


def test_imagefolder_missing_split(tmp_path):
    _write_folder(tmp_path, {"a": (1, 2, 3)})
    (tmp_path / "val" / "a" / "0.png").unlink()
    with pytest.raises(BenchError, match=f"class folder {tmp_path / 'val' / 'a'} holds no images"):
        data.imagefolder(folder_cfg(tmp_path), 8)
    with pytest.raises(BenchError, match=str(tmp_path / "nowhere" / "train")):
        data.imagefolder(folder_cfg(tmp_path / "nowhere"), 8)


# --- data where each machine keeps it: --data-root ---------------------------------------------


def _folder_sweep(tmp_path, root):
    import yaml
    path = tmp_path / "f.yaml"
    path.write_text(yaml.safe_dump({
        "name": "f", "data": {"name": "imagefolder", "root": str(root), "test_dir": "val"},
        "model": {"img_size": 8, "patch_size": 4, "embed_dim": 16, "num_heads": 2, "mlp_ratio": 2},
        "train": {"epochs": 1, "batch_size": 2}, "profile": {"batch_size": 2, "warmup": 0, "iters": 1, "rounds": 0},
        "collapse": None, "grid": {"depth": [1]}, "seeds": [0]}))
    return path


def test_a_machine_local_data_root_keeps_the_trials_and_refuses_other_data(tmp_path, capsys):
    """data.root is stored in the study: every machine had to keep the data at the same path.
    --data-root (or $BENCH_DATA_ROOT) reads it elsewhere without changing any trial's identity,
    and data that is not the study's — another file count, other files — is refused in one line."""
    import shutil
    from bench.cli import main
    from bench.study.ledger import Ledger
    first = tmp_path / "machine-a" / "pets"
    _write_folder(first, {"red": (255, 0, 0), "blue": (0, 0, 255)})
    path = _folder_sweep(tmp_path, first)
    results = str(tmp_path / "results")
    assert main(["run", str(path), "--device", "cpu", "--quiet", "--results", results]) == 0
    moved = tmp_path / "machine-b" / "mnt" / "pets"
    shutil.copytree(first, moved)
    shutil.rmtree(first)  # machine B does not have machine A's path
    args = ["run", str(path), "--device", "cpu", "--quiet", "--results", results, "--set", "seeds=[0, 1]"]
    assert main([*args, "--data-root", str(moved)]) == 0, capsys.readouterr().err  # not "other settings"
    lg = Ledger.locate("f", None, results)
    assert sorted(r["seed"] for r in lg.records()) == [0, 1]  # seed 0 kept, seed 1 trained from B's copy
    assert {r["config"]["data"]["root"] for r in lg.records()} == {str(first)}  # the identity is unchanged
    other = tmp_path / "machine-c" / "pets"
    _write_folder(other, {"red": (255, 0, 0), "blue": (0, 0, 255)}, n_train=3)  # another dataset there
    capsys.readouterr()
    assert main([*args[:-1], "seeds=[0, 1, 2]", "--data-root", str(other)]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"data at {other} is not the dataset study 'f' was made with" in err
    assert "--data-root" in err and sorted(r["seed"] for r in lg.records()) == [0, 1]
