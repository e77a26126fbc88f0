"""timm's recipes (bench.data.augment): Mixup/CutMix's soft targets, the DeiT preset training a
tiny model and repeating when seeded, RandAugment in worker processes or in the training
thread alike, and the errors of a bad recipe."""
import numpy as np
import pytest
import torch

from test_loader import _cached_split

from bench import spec
from bench.config import AugmentConfig, DataConfig, TrainConfig
from bench.data.augment import Recipe
from bench.data.loader import Loader
from bench.errors import BenchError, SpecError
from bench.models import build_model
from bench.training import train
from bench.variant import Variant

CPU = torch.device("cpu")


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
    make = lambda where, workers: Loader(  # noqa: E731
        ds.train, batch_size=4, device=CPU, train=True, seed=3,
        recipe=DataConfig(crop_padding=1, flip=True, host_workers=workers), residency=where,
        host_transform=RandAugment("rand-m9-mstd0.5-inc1", 8))
    pooled, inline = make("stream", 2), make("device", 0)
    assert pooled.host_workers == 2 and inline.host_workers == 0
    try:
        for _ in range(2):
            a, b = list(pooled), list(inline)
            assert len(a) == len(b) == 4
            for (xa, ya), (xb, yb) in zip(a, b):
                assert torch.equal(xa, xb) and torch.equal(ya, yb)
        plain = Loader(ds.train, batch_size=4, device=CPU, train=True, seed=3,
                       recipe=DataConfig(crop_padding=1, flip=True))
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
