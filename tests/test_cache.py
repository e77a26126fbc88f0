"""Real data at scale: the decoded cache (round trip, keys, concurrent builders, bad data),
class subsets and balanced sizes, both residencies, and timm's recipes."""
import json
import math
import multiprocessing
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from bench import spec
from bench.data import cache
from bench.data import loader as data
from bench.data.augment import Recipe
from bench.config import AugmentConfig, DataConfig, TrainConfig
from bench.errors import BenchError, SpecError
from bench.models import build_model
from bench.training import train
from bench.variant import Variant

CPU = torch.device("cpu")


def _bomb_png(path: Path, side: int = 20000) -> None:
    """A PNG whose header claims side × side pixels (400 M), with almost no data: PIL
    refuses it as a decompression bomb at open."""
    chunk = lambda kind, body: (struct.pack(">I", len(body)) + kind + body  # noqa: E731
                                + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF))
    ihdr = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
                     + chunk(b"IEND", b""))


def _mixed_folder(root: Path, per_class: int = 4) -> None:
    """Three classes, every format bench reads: PNG (RGB, RGBA, palette, 16-bit grey), JPEG
    (colour, grey), BMP, WebP; one image not square."""
    rng = np.random.default_rng(0)
    for split, n in (("train", per_class), ("val", 2)):
        for c, cls in enumerate(("ant", "bee", "cat")):
            folder = root / split / cls
            folder.mkdir(parents=True)
            for i in range(n):
                arr = rng.integers(0, 256, (12 + i, 10 + 2 * c, 3), dtype=np.uint8)
                im = Image.fromarray(arr)
                kind = (i + c) % 6
                if kind == 0:
                    im.save(folder / f"{i}.png")
                elif kind == 1:
                    im.save(folder / f"{i}.jpg", quality=90)
                elif kind == 2:
                    im.convert("RGBA").save(folder / f"{i}.png")
                elif kind == 3:
                    im.convert("P").save(folder / f"{i}.bmp")
                elif kind == 4:
                    im.convert("L").save(folder / f"{i}.JPEG")
                else:
                    im.save(folder / f"{i}.webp")


def _gradient16(path: Path) -> None:
    """A 16-bit grey PNG whose values run 0…65535: 8-bit mean 127.5 when scaled, ~255 when clipped."""
    ramp = np.linspace(0, 65535, 64 * 64).round().astype(np.uint16).reshape(64, 64)
    Image.fromarray(ramp).save(path)
    with Image.open(path) as im:
        assert im.mode.startswith("I")  # really 16-bit on disk


def test_cache_round_trips_exactly_every_format_and_16_bit(tmp_path, cache_dir):
    _mixed_folder(tmp_path / "d")
    _gradient16(tmp_path / "d" / "train" / "cat" / "deep.png")
    ds = data.imagefolder(tmp_path / "d", img_size=8)
    assert ds.source.parent == cache_dir and ds.source.name.startswith("d-8px-")
    assert isinstance(ds.train.images, np.memmap) and ds.train.images.shape == (13, 3, 8, 8)
    listed, labels = cache.list_split(tmp_path / "d" / "train", ["ant", "bee", "cat"])
    for (path, _, _), label in zip(listed, labels):  # each cached image is exactly that file decoded alone
        expected = cache.decode(path, 8)
        hits = [i for i in range(len(ds.train)) if np.array_equal(ds.train.images[i], expected)]
        assert hits and int(ds.train.labels[hits[0]]) == label
    deep = cache.decode(tmp_path / "d" / "train" / "cat" / "deep.png", 64)
    assert abs(deep.mean() - 127.5) < 1.0 and deep.min() == 0 and deep.max() == 255  # scaled, not clipped
    again = data.imagefolder(tmp_path / "d", img_size=8)  # reused, not rebuilt
    assert again.source == ds.source and np.array_equal(again.train.images, ds.train.images)


def test_cache_is_keyed_by_files_and_resolution(tmp_path):
    _mixed_folder(tmp_path / "d")
    first = cache.folder(tmp_path / "d", 8)
    assert first.built_s is not None
    assert cache.folder(tmp_path / "d", 8).built_s is None  # unchanged: reused
    assert cache.folder(tmp_path / "d", 6).path != first.path  # another resolution, another cache
    target = tmp_path / "d" / "train" / "ant" / "0.png"
    Image.new("RGB", (9, 9), (1, 2, 3)).save(target)
    os.utime(target, ns=(1, 1))
    changed = cache.folder(tmp_path / "d", 8)
    assert changed.path != first.path and changed.built_s is not None
    where = [i for i in range(len(changed.train_labels)) if np.all(changed.train_images[i, :, 0, 0] == [1, 2, 3])]
    assert len(where) == 1  # the new picture is in the rebuilt cache


def test_a_damaged_cache_says_which_folder_to_remove(tmp_path):
    _mixed_folder(tmp_path / "d")
    c = cache.folder(tmp_path / "d", 8)
    (c.path / "test.labels.npy").unlink()
    with pytest.raises(BenchError, match=f"the data cache {c.path} is damaged .*remove that folder"):
        cache.folder(tmp_path / "d", 8)


def test_bench_cache_lists_and_prunes_by_last_use(tmp_path, cache_dir, capsys):
    from bench.cli import main
    _mixed_folder(tmp_path / "d")
    old, new = cache.folder(tmp_path / "d", 8), cache.folder(tmp_path / "d", 6)
    os.utime(old.path / cache.USED, (1, 1))  # last used in 1970
    crashed = old.path.with_name(old.path.name + ".partial-99-dead")  # a build killed mid-way
    crashed.mkdir()
    (crashed / "train.images.npy").write_bytes(b"\0" * 100)
    listed = cache.caches(cache_dir)
    assert [c["cache"] for c in listed] == [new.path.name, old.path.name]
    assert listed[1]["images"] == 12 + 6 and listed[1]["px"] == 8
    assert abs(listed[1]["gib"] * 2**30 - (18 * 3 * 8 * 8 + 18 * 8)) < 4096  # images + labels (+ headers, meta)
    old.close()  # else this process holds it, and prune leaves a cache in use alone
    assert main(["cache", "--prune", "30", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["cache"] for r in rows] == [new.path.name] and not old.path.exists() and not crashed.exists()
    assert cache.folder(tmp_path / "d", 6).built_s is None  # the one in use stays


def _build_in_child(root: str, out: "multiprocessing.Queue") -> None:
    c = cache.folder(Path(root), 16, workers=1)
    out.put((str(c.path), c.built_s is not None, np.asarray(c.train_images).tobytes()))


def test_two_concurrent_builders_share_one_cache(tmp_path):
    _mixed_folder(tmp_path / "d", per_class=40)  # 126 images: long enough to overlap
    ctx = multiprocessing.get_context("spawn")
    results = ctx.Queue()
    procs = [ctx.Process(target=_build_in_child, args=(str(tmp_path / "d"), results)) for _ in range(2)]
    for p in procs:
        p.start()
    got = [results.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(30)
        assert p.exitcode == 0
    (path_a, built_a, bytes_a), (path_b, built_b, bytes_b) = got
    assert path_a == path_b and bytes_a == bytes_b
    assert built_a + built_b == 1  # one built it, the other waited and read it
    leftovers = [p.name for p in Path(path_a).parent.iterdir() if ".partial-" in p.name]
    assert leftovers == []
    assert np.array_equal(np.frombuffer(bytes_a, np.uint8).reshape(-1, 3, 16, 16),
                          cache.folder(tmp_path / "d", 16).train_images)


def test_parallel_build_matches_one_process(tmp_path, monkeypatch):
    _mixed_folder(tmp_path / "d", per_class=10)
    inline = cache.folder(tmp_path / "d", 8, cache_dir=tmp_path / "one", workers=1)
    monkeypatch.setattr(cache, "POOL_ABOVE_S", 0.0)
    pooled = cache.folder(tmp_path / "d", 8, cache_dir=tmp_path / "two", workers=2)
    assert np.array_equal(inline.train_images, pooled.train_images)
    assert np.array_equal(inline.test_labels, pooled.test_labels)


def test_unreadable_images_are_all_named_in_one_line_before_any_cache(tmp_path, cache_dir):
    _mixed_folder(tmp_path / "d")
    (tmp_path / "d" / "train" / "ant" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    (tmp_path / "d" / "val" / "bee" / "empty.jpg").write_bytes(b"")
    _bomb_png(tmp_path / "d" / "train" / "cat" / "bomb.png")
    with pytest.raises(BenchError) as err:
        data.imagefolder(tmp_path / "d", img_size=8)
    text = str(err.value)
    assert "\n" not in text and "3 unreadable images" in text and "no cache written" in text
    for name in ("ant/broken.png", "bee/empty.jpg", "cat/bomb.png"):
        assert name in text
    assert "decompression bomb" in text.split("bomb.png")[1]
    assert not cache_dir.exists() or not [p for p in cache_dir.iterdir() if p.is_dir()]  # nothing half-written


def test_empty_class_folder_and_symlink_loop_are_errors_naming_the_folder(tmp_path):
    _mixed_folder(tmp_path / "d")
    (tmp_path / "d" / "train" / "dog").mkdir()
    (tmp_path / "d" / "val" / "dog").mkdir()
    with pytest.raises(BenchError, match=f"class folder {tmp_path / 'd' / 'train' / 'dog'} holds no images"):
        data.imagefolder(tmp_path / "d", img_size=8)
    for split in ("train", "val"):
        (tmp_path / "d" / split / "dog").rmdir()
    os.symlink(tmp_path / "d" / "train", tmp_path / "d" / "train" / "bee" / "up")
    with pytest.raises(BenchError, match=f"{tmp_path / 'd' / 'train' / 'bee' / 'up'} is a symlink loop"):
        data.imagefolder(tmp_path / "d", img_size=8)


def test_balanced_counts_by_hand():
    labels = np.array([0] * 10 + [1] * 10 + [2] * 2)
    rng = np.random.default_rng(1)
    shuffled = labels[rng.permutation(len(labels))]
    keep = cache.balanced(shuffled, 12, 3)
    assert np.bincount(shuffled[keep], minlength=3).tolist() == [5, 5, 2]  # the small class gives all it has
    assert list(keep) == sorted(keep)  # order kept
    assert np.bincount(shuffled[cache.balanced(shuffled, 7, 3)], minlength=3).tolist() == [3, 2, 2]
    assert len(cache.balanced(shuffled, None, 3)) == 22
    one_small = np.array([0] + [1] * 9 + [2] * 9 + [3] * 9)
    assert np.bincount(one_small[cache.balanced(one_small, 11, 4)]).tolist() == [1, 4, 3, 3]
    rng = np.random.default_rng(0)
    for _ in range(300):  # as equal as the data allows: every class not exhausted within 1 of the fullest
        k = int(rng.integers(1, 6))
        lab = rng.integers(0, k, int(rng.integers(1, 40)))
        n = int(rng.integers(1, len(lab) + 1))
        got = np.bincount(lab[cache.balanced(lab, n, k)], minlength=k)
        have = np.bincount(lab, minlength=k)
        assert got.sum() == n and (got <= have).all()
        open_ = got < have
        assert not open_.any() or got.max() - got[open_].min() <= 1


def test_class_subsets_and_balanced_sizes(tmp_path):
    _mixed_folder(tmp_path / "d", per_class=6)
    ds = data.imagefolder(tmp_path / "d", img_size=8, classes=2, train_size=6)
    assert ds.classes == ["ant", "bee"] and torch.bincount(ds.train.labels).tolist() == [3, 3]
    assert torch.bincount(ds.test.labels).tolist() == [2, 2]
    picked = data.imagefolder(tmp_path / "d", img_size=8, classes=["cat", "ant"], train_size=5)
    assert picked.classes == ["cat", "ant"] and torch.bincount(picked.train.labels).tolist() == [3, 2]
    with pytest.raises(BenchError, match="'cow' is not a class"):
        data.imagefolder(tmp_path / "d", img_size=8, classes=["cow"])
    with pytest.raises(BenchError, match="has only 3 classes"):
        data.imagefolder(tmp_path / "d", img_size=8, classes=5)
    cfg = DataConfig(name="imagefolder", root=str(tmp_path / "d"), classes=2, train_size=5)
    assert cfg.check_available() == 2 and cfg.split_sizes() == (5, 4)


def test_cifar_class_subset_and_resolution(tmp_path):
    base = tmp_path / cache.CIFAR_FOLDERS["cifar10"]
    base.mkdir()
    rng = np.random.default_rng(0)
    for fname in [*cache.CIFAR["cifar10"][1], cache.CIFAR["cifar10"][2]]:
        import pickle
        with open(base / fname, "wb") as f:
            pickle.dump({"data": rng.integers(0, 256, (20, 3072), dtype=np.uint8),
                         "labels": [j % 10 for j in range(20)]}, f)
    ds = data.cifar("cifar10", tmp_path, classes=["cat", "dog"], train_size=10)
    assert ds.classes == ["cat", "dog"] and torch.bincount(ds.train.labels).tolist() == [5, 5]
    assert len(ds.test) == 4  # 2 of each class in the test batch
    big = data.cifar("cifar10", tmp_path, img_size=48, classes=2)
    assert big.train.images.shape[1:] == (3, 48, 48) and big.classes == ["airplane", "automobile"]


def _cached_split(tmp_path, n_per_class=8):
    _mixed_folder(tmp_path / "d", per_class=n_per_class)
    return data.imagefolder(tmp_path / "d", img_size=8)


@pytest.mark.parametrize("repeats,resized", [(1, None), (3, None), (1, 0.08)])
def test_both_residencies_give_identical_batches(tmp_path, repeats, resized):
    ds = _cached_split(tmp_path)
    assert isinstance(ds.train.images, np.memmap)
    make = lambda where: data.Loader(ds.train, batch_size=5, device=CPU, train=True, crop_padding=2,  # noqa: E731
                                     flip=True, seed=7, residency=where, prefetch=2, repeats=repeats,
                                     resized_crop=resized)
    device, stream = make("device"), make("stream")
    assert isinstance(device.images, torch.Tensor) and isinstance(stream.images, np.memmap)
    for _ in range(2):  # two epochs: the order and the augmentation streams advance alike
        a, b = list(device), list(stream)
        assert len(a) == len(b) == len(ds.train) // 5
        for (xa, ya), (xb, yb) in zip(a, b):
            assert torch.equal(xa, xb) and torch.equal(ya, yb)
    if repeats == 3:
        order = make("stream").order()
        assert torch.equal(order[:6], order[:6:3].repeat_interleave(3))  # each image thrice in a row


def test_resized_crop_is_a_rescaled_window_of_the_image():
    """On a horizontal ramp (value = column), each crop is a ramp again: non-decreasing,
    inside the image's range, spanning a share of it between the smallest area's and all."""
    w = 32
    ramp = torch.arange(w, dtype=torch.uint8).view(1, 1, 1, w).expand(64, 3, w, w).contiguous() * 8
    split = data.Split(ramp, torch.zeros(64, dtype=torch.int64))
    loader = data.Loader(split, batch_size=64, device=CPU, train=True, seed=0, resized_crop=0.25)
    out = loader.augment(split.images)
    assert out.shape == ramp.shape and out.dtype == torch.float32
    assert (out.diff(dim=-1) >= -1e-3).all()                      # still a ramp, left to right
    assert out.min() >= 0 and out.max() <= 8 * (w - 1) + 1e-3      # nothing from outside the image
    span = (out[:, 0, 0, -1] - out[:, 0, 0, 0]) / (8 * (w - 1))    # the share of the width kept
    assert span.min() > math.sqrt(0.25 * 3 / 4) - 0.1 and span.max() <= 1.0 + 1e-6
    assert span.std() > 0.05                                       # a different crop per image
    assert torch.equal(out[:, 0], out[:, 2])                       # every channel cropped alike


def test_a_streaming_loader_outlives_its_cache_being_removed(tmp_path):
    ds = _cached_split(tmp_path)
    loader = data.Loader(ds.train, batch_size=4, device=CPU, train=False, residency="stream")
    first = [x for x, _ in loader]
    import shutil
    shutil.rmtree(ds.source)  # `bench cache --prune 0` while a run reads it
    assert all(torch.equal(a, b) for a, b in zip(first, (x for x, _ in loader)))
    loader.close()


def test_read_rows_of_a_map_and_of_a_slice_of_one(tmp_path):
    arr = np.arange(10 * 3 * 2 * 2, dtype=np.uint8).reshape(10, 3, 2, 2)
    np.save(tmp_path / "a.npy", arr)
    mm = np.load(tmp_path / "a.npy", mmap_mode="r")
    assert data.mapped_file(mm) and not data.mapped_file(mm[3:])  # a slice keeps its parent's offset
    assert torch.equal(data.read_rows(mm, torch.tensor([7, 2, 9])), torch.from_numpy(arr[[7, 2, 9]]))
    assert torch.equal(data.read_rows(mm, slice(4, 8)), torch.from_numpy(arr[4:8]))
    assert torch.equal(data.read_rows(mm[3:], slice(0, 2)), torch.from_numpy(arr[3:5]))


def test_stream_stops_cleanly_when_abandoned(tmp_path):
    ds = _cached_split(tmp_path)
    loader = data.Loader(ds.train, batch_size=2, device=CPU, train=False, residency="stream", prefetch=1)
    it = iter(loader)
    next(it)
    it.close()  # the consumer leaves early: the prefetch thread must not hang on a full queue
    import threading
    assert not [t for t in threading.enumerate() if t.name == "bench-prefetch"]


def test_residency_auto_follows_the_budget(tmp_path):
    ds = _cached_split(tmp_path)
    size = ds.nbytes
    assert data.residency(ds, CPU, "auto", budget_gb=2 * size / 2**30)[0] == "device"
    where, why = data.residency(ds, CPU, "auto", budget_gb=size / 4 / 2**30)
    assert where == "stream" and "over budget" in why
    assert data.residency(ds, CPU, "stream")[0] == "stream"


def test_mixup_cutmix_give_soft_targets_through_timm():
    recipe = Recipe(AugmentConfig(mixup=0.8, cutmix=1.0), num_classes=4, img_size=8, label_smoothing=0.1,
                    device=CPU)
    x, y = torch.randn(6, 3, 8, 8), torch.tensor([0, 1, 2, 3, 0, 1])
    mixed, target = recipe(x.clone(), y)
    assert target.shape == (6, 4) and torch.allclose(target.sum(1), torch.ones(6))
    assert (target > 0.03).sum(1).min() >= 2 or torch.equal(mixed, x)  # two labels mixed (λ≠1)
    logits = torch.randn(6, 4)
    by_hand = -(target * logits.log_softmax(-1)).sum(1).mean()
    assert torch.allclose(recipe.loss(logits, target), by_hand)


def test_deit_recipe_trains_a_tiny_model_one_step(tmp_path):
    ds = _cached_split(tmp_path, n_per_class=4)
    v = Variant(img_size=8, patch_size=4, embed_dim=16, depth=1, num_heads=2, mlp_ratio=2, num_classes=3)
    recipe = DataConfig(name="imagefolder", augment="deit", crop_padding=1, residency="stream")
    torch.manual_seed(0)
    model = build_model(v)
    before = [p.detach().clone() for p in model.parameters()]
    result = train(model, ds, TrainConfig(epochs=1, batch_size=8, warmup_epochs=0, check_every=1), device=CPU,
                   seed=0, recipe=recipe)
    assert result["steps"] == 1 and np.isfinite(result["train_loss"]) and result["data_residency"] == "stream"
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))
    torch.manual_seed(0)
    again = train(build_model(v), ds, TrainConfig(epochs=1, batch_size=8, warmup_epochs=0, check_every=1),
                  device=CPU, seed=0, recipe=recipe)
    assert again["train_loss"] == result["train_loss"]  # every stream seeded: a rerun repeats


def test_rand_augment_at_full_magnitude_runs_on_this_pillow():
    """At magnitude 10 the inc1 Posterize keeps 0 bits, which current Pillow refuses."""
    from bench.data.augment import RandAugment
    x = np.random.default_rng(0).integers(0, 256, (32, 3, 8, 8), dtype=np.uint8)
    out = RandAugment("rand-m10-n4-inc1", 8)(x)
    assert out.shape == x.shape and out.dtype == np.uint8 and not np.array_equal(out, x)


def test_rand_augment_in_worker_processes_matches_the_training_thread(tmp_path):
    """Each batch's RandAugment is seeded on its own: workers ahead of time, or this thread,
    streamed or resident, the batches are the same."""
    from bench.data.augment import RandAugment
    ds = _cached_split(tmp_path, n_per_class=6)
    make = lambda where, workers: data.Loader(  # noqa: E731
        ds.train, batch_size=4, device=CPU, train=True, crop_padding=1, flip=True, seed=3, residency=where,
        host_transform=RandAugment("rand-m9-mstd0.5-inc1", 8), host_workers=workers)
    pooled, inline = make("stream", 2), make("device", 0)
    assert pooled.host_workers == 2 and inline.host_workers == 0
    try:
        for _ in range(2):
            a, b = list(pooled), list(inline)
            assert len(a) == len(b) == 4
            for (xa, ya), (xb, yb) in zip(a, b):
                assert torch.equal(xa, xb) and torch.equal(ya, yb)
        plain = data.Loader(ds.train, batch_size=4, device=CPU, train=True, crop_padding=1, flip=True, seed=3)
        assert not torch.equal(next(iter(plain))[0], a[0][0])  # RandAugment did change the images
    finally:
        pooled.close()


def test_augment_spec_errors():
    with pytest.raises(SpecError, match="data.augment.mixupp"):
        spec.parse({"data": {"augment": {"mixupp": 1}}}, "s.yaml")
    with pytest.raises(SpecError, match="unknown preset"):
        DataConfig(augment="deiit")
    with pytest.raises(SpecError, match="train.batch_size=7.*even"):
        spec.parse({"data": {"augment": "deit"}, "train": {"batch_size": 7}}, "s.yaml")
    with pytest.raises(SpecError, match="classes"):
        DataConfig(name="imagefolder", classes=["a", "a"])
    with pytest.raises(SpecError, match="residency"):
        DataConfig(residency="gpu")
    from bench.data.augment import RandAugment
    with pytest.raises(BenchError, match="rand_augment='rand-q9'"):
        RandAugment("rand-q9", 32)
