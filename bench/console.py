"""All terminal output: rich tables on stdout, messages and progress on stderr."""
from __future__ import annotations

import json
import math
import sys
from contextlib import contextmanager
from typing import Any, Iterable, Iterator

from rich import box
from rich.console import Console
from rich.markup import escape  # user text may hold [brackets] that rich would read as markup
from rich.table import Table

out = Console(width=None if sys.stdout.isatty() else 160)  # logs and pipes: no squeezed tables
err = Console(stderr=True)


def error(message: str) -> None:
    err.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)


def info(message: str) -> None:
    err.print(escape(message), style="dim", highlight=False, soft_wrap=True)


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
        if value == 0:
            return "0"
        if not math.isfinite(value):
            return str(value)
        if not 1e-6 <= abs(value) < 1e15:  # past these, four significant digits need an exponent
            return f"{value:.4g}"
        digits = max(0, 3 - int(math.floor(math.log10(abs(value)))))
        text = f"{value:,.{min(digits, 6)}f}"
        text = text.rstrip("0").rstrip(".") if "." in text else text
        return "0" if text == "-0" else text  # a tiny negative, rounded away
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
        left = col in ("model", "name", "attention", "variant", "trial", "status")
        table.add_column((headers or {}).get(col, col), justify="left" if left else "right", no_wrap=True)
    for row in rows:
        table.add_row(*(fmt(row.get(c)) for c in columns))
    out.print(table)


class SweepProgress:
    """Progress of a sweep: one bar for the sweep and one for the running trial, with ETA.

    ``quiet`` (or stderr not a terminal, as in CI logs): no bars, one line per finished
    trial instead (quiet: only those lines).
    """

    def __init__(self, total: int, quiet: bool = False, tag: str = "") -> None:
        self.total, self.quiet, self.done = total, quiet, 0
        self.tag = f"{tag} " if tag else ""  # which worker speaks, when several share a terminal
        self.live = not quiet and err.is_terminal
        self.progress = None

    def __enter__(self) -> SweepProgress:
        if self.live:
            from rich.progress import (BarColumn, MofNCompleteColumn, Progress,  # on use: bars only
                                       TextColumn, TimeElapsedColumn, TimeRemainingColumn)
            self.progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                     TextColumn("{task.fields[note]}"), TimeElapsedColumn(),
                                     TextColumn("ETA"), TimeRemainingColumn(), console=err)
            self.progress.__enter__()
            self.sweep = self.progress.add_task("sweep", total=self.total, note="")
            self.trial = self.progress.add_task("trial", total=1, note="", visible=False)
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.progress is not None:
            self.progress.__exit__(*exc)

    def start(self, label: str) -> None:
        if self.progress is not None:
            self.progress.reset(self.trial, total=1, description=label, note="", visible=True)
        elif not self.quiet:
            info(f"{self.tag}[{self.done + 1}/{self.total}] {label}")

    def phase(self, message: str) -> None:
        if self.progress is not None:
            self.progress.update(self.trial, note=message)

    def step(self, step: int, total: int, loss: float | None) -> None:
        if self.progress is not None:
            self.progress.update(self.trial, completed=step, total=total,
                                 note="" if loss is None else f"loss {loss:.3f}")

    def finish(self, label: str, line: str) -> None:
        self.done += 1
        if self.progress is not None:
            self.progress.update(self.sweep, completed=self.done)
            self.progress.console.print(f"  {label}: {line}", highlight=False)
        else:
            err.print(f"{self.tag}[{self.done}/{self.total}] {label}: {line}", highlight=False, soft_wrap=True)

    def waiting(self, message: str) -> None:
        """Idle: the queue is empty while other workers still run trials."""
        if self.progress is not None:
            self.progress.update(self.trial, description="idle", note=message, visible=True)
        elif not self.quiet and message != getattr(self, "_said", None):
            info(f"{self.tag}{message}")
        self._said = message


@contextmanager
def progress(description: str, total: int, quiet: bool = False) -> Iterator[Any]:
    """A bar for ``total`` units of work; the caller advances it with ``advance(n)``.
    Not a terminal (CI logs), or another live display already up (a sweep's bars): a line at
    each tenth instead; ``quiet``: nothing."""
    if quiet:
        yield lambda n=1: None
        return
    if err.is_terminal:
        from rich.errors import LiveError  # on use: bars only
        from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                                   TimeRemainingColumn)
        bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                       TextColumn("ETA"), TimeRemainingColumn(), console=err, transient=True)
        try:
            bar.start()
        except LiveError:
            bar = None
        if bar is not None:
            task = bar.add_task(description, total=total)
            try:
                yield lambda n=1: bar.advance(task, n)
            finally:
                bar.stop()
            return
    done, said = 0, 0

    def advance(n: int = 1) -> None:
        nonlocal done, said
        done += n
        tenth = done * 10 // max(1, total)
        if tenth > said:
            said = tenth
            info(f"{description}: {done}/{total}")
    yield advance
