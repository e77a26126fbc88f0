"""Reports of a stored study: read its ledger (records, per-block details, the side-by-side pass,
the stored spec), compute what only the Optuna study knows (parameter importances), show the
storage without a machine path, and hand it all to bench.report, which writes the files.
``bench report``, ``bench fidelity`` and the end of every run come through here.
"""
from __future__ import annotations

import os
import warnings
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Mapping

import optuna
import pandas as pd

from bench.errors import BenchError
from bench.records import DETAILS
from bench.report import plots
from bench.report.calibration import RungStudy, calibration, write_calibration
from bench.report.decide import needed_cell, projections
from bench.report.fidelity import write_fidelity
from bench.report.formats import signed
from bench.report.markdown import Importances, study_objectives, write_report
from bench.report.tables import comparison, has_accuracy
from bench.sequential import HORIZON
from bench.spec import Rung, Sweep, check_name
from bench.study.ledger import Ledger
from bench.study.storage import safe_url
from bench.variant import show_value

FILE_SCHEMES = ("sqlite:///", "journal:")  # storages that are one file (the rest are servers)


def records_frame(ledger: Ledger) -> pd.DataFrame:
    """The study's records, one row per trial (the newest finished record of each key)."""
    df = pd.DataFrame(ledger.records())
    for col in ("top1", "train_loss"):  # stored as text when not finite (JSON has no NaN)
        if col in df:
            df[col] = pd.to_numeric(df[col], errors="coerce")
    return df


def shown_storage(url: str, folder: str | Path, results_dir: str | Path) -> str:
    """The storage as a report names it, with no machine path: a file in the study's results
    ``folder`` by its path there (``study.db (in the results folder)``), one elsewhere under
    ``results_dir`` by its path from that folder, anything else by its URL, password masked."""
    scheme = next((s for s in FILE_SCHEMES if url.startswith(s)), None)
    if scheme is not None:
        path = Path(url[len(scheme):].split("?")[0]).expanduser().resolve()
        here = Path(folder).resolve()
        if path.is_relative_to(here):
            return f"{path.relative_to(here).as_posix()} (in the results folder)"
        if path.is_relative_to(Path(results_dir).resolve()):
            return f"{Path(os.path.relpath(path, here)).as_posix()} (relative to the results folder)"
    return safe_url(url)


def importances(study: optuna.Study, objectives: list[str]) -> Importances:
    """fANOVA importances of the searched fields for each objective (Optuna's default), or why
    there are none."""
    table = {}
    for i, o in enumerate(objectives):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                table[o] = optuna.importance.get_param_importances(
                    study, target=(lambda t, i=i: t.values[i]) if len(objectives) > 1 else None)
        except (RuntimeError, ValueError) as err:  # too few trials, or a single-value space
            return f"Not computed: {err}"
    return table


def report_ledger(ledger: Ledger, name: str, results_dir: str | Path) -> dict[str, Path]:
    """Write the report of the study behind ``ledger`` to results_dir/name."""
    url = ledger.url
    df = records_frame(ledger)
    if df.empty:
        raise BenchError(f"study {name!r} in {safe_url(url)} has no finished trials yet")
    # per-block details live beside the records: load the heatmaps' only (records from before
    # that change still carry theirs inside)
    col = DETAILS[0]
    have = df[col].map(lambda c: isinstance(c, dict)) if col in df else pd.Series(False, df.index)
    numbers = [int(n) for _, rows in plots.deepest_trials(df) for n in rows["trial"]
               if not have[df.index[df["trial"] == n]].any()]
    if numbers:
        loaded = df["trial"].map(ledger.details(numbers))
        df[col] = loaded.where(~have, df[col]) if col in df else loaded
    spec = {**(ledger.spec or {"name": name}), "sequential": ledger.sequential}
    out_dir = Path(results_dir) / name
    info = {"generated": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "storage": shown_storage(url, out_dir, results_dir)}
    found = importances(ledger.study, study_objectives(spec)) if spec.get("search") else None
    return write_report(df, spec, out_dir, info, importances=found, side=ledger.side_by_side())


def open_arms(ledger: Ledger, compare: Mapping[str, Any] | None) -> list[str]:
    """One line per undecided arm of the study: the seeds that would decide it, and their cost
    (bench.report.decide), for the console at the end of a run."""
    frame = records_frame(ledger)
    if not compare or frame.empty or not has_accuracy(frame):
        return []
    seq = ledger.sequential
    by = list(compare.get("by") or [])
    found = projections(comparison(frame, compare, sequential=bool(seq)), by,
                        (seq or {}).get("max_seeds") or HORIZON)
    return [" ".join([*(f"{f}={show_value(f, p[f])}" for f in by), p["arm"]])
            + f": Δ {signed(p['d_top1'])}, undecided at {p['seeds']} seeds; seeds that decide it: {needed_cell(p)}"
            for p in found.to_dict("records")]


def report_study(name: str, *, storage: str | None = None, results_dir: str | Path = "results") -> dict[str, Path]:
    """``bench report NAME``: rebuild runs.csv, report.md and the plots from the study alone."""
    ledger = Ledger.locate(name, storage, results_dir)
    return report_ledger(ledger, name, results_dir)


def fidelity_report(proxy: str, reference: str, *, storage: str | None = None, reference_storage: str | None = None,
                    results_dir: str | Path = "results") -> tuple[dict[str, Any], Path]:
    """``bench fidelity``: how study ``proxy``'s ranking and decisions agree with study
    ``reference``'s (the same variants at a longer budget, or on other data). Writes
    results_dir/proxy/fidelity-<reference>.md; returns (the comparison, its path)."""
    for name in (proxy, reference):  # the file goes into results_dir/proxy: no name may lead out of it
        check_name(name)
    lp = Ledger.locate(proxy, storage, results_dir)
    lr = Ledger.locate(reference, reference_storage or storage, results_dir)
    dp, dr = records_frame(lp), records_frame(lr)
    if dp.empty or dr.empty:
        raise BenchError(f"study {proxy if dp.empty else reference!r} has no finished trials yet")
    return write_fidelity(dp, dr, names=(proxy, reference),
                          specs=({**(lp.spec or {}), "sequential": lp.sequential},
                                 {**(lr.spec or {}), "sequential": lr.sequential}),
                          out_dir=Path(results_dir) / proxy)


def rung_study(rung: Rung, sweep: Sweep, *, storage: str | None = None,
               results_dir: str | Path = "results") -> RungStudy:
    """A ladder's rung as run: the records of exactly the trials ``sweep`` (the rung's) runs, from
    its study (``storage``: the ladder's, or None for the study's own file under results_dir),
    and the stored spec. Trials the study holds beyond them (another ladder's, or a grid or
    seeds edited since) are left out and counted (``left_out``)."""
    ledger = Ledger.locate(sweep.name, storage, results_dir)
    frame = records_frame(ledger)
    if frame.empty:
        raise BenchError(f"study {sweep.name!r} (rung {rung.label}) has no finished trials yet")
    ours = frame["key"].isin({t.key for t in sweep.trials()})
    return RungStudy(rung.label, sweep.name, frame[ours].reset_index(drop=True), ledger.spec or {}, rung.sets,
                     left_out=int((~ours).sum()), sequential=ledger.sequential)


def calibration_report(name: str, rungs: list[RungStudy], *, results_dir: str | Path = "results",
                       stopped: str | None = None, command: str | None = None
                       ) -> tuple[dict[str, Any], dict[str, Path]]:
    """``bench calibrate``'s report: the rungs read together (bench.report.calibration), written
    to results_dir/name/calibration.md, calibration.json and plots; ``command``: the next step a
    user can paste when the largest rung is undecided. Returns (result, paths)."""
    result = calibration(rungs, rungs[0].spec.get("compare"), command=command)
    ladder = {k: [r.sets[k] for r in rungs] for k in rungs[0].sets}
    return result, write_calibration(result, name=name, ladder=ladder, spec=rungs[0].spec,
                                     out_dir=Path(results_dir) / check_name(name), stopped=stopped)
