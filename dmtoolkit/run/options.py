"""Executors by name, as the CLI's `--executor` offers them: plain constants, importable without torch.

Each entry is "module:Class"; the module is imported on first use (Ray is optional). Adding an executor is
one module with a class that has `from_options`, plus one line here.
"""

EXECUTORS: dict[str, str] = {
    "local": "dmtoolkit.run.executors:LocalExecutor",
    "ray": "dmtoolkit.run.ray_executor:RayExecutor",
}
EXECUTOR_NAMES: tuple[str, ...] = tuple(EXECUTORS)
DEFAULT_EXECUTOR = "local"
