"""Example trainer with its gradient hook: example-level subsets of a small digit pool, a user's MLP.

Source units are individual pool images (scikit-learn's 8x8 digits, 16 per class, plus the planted leaks
and flipped labels of examples/digits-examples.yaml). Each model trains a 64-32-10 MLP (full-batch Adam) on
the pool images its mask keeps, then transfers by fitting a new linear head on its frozen hidden features
with the target training digits; the margins are on the target test digits.

`train(job)` is the trainer contract (docs/trainers.md). `gradient_networks(job)` is the gradient hook
beside it: it retrains the same network (same code, same seed) and returns it, as
`dmtoolkit.estimate.networks.Network`s, after the epochs listed in the options' `checkpoints` and at the
end, so `dmtoolkit gradient` can differentiate it (docs/trainers.md, "Gradients from your trainer"):

    dmtoolkit init examples/digits-examples.yaml stores/digit-examples.h5    # run from the repository root
    dmtoolkit train stores/digit-examples.h5
    dmtoolkit gradient stores/digit-examples.h5 -o stores/digit-examples-gradient.h5 --models 4
    dmtoolkit evaluate stores/digit-examples.h5 --estimate stores/digit-examples-gradient.h5
    dmtoolkit mislabels stores/digit-examples-gradient.h5
    dmtoolkit influence stores/digit-examples.h5 -o stores/digit-examples-influence.h5
    dmtoolkit mislabels stores/digit-examples-influence.h5     # label check from the store's own 64 models
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from dmtoolkit.estimate.networks import Examples, Network
from dmtoolkit.store import Split
from dmtoolkit.train.contract import Job, TrainerResult


class MLP(nn.Module):
    """64 pixels -> `hidden` ReLU features (the trunk the transfer reads) -> source classes."""

    def __init__(self, hidden: int, classes: int) -> None:
        super().__init__()
        self.trunk = nn.Sequential(nn.Linear(64, hidden), nn.ReLU())
        self.classifier = nn.Linear(hidden, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.trunk(x))


def inputs(split: Split) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 (N, 8, 8, 1) images -> float (N, 64) in [0, 1], and int64 labels."""
    x = torch.from_numpy(split.images.reshape(len(split.images), -1)).float() / 255
    return x, torch.from_numpy(split.labels)


def transfer(net: MLP, job: Job) -> nn.Linear:
    """A new head for the target classes on the network's frozen features (Adam, 100 full-batch steps)."""
    assert job.data is not None
    x, y = inputs(job.data.target_train)
    with torch.no_grad():
        features = net.trunk(x)
    generator = torch.Generator().manual_seed(job.seed + 1)
    head = nn.Linear(features.shape[1], len(job.data.target_class_names))
    with torch.no_grad():  # a seeded initialisation that does not touch torch's global generator
        head.weight.uniform_(-0.1, 0.1, generator=generator)
        head.bias.zero_()
    optimiser = torch.optim.Adam(head.parameters(), lr=0.05)
    for _ in range(100):
        optimiser.zero_grad()
        nn.functional.cross_entropy(head(features), y).backward()
        optimiser.step()
    return head.requires_grad_(False)


def fit(job: Job, checkpoints: tuple[int, ...] = ()) -> list[tuple[int, MLP, nn.Linear]]:
    """Train the job's network on its kept pool images; (epoch, network, fitted target head) after each epoch
    in `checkpoints` and after the last one (the trained network the store's row is computed with)."""
    if job.data is None:
        raise ValueError("this trainer reads the run's source and target data; give the recipe source and target")
    hidden, epochs = int(job.options.get("hidden", 32)), int(job.options.get("epochs", 60))
    torch.manual_seed(job.seed)
    x, y = inputs(job.data.source_pool)
    keep = torch.from_numpy(job.source_indices)
    net = MLP(hidden, len(job.data.source_class_names))
    optimiser = torch.optim.Adam(net.parameters(), lr=0.02)
    kept: list[tuple[int, MLP]] = []
    for epoch in range(1, epochs + 1):  # full-batch training on the kept images
        optimiser.zero_grad()
        nn.functional.cross_entropy(net(x[keep]), y[keep]).backward()
        optimiser.step()
        if epoch in checkpoints and epoch < epochs:
            kept.append((epoch, copy.deepcopy(net)))
    kept.append((epochs, net))
    return [(epoch, model.eval(), transfer(model, job)) for epoch, model in kept]


def margins(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """z_y - max_{k != y} z_k per row: positive exactly when the stated label wins."""
    correct = logits.gather(1, labels[:, None])[:, 0]
    return correct - logits.scatter(1, labels[:, None], float("-inf")).max(1).values


def train(job: Job) -> TrainerResult:
    """The trainer contract: margins of the transferred network on the target test digits; also the source
    network's stated-label margins on every pool image and source test image (optional: they let
    `dmtoolkit mislabels` check each pool label against the models that never trained on it)."""
    _, net, head = fit(job)[-1]
    assert job.data is not None
    with torch.no_grad():
        sx, sy = inputs(job.data.source_test)
        px, py = inputs(job.data.source_pool)
        source_logits, pool_logits = net(sx), net(px)
        logits = head(net.trunk(inputs(job.data.target_test)[0]))
    return TrainerResult(margins=margins(logits, torch.from_numpy(job.target_labels)),
                         source_accuracy=float((source_logits.argmax(1) == sy).float().mean()),
                         predictions=logits.argmax(1), source_margins=margins(pool_logits, py),
                         source_test_margins=margins(source_logits, sy))


def gradient_networks(job: Job) -> list[Network]:
    """The gradient hook: the job's network retrained as `train` trains it, after the options' `checkpoints`
    epochs and at the end (final weights last), each with its own fitted head held fixed."""
    checkpoints = tuple(int(e) for e in job.options.get("checkpoints", ()))   # e.g. [20, 40] of 60 epochs
    trained = fit(job, checkpoints)                                         # [(epoch, net, head), …], final last
    assert job.data is not None
    pool, targets = Examples(*inputs(job.data.source_pool)), Examples(*inputs(job.data.target_test))
    held_out = Examples(*inputs(job.data.source_test))  # optional: lets `mislabels` check labels out of sample
    return [Network.from_module(net, lambda m, x: m(x), lambda m, x, head=head: head(m.trunk(x)), pool=pool,
                                targets=targets, checkpoint=f"epoch {epoch}", final=k == len(trained) - 1,
                                source_test=held_out)
            for k, (epoch, net, head) in enumerate(trained)]
