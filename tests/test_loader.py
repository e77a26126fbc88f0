"""The loader: batch order, both residencies giving the same batches, streaming from a cache
(and outliving its removal), the crop and flip on the device, scaling to [-1, 1]."""
import math

import numpy as np
import pytest
import torch

from test_cache import _mixed_folder, folder_cfg

from bench.config import DataConfig
from bench.data import sources
from bench.data.loader import Loader, residency
from bench.data.sources import Split, mapped_file, read_rows

CPU = torch.device("cpu")


def _cached_split(tmp_path, n_per_class=8):
    _mixed_folder(tmp_path / "d", per_class=n_per_class)
    return sources.imagefolder(folder_cfg(tmp_path / "d"), 8)


@pytest.mark.parametrize("repeats,resized", [(1, None), (3, None), (1, 0.08)])
def test_both_residencies_give_identical_batches(tmp_path, repeats, resized):
    ds = _cached_split(tmp_path)
    assert isinstance(ds.train.images, np.memmap)
    recipe = DataConfig(crop_padding=2, flip=True, prefetch=2, augment={"repeats": repeats, "resized_crop": resized})
    make = lambda where: Loader(ds.train, batch_size=5, device=CPU, train=True, seed=7, recipe=recipe,  # noqa: E731
                                residency=where)
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
    split = Split(ramp, torch.zeros(64, dtype=torch.int64))
    loader = Loader(split, batch_size=64, device=CPU, train=True, seed=0,
                    recipe=DataConfig(crop_padding=0, flip=False, augment={"resized_crop": 0.25}))
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
    loader = Loader(ds.train, batch_size=4, device=CPU, train=False, residency="stream")
    first = [x for x, _ in loader]
    import shutil
    shutil.rmtree(ds.source)  # `bench cache --prune 0` while a run reads it
    assert all(torch.equal(a, b) for a, b in zip(first, (x for x, _ in loader)))
    loader.close()


def test_read_rows_of_a_map_and_of_a_slice_of_one(tmp_path):
    arr = np.arange(10 * 3 * 2 * 2, dtype=np.uint8).reshape(10, 3, 2, 2)
    np.save(tmp_path / "a.npy", arr)
    mm = np.load(tmp_path / "a.npy", mmap_mode="r")
    assert mapped_file(mm) and not mapped_file(mm[3:])  # a slice keeps its parent's offset
    assert torch.equal(read_rows(mm, torch.tensor([7, 2, 9])), torch.from_numpy(arr[[7, 2, 9]]))
    assert torch.equal(read_rows(mm, slice(4, 8)), torch.from_numpy(arr[4:8]))
    assert torch.equal(read_rows(mm[3:], slice(0, 2)), torch.from_numpy(arr[3:5]))


def test_stream_stops_cleanly_when_abandoned(tmp_path):
    ds = _cached_split(tmp_path)
    loader = Loader(ds.train, batch_size=2, device=CPU, train=False, recipe=DataConfig(prefetch=1), residency="stream")
    it = iter(loader)
    next(it)
    it.close()  # the consumer leaves early: the prefetch thread must not hang on a full queue
    import threading
    assert not [t for t in threading.enumerate() if t.name == "bench-prefetch"]


def test_residency_auto_follows_the_budget(tmp_path):
    ds = _cached_split(tmp_path)
    size = ds.nbytes
    assert residency(ds, CPU, "auto", budget_gb=2 * size / 2**30)[0] == "device"
    where, why = residency(ds, CPU, "auto", budget_gb=size / 4 / 2**30)
    assert where == "stream" and "over budget" in why
    assert residency(ds, CPU, "stream")[0] == "stream"


def _split(n=6, size=5):
    images = torch.arange(n * 3 * size * size, dtype=torch.int64).remainder(251).to(torch.uint8)
    return Split(images.view(n, 3, size, size), torch.arange(n))


def test_loader_eval_keeps_order_and_scales_to_unit_range():
    split = _split()
    split.images[0] = 255
    split.images[1] = 0
    batches = list(Loader(split, batch_size=4, device=torch.device("cpu"), train=False))
    assert [len(y) for _, y in batches] == [4, 2]  # eval keeps the last partial batch
    x, y = batches[0]
    assert y.tolist() == [0, 1, 2, 3]
    assert torch.all(x[0] == 1.0) and torch.all(x[1] == -1.0)


def test_loader_crop_is_a_shifted_window_and_flip_mirrors():
    split = _split()
    loader = Loader(split, batch_size=6, device=torch.device("cpu"), train=True, seed=0,
                    recipe=DataConfig(crop_padding=2, flip=True))
    x = split.images.long()
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    out = loader.augment(split.images).long()
    for i in range(6):
        windows = [padded[i, :, oy:oy + 5, ox:ox + 5] for oy in range(5) for ox in range(5)]
        assert any(torch.equal(out[i], w) or torch.equal(out[i], w.flip(-1)) for w in windows)
    first, again = (Loader(split, batch_size=6, device=torch.device("cpu"), train=True, seed=0,
                           recipe=DataConfig(crop_padding=2, flip=True)) for _ in range(2))
    assert torch.equal(next(iter(first))[0], next(iter(again))[0])  # seeded


def test_loader_train_shuffles_and_drops_the_last_partial_batch():
    split = _split(n=10)
    loader = Loader(split, batch_size=4, device=torch.device("cpu"), train=True, seed=1)
    labels = torch.cat([y for _, y in loader])
    assert len(loader) == 2 and len(labels) == 8 and len(set(labels.tolist())) == 8
    assert labels.tolist() != sorted(labels.tolist())
