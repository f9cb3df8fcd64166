"""A trainer plug-in that dies, whatever way, is one line naming the row, the trainer and how it died.

Each death mode is a function of a toy trainer module written into the test's project folder. It dies on
one row only while the file POISON exists there, so removing it is the "fixed trainer" a rerun resumes
with. `train` runs as a real subprocess (its workers inherit its stderr, so a traceback printed by any
process of the run would show up in what is asserted on).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from click.testing import CliRunner

from dmtoolkit.cli import cli
from dmtoolkit.errors import RecipeError
from dmtoolkit.recipe import parse_recipe_dict
from dmtoolkit.run.base import GroupOutcome, RunNames, exception_text, exit_description
from dmtoolkit.store import RunStore

from .corpus import TRAINER_SOURCE

ROOT = Path(__file__).resolve().parent.parent
MODELS, DIES_ON = 4, 2


DEATHS = {  # function -> what the line says about how it died, and whether the group was retried
    "raises": ("trainer deaths:raises failed on row 2: ValueError: the loss exploded", True),
    "exits": ("trainer deaths:exits failed on row 2: exited with code 3 (sys.exit)", True),
    "os_exits": ("trainer deaths:os_exits died on row 2: its worker process exited with code 0 before returning "
                 "a result", True),
    "segfaults": ("trainer deaths:segfaults died on row 2: its worker process was killed by signal SIGSEGV", True),
    "hangs": ("trainer deaths:hangs timed out on row 2 after 2 s (timeout 2 s per model); its worker process was "
              "killed", False),
}


@pytest.fixture()
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    (tmp_path / "deaths.py").write_text(TRAINER_SOURCE)
    (tmp_path / "POISON").write_text("")
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("deaths", None)
    yield tmp_path
    sys.modules.pop("deaths", None)


def _init(project: Path, function: str, **trainer: object) -> Path:
    recipe = {"name": "deaths", "trainer": {"function": f"deaths:{function}", "options": {"dies_on": DIES_ON},
                                            **trainer},
              "subsets": {"kind": "class", "alpha": 0.5, "models": MODELS, "seed": 1},
              "own_data": {"unit_names": list("abcdef"), "target_labels": [0, 1, 1, 0, 1]}}
    (project / "r.yaml").write_text(yaml.safe_dump(recipe))
    result = CliRunner().invoke(cli, ["init", str(project / "r.yaml"), str(project / "runs.h5")])
    assert result.exit_code == 0, result.output
    return project / "runs.h5"


def _train(project: Path, store: Path, *args: object) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "cli.py"), "train", str(store), "--quiet", *map(str, args)],
                          cwd=project, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})


def _assert_one_line(result: subprocess.CompletedProcess, store: Path, function: str) -> None:
    how, retried = DEATHS[function]
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 1, result.stderr
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert lines[0] == (f"error: {store}: models in row {DIES_ON} failed{' twice' * retried} ({how}); "
                        f"{MODELS - 1} rows were written and kept; rerun `dmtoolkit train`"
                        f"{'' if retried else ' with a longer --timeout'} to retry")
    with RunStore(store) as s:  # every other row was written, in both passes of the driver
        assert s.completed_mask().tolist() == [row != DIES_ON for row in range(MODELS)]


@pytest.mark.parametrize("function", list(DEATHS))
def test_every_death_is_one_line_with_one_worker(project: Path, function: str) -> None:
    store = _init(project, function)
    result = _train(project, store, "--workers", 1, *(["--timeout", 2] if function == "hangs" else []))
    _assert_one_line(result, store, function)


@pytest.mark.parametrize("function", ["segfaults", "hangs"])
def test_deaths_in_a_pool_keep_other_rows_and_resume(project: Path, function: str) -> None:
    """Two workers; the hang's timeout comes from the recipe (trainer.timeout). A rerun with the fixed
    trainer computes only the failed row and leaves the others' bytes alone."""
    store = _init(project, function, **({"timeout": 2} if function == "hangs" else {}))
    result = _train(project, store, "--workers", 2)
    _assert_one_line(result, store, function)
    with RunStore(store) as s:
        before = s.margins[()]
    (project / "POISON").unlink()
    result = CliRunner().invoke(cli, ["train", str(store), "--workers", "1", "--quiet"])
    assert result.exit_code == 0, result.output
    assert result.output.strip() == f"{store}: wrote 1 models; {MODELS} completed, 0 pending"
    with RunStore(store) as s:
        assert s.completed_mask().all()
        margins = s.margins[()]
    kept = np.arange(MODELS) != DIES_ON
    assert margins[kept].tobytes() == before[kept].tobytes()
    with RunStore(store) as s:
        mask = s.masks[DIES_ON].astype(float)
    np.testing.assert_allclose(margins[DIES_ON], mask[:5] - 0.5 + 0.01 * DIES_ON, atol=1e-6)


def test_a_timeout_is_per_model_and_not_retried(tmp_path: Path) -> None:
    """A group of 3 models gets 3x the timeout; the driver reports a timeout at once (no second attempt)."""
    from dmtoolkit.run.driver import TrainingFailed, train_store

    from .synthetic import synthetic_store

    store = synthetic_store(tmp_path / "s.h5", np.zeros((6, 4), np.float32), completed=np.zeros(6, bool),
                            models_per_batch=3)
    names = RunNames.from_store(store)
    assert names.rows(1) == [3, 4, 5] and names.deadline(1, 2.5) == 7.5 and names.deadline(1, None) is None
    assert names.timed_out(1, 2.5).error == ("trainer builtin:tiny-cnn timed out on rows 3-5 after 7.5 s (timeout "
                                             "2.5 s per model x 3 models); its worker process was killed")

    class TimingOut:
        calls: list[int] = []

        def run(self, store_path: Path, groups: list[int]):
            for group in groups:
                self.calls.append(group)
                if group == 1:
                    yield names.timed_out(group, 2.5)
                else:
                    yield GroupOutcome(group, error="trainer builtin:tiny-cnn failed on rows 0-2: RuntimeError: x")

        def close(self) -> None:
            pass

    executor = TimingOut()
    with pytest.raises(TrainingFailed) as info:
        train_store(store, executor, progress=False)
    assert executor.calls == [0, 1, 0]  # the failure is retried, the timeout is not
    assert str(info.value) == (f"{store}: models in rows 0-5 failed (trainer builtin:tiny-cnn timed out on rows 3-5 "
                               "after 7.5 s (timeout 2.5 s per model x 3 models); its worker process was killed); "
                               "0 rows were written and kept; rerun `dmtoolkit train` with a longer --timeout to retry")


def test_exit_codes_and_exceptions_are_worded_for_the_line() -> None:
    assert exit_description(3) == "exited with code 3"
    assert exit_description(-11) == "was killed by signal SIGSEGV"
    assert exit_description(-9) == "was killed by signal SIGKILL"
    assert exception_text(SystemExit(3), "m:f", [4]) == "trainer m:f failed on row 4: exited with code 3 (sys.exit)"
    assert exception_text(SystemExit(), "m:f", [4]) == "trainer m:f failed on row 4: exited with code 0 (sys.exit)"
    assert exception_text(SystemExit("gave up\nmore"), "m:f", [4, 5]) == \
        "trainer m:f failed on rows 4-5: exited with message 'gave up' (sys.exit)"
    assert exception_text(MemoryError("no room"), "builtin:tiny-cnn", [0, 1]) == \
        "trainer builtin:tiny-cnn failed on rows 0-1: MemoryError: no room"


def test_sys_exit_in_the_driver_process_is_an_outcome(project: Path) -> None:
    """The in-process path (the built-in trainer with one worker) catches SystemExit too."""
    from dmtoolkit.run.base import compute_outcome
    from dmtoolkit.train.contract import FunctionTrainer
    from dmtoolkit.train.job import RunContext, RunInputs

    inputs = RunInputs.from_store(_init(project, "fine"))
    context = RunContext(inputs.recipe, inputs.masks, inputs.data, "cpu",
                         trainer=FunctionTrainer("deaths:quits", lambda job: sys.exit(5)))
    assert compute_outcome(context, 1).error == "trainer deaths:quits failed on row 1: exited with code 5 (sys.exit)"
    with pytest.raises(KeyboardInterrupt):  # Ctrl-C still stops the run
        compute_outcome(RunContext(inputs.recipe, inputs.masks, inputs.data, "cpu",
                                   trainer=FunctionTrainer("m:f", _interrupt)), 0)


def _interrupt(job: object) -> None:
    raise KeyboardInterrupt


def test_timeout_recipe_key_keeps_old_hashes_and_is_checked() -> None:
    base = {"name": "t", "trainer": "m:f", "own_data": {"num_units": 3, "target_labels": [0, 1]}}
    plain = parse_recipe_dict(base)
    assert plain.timeout is None and "timeout" not in plain.canonical_json()
    timed = parse_recipe_dict({**base, "trainer": {"function": "m:f", "timeout": 30}})
    assert timed.timeout == 30.0 and timed.hash() != plain.hash()
    builtin = parse_recipe_dict({"name": "b", "source": {"dataset": "glyphs"}, "target": {"dataset": "mnist5k"},
                                 "training": {"timeout": 1.5}})
    assert builtin.timeout == 1.5
    with pytest.raises(RecipeError, match="trainer.timeout: Input should be greater than 0"):
        parse_recipe_dict({**base, "trainer": {"function": "m:f", "timeout": 0}})


def test_retraining_for_counterfactuals_honours_the_timeout(project: Path) -> None:
    """`counterfactual` / `explain --verify` retrain through the same executor: a hang there is timed out too."""
    from dmtoolkit.analyze.retrain import train_masks
    from dmtoolkit.run.driver import TrainingFailed
    from dmtoolkit.run.executors import make_executor

    with RunStore(_init(project, "hangs")) as s:
        recipe, data, masks = s.recipe, s.run_data(), s.masks[:3].astype(bool)
    with pytest.raises(TrainingFailed) as info:
        train_masks(recipe, data, masks, seed=0, executor=lambda: make_executor("local", 1, "cpu", timeout=1))
    assert str(info.value) == ("retraining 3 models of recipe 'deaths' failed (trainer deaths:hangs timed out on row 2 "
                               "after 1 s (timeout 1 s per model); its worker process was killed); nothing was "
                               "saved, run the command again to retry")
    (project / "POISON").unlink()
    results = train_masks(recipe, data, masks, seed=0, executor=lambda: make_executor("local", 1, "cpu", timeout=30))
    np.testing.assert_allclose(results[2].margins, masks[2, :5] - 0.5 + 0.02, atol=1e-6)
