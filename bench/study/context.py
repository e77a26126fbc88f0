"""The run context: one run's options (its study, where results go, the storage, the device, how
loud, what to keep), built once by the CLI or the Python API (bench.api) and handed down to the
runner, its workers and each trial, with the paths derived from them. Torch-free: the device is
the torch.device its builder resolved.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.errors import SpecError
from bench.study.storage import default_url

POLL_S = 5.0  # how often an idle worker looks for dead workers' trials to take over


@dataclass(frozen=True)
class RunContext:
    """What every layer of a run needs besides the sweep itself; frozen, so what the CLI chose is
    what each trial sees. ``RunContext(**keywords)`` takes the keywords ``run_sweep`` takes."""

    study: str = ""                  # the study's name: its files go to results_dir/study
    results_dir: Path = Path("results")
    storage: str | None = None       # a storage URL; None: the study's own file (url())
    device: Any = None               # a torch.device (bench.device.resolve_device); None: not resolved yet
    quiet: bool = False              # no progress bars: one line per trial (for logs)
    save_weights: bool = False       # keep each trained model (weights_path)
    keep_checkpoints: bool = False   # keep a finished trial's last checkpoint (checkpoint_path)
    retry_failed: bool = False       # rerun trials that failed before
    workers: int = 1                 # local worker processes (bench.study.workers); 1: work here
    report: bool = True              # write the report when done
    poll: float = POLL_S
    tag: str = ""                    # prefixes this worker's lines (w0, w1, … for local workers)
    artifacts: str | None = None     # an artifact store for checkpoints and weights any worker reaches (a folder or URL)
    queue_only: bool = False         # make the study and queue its trials, run none (workers elsewhere will)
    until_decided: int | None = None  # grow undecided arms seed by seed up to this many seeds (bench.study.grow)
    budget_min: float | None = None   # with until_decided: stop adding seeds after this many minutes

    def __post_init__(self) -> None:
        object.__setattr__(self, "results_dir", Path(self.results_dir))  # a str from Python callers
        if self.workers < 1:
            raise SpecError("workers", self.workers, "must be at least 1", where="--workers")
        if self.until_decided is not None and not 3 <= self.until_decided <= 1000:
            raise SpecError("max_seeds", self.until_decided, "must be in 3…1000: a sequential decision looks "
                            "from 3 seeds on", where="--max-seeds")
        if self.budget_min is not None and not (0 < self.budget_min < 1e7):
            raise SpecError("budget", self.budget_min, "must be a positive number of minutes", where="--budget")

    def replace(self, **changes: Any) -> RunContext:
        return dataclasses.replace(self, **changes)

    @property
    def folder(self) -> Path:
        """The study's results folder: report, runs.csv, plots, weights/, checkpoints/."""
        return self.results_dir / self.study

    def url(self) -> str:
        """The storage URL: the one given, else the study's own file (a journal for several workers)."""
        return self.storage or default_url(self.results_dir, self.study, self.workers)

    def weights_path(self, key: str) -> Path:
        """Where ``--save-weights`` keeps trial ``key``."""
        return self.folder / "weights" / f"{key}.safetensors"

    def checkpoint_path(self, key: str) -> Path:
        """Where trial ``key`` checkpoints its training (bench.training)."""
        return self.folder / "checkpoints" / f"{key}.pt"
