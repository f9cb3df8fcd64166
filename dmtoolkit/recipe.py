"""Recipes: one validated YAML file says everything a run needs (data, subsets, model, training, transfer).

The recipe's canonical JSON (after validation and overrides) is stored in every run store and hashed,
so a store always knows exactly how its rows were made and resumes refuse a different recipe.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from dmtoolkit.errors import RecipeError
from dmtoolkit.text_input import read_text_input


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class DataSpec(_Section):
    """A dataset by name (`glyphs`, `mnist5k`, `digits`, `fashion-mnist`, `imagefolder:PATH`) or ffcv betons."""

    dataset: str
    classes: list[str] | None = Field(default=None, min_length=2,
                                      description="keep only these classes, in this order (default: all)")
    max_per_class: int | None = Field(default=None, gt=0, description="cap on training examples per class")
    train_size: int | None = Field(default=None, gt=0, description="cap on training examples (seeded draw)")
    test_size: int | None = Field(default=None, gt=0, description="cap on test examples (seeded draw)")
    seed: int = Field(default=0, description="seed of the capped draws above (independent of the mask seed)")
    beton_train: str | None = None
    beton_test: str | None = None


ADDED_KEYS: dict[tuple[str | None, str], object] = {
    ("planting", "copy_labels"): "same-name",
    ("planting", "harmful"): None,
    (None, "trainer"): None,
    (None, "own_data"): None,
    ("training", "seed_blocks"): 4,
    ("trainer", "seed_blocks"): 4,
    ("training", "timeout"): None,
    ("trainer", "timeout"): None,
}
"""(section, key) -> the value with which a recipe behaves as it did before the key existed (section None: a
top-level key)."""

BUILTIN_SECTIONS = ("model", "training", "transfer")
"""The sections of the built-in pipeline, which a recipe naming a `trainer` leaves out."""

TIMEOUT_HELP = ("seconds one model may take before its worker is killed and its rows reported as timed out "
                "(a group of G models gets G times this; `dmtoolkit train --timeout` overrides it); default: no limit")

TRAINER_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_][A-Za-z0-9_]*$"


HarmKind = Literal["conflict", "noise", "shuffled", "duplicate"]


class HarmfulSpec(_Section):
    """Source classes planted to hurt the target (`planting.harmful`), one per entry of `kinds`.

    conflict: `images` target TRAIN images of `conflict_classes` other target classes (default: all) are added
    to the source class of a target class (with 1: a glyph "7" class that also holds MNIST 1s), so the features
    must merge those target classes (only the default, all of them, was measured to hurt: benchmarks/harm_study.py,
    docs/signal.md; merging a few helps, as the added target-like images outweigh the merge);
    noise: a source class's images get Gaussian noise of `noise_sd` grey levels; shuffled: a source class's
    images are replaced by images of the other classes (its label no longer means anything); duplicate: a
    new class holds a copy of another class's images under another name. See `dmtoolkit.data.planting`.
    On the development seed (glyphs -> MNIST) only conflict was shown to hurt (+0.018 [+0.012, +0.023] accuracy
    from removing it); noise (sd 96 or 128), shuffled and duplicate classes were not (gains within ±0.005 of 0),
    so they are no ground truth of harm there.
    """

    kinds: list[HarmKind] = Field(min_length=1, max_length=64, description="one planted class per entry")
    images: int = Field(default=2000, gt=0, description="conflict: target train images added to the class (2,000: "
                                                        "the strength measured to hurt on the development seed)")
    conflict_classes: int | None = Field(default=None, gt=0, description="conflict: how many other target classes "
                                                                          "the images come from (default: all)")
    noise_sd: float = Field(default=96.0, gt=0, description="noise: Gaussian noise, in grey levels")


class PlantingSpec(_Section):
    """Ground truth planted into the source so detectors can be scored (never read by estimators).

    The one planting type: the recipe's section and the argument of `dmtoolkit.data.planting.plant`;
    `near_copies` counts leaks (decoys get near copies in the same proportion).
    """

    leaks: int = Field(default=0, ge=0)
    decoys: int = Field(default=0, ge=0)
    near_copies: int = Field(default=0, ge=0)
    flip_fraction: float = Field(default=0.0, ge=0.0, lt=1.0)
    seed: int = 0
    copy_labels: Literal["same-name", "by-index"] = Field(
        default="same-name",
        description="source class a copied target image is filed under: the same-named class (MNIST '3' -> "
                    "glyph '3'), or by index (target class k -> source class k) for targets whose class names "
                    "the source does not have (fashion-mnist)")
    harmful: HarmfulSpec | None = Field(
        default=None, description="source classes planted to hurt the target (kinds: conflict, noise, shuffled, "
                                  "duplicate), ground truth for `recommend`")

    @property
    def active(self) -> bool:
        """Whether anything is planted."""
        return bool(self.leaks or self.decoys or self.flip_fraction or self.harmful)

    @model_validator(mode="after")
    def _near_copies_are_leaks(self) -> "PlantingSpec":
        if self.near_copies > self.leaks:
            raise ValueError(f"near_copies ({self.near_copies}) cannot exceed leaks ({self.leaks})")
        return self


class SubsetSpec(_Section):
    """Which units are subsampled, how many, and how the masks are drawn."""

    kind: Literal["class", "example"] = "class"
    alpha: float = Field(default=0.5, gt=0.0, lt=1.0)
    models: int = Field(default=256, ge=2)
    seed: int = 0
    antithetic: bool = Field(default=False, description="odd masks are the complements of even ones")
    design: Literal["random", "orthogonal"] = Field(
        default="random",
        description="random: each mask keeps round(alpha*P) units at random; orthogonal: Hadamard blocks in which "
                    "every unit is in half the models and units are uncorrelated (needs alpha 0.5)",
    )


class ModelSpec(_Section):
    """The source network."""

    arch: Literal["tiny-cnn", "resnet18"] = "tiny-cnn"
    width: int = Field(default=16, gt=0, description="channels of the first conv layer (tiny-cnn)")
    hidden: int = Field(default=64, gt=0, description="penultimate feature size (tiny-cnn)")
    downsample: Literal["maxpool", "stride"] = Field(default="maxpool", description="how tiny-cnn halves resolution")
    norm: Literal["batch", "none"] = Field(default="batch", description="tiny-cnn normalisation after each conv")
    resolution: int = Field(default=16, ge=8)
    final_resolution: int | None = Field(default=None, ge=8, description="progressive resizing end (resnet18)")


Randomness = Literal["shared", "per-model", "per-pair", "seed-blocks"]
RANDOMNESS_HELP = (
    "shared: every model starts from the same init and data-order seed (answers are conditioned on it); "
    "per-model: each its own; per-pair: each antithetic pair (a mask and its complement) its own, so a seed's "
    "effect cancels in every unit's contrast while the answer averages over many seeds; seed-blocks: "
    "`seed_blocks` seeds, one per pair in turn (pair p gets seed p mod seed_blocks), crossed with the masks")


class TrainSpec(_Section):
    """Source training on a subset."""

    epochs: float = Field(default=2.0, gt=0)
    batch_size: int = Field(default=128, gt=0)
    lr: float = Field(default=0.1, gt=0)
    momentum: float = Field(default=0.9, ge=0, lt=1)
    weight_decay: float = Field(default=5e-4, ge=0)
    schedule: Literal["triangular", "constant", "cosine"] = "triangular"
    peak_epoch: float = Field(default=0.5, ge=0)
    label_smoothing: float = Field(default=0.0, ge=0, lt=1)
    randomness: Randomness = Field(default="shared", description=RANDOMNESS_HELP)
    seed_blocks: int = Field(default=4, ge=2, description="seed-blocks randomness: how many training seeds")
    seed: int = Field(default=0, description="training seed (init, data order); with shared randomness the "
                                             "answers are conditioned on it")
    models_per_batch: int = Field(default=8, ge=1, description="models trained at once as one batched network")
    timeout: float | None = Field(default=None, gt=0, description=TIMEOUT_HELP)
    order: Literal["shuffle", "slots"] = Field(
        default="shuffle",
        description="shuffle: each epoch walks the subset in random order; slots: every pool example has a "
                    "random batch slot per epoch and a model's batch is its kept examples of that slot, so each "
                    "step's gradient is linear in the mask",
    )


class TransferSpec(_Section):
    """Adapting a source model to the target task."""

    mode: Literal["fixed-feature", "full"] = "fixed-feature"
    feature_layer: Literal["conv", "penultimate", "logits"] = Field(
        default="penultimate",
        description="what the fixed-feature head reads: conv trunk, penultimate layer, or the source class scores",
    )
    head: Literal["logistic", "ridge"] = Field(
        default="logistic",
        description="fixed-feature head: softmax regression fitted with Adam, or closed-form ridge regression "
                    "on one-hot labels (deterministic, so its margins carry no optimiser noise)",
    )
    ridge: float = Field(default=1.0, gt=0, description="ridge head penalty, per training example")
    epochs: float = Field(default=30.0, gt=0)
    batch_size: int = Field(default=512, gt=0)
    lr: float = Field(default=0.05, gt=0)
    weight_decay: float = Field(default=1e-4, ge=0)


class TrainerSpec(_Section):
    """A user's training function in place of the built-in model/training/transfer sections.

    Written `trainer: MODULE:FUNCTION` or as a mapping with the keys below. The function is imported from
    the working directory or `PYTHONPATH` and called once per model with a `dmtoolkit.train.contract.Job`.
    """

    function: str = Field(pattern=TRAINER_PATTERN, description="MODULE:FUNCTION, e.g. examples.digits_mlp:train")
    seed: int = Field(default=0, description="training seed the job seeds derive from")
    randomness: Randomness = Field(default="shared", description=RANDOMNESS_HELP)
    seed_blocks: int = Field(default=4, ge=2, description="seed-blocks randomness: how many training seeds")
    options: dict[str, Any] = Field(default_factory=dict, description="passed to the function as job.options")
    timeout: float | None = Field(default=None, gt=0, description=TIMEOUT_HELP)


class OwnDataSpec(_Section):
    """What the store needs to know when the trainer brings its own data (no `source`/`target` sections)."""

    num_units: int | None = Field(default=None, ge=2, description="P, the units masks subsample")
    unit_names: list[str] | None = Field(default=None, min_length=2, description="name of each unit (default 0..P-1)")
    target_labels: list[int] = Field(min_length=1, description="class of each target test example (T of them)")
    target_class_names: list[str] | None = Field(default=None, description="default: 0..max label")

    @model_validator(mode="after")
    def _consistent(self) -> "OwnDataSpec":
        if self.num_units is None and self.unit_names is None:
            raise ValueError("give num_units or unit_names")
        if self.num_units is not None and self.unit_names is not None and len(self.unit_names) != self.num_units:
            raise ValueError(f"{len(self.unit_names)} unit_names for num_units {self.num_units}")
        if self.unit_names is not None and len(set(self.unit_names)) != len(self.unit_names):
            raise ValueError("unit_names repeat a name")
        classes = len(self.target_class_names) if self.target_class_names is not None else None
        if min(self.target_labels) < 0 or (classes is not None and max(self.target_labels) >= classes):
            raise ValueError(f"target_labels must lie in [0, {classes if classes is not None else 'classes'})")
        return self

    @property
    def units(self) -> tuple[str, ...]:
        return tuple(self.unit_names) if self.unit_names is not None else tuple(map(str, range(self.num_units or 0)))

    @property
    def classes(self) -> tuple[str, ...]:
        if self.target_class_names is not None:
            return tuple(self.target_class_names)
        return tuple(map(str, range(max(self.target_labels) + 1)))


class Recipe(_Section):
    """A whole experiment."""

    name: str
    source: DataSpec | None = None
    target: DataSpec | None = None
    subsets: SubsetSpec = SubsetSpec()
    model: ModelSpec = ModelSpec()
    training: TrainSpec = TrainSpec()
    transfer: TransferSpec = TransferSpec()
    planting: PlantingSpec = PlantingSpec()
    trainer: TrainerSpec | None = Field(default=None, description="MODULE:FUNCTION in place of model/training/transfer")
    own_data: OwnDataSpec | None = Field(default=None, description="units and target labels of a trainer's own data")

    @model_validator(mode="before")
    @classmethod
    def _trainer_shorthand(cls, data: Any) -> Any:
        if isinstance(data, dict) and isinstance(data.get("trainer"), str):
            data = {**data, "trainer": {"function": data["trainer"]}}
        return data

    @property
    def trainer_name(self) -> str:
        """The trainer that computes the rows: the recipe's MODULE:FUNCTION, or `builtin:ARCH`."""
        return self.trainer.function if self.trainer else f"builtin:{self.model.arch}"

    @property
    def seeding(self) -> tuple[int, str]:
        """(training seed, randomness) the per-model seeds derive from (the trainer's, else `training`'s)."""
        spec = self.trainer or self.training
        return spec.seed, spec.randomness

    @property
    def seed_blocks(self) -> int:
        """Number of training seeds under seed-blocks randomness (the trainer's, else `training`'s)."""
        return (self.trainer or self.training).seed_blocks

    @property
    def timeout(self) -> float | None:
        """Seconds one model may take (the trainer's, else `training`'s `timeout`); None: no limit."""
        return (self.trainer or self.training).timeout

    @model_validator(mode="after")
    def _consistent(self) -> "Recipe":
        if self.trainer is None:
            for role in ("source", "target"):
                if getattr(self, role) is None:
                    raise ValueError(f"{role}: Field required (only a recipe naming a `trainer` with `own_data` may leave "
                                     "out its data)")
            if self.own_data is not None:
                raise ValueError("own_data: only a recipe naming a `trainer` brings its own data")
        else:
            given = [s for s in BUILTIN_SECTIONS if s in self.model_fields_set]
            if given:
                raise ValueError(f"{given[0]}: a recipe naming a trainer has no {'/'.join(BUILTIN_SECTIONS)} sections "
                                 "(put the trainer's settings under trainer.options)")
            has_data = (self.source is not None, self.target is not None)
            if has_data == (True, True) and self.own_data is not None:
                raise ValueError("own_data: give either source and target data or own_data, not both")
            if has_data != (True, True) and (any(has_data) or self.own_data is None):
                raise ValueError("own_data: a trainer recipe names both source and target data, or neither and "
                                 "then own_data (num_units or unit_names, target_labels)")
            if self.own_data is not None and self.planting.active:
                raise ValueError("planting: needs source and target data (a trainer's own data cannot be planted)")
        if self.training.order == "slots" and self.model.norm == "batch":
            raise ValueError("training.order slots needs model.norm none (BatchNorm would mix padded batches)")
        if self.subsets.design == "orthogonal" and self.subsets.alpha != 0.5:
            raise ValueError("subsets.design orthogonal needs alpha = 0.5 (each unit is in half of a block)")
        if self.subsets.antithetic and self.subsets.alpha != 0.5:
            raise ValueError("subsets.antithetic needs alpha = 0.5 (a complement keeps the other half)")
        if self.subsets.antithetic and self.subsets.models % 2:
            raise ValueError("subsets.antithetic needs an even number of models")
        randomness = self.seeding[1]
        if randomness in ("per-pair", "seed-blocks") and not self.subsets.antithetic:
            raise ValueError(f"{'trainer' if self.trainer else 'training'}.randomness {randomness} seeds antithetic "
                             "pairs (a mask and its complement share a seed); set subsets.antithetic: true, "
                             "or randomness shared or per-model")
        return self

    def canonical_json(self) -> str:
        """Key-sorted JSON of every setting, defaults included: what the hash covers.

        Keys added after stores were first made (ADDED_KEYS) are left out while they hold the value that
        reproduces the old behaviour, so existing stores keep their hash and can still be resumed."""
        data = self.model_dump(mode="json")
        for (section, key), neutral in ADDED_KEYS.items():
            node = data if section is None else data.get(section)
            if isinstance(node, dict) and node.get(key, neutral) == neutral:
                node.pop(key, None)
        if self.trainer is not None:  # the built-in sections do not apply (and are refused when given)
            for section in BUILTIN_SECTIONS:
                data.pop(section, None)
        for role in ("source", "target"):
            if data.get(role, ()) is None:
                data.pop(role)
        return json.dumps(data, sort_keys=True, separators=(",", ":"))

    def hash(self) -> str:
        return hashlib.sha256(self.canonical_json().encode()).hexdigest()

    def with_overrides(self, *, models: int | None = None, seed: int | None = None,
                       training_seed: int | None = None) -> "Recipe":
        """The recipe with `--models` / `--seed` (subsets) or a training seed applied (and re-validated)."""
        data = json.loads(self.canonical_json())
        if models is not None:
            data["subsets"]["models"] = models
        if seed is not None:
            data["subsets"]["seed"] = seed
        if training_seed is not None:
            data.setdefault("trainer" if self.trainer else "training", {})["seed"] = training_seed
        return parse_recipe_dict(data, origin="command-line overrides")


def _describe(error: ValidationError, origin: str) -> str:
    first = error.errors()[0]
    where = ".".join(str(part) for part in first["loc"])
    message = first["msg"].removeprefix("Value error, ")
    if first["type"] == "extra_forbidden":
        message = "unknown key (check the spelling; see recipes/glyphs-to-mnist.yaml for every key)"
    elif "input" in first and first["type"] not in ("missing", "value_error"):  # value errors name their values
        message = f"{message} (got {first['input']!r})"
    more = len(error.errors()) - 1
    suffix = f" (+{more} more problem{'s' * (more > 1)})" if more else ""
    return f"{origin}: {where + ': ' if where else ''}{message}{suffix}"


def parse_recipe_dict(data: object, origin: str = "recipe") -> Recipe:
    """Validate a recipe given as a mapping; errors name the key and the problem on one line."""
    if not isinstance(data, dict):
        raise RecipeError(f"{origin}: a recipe must be a YAML mapping of keys to values, got {type(data).__name__}")
    try:
        return Recipe.model_validate(data)
    except ValidationError as error:
        raise RecipeError(_describe(error, origin)) from None


MAX_RECIPE_BYTES = 64 << 20
"""Largest recipe file read (64 MiB: the shipped recipes are a few KiB, but a trainer's `own_data` may list tens of
thousands of unit names; aliases, not size, are what could blow a small file up, and those are refused)."""


class _AliasRefused(yaml.YAMLError):
    def __init__(self, line: int) -> None:
        super().__init__(f"YAML aliases are not allowed in recipes (line {line})")


class _RecipeLoader(yaml.SafeLoader):
    """SafeLoader that also reads `5e-5` as a float (YAML 1.1 would read it as a string) and refuses aliases
    (`*name`, also in `<<: *name` merges): a few lines of nested aliases expand to gigabytes (a "billion
    laughs" bomb), and a recipe never needs them. Anchors alone are harmless and left alone."""

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            raise _AliasRefused(self.peek_event().start_mark.line + 1)
        return super().compose_node(parent, index)


_RecipeLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:\d+\.?\d*|\.\d+)[eE][-+]?\d+$"),
    list("-+0123456789."),
)


def parse_recipe_text(text: str, origin: str = "recipe") -> Recipe:
    """Parse and validate recipe YAML (no aliases); errors are one line. Files are bounded where they are read
    (`load_recipe`); a store's own recipe text is parsed whatever its size."""
    try:
        data = yaml.load(text, Loader=_RecipeLoader)
    except _AliasRefused as error:
        raise RecipeError(f"{origin}: {error}; write the values out in full") from None
    except RecursionError:
        raise RecipeError(f"{origin}: YAML nested too deeply to be a recipe") from None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(error, "problem", None) or "malformed YAML"
        raise RecipeError(f"{origin}: malformed YAML{where}: {problem}") from None
    return parse_recipe_dict(data, origin)


RECIPES_DIR = Path(__file__).resolve().parent / "recipes"
"""The recipes shipped inside the package (a checkout's top-level `recipes/` links here)."""


def shipped_recipe(path: str | Path) -> Path | None:
    """The shipped recipe a missing `path` names ("recipes/NAME.yaml", "NAME.yaml" or "NAME"), if any."""
    path = Path(path)
    if len(path.parts) > 2 or (len(path.parts) == 2 and path.parts[0] != "recipes"):
        return None
    candidate = RECIPES_DIR / (path.name if path.suffix else f"{path.name}.yaml")
    return candidate if candidate.is_file() else None


def load_recipe(path: str | Path) -> Recipe:
    """Read and validate a recipe file; a missing `recipes/NAME.yaml` (or bare NAME) is the shipped recipe,
    so README commands work from any directory with an installed wheel."""
    path = Path(path)
    if not path.exists():  # (a device or FIFO is refused by name below, not taken for a missing file)
        shipped = shipped_recipe(path)
        if shipped is None:
            names = ", ".join(sorted(p.stem for p in RECIPES_DIR.glob("*.yaml")))
            raise RecipeError(f"{path}: recipe file not found (shipped recipes: {names})")
        path = shipped
    return parse_recipe_text(read_text_input(path, "recipe", limit=MAX_RECIPE_BYTES, error=RecipeError),
                             origin=str(path))
