"""Sweep specs: a YAML file (plus ``--set`` overrides) read and checked in full before any work.

    name: depth                 # the study's name: results/<name>/
    data: {name: shapes, train_size: 5000, difficulty: 0.5}
    model: {img_size: 32, patch_size: 4, embed_dim: 64, num_heads: 4}   # the base variant
    train: {epochs: 6, batch_size: 32}        # null: profile only
    profile: {batch_size: 64}
    grid: {depth: [2, 4, 8], attention: [self, re]}   # or a list of such products
    seeds: [0, 1]
    compare:
      by: [depth]
      baseline: {attention: self}
      arms: {re-attention: {attention: re}, wider: {embed_dim: 96}}

Every grid point becomes a ``Variant`` here, so a bad combination fails before the
first trial; every error names the file, the key and the value (exit code 2). The
sections themselves (and their defaults) are ``bench.config``'s. No torch: specs load
anywhere, and ``bench report`` never imports it.
"""
from __future__ import annotations

import copy
import dataclasses
import hashlib
import itertools
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import yaml

from bench.config import (DATA_KEYS, CollapseConfig, DataConfig, Dim, ProfileConfig, StudyConfig,
                          TrainConfig, parse_space)
from bench.data.folders import check_available
from bench.errors import SpecError, check_keys, check_seed, check_type, quote
from bench.variant import FIELD_TYPES, Variant, is_re_option

SECTIONS = ("name", "description", "data", "model", "train", "profile", "collapse", "grid", "seeds", "compare",
            "search", "study")
BASELINE = "baseline"  # the comparison's reference arm: a reserved arm name
MAX_CORNERS = 4096  # a study's space: validate every combination of choices and range ends up to this many
MAX_VARIANTS = 10_000  # a grid's points: a sweep trains each once per seed (10,000 is weeks of GPU time already)


@dataclass(frozen=True)
class Trial:
    """One variant × seed: the unit the study records."""

    key: str
    variant: Variant
    seed: int


@dataclass(frozen=True)
class Sweep:
    name: str
    path: str
    data: DataConfig | None
    model: dict[str, Any]
    train: TrainConfig | None
    profile: ProfileConfig
    grid: list[dict[str, list[Any]]]
    seeds: list[int]
    compare: dict[str, Any] | None
    variants: list[Variant]
    description: str | None = None
    collapse: CollapseConfig | None = None
    search: dict[str, Dim] | None = None  # a study: searched fields instead of a grid
    study: StudyConfig | None = None
    search_raw: dict[str, Any] | None = None  # the search section as written
    rung: dict[str, Any] | None = None  # a ladder's rung (bench calibrate): the values it sets, by dotted key

    def trials(self) -> list[Trial]:
        if self.search is not None:
            return []  # a study's trials come from its sampler
        return [Trial(trial_key(v, s), v, s) for v in self.variants for s in self.seeds]

    def objective_columns(self) -> list[str]:
        """The record columns a trial's Optuna values come from."""
        if self.study is not None:
            return self.study.columns
        return ["top1"] if self.train else ["infer_gmacs"]

    def directions(self) -> list[str]:
        if self.study is not None:
            return self.study.directions
        return ["maximize"] if self.train else ["minimize"]

    def budget(self) -> int:
        """Trials a study runs (all workers together); a grid sweep's trial count."""
        if self.study is not None:
            return self.study.budget(self.search)
        return len(self.variants) * len(self.seeds)

    def settings(self) -> dict[str, Any]:
        """What makes two runs' records comparable: held fixed within one study."""
        data = self.data.settings() if self.data is not None else None  # the keys that matter for this dataset
        return {"data": data, "train": _asdict(self.train), "profile": self.profile.settings(),
                "collapse": _asdict(self.collapse)}

    def to_dict(self) -> dict[str, Any]:
        data = _asdict(self.data)
        if data is not None:  # with how it is held (a worker started by name needs the cache folder)
            data = {k: v for k, v in data.items() if k in DATA_KEYS[self.data.name]}
        settings = {**self.settings(), "profile": _asdict(self.profile), "data": data}
        out = {"name": self.name, "path": self.path, "description": self.description, **settings,
               "model": self.model, "grid": self.grid, "seeds": self.seeds, "compare": self.compare}
        if self.search is not None:
            out.update(grid=None, compare=None, search=self.search_raw, study=_asdict(self.study))
        return out


def _asdict(obj: Any) -> dict[str, Any] | None:
    return None if obj is None else dataclasses.asdict(obj)


def variant_key(variant: Variant) -> str:
    """Stable identity of a variant (the same in every run and on every machine)."""
    return hashlib.sha1(json.dumps(variant.to_dict(), sort_keys=True).encode()).hexdigest()[:12]


def trial_key(variant: Variant, seed: int) -> str:
    """Stable identity of a variant × seed: ``<variant_key>-s<seed>``."""
    return f"{variant_key(variant)}-s{seed}"


def variant_of(key: str) -> str:
    """The variant key inside a trial key."""
    return key.rsplit("-s", 1)[0]


# --- reading ----------------------------------------------------------------------------

MAX_NODES = 100_000  # YAML values a spec may unfold to, aliases expanded: a real one has a few hundred
MAX_NESTING = 64  # levels of YAML nesting: a real spec has four or five


class _Loader(yaml.SafeLoader):
    """Safe YAML that refuses duplicate keys (plain YAML keeps the last one silently)."""


def _mapping(loader: _Loader, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
    seen: set[Any] = set()
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *base`: construct_mapping merges it, keys written win
            continue
        key = loader.construct_object(key_node, deep=deep)
        try:
            duplicate = key in seen
        except TypeError:  # a list or mapping as a key
            raise yaml.constructor.ConstructorError(None, None, f"a {type(key).__name__} cannot be a key",
                                                    key_node.start_mark) from None
        if duplicate:
            raise yaml.constructor.ConstructorError(None, None, f"duplicate key {quote(key)}", key_node.start_mark)
        seen.add(key)
    return loader.construct_mapping(node, deep=deep)


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping)


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        return node.value
    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    return []


def _check_size(root: yaml.Node) -> None:
    """Refuse a node graph whose aliases unfold past MAX_NODES values, or that refers to itself,
    or nests deeper than MAX_NESTING: counted on the composed nodes (each alias's size once),
    before any Python object exists, so a "billion laughs" file costs nothing."""
    sizes: dict[int, int] = {}
    open_: set[int] = set()  # the nodes whose count is under way: an alias to one is a cycle
    stack: list[tuple[yaml.Node, int, bool]] = [(root, 0, False)]
    while stack:
        node, depth, done = stack.pop()
        if done:
            open_.discard(id(node))
            sizes[id(node)] = size = 1 + sum(sizes[id(c)] for c in _children(node))
            if size > MAX_NODES:
                raise SpecError(None, None, f"its aliases unfold to more than {MAX_NODES:,} values "
                                f"(from line {node.start_mark.line + 1}): refused")
            continue
        if id(node) in sizes:
            continue
        if id(node) in open_:
            raise SpecError(None, None, f"line {node.start_mark.line + 1}: an alias refers to the value that "
                            "contains it (a value cannot contain itself)")
        if depth > MAX_NESTING:
            raise SpecError(None, None, f"line {node.start_mark.line + 1}: nested more than {MAX_NESTING} levels "
                            "deep")
        open_.add(id(node))
        stack.append((node, depth, True))
        stack.extend((c, depth + 1, False) for c in _children(node))


def load_yaml(text: str, where: str) -> Any:
    """The one way bench reads YAML (sweep files, ``--set`` values): safe tags only, duplicate
    keys refused, and the node graph checked (_check_size) before any object is built.
    Raises SpecError naming ``where``."""
    loader = None
    try:
        loader = _Loader(text)  # reads the text: a control character is a YAMLError here
        node = loader.get_single_node()
        if node is None:  # empty text
            return None
        _check_size(node)
        try:
            return loader.construct_document(node)
        except (ArithmeticError, AttributeError, LookupError, TypeError, ValueError) as err:
            # PyYAML's own, on a tag its value does not fit: `!!int ''` (IndexError), `!!timestamp ''`
            why = f"{type(err).__name__}: {' '.join(str(err).split())[:200]}"
            raise SpecError(None, None, f"not valid YAML: a tagged value does not read as its tag ({why})") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        at = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(err, "problem", None) or str(err)
        raise SpecError(None, None, f"not valid YAML: {at}{' '.join(problem.split())}", where) from None
    except RecursionError:  # the composer recurses per level: MAX_NESTING is checked only after it
        raise SpecError(None, None, f"not valid YAML: nested more than {MAX_NESTING} levels deep", where) from None
    except SpecError as err:
        raise err.within(where) from None
    finally:
        if loader is not None:
            loader.dispose()


def read_yaml(path: str | Path) -> dict[str, Any]:
    where = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as err:
        raise SpecError(None, None, f"cannot read the sweep file: {err.strerror or err}", where) from None
    except UnicodeDecodeError:
        raise SpecError(None, None, "not a text file (a sweep file is YAML in UTF-8)", where) from None
    raw = load_yaml(text, where)
    if not isinstance(raw, dict):
        raise SpecError(None, None, f"expected a mapping of sections ({', '.join(SECTIONS)}), "
                        f"got {type(raw).__name__}", where)
    return raw


def apply_sets(raw: dict[str, Any], sets: Mapping[str, Any]) -> dict[str, Any]:
    """``{"train.epochs": 2}`` → ``raw["train"]["epochs"] = 2`` (a new dict; ``raw`` unchanged)."""
    out = copy.deepcopy(raw)  # not through JSON: a date or number as a key is no TypeError
    for dotted, value in sets.items():
        parts = dotted.split(".")
        node = out
        for i, part in enumerate(parts[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise SpecError(dotted, value, f"{'.'.join(parts[:i + 1])} is not a section", "--set")
            node = child
        node[parts[-1]] = value
    return out


def load(path: str | Path, sets: Mapping[str, Any] | None = None) -> Sweep:
    """Read, override and validate a sweep file. Raises SpecError naming file, key and value."""
    sets = dict(sets or {})
    where = str(path)
    raw = apply_sets(read_yaml(path), sets)
    try:
        return parse(raw, where, default_name=Path(path).stem)
    except SpecError as err:
        related = lambda a, b: a == b or a.startswith(b + ".")  # noqa: E731
        if err.key is not None and any(related(err.key, k) or related(k, err.key) for k in sets):
            raise err.within("--set") from None
        raise


def check_name(name: Any) -> str:
    """A study name: it names results/<name>/, so a plain file name."""
    check_type("name", name, str)
    if not name or any(c in name for c in "/\\") or name.startswith(".") or not name.isprintable():
        raise SpecError("name", name, "must be a plain file name: no / or \\, no leading dot, no control "
                        "characters (it names results/<name>/)")
    if len(name.encode()) > 200:
        raise SpecError("name", name, "is too long for a folder name (200 bytes at most)")
    return name


def _section(raw: Mapping[str, Any], key: str, kind: type = dict) -> Any:
    value = raw.get(key)
    if value is not None and not isinstance(value, kind):
        raise SpecError(key, value, f"expected a {'mapping' if kind is dict else kind.__name__}")
    return value


def _build(cls: type, values: Mapping[str, Any] | None, prefix: str) -> Any:
    values = values or {}
    try:
        check_keys(values, [f.name for f in dataclasses.fields(cls)], f"{prefix} key")
        return cls(**values)
    except SpecError as err:
        raise err.within(prefix=prefix + ".") from None


def parse(raw: Mapping[str, Any], where: str, default_name: str = "sweep") -> Sweep:
    try:
        return dataclasses.replace(_parse(raw, default_name), path=where)
    except SpecError as err:
        raise err.within(where) from None


def _parse(raw: Mapping[str, Any], default_name: str) -> Sweep:
    check_keys(raw, SECTIONS, "section")
    name = check_name(raw.get("name", default_name))

    train = raw["train"] if "train" in raw else {}  # an explicit null: profile only
    if train is not None:
        _section(raw, "train")
        train = _build(TrainConfig, train, "train")
    data = _data(raw, train)
    profile = _build(ProfileConfig, _section(raw, "profile"), "profile")
    collapse = raw["collapse"] if "collapse" in raw else {}  # an explicit null: off
    if collapse is not None:
        _section(raw, "collapse")
        collapse = _build(CollapseConfig, collapse, "collapse") if train is not None else None

    model = dict(_section(raw, "model") or {})
    try:
        check_keys(model, FIELD_TYPES, "model field")
        base = Variant.from_dict(model)
    except SpecError as err:
        raise err.within(prefix="model.") from None
    num_classes = check_available(data) if data is not None else None
    if num_classes is not None:
        if "num_classes" in model and model["num_classes"] != num_classes:
            raise SpecError("model.num_classes", model["num_classes"],
                            f"data {data.name!r} has {num_classes} classes")
        base = base.replace(num_classes=num_classes)

    searching = raw.get("search") is not None or raw.get("study") is not None
    if searching:
        for section in ("grid", "compare"):
            if raw.get(section) is not None:
                raise SpecError(section, raw[section], "a study searches (search, study): leave out grid and compare")
    grid = _grid(raw.get("grid"))
    variants = _variants(base, grid, data, num_classes)
    seeds = _seeds(raw.get("seeds", [0]))
    compare = _compare(raw.get("compare"), variants)
    description = raw.get("description")
    check_type("description", description, (str, None))
    extra: dict[str, Any] = {}
    if searching:
        extra = _study(raw, base, data, num_classes, train, profile)
        if len(seeds) != 1:
            raise SpecError("seeds", seeds, "a study trains each sampled variant once: give one seed")
    return Sweep(name=name, path="", data=data, model=model, train=train, profile=profile, grid=grid,
                 seeds=seeds, compare=compare, variants=variants, description=description, collapse=collapse,
                 **extra)


def _data(raw: Mapping[str, Any], train: TrainConfig | None) -> DataConfig | None:
    """The data section as a DataConfig (None when left out, which only profiling may): keys
    that mean nothing for its dataset are refused, and so is an odd batch that Mixup/CutMix
    would pair."""
    data_raw = _section(raw, "data")
    if train is not None and data_raw is None:
        raise SpecError("data", None, "training needs a dataset, e.g. data: {name: shapes} (or train: null)")
    if data_raw is not None:
        kind = data_raw.get("name", DataConfig.name)
        if isinstance(kind, str) and kind in DATA_KEYS:  # keys that mean nothing for this dataset are mistakes
            try:
                check_keys(data_raw, DATA_KEYS[kind], f"key for data {kind!r}")
            except SpecError as err:
                raise err.within(prefix="data.") from None
    data = _build(DataConfig, data_raw, "data") if data_raw is not None else None
    if train is not None and data is not None and data.augment.mixes and train.batch_size % 2:
        raise SpecError("train.batch_size", train.batch_size, "Mixup/CutMix (data.augment) mixes pairs of images "
                        "within a batch: must be even")
    return data


def _seeds(seeds: Any) -> list[int]:
    """The seeds section: one integer or a non-empty list of distinct ones."""
    if isinstance(seeds, int) and not isinstance(seeds, bool):
        seeds = [seeds]
    if not isinstance(seeds, list) or not seeds:
        raise SpecError("seeds", seeds, "expected a non-empty list of integers")
    for s in seeds:
        check_seed("seeds", s)
    if len(set(seeds)) != len(seeds):
        raise SpecError("seeds", seeds, "lists a seed twice")
    return seeds


def _study(raw: Mapping[str, Any], base: Variant, data: DataConfig | None, num_classes: int | None,
           train: TrainConfig | None, profile: ProfileConfig) -> dict[str, Any]:
    if raw.get("search") is None:
        raise SpecError("search", None, "a study needs a search space, e.g. search: {depth: {low: 2, high: 12}}")
    dims = parse_space(raw["search"])
    cfg = _build(StudyConfig, _section(raw, "study"), "study")
    if "top1" in cfg.objectives and train is None:
        raise SpecError("study.objectives", cfg.objectives, "top1 needs training (train is null)")
    timed = [o for o in cfg.objectives if o in ("latency", "peak_mem")]
    if timed and not profile.speed:
        raise SpecError("study.objectives", timed[0], "is measured by timing: needs profile.speed: true")

    def check_point(v: Variant, point: dict[str, Any]) -> None:
        if data is not None:
            _fits_data(v, data, "search", point, num_classes)

    check_space(dims, base, check_point, grid=cfg.grid)
    return {"search": dims, "study": cfg, "search_raw": dict(raw["search"])}


def check_space(dims: dict[str, Dim], base: Variant, check_point: Callable[[Variant, dict[str, Any]], None],
                grid: bool) -> int:
    """Build the variant at every combination of choices and range ends (up to MAX_CORNERS):
    an impossible one is a spec error naming the search key. Returns the grid size (grid
    sampler) or the number of combinations checked."""
    if grid:
        for d in dims.values():
            try:
                d.grid_values()
            except SpecError as err:
                raise SpecError(f"search.{d.name}", err.value, err.reason) from None
    ends = {n: (d.grid_values() if grid else d.ends()) for n, d in dims.items()}
    size = math.prod(len(v) for v in ends.values())
    can_re = "re" in ends.get("attention", [base.attention])
    for name in dims:
        if is_re_option(name) and not can_re:
            raise SpecError(f"search.{name}", dims[name].ends(), "is a re-attention option, but no searched "
                            "variant uses attention: re")
    if size <= MAX_CORNERS:
        for combo in itertools.product(*ends.values()):
            point = dict(zip(ends, combo, strict=True))
            check_point(point_variant(base, point, "search", "search point"), point)
    return size


def _grid(raw: Any) -> list[dict[str, list[Any]]]:
    """A mapping (one Cartesian product) or a list of them (their union)."""
    if raw is None:
        return [{}]
    products = raw if isinstance(raw, list) else [raw]
    if not products:
        raise SpecError("grid", raw, "is empty (leave it out for the base model alone)")
    out = []
    for i, product in enumerate(products):
        at = f"grid[{i}]" if isinstance(raw, list) else "grid"
        if not isinstance(product, dict):
            raise SpecError(at, product, "expected a mapping of variant field → list of values")
        try:
            check_keys(product, FIELD_TYPES, "variant field")
        except SpecError as err:
            raise err.within(prefix=at + ".") from None
        axes = {}
        for field, values in product.items():
            values = values if isinstance(values, list) else [values]
            if not values:
                raise SpecError(f"{at}.{field}", values, "needs at least one value")
            axes[field] = values
        out.append(axes)
    return out


def _variants(base: Variant, grid: list[dict[str, list[Any]]], data: DataConfig | None,
              num_classes: int | None = None) -> list[Variant]:
    points = sum(math.prod(len(values) for values in axes.values()) for axes in grid)
    if points > MAX_VARIANTS:  # counted before building them: a long list per field multiplies fast
        raise SpecError("grid", {k: f"{len(v)} values" for k, v in grid[0].items()}, f"has {points:,} points: more "
                        f"than {MAX_VARIANTS:,} (each is trained once per seed)")
    variants: dict[Variant, None] = {}  # in grid order, each once
    for i, axes in enumerate(grid):
        at = f"grid[{i}]" if len(grid) > 1 else "grid"
        for combo in itertools.product(*axes.values()):
            point = dict(zip(axes, combo, strict=True))
            v = point_variant(base, point, at)
            if data is not None:
                _fits_data(v, data, at, point, num_classes)
            variants.setdefault(v)
    return list(variants)


def point_variant(base: Variant, point: dict[str, Any], at: str, what: str = "grid point") -> Variant:
    """``base`` with ``point``'s fields; an impossible one names its key under ``at`` (or
    under ``model`` when the base's own value is the problem)."""
    try:
        return base.replace(**point)
    except SpecError as err:
        key = f"{at}.{err.key}" if err.key in point else f"model.{err.key}"
        raise SpecError(key, err.value, f"{err.reason} (at {what} {_show(point)})") from None


def _fits_data(v: Variant, data: DataConfig, at: str, point: dict[str, Any], num_classes: int | None) -> None:
    key = lambda f: f"{at}.{f}" if f in point else f"model.{f}"  # noqa: E731 (where the value came from)
    here = f" (at grid point {_show(point)})"
    if num_classes is not None and v.num_classes != num_classes:
        raise SpecError(key("num_classes"), v.num_classes, f"data {data.name!r} has {num_classes} classes")
    if v.in_chans != 3:
        raise SpecError(key("in_chans"), v.in_chans, f"{data.name} images are RGB: in_chans must be 3")
    if data.crop_padding >= v.img_size:
        raise SpecError("data.crop_padding", data.crop_padding, f"must be below img_size={v.img_size}{here}")


def _show(point: Mapping[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in point.items()) or "the base model"


def _compare(raw: Any, variants: list[Variant]) -> dict[str, Any] | None:
    """Normalise ``compare``: ``by`` a list, each arm merged onto the baseline filter."""
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise SpecError("compare", raw, "expected a mapping with by, baseline and arms")
    try:
        check_keys(raw, ("by", "baseline", "arms"), "compare key")
    except SpecError as err:
        raise err.within(prefix="compare.") from None
    by = raw.get("by", ["depth"])
    by = [by] if isinstance(by, str) else by
    if not isinstance(by, list):
        raise SpecError("compare.by", by, "expected a variant field or a list of them")
    for field in by:
        check_type("compare.by", field, str)  # a list is no key of {field: None}
        try:
            check_keys({field: None}, FIELD_TYPES, "variant field")
        except SpecError as err:
            raise err.within(prefix="compare.by: ") from None
    baseline = _filter(raw.get("baseline"), "compare.baseline")
    arms_raw = raw.get("arms")
    if not isinstance(arms_raw, dict) or not arms_raw:
        raise SpecError("compare.arms", arms_raw, "expected a mapping of arm name → changed fields")
    if BASELINE in arms_raw:
        raise SpecError("compare.arms", BASELINE, "the name 'baseline' is reserved")
    arms = {}
    for arm, changes in arms_raw.items():
        arms[str(arm)] = {**baseline, **_filter(changes, f"compare.arms.{arm}")}
    for name, where in [(BASELINE, baseline), *arms.items()]:
        if not any(all(getattr(v, k) == x for k, x in where.items()) for v in variants):
            key = "compare.baseline" if name == BASELINE else f"compare.arms.{name}"
            raise SpecError(key, where, "matches no variant of the grid")
    return {"by": by, "baseline": baseline, "arms": arms}


def _filter(raw: Any, at: str) -> dict[str, Any]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise SpecError(at, raw, "expected a mapping of variant field → value")
    try:
        check_keys(raw, FIELD_TYPES, "variant field")
        for key, value in raw.items():
            check_type(key, value, FIELD_TYPES[key])
    except SpecError as err:
        raise err.within(prefix=at + ".") from None
    return dict(raw)


# --- a budget ladder (bench calibrate) -------------------------------------------------------

MAX_RUNGS = 12  # a ladder's rungs: each is a whole sweep


@dataclass(frozen=True)
class Rung:
    """One rung of a budget ladder: the values it sets (dotted keys, as --set) and its label,
    ``epochs=4``, which names its study (``NAME@epochs=4``)."""

    label: str
    sets: dict[str, Any]

    def study(self, name: str) -> str:
        """The rung's study name: ``NAME@label``."""
        try:
            return check_name(f"{name}@{self.label}")
        except SpecError as err:
            raise SpecError(None, None, f"rung {quote(self.label)} cannot name a study: {err.reason}",
                            where="--ladder") from None


def _rung_value(key: str, text: str) -> Any:
    value = load_yaml(text, "--ladder") if text.strip() else None
    if value is None or isinstance(value, (dict, list)) or (isinstance(value, float) and not math.isfinite(value)):
        raise SpecError(key, text, "each rung's value must be a number or a word", where="--ladder")
    return value


def _shown(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def parse_ladder(items: list[str]) -> list[Rung]:
    """``["train.epochs=2,4,8"]`` → three rungs; several ladders are zipped rung by rung
    (``--ladder train.epochs=2,4 --ladder data.train_size=1000,3000``: two rungs, each setting
    both). Values are YAML scalars, comma-separated. Raises SpecError (where="--ladder") for an
    item that is not KEY=V1,V2,…, a key given twice, ladders of different lengths, fewer than
    two rungs, or two rungs alike."""
    ladders: dict[str, list[Any]] = {}
    for item in items:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key or not text.strip():
            raise SpecError(None, None, f"{quote(item)}: expected KEY=V1,V2,… (e.g. train.epochs=2,4,8)",
                            where="--ladder")
        if key in ladders:
            raise SpecError(key, text, "is climbed twice: give each key one --ladder", where="--ladder")
        ladders[key] = [_rung_value(key, t) for t in text.split(",")]
    if not ladders:
        raise SpecError(None, None, "give at least one ladder, e.g. --ladder train.epochs=2,4,8", where="--ladder")
    lengths = {k: len(v) for k, v in ladders.items()}
    if len(set(lengths.values())) > 1:
        raise SpecError(None, None, "ladders are zipped rung by rung, so each needs as many values ("
                        + ", ".join(f"{k}: {n}" for k, n in lengths.items()) + ")", where="--ladder")
    n = next(iter(lengths.values()))
    if not 2 <= n <= MAX_RUNGS:
        raise SpecError(None, None, f"{n} rung(s): a ladder needs 2 to {MAX_RUNGS} (each is a whole sweep)",
                        where="--ladder")
    short = [k.rsplit(".", 1)[-1] for k in ladders]
    names = short if len(set(short)) == len(short) else list(ladders)  # `epochs` unless two keys share it
    rungs = [Rung(",".join(f"{s}={_shown(v[i])}" for s, v in zip(names, ladders.values(), strict=True)),
                  {k: v[i] for k, v in ladders.items()}) for i in range(n)]
    if len({r.label for r in rungs}) < n:
        raise SpecError(None, None, f"two rungs are alike ({', '.join(r.label for r in rungs)}): each must differ",
                        where="--ladder")
    return rungs


def load_rungs(path: str | Path, sets: Mapping[str, Any], rungs: list[Rung], name: str | None = None
               ) -> list[Sweep]:
    """The sweep of every rung, each named NAME@label (NAME: ``name`` or the sweep's), all
    checked before any runs: a rung whose value the spec refuses fails here, naming --ladder."""
    climbed = set(rungs[0].sets)
    both = sorted(climbed & set(sets))
    if both:
        raise SpecError(both[0], sets[both[0]], "is both set (--set) and climbed (--ladder): give it once",
                        where="--ladder")
    out = []
    for rung in rungs:
        sweep = _rung_sweep(path, {**sets, **rung.sets}, climbed)
        if sweep.search is not None:
            raise SpecError("search", None, "a ladder climbs a grid sweep (`bench run`'s): a search draws other "
                            "variants at every rung, so rungs could not be compared", where=str(path))
        out.append(dataclasses.replace(sweep, name=rung.study(check_name(name or sweep.name)), rung=dict(rung.sets)))
    _check_rungs_differ(path, sets, rungs, out)
    return out


def _rung_sweep(path: str | Path, sets: Mapping[str, Any], climbed: set[str]) -> Sweep:
    try:
        return load(path, sets)
    except SpecError as err:
        related = err.where == "--set" and err.key is not None and any(
            err.key == k or err.key.startswith(k + ".") or k.startswith(err.key + ".") for k in climbed)
        raise (err.within("--ladder") if related else err) from None


def resolved(sweep: Sweep) -> str:
    """What a sweep trains, whatever its file says: its settings and its trials' keys."""
    return json.dumps({"settings": sweep.settings(), "trials": sorted(t.key for t in sweep.trials())},
                      sort_keys=True, default=str)


def _check_rungs_differ(path: str | Path, sets: Mapping[str, Any], rungs: list[Rung], sweeps: list[Sweep]) -> None:
    """Rungs are compared as budgets, so each must train something else: two rungs that resolve
    to the same trials (a grid that fixes the climbed key, say), or a climbed key that changes
    nothing while the others climb, are refused."""
    found = [resolved(s) for s in sweeps]
    keys = ", ".join(rungs[0].sets)
    if len(set(found)) == 1:
        raise SpecError(None, None, f"{keys} changes nothing this sweep trains: every rung would run the same trials "
                        "(the grid or another setting fixes it); a ladder must change what is trained",
                        where="--ladder")
    for i, j in itertools.combinations(range(len(rungs)), 2):
        if found[i] == found[j]:
            raise SpecError(None, None, f"rungs {rungs[i].label} and {rungs[j].label} would run the same trials (the "
                            f"grid or another setting overrides {keys}); each rung must change what is trained",
                            where="--ladder")
    if len(rungs[0].sets) < 2:
        return
    first = dict(rungs[0].sets)
    for key in first:  # zipped ladders: each key must change something with the others held
        alone = {resolved(_rung_sweep(path, {**sets, **first, key: r.sets[key]}, {key})) for r in rungs}
        if len(alone) == 1:
            values = ",".join(_shown(r.sets[key]) for r in rungs)
            raise SpecError(None, None, f"{key}={values}: changes nothing this sweep trains (the grid or another "
                            "setting fixes it); a ladder must change what is trained", where="--ladder")
