"""Optuna studies: search over variant fields instead of a fixed grid.

A study spec is a sweep spec whose ``grid`` is replaced by ``search`` (the space, in the same
field names: a list of choices, or a range ``{low, high, step, log}``) and a ``study`` section
(objectives, sampler, pruner, budget): both are parsed by bench.config and bench.spec.
Re-attention options (``re_*``) are sampled only when the sampled ``attention`` is ``re``:
they do not exist otherwise.

Trials go through the same ledger as grid sweeps (one record per variant × seed, same
runs.csv), so every worker, heartbeat and resumption rule holds here too. A sampled point
that the study has already measured is not trained again: the new trial repeats its values.
"""
from __future__ import annotations

import time
import warnings
from typing import Any

import optuna
from optuna.trial import TrialState

from bench import console
from bench.config import Dim, StudyConfig
from bench.errors import SpecError
from bench.records import Status
from bench.spec import Sweep, Trial, trial_key
from bench.study.context import RunContext
from bench.study.ledger import DONE, Ledger, interrupted
from bench.study.trials import result_line, run_trial
from bench.variant import LABEL_ORDER, Variant, is_re_option, variant_label


def suggest(trial: Any, dims: dict[str, Dim], base: Variant, grid: bool = False) -> Variant:
    """The variant a sampler picks. The re_* options are asked only when attention is ``re``
    (with the grid sampler always: its grid is fixed; canonicalisation folds the repeats)."""
    values: dict[str, Any] = {}
    for name, dim in dims.items():
        if is_re_option(name) and not grid and values.get("attention", base.attention) != "re":
            continue
        values[name] = dim.suggest(trial)
    return base.replace(**values)


def make_sampler(cfg: StudyConfig, dims: dict[str, Dim], seed: int) -> optuna.samplers.BaseSampler:
    if cfg.sampler == "grid":
        class Grid(optuna.samplers.GridSampler):
            """Optuna's grid sampler stops ``optimize()`` when the grid is done, which fails
            under ask/tell; run_search checks ``is_exhausted`` itself."""

            def after_trial(self, study, trial, state, values) -> None:
                pass
        return Grid({n: d.grid_values() for n, d in dims.items()}, seed=seed)
    if cfg.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if cfg.sampler == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed)
    with warnings.catch_warnings():  # multivariate/group/constant_liar are marked experimental
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        # group: the re_* fields form their own group (sampled only with attention: re);
        # constant_liar: parallel workers do not all propose the same point
        return optuna.samplers.TPESampler(seed=seed, multivariate=True, group=True, constant_liar=True)


def make_pruner(cfg: StudyConfig, epochs: int) -> optuna.pruners.BasePruner:
    if cfg.pruner == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=1)
    if cfg.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=max(epochs, 1))
    return optuna.pruners.NopPruner()


def _counts(t: optuna.trial.FrozenTrial) -> bool:
    """Whether trial ``t`` counts against n_trials: finished ones (complete, pruned, repeated,
    failed with a record) and running ones do. Interrupted and dropped ones do not: their
    points are sampled again."""
    if t.state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING):
        return True
    return t.state == TrialState.FAIL and not interrupted(t)


def budget_used(ledger: Ledger) -> int:
    return sum(_counts(t) for t in ledger.trials())


def _over_budget(ledger: Ledger, number: int, budget: int) -> bool:
    """Whether ``budget`` trials numbered below ``number`` already count: when workers ask at
    the same moment, the lower numbers keep their places."""
    return sum(_counts(t) for t in ledger.trials() if t.number < number) >= budget


def run_search(sweep: Sweep, ledger: Ledger, ctx: RunContext, *, seed: int | None = None,
               datasets: dict[int, Any] | None = None) -> list[dict[str, Any]]:
    """One worker's share of a study: ask the sampler, measure, tell, until the study has
    n_trials (all workers together), this worker's timeout passes, or the grid is done.
    ``seed``: the sampler's (default: the study's); ``datasets``: by image size, loaded once."""
    quiet, tag, poll = ctx.quiet, ctx.tag, ctx.poll
    cfg: StudyConfig = sweep.study
    dims = sweep.search
    grid = cfg.grid
    train_seed = sweep.seeds[0]
    budget = sweep.budget()
    sampler = make_sampler(cfg, dims, cfg.seed if seed is None else seed)
    ledger = ledger.with_sampler(sampler, make_pruner(cfg, sweep.train.epochs if sweep.train else 1))
    deadline = time.time() + cfg.timeout if cfg.timeout else None
    datasets = {} if datasets is None else datasets  # by image size, loaded once
    finished: list[dict[str, Any]] = []
    fields = [f for f in LABEL_ORDER if f in dims and len(set(dims[f].ends())) > 1]  # what tells trials apart
    dropped = 0
    with console.SweepProgress(max(budget - budget_used(ledger), 0), quiet=quiet, tag=tag) as progress:
        while True:
            ledger.close_dead()
            if budget_used(ledger) >= budget or (deadline and time.time() > deadline):
                break
            if grid and sampler.is_exhausted(ledger.study):
                break
            handle = ledger.ask()
            if _over_budget(ledger, handle.number, budget):  # another worker took the last place first
                ledger.drop(handle, "over budget")
                break
            try:
                variant = suggest(handle, dims, sweep.variants[0], grid)
            except SpecError as err:  # a point inside the ranges that cannot be built
                ledger.finish(handle, {"status": Status.FAILED.value, "error": f"impossible variant: {err}",
                                       "params": handle.params, "seed": train_seed}, cfg.columns)
                continue
            trial = Trial(trial_key(variant, train_seed), variant, train_seed)
            prev = ledger.latest().get(trial.key)
            if prev is not None and prev.number != handle.number and prev.state in DONE:
                first = ledger.repeat(handle, trial.key, prev)  # measured before: repeat its values
                console.info(f"{tag + ' ' if tag else ''}#{handle.number} "
                             f"{variant_label(variant, fields, train_seed)}: "
                             f"measured before (trial #{first}), its values repeated")
                continue
            if prev is not None and prev.number != handle.number and prev.state == TrialState.RUNNING:
                ledger.drop(handle, "duplicate")  # another worker is measuring it right now
                dropped += 1
                if dropped % 5 == 0:
                    time.sleep(poll)
                continue
            ledger.adopt(handle, trial)
            name = f"#{handle.number} " + variant_label(variant, fields, train_seed)
            record = run_trial(trial, sweep, ctx, loaded=datasets, ledger=ledger, progress=progress, handle=handle,
                               name=name)
            finished.append(record)
            progress.finish(name, result_line(record))
    return finished
