"""The architecture holds: layers and acyclic packages (import-linter), no module cycle at all, ruff clean.

These run in the README's test command, so CI fails on a new import cycle, a layer violation or
a lint error. The layer order is the ``[importlinter]`` section of ``setup.cfg`` and the
README's "Architecture" section.
"""
from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import grimp
import pytest

ROOT = Path(__file__).resolve().parents[1]


def _tool(name: str) -> str:
    path = Path(sys.executable).with_name(name)
    found = str(path) if path.exists() else shutil.which(name)
    if not found:
        pytest.fail(f"{name} is not installed: `pip install -e .[dev]` installs it")
    return found


def test_import_contracts_hold():
    """Layers (top imports bottom only) and acyclic siblings, as `lint-imports` checks them."""
    proc = subprocess.run([_tool("lint-imports"), "--no-cache"], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-2000:]


def test_no_import_cycle_between_modules():
    """No strongly connected set of modules, counting a package's ``__init__`` as a module and
    imports inside functions (a lazy import hides a cycle from Python, not from this test)."""
    graph = grimp.build_graph("medxfer", cache_dir=None)
    modules = sorted(graph.modules)
    edges = {m: sorted(graph.find_modules_directly_imported_by(m)) for m in modules}
    index, low, on_stack, stack, cycles, counter = {}, {}, set(), [], [], [0]

    def strongconnect(v: str) -> None:  # Tarjan's algorithm
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in edges[v]:
            if w not in index:
                strongconnect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10 * len(modules)))
    for m in modules:
        if m not in index:
            strongconnect(m)
    assert not cycles, "import cycles:\n" + "\n".join(" <-> ".join(c) for c in cycles)


# Modules that import medxfer modules inside functions on purpose, and why.
LAZY_ALLOWED = {
    "medxfer/cli.py": "`medxfer --help` and argument errors must not wait for torch, MONAI and MLflow",
}


def test_no_function_level_import_of_medxfer_modules():
    """A medxfer module imports its medxfer dependencies at the top, where the layer contracts and a
    reader see them; only the modules in LAZY_ALLOWED defer them, for the reason given there."""
    found = []
    for path in sorted((ROOT / "medxfer").rglob("*.py")):
        rel = path.relative_to(ROOT).as_posix()
        if rel in LAZY_ALLOWED:
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        top = set(map(id, tree.body))
        for node in ast.walk(tree):
            if id(node) in top:
                continue
            if isinstance(node, ast.ImportFrom) and (node.level or (node.module or "").startswith("medxfer")):
                found.append(f"{rel}:{node.lineno}")
            elif isinstance(node, ast.Import) and any(a.name.startswith("medxfer") for a in node.names):
                found.append(f"{rel}:{node.lineno}")
    assert not found, "function-level imports of medxfer modules:\n" + "\n".join(found)


def test_ruff_is_clean():
    proc = subprocess.run([_tool("ruff"), "check", "--no-cache", "medxfer", "tests", "scripts"], cwd=ROOT,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-2000:]


def test_mypy_is_clean_on_the_shared_layers(tmp_path):
    """Type checking where it pays: ``core`` and ``tracking``, which every layer calls (third-party
    modules are not followed: they take minutes and are not ours). Above them, torch's
    ``nn.Module.__getattr__`` types every submodule as ``Tensor | Module``, so mypy would mostly
    report that."""
    proc = subprocess.run([sys.executable, "-m", "mypy", "--ignore-missing-imports", "--follow-imports=skip",
                           "--cache-dir", str(tmp_path), "medxfer/core", "medxfer/tracking"], cwd=ROOT,
                          capture_output=True, text=True)
    if "No module named mypy" in proc.stderr:
        pytest.fail("mypy is not installed: `pip install -e .[dev]` installs it")
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-2000:]
