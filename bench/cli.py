"""The ``bench`` command: parse, call the API (bench.api), render; errors become one line and an
exit code. Options shared by several commands are defined once (``_parent``), and their defaults
come from the config dataclasses or the API, never restated here.

Each command imports what it runs inside its function: ``bench --version`` and ``bench
report`` then load no torch (the only reason for those local imports).
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import signal
import sys
from pathlib import Path
from typing import Any, Sequence

from bench import __version__, console, spec
from bench.config import DATA_ROOT_ENV, DTYPES, CollapseConfig, ProfileConfig
from bench.errors import BenchError, SpecError, Terminated, first_line
from bench.sequential import HORIZON


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


def cmd_models(args: argparse.Namespace) -> int:
    from bench.models import VARIANTS
    from bench.costs import closed_form

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


def cmd_profile(args: argparse.Namespace) -> int:
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


def said_report(paths: dict[str, Path], quiet: bool = False) -> None:
    if not quiet:
        console.info(f"report: {paths['report.md']} (runs.csv and plots beside it)")


def print_paths(paths: Sequence[Path]) -> None:
    """The files a command wrote, one a line (plain: for scripts)."""
    for path in paths:
        console.out.print(str(path), highlight=False, markup=False)


def given(args: argparse.Namespace, *names: str) -> dict[str, Any]:
    """The options among ``names`` given on the command line: those left out (None) take the
    API's or the config dataclass's default, so no default is restated here."""
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


def cmd_run(args: argparse.Namespace) -> int:
    sweep = _load_sweep(args)  # before torch loads: a bad spec fails at once
    from bench import api
    from bench.study.trials import label

    summary = api.run_sweep(sweep, storage=args.storage, results_dir=args.results, device=args.device,
                            retry_failed=args.retry_failed, quiet=args.quiet, save_weights=args.save_weights,
                            keep_checkpoints=args.keep_checkpoints, workers=args.workers, **growing(args),
                            artifacts=artifacts(args), queue_only=getattr(args, "queue_only", False))
    if summary.get("queued") is not None:
        console.info(f"{sweep.name}: {summary['queued']} trial(s) queued in {_shown(summary['url'])}; start workers "
                     f"anywhere with `bench worker {sweep.name} --storage URL`")
        return 0
    records = summary["records"]
    if records and not args.quiet:
        variants = list(dict.fromkeys([*sweep.variants, *(api.record_variant(r) for r in records if "depth" in r)]))
        rows = [{"trial": label(api.record_variant(r), variants, r["seed"]) if "depth" in r else r.get("error", "?"),
                 "status": r["status"], "top1": r.get("top1"), "param_count": r.get("param_count"),
                 "infer_gmacs": r.get("infer_gmacs"), "train_samples_per_sec": r.get("train_samples_per_sec"),
                 "time_trial_s": r.get("time_trial_s")}
                for r in records]
        console.rows_table(rows, list(rows[0]), title=f"{sweep.name}: trials run now",
                           headers={"top1": "top-1 %", "param_count": "M params", "infer_gmacs": "GMACs",
                                    "train_samples_per_sec": "train samples/s", "time_trial_s": "s"})
    if not args.quiet:
        for line in summary.get("open") or []:
            console.info(f"{sweep.name}: {line}")
    return finish(summary)


def _shown(url: str) -> str:
    from bench.study.storage import safe_url
    return safe_url(url)


def artifacts(args: argparse.Namespace) -> str | None:
    """--artifacts, else $BENCH_ARTIFACTS (None: the study's own, else the results folder)."""
    from bench.study.artifacts import ARTIFACTS_ENV
    return getattr(args, "artifacts", None) or os.environ.get(ARTIFACTS_ENV) or None


def growing(args: argparse.Namespace) -> dict[str, Any]:
    """--until-decided, --max-seeds and --budget as the run context's fields (the last two only
    mean something with the first: given alone, they are refused)."""
    if not getattr(args, "until_decided", False):
        if getattr(args, "budget", None) is not None or getattr(args, "max_seeds", HORIZON) != HORIZON:
            raise SpecError(None, None, "--max-seeds and --budget go with --until-decided", where="--until-decided")
        return {}
    return {"until_decided": args.max_seeds, "budget_min": args.budget}


def cmd_study(args: argparse.Namespace) -> int:
    sweep = _load_sweep(args)
    if sweep.search is None:
        raise SpecError("search", None, "this file has no search section: `bench run` runs grid sweeps",
                        where=args.sweep)
    return cmd_run(args)


def _ladder(args: argparse.Namespace) -> tuple[list[spec.Rung], list[spec.Sweep]]:
    """The rungs of --ladder and each rung's sweep, all checked before anything runs."""
    rungs = spec.parse_ladder(args.ladder)
    name = study_name(args.name, "--name") if args.name else None
    return rungs, spec.load_rungs(args.sweep, parse_sets(args.set), rungs, name)


def cmd_calibrate(args: argparse.Namespace) -> int:
    rungs, _ = _ladder(args)  # before torch loads: a bad spec or rung fails at once
    from bench import api

    out = api.calibrate(args.sweep, rungs, parse_sets(args.set), name=args.name, stop_when_stable=args.stop_when_stable,
                        storage=args.storage, results_dir=args.results, device=args.device, quiet=args.quiet,
                        retry_failed=args.retry_failed, save_weights=args.save_weights,
                        keep_checkpoints=args.keep_checkpoints, workers=args.workers, **growing(args),
                        artifacts=artifacts(args))
    if not args.quiet:
        rows = [{**r, "tau": row["tau_top"] if row["tau_top"] == row["tau_top"] else None,  # NaN: the largest
                 "agrees": {True: "yes", False: f"no: {row['why']}", None: "reference"}[row["agrees"]]}
                for r, row in zip(out["rungs"], out["result"]["rows"], strict=True)]
        console.rows_table(rows, list(rows[0]), title=f"{out['name']}: calibration",
                           headers={"ran": "trials run now", "tau": "τ vs largest", "agrees": "agrees with largest"})
    console.out.print(out["result"]["conclusion"], highlight=False, markup=False)
    print_paths([out["files"]["calibration.md"]])
    if out["failure"]:
        console.error(out["failure"])
        return 1
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    study_name(args.name)  # the one name rule: RESULTS/NAME/ stays inside RESULTS
    from bench import api
    from bench.study.storage import STORAGE_ENV
    from bench.study.workers import watch_parent

    watch_parent()  # a local worker of `bench run --workers N` stops with its parent
    # `bench run --workers N` passes its storage in the environment: a URL in argv is public (ps)
    ctx = api.run_context(args.name, storage=args.storage or os.environ.get(STORAGE_ENV), results_dir=args.results,
                          device=args.device, quiet=args.quiet, save_weights=args.save_weights,
                          keep_checkpoints=args.keep_checkpoints, tag=args.tag, report=not args.no_report,
                          artifacts=artifacts(args))
    return finish(api.run_worker(ctx), worker=True, quiet=args.quiet)


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


def cmd_plan(args: argparse.Namespace) -> int:
    if args.ladder:
        return plan_ladder(args)
    sweep = _load_sweep(args)  # before torch loads: a bad spec fails at once
    if args.from_study:
        study_name(args.from_study, "--from")
    from bench.api import plan_rows

    with console.status("calibrating: timing a few train steps", quiet=args.json):
        rows = plan_rows(sweep, device=args.device, calibrate=not args.no_estimate)
    if args.from_study:
        return plan_from(args, sweep, rows)
    rows = [{k: v for k, v in r.items() if k != "_variant"} for r in rows]
    if args.json:
        console.print_json(rows)
        return 0
    n = len(sweep.seeds)
    if sweep.search is not None:
        trials = sweep.budget()
        console.rows_table(rows, list(rows[0]), title=f"{sweep.name}: a study of {trials} trials; its cheapest "
                           "and dearest variants", headers={"param_count": "M params", "infer_gmacs": "GMACs",
                                                            "est_trial_s": "est. s/trial"})
        if rows[0]["est_trial_s"] is not None:
            low, high = (r["est_trial_s"] * trials / 60 for r in rows)
            console.out.print(f"estimated total: {low:.1f} to {high:.1f} min for {trials} trials (one worker)")
        return 0
    console.rows_table(rows, list(rows[0]), title=f"{sweep.name}: {len(rows)} variants × {n} seeds",
                       headers={"param_count": "M params", "infer_gmacs": "GMACs", "est_trial_s": "est. s/trial"})
    if rows[0]["est_trial_s"] is not None:
        total = sum(r["est_trial_s"] for r in rows) * n
        console.out.print(f"estimated total: {total / 60:.1f} min for {len(rows) * n} trials "
                          "(from a few timed train steps of the cheapest variant; larger models run "
                          "more efficiently, so big variants are overestimated)")
    return 0


def plan_from(args: argparse.Namespace, sweep: spec.Sweep, rows: list[dict[str, Any]]) -> int:
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
        console.out.print(f"deciding {len(total)} of {len(found)} arm(s): "
                          f"{sum(r['trials'] for r in total)} trials (baselines counted with each arm)"
                          + (f", about {sum(r['est_min'] for r in total):.1f} min" if all(r["est_min"] is not None
                                                                                         for r in total) else "")
                          + f"; run it with `bench run {args.sweep} --until-decided --max-seeds {args.max_seeds}`",
                          highlight=False)
    return 0


def plan_ladder(args: argparse.Namespace) -> int:
    """`bench plan SWEEP --ladder …`: every rung's trials, counted train PMACs and estimated time."""
    rungs, sweeps = _ladder(args)
    from bench.api import plan_ladder as rows_of

    with console.status("calibrating: timing a few train steps", quiet=args.json):
        rows = rows_of(sweeps, device=args.device, calibrate=not args.no_estimate)
    rows = [{"rung": r.label, **row} for r, row in zip(rungs, rows, strict=True)]
    if args.json:
        console.print_json(rows)
        return 0
    console.rows_table(rows, list(rows[0]), title=f"a ladder of {len(rows)} rungs",
                       headers={"train_pmacs": "train PMACs", "est_min": "est. min"})
    total = sum(r["trials"] for r in rows)
    line = f"the whole ladder: {total} trials, {sum(r['train_pmacs'] for r in rows):.4g} train PMACs"
    if rows[0]["est_min"] is not None:
        line += f", an estimated {sum(r['est_min'] for r in rows):.1f} min (one worker; rungs already run cost nothing)"
    console.out.print(line, highlight=False)
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from bench.study.stored_reports import report_study

    name = args.name
    if name.endswith((".yaml", ".yml")):  # its name only: a report needs no dataset
        name = study_name(spec.read_yaml(name).get("name", Path(name).stem), flag=name)
    else:
        name = study_name(name)
    print_paths(list(report_study(name, storage=args.storage, results_dir=args.results).values()))
    return 0


def cmd_cache(args: argparse.Namespace) -> int:
    import math

    from bench.data.cache import caches, prune
    from bench.own_files import INDUCTOR_DIR, default_dir
    from bench.own_files import prune_folders

    where = Path(args.dir).expanduser() if args.dir else default_dir()
    if args.prune is not None:
        if not (math.isfinite(args.prune) and args.prune >= 0):  # nan compares false: it would remove everything
            raise SpecError(None, args.prune, f"{args.prune:g} is not a number of days: expected a finite number, "
                            "at least 0", where="--prune")
        gone, kept = prune(args.prune, where)
        compiled, held = prune_folders(where, INDUCTOR_DIR, args.prune)
        gone, kept = gone + compiled, kept + held
        for k in kept:  # never removed: not bench's own, or in use
            console.info(f"{k['path']}: {k['why']}; left alone")
        n = {kind: sum(c["kind"] == kind for c in gone) for kind in ("cache", "partial", "lock", "compile cache")}
        console.info(f"{where}: removed {n['cache']} cache(s) unused for {args.prune:g} days, {n['partial']} crashed "
                     f"build(s), {n['lock']} lock file(s) and {n['compile cache']} torch.compile cache(s), "
                     f"{sum(c['gib'] for c in gone):.2f} GiB freed")
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


def cmd_fidelity(args: argparse.Namespace) -> int:
    from bench.report.fidelity import no_ranking, states_said
    from bench.study.stored_reports import fidelity_report

    study_name(args.name)  # fidelity-REF.md goes into RESULTS/NAME: neither name may lead out of it
    study_name(args.reference, "--reference")
    result, path = fidelity_report(args.name, args.reference, storage=args.storage,
                                   reference_storage=args.reference_storage, results_dir=args.results)
    a, res = result["agreement"], result["resolved"]
    ranks = (f"Kendall τ {res.tau:.2f} over the {res.ordered} of {res.pairs} pairs the reference orders "
             f"({a.tau:.2f} over every pair), Spearman ρ {a.rho:.2f}" if a is not None and res.ordered else
             f"Kendall τ {a.tau:.2f} (the reference orders no pair), Spearman ρ {a.rho:.2f}" if a is not None else
             f"no Kendall τ or Spearman ρ ({no_ranking(result['variants'])})")
    console.out.print(f"{args.name} against {args.reference}: {result['variants']} "
                      f"variant{'s' * (result['variants'] != 1)}, {ranks}", highlight=False)
    d = result["decisions"]
    if len(d):
        console.out.print(f"decisions: {states_said(d)}", highlight=False)
    print_paths([path])
    return 0


def cmd_time(args: argparse.Namespace) -> int:
    name = study_name(args.name)
    from bench import api

    ctx = api.run_context(name, storage=args.storage, results_dir=args.results, device=args.device, quiet=args.quiet)
    result, paths = api.time_study(ctx, args.rounds)
    if not args.quiet:
        rows = [{"variant": result["labels"].get(key, key), **{k: v for k, v in figures.items() if k.startswith("train_")}}
                for key, figures in result["variants"].items()]
        console.rows_table(rows, list(rows[0]), title=f"{args.name}: side by side on {result['device_name']}")
    said_report(paths)
    return 0


def cmd_collapse(args: argparse.Namespace) -> int:
    from bench import api, collapse

    settings = given(args, "images", "which", "threshold", "head_threshold")  # the rest: CollapseConfig's
    if args.trial is not None:
        study_name(args.name)
    with console.status("analysing attention maps", quiet=args.json):
        if args.trial is not None:
            if args.set or args.weights:
                raise BenchError("--trial analyses a sweep's trial as trained: --set and --weights do not apply")
            from bench.study.context import RunContext
            where = RunContext(storage=args.storage, results_dir=args.results, artifacts=artifacts(args))
            result, context = api.analyse_trial(args.name, args.trial, context=where, settings=settings,
                                                device=args.device)
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
        return 0
    rows = collapse.per_block_rows(result, context["attention"])
    k = result["threshold"]
    console.rows_table(rows, list(rows[0]), title=f"{context['model']}: attention collapse on {context['images']} "
                       f"{context['data']} ({context['weights']})",
                       headers={"sim_prev": "sim. to p−1", "share_k1": f"share>{k} k=1", "share_k2": "k=2",
                                "share_k3": "k=3", "cross_head": "cross-head sim.",
                                "cross_head_share": f"share>{result['head_threshold']}", "cka_prev": "token CKA p−1",
                                "uniformity": "token unif.", "rank_residual": "rank resid."})
    console.out.print(f"similar blocks: {result['similar_blocks']} of {len(rows) - 1} · mean similarity to the "
                      f"previous block: {console.fmt(result['adjacent_similarity_mean'])} · mean cross-head "
                      f"similarity: {console.fmt(result['cross_head_similarity_mean'])}", highlight=False)
    console.out.print(f"tokens, the same for every attention type: mean CKA to the previous block "
                      f"{console.fmt(result['cka_adjacent_mean'])} · last block's token uniformity "
                      f"{console.fmt(result['token_uniformity_last'])} and distance from rank 1 "
                      f"{console.fmt(result['rank_residual_last'])}", highlight=False)
    print_paths(paths)
    return 0


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in text)


def _parent(*options: tuple[tuple[str, ...], dict[str, Any]]) -> argparse.ArgumentParser:
    """A group of options shared by several commands (argparse's ``parents=``): each is defined once."""
    group = argparse.ArgumentParser(add_help=False)
    for flags, kwargs in options:
        group.add_argument(*flags, **kwargs)
    return group


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bench", description="Benchmark ViT/DeepViT variants: is this architecture change worth its cost?")
    parser.add_argument("--version", action="version", version=f"bench {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    device = _parent((("--device",), dict(default=None, help="cpu or cuda (default: cuda when available)")))
    as_json = _parent((("--json",), dict(action="store_true", help="print JSON instead of a table")))
    quiet = _parent((("--quiet",), dict(action="store_true",
                                        help="no progress bars or tables: one line per trial (for logs)")))
    model_set = _parent((("--set",), dict(action="append", default=[], metavar="KEY=VALUE",
                                          help="change a model field, e.g. --set depth=6 --set attention=re "
                                               "(repeatable)")))
    sweep = _parent((("sweep",), dict(metavar="SWEEP", help="a sweep file, e.g. sweeps/quickstart.yaml")),
                    (("--set",), dict(action="append", default=[], metavar="KEY=VALUE",
                                      help="override a spec value by its dotted name, e.g. --set train.epochs=2 "
                                           "(repeatable)")),
                    (("--name",), dict(default=None, help="study name (default: the sweep's name)")))
    data_root = (("--data-root",), dict(default=None, metavar="DIR",
                                        help="where this machine keeps the study's data (overrides data.root here, "
                                             "changing no trial's identity; the data must be the same: checked). "
                                             "Default: $BENCH_DATA_ROOT, else data.root"))
    local_data = _parent(data_root)
    machine = _parent(data_root,
                      (("--artifacts",), dict(default=None, metavar="PATH|URL",
                                              help="keep checkpoints and saved weights in this artifact store (a "
                                                   "shared folder, s3://BUCKET, gs://BUCKET) where any worker finds "
                                                   "them; default: $BENCH_ARTIFACTS, else the one the study was "
                                                   "started with, else the results folder")))
    storage = _parent((("--storage",), dict(default=None, metavar="URL",
                                            help="Optuna storage URL (default: sqlite:///RESULTS/NAME/study.db)")),
                      (("--results",), dict(default="results", metavar="DIR",
                                            help="where reports go (default: results)")))
    keep = _parent((("--save-weights",), dict(action="store_true", help="keep each trained model "
                                              "(RESULTS/NAME/weights/KEY.safetensors) for later analysis")),
                   (("--keep-checkpoints",), dict(action="store_true", help="keep each trial's last epoch checkpoint "
                                                  "(RESULTS/NAME/checkpoints/KEY.pt) once it is done; an interrupted "
                                                  "trial's is always kept, and its rerun resumes from it")))
    deciding = _parent((("--until-decided",), dict(action="store_true", help="after the sweep's seeds, add the next "
                                                   "seed to every arm whose interval spans 0 (and its baseline), one "
                                                   "round at a time, until each is decided, has --max-seeds seeds, or "
                                                   "--budget is spent (a sequential interval keeps the error rate)")),
                       (("--max-seeds",), dict(type=int, default=HORIZON, metavar="K",
                                               help=f"with --until-decided: at most K seeds per arm (default {HORIZON})")),
                       (("--budget",), dict(type=float, default=None, metavar="MINUTES",
                                            help="with --until-decided: add no seeds after this many minutes")))
    running = _parent((("--workers",), dict(type=int, default=1, metavar="N",
                                            help="start N local worker processes, one per GPU where there are "
                                                 "several (default 1); they share the study, so give a --storage "
                                                 "that serves several (default: a journal file)")),
                      (("--retry-failed",), dict(action="store_true", help="rerun trials that failed before")))

    p = sub.add_parser("models", parents=[as_json], help="list bench's registered variants",
                       description="List bench's registered variants with closed-form params and GMACs.")
    p.set_defaults(func=cmd_models)

    p = sub.add_parser("profile", parents=[model_set, device, as_json], help="measure the cost of one model",
                       description="Parameters, MACs (fvcore, attention included), activations, "
                                   "inference and train-step speed, and peak CUDA memory of one model.")
    p.add_argument("name", metavar="NAME", help="a bench variant (`bench models`) or any timm model name")
    p.add_argument("--dtype", default=None, choices=("auto", *DTYPES), help="bf16 = autocast; auto = bf16 on CUDA, fp32 on "
                   "CPU (default: auto, as a sweep's profile section)")
    p.add_argument("--batch-size", type=int, default=None, help="halved on out-of-memory (default 64, as a sweep's "
                   "profile section)")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps (default: 2 CPU, 10 CUDA)")
    p.add_argument("--iters", type=int, default=None, help="timed steps (default: 5 CPU, 50 CUDA)")
    p.add_argument("--no-speed", action="store_true", help="count only: skip timing")
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                   help="time the torch.compile'd model (fullgraph; the compile timed apart: train_compile_s, "
                        "infer_compile_s), or not (default: on CUDA only, as a sweep's profile section)")
    p.set_defaults(func=cmd_profile)

    p = sub.add_parser("run", parents=[sweep, device, storage, running, deciding, keep, quiet, machine],
                       help="run a sweep: profile and proxy-train every variant × seed",
                       description="Run a sweep. Trials already in the study are skipped, so rerunning "
                                   "the same command resumes an interrupted sweep.")
    p.add_argument("--queue-only", action="store_true", help="make the study and queue the trials it lacks, run "
                   "none: workers (`bench worker NAME`, e.g. a Slurm array) run them")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("study", parents=[sweep, device, storage, running, keep, quiet, machine],
                       help="an Optuna study: search variants for top-1 against a cost",
                       description="Search a space of variants (the spec's search section) with an Optuna "
                                   "sampler, for one or two objectives; resumable like a sweep, and shared "
                                   "by any number of workers through --storage.")
    p.add_argument("--n-trials", type=int, default=None, metavar="N",
                   help="trials in the study, all workers together (default: the spec's study.n_trials)")
    p.add_argument("--timeout", type=float, default=None, metavar="S",
                   help="seconds: no new trial starts after this (per worker)")
    p.set_defaults(func=cmd_study)

    p = sub.add_parser("worker", parents=[storage, device, keep, quiet, machine],
                       help="join a study's workers: run its queued trials until none is left",
                       description="Run trials queued in study NAME (by `bench run` or `bench study`) until "
                                   "none is left and no other worker runs one; a trial whose worker dies is "
                                   "taken over. Start any number, on any machines, with the same --storage "
                                   "(or $BENCH_STORAGE: a password there stays out of the process list).")
    p.add_argument("name", metavar="NAME", help="the study (sweep) name")
    p.add_argument("--no-report", action="store_true", help="do not write the report when done")
    p.add_argument("--tag", default="", help=argparse.SUPPRESS)  # prefixes this worker's lines
    p.set_defaults(func=cmd_worker)

    p = sub.add_parser("plan", parents=[sweep, device, as_json, local_data],
                       help="list a sweep's variants with params, GMACs and estimated time",
                       description="Validate a sweep and list its variants; trains nothing.")
    p.add_argument("--no-estimate", action="store_true", help="skip the timing calibration")
    p.add_argument("--ladder", action="append", default=[], metavar="KEY=V1,V2,…",
                   help="plan `bench calibrate`'s ladder: each rung's trials, train PMACs and time")
    p.add_argument("--from", dest="from_study", default=None, metavar="NAME",
                   help="from study NAME's spread: the seeds that would decide each arm of the comparison, and their cost")
    p.add_argument("--max-seeds", type=int, default=HORIZON, metavar="K",
                   help=f"with --from: at most K seeds per arm (default {HORIZON})")
    p.add_argument("--storage", default=None, metavar="URL", help="with --from: NAME's storage (default: its results folder)")
    p.add_argument("--results", default="results", metavar="DIR", help="with --from: where NAME's results are")
    p.set_defaults(func=cmd_plan)

    p = sub.add_parser("calibrate", parents=[sweep, device, storage, running, deciding, keep, quiet, machine],
                       help="run a sweep at every rung of a budget ladder: from which budget does its verdict hold?",
                       description="Run the sweep at each rung of a budget ladder (e.g. --ladder train.epochs=2,4,8; "
                                   "several --ladder are zipped rung by rung), each rung a resumable study NAME@KEY=V "
                                   "in the same storage, then write RESULTS/NAME/calibration.md: per rung its cost, "
                                   "Kendall τ and Spearman ρ against the largest and the next rung, each arm's "
                                   "Δtop-1 against cost, and the cheapest rung whose ranking and decisions agree "
                                   "with the largest — or that none does. Rungs already run are reused.")
    p.add_argument("--ladder", action="append", required=True, metavar="KEY=V1,V2,…",
                   help="a spec value by its dotted name and one value per rung, cheapest first (repeatable: zipped)")
    p.add_argument("--stop-when-stable", action="store_true",
                   help="stop climbing once two successive rungs agree (τ ≥ 0.8, every decision kept)")
    p.set_defaults(func=cmd_calibrate)

    p = sub.add_parser("fidelity", parents=[storage], help="does a proxy study rank and decide like a reference study?",
                       description="Compare study NAME (a short proxy) with study REF: the same variants at a "
                                   "longer budget, or on other data. Kendall τ and Spearman ρ between their top-1 "
                                   "over variants, and whether each comparison arm's decision agrees. Writes "
                                   "RESULTS/NAME/fidelity-REF.md.")
    p.add_argument("name", metavar="NAME", help="the proxy study")
    p.add_argument("--reference", required=True, metavar="REF", help="the reference study")
    p.add_argument("--reference-storage", default=None, metavar="URL", help="REF's storage (default: --storage, "
                   "else sqlite:///RESULTS/REF/study.db)")
    p.set_defaults(func=cmd_fidelity)

    p = sub.add_parser("time", parents=[storage, device, quiet],
                       help="time every variant of a study side by side, then rewrite its report",
                       description="Time inference and train steps of every variant of study NAME in interleaved "
                                   "rounds on this device (drift hits every variant alike), store the figures in "
                                   "the study and rewrite the report, whose comparison then uses them.")
    p.add_argument("name", metavar="NAME", help="the study (sweep) name")
    p.add_argument("--rounds", type=int, default=None, help="interleaved rounds (default: the spec's profile.rounds, "
                   f"or {ProfileConfig.rounds} where it is 0)")
    p.set_defaults(func=cmd_time)

    p = sub.add_parser("collapse", parents=[model_set, device, storage, as_json, machine],
                       help="attention-collapse metrics and heatmaps of one model or trial",
                       description="Cross-layer and cross-head similarity of attention maps (DeepViT's "
                                   "analysis) on a fixed batch: a registered or timm model (untrained, or "
                                   "--weights), or with --trial a trained trial of a sweep (its saved weights).")
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
    p.set_defaults(func=cmd_collapse)

    p = sub.add_parser("cache", parents=[as_json], help="list the decoded-data caches, or remove those not used lately",
                       description="Real datasets are decoded once per resolution into caches (bench.data.cache); "
                       "a changed folder leaves its old cache behind. This lists them, newest use first.")
    p.add_argument("--dir", default=None, help="the cache folder (default: $BENCH_CACHE_DIR, else ~/.cache/bench)")
    p.add_argument("--prune", type=float, default=None, metavar="DAYS",
                   help="first remove the caches no run has used for DAYS days (only bench's own, never one "
                   "a run holds)")
    p.set_defaults(func=cmd_cache)

    p = sub.add_parser("report", parents=[storage], help="write runs.csv, report.md and plots from a sweep's study",
                       description="Rebuild a sweep's report from its study storage alone.")
    p.add_argument("name", metavar="NAME", help="the sweep's name (or its YAML file)")
    p.set_defaults(func=cmd_report)
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
