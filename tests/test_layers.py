"""The package's structure: one order of layers (bench/__init__.py lists it), no import
circle, no private name used across modules, and the torch-free modules really free of it."""
import ast
import subprocess
import sys
from pathlib import Path

import pytest

import bench

PACKAGE = Path(bench.__file__).parent
# the order of bench/__init__.py's layers: a module imports only modules before it
ORDER = ["errors", "console", "files", "cache", "variant", "config", "spec", "stats", "reattention", "models",
         "data", "augment", "profiling", "timing", "training", "collapse", "storage", "ledger", "tables", "plots", "report", "trials",
         "search", "runner", "api", "cli"]
LAZY_OK = {"cli"}  # imports per command keep `bench --version` and `bench report` free of torch


def bench_imports(path: Path) -> list[tuple[str, bool, list[str]]]:
    """(imported bench module, at module level?, names taken from it) for each import."""
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "bench":
            if node.module == "bench":
                out += [(a.name, node.col_offset == 0, []) for a in node.names if (PACKAGE / f"{a.name}.py").exists()]
            else:
                out.append((node.module.split(".")[1], node.col_offset == 0, [a.name for a in node.names]))
        elif isinstance(node, ast.Import):
            out += [(a.name.split(".")[1], node.col_offset == 0, []) for a in node.names
                    if a.name.startswith("bench.")]
    return out


def test_every_module_has_its_place_in_the_layers():
    assert sorted(ORDER) == sorted(p.stem for p in PACKAGE.glob("*.py") if p.stem != "__init__")
    assert all(f"``{m}``" in bench.__doc__ for m in ORDER)


@pytest.mark.parametrize("module", ORDER)
def test_a_module_imports_only_lower_layers_and_no_private_names(module):
    for target, top, names in bench_imports(PACKAGE / f"{module}.py"):
        if target == module:
            continue
        assert ORDER.index(target) < ORDER.index(module), f"{module} imports {target}, a higher layer"
        assert top or module in LAZY_OK, f"{module} imports {target} inside a function"
        assert not [n for n in names if n.startswith("_") and n != "__version__"], f"{module}: {names} of {target}"


def test_no_private_attribute_of_another_bench_module_is_used():
    for path in PACKAGE.glob("*.py"):
        tree = ast.parse(path.read_text())
        modules = {t for t, _, _ in bench_imports(path)}
        aliases = {a.asname or a.name for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module == "bench"
                   for a in n.names if a.name in modules}
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in aliases:
                assert not node.attr.startswith("_"), f"{path.name} uses {node.value.id}.{node.attr}"


@pytest.mark.parametrize("modules", [["bench.spec", "bench.config", "bench.variant"],
                                     ["bench.report", "bench.cli"]])
def test_specs_and_reports_load_without_torch(modules):
    code = (f"import sys; import {', '.join(modules)}; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'timm', 'torchvision')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
