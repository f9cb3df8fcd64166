"""`dmtoolkit report`: one self-contained HTML page from whatever run stores and estimates a folder holds.

The page answers first (`dmtoolkit.report.summary`: which classes help and hurt, what removing them would
do, leakage, mislabels, how far to trust it), then gives the class level, the example level, trust
(LDS, reliability), the runs and, once each, the notes. Sections hold the analyses' typed results; the
template reads their attributes (undefined ones are an error, not an empty cell) and report.json holds
their `to_json()`.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import jinja2

from dmtoolkit.analyze.overview import EstimateAnalyses, StoreAnalyses, analyse_estimate, analyse_store
from dmtoolkit.analyze.results import (
    CounterfactualCurve,
    LeakageScore,
    MislabelScore,
)
from dmtoolkit.analyze.retrain import SCHEMA_NAME as COUNTERFACTUAL_SCHEMA
from dmtoolkit.atomic import check_output, write_text_atomic
from dmtoolkit.errors import StoreError, UserError
from dmtoolkit.estimate.files import SCHEMA_NAME as ESTIMATE_SCHEMA
from dmtoolkit.paths import check_input_file
from dmtoolkit.report.summary import Answer, StoreTrust
from dmtoolkit.store import SCHEMA_NAME as RUN_SCHEMA


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
    check_input_file(path, "an HDF5 file of the report's folder: move it out or recreate it", error=StoreError)
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
        if path.name.startswith("."):  # temporaries (a FIFO, device or empty .h5 is refused by `_schema`)
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
    """One estimate file on the page: its analyses (`analyse_estimate`), their figures and note numbers; the
    analyses' fields (rank, recommend, leakage, mislabels, notes, kind, ...) are read through it."""

    analyses: EstimateAnalyses
    images: list[tuple[str, str]] = field(default_factory=list)  # (caption, data URI)
    note_refs: list[int] = field(default_factory=list)  # numbers of this section's notes on the page
    lds: dict[str, Any] | None = None  # the LDS figures shown (`EstimateAnalyses.lds_summary`)

    def __post_init__(self) -> None:
        self.lds = self.analyses.lds_summary()

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") or name == "analyses":
            raise AttributeError(name)
        return getattr(self.analyses, name)

    @property
    def file(self) -> str:
        return self.analyses.file.name

    def figure(self, caption: str, png: bytes) -> None:
        self.images.append((caption, _data_uri(png)))

    def to_json(self) -> dict[str, Any]:
        return {**self.analyses.to_json(), "file": self.file}


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
    """The analyses of one estimate (computed by `analyse_estimate`, its store matched among `runs` when it moved
    with the folder) and their figures."""
    from dmtoolkit.report.figures import estimate_figures

    section = EstimateSection(analyse_estimate(path, top=top, subpops=subpops, stores=runs))
    for caption, png in estimate_figures(section.analyses):
        section.figure(caption, png)
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


class Notes:
    """Notes said once: each distinct text gets one number, and the files it applies to are listed beside it."""

    def __init__(self) -> None:
        self.items: dict[str, tuple[int, list[str]]] = {}

    def add(self, text: str, where: str | None = None) -> int:
        number, files = self.items.setdefault(text, (len(self.items) + 1, []))
        if where is not None and where not in files:
            files.append(where)
        return number

    def listed(self) -> list[dict[str, Any]]:
        return [{"number": n, "text": text, "files": files} for text, (n, files) in self.items.items()]


def _trust(store: StoreAnalyses, notes: Notes) -> StoreTrust:
    """What the trust answer reads about a run store: the split-half of its ranking (of classes, or of examples
    at the example level), its full-store value and the models needed; without them, the note why."""
    name, reliability = store.path.name, store.reliability
    if reliability is None:
        notes.add(store.note or "reliability: not computed", name)
        return StoreTrust(name, store.summary.kind, store.summary.models.completed)
    ranking = reliability.ranking
    return StoreTrust(name, reliability.kind, reliability.models, ranking.split.mean, ranking.full,
                      dict(ranking.needed))


def _primary(sections: list[EstimateSection], attr: str) -> EstimateSection | None:
    """The section whose `attr` result the summary answers from: of those with standard errors, the one whose
    errors have the most degrees of freedom (the strongest evidence: an 8-network gradient estimate before a
    4-network one; the first on ties), else the first that has one at all."""
    having = [e for e in sections if getattr(e, attr) is not None]
    with_errors = [e for e in having if e.has_errors]
    if with_errors:
        return max(with_errors, key=lambda e: e.error_dof)
    return having[0] if having else None


def _summary(estimates: list[EstimateSection], counterfactuals: list[CounterfactualSection],
             stores: list[StoreTrust], notes: Notes) -> list[Answer]:
    from dmtoolkit.report import summary as s

    ranked, recommended = _primary(estimates, "rank"), _primary(estimates, "recommend")
    leaked, mislabelled = _primary(estimates, "leakage"), _primary(estimates, "mislabels")

    def noter(section: EstimateSection | None) -> Callable[[str], int]:
        return lambda text: notes.add(text, section.file if section else None)

    trust = [s.EstimateTrust(e.file, e.kind, e.estimator, e.store_name, e.lds["lds_mean"] if e.lds else None,
                             tuple(e.lds["lds_interval"]) if e.lds and e.lds["lds_interval"] else None,
                             e.lds["heldout_models"] if e.lds else 0, evaluated=e.lds is not None,
                             verdict=e.lds.get("verdict", "") if e.lds else "")
             for e in estimates]
    return [
        s.classes_answer(ranked.rank if ranked else None, ranked.file if ranked else None, noter(ranked)),
        s.removal_answer(recommended.recommend if recommended else None, [c.curve for c in counterfactuals],
                         recommended.file if recommended else None, noter(recommended)),
        s.leakage_answer(leaked.leakage if leaked else None, leaked.file if leaked else None, noter(leaked)),
        s.mislabel_answer(mislabelled.mislabels if mislabelled else None,
                          mislabelled.file if mislabelled else None, noter(mislabelled)),
        s.trust_answer(stores, trust),
    ]


def _sort_key(e: EstimateSection) -> tuple[int, int, str]:
    """Class level first; within a level, estimates with standard errors (the ones that can flag) first."""
    return (0 if e.kind == "class" else 1, 0 if e.has_errors else 1, e.file)


def build_report(directory: str | Path, out_dir: str | Path, *, top: int = 10, subpops: int = 3,
                 force: bool = False) -> Path:
    """Write OUT_DIR/index.html (images inline) and OUT_DIR/report.json; returns the HTML path.

    Both go through the output guard: existing ones are replaced only with `force`, never an input file."""
    from dmtoolkit.report.summary import negative_heading

    directory, out_dir = Path(directory), Path(out_dir)
    if not directory.is_dir():
        raise UserError(f"{directory}: not a folder; give the folder holding run stores and estimates")
    found = scan(directory)
    if not any(found.values()):
        raise UserError(f"{directory}: holds no dmtoolkit HDF5 files (run stores, influence, datamodels)")
    inputs = [p for paths in found.values() for p in paths]
    page, page_json = Path(out_dir) / "index.html", Path(out_dir) / "report.json"
    for out in (page, page_json):
        check_output(out, force=force, inputs=inputs)
    notes = Notes()
    analysed = [analyse_store(p) for p in found["runs"]]
    runs = [a.summary for a in analysed]
    stores = [_trust(a, notes) for a in analysed]
    estimates = sorted((_estimate_section(p, found["runs"], top, subpops) for p in found["estimates"]), key=_sort_key)
    counterfactuals = [_counterfactual_section(p) for p in found["counterfactuals"]]
    answers = _summary(estimates, counterfactuals, stores, notes)
    for e in estimates:  # every note once, in one list; sections point to it
        for text in e.notes:
            e.note_refs.append(notes.add(text, e.file))
        if e.rank is not None:
            e.note_refs.append(notes.add(e.rank.interval_note, e.file))
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
    env.globals["negative_heading"] = negative_heading
    html = env.get_template("report.html.j2").render(
        directory=str(directory), created=time.strftime("%Y-%m-%d %H:%M:%S"), runs=runs, estimates=estimates,
        class_estimates=[e for e in estimates if e.kind == "class"],
        example_estimates=[e for e in estimates if e.kind != "class"], stores=stores, answers=answers,
        counterfactuals=counterfactuals, combined_counterfactual=combined, detection=detection, top=top,
        notes=notes.listed())
    write_text_atomic(page, html, force=force, inputs=inputs)
    write_text_atomic(page_json, json.dumps(
        {"summary": [a.to_json() for a in answers], "runs": [r.to_json() for r in runs],
         "estimates": [e.to_json() for e in estimates],
         "reliability": [s.to_json() for s in stores],
         "counterfactuals": [c.to_json() for c in counterfactuals],
         "detection": [d.to_json() for d in detection], "notes": notes.listed()}, indent=2, default=str),
        force=force, inputs=inputs)
    return page
