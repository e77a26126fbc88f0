"""Files bench writes: whole or not at all."""
from __future__ import annotations

import json
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


def remembered(path: Path, key: str, measure: Callable[[], Any], valid: Callable[[Any], bool]) -> Any:
    """``key``'s value in the JSON object at ``path`` (a measurement kept across processes: a
    GEMM peak, a kernel choice), else ``measure()``, then kept there. A file that cannot be read
    or holds an invalid value is measured over; one that cannot be written is left as it was
    (measured again next time): never an error."""
    known = _json_object(path)
    if key in known and valid(known[key]):
        return known[key]
    value = measure()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, lambda f: json.dump({**_json_object(path), key: value}, f, indent=1))
    except OSError:
        pass
    return value


def _json_object(path: Path) -> dict[str, Any]:
    try:
        found = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return {}
    return found if isinstance(found, dict) else {}
