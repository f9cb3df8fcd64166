"""Layers point one way: a module imports only its own layer and the ones below (any import, lazy ones too).

foundation (errors, devices, lock, masks, recipe, atomic, store, stats, ...) < data < train < run < estimate
< analyze < report < demo, cli.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "dmtoolkit"
LAYERS = {"data": 1, "train": 2, "run": 3, "estimate": 4, "analyze": 5, "report": 6, "demo": 7, "cli": 7,
          "__main__": 7}


def layer_of(module: str) -> int:
    """Layer of a dotted dmtoolkit module name; anything not listed is foundation (0)."""
    parts = module.split(".")
    return LAYERS.get(parts[1], 0) if len(parts) > 1 else 0


def imports_of(path: Path) -> list[str]:
    tree = ast.parse(path.read_text())
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names += [node.module] + [f"{node.module}.{a.name}" for a in node.names]
    return [n for n in names if n.startswith("dmtoolkit.")]


MODULES = sorted(PACKAGE.rglob("*.py"))


@pytest.mark.parametrize("path", MODULES, ids=[str(p.relative_to(PACKAGE)) for p in MODULES])
def test_imports_point_down(path: Path) -> None:
    module = "dmtoolkit." + ".".join(path.relative_to(PACKAGE).with_suffix("").parts)
    own = layer_of(module)
    upward = [name for name in imports_of(path) if layer_of(name) > own]
    assert not upward, f"{module} (layer {own}) imports upward: {upward}"


def test_the_scan_sees_lazy_imports() -> None:
    source = "def f():\n    from dmtoolkit.report.figures import rank_figure\n"
    tree_names = [n for n in ast.walk(ast.parse(source)) if isinstance(n, ast.ImportFrom)]
    assert tree_names and layer_of("dmtoolkit.report.figures") == 6 > layer_of("dmtoolkit.analyze.classes")
