"""A gradient (TRAK-style) estimator for example-level stores, computed through the transfer step.

Difference of means and datamodels need many more models than source images; gradients of a few trained
networks estimate the same counterfactual ("how does keeping source image i in pre-training change the
transferred model's margin on target image j") from a handful of them (TRAK: Park et al., 2023). The
store's masks and margins alone cannot give gradients, so the estimator *retrains* source networks
through the store's own training code: a chosen few fitting rows of the store, each with its own mask and
training seed (the reproduced margins are compared with the stored ones and the difference is recorded),
and optionally extra models trained on the full pool. How a network is obtained and what of it is
differentiated is the contract of `dmtoolkit.estimate.networks` (`Network`, `GradientNetworks`): the
built-in networks retrain through `BuiltinTrainer.train_source_models` (the path every row of the store
took; `BuiltinNetworks`), a user's trainer through the `gradient_networks(job)` its module defines. Each
network may come as several checkpoints along training (TRAK's ensembling: `checkpoints` for the built-in
networks, a list from a user's hook), each scored with its own kernel and the scores averaged.
`attribute` scores networks given directly, without a store.

For each network θ* (evaluation mode: BatchNorm uses its running statistics):

- source features: φ_i = P ᵀ ∇_θ f_i(θ*) for every pool example i, with TRAK's output function
  f_i = z_{y_i} − log Σ_{k≠y_i} exp z_k (the log-odds of the correct class, so −∇ loss_i = q_i φ_i exactly
  for the cross-entropy loss, q_i = 1 − p_{y_i}); P is a seeded Gaussian or Rademacher projection to k
  dimensions (`proj_dim`; 0 = identity, no projection);
- target gradients: g_j = P ᵀ ∇_θ margin_j(θ*), where margin_j is the *transferred* model's margin
  z_y − max_{k≠y} z_k on target test example j, through the frozen feature extractor and the fitted
  fixed-feature head. `head="fixed"` holds the head (weights, bias, feature standardisation) at its fitted
  value; `head="differentiated"` also differentiates through the closed-form ridge head's dependence on the
  target-training features (ridge heads only);
- scores τ(i, j) = g_jᵀ (Φ_Sᵀ Φ_S + λ I)⁻¹ φ_i q̄_i, with Φ_S the features of every pool example
  (`kernel_over="pool"`, TRAK's, the default) or of the examples the model was trained on ("trained"), q̄_i
  the q_i averaged over the networks (`q="mean"`, TRAK's Q, the default) or each network's own ("own"), and
  λ = `lam` × the kernel's mean eigenvalue (trace / k projected; trace / min(p, |S|) exact; the absolute value
  used per model is recorded). Each (network, checkpoint) draws its own projection (`projection_seed`).
  `proj_dim` None ("auto") computes the scores exactly, without a projection, when the pool is smaller than
  the parameter count and that fits in memory (`resolve_proj_dim`), in the dual form (`exact_scores`: the
  pool's Gram matrix in place of the p × p kernel).

`kernel="gauss-newton"` weights the kernel by q_i(1 − q_i) (Σ q(1−q) φφᵀ is the Gauss-Newton matrix in the
one output f, the exact Hessian for binary logistic regression); TRAK's own choice, the default, drops the
weights. Simplifications beyond the linearisation itself (which tests/test_gradient.py measures against
exact retraining of models small enough for it; not yet measured on the glyph stores): the networks are
differentiated in evaluation mode (BatchNorm with running statistics, as TRAK does) though
they trained in training mode; label smoothing and weight decay of source training are not in f (λ stands
in for the latter).

The one-step influence argument gives the sign: adding example i moves θ by ≈ −H⁻¹∇loss_i = H⁻¹ q_i φ_i,
so τ > 0 means keeping example i raises target j's margin — the same sign convention as difference of
means and datamodels. `coef_` (P, T) is τ averaged over the models, in mask units, and `stderr_` its standard
error across the networks (N − 1 dof; None for one network), each network's τ saved as it finishes so an
interrupted fit resumes (`dmtoolkit.estimate.ensemble`); `intercept_` is the mean
fitting-row margin minus coef · (mean fitting-row mask), so `predict` is centred on the store's models
(LDS, a rank correlation per target, does not depend on it).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Self

import numpy as np
import torch
from torch import nn
from torch.func import functional_call, grad, jacrev, vmap

from dmtoolkit.capabilities import Capability
from dmtoolkit.devices import training_threads
from dmtoolkit.errors import UserError
from dmtoolkit.estimate.base import Estimator, ExtraDataset
from dmtoolkit.estimate.ensemble import (
    PLAN_KEY,
    NetworkSaver,
    network_stderr_record,
    partial_folder,
    reduction_bytes,
)
from dmtoolkit.estimate.label_check import LabelCheck, label_check, reference_patterns
from dmtoolkit.estimate.options import (
    GRADIENT_HEADS,
    GRADIENT_KERNEL_OVER,
    GRADIENT_KERNELS,
    GRADIENT_LAMBDA,
    GRADIENT_MODELS,
    GRADIENT_PROJ_DIM,
    GRADIENT_PROJECTIONS,
    GRADIENT_Q,
)
from dmtoolkit.estimate.source_task import SourceTaskScores
from dmtoolkit.interrupts import CtrlCLatch

if TYPE_CHECKING:
    from dmtoolkit.estimate.networks import Network
    from dmtoolkit.estimate.splits import Draws
    from dmtoolkit.recipe import TransferSpec

PROJECTIONS, HEADS, KERNELS = GRADIENT_PROJECTIONS, GRADIENT_HEADS, GRADIENT_KERNELS
KERNEL_SCALES = ("none", "trak")  # the inverse kernel as solved, or divided by its mean |entry| (traker)
PROJECTION_CACHE_BYTES = 512 * 2**20  # projection matrices up to this size are kept instead of regenerated
PROJECTION_BLOCK = 2**15  # parameters per generated block of the projection matrix
FULL_POOL_SALT = 0x6AAD
GRADIENT_MEMORY = 512 * 2**20  # bytes of unprojected per-example gradients (or Jacobians) held at once
EXACT_MEMORY = 4 * 2**30  # most bytes "auto" lets the exact (unprojected) scores take for one network
KERNEL_OVER, Q_WEIGHTS = GRADIENT_KERNEL_OVER, GRADIENT_Q


# --- projection ---------------------------------------------------------------------------------------
class Projector:
    """x (B, p) -> x P (B, k) for a seeded random P (p, k), E[P Pᵀ] = I; `dim=0` is the identity (k = p).

    P is generated in blocks of PROJECTION_BLOCK rows from (seed, block) on the CPU, so it is the same on
    every device and for every model with the same number of parameters; it is kept in memory when it is
    small (≤ PROJECTION_CACHE_BYTES) and regenerated block by block otherwise (ResNet-sized networks).
    """

    def __init__(self, num_params: int, dim: int, seed: int = 0, kind: str = "gaussian",
                 device: torch.device | str = "cpu") -> None:
        if kind not in PROJECTIONS:
            raise UserError(f"projection {kind!r} must be one of {', '.join(PROJECTIONS)}")
        if dim < 0:
            raise UserError(f"projection dimension {dim} must be ≥ 0 (0: no projection)")
        self.num_params, self.seed, self.kind, self.device = num_params, seed, kind, torch.device(device)
        self.identity = dim == 0
        self.dim = num_params if self.identity else dim
        self._cache: list[torch.Tensor] | None = None
        if not self.identity and num_params * dim * 4 <= PROJECTION_CACHE_BYTES:
            self._cache = [self.block(b) for b in range(self.num_blocks)]

    @property
    def num_blocks(self) -> int:
        return math.ceil(self.num_params / PROJECTION_BLOCK)

    def block(self, b: int) -> torch.Tensor:
        """Rows b·PROJECTION_BLOCK … of P, on the device."""
        rows = min(PROJECTION_BLOCK, self.num_params - b * PROJECTION_BLOCK)
        generator = torch.Generator().manual_seed(int(np.random.SeedSequence([self.seed, b]).generate_state(1)[0]))
        if self.kind == "gaussian":
            values = torch.randn(rows, self.dim, generator=generator)
        else:
            values = torch.randint(0, 2, (rows, self.dim), generator=generator).float().mul_(2).sub_(1)
        return values.div_(math.sqrt(self.dim)).to(self.device)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.identity:
            return x
        out = torch.zeros(x.shape[0], self.dim, dtype=x.dtype, device=x.device)
        for b in range(self.num_blocks):
            block = self._cache[b] if self._cache is not None else self.block(b)
            out += x[:, b * PROJECTION_BLOCK:(b + 1) * PROJECTION_BLOCK] @ block.to(x.dtype)
        return out


def exact_dual(proj_dim: int | None, num_params: int, pool: int) -> bool:
    """Whether the scores are computed exactly (no projection) in the dual form: `proj_dim` 0 with fewer pool
    examples than parameters, so the pool's P × P Gram matrix is smaller than the p × p kernel."""
    return proj_dim == 0 and pool < num_params


def gradient_memory_bytes(proj_dim: int, num_params: int, pool: int, targets: int) -> int:
    """Bytes the gradient estimator holds at once for one network, k = `proj_dim` (`num_params` for 0): the
    projection (kept whole when small, else one block of rows), the projected source features and target
    gradients (float32, then float64 copies), the k × k kernel and its identity (float64), the solve (k × T)
    and the scores (pool × targets, float64 and the float32 copy saved); or, if more, the reduction across
    networks (`ensemble.reduction_bytes`: the float32 mean and standard error and one block of columns). It
    does not grow with the number of networks: their scores are saved to disk as each finishes.

    Exact in the dual form (`exact_dual`): the unprojected gradients (float32, pool + targets rows), one
    float64 block of their columns, the pool's Gram matrix, its solve and identity (three P × P float64) and
    the pool × targets cross-Gram, solve and scores. With float32 products (`GRAM_PRECISION`) the block's
    float64 copy is replaced by a P × (P + T) float32 product, smaller wherever the exact form is chosen."""
    if exact_dual(proj_dim, num_params, pool):
        gradients = 4 * num_params * (pool + targets) + 8 * min(PROJECTION_BLOCK, num_params) * (pool + targets)
        scoring = gradients + 24 * pool * pool + 36 * pool * targets
        return int(max(scoring, reduction_bytes(pool, targets)))
    k = proj_dim or num_params
    if proj_dim == 0:
        projection = 0
    elif num_params * k * 4 <= PROJECTION_CACHE_BYTES:
        projection = num_params * k * 4
    else:
        projection = min(PROJECTION_BLOCK, num_params) * k * 4
    features = 4 * k * (pool + targets) + 8 * k * (2 * pool + targets)
    scoring = projection + features + 16 * k * k + 8 * k * targets + 12 * pool * targets
    return int(max(scoring, reduction_bytes(pool, targets)))


def resolve_proj_dim(proj_dim: int | None, num_params: int, pool: int) -> int:
    """`proj_dim` None ("auto"): 0 (exact, no projection, in the dual form) when the pool has fewer examples than
    the network has parameters and the exact form's pool side (its gradients and Gram matrices) needs at most
    EXACT_MEMORY bytes, else GRADIENT_PROJ_DIM. The choice does not depend on the target columns, so every
    `--targets` split of one job is scored the same way (the memory check then sizes the targets). On the
    400-image example store exact scores gave LDS 0.204 from 16 networks × 3 checkpoints where a
    512-dimensional projection gave 0.153 (docs/gradient.md, "Exact kernel")."""
    if proj_dim is not None:
        return proj_dim
    exact = exact_dual(0, num_params, pool) and gradient_memory_bytes(0, num_params, pool, 0) <= EXACT_MEMORY
    return 0 if exact else GRADIENT_PROJ_DIM


def projection_seed(base: int, network: int, checkpoint: int, shared: bool = False) -> int:
    """The projection seed of one (network, checkpoint): its own draw from (base, network, checkpoint), as
    traker's projector draws one per model ID, so the average over networks and checkpoints also averages over
    independent projections (at 5,080 pool images 16 × 3 gave LDS 0.128 against 0.100 with one shared
    projection); `shared`: `base` for every one (how figures before 2026-12-06 were computed)."""
    if shared:
        return base
    return int(np.random.SeedSequence([base, network, checkpoint]).generate_state(1)[0])


# --- per-example gradients through a G=1 batched network ----------------------------------------------
class _Layer(nn.Module):
    """`model.features(x, layer)` as a module's forward, so `functional_call` can run it with given parameters."""

    def __init__(self, model: nn.Module, layer: str) -> None:
        super().__init__()
        self.model, self.layer = model, layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.features(x, self.layer)


@dataclass(frozen=True)
class FixedHead:
    """A fitted fixed-feature head: logits = ((features − mean) / std) @ weight + bias, on `layer` features."""

    layer: str
    weight: torch.Tensor  # (d, K)
    bias: torch.Tensor  # (K,)
    mean: torch.Tensor  # (d,)
    std: torch.Tensor  # (d,)

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        return ((features - self.mean) / self.std) @ self.weight + self.bias


def parameters_of(model: nn.Module) -> dict[str, torch.Tensor]:
    """The network's trainable parameters, detached, in a fixed order (the order gradients are flattened in)."""
    return {name: p.detach() for name, p in model.named_parameters() if p.requires_grad}


def _flat(grads: dict[str, torch.Tensor], batch: int) -> torch.Tensor:
    return torch.cat([g.reshape(batch, -1) for g in grads.values()], dim=1)


def source_output(z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """TRAK's output function for one example: z_y − log Σ_{k≠y} exp z_k (the correct class's log-odds)."""
    correct = torch.arange(z.shape[-1], device=z.device) == y
    return torch.where(correct, z, 0).sum(-1) - torch.logsumexp(z.masked_fill(correct, float("-inf")), dim=-1)


def margin_of(z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """z_y − max_{k≠y} z_k for one example's logits z (K,)."""
    correct = torch.arange(z.shape[-1], device=z.device) == y
    return torch.where(correct, z, 0).sum(-1) - z.masked_fill(correct, float("-inf")).amax(-1)


def _per_example(fn: Callable, params: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor,
                 project: Projector, chunk: int) -> torch.Tensor:
    """Projected per-example gradients of fn(params, x_i, y_i) (a scalar), (N, k), in chunks of `chunk`."""
    per_sample = vmap(grad(fn), in_dims=(None, 0, 0))
    # one output array filled in place: chunks kept in a list between the large transient per-example gradients
    # fragment the heap, and a 52k-image pool then held ~10 GB (benchmarks/gradient_evidence.py features)
    out = torch.empty(len(x), project.dim, dtype=next(iter(params.values())).dtype, device=x.device)
    for start in range(0, len(x), chunk):
        xb, yb = x[start:start + chunk], y[start:start + chunk]
        out[start:start + len(xb)] = project(_flat(per_sample(params, xb, yb), len(xb)))
    return out


def source_features(model: nn.Module, x: torch.Tensor, y: torch.Tensor, project: Projector,
                    chunk: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """(φ (N, k), q (N,)): projected gradients of TRAK's output function and 1 − p_y, for source examples x, y.

    `model` is a G=1 batched network (inputs (1, B, C, H, W)) in evaluation mode.
    """
    logits = _Layer(model, "logits")
    buffers = dict(logits.named_buffers())

    def f(params: dict[str, torch.Tensor], xi: torch.Tensor, yi: torch.Tensor) -> torch.Tensor:
        return source_output(functional_call(logits, (params, buffers), (xi[None, None],))[0, 0], yi)

    params = parameters_of(logits)
    phi = _per_example(f, params, x, y, project, chunk)
    with torch.no_grad():
        z = torch.cat([logits(x[s:s + 1024][None])[0] for s in range(0, len(x), 1024)])
        q = 1.0 - torch.softmax(z.double(), dim=-1).gather(1, y[:, None]).squeeze(1)
    return phi, q.to(phi.dtype)


def target_gradients(model: nn.Module, head: FixedHead, x: torch.Tensor, y: torch.Tensor, project: Projector,
                     chunk: int = 64) -> torch.Tensor:
    """Projected gradients (T, k) of each target example's transferred margin, the head held fixed."""
    features = _Layer(model, head.layer)
    buffers = dict(features.named_buffers())

    def m(params: dict[str, torch.Tensor], xi: torch.Tensor, yi: torch.Tensor) -> torch.Tensor:
        return margin_of(head.logits(functional_call(features, (params, buffers), (xi[None, None],))[0, 0]), yi)

    return _per_example(m, parameters_of(features), x, y, project, chunk)


def feature_jacobians(model: nn.Module, layer: str, x: torch.Tensor, project: Projector,
                      chunk: int = 16) -> torch.Tensor:
    """Projected Jacobians (N, d, k) of each example's `layer` features with respect to the parameters."""
    features = _Layer(model, layer)
    buffers = dict(features.named_buffers())
    params = parameters_of(features)

    def feats(p: dict[str, torch.Tensor], xi: torch.Tensor) -> torch.Tensor:
        return functional_call(features, (p, buffers), (xi[None, None],))[0, 0]

    per_sample = vmap(jacrev(feats), in_dims=(None, 0))
    out = []
    for start in range(0, len(x), chunk):
        jac = per_sample(params, x[start:start + chunk])  # name -> (b, d, *shape)
        b, d = len(x[start:start + chunk]), next(iter(jac.values())).shape[1]
        flat = torch.cat([j.reshape(b * d, -1) for j in jac.values()], dim=1)
        out.append(project(flat).reshape(b, d, -1))
    return torch.cat(out)


def ridge_head_margins(train_feats: torch.Tensor, train_labels: torch.Tensor, test_feats: torch.Tensor,
                       test_labels: torch.Tensor, num_classes: int, spec: TransferSpec) -> torch.Tensor:
    """Margins (T,) of the closed-form ridge head fitted on train_feats (n, d), as a differentiable function of them.

    Uses `dmtoolkit.train.transfer.fit_ridge_heads`, the function that fitted the store's heads.
    """
    from dmtoolkit.train.transfer import fit_ridge_heads

    weight, bias, mean, std = fit_ridge_heads(train_feats[None], train_labels, num_classes, spec)
    logits = ((test_feats - mean[0]) / std[0]) @ weight[0] + bias[0]
    return vmap(margin_of)(logits, test_labels)


def head_gradients(train_feats: torch.Tensor, train_labels: torch.Tensor, test_feats: torch.Tensor,
                   test_labels: torch.Tensor, num_classes: int, spec: TransferSpec, train_jac: torch.Tensor,
                   chunk: int = 64) -> torch.Tensor:
    """The part of each target margin's gradient that flows through the fitted ridge head (T, k).

    d margin_j / dθ = (head fixed) + Σ_n ∂margin_j/∂F_train[n] · dF_train[n]/dθ; this is the second term,
    with ∂margin_j/∂F_train from autograd through the ridge solve and dF_train/dθ the projected feature
    Jacobians `train_jac` (n, d, k).
    """
    out = []
    for start in range(0, len(test_feats), chunk):
        tf, tl = test_feats[start:start + chunk], test_labels[start:start + chunk]
        a = jacrev(lambda f: ridge_head_margins(f, train_labels, tf, tl, num_classes, spec))(train_feats)
        out.append(torch.einsum("tnd,ndk->tk", a.to(train_jac.dtype), train_jac))
    return torch.cat(out)


def kernel_weights(q: torch.Tensor, kernel: str) -> torch.Tensor | None:
    """Per-example weights of Φ_Sᵀ W Φ_S: None for TRAK's unweighted kernel, q(1 − q) for "gauss-newton".

    Σ q(1−q) φφᵀ is the Gauss-Newton matrix of the loss in the one output f (exactly the Hessian for binary
    logistic regression); TRAK (Park et al., 2023) drops the weights. On multiclass softmax regression the
    weighted kernel tracks leave-one-out retraining more closely (tests/test_gradient.py).
    """
    if kernel not in KERNELS:
        raise UserError(f"kernel {kernel!r} must be one of {', '.join(KERNELS)}")
    return None if kernel == "trak" else q * (1 - q)


def trak_scores(phi: torch.Tensor, q: torch.Tensor, train: np.ndarray | torch.Tensor, g: torch.Tensor,
                lam: float, kernel: str = "trak", own_q: bool = True, kernel_scale: str = "none") -> torch.Tensor:
    """τ (P, T): τ[i, j] = g_jᵀ (Φ_Sᵀ W Φ_S + lam·I)⁻¹ φ_i q_i, Φ_S = phi[train], W from `kernel_weights`;
    lam is absolute. float64. `own_q` False: without the factor q_i (the caller weights by another Q).

    `kernel_scale` "trak": the inverse kernel divided by its mean absolute entry, as traker's score computer
    does before it sums model IDs. That makes each network's (checkpoint's) weight in an average grow with its
    gradients' scale, where the unscaled τ is a first-order effect whose scale is the network's own."""
    if kernel_scale not in KERNEL_SCALES:
        raise UserError(f"kernel_scale {kernel_scale!r} must be one of {', '.join(KERNEL_SCALES)}")
    phi, g, q = phi.double(), g.double(), q.double()
    train = torch.as_tensor(np.asarray(train), device=phi.device, dtype=torch.long)
    phi_s = phi[train]
    weights = kernel_weights(q[train], kernel)
    weighted = phi_s if weights is None else phi_s * weights[:, None]
    gram = weighted.T @ phi_s + lam * torch.eye(phi.shape[1], dtype=phi.dtype, device=phi.device)
    if kernel_scale == "trak":
        inverse = torch.linalg.inv(gram)
        solved = (inverse / inverse.abs().mean()) @ g.T
    else:
        solved = torch.linalg.solve(gram, g.T)  # (k, T)
    scores = phi @ solved
    return scores.mul_(q[:, None]) if own_q else scores  # in place: one (P, T) float64 array


def exact_scores(gram: torch.Tensor, cross: torch.Tensor, q: torch.Tensor, train: np.ndarray | torch.Tensor,
                 lam: float, kernel: str = "trak", own_q: bool = True) -> torch.Tensor:
    """`trak_scores` without a projection, in the dual form: τ (P, T) from the pool's Gram matrix of unprojected
    gradients `gram` = Φ Φᵀ (P, P) and `cross` = Φ Gᵀ (P, T). With Ψ = W^½ Φ_S, (Φ_SᵀWΦ_S + λI)⁻¹ = (I −
    Ψᵀ(ΨΨᵀ + λI)⁻¹Ψ)/λ, so τ = (cross − gram[:, S] W^½ (W^½ gram[S, S] W^½ + λI)⁻¹ W^½ cross[S]) / λ, q_i
    times it when `own_q`: one |S| × |S| solve instead of a p × p one. float64; lam absolute."""
    gram, cross, q = gram.double(), cross.double(), q.double()
    train = torch.as_tensor(np.asarray(train), device=gram.device, dtype=torch.long)
    weights = kernel_weights(q[train], kernel)
    root = torch.ones(len(train), dtype=gram.dtype, device=gram.device) if weights is None else weights.sqrt()
    inner = root[:, None] * gram[train][:, train] * root[None, :]
    inner.diagonal().add_(lam)
    solved = torch.linalg.solve(inner, root[:, None] * cross[train])  # (|S|, T)
    scores = (cross - gram[:, train] @ (root[:, None] * solved)).div_(lam)
    return scores.mul_(q[:, None]) if own_q else scores


GRAM_PRECISION = "float32"
"""Precision of each block's products in `gram_matrices`. float32 halves the exact path's dominant cost on CPU
(2.1x at the 5,080-image pool's shape); each block sums ≤ PROJECTION_BLOCK products, and the blocks are summed in
float64. On real networks the scores move by 1.4e-5 of their largest and the LDS not at all
(`benchmarks/gram_precision.py`)."""


def gram_matrices(phi: torch.Tensor, g: torch.Tensor, precision: str = GRAM_PRECISION) -> tuple[torch.Tensor, torch.Tensor]:
    """(Φ Φᵀ, Φ Gᵀ) in float64, a block of PROJECTION_BLOCK parameters at a time (so no float64 copy holds all
    of them): each block's products in `precision` ("float32" or "float64"; float64 gradients always in float64),
    summed over blocks in float64."""
    if precision not in ("float32", "float64"):
        raise ValueError(f"precision {precision!r}: float32 or float64")
    double = precision == "float64" or phi.dtype == torch.float64 or g.dtype == torch.float64
    gram = torch.zeros(len(phi), len(phi), dtype=torch.float64, device=phi.device)
    cross = torch.zeros(len(phi), len(g), dtype=torch.float64, device=phi.device)
    for start in range(0, phi.shape[1], PROJECTION_BLOCK):
        if double:
            block = phi[:, start:start + PROJECTION_BLOCK].double()
            gram.addmm_(block, block.T)
            cross.addmm_(block, g[:, start:start + PROJECTION_BLOCK].double().T)
        else:
            block = phi[:, start:start + PROJECTION_BLOCK].float()
            gram += block @ block.T
            cross += block @ g[:, start:start + PROJECTION_BLOCK].float().T
    return gram, cross


def exact_lambda(gram: torch.Tensor, train: np.ndarray | torch.Tensor, lam: float, num_params: int,
                 weights: torch.Tensor | None = None) -> float:
    """lam × the mean non-zero eigenvalue of Φ_SᵀWΦ_S: its trace over min(p, |S|), the rank it has (without a
    projection the kernel's p dimensions far outnumber its |S| non-zero eigenvalues, so trace / p would leave
    almost no ridge)."""
    train = torch.as_tensor(np.asarray(train), device=gram.device, dtype=torch.long)
    squares = gram.diagonal()[train].double()
    if weights is not None:
        squares = squares * weights.double()
    return float(lam * squares.sum() / min(num_params, len(train)))


def relative_lambda(phi_s: torch.Tensor, lam: float, weights: torch.Tensor | None = None) -> float:
    """lam × the mean eigenvalue of Φ_Sᵀ W Φ_S (trace / k): a λ that follows the kernel's scale."""
    squares = (phi_s.double() ** 2).sum(1)
    if weights is not None:
        squares = squares * weights.double()
    return float(lam * squares.sum() / phi_s.shape[1])


# --- scoring one trained network (any implementation of dmtoolkit.estimate.networks.Network) --------------
def _batched(fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], x: torch.Tensor, y: torch.Tensor,
             size: int = 1024) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([fn(x[s:s + size], y[s:s + size]) for s in range(0, len(x), size)])


def score_network(network: Network, train: np.ndarray, columns: slice, *, proj_dim: int | None = None,
                  projection: str = "gaussian", proj_seed: int = 0, lam: float = GRADIENT_LAMBDA, kernel: str = "trak",
                  head: str = "fixed", chunk: int = 64, check_memory: bool = False,
                  own_q: bool = True, source_task: bool = False,
                  kernel_scale: str = "none") -> tuple[torch.Tensor, float, int, np.ndarray]:
    """τ (P, T) for one network (one checkpoint) on the target columns, with `train` the pool examples it was
    trained on (the kernel's); also the absolute λ, its parameter count and its transferred margins there (T,).

    φ_i = Pᵀ∇θ `network.source_output` (TRAK's output of its source logits by default), q_i =
    `network.loss_weight`, g_j = Pᵀ∇θ `network.target_margin` (plus `network.head_gradients` under
    `head="differentiated"`); see the module docstring for τ. `own_q` False: τ without the factor q_i.
    `proj_dim` None: chosen by `resolve_proj_dim` (exact, no projection, when it fits; else 512).
    `source_task`: one more column (P, T + 1), each pool example's score on the source task itself, the
    gradient of the mean source margin over `network.source_test` in place of g_j (`source_task_gradient`;
    NaN when the network has no `source_test`).
    """
    from dmtoolkit.resources import require_memory

    params = dict(network.params)
    num_params = sum(p.numel() for p in params.values())
    pool, targets = network.pool, network.targets
    test_x, test_y = targets.x[columns], targets.y[columns]
    proj_dim = resolve_proj_dim(proj_dim, num_params, len(pool.x))
    if check_memory:
        k = proj_dim or num_params
        require_memory(gradient_memory_bytes(proj_dim, num_params, len(pool.x), len(test_x)),
                       what=f"gradient: projection dimension {k:,} with {len(pool.x):,} pool examples and "
                       f"{len(test_x):,} targets ({num_params:,} parameters)",
                       flag=f"lower --proj-dim (e.g. {GRADIENT_PROJ_DIM}) or fit fewer --targets at a time",
                       device=str(pool.x.device))
    margins = _batched(lambda x, y: network.target_margin(params, x, y), test_x, test_y).float().cpu().numpy()
    with torch.no_grad():  # torch.func's transforms still differentiate; tensors a function closes over (a
        # user's head that requires grad) then build no autograd graph
        return _scores(network, params, num_params, train, columns, test_x, test_y, proj_dim=proj_dim,
                       projection=projection, proj_seed=proj_seed, lam=lam, kernel=kernel, head=head,
                       chunk=chunk, own_q=own_q, source_task=source_task, kernel_scale=kernel_scale) + (margins,)


def _scores(network: Network, params: dict[str, torch.Tensor], num_params: int, train: np.ndarray, columns: slice,
            test_x: torch.Tensor, test_y: torch.Tensor, *, proj_dim: int, projection: str, proj_seed: int, lam: float,
            kernel: str, head: str, chunk: int, own_q: bool = True,
            source_task: bool = False, kernel_scale: str = "none") -> tuple[torch.Tensor, float, int]:
    pool = network.pool
    exact = exact_dual(proj_dim, num_params, len(pool.x))
    if exact and kernel_scale != "none":
        raise UserError("kernel_scale 'trak' needs a projection (proj_dim > 0); the exact scores have no "
                        "inverse kernel to rescale")
    project = Projector(num_params, proj_dim, proj_seed, projection, pool.x.device)
    size = max(1, min(chunk, GRADIENT_MEMORY // (4 * num_params)))  # examples per vmap
    phi = _per_example(lambda p, xi, yi: network.source_output(p, xi[None], yi[None])[0], params, pool.x, pool.y,
                       project, size)
    q = _batched(lambda x, y: network.loss_weight(params, x, y), pool.x, pool.y).to(phi.dtype)
    g = _per_example(lambda p, xi, yi: network.target_margin(p, xi[None], yi[None])[0], params, test_x, test_y,
                     project, size)
    if head == "differentiated":
        if network.head_gradients is None:
            raise UserError("--head differentiated needs the built-in ridge head; these networks are scored with "
                            "their fitted head fixed (use --head fixed)")
        g = g + network.head_gradients(project, columns, chunk)
    task = source_task and network.source_test is not None
    if task:
        g = torch.cat([g, source_task_gradient(network, params, project).to(g)])
    train_index = torch.as_tensor(np.asarray(train), device=phi.device, dtype=torch.long)
    weights = kernel_weights(q[train_index], kernel)
    if exact:  # no projection: the pool's Gram matrix in place of the p × p kernel
        gram, cross = gram_matrices(phi, g)
        del phi, g
        lam_absolute = exact_lambda(gram, train, lam, num_params, weights)
        scores = exact_scores(gram, cross, q, train, lam_absolute, kernel, own_q)
    else:
        lam_absolute = relative_lambda(phi[train_index], lam, weights)
        if project.identity:  # the mean non-zero eigenvalue, as `exact_lambda`
            lam_absolute *= num_params / min(num_params, len(train_index))
        scores = trak_scores(phi, q, train, g, lam_absolute, kernel, own_q, kernel_scale)
    if source_task and not task:  # the column is kept, undefined, so every network's scores have one shape
        scores = torch.cat([scores, torch.full_like(scores[:, :1], math.nan)], dim=1)
    return scores, lam_absolute, num_params


def source_task_gradient(network: Network, params: dict[str, torch.Tensor], project: Projector,
                         batch: int = 512) -> torch.Tensor:
    """(1, k) Pᵀ∇θ of the mean source margin over `network.source_test` (`Network.source_task_margin`): the
    "target" of the source-task column. One gradient of a batch sum per batch (no per-example gradients), so
    it costs about two passes over the source test set."""
    assert network.source_test is not None
    x, y = network.source_test.x, network.source_test.y
    total_of = grad(lambda p, xb, yb: network.source_task_margin(p, xb, yb).sum())
    total: dict[str, torch.Tensor] | None = None
    for start in range(0, len(x), batch):
        part = total_of(params, x[start:start + batch], y[start:start + batch])
        total = part if total is None else {name: total[name] + part[name] for name in total}
    assert total is not None
    return project(_flat({name: value[None] for name, value in total.items()}, 1) / len(x))


def label_margins(network: Network) -> tuple[np.ndarray, np.ndarray | None]:
    """The network's stated-label source margins (`Network.source_task_margin`) on every pool example (P,) and
    on its `source_test` examples (None without them): what the out-of-sample label check reduces
    (`dmtoolkit.estimate.label_check`)."""
    params = dict(network.params)
    margin = lambda x, y: network.source_task_margin(params, x, y)  # noqa: E731
    pool = _batched(margin, network.pool.x, network.pool.y).float().cpu().numpy()
    held = network.source_test
    return pool, None if held is None else _batched(margin, held.x, held.y).float().cpu().numpy()


@dataclass(frozen=True)
class CheckpointScores:
    """One network's scores from `score_checkpoints`: τ (P, T) averaged over its checkpoints, its q (P,) averaged
    likewise, the transferred margins of its final checkpoint (T,; NaN without one), the λ of each checkpoint
    and the parameter count."""

    scores: torch.Tensor
    q: torch.Tensor
    margins: np.ndarray
    lambdas: list[float]
    num_params: int


def score_checkpoints(networks: Sequence[Network], train: np.ndarray, columns: slice, *, blame: str | None = None,
                      network_index: int = 0, proj_seed: int = 0, shared_projection: bool = False,
                      kernel_over: str = "pool", **settings: Any) -> CheckpointScores:
    """The checkpoints of one trained network (`networks`, final weights last), each scored by `score_network`
    with its own kernel and its own projection (`projection_seed` of `proj_seed`, `network_index` and the
    checkpoint), the scores averaged (TRAK's ensembling over checkpoints). The kernel spans every pool example
    (`kernel_over="pool"`, as TRAK's) or the ones the network was trained on (`train`, or the network's own
    `train_indices`).

    `blame` names a user's hook: whatever its functions raise while differentiated, or non-finite margins,
    become one `TrainerError` line naming it.
    """
    from dmtoolkit.errors import TrainerError
    from dmtoolkit.plugins import error_line

    if kernel_over not in KERNEL_OVER:
        raise UserError(f"kernel_over {kernel_over!r} must be one of {', '.join(KERNEL_OVER)}")
    total, total_q, lams, margins, num_params = None, None, [], None, 0
    for c, network in enumerate(networks):
        if kernel_over == "pool":
            subset = np.arange(len(network.pool.x))
        else:
            subset = train if network.train_indices is None else network.train_indices
        seed = projection_seed(proj_seed, network_index, c, shared_projection)
        try:
            scores, lam, num_params, reproduced = score_network(network, subset, columns, proj_seed=seed, **settings)
        except UserError:
            raise
        except Exception as error:
            if blame is None:
                raise
            raise TrainerError(f"{blame}: differentiating its network ({network.checkpoint}) failed: "
                               f"{error_line(error)}") from None
        targets = scores[:, :columns.stop - columns.start]  # without the source-task column (NaN when not given)
        if blame is not None and not (np.isfinite(reproduced).all() and torch.isfinite(targets).all()):
            raise TrainerError(f"{blame}: its network ({network.checkpoint}) gives non-finite target margins or scores")
        q = _batched(lambda x, y, net=network: net.loss_weight(dict(net.params), x, y), network.pool.x,
                     network.pool.y).double()
        total = scores if total is None else total + scores
        total_q = q if total_q is None else total_q + q
        lams.append(lam)
        if network.final:
            margins = reproduced
    if margins is None:
        margins = np.full(columns.stop - columns.start, np.nan, np.float32)
    assert total is not None and total_q is not None
    return CheckpointScores(total / len(networks), total_q / len(networks), margins, lams, num_params)


@dataclass(frozen=True, eq=False)
class GradientScores:
    """What `attribute` returns: `scores` (P, T) τ averaged over the networks (float32; rows: pool examples,
    columns: target examples `columns`), λ and checkpoints of each network, and the settings used;
    `source_task` (P,) each pool example's score on the source task itself (`dmtoolkit.estimate.source_task`),
    None unless every network gave `source_test`."""

    scores: np.ndarray
    columns: slice
    lambda_absolute: tuple[float, ...]
    checkpoints: tuple[tuple[str, ...], ...]
    num_params: int
    settings: dict[str, Any]
    source_task: np.ndarray | None = None

    def to_json(self) -> dict[str, Any]:
        return {"shape": list(self.scores.shape), "target_start": self.columns.start, "target_stop": self.columns.stop,
                "networks": len(self.checkpoints), "checkpoints": [list(c) for c in self.checkpoints],
                "lambda_absolute": list(self.lambda_absolute), "num_params": self.num_params,
                "source_task": self.source_task is not None, **self.settings}

    def save(self, path: str | Path, force: bool = False) -> Path:
        """Write the scores and their record to an .npz file (never over an existing file unless `force`)."""
        from dmtoolkit.atomic import replacing

        path = Path(path)
        if path.suffix != ".npz":
            raise UserError(f"{path}: gradient scores are saved as .npz")
        with replacing(path, force=force, suffix=".npz") as temporary:  # the output guard every writer uses
            extra = {} if self.source_task is None else {"source_task": self.source_task}
            np.savez(temporary, scores=self.scores, record=np.array(json.dumps(self.to_json())), **extra)
        return path


def attribute(networks: Sequence[Network | Sequence[Network]], *, targets: slice | None = None,
              proj_dim: int | None = None, projection: str = "gaussian", proj_seed: int = 0,
              lam: float = GRADIENT_LAMBDA, kernel: str = "trak", chunk: int = 64, q: str = "mean",
              kernel_over: str = "pool", shared_projection: bool = False) -> GradientScores:
    """Score every pool example against every target example from your own trained networks, without a store.

    `networks`: one entry per independently trained network, each a `dmtoolkit.estimate.networks.Network` or
    a list of its checkpoints (final weights last; their scores are averaged). Each network's `pool` holds
    every pool example (the rows of the scores) and `targets` the target examples (the columns; `targets=`
    a slice of them); `train_indices` the pool examples it was trained on (None: all of them; used by
    `kernel_over="trained"`). τ(i, j) > 0 means that training on pool example i raised the transferred margin
    of target j (the sign of the subset estimators), averaged over the networks. Settings as for `dmtoolkit
    gradient`: `proj_dim` None chooses exact scores (no projection) when they fit (`resolve_proj_dim`).

    `q`: "mean" (default) weights the networks' mean of g_jᵀ K⁻¹ φ_i by q_i averaged over the networks (each
    network's checkpoints averaged first), as TRAK's Q; "own" weights each network's scores by its own
    q_i = 1 − p_y. With the kernel over the whole pool and exact scores it predicted held-out models better than
    TRAK on the same networks (docs/gradient.md, "Exact kernel"); own q ranks flipped labels better.
    """
    from dmtoolkit.estimate.networks import Network

    groups = [[n] if isinstance(n, Network) else list(n) for n in networks]
    if not groups or not all(group and all(isinstance(n, Network) for n in group) for group in groups):
        raise UserError("attribute: give a non-empty list of Networks (or of lists of checkpoints, each a Network)")
    first = groups[0][0]
    pool, total = len(first.pool.x), len(first.targets.x)
    for group in groups:
        for n in group:
            if len(n.pool.x) != pool or len(n.targets.x) != total:
                raise UserError(f"attribute: networks with {len(n.pool.x)} pool and {len(n.targets.x)} target "
                                f"examples beside {pool} and {total}; every network scores the same examples")
    start, stop, step = (0, total, 1) if targets is None else targets.indices(total)
    if step != 1 or start >= stop:
        raise UserError(f"attribute: targets={targets} must be a non-empty contiguous slice of the {total} targets")
    columns = slice(start, stop)
    if not lam > 0:
        raise UserError(f"λ = {lam} must be positive")
    if q not in Q_WEIGHTS:
        raise UserError(f"q={q!r} must be 'mean' (q averaged over networks) or 'own' (each network's own q)")
    own = q == "own"
    sum_scores, sum_q, lams, checkpoints, num_params = None, None, [], [], 0
    for n, group in enumerate(groups):
        result = score_checkpoints(
            group, np.arange(pool), columns, network_index=n, proj_dim=proj_dim, projection=projection,
            proj_seed=proj_seed, shared_projection=shared_projection, kernel_over=kernel_over, lam=lam,
            kernel=kernel, chunk=chunk, check_memory=n == 0, own_q=own, source_task=True)
        num_params = result.num_params
        sum_scores = result.scores if sum_scores is None else sum_scores + result.scores
        sum_q = result.q if sum_q is None else sum_q + result.q
        lams.append(float(np.mean(result.lambdas)))
        checkpoints.append(tuple(c.checkpoint for c in group))
    assert sum_scores is not None and sum_q is not None
    resolved = resolve_proj_dim(proj_dim, num_params, pool)
    settings = {"proj_dim": resolved, "projection": projection, "proj_seed": proj_seed, "lambda_relative": lam,
                "kernel": kernel, "q": q, "kernel_over": kernel_over, "shared_projection": shared_projection}
    mean = sum_scores / len(groups)
    if not own:  # TRAK's Q: q_i averaged over the networks (each network's checkpoints first)
        mean = mean * (sum_q / len(groups)).to(mean)[:, None]
    mean = mean.cpu().numpy().astype(np.float32)
    task = mean[:, -1] if np.isfinite(mean[:, -1]).all() else None  # the source-task column (NaN: not given)
    return GradientScores(np.ascontiguousarray(mean[:, :-1]), columns, tuple(lams), tuple(checkpoints),
                          num_params, settings, None if task is None else task.copy())


# --- the estimator over a run store -------------------------------------------------------------------
@dataclass(frozen=True)
class ModelRecord:
    """One network the scores were averaged over: its store row (-1: trained on the full pool), seed, λ used
    (the mean over its checkpoints), how far its reproduced target margins are from the stored row's (NaN for
    full-pool models) and the checkpoints whose scores were averaged into its own."""

    row: int
    seed: int
    subset_size: int
    lambda_absolute: float
    margin_error: float
    source_accuracy: float
    seconds: float
    checkpoints: tuple[str, ...] = ("final",)  # the checkpoints scored and averaged (one network's along training)


def _fixed_head(model: nn.Module, train_x: torch.Tensor, train_y: torch.Tensor, num_classes: int,
                spec: TransferSpec, seed: int) -> tuple[FixedHead, torch.Tensor]:
    """The recipe's fixed-feature head fitted exactly as `transfer_fixed_feature` fits it, and the train features."""
    from dmtoolkit.train.fit import batched_outputs
    from dmtoolkit.train.transfer import fit_head

    train_feats = batched_outputs(lambda x: model.features(x, spec.feature_layer), train_x, 1)
    weight, bias, mean, std = fit_head(train_feats, train_y, num_classes, spec, [seed + 2])
    return FixedHead(spec.feature_layer, weight[0], bias[0, 0], mean[0, 0], std[0, 0]), train_feats[0]


def group_member(trainer: Any, model: nn.Module, g: int) -> nn.Module:
    """Model g of a batched network as a G=1 network of the same recipe (its parameters and buffers copied).

    Every batched tensor is either G blocks along its first axis (grouped convolutions, per-model BatchNorm
    channels, stacked linear maps) or shared (BatchNorm's step counter), so block g of each is model g.
    """
    if getattr(model, "groups", 1) == 1:
        return model
    from dmtoolkit.train.models import build_model

    spec = trainer.recipe.model
    single = build_model(spec.arch, 1, trainer.channels, trainer.num_source_classes, spec.resolution, spec.width,
                         spec.hidden, spec.downsample, spec.norm).to(trainer.device)
    groups, state = model.groups, model.state_dict()
    member = {}
    for name, small in single.state_dict().items():
        big = state[name]
        if big.ndim and big.shape[0] == groups * small.shape[0]:
            size = small.shape[0]
            member[name] = big[g * size:(g + 1) * size].clone()
        else:
            member[name] = big.clone()
    single.load_state_dict(member)
    return single


class GradientEstimator(Estimator):
    """TRAK-style scores from a few retrained source networks, through the transfer; see the module docstring.

    `store_path` is the run store the networks are retrained from (the one `fit` gets the masks and margins
    of); `models` of the fitting rows (a seeded draw, `row_seed`) are retrained with their own masks and
    seeds, and `full_models` extra networks are trained on the whole pool. `proj_dim` 0 means no projection.
    The networks come from the store's trainer through the contract of `dmtoolkit.estimate.networks`: the
    built-in networks (`BuiltinNetworks`; `checkpoints`: how many evenly spaced epochs, or which epochs, each
    network is scored after, the scores averaged) or a user trainer's `gradient_networks(job)`.
    """

    name = "gradient"
    coef_meaning = ("TRAK-style gradient estimate of the change in transferred margin when the unit is in the subset "
                    "(averaged over retrained source networks)")

    def __init__(self, store_path: str | Path, *, models: int = GRADIENT_MODELS, full_models: int = 0,
                 proj_dim: int | None = None, projection: str = "gaussian", proj_seed: int = 0,
                 lam: float = GRADIENT_LAMBDA, head: str = "fixed",
                 kernel: str = "trak", row_seed: int = 0, device: str | None = None, chunk: int = 64,
                 whole_groups: bool = True, checkpoints: int | tuple[int, ...] = 1, q: str = "mean",
                 kernel_over: str = "pool", shared_projection: bool = False,
                 progress: Callable[[str], None] | None = None, partial: str | Path | None = None) -> None:
        self.store_path = Path(store_path)
        self.partial = None if partial is None else Path(partial)  # folder of per-network scores (ensemble.py)
        self.checkpoints = checkpoints if isinstance(checkpoints, int) else tuple(int(e) for e in checkpoints)
        self.models, self.full_models = models, full_models
        self.proj_dim, self.projection, self.proj_seed = proj_dim, projection, proj_seed
        self.lam, self.head, self.kernel, self.row_seed = lam, head, kernel, row_seed
        self.device, self.chunk, self.progress = device, chunk, progress
        self.whole_groups = whole_groups
        self.q, self.kernel_over, self.shared_projection = q, kernel_over, shared_projection

    def check_settings(self) -> None:
        if self.models < 0 or self.full_models < 0 or self.models + self.full_models < 1:
            raise UserError(f"models={self.models}, full_models={self.full_models}: need at least one network")
        if self.projection not in PROJECTIONS:
            raise UserError(f"projection {self.projection!r} must be one of {', '.join(PROJECTIONS)}")
        if self.proj_dim is not None and self.proj_dim < 0:
            raise UserError(f"projection dimension {self.proj_dim} must be ≥ 0 (0: no projection)")
        if self.q not in Q_WEIGHTS:
            raise UserError(f"q {self.q!r} must be one of {', '.join(Q_WEIGHTS)}")
        if self.kernel_over not in KERNEL_OVER:
            raise UserError(f"kernel_over {self.kernel_over!r} must be one of {', '.join(KERNEL_OVER)}")
        if not self.lam > 0:
            raise UserError(f"λ = {self.lam} must be positive")
        if self.head not in HEADS:
            raise UserError(f"head {self.head!r} must be one of {', '.join(HEADS)}")
        if self.kernel not in KERNELS:
            raise UserError(f"kernel {self.kernel!r} must be one of {', '.join(KERNELS)}")
        if isinstance(self.checkpoints, int) and self.checkpoints < 1:
            raise UserError(f"checkpoints={self.checkpoints}: need at least one (1: the final weights)")

    def settings(self) -> dict[str, Any]:
        return {"models": self.models, "full_models": self.full_models,
                "proj_dim": "auto" if self.proj_dim is None else self.proj_dim,
                "projection": self.projection, "proj_seed": self.proj_seed, "lambda_relative": self.lam,
                "head": self.head, "kernel": self.kernel, "row_seed": self.row_seed,
                "whole_groups": self.whole_groups, "q": self.q, "kernel_over": self.kernel_over,
                "shared_projection": self.shared_projection,
                "checkpoints": self.checkpoints if isinstance(self.checkpoints, int) else list(self.checkpoints)}

    def _saver_meta(self, columns: slice, plan: list[tuple[int, int]]) -> dict[str, Any]:
        """What saved per-network scores depend on, checked when a rerun continues from them."""
        from dmtoolkit.store import RunStore

        with RunStore(self.store_path) as store:
            content = store.content_hash()
        meta = {k: v for k, v in self.settings().items()}
        meta.update({"store content hash": content, "target columns": f"{columns.start}:{columns.stop}",
                     PLAN_KEY: [list(x) for x in plan], "format": 3})  # 2: a source-task column after the targets;
        # 3: under q "mean" the scores are saved without q and each network's q beside them
        return meta

    def _say(self, message: str) -> None:
        if self.progress is not None:
            self.progress(message)

    def _context(self) -> Any:
        """The store's `RunContext` (the trainer every row was computed with), refusing stores it cannot retrain."""
        from dmtoolkit.store import RunStore
        from dmtoolkit.train.job import BuiltinTrainer, RunContext

        with RunStore(self.store_path) as store:
            store.require(Capability.RECIPE, "gradient")
            recipe = store.recipe
        if recipe.subsets.kind != "example":
            raise UserError(f"{self.store_path}: the gradient estimator needs an example-level run store "
                            f"(this one is {recipe.subsets.kind}-level)")
        if self.head == "differentiated":  # the closed-form ridge head of the built-in networks
            Capability.BUILTIN_NETWORKS.require(recipe, self.store_path, "gradient --head differentiated")
        if self.checkpoints != 1:  # the built-in networks' checkpoints (a trainer's hook returns its own)
            Capability.BUILTIN_NETWORKS.require(recipe, self.store_path, "gradient --checkpoints")
        if recipe.trainer is not None:
            return self._user_context(recipe)
        if recipe.transfer.mode != "fixed-feature":
            raise UserError(f"{self.store_path}: transfer mode {recipe.transfer.mode!r}; the gradient estimator "
                            "differentiates through fixed-feature transfer only")
        if self.head == "differentiated" and recipe.transfer.head != "ridge":
            raise UserError(f"{self.store_path}: head {recipe.transfer.head!r}; --head differentiated needs the "
                            "closed-form ridge head (use --head fixed)")
        context = RunContext.from_store(self.store_path, self.device)
        assert isinstance(context.trainer, BuiltinTrainer)
        from dmtoolkit.estimate.networks import BuiltinNetworks, checkpoint_epochs

        self._networks = BuiltinNetworks(context, whole_groups=self.whole_groups, head=self.head, chunk=self.chunk,
                                         epochs=checkpoint_epochs(self.checkpoints, recipe.training.epochs))
        self._networks_name, self._blame = recipe.trainer_name, None
        return context

    def _user_context(self, recipe: Any) -> Any:
        """The context of a store made by a user's trainer, its networks from the trainer module's
        `gradient_networks(job)` (refused in one line, saying what to add, when the module has none)."""
        from dmtoolkit.estimate.networks import HOOK, HookNetworks, load_hook, missing_hook_message
        from dmtoolkit.train.job import RunContext

        name = recipe.trainer.function
        hook = load_hook(name)
        if hook is None:
            raise UserError(missing_hook_message(self.store_path, name))
        context = RunContext.from_store(self.store_path, self.device)
        module = name.partition(":")[0]
        self._networks = HookNetworks(f"{module}:{HOOK}", hook, len(context.masks[0]),
                                      np.asarray(context.data.target_test.labels))
        self._networks_name = self._blame = f"{module}:{HOOK}"
        self._memory_checked = False
        return context

    def fit(self, masks: Any, margins: Any, rows: np.ndarray | None = None, *,
            unit_names: list[str] | None = None, draws: Draws | None = None) -> Self:
        self.check_settings()
        rows = np.arange(masks.shape[0]) if rows is None else np.asarray(rows)
        if self.models > len(rows):
            raise UserError(f"models={self.models} but only {len(rows)} fitting rows; ask for fewer "
                            "(or add --full-models)")
        columns = getattr(margins, "columns", slice(0, margins.shape[1]))
        chosen = np.sort(np.random.default_rng(self.row_seed).permutation(rows)[:self.models])
        context = self._context()
        self._check_memory(context, int(margins.shape[1]))
        training_seed = context.recipe.seeding[0]
        jobs = [context.job(int(r)) for r in chosen]
        for job in jobs:
            if not np.array_equal(np.asarray(masks[job.index:job.index + 1], bool)[0], job.mask):
                raise UserError(f"row {job.index}: the masks given to fit are not those of {self.store_path}; fit the "
                                "gradient estimator on the store it was made with (fit_store does)")
        plan = [(job.index, job.seed, job.units, self._row_network(context, job)) for job in jobs]
        pool = np.arange(len(context.data.source_pool.labels))
        for f in range(self.full_models):
            seed = int(np.random.SeedSequence([training_seed, FULL_POOL_SALT, f]).generate_state(1)[0])
            plan.append((-1, seed, pool, self._full_pool_network(context, seed)))
        all_margins = np.asarray(margins[0:margins.shape[0]], dtype=np.float64)
        targets = columns.stop - columns.start
        shape = (masks.shape[1], targets + 1)  # the target columns, then the source-task column
        with contextlib.ExitStack() as stack:  # without a folder for the per-network scores: a temporary one
            folder = self.partial or Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="dmtoolkit-gradient-")))
            saver = NetworkSaver(folder, self._saver_meta(columns, [(row, seed) for row, seed, _, _ in plan]))
            done = saver.start()
            saver.require_disk(len(plan) - len(done), shape)
            if done:
                self._say(f"gradient: continuing from {folder}: {len(done)} of {len(plan)} networks were saved there")
            ctrl_c = stack.enter_context(CtrlCLatch())  # a Ctrl-C swallowed by a finalizer stops at the next network
            try:
                for n, (row, seed, subset, network) in enumerate(plan):
                    ctrl_c.check()
                    if n in done:
                        continue
                    started = time.perf_counter()
                    with training_threads():  # the driver's setting, or the network is not the stored row's
                        net = network()
                    scores, q, reproduced, record = self._one_model(n, row, seed, subset, net, columns)
                    error = float(np.max(np.abs(reproduced - all_margins[row]))) if row >= 0 else float("nan")
                    record = dataclasses.replace(record, margin_error=error, seconds=time.perf_counter() - started)
                    done[n] = {**dataclasses.asdict(record), "num_params": self._num_params}
                    extra = {**self._label_arrays(net[-1], subset), "loss_weight": q.cpu().numpy()}
                    saver.save(n, scores.cpu().numpy(), done[n], extra)
                    del scores  # one network's scores at a time (the reduction reads them back from the folder)
                    self._say(f"gradient: {n + 1}/{len(plan)} networks ({'row ' + str(row) if row >= 0 else 'full pool'}, "
                              f"{record.seconds:.0f}s, reproduced margins within {error:.2g})")
                ctrl_c.check()
            except KeyboardInterrupt:
                if self.partial is not None and done:
                    self._say(f"gradient: interrupted; {len(done)} of {len(plan)} networks are saved in {folder}: "
                              "rerun the same command to continue from them")
                raise
            mean, stderr = saver.reduce(len(plan), shape)
            if self.q == "mean":  # TRAK's Q: the networks' mean τ times their mean q (z-scores do not change)
                q_mean = np.mean([saver.extra(n, "loss_weight") for n in range(len(plan))], axis=0)
                mean *= q_mean[:, None].astype(np.float32)
                if stderr is not None:
                    stderr *= q_mean[:, None].astype(np.float32)
            self.label_check_ = self._label_check(saver, len(plan))  # read while a temporary folder still exists
        coef, self.stderr_ = mean[:, :targets], None if stderr is None else stderr[:, :targets]
        self.source_task_ = SourceTaskScores.of(mean[:, targets], None if stderr is None else stderr[:, targets])
        fields = [f.name for f in dataclasses.fields(ModelRecord)]
        self.records_ = tuple(ModelRecord(**{k: done[n][k] for k in fields}) for n in range(len(plan)))
        self.num_params_ = int(done[0]["num_params"])
        self.proj_dim_ = resolve_proj_dim(self.proj_dim, self.num_params_, masks.shape[1])
        self.stderr_dof_ = len(plan) - 1 if self.stderr_ is not None else None
        self.coef_ = coef
        fit_masks = np.asarray(masks[0:masks.shape[0]], dtype=np.float64)[rows]
        self.intercept_ = (all_margins[rows].mean(0) - fit_masks.mean(0) @ coef.astype(np.float64)).astype(np.float32)
        self.fit_rows_ = np.sort(rows)
        return self

    @staticmethod
    def _label_arrays(final: Network, subset: np.ndarray) -> dict[str, np.ndarray]:
        """What the label check needs of one network (its final weights): stated-label margins on the pool and
        the source test examples, and which pool examples it was trained on. Nothing without `source_test`."""
        if final.source_test is None:  # no reference to compare with: no pass over the pool either
            return {}
        pool, test = label_margins(final)
        trained = np.zeros(len(pool), bool)
        trained[np.asarray(subset if final.train_indices is None else final.train_indices)] = True
        return {"pool_margin": pool, "test_margin": test, "trained": trained}

    @staticmethod
    def _label_check(saver: NetworkSaver, count: int) -> LabelCheck | None:
        """The out-of-sample label check over the saved networks (`dmtoolkit.estimate.label_check`); None when
        some network saved no label margins (no `source_test`, or a folder from an older version)."""
        trained = [saver.extra(n, "trained") for n in range(count)]
        if any(t is None for t in trained):
            return None
        tests = len(saver.extra(0, "test_margin"))
        patterns = reference_patterns(np.stack(trained), tests)
        if len(patterns) == 0:  # every network was trained on the whole pool: nothing is held out
            return None
        return label_check(((saver.extra(n, "pool_margin"), saver.extra(n, "test_margin"), trained[n])
                            for n in range(count)), patterns)

    def _check_memory(self, context: Any, targets: int) -> None:
        """Refuse a projection dimension whose arrays would not fit in memory, before any network is trained
        (`gradient_memory_bytes` for this store's pool, targets and network)."""
        from dmtoolkit.resources import require_memory
        from dmtoolkit.train.models import build_model

        if context.recipe.trainer is not None:  # a user's networks: checked on the first one (`score_network`)
            return
        spec = context.recipe.model
        with torch.device("meta"):  # shapes only: nothing allocated
            net = build_model(spec.arch, 1, context.trainer.channels, context.trainer.num_source_classes,
                              spec.resolution, spec.width, spec.hidden, spec.downsample, spec.norm)
        num_params = sum(p.numel() for p in net.parameters())
        pool = len(context.data.source_pool.labels)
        proj_dim = resolve_proj_dim(self.proj_dim, num_params, pool)
        needed = gradient_memory_bytes(proj_dim, num_params, pool, targets)
        k = proj_dim or num_params
        require_memory(needed, what=f"gradient: projection dimension {k:,}"
                       f"{'' if proj_dim else ' (--proj-dim 0: every one of the network’s parameters)'} "
                       f"with {pool:,} pool examples and {targets:,} targets",
                       flag=f"lower --proj-dim (e.g. {GRADIENT_PROJ_DIM}) or fit fewer --targets at a time",
                       device=str(context.trainer.device))
        self._memory_checked = True

    def _row_network(self, context: Any, job: Any) -> Callable[[], list[Any]]:
        """How to obtain row `job.index`'s trained network(s) (its checkpoints, final weights last): from the
        store's `GradientNetworks` (`_context` chose it). The built-in ones retrain the row with its whole
        group of rows, as the driver trained it (`whole_groups`; G× the training, reproduces the stored
        margins to float precision), or alone (the same network up to floating-point differences of the
        batched kernels, which long training can grow)."""
        return lambda: self._networks(job)

    def _full_pool_network(self, context: Any, seed: int) -> Callable[[], list[Any]]:
        """How to obtain a network trained on the whole pool from `seed` (a job keeping every pool example)."""
        from dmtoolkit.estimate.networks import full_pool_job

        job = full_pool_job(context, seed)
        return lambda: self._networks(job)

    def _one_model(self, index: int, row: int, seed: int, subset: np.ndarray, networks: list[Any],
                   columns: slice) -> tuple[torch.Tensor, torch.Tensor, np.ndarray, ModelRecord]:
        """Score every pool example on the target columns from one trained network (plan entry `index`): each of
        its checkpoints (`networks`, `dmtoolkit.estimate.networks.Network`s) scored with its own kernel and
        projection, the scores averaged.

        Returns the scores (P, T; without q under q "mean"), the network's q (P,), the final checkpoint's
        transferred margins on the target columns (to compare with the store's row; NaN when no checkpoint is
        the final weights) and the network's record (margin error and time filled in by `fit`).
        """
        result = score_checkpoints(
            networks, subset, columns, network_index=index, proj_dim=self.proj_dim, projection=self.projection,
            proj_seed=self.proj_seed, shared_projection=self.shared_projection, kernel_over=self.kernel_over,
            lam=self.lam, kernel=self.kernel, head=self.head, chunk=self.chunk, blame=getattr(self, "_blame", None),
            check_memory=not getattr(self, "_memory_checked", False), source_task=True, own_q=self.q == "own")
        self._memory_checked = True
        self._num_params = result.num_params
        record = ModelRecord(row=row, seed=seed, subset_size=len(subset),
                             lambda_absolute=float(np.mean(result.lambdas)), margin_error=float("nan"),
                             source_accuracy=float(networks[-1].source_accuracy), seconds=0.0,
                             checkpoints=tuple(n.checkpoint for n in networks))
        return result.scores, result.q, result.margins, record

    def fitted_attributes(self) -> dict[str, Any]:
        full = [r for r in self.records_ if r.row < 0]
        return {
            "gradient_rows": json.dumps([r.row for r in self.records_ if r.row >= 0]),
            "gradient_full_pool_models": len(full),
            "gradient_seeds": json.dumps([r.seed for r in self.records_]),
            "gradient_checkpoints": json.dumps([list(r.checkpoints) for r in self.records_]),
            "gradient_networks": getattr(self, "_networks_name", ""),
            "gradient_projection": "none (exact)" if self.proj_dim_ == 0 else self.projection,
            "gradient_proj_dim": self.proj_dim_ if self.proj_dim_ else self.num_params_,
            "gradient_proj_dim_asked": "auto" if self.proj_dim is None else self.proj_dim,
            "gradient_projection_per_network": not self.shared_projection,
            "gradient_kernel_over": self.kernel_over,
            "gradient_q": self.q,
            "gradient_proj_seed": self.proj_seed,
            "gradient_lambda_relative": self.lam,
            "gradient_lambda_absolute": json.dumps([r.lambda_absolute for r in self.records_]),
            "gradient_head_differentiated": self.head == "differentiated",
            "gradient_kernel": self.kernel,
            "gradient_whole_groups": self.whole_groups,
            "gradient_num_params": self.num_params_,
            "gradient_output_function": "source: z_y - logsumexp_{k!=y} z_k (TRAK), weighted by 1 - p_y; "
                                        "target: transferred margin z_y - max_{k!=y} z_k",
            "gradient_max_margin_error": max((r.margin_error for r in self.records_ if r.row >= 0),
                                             default=float("nan")),
            **self._stderr_record()[0],
        }

    def _stderr_record(self) -> tuple[dict[str, Any], list[ExtraDataset]]:
        if self.proj_dim_ == 0:
            fixed = "λ and store (exact scores, no projection); not the linearisation's bias"
        elif self.shared_projection:
            fixed = "projection, λ and store; not the linearisation's bias"
        else:
            fixed = "λ and store (each network has its own projection, so the spread includes its noise); not the " \
                    "linearisation's bias"
        return network_stderr_record(self.name, len(self.records_), self.stderr_, fixed=fixed, more="--models")

    def extra_datasets(self) -> list[ExtraDataset]:
        r = self.records_
        errors = self._stderr_record()[1]
        checked = [] if self.label_check_ is None else self.label_check_.datasets()
        return errors + self.source_task_.datasets() + checked + [
            ExtraDataset("gradient/rows", np.array([x.row for x in r], np.int64),
                         "store row each network was retrained from (-1: trained on the full pool)", "network", "row"),
            ExtraDataset("gradient/seeds", np.array([x.seed for x in r], np.int64), "training seed of each network",
                         "network", "seed"),
            ExtraDataset("gradient/lambda", np.array([x.lambda_absolute for x in r]),
                         "absolute λ added to the kernel of each network", "network", "λ"),
            ExtraDataset("gradient/margin_error", np.array([x.margin_error for x in r]),
                         "max |reproduced − stored| target margin of each retrained row (NaN: full-pool network)",
                         "network", "margin"),
            ExtraDataset("gradient/source_accuracy", np.array([x.source_accuracy for x in r]),
                         "source test accuracy of each network", "network", "fraction"),
            ExtraDataset("gradient/seconds", np.array([x.seconds for x in r]),
                         "wall-clock seconds to retrain, transfer and score each network", "network", "seconds"),
        ]


def fit_gradient(store_path: str | Path, out_path: str | Path, *, models: int = GRADIENT_MODELS, full_models: int = 0,
                 proj_dim: int | None = None, projection: str = "gaussian", proj_seed: int = 0,
                 lam: float = GRADIENT_LAMBDA,
                 head: str = "fixed", kernel: str = "trak", device: str | None = None, targets: slice | None = None,
                 holdout_frac: float = 0.1, seed: int = 0, chunk: int = 64, whole_groups: bool = True,
                 checkpoints: int | tuple[int, ...] = 1, q: str = "mean", kernel_over: str = "pool",
                 shared_projection: bool = False, force: bool = False,
                 progress: Callable[[str], None] | None = None) -> GradientEstimator:
    """Fit the gradient estimator on an example-level store and write ESTIMATE.h5 (see the module docstring).

    The held-out test rows (`holdout_frac`, `seed`) are the same split every estimator uses, so `dmtoolkit
    evaluate` scores the result like a datamodels estimate; the retrained rows come from the fitting rows only.
    Each finished network is saved in OUT.partial/ (`ensemble.partial_folder`): a rerun with the same settings
    continues from it, one with other settings is refused; it is removed once the estimate is written.
    """
    from dmtoolkit.devices import resolve_device
    from dmtoolkit.estimate.fit import fit_store

    resolve_device(device)
    model = GradientEstimator(store_path, models=models, full_models=full_models, proj_dim=proj_dim,
                              projection=projection, proj_seed=proj_seed, lam=lam, head=head, kernel=kernel, row_seed=seed,
                              device=device, chunk=chunk, whole_groups=whole_groups, checkpoints=checkpoints,
                              q=q, kernel_over=kernel_over, shared_projection=shared_projection,
                              progress=progress, partial=partial_folder(out_path))
    model.check_settings()
    fit_store(store_path, out_path, model, test_fraction=holdout_frac, seed=seed, targets=targets, force=force)
    NetworkSaver(model.partial, {}).remove()  # the estimate is written: nothing left to resume
    return model
