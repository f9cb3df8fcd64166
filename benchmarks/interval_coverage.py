"""Coverage of nominal intervals on simulated linear effects, per estimator and mask design.

    python benchmarks/interval_coverage.py [--replications 60] [--level 0.9]

Prints, for difference of means (design-aware and as if rows were independent, i.e. Welch) and for
regression, the fraction of intervals that contain the simulated effect (dmtoolkit.estimate.calibration).
"""

from __future__ import annotations

import argparse

from dmtoolkit.estimate.calibration import DESIGNS, interval_coverage


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--replications", type=int, default=60)
    parser.add_argument("--level", type=float, default=0.9)
    args = parser.parse_args()
    print(f"nominal {args.level:.0%} intervals, 36 units, {args.replications} replications")
    print(f"{'design':<24} {'models':>6} {'diff. of means':>15} {'ignoring design':>16} {'regression':>11}")
    for design in DESIGNS:
        models = 512 if design == "orthogonal+antithetic" else 256
        run = lambda name, aware=True: interval_coverage(  # noqa: E731
            name, design, models=models, replications=args.replications, level=args.level, design_aware=aware)
        print(f"{design:<24} {models:>6} {run('difference-of-means').coverage:>15.3f} "
              f"{run('difference-of-means', False).coverage:>16.3f} {run('regression').coverage:>11.3f}")


if __name__ == "__main__":
    main()
