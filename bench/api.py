"""The Python entry points, what the ``bench`` command calls: run a sweep or a study (and
join one as a worker), time a study's variants side by side, a sweep's plan (params, GMACs,
estimated time), and attention collapse of a named model or of a sweep's trained trial.

The run's pieces live in bench.study: runner (start a sweep, work its queue), workers (local
worker processes), reports (the report from the ledger); this module puts them together, the
only one above all three.
"""
from __future__ import annotations

import dataclasses
import itertools
import json
import math
import shlex
import time
from pathlib import Path
from typing import Any

import torch
import yaml
from timm.layers import Attention
from torch import nn

from bench import console
from bench.collapse import analyse
from bench.config import CollapseConfig, DataConfig, Dim, ProfileConfig, resolve_dtype
from bench.costs import closed_form, estimated_macs, planned_train_pmacs, train_macs
from bench.data.sources import Dataset, load as load_data, make_shapes
from bench.device import resolve_device
from bench.errors import BenchError, SpecError
from bench.models import build_model, create, input_size_of, load_weights
from bench.own_files import atomic_write
from bench.profiling import measure_speed
from bench.reattention import ReAttention
from bench.records import Status
from bench.report import plots
from bench.report.calibration import agreement
from bench.report.formats import two_places
from bench.report.tables import comparison
from bench.sequential import HORIZON, seeds_needed
from bench.spec import MAX_CORNERS, Rung, Sweep, load_rungs, variant_key
from bench.study import runner, workers
from bench.study.artifacts import WEIGHTS
from bench.study.context import RunContext
from bench.study.grow import arms as arms_of, grow
from bench.study.ledger import Ledger
from bench.study.stored_reports import calibration_report, open_arms, records_frame, report_ledger, rung_study
from bench.study.trials import eval_images, trial_files
from bench.variant import FIELD_TYPES, Variant, is_missing, variant_label, varying_fields


# --- runs ----------------------------------------------------------------------------------

def run_context(context: RunContext) -> RunContext:
    """``context`` with its device resolved (a name, or None for CUDA when available)."""
    return context if isinstance(context.device, torch.device) else context.replace(
        device=resolve_device(context.device))


def run_sweep(sweep: Sweep, context: RunContext | None = None) -> dict[str, Any]:
    """Queue every trial of ``sweep`` that the study lacks, run the queue, write the report:
    what ``bench run`` and ``bench study`` do. ``context``: where and how (a RunContext: its
    ``storage``, ``results_dir``, ``device``, ``retry_failed``, ``quiet``, ``report``,
    ``save_weights``, ``keep_checkpoints``, ``workers``, …; its study is the sweep's name).

    ``workers`` > 1 starts that many local worker processes (one per GPU where there are
    several) instead of working here. Other workers (``bench worker``, or ``bench run``
    elsewhere with the same ``storage``) take from the same queue. ``save_weights``: keep
    each trained model as results_dir/name/weights/KEY.safetensors. Each trial checkpoints its
    training after every epoch in results_dir/name/checkpoints/ (a reclaimed trial resumes
    from there); ``keep_checkpoints`` keeps them once the trial is done.

    A run stopped before its first trial (data that cannot load, weights that cannot be
    written) removes what it made (the study's file, empty folders), never what was there.
    ``summary["failure"]``: one line when trials of this run failed (not diverged or pruned:
    a failure is the machine's or bench's, not the model's), None when none did."""
    started = time.monotonic()
    ctx = run_context((context or RunContext()).replace(study=sweep.name))
    if ctx.until_decided is not None and (sweep.search is not None or not sweep.compare or not sweep.train):
        raise SpecError("compare", sweep.compare, "--until-decided grows the arms of a comparison: it needs a trained "
                        "grid sweep with compare (baseline and arms)", where=sweep.path or sweep.name)
    run = runner.start(sweep, ctx)
    if ctx.queue_only:  # the study made and its trials queued: workers on other machines run them
        if sweep.search is not None:
            raise SpecError("search", None, "--queue-only queues a grid's trials; a study's are asked of its sampler "
                            "by each worker (bench worker NAME)", where=sweep.path or sweep.name)
        return {"url": run.ctx.storage, "ran": 0, "plan": run.plan, "records": [], "failed": 0, "failure": None,
                "queued": run.total, "open": [], "grown": None}
    finished = workers.spawn_workers(run.ctx) if run.ctx.workers > 1 else runner.work_here(sweep, run)
    grown = None
    if run.ctx.until_decided is not None:
        def queue(count: int) -> list[dict[str, Any]]:
            if run.ctx.workers > 1:
                return workers.spawn_workers(run.ctx)
            return runner.work(run.ledger, sweep, run.ctx, total=count, datasets=run.datasets)
        grown = grow(sweep, run.ledger, queue, max_seeds=run.ctx.until_decided, quiet=run.ctx.quiet, started=started,
                     budget_s=None if run.ctx.budget_min is None else run.ctx.budget_min * 60)
        finished = [*finished, *grown["records"]]
    summary = runner.summary(sweep, run, finished)
    summary["grown"] = grown
    summary["open"] = open_arms(run.ledger, sweep.compare) if sweep.train and sweep.search is None else []
    if run.ctx.report:
        summary["report"] = report_ledger(run.ledger, sweep.name, run.ctx.results_dir)
    return summary


def calibrate(path: str | Path, rungs: list[Rung], sets: dict[str, Any] | None = None, *, name: str | None = None,
              stop_when_stable: bool = False, context: RunContext | None = None) -> dict[str, Any]:
    """``bench calibrate``: run the sweep file ``path`` (with ``sets``) at every rung of a budget
    ladder (bench.spec.parse_ladder), each rung its own study NAME@label in the same storage
    (``context``: as run_sweep's), then read the rungs together and write
    results_dir/NAME/calibration.md (bench.report.calibration). Every rung is a resumable sweep:
    a rung already run runs nothing again, so a rerun with one more rung runs only that one.

    ``stop_when_stable``: after each rung, stop climbing once it and the rung before agree (τ ≥
    0.8, every decision kept); the report says so and why. Every rung's sweep is checked before
    the first runs. Returns the calibration, its files, the trials run now per rung, ``stopped``
    and ``failure`` (one line when trials failed, as run_sweep's)."""
    sweeps = load_rungs(path, dict(sets or {}), rungs, name)
    stem = sweeps[0].name[:-len(rungs[0].label) - 1]  # NAME of NAME@label
    ctx = context or RunContext()
    done, ran, failures, stopped = [], [], [], None
    runs: dict[int, int] = {}

    def run_rung(i: int) -> None:
        if not ctx.quiet:
            console.info(f"rung {i + 1} of {len(rungs)}: {rungs[i].label} (study {sweeps[i].name})"
                         + (" — the reference, grown first" if ctx.until_decided and i == len(rungs) - 1 else ""))
        summary = run_sweep(sweeps[i], ctx)
        runs[i] = runs.get(i, 0) + summary["ran"]
        if summary.get("failure"):
            failures.append(f"rung {rungs[i].label}: {summary['failure']}")

    if ctx.until_decided is not None:  # the reference decides what counts as kept: it is grown first
        run_rung(len(rungs) - 1)
    for i, (rung, sweep) in enumerate(zip(rungs, sweeps, strict=True)):
        if i not in runs or i < len(rungs) - 1:
            run_rung(i)
        ran.append({"rung": rung.label, "study": sweep.name, "ran": runs[i]})
        done.append(rung_study(rung, sweep, storage=ctx.replace(study=sweep.name).url(), results_dir=ctx.results_dir))
        if done[-1].left_out and not ctx.quiet:
            console.info(f"rung {rung.label}: {done[-1].left_out} trial(s) of study {sweep.name} are not in this sweep "
                         "(another ladder's, or a grid or seeds edited since): left out")
        if stop_when_stable and 0 < i < len(rungs) - 1:
            found = agreement(done[-2], done[-1], (done[-1].spec or {}).get("compare"))
            if found["agrees"]:
                skipped = ", ".join(r.label for j, r in enumerate(rungs[i + 1:], i + 1) if j not in runs) or "none"
                stopped = (f"rungs {done[-2].label} and {rung.label} agree (τ {two_places(found['resolved'].tau)} over "
                           f"the pairs the higher orders, every decision kept); not run: {skipped}")
                if not ctx.quiet:
                    console.info(f"stopped climbing: {stopped}")
                if len(rungs) - 1 in runs:  # grown first: it was run, so it is read
                    last = len(rungs) - 1
                    ran.append({"rung": rungs[last].label, "study": sweeps[last].name, "ran": runs[last]})
                    done.append(rung_study(rungs[last], sweeps[last], storage=ctx.replace(study=sweeps[last].name).url(),
                                           results_dir=ctx.results_dir))
                break
    result, paths = calibration_report(stem, done, results_dir=ctx.results_dir, stopped=stopped,
                                       command=next_step(path, rungs, sets, name, ctx))
    return {"name": stem, "result": result, "files": paths, "rungs": ran, "stopped": stopped,
            "failure": "; ".join(failures) or None}


def next_step(path: str | Path, rungs: list[Rung], sets: dict[str, Any] | None, name: str | None,
              ctx: RunContext) -> str:
    """The command that grows this calibration's rungs seed by seed until decided (what to paste
    when its largest rung is undecided): this ladder, these --set values, ``--until-decided``."""
    parts = ["bench", "calibrate", str(path)]
    for key in rungs[0].sets:
        parts += ["--ladder", f"{key}=" + ",".join(_flat(r.sets[key]) for r in rungs)]
    for key, value in (sets or {}).items():
        parts += ["--set", f"{key}={_flat(value)}"]
    parts += ["--name", name] if name else []
    parts += ["--until-decided", "--max-seeds", str(ctx.until_decided or HORIZON)]
    return " ".join(shlex.quote(p) for p in parts)


def _flat(value: Any) -> str:
    """A --set or --ladder value as YAML on one line."""
    if isinstance(value, str):
        return value
    return yaml.safe_dump(value, default_flow_style=True, width=10**6).strip().removesuffix("...").strip()


def run_worker(context: RunContext) -> dict[str, Any]:
    """``bench worker``: join study ``context.study`` and run its queued trials until none is
    left (bench.study.workers.join), then write the report unless ``context.report`` is off.
    Returns the records run here, how many failed, and the report's paths."""
    ledger, records = workers.join(context)
    summary = {"ran": len(records), "records": records,
               "failed": sum(r["status"] == Status.FAILED for r in records)}
    if context.report:
        summary["report"] = report_ledger(ledger, context.study, context.results_dir)
    return summary


def time_study(context: RunContext, rounds: int | None = None) -> tuple[dict[str, Any], dict[str, Path]]:
    """``bench time``: time every variant study ``context.study`` finished side by side on
    ``context.device``, store the pass and rewrite the report. ``rounds``: interleaved rounds
    (default: the spec's profile.rounds, or ProfileConfig's where the spec's is 0: off during
    runs). Returns (the pass, the report's paths)."""
    if rounds is not None and rounds < 1:
        raise SpecError("rounds", rounds, "must be at least 1", where="--rounds")
    ledger = Ledger.locate(context.study, context.storage, context.results_dir)
    sweep = ledger.stored_sweep()
    # exactly the variants the study measured (a stored sweep's own variant is its base model alone)
    finished = [r for r in ledger.records() if r.get("status") in (Status.COMPLETE, Status.DIVERGED)
                and "depth" in r]
    if not finished:
        raise BenchError(f"study {context.study!r} has no finished trials yet: nothing to time (`bench run` it first)")
    variants = list(dict.fromkeys(record_variant(r) for r in finished))
    rounds = rounds or sweep.profile.rounds or ProfileConfig.rounds
    result = runner.time_side_by_side(ledger, sweep, context.device, rounds=rounds, again=True,
                                      quiet=context.quiet, variants=variants)
    fields = varying_fields(variants)
    labels = {variant_key(v): variant_label(v, fields) for v in variants}  # as the report names them
    return {**result, "labels": labels}, report_ledger(ledger, context.study, context.results_dir)


def record_variant(record: dict[str, Any]) -> Variant:
    """The variant a record measured (its variant fields)."""
    return Variant(**{k: record[k] for k in FIELD_TYPES})


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
    fields = varying_fields(variants)
    for v in variants:
        cf = closed_form(v)
        rows.append({"variant": variant_label(v, fields), "depth": v.depth, "embed_dim": v.embed_dim,
                     "attention": v.attention, "param_count": cf["params"] / 1e6,
                     "infer_gmacs": cf["macs"] / 1e9, "_variant": v})
    rate = _calibrate(min(variants, key=lambda v: closed_form(v)["macs"]), sweep, dev) if calibrate else None
    for row in rows:
        v = row["_variant"]
        row["est_trial_s"] = None if rate is None else estimated_macs(sweep, v, dev) / rate + 1.0  # + build, record
    return rows


def plan_ladder(sweeps: list[Sweep], device: str | None = None, calibrate: bool = True) -> list[dict[str, Any]]:
    """What a ladder (bench.spec.load_rungs) will cost before anything runs: per rung its
    trials, the train PMACs they will count (bench.costs.planned_train_pmacs: the figure the
    report sums from the records) and an estimated time (as plan_rows: one rate, timed on the
    first rung's cheapest variant)."""
    dev = resolve_device(device)
    first = sweeps[0]
    cheapest = min(first.variants, key=lambda v: closed_form(v)["macs"])
    rate = _calibrate(cheapest, first, dev) if calibrate else None
    rows = []
    for sweep in sweeps:
        seeds = len(sweep.seeds)
        pmacs = sum(planned_train_pmacs(sweep, v) for v in sweep.variants) * seeds
        est = None if rate is None else sum(estimated_macs(sweep, v, dev) / rate + 1.0 for v in sweep.variants) * seeds
        rows.append({"study": sweep.name, "trials": len(sweep.variants) * seeds, "train_pmacs": pmacs,
                     "est_min": None if est is None else est / 60})
    return rows


def plan_decisions(sweep: Sweep, earlier: str, *, storage: str | None = None, results_dir: str | Path = "results",
                   rows: list[dict[str, Any]] | None = None, max_seeds: int = HORIZON) -> list[dict[str, Any]]:
    """``bench plan SWEEP --from NAME``: for each arm of ``sweep``'s comparison, the seeds that
    would decide it (80 % power, the sequential boundary, at most ``max_seeds``) at the Δ and the
    spread study ``earlier`` observed for the same arm, and what those seeds cost in this sweep:
    trials (the arm's and its baseline's variants), counted train PMACs and, with ``rows``
    (plan_rows' estimates), minutes. Before anything runs."""
    if not sweep.compare:
        raise BenchError(f"{sweep.path or sweep.name}: --from needs a sweep with compare (baseline and arms)")
    ledger = Ledger.locate(earlier, storage, results_dir)
    frame = records_frame(ledger)
    if frame.empty:
        raise BenchError(f"study {earlier!r} has no finished trials yet: no spread to plan from")
    cmp = comparison(frame, sweep.compare, sequential=bool(ledger.sequential))
    by = list(sweep.compare.get("by") or [])
    seen = {(*(r[f] for f in by), r["arm"]): r for r in cmp.to_dict("records")}
    est = {variant_key(r["_variant"]): r for r in rows or []} if rows and "_variant" in rows[0] else {}
    seconds = {v: (est.get(variant_key(v)) or {}).get("est_trial_s") for v in sweep.variants}
    out = []
    for arm in arms_of(sweep):
        r = seen.get((*arm.group, arm.name))
        base = {**dict(zip(by, arm.group, strict=True)), "arm": arm.name}
        if r is None or is_missing(r["d_top1"]) or is_missing(r["seed_var"]):
            out.append({**base, "d_top1": None, "needed": None, "why": f"no paired seeds in {earlier}"})
            continue
        need = seeds_needed(r["d_top1"], r["seed_var"], r["test_var"] or 0.0, 3, max_seeds, sequential=True)
        both = [*arm.variants, *arm.baseline]
        per_seed_s = sum(seconds[v] or math.nan for v in both)
        pmacs = sum(planned_train_pmacs(sweep, v) for v in both)
        out.append({**base, "d_top1": r["d_top1"], "seeds_then": int(r["pairs"] or 0), "needed": need,
                    "trials": None if need is None else need * len(both),
                    "train_pmacs": None if need is None else need * pmacs,
                    "est_min": None if need is None or not math.isfinite(per_seed_s) else need * per_seed_s / 60,
                    "why": "" if need is not None else f"beyond {max_seeds} seeds at that effect and spread"})
    return out


def _calibrate(v: Variant, sweep: Sweep, dev: torch.device) -> float:
    """Train-step MACs per second of ``v`` on ``dev`` (a few timed steps)."""
    batch = sweep.train.batch_size if sweep.train else sweep.profile.batch_size
    model = build_model(v).to(dev)
    r = measure_speed(model, (v.in_chans, v.img_size, v.img_size),
                      ProfileConfig(dtype=resolve_dtype(sweep.train.dtype if sweep.train else sweep.profile.dtype, dev),
                                    batch_size=batch, warmup=1, iters=3), mode="train", device=dev)
    return train_macs(v) * r["train_samples_per_sec"]


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

def collapse_config(base: CollapseConfig | None = None, settings: dict[str, Any] | None = None) -> CollapseConfig:
    """``base`` (default: CollapseConfig's defaults) with ``settings`` (the flags given: images,
    which, threshold, head_threshold), checked as a sweep's collapse section is."""
    try:
        return dataclasses.replace(base or CollapseConfig(), **(settings or {}))
    except SpecError as err:
        raise BenchError(f"--{err.key.replace('_', '-')} {err.value}: {err.reason}") from None


def analyse_model(name: str, overrides: dict[str, Any] | None = None, *, weights: str | None = None,
                  settings: dict[str, Any] | None = None, device: str | None = None, seed: int = 0
                  ) -> tuple[dict[str, Any], dict[str, Any]]:
    """A registered (or timm) model, untrained or with ``weights``, on the built-in shapes
    test images at its input size. ``settings``: CollapseConfig fields to change. Returns
    (metrics, context)."""
    cfg = collapse_config(None, settings)
    dev = resolve_device(device)
    torch.manual_seed(seed)
    model, variant = create(name, overrides)
    size = input_size_of(model, variant)
    if weights:
        load_weights(model, weights)
    test = make_shapes(cfg.images, img_size=size[-1], seed=1_000_003)  # fixed images, apart from any training set
    batch = eval_images(Dataset("shapes", test, test, []), cfg.images, dev)
    result = analyse(model.to(dev), batch, cfg)
    return result, {"model": name, "weights": weights or "initialisation", "images": len(batch),
                    "data": "shapes (built-in) test images", "attention": _attention_types(model)}


def analyse_trial(study: str, trial: str, *, context: RunContext | None = None,
                  settings: dict[str, Any] | None = None, device: str | None = None
                  ) -> tuple[dict[str, Any], dict[str, Any]]:
    """A trained trial of a sweep, from its saved weights (fetched from the study's artifact
    store when another machine trained it), on the sweep's evaluation batch (the first test
    images of its dataset); ``settings`` change the sweep's collapse section; ``context``: where
    the study and its files are (results folder, storage, artifacts)."""
    where = (context or RunContext()).replace(study=study)
    ledger = Ledger.locate(study, where.storage, where.results_dir)
    records = ledger.records()
    found = [r for r in records if str(r["trial"]) == str(trial) or r["key"] == str(trial)]
    if not found:
        raise BenchError(f"no finished trial {trial!r} in study {study!r} (trials: "
                         f"{', '.join(str(r['trial']) for r in records[:20]) or 'none'})")
    record = found[0]
    path = record.get("weights")
    beside = where.weights_path(record["key"])
    files = trial_files(where, ledger)
    if (not path or not Path(path).is_file()) and not beside.is_file() and files is not None:
        meta = next((t.user_attrs.get(WEIGHTS) for t in ledger.queries.trials() if t.number == record["trial"]), None)
        if isinstance(meta, dict) and files.fetch(meta, beside):  # trained elsewhere: from the artifact store
            path = str(beside)
    if (not path or not Path(path).is_file()) and beside.is_file():  # results moved or copied elsewhere
        path = str(beside)
    if not path or not Path(path).is_file():
        raise BenchError(f"trial {record['trial']} of {study!r} has no saved weights"
                         + (f" ({path} is gone)" if path else "")
                         + "; run the sweep with --save-weights to keep them for new trials")
    config = record.get("config") or {}
    if not config.get("data"):
        raise BenchError(f"trial {record['trial']} of {study!r} records no dataset to evaluate on")
    cfg = collapse_config(CollapseConfig(**(config.get("collapse") or {})), settings)
    dev = resolve_device(device)
    variant = record_variant(record)
    model = load_weights(build_model(variant), path).to(dev)
    data = load_data(DataConfig(**config["data"]), variant.img_size)
    batch = eval_images(data, cfg.images, dev)
    result = analyse(model, batch, cfg)
    return result, {"model": f"{study} trial {record['trial']} ({record['key']})", "weights": path,
                    "images": len(batch), "data": f"{data.name} test images", "top1": record.get("top1"),
                    "attention": _attention_types(model)}


def save_collapse(result: dict[str, Any], context: dict[str, Any], out: Path) -> list[Path]:
    """The heatmaps (bench.report.plots) and collapse.json of one analysis, written into
    ``out``; returns every path written."""
    paths = plots.collapse_figures(result, out, context["model"])
    atomic_write(out / "collapse.json", lambda f: json.dump({**context, **result}, f, indent=1, default=str))
    return [*paths, out / "collapse.json"]


def _attention_types(model: nn.Module) -> list[str]:
    return ["re" if isinstance(m, ReAttention) else "self" for m in model.modules() if isinstance(m, Attention)]


