"""The cells of every report file: numbers, signed deltas and their intervals, top-1 over seeds,
cost multipliers, a spec section or search space in one line, and the markdown pipe table. One
set, used by report.md, the study section and the fidelity report alike (a variant field's value
is ``show_value``: ``summarize`` labels rows with it, so it lives in bench.report.tables)."""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Mapping

from bench.config import DataConfig, TrainConfig
from bench.console import fmt
from bench.records import Status
from bench.variant import is_missing

MINUS = "−"  # every signed figure in report.md uses this sign, never ASCII '-'


def num(value: Any) -> str:
    """Four significant digits; "–" for a missing or non-finite figure."""
    if is_missing(value) or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    return fmt(value)


def signed(value: Any, digits: int | None = 1, unit: str = "") -> str:
    """``+1.2``, ``−0.4 %``; ``digits=None`` keeps four significant digits."""
    if is_missing(value) or not math.isfinite(value):
        return "–"
    text = fmt(abs(float(value))) if digits is None else f"{abs(value):,.{digits}f}"
    sign = "" if float(text.replace(",", "")) == 0 else "+" if value > 0 else MINUS
    return f"{sign}{text}{unit}"


def two_places(value: float) -> str:
    """A rank correlation: ``0.83``, ``−0.20``."""
    return f"{value:.2f}".replace("-", MINUS)


def interval(low: Any, high: Any, show: Callable[[Any], str] = signed) -> str:
    """`` [low, high]`` after a figure, or nothing when either end is missing."""
    return f" [{show(low)}, {show(high)}]" if not (is_missing(low) or is_missing(high)) else ""


def top1_cell(row: Mapping[str, Any]) -> str:
    """``71.0 ± 1.4 (n=2)`` from a summary row; with no finished seed, why: ``– (n=0, 1 failed)``."""
    if not row["n"]:
        counts = (Status.DIVERGED.value, Status.FAILED.value)  # summary columns named after the statuses
        why = ", ".join(f"{int(row[k])} {k}" for k in counts if row.get(k))
        return f"– (n=0{', ' + why if why else ''})"
    std = row["top1_std"]
    spread = f" ± {std:.1f}" if math.isfinite(std) else ""
    return f"{row['top1_mean']:.1f}{spread} (n={int(row['n'])})"


def ratio(value: Any) -> str:
    """A cost as a multiple of the baseline's: ``×1.26``."""
    return "–" if is_missing(value) else f"×{value:.3g}"


def multiplier(r: Mapping[str, Any], with_ci: bool = True) -> str:
    """The widening an iso-cost row needs to match its arm, with its 95 % interval."""
    if math.isinf(r["multiplier"]):
        text = f"> ×{r['widest_ratio']:.3g} (beyond the widest arm)"
        if with_ci and not is_missing(r["mult_low"]) and math.isfinite(r["mult_low"]):  # not beyond it for sure
            text += f" [×{r['mult_low']:.3g}, beyond the widest]"
        return text
    text = "×1 (none needed)" if r["multiplier"] <= 1 + 1e-9 else f"×{r['multiplier']:.3g}"
    if with_ci and not is_missing(r["mult_low"]):
        high = "beyond the widest" if math.isinf(r["mult_high"]) else f"×{r['mult_high']:.3g}"
        text += f" [×{r['mult_low']:.3g}, {high}]"
    return text


def settings(section: Any) -> str:
    """A spec section in one line: ``epochs=2, lr=0.001``; nested sections in place."""
    if not section:
        return "none"
    if not isinstance(section, Mapping):
        return str(section)
    return ", ".join(f"{k}={settings(v) if isinstance(v, Mapping) else num(v)}" for k, v in section.items())


def changed_settings(spec: Mapping[str, Any]) -> str:
    """A stored spec's data and train sections in one line, only what differs from the defaults
    (the dataset's name always): ``data name=shapes, train_size=3000; train epochs=2, batch_size=32``."""
    parts = []
    for name, cls in (("data", DataConfig), ("train", TrainConfig)):
        section = spec.get(name)
        if not isinstance(section, Mapping):
            parts.append(f"{name} {'none' if section is None else section}")
            continue
        default = dataclasses.asdict(cls())
        shown = {k: v for k, v in section.items() if (k == "name" and name == "data") or default.get(k, object()) != v}
        if isinstance(shown.get("augment"), Mapping):  # only the recipe's changed keys
            aug = {k: v for k, v in shown["augment"].items() if default["augment"].get(k, object()) != v}
            shown = {k: v for k, v in shown.items() if k != "augment"} | ({"augment": aug} if aug else {})
        parts.append(f"{name} {settings(shown) if shown else 'as the defaults'}")
    return "; ".join(parts)


def space(value: Any) -> str:
    """A searched field's range: ``{self, re}`` or ``[1, 12] step 1 log``."""
    if isinstance(value, list):
        return "{" + ", ".join(map(str, value)) + "}"
    text = f"[{value.get('low')}, {value.get('high')}]"
    if value.get("step"):
        text += f" step {value['step']}"
    return text + (" log" if value.get("log") else "")


def md_table(headers: list[str], rows: list[list[str]], left: int = 0) -> str:
    """A pipe table; the first ``left`` columns left-aligned, the rest right-aligned."""
    def line(cells):
        return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"
    rule = ["---" if i < left else "---:" for i in range(len(headers))]
    return "\n".join([line(headers), line(rule), *(line(r) for r in rows)])
