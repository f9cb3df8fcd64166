"""Source batches read from an ffcv beton: the `BatchFactory` a recipe with `source.beton_train` trains with.

Each model's subset (store pool indices, matched to beton rows by example id) is read through ffcv's
`Loader` with `indices=` in RANDOM order (QUASI_RANDOM with subsets is known to crash, ffcv#208), seeded per
model. Writing and reading betons is `dmtoolkit.data.beton`; `dmtoolkit.train.job.source_pool` picks this
factory for a beton recipe.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from dmtoolkit.data.beton import BetonInfo, _ffcv, _fold, _pipelines, beton_info
from dmtoolkit.errors import DataError
from dmtoolkit.train.fit import LoopSettings, step_counts, to_tensor


def beton_stream(info: BetonInfo, rows: np.ndarray, seed: int, batch_size: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Endless (images, labels) batches of exactly `batch_size` from beton `rows`, epoch after epoch.

    ffcv's Loader reads the subset (`indices=rows`) in RANDOM order seeded by `seed` (new order each epoch).
    """
    _, _, loader, _ = _ffcv()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        batches = loader.Loader(str(info.path), batch_size=min(batch_size, len(rows)), num_workers=1,
                                order=loader.OrderOption.RANDOM, seed=int(seed % (2**31 - 1)),
                                indices=np.asarray(rows, dtype=np.int64), drop_last=False,
                                pipelines=_pipelines(info, with_index=False))
    buffer_x: list[np.ndarray] = []
    buffer_y: list[np.ndarray] = []
    held = 0
    while True:
        for x, y in batches:
            buffer_x.append(_fold(np.array(x), info))  # copy: ffcv reuses its batch buffers
            buffer_y.append(np.array(y).reshape(-1).astype(np.int64))
            held += len(buffer_y[-1])
            while held >= batch_size:
                xs, ys = np.concatenate(buffer_x), np.concatenate(buffer_y)
                yield xs[:batch_size], ys[:batch_size]
                buffer_x, buffer_y, held = [xs[batch_size:]], [ys[batch_size:]], held - batch_size


class BetonBatches:
    """A `BatchSource` whose batches ffcv's Loader reads from the beton, model g from rows `beton_rows[g]`."""

    def __init__(self, info: BetonInfo, beton_rows: list[np.ndarray], order_seeds: list[int], settings: LoopSettings,
                 channels: int, resolution: int, device: torch.device) -> None:
        if settings.order != "shuffle":
            raise DataError("training from betons reads batches in ffcv's RANDOM order; set training.order: shuffle")
        self.steps_per_epoch, self.steps = step_counts([len(r) for r in beton_rows], settings)
        self.streams = [beton_stream(info, rows, seed, settings.batch_size) for rows, seed in zip(beton_rows, order_seeds)]
        self.channels, self.resolution, self.device = channels, resolution, device

    def __call__(self, step: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        batches = [next(stream) for stream in self.streams]
        x = torch.stack([to_tensor(images, self.channels, self.resolution, self.device) for images, _ in batches])
        y = torch.from_numpy(np.stack([labels for _, labels in batches])).to(self.device)
        return x, y, torch.ones(y.shape, device=self.device)


class BetonPool:
    """A `BatchFactory` for a source pool held in an ffcv beton: each group's subsets are read by ffcv.

    The store's pool examples (`example_ids`, in pool order) are matched to beton rows by example id,
    so caps applied at init carry over; transfer and scoring still use the store's tensors.
    """

    def __init__(self, beton: str | Path, example_ids: tuple[str, ...] | list[str], *, channels: int,
                 resolution: int, device: torch.device) -> None:
        self.beton = beton_info(beton)
        position = {example_id: row for row, example_id in enumerate(self.beton.example_ids)}
        missing = [e for e in example_ids if e not in position]
        if missing:
            raise DataError(f"{self.beton.path}: {len(missing)} source examples of the store are not in the beton "
                            f"(e.g. {missing[0]!r}); the beton changed since `dmtoolkit init`")
        self.rows = np.array([position[e] for e in example_ids], dtype=np.int64)
        self.channels, self.resolution, self.device = channels, resolution, device

    def __call__(self, subsets: list[np.ndarray], order_seeds: list[int], settings: LoopSettings) -> BetonBatches:
        """Each model's subset (pool indices), read through ffcv's Loader (`indices=`, RANDOM order)."""
        return BetonBatches(self.beton, [self.rows[s] for s in subsets], order_seeds, settings,
                            self.channels, self.resolution, self.device)
