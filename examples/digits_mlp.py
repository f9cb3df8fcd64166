"""Example trainer (not image-specific): scikit-learn's bundled digits as tabular data, a small MLP.

Source units are the 10 digit classes. Each model trains a 64-32-10 MLP on the source examples of its
kept classes, then transfers to a different task, "is the digit odd?", by fitting a new logistic head
on its frozen hidden features with 200 target training examples; the margins are on 100 held-out
target test digits. The trainer brings its own data, so the recipe (examples/digits-mlp.yaml) names no
source or target, only the units and the target labels (`python -m examples.digits_mlp` prints them).

    dmtoolkit init examples/digits-mlp.yaml stores/digits.h5     # run from the repository root
    dmtoolkit train stores/digits.h5 --workers 2
    dmtoolkit influence stores/digits.h5 -o stores/digits-influence.h5
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch
from torch import nn

from dmtoolkit.train.contract import Job, TrainerResult

TARGET_TRAIN, TARGET_TEST = 200, 100


@lru_cache(maxsize=1)
def splits() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Fixed splits of the 1,797 digits: source (train/test by a seeded draw), target train and test (parity)."""
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype(np.float32)
    order = np.random.default_rng(0).permutation(len(y))
    tgt_train, tgt_test = order[:TARGET_TRAIN], order[TARGET_TRAIN:TARGET_TRAIN + TARGET_TEST]
    source = order[TARGET_TRAIN + TARGET_TEST:]
    src_test, src_train = source[:300], source[300:]
    return {"source_train": (x[src_train], y[src_train]), "source_test": (x[src_test], y[src_test]),
            "target_train": (x[tgt_train], y[tgt_train] % 2), "target_test": (x[tgt_test], y[tgt_test] % 2)}


def target_labels() -> list[int]:
    """The recipe's own_data.target_labels: parity of the target test digits."""
    return [int(v) for v in splits()["target_test"][1]]


def train(job: Job) -> TrainerResult:
    """The trainer contract: one model on the kept classes, transferred to parity; margins on the target test set."""
    hidden, epochs, lr = int(job.options.get("hidden", 32)), int(job.options.get("epochs", 60)), 0.02
    data = splits()
    if list(job.target_labels) != target_labels():
        raise ValueError("the recipe's own_data.target_labels are not this trainer's (python -m examples.digits_mlp)")
    torch.manual_seed(job.seed)
    x, y = (torch.from_numpy(a) for a in data["source_train"])
    keep = torch.from_numpy(job.mask.copy())[y]  # class level: the examples of kept classes
    x, y = x[keep], y[keep]
    trunk = nn.Sequential(nn.Linear(64, hidden), nn.ReLU())
    net = nn.Sequential(trunk, nn.Linear(hidden, 10))
    optimiser = torch.optim.Adam(net.parameters(), lr=lr)
    for _ in range(epochs):  # full-batch training on the subset
        optimiser.zero_grad()
        nn.functional.cross_entropy(net(x), y).backward()
        optimiser.step()
    with torch.no_grad():
        sx, sy = (torch.from_numpy(a) for a in data["source_test"])
        kept = torch.from_numpy(job.mask.copy())
        seen = kept[sy]
        scores = net(sx[seen]).masked_fill(~kept, float("-inf"))
        source_accuracy = float((scores.argmax(1) == sy[seen]).float().mean())
        features = {split: trunk(torch.from_numpy(data[split][0])) for split in ("target_train", "target_test")}
    head = nn.Linear(hidden, 2)  # transfer: a new head on the frozen features
    head_optimiser = torch.optim.Adam(head.parameters(), lr=0.05)
    ty = torch.from_numpy(data["target_train"][1])
    for _ in range(100):
        head_optimiser.zero_grad()
        nn.functional.cross_entropy(head(features["target_train"]), ty).backward()
        head_optimiser.step()
    with torch.no_grad():
        logits = head(features["target_test"])
    labels = torch.from_numpy(np.array(job.target_labels))
    correct = logits.gather(1, labels[:, None])[:, 0]
    other = logits.masked_fill(nn.functional.one_hot(labels, 2).bool(), float("-inf")).max(1).values
    return TrainerResult(margins=(correct - other).numpy(), source_accuracy=source_accuracy,
                         predictions=logits.argmax(1).numpy())


if __name__ == "__main__":  # print the own_data section the recipe needs
    import yaml

    print(yaml.safe_dump({"own_data": {"unit_names": [str(k) for k in range(10)], "target_labels": target_labels(),
                                       "target_class_names": ["even", "odd"]}}, default_flow_style=None, width=110))
