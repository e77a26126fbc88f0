"""The decoded cache: round trip, keys, concurrent builders, bad data, listing and pruning;
class subsets and balanced sizes. (The loader's tests are test_loader.py, timm's recipes'
test_augment.py.)"""
import json
import multiprocessing
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from bench.config import DataConfig
from bench.data import cache, folders, sources
from bench.errors import BenchError


def folder_cfg(root, **kw) -> DataConfig:
    """The data section of the image folder at ``root``."""
    return DataConfig(name="imagefolder", root=str(root), **kw)


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
    ds = sources.imagefolder(folder_cfg(tmp_path / "d"), 8)
    assert ds.source.parent == cache_dir and ds.source.name.startswith("d-8px-")
    assert isinstance(ds.train.images, np.memmap) and ds.train.images.shape == (13, 3, 8, 8)
    listed, labels = folders.list_split(tmp_path / "d" / "train", ["ant", "bee", "cat"])
    for (path, _, _), label in zip(listed, labels):  # each cached image is exactly that file decoded alone
        expected = folders.decode(path, 8)
        hits = [i for i in range(len(ds.train)) if np.array_equal(ds.train.images[i], expected)]
        assert hits and int(ds.train.labels[hits[0]]) == label
    deep = folders.decode(tmp_path / "d" / "train" / "cat" / "deep.png", 64)
    assert abs(deep.mean() - 127.5) < 1.0 and deep.min() == 0 and deep.max() == 255  # scaled, not clipped
    again = sources.imagefolder(folder_cfg(tmp_path / "d"), 8)  # reused, not rebuilt
    assert again.source == ds.source and np.array_equal(again.train.images, ds.train.images)


def test_cache_is_keyed_by_files_and_resolution(tmp_path):
    _mixed_folder(tmp_path / "d")
    first = cache.folder(folder_cfg(tmp_path / "d"), 8)
    assert first.built_s is not None
    assert cache.folder(folder_cfg(tmp_path / "d"), 8).built_s is None  # unchanged: reused
    assert cache.folder(folder_cfg(tmp_path / "d"), 6).path != first.path  # another resolution, another cache
    target = tmp_path / "d" / "train" / "ant" / "0.png"
    Image.new("RGB", (9, 9), (1, 2, 3)).save(target)
    os.utime(target, ns=(1, 1))
    changed = cache.folder(folder_cfg(tmp_path / "d"), 8)
    assert changed.path != first.path and changed.built_s is not None
    where = [i for i in range(len(changed.train_labels)) if np.all(changed.train_images[i, :, 0, 0] == [1, 2, 3])]
    assert len(where) == 1  # the new picture is in the rebuilt cache


def test_a_damaged_cache_says_which_folder_to_remove(tmp_path):
    _mixed_folder(tmp_path / "d")
    c = cache.folder(folder_cfg(tmp_path / "d"), 8)
    (c.path / "test.labels.npy").unlink()
    with pytest.raises(BenchError, match=f"the data cache {c.path} is damaged .*remove that folder"):
        cache.folder(folder_cfg(tmp_path / "d"), 8)


def test_bench_cache_lists_and_prunes_by_last_use(tmp_path, cache_dir, capsys):
    from bench.cli import main
    _mixed_folder(tmp_path / "d")
    old, new = cache.folder(folder_cfg(tmp_path / "d"), 8), cache.folder(folder_cfg(tmp_path / "d"), 6)
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
    assert cache.folder(folder_cfg(tmp_path / "d"), 6).built_s is None  # the one in use stays


def _build_in_child(root: str, out: "multiprocessing.Queue") -> None:
    c = cache.folder(folder_cfg(root, cache_workers=1), 16)
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
                          cache.folder(folder_cfg(tmp_path / "d"), 16).train_images)


def test_parallel_build_matches_one_process(tmp_path, monkeypatch):
    _mixed_folder(tmp_path / "d", per_class=10)
    inline = cache.folder(folder_cfg(tmp_path / "d", cache_dir=str(tmp_path / "one"), cache_workers=1), 8)
    monkeypatch.setattr(cache, "POOL_ABOVE_S", 0.0)
    pooled = cache.folder(folder_cfg(tmp_path / "d", cache_dir=str(tmp_path / "two"), cache_workers=2), 8)
    assert np.array_equal(inline.train_images, pooled.train_images)
    assert np.array_equal(inline.test_labels, pooled.test_labels)


def test_unreadable_images_are_all_named_in_one_line_before_any_cache(tmp_path, cache_dir):
    _mixed_folder(tmp_path / "d")
    (tmp_path / "d" / "train" / "ant" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    (tmp_path / "d" / "val" / "bee" / "empty.jpg").write_bytes(b"")
    _bomb_png(tmp_path / "d" / "train" / "cat" / "bomb.png")
    with pytest.raises(BenchError) as err:
        sources.imagefolder(folder_cfg(tmp_path / "d"), 8)
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
        sources.imagefolder(folder_cfg(tmp_path / "d"), 8)
    for split in ("train", "val"):
        (tmp_path / "d" / split / "dog").rmdir()
    os.symlink(tmp_path / "d" / "train", tmp_path / "d" / "train" / "bee" / "up")
    with pytest.raises(BenchError, match=f"{tmp_path / 'd' / 'train' / 'bee' / 'up'} is a symlink loop"):
        sources.imagefolder(folder_cfg(tmp_path / "d"), 8)


def test_balanced_counts_by_hand():
    labels = np.array([0] * 10 + [1] * 10 + [2] * 2)
    rng = np.random.default_rng(1)
    shuffled = labels[rng.permutation(len(labels))]
    keep = folders.balanced(shuffled, 12, 3)
    assert np.bincount(shuffled[keep], minlength=3).tolist() == [5, 5, 2]  # the small class gives all it has
    assert list(keep) == sorted(keep)  # order kept
    assert np.bincount(shuffled[folders.balanced(shuffled, 7, 3)], minlength=3).tolist() == [3, 2, 2]
    assert len(folders.balanced(shuffled, None, 3)) == 22
    one_small = np.array([0] + [1] * 9 + [2] * 9 + [3] * 9)
    assert np.bincount(one_small[folders.balanced(one_small, 11, 4)]).tolist() == [1, 4, 3, 3]
    rng = np.random.default_rng(0)
    for _ in range(300):  # as equal as the data allows: every class not exhausted within 1 of the fullest
        k = int(rng.integers(1, 6))
        lab = rng.integers(0, k, int(rng.integers(1, 40)))
        n = int(rng.integers(1, len(lab) + 1))
        got = np.bincount(lab[folders.balanced(lab, n, k)], minlength=k)
        have = np.bincount(lab, minlength=k)
        assert got.sum() == n and (got <= have).all()
        open_ = got < have
        assert not open_.any() or got.max() - got[open_].min() <= 1


def test_class_subsets_and_balanced_sizes(tmp_path):
    _mixed_folder(tmp_path / "d", per_class=6)
    ds = sources.imagefolder(folder_cfg(tmp_path / "d", classes=2, train_size=6), 8)
    assert ds.classes == ["ant", "bee"] and torch.bincount(ds.train.labels).tolist() == [3, 3]
    assert torch.bincount(ds.test.labels).tolist() == [2, 2]
    picked = sources.imagefolder(folder_cfg(tmp_path / "d", classes=["cat", "ant"], train_size=5), 8)
    assert picked.classes == ["cat", "ant"] and torch.bincount(picked.train.labels).tolist() == [3, 2]
    with pytest.raises(BenchError, match="'cow' is not a class"):
        sources.imagefolder(folder_cfg(tmp_path / "d", classes=["cow"]), 8)
    with pytest.raises(BenchError, match="has only 3 classes"):
        sources.imagefolder(folder_cfg(tmp_path / "d", classes=5), 8)
    cfg = DataConfig(name="imagefolder", root=str(tmp_path / "d"), classes=2, train_size=5)
    assert folders.check_available(cfg) == 2 and folders.split_sizes(cfg) == (5, 4)


def test_cifar_class_subset_and_resolution(tmp_path):
    base = tmp_path / folders.CIFAR_FOLDERS["cifar10"]
    base.mkdir()
    rng = np.random.default_rng(0)
    for fname in [*folders.CIFAR["cifar10"][1], folders.CIFAR["cifar10"][2]]:
        import pickle
        with open(base / fname, "wb") as f:
            pickle.dump({"data": rng.integers(0, 256, (20, 3072), dtype=np.uint8),
                         "labels": [j % 10 for j in range(20)]}, f)
    ds = sources.cifar(DataConfig(name="cifar10", root=str(tmp_path), classes=["cat", "dog"], train_size=10))
    assert ds.classes == ["cat", "dog"] and torch.bincount(ds.train.labels).tolist() == [5, 5]
    assert len(ds.test) == 4  # 2 of each class in the test batch
    big = sources.cifar(DataConfig(name="cifar10", root=str(tmp_path), classes=2), 48)
    assert big.train.images.shape[1:] == (3, 48, 48) and big.classes == ["airplane", "automobile"]
