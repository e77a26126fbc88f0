"""Errors bench reports to a user as one clear line (the CLI maps them to exit codes),
and the checks that raise them."""
from __future__ import annotations

import dataclasses
import difflib
import math
import reprlib
import sys
import types
import typing
from typing import Any, Iterable, Mapping

QUOTE = 200  # characters of a value an error quotes at most (an alias bomb must not print 28 MB)
_repr = reprlib.Repr()
_repr.maxstring, _repr.maxother, _repr.maxlist, _repr.maxdict, _repr.maxlevel = QUOTE, QUOTE, 8, 8, 3


def quote(value: Any) -> str:
    """``repr(value)``, cut to about QUOTE characters without building the whole of it."""
    text = _repr.repr(value)
    return text if len(text) <= QUOTE else text[:QUOTE] + "…"


class BenchError(Exception):
    """An expected failure: bad input, a missing resource, out of memory. Exit code 1."""

    exit_code = 1


class Terminated(KeyboardInterrupt):
    """SIGTERM (what Slurm and Kubernetes send on preemption), handled as Ctrl-C: the running
    trial is recorded as interrupted and a rerun redoes it."""


class SpecError(BenchError, ValueError):
    """A field of a spec or variant has an impossible value. Exit code 2.

    ``where`` names the file (or command-line flag) the value came from, ``key`` its
    dotted path in that file.
    """

    exit_code = 2

    def __init__(self, key: str | None, value: Any, reason: str, where: str | None = None) -> None:
        self.key, self.value, self.reason, self.where = key, value, reason, where
        super().__init__(str(self))

    def __str__(self) -> str:
        prefix = f"{self.where}: " if self.where else ""
        if self.key is None:  # the file as a whole (unreadable, not YAML)
            return f"{prefix}{self.reason}"
        key = self.key if self.key.isprintable() and len(self.key) <= QUOTE else quote(self.key)  # one line
        return f"{prefix}{key}={quote(self.value)}: {self.reason}"

    def within(self, where: str | None = None, prefix: str = "") -> SpecError:
        """The same error, placed in a file and under a key prefix (``model.`` say)."""
        key = None if self.key is None else prefix + self.key
        return SpecError(key, self.value, self.reason, where or self.where)


def first_line(err: BaseException | str) -> str:
    """The first non-empty line of an error (or its text): what one-line messages show."""
    text = str(err).strip()
    return text.splitlines()[0].strip() if text else ""


def missing_data(what: str, where: Any, how: str) -> BenchError:
    """A dataset (or part of one) that is not where the spec says: where bench looked, and how to fix it."""
    return BenchError(f"{what} not found: looked in {where}. {how}")


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    close = difflib.get_close_matches(str(word), [str(c) for c in choices], n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def check_keys(values: Mapping[str, Any], known: Iterable[str], what: str) -> None:
    """Unknown keys raise a SpecError with a "did you mean" suggestion."""
    known = list(known)
    for key in values:
        if key not in known:
            raise SpecError(str(key), values[key], f"unknown {what}" + did_you_mean(key, known))


def check_type(name: str, value: Any, expected: Any) -> None:
    """``expected``: a type or a tuple of types (None allowed). An int passes for a float;
    a bool passes only for a bool (Python counts it as an int)."""
    allowed = expected if isinstance(expected, tuple) else (expected,)
    if value is None and None in allowed:
        return
    for t in allowed:
        if t is None or isinstance(value, bool) != (t is bool):
            continue
        if isinstance(value, t) or (t is float and isinstance(value, int)):
            # .nan and .inf only waste a run; an int past any float (2**1100) would be an OverflowError
            if t is float and not (abs(value) <= sys.float_info.max if isinstance(value, int)
                                   else math.isfinite(value)):
                raise SpecError(name, value, "must be a finite number")
            return
    names = " or ".join("null" if t is None else t.__name__ for t in allowed)
    raise SpecError(name, value, f"expected {names}, got {type(value).__name__}")


SEED_RANGE = (0, 2**32 - 1)  # what numpy and torch generators accept


def check_seed(name: str, value: Any) -> None:
    check_type(name, value, int)
    if not SEED_RANGE[0] <= value <= SEED_RANGE[1]:
        raise SpecError(name, value, f"a seed must be in {SEED_RANGE[0]}…{SEED_RANGE[1]}")


def check_fields(obj: Any) -> None:
    """Type-check every field of a dataclass instance against its annotation."""
    hints = typing.get_type_hints(type(obj))
    for f in dataclasses.fields(obj):
        hint = hints[f.name]
        if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
            expected = tuple(None if a is type(None) else a for a in typing.get_args(hint))
        else:
            expected = hint
        check_type(f.name, getattr(obj, f.name), expected)
