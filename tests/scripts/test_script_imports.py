"""Every name the scripts under ``scripts/`` import from medxfer exists: a script imports inside its functions
(so that ``--help`` is fast), where a renamed or moved function only shows when the script is run — a
benchmark broken that way is noticed the next time someone measures."""
import ast
import importlib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPTS = sorted((REPO / "scripts").rglob("*.py"))


def _medxfer_imports(path: Path) -> list[tuple[int, str, str | None]]:
    """``(line, module, name)`` of each ``import medxfer…`` (name None) and ``from medxfer… import name``."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").split(".")[0] == "medxfer":
            found += [(node.lineno, node.module, alias.name) for alias in node.names]
        elif isinstance(node, ast.Import):
            found += [(node.lineno, alias.name, None) for alias in node.names if alias.name.split(".")[0] == "medxfer"]
    return found


def test_the_scripts_import_medxfer_somewhere():
    assert sum(len(_medxfer_imports(p)) for p in SCRIPTS) > 20  # the scan finds what it should


@pytest.mark.parametrize("path", SCRIPTS, ids=lambda p: str(p.relative_to(REPO)))
def test_every_medxfer_name_a_script_imports_exists(path):
    missing = []
    for line, module, name in _medxfer_imports(path):
        imported = importlib.import_module(module)
        if name is not None and not hasattr(imported, name):
            try:
                importlib.import_module(f"{module}.{name}")  # a submodule
            except ImportError:
                missing.append(f"{path.name}:{line}: from {module} import {name}")
    assert missing == []
