"""Training throughput and transfer quality of the default recipe, measured in one run.

Prints: models/min through `dmtoolkit train` at 1 and 2 workers; the harness overhead against a bare
PyTorch loop doing the same training (one plain, unbatched CNN per model, no store); models/min by
`models_per_batch`; and target accuracy of transferred features vs a linear head on raw pixels vs the
same network left untrained.

    .venv/bin/python benchmarks/bench_train.py [--models 32] [--quick]
"""

from __future__ import annotations

import argparse
import math
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from dmtoolkit.recipe import load_recipe
from dmtoolkit.recipe_overrides import recipe_with
from dmtoolkit.run.driver import train_store
from dmtoolkit.run.executors import make_executor
from dmtoolkit.run.prepare import build_run_data
from dmtoolkit.store import RunStore, create_store
from dmtoolkit.train.baselines import transfer_baselines
from dmtoolkit.train.fit import batch_indices, margins_from_logits
from dmtoolkit.train.job import RunContext
from dmtoolkit.train.transfer import fit_linear_heads

RECIPE = Path(__file__).resolve().parent.parent / "dmtoolkit" / "recipes" / "glyphs-to-mnist.yaml"


def timed_train(store: Path, workers: int) -> tuple[float, int]:
    started = time.perf_counter()
    summary = train_store(store, make_executor("local", workers, "cpu"), progress=False)
    return time.perf_counter() - started, summary.written


def bare_loop_seconds(context: RunContext, rows: list[int]) -> float:
    """Plain PyTorch: for each model its own nn.Sequential CNN, SGD, then a linear head; no harness."""
    recipe, spec = context.recipe, context.recipe.training
    width, hidden, r = recipe.model.width, recipe.model.hidden, recipe.model.resolution
    started = time.perf_counter()
    for i in rows:
        torch.manual_seed(i)
        net = nn.Sequential(
            nn.Conv2d(context.channels, width, 3, padding=1, bias=False), nn.MaxPool2d(2), nn.BatchNorm2d(width), nn.ReLU(),
            nn.Conv2d(width, 2 * width, 3, padding=1, bias=False), nn.MaxPool2d(2), nn.BatchNorm2d(2 * width), nn.ReLU(),
            nn.Flatten(), nn.Linear(2 * width * (r // 4) ** 2, hidden), nn.ReLU(),
        )
        head = nn.Linear(hidden, context.num_source_classes)
        subset = context.subset_examples(i)
        steps = math.ceil(spec.epochs * math.ceil(len(subset) / spec.batch_size))
        order = torch.from_numpy(batch_indices(subset, len(context.pool_x), i, spec.batch_size, steps))
        optimizer = torch.optim.SGD([*net.parameters(), *head.parameters()], lr=spec.lr, momentum=spec.momentum,
                                    weight_decay=spec.weight_decay)
        for step in range(steps):
            idx = order[step]
            loss = F.cross_entropy(head(net(context.pool_x[idx])), context.pool_y[idx])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        net.eval()
        with torch.no_grad():
            train_f, test_f = net(context.target_train_x)[None], net(context.target_test_x)[None]
        w, b, mean, std = fit_linear_heads(train_f, context.target_train_y, context.num_target_classes,
                                           recipe.transfer, [i])
        margins_from_logits(torch.baddbmm(b, (test_f - mean) / std, w), context.target_test_y)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=int, default=32, help="models per throughput measurement")
    parser.add_argument("--quick", action="store_true", help="16 models, fewer variants")
    args = parser.parse_args()
    models = 16 if args.quick else args.models
    recipe = load_recipe(RECIPE).with_overrides(models=models)
    data = build_run_data(recipe)
    with tempfile.TemporaryDirectory() as tmp:
        stores = {w: create_store(Path(tmp) / f"w{w}.h5", recipe, data) for w in (1, 2)}
        print(f"default recipe: {recipe.name}, {models} models, models_per_batch {recipe.training.models_per_batch}")
        rates = {}
        for workers, store in stores.items():
            seconds, written = timed_train(store, workers)
            rates[workers] = 60 * written / seconds
            print(f"  dmtoolkit train --workers {workers}: {written} models in {seconds:.1f} s "
                  f"= {rates[workers]:.1f} models/min (incl. worker start-up)")
        with RunStore(stores[1]) as s:
            accuracy = float(np.mean(s.column("target_accuracy")))
            source_accuracy = float(np.nanmean(s.column("source_accuracy")))
        torch.set_num_threads(1)
        context = RunContext.from_store(stores[1], "cpu")
        G = context.group_size
        rows = list(range(G))
        context.compute_group(0)  # warm-up
        started = time.perf_counter()
        context.compute_group(0)
        ours = (time.perf_counter() - started) / G
        bare = bare_loop_seconds(context, rows) / G
        print(f"  per model, one thread: batched harness compute {ours:.2f} s, bare PyTorch loop {bare:.2f} s "
              f"(ratio ours/bare {ours / bare:.2f})")
        serial_wall = 60 / rates[1]
        print(f"  harness overhead of `train --workers 1` vs its own compute: {serial_wall / ours:.2f}x "
              f"(store writes, start-up, progress)")
        if not args.quick:
            for g in (1, 4, 16):
                variant = recipe_with(RECIPE, {"training.models_per_batch": g})
                ctx = RunContext(variant, context.masks, context.data, "cpu")
                ctx.compute_group(0)
                started = time.perf_counter()
                ctx.compute_group(0)
                per = (time.perf_counter() - started) / g
                print(f"  models_per_batch {g:2d}: {per:.2f} s/model/thread = {60 / per:.1f} models/min/thread")
        baselines = transfer_baselines(context, len(rows))
        print(f"target accuracy (MNIST test, {len(context.target_test_y)} images; head on {len(context.target_train_y)}):")
        print(f"  transferred features (mean of {models} models): {accuracy:.3f}; source accuracy {source_accuracy:.3f}")
        for name, value in baselines.items():
            print(f"  {name}: {value:.3f}")


if __name__ == "__main__":
    main()
