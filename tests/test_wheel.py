"""The wheel works anywhere: built from the sources, unpacked outside the checkout, it runs the quick demo.

Recipes and report templates are package data; `python -m dmtoolkit` is the CLI. The demo run here is the
suite's only end-to-end `dmtoolkit demo --quick` (it used to run in-process in test_cli.py); running it from
the unpacked wheel checks the same output and that nothing reaches back into the checkout.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from dmtoolkit.errors import RecipeError
from dmtoolkit.recipe import RECIPES_DIR, load_recipe

from .conftest import ROOT


def test_shipped_recipes_load_by_their_readme_path_from_anywhere(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)  # no recipes/ here: the shipped copies are used
    for name in ("recipes/glyphs-to-mnist.yaml", "glyphs-to-mnist.yaml", "glyphs-to-mnist"):
        assert load_recipe(name).name == load_recipe(RECIPES_DIR / "glyphs-to-mnist.yaml").name
    with pytest.raises(RecipeError, match=r"shipped recipes: [^)]*\bglyphs-to-mnist\b"):
        load_recipe("recipes/nope.yaml")
    with pytest.raises(RecipeError):
        load_recipe("elsewhere/dir/glyphs-to-mnist.yaml")  # a path to another folder is never replaced
    assert (ROOT / "recipes" / "glyphs-to-mnist.yaml").is_file()  # the checkout's recipes/ path still works


def test_wheel_runs_the_quick_demo_outside_the_checkout(tmp_path: Path) -> None:
    source = tmp_path / "src"  # build from a copy: the build writes build/ and *.egg-info beside the sources
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    shutil.copytree(ROOT / "dmtoolkit", source / "dmtoolkit", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                    "-w", tmp_path / "dist", source], check=True, capture_output=True, text=True)
    (wheel,) = (tmp_path / "dist").glob("dmtoolkit-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        archive.extractall(tmp_path / "site")
        entry_points = next(n for n in names if n.endswith("entry_points.txt"))
        assert "dmtoolkit = dmtoolkit.cli:main" in archive.read(entry_points).decode()
    for shipped in ("dmtoolkit/recipes/glyphs-to-mnist.yaml", "dmtoolkit/recipes/glyphs-to-mnist-examples.yaml",
                    "dmtoolkit/report/templates/report.html.j2", "dmtoolkit/__main__.py"):
        assert shipped in names, shipped

    workdir = tmp_path / "elsewhere"
    workdir.mkdir()
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "site")}  # the unpacked wheel, not the checkout

    def dmtoolkit(*args: object) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "dmtoolkit", *map(str, args)], cwd=workdir, env=env,
                              capture_output=True, text=True)

    where = subprocess.run([sys.executable, "-c", "import dmtoolkit; print(dmtoolkit.__file__)"], cwd=workdir,
                           env=env, capture_output=True, text=True, check=True).stdout.strip()
    assert Path(where).is_relative_to(tmp_path / "site"), where
    result = dmtoolkit("demo", "--quick", "--out", workdir / "out", "--workers", "2")
    assert result.returncode == 0, result.stdout + result.stderr
    output = result.stdout + result.stderr
    assert "report: " in output and "LDS class influence" in output
    assert "scale: 16 class-level and 16 example-level models" in output
    assert "leakage (flagged at FDR 5%): " in output and "planted leaks), decoys flagged" in output
    assert "mislabels (flagged at FDR 5%): " in output and "ranking AUC" in output
    assert (workdir / "out" / "report" / "index.html").exists()
    assert dmtoolkit("store", "validate", workdir / "out" / "class-runs.h5").returncode == 0
