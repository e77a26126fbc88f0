"""Errors bench reports to a user as one clear line (the CLI maps them to exit codes)."""
from __future__ import annotations

from typing import Any


class BenchError(Exception):
    """An expected failure: bad input, a missing resource, out of memory. Exit code 1."""

    exit_code = 1


class SpecError(BenchError, ValueError):
    """A field of a spec or variant has an impossible value. Exit code 2.

    ``where`` names the file (or command-line flag) the value came from, ``key`` its
    dotted path in that file.
    """

    exit_code = 2

    def __init__(self, key: str, value: Any, reason: str, where: str | None = None) -> None:
        self.key, self.value, self.reason, self.where = key, value, reason, where
        super().__init__(str(self))

    def __str__(self) -> str:
        prefix = f"{self.where}: " if self.where else ""
        return f"{prefix}{self.key}={self.value!r}: {self.reason}"

    def within(self, where: str | None = None, prefix: str = "") -> SpecError:
        """The same error, placed in a file and under a key prefix (``model.`` say)."""
        return SpecError(prefix + self.key, self.value, self.reason, where or self.where)
