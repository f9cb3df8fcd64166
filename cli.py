"""`dmtoolkit` command line: wiring only; every command calls a library function tests can call too."""

from __future__ import annotations

import json
import os
from pathlib import Path

import click

from dmtoolkit.errors import UserError

DEVICE = click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True,
                      help="Where to compute (auto: cuda if available).")


def _device(name: str) -> str | None:
    return None if name == "auto" else name


def _echo_json(data: object) -> None:
    click.echo(json.dumps(data, indent=2, sort_keys=True))


class _OneLineErrors(click.Group):
    """Turns user errors and Ctrl-C into one line on stderr and a non-zero exit code, never a traceback."""

    def invoke(self, ctx: click.Context) -> object:
        try:
            return super().invoke(ctx)
        except UserError as error:
            raise _Failure(str(error), error.exit_code) from None
        except KeyboardInterrupt:
            raise _Failure("interrupted; completed rows are kept, rerun the same command to resume", 130) from None


class _Failure(click.ClickException):
    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code

    def show(self, file: object = None) -> None:
        click.echo(f"error: {self.message}", err=True)


@click.group(cls=_OneLineErrors, context_settings={"help_option_names": ["-h", "--help"]})
def cli() -> None:
    """Which source data help or hurt a transfer-learned model.

    \b
    Typical run:
      dmtoolkit init recipes/glyphs-to-mnist.yaml stores/runs.h5
      dmtoolkit train stores/runs.h5 --workers 2
      dmtoolkit store info stores/runs.h5
    """


@cli.command()
@click.argument("recipe_path", metavar="RECIPE.yaml", type=click.Path(dir_okay=False, path_type=Path))
@click.argument("store_path", metavar="STORE.h5", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--models", type=click.IntRange(min=2), help="Number of models (rows); overrides the recipe.")
@click.option("--seed", type=int, help="Mask seed; overrides the recipe.")
@click.option("--force", is_flag=True, help="Overwrite an existing store.")
def init(recipe_path: Path, store_path: Path, models: int | None, seed: int | None, force: bool) -> None:
    """Create a run store: load and plant the data, draw the masks, nothing trained yet.

    \b
    Example:
      dmtoolkit init recipes/glyphs-to-mnist.yaml stores/runs.h5 --models 512 --seed 1
    """
    from dmtoolkit.recipe import load_recipe
    from dmtoolkit.run.prepare import build_run_data
    from dmtoolkit.store import create_store

    recipe = load_recipe(recipe_path).with_overrides(models=models, seed=seed)
    if store_path.exists() and not force:
        raise UserError(f"{store_path}: already exists; pass --force to overwrite it, or choose another path")
    create_store(store_path, recipe, build_run_data(recipe), force=force)
    click.echo(f"created {store_path}: {recipe.subsets.models} models, {recipe.subsets.kind}-level, "
               f"alpha {recipe.subsets.alpha}; next: dmtoolkit train {store_path}")


@cli.command()
@click.argument("store_path", metavar="STORE.h5", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--workers", type=click.IntRange(min=1), default=lambda: os.cpu_count() or 1,
              show_default="number of CPUs", help="Worker processes (1 thread each).")
@click.option("--limit", type=click.IntRange(min=1), help="Stop after at least this many new models (whole batched groups).")
@click.option("--executor", type=click.Choice(["local"]), default="local", show_default=True,
              help="Where models are computed.")
@DEVICE
@click.option("--quiet", is_flag=True, help="No progress bar.")
def train(store_path: Path, workers: int, limit: int | None, executor: str, device: str, quiet: bool) -> None:
    """Train, transfer and score the pending models of a store; resumable, one writer at a time.

    \b
    Example:
      dmtoolkit train stores/runs.h5 --workers 2
    Ctrl-C stops cleanly: completed rows stay; run the same command to resume.
    """
    from dmtoolkit.devices import resolve_device
    from dmtoolkit.run.driver import train_store
    from dmtoolkit.run.executors import make_executor

    resolve_device(_device(device))
    summary = train_store(store_path, make_executor(executor, workers, _device(device)), limit=limit,
                          progress=not quiet)
    click.echo(f"{store_path}: wrote {summary.written} models; "
               f"{summary.already_done + summary.written} completed, {summary.remaining} pending")


@cli.group()
def store() -> None:
    """Inspect and check run stores."""


@store.command("info")
@click.argument("store_path", metavar="STORE.h5", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def store_info(store_path: Path, as_json: bool) -> None:
    """Summary: progress, accuracies, shapes, recipe, planted ground truth.

    \b
    Example:
      dmtoolkit store info stores/runs.h5 --json
    """
    from dmtoolkit.store_checks import format_summary, store_summary

    summary = store_summary(store_path)
    _echo_json(summary) if as_json else click.echo(format_summary(summary))


@store.command("validate")
@click.argument("store_path", metavar="STORE.h5", type=click.Path(dir_okay=False, path_type=Path))
def store_validate(store_path: Path) -> None:
    """Check schema, shapes, dtypes, masks (re-derived from the seed) and completed rows; exit 1 on problems.

    \b
    Example:
      dmtoolkit store validate stores/runs.h5
    """
    from dmtoolkit.store_checks import validate_store

    problems = validate_store(store_path)
    if problems:
        for problem in problems:
            click.echo(f"problem: {problem}", err=True)
        raise UserError(f"{store_path}: {len(problems)} problem(s) found")
    click.echo(f"{store_path}: valid")


@cli.group()
def data() -> None:
    """Built-in datasets and their cache."""


@data.command("list")
def data_list() -> None:
    """Names usable as `dataset:` in a recipe."""
    from dmtoolkit.data import available_datasets

    for name in available_datasets():
        click.echo(name)


@data.command("prepare")
@click.option("--force", is_flag=True, help="Rebuild caches that exist.")
def data_prepare(force: bool) -> None:
    """Build the caches of the built-in datasets (glyph rendering); run once at set-up."""
    from dmtoolkit.data import prepare_all

    for path in prepare_all(force=force):
        click.echo(f"ready: {path}")


@cli.command()
@click.option("--quick", is_flag=True, help="A tiny run for smoke tests (well under a minute of training).")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=Path("stores/demo"),
              show_default=True, help="Folder for the demo's stores.")
@click.option("--workers", type=click.IntRange(min=1), default=lambda: os.cpu_count() or 1,
              show_default="number of CPUs")
@DEVICE
def demo(quick: bool, out: Path, workers: int, device: str) -> None:
    """Init and train the default recipe (glyphs -> MNIST) at a scale of a few minutes, then summarise.

    \b
    Example:
      dmtoolkit demo --quick --out /tmp/demo
    Rerunning resumes the same store.
    """
    from dmtoolkit.demo import run_demo
    from dmtoolkit.store_checks import format_summary

    summary = run_demo(out, quick=quick, workers=workers, device=_device(device))
    click.echo(format_summary(summary))


def main() -> None:
    """Console entry point (`dmtoolkit`)."""
    cli()


if __name__ == "__main__":
    main()
