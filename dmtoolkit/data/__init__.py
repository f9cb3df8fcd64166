"""Datasets behind one interface (`load_dataset(spec, split)` -> `ImageDataset`) and ground-truth planting.

Importing the package registers the built-ins: glyphs, mnist5k, digits, fashion-mnist, imagefolder:PATH.
"""

from dmtoolkit.data import builtin, glyphs, imagefolder  # noqa: F401  (importing registers the built-ins)
from dmtoolkit.data.base import ImageDataset, available_datasets, cache_dir, load_dataset, prepare_all
from dmtoolkit.data.glyphs import prepare_glyph_cache
from dmtoolkit.data.planting import PlantedSource, plant

__all__ = [
    "ImageDataset",
    "PlantedSource",
    "available_datasets",
    "cache_dir",
    "load_dataset",
    "plant",
    "prepare_all",
    "prepare_glyph_cache",
]
