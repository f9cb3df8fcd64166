"""dmtoolkit.data.planting: leaks, decoys, near copies and label flips, recorded exactly."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from dmtoolkit.data import ImageDataset, load_dataset, plant, prepare_glyph_cache
from dmtoolkit.data.planting import to_format
from dmtoolkit.errors import DataError
from dmtoolkit.recipe import PlantingSpec


def _dataset(name: str, n: int, shape: tuple[int, int, int], classes: tuple[str, ...], seed: int) -> ImageDataset:
    rng = np.random.default_rng(seed)
    return ImageDataset(
        name=name,
        images=rng.integers(0, 256, (n, *shape), dtype=np.uint8),
        labels=rng.integers(0, len(classes), n).astype(np.int64),
        class_names=classes,
        example_ids=tuple(f"{name}/{i}" for i in range(n)),
    )


SOURCE = _dataset("src", 60, (12, 12, 1), ("x", "3", "y", "7", "1"), seed=1)
TARGET_TRAIN = _dataset("tgt", 40, (8, 8, 3), ("1", "3", "7"), seed=2)
TARGET_TEST = _dataset("tgt", 30, (8, 8, 3), ("1", "3", "7"), seed=3)


def _is_near_copy(image: np.ndarray, original: np.ndarray) -> bool:
    """`image` is `original` shifted by one pixel (zero fill), or differs from it by light noise only."""
    if np.array_equal(image, original):
        return False
    for dy, dx in ((0, 1), (0, -1), (1, 0), (-1, 0)):
        shifted = np.roll(original, (dy, dx), axis=(0, 1))
        if dy:
            shifted[0 if dy > 0 else -1] = 0
        if dx:
            shifted[:, 0 if dx > 0 else -1] = 0
        if np.array_equal(image, shifted):
            return True
    return np.abs(image.astype(int) - original).mean() < 15


def _check_invariants(planted, config: PlantingSpec) -> None:
    n = len(SOURCE)
    ds = planted.dataset
    is_leak, is_decoy = planted.leak_target >= 0, planted.decoy_target >= 0
    assert len(ds) == n + config.leaks + config.decoys
    assert (is_leak.sum(), is_decoy.sum()) == (config.leaks, config.decoys)
    assert not (is_leak & is_decoy).any() and not (is_leak | is_decoy)[:n].any()
    assert (planted.near_copy & is_leak).sum() == config.near_copies
    assert not (planted.near_copy & ~(is_leak | is_decoy)).any()
    assert len(set(planted.leak_target[is_leak])) == config.leaks  # distinct target images
    # originals keep their images; copies carry the same-named class
    np.testing.assert_array_equal(ds.images[:n], SOURCE.images)
    np.testing.assert_array_equal(planted.original_labels[:n], SOURCE.labels)
    for i in np.flatnonzero(is_leak | is_decoy):
        target, j = (TARGET_TEST, planted.leak_target[i]) if is_leak[i] else (TARGET_TRAIN, planted.decoy_target[i])
        assert ds.class_names[planted.original_labels[i]] == target.class_names[target.labels[j]]
        expected = to_format(target.images[j : j + 1], 12, 12, 1)[0]
        if planted.near_copy[i]:
            assert _is_near_copy(ds.images[i], expected)
        else:
            np.testing.assert_array_equal(ds.images[i], expected)
    # flips: the right number, only among originals, always to another class
    assert planted.flipped.sum() == round(config.flip_fraction * n) and not planted.flipped[n:].any()
    assert (ds.labels[planted.flipped] != planted.original_labels[planted.flipped]).all()
    np.testing.assert_array_equal(ds.labels[~planted.flipped], planted.original_labels[~planted.flipped])


@settings(max_examples=40, deadline=None)
@given(
    leaks=st.integers(0, 30),
    decoys=st.integers(0, 40),
    near=st.integers(0, 30),
    flip=st.floats(0, 1, exclude_max=True),  # the recipe allows flip_fraction in [0, 1)
    seed=st.integers(0, 2**32 - 1),
)
def test_planting_records_exactly_what_it_did(leaks: int, decoys: int, near: int, flip: float, seed: int) -> None:
    config = PlantingSpec(leaks=leaks, decoys=decoys, near_copies=min(near, leaks), flip_fraction=flip, seed=seed)
    _check_invariants(plant(SOURCE, TARGET_TRAIN, TARGET_TEST, config), config)


def test_planting_is_deterministic_in_the_seed() -> None:
    config = PlantingSpec(leaks=10, decoys=10, near_copies=4, flip_fraction=0.1, seed=5)
    a, b = (plant(SOURCE, TARGET_TRAIN, TARGET_TEST, config) for _ in range(2))
    assert a.dataset.fingerprint == b.dataset.fingerprint
    for field in ("leak_target", "decoy_target", "near_copy", "flipped", "original_labels"):
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field))
    other = plant(
        SOURCE, TARGET_TRAIN, TARGET_TEST, PlantingSpec(leaks=10, decoys=10, near_copies=4, flip_fraction=0.1, seed=6)
    )
    assert other.dataset.fingerprint != a.dataset.fingerprint


def test_zero_config_is_a_no_op() -> None:
    planted = plant(SOURCE, TARGET_TRAIN, TARGET_TEST, PlantingSpec())
    assert planted.dataset.fingerprint == SOURCE.fingerprint and planted.dataset.example_ids == SOURCE.example_ids
    assert (planted.leak_target == -1).all() and (planted.decoy_target == -1).all()
    assert not planted.near_copy.any() and not planted.flipped.any()
    assert planted.leak_target.dtype == np.int64 and planted.near_copy.dtype == bool


def test_decoys_get_near_copies_in_the_same_proportion() -> None:
    planted = plant(SOURCE, TARGET_TRAIN, TARGET_TEST, PlantingSpec(leaks=10, decoys=20, near_copies=5))
    assert (planted.near_copy & (planted.decoy_target >= 0)).sum() == 10


def test_planting_errors() -> None:
    with pytest.raises(DataError, match=r"target classes \['9'\] have no same-named class"):
        plant(SOURCE, TARGET_TRAIN, _dataset("t", 5, (8, 8, 3), ("1", "9"), 0), PlantingSpec(leaks=1))
    with pytest.raises(DataError, match="exceed the 30 target test images"):
        plant(SOURCE, TARGET_TRAIN, TARGET_TEST, PlantingSpec(leaks=31))
    # counts and ranges are checked when the spec is made (the recipe's `planting` section), before any data
    with pytest.raises(ValidationError, match="near_copies"):
        PlantingSpec(leaks=1, near_copies=2)
    with pytest.raises(ValidationError, match="flip_fraction"):
        PlantingSpec(flip_fraction=1.5)


def test_to_format_converts_size_and_channels() -> None:
    rgb = np.zeros((1, 4, 4, 3), np.uint8)
    rgb[..., 0] = 255
    gray = to_format(rgb, 8, 6, 1)
    assert gray.shape == (1, 8, 6, 1) and gray.dtype == np.uint8 and len(np.unique(gray)) == 1 and gray.max() > 0
    assert to_format(gray, 8, 6, 3).shape == (1, 8, 6, 3)


def test_planting_mnist_into_glyphs() -> None:
    prepare_glyph_cache()
    source = load_dataset("glyphs", "train")
    target_train, target_test = load_dataset("mnist5k", "train"), load_dataset("mnist5k", "test")
    config = PlantingSpec(leaks=20, decoys=20, near_copies=5, flip_fraction=0.02, seed=1)
    planted = plant(source, target_train, target_test, config)
    ds = planted.dataset
    assert ds.images.shape[1:] == (32, 32, 1) and len(ds) == len(source) + 40
    leaks = np.flatnonzero((planted.leak_target >= 0) & ~planted.near_copy)
    for i in leaks:
        j = planted.leak_target[i]
        assert (
            ds.class_names[ds.labels[i]] == target_test.class_names[target_test.labels[j]] == str(target_test.labels[j])
        )
        np.testing.assert_array_equal(ds.images[i], to_format(target_test.images[j : j + 1], 32, 32, 1)[0])
    assert planted.flipped.sum() == round(0.02 * len(source))


def test_copies_filed_by_index_when_class_names_differ() -> None:
    """Targets such as fashion-mnist share no class name with the source: `copy_labels: by-index` files a copy of
    target class k under source class k (and refuses a source with fewer classes than the target)."""
    fashion_train = _dataset("f", 40, (8, 8, 3), ("shirt", "bag", "coat"), seed=4)
    fashion_test = _dataset("f", 30, (8, 8, 3), ("shirt", "bag", "coat"), seed=5)
    with pytest.raises(DataError, match="copy_labels: by-index"):
        plant(SOURCE, fashion_train, fashion_test, PlantingSpec(leaks=3))
    planted = plant(SOURCE, fashion_train, fashion_test, PlantingSpec(leaks=6, decoys=4, copy_labels="by-index"))
    for i in np.flatnonzero(planted.leak_target >= 0):
        assert planted.original_labels[i] == fashion_test.labels[planted.leak_target[i]]
    for i in np.flatnonzero(planted.decoy_target >= 0):
        assert planted.original_labels[i] == fashion_train.labels[planted.decoy_target[i]]
    assert (planted.leak_target >= 0).sum() == 6 and (planted.decoy_target >= 0).sum() == 4
    wide = _dataset("w", 10, (8, 8, 3), tuple("abcdefg"), seed=6)
    with pytest.raises(DataError, match="at least as many source classes as target classes"):
        plant(SOURCE, wide, wide, PlantingSpec(leaks=1, copy_labels="by-index"))


def test_a_key_added_later_keeps_old_recipe_hashes() -> None:
    """Stores made before `planting.copy_labels` existed must keep resuming: at its neutral value the key is
    not hashed; any other value is."""
    from dmtoolkit.recipe import parse_recipe_dict

    base = {"name": "h", "source": {"dataset": "glyphs"}, "target": {"dataset": "mnist5k"}}
    old = parse_recipe_dict(base, origin="test")
    assert "copy_labels" not in old.canonical_json()
    same = parse_recipe_dict({**base, "planting": {"copy_labels": "same-name"}}, origin="test")
    assert same.hash() == old.hash()
    other = parse_recipe_dict({**base, "planting": {"copy_labels": "by-index"}}, origin="test")
    assert other.hash() != old.hash() and '"copy_labels":"by-index"' in other.canonical_json()
