"""The benchmarks are scripts run by hand (`make bench`), not by the suite: this keeps
every module they import, inside functions too, existing after the tree moves."""

from __future__ import annotations

import ast
import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
OURS = ("agents_app", "sessions_app", "tools_app", "voiceplatform", "bench")


@pytest.mark.parametrize("script", sorted(p.name for p in (ROOT / "bench").glob("*.py")))
def test_every_module_a_benchmark_imports_exists(script: str) -> None:
    tree = ast.parse((ROOT / "bench" / script).read_text())
    modules = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}
    modules |= {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    missing = sorted(m for m in modules if m.startswith(OURS) and importlib.util.find_spec(m) is None)
    assert missing == []
