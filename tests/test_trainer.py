"""The trainer contract: a recipe's `MODULE:FUNCTION` computes rows through the one driver path, on every executor.

The user trainer here brings its own data (no source/target sections): its margins are a fixed linear
function of the mask plus seeded noise, so class influence recovers the planted weights.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import h5py
import numpy as np
import pytest
import yaml
from click.testing import CliRunner

from dmtoolkit.cli import cli
from dmtoolkit.errors import RecipeError, TrainerError
from dmtoolkit.recipe import load_recipe, parse_recipe_dict
from dmtoolkit.store import RunStore

ROOT = Path(__file__).resolve().parent.parent

TRAINER_SOURCE = textwrap.dedent('''
    import numpy as np
    from dmtoolkit.train.contract import TrainerResult

    WEIGHTS = np.array([[1.0, -1.0, 0.5, 0.0, 2.0],
                        [0.0, 0.5, -0.5, 1.0, 0.0],
                        [-1.0, 0.0, 0.0, 0.0, 1.0],
                        [0.5, 0.5, 0.5, 0.5, 0.5],
                        [0.0, 0.0, 1.0, -1.0, 0.0],
                        [2.0, 0.0, 0.0, 0.0, -2.0]])

    def linear(job):
        assert job.data is None and job.mask.shape == (6,) and job.mask.flags.writeable
        assert list(job.units) == list(np.flatnonzero(job.mask)) and job.num_targets == 5
        noise = np.random.default_rng(job.seed).normal(0, 0.01, job.num_targets)
        margins = job.mask.astype(float) @ WEIGHTS - 1.0 + noise
        return TrainerResult(margins, source_accuracy=0.5, predictions=np.where(margins > 0, job.target_labels,
                                                                                1 - job.target_labels))

    def plain(job):
        return list(job.mask.astype(float) @ WEIGHTS)

    def boom(job):
        if job.index >= job.options.get("fail_from", 0):
            raise ValueError("the loss exploded\\nsecond line")
        return plain(job)

    def short(job):
        return np.zeros(job.num_targets - 1)

    def nonfinite(job):
        margins = np.zeros(job.num_targets)
        margins[2] = np.nan
        return margins

    def not_numbers(job):
        return {"margins": 1}
''')


def recipe_dict(function: str, **options: object) -> dict:
    return {
        "name": "own-data-linear",
        "trainer": {"function": function, "randomness": "per-model", "options": options} if options else function,
        "subsets": {"kind": "class", "alpha": 0.5, "models": 12, "seed": 1},
        "own_data": {"unit_names": ["a", "b", "c", "d", "e", "f"], "target_labels": [0, 1, 1, 0, 1],
                     "target_class_names": ["no", "yes"]},
    }


@pytest.fixture()
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A user's project folder holding their trainer module; the working directory of the test."""
    (tmp_path / "usertrainer.py").write_text(TRAINER_SOURCE)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))  # as running from that folder gives
    sys.modules.pop("usertrainer", None)
    yield tmp_path
    sys.modules.pop("usertrainer", None)


def run(*args: object):
    return CliRunner().invoke(cli, [str(a) for a in args])


def init(project: Path, function: str, name: str = "runs.h5", models: int = 12, **options: object) -> Path:
    recipe = project / f"{name}.yaml"
    recipe.write_text(yaml.safe_dump(recipe_dict(function, **options), sort_keys=False))
    result = run("init", recipe, project / name, "--models", models)
    assert result.exit_code == 0, result.output
    return project / name


# recipes ---------------------------------------------------------------------------------------------
def test_builtin_recipes_keep_their_hashes() -> None:
    """Adding `trainer` and `own_data` left every old recipe's canonical JSON (so resumes) unchanged."""
    # glyphs-to-mnist.yaml's digest moved once on purpose, when it took the orthogonal design (2026-12-04)
    expected = {"glyphs-to-mnist.yaml": "209207399edd6478c5e7470ff9dd44341f88e6c5ca0b0f1d32d45bb3d3320a61",
                "glyphs-to-mnist-examples.yaml": "7dffcf38862d878976419e0e9c4bda90798ede9cec2c329912d1dfe849541e09",
                "imagenet-to-cifar10.yaml": "d6ff0683282bee0af2ff4650f422967fc114039ba14e25aeb10732d51e55e19f"}
    for name, digest in expected.items():
        recipe = load_recipe(ROOT / "recipes" / name)
        assert recipe.hash() == digest
        assert "trainer" not in json.loads(recipe.canonical_json())
        assert recipe.trainer_name == f"builtin:{recipe.model.arch}"


def test_trainer_recipe_shorthand_and_canonical_form() -> None:
    recipe = parse_recipe_dict(recipe_dict("usertrainer:linear"))
    assert recipe.trainer.function == "usertrainer:linear" and recipe.seeding == (0, "shared")
    data = json.loads(recipe.canonical_json())
    assert "model" not in data and "training" not in data and "source" not in data
    assert parse_recipe_dict(data).hash() == recipe.hash()  # the stored form reads back to the same recipe
    assert recipe.with_overrides(models=4, training_seed=3).seeding == (3, "shared")


@pytest.mark.parametrize("change, message", [
    ({"model": {"arch": "resnet18"}}, "model: a recipe naming a trainer has no model/training/transfer sections"),
    ({"trainer": "no colon"}, "trainer.function: String should match pattern"),
    ({"own_data": None}, "a trainer recipe names both source and target data, or neither and then own_data"),
    ({"source": {"dataset": "glyphs"}}, "names both source and target data, or neither"),
    ({"own_data": {"num_units": 5, "unit_names": list("abcdef"), "target_labels": [0]}},
     "6 unit_names for num_units 5"),
    ({"own_data": {"num_units": 6, "target_labels": [0, 2], "target_class_names": ["x", "y"]}},
     "target_labels must lie in [0, 2)"),
    ({"trainer": None}, "source: Field required"),
    ({"planting": {"flip_fraction": 0.1}}, "planting: needs source and target data"),
])
def test_bad_trainer_recipes_are_one_line(change: dict, message: str) -> None:
    data = {**recipe_dict("usertrainer:linear"), **change}
    if data.get("trainer") is None:
        data.pop("trainer")
    if data.get("own_data") is None:
        data.pop("own_data")
    with pytest.raises(RecipeError) as error:
        parse_recipe_dict(data)
    assert message in str(error.value) and "\n" not in str(error.value)


# one path through the driver, every executor -------------------------------------------------------------
def test_user_trainer_fills_a_valid_store_that_influence_reads(project: Path) -> None:
    store = init(project, "usertrainer:linear", models=48)
    with RunStore(store) as s:
        assert s.trainer == "usertrainer:linear"
        import hashlib

        assert s.trainer_source_sha256 == hashlib.sha256((project / "usertrainer.py").read_bytes()).hexdigest()
        assert s.unit_names == list("abcdef") and s.num_targets == 5
    result = run("train", store, "--workers", "1", "--quiet")
    assert result.exit_code == 0, result.output
    assert run("store", "validate", store).exit_code == 0
    info = run("store", "info", store)
    assert "trainer     usertrainer:linear" in info.output
    with RunStore(store) as s:
        assert s.completed_mask().all()
        np.testing.assert_allclose(s.column("source_accuracy"), 0.5)
        margins, predictions = s.margins[()], s.predictions[()]
        labels = s.target_labels
        assert ((predictions == labels) == (margins > 0)).all()
    out = project / "influence.h5"
    result = run("influence", store, "-o", out)
    assert result.exit_code == 0, result.output
    with h5py.File(out, "r") as f:
        coef = f["coef"][()]
    assert coef.shape == (6, 5)
    assert coef[:, 0].argmax() == 5 and coef[:, 0].argmin() == 2  # the largest and smallest planted weights


def test_worker_processes_import_the_trainer_from_the_working_directory(project: Path) -> None:
    """Spawned workers import MODULE from the cwd too; their rows equal the in-process ones."""
    serial, pooled = init(project, "usertrainer:linear", "a.h5"), init(project, "usertrainer:linear", "b.h5")
    assert run("train", serial, "--workers", "1", "--quiet").exit_code == 0
    result = subprocess.run([sys.executable, str(ROOT / "cli.py"), "train", str(pooled), "--workers", "2",
                             "--quiet"], cwd=project, capture_output=True, text=True, timeout=300,
                            env={**__import__("os").environ, "PYTHONPATH": str(ROOT)})
    assert result.returncode == 0, result.stderr
    with RunStore(serial) as a, RunStore(pooled) as b:
        np.testing.assert_array_equal(a.margins[()], b.margins[()])
        np.testing.assert_array_equal(a.column("seed"), b.column("seed"))


def test_shards_run_user_trainers_and_merge(project: Path) -> None:
    store = init(project, "usertrainer:plain")
    for i in range(2):
        result = run("train", store, "--shard", f"{i}/2", "-o", project / f"shard{i}.h5", "--workers", "1",
                     "--quiet")
        assert result.exit_code == 0, result.output
    result = run("store", "merge", project / "shard0.h5", project / "shard1.h5", "-o", project / "merged.h5")
    assert result.exit_code == 0, result.output
    assert run("store", "validate", project / "merged.h5").exit_code == 0


def test_ray_runs_user_trainers_unchanged(project: Path) -> None:
    pytest.importorskip("ray")
    store = init(project, "usertrainer:linear")
    reference = init(project, "usertrainer:linear", "ref.h5")
    assert run("train", reference, "--workers", "1", "--quiet").exit_code == 0
    result = run("train", store, "--executor", "ray", "--workers", "2", "--device", "cpu", "--quiet")
    assert result.exit_code == 0, result.output
    with RunStore(store) as a, RunStore(reference) as b:
        np.testing.assert_allclose(a.margins[()], b.margins[()], atol=1e-6)


def test_ray_reports_a_failing_user_trainer_by_row(project: Path) -> None:
    pytest.importorskip("ray")
    store = init(project, "usertrainer:boom", models=4, fail_from=2)
    result = run("train", store, "--executor", "ray", "--workers", "2", "--device", "cpu", "--quiet")
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "models in rows 2-3 failed twice (trainer usertrainer:boom failed on row" in result.output
    with RunStore(store) as s:
        assert s.completed_mask().tolist() == [True, True, False, False]


# failures: one line naming the function and the row, nothing written touched ------------------------------
@pytest.mark.parametrize("function, message", [
    ("boom", "trainer usertrainer:boom failed on row 6: ValueError: the loss exploded"),
    ("short", "trainer usertrainer:short returned for row 6 margins of shape (4,), expected (5,)"),
    ("nonfinite", "trainer usertrainer:nonfinite returned for row 6 1 non-finite margins (first: target 2, nan)"),
    ("not_numbers", "trainer usertrainer:not_numbers returned for row 6 a dict, not margins"),
])
def test_failing_trainer_is_one_line_and_keeps_written_rows(project: Path, function: str, message: str) -> None:
    store = init(project, "usertrainer:plain")
    assert run("train", store, "--workers", "1", "--limit", "6", "--quiet").exit_code == 0
    with RunStore(store) as s:
        before = s.margins[()], s.completed_mask()
    with h5py.File(store, "r+") as f:  # the failing trainer is a different function of the same run
        recipe = json.loads(f.attrs["recipe"])
        recipe["trainer"] = {**recipe["trainer"], "function": f"usertrainer:{function}",
                             "options": {"fail_from": 6}}
        text = parse_recipe_dict(recipe).canonical_json()
        f.attrs["recipe"], f.attrs["recipe_hash"] = text, parse_recipe_dict(recipe).hash()
    result = run("train", store, "--workers", "1", "--quiet")
    assert result.exit_code == 1
    assert message in result.output and "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1, result.output
    with RunStore(store) as s:
        np.testing.assert_array_equal(s.completed_mask(), before[1])
        np.testing.assert_array_equal(s.margins[()], before[0])


def test_failing_trainer_in_worker_processes_is_one_line(project: Path) -> None:
    """Local worker processes report the same line (and a worker whose import fails, too)."""
    store = init(project, "usertrainer:boom", models=4)
    env = {**__import__("os").environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run([sys.executable, str(ROOT / "cli.py"), "train", str(store), "--workers", "2", "--quiet"],
                            cwd=project, capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "models in rows 0-3 failed twice (trainer usertrainer:boom failed on row" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    from dmtoolkit.run.executors import LocalExecutor

    (project / "usertrainer.py").write_text("raise ImportError('broken on the workers')\n")
    outcomes = list(LocalExecutor(2, "cpu").run(store, [0, 1]))
    assert {o.error for o in outcomes} == {"trainer usertrainer:boom: importing usertrainer failed "
                                           "(ImportError: broken on the workers)"}


def test_changed_trainer_source_is_a_warning(project: Path, capsys: pytest.CaptureFixture) -> None:
    from dmtoolkit.run.driver import train_store
    from dmtoolkit.run.executors import SerialExecutor

    store = init(project, "usertrainer:plain", models=4)
    (project / "usertrainer.py").write_text(TRAINER_SOURCE + "\n# edited\n")
    train_store(store, SerialExecutor("cpu"), progress=False)
    assert "the source of trainer usertrainer:plain changed since" in capsys.readouterr().err


def test_unimportable_trainer_is_one_line_at_init_and_train(project: Path) -> None:
    recipe = project / "r.yaml"
    recipe.write_text(yaml.safe_dump(recipe_dict("nosuchmodule:train")))
    result = run("init", recipe, project / "x.h5")
    assert result.exit_code == 1 and not (project / "x.h5").exists()
    assert "trainer nosuchmodule:train: cannot import nosuchmodule" in result.output
    assert "PYTHONPATH" in result.output and len(result.output.strip().splitlines()) == 1
    recipe.write_text(yaml.safe_dump(recipe_dict("usertrainer:missing")))
    result = run("init", recipe, project / "x.h5")
    assert "trainer usertrainer:missing: module usertrainer has no function 'missing'" in result.output
    store = init(project, "usertrainer:plain", "ok.h5", models=4)
    (project / "usertrainer.py").write_text("import numpy as np\nnp.this_does_not_exist\n")
    sys.modules.pop("usertrainer", None)
    result = run("train", store, "--quiet")
    assert result.exit_code == 1 and len(result.output.strip().splitlines()) == 1
    assert "trainer usertrainer:plain: importing usertrainer failed (AttributeError:" in result.output
    with RunStore(store) as s:
        assert not s.completed_mask().any()


def test_check_result_accepts_tensors_and_refuses_bad_accuracies() -> None:
    import torch

    from dmtoolkit.train.contract import Job, TrainerResult, check_result

    job = Job(index=3, mask=np.ones(2, bool), seed=0, device="cpu", num_targets=3, kind="class",
              units=np.arange(2), source_indices=np.zeros(0, np.int64), unit_names=("a", "b"),
              target_labels=np.zeros(3, np.int64))
    checked = check_result("m:f", job, torch.tensor([1.0, -1.0, 2.0]))
    assert checked.target_accuracy == pytest.approx(2 / 3) and np.isnan(checked.source_accuracy)
    with pytest.raises(TrainerError, match="trainer m:f returned for row 3 target_accuracy 1.5"):
        check_result("m:f", job, TrainerResult(np.zeros(3), target_accuracy=1.5))
    with pytest.raises(TrainerError, match=r"predictions float64 \(3,\)"):
        check_result("m:f", job, TrainerResult(np.zeros(3), predictions=np.zeros(3)))


def test_example_level_own_data_makes_a_valid_store(project: Path) -> None:
    """Example-level units of a trainer's own data: P pool placeholders named by the units."""
    data = recipe_dict("usertrainer:plain")
    data["subsets"]["kind"] = "example"
    data["own_data"] = {"num_units": 6, "target_labels": [0, 1, 1, 0, 1]}
    recipe = project / "ex.yaml"
    recipe.write_text(yaml.safe_dump(data))
    store = project / "ex.h5"
    assert run("init", recipe, store).exit_code == 0
    assert run("train", store, "--quiet").exit_code == 0
    result = run("store", "validate", store)
    assert result.exit_code == 0, result.output
    with RunStore(store) as s:
        assert s.unit_names == ["0", "1", "2", "3", "4", "5"] and s.target_class_names == ["0", "1"]
        assert not s.has_images
    assert run("influence", store, "-o", project / "i.h5").exit_code == 0
    result = run("leakage", project / "i.h5", "--html", project / "leaks.html")
    assert result.exit_code == 1 and not (project / "leaks.html").exists()
    assert ("this store has no images (its recipe's trainer brings its own data), which `dmtoolkit leakage` "
            "needs") in result.output
