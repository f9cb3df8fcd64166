"""`glyphs`: the source dataset, letters and digits rendered from the real fonts Debian installs.

Rendering (fontTools + Pillow, once, into an npz cache): every .ttf/.otf under the font roots that
maps all digits and Latin letters draws each of its characters (digits, Latin, Greek, Cyrillic) it
really maps (no .notdef boxes) white on black, the ink scaled to fit a 24x24 box and placed in 32x32
by its centre of mass, as MNIST does with 20x20 in 28x28. Cleaning, measured on those renders:

* fonts: symbol fonts that map Latin code points to pictures are dropped by name
  (`SYMBOL_FAMILIES`); a font whose digits+Latin renders are within `COPY_RMS` of a font kept
  before it (more characters first, then path order) is a copy of that design and dropped
  (STIXGeneral = STIX, Nimbus Roman ~ STIX, Latin Modern 10pt ~ CMU, Open Sans ~ Noto Sans, ...);
* classes: two characters are look-alikes when one font draws them within `LOOKALIKE_RMS` of each
  other (median over fonts, average-linkage groups): Latin A / Greek Alpha / Cyrillic A, I / l,
  3 / Cyrillic Ze, S / s, ... Each group keeps its first member in `CHARACTERS` order (digits first,
  so "0".."9" always survive); O and 0, l and 1 stay apart (their glyphs differ);
* images: exact duplicates within a class keep the first; an image drawn under two labels is dropped.

Split: fonts are grouped by design (family name without width/weight/optical-size words, joined with
every family that has a font within `SAME_DESIGN_RMS` of one of its own); whole groups of at most
`MAX_TEST_GROUP` of the fonts, in seeded order, form a ~20% test set.
"""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import re
import sys
import time
import zipfile
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dmtoolkit.atomic import replacing
from dmtoolkit.data.base import DatasetSource, ImageDataset, cache_dir, register
from dmtoolkit.errors import DataError

CACHE_VERSION = 1
SIZE, BOX, RENDER_PX = 32, 24, 64
FONT_ROOTS = (Path("/usr/share/fonts"), Path("/usr/share/texmf/fonts/opentype"))  # lmodern lives under texmf
# One font file of each apt package (under /usr/share), to name the packages that are missing.
FONT_PACKAGES = {
    "fonts-dejavu-core": "fonts/truetype/dejavu/DejaVuSans.ttf",
    "fonts-dejavu-extra": "fonts/truetype/dejavu/DejaVuSerif-Italic.ttf",
    "fonts-liberation2": "fonts/truetype/liberation2/LiberationSans-Regular.ttf",
    "fonts-urw-base35": "fonts/opentype/urw-base35/NimbusSans-Regular.otf",
    "fonts-noto-core": "fonts/truetype/noto/NotoSans-Regular.ttf",
    "fonts-crosextra-carlito": "fonts/truetype/crosextra/Carlito-Regular.ttf",
    "fonts-crosextra-caladea": "fonts/truetype/crosextra/Caladea-Regular.ttf",
    "fonts-open-sans": "fonts/truetype/open-sans/OpenSans-Regular.ttf",
    "fonts-roboto-unhinted": "fonts/truetype/roboto/unhinted/RobotoTTF/Roboto-Regular.ttf",
    "fonts-cantarell": "fonts/opentype/cantarell/Cantarell-Regular.otf",
    "fonts-inter": "fonts/opentype/inter/Inter-Regular.otf",
    "fonts-linuxlibertine": "fonts/opentype/linux-libertine/LinLibertine_R.otf",
    "fonts-go": "fonts/fonts-go/Go-Regular.ttf",
    "fonts-sil-charis": "fonts/truetype/charis/CharisSIL-Regular.ttf",
    "fonts-sil-andika": "fonts/truetype/andika/Andika-Regular.ttf",
    "fonts-sil-gentium": "fonts/truetype/gentium/Gentium-R.ttf",
    "fonts-ebgaramond": "fonts/opentype/ebgaramond/EBGaramond12-Regular.otf",
    "fonts-stix": "fonts/opentype/stix-word/STIX-Regular.otf",
    "fonts-comic-neue": "fonts/opentype/comic-neue/ComicNeue-Regular.otf",
    "fonts-cmu": "fonts/truetype/cmu/cmunrm.ttf",
    "fonts-lmodern": "texmf/fonts/opentype/public/lm/lmroman10-regular.otf",
    "fonts-dkg-handwriting": "fonts/truetype/fifthhorseman/dkg.ttf",
    "fonts-humor-sans": "fonts/truetype/humor-sans/Humor-Sans.ttf",
    "fonts-unifont": "fonts/opentype/unifont/unifont.otf",
}


def _chars(*ranges: tuple[int, int], skip: tuple[int, ...] = ()) -> str:
    return "".join(chr(c) for lo, hi in ranges for c in range(lo, hi + 1) if c not in skip)


# Canonical order = preference inside a look-alike group.
CHARACTERS = (
    _chars((0x30, 0x39))  # digits
    + _chars((0x41, 0x5A), (0x61, 0x7A))  # Latin upper, lower
    + _chars((0x391, 0x3A9), skip=(0x3A2,))  # Greek upper
    + _chars((0x3B1, 0x3C9))  # Greek lower (with final sigma)
    + _chars((0x401, 0x401), (0x410, 0x42F))  # Cyrillic upper (with Yo)
    + _chars((0x430, 0x44F), (0x451, 0x451))  # Cyrillic lower
)
REQUIRED = CHARACTERS[:62]  # a usable font maps every digit and Latin letter
SYMBOL_FAMILIES = frozenset({"D050000L", "Standard Symbols PS", "Linux Biolinum Keyboard O"})
COPY_RMS = 0.10  # below the smallest step between two weights of one family (~0.13)
SAME_DESIGN_RMS = (
    0.14  # joins DejaVu Math + DejaVu Serif (0.131), CMU + Latin Modern (<= 0.133), Inter + Roboto (0.128)
)
LOOKALIKE_RMS = 0.18  # A vs Alpha 0; I vs l 0.15; 3 vs Ze 0.17; S vs s 0.175 | l vs 1 0.19; O vs o 0.21; O vs 0 0.35
MIN_FONTS_FOR_PAIR = 5
TEST_FRACTION, SPLIT_SEED = 0.2, 0
MAX_TEST_GROUP = (
    0.05  # bigger design groups (Inter + Roboto, Computer Modern, Noto Sans) stay in train: test mixes many designs
)
STYLE_WORDS = re.compile(
    r"\b(display|condensed|cond|narrow|demi|thin|light|medium|semibold|extrabold|bold|black|smallcaps|caps|\d+)\b", re.I
)


@dataclass(frozen=True)
class RenderedFont:
    """One font file's renders: `images[k]` draws `chars[k]`."""

    path: str
    family: str
    chars: str
    images: np.ndarray  # uint8 (len(chars), SIZE, SIZE)

    def required_vector(self) -> np.ndarray:
        """Digits and Latin letters as one float vector in [0, 1] (every kept font has them all)."""
        return self.images[[self.chars.index(c) for c in REQUIRED]].reshape(-1).astype(np.float32) / 255


def glyph_cache_path() -> Path:
    """The npz cache file; its name carries CACHE_VERSION, so a changed recipe renders a fresh cache."""
    return cache_dir() / f"glyphs-v{CACHE_VERSION}.npz"


def _fit(ink: np.ndarray) -> np.ndarray | None:
    """Crop to the ink, scale the longer side to BOX, stretch to full contrast, centre by mass in SIZE x SIZE."""
    from PIL import Image

    ys, xs = np.nonzero(ink)
    if len(ys) == 0:
        return None
    crop = ink[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]
    scale = BOX / max(crop.shape)
    h, w = max(1, round(crop.shape[0] * scale)), max(1, round(crop.shape[1] * scale))
    small = np.asarray(Image.fromarray(crop).resize((w, h), Image.Resampling.LANCZOS), dtype=np.float32)
    if small.max() <= 0:
        return None
    small = np.clip(small * (255 / small.max()), 0, 255)
    yy, xx = np.mgrid[:h, :w]
    top = int(np.clip(round(SIZE / 2 - (yy * small).sum() / small.sum()), 0, SIZE - h))
    left = int(np.clip(round(SIZE / 2 - (xx * small).sum() / small.sum()), 0, SIZE - w))
    out = np.zeros((SIZE, SIZE), np.uint8)
    out[top : top + h, left : left + w] = np.round(small).astype(np.uint8)
    return out


def render_font(path: str) -> RenderedFont | None:
    """Every character of CHARACTERS the font maps, rendered; None for unusable fonts (see module doc)."""
    from fontTools.ttLib import TTFont
    from PIL import Image, ImageDraw, ImageFont

    with TTFont(path, lazy=True) as tt:
        cmap = tt.getBestCmap() or {}
        family = tt["name"].getBestFamilyName() or Path(path).stem
    if family in SYMBOL_FAMILIES or any(ord(c) not in cmap for c in REQUIRED):
        return None
    try:
        font = ImageFont.truetype(path, RENDER_PX, layout_engine=ImageFont.Layout.BASIC)
    except OSError:  # bitmap-only fonts cannot be drawn at our size
        return None
    chars, images = [], []
    for ch in CHARACTERS:
        if ord(ch) not in cmap:
            continue
        left, top, right, bottom = (int(v) for v in font.getbbox(ch))
        pad = RENDER_PX // 4
        canvas = Image.new("L", (right - left + 2 * pad, bottom - top + 2 * pad))
        ImageDraw.Draw(canvas).text((pad - left, pad - top), ch, fill=255, font=font)
        image = _fit(np.asarray(canvas))
        if image is not None:
            chars.append(ch)
            images.append(image)
    if any(c not in chars for c in REQUIRED):
        return None
    return RenderedFont(path, family, "".join(chars), np.stack(images))


def _rms(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Root-mean-square distance between the rows of a and b (batched over leading axes)."""
    sq = (a * a).sum(-1)[..., :, None] + (b * b).sum(-1)[..., None, :] - 2 * a @ np.swapaxes(b, -1, -2)
    return np.sqrt(np.maximum(sq, 0) / a.shape[-1])


def _font_distances(fonts: list[RenderedFont]) -> np.ndarray:
    """RMS distance between every two fonts' renders of the digits and Latin letters."""
    vectors = np.stack([f.required_vector() for f in fonts])
    return _rms(vectors, vectors)


def _drop_copies(fonts: list[RenderedFont], dist: np.ndarray) -> tuple[list[int], dict[int, int]]:
    """Indices of fonts kept, and {dropped font: the kept font it copies}."""
    kept: list[int] = []
    copy_of: dict[int, int] = {}
    for i in sorted(range(len(fonts)), key=lambda i: (-len(fonts[i].chars), fonts[i].path)):
        nearest = min(kept, key=lambda k: dist[i, k], default=None)
        if nearest is not None and dist[i, nearest] < COPY_RMS:
            copy_of[i] = nearest
        else:
            kept.append(i)
    return sorted(kept), copy_of


def _lookalike_groups(fonts: list[RenderedFont]) -> list[str]:
    """Groups of look-alike characters (strings in CHARACTERS order, singletons included)."""
    from scipy.cluster.hierarchy import fcluster, linkage
    from scipy.spatial.distance import squareform

    n = len(CHARACTERS)
    per_font = np.full((len(fonts), n, n), np.nan, dtype=np.float32)
    for f, font in enumerate(fonts):
        idx = [CHARACTERS.index(c) for c in font.chars]
        vectors = font.images.reshape(len(idx), -1).astype(np.float32) / 255
        per_font[f][np.ix_(idx, idx)] = _rms(vectors, vectors)
    enough = (~np.isnan(per_font)).sum(0) >= MIN_FONTS_FOR_PAIR
    median = np.where(enough, np.nanmedian(np.where(enough, per_font, 0), axis=0), 1.0)
    median = np.minimum(median, median.T)
    np.fill_diagonal(median, 0)
    cluster = fcluster(linkage(squareform(median, checks=False), "average"), LOOKALIKE_RMS, "distance")
    return ["".join(c for c, k in zip(CHARACTERS, cluster, strict=True) if k == g) for g in dict.fromkeys(cluster)]


def _design_groups(fonts: list[RenderedFont], dist: np.ndarray) -> list[str]:
    """Per font, its design group: the family without style words, merged with families of near-identical fonts."""
    keys = [" ".join(STYLE_WORDS.sub(" ", f.family).split()) or f.family for f in fonts]
    parent = {k: k for k in keys}

    def root(k: str) -> str:
        while parent[k] != k:
            k = parent[k]
        return k

    for i, j in np.argwhere(dist < SAME_DESIGN_RMS):
        a, b = sorted((root(keys[i]), root(keys[j])))
        parent[b] = a
    return [root(k) for k in keys]


def _examples(
    fonts: list[RenderedFont], class_names: tuple[str, ...]
) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[int]]:
    """(font index, label, image) of every render of a kept class, in font order, without exact duplicate
    images: a repeat within one class keeps its first copy, an image drawn under two labels goes entirely.
    Also returns how many images each rule dropped."""
    rows = [
        (f, class_names.index(ch), im)
        for f, font in enumerate(fonts)
        for ch, im in zip(font.chars, font.images, strict=True)
        if ch in class_names
    ]
    digests = [hashlib.sha1(im.tobytes()).digest() for _, _, im in rows]
    labels_of: dict[bytes, set[int]] = {}
    for d, (_, label, _) in zip(digests, rows, strict=True):
        labels_of.setdefault(d, set()).add(label)
    keep, seen, dropped = [], set(), [0, 0]
    for k, d in enumerate(digests):
        if len(labels_of[d]) > 1:
            dropped[1] += 1
        elif d in seen:
            dropped[0] += 1
        else:
            keep.append(rows[k])
        seen.add(d)
    font_of, labels, images = zip(*keep, strict=True)
    return np.array(font_of), np.array(labels, dtype=np.int64), np.stack(images), dropped


def _test_groups(font_groups: list[str]) -> set[str]:
    """Whole design groups, in seeded order, until ~TEST_FRACTION of the fonts; big groups stay in train."""
    sizes = Counter(font_groups)
    test: set[str] = set()
    for group in np.random.default_rng(SPLIT_SEED).permutation(sorted(sizes)):
        if sum(sizes[g] for g in test) >= TEST_FRACTION * len(font_groups):
            break
        if sizes[group] <= MAX_TEST_GROUP * len(font_groups):
            test.add(str(group))
    return test


def _missing_packages() -> list[str]:
    return [pkg for pkg, rel in FONT_PACKAGES.items() if not (Path("/usr/share") / rel).exists()]


def _render_all(paths: list[str]) -> list[RenderedFont | None]:
    """render_font over `paths` on every core, with progress on stderr."""
    workers = max(1, min(os.cpu_count() or 1, len(paths)))
    results: list[RenderedFont | None] = []
    with multiprocessing.get_context("spawn").Pool(workers) as pool:
        for k, result in enumerate(pool.imap(render_font, paths, chunksize=4), 1):
            results.append(result)
            if k % 50 == 0 or k == len(paths):
                print(f"glyphs: rendered {k}/{len(paths)} font files", file=sys.stderr)
    return results


def prepare_glyph_cache(force: bool = False) -> Path:
    """Render, clean and split the glyph dataset into the npz cache (once); returns the cache path."""
    path = glyph_cache_path()
    if path.exists() and not force:
        return path
    missing = _missing_packages()
    if missing:
        raise DataError(f"glyph fonts are missing; install them with `apt-get install -y {' '.join(missing)}`")
    start = time.monotonic()
    paths = sorted(str(p) for root in FONT_ROOTS for p in root.rglob("*") if p.suffix.lower() in (".ttf", ".otf"))
    print(f"glyphs: rendering {len(paths)} font files into {path}", file=sys.stderr)
    usable = [f for f in _render_all(paths) if f is not None]
    dist = _font_distances(usable)
    kept_idx, copy_of = _drop_copies(usable, dist)
    groups = _design_groups(usable, dist)
    fonts = [usable[i] for i in kept_idx]
    font_groups = [groups[i] for i in kept_idx]
    lookalikes = _lookalike_groups(fonts)
    class_names = tuple(sorted((g[0] for g in lookalikes), key=CHARACTERS.index))

    font_of, labels, images, dropped = _examples(fonts, class_names)
    test_groups = _test_groups(font_groups)
    data = {
        "images": images[..., None],
        "labels": labels,
        "example_ids": np.array(
            [f"glyphs/{Path(fonts[f].path).stem}/{class_names[y]}" for f, y in zip(font_of, labels, strict=True)]
        ),
        "class_names": np.array(class_names),
        "is_test": np.array([font_groups[f] in test_groups for f in font_of]),
        "fonts": np.array([f.path for f in fonts]),
        "font_groups": np.array(font_groups),
        "font_is_test": np.array([g in test_groups for g in font_groups]),
        "copies": np.array([f"{usable[d].path} -> {usable[k].path}" for d, k in sorted(copy_of.items())]),
        "lookalikes": np.array([g for g in lookalikes if len(g) > 1]),
        "fonts_found": np.array(len(paths)),
        "images_dropped": np.array(dropped),  # [exact duplicates within a class, images under two labels]
    }
    for split in ("train", "test"):
        data[f"fingerprint_{split}"] = np.array(_from_arrays(data, split).fingerprint)
    with replacing(path, force=True, suffix=".tmp.npz") as tmp:  # NumPy appends .npz to any other name
        np.savez_compressed(tmp, allow_pickle=False, **data)
    n_test = int(data["is_test"].sum())
    print(
        f"glyphs: {len(paths)} files, {len(usable)} usable, {len(fonts)} kept, {len(class_names)} classes, "
        f"{len(labels) - n_test} train / {n_test} test images ({dropped[0]} duplicates and {dropped[1]} images "
        f"under two labels dropped), {time.monotonic() - start:.0f} s",
        file=sys.stderr,
    )
    return path


def _from_arrays(data: Mapping[str, np.ndarray], split: str) -> ImageDataset:
    """The `split` part of the cache's arrays as an ImageDataset."""
    idx = np.flatnonzero(data["is_test"] == (split == "test"))
    ids = data["example_ids"]
    return ImageDataset(
        name=f"glyphs:{split}",
        images=data["images"][idx],
        labels=data["labels"][idx],
        class_names=tuple(str(c) for c in data["class_names"]),
        example_ids=tuple(str(ids[i]) for i in idx),
    )


def load_glyphs(_: str, split: str) -> ImageDataset:
    """The glyph dataset from its cache, rendering the cache first if it is missing (about a minute)."""
    path = prepare_glyph_cache()
    try:
        with np.load(path, allow_pickle=False) as data:
            dataset = _from_arrays(data, split)
            recorded = str(data[f"fingerprint_{split}"])
    except (OSError, KeyError, ValueError, zipfile.BadZipFile) as exc:
        raise DataError(f"glyph cache {path} is unreadable ({exc}); delete it to render it again") from exc
    if dataset.fingerprint != recorded:
        raise DataError(f"glyph cache {path} does not match its recorded fingerprint; delete it to render it again")
    return dataset


register(DatasetSource("glyphs", load_glyphs, prepare=prepare_glyph_cache))
