"""The three layers stay apart: the core library imports neither the testbed nor the apps, the testbed never
imports the apps, and no module takes another's private names."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

SIFT = Path(__file__).resolve().parents[2] / "sift"


def _imports(path: Path) -> list[tuple[str, list[str]]]:
    """(module, imported names) of every import in the file, lazy ones inside functions included."""
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            out.append((node.module, [a.name for a in node.names]))
        elif isinstance(node, ast.Import):
            out += [(a.name, []) for a in node.names]
    return out


def _layer(path: Path) -> str:
    part = path.relative_to(SIFT).parts[0]
    return part if part in ("testbed", "apps") else "core"


FORBIDDEN = {"core": ("sift.testbed", "sift.apps"), "testbed": ("sift.apps",), "apps": ()}
MODULES = [p for p in sorted(SIFT.rglob("*.py")) if p.name != "__main__.py"]


@pytest.mark.parametrize("path", MODULES, ids=[str(p.relative_to(SIFT)) for p in MODULES])
def test_layer_imports_point_down_only(path):
    for module, names in _imports(path):
        assert not module.startswith(FORBIDDEN[_layer(path)]), f"{path.name} ({_layer(path)}) imports {module}"
        if module.startswith("sift"):
            private = [n for n in names if n.startswith("_")]
            assert not private, f"{path.name} imports private names {private} from {module}"


ELSEWHERE = [p for d in ("train", "benchmarks", "tests") for p in sorted((SIFT.parent / d).rglob("*.py"))]


@pytest.mark.parametrize("path", ELSEWHERE, ids=[str(p.relative_to(SIFT.parent)) for p in ELSEWHERE])
def test_the_training_app_benchmarks_and_tests_use_public_names_only(path):
    for module, names in _imports(path):
        private = [n for n in names if n.startswith("_")]
        assert not (module.startswith(("sift", "train")) and private), f"{path.name} imports {private} from {module}"


@pytest.mark.slow
def test_import_sift_loads_neither_testbed_nor_apps():
    code = "import sys, sift; print(sorted(m for m in sys.modules if m.startswith(('sift.testbed', 'sift.apps'))))"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "[]"
