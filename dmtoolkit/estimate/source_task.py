"""Each pool example's influence on the *source* task itself, from the networks a few-network estimator already
holds: the evidence `dmtoolkit mislabels` needs that an image hurts the task it is labelled for.

The subset estimators get it by refitting on the store's `source_accuracy` column. The gradient and replay
estimators cannot (refitting would retrain their networks), so each of their networks scores every pool example
on one more "target": the mean source margin over the source task's held-out test examples (the gradient
estimator's `Network.source_test`; replay differentiates it exactly, `replay.source_task_margin`), the smooth
stand-in for source accuracy. Its mean over the networks and its standard error across them (sd / √N, N − 1
dof, as for the target columns) are saved as `source_task/coef` and `source_task/stderr`; `read_source_task`
gives them back to the analyses. Positive: keeping the example raises the source margin (helps the source task).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dmtoolkit.estimate.base import ExtraDataset

COEF, STDERR = "source_task/coef", "source_task/stderr"
MEANING = ("influence of each unit on the source task (mean source margin over the held-out source test examples), "
           "averaged over the networks")


@dataclass(frozen=True)
class SourceTaskScores:
    """Per pool example: the mean over networks of its source-task score (None when the networks did not give
    one) and its standard error across networks (None with one network)."""

    coef: np.ndarray | None
    stderr: np.ndarray | None

    @classmethod
    def of(cls, mean: np.ndarray, stderr: np.ndarray | None) -> SourceTaskScores:
        """From the reduced source-task column; nothing when any network lacked it (NaN: no `source_test`)."""
        if not np.isfinite(mean).all():
            return cls(None, None)
        usable = stderr is not None and np.isfinite(stderr).all()
        return cls(np.asarray(mean, np.float32), np.asarray(stderr, np.float32) if usable else None)

    def datasets(self) -> list[ExtraDataset]:
        if self.coef is None:
            return []
        out = [ExtraDataset(COEF, self.coef, MEANING, "unit", "source margin per unit")]
        if self.stderr is not None:
            out.append(ExtraDataset(STDERR, self.stderr, "standard error of source_task/coef across the networks "
                                    "(sd / √networks, Student t with networks − 1 dof)", "unit",
                                    "source margin per unit"))
        return out


def read_source_task(path: str | Path) -> SourceTaskScores:
    """The source-task scores an estimate file carries (both None when it has none)."""
    from dmtoolkit.estimate.files import read_extra

    return SourceTaskScores(read_extra(path, COEF), read_extra(path, STDERR))
