"""The sections of a spec, each a torch-free dataclass that checks itself and owns its
defaults and rules: ``data``, ``train``, ``profile``, ``collapse``, ``study`` and the
``search`` space. Every other module asks these rather than restating a default.
"""
from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.errors import SpecError, check_fields, check_keys, check_seed, check_type
from bench.variant import FIELD_TYPES, MAX_SIZE, is_re_option

def check_sizes(obj: Any) -> None:
    """Every integer field of the config ``obj`` at most MAX_SIZE (2³¹−1): a count past it builds
    nothing and only overflows later (an 800 GB allocation, a float MAC count)."""
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if f.name != "seed" and isinstance(value, int) and not isinstance(value, bool) and value > MAX_SIZE:
            raise SpecError(f.name, value, f"must be at most {MAX_SIZE:,}")


# --- numerics and timing ----------------------------------------------------------------

DTYPES = ("fp32", "bf16")          # what a step runs in (bf16: autocast)
DTYPE_SETTINGS = ("auto", *DTYPES)  # auto: bf16 on CUDA, fp32 elsewhere
TIMING_STEPS = {"cpu": (2, 5), "cuda": (10, 50)}  # (warm-up, timed) steps when a spec leaves them unset


def _device_type(device: Any) -> str:
    return getattr(device, "type", None) or str(device).split(":")[0]


def resolve_dtype(setting: str, device: Any) -> str:
    """``auto``: bf16 autocast on CUDA, fp32 elsewhere; anything else as given.
    ``device``: a ``torch.device`` or its type name."""
    if setting != "auto":
        return setting
    return "bf16" if _device_type(device) == "cuda" else "fp32"


def timing_steps(warmup: int | None, iters: int | None, device: Any) -> tuple[int, int]:
    """(warm-up, timed) steps: the given ones, else the device's defaults (0 warm-up stays 0)."""
    default = TIMING_STEPS["cuda" if _device_type(device) == "cuda" else "cpu"]
    return (default[0] if warmup is None else warmup, default[1] if iters is None else iters)


COMPILE_SETTINGS = (False, True, "auto")  # auto: torch.compile on CUDA, eager elsewhere


def resolve_compile(setting: bool | str, device: Any) -> bool:
    """Whether to compile: ``auto`` on CUDA only (on a CPU, inductor's compile takes longer than
    a proxy's training gains), else as given."""
    return _device_type(device) == "cuda" if setting == "auto" else bool(setting)


def _check_compile(value: Any) -> None:
    if not any(value is c if isinstance(c, bool) else value == c for c in COMPILE_SETTINGS):
        raise SpecError("compile", value, "expected false, true or auto")


def _check_dtype(value: str) -> None:
    if value not in DTYPE_SETTINGS:
        raise SpecError("dtype", value, f"expected {', '.join(DTYPE_SETTINGS)}")


# --- data --------------------------------------------------------------------------------

DATASETS = ("shapes", "cifar10", "cifar100", "imagefolder")
DATA_ROOT_ENV = "BENCH_DATA_ROOT"  # this machine's path to a study's data (--data-root): see DataConfig.root_path
NUM_CLASSES = {"shapes": 10, "cifar10": 10, "cifar100": 100}
CIFAR_SIZES = (50000, 10000)  # train and test images of either CIFAR
SHAPES_SIZES = (10000, 2000)  # train and test images of `shapes` when the spec does not say
# how the data is held and cached: changes no result, so a study may change it between runs
DATA_RUNTIME = ("residency", "memory_budget_gb", "prefetch", "host_workers", "cache_dir", "cache_workers")
_COMMON = ("name", "train_size", "test_size", "crop_padding", "flip", "augment", "residency", "memory_budget_gb",
           "prefetch", "host_workers")
_REAL = ("root", "classes", "cache_dir", "cache_workers")
DATA_KEYS = {"shapes": (*_COMMON, "difficulty", "seed"), "cifar10": (*_COMMON, *_REAL, "download"),
             "cifar100": (*_COMMON, *_REAL, "download"), "imagefolder": (*_COMMON, *_REAL, "train_dir", "test_dir")}
RESIDENCIES = ("auto", "device", "stream")


@dataclass(frozen=True)
class AugmentConfig:
    """``data.augment``: timm's recipes on top of the crop + flip (``data.crop_padding``,
    ``data.flip``). A preset name (``none``, ``deit``) or a mapping of these keys, which
    may start from a preset (``{preset: deit, mixup: 0}``)."""
    resized_crop: float | None = None  # random-resized crop's smallest area (DeiT: 0.08; device), instead of pad + crop
    rand_augment: str | None = None  # timm's RandAugment string, e.g. rand-m9-mstd0.5-inc1 (host, per image)
    random_erasing: float = 0.0      # probability (timm RandomErasing, per-pixel noise; on the device)
    mixup: float = 0.0               # Mixup alpha (timm Mixup, soft-target loss; on the device)
    cutmix: float = 0.0              # CutMix alpha
    mix_prob: float = 1.0            # probability a batch is mixed at all
    switch_prob: float = 0.5         # with both on: probability of CutMix rather than Mixup
    repeats: int = 1                 # repeated augmentation: 1/r of the images per epoch, each r times in a row (DeiT: 3)

    def __post_init__(self) -> None:
        check_fields(self)
        check_sizes(self)
        if self.resized_crop is not None and not 0 < self.resized_crop <= 1:
            raise SpecError("resized_crop", self.resized_crop, "must be in (0, 1]: the smallest share of the image "
                            "a crop keeps (or null: pad + crop)")
        if self.rand_augment is not None and not self.rand_augment.startswith("rand"):
            raise SpecError("rand_augment", self.rand_augment, "expected a timm RandAugment string such as "
                            "rand-m9-mstd0.5-inc1 (or null)")
        for key in ("random_erasing", "mix_prob", "switch_prob"):
            if not 0 <= getattr(self, key) <= 1:
                raise SpecError(key, getattr(self, key), "must be in [0, 1]")
        for key in ("mixup", "cutmix"):
            if getattr(self, key) < 0:
                raise SpecError(key, getattr(self, key), "must be at least 0 (0 = off)")
        if self.repeats < 1:
            raise SpecError("repeats", self.repeats, "must be at least 1 (1 = off)")

    @property
    def mixes(self) -> bool:
        return (self.mixup > 0 or self.cutmix > 0) and self.mix_prob > 0

    @classmethod
    def parse(cls, value: Any) -> AugmentConfig:
        if isinstance(value, cls):
            return value
        if value is None or isinstance(value, str):
            value = {"preset": value or "none"}
        if not isinstance(value, dict):
            raise SpecError("augment", value, f"expected a preset ({', '.join(AUGMENT_PRESETS)}) or a mapping")
        values = dict(value)
        preset = values.pop("preset", "none")
        if not isinstance(preset, str) or preset not in AUGMENT_PRESETS:  # a list is no dict key: TypeError
            raise SpecError("augment", preset, f"unknown preset; expected one of {', '.join(AUGMENT_PRESETS)}")
        try:
            check_keys(values, [f.name for f in dataclasses.fields(cls)], "augment key")
            return cls(**{**AUGMENT_PRESETS[preset], **values})
        except SpecError as err:
            raise err.within(prefix="augment.") from None


# DeiT's recipe (Touvron et al. 2021, and the paper's training): random-resized crop (8-100 %
# of the image, aspect 3/4-4/3) and flip, RandAugment m9 with magnitude noise, random erasing
# 0.25, Mixup 0.8 / CutMix 1.0 switching half the time, repeated augmentation ×3; label
# smoothing 0.1 comes from train.label_smoothing.
AUGMENT_PRESETS: dict[str, dict[str, Any]] = {
    "none": {},
    "deit": {"resized_crop": 0.08, "rand_augment": "rand-m9-mstd0.5-inc1", "random_erasing": 0.25, "mixup": 0.8, "cutmix": 1.0,
             "repeats": 3},
}


@dataclass(frozen=True)
class DataConfig:
    name: str = "shapes"
    train_size: int | None = None   # shapes: 10000 when unset; real data: the first N (None = all)
    test_size: int | None = None    # shapes: 2000 when unset
    difficulty: float = 0.5         # shapes only, in [0, 1]
    seed: int = 0                   # shapes only: which images
    root: str = "~/data"            # cifar*, imagefolder
    download: bool = False          # cifar*: fetch with torchvision when missing
    train_dir: str = "train"        # imagefolder
    test_dir: str = "val"           # imagefolder
    crop_padding: int = 2           # augmentation: random crop after zero padding (0 = off)
    flip: bool = True               # augmentation: horizontal flip (every shapes class is mirror-symmetric)
    augment: AugmentConfig = field(default_factory=AugmentConfig)  # timm's recipes (a preset or a mapping)
    classes: int | list | None = None  # cifar*, imagefolder: the first N classes (sorted), or these names
    residency: str = "auto"         # device: all in device memory; stream: batches from the cache; auto: by size
    memory_budget_gb: float | None = None  # auto's budget (default: ¼ of the GPU, or ½ the free host memory)
    prefetch: int = 4               # stream: batches read ahead by a background thread
    host_workers: int | None = None  # stream: processes running RandAugment ahead (None: all cores but one on a GPU, 0 on a CPU)
    cache_dir: str | None = None    # cifar*, imagefolder: where decoded caches live ($BENCH_CACHE_DIR, ~/.cache/bench)
    cache_workers: int | None = None  # processes decoding a cache (None: every core)

    def __post_init__(self) -> None:
        object.__setattr__(self, "augment", AugmentConfig.parse(self.augment))
        check_fields(self)
        check_sizes(self)
        if self.residency not in RESIDENCIES:
            raise SpecError("residency", self.residency, f"expected one of: {', '.join(RESIDENCIES)}")
        if self.memory_budget_gb is not None and self.memory_budget_gb <= 0:
            raise SpecError("memory_budget_gb", self.memory_budget_gb, "must be positive (or null for the default)")
        for key in ("prefetch", "cache_workers"):
            if getattr(self, key) is not None and getattr(self, key) < 1:
                raise SpecError(key, getattr(self, key), "must be at least 1")
        if self.host_workers is not None and self.host_workers < 0:
            raise SpecError("host_workers", self.host_workers, "must be at least 0 (0: in the training thread)")
        if isinstance(self.classes, int) and self.classes < 1:
            raise SpecError("classes", self.classes, "must be at least 1")
        if isinstance(self.classes, list):
            if not self.classes or not all(isinstance(c, str) for c in self.classes):
                raise SpecError("classes", self.classes, "expected a number or a non-empty list of class names")
            if len(set(self.classes)) != len(self.classes):
                raise SpecError("classes", self.classes, "names a class twice")
        if self.name not in DATASETS:
            raise SpecError("name", self.name, f"expected one of: {', '.join(DATASETS)}")
        for key in ("train_size", "test_size"):
            if getattr(self, key) is not None and not 1 <= getattr(self, key) <= MAX_SIZE:
                raise SpecError(key, getattr(self, key), f"must be in 1…{MAX_SIZE:,}")
        if not 0 <= self.difficulty <= 1:
            raise SpecError("difficulty", self.difficulty, "must be in [0, 1]")
        check_seed("seed", self.seed)
        if self.crop_padding < 0:
            raise SpecError("crop_padding", self.crop_padding, "must be at least 0")

    def num_classes(self, found: int) -> int:
        """Classes trained on, of the ``found`` the data has."""
        if self.classes is None:
            return found
        return min(found, self.classes) if isinstance(self.classes, int) else len(self.classes)

    def settings(self) -> dict[str, Any]:
        """What a record's figures depend on: the keys of this dataset, less how it is held."""
        return {k: v for k, v in dataclasses.asdict(self).items()
                if k in DATA_KEYS[self.name] and k not in DATA_RUNTIME}

    @property
    def root_path(self) -> Path:
        """Where this machine reads the data: ``$BENCH_DATA_ROOT`` (``--data-root``) when set — a
        machine-local path to the same data, which changes no trial's identity (the stored
        ``root`` stays what the study was made with; the data's fingerprint is checked instead) —
        else ``root``."""
        return Path(os.environ.get(DATA_ROOT_ENV) or self.root).expanduser()

    def shapes_sizes(self) -> tuple[int, int]:
        """Train and test images of the built-in dataset."""
        return self.train_size or SHAPES_SIZES[0], self.test_size or SHAPES_SIZES[1]


# --- training ------------------------------------------------------------------------------

MAX_LR = 10.0  # AdamW steps by about lr per weight: past this every model here diverges in a step


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 10
    batch_size: int = 128
    lr: float = 1e-3            # peak, reached after warm-up
    min_lr: float = 1e-5        # cosine floor
    warmup_epochs: float = 1.0
    weight_decay: float = 0.05  # not applied to norms, biases, position embedding, class token
    beta1: float = 0.9
    beta2: float = 0.999
    label_smoothing: float = 0.1
    grad_clip: float | None = 1.0  # max global grad norm; null = off
    dtype: str = "auto"         # auto: bf16 autocast on CUDA, fp32 on CPU
    eval_batch_size: int = 500
    check_every: int = 20       # steps between divergence checks / progress updates (a GPU sync each)
    compile: bool | str = "auto"  # torch.compile (inductor) the model: auto = on CUDA only

    def __post_init__(self) -> None:
        check_fields(self)
        check_sizes(self)
        _check_dtype(self.dtype)
        _check_compile(self.compile)
        for name in ("epochs", "batch_size", "eval_batch_size", "check_every"):
            if getattr(self, name) < 1:
                raise SpecError(name, getattr(self, name), "must be at least 1")
        checks = [("lr", 0 < self.lr <= MAX_LR, f"must be in (0, {MAX_LR:g}]: past that a step overflows"),
                  ("min_lr", 0 <= self.min_lr <= self.lr, f"must be in [0, lr={self.lr}]"),
                  ("warmup_epochs", 0 <= self.warmup_epochs <= self.epochs, f"must be in [0, epochs={self.epochs}]"),
                  ("weight_decay", self.weight_decay >= 0, "must be at least 0"),
                  ("label_smoothing", 0 <= self.label_smoothing < 1, "must be in [0, 1)"),
                  ("beta1", 0 <= self.beta1 < 1, "must be in [0, 1)"),
                  ("beta2", 0 <= self.beta2 < 1, "must be in [0, 1)")]
        for key, ok, reason in checks:
            if not ok:
                raise SpecError(key, getattr(self, key), reason)
        if self.grad_clip is not None and self.grad_clip <= 0:
            raise SpecError("grad_clip", self.grad_clip, "must be positive (or null for no clipping)")

    def resolved_dtype(self, device: Any) -> str:
        return resolve_dtype(self.dtype, device)


# --- profiling -----------------------------------------------------------------------------

@dataclass(frozen=True)
class ProfileConfig:
    batch_size: int = 64
    dtype: str = "auto"        # auto: bf16 on CUDA, fp32 on CPU
    warmup: int | None = None  # None: TIMING_STEPS (2 on CPU, 10 on CUDA)
    iters: int | None = None   # None: TIMING_STEPS (5 on CPU, 50 on CUDA)
    speed: bool = True         # false: count params and MACs only
    rounds: int = 5            # side-by-side pass after the sweep: interleaved rounds (0: off; see bench.side_by_side)
    compile: bool | str = "auto"  # time the torch.compile'd model (compile time apart): auto = on CUDA only

    def __post_init__(self) -> None:
        check_fields(self)
        check_sizes(self)
        _check_compile(self.compile)
        if self.rounds < 0:
            raise SpecError("rounds", self.rounds, "must be at least 0 (0 turns the side-by-side pass off)")
        if self.batch_size < 1:
            raise SpecError("batch_size", self.batch_size, "must be at least 1")
        _check_dtype(self.dtype)
        if self.iters is not None and self.iters < 1:
            raise SpecError("iters", self.iters, "must be at least 1")
        if self.warmup is not None and self.warmup < 0:
            raise SpecError("warmup", self.warmup, "must be at least 0")

    def settings(self) -> dict[str, Any]:
        """What a trial's figures depend on: all but ``rounds`` (the pass after the trials),
        which a study may change between runs."""
        return {k: v for k, v in dataclasses.asdict(self).items() if k != "rounds"}

    def steps(self, device: Any) -> tuple[int, int]:
        """(warm-up, timed) steps on ``device``."""
        return timing_steps(self.warmup, self.iters, device)


NOISY = 1.2  # a side-by-side figure whose p90/p10 over rounds exceeds this is marked noisy in reports


# --- attention collapse --------------------------------------------------------------------

@dataclass(frozen=True)
class CollapseConfig:
    """Attention-collapse analysis of every trained trial (bench.collapse), on a fixed batch:
    the first ``images`` test images."""

    images: int = 64
    which: str = "v"             # v: the map that multiplies V (re-generated for re-attention); raw: softmax
    threshold: float = 0.8       # cross-layer: the paper's
    head_threshold: float = 0.5  # cross-head: the paper's
    at_init: bool = False        # also before training, to see what training did

    def __post_init__(self) -> None:
        check_fields(self)
        check_sizes(self)
        if self.images < 1:
            raise SpecError("images", self.images, "must be at least 1")
        if self.which not in ("v", "raw"):
            raise SpecError("which", self.which, "expected v or raw")
        for key in ("threshold", "head_threshold"):
            if not -1 <= getattr(self, key) <= 1:
                raise SpecError(key, getattr(self, key), "a cosine threshold must be in [-1, 1]")


# --- studies -------------------------------------------------------------------------------

# objective name -> (record column, direction, what it is)
OBJECTIVES = {
    "top1": ("top1", "maximize", "top-1 % after the proxy schedule"),
    "gmacs": ("infer_gmacs", "minimize", "GMACs per image"),
    "params": ("param_count", "minimize", "M parameters"),
    "latency": ("infer_step_time", "minimize", "ms per inference batch of profile.batch_size"),
    "peak_mem": ("train_peak_mem_mb", "minimize", "peak CUDA memory of a train step, MiB"),
}
SAMPLERS = ("tpe", "nsga2", "random", "grid")
PRUNERS = ("median", "hyperband")
DEFAULT_N_TRIALS = 20  # a study's budget when n_trials is unset (the grid sampler: its whole grid)
RANGE_KEYS = ("low", "high", "step", "log")
MAX_GRID_VALUES = 10_000  # one field's values under the grid sampler: more is a mistyped step (and a study of years)


@dataclass(frozen=True)
class StudyConfig:
    objectives: list[str] = field(default_factory=lambda: ["top1", "gmacs"])
    sampler: str = "tpe"
    pruner: str | None = None
    n_trials: int | None = None  # None: DEFAULT_N_TRIALS, or the whole grid for the grid sampler
    timeout: float | None = None  # seconds per worker: no new trial starts after it
    seed: int = 0  # the sampler's (worker k of several: seed + k + 1)

    def __post_init__(self) -> None:
        objectives = self.objectives if isinstance(self.objectives, list) else [self.objectives]
        object.__setattr__(self, "objectives", objectives)
        for o in objectives:  # names before set() and OBJECTIVES look them up
            check_type("objectives", o, str)
        if not 1 <= len(objectives) <= 2 or len(set(objectives)) != len(objectives):
            raise SpecError("objectives", self.objectives, "expected one or two different objectives, "
                            "e.g. [top1, gmacs]")
        for o in objectives:
            if o not in OBJECTIVES:
                raise SpecError("objectives", o, f"unknown objective; expected one of: {', '.join(OBJECTIVES)}")
        if self.sampler not in SAMPLERS:
            raise SpecError("sampler", self.sampler, f"expected one of: {', '.join(SAMPLERS)}")
        if self.pruner is not None:
            if self.pruner not in PRUNERS:
                raise SpecError("pruner", self.pruner, f"expected null or one of: {', '.join(PRUNERS)}")
            if len(objectives) > 1:
                raise SpecError("pruner", self.pruner, "Optuna cannot prune a multi-objective study: use one "
                                "objective (objectives: [top1]) or pruner: null")
            if objectives != ["top1"]:
                raise SpecError("pruner", self.pruner, "prunes on per-epoch top-1: needs objectives: [top1]")
        check_type("n_trials", self.n_trials, (int, None))
        if self.n_trials is not None and not 1 <= self.n_trials <= MAX_SIZE:
            raise SpecError("n_trials", self.n_trials, f"must be in 1…{MAX_SIZE:,}")
        check_type("timeout", self.timeout, (float, None))
        if self.timeout is not None and self.timeout <= 0:
            raise SpecError("timeout", self.timeout, "must be positive (seconds)")
        check_seed("seed", self.seed)

    @property
    def columns(self) -> list[str]:
        return [OBJECTIVES[o][0] for o in self.objectives]

    @property
    def directions(self) -> list[str]:
        return [OBJECTIVES[o][1] for o in self.objectives]

    @property
    def grid(self) -> bool:
        return self.sampler == "grid"

    def budget(self, dims: dict[str, Dim]) -> int:
        """Trials in the study, all workers together: n_trials, else the whole grid (grid
        sampler), else DEFAULT_N_TRIALS."""
        if self.n_trials is not None:
            return self.n_trials
        return math.prod(len(d.grid_values()) for d in dims.values()) if self.grid else DEFAULT_N_TRIALS


@dataclass(frozen=True)
class Dim:
    """One searched field: ``choices``, or a range from ``low`` to ``high``."""

    name: str
    choices: list[Any] | None = None
    low: float | None = None
    high: float | None = None
    step: float | None = None
    log: bool = False

    @property
    def is_int(self) -> bool:
        return self.choices is None and FIELD_TYPES[self.name] in (int, (int, type(None)))

    def suggest(self, trial: Any) -> Any:
        if self.choices is not None:
            return trial.suggest_categorical(self.name, self.choices)
        if self.is_int:
            return trial.suggest_int(self.name, int(self.low), int(self.high), step=int(self.step or 1), log=self.log)
        return trial.suggest_float(self.name, float(self.low), float(self.high), step=self.step, log=self.log)

    def grid_values(self) -> list[Any]:
        if self.choices is not None:
            return list(self.choices)
        if self.is_int:
            low, high, step = int(self.low), int(self.high), int(self.step or 1)
            self._check_grid_size((high - low) // step + 1)  # counted before a list of 10**11 fills memory
            return list(range(low, high + 1, step))
        if self.step:
            n = (self.high - self.low) / self.step
            self._check_grid_size(n + 1)
            return [round(self.low + i * self.step, 12) for i in range(int(round(n)) + 1)]
        raise SpecError(self.name, {"low": self.low, "high": self.high},
                        "the grid sampler needs a list of values or a range with a step")

    def ends(self) -> list[Any]:
        return list(self.choices) if self.choices is not None else [self.low, self.high]

    def _check_grid_size(self, n: float) -> None:
        if not n <= MAX_GRID_VALUES:  # inf too (a step of 1e-300)
            count = f"{n:,.0f}" if n < 1e15 else f"{n:.3g}"  # 1e300, not a number 300 digits long
            raise SpecError(self.name, {"low": self.low, "high": self.high, "step": self.step},
                            f"the grid sampler would try {count} values of it: more than {MAX_GRID_VALUES:,} "
                            "(a larger step?)")


def parse_space(raw: Any) -> dict[str, Dim]:
    """``search:`` → one Dim per field, ``attention`` first (the re_* fields depend on it)."""
    if not isinstance(raw, dict) or not raw:
        raise SpecError("search", raw, "expected a mapping of variant field → list of choices or "
                        "{low, high, step, log}")
    try:
        check_keys(raw, FIELD_TYPES, "variant field")
    except SpecError as err:
        raise err.within(prefix="search.") from None
    dims = {}
    for name in sorted(raw, key=lambda n: (n != "attention", is_re_option(n))):
        value = raw[name]
        at = f"search.{name}"
        if isinstance(value, list):
            if not value:
                raise SpecError(at, value, "needs at least one choice")
            if len(set(map(repr, value))) != len(value):
                raise SpecError(at, value, "lists a choice twice")
            dims[name] = Dim(name, choices=value)
            continue
        if not isinstance(value, dict):
            raise SpecError(at, value, "expected a list of choices or a range {low, high, step, log}")
        try:
            check_keys(value, RANGE_KEYS, "range key")
        except SpecError as err:
            raise err.within(prefix=at + ".") from None
        kind = FIELD_TYPES[name]
        numeric = int if kind in (int, (int, type(None))) else float if kind in (float, (float, type(None))) else None
        if numeric is None:
            raise SpecError(at, value, f"{name} is not numeric: give a list of choices")
        for key in ("low", "high"):
            if key not in value:
                raise SpecError(f"{at}.{key}", None, "a range needs low and high")
        for key in ("low", "high", "step"):
            if value.get(key) is not None:
                check_type(f"{at}.{key}", value[key], numeric)
        check_type(f"{at}.log", value.get("log", False), bool)
        low, high, step = value["low"], value["high"], value.get("step")
        if not low < high:
            raise SpecError(at, value, "needs low < high")
        if step is not None and step <= 0:
            raise SpecError(f"{at}.step", step, "must be positive")
        if value.get("log") and (low <= 0 or step not in (None, 1)):
            raise SpecError(f"{at}.log", True, "a log range needs low > 0 and no step")
        dims[name] = Dim(name, low=low, high=high, step=step, log=bool(value.get("log", False)))
    return dims
