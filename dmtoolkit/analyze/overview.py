"""Every analysis that applies to one estimate, or to one run store, computed in one place: what
`dmtoolkit report` shows of it.

`analyse_estimate` opens the estimate once (`OpenedEstimate`: its run store opened and hash-checked once for
all of them), runs each analysis its level allows with the defaults the CLI commands use (`top` aside, the
report's rows per table), and returns a typed `EstimateAnalyses`; an analysis that fails becomes a note saying
why instead of stopping the others. `analyse_store` gives a run store's summary (`dmtoolkit store info`) and
reliability (`dmtoolkit reliability`). The report only renders them.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from dmtoolkit.analyze.estimates import OpenedEstimate, load_estimate
from dmtoolkit.analyze.options import RANK_TOP
from dmtoolkit.display import JsonResult, json_field
from dmtoolkit.errors import UserError

if TYPE_CHECKING:
    from dmtoolkit.analyze.reliability import StoreReliability
    from dmtoolkit.analyze.results import (
        ClassRanking,
        LeakageReport,
        MislabelReport,
        Recommendation,
        Subpopulation,
    )
    from dmtoolkit.estimate.files import Estimate
    from dmtoolkit.estimate.lds import LdsResult
    from dmtoolkit.store_checks import StoreSummary

LDS_KEYS = ("lds_mean", "lds_median", "heldout_models", "undefined_targets", "lds_interval", "heldout_units", "verdict")
"""The LDS figures the report keeps of an `LdsResult` (its per-target values stay out of report.json)."""
OVERVIEW_SUBPOPS = 3
"""Classes (the most positive first) whose subpopulation the report shows."""
OVERVIEW_SUBPOP_SIZE = 8
"""Target examples in each of those subpopulations (one row of images)."""

T = TypeVar("T")


def lds_figures(lds: LdsResult) -> dict[str, Any]:
    """The LDS figures the report keeps of an `LdsResult` (`LDS_KEYS`)."""
    return {k: getattr(lds, k) for k in LDS_KEYS}


@dataclass(frozen=True)
class EstimateAnalyses(JsonResult):
    """One estimate file and the results of every analysis that applies to it (None: not applicable, or failed:
    `notes` says which and why, as "analysis: message"). The JSON leaves out what is None or empty, the
    subpopulations (figures only) and the LDS per target (`lds_figures`)."""

    file: Path
    estimator: str
    kind: str
    shape: tuple[int, int]
    store: str  # the run store the estimate records
    store_name: str = json_field(None)  # file name of the run store read (the recorded one, or one that moved)
    has_errors: bool = json_field(None)  # the estimate carries standard errors (its analyses give intervals, flag)
    rank: ClassRanking | None = json_field(omit="none", default=None)
    recommend: Recommendation | None = json_field(omit="none", default=None)
    subpopulations: tuple[Subpopulation, ...] = json_field(None, default=())
    leakage: LeakageReport | None = json_field(omit="none", default=None)
    mislabels: MislabelReport | None = json_field(omit="none", default=None)
    lds: LdsResult | None = json_field(omit="none", convert=lds_figures, default=None)
    notes: tuple[str, ...] = json_field(omit="empty", default=())
    error_dof: float = json_field(None, default=math.inf)  # degrees of freedom of its errors (inf: normal; 0: none)

    json_order = ("file", "estimator", "kind", "shape", "store", "notes")

    def lds_summary(self) -> dict[str, Any] | None:
        """The LDS figures the report shows (`LDS_KEYS`), or None without an LDS."""
        return None if self.lds is None else lds_figures(self.lds)


def moved_store(est: Estimate, stores: Sequence[Path]) -> Path | None:
    """The run store to read instead of the one `est` records: None when that one is there (or none of `stores`
    has its file name), else the one of `stores` with its name (it moved together with its folder)."""
    if est.store_path is None or est.store_path.exists():
        return None
    return next((path for path in stores if path.name == est.store_path.name), None)


def analyse_estimate(source: str | Path | OpenedEstimate, *, top: int = RANK_TOP, subpops: int = OVERVIEW_SUBPOPS,
                     subpop_size: int = OVERVIEW_SUBPOP_SIZE, stores: Sequence[Path] = ()) -> EstimateAnalyses:
    """Every analysis of one estimate: class level, rank (`top` each way), recommend and the subpopulations of
    the `subpops` most positive classes; example level, leakage and mislabels (`top` listed); both, LDS. Those
    that need the run store run only when it is there (a path's store: the recorded one, else one of `stores`
    with its name). `source`: an estimate file, or an `OpenedEstimate` (its store chosen when it was opened).
    """
    if isinstance(source, OpenedEstimate):
        return _analyse(source, top, subpops, subpop_size)
    est = load_estimate(source)
    with OpenedEstimate(est, moved_store(est, stores)) as opened:
        return _analyse(opened, top, subpops, subpop_size)


def _analyse(opened: OpenedEstimate, top: int, subpops: int, subpop_size: int) -> EstimateAnalyses:
    from dmtoolkit.analyze.classes import rank_classes, subpopulation
    from dmtoolkit.analyze.leakage import detect_leakage
    from dmtoolkit.analyze.mislabels import detect_mislabels
    from dmtoolkit.analyze.recommend import recommend_removal
    from dmtoolkit.estimate.lds import evaluate

    est, notes = opened.estimate, []

    def attempt(what: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T | None:
        """Run one analysis; a failure becomes a note instead of stopping the others."""
        try:
            return fn(*args, **kwargs)
        except UserError as error:
            notes.append(f"{what}: {error}")
        return None

    there = opened.has_store
    rank = recommend = leakage = mislabels = lds = None
    subs = []
    if est.kind == "class":
        rank = attempt("rank", rank_classes, opened, top=top)
        recommend = attempt("recommend", recommend_removal, opened)
        if rank is not None and there:
            for entry in rank.top[:subpops]:
                sub = attempt("subpop", subpopulation, opened, entry.name, n=subpop_size, with_images=True)
                if sub is not None:
                    subs.append(sub)
    if est.kind == "example" and there:
        leakage = attempt("leakage", detect_leakage, opened, top=top)
        mislabels = attempt("mislabels", detect_mislabels, opened, top=top)
    if there:
        lds = attempt("LDS", evaluate, None, opened)
    else:
        notes.append(f"run store {est.store_path} not found: no images, leakage or LDS")
    store = opened.store_path if there and opened.store_path is not None else Path(str(est.store_path))
    return EstimateAnalyses(
        file=est.path, estimator=est.estimator, kind=est.kind, shape=tuple(est.matrix.shape),
        store=str(est.store_path), store_name=store.name, has_errors=est.stderr is not None,
        error_dof=0 if est.stderr is None else math.inf if est.stderr_dof is None else est.stderr_dof, rank=rank,
        recommend=recommend, subpopulations=tuple(subs), leakage=leakage, mislabels=mislabels, lds=lds,
        notes=tuple(notes))


@dataclass(frozen=True)
class StoreAnalyses:
    """What the report shows of one run store: its summary (`store_summary`, as `dmtoolkit store info` prints
    it) and the reliability of its ranking (`reliability_report`'s store, as `dmtoolkit reliability` prints it),
    or, when that cannot be computed, the note saying why."""

    path: Path
    summary: StoreSummary
    reliability: StoreReliability | None
    note: str | None = None


def analyse_store(path: str | Path) -> StoreAnalyses:
    """`StoreAnalyses` of the run store at `path`; a reliability that fails (e.g. too few models) is a note."""
    from dmtoolkit.analyze.reliability import reliability_report
    from dmtoolkit.store_checks import store_summary

    path = Path(path)
    summary = store_summary(path)
    try:
        return StoreAnalyses(path, summary, reliability_report(path).stores[0])
    except UserError as error:
        return StoreAnalyses(path, summary, None, f"reliability: {error}")
