"""The package's shape, read from its source: every module's docstring names the probe modules
it imports, module-level imports between probe's modules form no cycle (data flows one way),
and modules and classes stay near the sizes that keep them readable (about 300 and 120
lines)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "probe"
MODULE_LINES, CLASS_LINES = 310, 130  # "about 300" and "about 120", with a little slack


def _modules():
    return sorted(p for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts)


def _name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _probe_imports(path: Path, tree: ast.Module) -> list[str]:
    """Full names of the probe modules imported at module level (relative imports)."""
    package = _name(path) if path.name == "__init__.py" else _name(path).rsplit(".", 1)[0]
    found = []
    for node in tree.body:
        if isinstance(node, ast.ImportFrom) and node.level:
            base = package.split(".")[:len(package.split(".")) - (node.level - 1)]
            if node.module:
                found.append(".".join(base + node.module.split(".")))
            else:
                found += [".".join(base + [alias.name]) for alias in node.names]
    return found


def _import_text(path: Path, doc: str) -> str:
    """The docstring's text that says what the module imports: its paragraphs (doctests left
    out) that speak of imports; a package's whole docstring (its map of modules)."""
    speaks = re.compile(r"\b[Ii]mports?\b")
    if path.name == "__init__.py":
        return doc if speaks.search(doc) else ""
    return "\n".join(p for p in re.split(r"\n\s*\n", doc)
                     if speaks.search(p) and not p.lstrip().startswith(">>>"))


def _parsed():
    return [(path, ast.parse(path.read_text(encoding="utf-8"))) for path in _modules()]


def test_every_module_names_the_probe_modules_it_imports():
    wrong = []
    for path, tree in _parsed():
        doc = ast.get_docstring(tree) or ""
        text = _import_text(path, doc)
        if not text:
            wrong.append(f"{_name(path)}: its docstring does not say what it imports")
            continue
        unnamed = [m for m in _probe_imports(path, tree)
                   if m not in text and m.rsplit(".", 1)[-1] not in text]
        if unnamed:
            wrong.append(f"{_name(path)}: imports {', '.join(unnamed)} without naming it")
    assert not wrong, "\n".join(wrong)


def test_module_level_imports_form_no_cycle():
    graph = {}
    for path, tree in _parsed():
        graph[_name(path)] = set(_probe_imports(path, tree))
    graph = {m: {d for d in deps if d in graph and d != m} for m, deps in graph.items()}
    state: dict[str, int] = {}
    cycles = []

    def visit(module, trail):
        state[module] = 1
        for dep in sorted(graph[module]):
            if state.get(dep) == 1:
                cycles.append(" -> ".join(trail[trail.index(dep):] + [module, dep]))
            elif dep not in state:
                visit(dep, trail + [module])
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [])
    assert any(graph.values()) and not cycles, "\n".join(cycles)


def test_modules_and_classes_stay_readable_sizes():
    over = []
    for path, tree in _parsed():
        lines = len(path.read_text(encoding="utf-8").splitlines())
        if lines > MODULE_LINES:
            over.append(f"{_name(path)}: {lines} lines")
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef) and node.end_lineno - node.lineno + 1 > CLASS_LINES:
                over.append(f"{_name(path)}.{node.name}: {node.end_lineno - node.lineno + 1} lines")
    assert not over, "split these (one job each):\n" + "\n".join(over)


@pytest.mark.parametrize("broken", ["docstring", "cycle", "size"])
def test_the_checks_catch_what_they_name(broken, tmp_path, monkeypatch):
    """Each check above fails on a package that breaks its rule."""
    package = tmp_path / "probe"
    package.mkdir()
    (package / "__init__.py").write_text('"""A package. Imports nothing."""\n')
    (package / "a.py").write_text('"""A. Imports :mod:`probe.b`."""\nfrom .b import x\n')
    (package / "b.py").write_text('"""B. Imports nothing."""\nx = 1\n')
    if broken == "docstring":
        (package / "a.py").write_text('"""A, saying nothing of what it uses."""\nfrom .b import x\n')
    elif broken == "cycle":
        (package / "b.py").write_text('"""B. Imports :mod:`probe.a`."""\nfrom .a import y\nx = 1\n')
    else:
        (package / "b.py").write_text('"""B. Imports nothing."""\n' + "x = 1\n" * MODULE_LINES)
    monkeypatch.setitem(globals(), "PACKAGE", package)
    checks = {"docstring": test_every_module_names_the_probe_modules_it_imports,
              "cycle": test_module_level_imports_form_no_cycle,
              "size": test_modules_and_classes_stay_readable_sizes}
    for name, check in checks.items():
        if name == broken:
            with pytest.raises(AssertionError):
                check()
        else:
            check()  # the rules it does not break still pass
