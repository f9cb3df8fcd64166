"""Transfer G source models to the target task and return their logits on the target test set.

fixed-feature: the backbone is frozen; each model gets its own linear head on its own standardised
features of the named layer (see `standardisation` for the std floor): softmax regression fitted with
Adam (elementwise, so models stay independent) or closed-form ridge regression on one-hot labels.
full: a fresh head, then every weight is fine-tuned on the target training set.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from dmtoolkit.recipe import TransferSpec
from dmtoolkit.train.fit import LoopSettings, MemoryBatches, batched_outputs, train_models

STD_FLOOR = 0.05  # of the model's mean feature std


def standardisation(train_feats: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-feature mean and std over the training images (G, 1, d), std floored at STD_FLOOR x the mean std.

    A ReLU unit that is (almost) silent on the few target training images but fires on a test image
    would otherwise be divided by ~0 and give that image a margin of hundreds; one such model in a
    thousand is enough to wreck a difference of means. With the floor the head gives it a tiny weight.
    """
    mean = train_feats.mean(dim=1, keepdim=True)
    std = train_feats.std(dim=1, keepdim=True)
    floor = (STD_FLOOR * std.mean(dim=-1, keepdim=True)).clamp_min(1e-6)
    return mean, torch.maximum(std, floor)


def fit_linear_heads(train_feats: torch.Tensor, train_labels: torch.Tensor, num_classes: int,
                     spec: TransferSpec, seeds: list[int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Softmax-regression heads for features (G, n, d): returns (weight, bias, feature mean, feature std)."""
    G, n, d = train_feats.shape
    mean, std = standardisation(train_feats)
    x = (train_feats - mean) / std
    weight = torch.zeros(G, d, num_classes, device=x.device)
    for g, seed in enumerate(seeds):
        weight[g].normal_(0.0, 0.01, generator=torch.Generator(device=x.device).manual_seed(seed))
    weight.requires_grad_(True)
    bias = torch.zeros(G, 1, num_classes, device=x.device, requires_grad=True)
    optimizer = torch.optim.Adam([weight, bias], lr=spec.lr, weight_decay=spec.weight_decay)
    steps_per_epoch = max(1, math.ceil(n / spec.batch_size))
    steps = max(1, math.ceil(spec.epochs * steps_per_epoch))
    for step in range(steps):
        start = (step % steps_per_epoch) * spec.batch_size
        xb, yb = x[:, start:start + spec.batch_size], train_labels[start:start + spec.batch_size]
        logits = torch.baddbmm(bias, xb, weight)
        loss = F.cross_entropy(logits.reshape(-1, num_classes), yb.repeat(G), reduction="none")
        optimizer.zero_grad(set_to_none=True)
        loss.reshape(G, -1).mean(dim=1).sum().backward()
        optimizer.step()
    return weight.detach(), bias.detach(), mean, std


def fit_ridge_heads(train_feats: torch.Tensor, train_labels: torch.Tensor, num_classes: int,
                    spec: TransferSpec) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Least-squares heads on one-hot labels for features (G, n, d): (weight, bias, feature mean, feature std).

    The solution is a smooth, seed-free function of the features, so two models' margins differ only
    because their features do.
    """
    G, n, d = train_feats.shape
    mean, std = standardisation(train_feats)
    x = ((train_feats - mean) / std).double()
    onehot = F.one_hot(train_labels, num_classes).double()
    bias = onehot.mean(dim=0).expand(G, 1, num_classes)
    gram = x.transpose(1, 2) @ x + spec.ridge * n * torch.eye(d, dtype=x.dtype, device=x.device)
    weight = torch.linalg.solve(gram, x.transpose(1, 2) @ (onehot - bias))
    dtype = train_feats.dtype  # float32 for the trainer's features; float64 kept for exact derivative tests
    return weight.to(dtype), bias.to(dtype), mean, std


def fit_head(train_feats: torch.Tensor, train_labels: torch.Tensor, num_classes: int, spec: TransferSpec,
             seeds: list[int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The recipe's fixed-feature head (`transfer.head`) for features (G, n, d)."""
    if spec.head == "ridge":
        return fit_ridge_heads(train_feats, train_labels, num_classes, spec)
    return fit_linear_heads(train_feats, train_labels, num_classes, spec, seeds)


def transfer_fixed_feature(model: nn.Module, train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor,
                           num_classes: int, spec: TransferSpec, seeds: list[int]) -> torch.Tensor:
    """Logits (G, T, K) of linear heads on the frozen models' `spec.feature_layer` features."""
    model.eval()
    G = len(seeds)
    features = lambda x: model.features(x, spec.feature_layer)  # noqa: E731
    train_feats = batched_outputs(features, train_x, G)
    test_feats = batched_outputs(features, test_x, G)
    weight, bias, mean, std = fit_head(train_feats, train_y, num_classes, spec, seeds)
    return torch.baddbmm(bias, (test_feats - mean) / std, weight)


def transfer_full(model: nn.Module, train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor,
                  num_classes: int, spec: TransferSpec, seeds: list[int]) -> torch.Tensor:
    """Logits (G, T, K) after replacing the head and fine-tuning every weight on the target training set."""
    model.new_head(num_classes, seeds)
    model.to(train_x.device)
    everything = torch.arange(len(train_x)).numpy()
    settings = LoopSettings(epochs=spec.epochs, batch_size=spec.batch_size, lr=spec.lr, momentum=0.9,
                            weight_decay=spec.weight_decay, schedule="triangular", peak_epoch=spec.epochs / 4)
    train_models(model, MemoryBatches(train_x, train_y, [everything] * len(seeds), seeds, settings), settings)
    model.eval()
    return batched_outputs(model, test_x, len(seeds))


TRANSFERS = {"fixed-feature": transfer_fixed_feature, "full": transfer_full}
