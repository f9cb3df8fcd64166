"""Does every GPU path give the CPU's answer, and how much faster is it? One short script for a machine with CUDA.

On each of two devices (default: cuda, then cpu) it runs, with the same inputs:

- the lasso path (`datamodels`) on a store-sized problem (2,048 models × 400 units × 64 targets);
- difference of means and the regression estimator on a class-sized problem (1,024 × 36 × 1,000);
- a few training groups of the default class recipe (`glyphs-to-mnist.yaml`: train, transfer, margins).

and prints, per component, the largest difference between the two devices against a stated tolerance and
the speed ratio (seconds on the second device / seconds on the first). The estimators are deterministic
linear algebra, so they must agree to float32 rounding; training is not bit-reproducible across devices
(cuDNN kernels, summation order), so it is held to agreement of target accuracy and of the margins'
ranking. Exit 1 if any check fails. Where CUDA is absent it says so in one line and exits 0.

    .venv/bin/python benchmarks/gpu_check.py             # on a machine with a GPU (≈ 2 minutes)
    .venv/bin/python benchmarks/gpu_check.py --devices cpu,cpu --quick   # the same code, CPU only (tests)
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from scipy import stats

from dmtoolkit.estimate.registry import make_estimator
from dmtoolkit.masks import make_masks
from dmtoolkit.recipe import RECIPES_DIR, load_recipe
from dmtoolkit.run.prepare import build_run_data
from dmtoolkit.store import create_store
from dmtoolkit.train.job import RunContext

ESTIMATOR_TOLERANCE = 1e-3   # max |coef difference| / max |coef|: float32 rounding, far below any effect
LASSO_TOLERANCE = 1e-2       # the path stops at a certified duality gap, so iterates may differ within it
ACCURACY_TOLERANCE = 0.03    # training: |target accuracy difference| per model
MARGIN_SPEARMAN = 0.9        # training: Spearman of the two devices' margins per model, at least


@dataclass(frozen=True)
class Check:
    """One component on both devices: the measured difference, its tolerance, and both timings."""

    name: str
    difference: float
    tolerance: float
    seconds: tuple[float, float]
    passes: bool

    def line(self, devices: tuple[str, str]) -> str:
        ratio = self.seconds[1] / self.seconds[0] if self.seconds[0] > 0 else float("nan")
        return (f"{self.name:<32} diff {self.difference:.2e} (tolerance {self.tolerance:.0e}) "
                f"{'ok  ' if self.passes else 'FAIL'}  {devices[0]} {self.seconds[0]:6.2f} s, "
                f"{devices[1]} {self.seconds[1]:6.2f} s, speed-up {ratio:5.1f}x")


def _timed(fn: Callable[[], np.ndarray], device: str) -> tuple[np.ndarray, float]:
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    started = time.perf_counter()
    out = fn()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return out, time.perf_counter() - started


def linear_problem(models: int, units: int, targets: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Half-subset masks and margins with sparse real effects plus noise (as the stores hold)."""
    rng = np.random.default_rng(seed)
    masks = make_masks(seed, models, units, 0.5)
    beta = np.where(rng.random((units, targets)) < 0.05, rng.normal(0, 0.3, (units, targets)), 0.0)
    margins = masks @ beta + rng.normal(0, 1.0, (models, targets))
    return masks, margins.astype(np.float32)


def check_estimator(name: str, masks: np.ndarray, margins: np.ndarray, devices: tuple[str, str],
                    tolerance: float, **settings) -> Check:
    """Fit `name` on each device; the largest coefficient difference relative to the largest coefficient."""
    coefs, seconds = [], []
    for device in devices:
        coef, s = _timed(lambda: make_estimator(name, device=device, **settings).fit(masks, margins).coef_, device)
        coefs.append(np.asarray(coef, np.float64))
        seconds.append(s)
    scale = max(float(np.nanmax(np.abs(coefs[1]))), 1e-12)
    difference = float(np.nanmax(np.abs(coefs[0] - coefs[1]))) / scale
    return Check(name, difference, tolerance, (seconds[0], seconds[1]), difference <= tolerance)


def check_training(devices: tuple[str, str], groups: int, models_per_batch: int, epochs: int | None = None) -> Check:
    """`groups` training groups of the default class recipe on each device: accuracy and margin ranking agree
    (`epochs` shortens training, for the CPU-only test of this script)."""
    recipe = load_recipe(RECIPES_DIR / "glyphs-to-mnist.yaml").with_overrides(models=groups * models_per_batch)
    training = {"models_per_batch": models_per_batch, **({"epochs": epochs} if epochs else {})}
    recipe = recipe.model_copy(update={"training": recipe.training.model_copy(update=training)})
    with tempfile.TemporaryDirectory() as tmp:
        store = create_store(Path(tmp) / "runs.h5", recipe, build_run_data(recipe))
        results, seconds = [], []
        for device in devices:
            context = RunContext.from_store(store, device)
            rows, s = _timed(lambda: [r for g in range(groups) for r in context.compute_group(g)], device)
            results.append(rows)
            seconds.append(s)
    accuracy_gap = max(abs(a.target_accuracy - b.target_accuracy) for a, b in zip(*results))
    agreement = min(float(stats.spearmanr(a.margins, b.margins)[0]) for a, b in zip(*results))
    passes = accuracy_gap <= ACCURACY_TOLERANCE and agreement >= MARGIN_SPEARMAN
    return Check(f"training ({groups}x{models_per_batch} models; Spearman {agreement:.3f})", accuracy_gap,
                 ACCURACY_TOLERANCE, (seconds[0], seconds[1]), passes)


def run_checks(devices: tuple[str, str], quick: bool) -> list[Check]:
    lasso = linear_problem(*((256, 60, 8) if quick else (2048, 400, 64)), seed=1)
    classes = linear_problem(*((256, 36, 50) if quick else (1024, 36, 1000)), seed=2)
    checks = [check_estimator("datamodels", *lasso, devices, LASSO_TOLERANCE,
                              n_lambdas=10 if quick else 50),
              check_estimator("difference-of-means", *classes, devices, ESTIMATOR_TOLERANCE),
              check_estimator("regression", *classes, devices, ESTIMATOR_TOLERANCE)]
    checks.append(check_training(devices, groups=1 if quick else 3, models_per_batch=2 if quick else 8,
                                 epochs=1 if quick else None))
    return checks


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--devices", default="cuda,cpu", help="two devices to compare (default cuda,cpu)")
    parser.add_argument("--quick", action="store_true", help="small problems (for a CPU-only test of the script)")
    args = parser.parse_args(argv)
    devices = tuple(args.devices.split(","))
    if len(devices) != 2:
        parser.error("--devices takes two devices, e.g. cuda,cpu")
    if any(d.startswith("cuda") for d in devices) and not torch.cuda.is_available():
        print("gpu_check: no CUDA GPU on this machine, nothing to check (run it where one is)")
        return 0
    if any(d.startswith("cuda") for d in devices):
        print(f"gpu_check: {torch.cuda.get_device_name(0)}, torch {torch.__version__}")
    checks = run_checks(devices, args.quick)
    for check in checks:
        print(check.line(devices))
    failed = [c.name for c in checks if not c.passes]
    print(f"gpu_check: {'all agree' if not failed else 'FAILED: ' + ', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
