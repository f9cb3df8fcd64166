"""The trainer contract: what computes one row of a run store, built in or named by a recipe.

A trainer is a function `train(job: Job) -> margins | TrainerResult` named in a recipe as
`trainer: MODULE:FUNCTION` and imported from the working directory or `PYTHONPATH` (in every worker
process too). It is called once per model with a frozen `Job` saying which units the model keeps, its
seed and device, and where the run's data are; it returns the transferred model's margin on each of the
T target test examples (z_y - max_{k!=y} z_k), as a length-T array, or a `TrainerResult` that also
carries accuracies and predicted classes. Everything it returns is checked (`check_result`) before the
driver writes anything: an exception, a wrong shape or a non-finite value becomes one `TrainerError`
line naming the function and the row, and the group is retried once and then reported.

The built-in tiny CNN and ResNet-18 pipelines (`dmtoolkit.train.job.BuiltinTrainer`) implement the same
contract for a group of jobs at once (they train a group as one batched network), which is what the
optional `train_group` of the `Trainer` protocol is for; a user function is wrapped in
`FunctionTrainer` (one job per group).

docs/trainers.md is the user's guide to this contract (the image layout, a complete example).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

import numpy as np

from dmtoolkit.errors import TrainerError
from dmtoolkit.plugins import error_line, load_function, source_sha256
from dmtoolkit.store import RunData, Split

__all__ = ["CheckedResult", "FunctionTrainer", "Job", "Trainer", "TrainerResult", "check_result", "error_line",
           "load_function", "source_sha256", "writable_data"]


@dataclass(frozen=True, eq=False)
class Job:
    """One model to train: the argument of every trainer.

    index           row of the run store (0 .. m-1)
    mask            (P,) bool, the job's own copy: mask[u] is true when the model keeps source unit u
    seed            the model's training seed (from `trainer.seed` and `trainer.randomness`): seed torch,
                    NumPy and your data order with it, so a row can be recomputed
    device          torch device name to compute on ("cpu", "cuda", "cuda:1")
    num_targets     T, the length of the margins to return
    kind            "class" (units are source classes) or "example" (units are source pool examples)
    units           (K,) int64, ids of the kept units, increasing (np.flatnonzero(mask))
    source_indices  (n,) int64, indices into data.source_pool of the examples the kept units select (empty
                    without data): train on data.source_pool.images[source_indices]
    unit_names      name of every unit (P): class names, or pool example ids at example level
    target_labels   (T,) int64, the job's own copy: the class of each target test example (an index into
                    data.target_class_names), the y of the margins
    data            the run's stored data (`RunData`), or None when the trainer brings its own data:
                      source_pool, source_test, target_train, target_test: `Split`s of
                        images  uint8 (N, H, W, C), C = 1 (grayscale) or 3 (RGB), pixel values 0..255, channels
                                last, as loaded (an image folder: the most common size, see `dmtoolkit init`)
                        labels  int64 (N,), indices into source_class_names / target_class_names
                      source_class_names, target_class_names, source_example_ids (ids of the pool examples)
                    For torch: torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255 gives N×C×H×W in [0, 1].
    options         the recipe's `trainer.options` mapping
    trainer         the trainer's name (MODULE:FUNCTION or builtin:ARCH)
    num_source_test S, the number of source test examples the store holds (the length of
                    `TrainerResult.source_test_margins`)

    Every array is writable (`torch.as_tensor` and `torch.from_numpy` take it without a warning): `mask`,
    `units`, `source_indices` and `target_labels` are the job's own; `data` is shared by the jobs of a process,
    so copy before changing it in place. Return the margins on the T target test examples, in the order of
    `target_labels` (see `TrainerResult`).
    """

    index: int
    mask: np.ndarray
    seed: int
    device: str
    num_targets: int
    kind: str
    units: np.ndarray
    source_indices: np.ndarray
    unit_names: tuple[str, ...]
    target_labels: np.ndarray
    data: RunData | None = None
    options: Mapping[str, Any] = field(default_factory=dict)
    trainer: str = ""
    num_source_test: int = 0


@dataclass(frozen=True)
class TrainerResult:
    """A trainer's answer for one job when it has more to say than the margins.

    margins          (T,) finite floats, per target test example j with label y = target_labels[j] and the
                     transferred model's logits z: z_y - max_{k!=y} z_k (> 0 means correctly classified);
                     a NumPy array, a list or a torch tensor (any device)
    source_accuracy  accuracy on the source's own test data in [0, 1], NaN when not measured
    target_accuracy  in [0, 1]; default: the fraction of positive margins
    predictions      (T,) predicted target class per target test example, or None
    source_margins   example level only, optional: (P,) the source model's stated-label margin z_y - max_{k!=y} z_k
                     on every pool example (those it trained on and those it did not; same order as `mask`)
    source_test_margins  with `source_margins`: (S,) the same on the source test examples, S =
                     `job.num_source_test`. Both together let `dmtoolkit mislabels` test each pool label against
                     the models that never saw it (the label check); finite floats
    """

    margins: Any
    source_accuracy: float = math.nan
    target_accuracy: float | None = None
    predictions: Any = None
    source_margins: Any = None
    source_test_margins: Any = None


@dataclass(frozen=True)
class CheckedResult:
    """A result that passed `check_result`: what the store's row columns take."""

    margins: np.ndarray
    source_accuracy: float
    target_accuracy: float
    predictions: np.ndarray | None
    source_margins: np.ndarray | None = None
    source_test_margins: np.ndarray | None = None


class Trainer(Protocol):
    """What `RunContext` calls: `train_group` computes the jobs of one group (`group_size` rows) in order."""

    name: str
    group_size: int

    def train_group(self, jobs: Sequence[Job]) -> list[TrainerResult | Any]: ...


def writable_data(data: RunData) -> RunData:
    """`data` with every split's arrays writable: read-only ones (e.g. from Ray's object store) copied once."""
    def split(part: Split) -> Split:
        if part.images.flags.writeable and part.labels.flags.writeable:
            return part
        return Split(np.array(part.images), np.array(part.labels))

    return replace(data, source_pool=split(data.source_pool), source_test=split(data.source_test),
                   target_train=split(data.target_train), target_test=split(data.target_test))


def _array(value: Any) -> np.ndarray:
    if hasattr(value, "detach"):  # a torch tensor, on any device
        value = value.detach().cpu().numpy()
    return np.asarray(value)


def check_result(name: str, job: Job, output: Any) -> CheckedResult:
    """`output` of trainer `name` for `job` as row values, or a one-line `TrainerError` naming both."""
    where = f"trainer {name} returned for row {job.index}"
    result = output if isinstance(output, TrainerResult) else TrainerResult(output)
    try:
        margins = _array(result.margins)
        if margins.dtype == object or not np.issubdtype(margins.dtype, np.number):
            raise TypeError
        margins = margins.astype(np.float32)
    except (TypeError, ValueError):
        raise TrainerError(f"{where} a {type(result.margins).__name__}, not margins (a length-{job.num_targets} "
                           "array of numbers, or a TrainerResult)") from None
    if margins.shape != (job.num_targets,):
        raise TrainerError(f"{where} margins of shape {margins.shape}, expected ({job.num_targets},)")
    bad = np.flatnonzero(~np.isfinite(margins))
    if len(bad):
        raise TrainerError(f"{where} {len(bad)} non-finite margins (first: target {bad[0]}, {margins[bad[0]]})")
    accuracies = {}
    for key, value, default in (("source_accuracy", result.source_accuracy, math.nan),
                                ("target_accuracy", result.target_accuracy, float((margins > 0).mean()))):
        value = default if value is None else float(value)
        if not (0.0 <= value <= 1.0 or (key == "source_accuracy" and math.isnan(value))):
            raise TrainerError(f"{where} {key} {value}, expected a value in [0, 1]")
        accuracies[key] = value
    predictions = None
    if result.predictions is not None:
        predictions = _array(result.predictions)
        if predictions.shape != (job.num_targets,) or not np.issubdtype(predictions.dtype, np.integer):
            raise TrainerError(f"{where} predictions {predictions.dtype} {predictions.shape}, expected "
                               f"({job.num_targets},) integer classes")
        predictions = predictions.astype(np.int16)
    label_margins = _label_margins(where, job, result)
    return CheckedResult(margins, accuracies["source_accuracy"], accuracies["target_accuracy"], predictions,
                         *label_margins)


def _label_margins(where: str, job: Job, result: TrainerResult) -> tuple[np.ndarray | None, np.ndarray | None]:
    """The result's stated-label source margins, checked: both or neither, at example level, finite, of the
    pool's and the source test set's lengths."""
    given = result.source_margins is not None, result.source_test_margins is not None
    if not any(given):
        return None, None
    if not all(given):
        raise TrainerError(f"{where} only one of source_margins and source_test_margins; the label check needs "
                           "both (or return neither)")
    if job.kind != "example":
        raise TrainerError(f"{where} source_margins for a class-level store, which keeps none; return them only "
                           "for example-level stores")
    out = []
    for name, value, size in (("source_margins", result.source_margins, len(job.mask)),
                              ("source_test_margins", result.source_test_margins, job.num_source_test)):
        array = _array(value)
        if array.shape != (size,) or not np.issubdtype(array.dtype, np.number) or not np.isfinite(array).all():
            raise TrainerError(f"{where} {name} {array.dtype} {array.shape}, expected ({size},) finite numbers")
        out.append(array.astype(np.float32))
    return out[0], out[1]


class FunctionTrainer:
    """A user's `MODULE:FUNCTION` as a `Trainer`: one job per group, exceptions become `TrainerError` lines."""

    group_size = 1

    def __init__(self, name: str, function: Callable[[Job], Any] | None = None) -> None:
        self.name = name
        self.function = function if function is not None else load_function(name)

    def train_group(self, jobs: Sequence[Job]) -> list[Any]:
        outputs = []
        for job in jobs:
            try:
                outputs.append(self.function(job))
            except Exception as error:  # the driver retries the group once, then reports the row
                raise TrainerError(f"trainer {self.name} failed on row {job.index}: {error_line(error)}") from None
        return outputs
