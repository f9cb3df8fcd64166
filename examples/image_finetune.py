"""Example image trainer (not a built-in): a user-written CNN, trained on an `imagefolder:` source, fully
fine-tuned on the target.

Each model trains `SmallNet` (two conv blocks, global average pooling, a linear classifier) on the
source images its mask keeps (class level: the images of kept classes, `job.source_indices` into
`job.data.source_pool`), then replaces the classifier with one for the target classes and fine-tunes
every parameter on the target training images; the margins are on the target test images.

The recipe (examples/image-finetune.yaml) reads its source from an image folder. To try it with
synthetic shapes (circles, squares, ... drawn with Pillow) and scikit-learn's digits as the target:

    python -m examples.image_finetune stores/shapes       # writes stores/shapes/<class>/<image>.png
    dmtoolkit init examples/image-finetune.yaml stores/shapes.h5 && dmtoolkit train stores/shapes.h5
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from dmtoolkit.train.contract import Job, TrainerResult

SHAPES = ("circle", "square", "triangle", "cross", "hline", "vline", "diagonal", "ring")


class SmallNet(nn.Module):
    """conv(3x3)-BN-ReLU-pool twice, global average pooling, linear."""

    def __init__(self, channels: int, classes: int, width: int = 12) -> None:
        super().__init__()
        block = lambda cin, cout: nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout),  # noqa: E731
                                                nn.ReLU(), nn.MaxPool2d(2))
        self.features = nn.Sequential(block(channels, width), block(width, 2 * width),
                                      nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.classifier = nn.Linear(2 * width, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def as_tensor(images: np.ndarray, resolution: int) -> torch.Tensor:
    """uint8 (N, H, W, C) -> float (N, 1, r, r) in [-1, 1] (grayscale, resized)."""
    x = torch.from_numpy(np.array(images)).permute(0, 3, 1, 2).float().div(255).mean(1, keepdim=True)
    return F.interpolate(x, size=(resolution, resolution), mode="bilinear", align_corners=False).sub(0.5).div(0.5)


def fit(net: nn.Module, x: torch.Tensor, y: torch.Tensor, epochs: int, lr: float, seed: int) -> None:
    """Minibatch SGD with momentum, a seeded data order."""
    optimiser = torch.optim.SGD(net.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4)
    order = torch.Generator().manual_seed(seed)
    net.train()
    for _ in range(epochs):
        for batch in torch.randperm(len(y), generator=order).split(32):
            optimiser.zero_grad()
            F.cross_entropy(net(x[batch]), y[batch]).backward()
            optimiser.step()


def train(job: Job) -> TrainerResult:
    """The trainer contract: source training on the kept images, full fine-tuning on the target, margins."""
    if job.data is None:
        raise ValueError("this trainer reads the run's source and target data; give the recipe source and target")
    r = int(job.options.get("resolution", 16))
    torch.manual_seed(job.seed)
    data = job.data
    pool_x, pool_y = as_tensor(data.source_pool.images, r), torch.from_numpy(np.array(data.source_pool.labels))
    keep = torch.from_numpy(np.array(job.source_indices))
    net = SmallNet(1, len(data.source_class_names), int(job.options.get("width", 12)))
    fit(net, pool_x[keep], pool_y[keep], int(job.options.get("source_epochs", 4)), 0.05, job.seed + 1)
    net.eval()
    with torch.no_grad():  # source accuracy on the held-out source images of the kept classes
        test_x, test_y = as_tensor(data.source_test.images, r), torch.from_numpy(np.array(data.source_test.labels))
        every = torch.ones(len(data.source_class_names), dtype=torch.bool)
        kept = torch.from_numpy(np.array(job.mask)) if job.kind == "class" else every
        seen = kept[test_y]
        scores = net(test_x[seen]).masked_fill(~kept, float("-inf"))
        source_accuracy = float((scores.argmax(1) == test_y[seen]).float().mean()) if seen.any() else float("nan")
    classes = len(data.target_class_names)
    net.classifier = nn.Linear(net.classifier.in_features, classes)  # a new head, then fine-tune everything
    target_x = as_tensor(data.target_train.images, r)
    target_y = torch.from_numpy(np.array(data.target_train.labels))
    fit(net, target_x, target_y, int(job.options.get("finetune_epochs", 6)), 0.05, job.seed + 2)
    net.eval()
    with torch.no_grad():
        logits = net(as_tensor(data.target_test.images, r))
    labels = torch.from_numpy(np.array(job.target_labels))
    correct = logits.gather(1, labels[:, None])[:, 0]
    other = logits.masked_fill(F.one_hot(labels, classes).bool(), float("-inf")).max(1).values
    return TrainerResult(margins=(correct - other).numpy(), source_accuracy=source_accuracy,
                         predictions=logits.argmax(1).numpy())


def make_shapes_folder(root: str | Path, per_class: int = 24, size: int = 16, seed: int = 0) -> Path:
    """Write an image folder root/<shape>/<k>.png of white shapes on black, random size and position."""
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    root = Path(root)
    for shape in SHAPES:
        (root / shape).mkdir(parents=True, exist_ok=True)
        for k in range(per_class):
            image = Image.new("L", (size, size), 0)
            draw = ImageDraw.Draw(image)
            s = int(rng.integers(size // 3, size - 4))
            x0, y0 = (int(v) for v in rng.integers(0, size - s, 2))
            x1, y1, w = x0 + s, y0 + s, int(rng.integers(1, 3))
            if shape == "circle":
                draw.ellipse((x0, y0, x1, y1), fill=255)
            elif shape == "ring":
                draw.ellipse((x0, y0, x1, y1), outline=255, width=w)
            elif shape == "square":
                draw.rectangle((x0, y0, x1, y1), fill=255)
            elif shape == "triangle":
                draw.polygon([(x0, y1), (x1, y1), ((x0 + x1) // 2, y0)], fill=255)
            elif shape == "cross":
                draw.line((x0, y0, x1, y1), fill=255, width=w)
                draw.line((x0, y1, x1, y0), fill=255, width=w)
            elif shape == "hline":
                draw.line((x0, (y0 + y1) // 2, x1, (y0 + y1) // 2), fill=255, width=w + 1)
            elif shape == "vline":
                draw.line(((x0 + x1) // 2, y0, (x0 + x1) // 2, y1), fill=255, width=w + 1)
            else:
                draw.line((x0, y1, x1, y0), fill=255, width=w + 1)
            image.save(root / shape / f"{k:03d}.png")
    return root


if __name__ == "__main__":
    print(make_shapes_folder(sys.argv[1] if len(sys.argv) > 1 else "stores/shapes"))
