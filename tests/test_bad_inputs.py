"""A table of bad inputs across the commands: each gives its one-line message and exit code, nothing overwritten.

Every case runs the real CLI (in process) in its own folder; before and after, every file in that folder
is fingerprinted (bytes and mtime), so a failing command may not touch anything already written nor leave
new files behind (an empty `STORE.lock` next to an existing store is the one exception: it is the lock).
"""

from __future__ import annotations

import copy
import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
import yaml
from click.testing import CliRunner
from PIL import Image

from dmtoolkit.cli import cli
from dmtoolkit.data import glyphs
from dmtoolkit.errors import StoreError
from dmtoolkit.lock import WriterLock
from dmtoolkit.store import RunStore

from .conftest import SMALL_RECIPE
from .synthetic import synthetic_store

MISSING_FONT_PACKAGE = "fonts-dmtoolkit-test-missing"


def _recipe(**changes: object) -> dict:
    """SMALL_RECIPE with dotted-key changes (`subsets.alpha=0`); a value of `...` deletes the key."""
    recipe = copy.deepcopy(SMALL_RECIPE)
    for dotted, value in changes.items():
        *parents, key = dotted.split(".")
        node = recipe
        for part in parents:
            node = node[part]
        if value is ...:
            del node[key]
        else:
            node[key] = value
    return recipe


def _images(root: Path, classes: list[str], per_class: int = 3) -> None:
    for c in classes:
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            Image.fromarray(np.full((8, 8), 40 * i + len(c), np.uint8)).save(root / c / f"{i}.png")


@dataclass(frozen=True)
class Case:
    id: str
    args: list[str]  # `{d}` is the case's folder, `{store}` a valid (partly trained) store in it
    message: str
    code: int = 1
    files: dict[str, object] = field(default_factory=dict)  # name -> text, recipe dict, or callable(path)
    missing_fonts: bool = False
    multi_line: bool = False  # validate lists problems on lines of their own before its error line
    progress: bool = False  # progress lines on stderr may precede the error line


def _yaml(recipe: dict) -> str:
    return yaml.safe_dump(recipe, sort_keys=False)


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _foreign(path: Path) -> None:
    path.unlink()
    with h5py.File(path, "w") as f:
        f["x"] = np.arange(3)
        f.attrs["schema"] = "someone.else"


def _attr(name: str, value: object) -> Callable[[Path], None]:
    def change(path: Path) -> None:
        with h5py.File(path, "r+") as f:
            f.attrs[name] = value
    return change


def _stored_recipe(**changes: object) -> Callable[[Path], None]:
    """Rewrite the stored recipe text (its hash attribute left as it was)."""
    def change(path: Path) -> None:
        with h5py.File(path, "r+") as f:
            recipe = json.loads(f.attrs["recipe"])
            for dotted, value in changes.items():
                section, key = dotted.split(".")
                recipe[section][key] = value
            f.attrs["recipe"] = json.dumps(recipe, sort_keys=True)
    return change


def _dataset(name: str, index: object, value: object) -> Callable[[Path], None]:
    def change(path: Path) -> None:
        with h5py.File(path, "r+") as f:
            f[name][index] = value
    return change


def _influence(path: Path) -> None:
    """Class influence of the case's store ({d}/runs.h5), written to `path`."""
    import warnings

    from dmtoolkit.estimate import compute_influence

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # 2 completed models leave some influences undefined
        compute_influence(path.parent / "runs.h5", path, device="cpu", holdout_frac=0.0)


def _folder_target(path: Path) -> None:
    """An image folder whose test split is empty (train/ has images, test/ none)."""
    _images(path / "train", ["a", "b"])
    (path / "test").mkdir()


INIT = ["init", "{d}/r.yaml", "{d}/out.h5"]
OK = _yaml(SMALL_RECIPE)

CASES = [
    # --- init: recipes ------------------------------------------------------------------------------
    Case("malformed-yaml", INIT, "malformed YAML at line 4, column 7", files={"r.yaml": "name: x\nsource:\n  dataset: glyphs\n   bad: indent\n"}),
    Case("yaml-not-a-mapping", INIT, "a recipe must be a YAML mapping", files={"r.yaml": "- a\n- b\n"}),
    Case("empty-recipe", INIT, "a recipe must be a YAML mapping of keys to values, got NoneType", files={"r.yaml": ""}),
    Case("unknown-top-key", INIT, "optimizer: unknown key", files={"r.yaml": _recipe(optimizer={"lr": 1})}),
    Case("unknown-nested-key", INIT, "subsets.alhpa: unknown key", files={"r.yaml": _recipe(**{"subsets.alhpa": 0.5})}),
    Case("models-wrong-type", INIT, "subsets.models: Input should be a valid integer",
         files={"r.yaml": _recipe(**{"subsets.models": "ten"})}),
    Case("lr-wrong-type", INIT, "training.lr: Input should be a valid number",
         files={"r.yaml": _recipe(**{"training.lr": "fast"})}),
    Case("section-wrong-type", INIT, "training: Input should be a valid dictionary",
         files={"r.yaml": _recipe(training=5)}),
    Case("alpha-zero", INIT, "subsets.alpha: Input should be greater than 0", files={"r.yaml": _recipe(**{"subsets.alpha": 0})}),
    Case("alpha-one", INIT, "subsets.alpha: Input should be less than 1", files={"r.yaml": _recipe(**{"subsets.alpha": 1.0})}),
    Case("alpha-negative", INIT, "subsets.alpha: Input should be greater than 0",
         files={"r.yaml": _recipe(**{"subsets.alpha": -0.5})}),
    Case("alpha-string", INIT, "subsets.alpha: Input should be a valid number", files={"r.yaml": _recipe(**{"subsets.alpha": "half"})}),
    Case("one-model-in-recipe", INIT, "subsets.models: Input should be greater than or equal to 2",
         files={"r.yaml": _recipe(**{"subsets.models": 1})}),
    Case("one-model-option", [*INIT, "--models", "1"], "Invalid value for '--models'", code=2, files={"r.yaml": OK}),
    Case("seed-not-an-integer", [*INIT, "--seed", "abc"], "Invalid value for '--seed'", code=2, files={"r.yaml": OK}),
    Case("unknown-subset-kind", INIT, "subsets.kind: Input should be 'class' or 'example'",
         files={"r.yaml": _recipe(**{"subsets.kind": "pixel"})}),
    Case("antithetic-odd-models", INIT, "antithetic needs an even number of models",
         files={"r.yaml": _recipe(**{"subsets.antithetic": True, "subsets.models": 7})}),
    Case("near-copies-exceed-leaks", INIT, "near_copies (3) cannot exceed leaks (1)",
         files={"r.yaml": _recipe(**{"planting.leaks": 1, "planting.near_copies": 3})}),
    Case("flip-fraction-one", INIT, "planting.flip_fraction: Input should be less than 1",
         files={"r.yaml": _recipe(**{"planting.flip_fraction": 1.0})}),
    Case("missing-name", INIT, "name: Field required", files={"r.yaml": _recipe(name=...)}),
    Case("empty-test-size", INIT, "target.test_size: Input should be greater than 0",
         files={"r.yaml": _recipe(**{"target.test_size": 0})}),
    # --- init: data ---------------------------------------------------------------------------------
    Case("unknown-source-dataset", INIT, "unknown dataset 'imagenet'",
         files={"r.yaml": _recipe(source={"dataset": "imagenet"})}),
    Case("dataset-argument-missing", INIT, "dataset 'imagefolder' needs an argument",
         files={"r.yaml": _recipe(source={"dataset": "imagefolder"})}),
    Case("imagefolder-missing", INIT, "does not exist or is not a folder",
         files={"r.yaml": _recipe(source={"dataset": "imagefolder:/nonexistent/images"})}),
    Case("empty-target-set", INIT, "has an empty test split",
         files={"tgt": _folder_target, "src": lambda p: _images(p, ["x", "y", "z"]),
                "r.yaml": "FOLDERS"}),
    Case("single-source-class", INIT, "subsets need at least 2",
         files={"tgt": lambda p: _images(p, ["a", "b"], 6), "src": lambda p: _images(p, ["only"], 6),
                "r.yaml": "FOLDERS", "planting": None}),
    Case("imagefolder-without-images", INIT, "no images under",
         files={"r.yaml": "FOLDERS", "src": lambda p: p.mkdir(), "tgt": lambda p: _images(p, ["a", "b"])}),
    Case("missing-fonts-and-cache", INIT, f"glyph fonts are missing; install them with `apt-get install -y {MISSING_FONT_PACKAGE}`",
         files={"r.yaml": OK}, missing_fonts=True),
    # --- init: paths --------------------------------------------------------------------------------
    Case("recipe-file-missing", ["init", "{d}/nope.yaml", "{d}/out.h5"], "recipe file not found"),
    Case("recipe-is-a-directory", ["init", "{d}", "{d}/out.h5"], "is a directory", code=2),
    Case("existing-output-without-force", ["init", "{d}/r.yaml", "{store}"], "already exists; pass --force",
         files={"r.yaml": OK}),
    Case("output-is-a-directory", ["init", "{d}/r.yaml", "{d}"], "is a directory", code=2, files={"r.yaml": OK}),
    # --- train ----------------------------------------------------------------------------------------
    Case("train-missing-store", ["train", "{d}/missing.h5"], "no such store; create one with `dmtoolkit init"),
    Case("train-store-in-missing-folder", ["train", "{d}/no/such/folder/x.h5"], "no such store"),
    Case("train-directory-as-store", ["train", "{d}"], "is a directory", code=2),
    Case("train-text-file", ["train", "{d}/notes.h5"], "not an HDF5 file", files={"notes.h5": "hello\n"}),
    Case("train-truncated-store", ["train", "{store}"], "HDF5 file cannot be opened", files={"store": _truncate}),
    Case("train-foreign-hdf5", ["train", "{store}"], "not a dmtoolkit run store (schema 'someone.else')",
         files={"store": _foreign}),
    Case("train-schema-version", ["train", "{store}"], "run store schema version 99, this dmtoolkit reads version 1",
         files={"store": _attr("schema_version", 99)}),
    Case("train-recipe-store-mismatch", ["train", "{store}"], "the stored recipe does not match the recipe hash",
         files={"store": _stored_recipe(**{"subsets.seed": 12345})}),
    Case("train-stored-recipe-invalid", ["train", "{store}"], "(stored recipe): subsets.alpha",
         files={"store": _stored_recipe(**{"subsets.alpha": 7})}),
    Case("train-workers-zero", ["train", "{store}", "--workers", "0"], "Invalid value for '--workers'", code=2),
    Case("train-limit-zero", ["train", "{store}", "--limit", "0"], "Invalid value for '--limit'", code=2),
    Case("train-cuda-without-gpu", ["train", "{store}", "--device", "cuda"],
         "--device cuda requested but no CUDA GPU is available"),
    Case("train-unknown-device", ["train", "{store}", "--device", "tpu"], "Invalid value for '--device'", code=2),
    Case("train-store-held-by-a-writer", ["train", "{store}"], "another writer holds the store (pid",
         files={"store": "LOCKED"}),
    # --- store info / validate --------------------------------------------------------------------------
    Case("info-missing-store", ["store", "info", "{d}/missing.h5", "--json"], "no such store"),
    Case("info-truncated-store", ["store", "info", "{store}"], "it may be corrupt", files={"store": _truncate}),
    Case("info-foreign-hdf5", ["store", "info", "{store}"], "not a dmtoolkit run store", files={"store": _foreign}),
    Case("validate-text-file", ["store", "validate", "{d}/notes.h5"], "not an HDF5 file", files={"notes.h5": "x"}),
    Case("validate-schema-version", ["store", "validate", "{store}"], "schema version 2, this dmtoolkit reads version 1",
         files={"store": _attr("schema_version", 2)}),
    Case("validate-nan-margins", ["store", "validate", "{store}"], "1 completed rows have non-finite margins (first: row 1)",
         files={"store": _dataset("margins", (1, 2), np.nan)}, multi_line=True),
    Case("validate-class-always-in", ["store", "validate", "{store}"], "differ from those re-derived from seed",
         files={"store": _dataset("masks", (slice(None), 0), True)}, multi_line=True),
    Case("validate-recipe-store-mismatch", ["store", "validate", "{store}"], "recipe_hash attribute does not match",
         files={"store": _stored_recipe(**{"subsets.seed": 12345})}, multi_line=True),
    # --- analyses and report ------------------------------------------------------------------------------
    Case("rank-text-file", ["rank", "{d}/notes.h5"], "not an HDF5 file", files={"notes.h5": "hello\n"}),
    Case("rank-missing-file", ["rank", "{d}/none.h5"], "no such estimate file; make one with `dmtoolkit influence`"),
    Case("rank-run-store-not-estimate", ["rank", "{store}"], "not a dmtoolkit estimate file (schema 'dmtoolkit.run')"),
    Case("rank-unknown-target-class", ["rank", "{d}/i.h5", "--target-class", "zz", "--png", "{d}/r.png"],
         "target class 'zz' has no target examples", files={"i.h5": _influence}),
    Case("rank-top-zero", ["rank", "{d}/i.h5", "--top", "0"], "Invalid value for '--top'", code=2,
         files={"i.h5": _influence}),
    Case("subpop-unknown-class", ["subpop", "{d}/i.h5", "--class", "zz"], "class 'zz' is not a source class",
         files={"i.h5": _influence}),
    Case("subpop-png-store-missing", ["subpop", "{d}/i.h5", "--class", "c0", "--png", "{d}/s.png", "--store",
                                      "{d}/none.h5"], "does not exist (moved?); pass --store", files={"i.h5": _influence}),
    Case("explain-target-not-covered", ["explain", "{d}/i.h5", "--target", "99"], "target 99 is not covered",
         files={"i.h5": _influence}),
    Case("leakage-class-level", ["leakage", "{d}/i.h5", "--png", "{d}/l.png"], "`leakage` needs example-level estimates",
         files={"i.h5": _influence}),
    Case("leakage-unknown-ranking", ["leakage", "{d}/i.h5", "--ranking", "pixels"], "Invalid value for '--ranking'",
         code=2, files={"i.h5": _influence}),
    Case("mislabels-class-level", ["mislabels", "{d}/i.h5"], "`mislabels` needs example-level estimates",
         files={"i.h5": _influence}),
    Case("counterfactual-output-exists", ["counterfactual", "{d}/r.yaml", "--influence", "{d}/i.h5", "-o", "{d}/cf.h5"],
         "cf.h5: already exists; pass --force", files={"r.yaml": OK, "i.h5": _influence, "cf.h5": "earlier result"}),
    Case("counterfactual-other-recipe", ["counterfactual", "{d}/r.yaml", "--influence", "{d}/i.h5", "-o", "{d}/cf.h5"],
         "its source classes differ from recipe 'small-test''s", files={"r.yaml": OK, "i.h5": _influence}),
    Case("counterfactual-example-recipe", ["counterfactual", "{d}/r.yaml", "--influence", "{d}/i.h5", "-o", "{d}/cf.h5"],
         "is example-level; counterfactual removes classes",
         files={"r.yaml": _recipe(**{"subsets.kind": "example"}), "i.h5": _influence}),
    Case("report-folder-without-results", ["report", "{d}/empty", "-o", "{d}/out"], "holds no dmtoolkit HDF5 files",
         files={"empty": lambda p: p.mkdir()}),
    # --- other commands ---------------------------------------------------------------------------------
    Case("data-prepare-missing-fonts", ["data", "prepare"], f"install them with `apt-get install -y {MISSING_FONT_PACKAGE}`",
         missing_fonts=True, progress=True),
    Case("demo-workers-zero", ["demo", "--workers", "0"], "Invalid value for '--workers'", code=2),
    Case("unknown-command", ["frobnicate"], "No such command 'frobnicate'", code=2),
]


@pytest.fixture(scope="module")
def valid_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A synthetic store, 2 of 4 rows completed."""
    margins = np.random.default_rng(1).normal(size=(4, 5)).astype(np.float32)
    return synthetic_store(tmp_path_factory.mktemp("valid") / "runs.h5", margins,
                           completed=np.array([1, 1, 0, 0], bool))


def _fingerprint(folder: Path) -> dict[str, tuple[bytes, int]]:
    return {str(p.relative_to(folder)): (p.read_bytes(), p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _setup(case: Case, folder: Path, valid_store: Path) -> Path:
    store = folder / "runs.h5"
    shutil.copy(valid_store, store)
    for name, content in case.files.items():
        if name == "planting":
            continue
        if name == "store":
            if content != "LOCKED":
                content(store)
        elif content == "FOLDERS":
            recipe = _recipe(source={"dataset": f"imagefolder:{folder / 'src'}"},
                             target={"dataset": f"imagefolder:{folder / 'tgt'}"})
            if "planting" in case.files:
                del recipe["planting"]
            (folder / name).write_text(_yaml(recipe))
        elif callable(content):
            content(folder / name)
        else:
            (folder / name).write_text(content if isinstance(content, str) else _yaml(content))
    return store


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(case: Case, tmp_path: Path, valid_store: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    if "no CUDA GPU" in case.message and torch.cuda.is_available():
        pytest.skip("expects a machine without a CUDA GPU")
    folder = tmp_path / "case"
    folder.mkdir()
    store = _setup(case, folder, valid_store)
    if case.missing_fonts:  # no data cache, and one font package not installed
        monkeypatch.setenv("DMTOOLKIT_CACHE", str(tmp_path / "empty-cache"))
        monkeypatch.setattr(glyphs, "FONT_PACKAGES",
                            {**glyphs.FONT_PACKAGES, MISSING_FONT_PACKAGE: "fonts/truetype/none/Missing.ttf"})
    before = _fingerprint(folder)
    args = [a.format(d=folder, store=store) for a in case.args]
    if case.files.get("store") == "LOCKED":
        with WriterLock(store):
            result = CliRunner().invoke(cli, args)
    else:
        result = CliRunner().invoke(cli, args)
    output = result.output.strip()
    print(f"{case.id}: exit {result.exit_code}: {output}")

    assert result.exit_code == case.code, output
    assert not isinstance(result.exception, Exception) or isinstance(result.exception, SystemExit), result.exception
    assert "Traceback" not in output
    assert case.message in output, output
    if case.code == 1:
        lines = output.splitlines()
        assert lines[-1].startswith("error: ") and case.message in (output if case.multi_line else lines[-1])
        if case.multi_line:
            assert all(line.startswith("problem: ") for line in lines[:-1]), output
        elif not case.progress:
            assert len(lines) == 1, output
    after = _fingerprint(folder)
    for name, (data, mtime) in before.items():
        assert after.get(name) == (data, mtime), f"{name} was changed or removed"
    new = set(after) - set(before)
    assert all(name.endswith(".lock") and not after[name][0] for name in new), f"new files: {new}"
    if case.missing_fonts:
        assert not (tmp_path / "empty-cache").exists() or not any((tmp_path / "empty-cache").iterdir())


def test_at_least_thirty_cases_with_distinct_messages() -> None:
    assert len(CASES) >= 30 and len({c.id for c in CASES}) == len(CASES)


def test_missing_font_detection_names_the_packages(monkeypatch: pytest.MonkeyPatch) -> None:
    """The detector itself: the packages installed here are found; a package without its file is named."""
    assert MISSING_FONT_PACKAGE not in glyphs._missing_packages()
    monkeypatch.setattr(glyphs, "FONT_PACKAGES", {"fonts-dejavu-core": glyphs.FONT_PACKAGES["fonts-dejavu-core"],
                                                  MISSING_FONT_PACKAGE: "fonts/none/Missing.ttf"})
    assert glyphs._missing_packages()[-1:] == [MISSING_FONT_PACKAGE]


def test_non_finite_margins_are_refused_and_the_row_stays_pending(tmp_path: Path, valid_store: Path) -> None:
    store = tmp_path / "s.h5"
    shutil.copy(valid_store, store)
    with RunStore(store, writable=True) as s:
        for bad in (np.nan, np.inf):
            margins = np.zeros(s.num_targets, np.float32)
            margins[1] = bad
            with pytest.raises(StoreError, match="row 2 has non-finite margins"):
                s.write_row(2, margins, seed=2, source_accuracy=0.5, target_accuracy=0.5, seconds=1.0)
        with pytest.raises(StoreError, match=r"row 3 has \(4,\) margins, expected \(5,\)"):
            s.write_row(3, np.zeros(4, np.float32), seed=3, source_accuracy=0.5, target_accuracy=0.5, seconds=1.0)
        assert not s.completed_mask()[2:].any() and np.isnan(s.file["margins"][2:]).all()
    with RunStore(store) as s, pytest.raises(StoreError, match="opened read-only"):
        s.write_row(2, np.zeros(s.num_targets, np.float32), seed=2, source_accuracy=0.5, target_accuracy=0.5, seconds=1.0)
