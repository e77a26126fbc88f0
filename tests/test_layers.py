"""The package's structure: one order of layers (bench/__init__.py lists it), sub-packages whose
modules stand together (so no arrow points up between packages), no import circle, no private
name used across modules, no function with more than 8 named parameters or longer than a screen,
no keyword pass-through, each concept in the one module docs/architecture.md names, and the
torch-free modules really free of it."""
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
MAX_LINES = 60  # a function, its docstring included, fits on one screen
ARCHITECTURE = Path(__file__).parent.parent / "docs" / "architecture.md"
# the only functions that take **keywords: each hands them to a callee that checks every name at the call
PASS_THROUGH_OK = {"variant.Variant.replace", "study.context.RunContext.replace",  # dataclasses.replace
                   "models.build_model", "models._entrypoint.create", "models._block_fn",  # timm's model and
                   # block keywords (timm's create_model protocol): VisionTransformer checks each name
                   "reattention.ReAttention.__init__",  # timm's Attention keywords
                   "study.artifacts.TrialFiles.upload"}  # extra metadata stored with the upload, not passed on


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


def functions(module: str):
    """(qualified name, node) of every function and method in ``module``."""
    def walk(node, prefix):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                yield f"{prefix}{child.name}", child
                yield from walk(child, f"{prefix}{child.name}.")
            elif isinstance(child, ast.ClassDef):
                yield from walk(child, f"{prefix}{child.name}.")
    yield from walk(ast.parse(path_of(module).read_text()), f"{module}.")


def test_no_function_is_longer_than_a_screen():
    """A function past 60 lines wants splitting (timm's train_one_epoch and validate)."""
    long = [f"{name} ({node.end_lineno - node.lineno + 1})" for module in ORDER for name, node in functions(module)
            if node.end_lineno - node.lineno + 1 > MAX_LINES]
    assert not long, long


def test_no_function_passes_loose_keywords_through():
    """``**options`` forwarded to a callee fails late and far from a misspelt keyword: the API
    takes a RunContext or typed keywords. The few exceptions hand the keywords to a callee that
    checks each name where it is called."""
    found = sorted(name for module in ORDER for name, node in functions(module) if node.args.kwarg is not None)
    assert found == sorted(PASS_THROUGH_OK), found


def homes() -> list[tuple[str, str, list[str]]]:
    """docs/architecture.md's "where does X live" table: (concept, module, names)."""
    text = ARCHITECTURE.read_text()
    table = text[text.index("| concept | module | names |"):].split("\n\n")[0].splitlines()[2:]
    rows = []
    for line in table:
        concept, module, names = (c.strip() for c in line.strip("|").split("|"))
        rows.append((concept, module.strip("`"), [n.strip().strip("`") for n in names.split(",")]))
    return rows


def top_level_names(module: str) -> set[str]:
    out = set()
    for node in ast.parse(path_of(module).read_text()).body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            out.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            out |= {t.id for t in targets if isinstance(t, ast.Name)}
    return out


def test_each_concept_lives_in_the_one_module_the_architecture_page_names():
    rows = homes()
    assert len(rows) >= 20 and {"costs", "device", "own_files", "variant", "cli"} <= {m for _, m, _ in rows}
    defined = {m: top_level_names(m) for m in ORDER}
    for concept, module, names in rows:
        assert module in ORDER, f"{concept}: no module {module}"
        for name in names:
            assert name in defined[module], f"{concept}: {name} is not defined in bench.{module}"
            elsewhere = [m for m in ORDER if m != module and name in defined[m]]
            assert not elsewhere, f"{concept}: {name} is defined in bench.{module} and again in {elsewhere}"


def test_every_cost_figure_has_its_one_definition_in_costs():
    """No module but bench.costs defines a MAC, PMAC or FLOP figure of a model (bench.utilisation's
    GEMM peaks measure the device, not a model), and the report's PMACs call costs' definition."""
    named = {"report.tables.train_pmacs",  # a DataFrame's column of costs.trained_pmacs
             "report.plots._top1_vs_gmacs",  # a plot, named for its axes
             "utilisation.datasheet_tflops", "utilisation.gemm_tflops"}  # the device's peak
    found = [name for module in ORDER if module != "costs" for name, _ in functions(module)
             if any(w in name.rpartition(".")[2] for w in ("macs", "flops"))]
    assert sorted(found) == sorted(named), found
    body = dict(functions("report.tables"))["report.tables.train_pmacs"]
    assert "trained_pmacs" in {n.id for n in ast.walk(body) if isinstance(n, ast.Name)}
