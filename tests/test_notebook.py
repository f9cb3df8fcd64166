"""The notebook path: results print as the CLI's text, show a short repr and an HTML table, convert to a DataFrame."""

from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import dmtoolkit as dm
from dmtoolkit.cli import cli
from dmtoolkit.display import Displayable, MissingExtra

from .conftest import ROOT
from .synthetic import linear_margins

P, T, M = 12, 120, 120


@pytest.fixture(scope="module")
def estimate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """An imported class-level store (120 models, 12 classes, 120 targets) and its difference-of-means estimate."""
    folder = tmp_path_factory.mktemp("notebook")
    rng = np.random.default_rng(0)
    masks = rng.random((M, P)) < 0.5
    effects = rng.normal(size=(P, T))
    margins = linear_margins(masks, effects, rng, noise=0.5)
    store = dm.import_arrays(folder / "runs.h5", masks, margins, unit_names=[f"class-{k}" for k in range(P)],
                             target_labels=np.arange(T) % 3, kind="class")
    dm.fit_store(store, folder / "influence.h5", dm.make_estimator("difference-of-means"), test_fraction=0.25)
    return Path(store), folder / "influence.h5"


def cli_text(*args: object) -> str:
    result = CliRunner().invoke(cli, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result.stdout


def test_str_is_what_the_cli_prints_for_rank_lds_and_reliability(estimate: tuple[Path, Path]) -> None:
    store, influence = estimate
    assert str(dm.rank_classes(influence, top=4)) + "\n" == cli_text("rank", influence, "--top", 4)
    assert str(dm.evaluate(store, influence)) + "\n" == cli_text("evaluate", store, "--estimate", influence)
    assert str(dm.reliability_report(store)) + "\n" == cli_text("reliability", store)
    explanation = dm.explain_target(influence, 3, top=2)
    assert str(explanation) + "\n" == cli_text("explain", influence, "--target", 3, "--top", 2)


def test_repr_is_one_short_line_not_the_per_target_scores(estimate: tuple[Path, Path]) -> None:
    store, influence = estimate
    lds = dm.evaluate(store, influence)
    assert len(lds.lds_per_target) == T
    text = repr(lds)
    assert "\n" not in text and len(text) < 250, text
    assert text.startswith(f"<LdsResult: {lds.verdict}") and f"; {T} rows:" in text  # the CLI's first line
    ranking = dm.rank_classes(influence, top=3)
    assert repr(ranking) == (f"<ClassRanking: mean influence over {T} target examples (all targets); {P} rows: "
                             "print() for the text, .to_frame() for the table>")


def test_repr_html_is_a_table_of_the_result(estimate: tuple[Path, Path]) -> None:
    store, influence = estimate
    page = dm.rank_classes(influence, top=3)._repr_html_()
    assert page.count("<table>") == 1 and page.count("<tr>") == P + 1  # header and one row per class
    assert "<th>influence</th>" in page and "class-" in page
    lds_page = dm.evaluate(store, influence)._repr_html_()
    assert "<table>" in lds_page and f"… and {T - 20} more rows" in lds_page  # long tables are cut, and say so


def test_to_frame_has_the_result_table(estimate: tuple[Path, Path]) -> None:
    pytest.importorskip("pandas")
    store, influence = estimate
    ranking = dm.rank_classes(influence, top=3)
    frame = ranking.to_frame()
    assert list(frame.columns) == ["rank", "index", "name", "influence", "low", "high"]
    assert list(frame["name"]) == [e.name for e in ranking.overall] and list(frame["rank"]) == list(range(1, P + 1))
    assert np.allclose(frame["influence"], [e.influence for e in ranking.overall])
    lds = dm.evaluate(store, influence).to_frame()
    assert list(lds.columns) == ["target", "lds"] and len(lds) == T
    assert np.isclose(lds["lds"].mean(), dm.evaluate(store, influence).lds_mean)
    rel = dm.reliability_report(store).to_frame()
    assert list(rel["answer"]) == ["ranking", "matrix"] and rel["full"].notna().all()


def test_to_frame_without_pandas_names_the_extra(estimate: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pandas", None)  # as if pandas were not installed
    with pytest.raises(MissingExtra, match=r"^to_frame\(\) needs pandas: pip install 'dmtoolkit\[notebook\]'$"):
        dm.rank_classes(estimate[1], top=3).to_frame()
    assert issubclass(MissingExtra, dm.UserError)


def test_every_displayable_result_has_a_formatter_a_table_and_the_short_repr() -> None:
    """Every result type the CLI prints inherits Displayable, has a registered formatter and keeps its repr."""
    import dmtoolkit.analyze.reliability as reliability
    import dmtoolkit.analyze.results as results
    import dmtoolkit.estimate.lds as lds
    import dmtoolkit.report.text  # noqa: F401 (registers the formatters; a result's str() does this itself)
    from dmtoolkit.display import _TEXT, type_name

    kinds = [cls for module in (results, lds, reliability) for cls in vars(module).values()
             if isinstance(cls, type) and issubclass(cls, Displayable) and cls is not Displayable]
    assert {c.__name__ for c in kinds} >= {"ClassRanking", "Subpopulation", "Explanation", "CounterfactualResult",
                                           "LeakageReport", "MislabelReport", "Recommendation", "DemoSummary",
                                           "LdsResult", "ReliabilityReport"}
    for cls in kinds:
        assert type_name(cls) in _TEXT, f"{cls.__name__} has no text formatter"
        assert cls.__repr__ is Displayable.__repr__, f"{cls.__name__}: declare @dataclass(repr=False)"
        assert cls._table is not Displayable._table and dataclasses.is_dataclass(cls)


def test_results_stay_cheap_to_import() -> None:
    code = ("import sys, dmtoolkit.display, dmtoolkit.analyze.results, dmtoolkit.report.text; "
            "print(sorted(m for m in ('torch', 'numpy', 'pandas') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


# init says what it did; dm.train; the trainer contract --------------------------------------------------
TRAINERS_DOC = ROOT / "docs" / "trainers.md"


def image_folders(root: Path) -> tuple[Path, Path]:
    """A source folder without train/test (3 classes x 5 grayscale 8x8 PNGs, one of them RGB, one 10x10) and a
    target folder with train/ and test/ (2 classes, 4 train and 3 test grayscale 8x8 images each)."""
    from PIL import Image

    rng = np.random.default_rng(0)
    source, target = root / "source", root / "target"
    for k, name in enumerate("abc"):
        (source / name).mkdir(parents=True)
        for i in range(5):
            size = 10 if (k, i) == (1, 0) else 8
            pixels = rng.integers(0, 256, (size, size), dtype=np.uint8)
            image = Image.fromarray(pixels)
            (image.convert("RGB") if (k, i) == (0, 0) else image).save(source / name / f"{i}.png")
    for split, count in (("train", 4), ("test", 3)):
        for name in "xy":
            (target / split / name).mkdir(parents=True)
            for i in range(count):
                Image.fromarray(rng.integers(0, 256, (8, 8), dtype=np.uint8)).save(target / split / name / f"{i}.png")
    return source, target


@pytest.fixture()
def folder_project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A project with two image folders, the trainer of docs/trainers.md as mytrainer.py, and its recipe."""
    import yaml

    source, target = image_folders(tmp_path)
    blocks = re.findall(r"^```python\n(.*?)^```", TRAINERS_DOC.read_text(), flags=re.S | re.M)
    code = [b for b in blocks if "\ndef train(job" in b]  # the trainer (the page's other blocks are its hooks)
    assert len(code) == 1
    (tmp_path / "mytrainer.py").write_text(code[0])
    recipe = {"name": "folders", "trainer": {"function": "mytrainer:train", "randomness": "per-model",
                                             "options": {"steps": 5}},
              "source": {"dataset": f"imagefolder:{source}"}, "target": {"dataset": f"imagefolder:{target}"},
              "subsets": {"kind": "class", "alpha": 0.5, "models": 6, "seed": 1}}
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("mytrainer", None)
    yield tmp_path
    sys.modules.pop("mytrainer", None)


def test_init_prints_the_data_and_warns_for_every_conversion(folder_project: Path) -> None:
    result = CliRunner().invoke(cli, ["init", "recipe.yaml", "runs.h5"])
    assert result.exit_code == 0, result.output
    source = folder_project / "source"
    assert result.stdout.splitlines()[:2] == [
        "source: 12 training images (the pool the subsets are drawn from) + 3 test images, 3 classes, 8x8 pixels, "
        "3 channels (RGB)",
        "target: 8 train + 6 test images, 2 classes, 8x8 pixels, 1 channel (grayscale)"]
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning: source")]
    assert warnings == [
        "warning: source: 1 image of 15 resized (bilinear) to the most common size 8x8, from 10x10 (1)",
        "warning: source: 14 grayscale images of 15 converted to RGB (3 channels) because 1 image is in colour: "
        "the whole folder is read as 3 channels",
        f"warning: source: 20% of {source} (3 of 15 images, the same share of every class, seed 0) kept as its "
        "test split: the folder has no train/ and test/ subfolders; they are never trained on (they only measure "
        "source accuracy)"]
    assert "warning: target" not in result.stderr  # its own train/ and test/, one size, all grayscale
    assert (folder_project / "runs.h5").exists()


def test_the_builtin_trainer_warns_that_it_converts_the_targets_channels(tmp_path: Path) -> None:
    from dmtoolkit.recipe import parse_recipe_dict

    source, target = image_folders(tmp_path)
    recipe = parse_recipe_dict({"name": "builtin", "source": {"dataset": f"imagefolder:{source}"},
                                "target": {"dataset": f"imagefolder:{target}"},
                                "subsets": {"kind": "class", "alpha": 0.5, "models": 4}})
    notes = dm.build_run_data(recipe).notes
    assert len(notes) == 4 and notes[-1] == ("target: its 1-channel images are repeated to 3 channels (RGB) when the "
                                             "built-in trainer transfers, because the source has 3")


def test_trainer_jobs_hand_out_writable_arrays_that_torch_takes_without_a_warning(folder_project: Path) -> None:
    from dmtoolkit.train.job import RunContext

    assert CliRunner().invoke(cli, ["init", "recipe.yaml", "runs.h5"]).exit_code == 0
    # torch warns about a read-only array once per process: check in a fresh one, with warnings as errors
    code = ("import warnings, torch; from dmtoolkit.train.job import RunContext; "
            "job = RunContext.from_store('runs.h5').job(0); warnings.simplefilter('error'); "
            "[torch.as_tensor(a) for a in (job.mask, job.target_labels, job.units, job.source_indices, "
            "job.data.source_pool.images, job.data.target_test.labels)]; print('no warning')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert out.stdout.strip() == "no warning", out.stderr[-2000:]
    job = RunContext.from_store("runs.h5").job(0)
    arrays = (job.mask, job.target_labels, job.units, job.source_indices, job.data.source_pool.images,
              job.data.target_test.labels)
    assert all(a.flags.writeable for a in arrays)
    assert job.data.source_pool.images.dtype == np.uint8 and job.data.source_pool.images.shape[1:] == (8, 8, 3)
    assert job.target_labels.dtype == np.int64
    job.target_labels[0] = 99  # the job's own copy: the next job is unaffected
    assert RunContext.from_store("runs.h5").job(1).target_labels[0] != 99


def test_writable_data_copies_read_only_splits_once() -> None:
    from dmtoolkit.train.contract import writable_data

    from .synthetic import synthetic_data

    data = synthetic_data(3, 4)
    data.target_test.images.setflags(write=False)  # as Ray's object store hands them out
    fixed = writable_data(data)
    assert fixed.target_test.images.flags.writeable and np.array_equal(fixed.target_test.images,
                                                                       data.target_test.images)
    assert fixed.source_pool is data.source_pool  # writable splits are not copied


def test_dm_train_writes_what_the_cli_writes_and_resumes(folder_project: Path) -> None:
    import shutil

    from dmtoolkit.store import RunStore

    assert CliRunner().invoke(cli, ["init", "recipe.yaml", "cli.h5"]).exit_code == 0
    shutil.copy("cli.h5", "api.h5")
    result = CliRunner().invoke(cli, ["train", "cli.h5", "--workers", "1", "--quiet"])
    assert result.exit_code == 0, result.output
    first = dm.train("api.h5", workers=1, limit=2, progress=False)
    assert (first.written, first.already_done, first.remaining) == (2, 0, 4)
    rest = dm.train("api.h5", workers=1, progress=False)
    assert (rest.written, rest.already_done, rest.remaining) == (4, 2, 0)
    assert callable(dm.train) and dm.train.contract.Job is not None  # still the function beside the subpackage
    with RunStore("cli.h5") as a, RunStore("api.h5") as b:
        assert len(a.pending_rows()) == len(b.pending_rows()) == 0
        assert np.array_equal(a.margins[:], b.margins[:])
        assert np.array_equal(a.column("seed"), b.column("seed"))
        assert len(set(a.column("seed").tolist())) == 6  # per-model seeds from the recipe, not chosen by hand


def test_dm_train_refuses_bad_arguments_in_one_line(folder_project: Path) -> None:
    with pytest.raises(dm.UserError, match="^workers must be a whole number >= 1, got 0$"):
        dm.train("runs.h5", workers=0)
    with pytest.raises(dm.UserError, match="^unknown executor 'slurm'; use one of: local, ray$"):
        dm.train("runs.h5", executor="slurm")
    with pytest.raises(dm.UserError, match="no such store"):
        dm.train("runs.h5", workers=1, progress=False)


def test_dm_train_refuses_bad_settings_in_one_line(tmp_path: Path) -> None:
    from dmtoolkit.errors import ParameterError

    for settings, message in (({"timeout": 0}, "timeout must be a number of seconds > 0"),
                              ({"address": "auto"}, "address needs executor='ray'"),
                              ({"workers": 0}, "workers must be a whole number >= 1")):
        with pytest.raises(ParameterError, match=message):
            dm.train(tmp_path / "never-opened.h5", **settings)
