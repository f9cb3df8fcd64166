"""The work executors run: a `TrainingPlan` (recipe, masks, where the data are) and the `RunContext` a worker
builds from it to train, transfer and score one group of its models at a time.

Rows are grouped into fixed groups of G = `group_size(recipe)` rows (rows gG .. gG+G-1); a group is always
computed whole, so a row's result is the same whether it is computed first, last or after a resume.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from dmtoolkit.devices import resolve_device
from dmtoolkit.errors import TrainerError
from dmtoolkit.recipe import Recipe
from dmtoolkit.store import RunData, RunStore
from dmtoolkit.train.contract import FunctionTrainer, Job, Trainer, TrainerResult, check_result, writable_data
from dmtoolkit.train.fit import (
    BatchFactory,
    LoopSettings,
    MemoryPool,
    batched_outputs,
    margins_from_logits,
    to_tensor,
    train_models,
)
from dmtoolkit.train.models import build_model
from dmtoolkit.train.transfer import TRANSFERS

SHARED_SEED_SALT = 0x5EED


@dataclass(frozen=True)
class ModelResult:
    """What one model contributes to its store row."""

    index: int
    margins: np.ndarray
    seed: int
    source_accuracy: float
    target_accuracy: float
    seconds: float
    predictions: np.ndarray | None = None  # predicted target class per target test example
    source_margins: np.ndarray | None = None  # (P,) stated-label source margins on the pool (example level)
    source_test_margins: np.ndarray | None = None  # (S,) the same on the source test examples


PAIR_SEED_SALT = 0x9A1B
BLOCK_SEED_SALT = 0xB10C


def model_seed(training_seed: int, mask_seed: int, index: int, randomness: str, seed_blocks: int = 4) -> int:
    """Training seed of model `index` (rows 2p and 2p + 1 are antithetic pair p):

    shared       one for all models;
    per-model    one per model and mask draw;
    per-pair     one per pair and mask draw (a mask and its complement share it);
    seed-blocks  `seed_blocks` seeds, pair p gets seed p mod seed_blocks (independent of the mask draw).
    """
    if randomness == "shared":
        key = [training_seed, SHARED_SEED_SALT]
    elif randomness == "per-model":
        key = [training_seed, mask_seed, index]
    elif randomness == "per-pair":
        key = [training_seed, mask_seed, index // 2, PAIR_SEED_SALT]
    elif randomness == "seed-blocks":
        key = [training_seed, (index // 2) % seed_blocks, BLOCK_SEED_SALT]
    else:
        raise ValueError(f"unknown training randomness {randomness!r}")
    return int(np.random.SeedSequence(key).generate_state(1)[0])


def group_size(recipe: Recipe) -> int:
    """Models computed together as one group: a recipe's trainer and ResNet-18s one at a time, tiny CNNs
    `training.models_per_batch`."""
    if recipe.trainer is not None or recipe.model.arch == "resnet18":
        return 1
    return recipe.training.models_per_batch


def group_of(index: int, group_size: int) -> int:
    return index // group_size


def group_rows(group: int, group_size: int, num_models: int) -> list[int]:
    return list(range(group * group_size, min((group + 1) * group_size, num_models)))


@dataclass(frozen=True, eq=False)
class RunInputs:
    """What any worker needs to compute any model of a run, read from the store once: recipe, masks, data."""

    recipe: Recipe
    masks: np.ndarray  # bool (m, P)
    data: RunData

    @classmethod
    def from_store(cls, path: str | Path) -> "RunInputs":
        return TrainingPlan.from_store(path).inputs()


@dataclass(frozen=True, eq=False)
class TrainingPlan:
    """The unit of work an executor runs: train, transfer and score one model per row of `masks`.

    recipe: how every model trains, its seed included (row i: `model_seed` of the recipe's training seed,
    `subsets.seed`, i and randomness); masks: (m, P) bool, what each model keeps; where the data are:
    `store`, a run store whose data workers in other processes read, and/or `data`, the data in memory
    (used as they are in this process, and sent to worker processes when there is no store).
    A store's own plan (`from_store`) is its recipe, masks and path; a retraining's
    (`analyze.retrain.train_masks`) has its own recipe and masks over the data of a store or of a recipe,
    and no file is written for it. `key` identifies the plan to executors that cache what they build from
    it: a store's path, creation stamp and recipe hash, else a fresh random id. `masks_in_store`: the masks are
    the store's own, so a worker process reads them there (`for_workers` leaves them out, `masks` is None) rather
    than receiving a pickled copy (100 MB for 2,048 models over a 50,000-image pool) at every worker start.
    """

    recipe: Recipe
    masks: np.ndarray | None
    store: Path | None = None
    data: RunData | None = field(default=None, repr=False)
    key: str = field(default_factory=lambda: uuid.uuid4().hex)
    masks_in_store: bool = False

    def __post_init__(self) -> None:
        if self.store is None and self.data is None:
            raise ValueError("a training plan needs its data: a run store's path, or the data in memory")
        if self.store is not None:
            object.__setattr__(self, "store", Path(self.store))
        if self.masks is None:
            if not (self.masks_in_store and self.store is not None):
                raise ValueError("a training plan without masks must read them from its run store")
            return
        masks = np.asarray(self.masks, dtype=bool)
        if masks.ndim != 2 or not len(masks):
            raise ValueError(f"a training plan needs (models, units) masks with a model at least, got {masks.shape}")
        object.__setattr__(self, "masks", masks)

    @classmethod
    def from_store(cls, store: "str | Path | RunStore") -> "TrainingPlan":
        """Every model of a run store (open, or a path): its recipe and masks, its data read from it."""
        if not isinstance(store, RunStore):
            with RunStore(store) as opened:
                return cls.from_store(opened)
        return cls(store.recipe, store.masks[()].astype(bool), store=store.path,
                   key=f"{store.path.resolve()}|{store.created}|{store.recipe_hash}", masks_in_store=True)

    @classmethod
    def of(cls, work: "TrainingPlan | str | Path") -> "TrainingPlan":
        """`work` as a plan: a plan as it is, a run store's path as the plan of all its models."""
        return work if isinstance(work, TrainingPlan) else cls.from_store(work)

    def run_data(self) -> RunData:
        """The data every model of the plan sees: those in memory, else read from the store."""
        if self.data is not None:
            return self.data
        with RunStore(self.store) as store:
            return store.run_data()

    def inputs(self) -> RunInputs:
        if self.masks is not None:
            return RunInputs(self.recipe, self.masks, self.run_data())
        with RunStore(self.store) as store:  # a worker's plan: the store's own masks and data, read here
            return RunInputs(self.recipe, store.masks[()].astype(bool), store.run_data())

    def context(self, device: str | None = None) -> "RunContext":
        """The run context a worker computes this plan's groups in (data loaded now)."""
        return RunContext.from_inputs(self.inputs(), device)

    def for_workers(self) -> "TrainingPlan":
        """The plan as sent to another process: without what its store holds (in-memory data; the masks when
        they are the store's own), which the worker reads from the store instead."""
        if self.store is None:
            return self
        return replace(self, data=None, masks=None if self.masks_in_store else self.masks)

    @property
    def num_groups(self) -> int:
        return -(-len(self.masks) // group_size(self.recipe))


def source_pool(recipe: Recipe, data: RunData, images: torch.Tensor, labels: torch.Tensor) -> BatchFactory:
    """Where source training reads its batches: the recipe's source beton (read by ffcv) or the in-memory pool.

    The one place that decides by `recipe.source.beton_train`. `images` (N, C, r, r) and `labels` (N,)
    are the stored pool as tensors on the training device.
    """
    if recipe.source is not None and recipe.source.beton_train:
        from dmtoolkit.train.betons import BetonPool  # ffcv is optional and slow to import

        return BetonPool(recipe.source.beton_train, data.source_example_ids, channels=images.shape[1],
                         resolution=images.shape[-1], device=images.device)
    return MemoryPool(images, labels)


class BuiltinTrainer:
    """The built-in pipelines (tiny CNN, ResNet-18) as a `contract.Trainer`: source training on each job's
    subset, transfer to the target (fixed-feature or full), margins on the target test set.

    A group of jobs is trained at once as one batched network (`training.models_per_batch` tiny CNNs,
    one ResNet-18). The stored data are prepared as tensors on `device` once per process; `batches` is
    where source training reads its batches (default: `source_pool` for the recipe).
    """

    def __init__(self, recipe: Recipe, data: RunData, device: torch.device,
                 batches: BatchFactory | None = None) -> None:
        self.recipe, self.data, self.device = recipe, data, device
        self.name = recipe.trainer_name
        self.group_size = group_size(recipe)
        channels = data.source_pool.images.shape[-1]
        r = recipe.model.final_resolution or recipe.model.resolution
        prepare = lambda split: (to_tensor(split.images, channels, r, self.device),  # noqa: E731
                                 torch.from_numpy(split.labels).to(self.device))
        self.pool_x, self.pool_y = prepare(data.source_pool)
        self.source_test_x, self.source_test_y = prepare(data.source_test)
        self.target_train_x, self.target_train_y = prepare(data.target_train)
        self.target_test_x, self.target_test_y = prepare(data.target_test)
        self.channels = channels
        self.num_source_classes = len(data.source_class_names)
        self.num_target_classes = len(data.target_class_names)
        self.batches = batches if batches is not None else source_pool(recipe, data, self.pool_x, self.pool_y)

    def train_group(self, jobs: Sequence[Job]) -> list[TrainerResult]:
        """Train, transfer and score every job of one group as one batched network."""
        recipe = self.recipe
        seeds = [job.seed for job in jobs]
        model = self.train_source_models([job.source_indices for job in jobs], seeds)
        source_acc = self.source_accuracy(model, [job.mask for job in jobs])
        # before the transfer, which may fine-tune the network (transfer.mode full)
        pool, test = self.label_margins(model, len(jobs)) if recipe.subsets.kind == "example" else (None, None)
        logits = TRANSFERS[recipe.transfer.mode](
            model, self.target_train_x, self.target_train_y, self.target_test_x, self.num_target_classes,
            recipe.transfer, [s + 2 for s in seeds])
        margins = margins_from_logits(logits, self.target_test_y).float().cpu().numpy()
        predictions = logits.argmax(dim=-1).cpu().numpy()
        return [TrainerResult(margins[g], source_acc[g], float((margins[g] > 0).mean()), predictions[g],
                              None if pool is None else pool[g], None if test is None else test[g])
                for g in range(len(jobs))]

    def label_margins(self, model: torch.nn.Module, groups: int) -> tuple[np.ndarray, np.ndarray]:
        """(groups, N) and (groups, S): each source model's stated-label margin on every pool example and every
        source test example (what the label check of `mislabels` compares)."""
        model.eval()
        out = []
        with torch.no_grad():
            for x, y in ((self.pool_x, self.pool_y), (self.source_test_x, self.source_test_y)):
                chunks = [margins_from_logits(batched_outputs(model, x[s:s + 4096], groups), y[s:s + 4096])
                          for s in range(0, len(x), 4096)]  # logits of one chunk at a time: bounded memory
                out.append(torch.cat(chunks, dim=1).float().cpu().numpy() if chunks else np.zeros((groups, 0),
                                                                                                   np.float32))
        return out[0], out[1]

    def train_source_models(self, subsets: list[np.ndarray], seeds: list[int],
                            after_epoch: Callable[[torch.nn.Module, int], None] | None = None) -> torch.nn.Module:
        """A group of len(seeds) source models, model g trained on pool examples `subsets[g]` from `seeds[g]`,
        exactly as the run's rows are (the recipe's architecture and training loop); `after_epoch(model, e)`
        is called after each whole epoch e (the gradient estimator's checkpoints copy the model there)."""
        model_spec, train = self.recipe.model, self.recipe.training
        torch.manual_seed(seeds[0])
        model = build_model(model_spec.arch, len(seeds), self.channels, self.num_source_classes,
                            model_spec.resolution, model_spec.width, model_spec.hidden, model_spec.downsample,
                            model_spec.norm)
        model.init_from_seeds(seeds)
        model.to(self.device)
        settings = LoopSettings(epochs=train.epochs, batch_size=train.batch_size, lr=train.lr,
                                momentum=train.momentum, weight_decay=train.weight_decay, schedule=train.schedule,
                                peak_epoch=train.peak_epoch, label_smoothing=train.label_smoothing,
                                start_resolution=model_spec.resolution, order=train.order)
        train_models(model, self.batches(subsets, [s + 1 for s in seeds], settings), settings,
                     None if after_epoch is None else lambda epoch: after_epoch(model, epoch))
        return model

    @torch.no_grad()
    def source_accuracy(self, model: torch.nn.Module, masks: Sequence[np.ndarray]) -> list[float]:
        """Accuracy on the source test split; class-level models are scored on their kept classes only."""
        model.eval()
        logits = batched_outputs(model, self.source_test_x, len(masks))
        accuracies = []
        for g, mask in enumerate(masks):
            z, y = logits[g], self.source_test_y
            if self.recipe.subsets.kind == "class":
                kept = torch.from_numpy(np.asarray(mask, bool).copy()).to(z.device)
                z = z.masked_fill(~kept, float("-inf"))
                keep_rows = kept[y]
                z, y = z[keep_rows], y[keep_rows]
            accuracies.append(float((z.argmax(dim=1) == y).float().mean()) if len(y) else float("nan"))
        return accuracies


def make_trainer(recipe: Recipe, data: RunData, device: torch.device,
                 batches: BatchFactory | None = None) -> Trainer:
    """The recipe's trainer: its `MODULE:FUNCTION` (imported now), else the built-in pipeline."""
    if recipe.trainer is not None:
        return FunctionTrainer(recipe.trainer.function)
    return BuiltinTrainer(recipe, data, device, batches)


class RunContext:
    """A worker's view of a run: recipe, masks, data and the recipe's trainer, loaded once per process.

    `compute_group(g)` is the one path from a group of rows to their results for every trainer and every
    executor: it builds each row's `Job`, calls `trainer.train_group`, and checks what comes back. The
    built-in trainer's prepared tensors (`pool_x`, `target_test_x`, `batches`, ...) are reachable as
    attributes of the context.
    """

    def __init__(self, recipe: Recipe, masks: np.ndarray, data: RunData, device: str | None = None,
                 batches: BatchFactory | None = None, trainer: Trainer | None = None) -> None:
        if recipe.trainer is not None:  # a user's trainer gets writable arrays on every executor (Ray's are not)
            data = writable_data(data)
        self.recipe, self.masks, self.data = recipe, masks, data
        self.device = resolve_device(device)
        self.trainer = trainer if trainer is not None else make_trainer(recipe, data, self.device, batches)
        self._unit_names = data.source_class_names if recipe.subsets.kind == "class" else data.source_example_ids
        self._target_labels = np.array(data.target_test.labels, np.int64)  # each job gets its own copy

    def __getattr__(self, name: str) -> object:  # the built-in trainer's tensors, for baselines and benchmarks
        if name.startswith("_") or name == "trainer":
            raise AttributeError(name)
        return getattr(self.trainer, name)

    @classmethod
    def from_inputs(cls, inputs: RunInputs, device: str | None = None) -> "RunContext":
        return cls(inputs.recipe, inputs.masks, inputs.data, device)

    @classmethod
    def from_store(cls, path: str | Path, device: str | None = None) -> "RunContext":
        return TrainingPlan.from_store(path).context(device)

    @property
    def group_size(self) -> int:
        return self.trainer.group_size

    def subset_examples(self, index: int) -> np.ndarray:
        """Pool examples model `index` trains on: those of kept classes, or the kept examples."""
        mask = self.masks[index]
        if self.recipe.own_data is not None:
            return np.zeros(0, np.int64)
        if self.recipe.subsets.kind == "class":
            return np.flatnonzero(mask[self.data.source_pool.labels])
        return np.flatnonzero(mask)

    def job(self, index: int) -> Job:
        """The trainer's argument for row `index`."""
        recipe = self.recipe
        training_seed, randomness = recipe.seeding
        mask = np.array(self.masks[index], dtype=bool)  # the job's own writable copy (torch.as_tensor takes it)
        return Job(index=index, mask=mask, seed=model_seed(training_seed, recipe.subsets.seed, index, randomness,
                                                         recipe.seed_blocks),
                   device=str(self.device), num_targets=len(self._target_labels), kind=recipe.subsets.kind,
                   units=np.flatnonzero(mask), source_indices=self.subset_examples(index),
                   unit_names=self._unit_names, target_labels=self._target_labels.copy(),
                   data=None if recipe.own_data is not None else self.data,
                   options=dict(recipe.trainer.options) if recipe.trainer else {}, trainer=self.trainer.name,
                   num_source_test=len(self.data.source_test.labels))

    def compute_group(self, group: int) -> list[ModelResult]:
        """Every model of one group, checked; deterministic for a given (store, group) when the trainer is."""
        started = time.perf_counter()
        jobs = [self.job(i) for i in group_rows(group, self.group_size, len(self.masks))]
        outputs = self.trainer.train_group(jobs)
        if not isinstance(outputs, (list, tuple)) or len(outputs) != len(jobs):
            raise TrainerError(f"trainer {self.trainer.name} returned {type(outputs).__name__} for rows "
                               f"{jobs[0].index}-{jobs[-1].index}, expected one result per job")
        checked = [check_result(self.trainer.name, job, output) for job, output in zip(jobs, outputs)]
        seconds = (time.perf_counter() - started) / len(jobs)
        return [ModelResult(job.index, c.margins, job.seed, c.source_accuracy, c.target_accuracy, seconds,
                            c.predictions, c.source_margins, c.source_test_margins) for job, c in zip(jobs, checked)]
