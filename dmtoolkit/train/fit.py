"""Training loops for G models at once: each model has its own example subset and data order.

Every per-model quantity (loss, gradient, optimiser state) is separate, so model g's trajectory
depends only on its own subset, seed and data — never on which other models share its batch.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class LoopSettings:
    """The knobs of one training loop (source training or full fine-tuning)."""

    epochs: float
    batch_size: int
    lr: float
    momentum: float
    weight_decay: float
    schedule: str = "triangular"
    peak_epoch: float = 0.5
    label_smoothing: float = 0.0
    start_resolution: int | None = None  # progressive resizing: batches grow from this to the images' size
    order: str = "shuffle"  # "shuffle" | "slots", see `slot_batches`


def resolution_at(step: int, total_steps: int, start: int, final: int) -> int:
    """Progressive resizing (as in ffcv's ImageNet recipe): linear from start to final, in steps of 32 px."""
    value = start + (final - start) * step / max(total_steps - 1, 1)
    return int(min(final, max(start, 32 * round(value / 32))))


def epoch_order(subset: np.ndarray, num_examples: int, seed: int, epoch: int) -> np.ndarray:
    """The subset in the order seen in `epoch`: sorted by per-example random priorities from (seed, epoch).

    Priorities are drawn for the whole pool, so models sharing a seed see shared examples in the same
    relative order even when their subsets differ (shared training randomness).
    """
    priorities = np.random.default_rng([seed, epoch]).random(num_examples)
    return subset[np.argsort(priorities[subset], kind="stable")]


def batch_indices(subset: np.ndarray, num_examples: int, seed: int, batch_size: int, steps: int) -> np.ndarray:
    """(steps, batch_size) example indices walking through the subset epoch after epoch."""
    needed = steps * batch_size
    chunks, total, epoch = [], 0, 0
    while total < needed:
        chunks.append(epoch_order(subset, num_examples, seed, epoch))
        total += len(subset)
        epoch += 1
    return np.concatenate(chunks)[:needed].reshape(steps, batch_size)


def slot_batches(subsets: list[np.ndarray], num_examples: int, seeds: list[int], slots: int,
                 steps: int) -> tuple[np.ndarray, np.ndarray]:
    """Slot batching: (steps, G, B) indices and 0/1 weights; padding has weight 0.

    Each epoch, every pool example gets a batch slot from (seed, epoch); at step s a model trains on the
    examples of its subset in slot s mod `slots`. Removing an example only removes its term from the
    batches it was in, so each step's gradient is a sum over the mask: smooth in the subset.
    """
    per_model = []
    for subset, seed in zip(subsets, seeds):
        batches = []
        for epoch in range(-(-steps // slots)):
            slot_of = np.random.default_rng([seed, epoch]).permutation(num_examples) % slots
            ordered = subset[np.argsort(slot_of[subset], kind="stable")]
            batches.extend(np.split(ordered, np.searchsorted(slot_of[ordered], np.arange(1, slots))))
        per_model.append(batches[:steps])
    width = max(len(b) for batches in per_model for b in batches)
    index = np.zeros((steps, len(subsets), width), np.int64)
    weight = np.zeros((steps, len(subsets), width), np.float32)
    for g, batches in enumerate(per_model):
        for step, batch in enumerate(batches):
            index[step, g, :len(batch)] = batch
            weight[step, g, :len(batch)] = 1.0
    return index, weight


def lr_factor(step: int, total_steps: int, schedule: str, peak_step: float) -> float:
    """Learning-rate multiplier: triangular (linear up to the peak, linear down to 0), cosine or constant."""
    if schedule == "constant":
        return 1.0
    if schedule == "cosine":
        return 0.5 * (1 + math.cos(math.pi * step / total_steps))
    if step < peak_step:
        return (step + 1) / (peak_step + 1)
    return max(total_steps - step, 0) / max(total_steps - peak_step, 1)


def step_counts(subset_sizes: list[int], settings: LoopSettings) -> tuple[int, int]:
    """(steps per epoch, total steps): epochs are measured in the mean subset size of the group."""
    steps_per_epoch = max(1, math.ceil(float(np.mean(subset_sizes)) / settings.batch_size))
    return steps_per_epoch, max(1, math.ceil(settings.epochs * steps_per_epoch))


def to_tensor(images: np.ndarray, channels: int, resolution: int, device: torch.device) -> torch.Tensor:
    """uint8 (N, H, W, C) -> float (N, channels, r, r) in [-1, 1], converting channels and resizing."""
    x = torch.from_numpy(images).to(device).permute(0, 3, 1, 2).float().div_(255.0)
    if x.shape[1] != channels:
        x = x.mean(dim=1, keepdim=True) if channels == 1 else x.expand(-1, channels, -1, -1)
    if x.shape[-1] != resolution or x.shape[-2] != resolution:
        x = F.interpolate(x, size=(resolution, resolution), mode="bilinear", antialias=True, align_corners=False)
    return x.sub_(0.5).div_(0.5).contiguous()


class BatchSource(Protocol):
    """Where a training loop's batches come from: step -> (x (G, B, C, H, W), y (G, B), weight (G, B))."""

    steps_per_epoch: int
    steps: int

    def __call__(self, step: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]: ...


class BatchFactory(Protocol):
    """Makes the `BatchSource` of one group of G models: model g trains on pool examples `subsets[g]`,
    in the data order seeded by `order_seeds[g]`.

    One implementation per place the source pool lives: `MemoryPool` (tensors in memory) and
    `dmtoolkit.train.betons.BetonPool` (an ffcv beton); `dmtoolkit.train.job.source_pool` picks one.
    """

    def __call__(self, subsets: list[np.ndarray], order_seeds: list[int], settings: LoopSettings) -> BatchSource: ...


class MemoryBatches:
    """Batches gathered from in-memory tensors, model g from `subsets[g]`, shuffled or slotted."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, subsets: list[np.ndarray],
                 order_seeds: list[int], settings: LoopSettings) -> None:
        self.images, self.labels = images, labels
        self.steps_per_epoch, self.steps = step_counts([len(s) for s in subsets], settings)
        if settings.order == "slots":
            order, weights = slot_batches(subsets, len(images), order_seeds, self.steps_per_epoch, self.steps)
        else:
            order = np.stack([batch_indices(s, len(images), seed, settings.batch_size, self.steps)
                              for s, seed in zip(subsets, order_seeds)], axis=1)
            weights = np.ones(order.shape, np.float32)
        self.order = torch.from_numpy(order).to(images.device)
        self.weights = torch.from_numpy(weights).to(images.device)

    def __call__(self, step: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        idx = self.order[step]
        return self.images[idx], self.labels[idx], self.weights[step]


class MemoryPool:
    """A `BatchFactory` over the source pool held as tensors: every group gets `MemoryBatches` of it."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        self.images, self.labels = images, labels

    def __call__(self, subsets: list[np.ndarray], order_seeds: list[int], settings: LoopSettings) -> MemoryBatches:
        return MemoryBatches(self.images, self.labels, subsets, order_seeds, settings)


def train_models(model: nn.Module, batches: BatchSource, settings: LoopSettings,
                 after_epoch: Callable[[int], None] | None = None) -> None:
    """Train the G models of `model` by SGD on their own batches (see `BatchSource`).

    `after_epoch(e)` is called after the last step of each whole epoch e = 1, 2, … (checkpoints along
    training: it may copy the model; it must not change it)."""
    optimizer = torch.optim.SGD(model.parameters(), lr=settings.lr, momentum=settings.momentum,
                                weight_decay=settings.weight_decay)
    steps, peak = batches.steps, settings.peak_epoch * batches.steps_per_epoch
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, steps, settings.schedule, peak))
    model.train()
    for step in range(steps):
        x, y, weight = batches(step)
        if settings.start_resolution and settings.start_resolution != x.shape[-1]:
            size = resolution_at(step, steps, settings.start_resolution, x.shape[-1])
            x = F.interpolate(x.flatten(0, 1), size=(size, size), mode="bilinear", antialias=True,
                              align_corners=False).unflatten(0, x.shape[:2])
        loss = F.cross_entropy(model(x).flatten(0, 1), y.reshape(-1), label_smoothing=settings.label_smoothing,
                               reduction="none")
        optimizer.zero_grad(set_to_none=True)
        # per model: sum over its batch / nominal batch size (a constant, so the loss stays linear in the mask)
        (loss.reshape(y.shape) * weight).sum(dim=1).div(settings.batch_size).sum().backward()
        optimizer.step()
        schedule.step()
        if after_epoch is not None and (step + 1) % batches.steps_per_epoch == 0:
            after_epoch((step + 1) // batches.steps_per_epoch)


@torch.no_grad()
def batched_outputs(fn, images: torch.Tensor, groups: int, chunk: int = 1024) -> torch.Tensor:
    """fn applied to the same images for all G models, in chunks: (G, N, ...)."""
    outputs = []
    for start in range(0, len(images), chunk):
        x = images[start:start + chunk]
        outputs.append(fn(x.unsqueeze(0).expand(groups, *x.shape)))
    return torch.cat(outputs, dim=1)


def margins_from_logits(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """z_y - max_{k != y} z_k for logits (..., N, K) and labels (N,); positive exactly when correct."""
    index = labels.expand(*logits.shape[:-1]).unsqueeze(-1)
    correct = logits.gather(-1, index).squeeze(-1)
    others = logits.scatter(-1, index, float("-inf")).amax(dim=-1)
    return correct - others
