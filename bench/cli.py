"""The ``bench`` command: parse, call the API (bench.api), render; errors become one line and an
exit code. Each command is one small class (Optuna's CLI pattern): its own options
(``arguments``) over the shared option groups it names (``OPTION_GROUPS``, each option defined
once), and its ``run``. Defaults come from the config dataclasses or the API, never restated here;
a run's options reach the API as one RunContext (``context_of``), never as loose keywords.

Each command imports what it runs inside its ``run``: ``bench --version`` and ``bench report``
then load no torch (the only reason for those local imports).
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from bench import __version__, console, spec
from bench.config import DATA_ROOT_ENV, DTYPE_SETTINGS, CollapseConfig, ProfileConfig
from bench.errors import BenchError, SpecError, Terminated, first_line
from bench.sequential import HORIZON

if TYPE_CHECKING:
    from bench.study.context import RunContext


def parse_sets(items: Sequence[str], flag: str = "--set") -> dict[str, Any]:
    """``["depth=6", "attention=re"]`` → ``{"depth": 6, "attention": "re"}`` (YAML values)."""
    values: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise SpecError(item, item, "expected key=value", where=flag)
        try:  # the spec file's YAML rules: an alias bomb in a value is refused the same way
            values[key] = spec.load_yaml(text, flag) if text.strip() else None
        except SpecError as err:
            raise SpecError(key, text, f"is not a valid YAML value ({err.reason})", where=flag) from None
    return values


def study_name(name: str, flag: str = "NAME") -> str:
    """The one rule for a study name, in every command that takes one (a spec's name and
    --name too): it names RESULTS/<name>/, so a plain file name, never a path out of it."""
    try:
        return spec.check_name(name)
    except SpecError as err:
        raise err.within(flag) from None


def said_report(paths: dict[str, Path], quiet: bool = False) -> None:
    if not quiet:
        console.info(f"report: {paths['report.md']} (runs.csv and plots beside it)")


def print_paths(paths: Sequence[Path]) -> None:
    """The files a command wrote, one a line (plain: for scripts)."""
    for path in paths:
        console.out.print(str(path), highlight=False, markup=False)


def given(args: argparse.Namespace, *names: str) -> dict[str, Any]:
    """The options among ``names`` given on the command line: those left out (None) take the
    config dataclass's default, so no default is restated here."""
    return {n: getattr(args, n) for n in names if getattr(args, n, None) is not None}


def _load_sweep(args: argparse.Namespace) -> spec.Sweep:
    sets = parse_sets(args.set)
    for flag, key in (("n_trials", "study.n_trials"), ("timeout", "study.timeout")):
        if getattr(args, flag, None) is not None:
            sets[key] = getattr(args, flag)
    sweep = spec.load(args.sweep, sets)
    if getattr(args, "name", None):
        try:
            sweep = dataclasses.replace(sweep, name=spec.check_name(args.name))
        except SpecError as e:
            raise e.within("--name") from None
    return sweep


def _shown(url: str) -> str:
    from bench.study.storage import safe_url
    return safe_url(url)


def artifacts(args: argparse.Namespace) -> str | None:
    """--artifacts, else $BENCH_ARTIFACTS (None: the study's own, else the results folder)."""
    from bench.study.artifacts import ARTIFACTS_ENV
    return getattr(args, "artifacts", None) or os.environ.get(ARTIFACTS_ENV) or None


def growing(args: argparse.Namespace) -> tuple[int | None, float | None]:
    """--until-decided's seed cap and --budget as the run context's until_decided and budget_min
    (--max-seeds and --budget only mean something with --until-decided: given alone, refused)."""
    if not getattr(args, "until_decided", False):
        if getattr(args, "budget", None) is not None or getattr(args, "max_seeds", HORIZON) != HORIZON:
            raise SpecError(None, None, "--max-seeds and --budget go with --until-decided", where="--until-decided")
        return None, None
    return args.max_seeds, args.budget


def context_of(args: argparse.Namespace, study: str = "") -> RunContext:
    """The run context the flags give, field by field; a flag this command lacks takes RunContext's
    default. Built here once, so the API never sees loose keywords."""
    from bench.study.context import RunContext

    def flag(name: str, default: Any = False) -> Any:
        return getattr(args, name, default)

    until_decided, budget_min = growing(args)
    return RunContext(study=study, results_dir=Path(flag("results", "results")), storage=flag("storage", None),
                      device=flag("device", None), quiet=flag("quiet"), retry_failed=flag("retry_failed"),
                      save_weights=flag("save_weights"), keep_checkpoints=flag("keep_checkpoints"),
                      workers=flag("workers", 1), queue_only=flag("queue_only"), tag=flag("tag", ""),
                      artifacts=artifacts(args), until_decided=until_decided, budget_min=budget_min)


def finish(summary: dict[str, Any], *, worker: bool = False, quiet: bool = False) -> int:
    """Say where the report went and map the run's outcome to the exit code: 1 when a trial of
    this run failed (never a silent 0), but for a worker only when all of its trials did (its
    parent, `bench run --workers N`, then reports which trials failed, not a failed worker)."""
    if "report" in summary:
        said_report(summary["report"], quiet)
    if worker:
        return 1 if summary["failed"] and summary["failed"] == summary["ran"] else 0
    if summary.get("failure"):
        console.error(summary["failure"])
        return 1
    return 0


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in text)


# --- the option groups several commands share: each option defined once --------------------------

Option = tuple[tuple[str, ...], dict[str, Any]]
DATA_ROOT: Option = (("--data-root",), dict(
    default=None, metavar="DIR", help="where this machine keeps the study's data (overrides data.root here, changing "
    "no trial's identity; the data must be the same: checked). Default: $BENCH_DATA_ROOT, else data.root"))
OPTION_GROUPS: dict[str, tuple[Option, ...]] = {
    "device": ((("--device",), dict(default=None, help="cpu or cuda (default: cuda when available)")),),
    "json": ((("--json",), dict(action="store_true", help="print JSON instead of a table")),),
    "quiet": ((("--quiet",), dict(action="store_true",
                                  help="no progress bars or tables: one line per trial (for logs)")),),
    "model_set": ((("--set",), dict(action="append", default=[], metavar="KEY=VALUE",
                                    help="change a model field, e.g. --set depth=6 --set attention=re (repeatable)")),),
    "sweep": ((("sweep",), dict(metavar="SWEEP", help="a sweep file, e.g. sweeps/quickstart.yaml")),
              (("--set",), dict(action="append", default=[], metavar="KEY=VALUE",
                                help="override a spec value by its dotted name, e.g. --set train.epochs=2 "
                                     "(repeatable)")),
              (("--name",), dict(default=None, help="study name (default: the sweep's name)"))),
    "local_data": (DATA_ROOT,),
    "machine": (DATA_ROOT,
                (("--artifacts",), dict(default=None, metavar="PATH|URL",
                                        help="keep checkpoints and saved weights in this artifact store (a shared "
                                             "folder, s3://BUCKET, gs://BUCKET) where any worker finds them; "
                                             "default: $BENCH_ARTIFACTS, else the one the study was started with, "
                                             "else the results folder"))),
    "storage": ((("--storage",), dict(default=None, metavar="URL",
                                      help="Optuna storage URL (default: sqlite:///RESULTS/NAME/study.db)")),
                (("--results",), dict(default="results", metavar="DIR", help="where reports go (default: results)"))),
    "keep": ((("--save-weights",), dict(action="store_true", help="keep each trained model "
                                        "(RESULTS/NAME/weights/KEY.safetensors) for later analysis")),
             (("--keep-checkpoints",), dict(action="store_true", help="keep each trial's last epoch checkpoint "
                                            "(RESULTS/NAME/checkpoints/KEY.pt) once it is done; an interrupted "
                                            "trial's is always kept, and its rerun resumes from it"))),
    "deciding": ((("--until-decided",), dict(action="store_true", help="after the sweep's seeds, add the next seed "
                                             "to every arm whose interval spans 0 (and its baseline), one round at a "
                                             "time, until each is decided, has --max-seeds seeds, or --budget is "
                                             "spent (a sequential interval keeps the error rate)")),
                 (("--max-seeds",), dict(type=int, default=HORIZON, metavar="K",
                                         help=f"with --until-decided: at most K seeds per arm (default {HORIZON})")),
                 (("--budget",), dict(type=float, default=None, metavar="MINUTES",
                                      help="with --until-decided: add no seeds after this many minutes"))),
    "running": ((("--workers",), dict(type=int, default=1, metavar="N",
                                      help="start N local worker processes, one per GPU where there are several "
                                           "(default 1); they share the study, so give a --storage that serves "
                                           "several (default: a journal file)")),
                (("--retry-failed",), dict(action="store_true", help="rerun trials that failed before"))),
}


def _parent(*options: Option) -> argparse.ArgumentParser:
    """A group of options shared by several commands (argparse's ``parents=``)."""
    group = argparse.ArgumentParser(add_help=False)
    for flags, kwargs in options:
        group.add_argument(*flags, **kwargs)
    return group


class Command:
    """One ``bench`` command: its name and help, the shared option groups it takes, its own
    options (``arguments``) and what it does (``run``, returning the exit code)."""

    name = ""
    help = ""
    description = ""
    groups: tuple[str, ...] = ()

    def arguments(self, p: argparse.ArgumentParser) -> None:
        """This command's own options (the shared ones come from ``groups``)."""

    def run(self, args: argparse.Namespace) -> int:
        raise NotImplementedError


class Models(Command):
    name, help = "models", "list bench's registered variants"
    description = "List bench's registered variants with closed-form params and GMACs."
    groups = ("json",)

    def run(self, args: argparse.Namespace) -> int:
        from bench.costs import closed_form
        from bench.models import VARIANTS

        rows = []
        for name, v in VARIANTS.items():
            cf = closed_form(v)
            rows.append({"model": name, "img_size": v.img_size, "depth": v.depth,
                         "embed_dim": v.embed_dim, "num_heads": v.num_heads, "mlp_ratio": v.mlp_ratio,
                         "attention": v.attention, "re_blocks": v.n_re_blocks,
                         "param_count": cf["params"] / 1e6, "infer_gmacs": cf["macs"] / 1e9})
        if args.json:
            console.print_json(rows)
        else:
            console.rows_table(rows, list(rows[0]), title="bench variants (any timm model name works too)",
                               headers={"img_size": "img", "embed_dim": "dim", "num_heads": "heads",
                                        "mlp_ratio": "mlp", "re_blocks": "re", "param_count": "M params",
                                        "infer_gmacs": "GMACs"})
        return 0


def profile_settings(args: argparse.Namespace) -> ProfileConfig:
    """`bench profile`'s settings: ProfileConfig's defaults (a sweep's profile section's), the flags
    given overriding them; a bad value named by its flag."""
    try:
        return ProfileConfig(speed=not args.no_speed, **given(args, "dtype", "batch_size", "warmup", "iters",
                                                              "compile"))
    except SpecError as e:
        raise BenchError(f"--{(e.key or '').replace('_', '-')} {e.value}: {e.reason}") from None


class Profile(Command):
    name, help = "profile", "measure the cost of one model"
    description = ("Parameters, MACs (fvcore, attention included), activations, inference and train-step speed, "
                   "and peak CUDA memory of one model.")
    groups = ("model_set", "device", "json")

    def arguments(self, p: argparse.ArgumentParser) -> None:
        p.add_argument("name", metavar="NAME", help="a bench variant (`bench models`) or any timm model name")
        p.add_argument("--dtype", default=None, choices=DTYPE_SETTINGS, help="bf16 = autocast; auto = bf16 on "
                       "CUDA, fp32 on CPU (default: auto, as a sweep's profile section)")
        p.add_argument("--batch-size", type=int, default=None, help="halved on out-of-memory (default 64, as a "
                       "sweep's profile section)")
        p.add_argument("--warmup", type=int, default=None, help="untimed steps (default: 2 CPU, 10 CUDA)")
        p.add_argument("--iters", type=int, default=None, help="timed steps (default: 5 CPU, 50 CUDA)")
        p.add_argument("--no-speed", action="store_true", help="count only: skip timing")
        p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                       help="time the torch.compile'd model (fullgraph; the compile timed apart: train_compile_s, "
                            "infer_compile_s), or not (default: on CUDA only, as a sweep's profile section)")

    def run(self, args: argparse.Namespace) -> int:
        from bench.profiling import profile

        overrides = parse_sets(args.set)
        settings = profile_settings(args)
        with console.status(f"profiling {args.name}", quiet=args.json) as update:
            try:
                record = profile(args.name, overrides, settings, device=args.device, on_progress=update)
            except SpecError as e:
                raise e.within("--set") from None
        if args.json:
            console.print_json(record)
        else:
            console.record_table(record, title=f"{args.name} on {record['device_name']}")
        return 0


class Run(Command):
    name, help = "run", "run a sweep: profile and proxy-train every variant × seed"
    description = ("Run a sweep. Trials already in the study are skipped, so rerunning the same command resumes an "
                   "interrupted sweep.")
    groups = ("sweep", "device", "storage", "running", "deciding", "keep", "quiet", "machine")

    def arguments(self, p: argparse.ArgumentParser) -> None:
        p.add_argument("--queue-only", action="store_true", help="make the study and queue the trials it lacks, "
                       "run none: workers (`bench worker NAME`, e.g. a Slurm array) run them")

    def run(self, args: argparse.Namespace) -> int:
        return self.run_sweep(args, _load_sweep(args))  # before torch loads: a bad spec fails at once

    def run_sweep(self, args: argparse.Namespace, sweep: spec.Sweep) -> int:
        """Run ``sweep`` (loaded and checked) and show what ran."""
        from bench import api

        summary = api.run_sweep(sweep, context_of(args))
        if summary.get("queued") is not None:
            console.info(f"{sweep.name}: {summary['queued']} trial(s) queued in {_shown(summary['url'])}; start "
                         f"workers anywhere with `bench worker {sweep.name} --storage URL`")
            return 0
        if summary["records"] and not args.quiet:
            self.show(sweep, summary["records"])
        if not args.quiet:
            for line in summary.get("open") or []:
                console.info(f"{sweep.name}: {line}")
        return finish(summary)

    @staticmethod
    def show(sweep: spec.Sweep, records: list[dict[str, Any]]) -> None:
        """The trials run now, one row each, labelled as every report labels them."""
        from bench.api import record_variant
        from bench.variant import variant_label, varying_fields

        fields = varying_fields([*sweep.variants, *(record_variant(r) for r in records if "depth" in r)])
        rows = [{"trial": variant_label(r, fields, r["seed"]) if "depth" in r else r.get("error", "?"),
                 "status": r["status"], "top1": r.get("top1"), "param_count": r.get("param_count"),
                 "infer_gmacs": r.get("infer_gmacs"), "train_samples_per_sec": r.get("train_samples_per_sec"),
                 "time_trial_s": r.get("time_trial_s")}
                for r in records]
        console.rows_table(rows, list(rows[0]), title=f"{sweep.name}: trials run now",
                           headers={"top1": "top-1 %", "param_count": "M params", "infer_gmacs": "GMACs",
                                    "train_samples_per_sec": "train samples/s", "time_trial_s": "s"})


class Study(Run):
    name, help = "study", "an Optuna study: search variants for top-1 against a cost"
    description = ("Search a space of variants (the spec's search section) with an Optuna sampler, for one or two "
                   "objectives; resumable like a sweep, and shared by any number of workers through --storage.")
    groups = ("sweep", "device", "storage", "running", "keep", "quiet", "machine")

    def arguments(self, p: argparse.ArgumentParser) -> None:
        p.add_argument("--n-trials", type=int, default=None, metavar="N",
                       help="trials in the study, all workers together (default: the spec's study.n_trials)")
        p.add_argument("--timeout", type=float, default=None, metavar="S",
                       help="seconds: no new trial starts after this (per worker)")

    def run(self, args: argparse.Namespace) -> int:
        sweep = _load_sweep(args)
        if sweep.search is None:
            raise SpecError("search", None, "this file has no search section: `bench run` runs grid sweeps",
                            where=args.sweep)
        return self.run_sweep(args, sweep)


class Worker(Command):
    name, help = "worker", "join a study's workers: run its queued trials until none is left"
    description = ("Run trials queued in study NAME (by `bench run` or `bench study`) until none is left and no "
                   "other worker runs one; a trial whose worker dies is taken over. Start any number, on any "
                   "machines, with the same --storage (or $BENCH_STORAGE: a password there stays out of the "
                   "process list).")
    groups = ("storage", "device", "keep", "quiet", "machine")

    def arguments(self, p: argparse.ArgumentParser) -> None:
        p.add_argument("name", metavar="NAME", help="the study (sweep) name")
        p.add_argument("--no-report", action="store_true", help="do not write the report when done")
        p.add_argument("--tag", default="", help=argparse.SUPPRESS)  # prefixes this worker's lines

    def run(self, args: argparse.Namespace) -> int:
        study_name(args.name)  # the one name rule: RESULTS/NAME/ stays inside RESULTS
        from bench import api
        from bench.study.storage import STORAGE_ENV
        from bench.study.workers import watch_parent

        watch_parent()  # a local worker of `bench run --workers N` stops with its parent
        # `bench run --workers N` passes its storage in the environment: a URL in argv is public (ps)
        ctx = context_of(args, args.name).replace(storage=args.storage or os.environ.get(STORAGE_ENV),
                                                  report=not args.no_report)
        return finish(api.run_worker(api.run_context(ctx)), worker=True, quiet=args.quiet)


class Plan(Command):
    name, help = "plan", "list a sweep's variants with params, GMACs and estimated time"
    description = "Validate a sweep and list its variants; trains nothing."
    groups = ("sweep", "device", "json", "local_data")

    def arguments(self, p: argparse.ArgumentParser) -> None:
        p.add_argument("--no-estimate", action="store_true", help="skip the timing calibration")
        p.add_argument("--ladder", action="append", default=[], metavar="KEY=V1,V2,…",
                       help="plan `bench calibrate`'s ladder: each rung's trials, train PMACs and time")
        p.add_argument("--from", dest="from_study", default=None, metavar="NAME", help="from study NAME's spread: "
                       "the seeds that would decide each arm of the comparison, and their cost")
        p.add_argument("--max-seeds", type=int, default=HORIZON, metavar="K",
                       help=f"with --from: at most K seeds per arm (default {HORIZON})")
        p.add_argument("--storage", default=None, metavar="URL",
                       help="with --from: NAME's storage (default: its results folder)")
        p.add_argument("--results", default="results", metavar="DIR", help="with --from: where NAME's results are")

    def run(self, args: argparse.Namespace) -> int:
        if args.ladder:
            return self.ladder(args)
        sweep = _load_sweep(args)  # before torch loads: a bad spec fails at once
        if args.from_study:
            study_name(args.from_study, "--from")
        from bench.api import plan_rows

        with console.status("calibrating: timing a few train steps", quiet=args.json):
            rows = plan_rows(sweep, device=args.device, calibrate=not args.no_estimate)
        if args.from_study:
            return self.decisions(args, sweep, rows)
        rows = [{k: v for k, v in r.items() if k != "_variant"} for r in rows]
        if args.json:
            console.print_json(rows)
            return 0
        trials = sweep.budget() if sweep.search is not None else len(rows) * len(sweep.seeds)
        headers = {"param_count": "M params", "infer_gmacs": "GMACs", "est_trial_s": "est. s/trial"}
        if sweep.search is not None:
            console.rows_table(rows, list(rows[0]), headers=headers,
                               title=f"{sweep.name}: a study of {trials} trials; its cheapest and dearest variants")
            if rows[0]["est_trial_s"] is not None:
                low, high = (r["est_trial_s"] * trials / 60 for r in rows)
                console.out.print(f"estimated total: {low:.1f} to {high:.1f} min for {trials} trials (one worker)")
            return 0
        console.rows_table(rows, list(rows[0]), headers=headers,
                           title=f"{sweep.name}: {len(rows)} variants × {len(sweep.seeds)} seeds")
        if rows[0]["est_trial_s"] is not None:
            total = sum(r["est_trial_s"] for r in rows) * len(sweep.seeds)
            console.out.print(f"estimated total: {total / 60:.1f} min for {trials} trials "
                              "(from a few timed train steps of the cheapest variant; larger models run "
                              "more efficiently, so big variants are overestimated)")
        return 0

    @staticmethod
    def decisions(args: argparse.Namespace, sweep: spec.Sweep, rows: list[dict[str, Any]]) -> int:
        """`bench plan SWEEP --from NAME`: the seeds each arm needs to be decided at the spread study NAME saw."""
        from bench.api import plan_decisions

        found = plan_decisions(sweep, args.from_study, storage=args.storage, results_dir=args.results, rows=rows,
                               max_seeds=args.max_seeds)
        if args.json:
            console.print_json(found)
            return 0
        console.rows_table(found, list(found[0]), title=f"{sweep.name}: the seeds that would decide each arm at the "
                           f"spread {args.from_study} saw (80 % power, at most {args.max_seeds})",
                           headers={"d_top1": f"Δtop-1 in {args.from_study}", "seeds_then": "its seeds",
                                    "needed": "seeds needed", "train_pmacs": "train PMACs", "est_min": "est. min"})
        total = [r for r in found if r.get("needed")]
        if total:
            minutes = [r["est_min"] for r in total]
            console.out.print(f"deciding {len(total)} of {len(found)} arm(s): "
                              f"{sum(r['trials'] for r in total)} trials (baselines counted with each arm)"
                              + (f", about {sum(minutes):.1f} min" if None not in minutes else "")
                              + f"; run it with `bench run {args.sweep} --until-decided --max-seeds {args.max_seeds}`",
                              highlight=False)
        return 0

    @staticmethod
    def ladder(args: argparse.Namespace) -> int:
        """`bench plan SWEEP --ladder …`: every rung's trials, counted train PMACs and estimated time."""
        rungs, sweeps = _ladder(args)
        from bench.api import plan_ladder

        with console.status("calibrating: timing a few train steps", quiet=args.json):
            rows = plan_ladder(sweeps, device=args.device, calibrate=not args.no_estimate)
        rows = [{"rung": r.label, **row} for r, row in zip(rungs, rows, strict=True)]
        if args.json:
            console.print_json(rows)
            return 0
        console.rows_table(rows, list(rows[0]), title=f"a ladder of {len(rows)} rungs",
                           headers={"train_pmacs": "train PMACs", "est_min": "est. min"})
        total = sum(r["trials"] for r in rows)
        line = f"the whole ladder: {total} trials, {sum(r['train_pmacs'] for r in rows):.4g} train PMACs"
        if rows[0]["est_min"] is not None:
            line += (f", an estimated {sum(r['est_min'] for r in rows):.1f} min (one worker; rungs already run cost "
                     "nothing)")
        console.out.print(line, highlight=False)
        return 0


def _ladder(args: argparse.Namespace) -> tuple[list[spec.Rung], list[spec.Sweep]]:
    """The rungs of --ladder and each rung's sweep, all checked before anything runs."""
    rungs = spec.parse_ladder(args.ladder)
    name = study_name(args.name, "--name") if args.name else None
    return rungs, spec.load_rungs(args.sweep, parse_sets(args.set), rungs, name)


class Calibrate(Command):
    name = "calibrate"
    help = "run a sweep at every rung of a budget ladder: from which budget does its verdict hold?"
    description = ("Run the sweep at each rung of a budget ladder (e.g. --ladder train.epochs=2,4,8; several --ladder "
                   "are zipped rung by rung), each rung a resumable study NAME@KEY=V in the same storage, then write "
                   "RESULTS/NAME/calibration.md: per rung its cost, Kendall τ and Spearman ρ against the largest and "
                   "the next rung, each arm's Δtop-1 against cost, and the cheapest rung whose ranking and decisions "
                   "agree with the largest — or that none does. Rungs already run are reused.")
    groups = ("sweep", "device", "storage", "running", "deciding", "keep", "quiet", "machine")

    def arguments(self, p: argparse.ArgumentParser) -> None:
        p.add_argument("--ladder", action="append", required=True, metavar="KEY=V1,V2,…", help="a spec value by its "
                       "dotted name and one value per rung, cheapest first (repeatable: zipped)")
        p.add_argument("--stop-when-stable", action="store_true",
                       help="stop climbing once two successive rungs agree (τ ≥ 0.8, every decision kept)")

    def run(self, args: argparse.Namespace) -> int:
        rungs, _ = _ladder(args)  # before torch loads: a bad spec or rung fails at once
        from bench import api

        out = api.calibrate(args.sweep, rungs, parse_sets(args.set), name=args.name,
                            stop_when_stable=args.stop_when_stable, context=context_of(args))
        if not args.quiet:
            rows = [{**r, "tau": row["tau_top"] if row["tau_top"] == row["tau_top"] else None,  # NaN: the largest
                     "agrees": {True: "yes", False: f"no: {row['why']}", None: "reference"}[row["agrees"]]}
                    for r, row in zip(out["rungs"], out["result"]["rows"], strict=True)]
            console.rows_table(rows, list(rows[0]), title=f"{out['name']}: calibration",
                               headers={"ran": "trials run now", "tau": "τ vs largest",
                                        "agrees": "agrees with largest"})
        console.out.print(out["result"]["conclusion"], highlight=False, markup=False)
        print_paths([out["files"]["calibration.md"]])
        if out["failure"]:
            console.error(out["failure"])
            return 1
        return 0


class Fidelity(Command):
    name, help = "fidelity", "does a proxy study rank and decide like a reference study?"
    description = ("Compare study NAME (a short proxy) with study REF: the same variants at a longer budget, or on "
                   "other data. Kendall τ and Spearman ρ between their top-1 over variants, and whether each "
                   "comparison arm's decision agrees. Writes RESULTS/NAME/fidelity-REF.md.")
    groups = ("storage",)

    def arguments(self, p: argparse.ArgumentParser) -> None:
        p.add_argument("name", metavar="NAME", help="the proxy study")
        p.add_argument("--reference", required=True, metavar="REF", help="the reference study")
        p.add_argument("--reference-storage", default=None, metavar="URL", help="REF's storage (default: --storage, "
                       "else sqlite:///RESULTS/REF/study.db)")

    def run(self, args: argparse.Namespace) -> int:
        from bench.report.fidelity import no_ranking, states_said
        from bench.study.stored_reports import fidelity_report

        study_name(args.name)  # fidelity-REF.md goes into RESULTS/NAME: neither name may lead out of it
        study_name(args.reference, "--reference")
        result, path = fidelity_report(args.name, args.reference, storage=args.storage,
                                       reference_storage=args.reference_storage, results_dir=args.results)
        a, res = result["agreement"], result["resolved"]
        ranks = (f"Kendall τ {res.tau:.2f} over the {res.ordered} of {res.pairs} pairs the reference orders "
                 f"({a.tau:.2f} over every pair), Spearman ρ {a.rho:.2f}" if a is not None and res.ordered else
                 f"Kendall τ {a.tau:.2f} (the reference orders no pair), Spearman ρ {a.rho:.2f}" if a is not None
                 else f"no Kendall τ or Spearman ρ ({no_ranking(result['variants'])})")
        console.out.print(f"{args.name} against {args.reference}: {result['variants']} "
                          f"variant{'s' * (result['variants'] != 1)}, {ranks}", highlight=False)
        if len(result["decisions"]):
            console.out.print(f"decisions: {states_said(result['decisions'])}", highlight=False)
        print_paths([path])
        return 0


class Time(Command):
    name, help = "time", "time every variant of a study side by side, then rewrite its report"
    description = ("Time inference and train steps of every variant of study NAME in interleaved rounds on this "
                   "device (drift hits every variant alike), store the figures in the study and rewrite the report, "
                   "whose comparison then uses them.")
    groups = ("storage", "device", "quiet")

    def arguments(self, p: argparse.ArgumentParser) -> None:
        p.add_argument("name", metavar="NAME", help="the study (sweep) name")
        p.add_argument("--rounds", type=int, default=None, help="interleaved rounds (default: the spec's "
                       f"profile.rounds, or {ProfileConfig.rounds} where it is 0)")

    def run(self, args: argparse.Namespace) -> int:
        name = study_name(args.name)
        from bench import api

        result, paths = api.time_study(api.run_context(context_of(args, name)), args.rounds)
        if not args.quiet:
            rows = [{"variant": result["labels"].get(key, key),
                     **{k: v for k, v in figures.items() if k.startswith("train_")}}
                    for key, figures in result["variants"].items()]
            console.rows_table(rows, list(rows[0]), title=f"{args.name}: side by side on {result['device_name']}")
        said_report(paths)
        return 0


class Collapse(Command):
    name, help = "collapse", "attention-collapse metrics and heatmaps of one model or trial"
    description = ("Cross-layer and cross-head similarity of attention maps (DeepViT's analysis) on a fixed batch: a "
                   "registered or timm model (untrained, or --weights), or with --trial a trained trial of a sweep "
                   "(its saved weights).")
    groups = ("model_set", "device", "storage", "json", "machine")

    def arguments(self, p: argparse.ArgumentParser) -> None:
        p.add_argument("name", metavar="NAME", help="a model name, or with --trial a sweep's name")
        p.add_argument("--trial", default=None, metavar="N|KEY", help="a trial of sweep NAME (number or key)")
        p.add_argument("--weights", default=None, metavar="FILE", help="safetensors weights to load")
        p.add_argument("--images", type=int, default=None,
                       help=f"evaluation images (default {CollapseConfig.images}, or the sweep's)")
        p.add_argument("--which", choices=["v", "raw"], default=None,
                       help="v: the map that multiplies V (the default); raw: the softmax maps")
        p.add_argument("--threshold", type=float, default=None,
                       help=f"cross-layer threshold (default {CollapseConfig.threshold})")
        p.add_argument("--head-threshold", type=float, default=None,
                       help=f"cross-head threshold (default {CollapseConfig.head_threshold})")
        p.add_argument("--out", default=None, metavar="DIR", help="where the PNGs and collapse.json go "
                       "(default: RESULTS/collapse/<model>)")

    def run(self, args: argparse.Namespace) -> int:
        from bench import api

        settings = given(args, "images", "which", "threshold", "head_threshold")  # the rest: CollapseConfig's
        if args.trial is not None:
            study_name(args.name)
            if args.set or args.weights:
                raise BenchError("--trial analyses a sweep's trial as trained: --set and --weights do not apply")
        with console.status("analysing attention maps", quiet=args.json):
            if args.trial is not None:
                result, context = api.analyse_trial(args.name, args.trial, context=context_of(args),
                                                    settings=settings, device=args.device)
            else:
                try:
                    result, context = api.analyse_model(args.name, parse_sets(args.set), weights=args.weights,
                                                        settings=settings, device=args.device)
                except SpecError as e:
                    raise e.within("--set") from None
        paths = api.save_collapse(result, context, Path(args.out or Path(args.results) / "collapse" /
                                                        _slug(context["model"])))
        if args.json:
            console.print_json({**context, **result, "files": [str(p) for p in paths]})
        else:
            self.show(result, context)
            print_paths(paths)
        return 0

    @staticmethod
    def show(result: dict[str, Any], context: dict[str, Any]) -> None:
        from bench.collapse import per_block_rows

        rows = per_block_rows(result, context["attention"])
        k = result["threshold"]
        console.rows_table(rows, list(rows[0]), title=f"{context['model']}: attention collapse on "
                           f"{context['images']} {context['data']} ({context['weights']})",
                           headers={"sim_prev": "sim. to p−1", "share_k1": f"share>{k} k=1", "share_k2": "k=2",
                                    "share_k3": "k=3", "cross_head": "cross-head sim.",
                                    "cross_head_share": f"share>{result['head_threshold']}",
                                    "cka_prev": "token CKA p−1", "uniformity": "token unif.",
                                    "rank_residual": "rank resid."})
        console.out.print(f"similar blocks: {result['similar_blocks']} of {len(rows) - 1} · mean similarity to the "
                          f"previous block: {console.fmt(result['adjacent_similarity_mean'])} · mean cross-head "
                          f"similarity: {console.fmt(result['cross_head_similarity_mean'])}", highlight=False)
        console.out.print(f"tokens, the same for every attention type: mean CKA to the previous block "
                          f"{console.fmt(result['cka_adjacent_mean'])} · last block's token uniformity "
                          f"{console.fmt(result['token_uniformity_last'])} and distance from rank 1 "
                          f"{console.fmt(result['rank_residual_last'])}", highlight=False)


class Cache(Command):
    name, help = "cache", "list the decoded-data caches, or remove those not used lately"
    description = ("Real datasets are decoded once per resolution into caches (bench.data.cache); a changed folder "
                   "leaves its old cache behind. This lists them, newest use first.")
    groups = ("json",)

    def arguments(self, p: argparse.ArgumentParser) -> None:
        p.add_argument("--dir", default=None, help="the cache folder (default: $BENCH_CACHE_DIR, else ~/.cache/bench)")
        p.add_argument("--prune", type=float, default=None, metavar="DAYS", help="first remove the caches no run has "
                       "used for DAYS days (only bench's own, never one a run holds)")

    def run(self, args: argparse.Namespace) -> int:
        from bench.data.cache import caches
        from bench.own_files import default_dir

        where = Path(args.dir).expanduser() if args.dir else default_dir()
        if args.prune is not None:
            self.prune(where, args.prune)
        rows = caches(where)
        if args.json:
            console.print_json(rows)
        elif rows:
            console.rows_table(rows, ["cache", "px", "classes", "images", "gib", "last_used", "source"],
                               title=f"{where}: {sum(r['gib'] for r in rows):.2f} GiB",
                               headers={"gib": "GiB", "last_used": "last used"})
        else:
            console.info(f"{where}: no data caches")
        return 0

    @staticmethod
    def prune(where: Path, days: float) -> None:
        """Remove bench's caches and compile caches unused for ``days`` days, and say what went."""
        import math

        from bench.data.cache import prune
        from bench.own_files import INDUCTOR_DIR, prune_folders

        if not (math.isfinite(days) and days >= 0):  # nan compares false: it would remove everything
            raise SpecError(None, days, f"{days:g} is not a number of days: expected a finite number, at least 0",
                            where="--prune")
        gone, kept = prune(days, where)
        compiled, held = prune_folders(where, INDUCTOR_DIR, days)
        gone, kept = gone + compiled, kept + held
        for k in kept:  # never removed: not bench's own, or in use
            console.info(f"{k['path']}: {k['why']}; left alone")
        n = {kind: sum(c["kind"] == kind for c in gone) for kind in ("cache", "partial", "lock", "compile cache")}
        console.info(f"{where}: removed {n['cache']} cache(s) unused for {days:g} days, {n['partial']} crashed "
                     f"build(s), {n['lock']} lock file(s) and {n['compile cache']} torch.compile cache(s), "
                     f"{sum(c['gib'] for c in gone):.2f} GiB freed")


class Report(Command):
    name, help = "report", "write runs.csv, report.md and plots from a sweep's study"
    description = "Rebuild a sweep's report from its study storage alone."
    groups = ("storage",)

    def arguments(self, p: argparse.ArgumentParser) -> None:
        p.add_argument("name", metavar="NAME", help="the sweep's name (or its YAML file)")

    def run(self, args: argparse.Namespace) -> int:
        from bench.study.stored_reports import report_study

        name = args.name
        if name.endswith((".yaml", ".yml")):  # its name only: a report needs no dataset
            name = study_name(spec.read_yaml(name).get("name", Path(name).stem), flag=name)
        else:
            name = study_name(name)
        print_paths(list(report_study(name, storage=args.storage, results_dir=args.results).values()))
        return 0


COMMANDS: tuple[Command, ...] = (Models(), Profile(), Run(), Study(), Worker(), Plan(), Calibrate(), Fidelity(),
                                 Time(), Collapse(), Cache(), Report())


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bench", description="Benchmark ViT/DeepViT variants: is this architecture change worth its cost?")
    parser.add_argument("--version", action="version", version=f"bench {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    groups = {name: _parent(*options) for name, options in OPTION_GROUPS.items()}
    for command in COMMANDS:
        p = sub.add_parser(command.name, parents=[groups[g] for g in command.groups], help=command.help,
                           description=command.description)
        command.arguments(p)
        p.set_defaults(func=command.run)
    return parser


def _terminate(signum: int, frame: Any) -> None:
    raise Terminated()


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    data_root = os.environ.get(DATA_ROOT_ENV)
    if getattr(args, "data_root", None):  # this machine's path to the data, for this command and its workers
        os.environ[DATA_ROOT_ENV] = args.data_root
    try:
        previous = signal.signal(signal.SIGTERM, _terminate)  # preemption: handled as Ctrl-C
    except ValueError:  # not the main thread (an embedding program): leave its handlers alone
        previous = None
    try:
        return args.func(args)
    except BenchError as e:
        console.error(str(e))
        return e.exit_code
    except Terminated:
        console.error("terminated (SIGTERM): a running trial is recorded as interrupted; "
                      "rerun the same command to resume")
        return 143
    except KeyboardInterrupt:
        console.error("interrupted: a running trial is recorded as interrupted; rerun the same command to resume")
        return 130
    except OSError as e:  # the machine's, not bench's: a full disk, a name too long, a missing folder
        where = f"{e.filename}: " if e.filename else ""
        console.error(f"{where}{e.strerror or e}")
        return 1
    except Exception as e:  # out of memory outside the retry loop, or a bug
        if os.environ.get("BENCH_DEBUG"):
            raise
        from bench.device import is_oom
        from bench.study.storage import explain
        if is_oom(e):
            console.error(f"out of memory: {first_line(e)}")
        elif explain(e):  # SQLite's own reason, which Optuna hides
            console.error(f"study storage: {explain(e)} ({type(e).__name__})")
        else:
            console.error(f"internal error: {type(e).__name__}: {e} (set BENCH_DEBUG=1 for the traceback)")
        return 1
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
        if data_root is None:  # as it was (a program calling main() twice)
            os.environ.pop(DATA_ROOT_ENV, None)
        else:
            os.environ[DATA_ROOT_ENV] = data_root


if __name__ == "__main__":
    sys.exit(main())
