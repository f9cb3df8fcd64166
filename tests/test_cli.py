"""The CLI as a user runs it: init -> train -> validate -> info, resume, determinism, one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from click.testing import CliRunner

from dmtoolkit.cli import cli
from dmtoolkit.lock import WriterLock

from .conftest import ROOT, SMALL_RECIPE, write_recipe


def run(*args: str) -> "CliRunner.invoke":
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture()
def store(small_recipe: Path, tmp_path: Path) -> Path:
    path = tmp_path / "runs.h5"
    result = run("init", small_recipe, path)
    assert result.exit_code == 0, result.output
    return path


def test_init_train_validate_info(store: Path) -> None:
    result = run("train", store, "--workers", "1", "--limit", "3", "--quiet")
    assert result.exit_code == 0, result.output
    assert "wrote 4 models; 4 completed, 4 pending" in result.output  # whole groups of 2
    assert run("store", "validate", store).exit_code == 0
    info = json.loads(run("store", "info", store, "--json").output)
    assert info["models"] == {"completed": 4, "total": 8}
    assert info["kind"] == "class" and info["alpha"] == 0.5
    assert info["planted"]["leaks"] == SMALL_RECIPE["planting"]["leaks"]
    assert 0 <= info["target_accuracy"]["mean"] <= 1
    text = run("store", "info", store).output
    assert "4/8 completed" in text and "planted" in text
    with h5py.File(store, "r") as f:
        done = f["completed"][()]
        assert done.dtype == bool and done.sum() == 4
        assert np.isfinite(f["margins"][()][done]).all() and np.isnan(f["margins"][()][~done]).all()
        assert f["masks"].dtype == bool and f["margins"].dtype == np.float32


def test_resume_after_interruption_matches_an_uninterrupted_run(small_recipe: Path, tmp_path: Path) -> None:
    """Stop after some rows, resume with other workers: same margins as one uninterrupted run."""
    a, b = tmp_path / "a.h5", tmp_path / "b.h5"
    for path in (a, b):
        assert run("init", small_recipe, path).exit_code == 0
    assert run("train", a, "--workers", "2", "--quiet").exit_code == 0
    assert run("train", b, "--workers", "1", "--limit", "2", "--quiet").exit_code == 0
    with h5py.File(b, "r") as f:
        partial = f["margins"][()].copy()
    assert run("train", b, "--workers", "1", "--quiet").exit_code == 0
    with h5py.File(a, "r") as fa, h5py.File(b, "r") as fb:
        assert fa["completed"][()].all() and fb["completed"][()].all()
        np.testing.assert_allclose(fa["margins"][()], fb["margins"][()], atol=1e-5)
        np.testing.assert_array_equal(fb["margins"][:2], partial[:2])  # completed rows untouched
    assert "0 pending" in run("train", b, "--quiet").output  # nothing left to do


def test_validate_lists_every_problem(store: Path) -> None:
    assert run("train", store, "--workers", "1", "--limit", "2", "--quiet").exit_code == 0
    with h5py.File(store, "r+") as f:
        f["masks"][5] = ~f["masks"][5]
        f["margins"][0, 3] = np.nan
    result = CliRunner().invoke(cli, ["store", "validate", str(store)])
    assert result.exit_code == 1
    assert "differ from those re-derived from seed 3 (first: row 5)" in result.output
    assert "non-finite margins (first: row 0)" in result.output
    assert "error: " in result.output and "2 problem(s) found" in result.output


def test_second_writer_is_refused(store: Path) -> None:
    with WriterLock(store):
        result = CliRunner().invoke(cli, ["train", str(store), "--quiet"])
    assert result.exit_code == 1
    assert "another writer holds the store (pid" in result.output


@pytest.mark.parametrize("args, message, code", [
    (["init", "missing.yaml", "x.h5"], "recipe file not found", 1),
    (["train", "missing.h5"], "no such store; create one with `dmtoolkit init", 1),
    (["store", "info", "missing.h5"], "no such store", 1),
    (["train", "x.h5", "--workers", "0"], "Invalid value for '--workers'", 2),
    (["init", "r.yaml", "x.h5", "--models", "1"], "Invalid value for '--models'", 2),
    (["train", "x.h5", "--device", "tpu"], "Invalid value for '--device'", 2),
])
def test_bad_invocations(tmp_path: Path, args: list[str], message: str, code: int) -> None:
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == code
    assert message in result.output


def test_bad_recipe_is_one_line_and_writes_nothing(tmp_path: Path) -> None:
    recipe = write_recipe(tmp_path / "bad.yaml", {**SMALL_RECIPE, "subsets": {"alpha": 2}})
    result = CliRunner().invoke(cli, ["init", str(recipe), str(tmp_path / "x.h5")])
    assert result.exit_code == 1
    assert result.output.strip().count("\n") == 0 and "subsets.alpha" in result.output
    assert not (tmp_path / "x.h5").exists()


def test_existing_store_is_kept_without_force(store: Path, small_recipe: Path) -> None:
    before = store.read_bytes()
    result = CliRunner().invoke(cli, ["init", str(small_recipe), str(store)])
    assert result.exit_code == 1 and "already exists; pass --force" in result.output
    assert store.read_bytes() == before
    assert run("init", small_recipe, store, "--force", "--seed", "9").exit_code == 0
    with h5py.File(store, "r") as f:
        assert f.attrs["seed"] == 9


def test_unknown_dataset_is_a_clear_error(tmp_path: Path) -> None:
    recipe = write_recipe(tmp_path / "r.yaml", {**SMALL_RECIPE, "source": {"dataset": "imagenet"}})
    result = CliRunner().invoke(cli, ["init", str(recipe), str(tmp_path / "x.h5")])
    assert result.exit_code == 1 and "unknown dataset 'imagenet'" in result.output


def test_console_script_and_python_cli_py(store: Path) -> None:
    """`python cli.py` works like the console script, and errors carry no traceback."""
    ok = subprocess.run([sys.executable, "cli.py", "store", "info", str(store)], cwd=ROOT,
                        capture_output=True, text=True)
    assert ok.returncode == 0 and "0/8 completed" in ok.stdout
    bad = subprocess.run([sys.executable, "cli.py", "store", "validate", "/nonexistent.h5"], cwd=ROOT,
                         capture_output=True, text=True)
    assert bad.returncode == 1 and "Traceback" not in bad.stderr
    assert bad.stderr.strip().startswith("error: /nonexistent.h5: no such store")


# `dmtoolkit demo --quick` runs end to end, with the same checks, from the unpacked wheel outside the checkout:
# tests/test_wheel.py::test_wheel_runs_the_quick_demo_outside_the_checkout (one demo run in the suite, not two).


def test_predictions_agree_with_margins(store: Path) -> None:
    """The stored predicted class is the true class exactly where the margin is positive."""
    assert run("train", store, "--workers", "1", "--limit", "2", "--quiet").exit_code == 0
    with h5py.File(store, "r") as f:
        done = f["completed"][()]
        predictions, margins, labels = f["predictions"][()][done], f["margins"][()][done], f["target/labels"][()]
        assert f["predictions"].dtype == np.int16 and (f["predictions"][()][~done] == -1).all()
    np.testing.assert_array_equal(predictions == labels[None, :], margins > 0)


def test_estimators_from_the_command_line(store: Path, tmp_path: Path) -> None:
    """influence -> evaluate and datamodels --targets -> evaluate, as a user runs them; outputs reopened."""
    assert run("train", store, "--workers", "2", "--quiet").exit_code == 0
    influence, datamodels = tmp_path / "influence.h5", tmp_path / "datamodels.h5"
    result = run("influence", store, "-o", influence, "--holdout-frac", "0.4")
    assert result.exit_code == 0 and "influence (" in result.output
    with h5py.File(influence, "r") as f, h5py.File(store, "r") as runs:
        assert f["coef"].shape == (runs["masks"].shape[1], runs["margins"].shape[1])
        fit = np.sort(f["rows/fit"][()])
        masks, margins = runs["masks"][()][fit], runs["margins"][()][fit].astype(np.float64)
    k = 0  # class 0 by hand: mean margin with it minus without it
    expected = margins[masks[:, k]].mean(0) - margins[~masks[:, k]].mean(0)
    with h5py.File(influence, "r") as f:
        np.testing.assert_allclose(f["coef"][k], expected, atol=1e-5)
    report = json.loads(run("evaluate", store, "--estimate", influence, "--json").stdout)
    assert report["estimator"] == "difference-of-means" and report["heldout_models"] == 3
    result = run("datamodels", store, "-o", datamodels, "--targets", "0:10", "--lambdas", "5", "--val-frac", "0.4",
                 "--holdout-frac", "0.4")
    assert result.exit_code == 0, result.output
    with h5py.File(datamodels, "r") as f:
        assert f["coef"].shape[1] == 10
        assert not set(f["rows/test"][()]) & (set(f["rows/fit"][()]) | set(f["rows/selection"][()]))
    assert "datamodels LDS on 3 held-out models, targets 0:10" in run("evaluate", store, "--estimate", datamodels).output
    again = CliRunner().invoke(cli, ["influence", str(store), "-o", str(influence)])
    assert again.exit_code == 1 and "--force" in again.output


@pytest.mark.parametrize("args, message", [
    (["influence", "{store}", "-o", "{tmp}/i.h5"], "only 0 of 8 models are completed, estimates need at least 2; run `dmtoolkit train"),
    (["datamodels", "{store}", "-o", "{tmp}/d.h5", "--targets", "5:999"], "targets 5:999 is outside the store's targets 0:120"),
    (["influence", "{store}", "-o", "{tmp}/i.h5", "--device", "cuda"], "no CUDA GPU is available; use --device cpu"),
])
def test_estimator_errors(store: Path, tmp_path: Path, args: list[str], message: str) -> None:
    if "no CUDA GPU" in message and torch.cuda.is_available():
        pytest.skip("expects a machine without a CUDA GPU")
    if "--targets" in args:
        assert run("train", store, "--workers", "1", "--quiet").exit_code == 0
    args = [a.format(store=store, tmp=tmp_path) for a in args]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 1 and message in result.output and "Traceback" not in result.output
    assert not any(p.name in ("i.h5", "d.h5") for p in tmp_path.iterdir())
