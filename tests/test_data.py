"""dmtoolkit.data: the built-in datasets, the glyph cache and the imagefolder loader."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from fontTools.ttLib import TTFont
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from dmtoolkit.data import ImageDataset, available_datasets, load_dataset, prepare_glyph_cache
from dmtoolkit.data import glyphs as glyphs_module
from dmtoolkit.data.base import DatasetSource
from dmtoolkit.errors import DataError

DIGITS = tuple(str(d) for d in range(10))


@pytest.fixture(scope="session")
def glyph_cache() -> Path:
    """The real glyph cache, rendered once if this machine has none yet (about a minute)."""
    return prepare_glyph_cache()


@pytest.fixture(scope="session")
def glyph_splits(glyph_cache: Path) -> dict[str, ImageDataset]:
    return {split: load_dataset("glyphs", split) for split in ("train", "test")}


@pytest.fixture(scope="session")
def glyph_fonts(glyph_cache: Path) -> dict[str, tuple[str, str, set[int]]]:
    """Font file stem -> (design group, family name, code points its cmap maps), for the fonts in the cache."""
    with np.load(glyph_cache) as data:
        fonts, groups = list(data["fonts"]), list(data["font_groups"])
    info = {}
    for path, group in zip(fonts, groups, strict=True):
        with TTFont(str(path), lazy=True) as tt:
            info[Path(path).stem] = (str(group), tt["name"].getBestFamilyName(), set(tt.getBestCmap()))
    return info


def test_glyphs_shapes_and_values(glyph_splits: dict[str, ImageDataset]) -> None:
    for split, ds in glyph_splits.items():
        assert ds.name == f"glyphs:{split}"
        assert ds.images.dtype == np.uint8 and ds.images.shape[1:] == (32, 32, 1)
        assert ds.labels.dtype == np.int64 and ds.labels.min() >= 0 and ds.labels.max() < len(ds.class_names)
        # every glyph is stretched to full contrast, on a black background
        assert (ds.images.reshape(len(ds), -1).max(1) == 255).all()
        assert (ds.images[:, 0, :, 0] == 0).mean() > 0.95
    train, test = glyph_splits["train"], glyph_splits["test"]
    assert train.class_names == test.class_names
    assert 120 <= len(train.class_names) <= 150
    assert set(DIGITS) <= set(train.class_names)
    assert len(train) > 20_000 and 0.15 < len(test) / (len(train) + len(test)) < 0.3
    # every class is drawn by many fonts in train
    assert np.bincount(train.labels, minlength=len(train.class_names)).min() >= 100


def test_glyph_lookalikes_keep_one_class(glyph_splits: dict[str, ImageDataset]) -> None:
    names = set(glyph_splits["train"].class_names)
    assert "A" in names and "\u0391" not in names and "\u0410" not in names  # Latin A kept; Greek/Cyrillic A dropped
    assert "O" in names and "0" in names and "\u041e" not in names
    assert "3" in names and "\u0417" not in names  # digit 3 kept over Cyrillic Ze
    assert not {"I", "l"} <= names


def test_glyph_split_shares_no_font_family(glyph_splits: dict[str, ImageDataset], glyph_fonts: dict) -> None:
    def fonts_of(ds: ImageDataset) -> set[str]:
        return {i.split("/")[1] for i in ds.example_ids}

    train_fonts, test_fonts = fonts_of(glyph_splits["train"]), fonts_of(glyph_splits["test"])
    assert not train_fonts & test_fonts
    for k in (0, 1):  # design group, family name
        assert not {glyph_fonts[f][k] for f in train_fonts} & {glyph_fonts[f][k] for f in test_fonts}


def test_glyphs_only_drawn_from_mapped_code_points(glyph_splits: dict[str, ImageDataset], glyph_fonts: dict) -> None:
    for ds in glyph_splits.values():
        for example_id in ds.example_ids:
            _, font, char = example_id.split("/")
            assert ord(char) in glyph_fonts[font][2], example_id


def test_glyphs_have_no_duplicate_images(glyph_splits: dict[str, ImageDataset]) -> None:
    seen: dict[bytes, int] = {}
    for ds in glyph_splits.values():
        for image, label in zip(ds.images, ds.labels, strict=True):
            digest = hashlib.sha1(image.tobytes()).digest()
            assert digest not in seen, f"duplicate image (labels {seen.get(digest)} and {label})"
            seen[digest] = int(label)


def test_glyph_fingerprint_is_recorded_and_stable_across_processes(glyph_cache: Path, glyph_splits: dict) -> None:
    with np.load(glyph_cache) as data:
        recorded = str(data["fingerprint_train"])
        assert len(data["fonts"]) > 200
    assert glyph_splits["train"].fingerprint == recorded == load_dataset("glyphs", "train").fingerprint
    code = "from dmtoolkit.data import load_dataset; print(load_dataset('glyphs', 'train').fingerprint)"
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert other == recorded


def test_glyph_cache_corrupt_is_a_data_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DMTOOLKIT_CACHE", str(tmp_path))
    glyphs_module.glyph_cache_path().write_bytes(b"not an npz")
    with pytest.raises(DataError, match="delete it"):
        load_dataset("glyphs", "train")


def test_glyphs_missing_fonts_name_the_packages(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DMTOOLKIT_CACHE", str(tmp_path))
    monkeypatch.setitem(glyphs_module.FONT_PACKAGES, "fonts-not-installed", "fonts/truetype/none/None.ttf")
    with pytest.raises(DataError, match=r"apt-get install -y fonts-not-installed"):
        load_dataset("glyphs", "train")
    assert not list(tmp_path.iterdir())


def _tiny_dataset(images: np.ndarray, labels: np.ndarray) -> ImageDataset:
    return ImageDataset("tiny", images, labels, ("a", "b", "c"), tuple(f"tiny/{i}" for i in range(len(labels))))


@settings(max_examples=50, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(1, 6), position=st.integers(0, 10**6))
def test_fingerprint_changes_when_one_pixel_changes(seed: int, n: int, position: int) -> None:
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n, 4, 5, 1), dtype=np.uint8)
    labels = rng.integers(0, 3, n).astype(np.int64)
    base = _tiny_dataset(images, labels)
    assert base.fingerprint == _tiny_dataset(images.copy(), labels.copy()).fingerprint
    changed = images.copy()
    changed.reshape(-1)[position % changed.size] ^= 1
    assert _tiny_dataset(changed, labels).fingerprint != base.fingerprint
    relabelled = labels.copy()
    relabelled[0] = (relabelled[0] + 1) % 3
    assert _tiny_dataset(images, relabelled).fingerprint != base.fingerprint


def test_subset_by_indices_and_mask() -> None:
    rng = np.random.default_rng(0)
    ds = _tiny_dataset(rng.integers(0, 256, (6, 2, 2, 1), dtype=np.uint8), np.array([0, 1, 2, 0, 1, 2]))
    by_index = ds.subset([4, 1])
    assert by_index.example_ids == ("tiny/4", "tiny/1") and by_index.labels.tolist() == [1, 1]
    np.testing.assert_array_equal(by_index.images, ds.images[[4, 1]])
    by_mask = ds.subset(ds.labels == 2)
    assert by_mask.example_ids == ("tiny/2", "tiny/5") and by_mask.class_names == ds.class_names


def test_dataset_validates_its_arrays() -> None:
    with pytest.raises(ValueError, match="unique example ids"):
        ImageDataset("x", np.zeros((2, 2, 2, 1), np.uint8), np.zeros(2, np.int64), ("a",), ("same", "same"))
    with pytest.raises(ValueError, match="labels outside"):
        ImageDataset("x", np.zeros((1, 2, 2, 1), np.uint8), np.array([3]), ("a",), ("x/0",))


def test_mnist5k_split() -> None:
    train, test = load_dataset("mnist5k", "train"), load_dataset("mnist5k", "test")
    assert (len(train), len(test)) == (4000, 1000)
    assert train.class_names == test.class_names == DIGITS
    assert train.images.shape[1:] == (28, 28, 1) and train.images.dtype == np.uint8 and train.images.max() == 255
    assert not set(train.example_ids) & set(test.example_ids)
    assert np.bincount(train.labels).tolist() == [400] * 10 and np.bincount(test.labels).tolist() == [100] * 10
    assert load_dataset("mnist5k", "test").fingerprint == test.fingerprint


def test_digits_split() -> None:
    train, test = load_dataset("digits", "train"), load_dataset("digits", "test")
    assert len(train) + len(test) == 1797 and 0.18 < len(test) / 1797 < 0.22
    assert train.images.shape[1:] == (8, 8, 1) and train.images.max() == 255
    assert train.class_names == DIGITS and not set(train.example_ids) & set(test.example_ids)


def test_fashion_mnist_uses_its_own_split() -> None:
    train, test = load_dataset("fashion-mnist", "train"), load_dataset("fashion-mnist", "test")
    assert (len(train), len(test)) == (60_000, 10_000)
    assert (
        train.images.shape[1:] == (28, 28, 1) and train.class_names[0] == "T-shirt/top" and len(train.class_names) == 10
    )
    assert np.bincount(test.labels).tolist() == [1000] * 10


def _write_image(path: Path, size: tuple[int, int], mode: str = "L", value: int = 200) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, value if mode == "L" else (value, 0, 0)).save(path)


def test_imagefolder_without_split_folders(tmp_path: Path) -> None:
    for k in range(10):
        _write_image(tmp_path / "cat" / f"{k}.png", (12, 10))
        _write_image(tmp_path / "dog" / f"{k}.png", (12, 10), value=50)
    _write_image(tmp_path / "dog" / "big.png", (24, 20))  # resized to the common size
    (tmp_path / "empty").mkdir()  # a folder without images is no class
    train, test = load_dataset(f"imagefolder:{tmp_path}", "train"), load_dataset(f"imagefolder:{tmp_path}", "test")
    assert train.class_names == ("cat", "dog")
    assert train.images.shape[1:] == (10, 12, 1) and len(train) + len(test) == 21 and len(test) == 4
    assert not set(train.example_ids) & set(test.example_ids)
    assert {train.images[i].max() for i in range(len(train)) if train.labels[i] == 0} == {200}


def test_imagefolder_with_split_folders_and_rgb(tmp_path: Path) -> None:
    _write_image(tmp_path / "train" / "a" / "1.png", (8, 8), "RGB")
    _write_image(tmp_path / "train" / "b" / "1.jpg", (8, 8))
    _write_image(tmp_path / "test" / "b" / "2.png", (8, 8))
    train, test = load_dataset(f"imagefolder:{tmp_path}", "train"), load_dataset(f"imagefolder:{tmp_path}", "test")
    assert train.class_names == test.class_names == ("a", "b")
    assert train.images.shape == (2, 8, 8, 3) and test.images.shape == (1, 8, 8, 3)
    assert test.labels.tolist() == [1] and test.example_ids == ("imagefolder/test/b/2.png",)
    assert train.images[train.labels.tolist().index(0)][0, 0].tolist() == [200, 0, 0]


def test_imagefolder_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        load_dataset(f"imagefolder:{tmp_path / 'missing'}", "train")
    (tmp_path / "cls").mkdir()
    with pytest.raises(DataError, match="no images under"):
        load_dataset(f"imagefolder:{tmp_path}", "train")
    (tmp_path / "cls" / "broken.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match=r"cannot read image .*broken\.png"):
        load_dataset(f"imagefolder:{tmp_path}", "train")
    with pytest.raises(DataError, match="imagefolder:PATH"):
        load_dataset("imagefolder", "train")


def test_unknown_dataset_and_split_messages() -> None:
    assert {"glyphs", "mnist5k", "digits", "fashion-mnist", "imagefolder:PATH"} <= set(available_datasets())
    with pytest.raises(
        DataError, match=r"unknown dataset 'cifar'; use one of: .*glyphs.*imagefolder:PATH.*mnist5k"
    ) as info:
        load_dataset("cifar", "train")
    assert "\n" not in str(info.value)
    with pytest.raises(DataError, match="unknown split 'valid'"):
        load_dataset("digits", "valid")
    with pytest.raises(DataError, match="takes no argument"):
        load_dataset("digits:x", "train")


def test_recipe_classes_keep_and_relabel_in_given_order(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from dmtoolkit.cli import cli
    from dmtoolkit.recipe import parse_recipe_dict
    from dmtoolkit.run.prepare import build_run_data

    recipe = parse_recipe_dict({"name": "t", "source": {"dataset": "digits", "classes": ["7", "2", "9"]},
                                "target": {"dataset": "digits"}})
    data = build_run_data(recipe)
    assert data.source_class_names == ("7", "2", "9")
    full = load_dataset("digits", "train")
    for new, name in enumerate(("7", "2", "9")):
        old = full.class_names.index(name)
        np.testing.assert_array_equal(data.source_pool.images[data.source_pool.labels == new],
                                      full.images[full.labels == old])
    assert set(np.unique(data.source_test.labels)) == {0, 1, 2}
    bad = parse_recipe_dict({"name": "t", "source": {"dataset": "digits", "classes": ["7", "Q"]},
                             "target": {"dataset": "digits"}})
    with pytest.raises(DataError, match=r"source.classes: unknown class\(es\) 'Q' in digits"):
        build_run_data(bad)
    listed = CliRunner().invoke(cli, ["data", "list", "digits"])
    assert listed.exit_code == 0 and listed.output.split() == list(full.class_names)


# --- datasets joined with "+" (a source pool with distractors) ---------------------------------------
def _fake_source(name: str, size: int, channels: int, classes: tuple[str, ...], n: int = 6) -> DatasetSource:
    def load(_: str, split: str) -> ImageDataset:
        rng = np.random.default_rng(len(split) + size)
        return ImageDataset(name=f"{name}:{split}",
                            images=rng.integers(1, 256, (n, size, size, channels), dtype=np.uint8),
                            labels=np.arange(n, dtype=np.int64) % len(classes), class_names=classes,
                            example_ids=tuple(f"{name}/{split}/{i}" for i in range(n)))
    return DatasetSource(name, load)


@pytest.fixture
def fake_parts(monkeypatch: pytest.MonkeyPatch) -> None:
    from dmtoolkit.data import base

    registry = dict(base._REGISTRY)
    registry["big"] = _fake_source("big", 8, 1, ("0", "1"))
    registry["small"] = _fake_source("small", 5, 1, ("0", "a", "b"))
    registry["colour"] = _fake_source("colour", 8, 3, ("x", "y"))
    monkeypatch.setattr(base, "_REGISTRY", registry)


def test_joined_datasets_keep_every_image_centred_with_distinct_classes(fake_parts: None) -> None:
    big, small = load_dataset("big", "test"), load_dataset("small", "test")
    joined = load_dataset("big+small", "test")
    assert joined.name == "big+small:test" and len(joined) == len(big) + len(small)
    assert joined.class_names == ("0", "1", "small:0", "small:a", "small:b")
    assert joined.example_ids == big.example_ids + small.example_ids
    np.testing.assert_array_equal(joined.images[:6], big.images)
    np.testing.assert_array_equal(joined.labels, np.concatenate([big.labels, small.labels + 2]))
    padded = joined.images[6:]
    assert padded.shape == (6, 8, 8, 1)
    np.testing.assert_array_equal(padded[:, 1:6, 1:6], small.images)  # 5 -> 8: 1 dark row/column before, 2 after
    outside = padded.copy()
    outside[:, 1:6, 1:6] = 0
    assert not outside.any()
    assert [n.kind for n in joined.notes] == ["resize"] and "small images (5×5) padded" in joined.notes[0].text
    for name, label in zip(joined.class_names, range(5), strict=True):  # every class is used by its own images
        assert (joined.labels == label).any(), name


def test_joined_grayscale_becomes_rgb_beside_colour(fake_parts: None) -> None:
    joined = load_dataset("colour+big", "train")
    assert joined.images.shape[1:] == (8, 8, 3)
    gray = load_dataset("big", "train").images
    np.testing.assert_array_equal(joined.images[6:], np.repeat(gray, 3, axis=3))
    assert [n.kind for n in joined.notes] == ["channels"]


def test_joined_dataset_errors(fake_parts: None) -> None:
    with pytest.raises(DataError, match="empty part"):
        load_dataset("big++small", "train")
    with pytest.raises(DataError, match="names a dataset twice"):
        load_dataset("big+big", "train")
    with pytest.raises(DataError, match="unknown dataset 'nope'"):
        load_dataset("big+nope", "train")


def test_joined_spec_keeps_a_plus_inside_a_folder_path() -> None:
    from dmtoolkit.data.base import dataset_parts

    assert dataset_parts("glyphs+fashion-mnist") == ["glyphs", "fashion-mnist"]
    assert dataset_parts("glyphs+imagefolder:/data/a+b") == ["glyphs", "imagefolder:/data/a+b"]
    assert dataset_parts("imagefolder:/data/a+b") == ["imagefolder:/data/a+b"]


def test_glyphs_with_fashion_distractors_reach_a_practitioners_pool() -> None:
    """The built-in 50k-pool recipe's source: every glyph plus 2,500 Fashion-MNIST images per class."""
    from dmtoolkit.recipe import load_recipe
    from dmtoolkit.run.prepare import build_run_data

    recipe = load_recipe(Path(__file__).parents[1] / "dmtoolkit/recipes/glyphs-fashion-pool-50k.yaml")
    data = build_run_data(recipe)
    fashion = np.array([c.startswith("fashion-mnist:") for c in data.source_class_names])
    ids = np.array([i.startswith("fashion-mnist/") for i in data.source_example_ids])
    assert len(data.source_example_ids) >= 50_000 and ids.sum() == 25_000
    assert len(data.source_class_names) == 145 and fashion.sum() == 10
