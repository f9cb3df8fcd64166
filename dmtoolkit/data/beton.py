"""ffcv betons: write any dataset to a `.beton` and read one back (training from one: `dmtoolkit.train.betons`).

A beton written here has three fields: `image`, `label` (IntField) and `index` (IntField, the row).
Images are stored exactly by default as an `NDArrayField` of uint8 (H, W, C), which keeps grayscale
as one channel; `rgb-raw` (exact) and `rgb-jpg` (lossy, small) use ffcv's `RGBImageField`, for which
grayscale is repeated to 3 channels (and folded back to one channel when read). A JSON sidecar
`OUT.beton.json` keeps what a beton cannot: class names, example ids, the original channel count and
the dataset's fingerprint. A beton without a sidecar (written by other tools) is still readable:
classes are named by number and examples by row.

When a recipe's source names betons, `dmtoolkit init` reads them into the store as usual (caps
apply; planting is refused, since planted images are not in the beton), and source training then
reads each model's subset through ffcv's `Loader` with `indices=` (order RANDOM: QUASI_RANDOM with
subsets is known to crash, ffcv#208), seeded per model: `dmtoolkit.train.betons.BetonPool` is the
`BatchFactory` that `dmtoolkit.train.job.source_pool` hands the training loop for such a recipe. Target
data are read into the store at init
and used from there (the target is never subsampled). ffcv is optional: pip install 'dmtoolkit[ffcv]'.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dmtoolkit.atomic import check_output, replacing, write_text_atomic
from dmtoolkit.data.base import ImageDataset
from dmtoolkit.errors import DataError
from dmtoolkit.recipe import DataSpec
from dmtoolkit.text_input import read_text_input

IMAGE_FIELDS = ("ndarray", "rgb-raw", "rgb-jpg")
SIDECAR_FORMAT = "dmtoolkit.beton"
FFCV_MISSING = "ffcv betons need ffcv: pip install 'dmtoolkit[ffcv]' (after apt-get install libopencv-dev libturbojpeg0-dev pkg-config)"


def _ffcv() -> Any:
    try:
        import ffcv  # noqa: F401  (slow: ~5 s)
        from ffcv import fields, loader, writer
        from ffcv.fields import decoders
    except ImportError:
        raise DataError(FFCV_MISSING) from None
    return fields, decoders, loader, writer


def sidecar_path(beton: str | Path) -> Path:
    beton = Path(beton)
    return beton.with_name(beton.name + ".json")


class _Rows:
    """The indexed dataset ffcv's writer walks: (image, label, index) per row."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, rgb: bool) -> None:
        self.images, self.labels, self.rgb = images, labels, rgb

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[np.ndarray, int, int]:
        image = self.images[i]
        if self.rgb and image.shape[-1] == 1:
            image = np.repeat(image, 3, axis=-1)
        return np.ascontiguousarray(image), int(self.labels[i]), int(i)


def write_beton(dataset: ImageDataset, out: str | Path, *, image_field: str = "ndarray", workers: int = 1,
                force: bool = False) -> Path:
    """Write `dataset` to the beton `out` (plus its JSON sidecar), atomically (temporary file, then rename),
    through the output guard (`force=False` refuses an existing beton)."""
    if image_field not in IMAGE_FIELDS:
        raise DataError(f"unknown image field {image_field!r}; use one of {', '.join(IMAGE_FIELDS)}")
    if len(dataset) == 0:
        raise DataError(f"{dataset.name}: no examples to write")
    out = Path(out)
    check_output(out, force=force)
    check_output(sidecar_path(out), force=True)  # a folder or FIFO where the sidecar goes: refused before the write
    fields, _, _, writer = _ffcv()
    out.parent.mkdir(parents=True, exist_ok=True)
    height, width, channels = dataset.images.shape[1:]
    if image_field == "ndarray":
        image = fields.NDArrayField(dtype=np.dtype("uint8"), shape=(height, width, channels))
    else:
        image = fields.RGBImageField(write_mode="raw" if image_field == "rgb-raw" else "jpg")
    with replacing(out, force=force) as tmp:
        w = writer.DatasetWriter(str(tmp), {"image": image, "label": fields.IntField(), "index": fields.IntField()},
                                 num_workers=workers)
        w.from_indexed_dataset(_Rows(dataset.images, dataset.labels, rgb=image_field != "ndarray"))
    sidecar = {
        "format": SIDECAR_FORMAT, "version": 1, "dataset": dataset.name, "image_field": image_field,
        "shape": [height, width, channels], "class_names": list(dataset.class_names),
        "example_ids": list(dataset.example_ids), "fingerprint": dataset.fingerprint,
    }
    write_text_atomic(sidecar_path(out), json.dumps(sidecar), force=True)  # belongs to the beton just written
    return out


@dataclass(frozen=True)
class BetonInfo:
    """What the sidecar (or, without one, the beton itself) says about a beton."""

    path: Path
    size: int
    image_field: str
    channels: int
    class_names: tuple[str, ...]
    example_ids: tuple[str, ...]


def beton_info(path: str | Path) -> BetonInfo:
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: beton not found (write one with `dmtoolkit data write-beton`)")
    _ffcv()
    from ffcv.reader import Reader

    try:
        reader = Reader(str(path))
    except Exception as error:  # ffcv raises assorted errors on foreign files
        raise DataError(f"{path}: not a readable ffcv beton ({type(error).__name__}: {error})") from None
    names = set(reader.field_names)
    if not {"image", "label"} <= names:
        raise DataError(f"{path}: beton needs fields 'image' and 'label', it has {sorted(names)}")
    size = int(reader.num_samples)
    labels = np.asarray(reader.metadata[f"f{list(reader.field_names).index('label')}"]).reshape(size, -1)[:, 0]
    field_name = type(reader.handlers["image"]).__name__
    sidecar = sidecar_path(path)
    if sidecar.is_file():
        try:
            meta = json.loads(read_text_input(sidecar, "beton sidecar", limit=1 << 30, error=DataError))
            if not isinstance(meta, dict):
                raise ValueError
            _ = meta["example_ids"], meta["image_field"], meta["shape"][2], meta["class_names"]
        except (ValueError, KeyError, IndexError, TypeError):
            raise DataError(f"{sidecar}: not a beton sidecar (JSON with format, example_ids, image_field, shape, "
                            "class_names); delete it or rewrite the beton") from None
        if meta.get("format") != SIDECAR_FORMAT or len(meta["example_ids"]) != size:
            raise DataError(f"{sidecar}: does not describe {path} (other format or size); delete it or rewrite the beton")
        return BetonInfo(path, size, meta["image_field"], int(meta["shape"][2]), tuple(meta["class_names"]),
                         tuple(meta["example_ids"]))
    image_field = "ndarray" if field_name == "NDArrayField" else "rgb-raw"
    classes = tuple(str(k) for k in range(int(labels.max()) + 1)) if size else ()
    return BetonInfo(path, size, image_field, 0, classes, tuple(f"{path.stem}#{i}" for i in range(size)))


def _pipelines(info: BetonInfo, with_index: bool) -> dict[str, Any]:
    _, decoders, _, _ = _ffcv()
    image = decoders.NDArrayDecoder() if info.image_field == "ndarray" else decoders.SimpleRGBImageDecoder()
    pipelines: dict[str, Any] = {"image": [image], "label": [decoders.IntDecoder()]}
    pipelines["index"] = [decoders.IntDecoder()] if with_index else None
    return pipelines


def _fold(images: np.ndarray, info: BetonInfo) -> np.ndarray:
    """Back to the original channel count: grayscale written as RGB becomes one channel again."""
    if info.channels == 1 and images.shape[-1] == 3:
        return images[..., :1] if info.image_field == "rgb-raw" else \
            np.round(images.astype(np.float32).mean(axis=-1, keepdims=True)).astype(np.uint8)
    return images


def read_beton(path: str | Path, name: str | None = None) -> ImageDataset:
    """The whole beton as an `ImageDataset` (read in row order through ffcv's Loader)."""
    info = beton_info(path)
    _, _, loader, _ = _ffcv()
    images: np.ndarray | None = None
    labels = np.zeros(info.size, np.int64)
    seen = np.zeros(info.size, bool)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        batches = loader.Loader(str(info.path), batch_size=min(512, info.size), num_workers=1,
                                order=loader.OrderOption.SEQUENTIAL, drop_last=False,
                                pipelines=_pipelines(info, with_index=True))
        for x, y, idx in batches:
            x, rows = _fold(np.asarray(x), info), np.asarray(idx).reshape(-1)
            if images is None:
                images = np.zeros((info.size, *x.shape[1:]), np.uint8)
            images[rows], labels[rows], seen[rows] = x, np.asarray(y).reshape(-1), True
    if images is None or not seen.all():
        raise DataError(f"{path}: beton rows are missing or its index field is wrong; rewrite it")
    return ImageDataset(name or f"beton:{path}", images, labels, info.class_names, info.example_ids)


def load_spec_from_betons(spec: DataSpec, role: str) -> tuple[ImageDataset, ImageDataset]:
    """(train, test) of a recipe's DataSpec that names betons: both must be given."""
    if not (spec.beton_train and spec.beton_test):
        raise DataError(f"{role}: name both beton_train and beton_test (write them with `dmtoolkit data write-beton`)")
    return (read_beton(spec.beton_train, f"{spec.dataset} (beton {spec.beton_train})"),
            read_beton(spec.beton_test, f"{spec.dataset} (beton {spec.beton_test})"))
