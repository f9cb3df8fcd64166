"""Ray executor against a local Ray started here (2 CPUs, no dashboard): same rows as the local executor."""

from __future__ import annotations

import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
from click.testing import CliRunner

from dmtoolkit.cli import cli
from dmtoolkit.errors import UserError

ray = pytest.importorskip("ray")


def run(*args: object):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        yield ray
    finally:
        ray.shutdown()


@pytest.fixture()
def two_stores(small_recipe: Path, tmp_path: Path) -> tuple[Path, Path]:
    a, b = tmp_path / "local.h5", tmp_path / "ray.h5"
    assert run("init", small_recipe, a).exit_code == 0
    b.write_bytes(a.read_bytes())
    return a, b


def test_ray_rows_equal_local_rows(local_ray, two_stores: tuple[Path, Path]) -> None:
    local, remote = two_stores
    assert run("train", local, "--workers", "1", "--quiet").exit_code == 0
    result = run("train", remote, "--executor", "ray", "--workers", "2", "--device", "cpu", "--quiet")
    assert result.exit_code == 0, result.output
    assert "wrote 8 models; 8 completed, 0 pending" in result.output
    with h5py.File(local, "r") as fa, h5py.File(remote, "r") as fb:
        assert fb["completed"][()].all()
        np.testing.assert_allclose(fb["margins"][()], fa["margins"][()], atol=1e-5, rtol=0)
        np.testing.assert_array_equal(fb["seed"][()], fa["seed"][()])
    assert run("store", "validate", remote).exit_code == 0
    assert ray.is_initialized()  # a Ray the executor did not start is left running


def test_failing_group_is_reported_not_raised(local_ray, two_stores: tuple[Path, Path]) -> None:
    from dmtoolkit.run.ray_executor import RayExecutor

    _, store = two_stores
    executor = RayExecutor(workers=2, device="cpu")
    try:
        outcomes = {o.group: o for o in executor.run(store, [0, -5])}
    finally:
        executor.close()
    assert outcomes[0].error is None and len(outcomes[0].results) == 2
    assert outcomes[-5].error and outcomes[-5].results is None


def test_missing_ray_is_a_one_line_error(monkeypatch: pytest.MonkeyPatch) -> None:
    from dmtoolkit.run import ray_executor

    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(UserError, match=r"pip install 'dmtoolkit\[ray\]'"):
        ray_executor.import_ray()


def test_registry_builds_the_ray_executor_by_name() -> None:
    from dmtoolkit.run.executors import make_executor
    from dmtoolkit.run.ray_executor import RayExecutor

    executor = make_executor("ray", 2, "cpu", address="auto")  # Ray starts or joins only when run
    assert isinstance(executor, RayExecutor) and (executor.workers, executor.address) == (2, "auto")


def test_address_needs_ray_executor(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["train", str(tmp_path / "x.h5"), "--address", "auto"])
    assert result.exit_code == 2 and "--address needs --executor ray" in result.output


def test_ctrl_c_cancels_pending_tasks_and_keeps_written_rows(local_ray, two_stores: tuple[Path, Path]) -> None:
    from dmtoolkit.run.driver import train_store
    from dmtoolkit.run.ray_executor import RayExecutor

    _, store = two_stores

    class InterruptAfterFirst(RayExecutor):
        def run(self, store_path, groups):
            stream = super().run(store_path, groups)
            yield next(stream)
            stream.close()  # what Ctrl-C does to the generator: its `finally` cancels the pending tasks
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_store(store, InterruptAfterFirst(workers=2, device="cpu"), progress=False)
    with h5py.File(store, "r") as f:
        assert f["completed"][()].sum() == 2  # the first group's rows were written and kept
    result = run("train", store, "--executor", "ray", "--workers", "2", "--quiet")
    assert result.exit_code == 0 and "wrote 6 models; 8 completed" in result.output


def test_retraining_plans_run_on_ray(local_ray, small_recipe: Path) -> None:
    """A retraining's plan (its data in memory, no store) runs on Ray as in this process; a second plan in a row
    is not served the first one's context cached on the workers."""
    from dmtoolkit.analyze import train_masks
    from dmtoolkit.recipe import load_recipe
    from dmtoolkit.run.prepare import build_run_data
    from dmtoolkit.run.ray_executor import RayExecutor

    recipe = load_recipe(small_recipe)
    data = build_run_data(recipe)
    masks = np.ones((3, data.num_units(recipe.subsets.kind)), bool)
    masks[1, :3], masks[2, 3:6] = False, False
    for plan_masks in (masks, masks[::-1]):
        remote = train_masks(recipe, data, plan_masks, seed=4, executor=lambda: RayExecutor(2, "cpu"))
        local = train_masks(recipe, data, plan_masks, seed=4, device="cpu")
        np.testing.assert_allclose(np.stack([r.margins for r in remote]), np.stack([r.margins for r in local]),
                                   atol=1e-5, rtol=0)
        assert [r.seed for r in remote] == [r.seed for r in local]
    assert ray.is_initialized()
