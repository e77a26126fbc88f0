"""Proxy training: the schedule, weight-decay groups, seeding, divergence, learning."""
import math

import pytest
import torch
from torch import nn

from bench.config import DataConfig, TrainConfig
from bench.data import sources as data
from bench.errors import SpecError
from bench.models import build_model, resolve
from bench.training import Checkpoint, Hooks, lr_lambda, param_groups, train

CPU = torch.device("cpu")


def test_schedule_warms_up_linearly_then_follows_the_cosine():
    f = lambda s: lr_lambda(s, total=110, warmup=10, floor=0.01)  # noqa: E731
    assert f(0) == pytest.approx(0.1) and f(4) == pytest.approx(0.5) and f(9) == pytest.approx(1.0)
    assert f(10) == pytest.approx(1.0)
    assert f(60) == pytest.approx(0.01 + 0.99 * 0.5)  # half-way through the cosine
    assert f(110) == pytest.approx(0.01) and f(500) == pytest.approx(0.01)
    assert lr_lambda(0, total=5, warmup=0, floor=0.0) == pytest.approx(1.0)


def test_weight_decay_spares_norms_biases_and_embeddings():
    model = build_model(resolve("vit_micro"))
    decay, no_decay = param_groups(model, 0.05)
    names = {id(p): n for n, p in model.named_parameters()}
    skipped = {names[id(p)] for p in no_decay["params"]}
    assert {"pos_embed", "cls_token", "norm.weight", "blocks.0.attn.qkv.bias"} <= skipped
    assert all(p.ndim >= 2 for p in decay["params"]) and decay["weight_decay"] == 0.05
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))


def _channel_data(n_train=256, n_test=64):
    """Class = which colour channel is bright: linearly separable."""
    def split(n, seed):
        g = torch.Generator().manual_seed(seed)
        labels = torch.randint(3, (n,), generator=g)
        images = torch.randint(0, 60, (n, 3, 8, 8), generator=g, dtype=torch.int64)
        images[torch.arange(n), labels] += 180
        return data.Split(images.to(torch.uint8), labels)
    return data.Dataset("channels", split(n_train, 0), split(n_test, 1), ["r", "g", "b"])


def _linear():
    return nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 3))


def test_training_learns_a_separable_task():
    torch.manual_seed(0)
    r = train(_linear(), _channel_data(), TrainConfig(epochs=3, batch_size=32, lr=1e-2), device=CPU, seed=0)
    assert r["top1"] >= 95 and not r["diverged"] and r["epochs"] == 3 and r["steps"] == 3 * 8
    assert len(r["top1_per_epoch"]) == 3 and r["train_loss_per_epoch"][-1] < r["train_loss_per_epoch"][0]


def test_a_rerun_gives_the_same_accuracy_on_cpu():
    ds = data.shapes(train_size=96, test_size=48, img_size=16, seed=0)
    v = resolve("deepvit_micro", {"img_size": 16, "patch_size": 4, "depth": 2, "drop_path_rate": 0.1})
    cfg = TrainConfig(epochs=2, batch_size=16, check_every=2)
    runs = []
    for seed in (0, 0, 1):
        torch.manual_seed(seed)
        runs.append(train(build_model(v), ds, cfg, device=CPU, seed=seed, recipe=DataConfig(crop_padding=2, flip=True)))
    assert runs[0]["top1_per_epoch"] == runs[1]["top1_per_epoch"]
    assert runs[0]["train_loss_per_epoch"] == runs[1]["train_loss_per_epoch"]
    assert runs[0]["train_loss_per_epoch"] != runs[2]["train_loss_per_epoch"]


class _Boom(nn.Module):
    """A linear model whose output turns NaN from its fifth training call on."""

    def __init__(self):
        super().__init__()
        self.inner, self.calls = _linear(), 0

    def forward(self, x):
        self.calls += self.training
        out = self.inner(x)
        return out * math.nan if self.training and self.calls >= 5 else out


def test_a_nan_loss_stops_the_run_as_diverged():
    seen = []
    r = train(_Boom(), _channel_data(), TrainConfig(epochs=3, batch_size=32, check_every=2), device=CPU, seed=0,
              hooks=Hooks(on_step=lambda step, total, loss: seen.append(step)))
    assert r["diverged"] and r["top1"] is None and math.isnan(r["train_loss"])
    assert r["steps"] == 6 and seen == [2, 4]  # caught at the first check after step 5


@pytest.mark.parametrize("kwargs,key", [
    (dict(epochs=0), "epochs"), (dict(epochs=2.5), "epochs"), (dict(lr="fast"), "lr"),
    (dict(warmup_epochs=3, epochs=2), "warmup_epochs"), (dict(min_lr=1), "min_lr"),
    (dict(dtype="fp16"), "dtype"), (dict(grad_clip=0), "grad_clip"), (dict(label_smoothing=1.0), "label_smoothing"),
])
def test_train_config_rejects(kwargs, key):
    with pytest.raises(SpecError) as err:
        TrainConfig(**kwargs)
    assert err.value.key == key


@pytest.mark.parametrize("augment", ["none", "deit"])
def test_a_run_interrupted_after_an_epoch_resumes_to_the_same_result(tmp_path, augment):
    """Drop path (the global random stream), the loader's shuffles and crops, AdamW's moments and
    the schedule all continue where they stopped: the final top-1 equals an uninterrupted run's.
    With DeiT's recipe too: RandAugment's per-batch seeds, random erasing's and Mixup's streams."""
    ds = data.shapes(train_size=96, test_size=48, img_size=16, seed=0)
    v = resolve("deepvit_micro", {"img_size": 16, "patch_size": 4, "depth": 2, "drop_path_rate": 0.1})
    cfg = TrainConfig(epochs=3, batch_size=16, lr=3e-3, check_every=1)

    def run(checkpoint=None, stop_after=None):
        torch.manual_seed(0)
        model = build_model(v)
        def on_epoch(epoch, top1, loss):
            if epoch == stop_after:
                raise KeyboardInterrupt  # killed between epochs
        return train(model, ds, cfg, device=CPU, seed=0, recipe=DataConfig(crop_padding=2, flip=True, augment=augment),
                     checkpoint=Checkpoint(checkpoint) if checkpoint else None, hooks=Hooks(on_epoch=on_epoch))

    whole = run()
    path = tmp_path / "ckpt" / "trial.pt"
    with pytest.raises(KeyboardInterrupt):
        run(path, stop_after=2)
    assert path.is_file()
    resumed = run(path)
    assert resumed["top1_per_epoch"] == whole["top1_per_epoch"]  # to the last digit
    assert resumed["train_loss_per_epoch"] == whole["train_loss_per_epoch"] and resumed["steps"] == whole["steps"]


def test_keep_checkpoints_keeps_the_final_state_even_of_a_one_epoch_trial(make_spec, run, tmp_path):
    """The checkpoint was written after every epoch but the last: a kept one was epoch E−1's, and a
    one-epoch trial kept none, while the docs said 'the last epoch'. Now the final state is kept,
    and a trial resumed from it trains nothing more and records the same result."""
    import torch
    from bench.study.ledger import Ledger
    path = make_spec(collapse=None, profile={"rounds": 0})  # TINY: one epoch
    run(path, keep_checkpoints=True)
    results = tmp_path / "results"
    records = {r["key"]: r for r in Ledger.locate("tiny", None, results).records()}
    kept = sorted((results / "tiny" / "checkpoints").glob("*.pt"))
    assert len(kept) == 4
    for p in kept:
        state = torch.load(p, map_location="cpu", weights_only=True)
        assert state["epochs"] == 1 and state["result"]["top1_per_epoch"] == [records[p.stem]["top1"]]
        assert state["result"]["test_correct"] == records[p.stem]["test_correct"]
