"""Planted harmful source classes (`planting.harmful`, issue 34): each kind is what it claims, deterministic,
recorded in the store, and never built from target test images."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest

from dmtoolkit.data import ImageDataset, plant
from dmtoolkit.data.planting import to_format
from dmtoolkit.errors import DataError, RecipeError
from dmtoolkit.recipe import PlantingSpec, parse_recipe_dict

from .conftest import SMALL_RECIPE

SOURCE_CLASSES = ("x", "1", "y", "3", "z", "7", "w")
TARGET_CLASSES = ("1", "3", "7")


def _dataset(name: str, n: int, shape: tuple[int, int, int], classes: tuple[str, ...], seed: int,
             low: int = 0, high: int = 200) -> ImageDataset:
    rng = np.random.default_rng(seed)
    labels = np.arange(n, dtype=np.int64) % len(classes)  # every class present
    return ImageDataset(name=name, images=rng.integers(low, high, (n, *shape), dtype=np.uint8), labels=labels,
                        class_names=classes, example_ids=tuple(f"{name}/{i}" for i in range(n)))


SOURCE = _dataset("src", 70, (12, 12, 1), SOURCE_CLASSES, seed=1)
TARGET_TRAIN = _dataset("tgt-train", 60, (8, 8, 3), TARGET_CLASSES, seed=2)
# test images in a grey range no train image has, so any pixel block taken from them would show
TARGET_TEST = _dataset("tgt-test", 30, (8, 8, 3), TARGET_CLASSES, seed=3, low=230, high=256)


def _spec(kinds: list[str], seed: int = 0, **harm: object) -> PlantingSpec:
    return PlantingSpec(leaks=3, decoys=3, near_copies=1, flip_fraction=0.05, seed=seed,
                        harmful={"kinds": kinds, **harm})


def _kind_classes(planted, kind: str) -> list[int]:
    return [k for k, name in enumerate(planted.harm_kind) if name == kind]


def test_planting_is_deterministic_per_seed_and_leaves_leaks_and_flips_alone() -> None:
    kinds = ["conflict", "noise", "shuffled", "duplicate"]
    a, b = (plant(SOURCE, TARGET_TRAIN, TARGET_TEST, _spec(kinds)) for _ in range(2))
    np.testing.assert_array_equal(a.dataset.images, b.dataset.images)
    np.testing.assert_array_equal(a.dataset.labels, b.dataset.labels)
    assert a.dataset.example_ids == b.dataset.example_ids and a.harm_kind == b.harm_kind
    np.testing.assert_array_equal(a.harm_from, b.harm_from)
    others = [plant(SOURCE, TARGET_TRAIN, TARGET_TEST, _spec(kinds, seed=s)).harm_kind for s in range(1, 6)]
    assert any(o != a.harm_kind for o in others)  # another seed corrupts other classes
    # the same seed without harmful classes plants the same leaks, decoys and flips
    plain = plant(SOURCE, TARGET_TRAIN, TARGET_TEST, PlantingSpec(leaks=3, decoys=3, near_copies=1, flip_fraction=0.05))
    n = len(plain.dataset)
    for field in ("leak_target", "decoy_target", "near_copy", "flipped", "original_labels"):
        np.testing.assert_array_equal(getattr(a, field)[:n], getattr(plain, field))
    assert plain.harm_kind is None
    # one class per kind, every kind recorded once; the duplicate is a new class
    assert sorted(k for k in a.harm_kind if k) == sorted(kinds)
    assert len(a.dataset.class_names) == len(SOURCE_CLASSES) + 1 == len(a.harm_kind)


def test_conflict_class_holds_target_train_images_of_another_target_class() -> None:
    planted = plant(SOURCE, TARGET_TRAIN, TARGET_TEST, _spec(["conflict"], images=7, conflict_classes=1))
    [victim] = _kind_classes(planted, "conflict")
    ds, added_from = planted.dataset, int(planted.harm_from[victim])
    names = ds.class_names
    assert names[victim] in TARGET_CLASSES and names[victim] != TARGET_CLASSES[added_from]  # conflicting label
    added = [i for i, e in enumerate(ds.example_ids) if e.startswith("planted/conflict/")]
    assert len(added) == 7 and (ds.labels[added] == victim).all()
    train_formatted = to_format(TARGET_TRAIN.images, 12, 12, 1)
    for i in added:
        j = int(ds.example_ids[i].rsplit("/", 1)[1])
        assert TARGET_TRAIN.labels[j] == added_from
        np.testing.assert_array_equal(ds.images[i], train_formatted[j])
    # nothing in the pool comes from the target test split: its grey range appears in no added image
    assert ds.images[added].max() < 230
    assert planted.leak_target[added].max() == -1 and planted.decoy_target[added].max() == -1


def test_default_conflict_merges_every_other_target_class_in_equal_shares() -> None:
    planted = plant(SOURCE, TARGET_TRAIN, TARGET_TEST, PlantingSpec(harmful={"kinds": ["conflict"], "images": 9}))
    [victim] = _kind_classes(planted, "conflict")
    ds = planted.dataset
    assert planted.harm_from[victim] == -1  # several target classes
    added = [int(e.rsplit("/", 1)[1]) for e in ds.example_ids if e.startswith("planted/conflict/")]
    counts = np.bincount(TARGET_TRAIN.labels[added], minlength=3)
    own = TARGET_CLASSES.index(ds.class_names[victim])
    assert counts[own] == 0 and sorted(counts[[c for c in range(3) if c != own]]) == [4, 5]


def test_conflict_never_draws_from_target_test_even_when_asked_for_many_images() -> None:
    planted = plant(SOURCE, TARGET_TRAIN, TARGET_TEST, PlantingSpec(harmful={"kinds": ["conflict"], "images": 500}))
    added = [i for i, e in enumerate(planted.dataset.example_ids) if e.startswith("planted/conflict/")]
    assert len(added) == 40  # all 20 train images of each other class, capped there; none of the test split
    assert planted.dataset.images[added].max() < 230


def test_noise_shuffled_and_duplicate_do_what_they_say() -> None:
    planted = plant(SOURCE, TARGET_TRAIN, TARGET_TEST, PlantingSpec(harmful={
        "kinds": ["noise", "shuffled", "duplicate"], "noise_sd": 80.0}))
    ds, n = planted.dataset, len(SOURCE)
    [noisy] = _kind_classes(planted, "noise")
    [shuffled] = _kind_classes(planted, "shuffled")
    [duplicate] = _kind_classes(planted, "duplicate")
    rows = lambda k: np.flatnonzero(SOURCE.labels == k)  # noqa: E731
    difference = np.abs(ds.images[rows(noisy)].astype(float) - SOURCE.images[rows(noisy)]).mean()
    assert 40 < difference < 90  # heavy noise (clipped), not a copy
    originals = {SOURCE.images[i].tobytes(): int(SOURCE.labels[i]) for i in range(n)}
    for i in rows(shuffled):
        assert originals[ds.images[i].tobytes()] != shuffled  # an image of another class under this label
    assert (ds.labels[:n] == SOURCE.labels).all()  # (no flips in this spec)
    clean = [k for k in range(len(SOURCE_CLASSES)) if k not in (noisy, shuffled)]
    for k in clean:
        np.testing.assert_array_equal(ds.images[rows(k)], SOURCE.images[rows(k)])
    copied = int(planted.harm_from[duplicate])
    assert duplicate == len(SOURCE_CLASSES) and ds.class_names[duplicate] == SOURCE_CLASSES[copied] + "~"
    assert planted.harm_kind[copied] == ""  # the copied class itself stays clean
    np.testing.assert_array_equal(ds.images[ds.labels == duplicate], SOURCE.images[rows(copied)])
    assert planted.harm_from[noisy] == planted.harm_from[shuffled] == -1


def test_more_harmful_classes_than_source_classes_is_one_line() -> None:
    with pytest.raises(DataError, match="no source class left for a planted noise class"):
        plant(SOURCE, TARGET_TRAIN, TARGET_TEST, PlantingSpec(harmful={"kinds": ["noise"] * 8}))
    no_counterpart = _dataset("src", 20, (12, 12, 1), ("a", "b"), seed=4)
    with pytest.raises(DataError, match="a conflict class needs two target classes with a source counterpart"):
        plant(no_counterpart, TARGET_TRAIN, TARGET_TEST, PlantingSpec(harmful={"kinds": ["conflict"]}))


def test_recipe_key_is_validated_and_leaves_old_hashes_alone() -> None:
    base = dict(SMALL_RECIPE)
    plain = parse_recipe_dict(base)
    assert "harmful" not in json.loads(plain.canonical_json())["planting"]
    planted = parse_recipe_dict({**base, "planting": {**base["planting"], "harmful": {"kinds": ["noise"]}}})
    assert json.loads(planted.canonical_json())["planting"]["harmful"] == {"kinds": ["noise"], "images": 2000,
                                                                            "conflict_classes": None, "noise_sd": 96.0}
    assert planted.hash() != plain.hash()
    with pytest.raises(RecipeError, match=r"planting\.harmful\.kinds\.0: Input should be 'conflict', 'noise', "):
        parse_recipe_dict({**base, "planting": {"harmful": {"kinds": ["poison"]}}})
    with pytest.raises(RecipeError, match=r"planting\.harmful\.kinds: List should have at least 1 item"):
        parse_recipe_dict({**base, "planting": {"harmful": {"kinds": []}}})


def test_store_records_harmful_classes_and_validates(tmp_path: Path) -> None:
    from dmtoolkit.run.prepare import build_run_data
    from dmtoolkit.store import RunStore, create_store
    from dmtoolkit.store_checks import store_summary, validate_store

    recipe = parse_recipe_dict({**SMALL_RECIPE, "planting": {**SMALL_RECIPE["planting"],
                                                              "harmful": {"kinds": ["conflict", "duplicate"],
                                                                          "images": 5}}})
    data = build_run_data(recipe)
    path = create_store(tmp_path / "harm.h5", recipe, data)
    assert validate_store(path) == []
    with RunStore(path) as store:
        planted = store.planted()
        assert planted is not None and planted.harm_kind == data.planted.harm_kind
        names = store.source_class_names
        assert [planted.harm_kind[k] for k in planted.harmful_classes] == sorted(
            ["conflict", "duplicate"], key=planted.harm_kind.index)
        conflict = planted.harm_kind.index("conflict")
        assert names[conflict] in [str(d) for d in range(10)] and planted.harm_from[conflict] == -1  # all digits
        assert names[-1].endswith("~") and planted.harm_kind[-1] == "duplicate"
    summary = str(store_summary(path))
    assert f"2 harmful classes: {names[conflict]} (conflict), {names[-1]} (duplicate)" in summary
    from click.testing import CliRunner

    from dmtoolkit.cli import cli

    for command in (["store", "validate", str(path)], ["store", "info", str(path)]):
        out = CliRunner().invoke(cli, command)
        assert out.exit_code == 0, out.output
    assert f"2 harmful classes: {names[conflict]} (conflict)" in out.output
    # target test images are stored untouched and none is in the pool
    with h5py.File(path, "r") as f:
        pool = {img.tobytes() for img in f["source/images"][()]}
        assert not any(img.tobytes() in pool for img in f["target/images"][()])
    with h5py.File(path, "r+") as f:
        del f["source/planted_harm"]
    assert validate_store(path) == ["dataset 'source/planted_harm' is missing"]


def test_several_conflict_classes_merge_disjoint_target_classes() -> None:
    digits = tuple("123456")
    source = _dataset("src6", 80, (12, 12, 1), ("a", *digits, "b"), seed=5)
    train = _dataset("tgt6", 120, (8, 8, 1), digits, seed=6)
    test = _dataset("tgt6-test", 12, (8, 8, 1), digits, seed=7, low=230, high=256)
    for seed in range(4):
        planted = plant(source, train, test, PlantingSpec(seed=seed, harmful={
            "kinds": ["conflict", "conflict"], "images": 30, "conflict_classes": 2}))
        merged = []
        for number, victim in enumerate(_kind_classes(planted, "conflict")):
            added = [int(e.rsplit("/", 1)[1]) for e in planted.dataset.example_ids
                     if e.startswith("planted/conflict/") and planted.dataset.labels[
                         planted.dataset.example_ids.index(e)] == victim]
            merged.append({source.class_names[victim], *(digits[c] for c in set(train.labels[added].tolist()))})
        assert len(merged) == 2 and all(len(m) == 3 for m in merged) and not merged[0] & merged[1], merged


def test_harmful_classes_are_refused_for_a_beton_source_and_own_data() -> None:
    from dmtoolkit.run.prepare import build_run_data

    recipe = parse_recipe_dict({**SMALL_RECIPE, "source": {"dataset": "glyphs", "beton_train": "x.beton"},
                                "planting": {"harmful": {"kinds": ["noise"]}}})
    with pytest.raises(DataError, match="planting adds or relabels images a source beton does not hold"):
        build_run_data(recipe)
    with pytest.raises(RecipeError, match="a trainer's own data cannot be planted"):
        parse_recipe_dict({"name": "own", "trainer": "examples.digits_mlp:train",
                           "own_data": {"num_units": 3, "target_labels": [0, 1]},
                           "planting": {"harmful": {"kinds": ["noise"]}}})
