"""Ray executor: every group of models is one Ray task; the driver (the only writer) gets results as they finish.

The driver reads the plan's data once (from its store, or as they are in memory) and puts the work
(recipe, masks, data) into Ray's object store, so workers need no shared filesystem and no copy of the
store. Each worker process builds its `RunContext` (tensors on its device) once per plan and caches it at
module level; later tasks of the same plan reuse it. A task that raises returns the error as a `GroupOutcome` (the driver retries it
once more); a worker that dies is retried by Ray (`max_retries`) and then reported ("trainer T died on
row R: its Ray worker ..."). With a timeout (per model, `timeout` or the recipe's) one task per slot is
in flight and a task still unfinished `timeout x models` after it was submitted is cancelled (its worker
killed) and reported as timed out, not retried; on Ray that time includes the worker's start-up, so
give first runs some slack. Ctrl-C (or any exit of the generator) cancels every task still pending or
running; rows already written stay.

`address=None` starts a private local Ray (`num_cpus=workers`, no dashboard) and shuts it down on
`close()`; an address ("auto", "ray://host:10001", "host:6379") joins an existing cluster, which is
left running. With `device="cuda"` (or `None` on a cluster that has GPUs) each task asks Ray for one GPU.
A recipe whose source names ffcv betons trains from them on the workers (they need ffcv and the path).
"""

from __future__ import annotations

import os
import time
import warnings
from pathlib import Path
from typing import Any, Iterable, Iterator

from dmtoolkit.errors import UserError
from dmtoolkit.run.base import Executor, GroupOutcome, RunNames, compute_outcome, error_text
from dmtoolkit.train.job import RunContext, RunInputs, TrainingPlan

RAY_MISSING = "the Ray executor needs Ray: pip install 'dmtoolkit[ray]'"

# worker-side cache: plan key -> RunContext (only the latest plan is kept, to bound memory)
_CONTEXTS: dict[str, RunContext] = {}


def import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise UserError(RAY_MISSING) from None
    return ray


def _run_key(plan: TrainingPlan, device: str | None) -> str:
    """Identifies one plan's work on the workers: the plan's key (a store's path, creation stamp and recipe
    hash), and the device."""
    return f"{plan.key}|{device}"


def _load_payload(plan: TrainingPlan) -> tuple[str, Any, Any, list[str]]:
    """The plan's inputs as Ray ships them: (recipe canonical JSON, masks, RunData, import path).

    The import path is the driver's working directory and `sys.path`, so a recipe's `MODULE:FUNCTION`
    imports on a worker as it does on the driver (when the worker sees the same files)."""
    import sys

    return plan.recipe.canonical_json(), plan.masks, plan.run_data(), [os.getcwd(), *sys.path]


def _context(key: str, payload_box: list, device: str | None) -> RunContext:
    context = _CONTEXTS.get(key)
    if context is None:
        import ray
        import torch

        from dmtoolkit.recipe import parse_recipe_text

        torch.set_num_threads(int(os.environ.get("DMTOOLKIT_RAY_THREADS", "1")))
        import sys

        recipe_json, masks, data, import_path = ray.get(payload_box[0])
        sys.path.extend(p for p in import_path if p and p not in sys.path)
        if import_path[0] in sys.path:  # the driver's working directory first, as it is for the driver
            sys.path.remove(import_path[0])
        sys.path.insert(0, import_path[0])
        _CONTEXTS.clear()
        with warnings.catch_warnings():  # arrays from Ray's object store are read-only; tensors copy them anyway
            warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
            inputs = RunInputs(parse_recipe_text(recipe_json, origin="ray payload"), masks, data)
            context = RunContext.from_inputs(inputs, device)
        _CONTEXTS[key] = context
    return context


def _compute_group(key: str, payload_box: list, device: str | None, group: int) -> GroupOutcome:
    """The body of a Ray task (module-level so Ray pickles it by reference)."""
    try:
        context = _context(key, payload_box, device)
    except Exception as error:  # a context that cannot be built fails the group like any other error
        return GroupOutcome(group, error=error_text(error))
    return compute_outcome(context, group)


class RayExecutor:
    """Groups as Ray tasks on a local Ray (started here) or an existing cluster (`address`)."""

    def __init__(self, workers: int, device: str | None = None, address: str | None = None,
                 max_retries: int = 1, in_flight_per_slot: int = 2, timeout: float | None = None) -> None:
        self.ray = import_ray()
        self.workers, self.device, self.address, self.timeout = workers, device, address, timeout
        self.max_retries, self.in_flight_per_slot = max_retries, in_flight_per_slot
        self._started = False
        self._payload: tuple[str, Any] | None = None  # (run key, ObjectRef of the payload)

    @classmethod
    def from_options(cls, workers: int, device: str | None, address: str | None = None,
                     timeout: float | None = None) -> Executor:
        """The registry's constructor (`address`: a Ray cluster to join; None starts a local Ray)."""
        return cls(workers, device, address, timeout=timeout)

    # ray lifecycle ------------------------------------------------------------------------------
    def _ensure_ray(self) -> None:
        ray = self.ray
        if ray.is_initialized():
            return
        if self.address:
            ray.init(address=self.address, log_to_driver=True)
        else:
            ray.init(num_cpus=self.workers, include_dashboard=False, log_to_driver=True)
            self._started = True

    def _task_device(self) -> tuple[str | None, float]:
        """The device tasks compute on and the GPUs each asks Ray for."""
        gpus = self.ray.cluster_resources().get("GPU", 0)
        if self.device is None:
            return ("cuda", 1.0) if gpus else ("cpu", 0.0)
        if self.device.startswith("cuda"):
            if not gpus:
                raise UserError("--device cuda requested but the Ray cluster has no GPU; use --device cpu")
            return self.device, 1.0
        return self.device, 0.0

    def _slots(self, gpus_per_task: float) -> int:
        resources = self.ray.cluster_resources()
        if gpus_per_task:
            return max(1, int(resources.get("GPU", 1) / gpus_per_task))
        return max(1, int(resources.get("CPU", self.workers)))

    # executor protocol --------------------------------------------------------------------------
    def run(self, plan: TrainingPlan | Path, groups: Iterable[int]) -> Iterator[GroupOutcome]:
        ray = self.ray
        plan = TrainingPlan.of(plan)
        self._ensure_ray()
        device, gpus = self._task_device()
        key = _run_key(plan, device)
        if self._payload is None or self._payload[0] != key:
            self._payload = (key, ray.put(_load_payload(plan)))
        box = [self._payload[1]]  # boxed so Ray does not resolve it per task; workers ray.get it once
        task = ray.remote(num_cpus=1, num_gpus=gpus, max_retries=self.max_retries)(_compute_group)
        names = RunNames.from_plan(plan)
        timeout = self.timeout if self.timeout is not None else names.timeout
        window = (1 if timeout is not None else self.in_flight_per_slot) * self._slots(gpus)
        queue = list(groups)
        pending: dict[Any, int] = {}
        submitted: dict[Any, float] = {}
        try:
            while queue or pending:
                while queue and len(pending) < window:
                    group = queue.pop(0)
                    ref = task.remote(key, box, device, group)
                    pending[ref], submitted[ref] = group, time.monotonic()
                wait_seconds = None
                if timeout is not None:
                    wait_seconds = max(0.0, min(submitted[r] + names.deadline(g, timeout) for r, g in pending.items())
                                       - time.monotonic())
                done, _ = ray.wait(list(pending), num_returns=1, timeout=wait_seconds)
                for ref in done:
                    group = pending.pop(ref)
                    submitted.pop(ref)
                    try:
                        outcome = ray.get(ref)
                    except Exception as error:  # worker died after Ray's own retries, or task cancelled
                        first_line = (str(error).strip().splitlines() or [""])[0][:200]
                        outcome = names.died(group, f"died ({type(error).__name__}: {first_line})")
                        outcome = GroupOutcome(group, error=outcome.error.replace("worker process", "Ray worker"))
                    yield outcome
                if timeout is None:
                    continue
                now = time.monotonic()
                for ref, group in list(pending.items()):
                    if now >= submitted[ref] + names.deadline(group, timeout):
                        try:
                            ray.cancel(ref, force=True)
                        except Exception:
                            pass
                        del pending[ref], submitted[ref]
                        yield names.timed_out(group, timeout, what="Ray task")
        finally:
            for ref in pending:  # Ctrl-C or an early stop: cancel what is left, keep what is written
                try:
                    ray.cancel(ref, force=True)
                except Exception:
                    pass

    def close(self) -> None:
        self._payload = None
        if self._started and self.ray.is_initialized():
            self.ray.shutdown()
        self._started = False
