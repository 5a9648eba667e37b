"""Reading a module's imports for the import-layer tests (tests/agents_app/test_import_layers.py,
tests/sessions_app/test_live_schemas.py)."""

from __future__ import annotations

import ast
from pathlib import Path


def module_imports(path: Path) -> set[str]:
    """Every module a file imports, inside functions too (TYPE_CHECKING blocks left out)."""
    tree = ast.parse(path.read_text())
    skip = {
        id(child)
        for node in ast.walk(tree)
        if isinstance(node, ast.If) and ast.unparse(node.test) == "TYPE_CHECKING"
        for child in ast.walk(node)
    }
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return found
