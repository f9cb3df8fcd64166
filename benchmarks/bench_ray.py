"""Ray executor vs the local one on this machine: models/min, and Ray's overhead per task.

Prints: Ray start-up time (local instance, no dashboard); the round trip of trivial tasks and of tasks
returning a group's worth of margins (Ray's own overhead per task); models/min of the default recipe
through `train_store` with the local executor (N processes) and with Ray (N CPUs), both on a fresh copy
of the same store, with worker start-up included; and that both wrote the same rows.

    .venv/bin/python benchmarks/bench_ray.py [--models 32] [--workers 2] [--quick]
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from dmtoolkit.recipe import load_recipe
from dmtoolkit.run.driver import train_store
from dmtoolkit.run.executors import make_executor
from dmtoolkit.run.prepare import build_run_data
from dmtoolkit.run.ray_executor import RayExecutor, import_ray
from dmtoolkit.store import RunStore, create_store

RECIPE = Path(__file__).resolve().parent.parent / "dmtoolkit" / "recipes" / "glyphs-to-mnist.yaml"


def _noop(x: int) -> int:
    return x


def _margins(rows: int, targets: int) -> np.ndarray:
    return np.zeros((rows, targets), np.float32)


def task_overhead(ray, tasks: int, rows: int, targets: int) -> tuple[float, float]:
    """Seconds per task (submit -> result in the driver): trivial tasks, and tasks returning (rows, T) floats."""
    noop, margins = ray.remote(num_cpus=1)(_noop), ray.remote(num_cpus=1)(_margins)
    ray.get([noop.remote(i) for i in range(20)])  # warm the worker pool
    started = time.perf_counter()
    ray.get([noop.remote(i) for i in range(tasks)])
    trivial = (time.perf_counter() - started) / tasks
    started = time.perf_counter()
    for i in range(tasks // 4):  # one at a time, as a latency (the driver waits on each)
        ray.get(margins.remote(rows, targets))
    sequential = (time.perf_counter() - started) / (tasks // 4)
    return trivial, sequential


def timed(store: Path, executor) -> tuple[float, int]:
    started = time.perf_counter()
    summary = train_store(store, executor, progress=False)
    return time.perf_counter() - started, summary.written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=int, default=32, help="models per throughput measurement")
    parser.add_argument("--workers", type=int, default=2, help="local processes / Ray CPUs")
    parser.add_argument("--quick", action="store_true", help="16 models")
    args = parser.parse_args()
    models = 16 if args.quick else args.models
    recipe = load_recipe(RECIPE).with_overrides(models=models)
    ray = import_ray()
    with tempfile.TemporaryDirectory() as tmp:
        base = create_store(Path(tmp) / "base.h5", recipe, build_run_data(recipe))
        local_store, ray_store = Path(tmp) / "local.h5", Path(tmp) / "ray.h5"
        shutil.copy(base, local_store)
        shutil.copy(base, ray_store)
        with RunStore(base) as s:
            targets = s.num_targets
        G = recipe.training.models_per_batch
        print(f"default recipe: {models} models in groups of {G} ({models // G} Ray tasks), "
              f"{targets} target examples, {args.workers} workers")

        seconds, written = timed(local_store, make_executor("local", args.workers, "cpu"))
        local_rate = 60 * written / seconds
        print(f"  local executor ({args.workers} processes): {written} models in {seconds:.1f} s "
              f"= {local_rate:.1f} models/min (incl. worker start-up)")

        started = time.perf_counter()
        ray.init(num_cpus=args.workers, include_dashboard=False, log_to_driver=False)
        startup = time.perf_counter() - started
        try:
            trivial, latency = task_overhead(ray, 200, G, targets)
            print(f"  Ray start-up (local, no dashboard): {startup:.1f} s")
            print(f"  Ray overhead per task: {1e3 * trivial:.2f} ms (200 trivial tasks, pipelined); "
                  f"{1e3 * latency:.2f} ms round trip of one task returning {G}x{targets} float32 margins")
            seconds, written = timed(ray_store, RayExecutor(args.workers, "cpu"))
            ray_rate = 60 * written / seconds
            print(f"  Ray executor ({args.workers} CPUs, Ray already up): {written} models in {seconds:.1f} s "
                  f"= {ray_rate:.1f} models/min (incl. payload put + worker context build); "
                  f"with Ray start-up {60 * written / (seconds + startup):.1f} models/min")
        finally:
            ray.shutdown()
        with RunStore(local_store) as a, RunStore(ray_store) as b:
            gap = float(np.nanmax(np.abs(a.margins[()] - b.margins[()])))
        print(f"  Ray / local throughput: {ray_rate / local_rate:.2f}; max |margin difference| {gap:.2g}")


if __name__ == "__main__":
    main()
