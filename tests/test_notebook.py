"""The notebook path: results print as the CLI's text, show a short repr and an HTML table, convert to a DataFrame."""

from __future__ import annotations

import dataclasses
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

P, T, M = 12, 120, 120


@pytest.fixture(scope="module")
def estimate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """An imported class-level store (120 models, 12 classes, 120 targets) and its difference-of-means estimate."""
    folder = tmp_path_factory.mktemp("notebook")
    rng = np.random.default_rng(0)
    masks = rng.random((M, P)) < 0.5
    effects = rng.normal(size=(P, T))
    margins = (masks @ effects + 0.5 * rng.normal(size=(M, T))).astype(np.float32)
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
    assert "\n" not in text and len(text) < 200, text
    assert text.startswith("<LdsResult: difference-of-means LDS on 30 held-out models") and f"({T} rows;" in text
    ranking = dm.rank_classes(influence, top=3)
    assert repr(ranking) == (f"<ClassRanking: mean influence over {T} target examples (all targets) ({P} rows; "
                             "print() for the text, .to_frame() for the table)>")


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
    import dmtoolkit.analyze.results as results
    import dmtoolkit.estimate.lds as lds
    import dmtoolkit.reliability as reliability
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
