"""The record's vocabulary: trial statuses, the columns of a record and of runs.csv, and the
collapse summary. Every module that writes or reads a record imports its names from here, so a
column is renamed in one place (names follow timm's benchmark.py where one exists)."""
from __future__ import annotations

import base64
import hashlib
from enum import Enum
from typing import Any

import numpy as np


class Status(str, Enum):
    """How a trial ended, as its record's ``status`` says. A ``str`` enum: records are JSON, and
    ``Status.COMPLETE == "complete"``."""

    COMPLETE = "complete"        # trained (or profiled) to the end
    DIVERGED = "diverged"        # the loss went non-finite: a result (stored as a pruned Optuna trial)
    PRUNED = "pruned"            # stopped early by the study's pruner
    FAILED = "failed"            # an exception: out of memory, a vanished dataset
    INTERRUPTED = "interrupted"  # Ctrl-C, SIGTERM, a dead worker: to redo

    def __str__(self) -> str:
        return self.value



# per-block arrays of the collapse analysis: stored beside the record (not in it) and not in runs.csv
DETAILS = ("collapse", "init_collapse")
# each test image's result, a bit per image in the test list's order (in the record, not in runs.csv),
# and which test list that is (``test_list``): comparisons pair arms on the same images
PER_EXAMPLE = "test_correct"
TEST_LIST = "test_list"


def pack_bits(correct: Any) -> str:
    """A bool vector (one entry per test image) as base64 text: 1,250 bytes for 10,000 images."""
    bits = np.asarray(correct, bool)
    return f"{len(bits)}:" + base64.b64encode(np.packbits(bits).tobytes()).decode("ascii")


def unpack_bits(text: Any) -> np.ndarray | None:
    """``pack_bits``' text back as a bool vector; None for anything else (a record without it)."""
    if not isinstance(text, str) or ":" not in text:
        return None
    n, _, data = text.partition(":")
    try:
        bits = np.unpackbits(np.frombuffer(base64.b64decode(data, validate=True), np.uint8))
        count = int(n)
    except (ValueError, TypeError):
        return None
    return bits[:count].astype(bool) if 0 <= count <= len(bits) else None


def list_key(labels: Any) -> str:
    """The test list's identity: its size and a hash of its labels in order (two trials scored on
    the same images in the same order share it)."""
    arr = np.ascontiguousarray(np.asarray(labels, dtype=np.int64))
    return f"{len(arr)}-{hashlib.sha1(arr.tobytes()).hexdigest()[:12]}"
# the collapse analysis' scalar summary, a runs.csv column each: the maps' (DeepViT's) and the tokens'
COLLAPSE_SUMMARY = ("similar_blocks", "adjacent_similarity_mean", "cross_head_similarity_mean",
                    "cka_adjacent_mean", "token_uniformity_last", "rank_residual_last")

# runs.csv's column groups, in its order (the variant's fields stand between identity and cost)
IDENTITY_COLS = ["trial", "key", "status", "seed", "error"]
COST_COLS = ["param_count", "infer_gmacs", "infer_macts", "train_gmacs", "infer_samples_per_sec",
             "infer_step_time", "infer_batch_size", "train_samples_per_sec", "train_step_time",
             "train_batch_size", "train_tflops", "train_mfu"]
COLLAPSE_COLS = list(COLLAPSE_SUMMARY)
ACCURACY_COLS = ["top1", "top1_per_epoch", "train_loss", "epochs", "train_time_s"]
ENV_COLS = ["device", "device_name", "dtype", "peak_tflops", "datasheet_tflops", "torch_version", "timm_version",
            "bench_version"]
