"""The gradient estimator's evidence and memory: calibration of its across-network standard error by
simulation, and the peak memory of reducing many networks' saved scores.

    python benchmarks/gradient_evidence.py calibration [--replications 400]
    python benchmarks/gradient_evidence.py memory [--units 20000] [--targets 5000] [--networks 4]
    python benchmarks/gradient_evidence.py networks STORE.h5 OUT.h5 [--networks 16]
    python benchmarks/gradient_evidence.py features [--pool 52376] [--proj-dim 512]
    python benchmarks/gradient_evidence.py saved OUT.h5.partial/ | REPLAY.h5 [--columns 100]

`calibration` prints, per number of networks, the coverage of nominal 95% t intervals (mean ± t·se, N − 1
dof) and the false discovery proportion, power and flags of Benjamini–Hochberg at 5% on one-sided p-values
(as `dmtoolkit leakage` flags), over simulated runs where each network's scores are the true effect plus
network noise (`dmtoolkit.estimate.ensemble.simulate_network_scores`: 200 units × 20 targets, 5% of entries
real effects, a noise offset shared by every unit of a (network, target), a per-unit noise scale; Gaussian
and Student t with 5 dof noise). `memory` saves `networks` random (units × targets) float32 score arrays
through `NetworkSaver` and reduces them (`NetworkSaver.reduce`), printing the peak of NumPy allocations during
the reduction (tracemalloc) against one network's array, and the bytes on disk. `networks` fits the gradient
estimator on a real example store (default settings, `--networks` retrained rows) keeping the per-network
scores (OUT.h5.partial/, so an interrupted run continues), and checks the spread they give on the real networks:
for each network k, is its score inside the 95% t prediction interval of the other N − 1 networks,
mean ± t(N − 2)·sd·√(1 + 1/(N − 1))? That holds at 95% when networks are exchangeable draws with roughly
normal scores per entry, the assumption behind the standard error. `saved` runs the same spread checks on
networks already computed: a kept per-network folder of a gradient run (and its source-task column) or a
replay estimate's `replay/network_coef`. `features` computes the projected
per-example source gradients (`dmtoolkit.estimate.gradient.source_features`) of the built-in tiny CNN for a
pool of random images, twice in one process, and prints the growth of resident memory against the size of
the features themselves (a pool-sized leak or heap fragmentation shows as a ratio in the tens or hundreds).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np

from dmtoolkit.analyze.evidence import network_calibration
from dmtoolkit.estimate.ensemble import PLAN_KEY, NetworkSaver, reduction_bytes


def calibration(replications: int) -> None:
    print(f"nominal 95% intervals and BH at FDR 5%, {replications} simulated runs of 200 units x 20 targets")
    print(f"{'noise':<10} {'networks':>8} {'coverage':>9} {'FDR':>7} {'power':>7} {'flags':>7}")
    for tails, name in ((None, "gaussian"), (5.0, "t, 5 dof")):
        for networks in (2, 3, 4, 8, 16):
            r = network_calibration(networks, replications=replications, tails=tails)
            print(f"{name:<10} {networks:>8} {r.coverage:>9.4f} {r.false_discovery_rate:>7.4f} {r.power:>7.3f} "
                  f"{r.mean_flags:>7.1f}")


def memory(units: int, targets: int, networks: int) -> None:
    one = 4 * units * targets
    with tempfile.TemporaryDirectory(prefix="gradient-memory-") as folder:
        saver = NetworkSaver(Path(folder) / "p", {PLAN_KEY: [[n, n] for n in range(networks)]})
        saver.start()
        rng = np.random.default_rng(0)
        for n in range(networks):
            saver.save(n, rng.standard_normal((units, targets), dtype=np.float32), {"n": n})
        disk = sum(p.stat().st_size for p in (Path(folder) / "p").iterdir())
        tracemalloc.start()
        started = time.perf_counter()
        mean, stderr = saver.reduce(networks, (units, targets))
        seconds = time.perf_counter() - started
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    print(f"{units:,} units x {targets:,} targets, {networks} networks: one network's float32 scores "
          f"{one / 2**20:,.0f} MiB; reduction peak {peak / 2**20:,.0f} MiB = {peak / one:.2f} x one network "
          f"(predicted {reduction_bytes(units, targets) / one:.2f} x; holding every network would be "
          f"{networks:.0f} x + the outputs); {disk / 2**20:,.0f} MiB on disk; {seconds:.1f} s")


def features(pool: int, proj_dim: int) -> None:
    import torch

    from dmtoolkit.estimate.gradient import Projector, parameters_of, source_features
    from dmtoolkit.train.models import build_model

    def resident() -> int:
        return int(Path("/proc/self/statm").read_text().split()[1]) * 4096

    torch.set_num_threads(1)
    model = build_model("tiny-cnn", 1, 1, 145, 16, 16, 64).eval()
    generator = torch.Generator().manual_seed(0)
    x, y = torch.rand(pool, 1, 16, 16, generator=generator), torch.randint(0, 145, (pool,), generator=generator)
    project = Projector(sum(p.numel() for p in parameters_of(model).values()), proj_dim)
    before = resident()
    for attempt in (1, 2):
        started = time.process_time()
        phi, _ = source_features(model, x, y, project)
        grown = resident() - before
        print(f"pass {attempt}: {pool:,} examples, features {phi.nbytes / 2**20:,.0f} MiB; resident memory grew "
              f"{grown / 2**20:,.0f} MiB = {grown / phi.nbytes:.1f} x the features; {time.process_time() - started:.0f} CPU-s")
        del phi


def spread_checks(scores: np.ndarray, started: float | None = None) -> None:
    """Print how the real networks' scores (N, P, T) spread: each network against the 95% t prediction interval
    of the others, the excess kurtosis, and two disjoint random sets of networks against their 95% Welch
    interval (what the standard error promises if the networks are exchangeable draws)."""
    from scipy import stats

    networks = len(scores)
    inside = []
    q = stats.t.ppf(0.975, networks - 2)
    for k in range(networks):
        rest = np.delete(scores, k, axis=0)
        half = q * rest.std(0, ddof=1) * np.sqrt(1 + 1 / (networks - 1))
        inside.append(np.mean(np.abs(scores[k] - rest.mean(0)) <= half))
    se = scores.std(0, ddof=1) / np.sqrt(networks)
    cpu = "" if started is None else f"; CPU {time.process_time() - started:.0f} s"
    print(f"{networks} networks, {scores.shape[1]} x {scores.shape[2]} scores: held-out network inside the 95% t "
          f"prediction interval of the others: {np.mean(inside):.4f} (per network {min(inside):.3f}-{max(inside):.3f}); "
          f"median |mean| / se {np.median(np.abs(scores.mean(0)) / se):.2f}{cpu}")
    standardised = (scores - scores.mean(0)) / scores.std(0, ddof=1)
    print(f"excess kurtosis of the standardised per-entry scores: {stats.kurtosis(standardised.ravel()):.2f}")
    # the same splits of exchangeable normal networks: what a calibrated error gives (Welch's interval is itself
    # conservative with few networks per set: 2.3% beyond at 2 vs 2, 4.2% at 4 vs 4, not 5%)
    reference = np.random.default_rng(1).normal(size=(networks, 400, 30))
    for half in sorted({networks // 4, networks // 2} - {0, 1}):
        rates = []
        for array in (scores, reference):
            rng, beyond = np.random.default_rng(0), []
            for _ in range(20):  # two disjoint random sets: their means differ beyond their 95% Welch interval?
                order = rng.permutation(networks)
                a, b = array[order[:half]], array[order[half:2 * half]]
                va, vb = a.var(0, ddof=1) / half, b.var(0, ddof=1) / half
                dof = (va + vb) ** 2 / ((va ** 2 + vb ** 2) / (half - 1))
                beyond.append(np.mean(np.abs(a.mean(0) - b.mean(0)) > stats.t.ppf(0.975, dof) * np.sqrt(va + vb)))
            rates.append(float(np.mean(beyond)))
        print(f"two disjoint sets of {half} networks: means differ beyond the 95% Welch t interval of their "
              f"standard errors for {rates[0]:.4f} of the entries ({rates[1]:.4f} for exchangeable normal networks "
              "split the same way: the calibrated rate; 20 random splits)")


def saved_check(path: str, columns: int) -> None:
    """`spread_checks` on networks already computed: a gradient run's kept per-network folder (OUT.h5.partial/,
    the first `columns` target columns, and the source-task column if there is one) or a replay estimate with
    several networks (`replay/network_coef`)."""
    import h5py

    source = Path(path)
    if source.is_dir():
        scores, task = [], []
        for file in sorted(source.glob("network-*.h5")):
            with h5py.File(file, "r") as f:
                scores.append(f["scores"][:, :columns].astype(np.float64))
                task.append(f["scores"][:, -1].astype(np.float64))  # the source-task column (format 2)
                width = f["scores"].shape[1]
        print(f"{source}: {len(scores)} saved networks, the first {columns} of {width - 1} target columns")
        spread_checks(np.array(scores))
        if np.isfinite(task).all():
            print("the source-task column:")
            spread_checks(np.array(task)[:, :, None])
        return
    with h5py.File(source, "r") as f:
        if "replay/network_coef" not in f:
            raise SystemExit(f"{source}: no replay/network_coef (replay with --networks 2 or more)")
        scores = f["replay/network_coef"][:, :, :columns].astype(np.float64)
    print(f"{source}: replay, {len(scores)} networks")
    spread_checks(scores)


def networks_check(store: str, out: str, networks: int, options: dict | None = None) -> None:
    from dmtoolkit.estimate.ensemble import partial_folder
    from dmtoolkit.estimate.fit import fit_store
    from dmtoolkit.estimate.gradient import GradientEstimator

    started = time.process_time()
    if not Path(out).exists():
        model = GradientEstimator(store, models=networks, device="cpu", partial=partial_folder(out), progress=print,
                                  **(options or {}))
        fit_store(store, out, model)
    folder = partial_folder(out)
    import h5py

    scores = []
    for n in range(networks):
        with h5py.File(folder / f"network-{n:04d}.h5", "r") as f:
            scores.append(f["scores"][()].astype(np.float64))
    scores = np.array(scores)[:, :, :-1]  # the target columns (the last is the source task)
    spread_checks(scores, started)
    se = scores.std(0, ddof=1) / np.sqrt(networks)
    from dmtoolkit.analyze.mislabels import mislabel_scores
    from dmtoolkit.stats.detection import auc
    from dmtoolkit.stats.pvalues import one_sided_pvalues, simes
    from dmtoolkit.store import RunStore

    with RunStore(store) as run:
        planted = run.planted()
        plan = json.loads((folder / "meta.json").read_text())[PLAN_KEY]
        full = np.ones(run.num_units, bool)
        inside = np.array([run.masks[row] if row >= 0 else full for row, _ in plan], bool)[:, :, None]
    n_in, n_out = inside.sum(0), (~inside).sum(0)
    mean_in = np.where(inside, scores, 0).sum(0) / np.maximum(n_in, 1)
    mean_out = np.where(~inside, scores, 0).sum(0) / np.maximum(n_out, 1)
    var_in = np.where(inside, (scores - mean_in) ** 2, 0).sum(0) / np.maximum(n_in - 1, 1)
    var_out = np.where(~inside, (scores - mean_out) ** 2, 0).sum(0) / np.maximum(n_out - 1, 1)
    both = (n_in > 1) & (n_out > 1)
    stratified = 0.5 * (mean_in + mean_out) / (0.5 * np.sqrt(var_in / np.maximum(n_in, 1) + var_out / np.maximum(n_out, 1)))
    print(f"scores of example i from networks trained on it: mean |τ| {np.abs(mean_in).mean():.2g} (sd "
          f"{np.sqrt(var_in).mean():.2g}); from networks not trained on it: {np.abs(mean_out).mean():.2g} (sd "
          f"{np.sqrt(var_out).mean():.2g}); median |t| {np.median(np.abs(scores.mean(0) / se)):.2f} plain, "
          f"{np.median(np.abs(stratified[np.broadcast_to(both, stratified.shape)])):.2f} stratified by inclusion")
    if planted is not None and planted.flipped.any():
        mean = scores.mean(0)
        target_p = simes(one_sided_pvalues(mean, se, networks - 1, "less"), axis=1)
        flipped = planted.flipped.astype(bool)
        print(f"planted flips ranked by worst influence: AUC {auc(-mislabel_scores(mean, 'worst'), flipped):.3f}; "
              f"by target p-value (Simes over targets): AUC {auc(-target_p, flipped):.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    cal = sub.add_parser("calibration")
    cal.add_argument("--replications", type=int, default=400)
    mem = sub.add_parser("memory")
    mem.add_argument("--units", type=int, default=20_000)
    mem.add_argument("--targets", type=int, default=5_000)
    mem.add_argument("--networks", type=int, default=4)
    net = sub.add_parser("networks")
    net.add_argument("store")
    net.add_argument("out")
    net.add_argument("--networks", type=int, default=16)
    net.add_argument("--options", type=json.loads, default=None,
                     help='GradientEstimator settings as JSON, e.g. the defaults before 2026-12-07: '
                          '\'{"q": "own", "kernel_over": "trained", "shared_projection": true, "proj_dim": 512}\'')
    saved = sub.add_parser("saved")
    saved.add_argument("path", help="a kept OUT.h5.partial/ folder, or a replay estimate with several networks")
    saved.add_argument("--columns", type=int, default=100, help="target columns read (memory: N x P x columns)")
    feat = sub.add_parser("features")
    feat.add_argument("--pool", type=int, default=52_376)
    feat.add_argument("--proj-dim", type=int, default=512)
    args = parser.parse_args()
    if args.command == "calibration":
        calibration(args.replications)
    elif args.command == "networks":
        networks_check(args.store, args.out, args.networks, args.options)
    elif args.command == "saved":
        saved_check(args.path, args.columns)
    elif args.command == "features":
        features(args.pool, args.proj_dim)
    else:
        memory(args.units, args.targets, args.networks)


if __name__ == "__main__":
    main()
