"""Scheduler-array shards: `train --shard I/N -o SHARD.h5`, then a checked `store merge`."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest
from click.testing import CliRunner

from dmtoolkit.cli import cli
from dmtoolkit.errors import StoreError, UserError
from dmtoolkit.run.shards import merge_stores, parse_shard

from .conftest import SMALL_RECIPE, write_recipe


def run(*args: object):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def _store(small_recipe: Path, path: Path) -> Path:
    assert run("init", small_recipe, path).exit_code == 0
    return path


@pytest.fixture(scope="module")
def sharded(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A store, its three shards (1 and 2 complete, 0 not started), and the store trained in one go."""
    tmp = tmp_path_factory.mktemp("shards")
    recipe = write_recipe(tmp / "small.yaml", SMALL_RECIPE)  # 8 models in groups of 2: groups 0..3
    store, whole = _store(recipe, tmp / "runs.h5"), _store(recipe, tmp / "whole.h5")
    assert run("train", whole, "--workers", "1", "--quiet").exit_code == 0
    paths = {"store": store, "whole": whole, "recipe": recipe}
    for i in (1, 2):
        shard = tmp / f"shard-{i}.h5"
        result = run("train", store, "--shard", f"{i}/3", "-o", shard, "--workers", "1", "--quiet")
        assert result.exit_code == 0, result.output
        paths[f"shard{i}"] = shard
    return paths


def test_shard_holds_its_groups_only_and_the_same_run(sharded: dict[str, Path]) -> None:
    with h5py.File(sharded["shard1"], "r") as s, h5py.File(sharded["store"], "r") as p, \
            h5py.File(sharded["whole"], "r") as w:
        assert s.attrs["recipe_hash"] == p.attrs["recipe_hash"] and s.attrs["seed"] == p.attrs["seed"]
        np.testing.assert_array_equal(s["masks"][()], p["masks"][()])
        np.testing.assert_array_equal(s["source/images"][()], p["source/images"][()])
        assert np.flatnonzero(s["completed"][()]).tolist() == [2, 3]  # group 1 of 4 (groups 1 % 3 == 1)
        np.testing.assert_allclose(s["margins"][2:4], w["margins"][2:4], atol=1e-5, rtol=0)
        assert not p["completed"][()].any()  # the parent store is only read


def test_merge_reports_missing_then_completes(sharded: dict[str, Path], tmp_path: Path) -> None:
    partial = tmp_path / "partial.h5"
    result = CliRunner().invoke(
        cli, ["store", "merge", str(sharded["shard1"]), str(sharded["shard2"]), "-o", str(partial)])
    assert result.exit_code == 0, result.output
    assert "4 rows completed" in result.stdout
    assert "4 rows still missing: 0-1, 6-7" in result.stderr  # groups 0 and 3 belong to shard 0
    shard0 = tmp_path / "shard-0.h5"
    assert run("train", sharded["store"], "--shard", "0/3", "-o", shard0, "--workers", "1", "--quiet").exit_code == 0
    merged = tmp_path / "merged.h5"
    # the partial merge overlaps shard 1 and 2 exactly: identical duplicates are kept once
    result = run("store", "merge", shard0, sharded["shard1"], sharded["shard2"], partial, "-o", merged)
    assert result.exit_code == 0, result.output
    assert "8 rows completed (4 identical duplicates kept once)" in result.output
    with h5py.File(merged, "r") as m, h5py.File(sharded["whole"], "r") as w:
        assert m["completed"][()].all()
        np.testing.assert_allclose(m["margins"][()], w["margins"][()], atol=1e-5, rtol=0)
        np.testing.assert_array_equal(m["seed"][()], w["seed"][()])
    assert run("store", "validate", merged).exit_code == 0
    # no overwrite without --force
    again = CliRunner().invoke(cli, ["store", "merge", str(shard0), "-o", str(merged)])
    assert again.exit_code == 1 and "already exists; pass --force" in again.output


def test_conflicting_rows_are_refused(sharded: dict[str, Path], tmp_path: Path) -> None:
    tampered = tmp_path / "tampered.h5"
    tampered.write_bytes(sharded["shard1"].read_bytes())
    with h5py.File(tampered, "r+") as f:
        f["margins"][3] = f["margins"][3] + 0.5
    out = tmp_path / "out.h5"
    result = CliRunner().invoke(cli, ["store", "merge", str(sharded["shard1"]), str(tampered), "-o", str(out)])
    assert result.exit_code == 1
    line = result.output.strip()
    assert "\n" not in line and "conflicting rows: row 3 is completed in both" in line
    assert "refusing to merge" in line
    assert not out.exists()


def test_different_run_is_refused(sharded: dict[str, Path], tmp_path: Path) -> None:
    other_recipe = write_recipe(tmp_path / "other.yaml", {**SMALL_RECIPE, "subsets": {**SMALL_RECIPE["subsets"], "seed": 4}})
    other = _store(other_recipe, tmp_path / "other.h5")
    with pytest.raises(StoreError, match="not the same run"):
        merge_stores([sharded["shard1"], other], tmp_path / "out.h5")
    with pytest.raises(StoreError, match="not a shard of"):
        from dmtoolkit.run.shards import open_shard

        open_shard(other, sharded["shard1"])


@pytest.mark.parametrize("text", ["3", "3/3", "-1/2", "a/b", "1/0"])
def test_bad_shard_spec(text: str) -> None:
    with pytest.raises(UserError, match="I/N"):
        parse_shard(text)
    assert parse_shard("2/5") == (2, 5)


def test_shard_needs_output(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["train", str(tmp_path / "x.h5"), "--shard", "0/2"])
    assert result.exit_code == 2 and "go together" in result.output


def test_an_example_level_merge_keeps_the_source_margins(tmp_path: Path) -> None:
    """Example-level shards record each model's stated-label source margins; the merged store holds the same
    rows of them as the store trained in one go (the label check then reads the merged store like any other)."""
    recipe = write_recipe(tmp_path / "ex.yaml", {**SMALL_RECIPE, "subsets": {**SMALL_RECIPE["subsets"],
                                                                            "kind": "example", "models": 4}})
    store, whole = _store(recipe, tmp_path / "runs.h5"), _store(recipe, tmp_path / "whole.h5")
    assert run("train", whole, "--workers", "1", "--quiet").exit_code == 0
    shards = []
    for i in (0, 1):
        shards.append(tmp_path / f"shard-{i}.h5")
        assert run("train", store, "--shard", f"{i}/2", "-o", shards[-1], "--workers", "1", "--quiet").exit_code == 0
    merged = tmp_path / "merged.h5"
    assert run("store", "merge", *shards, "-o", merged).exit_code == 0
    with h5py.File(merged, "r") as m, h5py.File(whole, "r") as w:
        assert np.isfinite(w["source_margins"][()]).all() and np.isfinite(w["source_test_margins"][()]).all()
        for name in ("source_margins", "source_test_margins"):
            np.testing.assert_allclose(m[name][()], w[name][()], atol=1e-2, rtol=1e-3)
    assert run("store", "validate", merged).exit_code == 0
