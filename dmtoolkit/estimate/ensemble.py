"""Per-network scores of a few-network estimator (the gradient estimator; the replay estimator's several
seeds share the standard error and its record, `across_networks`, `network_stderr_record`): saved as each network finishes,
resumed by a rerun, and reduced to a mean and a standard error across networks in bounded memory.

Each network n gives a score matrix τ_n (P × T). The estimate is their mean; its standard error is the
sample standard deviation across networks over √N, with N − 1 degrees of freedom (Student t): the variation
of the scores across independently trained networks (training seed, and the store row whose mask the network
was retrained on) at a fixed design — the same projection, λ, kernel and store. It is what a rerun with other
networks would change; it does not cover what every network shares (the projection drawn once, the
linearisation of training itself, the bias of TRAK's kernel), so it is a standard error of the few-network
estimate, not of the counterfactual it approximates. With one network it is undefined.

`NetworkSaver` keeps the per-network scores in a folder beside the output (`OUT.h5.partial/`): `meta.json`
(what the scores depend on: store content hash, settings, target columns, the planned networks), and one
`network-NNNN.h5` per finished network (its scores as float32 and its record), each written atomically. A
rerun of the same command continues from the saved networks; a rerun that differs in anything `meta.json`
records is refused in one line naming what differs. The folder is removed once the estimate is written.
`reduce` reads the saved scores back a block of target columns at a time (Welford's running mean and sum
of squared deviations in float64), so no more than one network's scores and the two outputs are in memory
whatever the number of networks; a resumed and an uninterrupted run add the same float32 arrays in the
same order, so their results are equal bit for bit.
"""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from dmtoolkit.atomic import write_atomic, write_text_atomic
from dmtoolkit.errors import UserError

PARTIAL_SUFFIX = ".partial"
PLAN_KEY = "networks (store row, seed)"  # the entry of `meta` listing the planned networks, one per saved file
REDUCE_BLOCK_BYTES = 64 * 2**20  # float64 bytes of one (P × block) array during the reduction
CHUNK_ROWS, CHUNK_COLUMNS = 1024, 256  # HDF5 chunks of the saved per-network scores


def partial_folder(out_path: str | Path) -> Path:
    """Where the per-network scores of OUT.h5 are kept while it is being computed: OUT.h5.partial/."""
    out = Path(out_path)
    return out.with_name(out.name + PARTIAL_SUFFIX)


class Moments:
    """Welford's running mean and sum of squared deviations of equally shaped arrays, in float64."""

    def __init__(self, shape: tuple[int, ...]) -> None:
        self.count = 0
        self.mean = np.zeros(shape, np.float64)
        self.m2 = np.zeros(shape, np.float64)

    def add(self, x: np.ndarray) -> None:
        self.count += 1
        x = np.array(x, np.float64)  # a copy, changed in place below
        delta = x - self.mean
        self.mean += delta / self.count
        x -= self.mean
        x *= delta
        self.m2 += x

    def stderr(self) -> np.ndarray | None:
        """Sample standard deviation / √count; None with fewer than two arrays (undefined)."""
        if self.count < 2:
            return None
        out = self.m2 / ((self.count - 1) * self.count)
        return np.sqrt(out, out=out)


@dataclass(frozen=True)
class AcrossNetworks:
    """The mean of per-network scores, its standard error (None: one network) and degrees of freedom."""

    mean: np.ndarray
    stderr: np.ndarray | None
    dof: int | None
    networks: int


def across_networks(scores: Iterable[np.ndarray]) -> AcrossNetworks:
    """Mean, standard error (sd / √N) and N − 1 degrees of freedom of per-network score arrays (any shape)."""
    moments: Moments | None = None
    for x in scores:
        if moments is None:
            moments = Moments(np.shape(x))
        moments.add(x)
    if moments is None:
        raise ValueError("no networks")
    n = moments.count
    return AcrossNetworks(moments.mean, moments.stderr(), n - 1 if n > 1 else None, n)


def network_stderr_record(name: str, networks: int, stderr: np.ndarray | None, *, fixed: str,
                          more: str) -> tuple[dict[str, Any], list[Any]]:
    """What a few-network estimate file says of its standard error: the attributes (`stderr_method`,
    `stderr_dof`, or `stderr_missing` with one network: why nothing can be flagged) and the `stderr` dataset
    (none with one network). `fixed` names what every network shares (so the error does not cover it), `more`
    how to fit more networks."""
    from dmtoolkit.estimate.base import ExtraDataset

    if stderr is None:
        return {"stderr_method": "none", "stderr_dof": -1,
                "stderr_missing": (f"the {name} estimate is from {networks} network, so its standard error (the "
                                   "spread of the scores across independently trained networks) is undefined: "
                                   f"nothing is flagged; fit 2 or more networks ({more}) for evidence")}, []
    attrs = {"stderr_method": (f"spread across {networks} independently trained networks (sd / √{networks}) at "
                               f"fixed {fixed}"),
             "stderr_dof": networks - 1}
    dataset = ExtraDataset("stderr", stderr, "standard error of the coefficient: sd of the per-network scores / "
                           "√networks (Student t, networks − 1 dof)", "unit, target example", "margin per unit")
    return attrs, [dataset]


def reduce_block_columns(num_units: int, budget: int = REDUCE_BLOCK_BYTES) -> int:
    """Target columns per block of the reduction: a (P × block) float64 array within `budget` bytes, rounded
    down to whole chunks of the saved scores (CHUNK_COLUMNS) when it holds one, so each chunk is read once."""
    block = max(1, budget // (8 * max(1, num_units)))
    return block - block % CHUNK_COLUMNS if block >= CHUNK_COLUMNS else block


def reduction_bytes(num_units: int, num_targets: int, budget: int = REDUCE_BLOCK_BYTES) -> int:
    """Bytes the reduction holds at once: the float32 mean and standard error (P × T) and, per block of
    columns, the block read (float32), its float64 copy, the running mean, sum of squares, the deviation and
    temporaries (float64): 60 bytes per entry of the block, as measured by benchmarks/gradient_evidence.py."""
    block = min(num_targets, reduce_block_columns(num_units, budget))
    return 8 * num_units * num_targets + 60 * num_units * block


class NetworkSaver:
    """Per-network scores and records in `folder`, checked against `meta` (see the module docstring)."""

    def __init__(self, folder: str | Path, meta: dict[str, Any]) -> None:
        self.folder = Path(folder)
        self.meta = json.loads(json.dumps(meta))  # as it reads back from meta.json (tuples become lists)

    def _file(self, index: int) -> Path:
        return self.folder / f"network-{index:04d}.h5"

    def start(self) -> dict[int, dict[str, Any]]:
        """Check (or write) meta.json; the records of the networks already saved, by index."""
        meta_path = self.folder / "meta.json"
        if meta_path.exists():
            try:
                saved = json.loads(meta_path.read_text())
            except (OSError, ValueError):
                saved = None
            if not isinstance(saved, dict):
                raise UserError(f"{self.folder}: its meta.json is damaged; remove {self.folder} to start over")
            differs = [key for key in sorted(set(saved) | set(self.meta)) if saved.get(key) != self.meta.get(key)]
            if differs:
                key = differs[0]
                more = f" (and {', '.join(differs[1:])})" if len(differs) > 1 else ""
                raise UserError(f"{self.folder}: the networks saved there were computed with {key} = "
                                f"{_short(saved.get(key))}, this run has {_short(self.meta.get(key))}{more}; rerun "
                                f"with the same settings to continue, or remove {self.folder} to start over")
        else:
            self.folder.mkdir(parents=True, exist_ok=True)
            write_text_atomic(meta_path, json.dumps(self.meta, sort_keys=True, indent=1), force=True)
        done = {}
        for index in range(len(self.meta.get(PLAN_KEY, []))):
            path = self._file(index)
            if path.exists():
                try:
                    with h5py.File(path, "r") as f:
                        done[index] = json.loads(f.attrs["record"])
                except (OSError, KeyError, ValueError):
                    path.unlink()  # unreadable (cannot happen through the atomic write): computed again
        return done

    def require_disk(self, networks: int, shape: tuple[int, int], free: int | None = None) -> None:
        """Refuse, before any training, when `networks` more float32 score arrays of `shape` would not fit on
        the folder's disk."""
        from dmtoolkit.resources import ResourceError, format_bytes

        needed = networks * 4 * shape[0] * shape[1]
        free = shutil.disk_usage(self.folder).free if free is None else free
        if needed > free:
            raise ResourceError(f"{self.folder}: the scores of {networks} networks ({shape[0]:,} × {shape[1]:,} each) "
                                f"need about {format_bytes(needed)} of disk, more than the {format_bytes(free)} free; "
                                "free some space or fit fewer targets at a time with --targets A:B")

    def save(self, index: int, scores: np.ndarray, record: dict[str, Any],
             extra: dict[str, np.ndarray] | None = None) -> None:
        """Network `index`'s scores (P, T; kept as float32), record and `extra` arrays (read back by `extra`),
        written atomically."""
        def fill(f: h5py.File) -> None:
            shape = scores.shape
            f.create_dataset("scores", data=np.asarray(scores, np.float32),
                             chunks=(min(shape[0], CHUNK_ROWS), min(shape[1], CHUNK_COLUMNS)) if scores.size else None)
            for name, array in (extra or {}).items():
                f.create_dataset(f"extra/{name}", data=array)
            f.attrs["record"] = json.dumps(record)

        write_atomic(self._file(index), fill, force=True)

    def extra(self, index: int, name: str) -> np.ndarray | None:
        """Network `index`'s saved extra array `name` (None when it was saved without one)."""
        with h5py.File(self._file(index), "r") as f:
            return f[f"extra/{name}"][()] if f"extra/{name}" in f else None

    def blocks(self, index: int, columns: slice) -> np.ndarray:
        with h5py.File(self._file(index), "r") as f:
            return f["scores"][:, columns]

    def reduce(self, count: int, shape: tuple[int, int], budget: int = REDUCE_BLOCK_BYTES
               ) -> tuple[np.ndarray, np.ndarray | None]:
        """(mean, standard error or None) of networks 0..count-1 as float32 (P, T), a block of columns at a time."""
        P, T = shape
        mean = np.empty(shape, np.float32)
        stderr = np.empty(shape, np.float32) if count > 1 else None
        step = reduce_block_columns(P, budget)
        for start in range(0, T, step):
            columns = slice(start, min(T, start + step))
            result = across_networks(self.blocks(n, columns) for n in range(count))
            mean[:, columns] = result.mean
            if stderr is not None:
                stderr[:, columns] = result.stderr
        return mean, stderr

    def remove(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


def _short(value: Any) -> str:
    text = json.dumps(value)
    return text if len(text) <= 60 else text[:57] + "..."


# --- simulated per-network scores (what analyze/evidence.network_calibration checks the error on) --------

def simulate_network_scores(replication: int, *, networks: int, units: int = 200, targets: int = 20,
                            effects: float = 0.05, effect_size: float = 10.0, shared: float = 0.5,
                            tails: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(truth (P, T), per-network scores (N, P, T)) of one simulated run: a share `effects` of the entries are
    positive effects of `effect_size` noise standard deviations of the N-network mean, the rest are 0; network n's
    scores are truth + a per-(network, target) offset shared by every unit (sd √shared) + per-entry noise (sd
    √(1 − shared); Student t with `tails` degrees of freedom, rescaled, when given), with a per-unit noise scale."""
    rng = np.random.default_rng([11, networks, replication])
    scale = rng.uniform(0.5, 2.0, (units, 1))  # units differ in how much networks disagree about them
    truth = np.where(rng.random((units, targets)) < effects, effect_size * scale / math.sqrt(networks), 0.0)
    offset = rng.normal(0, math.sqrt(shared), (networks, 1, targets))
    if tails is None:
        entry = rng.normal(0, 1, (networks, units, targets))
    else:
        entry = rng.standard_t(tails, (networks, units, targets)) / math.sqrt(tails / (tails - 2))
    return truth, truth + scale * (offset + math.sqrt(1 - shared) * entry)
