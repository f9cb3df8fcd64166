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
@click.option("--executor", type=click.Choice(["local", "ray"]), default="local", show_default=True,
              help="Where models are computed: local processes, or Ray tasks (pip install 'dmtoolkit[ray]').")
@click.option("--address", help="Ray cluster to join (e.g. auto, ray://head:10001); default: start a local Ray.")
@click.option("--shard", metavar="I/N", help="Compute only groups g with g % N == I into the shard file -o.")
@click.option("-o", "--output", "shard_path", type=click.Path(dir_okay=False, path_type=Path),
              help="Shard file for --shard (created from STORE.h5, resumed if it exists).")
@DEVICE
@click.option("--quiet", is_flag=True, help="No progress bar.")
def train(store_path: Path, workers: int, limit: int | None, executor: str, address: str | None,
          shard: str | None, shard_path: Path | None, device: str, quiet: bool) -> None:
    """Train, transfer and score the pending models of a store; resumable, one writer at a time.

    \b
    Examples:
      dmtoolkit train stores/runs.h5 --workers 2
      dmtoolkit train stores/runs.h5 --executor ray --address auto
      dmtoolkit train stores/runs.h5 --shard 3/16 -o shards/runs-3.h5   # then: dmtoolkit store merge
    Ctrl-C stops cleanly: completed rows stay; run the same command to resume.
    """
    from dmtoolkit.devices import resolve_device
    from dmtoolkit.run.driver import train_store
    from dmtoolkit.run.executors import make_executor
    from dmtoolkit.run.shards import open_shard, parse_shard

    if address and executor != "ray":
        raise click.UsageError("--address needs --executor ray")
    if (shard is None) != (shard_path is None):
        raise click.UsageError("--shard I/N and -o SHARD.h5 go together")
    if executor != "ray" or not address:  # on a Ray cluster the workers' devices count, not the driver's
        resolve_device(_device(device))
    share = parse_shard(shard) if shard else None
    target = open_shard(store_path, shard_path) if share else store_path
    summary = train_store(target, make_executor(executor, workers, _device(device), address), limit=limit,
                          progress=not quiet, shard=share)
    click.echo(f"{target}: wrote {summary.written} models; "
               f"{summary.already_done + summary.written} completed, {summary.remaining} pending"
               + (f" in shard {shard}" if shard else ""))


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


@store.command("merge")
@click.argument("inputs", metavar="SHARD.h5...", nargs=-1, required=True,
                type=click.Path(dir_okay=False, path_type=Path))
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="Merged store to write.")
@click.option("--force", is_flag=True, help="Overwrite the output if it exists.")
def store_merge(inputs: tuple[Path, ...], output: Path, force: bool) -> None:
    """Merge shards of one run (same recipe hash, seed, masks) into one store; conflicting rows are refused.

    \b
    Example:
      dmtoolkit store merge shards/runs-*.h5 -o stores/runs-merged.h5
    """
    from dmtoolkit.run.shards import merge_stores

    summary = merge_stores(list(inputs), output, force=force)
    click.echo(f"{output}: merged {summary.inputs} inputs; {summary.completed} rows completed"
               f" ({summary.duplicates} identical duplicates kept once)")
    if len(summary.missing):
        click.echo(f"{len(summary.missing)} rows still missing: {summary.missing_text}", err=True)


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


@data.command("write-beton")
@click.argument("dataset")
@click.argument("out", metavar="OUT.beton", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--split", type=click.Choice(["train", "test"]), default="train", show_default=True)
@click.option("--image-field", type=click.Choice(["ndarray", "rgb-raw", "rgb-jpg"]), default="ndarray",
              show_default=True, help="ndarray: exact uint8, any channels; rgb-raw: exact RGB; rgb-jpg: lossy, small.")
@click.option("--force", is_flag=True, help="Overwrite an existing beton.")
def data_write_beton(dataset: str, out: Path, split: str, image_field: str, force: bool) -> None:
    """Write a dataset (built-in name or imagefolder:PATH) to an ffcv beton (image, label, index).

    \b
    Example:
      dmtoolkit data write-beton glyphs stores/glyphs-train.beton --split train
    A sidecar OUT.beton.json keeps class names and example ids. Name the betons in a recipe's
    source/target as beton_train and beton_test. Needs pip install 'dmtoolkit[ffcv]'.
    """
    from dmtoolkit.data import load_dataset
    from dmtoolkit.data.beton import write_beton

    if out.exists() and not force:
        raise UserError(f"{out}: already exists; pass --force to overwrite it, or choose another path")
    ds = load_dataset(dataset, split)
    write_beton(ds, out, image_field=image_field)
    click.echo(f"wrote {out}: {len(ds)} {split} images {'x'.join(map(str, ds.images.shape[1:]))}, "
               f"{len(ds.class_names)} classes ({image_field})")


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
