"""Exact metagradients through source training and the ridge transfer (issue 33): the `replay` estimator.

When source training is deterministic (one training seed for every model: `randomness: shared`), the
transferred margin on target example j is a function of per-source-example loss weights w (P,): train the
built-in tiny CNN with loss Σ_i w_i ℓ_i / batch_size per step, extract features of the target images,
standardise them, fit the closed-form ridge head on the target training set and take the margin on each
target test image. This module computes that pipeline and its exact derivative d margin_j / d w_i, for
every source example i and target j, by differentiating through every SGD step (REPLAY/MAGIC-style
metagradients; Engstrom, Ilyas et al.).

**The relaxation.** A model trained on subset S is the pipeline at w = 1[S] when the data path does not
depend on S, which is how the trainer's `order: slots` works (every pool example has a slot per epoch; a
model trains at step s on the kept examples of slot s mod slots): there the pipeline at w = mask *is* the
trainer. With `order: shuffle` (the example recipe), a subset is walked in the order of per-example
priorities and cut into batches of `batch_size`; the replay uses the same priorities and cuts the whole
pool, ranked by them, into `slots` contiguous chunks (slots = the subsets' steps per epoch), so a kept
example shares its step with about the same kept neighbours as in the subset's own batch. The schedule
(steps per epoch, total steps, learning-rate peak) is that of the store's subset size, as the trainer
computes it. BatchNorm runs in training mode with batch statistics *weighted* by w (mean Σ w x / Σ w;
the running variance corrected with Σ w · H · W as the count), so w = mask gives the kept examples'
statistics and uniform weights the plain ones. Momentum, weight decay, the lr schedule, label smoothing
and the running statistics (which evaluation-mode features use) follow `dmtoolkit.train.fit.train_models`
and `torch.optim.SGD`; at w = 1 with the pool cut into batches exactly as the trainer cuts a full pool
(`tests/test_replay.py`) the replayed network is the trainer's.

**The derivative.** Reverse mode: the forward replay keeps only the state (parameters, momentum buffers,
BatchNorm running statistics) before every step; the backward sweep recomputes one step at a time from
its stored state (the step's graph, including its inner gradient, exists only while that step is
differentiated), so memory is (steps + 1) × state + one step's double-backward graph × the target chunk,
not every step's graph. The adjoints of a chunk of targets are carried together (`is_grads_batched`): one
sweep per chunk gives d margin_j / d w for every source example i at once. Reverse mode is the right
mode for the built-in stores' shape when targets are fewer than ~P; cost is about (targets / chunk) sweeps
of one training's forward and backward plus one batched double-backward per step and target.

`coef_` (P, T) = d margin / d w at the linearisation point w0 (in mask units: the effect of including
example i), `intercept_` = margin(w0) − w0 · coef, so `predict(mask)` is the first-order Taylor expansion
of the pipeline around w0. Linearisation points: `pool` (w = 1), `centre` (w = α, the subsets' mean),
or `row:N` (the mask of store row N).

**What it predicts** (docs/gradient.md, "Replay measured"): the derivative is exact, but an unrolled ReLU/
max-pool/BatchNorm training is only piecewise smooth, and at the example recipe's lr 0.1 it is rough at a
scale of 1e-7 in one weight, so the first-order prediction is uncorrelated with retraining at any removal
size (LDS ≈ 0). At lr 0.02 the same recipe gives LDS 0.35 from one replayed network on the development seed
and 0.29 ± 0.04 on fresh seeds, level with or above difference of means from 230 models. With a training
seed per model one network predicts little; `networks` averages the derivatives of several seeds. Check a
replay estimate with `dmtoolkit evaluate` before using it.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Self

import numpy as np
import torch
import torch.nn.functional as F

from dmtoolkit.capabilities import Capability
from dmtoolkit.errors import UserError
from dmtoolkit.estimate.base import Estimator, ExtraDataset
from dmtoolkit.estimate.ensemble import across_networks, network_stderr_record
from dmtoolkit.estimate.options import REPLAY_MODES, REPLAY_POINTS, REPLAY_TARGET_CHUNK
from dmtoolkit.estimate.source_task import SourceTaskScores

if TYPE_CHECKING:
    from dmtoolkit.estimate.splits import Draws
    from dmtoolkit.recipe import TransferSpec
    from dmtoolkit.train.fit import LoopSettings

BN_MOMENTUM, BN_EPS = 0.1, 1e-5  # nn.BatchNorm2d's defaults, which the built-in networks use


# --- the pipeline as pure functions of (state, w) -------------------------------------------------------
@dataclass(frozen=True)
class Architecture:
    """The G=1 tiny CNN's shape knobs (`dmtoolkit.train.models.BatchedTinyCNN`)."""

    downsample: str  # "maxpool" | "stride"
    batch_norm: bool


@dataclass(frozen=True)
class State:
    """Everything one SGD step reads and writes: parameters, momentum buffers, BatchNorm running statistics."""

    params: dict[str, torch.Tensor]
    momentum: dict[str, torch.Tensor]
    stats: dict[str, torch.Tensor]

    def flat(self) -> tuple[torch.Tensor, ...]:
        return (*self.params.values(), *self.momentum.values(), *self.stats.values())

    def like(self, tensors: tuple[torch.Tensor, ...] | list[torch.Tensor]) -> State:
        """A State with this one's names and the given tensors, in `flat` order."""
        n, m = len(self.params), len(self.momentum)
        return State(dict(zip(self.params, tensors[:n])), dict(zip(self.momentum, tensors[n:n + m])),
                     dict(zip(self.stats, tensors[n + m:])))

    def detach(self) -> State:
        return self.like([t.detach() for t in self.flat()])

    def numel(self) -> int:
        return sum(t.numel() for t in self.flat())


def _block(params: dict[str, torch.Tensor], stats: dict[str, torch.Tensor], new_stats: dict[str, torch.Tensor],
           k: int, x: torch.Tensor, arch: Architecture, weights: torch.Tensor | None) -> torch.Tensor:
    """Conv 3x3 -> halve -> BatchNorm (weighted batch statistics in training mode) -> ReLU, as BatchedConvBlock."""
    p = f"blocks.{k}"
    h = F.conv2d(x, params[f"{p}.conv.weight"], params.get(f"{p}.conv.bias"),
                 stride=2 if arch.downsample == "stride" else 1, padding=1)
    if arch.downsample == "maxpool":
        h = F.max_pool2d(h, 2)
    if not arch.batch_norm:
        return F.relu(h)
    mean_name, var_name = f"{p}.norm.running_mean", f"{p}.norm.running_var"
    if weights is None:  # evaluation mode: running statistics
        mean, var = stats[mean_name], stats[var_name]
    else:
        wx = weights[:, None, None, None]
        count = (weights.sum() * h.shape[2] * h.shape[3]).clamp_min(1e-12)
        mean = (h * wx).sum((0, 2, 3)) / count
        var = ((h - mean[None, :, None, None]) ** 2 * wx).sum((0, 2, 3)) / count
        unbiased = var * count / (count - 1).clamp_min(1e-12)
        new_stats[mean_name] = (1 - BN_MOMENTUM) * stats[mean_name] + BN_MOMENTUM * mean
        new_stats[var_name] = (1 - BN_MOMENTUM) * stats[var_name] + BN_MOMENTUM * unbiased
    h = (h - mean[None, :, None, None]) / torch.sqrt(var[None, :, None, None] + BN_EPS)
    h = h * params[f"{p}.norm.weight"][None, :, None, None] + params[f"{p}.norm.bias"][None, :, None, None]
    return F.relu(h)


def network_features(params: dict[str, torch.Tensor], stats: dict[str, torch.Tensor], x: torch.Tensor, layer: str,
                     arch: Architecture, weights: torch.Tensor | None = None
                     ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """`BatchedTinyCNN.features` of one network for images x (B, C, r, r), as a function of its tensors.

    `weights` None: evaluation mode (running statistics). Else training mode with batch statistics weighted by
    `weights` (B,); returns the updated running statistics too (empty in evaluation mode).
    """
    new_stats: dict[str, torch.Tensor] = {}
    h = x
    for k in range(2):
        h = _block(params, stats, new_stats, k, h, arch, weights)
    h = h.flatten(1)
    if layer == "conv":
        return h, new_stats
    hidden = F.relu(h @ params["hidden.weight"][0] + params["hidden.bias"][0])
    if layer == "penultimate":
        return hidden, new_stats
    return hidden @ params["head.weight"][0] + params["head.bias"][0], new_stats


@dataclass(frozen=True)
class ReplayProblem:
    """One deterministic source-training run and its transfer, as tensors: what `replay` differentiates.

    `index` (steps, width) are the pool examples of each step and `base` (steps, width) 1 for a real entry,
    0 for padding; a step's per-example weight is base × w[index]. `lrs` is each step's learning rate.
    `source_x`, `source_y`: the source task's held-out test examples, whose mean source margin is the
    source-task column (`source_task_margin`; None: not computed).
    """

    init: State
    arch: Architecture
    pool_x: torch.Tensor
    pool_y: torch.Tensor
    index: torch.Tensor
    base: torch.Tensor
    lrs: tuple[float, ...]
    batch_size: int
    momentum: float
    weight_decay: float
    label_smoothing: float
    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    num_classes: int
    transfer: TransferSpec
    source_x: torch.Tensor | None = None
    source_y: torch.Tensor | None = None

    @property
    def steps(self) -> int:
        return len(self.lrs)

    @property
    def num_examples(self) -> int:
        return len(self.pool_y)


def _step_loss(problem: ReplayProblem, params: dict[str, torch.Tensor], stats: dict[str, torch.Tensor],
               w: torch.Tensor, step: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Step `step`'s training loss for weights w (Σ weight · loss / batch size, as `train_models`) and the
    BatchNorm running statistics its forward pass leaves."""
    idx = problem.index[step]
    weights = problem.base[step] * w[idx]
    logits, new_stats = network_features(params, stats, problem.pool_x[idx], "logits", problem.arch, weights)
    losses = F.cross_entropy(logits, problem.pool_y[idx], label_smoothing=problem.label_smoothing, reduction="none")
    return (losses * weights).sum() / problem.batch_size, new_stats


def _sgd_update(problem: ReplayProblem, state: State, grads: dict[str, torch.Tensor],
                new_stats: dict[str, torch.Tensor], step: int) -> State:
    """`torch.optim.SGD` (momentum, no dampening, weight decay added to the gradient) at step `step`'s lr."""
    params, lr, new_params, new_momentum = state.params, problem.lrs[step], {}, {}
    for name, g in grads.items():
        d = g + problem.weight_decay * params[name] if problem.weight_decay else g
        if problem.momentum:
            d = d if step == 0 else problem.momentum * state.momentum[name] + d
            new_momentum[name] = d
        new_params[name] = params[name] - lr * d
    if not problem.momentum:
        new_momentum = dict(state.momentum)
    stats = {name: new_stats.get(name, value) for name, value in state.stats.items()}
    return State(new_params, new_momentum, stats)


def sgd_step(problem: ReplayProblem, state: State, w: torch.Tensor, step: int, create_graph: bool = False) -> State:
    """One step of `train_models` for weights w (autograd; `create_graph` to differentiate the step itself)."""
    loss, new_stats = _step_loss(problem, state.params, state.stats, w, step)
    names = list(state.params)
    grads = torch.autograd.grad(loss, [state.params[n] for n in names], create_graph=create_graph)
    return _sgd_update(problem, state, dict(zip(names, grads)), new_stats, step)


def sgd_step_functional(problem: ReplayProblem, state: State, w: torch.Tensor, step: int) -> State:
    """`sgd_step` written with `torch.func.grad`, so forward mode (`torch.func.jvp`, `vmap`) can go through it."""
    from torch.func import grad

    grads, new_stats = grad(lambda p: _step_loss(problem, p, state.stats, w, step), has_aux=True)(state.params)
    return _sgd_update(problem, state, grads, new_stats, step)


def transferred_margins(problem: ReplayProblem, state: State, columns: slice | None = None) -> torch.Tensor:
    """Margins (T,) of the ridge head fitted on the target training features of the trained network (evaluation
    mode), on target test examples `columns`, as `transfer_fixed_feature` and `fit_ridge_heads` compute them."""
    from dmtoolkit.train.fit import margins_from_logits
    from dmtoolkit.train.transfer import fit_ridge_heads

    layer = problem.transfer.feature_layer
    columns = columns or slice(0, len(problem.test_y))
    train_feats, _ = network_features(state.params, state.stats, problem.train_x, layer, problem.arch)
    test_feats, _ = network_features(state.params, state.stats, problem.test_x[columns], layer, problem.arch)
    dtype = train_feats.dtype
    weight, bias, mean, std = fit_ridge_heads(train_feats[None], problem.train_y, problem.num_classes, problem.transfer)
    logits = ((test_feats - mean[0]) / std[0]) @ weight[0].to(dtype) + bias[0].to(dtype)
    return margins_from_logits(logits, problem.test_y[columns])


def source_task_margin(problem: ReplayProblem, state: State) -> torch.Tensor:
    """(1,) the trained source network's mean margin on the source task's held-out test examples (evaluation
    mode): the smooth stand-in for source accuracy whose derivative is the source-task column
    (`dmtoolkit.estimate.source_task`)."""
    from dmtoolkit.train.fit import margins_from_logits

    assert problem.source_x is not None and problem.source_y is not None
    logits, _ = network_features(state.params, state.stats, problem.source_x, "logits", problem.arch)
    return margins_from_logits(logits, problem.source_y).mean()[None]


def source_task_adjoint(problem: ReplayProblem, final: State) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
    """The mean source margin at the final state and its gradient with respect to that state's tensors: one
    backward pass, so the source test set never enters the batched sweeps (their memory grows with the batch)."""
    z = tuple(t.detach().requires_grad_(True) for t in final.flat())
    with torch.enable_grad():
        value = source_task_margin(problem, final.like(z))
        got = torch.autograd.grad(value.sum(), z, allow_unused=True)
    return value.detach(), tuple(torch.zeros_like(x) if g is None else g for g, x in zip(got, z))


def train(problem: ReplayProblem, w: torch.Tensor, keep: bool = False) -> tuple[State, list[State]]:
    """The final state of training with weights w, and (`keep`) the state before every step (detached)."""
    state, kept = problem.init, []
    for step in range(problem.steps):
        if keep:
            kept.append(state)
        with torch.enable_grad():
            params = {n: p.detach().requires_grad_(True) for n, p in state.params.items()}
            state = sgd_step(problem, State(params, state.momentum, state.stats), w.detach(), step).detach()
    return state, kept


def pipeline_margins(problem: ReplayProblem, w: torch.Tensor, columns: slice | None = None,
                     source_task: bool = False) -> torch.Tensor:
    """The transferred margins as a function of w alone (no derivative): train, transfer, score; then
    (`source_task`) the mean source margin."""
    final, _ = train(problem, w)
    with torch.no_grad():
        margins = transferred_margins(problem, final, columns)
        return torch.cat([margins, source_task_margin(problem, final).to(margins)]) if source_task else margins


def _grads(outputs: tuple[torch.Tensor, ...], inputs: tuple[torch.Tensor, ...],
           cotangents: tuple[torch.Tensor, ...]) -> list[torch.Tensor]:
    """Batched vector-Jacobian products: for each leading row of `cotangents`, Σ cotangent · d outputs / d inputs."""
    used = [k for k, o in enumerate(outputs) if o.requires_grad]
    chunk = cotangents[0].shape[0]
    got = torch.autograd.grad([outputs[k] for k in used], inputs, [cotangents[k] for k in used],
                              is_grads_batched=True, allow_unused=True)
    return [torch.zeros(chunk, *x.shape, dtype=x.dtype, device=x.device) if g is None else g
            for g, x in zip(got, inputs)]


def replay_gradient(problem: ReplayProblem, w: torch.Tensor, columns: slice | None = None,
                    chunk: int = REPLAY_TARGET_CHUNK, progress: Callable[[str], None] | None = None,
                    timing: dict[str, float] | None = None,
                    source_task: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """(d margin_j / d w_i (P, T), margins (T,)) at w for the target test examples `columns`, exactly;
    with `source_task`, one more column and margin (P, T + 1), (T + 1,): the mean source margin
    (`source_task_margin`), its adjoint (`source_task_adjoint`) swept back with the first chunk of targets.

    Reverse mode with the states stored before every step and each step's graph recomputed during the backward
    sweep; `chunk` targets share one sweep (their adjoints batched). The sweep's own forward pass is one training
    (and the transfer of its first chunk of targets): its process time goes into `timing["train_cpu_seconds"]`,
    the unit the derivative's cost is measured in, without training again for it.
    """
    columns = columns or slice(0, len(problem.test_y))
    w = w.detach()
    started = time.process_time()
    final, states = train(problem, w, keep=True)
    train_seconds = time.process_time() - started
    num_targets = len(range(*columns.indices(len(problem.test_y))))
    extra = int(source_task)  # the source-task column rides with the first chunk
    out = torch.zeros(problem.num_examples, num_targets + extra, dtype=w.dtype, device=w.device)
    margins = torch.zeros(num_targets + extra, dtype=w.dtype, device=w.device)
    for start in range(0, num_targets, chunk):
        cols = slice(columns.start + start, columns.start + min(start + chunk, num_targets))
        c = cols.stop - cols.start
        z = tuple(t.detach().requires_grad_(True) for t in final.flat())
        transfer_started = time.process_time()
        with torch.enable_grad():
            m = transferred_margins(problem, final.like(z), cols)
        if start == 0 and timing is not None:  # one training and transfer (the transfer's graph included)
            timing["train_cpu_seconds"] = train_seconds + time.process_time() - transfer_started
        with torch.enable_grad():
            adjoint = _grads((m,), z, (torch.eye(c, dtype=m.dtype, device=m.device),))
        margins[start:start + c] = m.detach()
        place = list(range(start, start + c))
        if source_task and start == 0:
            value, task_adjoint = source_task_adjoint(problem, final)
            adjoint = [torch.cat([a, t[None]]) for a, t in zip(adjoint, task_adjoint)]
            margins[num_targets] = value[0]
            place, c = [*place, num_targets], c + 1
        dw = torch.zeros(c, problem.num_examples, dtype=w.dtype, device=w.device)
        for step in reversed(range(problem.steps)):
            z = tuple(t.detach().requires_grad_(True) for t in states[step].flat())
            wv = w.clone().requires_grad_(True)
            with torch.enable_grad():
                nxt = sgd_step(problem, states[step].like(z), wv, step, create_graph=True).flat()
                got = _grads(nxt, (*z, wv), tuple(adjoint))
            adjoint, dw = got[:-1], dw + got[-1]
        out[:, place] = dw.T
        if progress is not None:
            progress(f"replay: targets {cols.start}-{cols.stop - 1} done")
    return out, margins


def forward_gradient(problem: ReplayProblem, w: torch.Tensor, columns: slice | None = None,
                     chunk: int = REPLAY_TARGET_CHUNK, progress: Callable[[str], None] | None = None,
                     timing: dict[str, float] | None = None,
                     source_task: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """`replay_gradient` in forward mode: `chunk` source examples' tangents (e_i) are pushed through every step
    together (`vmap` of `torch.func.jvp`), then through the transfer to every target at once. Cheaper than
    reverse mode when source examples are fewer than targets; memory is one step's activations × chunk and
    the state's tangents × chunk (no stored states). The primal training runs inside every sweep's jvp, so no
    plain training is timed: `timing["sweep_cpu_seconds"]` gets the first sweep's process time (`chunk`
    tangents through training and the transfer) instead."""
    from torch.func import jvp, vmap

    columns = columns or slice(0, len(problem.test_y))
    w = w.detach()
    names = problem.init
    num_targets = len(range(*columns.indices(len(problem.test_y)))) + int(source_task)
    out = torch.zeros(problem.num_examples, num_targets, dtype=w.dtype, device=w.device)
    margins = None
    task: tuple[torch.Tensor, tuple[torch.Tensor, ...]] | None = None  # the final state is the same in every sweep
    for start in range(0, problem.num_examples, chunk):
        started = time.process_time()
        units = torch.arange(start, min(start + chunk, problem.num_examples), device=w.device)
        w_dot = torch.zeros(len(units), problem.num_examples, dtype=w.dtype, device=w.device)
        w_dot[torch.arange(len(units)), units] = 1.0
        z = problem.init.flat()
        z_dot = tuple(torch.zeros(len(units), *t.shape, dtype=t.dtype, device=t.device) for t in z)
        for step in range(problem.steps):
            def push(zt: tuple[torch.Tensor, ...], wt: torch.Tensor, z=z, step=step) -> tuple[Any, Any]:
                return jvp(lambda zz, ww: sgd_step_functional(problem, names.like(zz), ww, step).flat(),
                           (z, w), (zt, wt))
            primal, z_dot = vmap(push, out_dims=(None, 0), randomness="error")(z_dot, w_dot)
            z = tuple(t.detach() for t in primal)
            z_dot = tuple(t.detach() for t in z_dot)

        def through_transfer(zt: tuple[torch.Tensor, ...], z=z) -> tuple[torch.Tensor, torch.Tensor]:
            return jvp(lambda zz: transferred_margins(problem, names.like(zz), columns), (z,), (zt,))
        m, m_dot = vmap(through_transfer, out_dims=(None, 0))(z_dot)
        if source_task:  # its tangent is the final state's tangent against the source margin's gradient
            task = task or source_task_adjoint(problem, names.like(z))
            value, task_adjoint = task
            task_dot = sum((t * g[None]).flatten(1).sum(1) for t, g in zip(z_dot, task_adjoint))
            m, m_dot = torch.cat([m, value.to(m)]), torch.cat([m_dot, task_dot[:, None].to(m_dot)], dim=1)
        out[units] = m_dot.detach()
        margins = m.detach()
        if start == 0 and timing is not None:
            timing["sweep_cpu_seconds"] = time.process_time() - started
        if progress is not None:
            progress(f"replay: source examples {int(units[0])}-{int(units[-1])} done")
    return out, margins


def choose_mode(mode: str, num_examples: int, num_targets: int) -> str:
    """"auto": forward mode when there are fewer source examples than targets (one tangent per example against
    one adjoint per target; each costs about the same per step), else reverse mode."""
    if mode != "auto":
        return mode
    return "forward" if num_examples < num_targets else "reverse"


def state_bytes(problem: ReplayProblem) -> int:
    """Bytes of the states the backward sweep keeps: (steps + 1) × (parameters, momentum, running statistics)."""
    return (problem.steps + 1) * problem.init.numel() * problem.pool_x.element_size()


# --- the batch plan: the trainer's data order as weighted slots over the whole pool ------------------------
def replay_plan(num_examples: int, subset_size: int, order_seed: int, settings: LoopSettings
                ) -> tuple[np.ndarray, np.ndarray, int, int]:
    """(index (steps, width), base weights (steps, width), steps per epoch, steps) of the relaxation (see the
    module docstring): the trainer's slots for `order: slots`, contiguous chunks of the pool ranked by the
    trainer's shuffle priorities for `order: shuffle`; the schedule is that of a subset of `subset_size`."""
    from dmtoolkit.train.fit import slot_batches, step_counts

    steps_per_epoch, steps = step_counts([subset_size], settings)
    pool = np.arange(num_examples)
    if settings.order == "slots":
        index, base = slot_batches([pool], num_examples, [order_seed], steps_per_epoch, steps)
        return index[:, 0], base[:, 0], steps_per_epoch, steps
    batches = []
    for epoch in range(-(-steps // steps_per_epoch)):
        priorities = np.random.default_rng([order_seed, epoch]).random(num_examples)
        ranked = pool[np.argsort(priorities, kind="stable")]
        batches.extend(np.array_split(ranked, steps_per_epoch))
    batches = batches[:steps]
    width = max(len(b) for b in batches)
    index = np.zeros((steps, width), np.int64)
    base = np.zeros((steps, width), np.float32)
    for s, b in enumerate(batches):
        index[s, :len(b)], base[s, :len(b)] = b, 1.0
    return index, base, steps_per_epoch, steps


def check_replayable(recipe: Any, where: str) -> None:
    """Refuse, in one line, what the replay cannot differentiate."""
    Capability.BUILTIN_NETWORKS.require(recipe, where, "replay")  # its training code, step by step
    if recipe.subsets.kind != "example":
        raise UserError(f"{where}: the replay estimator needs an example-level run store "
                        f"(this one is {recipe.subsets.kind}-level)")
    if recipe.model.arch != "tiny-cnn":
        raise UserError(f"{where}: architecture {recipe.model.arch}; the replay estimator differentiates the "
                        "built-in tiny CNN only")
    if recipe.model.final_resolution not in (None, recipe.model.resolution):
        raise UserError(f"{where}: progressive resizing is not replayed; the replay estimator needs "
                        "model.final_resolution unset")
    if recipe.transfer.mode != "fixed-feature" or recipe.transfer.head != "ridge":
        raise UserError(f"{where}: transfer {recipe.transfer.mode}/{recipe.transfer.head}; the replay estimator "
                        "differentiates the closed-form ridge head of fixed-feature transfer only")


def problem_from_trainer(trainer: Any, seed: int, subset_size: int, dtype: torch.dtype = torch.float32
                         ) -> tuple[ReplayProblem, int, int]:
    """The ReplayProblem of a `BuiltinTrainer` (the recipe's network, training loop and transfer), initialised from
    `seed` exactly as `train_source_models` does; returns (problem, steps per epoch, steps)."""
    from dmtoolkit.train.fit import LoopSettings, lr_factor
    from dmtoolkit.train.models import build_model

    recipe = trainer.recipe
    spec, loop = recipe.model, recipe.training
    torch.manual_seed(seed)
    net = build_model(spec.arch, 1, trainer.channels, trainer.num_source_classes, spec.resolution, spec.width,
                      spec.hidden, spec.downsample, spec.norm)
    net.init_from_seeds([seed])
    settings = LoopSettings(epochs=loop.epochs, batch_size=loop.batch_size, lr=loop.lr, momentum=loop.momentum,
                            weight_decay=loop.weight_decay, schedule=loop.schedule, peak_epoch=loop.peak_epoch,
                            label_smoothing=loop.label_smoothing, order=loop.order)
    num_examples = len(trainer.pool_y)
    index, base, per_epoch, steps = replay_plan(num_examples, subset_size, seed + 1, settings)
    device = trainer.pool_x.device
    lrs = tuple(loop.lr * lr_factor(s, steps, loop.schedule, loop.peak_epoch * per_epoch) for s in range(steps))
    params = {n: p.detach().to(device, dtype).contiguous() for n, p in net.named_parameters()}
    stats = {n: b.detach().to(device, dtype) for n, b in net.named_buffers() if "running" in n}
    momentum = {n: torch.zeros_like(p) for n, p in params.items()}
    problem = ReplayProblem(
        init=State(params, momentum, stats), arch=Architecture(spec.downsample, spec.norm == "batch"),
        pool_x=trainer.pool_x.to(dtype).contiguous(), pool_y=trainer.pool_y,
        index=torch.from_numpy(index).to(device), base=torch.from_numpy(base).to(device, dtype),
        lrs=lrs, batch_size=loop.batch_size, momentum=loop.momentum, weight_decay=loop.weight_decay,
        label_smoothing=loop.label_smoothing, train_x=trainer.target_train_x.to(dtype).contiguous(),
        train_y=trainer.target_train_y, test_x=trainer.target_test_x.to(dtype).contiguous(),
        test_y=trainer.target_test_y, num_classes=trainer.num_target_classes, transfer=recipe.transfer,
        source_x=trainer.source_test_x.to(dtype).contiguous(), source_y=trainer.source_test_y)
    return problem, per_epoch, steps


# --- the estimator over a run store -------------------------------------------------------------------
def linearisation_point(point: str, alpha: float, masks: Any, num_examples: int) -> np.ndarray:
    """w0 (P,) for `point`: "pool" (1), "centre" (α) or "row:N" (store row N's mask)."""
    if point == "pool":
        return np.ones(num_examples)
    if point == "centre":
        return np.full(num_examples, float(alpha))
    if point.startswith("row:") and point[4:].isdigit():
        row = int(point[4:])
        if row >= masks.shape[0]:
            raise UserError(f"linearisation point {point}: the store has {masks.shape[0]} rows")
        return np.asarray(masks[row:row + 1], np.float64)[0]
    raise UserError(f"linearisation point {point!r} must be pool, centre or row:N")


class ReplayEstimator(Estimator):
    """Exact d margin / d w through the replayed source training and the ridge transfer; see the module docstring.

    `store_path` is the run store whose recipe and data define the pipeline (the one `fit` gets masks and
    margins of); `point` the linearisation point; `double` runs the replay in float64. `networks` > 1 (stores
    whose models trained from several seeds, e.g. `randomness: per-model`) replays that many networks, with the
    training seeds of the first fitting rows, and averages their derivatives: the mean over seeds that one
    network's derivative otherwise stands for (each network's is kept in `replay/network_coef`).
    """

    name = "replay"
    coef_meaning = ("exact derivative of the transferred margin with respect to the unit's weight in source "
                    "training, at the linearisation point (change in margin when the unit is in the subset, "
                    "to first order)")

    def __init__(self, store_path: str | Path, *, point: str = "centre", mode: str = "auto", double: bool = False,
                 chunk: int = REPLAY_TARGET_CHUNK, networks: int = 1, device: str | None = None,
                 progress: Callable[[str], None] | None = None) -> None:
        self.store_path = Path(store_path)
        self.point, self.mode, self.double, self.chunk, self.networks = point, mode, double, chunk, networks
        self.device, self.progress = device, progress

    def settings(self) -> dict[str, Any]:
        return {"point": self.point, "mode": self.mode, "double": self.double, "chunk": self.chunk,
                "networks": self.networks}

    def check_settings(self) -> None:
        if self.mode not in REPLAY_MODES:
            raise UserError(f"mode {self.mode!r} must be one of {', '.join(REPLAY_MODES)}")
        if self.chunk < 1:
            raise UserError(f"target chunk {self.chunk} must be ≥ 1")
        if self.networks < 1:
            raise UserError(f"replayed networks {self.networks} must be ≥ 1")
        if self.point not in REPLAY_POINTS and not (self.point.startswith("row:") and self.point[4:].isdigit()):
            raise UserError(f"linearisation point {self.point!r} must be pool, centre or row:N")

    def _context(self) -> Any:
        from dmtoolkit.store import RunStore
        from dmtoolkit.train.job import RunContext

        with RunStore(self.store_path) as store:
            store.require(Capability.RECIPE, "replay")
            recipe = store.recipe
        check_replayable(recipe, str(self.store_path))
        return RunContext.from_store(self.store_path, self.device)

    def fit(self, masks: Any, margins: Any, rows: np.ndarray | None = None, *,
            unit_names: list[str] | None = None, draws: Draws | None = None) -> Self:
        from dmtoolkit.train.job import model_seed

        self.check_settings()
        rows = np.sort(np.arange(masks.shape[0]) if rows is None else np.asarray(rows))
        context = self._context()
        recipe = context.recipe
        fit_masks = np.asarray(masks[0:masks.shape[0]], bool)
        if fit_masks.shape != context.masks.shape or not np.array_equal(fit_masks, context.masks):
            raise UserError(f"the masks given to fit are not those of {self.store_path}; fit the replay estimator "
                            "on the store it was made with (fit_store does)")
        training_seed, randomness = recipe.seeding
        row_seeds = [model_seed(training_seed, recipe.subsets.seed, int(r), randomness, recipe.seed_blocks) for r in rows]
        distinct = list(dict.fromkeys(row_seeds))  # the fitting rows' training seeds, in row order
        if self.networks > len(distinct):
            raise UserError(f"{self.networks} replayed networks need as many training seeds; the {len(rows)} fitting "
                            f"rows of {self.store_path} trained from {len(distinct)} (training randomness "
                            f"{randomness!r})")
        seeds = distinct[:self.networks]
        warnings = []
        if len(distinct) > len(seeds):
            warnings.append(f"training randomness {randomness!r}: the {len(rows)} fitting rows trained from "
                            f"{len(distinct)} seeds; {len(seeds)} replayed network{'s' if len(seeds) > 1 else ''} (the first "
                            "fitting rows' seeds) stand for all")
        subset_size = int(round(float(fit_masks[rows].sum(1).mean())))
        dtype = torch.float64 if self.double else torch.float32
        columns = getattr(margins, "columns", slice(0, margins.shape[1]))
        num_targets = len(range(*columns.indices(int(margins.shape[1]))))
        self.mode_ = choose_mode(self.mode, context.trainer.pool_y.shape[0], num_targets)
        differentiate = forward_gradient if self.mode_ == "forward" else replay_gradient
        started, wall = time.process_time(), time.perf_counter()
        coefs, task_coefs, at_points, timings = [], [], [], []
        w0 = linearisation_point(self.point, recipe.subsets.alpha, fit_masks, fit_masks.shape[1])  # one for every seed
        for seed in seeds:  # each network's derivative at w0; the estimate is their mean (the mean over seeds)
            problem, per_epoch, steps = problem_from_trainer(context.trainer, seed, subset_size, dtype)
            timing: dict[str, float] = {}
            coef, at_point = differentiate(problem, torch.as_tensor(w0, dtype=dtype, device=problem.pool_x.device),
                                           columns, self.chunk, self.progress, timing, source_task=True)
            coefs.append(coef[:, :-1].double().cpu().numpy())  # the targets; the last column is the source task
            task_coefs.append(coef[:, -1].double().cpu().numpy())
            at_points.append(at_point[:-1].double().cpu().numpy())
            timings.append(timing)
        self.cpu_seconds_ = time.process_time() - started
        self.seconds_ = time.perf_counter() - wall
        # one training and transfer, the unit the cost is counted in: measured in reverse mode's own forward pass;
        # forward mode trains only inside its tangent sweeps, so it has none (NaN)
        self.train_cpu_seconds_ = float(np.mean([t["train_cpu_seconds"] for t in timings])) \
            if all("train_cpu_seconds" in t for t in timings) else float("nan")
        coef64 = np.mean(coefs, axis=0)
        spread = across_networks(coefs)  # with 2 or more seeds, the error of that mean across them
        self.coef_ = coef64.astype(np.float32)
        self.stderr_ = None if spread.stderr is None else spread.stderr.astype(np.float32)
        self.stderr_dof_ = spread.dof
        task = across_networks(task_coefs)  # each pool example's derivative on the source task, the same way
        self.source_task_ = SourceTaskScores.of(task.mean, task.stderr)
        self.margin_at_point_ = np.mean(at_points, axis=0)
        self.intercept_ = (self.margin_at_point_ - w0 @ coef64).astype(np.float32)
        self.network_coef_ = np.stack(coefs).astype(np.float32) if len(seeds) > 1 else None
        self.network_margin_at_point_ = np.stack(at_points).astype(np.float32) if len(seeds) > 1 else None
        self.w0_ = w0
        self.seeds_ = tuple(int(s) for s in seeds)
        self.seed_, self.subset_size_, self.steps_, self.steps_per_epoch_ = seeds[0], subset_size, steps, per_epoch
        self.state_bytes_ = state_bytes(problem)
        self.num_state_ = problem.init.numel()
        self.order_, self.randomness_ = recipe.training.order, randomness
        self.warnings_ = tuple(warnings)
        self.fit_rows_ = rows
        return self

    def fitted_attributes(self) -> dict[str, Any]:
        return {
            "replay_point": self.point,
            "replay_point_mean_weight": float(np.mean(self.w0_)),
            "replay_seed": self.seed_,
            "replay_seeds": json.dumps(list(self.seeds_)),
            "replay_networks": len(self.seeds_),
            "replay_randomness": self.randomness_,
            "replay_order": self.order_,
            "replay_relaxation": ("weighted loss sum / batch size over the whole pool in "
                                  + ("the trainer's slots" if self.order_ == "slots" else
                                     "contiguous chunks of the trainer's shuffle priorities")
                                  + "; BatchNorm statistics weighted by w"),
            "replay_subset_size": self.subset_size_,
            "replay_steps": self.steps_,
            "replay_steps_per_epoch": self.steps_per_epoch_,
            "replay_dtype": "float64" if self.double else "float32",
            "replay_state_numel": self.num_state_,
            "replay_state_bytes": self.state_bytes_,
            "replay_cpu_seconds": self.cpu_seconds_,
            "replay_seconds": self.seconds_,
            "replay_train_cpu_seconds": self.train_cpu_seconds_,
            "replay_mode": self.mode_,
            "replay_mode_meaning": ("forward: vmap of jvp, `chunk` source examples' tangents per sweep through "
                                    "training" if self.mode_ == "forward" else "reverse: states stored per step, "
                                    "each step recomputed in the backward sweep, `chunk` targets' adjoints per sweep"),
            "replay_chunk": self.chunk,
            **self._stderr_record()[0],
        }

    def _stderr_record(self) -> tuple[dict[str, Any], list[ExtraDataset]]:
        return network_stderr_record(self.name, len(self.seeds_), self.stderr_,
                                     fixed="linearisation point, store and pipeline; not the linearisation's bias",
                                     more="--networks, on a store whose models trained from several seeds")

    def extra_datasets(self) -> list[ExtraDataset]:
        per_network = [] if self.network_coef_ is None else [
            ExtraDataset("replay/network_coef", self.network_coef_, "each replayed network's derivative at w0 "
                         "(coef is their mean); networks in the order of replay_seeds", "network, unit, target example",
                         "margin per unit"),
            ExtraDataset("replay/network_margin_at_point", self.network_margin_at_point_, "each replayed network's "
                         "transferred margin at w0", "network, target example", "margin")]
        return self._stderr_record()[1] + per_network + self.source_task_.datasets() + [
            ExtraDataset("replay/point", self.w0_.astype(np.float32), "linearisation point: each source example's "
                         "weight w0 in the replayed training loss", "unit", "weight"),
            ExtraDataset("replay/margin_at_point", self.margin_at_point_.astype(np.float32),
                         "transferred margin of the replayed pipeline at w0", "target example", "margin"),
        ]


def fit_replay(store_path: str | Path, out_path: str | Path, *, point: str = "centre", mode: str = "auto",
               double: bool = False,
               chunk: int = REPLAY_TARGET_CHUNK, networks: int = 1, device: str | None = None,
               targets: slice | None = None,
               holdout_frac: float = 0.1, seed: int = 0, force: bool = False,
               progress: Callable[[str], None] | None = None) -> ReplayEstimator:
    """Fit the replay estimator on an example-level store and write ESTIMATE.h5 (the same held-out split as every
    estimator, so `dmtoolkit evaluate` scores it on the store's test rows)."""
    from dmtoolkit.devices import resolve_device
    from dmtoolkit.estimate.fit import fit_store

    resolve_device(device)
    model = ReplayEstimator(store_path, point=point, mode=mode, double=double, chunk=chunk, networks=networks,
                            device=device, progress=progress)
    model.check_settings()
    return fit_store(store_path, out_path, model, test_fraction=holdout_frac, seed=seed, targets=targets, force=force)
