"""Report plots: top-1 against GMACs with the Pareto front, top-1 and throughput against
depth per attention type, collapse heatmaps, a study's Pareto front (matplotlib ``Figure``
objects: no pyplot state, no GUI backend). Drawn from bench.report.tables' summaries; ``PLOTS``
is the one registry of report.md's plots (name → when it is wanted, how it is drawn)."""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, Callable, Mapping

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from bench.config import OBJECTIVES
from bench.own_files import atomic_write
from bench.records import DETAILS, Status
from bench.report.tables import arm_points, has_accuracy, pareto_front, ranking_by_epoch, summarize, width_and_re_arms
from bench.variant import variant_label, varying_fields

_COLOURS = {"self": "tab:blue", "re": "tab:red"}
_SHADES = {"self": "Blues", "re": "Reds"}  # one hue per attention type, shades for its other fields
_MAX_SERIES = 12  # lines on one by-depth plot before fields are pooled
MAX_PANELS = 4  # groups drawn by the width-against-re-attention plot (report.md's table has every group)


def deepest_trials(df: pd.DataFrame) -> list[tuple[str, pd.DataFrame]]:
    """(title, rows: its seeds) of the deepest analysed self- and re-attention variant."""
    if "similar_blocks" not in df or "depth" not in df or "attention" not in df:
        return []
    done = df[pd.to_numeric(df["similar_blocks"], errors="coerce").notna()]
    if "status" in done:
        done = done[done["status"] == Status.COMPLETE.value]
    others = [f for f in varying_fields(done) if f not in ("depth", "attention", "seed")]
    out = []
    for attention, name in (("self", "ViT"), ("re", "DeepViT")):
        rows = done[done["attention"] == attention]
        if rows.empty:
            continue
        deepest = rows[rows["depth"] == rows["depth"].max()]
        first = deepest.iloc[0]
        if others:  # several variants at that depth (say, widths): the first one's seeds
            fill = lambda x: x.astype(object).where(x.notna(), "none")  # noqa: E731 (NaN never equals NaN)
            deepest = deepest[(fill(deepest[others]) == fill(first[others])).all(axis=1)]
        label = variant_label(first, others) if others else ""
        out.append((f"{name}, {int(first['depth'])} blocks{', ' + label if label else ''} "
                    f"({len(deepest)} seed{'s' * (len(deepest) > 1)})", deepest))
    return out


def _deepest(df: pd.DataFrame) -> list[tuple[str, list[list[float]]]]:
    """(title, seed-mean similarity matrix) for ``deepest_trials``, from the ``collapse`` column
    (which a report loads for just these trials)."""
    col = DETAILS[0]  # the trained model's per-block maps
    if col not in df:
        return []
    out = []
    for title, rows in deepest_trials(df):
        found = [c["similarity"] for c in rows[col] if isinstance(c, dict) and c.get("similarity")]
        if found:
            out.append((title, np.array(found, dtype=float).mean(0).tolist()))
    return out


def similarity_heatmap(ax, matrix: list[list[float]], title: str) -> None:
    """Block × block mean cross-layer similarity, as the paper's Fig. 1 heatmaps."""
    image = ax.imshow(np.asarray(matrix), vmin=0, vmax=1, cmap="viridis", origin="lower")
    ax.figure.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="mean cosine similarity")
    ax.set(xlabel="block q", ylabel="block p", title=title)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))


def collapse_curve(ax, result: Mapping[str, Any], title: str) -> None:
    """Per block: similarity to the previous block, share of similar tokens (k = 1, 2, 3),
    and cross-head similarity."""
    d = len(result["similarity"])
    ax.plot(range(1, d), result["adjacent_similarity"], "o-", label="mean sim. to block p−1")
    for k, ratios in result["similar_ratio"].items():
        if ratios:
            ax.plot(range(int(k), d), ratios, ".--", label=f"share > {result['threshold']} with block p−{k}")
    if result.get("cross_head_similarity"):
        ax.plot(range(d), result["cross_head_similarity"], "s:", label="cross-head sim.")
    ax.axhline(result["threshold"], color="grey", lw=0.8)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set(xlabel="block p", ylabel="similarity / share", ylim=(-0.05, 1.05) if _unit(result) else None,
           title=title)


def _unit(result: Mapping[str, Any]) -> bool:
    return min(min(row) for row in result["similarity"]) >= -1e-6


def collapse_figures(result: Mapping[str, Any], out_dir: Path, title: str) -> list[Path]:
    """``similarity_heatmap.png`` and ``similarity_per_block.png`` for one analysed model."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    fig = Figure(figsize=(5.5, 4.5))
    similarity_heatmap(fig.add_subplot(), result["similarity"], title)
    paths = [_save(fig, out_dir / "similarity_heatmap.png")]
    fig = Figure(figsize=(6.5, 4.5))
    ax = fig.add_subplot()
    collapse_curve(ax, result, title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return paths + [_save(fig, out_dir / "similarity_per_block.png")]


def _series(summary: pd.DataFrame, df: pd.DataFrame) -> tuple[list[tuple], list[str]]:
    """Lines of a by-depth plot: (label, colour, marker, rows by depth), and the fields pooled.

    One line per attention type × other varying field; past ``_MAX_SERIES`` lines the
    last of those fields are pooled (mean over their values). Colour says attention type;
    its shade and the marker tell the other fields apart.
    """
    others = [f for f in varying_fields(df) if f != "depth"]
    while others and summary.groupby(others, dropna=False).ngroups > _MAX_SERIES:
        others.pop()
    pooled = [f for f in varying_fields(df) if f not in others and f != "depth"]
    if pooled:
        summary = summary.groupby([*others, "depth"], dropna=False).mean(numeric_only=True).reset_index()
    groups = list(summary.groupby(others, dropna=False, sort=True)) if others else [((), summary)]
    attention = [rows.iloc[0].get("attention") for _, rows in groups]
    lines = []
    for i, (_, rows) in enumerate(groups):
        same = [j for j, a in enumerate(attention) if a == attention[i]]
        k, n = same.index(i), len(same)
        if attention[i] in _SHADES and n > 1:
            colour = matplotlib.colormaps[_SHADES[attention[i]]](0.45 + 0.5 * k / (n - 1))
        else:
            colour = _COLOURS.get(attention[i], f"C{i % 10}")
        lines.append((variant_label(rows.iloc[0], others), colour, "osD^v<>"[k % 7], rows.sort_values("depth")))
    return lines, pooled


def _top1_vs_gmacs(ax, summary: pd.DataFrame) -> None:
    s = summary[summary["n"] > 0]
    for attention, rows in s.groupby("attention", sort=True) if "attention" in s else [("", s)]:
        ax.errorbar(rows["infer_gmacs"], rows["top1_mean"], yerr=rows["top1_std"].fillna(0), fmt="o",
                    capsize=3, color=_COLOURS.get(attention), label=f"attention={attention}" if attention else None)
    front = s[pareto_front(s["infer_gmacs"], s["top1_mean"])].sort_values("infer_gmacs")
    ax.step(front["infer_gmacs"], front["top1_mean"], where="post", color="k", lw=1, alpha=0.6,
            label="Pareto front")
    ax.scatter(front["infer_gmacs"], front["top1_mean"], s=120, facecolors="none", edgecolors="k", zorder=3)
    if len(s) <= 12:
        for r in s.itertuples():
            ax.annotate(r.variant, (r.infer_gmacs, r.top1_mean), fontsize=7, xytext=(4, 4),
                        textcoords="offset points")
    if s["infer_gmacs"].min() > 0 and s["infer_gmacs"].max() / s["infer_gmacs"].min() > 10:
        ax.set_xscale("log")
    ax.set(xlabel="GMACs per image (inference)", ylabel="top-1 % (mean ± std over seeds)",
           title="Accuracy against compute")


def _by_depth(ax, summary: pd.DataFrame, df: pd.DataFrame, col: str, ylabel: str, title: str,
              err: str | None = None) -> None:
    lines, pooled = _series(summary, df)
    for label, colour, marker, rows in lines:
        if rows[col].notna().any():  # e.g. no train speed measured for this series
            ax.errorbar(rows["depth"], rows[col], yerr=rows[err].fillna(0) if err else None, color=colour,
                        marker=marker, capsize=3, label=label)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set(xlabel="depth (blocks)", ylabel=ylabel,
           title=title + (f"\n(mean over {', '.join(pooled)})" if pooled else ""))


def _save(fig: Figure, path: Path) -> Path:
    fig.tight_layout()
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=110), binary=True)
    fig.clear()  # a Figure without pyplot is freed with its last reference; drop the artists now
    return path


def width_vs_reattention(fig: Figure, points: pd.DataFrame, by: list[str]) -> None:
    """Per group: the width curve (baseline and wider arms) as a line, each re-attention arm as
    a point, top-1 (mean, 95 % t-interval over seeds) against GMACs."""
    groups = list(points.groupby(by, dropna=False, sort=True)) if by else [((), points)]
    if len(groups) > MAX_PANELS:  # many groups (depths): evenly spaced ones, the first and last included
        groups = [groups[round(i * (len(groups) - 1) / (MAX_PANELS - 1))] for i in range(MAX_PANELS)]
    fig.set_size_inches(max(5.0, 4.2 * len(groups)), 4.5)
    for i, (key, g) in enumerate(groups):
        ax = fig.add_subplot(1, len(groups), i + 1)
        for kind, colour, style in (("width", "tab:blue", "o-"), ("re", "tab:red", "D")):
            rows = g[g["kind"] == kind].sort_values("infer_gmacs")
            err = np.vstack([rows["top1_mean"] - rows["low"], rows["high"] - rows["top1_mean"]])
            ax.errorbar(rows["infer_gmacs"], rows["top1_mean"], yerr=np.nan_to_num(err), fmt=style, color=colour,
                        capsize=3, label="width curve" if kind == "width" else "re-attention")
            for r in rows.itertuples():
                ax.annotate(r.arm, (r.infer_gmacs, r.top1_mean), fontsize=7, xytext=(4, -10 if kind == "re" else 4),
                            textcoords="offset points")
        ax.set_xscale("log")
        title = " ".join(f"{f}={v}" for f, v in zip(by, key if isinstance(key, tuple) else (key,), strict=False))
        ax.set(xlabel="GMACs per image (log)", ylabel="top-1 % (mean, 95 % CI over seeds)", title=title or None)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="lower right")
    fig.suptitle("Widening against re-attention")


class Frame:
    """What a report's plots are drawn from: the records, the comparison, and the tables derived
    from them, each computed once (choosing the plots and drawing them share it)."""

    def __init__(self, df: pd.DataFrame, compare: Mapping[str, Any] | None = None) -> None:
        self.df, self.compare = df, compare

    @cached_property
    def accuracy(self) -> bool:
        return has_accuracy(self.df)

    @cached_property
    def summary(self) -> pd.DataFrame:
        return summarize(self.df)

    @cached_property
    def taus(self) -> pd.DataFrame:
        return ranking_by_epoch(self.df)

    @cached_property
    def heatmaps(self) -> list[tuple[str, list[list[float]]]]:
        return _deepest(self.df)

    @property
    def by_depth(self) -> bool:
        return "depth" in self.df

    def has(self, col: str) -> bool:
        return col in self.df and bool(pd.to_numeric(self.df[col], errors="coerce").notna().any())


@dataclass(frozen=True)
class Plot:
    """One report plot: whether ``df`` calls for it, and how to draw it on a Figure of ``size``.
    ``legend``: where each axis' legend goes; None when ``draw`` styles its axes itself."""

    wanted: Callable[[Frame], bool]
    draw: Callable[[Figure, Frame], None]
    size: tuple[float, float] = (6.5, 4.5)
    legend: str | None = "best"


def _ranking(fig: Figure, f: Frame) -> None:
    taus = f.taus
    ax = fig.add_subplot()
    ax.plot(taus["epoch"], taus["tau"], "o-")
    ax.axhline(0.9, color="grey", lw=0.8)
    ax.set(xlabel="epoch", ylabel="Kendall τ with the final ranking", ylim=(-1.05, 1.05),
           title=f"How early the ranking of {int(taus['variants'].iloc[0])} variants settles")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)


def _collapse(fig: Figure, f: Frame) -> None:
    _by_depth(fig.add_subplot(1, 2, 1), f.summary, f.df, "similar_blocks", "similar blocks (mean over seeds)",
              "Similar blocks (adjacent similarity > threshold)")
    _by_depth(fig.add_subplot(1, 2, 2), f.summary, f.df, "adjacent_similarity_mean",
              "mean similarity to the previous block", "Cross-layer similarity")


def _tokens(fig: Figure, f: Frame) -> None:
    for i, (col, ylabel, title) in enumerate((
            ("cka_adjacent_mean", "mean CKA to the previous block", "Token CKA between blocks"),
            ("token_uniformity_last", "mean cosine between patch tokens", "Token uniformity, last block"),
            ("rank_residual_last", "‖X − 1·x̄ᵀ‖ / ‖X‖", "Distance from rank 1, last block"))):
        _by_depth(fig.add_subplot(1, 3, i + 1), f.summary, f.df, col, ylabel, title)


def _heatmaps(fig: Figure, f: Frame) -> None:
    items = f.heatmaps
    fig.set_size_inches(5 * len(items), 4.5)
    for i, (title, matrix) in enumerate(items):
        similarity_heatmap(fig.add_subplot(1, len(items), i + 1), matrix, title)


def _throughput(fig: Figure, f: Frame) -> None:
    for i, mode in enumerate(("infer", "train")):
        _by_depth(fig.add_subplot(1, 2, i + 1), f.summary, f.df, f"{mode}_samples_per_sec",
                  f"{mode} samples/s", f"{mode.capitalize()} throughput")


# The report's plots, in report.md's order: the one table both choosing (``plot_names``) and
# drawing (``plots``) read, so a plot is added in one place.
PLOTS: dict[str, Plot] = {
    "top1_vs_gmacs.png": Plot(
        lambda f: f.accuracy and f.has("infer_gmacs"),
        lambda fig, f: _top1_vs_gmacs(fig.add_subplot(), f.summary),
        legend="lower right"),  # accuracy rises with cost: lower right is usually empty ("best" is slow on 10k points)
    "width_vs_reattention.png": Plot(
        lambda f: f.accuracy and bool(f.compare) and all(width_and_re_arms(f.compare)),
        lambda fig, f: width_vs_reattention(fig, arm_points(f.df, f.compare), list(f.compare.get("by") or [])),
        legend=None),
    "ranking_by_epoch.png": Plot(lambda f: f.accuracy and not f.taus.empty, _ranking, legend=None),
    "top1_vs_depth.png": Plot(
        lambda f: f.by_depth and f.accuracy,
        lambda fig, f: _by_depth(fig.add_subplot(), f.summary, f.df, "top1_mean", "top-1 % (mean ± std over seeds)",
                                 "Accuracy against depth", err="top1_std")),
    "throughput_vs_depth.png": Plot(
        lambda f: f.by_depth and (f.has("train_samples_per_sec") or f.has("infer_samples_per_sec")),
        _throughput, size=(10, 4.5)),
    "gmacs_vs_depth.png": Plot(
        lambda f: f.by_depth and not f.accuracy and f.has("infer_gmacs"),
        lambda fig, f: _by_depth(fig.add_subplot(), f.summary, f.df, "infer_gmacs", "GMACs per image (inference)",
                                 "Compute against depth")),
    "collapse_vs_depth.png": Plot(lambda f: f.by_depth and f.has("similar_blocks"), _collapse, size=(10, 4.5)),
    "tokens_vs_depth.png": Plot(lambda f: f.by_depth and f.has("cka_adjacent_mean"), _tokens, size=(14, 4.5)),
    "collapse_heatmaps.png": Plot(lambda f: bool(f.heatmaps), _heatmaps, legend=None),
}


def plot_names(df: pd.DataFrame, compare: Mapping[str, Any] | None = None, frame: Frame | None = None) -> list[str]:
    """The PNGs ``plots`` draws for ``df`` (report.md links exactly these)."""
    f = frame or Frame(df, compare)
    return [name for name, plot in PLOTS.items() if plot.wanted(f)]


def plots(df: pd.DataFrame, out_dir: Path, compare: Mapping[str, Any] | None = None) -> list[Path]:
    """Draw the PNGs ``plot_names`` lists into ``out_dir``; return their paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    f, paths = Frame(df, compare), []
    for name in plot_names(df, compare, f):
        plot = PLOTS[name]
        fig = Figure(figsize=plot.size)
        plot.draw(fig, f)
        for ax in fig.axes if plot.legend else []:
            ax.grid(alpha=0.3)
            n = len(ax.get_legend_handles_labels()[1])
            if n:
                ax.legend(fontsize=7, ncol=2 if n > 8 else 1, loc=plot.legend)
        paths.append(_save(fig, out_dir / name))
    return paths


def pareto_plot(ok: pd.DataFrame, best: pd.DataFrame, cols: list[str], objectives: list[str], path: Path) -> Path:
    """A study's trials against its two objectives, the Pareto front as a line."""
    fig = Figure(figsize=(6.4, 4.4))
    ax = fig.subplots()
    x, y = (cols[1], cols[0]) if objectives[0] == "top1" else (cols[0], cols[1])
    colour = ok["attention"].map(_COLOURS).fillna("tab:gray") \
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


# --- a budget ladder (bench calibrate) ---------------------------------------------------------

def calibration_figures(verdicts: pd.DataFrame, rungs: pd.DataFrame, by: list[str], out_dir: Path,
                        axis: str) -> list[Path]:
    """The two pictures of a calibration (bench.report.calibration), against each rung's cost
    (column ``cost``, named ``axis``): calibration_agreement.png, Kendall τ of each rung against
    the largest and against the next, with the 0.8 line; and, where the sweep compares arms,
    calibration_verdicts.png, the verdict against budget: per group, each arm's Δtop-1 with its
    95 % interval at every rung."""
    out_dir = Path(out_dir)
    log = axis != "rung"
    fig = Figure(figsize=(6.5, 4.5))
    ax = fig.add_subplot()
    for which, style, label in (("top", "o-", "against the largest rung"), ("next", "s--", "against the next rung")):
        r = rungs[np.isfinite(rungs[f"tau_{which}"].astype(float))]
        err = np.vstack([r[f"tau_{which}"] - r[f"tau_low_{which}"], r[f"tau_high_{which}"] - r[f"tau_{which}"]])
        ax.errorbar(r["cost"], r[f"tau_{which}"], yerr=np.nan_to_num(err.astype(float)), fmt=style, capsize=3,
                    label=label)
    ax.axhline(0.8, color="grey", lw=0.8)
    _rung_ticks(ax, rungs, log)
    ax.set(xlabel=axis, ylabel="Kendall τ (95 % bootstrap CI)", ylim=(-1.05, 1.05),
           title="Does the ranking hold as the budget grows?")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    paths = [_save(fig, out_dir / "calibration_agreement.png")]
    if verdicts.empty:
        return paths
    groups = list(verdicts.groupby(by, dropna=False, sort=True)) if by else [((), verdicts)]
    if len(groups) > MAX_PANELS:
        groups = [groups[round(i * (len(groups) - 1) / (MAX_PANELS - 1))] for i in range(MAX_PANELS)]
    fig = Figure(figsize=(max(5.0, 4.2 * len(groups)), 4.5))
    for i, (key, g) in enumerate(groups):
        ax = fig.add_subplot(1, len(groups), i + 1)
        for arm, rows in g.groupby("arm", sort=False):
            rows = rows.sort_values("order")
            err = np.vstack([rows["d_top1"] - rows["d_low"], rows["d_high"] - rows["d_top1"]]).astype(float)
            ax.errorbar(rows["cost"], rows["d_top1"], yerr=np.nan_to_num(err), fmt="o-", capsize=3, label=arm)
        ax.axhline(0, color="grey", lw=0.8)
        _rung_ticks(ax, rungs, log)
        title = " ".join(f"{f}={v}" for f, v in zip(by, key if isinstance(key, tuple) else (key,), strict=False))
        ax.set(xlabel=axis, ylabel="Δtop-1 vs baseline, points (95 % CI)", title=title or None)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="best")
    fig.suptitle("Verdict against budget")
    return [*paths, _save(fig, out_dir / "calibration_verdicts.png")]


def _rung_ticks(ax: Any, rungs: pd.DataFrame, log: bool) -> None:
    """Each rung's label under its cost (log scale when the costs are counted)."""
    if log:
        ax.set_xscale("log")
    ax.set_xticks(list(rungs["cost"]))
    ax.set_xticklabels([f"{r}\n{c:.3g}" if log else str(r) for r, c in zip(rungs["rung"], rungs["cost"], strict=True)],
                       fontsize=7)
    ax.minorticks_off()
