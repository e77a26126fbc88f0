"""Optuna studies: search over variant fields instead of a fixed grid.

A study spec is a sweep spec whose ``grid`` is replaced by ``search`` (the space, in the same
field names: a list of choices, or a range ``{low, high, step, log}``) and a ``study`` section
(objectives, sampler, pruner, budget). Re-attention options (``re_*``) are sampled only when
the sampled ``attention`` is ``re``: they do not exist otherwise.

Trials go through the same ledger as grid sweeps (one record per variant × seed, same
runs.csv), so every worker, heartbeat and resumption rule holds here too. A sampled point
that the study has already measured is not trained again: the new trial repeats its values.
"""
from __future__ import annotations

import itertools
import math
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping

from bench.errors import SpecError, check_keys, check_type
from bench.variant import FIELD_TYPES, Variant

# objective name -> (record column, direction, what it is)
OBJECTIVES = {
    "top1": ("top1", "maximize", "top-1 % after the proxy schedule"),
    "gmacs": ("infer_gmacs", "minimize", "GMACs per image"),
    "params": ("param_count", "minimize", "M parameters"),
    "latency": ("infer_step_time", "minimize", "ms per inference batch of profile.batch_size"),
    "peak_mem": ("train_peak_mem_mb", "minimize", "peak CUDA memory of a train step, MiB"),
}
SAMPLERS = ("tpe", "nsga2", "random", "grid")
PRUNERS = ("median", "hyperband")
RANGE_KEYS = ("low", "high", "step", "log")
MAX_CORNERS = 4096  # validate every combination of choices and range ends up to this many


@dataclass(frozen=True)
class StudyConfig:
    objectives: list[str] = field(default_factory=lambda: ["top1", "gmacs"])
    sampler: str = "tpe"
    pruner: str | None = None
    n_trials: int | None = None  # None: 20, or the whole grid for the grid sampler
    timeout: float | None = None  # seconds per worker: no new trial starts after it
    seed: int = 0  # the sampler's (worker k of several: seed + k + 1)

    def __post_init__(self) -> None:
        objectives = self.objectives if isinstance(self.objectives, list) else [self.objectives]
        object.__setattr__(self, "objectives", objectives)
        if not 1 <= len(objectives) <= 2 or len(set(objectives)) != len(objectives):
            raise SpecError("objectives", self.objectives, "expected one or two different objectives, "
                            "e.g. [top1, gmacs]")
        for o in objectives:
            if o not in OBJECTIVES:
                raise SpecError("objectives", o, f"unknown objective; expected one of: {', '.join(OBJECTIVES)}")
        if self.sampler not in SAMPLERS:
            raise SpecError("sampler", self.sampler, f"expected one of: {', '.join(SAMPLERS)}")
        if self.pruner is not None:
            if self.pruner not in PRUNERS:
                raise SpecError("pruner", self.pruner, f"expected null or one of: {', '.join(PRUNERS)}")
            if len(objectives) > 1:
                raise SpecError("pruner", self.pruner, "Optuna cannot prune a multi-objective study: use one "
                                "objective (objectives: [top1]) or pruner: null")
            if objectives != ["top1"]:
                raise SpecError("pruner", self.pruner, "prunes on per-epoch top-1: needs objectives: [top1]")
        check_type("n_trials", self.n_trials, (int, None))
        if self.n_trials is not None and self.n_trials < 1:
            raise SpecError("n_trials", self.n_trials, "must be at least 1")
        check_type("timeout", self.timeout, (float, None))
        if self.timeout is not None and self.timeout <= 0:
            raise SpecError("timeout", self.timeout, "must be positive (seconds)")
        check_type("seed", self.seed, int)

    @property
    def columns(self) -> list[str]:
        return [OBJECTIVES[o][0] for o in self.objectives]

    @property
    def directions(self) -> list[str]:
        return [OBJECTIVES[o][1] for o in self.objectives]


@dataclass(frozen=True)
class Dim:
    """One searched field: ``choices``, or a range from ``low`` to ``high``."""

    name: str
    choices: list[Any] | None = None
    low: float | None = None
    high: float | None = None
    step: float | None = None
    log: bool = False

    @property
    def is_int(self) -> bool:
        return self.choices is None and FIELD_TYPES[self.name] in (int, (int, type(None)))

    def suggest(self, trial: Any) -> Any:
        if self.choices is not None:
            return trial.suggest_categorical(self.name, self.choices)
        if self.is_int:
            return trial.suggest_int(self.name, int(self.low), int(self.high), step=int(self.step or 1), log=self.log)
        return trial.suggest_float(self.name, float(self.low), float(self.high), step=self.step, log=self.log)

    def grid_values(self) -> list[Any]:
        if self.choices is not None:
            return list(self.choices)
        if self.is_int:
            return list(range(int(self.low), int(self.high) + 1, int(self.step or 1)))
        if self.step:
            n = int(round((self.high - self.low) / self.step))
            return [round(self.low + i * self.step, 12) for i in range(n + 1)]
        raise SpecError(self.name, {"low": self.low, "high": self.high},
                        "the grid sampler needs a list of values or a range with a step")

    def ends(self) -> list[Any]:
        return list(self.choices) if self.choices is not None else [self.low, self.high]


def is_conditional(name: str) -> bool:
    """Re-attention options exist only in variants whose attention is ``re``."""
    return name.startswith("re_")


def parse_space(raw: Any) -> dict[str, Dim]:
    """``search:`` → one Dim per field, ``attention`` first (the re_* fields depend on it)."""
    if not isinstance(raw, dict) or not raw:
        raise SpecError("search", raw, "expected a mapping of variant field → list of choices or "
                        "{low, high, step, log}")
    try:
        check_keys(raw, FIELD_TYPES, "variant field")
    except SpecError as err:
        raise err.within(prefix="search.") from None
    dims = {}
    for name in sorted(raw, key=lambda n: (n != "attention", is_conditional(n))):
        value = raw[name]
        at = f"search.{name}"
        if isinstance(value, list):
            if not value:
                raise SpecError(at, value, "needs at least one choice")
            if len(set(map(repr, value))) != len(value):
                raise SpecError(at, value, "lists a choice twice")
            dims[name] = Dim(name, choices=value)
            continue
        if not isinstance(value, dict):
            raise SpecError(at, value, "expected a list of choices or a range {low, high, step, log}")
        try:
            check_keys(value, RANGE_KEYS, "range key")
        except SpecError as err:
            raise err.within(prefix=at + ".") from None
        kind = FIELD_TYPES[name]
        numeric = int if kind in (int, (int, type(None))) else float if kind in (float, (float, type(None))) else None
        if numeric is None:
            raise SpecError(at, value, f"{name} is not numeric: give a list of choices")
        for key in ("low", "high"):
            if key not in value:
                raise SpecError(f"{at}.{key}", None, "a range needs low and high")
        for key in ("low", "high", "step"):
            if value.get(key) is not None:
                check_type(f"{at}.{key}", value[key], numeric)
        check_type(f"{at}.log", value.get("log", False), bool)
        low, high, step = value["low"], value["high"], value.get("step")
        if not low < high:
            raise SpecError(at, value, "needs low < high")
        if step is not None and step <= 0:
            raise SpecError(f"{at}.step", step, "must be positive")
        if value.get("log") and (low <= 0 or step not in (None, 1)):
            raise SpecError(f"{at}.log", True, "a log range needs low > 0 and no step")
        dims[name] = Dim(name, low=low, high=high, step=step, log=bool(value.get("log", False)))
    return dims


def check_space(dims: dict[str, Dim], base: Variant, check_point: Any, grid: bool) -> int:
    """Build the variant at every combination of choices and range ends (up to MAX_CORNERS):
    an impossible one is a spec error naming the search key. Returns the grid size (grid
    sampler) or the number of combinations checked."""
    if grid:
        for d in dims.values():
            try:
                d.grid_values()
            except SpecError as err:
                raise SpecError(f"search.{d.name}", err.value, err.reason) from None
    ends = {n: (d.grid_values() if grid else d.ends()) for n, d in dims.items()}
    size = math.prod(len(v) for v in ends.values())
    can_re = "re" in ends.get("attention", [base.attention])
    for name in dims:
        if is_conditional(name) and not can_re:
            raise SpecError(f"search.{name}", dims[name].ends(), "is a re-attention option, but no searched "
                            "variant uses attention: re")
    from bench.spec import point_variant
    if size <= MAX_CORNERS:
        for combo in itertools.product(*ends.values()):
            point = dict(zip(ends, combo, strict=True))
            check_point(point_variant(base, point, "search", "search point"), point)
    return size


def corners(dims: dict[str, Dim], base: Variant) -> list[Variant]:
    """The cheapest and the dearest variant (closed-form MACs) over every combination of
    choices and range ends: every trial of the study costs between the two."""
    from bench.profiling import closed_form
    ends = {n: d.ends() for n, d in dims.items()}
    found = []
    for combo in itertools.islice(itertools.product(*ends.values()), MAX_CORNERS):
        try:
            found.append(base.replace(**dict(zip(ends, combo, strict=True))))
        except SpecError:
            continue
    found.sort(key=lambda v: closed_form(v)["macs"])
    return [found[0], found[-1]] if len(found) > 1 else found


def suggest(trial: Any, dims: dict[str, Dim], base: Variant, grid: bool = False) -> Variant:
    """The variant a sampler picks. The re_* options are asked only when attention is ``re``
    (with the grid sampler always: its grid is fixed; canonicalisation folds the repeats)."""
    values: dict[str, Any] = {}
    for name, dim in dims.items():
        if is_conditional(name) and not grid and values.get("attention", base.attention) != "re":
            continue
        values[name] = dim.suggest(trial)
    return base.replace(**values)


def make_sampler(cfg: StudyConfig, dims: dict[str, Dim], seed: int):
    import optuna
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
    import warnings
    with warnings.catch_warnings():  # multivariate/group/constant_liar are marked experimental
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        # group: the re_* fields form their own group (sampled only with attention: re);
        # constant_liar: parallel workers do not all propose the same point
        return optuna.samplers.TPESampler(seed=seed, multivariate=True, group=True, constant_liar=True)


def make_pruner(cfg: StudyConfig, epochs: int):
    import optuna
    if cfg.pruner == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=1)
    if cfg.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=max(epochs, 1))
    return optuna.pruners.NopPruner()


def _counts(t: Any) -> bool:
    """Whether trial ``t`` counts against n_trials: finished ones (complete, pruned, repeated,
    failed with a record) and running ones do. Interrupted and dropped ones do not: their
    points are sampled again."""
    from optuna.trial import TrialState
    if t.state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING):
        return True
    return t.state == TrialState.FAIL and "record" in t.user_attrs and not t.user_attrs.get("interrupted")


def budget_used(ledger: Any) -> int:
    return sum(_counts(t) for t in ledger._trials())


def _over_budget(ledger: Any, number: int, budget: int) -> bool:
    """Whether ``budget`` trials numbered below ``number`` already count: when workers ask at
    the same moment, the lower numbers keep their places."""
    return sum(_counts(t) for t in ledger._trials() if t.number < number) >= budget


def run_search(sweep: Any, ledger: Any, dev: Any, *, results_dir: str | Path = "results", quiet: bool = False,
               save_weights: bool = False, seed: int | None = None, tag: str = "",
               poll: float = 5.0) -> list[dict[str, Any]]:
    """One worker's share of a study: ask the sampler, measure, tell, until the study has
    n_trials (all workers together), this worker's timeout passes, or the grid is done."""
    import optuna
    from optuna.trial import TrialState

    from bench import console
    from bench.runner import _line, _run_trial, label
    from bench.spec import Trial, trial_key
    from bench.storage import DONE, Ledger

    cfg: StudyConfig = sweep.study
    dims = sweep.search
    grid = cfg.sampler == "grid"
    train_seed = sweep.seeds[0]
    budget = cfg.n_trials or (math.prod(len(d.grid_values()) for d in dims.values()) if grid else 20)
    sampler = make_sampler(cfg, dims, cfg.seed if seed is None else seed)
    study = optuna.load_study(study_name=ledger.study.study_name, storage=ledger.study._storage,
                              sampler=sampler, pruner=make_pruner(cfg, sweep.train.epochs if sweep.train else 1))
    ledger = Ledger(study)
    deadline = time.time() + cfg.timeout if cfg.timeout else None
    datasets: dict[int, Any] = {}
    finished: list[dict[str, Any]] = []
    seen: list[Variant] = [sweep.variants[0]]
    dropped = 0
    with console.SweepProgress(max(budget - budget_used(ledger), 0), quiet=quiet, tag=tag) as progress:
        while True:
            ledger.close_dead()
            if budget_used(ledger) >= budget or (deadline and time.time() > deadline):
                break
            if grid and sampler.is_exhausted(study):
                break
            with _no_heartbeat_warning():
                handle = study.ask()
            if _over_budget(ledger, handle.number, budget):  # another worker took the last place first
                handle.set_user_attr("dropped", "over budget")
                study.tell(handle, state=TrialState.FAIL)
                break
            try:
                variant = suggest(handle, dims, sweep.variants[0], grid)
            except SpecError as err:  # a point inside the ranges that cannot be built
                ledger.finish(handle, {"status": "failed", "error": f"impossible variant: {err}",
                                       "params": handle.params, "seed": train_seed}, cfg.columns)
                continue
            trial = Trial(trial_key(variant, train_seed), variant, train_seed)
            prev = ledger.latest().get(trial.key)
            if prev is not None and prev.number != handle.number and prev.state in DONE:
                first = prev.user_attrs.get("same_as", prev.number)  # measured before: repeat its values
                handle.set_user_attr("key", trial.key)
                handle.set_user_attr("same_as", first)
                if prev.state == TrialState.COMPLETE:
                    study.tell(handle, prev.values if len(prev.values) > 1 else prev.values[0])
                else:
                    study.tell(handle, state=TrialState.PRUNED)
                console.info(f"{tag + ' ' if tag else ''}#{handle.number} "
                             f"{label(variant, [*seen, *_spread(dims, sweep.variants[0])], train_seed)}: "
                             f"measured before (trial #{first}), its values repeated")
                continue
            if prev is not None and prev.number != handle.number and prev.state == TrialState.RUNNING:
                handle.set_user_attr("dropped", "duplicate")  # another worker is measuring it right now
                study.tell(handle, state=TrialState.FAIL)
                dropped += 1
                if dropped % 5 == 0:
                    time.sleep(poll)
                continue
            ledger.adopt(handle, trial)
            if variant not in seen:
                seen.append(variant)
            name = f"#{handle.number} " + label(variant, [*seen, *_spread(dims, sweep.variants[0])], train_seed)
            progress.start(name)
            weights = Path(results_dir) / sweep.name / "weights" / f"{trial.key}.safetensors" \
                if save_weights and sweep.train else None
            record = _run_trial(trial, sweep, dev, datasets, ledger, progress, weights, handle,
                                on_epoch=_pruning(handle) if cfg.pruner else None)
            finished.append(record)
            progress.finish(name, _line(record))
    return finished


def _spread(dims: dict[str, Dim], base: Variant) -> list[Variant]:
    """Two variants that differ in every searched field: labels then name all of them."""
    out = []
    for pick in (0, -1):
        values = {n: d.ends()[pick] for n, d in dims.items() if not is_conditional(n)}
        try:
            out.append(base.replace(**values))
        except SpecError:
            pass
    return out


def _pruning(handle: Any):
    def on_epoch(epoch: int, top1: float, loss: float) -> bool:
        handle.report(top1, epoch)
        return handle.should_prune()
    return on_epoch


@contextmanager
def _no_heartbeat_warning() -> Iterator[None]:
    """Optuna warns when ask() is used with heartbeats outside optimize(); ours come from the ledger."""
    import warnings
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed")
        yield


# --- report ---------------------------------------------------------------------------

def study_section(study: Any, df: Any, spec: Mapping[str, Any], out_dir: Path) -> tuple[list[str], list[Path]]:
    """report.md's study part: objectives and budget, the Pareto front (table and plot) or the
    best trials, and parameter importances. Returns (markdown lines, plot paths)."""
    from bench.report import _md_table, _num, pareto_front

    cfg = spec.get("study") or {}
    objectives = cfg.get("objectives") or ["top1"]
    cols = [OBJECTIVES[o][0] for o in objectives]
    lines = ["## Study", "",
             "Objectives: " + ", ".join(f"{OBJECTIVES[o][1]} {o} ({OBJECTIVES[o][2]})" for o in objectives)
             + f" · sampler: {cfg.get('sampler')} · pruner: {cfg.get('pruner') or 'none'}"
             + f" · search space: {', '.join(f'{k}: {_space(v)}' for k, v in (spec.get('search') or {}).items())}",
             ""]
    ok = df[df["status"] == "complete"] if "status" in df else df
    ok = ok.dropna(subset=[c for c in cols if c in ok])
    if ok.empty or not all(c in ok for c in cols):
        return lines + ["No complete trial yet.", ""], []
    searched = [k for k in (spec.get("search") or {}) if k in ok]
    show = ["trial", *searched, *cols]
    extra = [c for c in ("infer_gmacs", "param_count", "top1") if c not in show and c in ok]
    def cell(r: Any, c: str) -> str:  # re-attention options do not exist without re-attention
        return "–" if is_conditional(c) and r.get("attention") != "re" else _cell(r[c])

    def table(title: str, rows_df: Any) -> list[str]:
        rows = [[str(int(r["trial"])), *[cell(r, c) for c in searched], *[_num(r[c]) for c in cols + extra]]
                for _, r in rows_df.iterrows()]
        return [f"### {title}", "", _md_table(["trial", *searched, *cols, *extra], rows, left=1 + len(searched)), ""]

    first = ok.sort_values(cols[0], ascending=OBJECTIVES[objectives[0]][1] == "minimize").head(5)
    best = first
    if len(cols) == 2:
        sign = [1 if OBJECTIVES[o][1] == "minimize" else -1 for o in objectives]
        # pareto_front minimises its first argument and maximises its second
        cost_i = 0 if sign[0] == 1 else 1
        front = pareto_front(ok[cols[cost_i]] * sign[cost_i], -ok[cols[1 - cost_i]] * sign[1 - cost_i])
        best = ok[front].sort_values(cols[cost_i])
        lines += table(f"Pareto front ({len(best)} of {len(ok)} complete trials: no other is better in both)", best)
        lines += ["![pareto](pareto.png)", ""]
    lines += table(f"Best trials by {objectives[0]} (top {len(first)} of {len(ok)} complete)", first)
    lines += _importances(study, objectives)
    paths = [_pareto_plot(ok, best, cols, objectives, out_dir / "pareto.png")] if len(cols) == 2 else []
    return lines, paths


def _cell(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else str(value)


def _space(value: Any) -> str:
    if isinstance(value, list):
        return "{" + ", ".join(map(str, value)) + "}"
    text = f"[{value.get('low')}, {value.get('high')}]"
    if value.get("step"):
        text += f" step {value['step']}"
    return text + (" log" if value.get("log") else "")


def _importances(study: Any, objectives: list[str]) -> list[str]:
    """fANOVA importances of the searched fields for each objective (Optuna's default)."""
    import warnings

    import optuna

    from bench.report import _md_table
    out = ["### Parameter importances", "",
           "How much of each objective's variance over complete trials each searched field explains "
           "(Optuna's fANOVA; re-attention options only where sampled).", ""]
    table = {}
    for i, o in enumerate(objectives):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                table[o] = optuna.importance.get_param_importances(
                    study, target=(lambda t, i=i: t.values[i]) if len(objectives) > 1 else None)
        except (RuntimeError, ValueError) as err:  # too few trials, or a single-value space
            return out + [f"Not computed: {err}", ""]
    params = list(dict.fromkeys(p for imp in table.values() for p in imp))
    if not params:
        return out + ["Not computed: no searched field varies among complete trials.", ""]
    rows = [[p, *[f"{table[o].get(p, 0.0):.2f}" for o in objectives]] for p in params]
    return out + [_md_table(["field", *objectives], rows, left=1), ""]


def _pareto_plot(ok: Any, best: Any, cols: list[str], objectives: list[str], path: Path) -> Path:
    from bench.plots import _save
    from matplotlib.figure import Figure
    fig = Figure(figsize=(6.4, 4.4))
    ax = fig.subplots()
    x, y = (cols[1], cols[0]) if objectives[0] == "top1" else (cols[0], cols[1])
    colour = ok["attention"].map({"self": "tab:blue", "re": "tab:red"}).fillna("tab:gray") \
        if "attention" in ok else "tab:blue"
    ax.scatter(ok[x], ok[y], c=colour, s=22, alpha=0.7, label="trials (blue: self, red: re)")
    line = best.sort_values(x)
    ax.plot(line[x], line[y], "k-", marker="o", mfc="none", ms=9, label="Pareto front")
    names = {OBJECTIVES[o][0]: f"{o}: {OBJECTIVES[o][2]}" for o in objectives}
    ax.set_xlabel(names[x])
    ax.set_ylabel(names[y])
    if (ok[x] > 0).all() and ok[x].max() / max(ok[x].min(), 1e-12) > 20:
        ax.set_xscale("log")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title("study: trials and Pareto front")
    return _save(fig, path)
