"""What the ``bench`` command calls beyond running sweeps: a sweep's plan (params, GMACs,
estimated time), and attention collapse of a named model or of a sweep's trained trial.
Sweeps and studies run through bench.study.runner, reports through bench.report.markdown.
"""
from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import torch
from timm.layers import Attention
from torch import nn

from bench.collapse import analyse
from bench.config import CollapseConfig, DataConfig, Dim, resolve_dtype
from bench.data.loader import Dataset, load as load_data, make_shapes
from bench.errors import BenchError, SpecError
from bench.study.ledger import Ledger
from bench.models import build_model, load_weights
from bench.profiling import closed_form, create, input_size_of, measure_speed, resolve_device
from bench.reattention import ReAttention
from bench.spec import MAX_CORNERS, Sweep
from bench.study.storage import default_url
from bench.study.trials import eval_images, label, weights_path
from bench.variant import FIELD_TYPES, Variant


# --- plans --------------------------------------------------------------------------------

def plan_rows(sweep: Sweep, device: str | None = None, calibrate: bool = True) -> list[dict[str, Any]]:
    """Params, GMACs and an estimated time per trial, training nothing.

    Time = (train samples × epochs × train MACs per sample + profiling steps) divided by
    this device's MAC rate, measured by timing a few train steps of the cheapest variant.
    """
    dev = resolve_device(device)
    rows = []
    variants = sweep.variants
    if sweep.search is not None:  # a study: its cheapest and dearest corners bound every trial
        variants = corners(sweep.search, sweep.variants[0])
    witnesses = _witnesses(variants)  # label(v, variants) for each v would be quadratic: minutes at 10,000
    for v in variants:
        cf = closed_form(v)
        rows.append({"variant": label(v, witnesses), "depth": v.depth, "embed_dim": v.embed_dim,
                     "attention": v.attention, "param_count": cf["params"] / 1e6,
                     "infer_gmacs": cf["macs"] / 1e9, "_variant": v})
    rate = _calibrate(min(variants, key=lambda v: closed_form(v)["macs"]), sweep, dev) if calibrate else None
    for row in rows:
        v = row.pop("_variant")
        row["est_trial_s"] = None if rate is None else estimated_macs(sweep, v, dev) / rate + 1.0  # + build, record
    return rows


def _witnesses(variants: list[Variant]) -> list[Variant]:
    """A few of ``variants`` that vary in exactly the fields all of them vary in (two per
    such field): labels against them are the labels against all."""
    found: list[Variant] = []
    for field in FIELD_TYPES:
        seen: dict[Any, Variant] = {}
        for v in variants:
            seen.setdefault(getattr(v, field), v)
            if len(seen) > 1:
                break
        found += seen.values()
    return list(dict.fromkeys(found))


def estimated_macs(sweep: Sweep, v: Variant, device: Any) -> float:
    """The MACs one trial of ``v`` runs: every epoch's training (forward + backward ≈ 3×
    forward) and evaluation, and the profiling steps (warm-up and timed, inference and train)."""
    train_macs = 3 * closed_form(v)["macs"]
    work = 0.0
    if sweep.train is not None:
        n_train, n_test = sweep.data.split_sizes()
        work += sweep.train.epochs * (n_train * train_macs + n_test * train_macs / 3)
    if sweep.profile.speed:
        work += sum(sweep.profile.steps(device)) * sweep.profile.batch_size * (train_macs + train_macs / 3)
    return work


def _calibrate(v: Variant, sweep: Sweep, dev: torch.device) -> float:
    """Train-step MACs per second of ``v`` on ``dev`` (a few timed steps)."""
    batch = sweep.train.batch_size if sweep.train else sweep.profile.batch_size
    model = build_model(v).to(dev)
    r = measure_speed(model, (v.in_chans, v.img_size, v.img_size), mode="train", device=dev,
                      dtype=resolve_dtype(sweep.train.dtype if sweep.train else sweep.profile.dtype, dev),
                      batch_size=batch, warmup=1, iters=3)
    return 3 * closed_form(v)["macs"] * r["train_samples_per_sec"]


def corners(dims: dict[str, Dim], base: Variant) -> list[Variant]:
    """The cheapest and the dearest variant (closed-form MACs) over every combination of
    choices and range ends: every trial of the study costs between the two."""
    ends = {n: d.ends() for n, d in dims.items()}
    found = []
    for combo in itertools.islice(itertools.product(*ends.values()), MAX_CORNERS):
        try:
            found.append(base.replace(**dict(zip(ends, combo, strict=True))))
        except SpecError:
            continue
    found.sort(key=lambda v: closed_form(v)["macs"])
    return [found[0], found[-1]] if len(found) > 1 else found


# --- attention collapse of one model ---------------------------------------------------------

def analyse_model(name: str, overrides: dict[str, Any] | None = None, *, weights: str | None = None,
                  images: int = 64, which: str = "v", threshold: float = 0.8, head_threshold: float = 0.5,
                  device: str | None = None, seed: int = 0) -> tuple[dict[str, Any], dict[str, Any]]:
    """A registered (or timm) model, untrained or with ``weights``, on the built-in shapes
    test images at its input size. Returns (metrics, context)."""
    try:  # the checks a sweep's collapse section gets
        CollapseConfig(images=images, which=which, threshold=threshold, head_threshold=head_threshold)
    except SpecError as err:
        raise BenchError(f"--{err.key.replace('_', '-')} {err.value}: {err.reason}") from None
    dev = resolve_device(device)
    torch.manual_seed(seed)
    model, variant = create(name, overrides)
    size = input_size_of(model, variant)
    if weights:
        load_weights(model, weights)
    test = make_shapes(images, img_size=size[-1], seed=1_000_003)  # fixed images, apart from any training set
    batch = eval_images(Dataset("shapes", test, test, []), images, dev)
    result = analyse(model.to(dev), batch, which=which, threshold=threshold, head_threshold=head_threshold)
    return result, {"model": name, "weights": weights or "initialisation", "images": len(batch),
                    "data": "shapes (built-in) test images", "attention": _attention_types(model)}


def analyse_trial(study: str, trial: str, *, storage: str | None = None, results_dir: str = "results",
                  images: int | None = None, which: str | None = None, threshold: float | None = None,
                  head_threshold: float | None = None, device: str | None = None
                  ) -> tuple[dict[str, Any], dict[str, Any]]:
    """A trained trial of a sweep, from its saved weights, on the sweep's evaluation batch
    (the first test images of its dataset); settings default to the sweep's."""
    url = storage or default_url(results_dir, study)
    records = Ledger.open(url, study).records()
    found = [r for r in records if str(r["trial"]) == str(trial) or r["key"] == str(trial)]
    if not found:
        raise BenchError(f"no finished trial {trial!r} in study {study!r} (trials: "
                         f"{', '.join(str(r['trial']) for r in records[:20]) or 'none'})")
    record = found[0]
    path = record.get("weights")
    beside = weights_path(results_dir, study, record["key"])
    if (not path or not Path(path).is_file()) and beside.is_file():  # results moved or copied elsewhere
        path = str(beside)
    if not path or not Path(path).is_file():
        raise BenchError(f"trial {record['trial']} of {study!r} has no saved weights"
                         + (f" ({path} is gone)" if path else "")
                         + "; run the sweep with --save-weights to keep them for new trials")
    config = record.get("config") or {}
    if not config.get("data"):
        raise BenchError(f"trial {record['trial']} of {study!r} records no dataset to evaluate on")
    cfg = CollapseConfig(**(config.get("collapse") or {}))
    try:
        cfg = CollapseConfig(images=cfg.images if images is None else images, which=which or cfg.which,
                             threshold=cfg.threshold if threshold is None else threshold,
                             head_threshold=cfg.head_threshold if head_threshold is None else head_threshold)
    except SpecError as err:
        raise BenchError(f"--{err.key.replace('_', '-')} {err.value}: {err.reason}") from None
    dev = resolve_device(device)
    variant = Variant(**{k: record[k] for k in FIELD_TYPES})
    model = load_weights(build_model(variant), path).to(dev)
    data = load_data(DataConfig(**config["data"]), variant.img_size)
    batch = eval_images(data, cfg.images, dev)
    result = analyse(model, batch, which=cfg.which, threshold=cfg.threshold, head_threshold=cfg.head_threshold)
    return result, {"model": f"{study} trial {record['trial']} ({record['key']})", "weights": path,
                    "images": len(batch), "data": f"{data.name} test images", "top1": record.get("top1"),
                    "attention": _attention_types(model)}


def _attention_types(model: nn.Module) -> list[str]:
    return ["re" if isinstance(m, ReAttention) else "self" for m in model.modules() if isinstance(m, Attention)]


