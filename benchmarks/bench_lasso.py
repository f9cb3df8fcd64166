"""Benchmark: our LassoPath (all targets at once) vs scikit-learn's lasso_path looping over targets.

Same data, same training rows, same standardisation and the same per-target λ grid. scikit-learn
gets its strongest setting: the Gram matrix computed once and shared by every target. Reports wall
times, the speedup, the relative objective gap (ours − sklearn)/sklearn at every (λ, target), the
gap at the λ each target chose (our objective recomputed in NumPy from coef_), and the peak growth
of resident memory during one fit in a fresh process, for ours at m and 4m models (it streams the
HDF5 file, so its memory should not grow with m) and for scikit-learn.

    python benchmarks/bench_lasso.py            # m=2000 models, P=1000 units, T=200 targets
    python benchmarks/bench_lasso.py --quick    # m=500, P=200, T=40
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import tempfile
import threading
import time
from pathlib import Path

import h5py
import numpy as np
import torch
from sklearn.linear_model import lasso_path

from dmtoolkit.estimate.lasso import LassoPath
from dmtoolkit.masks import make_masks


def make_problem(m: int, P: int, T: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Half-subset masks and margins with a few real effects per target plus dominant noise."""
    rng = np.random.default_rng(seed)
    X = make_masks(seed, m, P, 0.5)
    B = np.zeros((P, T))
    for j in range(T):
        support = rng.choice(P, 10, replace=False)
        B[support, j] = rng.normal(0, 0.2, 10)
    Y = X @ B + rng.normal(0, 1.0, (m, T)) + rng.normal(0, 2, T)
    return X, Y.astype(np.float32)


def ours(path: str, args: argparse.Namespace, patience: int | None) -> tuple[LassoPath, float]:
    with h5py.File(path, "r") as f:
        start = time.perf_counter()
        model = LassoPath(n_lambdas=args.lambdas, eps=args.eps, tol=args.tol, patience=patience,
                          val_frac=0.1, seed=0, device="cpu").fit(f["masks"], f["margins"])
        return model, time.perf_counter() - start


def sklearn_path(X: np.ndarray, Y: np.ndarray, grid: dict[str, np.ndarray], targets: np.ndarray, tol: float
                 ) -> tuple[np.ndarray, np.ndarray, float]:
    """Objectives (K, len(targets)) on our grid, coefficients at our chosen λ per target, and seconds."""
    start = time.perf_counter()
    rows = grid["train_rows"]
    Xs = (X[rows].astype(np.float64) - grid["mean"]) / grid["scale"]
    gram = Xs.T @ Xs
    objectives = np.empty((len(grid["lambdas"]), len(targets)))
    chosen = np.empty((X.shape[1], len(targets)))
    for i, j in enumerate(targets):
        y = Y[rows, j].astype(np.float64)
        yc = y - y.mean()
        alphas, coefs, _ = lasso_path(Xs, yc, alphas=grid["lambdas"][:, j], precompute=gram, Xy=Xs.T @ yc, tol=tol)
        objectives[:, i] = 0.5 * ((yc[:, None] - Xs @ coefs) ** 2).mean(0) + alphas * np.abs(coefs).sum(0)
        chosen[:, i] = coefs[:, int(np.argmin(np.abs(alphas - grid["alpha"][j])))]
    return objectives, chosen, time.perf_counter() - start


def grid_of(model: LassoPath) -> dict[str, np.ndarray]:
    return {"train_rows": model.fit_rows_, "mean": model.mean_, "scale": model.scale_,
            "lambdas": model.lambdas_, "alpha": model.lambda_}


def objective(X: np.ndarray, y: np.ndarray, coef: np.ndarray, intercept: float, lam: float, scale: np.ndarray) -> float:
    """scikit-learn's lasso objective of mask-unit weights, on the standardised problem."""
    resid = y - X @ coef - intercept
    return 0.5 * np.mean(resid**2) + lam * np.abs(coef * scale).sum()


class PeakRSS:
    """Peak growth of this process's resident memory while the block runs (sampled every millisecond)."""

    def __enter__(self) -> PeakRSS:
        self.start = self.peak = _rss()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()
        return self

    def _poll(self) -> None:
        while not self._stop.wait(0.001):
            self.peak = max(self.peak, _rss())

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss())

    @property
    def mib(self) -> float:
        return (self.peak - self.start) / 2**20


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def write_problem(path: str, X: np.ndarray, Y: np.ndarray) -> str:
    with h5py.File(path, "w") as f:
        f.create_dataset("masks", data=X, chunks=(64, X.shape[1]))
        f.create_dataset("margins", data=Y, chunks=(64, Y.shape[1]))
    return path


def _memory_child(kind: str, path: str, threads: int, grid: dict[str, np.ndarray] | None, queue: mp.Queue) -> None:
    torch.set_num_threads(threads)
    with h5py.File(path, "r") as f:
        if kind == "ours":
            LassoPath(n_lambdas=3, device="cpu").fit(f["masks"][:50, :10], f["margins"][:50, :2])  # warm-up
            with PeakRSS() as mem:
                LassoPath(n_lambdas=10, eps=0.1, patience=None, device="cpu").fit(f["masks"], f["margins"])
        else:
            X, Y = f["masks"][()], f["margins"][()]
            lasso_path(np.eye(3), np.ones(3), alphas=[1.0, 0.1])  # warm-up
            with PeakRSS() as mem:
                sklearn_path(X, Y, grid, np.arange(3), 1e-4)
    queue.put(mem.mib)


def fresh_process_peak(kind: str, path: str, threads: int, grid: dict[str, np.ndarray] | None = None) -> float:
    """Peak RSS growth (MiB) of one fit in a fresh process, after imports, data loading and a warm-up."""
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_memory_child, args=(kind, path, threads, grid, queue))
    proc.start()
    value = queue.get()
    proc.join()
    return value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small problem (m=500, P=200, T=40)")
    parser.add_argument("--lambdas", type=int, default=100)
    parser.add_argument("--eps", type=float, default=1e-3)
    parser.add_argument("--tol", type=float, default=1e-4, help="our relative duality-gap tolerance")
    parser.add_argument("--sk-tol", type=float, default=1e-4, help="scikit-learn's tol (its default)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch threads for ours")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    m, P, T = (500, 200, 40) if args.quick else (2000, 1000, 200)
    X, Y = make_problem(m, P, T, args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        path = write_problem(str(Path(tmp) / "problem.h5"), X, Y)
        print(f"problem: m={m} models, P={P} units, T={T} targets, K={args.lambdas} lambdas, eps={args.eps}, "
              f"torch threads={args.threads}")
        LassoPath(n_lambdas=3, device="cpu").fit(X[:50, :10], Y[:50, :2])  # warm-up: torch/MKL one-time set-up
        model, t_ours = ours(path, args, patience=None)
        _, t_early = ours(path, args, patience=5)
        grid = grid_of(model)
        sk_obj, sk_chosen, t_sk = sklearn_path(X, Y, grid, np.arange(T), args.sk_tol)
        gap = (model.path_objective_ - sk_obj) / sk_obj
        Xf = X.astype(np.float64)
        chosen_gap = []
        for j in range(T):
            lam = float(model.lambda_[j])
            y = Y[model.fit_rows_, j].astype(np.float64)
            ours_obj = objective(Xf[model.fit_rows_], y, model.coef_[:, j].astype(np.float64),
                                 float(model.intercept_[j]), lam, model.scale_)
            w = sk_chosen[:, j] / model.scale_
            sk_val = objective(Xf[model.fit_rows_], y, w, y.mean() - model.mean_ @ w, lam, model.scale_)
            chosen_gap.append((ours_obj - sk_val) / sk_val)
        big = write_problem(str(Path(tmp) / "big.h5"), *make_problem(4 * m, P, T, args.seed))
        mem_ours, mem_ours_big = fresh_process_peak("ours", path, args.threads), fresh_process_peak("ours", big, args.threads)
        mem_sk = fresh_process_peak("sklearn", path, args.threads, grid)
    print(f"ours, full path        : {t_ours:8.2f} s  ({model.n_iter_.sum()} FISTA iterations over all targets)")
    print(f"ours, early stopping   : {t_early:8.2f} s  (patience 5)")
    print(f"sklearn lasso_path loop: {t_sk:8.2f} s  (shared Gram, tol={args.sk_tol})")
    print(f"speedup, full path     : {t_sk / t_ours:8.1f} x   (goal >= 5)")
    print(f"speedup, early stopping: {t_sk / t_early:8.1f} x")
    print(f"objective gap (ours - sklearn)/sklearn over all (lambda, target): max {gap.max():.2e}, "
          f"min {gap.min():.2e}, max |gap| {np.abs(gap).max():.2e}   (goal <= 1e-3)")
    print(f"objective gap at the chosen lambda (ours recomputed from coef_): max |gap| {np.max(np.abs(chosen_gap)):.2e}")
    print(f"peak RSS growth of one fit in a fresh process: ours {mem_ours:.1f} MiB at m={m} and {mem_ours_big:.1f} MiB "
          f"at m={4 * m} (streams the HDF5 file; P*P + P*T float32 = {(P * P + P * T) * 4 / 2**20:.1f} MiB, "
          f"m*P float32 = {m * P * 4 / 2**20:.1f} MiB); sklearn {mem_sk:.1f} MiB (standardised float64 X in memory)")


if __name__ == "__main__":
    main()
