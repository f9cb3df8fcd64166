"""Feature-space similarity of source and target images, as the transferred model sees them.

Pixels say whether two images are the same picture; features say whether the network treats them as the
same thing. One source model is trained on the whole pool with the run's own recipe (architecture, loop,
a fixed seed), both images are embedded at the transfer's feature layer, standardised as the transfer head
standardises them (mean and floored std over the target training images), and compared by cosine. A copy
scores near 1 in both; a look-alike scores high in features only.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from dmtoolkit.capabilities import Capability
from dmtoolkit.devices import training_threads
from dmtoolkit.store import RunStore
from dmtoolkit.train.fit import batched_outputs
from dmtoolkit.train.job import RunContext
from dmtoolkit.train.transfer import standardisation

FEATURE_SEED = 20_221_207
"""Seed of the one full-pool model (fixed, so the similarity of a store is reproducible)."""


@dataclass(frozen=True)
class FeatureSimilarity:
    """Cosine similarity (P, T) of standardised features: pool example × target test example."""

    matrix: np.ndarray
    layer: str
    seed: int
    seconds: float


def feature_similarity(store: RunStore, *, device: str | None = "cpu", seed: int = FEATURE_SEED) -> FeatureSimilarity:
    """Train one model on the whole pool with the store's recipe and compare every pool and target test image."""
    import time

    started = time.perf_counter()
    store.require(Capability.BUILTIN_NETWORKS, "leakage --features")
    recipe, data = store.recipe, store.run_data()
    everything = np.ones((1, len(data.source_pool.labels)), bool)
    context = RunContext(recipe, everything, data, device)
    layer = recipe.transfer.feature_layer
    with training_threads():  # the driver's thread count: otherwise the network (and every score) follows the machine's
        model = context.train_source_models([np.arange(everything.shape[1])], [seed])
        model.eval()
        with torch.no_grad():
            embed = lambda x: batched_outputs(lambda y: model.features(y, layer), x, 1)  # noqa: E731
            mean, std = standardisation(embed(context.target_train_x))
            pool = torch.nn.functional.normalize(((embed(context.pool_x) - mean) / std)[0], dim=1)
            target = torch.nn.functional.normalize(((embed(context.target_test_x) - mean) / std)[0], dim=1)
            matrix = (pool @ target.T).double().cpu().numpy()
    return FeatureSimilarity(matrix, layer, seed, time.perf_counter() - started)
