"""The docs hold to the code: docs/spec.md lists every key of every spec section with the
default the config dataclasses have, the links resolve, and the README stays a front door."""
from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest
import yaml

from bench import config, spec, variant

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
SPEC_DOC = DOCS / "spec.md"
README_MAX_LINES = 210

# spec section (its docs/spec.md heading) -> the dataclass that owns its keys and defaults;
# a dataclass-valued field (data.augment) gets its own heading, found from the default
SECTIONS = {"model": variant.Variant, "data": config.DataConfig, "train": config.TrainConfig,
            "profile": config.ProfileConfig, "collapse": config.CollapseConfig, "study": config.StudyConfig}
TOP_LEVEL = "top level"  # keys: spec.SECTIONS; defaults are prose (the file's name, none, ...)
# links to pages written in the same change as this test
NOT_YET_WRITTEN: set[str] = set()  # every linked page exists
MACHINE_PATHS = re.compile(r"(?<![\w.~])/(tmp|work|root|home)/")


def tables(text: str) -> dict[str, dict[str, str]]:
    """``### section`` heading -> {key: default cell} of the ``| key | default | meaning |``
    table beneath it (one key per row, in backticks)."""
    out: dict[str, dict[str, str]] = {}
    section, in_table = None, False
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("#"):
            section = line[4:].strip().strip("`") if line.startswith("### ") else None
        elif section is not None and cells == ["key", "default", "meaning"]:
            in_table = True
            out.setdefault(section, {})
        elif in_table and line.startswith("|"):
            if set(cells[0]) <= set("-: "):
                continue  # the |---| line
            key = cells[0].strip("`")
            assert key not in out[section], f"docs/spec.md: {section}.{key} is listed twice"
            out[section][key] = cells[1].strip("`")
            continue
        in_table = in_table and line.startswith("|")
    return out


def code_sections() -> dict[str, list[dataclasses.Field]]:
    """Every documented section's fields, nested dataclass sections included (``data.augment``)."""
    out = {}
    todo = list(SECTIONS.items())
    while todo:
        name, cls = todo.pop(0)
        out[name] = dataclasses.fields(cls)
        for f in out[name]:
            if dataclasses.is_dataclass(default(f)):
                todo.append((f"{name}.{f.name}", type(default(f))))
    return out


def default(f: dataclasses.Field):
    return f.default_factory() if f.default is dataclasses.MISSING else f.default


def same(doc_cell: str, value) -> bool:
    """The doc's default (YAML spelling) is the code's: equal, and a bool only for a bool."""
    if dataclasses.is_dataclass(value):  # a nested section: the doc names the preset it equals
        return type(value).parse(yaml.safe_load(doc_cell)) == value
    parsed = yaml.safe_load(doc_cell)
    return parsed == value and isinstance(parsed, bool) == isinstance(value, bool)


DOC = tables(SPEC_DOC.read_text())
CODE = code_sections()


def test_every_spec_section_is_documented_or_prose():
    documented = set(SECTIONS) | {"name", "description", "grid", "seeds", "compare", "search"}
    assert set(spec.SECTIONS) <= documented, "a new spec section: add it to SECTIONS here and to docs/spec.md"
    assert set(DOC[TOP_LEVEL]) == set(spec.SECTIONS)


def test_doc_sections_are_the_code_sections():
    assert set(DOC) == set(CODE) | {TOP_LEVEL}


@pytest.mark.parametrize("section", sorted(CODE))
def test_spec_doc_lists_every_key_with_its_default(section):
    doc = DOC.get(section, {})
    fields = {f.name: f for f in CODE[section]}
    assert not set(fields) - set(doc), f"docs/spec.md '### {section}' lacks {sorted(set(fields) - set(doc))}"
    assert not set(doc) - set(fields), f"docs/spec.md '### {section}' lists {sorted(set(doc) - set(fields))}, " \
        "which the code does not have"
    wrong = {k: (doc[k], default(f)) for k, f in fields.items() if not same(doc[k], default(f))}
    assert not wrong, f"docs/spec.md '### {section}': (doc, code) defaults differ: {wrong}"


def test_table_parser_sees_a_changed_default():
    text = SPEC_DOC.read_text().replace("| `epochs` | `10` |", "| `epochs` | `11` |")
    epochs = next(f for f in CODE["train"] if f.name == "epochs")
    assert not same(tables(text)["train"]["epochs"], default(epochs))
    assert not same("true", 1) and not same("1", True) and not same("null", 0)


def shipped_docs() -> list[Path]:
    return [ROOT / "README.md", *sorted(p for p in DOCS.glob("*.md"))]


LINK = re.compile(r"\]\(([^)\s]+)\)")


@pytest.mark.parametrize("page", shipped_docs(), ids=lambda p: p.relative_to(ROOT).as_posix())
def test_relative_links_resolve(page):
    missing = []
    for target in LINK.findall(page.read_text()):
        if re.match(r"[a-z][a-z0-9+.-]*:", target) or target.startswith("#"):
            continue  # a URL or an anchor on the same page
        path = (page.parent / target.split("#")[0]).resolve()
        rel = path.relative_to(ROOT).as_posix() if path.is_relative_to(ROOT) else str(path)
        if not path.exists() and rel not in NOT_YET_WRITTEN:
            missing.append(target)
    assert not missing, f"{page.name}: links to missing files: {missing}"


def test_readme_is_a_front_door():
    lines = len((ROOT / "README.md").read_text().splitlines())
    assert lines <= README_MAX_LINES, f"README.md has {lines} lines: move the detail to docs/"


# docs/benchmarks.md is the measurements' log, not written here (issue 18 cleans its data folder)
SHIPPED_TEXT = [ROOT / "README.md", *sorted(p for p in DOCS.rglob("*") if p.suffix in (".md", ".csv")),
                *sorted((ROOT / "sweeps").glob("*.yaml"))]


@pytest.mark.parametrize("page", SHIPPED_TEXT, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_no_machine_paths(page):
    """Docs, example reports and sweeps name no folder of the machine that made them."""
    assert not MACHINE_PATHS.findall(page.read_text()), f"{page.name} names a path of this machine"


# --- docs/commands.md's synopses against the parser ---------------------------------------------

def synopses() -> dict[str, str]:
    """``bench CMD …`` lines of docs/commands.md's synopsis block, continuation lines joined."""
    block = (DOCS / "commands.md").read_text().split("```text", 1)[1].split("```", 1)[0]
    out: dict[str, str] = {}
    current = None
    for line in block.splitlines():
        if line.startswith("bench "):
            current = line.split()[1]
            out[current] = line
        elif line.strip() and current:
            out[current] += " " + line.strip()
    return out


def parser_flags() -> dict[str, set[str]]:
    """Each subcommand's flags as the parser knows them (help and hidden ones aside)."""
    import argparse

    from bench.cli import build_parser
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return {name: {s for a in p._actions if a.help != argparse.SUPPRESS for s in a.option_strings
                   if s.startswith("--") and s != "--help"} for name, p in sub.choices.items()}


def test_every_command_and_flag_is_in_its_synopsis_and_every_synopsis_flag_exists():
    docs, code = synopses(), parser_flags()
    assert sorted(docs) == sorted(code), "commands documented ≠ commands of the parser"
    for name, flags in code.items():
        written = set(re.findall(r"--[a-z][a-z-]*", docs[name]))
        assert written - flags == set(), f"bench {name}: documented flags the parser lacks: {written - flags}"
        assert flags - written == set(), f"bench {name}: flags missing from docs/commands.md: {flags - written}"


def slug(heading: str) -> str:
    """GitHub's anchor of a markdown heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower().replace("`", ""))
    return text.replace(" ", "-")


@pytest.mark.parametrize("page", shipped_docs(), ids=lambda p: p.relative_to(ROOT).as_posix())
def test_anchors_of_links_exist(page):
    bad = []
    for target in LINK.findall(page.read_text()):
        if re.match(r"[a-z][a-z0-9+.-]*:", target) or "#" not in target:
            continue
        file, anchor = target.split("#", 1)
        path = (page.parent / file).resolve() if file else page
        if path.suffix != ".md" or not path.exists():
            continue
        anchors = {slug(h) for h in re.findall(r"^#+ (.+)$", path.read_text(), re.M)}
        if anchor not in anchors:
            bad.append(target)
    assert not bad, f"{page.name}: links to missing headings: {bad}"


FROM_BENCH = re.compile(r"^\s*from (bench(?:\.\w+)*) import ([\w, ]+?)\s*(?:#.*)?$", re.M)


@pytest.mark.parametrize("page", shipped_docs(), ids=lambda p: p.relative_to(ROOT).as_posix())
def test_every_bench_import_a_page_shows_exists(page):
    """`from bench.x import y` in a page's Python blocks names a module and names that exist: a
    renamed or removed name (bench.profiling.Request) fails here, not in a reader's hands."""
    import importlib

    blocks = re.findall(r"```python\n(.*?)```", page.read_text(), re.S)
    missing = []
    for module, names in FROM_BENCH.findall("\n".join(blocks)):
        found = importlib.import_module(module)
        missing += [f"{module}.{n.strip()}" for n in names.split(",") if not hasattr(found, n.strip())]
    assert not missing, f"{page.name}: {missing}"
