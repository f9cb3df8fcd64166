"""Side by side with TRAK (issue 32): `traker` 0.3.2 and our gradient estimator on the same trained networks.

On one example-level run store (the 400-image example store), the held-out split `dmtoolkit evaluate` uses
(`--holdout-frac 0.1`, split seed 0) is taken, `--networks` (max) fitting rows are drawn with `--seed` (the
first n of the draw are the n-network ensemble, so 1 ⊂ 4 ⊂ 16) and each is retrained once through the
library (`BuiltinNetworks` on the store's rows, with its whole batched group, so its final weights reproduce
the stored row), keeping checkpoints after the epochs of `--checkpoints` (3: epochs 10, 20, 30 of 30).
Every (network, checkpoint) is then scored by both:

- ours: `dmtoolkit.estimate.gradient.score_network` (projection `--proj-dim`, relative λ 0.1, the kernel over
  the examples that network was trained on, τ weighted by that network's own q), averaged over checkpoints
  and networks, as `dmtoolkit gradient` did before 2026-12-07 (`--q own --kernel-over trained
  --shared-projection`); what it does now on pools that fit is the `exact` variant's mean-q row;
- TRAK: `trak.TRAKer` on CPU (`BasicProjector`, normal projection of the same dimension, float32), one model
  ID per (network, checkpoint), featurized on every pool image, scored on every target, `finalize_scores`
  over the model IDs of each setting (TRAK's ensembling: mean of per-ID scores × Q averaged over IDs).

How TRAK was adapted to the transfer step. TRAK attributes a model's own outputs; here the targets are test
images of another task, scored by the transferred model (the source network's frozen features, then the
fitted target head). Each `Network` (the library's contract) is wrapped as one `torch.nn.Module` whose
parameters are the source network's θ (the head is held fixed, outside θ, as ours holds it) and whose
forward gives the source logits on pool images or the transferred target logits on target images
(`TrakWrapper.target`); the model output class `TransferModelOutput` (after TRAK's
`ImageClassificationModelOutput`) returns TRAK's output z_y − log Σ_{k≠y} exp z_k for pool images and the
transferred margin z_y − max_{k≠y} z_k for targets, and Q = 1 − p_y of the source logits. TRAK's own default
λ = 0 leaves Φᵀ Φ singular here (400 pool images, projection ≥ 512); it is given the same relative ridge as
ours (0.1 × the mean eigenvalue of its own Φᵀ Φ, per model ID; `--trak-lambda` an absolute value instead).

Options of ours beside the default (`--variants`): `exact` (no projection: the pool kernel computed exactly in
the dual form, `proj_dim=0`, what the library's `--proj-dim auto` chooses on pools this size; reported with
mean-q as the library's default), `pool-kernel` (the kernel over the whole pool, as TRAK's),
`mean-q` (τ weighted by q averaged over the networks and checkpoints, as TRAK's Q), both (what
`dmtoolkit.estimate.gradient.attribute(networks, q="mean")` computes for these networks), and each of those
with `trak-scale` (every network's inverse kernel divided by its mean absolute entry before the average, as
traker's score computer does: `trak_scores(..., kernel_scale="trak")`).

`--each-alone` also scores every drawn network by itself (ours with the library's choice, TRAK on the same
network and checkpoints): the one-network point as a mean and spread over many draws, with the paired
difference ours − TRAK and its 95% t-interval, where the nested curve has a single draw.

CPU-minutes: process CPU time of the scoring only (both score the same networks; training them is reported
once, shared). LDS [95%]: `dmtoolkit.stats.lds` (`summarise_lds`, `bootstrap_lds_interval` over the held-out
draws), the same functions `dmtoolkit evaluate` uses, on the same held-out models for both.

Install TRAK (a benchmark extra, never a runtime dependency) beside the toolkit, without touching its venv:

    .venv/bin/python -m pip install --target /work/trak-site traker==0.3.2 --no-deps   # or: pip install .[bench]

and run (tqdm, which TRAK imports, is already in the toolkit's environment; `fast_jl` is for CUDA only):

    PYTHONPATH=$PWD:/work/trak-site OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python benchmarks/trak_study.py \\
        stores/demo/example-runs.h5 --out runs/trak --networks 1,4,16 --checkpoints 3 --seed 0
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn


def _trak_classes():  # noqa: ANN202 - imported late: traker is an optional benchmark dependency
    from torch.func import functional_call
    from trak.modelout_functions import AbstractModelOutput

    from dmtoolkit.estimate.gradient import margin_of, source_output

    class TrakWrapper(nn.Module):
        """One `Network` as a module TRAK can load: parameters p0.. = θ (in the network's order); forward gives
        its source logits, or its transferred target logits when `target` is set."""

        def __init__(self, network) -> None:  # noqa: ANN001
            super().__init__()
            self.names = list(network.params)
            for i, name in enumerate(self.names):
                self.register_parameter(f"p{i}", nn.Parameter(network.params[name].detach().clone()))
            self.network, self.target = network, False

        def state_of(self, network) -> dict[str, torch.Tensor]:  # noqa: ANN001
            """Point the wrapper at `network` (its buffers and head) and return its θ as a state dict."""
            self.network = network
            return {f"p{i}": network.params[name].detach() for i, name in enumerate(self.names)}

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            theta = {name: getattr(self, f"p{i}") for i, name in enumerate(self.names)}
            logits = self.network.target_logits if self.target else self.network.source_logits
            return logits(theta, x)

    class TransferModelOutput(AbstractModelOutput):
        """TRAK's output for pool images, the transferred margin for targets; Q = 1 − p_y on the source."""

        def __init__(self) -> None:
            super().__init__()

        def get_output(self, model, weights, buffers, image, label):  # noqa: ANN001, ANN201
            z = functional_call(model, (weights, buffers), image.unsqueeze(0))[0]
            return margin_of(z, label) if model.target else source_output(z, label)

        def get_out_to_loss_grad(self, model, weights, buffers, batch):  # noqa: ANN001, ANN201
            images, labels = batch
            z = functional_call(model, (weights, buffers), images)
            p = torch.softmax(z, -1)[torch.arange(len(z)), labels]
            return (1 - p).detach().unsqueeze(-1)

    return TrakWrapper, TransferModelOutput


def _lds(coef: np.ndarray, masks: np.ndarray, actual: np.ndarray, units: np.ndarray) -> tuple[float, tuple]:
    from dmtoolkit.stats.lds import bootstrap_lds_interval, summarise_lds

    predicted = masks.astype(np.float64) @ coef.astype(np.float64)
    _, mean, _ = summarise_lds(predicted, actual)
    return mean, bootstrap_lds_interval(predicted, actual, units)


def _each_alone(ours: dict[str, list[list[np.ndarray]]], q_all: list[list[np.ndarray]], traker: object,
                epochs: tuple[int, ...], count: int, test_masks: np.ndarray, actual: np.ndarray) -> list[dict]:
    """LDS of each network alone (its last 1 and all checkpoints), ours (the library's own choice: `exact` with
    mean q when scored, else the default) and TRAK on the same network; printed as mean ± sd over the networks and
    the paired difference ours − TRAK with a 95% t-interval."""
    from scipy import stats

    from dmtoolkit.stats.lds import summarise_lds

    variant, weighting = ("exact", "mean-q") if "exact" in ours else ("default", "own-q")
    test_masks = test_masks.astype(np.float64)
    rows = []
    for ck in sorted({1, len(epochs)}):
        used = list(range(len(epochs) - ck, len(epochs)))
        for i in range(count):
            q = np.mean([q_all[i][c] for c in used], axis=0)
            coef = np.mean([ours[variant][i][c] * (q_all[i][c] if weighting == "own-q" else q)[:, None]
                            for c in used], axis=0)
            row = {"network": i, "checkpoints": ck,
                   "ours": summarise_lds(test_masks @ coef.astype(np.float64), actual)[1]}
            if traker is not None:
                scores = np.array(traker.finalize_scores(exp_name="targets", model_ids=[i * len(epochs) + c
                                                                                         for c in used]), np.float64)
                row["trak"] = summarise_lds(test_masks @ scores, actual)[1]
            rows.append(row)
        mine = np.array([r["ours"] for r in rows if r["checkpoints"] == ck])
        line = f"each network alone, {ck} checkpoint(s), {count} networks: ours ({variant}/{weighting}) " \
               f"{mine.mean():.3f} ± {mine.std(ddof=1):.3f}"
        if traker is not None:
            theirs = np.array([r["trak"] for r in rows if r["checkpoints"] == ck])
            diff = mine - theirs
            half = stats.t.ppf(0.975, count - 1) * diff.std(ddof=1) / np.sqrt(count)
            line += (f"; TRAK {theirs.mean():.3f} ± {theirs.std(ddof=1):.3f}; ours − TRAK {diff.mean():+.3f} "
                     f"[{diff.mean() - half:+.3f}, {diff.mean() + half:+.3f}], ours ahead on {(diff > 0).sum()} of {count}")
        print(line, flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("store", type=Path)
    parser.add_argument("--out", type=Path, required=True, help="folder for TRAK's saver and the results JSON")
    parser.add_argument("--networks", default="1,4,16")
    parser.add_argument("--checkpoints", type=int, default=3, help="checkpoints kept per network (1: final only)")
    parser.add_argument("--proj-dim", type=int, default=512)
    parser.add_argument("--seed", type=int, default=0, help="draw of the fitting rows retrained")
    parser.add_argument("--trak-lambda", type=float, default=None, help="TRAK's absolute λ (default: relative 0.1)")
    parser.add_argument("--variants", nargs="?", const="all", default="",
                        help="also score ours with these options (comma list of pool-kernel, trak-scale, "
                        "pool-kernel+trak-scale, exact; alone: all), each with own-q and mean-q")
    parser.add_argument("--proj-seed", type=int, default=0, help="seed of the projection (ours and TRAK's)")
    parser.add_argument("--no-trak", action="store_true", help="ours only (no traker needed)")
    parser.add_argument("--proj-per-id", action="store_true",
                        help="ours: a projection of its own for each (network, checkpoint), seed proj-seed + its model "
                             "ID, as traker's BasicProjector draws one per model ID")
    parser.add_argument("--each-alone", action="store_true",
                        help="also score every drawn network alone (ours and TRAK on the same network): mean, spread "
                             "and the paired difference over networks, the one-network point measured over many draws")
    parser.add_argument("--max-targets", type=int, default=None, metavar="N",
                        help="score the first N targets only (both methods; e.g. 1000 of fashion-mnist's 10,000)")
    parser.add_argument("--lds-targets", default=None, metavar="A:B",
                        help="also score LDS on targets A:B alone (e.g. the replay study's 0:64)")
    args = parser.parse_args()
    torch.set_num_threads(1)

    from dmtoolkit.devices import training_threads
    from dmtoolkit.estimate.fit import completed_rows, store_draws
    from dmtoolkit.estimate.gradient import score_network
    from dmtoolkit.estimate.networks import BuiltinNetworks, checkpoint_epochs
    from dmtoolkit.estimate.options import GRADIENT_LAMBDA
    from dmtoolkit.stats.splits import split_rows
    from dmtoolkit.store import RunStore
    from dmtoolkit.train.job import RunContext

    counts = sorted(int(n) for n in args.networks.split(","))
    with RunStore(args.store) as store:
        rows = completed_rows(store)
        draws = store_draws(store).ids
        fit_rows, test_rows = split_rows(rows, 0.1, 0, draws)
        masks = np.asarray(store.masks[()], bool)
        margins = np.asarray(store.margins[()], np.float64)[:, :args.max_targets]
    test_masks, actual, test_draws = masks[test_rows], margins[test_rows], draws[test_rows]
    drawn = np.random.default_rng(args.seed).permutation(fit_rows)[:counts[-1]]

    context = RunContext.from_store(args.store, "cpu")
    epochs = checkpoint_epochs(args.checkpoints, context.recipe.training.epochs)
    builder = BuiltinNetworks(context, epochs=epochs)
    P, T = masks.shape[1], margins.shape[1]
    columns = slice(0, T)
    print(f"{args.store}: {len(test_rows)} held-out models, pool {P}, {T} targets; rows {drawn.tolist()} "
          f"(seed {args.seed}), checkpoints after epochs {list(epochs)}, projection {args.proj_dim}", flush=True)

    settings = dict(proj_dim=args.proj_dim, lam=GRADIENT_LAMBDA, proj_seed=args.proj_seed)
    options = ["pool-kernel", "trak-scale", "pool-kernel+trak-scale", "exact"]
    chosen = options if args.variants == "all" else [v for v in args.variants.split(",") if v]
    if set(chosen) - set(options):
        parser.error(f"--variants: unknown {', '.join(sorted(set(chosen) - set(options)))}")
    variants = ["default"] + chosen
    ours: dict[str, list[list[np.ndarray]]] = {v: [] for v in variants}  # [network][checkpoint] τ / q
    q_all: list[list[np.ndarray]] = []
    ours_seconds: list[list[float]] = []
    variant_seconds = {v: 0.0 for v in variants}
    trak_seconds: list[list[float]] = []
    train_seconds, margin_errors = 0.0, []
    if not args.no_trak:
        from trak import TRAKer
        from trak.projectors import BasicProjector, ProjectionType

        from dmtoolkit.estimate.gradient import relative_lambda

        TrakWrapper, TransferModelOutput = _trak_classes()
        trak_dir = args.out / f"trak-saver-s{args.seed}-k{args.proj_dim}-c{args.checkpoints}-p{args.proj_seed}"
        if trak_dir.exists():
            shutil.rmtree(trak_dir)
        traker = None
    for n, row in enumerate(drawn):
        job = context.job(int(row))
        started = time.process_time()
        with training_threads():
            nets = builder(job)
        train_seconds += time.process_time() - started
        final = nets[-1]
        with torch.no_grad():
            reproduced = final.target_margin(dict(final.params), final.targets.x, final.targets.y).numpy()
        margin_errors.append(float(np.abs(reproduced[:T] - margins[row]).max()))
        for v in variants:
            ours[v].append([])
        q_all.append([])
        ours_seconds.append([])
        trak_seconds.append([])
        for c, net in enumerate(nets):
            with torch.no_grad():
                q = net.loss_weight(dict(net.params), net.pool.x, net.pool.y).numpy()
            q_all[-1].append(q)
            for v in variants:
                train = np.arange(P) if v.startswith("pool-kernel") or v == "exact" else job.units
                scale = "trak" if v.endswith("trak-scale") else "none"
                started = time.process_time()
                seed = args.proj_seed + (n * len(nets) + c if args.proj_per_id else 0)
                dim = 0 if v == "exact" else args.proj_dim  # exact: no projection (the dual form)
                tau, _, _, _ = score_network(net, train, columns, own_q=False, kernel_scale=scale,
                                             **{**settings, "proj_seed": seed, "proj_dim": dim})  # g K⁻¹ φ, no q
                variant_seconds[v] += time.process_time() - started
                if v == "default":
                    ours_seconds[-1].append(time.process_time() - started)
                ours[v][-1].append(tau.numpy().astype(np.float32))
            if args.no_trak:
                continue
            started = time.process_time()
            if traker is None:
                wrapper = TrakWrapper(net)
                num_params = sum(p.numel() for p in wrapper.parameters())
                projector = BasicProjector(grad_dim=num_params, proj_dim=args.proj_dim, seed=args.proj_seed,
                                           proj_type=ProjectionType.normal, device="cpu", dtype=torch.float32)
                traker = TRAKer(model=wrapper, task=TransferModelOutput(), train_set_size=P, save_dir=str(trak_dir),
                                load_from_save_dir=True, device="cpu", projector=projector,
                                use_half_precision=False, logging_level=40)
            model_id = n * len(nets) + c
            wrapper.target = False
            traker.load_checkpoint(wrapper.state_of(net), model_id=model_id)
            for s in range(0, P, 100):
                traker.featurize(batch=(net.pool.x[s:s + 100], net.pool.y[s:s + 100]), num_samples=min(100, P - s))
            grads = torch.as_tensor(np.asarray(traker.saver.current_store["grads"]))
            traker.score_computer.lambda_reg = (args.trak_lambda if args.trak_lambda is not None
                                                else relative_lambda(grads, GRADIENT_LAMBDA))
            traker.finalize_features(model_ids=[model_id])
            wrapper.target = True
            traker.start_scoring_checkpoint(exp_name="targets", checkpoint=wrapper.state_of(net), model_id=model_id,
                                            num_targets=T)
            for s in range(0, T, 100):
                traker.score(batch=(net.targets.x[s:min(s + 100, T)], net.targets.y[s:min(s + 100, T)]),
                             num_samples=min(100, T - s))
            trak_seconds[-1].append(time.process_time() - started)
        print(f"network {n + 1}/{len(drawn)} (row {row}): margins reproduced within {margin_errors[-1]:.2g}; "
              f"ours {sum(ours_seconds[-1]):.0f}s, TRAK {sum(trak_seconds[-1]):.0f}s CPU", flush=True)

    results = []
    scopes = [("all", slice(None))]
    if args.lds_targets:
        start, stop = (int(x) for x in args.lds_targets.split(":"))
        scopes.append((args.lds_targets, slice(start, stop)))
    for m in counts:
        for ck in sorted({1, len(epochs)}):
            used = list(range(len(epochs) - ck, len(epochs)))  # the last ck checkpoints (1: final weights)
            q_mean = np.mean([q_all[i][c] for i in range(m) for c in used], axis=0)
            for v in variants:
                for weighting in ("own-q", "mean-q") if args.variants else ("own-q",):
                    coef = np.mean([ours[v][i][c] * (q_all[i][c] if weighting == "own-q" else q_mean)[:, None]
                                    for i in range(m) for c in used], axis=0)
                    name = "ours" if (v, weighting) == ("default", "own-q") else f"ours {v}/{weighting}"
                    seconds = sum(ours_seconds[i][c] for i in range(m) for c in used)
                    for label, scope in scopes:
                        lds, interval = _lds(coef[:, scope], test_masks, actual[:, scope], test_draws)
                        results.append({"method": name, "networks": m, "checkpoints": ck, "targets": label,
                                        "lds": lds, "interval": interval,
                                        "cpu_minutes": seconds / 60 if name == "ours" else None})
            if not args.no_trak:
                started = time.process_time()
                scores = traker.finalize_scores(exp_name="targets", model_ids=[i * len(epochs) + c for i in range(m)
                                                                                for c in used])
                finish = time.process_time() - started
                seconds = sum(trak_seconds[i][c] for i in range(m) for c in used) + finish
                for label, scope in scopes:
                    lds, interval = _lds(np.array(scores, dtype=np.float64)[:, scope], test_masks, actual[:, scope],
                                         test_draws)
                    results.append({"method": "TRAK", "networks": m, "checkpoints": ck, "targets": label, "lds": lds,
                                    "interval": interval, "cpu_minutes": seconds / 60})

    alone = _each_alone(ours, q_all, traker if not args.no_trak else None, epochs, len(drawn), test_masks,
                        actual) if args.each_alone else []
    print("scoring CPU-min of every (network, checkpoint), by variant: "
          + ", ".join(f"{v} {t / 60:.2f}" for v, t in variant_seconds.items()))
    print(f"\ntraining the {len(drawn)} networks (shared): {train_seconds / 60:.2f} CPU-min; "
          f"final margins reproduce the stored rows within {max(margin_errors):.2g}")
    print(f"{'method':<28} {'nets':>4} {'ckpt':>4} {'targets':>7} {'LDS':>7} {'95%':>17} {'CPU-min':>8} {'ours/TRAK':>9}")
    for r in results:
        lo, hi = r["interval"] or (float("nan"), float("nan"))
        cpu = "" if r["cpu_minutes"] is None else f"{r['cpu_minutes']:.2f}"
        ratio = ""
        if r["method"] == "ours" and not args.no_trak:
            trak = next(t for t in results if t["method"] == "TRAK" and t["networks"] == r["networks"]
                        and t["checkpoints"] == r["checkpoints"] and t["targets"] == r["targets"])
            ratio = f"{r['cpu_minutes'] / trak['cpu_minutes']:.2f}"
        print(f"{r['method']:<28} {r['networks']:>4} {r['checkpoints']:>4} {r['targets']:>7} {r['lds']:>7.3f} "
              f"[{lo:>6.3f}, {hi:>6.3f}] {cpu:>8} {ratio:>9}")
    args.out.mkdir(parents=True, exist_ok=True)
    out = args.out / (f"trak-study-s{args.seed}-k{args.proj_dim}-c{args.checkpoints}-p{args.proj_seed}"
                      f"{'-perid' if args.proj_per_id else ''}.json")
    out.write_text(json.dumps({"store": str(args.store), "seed": args.seed, "rows": drawn.tolist(),
                               "proj_dim": args.proj_dim, "proj_seed": args.proj_seed, "epochs": list(epochs), "heldout_models": len(test_rows),
                               "train_cpu_minutes": train_seconds / 60, "margin_error": max(margin_errors),
                               "variant_cpu_minutes": {v: t / 60 for v, t in variant_seconds.items()},
                               "results": results, "each_alone": alone}, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
