"""`dmtoolkit report`: one self-contained HTML page from whatever run stores and estimates a folder holds.

Sections hold the analyses' typed results; the template reads their attributes (undefined ones are an
error, not an empty cell) and report.json holds their `to_json()`.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import h5py
import jinja2

from dmtoolkit.analyze.results import (
    ClassRanking,
    CounterfactualCurve,
    LeakageReport,
    LeakageScore,
    MislabelReport,
    MislabelScore,
)
from dmtoolkit.analyze.retrain import SCHEMA_NAME as COUNTERFACTUAL_SCHEMA
from dmtoolkit.errors import StoreError, UserError
from dmtoolkit.estimate.files import SCHEMA_NAME as ESTIMATE_SCHEMA
from dmtoolkit.paths import check_input_file
from dmtoolkit.store import SCHEMA_NAME as RUN_SCHEMA

LDS_KEYS = ("lds_mean", "lds_median", "heldout_models", "undefined_targets")

T = TypeVar("T")


def format_p(value: float | None) -> str:
    """A p- or q-value for a table: 3 significant digits, scientific below 0.001; "–" when there is none."""
    return "–" if value is None else f"{value:.2e}" if value < 1e-3 else f"{value:.3f}"


def format_interval(effect: Any) -> str:
    """An effect's interval for a table, `[-0.1234, +0.5678]`; "–" when it has none."""
    low, high = effect.low, effect.high
    return "–" if low is None or high is None else f"[{low:+.4f}, {high:+.4f}]"


def _data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _schema(path: Path) -> str | None:
    """The schema attribute of an HDF5 file (None for other files); a FIFO, device or empty .h5 is an error."""
    check_input_file(path, "HDF5 file", "move it out of the report's folder or recreate it", error=StoreError)
    try:
        if not h5py.is_hdf5(path):
            return None
        with h5py.File(path, "r", locking=False) as f:
            schema = f.attrs.get("schema")
            return str(schema) if schema is not None else None
    except OSError:
        return None


def scan(directory: Path) -> dict[str, list[Path]]:
    """HDF5 files under `directory` (recursively) grouped by what they are."""
    found: dict[str, list[Path]] = {"runs": [], "estimates": [], "counterfactuals": []}
    for path in sorted(directory.rglob("*.h5")):
        if path.name.startswith("."):
            continue
        schema = _schema(path)
        if schema == RUN_SCHEMA:
            found["runs"].append(path)
        elif schema == ESTIMATE_SCHEMA:
            found["estimates"].append(path)
        elif schema == COUNTERFACTUAL_SCHEMA:
            found["counterfactuals"].append(path)
    return found


@dataclass
class EstimateSection:
    """One estimate file on the page: what it is, the analyses that apply to it, notes on those that failed."""

    file: str
    estimator: str
    kind: str
    shape: tuple[int, int]
    store: str
    rank: ClassRanking | None = None
    leakage: LeakageReport | None = None
    mislabels: MislabelReport | None = None
    lds: dict[str, Any] | None = None
    notes: list[str] = field(default_factory=list)
    images: list[tuple[str, str]] = field(default_factory=list)  # (caption, data URI)

    def attempt(self, what: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T | None:
        """Run one analysis; a failure becomes a note in the report instead of stopping it."""
        try:
            return fn(*args, **kwargs)
        except UserError as error:
            self.notes.append(f"{what}: {error}")
        return None

    def figure(self, caption: str, png: bytes) -> None:
        self.images.append((caption, _data_uri(png)))

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {"file": self.file, "estimator": self.estimator, "kind": self.kind,
                                "shape": list(self.shape), "store": self.store}
        if self.notes:
            data["notes"] = list(self.notes)
        for name, result in (("rank", self.rank), ("leakage", self.leakage), ("mislabels", self.mislabels)):
            if result is not None:
                data[name] = result.to_json()
        if self.lds is not None:
            data["lds"] = self.lds
        return data


@dataclass(frozen=True)
class CounterfactualSection:
    """One counterfactual file on the page: its curve and figure."""

    curve: CounterfactualCurve
    image: str

    @property
    def file(self) -> str:
        return Path(self.curve.file).name

    def to_json(self) -> dict[str, Any]:
        return {"file": self.file, "order": self.curve.order, "repeats": self.curve.repeats, "rows": self.curve.rows()}


@dataclass(frozen=True)
class DetectionRow:
    """A detector scored against planted truth; fields one of the two tasks lacks are None."""

    file: str
    task: str
    score: LeakageScore | MislabelScore

    @property
    def k(self) -> int:
        return self.score.k

    @property
    def precision_at_k(self) -> float | None:
        return self.score.precision_at_k

    @property
    def recall_at_k(self) -> float | None:
        return self.score.recall_at_k

    @property
    def auc(self) -> float | None:
        return self.score.auc if isinstance(self.score, MislabelScore) else None

    @property
    def decoys_flagged(self) -> int | None:
        return self.score.decoys_flagged if isinstance(self.score, LeakageScore) else None

    def to_json(self) -> dict[str, Any]:
        return {"file": self.file, "task": self.task, **self.score.to_json()}


def _estimate_section(path: Path, runs: list[Path], top: int, subpops: int) -> EstimateSection:
    from dmtoolkit.analyze import detect_leakage, detect_mislabels, load_estimate, rank_classes, subpopulation
    from dmtoolkit.estimate.lds import evaluate
    from dmtoolkit.report.figures import lds_figure, leakage_figure, rank_figure, subpop_figure

    est = load_estimate(path)
    section = EstimateSection(file=path.name, estimator=est.estimator, kind=est.kind,
                              shape=tuple(est.matrix.shape), store=str(est.store_path))
    store = est.store_path if est.store_path is not None and est.store_path.exists() else None
    if store is None:  # the store may have moved together with the folder: match by name
        store = next((r for r in runs if est.store_path is not None and r.name == est.store_path.name), None)
    if est.kind == "class":
        # the store the estimate names is found by rank itself (no intervals, with a note, if it changed since)
        section.rank = section.attempt("rank", rank_classes, path, top=top,
                                       store=None if store == est.store_path else store)
        if section.rank:
            section.figure("Source classes by mean influence", rank_figure(section.rank))
            if store is not None:
                for entry in section.rank.top[:subpops]:
                    sub = section.attempt("subpop", subpopulation, path, entry.name, n=8, store=store, with_images=True)
                    if sub:
                        section.figure(f"Subpopulation of {entry.name}", subpop_figure(sub))
    if est.kind == "example" and store is not None:
        section.leakage = section.attempt("leakage", detect_leakage, path, top=top, store=store)
        if section.leakage:
            section.figure("Leakage candidates, source | target", leakage_figure(section.leakage))
        section.mislabels = section.attempt("mislabels", detect_mislabels, path, top=top, store=store)
    if store is not None:
        lds = section.attempt("LDS", evaluate, store, path)
        if lds:
            section.lds = {k: getattr(lds, k) for k in LDS_KEYS}
            section.figure("LDS over target examples", lds_figure(
                lds.histogram_edges, lds.histogram_counts, lds.heldout_models))
    else:
        section.notes.append(f"run store {est.store_path} not found: no images, leakage or LDS")
    return section


def _counterfactual_section(path: Path) -> CounterfactualSection:
    from dmtoolkit.analyze import load_counterfactual
    from dmtoolkit.report.figures import counterfactual_figure

    curve = load_counterfactual(path)
    return CounterfactualSection(curve=curve, image=_data_uri(counterfactual_figure(curve)))


def _detection(estimates: list[EstimateSection]) -> list[DetectionRow]:
    rows = []
    for e in estimates:
        if e.leakage is not None and e.leakage.planted is not None:
            rows.append(DetectionRow(e.file, "leakage", e.leakage.planted))
        if e.mislabels is not None and e.mislabels.planted is not None:
            rows.append(DetectionRow(e.file, "mislabels", e.mislabels.planted))
    return rows


def build_report(directory: str | Path, out_dir: str | Path, *, top: int = 10, subpops: int = 3) -> Path:
    """Write OUT_DIR/index.html (images inline) and OUT_DIR/report.json; returns the HTML path."""
    from dmtoolkit.store_checks import store_summary

    directory, out_dir = Path(directory), Path(out_dir)
    if not directory.is_dir():
        raise UserError(f"{directory}: not a folder; give the folder holding run stores and estimates")
    found = scan(directory)
    if not any(found.values()):
        raise UserError(f"{directory}: holds no dmtoolkit HDF5 files (run stores, influence, datamodels)")
    runs = [store_summary(p) for p in found["runs"]]
    estimates = [_estimate_section(p, found["runs"], top, subpops) for p in found["estimates"]]
    counterfactuals = [_counterfactual_section(p) for p in found["counterfactuals"]]
    combined = None
    if len(counterfactuals) > 1:  # paper Fig. 2a: the orders side by side
        from dmtoolkit.report.figures import counterfactual_figure

        combined = _data_uri(counterfactual_figure([c.curve for c in counterfactuals]))
    detection = _detection(estimates)
    env = jinja2.Environment(loader=jinja2.PackageLoader("dmtoolkit.report", "templates"),
                             autoescape=jinja2.select_autoescape(["html", "j2"]), undefined=jinja2.StrictUndefined)
    env.filters["num"] = lambda v, d=3: "–" if v is None else f"{v:.{d}f}"
    env.filters["pval"] = format_p
    env.filters["interval"] = format_interval
    html = env.get_template("report.html.j2").render(
        directory=str(directory), created=time.strftime("%Y-%m-%d %H:%M:%S"), runs=runs, estimates=estimates,
        counterfactuals=counterfactuals, combined_counterfactual=combined, detection=detection, top=top)
    out_dir.mkdir(parents=True, exist_ok=True)
    page = out_dir / "index.html"
    page.write_text(html, encoding="utf-8")
    (out_dir / "report.json").write_text(json.dumps(
        {"runs": runs, "estimates": [e.to_json() for e in estimates],
         "counterfactuals": [c.to_json() for c in counterfactuals],
         "detection": [d.to_json() for d in detection]}, indent=2, default=str))
    return page
