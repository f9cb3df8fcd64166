"""User images in a torchvision-style folder: `PATH/<class>/<image>` or `PATH/{train,test}/<class>/<image>`.

Every image is converted to one uint8 array size so the toolkit can treat the folder like a built-in:
the most common size wins (others are resized bilinearly) and the folder is grayscale (C = 1) only if
every image is grayscale, else RGB (C = 3). A folder without train/ and test/ subfolders is split 80/20 per
class (seeded). Each of these conversions is recorded in the dataset's `notes`, which `dmtoolkit init` prints.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from dmtoolkit.data.base import DataNote, DatasetSource, ImageDataset, register, stratified_test_mask
from dmtoolkit.errors import DataError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")  # torchvision's list
GRAY_MODES = ("1", "L", "LA")
ALPHA_MODES = ("LA", "RGBA", "PA", "La", "RGBa")
TEST_FRACTION = 0.2
SPLIT_SEED = 0


def _images_by_class(root: Path) -> dict[str, list[Path]]:
    """Image files under each class folder of `root`, sorted, skipping folders without images."""
    found = {}
    for class_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        files = sorted(p for p in class_dir.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        if files:
            found[class_dir.name] = files
    return found


def _header(path: Path) -> tuple[tuple[int, int], str]:
    """(width, height) and PIL mode of an image, read from its header only."""
    try:
        with Image.open(path) as im:
            return im.size, im.mode
    except (OSError, UnidentifiedImageError) as exc:
        raise DataError(f"cannot read image {path} ({exc}); remove or replace the file") from exc


def _decode(path: Path, size: tuple[int, int], mode: str) -> np.ndarray:
    """The image converted to `mode` ("L" or "RGB") and resized (bilinear) to `size`, as uint8 (H, W, C)."""
    try:
        with Image.open(path) as im:
            converted = im.convert(mode)
    except (OSError, UnidentifiedImageError) as exc:
        raise DataError(f"cannot read image {path} ({exc}); remove or replace the file") from exc
    if converted.size != size:
        converted = converted.resize(size, Image.Resampling.BILINEAR)
    return np.asarray(converted, dtype=np.uint8).reshape(size[1], size[0], -1)


def _common_format(headers: list[tuple[tuple[int, int], str]]) -> tuple[tuple[int, int], str]:
    """The most common (width, height), and "L" if every image is grayscale else "RGB"."""
    size = Counter(s for s, _ in headers).most_common(1)[0][0]
    return size, "L" if all(m in GRAY_MODES for _, m in headers) else "RGB"


def _plural(count: int, noun: str) -> str:
    return f"{count:,} {noun}{'' if count == 1 else 's'}"


def conversion_notes(root: Path, headers: list[tuple[tuple[int, int], str]], size: tuple[int, int], mode: str,
                     held_out: int | None) -> tuple[DataNote, ...]:
    """What loading the folder changed: resized images, images converted to RGB (and why), alpha dropped, and the
    test split held out when the folder has none (`held_out`: its size, None when train/ and test/ exist)."""
    total, notes = len(headers), []
    other = Counter(s for s, _ in headers if s != size)
    if other:
        sizes = ", ".join(f"{w}x{h} ({n})" for (w, h), n in other.most_common(3)) + (", ..." if len(other) > 3 else "")
        notes.append(DataNote("resize", f"{_plural(sum(other.values()), 'image')} of {total:,} resized (bilinear) to "
                                        f"the most common size {size[0]}x{size[1]}, from {sizes}"))
    if mode == "RGB":
        gray = sum(m in GRAY_MODES for _, m in headers)
        if gray:
            colour = total - gray
            notes.append(DataNote("channels", f"{_plural(gray, 'grayscale image')} of {total:,} converted to RGB "
                                              f"(3 channels) because {_plural(colour, 'image')} "
                                              f"{'is' if colour == 1 else 'are'} in colour: the whole folder is read "
                                              "as 3 channels"))
    alpha = sum(m in ALPHA_MODES for _, m in headers)
    if alpha:
        notes.append(DataNote("channels", f"{_plural(alpha, 'image')} of {total:,} had an alpha (transparency) "
                                          "channel, dropped"))
    if held_out is not None:
        notes.append(DataNote("split", f"{100 * TEST_FRACTION:g}% of {root} ({held_out:,} of {total:,} images, the "
                                       f"same share of every class, seed {SPLIT_SEED}) kept as its test split: the "
                                       "folder has no train/ and test/ subfolders"))
    return tuple(notes)


def load_imagefolder(path: str, split: str) -> ImageDataset:
    """Split `split` of the image folder at `path` (its train/ and test/ folders, else a seeded 80/20 split)."""
    root = Path(path).expanduser()
    if not root.is_dir():
        raise DataError(
            f"imagefolder path {root} does not exist or is not a folder; give PATH laid out as PATH/<class>/<image>"
        )
    has_splits = (root / "train").is_dir() and (root / "test").is_dir()
    parts = (
        {s: _images_by_class(root / s) for s in ("train", "test")} if has_splits else {"all": _images_by_class(root)}
    )
    classes = tuple(sorted({c for part in parts.values() for c in part}))
    if not classes:
        raise DataError(
            f"no images under {root}; expected PATH/<class>/<image> with suffix {', '.join(IMAGE_SUFFIXES)}"
        )
    entries = [(s, classes.index(c), f) for s, part in parts.items() for c, files in part.items() for f in files]
    labels = np.array([label for _, label, _ in entries], dtype=np.int64)
    is_test = (
        np.array([s == "test" for s, _, _ in entries])
        if has_splits
        else stratified_test_mask(labels, TEST_FRACTION, SPLIT_SEED)
    )
    # Size and channels are decided over both splits so that train and test arrays match.
    headers = [_header(f) for _, _, f in entries]
    size, mode = _common_format(headers)
    channels = 1 if mode == "L" else 3
    idx = np.flatnonzero(is_test == (split == "test"))
    images = np.zeros((len(idx), size[1], size[0], channels), np.uint8)
    for k, i in enumerate(idx):
        images[k] = _decode(entries[i][2], size, mode)
    return ImageDataset(
        name=f"imagefolder:{root}:{split}",
        images=images,
        labels=labels[idx],
        class_names=classes,
        example_ids=tuple(f"imagefolder/{entries[i][2].relative_to(root).as_posix()}" for i in idx),
        notes=conversion_notes(root, headers, size, mode, None if has_splits else int(is_test.sum())),
    )


register(DatasetSource("imagefolder", load_imagefolder, takes_argument=True))
