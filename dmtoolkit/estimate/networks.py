"""What the gradient estimator needs from whoever trains a store's networks (issue 32): the contract.

The gradient estimator (`dmtoolkit.estimate.gradient`) scores pool examples from a few trained networks. It
needs, for each network (and for each checkpoint of it along training):

- its trained parameters θ, as a mapping name -> tensor (the order gradients are flattened in);
- `source_logits(θ, x)`: the source network's logits on a batch of pool inputs (B, …) -> (B, K), as a
  function of θ. The gradient of TRAK's output function f_i = z_y − log Σ_{k≠y} exp z_k of these logits is
  what is differentiated (`Network.source_output`; a subclass may override it and `loss_weight`);
- `target_logits(θ, x)`: the *transferred* model's logits on a batch of target test inputs (B, …) -> (B, K_t)
  as a function of θ: the frozen features of the source network under θ, then the fitted target head held
  fixed. Its margin z_y − max_{k≠y} z_k (`Network.target_margin`) is the target side of every score;
- the inputs themselves, as the network takes them: every pool example in unit order (`pool`) and every
  target test example in the store's order (`targets`), with their labels;
- optionally, held-out examples of the source task (`source_test`): each pool example is then also scored on
  the source task itself (`dmtoolkit.estimate.source_task`), which `mislabels` needs to test that an image
  hurts the task it is labelled for.

A `Network` holds these. Whoever trains the networks implements `GradientNetworks`: a callable that takes the
same `Job` a trainer takes (`dmtoolkit.train.contract.Job`: the row's mask, seed, device, data, options) and
returns that job's trained network, or several checkpoints of it (a list, the final weights last). The
estimator calls it for the store rows it retrains (each with its own job) and, for `--full-models`, for
jobs that keep the whole pool (`index` −1). Two implementations:

- `BuiltinNetworks`: the built-in tiny CNN / ResNet-18 (retrains a row with `BuiltinTrainer`, with its whole
  batched group by default, takes its network out of the batch with `group_member`, fits the recipe's
  fixed-feature head exactly as the store's rows were transferred, `_fixed_head`), with checkpoints after
  chosen epochs;
- a user's trainer: the function `gradient_networks(job)` in the module of the recipe's `trainer:
  MODULE:FUNCTION` (`load_hook`), wrapped by `HookNetworks` so that whatever it raises or returns wrong is one
  `TrainerError` line. docs/trainers.md ("Gradients from your trainer") and examples/digits_examples.py show
  one.

Without a store, `dmtoolkit.estimate.gradient.attribute(networks)` scores a list of `Network`s directly.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np
import torch
from torch import nn
from torch.func import functional_call, vmap

from dmtoolkit.errors import TrainerError, UserError
from dmtoolkit.plugins import error_line, load_function

if TYPE_CHECKING:
    from dmtoolkit.estimate.gradient import Projector
    from dmtoolkit.train.contract import Job

__all__ = ["HOOK", "BuiltinNetworks", "Examples", "GradientNetworks", "HookNetworks", "Network", "checkpoint_epochs",
           "full_pool_job", "load_hook", "parse_checkpoints"]

HOOK = "gradient_networks"
"""The function a trainer's module defines to give the gradient estimator its networks."""

LogitsFunction = Callable[[Mapping[str, torch.Tensor], torch.Tensor], torch.Tensor]
"""(θ, x (B, …)) -> logits (B, K): a network's outputs on a batch as a function of its parameters θ."""

HeadGradients = Callable[["Projector", slice, int], torch.Tensor]
"""(projection, target columns, chunk) -> (T, k): an extra term of the projected target gradients (the path
through a head refitted on the features; the built-in ridge head under `--head differentiated`)."""


@dataclass(frozen=True, eq=False)
class Examples:
    """Inputs as the network takes them and their labels: x (N, …) a tensor, y (N,) int64 class indices."""

    x: torch.Tensor
    y: torch.Tensor

    def __len__(self) -> int:
        return len(self.x)


class _Call(nn.Module):
    """`fn(model, x)` as a module's forward, so `functional_call` can run it with given parameters."""

    def __init__(self, model: nn.Module, fn: Callable[[nn.Module, torch.Tensor], torch.Tensor]) -> None:
        super().__init__()
        self.model, self.fn = model, fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(self.model, x)


@dataclass(frozen=True, eq=False)
class Network:
    """One trained network (one checkpoint of it) as the gradient estimator differentiates it.

    params          θ, name -> tensor (detached): what is differentiated, flattened in this order
    source_logits   (θ, x (B, …)) -> (B, K) source logits on pool inputs
    target_logits   (θ, x (B, …)) -> (B, K_t) the transferred model's logits on target test inputs: frozen
                    features under θ, then the fitted head held fixed
    pool            every pool example, in the store's unit order (P rows): `Examples(x, y)`
    targets         every target test example, in the store's order (T rows), y = the store's target labels
    checkpoint      a label for the file ("final", "epoch 10", …)
    final           these are the weights the store's row was computed with: their target margins are
                    compared with the row's (`gradient/margin_error`); False for earlier checkpoints
    train_indices   the pool examples this network was trained on (the kernel's examples); None: the job's
                    kept examples (or, in `attribute`, the whole pool)
    source_accuracy in [0, 1], NaN when not measured
    head_gradients  optional extra term of the target gradients (see `HeadGradients`); None: the head is fixed
    source_test     optional held-out examples of the *source* task (`Examples`, y = their source labels): with
                    them every pool example is also scored on the source task itself (the mean source margin
                    over these, `source_task_margin`), the evidence `mislabels` needs that an image hurts
                    the task it is labelled for; None: that column is not computed

    The defaults differentiate TRAK's output function of `source_logits` and the margin of `target_logits`; a
    subclass may override `source_output`, `loss_weight` (q, the derivative of the loss in that output, so
    that −∇loss_i = q_i ∇f_i) and `target_margin`. Every function must be written with torch operations on
    its arguments (no `.item()`, NumPy or in-place changes of θ): it is differentiated with `torch.func`
    (`vmap` of `grad`), one example at a time.
    """

    params: Mapping[str, torch.Tensor]
    source_logits: LogitsFunction
    target_logits: LogitsFunction
    pool: Examples
    targets: Examples
    checkpoint: str = "final"
    final: bool = True
    train_indices: np.ndarray | None = None
    source_accuracy: float = math.nan
    head_gradients: HeadGradients | None = None
    source_test: Examples | None = None

    def source_output(self, params: Mapping[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """(B,) TRAK's output f = z_y − log Σ_{k≠y} exp z_k of the source logits: what is differentiated."""
        from dmtoolkit.estimate.gradient import source_output

        return vmap(source_output)(self.source_logits(params, x), y)

    def loss_weight(self, params: Mapping[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """(B,) q = 1 − p_y (float64), so that −∇ cross-entropy_i = q_i ∇f_i for TRAK's f."""
        z = self.source_logits(params, x)
        return 1.0 - torch.softmax(z.double(), dim=-1).gather(1, y[:, None]).squeeze(1)

    def target_margin(self, params: Mapping[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """(B,) the transferred margin z_y − max_{k≠y} z_k of the target logits."""
        from dmtoolkit.estimate.gradient import margin_of

        return vmap(margin_of)(self.target_logits(params, x), y)

    def source_task_margin(self, params: Mapping[str, torch.Tensor], x: torch.Tensor,
                           y: torch.Tensor) -> torch.Tensor:
        """(B,) the source network's margin z_y − max_{k≠y} z_k on held-out source examples: the smooth stand-in
        for source accuracy that the source-task column differentiates (its mean over `source_test`)."""
        from dmtoolkit.estimate.gradient import margin_of

        return vmap(margin_of)(self.source_logits(params, x), y)

    @property
    def num_params(self) -> int:
        return sum(p.numel() for p in self.params.values())

    @classmethod
    def from_module(cls, model: nn.Module, source_logits: Callable[[nn.Module, torch.Tensor], torch.Tensor],
                    target_logits: Callable[[nn.Module, torch.Tensor], torch.Tensor], *, pool: Examples,
                    targets: Examples, **fields: Any) -> Network:
        """A `Network` from a torch module: `source_logits(model, x)` and `target_logits(model, x)` are ordinary
        calls (e.g. `lambda m, x: m(x)` and `lambda m, x: head(m.trunk(x))`, `head` a fitted module outside
        `model`, so held fixed). θ is every parameter of `model` (detached); the calls run with θ substituted
        (`torch.func.functional_call`). The model is put in evaluation mode (BatchNorm uses its running
        statistics, as TRAK does). `fields`: the other fields (checkpoint, final, train_indices, …)."""
        model.eval()
        source, target = _Call(model, source_logits), _Call(model, target_logits)
        params = {name: p.detach() for name, p in source.named_parameters()}
        buffers = dict(source.named_buffers())

        def run(module: nn.Module) -> LogitsFunction:
            return lambda theta, x: functional_call(module, (dict(theta), buffers), (x,))

        return cls(params, run(source), run(target), pool, targets, **fields)


@runtime_checkable
class GradientNetworks(Protocol):
    """Whoever trains a store's networks, as the gradient estimator asks for them: the trained network of
    `job` (the row's `Job`, or a job keeping the whole pool with index −1), or several checkpoints of it
    (final weights last). A plain function `gradient_networks(job)` is one."""

    def __call__(self, job: Job) -> Network | Sequence[Network]: ...


# --- checks shared by every implementation ---------------------------------------------------------------
def _where(job: Job) -> str:
    return "the full-pool network" if job.index < 0 else f"row {job.index}"


def checked_networks(name: str, job: Job, output: Any, pool: int, targets: np.ndarray) -> list[Network]:
    """`output` of `name` for `job` as a non-empty list of `Network`s with the store's shapes, or one
    `TrainerError` line naming both (pool: P; targets: the store's target labels, T of them)."""
    where = f"{name} returned for {_where(job)}"
    networks = [output] if isinstance(output, Network) else output
    if not isinstance(networks, (list, tuple)) or not networks or not all(isinstance(n, Network) for n in networks):
        raise TrainerError(f"{where} a {type(output).__name__}; expected a dmtoolkit.estimate.networks.Network or a "
                           "non-empty list of them (one per checkpoint, final weights last)")
    for n in networks:
        if not n.params or not all(isinstance(p, torch.Tensor) and p.is_floating_point() for p in n.params.values()):
            raise TrainerError(f"{where} a network ({n.checkpoint}) whose params are not a non-empty mapping of "
                               "floating-point tensors")
        if len(n.pool.x) != pool or n.pool.y.shape != (pool,):
            raise TrainerError(f"{where} pool inputs of {len(n.pool.x)} examples with labels {tuple(n.pool.y.shape)}; "
                               f"the store's pool has {pool} (every pool example, in unit order)")
        held_out = n.source_test
        if held_out is not None and not (isinstance(held_out, Examples) and isinstance(held_out.y, torch.Tensor)
                                         and len(held_out.x) == len(held_out.y) > 0):
            raise TrainerError(f"{where} a network ({n.checkpoint}) whose source_test is not Examples(x, y) of "
                               "held-out source examples with a tensor of labels (leave it None to skip the source task)")
        labels = n.targets.y.detach().cpu().numpy() if isinstance(n.targets.y, torch.Tensor) else None
        if len(n.targets.x) != len(targets) or labels is None or not np.array_equal(labels, targets):
            raise TrainerError(f"{where} target inputs of {len(n.targets.x)} examples whose labels are not the "
                               f"store's {len(targets)} target labels (every target test example, in the store's order)")
    return list(networks)


def full_pool_job(context: Any, seed: int) -> Job:
    """A job that keeps every pool example (index −1, the given seed): what `--full-models` networks train on."""
    job = context.job(0)
    mask = np.ones_like(job.mask)
    everything = np.arange(len(mask), dtype=np.int64)
    source = np.zeros(0, np.int64) if context.recipe.own_data is not None else everything
    return dataclasses.replace(job, index=-1, mask=mask, seed=seed, units=everything, source_indices=source)


# --- the built-in networks --------------------------------------------------------------------------------
def checkpoint_epochs(checkpoints: int | Sequence[int], epochs: float) -> tuple[int, ...]:
    """The epochs after which the built-in networks are scored: `checkpoints` evenly spaced ones ending with
    the last (an int: 1 = the final weights only; 3 of 30 epochs = 10, 20, 30), or the given epochs."""
    last = math.ceil(epochs)
    if isinstance(checkpoints, int):
        if checkpoints < 1:
            raise UserError(f"checkpoints={checkpoints}: need at least one (1: the final weights)")
        if checkpoints > last:
            raise UserError(f"checkpoints={checkpoints} but training has {last} epochs; ask for at most {last}")
        return tuple(sorted({max(1, round(last * k / checkpoints)) for k in range(1, checkpoints + 1)}))
    chosen = tuple(sorted({int(e) for e in checkpoints}))
    if not chosen or chosen[0] < 1 or chosen[-1] > last:
        raise UserError(f"checkpoint epochs {list(checkpoints)} must be between 1 and the training's {last} epochs")
    return chosen


def parse_checkpoints(text: str) -> int | tuple[int, ...]:
    """`--checkpoints`: a count ("3": evenly spaced epochs ending with the last) or epochs ("10,20,30"; one
    epoch alone is written with a comma, "10,")."""
    try:
        if "," in text:
            return tuple(int(part) for part in text.split(",") if part.strip())
        return int(text)
    except ValueError:
        raise UserError(f"--checkpoints {text!r}: a count (3) or comma-separated epochs (10,20,30)") from None


class BuiltinNetworks:
    """The built-in pipelines' networks (`GradientNetworks`): a row retrained through `BuiltinTrainer` (with
    its whole batched group when `whole_groups`, which reproduces the stored margins to float precision, or
    alone), evaluation mode, the recipe's fixed-feature head fitted as the store's rows were transferred;
    the copies after `epochs` (default: the final weights only) are its checkpoints."""

    def __init__(self, context: Any, *, whole_groups: bool = True, epochs: Sequence[int] = (),
                 head: str = "fixed", chunk: int = 64) -> None:
        self.context, self.trainer = context, context.trainer
        self.whole_groups, self.head, self.chunk = whole_groups, head, chunk
        self.last = math.ceil(context.recipe.training.epochs)
        self.epochs = tuple(epochs) or (self.last,)
        self.name = context.recipe.trainer_name

    def _train(self, subsets: list[np.ndarray], seeds: list[int]) -> list[tuple[int, nn.Module]]:
        """(epoch, batched model) after each checkpoint epoch; the final model itself for the last epoch."""
        copies: list[tuple[int, nn.Module]] = []
        early = set(self.epochs) - {self.last}

        def keep(model: nn.Module, epoch: int) -> None:
            if epoch in early:
                copies.append((epoch, copy.deepcopy(model)))

        model = self.trainer.train_source_models(subsets, seeds, keep if early else None)
        if self.last in self.epochs:
            copies.append((self.last, model))
        return copies

    def __call__(self, job: Job) -> list[Network]:
        from dmtoolkit.estimate.gradient import group_member
        from dmtoolkit.train.job import group_of, group_rows

        trainer = self.trainer
        if job.index < 0 or not self.whole_groups or trainer.group_size == 1:
            trained, member = self._train([job.source_indices], [job.seed]), 0
        else:
            rows = group_rows(group_of(job.index, trainer.group_size), trainer.group_size, len(self.context.masks))
            mates = [self.context.job(r) for r in rows]
            trained = self._train([m.source_indices for m in mates], [m.seed for m in mates])
            member = rows.index(job.index)
        return [self.network(group_member(trainer, model, member), job.seed, epoch) for epoch, model in trained]

    def network(self, model: nn.Module, seed: int, epoch: int) -> Network:
        """One G=1 source network as a `Network`: its fixed-feature head fitted as the store's rows were."""
        from dmtoolkit.estimate.gradient import GRADIENT_MEMORY, _fixed_head, feature_jacobians, head_gradients

        trainer, spec = self.trainer, self.context.recipe.transfer
        model.eval()
        for p in model.parameters():
            p.requires_grad_(True)
        source_acc = trainer.source_accuracy(model, [np.ones(1, bool)])[0]
        head, train_feats = _fixed_head(model, trainer.target_train_x, trainer.target_train_y,
                                        trainer.num_target_classes, spec, seed)
        layer = spec.feature_layer
        extra = None
        if self.head == "differentiated":
            def extra(project: Projector, columns: slice, chunk: int) -> torch.Tensor:
                num_params = sum(p.numel() for p in model.parameters())
                size = max(1, min(chunk, GRADIENT_MEMORY // (4 * num_params * head.weight.shape[0])))
                jac = feature_jacobians(model, layer, trainer.target_train_x, project, size)
                test_x, test_y = trainer.target_test_x[columns], trainer.target_test_y[columns]
                with torch.no_grad():
                    test_feats = torch.cat([model.features(test_x[s:s + 1024][None], layer)[0]
                                            for s in range(0, len(test_x), 1024)])
                return head_gradients(train_feats.detach(), trainer.target_train_y, test_feats, test_y,
                                      trainer.num_target_classes, spec, jac, chunk)

        final = epoch == self.last
        return Network.from_module(
            model, lambda m, x: m.features(x[None], "logits")[0], lambda m, x: head.logits(m.features(x[None], layer)[0]),
            pool=Examples(trainer.pool_x, trainer.pool_y), targets=Examples(trainer.target_test_x, trainer.target_test_y),
            checkpoint=f"epoch {epoch}" + (" (final)" if final else ""), final=final,
            source_accuracy=float(source_acc), head_gradients=extra,
            source_test=Examples(trainer.source_test_x, trainer.source_test_y))


# --- a user's trainer ----------------------------------------------------------------------------------------
def load_hook(trainer: str) -> Callable[..., Any] | None:
    """The `gradient_networks` function of the module of trainer `MODULE:FUNCTION`, None when it has none.
    The module is imported as the driver imports the trainer (one `TrainerError` line when it cannot be)."""
    load_function(trainer)
    hook = getattr(sys.modules[trainer.partition(":")[0]], HOOK, None)
    return hook if callable(hook) else None


def missing_hook_message(store: Any, trainer: str) -> str:
    """The one-line refusal for a user trainer's store whose module has no `gradient_networks`: what to add."""
    module = trainer.partition(":")[0]
    return (f"{store}: made by trainer {trainer}; to score it, add `def {HOOK}(job): ...` to {module}, returning "
            "the job's trained network as dmtoolkit.estimate.networks.Network (docs/trainers.md, "
            "\"Gradients from your trainer\")")


class HookNetworks:
    """A user's `MODULE:gradient_networks` as `GradientNetworks`: what it raises or returns wrong is one
    `TrainerError` line naming it and the row, as for the trainer itself."""

    def __init__(self, name: str, function: Callable[[Job], Any], pool: int, targets: np.ndarray) -> None:
        self.name, self.function, self.pool, self.targets = name, function, pool, np.asarray(targets)

    def __call__(self, job: Job) -> list[Network]:
        try:
            output = self.function(job)
        except Exception as error:
            raise TrainerError(f"{self.name} failed on {_where(job)}: {error_line(error)}") from None
        return checked_networks(self.name, job, output, self.pool, self.targets)
