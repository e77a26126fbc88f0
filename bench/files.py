"""Files bench writes: whole or not at all."""
from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Any, Callable

from bench.errors import BenchError


def atomic_write(path: Path, write: Callable[[Any], Any], binary: bool = False) -> None:
    """Write through a temp file in the same folder, then rename: never a half-written file."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")  # not mkstemp: keep umask perms
    try:
        with open(tmp, "xb" if binary else "x", **({} if binary else {"encoding": "utf-8", "newline": ""})) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def check_writable(folder: Path) -> Path:
    """Make ``folder`` (a results folder: bench's own) and prove a file can be written in it,
    before any work whose results would land there; one clear error if not."""
    folder = Path(folder)
    probe = folder / f".write-test.{uuid.uuid4().hex[:8]}"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"bench")
        probe.unlink()
    except OSError as err:
        raise BenchError(f"cannot write results to {folder}: {err.strerror or err}") from None
    return folder
