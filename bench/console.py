"""All terminal output: rich tables on stdout, messages and progress on stderr."""
from __future__ import annotations

import json
import math
import sys
from contextlib import contextmanager
from typing import Any, Iterable, Iterator

from rich import box
from rich.console import Console
from rich.table import Table

out = Console(width=None if sys.stdout.isatty() else 160)  # logs and pipes: no squeezed tables
err = Console(stderr=True)


def error(message: str) -> None:
    err.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)


def info(message: str) -> None:
    err.print(message, style="dim", highlight=False, soft_wrap=True)


def print_json(obj: Any) -> None:
    """One JSON document on stdout, nothing else (for pipes)."""
    print(json.dumps(obj, default=str))


@contextmanager
def status(message: str, quiet: bool = False) -> Iterator[Any]:
    """A spinner whose text the caller updates with ``update(msg)``."""
    if quiet or not err.is_terminal:
        yield lambda msg: None if quiet else info(msg)
        return
    with err.status(message) as live:
        yield lambda msg: live.update(msg)


def fmt(value: Any) -> str:
    """Numbers to four significant digits (micro models have 0.0007 GMACs)."""
    if isinstance(value, bool) or value is None:
        return "–" if value is None else str(value)
    if isinstance(value, float):
        if value == 0 or not math.isfinite(value):
            return str(value)
        digits = max(0, 3 - int(math.floor(math.log10(abs(value)))))
        text = f"{value:,.{min(digits, 6)}f}"
        return text.rstrip("0").rstrip(".") if "." in text else text
    return str(value)


def record_table(record: dict[str, Any], title: str | None = None) -> None:
    table = Table(title=title, show_header=True, header_style="bold")
    table.add_column("field")
    table.add_column("value", justify="right")
    for key, value in record.items():
        table.add_row(key, fmt(value))
    out.print(table)


def rows_table(rows: Iterable[dict[str, Any]], columns: list[str], title: str | None = None,
               headers: dict[str, str] | None = None) -> None:
    table = Table(title=title, header_style="bold", box=box.SIMPLE_HEAD, pad_edge=False)
    for col in columns:
        left = col in ("model", "name", "attention")
        table.add_column((headers or {}).get(col, col), justify="left" if left else "right", no_wrap=True)
    for row in rows:
        table.add_row(*(fmt(row.get(c)) for c in columns))
    out.print(table)
