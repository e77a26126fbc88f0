"""The package's structure: one order of layers (bench/__init__.py lists it), sub-packages whose
modules stand together (so no arrow points up between packages), no import circle, no private
name used across modules, no function with more than 8 named parameters, and the torch-free
modules really free of it."""
import ast
import subprocess
import sys
from pathlib import Path

import pytest

import bench

PACKAGE = Path(bench.__file__).parent
# bench/__init__.py's layers, in order: a module imports only modules before it. A sub-package's
# modules are listed together, so its place in the order is the package's.
LAYERS = [
    ("base", ["errors", "console", "own_files", "records"]),
    ("config", ["variant", "config", "sequential", "stats"]),
    ("data", ["data.folders", "data.cache", "data.sources", "data.loader", "data.augment"]),
    ("spec", ["spec"]),
    ("core", ["costs", "device", "reattention", "models", "attention_kernels", "utilisation", "profiling", "side_by_side", "training", "collapse"]),
    ("report", ["report.tables", "report.decide", "report.formats", "report.plots", "report.markdown", "report.fidelity",
                "report.calibration"]),
    ("study", ["study.journal", "study.storage", "study.queries", "study.ledger", "study.artifacts", "study.context",
               "study.trials", "study.search",
               "study.runner", "study.workers", "study.stored_reports", "study.grow"]),
    ("front", ["api", "cli"]),
]
ORDER = [m for _, modules in LAYERS for m in modules]
LAYER = {m: name for name, modules in LAYERS for m in modules}
PACKAGES = {"data", "study", "report"}
LAZY_OK = {"cli"}  # imports per command keep `bench --version` and `bench report` free of torch
MAX_PARAMS = 8


def modules_on_disk() -> list[str]:
    out = []
    for p in PACKAGE.rglob("*.py"):
        rel = p.relative_to(PACKAGE).with_suffix("")
        if rel.name != "__init__":
            out.append(".".join(rel.parts))
    return out


def path_of(module: str) -> Path:
    return PACKAGE.joinpath(*module.split(".")).with_suffix(".py")


def resolve(dotted: str) -> str | None:
    """The bench module (as in ORDER) that ``bench.x.y`` names, or None for a package face."""
    parts = dotted.split(".")[1:]
    name = ".".join(parts)
    return name if name in ORDER else None


def bench_imports(path: Path) -> list[tuple[str, bool, list[str]]]:
    """(imported bench module, at module level?, names taken from it) for each import."""
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "bench":
            target = resolve(node.module)
            if target is None:  # `from bench import x` / `from bench.data import cache`: modules by name
                base = node.module.split(".")[1:]
                for a in node.names:
                    sub = ".".join([*base, a.name])
                    if sub in ORDER:
                        out.append((sub, node.col_offset == 0, []))
            else:
                out.append((target, node.col_offset == 0, [a.name for a in node.names]))
        elif isinstance(node, ast.Import):
            out += [(resolve(a.name), node.col_offset == 0, []) for a in node.names
                    if a.name.startswith("bench.") and resolve(a.name)]
    return out


def test_every_module_has_its_place_in_the_layers():
    assert sorted(ORDER) == sorted(modules_on_disk())
    listed = bench.__doc__
    for name, modules in LAYERS:
        for m in modules:
            assert (f"``bench.{name}``" in listed) if name in PACKAGES else (f"``{m}``" in listed), m


@pytest.mark.parametrize("package", sorted(PACKAGES))
def test_each_sub_package_says_what_it_owns_and_may_import(package):
    doc = ast.get_docstring(ast.parse((PACKAGE / package / "__init__.py").read_text()))
    assert doc and "May import" in doc


@pytest.mark.parametrize("module", ORDER)
def test_a_module_imports_only_lower_layers_and_no_private_names(module):
    for target, top, names in bench_imports(path_of(module)):
        if target == module:
            continue
        assert ORDER.index(target) < ORDER.index(module), f"{module} imports {target}, a higher layer"
        assert top or module in LAZY_OK, f"{module} imports {target} inside a function"
        assert not [n for n in names if n.startswith("_") and n != "__version__"], f"{module}: {names} of {target}"


def test_the_package_graph_has_no_upward_arrow():
    layer_index = {name: i for i, (name, _) in enumerate(LAYERS)}
    for module in ORDER:
        for target, _, _ in bench_imports(path_of(module)):
            assert layer_index[LAYER[target]] <= layer_index[LAYER[module]], f"{module} → {target}"


def test_no_private_attribute_of_another_bench_module_is_used():
    for module in ORDER:
        path = path_of(module)
        tree = ast.parse(path.read_text())
        imported = {t.rpartition(".")[2] for t, _, _ in bench_imports(path)}
        aliases = {a.asname or a.name for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)
                   and n.module and n.module.split(".")[0] == "bench" for a in n.names if a.name in imported}
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in aliases:
                assert not node.attr.startswith("_"), f"{module} uses {node.value.id}.{node.attr}"


def test_no_function_takes_more_than_eight_named_parameters():
    """A function that wants a ninth parameter wants an object (a config, or the run context)."""
    wide = []
    for module in ORDER:
        for node in ast.walk(ast.parse(path_of(module).read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                a = node.args
                named = [x.arg for x in a.posonlyargs + a.args + a.kwonlyargs if x.arg not in ("self", "cls")]
                if len(named) > MAX_PARAMS:
                    wide.append(f"{module}.{node.name} ({len(named)})")
    assert not wide, wide


@pytest.mark.parametrize("modules", [["bench.spec", "bench.config", "bench.variant", "bench.data.cache"],
                                     ["bench.report.markdown", "bench.study.ledger", "bench.cli"]])
def test_specs_and_reports_load_without_torch(modules):
    code = (f"import sys; import {', '.join(modules)}; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'timm', 'torchvision')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
