"""Files any worker can reach: a trial's checkpoints and saved weights in an Optuna artifact store
(``optuna.artifacts``: a folder on a shared file system, S3 or GCS), found through the study's
own storage. Without one (the default) they stay in the results folder of the machine that ran
the trial, as before.

A file goes up as an artifact of the trial that wrote it, and the trial's user attribute
(``checkpoint_file``, ``weights_file``) names it with its sha256, its size and, for a
checkpoint, the epochs it holds. A worker about to run a point — on any machine — asks the
study for the newest checkpoint any trial of that point uploaded, downloads it beside its own
results and checks its sha256 before training reads it (which then checks the checkpoint's
identity, as for a local one). A download that does not match is set aside (its artifact
named in the study's ``damaged_artifacts``, never used again) and the trial starts from
scratch. Only the newest checkpoint of a trial is kept in the store, and none once the trial
is recorded unless ``--keep-checkpoints``.
"""
from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import optuna
from optuna.artifacts import FileSystemArtifactStore, upload_artifact

from bench import console
from bench.errors import BenchError
from bench.study.ledger import Ledger

ARTIFACTS_ENV = "BENCH_ARTIFACTS"  # the default artifact store (a path or URL), like --artifacts
CHECKPOINT, WEIGHTS = "checkpoint_file", "weights_file"  # the trial attributes naming its files in the store


def open_store(where: str) -> Any:
    """The artifact store at ``where``: a folder (a path or ``file://``; made if missing), or
    ``s3://BUCKET`` / ``gs://BUCKET`` through Optuna's own stores (boto3 or google-cloud-storage
    installed). One clear error for anything else."""
    parsed = urlparse(where)
    if parsed.scheme in ("s3", "gs"):
        if parsed.path not in ("", "/") or not parsed.netloc:
            raise BenchError(f"--artifacts {where}: expected {parsed.scheme}://BUCKET (Optuna's store keeps artifacts "
                             "at the bucket's top)")
        try:
            if parsed.scheme == "s3":
                from optuna.artifacts import Boto3ArtifactStore
                return Boto3ArtifactStore(parsed.netloc)
            from optuna.artifacts import GCSArtifactStore
            return GCSArtifactStore(parsed.netloc)
        except ImportError as err:
            what = "boto3" if parsed.scheme == "s3" else "google-cloud-storage"
            raise BenchError(f"--artifacts {where}: {err}; pip install {what}") from None
    if parsed.scheme not in ("", "file"):
        raise BenchError(f"--artifacts {where}: expected a folder, file://PATH, s3://BUCKET or gs://BUCKET")
    folder = Path(parsed.path if parsed.scheme == "file" else where).expanduser()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".write-test.{os.getpid()}"
        probe.write_bytes(b"bench")
        probe.unlink()
    except OSError as err:
        raise BenchError(f"--artifacts {where}: cannot write there: {err.strerror or err}") from None
    return FileSystemArtifactStore(folder)


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


class TrialFiles:
    """A study's artifact store, and the ledger that says which trial uploaded what."""

    def __init__(self, store: Any, ledger: Ledger) -> None:
        self.store, self.ledger = store, ledger

    def upload(self, handle: optuna.Trial, path: Path, attr: str, **extra: Any) -> None:
        """``path`` as an artifact of trial ``handle``, named by its attribute ``attr`` with its
        checksum; the artifact it replaces (this trial's older checkpoint) is removed."""
        before = handle.user_attrs.get(attr) if hasattr(handle, "user_attrs") else None
        artifact_id = upload_artifact(artifact_store=self.store, file_path=str(path), study_or_trial=handle)
        handle.set_user_attr(attr, {"artifact_id": artifact_id, "sha256": sha256(path), "size": path.stat().st_size,
                                    "written": time.time(), **extra})
        if isinstance(before, dict) and before.get("artifact_id"):
            self.remove(before["artifact_id"])

    def remove(self, artifact_id: str) -> None:
        try:
            self.store.remove(artifact_id)
        except Exception:  # gone already, or a store that cannot remove: a stale file, never an error
            pass

    def newest(self, key: str, attr: str = CHECKPOINT) -> dict[str, Any] | None:
        """The newest file (most epochs, then latest written) any trial of point ``key`` uploaded
        under ``attr``, not set aside as damaged."""
        damaged = set(self.ledger.study.user_attrs.get("damaged_artifacts") or [])
        found = [t.user_attrs[attr] for t in self.ledger.queries.trials()
                 if t.user_attrs.get("key") == key and isinstance(t.user_attrs.get(attr), dict)
                 and t.user_attrs[attr].get("artifact_id") not in damaged]
        return max(found, key=lambda m: (m.get("epochs", 0), m.get("written", 0)), default=None)

    def fetch(self, meta: dict[str, Any], dest: Path) -> bool:
        """Download the artifact ``meta`` names to ``dest`` (replacing it whole), checked against
        its sha256; False — and the artifact set aside for good — when it does not match or is gone."""
        tmp = dest.with_name(f".{dest.name}.{os.getpid()}.download")
        dest.parent.mkdir(parents=True, exist_ok=True)
        try:
            with self.store.open_reader(meta["artifact_id"]) as reader, open(tmp, "wb") as out:
                for block in iter(lambda: reader.read(1 << 20), b""):
                    out.write(block)
            ok = sha256(tmp) == meta.get("sha256")
        except Exception as err:  # gone, unreadable
            ok, why = False, f"{type(err).__name__}: {err}"
        else:
            why = "its sha256 does not match"
        if not ok:
            tmp.unlink(missing_ok=True)
            damaged = list(self.ledger.study.user_attrs.get("damaged_artifacts") or [])
            self.ledger.study.set_user_attr("damaged_artifacts", [*damaged, meta["artifact_id"]])
            console.info(f"artifact {meta['artifact_id']} ({dest.name}) cannot be used ({why}); set aside, "
                         "the trial starts from scratch")
            return False
        os.replace(tmp, dest)
        return True
