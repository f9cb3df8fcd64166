"""The `dmtoolkit` command line: wiring only. Every command parses its options, calls a library function that
tests call too, and prints the result as JSON or through `dmtoolkit.report.text`; choices and defaults come
from the library's torch-free `options` modules. Parameter types turn strings into the typed values the
library takes (a slice, a list of ints) as they are parsed; options several commands take are declared once,
below them."""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from dmtoolkit.analyze import options as analyze_options
from dmtoolkit.errors import UserError
from dmtoolkit.estimate import options as estimate_options
from dmtoolkit.run import options as run_options


class TargetRange(click.ParamType):
    """`--targets A:B` → slice(A, B) of the target columns; either side may be empty (`64:` is slice(64, None),
    to the last). Whether it fits the store is the library's check (`estimate.fit.check_targets`), which knows
    how many targets there are."""

    name = "A:B"

    def convert(self, value: object, param: click.Parameter | None, ctx: click.Context | None) -> slice:
        if isinstance(value, slice):
            return value
        parts = str(value).split(":")
        try:
            if len(parts) != 2:
                raise ValueError
            start, stop = (int(part) if part.strip() else None for part in parts)
        except ValueError:
            raise UserError(f"targets {value!r} is not of the form A:B; give e.g. 0:64 (either side may be "
                            "empty)") from None
        return slice(start, stop)


class IntList(click.ParamType):
    """`0,5,10` → [0, 5, 10], in the order given (blank parts are skipped). Which numbers are allowed (e.g.
    fewer than the classes) is the library's check (`analyze.retrain.check_ks`)."""

    name = "K,K,..."

    def __init__(self, what: str, example: str = "0,5,10") -> None:
        self.what, self.example = what, example

    def convert(self, value: object, param: click.Parameter | None, ctx: click.Context | None) -> list[int]:
        if isinstance(value, (list, tuple)):
            return [int(number) for number in value]
        try:
            numbers = [int(part) for part in str(value).split(",") if part.strip()]
        except ValueError:
            raise UserError(f"{self.what} {value!r} is not a comma-separated list of integers, "
                            f"e.g. {self.example}") from None
        if not numbers:
            raise UserError(f"{self.what} is empty; give e.g. {self.example}")
        return numbers


class ShardSpec(click.ParamType):
    """`--shard I/N` → (I, N) with 0 <= I < N, by `run.shards.parse_shard` (imported when a command runs)."""

    name = "I/N"

    def convert(self, value: object, param: click.Parameter | None, ctx: click.Context | None) -> tuple[int, int]:
        if isinstance(value, tuple):
            return value
        from dmtoolkit.run.shards import parse_shard

        return parse_shard(str(value))


class Checkpoints(click.ParamType):
    """`--checkpoints 3` (a count of evenly spaced epochs) or `10,20,30` (the epochs) → 3 or (10, 20, 30), by
    `estimate.networks.parse_checkpoints` (imported, with torch, only when `gradient` runs: never for --help)."""

    name = "N|E,E,..."

    def convert(self, value: object, param: click.Parameter | None,
                ctx: click.Context | None) -> int | tuple[int, ...]:
        if isinstance(value, (int, tuple)):
            return value
        from dmtoolkit.estimate.networks import parse_checkpoints

        return parse_checkpoints(str(value))


class ProjDim(click.ParamType):
    """`--proj-dim auto` → None (the library chooses: exact when it fits, else a projection) or a dimension ≥ 0."""

    name = "auto|K"

    def convert(self, value: object, param: click.Parameter | None, ctx: click.Context | None) -> int | None:
        if value is None or isinstance(value, int):
            return value
        if str(value) == "auto":
            return None
        try:
            dim = int(str(value))
        except ValueError:
            dim = -1
        if dim < 0:
            raise UserError(f"--proj-dim {str(value)!r}: auto or a dimension ≥ 0 (0: no projection), e.g. 512")
        return dim


class Device(click.Choice):
    """`--device auto|cpu|cuda` → None (auto: the library takes cuda when there is one), "cpu" or "cuda"."""

    def __init__(self) -> None:
        super().__init__(["auto", "cpu", "cuda"])

    def convert(self, value: object, param: click.Parameter | None, ctx: click.Context | None) -> str | None:
        choice = super().convert(value, param, ctx)
        return None if choice == "auto" else choice


# --- shared declarations (as Flask's cli.py): an option several commands take is declared once, here ------

FILE = click.Path(dir_okay=False, path_type=Path)
FOLDER = click.Path(file_okay=False, path_type=Path)
UNIT_INTERVAL = click.FloatRange(0, 1, min_open=True, max_open=True)


def stacked(*decorators: Callable) -> Callable:
    """Several option decorators as one, listed in help in the order given."""
    def decorate(command: Callable) -> Callable:
        for decorator in reversed(decorators):
            command = decorator(command)
        return command

    return decorate


def path_argument(dest: str, metavar: str, **kwargs: object) -> Callable:
    """A file argument: STORE.h5, RUNS.h5, RECIPE.yaml, INFLUENCE.h5, ..."""
    return click.argument(dest, metavar=metavar, type=FILE, **kwargs)


RECIPE_ARGUMENT = path_argument("recipe_path", "RECIPE.yaml")
STORE_ARGUMENT = path_argument("store_path", "STORE.h5")
RUNS_ARGUMENT = path_argument("store_path", "RUNS.h5")
ESTIMATE_FILE = path_argument("estimate_path", "INFLUENCE.h5")
ANY_ESTIMATE_FILE = path_argument("estimate_path", "INFLUENCE.h5|DATAMODELS.h5")


def output_option(help: str, *, dest: str = "output", required: bool = True, type: click.Path = FILE) -> Callable:
    """`-o/--output`: the file (or folder) a command writes."""
    return click.option("-o", "--output", dest, type=type, required=required, help=help)


def estimate_output(name: str) -> Callable:
    """The `-o ESTIMATE.h5` option every estimator command takes."""
    return output_option(f"{name} to write.", dest="out_path")


def force_option(help: str = "Overwrite output files that exist.") -> Callable:
    return click.option("--force", is_flag=True, help=help)


def json_option(help: str = "Machine-readable output (JSON) on stdout.") -> Callable:
    return click.option("--json", "as_json", is_flag=True, help=help)


def top_option(default: int, help: str) -> Callable:
    return click.option("--top", type=click.IntRange(min=1), default=default, show_default=True, help=help)


def fdr_option(help: str) -> Callable:
    return click.option("--fdr", type=UNIT_INTERVAL, default=analyze_options.DETECT_FDR, show_default=True, help=help)


def seed_option(help: str) -> Callable:
    """`--seed` of an estimator command's held-out split (and whatever else it draws)."""
    return click.option("--seed", type=int, default=0, show_default=True, help=help)


def block_rows_option(default: int, help: str) -> Callable:
    return click.option("--block-rows", type=click.IntRange(min=1), default=default, show_default=True, help=help)


def estimator_option(help: str) -> Callable:
    """`--estimator`: an influence estimator from the registry (its names are torch-free)."""
    from dmtoolkit.estimate.registry import estimator_names

    return click.option("--estimator", type=click.Choice(estimator_names("influence")), default="difference-of-means",
                        show_default=True, help=help)


def workers_option(help: str, default: int | None = None) -> Callable:
    """`--workers`: processes, one thread each; default: the number of CPUs."""
    return click.option("--workers", type=click.IntRange(min=1), default=default or (lambda: os.cpu_count() or 1),
                        show_default=True if default else "number of CPUs", help=help)


def executor_options(executor_help: str, address_help: str) -> Callable:
    """`--executor` and `--address`: where models are computed (checked together by `_executor_factory`)."""
    return stacked(click.option("--executor", type=click.Choice(run_options.EXECUTOR_NAMES),
                                default=run_options.DEFAULT_EXECUTOR, show_default=True, help=executor_help),
                   click.option("--address", help=address_help))


DEVICE = click.option("--device", type=Device(), default="auto", show_default=True,
                      help="Where to compute (auto: cuda if available).")
TIMEOUT_OPTION = click.option(
    "--timeout", type=click.FloatRange(min=0, min_open=True), metavar="SECONDS",
    help="Seconds one model may take before its worker is killed and its rows reported (a group of G models gets "
         "G times this; not retried); default: the recipe's training.timeout / trainer.timeout, else no limit.")
HOLDOUT_OPTION = click.option("--holdout-frac", type=click.FloatRange(min=0, max=1, max_open=True),
                              default=estimate_options.TEST_FRACTION,
                              show_default=True, help="Fraction of completed models held out from fitting and "
                              "from choosing any setting; `dmtoolkit evaluate` scores them.")
TARGETS_OPTION = click.option("--targets", type=TargetRange(),
                              help="Fit only target examples A:B (split big jobs across processes).")
STORE_OPTION = click.option("--store", "store_path", type=FILE,
                            help="Run store the estimate came from (default: the path recorded in the estimate).")
LEVEL_OPTION = click.option("--level", type=UNIT_INTERVAL, default=analyze_options.INTERVAL_LEVEL, show_default=True,
                            help="Nominal coverage of the intervals shown beside every influence.")


def estimate_io(name: str) -> Callable:
    """RUNS.h5, -o NAME, --device and --targets: what every estimator command but `influence` takes first."""
    return stacked(RUNS_ARGUMENT, estimate_output(name), DEVICE, TARGETS_OPTION)


DETECT_FDR_OPTION = fdr_option("False discovery rate at which candidates are flagged (Benjamini–Hochberg).")
PNG_OPTION = click.option("--png", type=FILE, help="Also write a PNG figure here.")
JSON_OPTION = json_option()
FORCE_OPTION = force_option()


def _executor_factory(executor: str, workers: int, device: str | None, address: str | None,
                      timeout: float | None) -> Callable[[], object]:
    """What --executor, --address, --workers, --device and --timeout ask for, as the factory the library calls
    when it has models to compute (Ray is imported only then); --address goes with --executor ray only."""
    if address and executor != "ray":
        raise click.UsageError("--address needs --executor ray")

    def make() -> object:
        from dmtoolkit.run.executors import make_executor

        return make_executor(executor, workers, device, address, timeout)

    return make


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
@RECIPE_ARGUMENT
@STORE_ARGUMENT
@click.option("--models", type=click.IntRange(min=2), help="Number of models (rows); overrides the recipe.")
@click.option("--seed", type=int, help="Mask seed; overrides the recipe.")
@force_option("Overwrite an existing store.")
def init(recipe_path: Path, store_path: Path, models: int | None, seed: int | None, force: bool) -> None:
    """Create a run store: load and plant the data, draw the masks, nothing trained yet.

    \b
    Example:
      dmtoolkit init recipes/glyphs-to-mnist.yaml stores/runs.h5 --models 512 --seed 1
    """
    from dmtoolkit.atomic import check_output
    from dmtoolkit.masks import design_warnings
    from dmtoolkit.recipe import load_recipe
    from dmtoolkit.run.prepare import build_run_data, describe_run_data
    from dmtoolkit.store import create_store

    recipe = load_recipe(recipe_path).with_overrides(models=models, seed=seed)
    check_output(store_path, force=force, inputs=(recipe_path,))
    data = build_run_data(recipe)
    create_store(store_path, recipe, data, force=force, inputs=(recipe_path,))
    sub = recipe.subsets
    for line in describe_run_data(recipe, data):
        click.echo(line)
    for warning in (*data.notes, *design_warnings(sub.models, data.num_units(sub.kind), sub.design, sub.antithetic)):
        click.echo(f"warning: {warning}", err=True)
    click.echo(f"created {store_path}: {sub.models} models, {sub.kind}-level, "
               f"alpha {sub.alpha}; next: dmtoolkit train {store_path}")


@cli.command()
@STORE_ARGUMENT
@workers_option("Worker processes (1 thread each).")
@click.option("--limit", type=click.IntRange(min=1), help="Stop after at least this many new models (whole batched groups).")
@executor_options("Where models are computed: local processes, or Ray tasks (pip install 'dmtoolkit[ray]').",
                  "Ray cluster to join (e.g. auto, ray://head:10001); default: start a local Ray.")
@click.option("--shard", type=ShardSpec(), help="Compute only groups g with g % N == I into the shard file -o.")
@output_option("Shard file for --shard (created from STORE.h5, resumed if it exists).", dest="shard_path",
               required=False)
@DEVICE
@TIMEOUT_OPTION
@click.option("--quiet", is_flag=True, help="No progress bar.")
def train(store_path: Path, workers: int, limit: int | None, executor: str, address: str | None,
          shard: tuple[int, int] | None, shard_path: Path | None, device: str | None, timeout: float | None, quiet: bool) -> None:
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
    from dmtoolkit.run.shards import open_shard

    make_executor = _executor_factory(executor, workers, device, address, timeout)
    if (shard is None) != (shard_path is None):
        raise click.UsageError("--shard I/N and -o SHARD.h5 go together")
    if executor != "ray" or not address:  # on a Ray cluster the workers' devices count, not the driver's
        resolve_device(device)
    target = open_shard(store_path, shard_path) if shard else store_path
    summary = train_store(target, make_executor(), limit=limit, progress=not quiet, shard=shard)
    click.echo(f"{target}: wrote {summary.written} models; "
               f"{summary.already_done + summary.written} completed, {summary.remaining} pending"
               + (f" in shard {shard[0]}/{shard[1]}" if shard else ""))


@cli.group()
def store() -> None:
    """Inspect and check run stores."""


@store.command("info")
@STORE_ARGUMENT
@JSON_OPTION
def store_info(store_path: Path, as_json: bool) -> None:
    """Summary: progress, accuracies, shapes, recipe, planted ground truth.

    \b
    Example:
      dmtoolkit store info stores/runs.h5 --json
    """
    from dmtoolkit.report.text import format_store_summary
    from dmtoolkit.store_checks import store_summary

    summary = store_summary(store_path)
    _show(summary, format_store_summary, as_json)


@store.command("validate")
@STORE_ARGUMENT
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


@store.command("import")
@output_option("Run store to write.")
@click.option("--masks", "masks_path", type=FILE, help="(m, P) 0/1 or bool .npy: which units each model's subset kept.")
@click.option("--margins", "margins_path", type=FILE, help="(m, T) .npy: each model's margin on each target example.")
@click.option("--completed", "completed_path", type=FILE,
              help="(m,) 0/1 .npy: rows that finished (default: all); others are kept, marked not completed.")
@click.option("--npz", "npz_path", type=FILE,
              help="One .npz with arrays masks, margins (optionally completed, unit_names, target_labels).")
@click.option("--folder", "folder_path", type=FOLDER,
              help="A datamodels-style folder: masks.npy, margins.npy, _completed.npy.")
@click.option("--unit-names", "names_path", type=FILE, help="Text file, one unit (mask column) name a line.")
@click.option("--target-labels", "labels_path", type=FILE,
              help="(T,) integer .npy: the true class of each target example.")
@click.option("--source-margins", "source_margins_path", type=FILE,
              help="(m, P) .npy, example level: each model's margin on each pool image under its stated label "
                   "(NaN where none); with --source-test-margins, the label check `mislabels` flags from.")
@click.option("--source-test-margins", "source_test_margins_path", type=FILE,
              help="(m, S) .npy: the same margin on S source test images no model trained on (the reference).")
@click.option("--kind", type=click.Choice(["class", "example"]), default="class", show_default=True,
              help="What a unit (mask column) is: a source class or a source example.")
@click.option("--alpha", type=UNIT_INTERVAL, help="Fraction of units each subset kept (default: the masks' mean).")
@click.option("--design", type=click.Choice(["random", "antithetic"]), default="random", show_default=True,
              help="How the masks were drawn: independent rows, or complementary pairs (rows 2i, 2i+1; checked).")
@force_option("Overwrite the output if it exists.")
def store_import(output: Path, masks_path: Path | None, margins_path: Path | None, completed_path: Path | None,
                 npz_path: Path | None, folder_path: Path | None, names_path: Path | None, labels_path: Path | None,
                 source_margins_path: Path | None, source_test_margins_path: Path | None, kind: str,
                 alpha: float | None, design: str, force: bool) -> None:
    """Make a run store from masks and margins computed elsewhere (no recipe, no images).

    The store works with store info/validate, influence, datamodels, evaluate, rank and report; training,
    counterfactuals and analyses that need pixels refuse it. Arrays are memory-mapped and copied in blocks.

    \b
    Examples:
      dmtoolkit store import -o stores/mine.h5 --masks masks.npy --margins margins.npy --completed done.npy
      dmtoolkit store import -o stores/mine.h5 --npz runs.npz --kind example
      dmtoolkit store import -o stores/dm.h5 --folder LOGDIR --kind example --unit-names ids.txt
      dmtoolkit store import -o stores/ex.h5 --masks m.npy --margins y.npy --kind example \
          --source-margins pool.npy --source-test-margins test.npy
    """
    from dmtoolkit.store_import import import_store, read_folder, read_npy, read_npz, read_unit_names

    given = [name for name, value in (("--masks/--margins", masks_path or margins_path), ("--npz", npz_path),
                                      ("--folder", folder_path)) if value]
    if len(given) != 1:
        raise click.UsageError("give exactly one input: --masks and --margins, --npz FILE, or --folder DIR"
                               + (f" (got {', '.join(given)})" if given else ""))
    if (masks_path or margins_path) and not (masks_path and margins_path):
        raise click.UsageError("--masks and --margins go together")
    if completed_path and not masks_path:
        raise click.UsageError("--completed goes with --masks/--margins (an .npz or folder carries its own)")
    if masks_path:
        from dmtoolkit.store_import import ImportArrays

        arrays = ImportArrays(masks=read_npy(masks_path, "masks"), margins=read_npy(margins_path, "margins"),
                              completed=read_npy(completed_path, "completed") if completed_path else None,
                              sources={"masks": masks_path, "margins": margins_path})
        if completed_path:
            arrays.sources["completed"] = completed_path
    else:
        arrays = read_npz(npz_path) if npz_path else read_folder(folder_path)
    for option, value, attribute in (("--unit-names", names_path, "unit_names"),
                                     ("--target-labels", labels_path, "target_labels"),
                                     ("--source-margins", source_margins_path, "source_margins"),
                                     ("--source-test-margins", source_test_margins_path, "source_test_margins")):
        if value and getattr(arrays, attribute) is not None:
            raise click.UsageError(f"{option}: {npz_path} already holds {attribute}; give one or the other")
    if names_path:
        arrays.unit_names, arrays.sources["unit_names"] = read_unit_names(names_path), names_path
    if labels_path:
        arrays.target_labels, arrays.sources["target_labels"] = read_npy(labels_path, "target labels"), labels_path
    for path, attribute in ((source_margins_path, "source_margins"), (source_test_margins_path, "source_test_margins")):
        if path:
            setattr(arrays, attribute, read_npy(path, attribute.replace("_", " ")))
            arrays.sources[attribute] = path
    import_store(output, arrays, kind=kind, alpha=alpha, design=design, force=force)
    done = int(arrays.completed.astype(bool).sum()) if arrays.completed is not None else len(arrays.masks)
    checked = ("" if arrays.source_test_margins is None else
               f", stated-label margins against {arrays.source_test_margins.shape[1]} source test images")
    click.echo(f"{output}: imported {len(arrays.masks)} models ({done} completed), {arrays.masks.shape[1]} {kind} "
               f"units, {arrays.margins.shape[1]} targets{checked}; next: dmtoolkit influence {output} -o INFLUENCE.h5")


@store.command("merge")
@path_argument("inputs", "SHARD.h5...", nargs=-1, required=True)
@output_option("Merged store to write.")
@force_option("Overwrite the output if it exists.")
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


@cli.command()
@RUNS_ARGUMENT
@estimate_output("INFLUENCE.h5")
@DEVICE
@block_rows_option(estimate_options.BLOCK_ROWS, "Models read per block (stores larger than memory stream through).")
@HOLDOUT_OPTION
@seed_option("Seed of the held-out split.")
@estimator_option("Difference of means (the paper's), or least squares on all masks at once "
                  "(needs more models than units).")
@click.option("--errors/--no-errors", default=True, show_default=True,
              help="Standard errors per entry (--no-errors halves the arithmetic; no `stderr` dataset).")
@TARGETS_OPTION
@FORCE_OPTION
def influence(store_path: Path, out_path: Path, device: str | None, block_rows: int, holdout_frac: float, seed: int,
              estimator: str, errors: bool, targets: slice | None, force: bool) -> None:
    """Influence of every unit (class or example) on every target example (difference of means by default).

    \b
    Example:
      dmtoolkit influence stores/runs.h5 -o stores/influence.h5
    """
    from dmtoolkit.estimate.influence import UndefinedInfluenceWarning, compute_influence

    with warnings.catch_warnings():  # reported below, one line each
        warnings.simplefilter("ignore", UndefinedInfluenceWarning)
        model = compute_influence(store_path, out_path, device=device, block_rows=block_rows,
                                  holdout_frac=holdout_frac, seed=seed, force=force, errors=errors,
                                  estimator=estimator, targets=targets)
    for warning in model.warnings_:
        click.echo(f"warning: {warning}", err=True)
    click.echo(f"wrote {out_path}: influence {tuple(model.coef_.shape)}")


@cli.command()
@estimate_io("DATAMODELS.h5")
@click.option("--lambdas", type=click.IntRange(min=1), default=estimate_options.N_LAMBDAS, show_default=True,
              help="Steps of the λ path.")
@click.option("--eps", type=click.FloatRange(min=0, min_open=True, max=1, max_open=True), default=estimate_options.EPS,
              show_default=True, help="Smallest λ as a fraction of λ_max.")
@click.option("--val-frac", type=click.FloatRange(min=0, min_open=True, max=1, max_open=True),
              default=estimate_options.VAL_FRACTION,
              show_default=True, help="Fraction of the fitting models held out to choose λ.")
@HOLDOUT_OPTION
@seed_option("Seed of the test and validation splits.")
@block_rows_option(estimate_options.DATAMODELS_BLOCK_ROWS, "Models read per pass of the lasso's sufficient statistics.")
@FORCE_OPTION
def datamodels(store_path: Path, out_path: Path, device: str | None, targets: slice | None, lambdas: int, eps: float,
               val_frac: float, holdout_frac: float, seed: int, block_rows: int, force: bool) -> None:
    """Sparse linear datamodels (lasso path, λ chosen on held-out models) for every target example.

    \b
    Example:
      dmtoolkit datamodels stores/runs-examples.h5 -o stores/datamodels.h5 --targets 0:500
    """
    from dmtoolkit.estimate.datamodels import fit_datamodels

    model = fit_datamodels(store_path, out_path, device=device, targets=targets, n_lambdas=lambdas,
                           eps=eps, val_frac=val_frac, holdout_frac=holdout_frac, seed=seed, block_rows=block_rows,
                           force=force)
    click.echo(f"wrote {out_path}: weights {tuple(model.coef_.shape)}")


@cli.command()
@estimate_io("GRADIENT.h5")
@click.option("--models", type=click.IntRange(min=0), default=estimate_options.GRADIENT_MODELS, show_default=True,
              help="Fitting rows of the store to retrain (each with its own mask and seed) and differentiate.")
@click.option("--full-models", type=click.IntRange(min=0), default=0, show_default=True,
              help="Extra networks trained on the whole source pool.")
@click.option("--proj-dim", type=ProjDim(), default="auto", show_default=True,
              help="Random projection dimension of the gradients; 0: none (exact scores); auto: exact when the pool "
                   f"is small enough to fit in memory, else {estimate_options.GRADIENT_PROJ_DIM}.")
@click.option("--projection", type=click.Choice(estimate_options.GRADIENT_PROJECTIONS), default="gaussian",
              show_default=True, help="Entries of the random projection.")
@click.option("--proj-seed", type=int, default=0, show_default=True,
              help="Seed of the random projections (each network and checkpoint draws its own from it).")
@click.option("--shared-projection", is_flag=True,
              help="One projection for every network and checkpoint (how figures before 2026-12-07 were computed).")
@click.option("--kernel-over", type=click.Choice(estimate_options.GRADIENT_KERNEL_OVER), default="pool",
              show_default=True, help="The gradient kernel spans every pool example (TRAK's), or only the ones each "
                                      "network was trained on.")
@click.option("--q", "q_weights", type=click.Choice(estimate_options.GRADIENT_Q), default="mean", show_default=True,
              help="Weight the scores by q = 1 - p_y averaged over the networks (TRAK's Q; better LDS and standard "
                   "errors), or by each network's own (with --kernel-over trained: ranks flipped labels better).")
@click.option("--lambda", "lam", type=click.FloatRange(min=0, min_open=True), default=estimate_options.GRADIENT_LAMBDA,
              show_default=True, help="Kernel ridge λ, as a fraction of the mean eigenvalue of the gradient kernel.")
@click.option("--head", type=click.Choice(estimate_options.GRADIENT_HEADS), default="fixed", show_default=True,
              help="Hold the fitted transfer head fixed, or differentiate through the closed-form ridge head too.")
@click.option("--kernel", type=click.Choice(estimate_options.GRADIENT_KERNELS), default="trak", show_default=True,
              help="TRAK's unweighted gradient kernel, or weighted by q(1-q) (the one-output Gauss-Newton matrix).")
@click.option("--whole-groups/--alone", default=True, show_default=True,
              help="Retrain a row with the rows it was trained beside (reproduces its stored margins exactly; "
                   "models_per_batch x the training), or alone (faster; float differences can grow in long training).")
@click.option("--checkpoints", type=Checkpoints(), default="1", show_default=True,
              help="Score each built-in network after this many evenly spaced epochs (3 of 30: 10,20,30) or after "
                   "the given epochs (10,20,30), averaging the scores; 1: the final weights only.")
@HOLDOUT_OPTION
@seed_option("Seed of the held-out split and of the rows drawn.")
@FORCE_OPTION
def gradient(store_path: Path, out_path: Path, device: str | None, targets: slice | None, models: int, full_models: int,
             proj_dim: int | None, projection: str, proj_seed: int, shared_projection: bool, kernel_over: str,
             q_weights: str, lam: float, head: str, kernel: str, whole_groups: bool,
             checkpoints: int | tuple[int, ...], holdout_frac: float, seed: int, force: bool) -> None:
    """Gradient (TRAK-style) influence of every source example through the transfer (example-level stores).

    Retrains a few of the store's fitting rows (and optionally full-pool networks) through the recipe's own
    training code, and scores each source example by per-example gradients and a kernel (exact on pools small
    enough, else randomly projected). With two or
    more networks the estimate has standard errors (spread across networks), so leakage and mislabels flag
    from it. Each finished network is saved in OUT.partial/; rerunning the same command after an interruption
    continues from there (a rerun with other settings is refused); the folder is removed once OUT is written.
    A store made by your own trainer is scored when its module also defines gradient_networks(job)
    (docs/trainers.md).

    \b
    Example:
      dmtoolkit gradient stores/runs-examples.h5 -o stores/gradient.h5 --models 4 --checkpoints 3
      dmtoolkit evaluate stores/runs-examples.h5 --estimate stores/gradient.h5
    """
    from dmtoolkit.estimate.gradient import fit_gradient

    model = fit_gradient(store_path, out_path, models=models, full_models=full_models, proj_dim=proj_dim,
                         projection=projection, proj_seed=proj_seed, lam=lam, head=head, kernel=kernel,
                         shared_projection=shared_projection, kernel_over=kernel_over, q=q_weights,
                         whole_groups=whole_groups, checkpoints=checkpoints, device=device,
                         targets=targets, holdout_frac=holdout_frac, seed=seed, force=force,
                         progress=lambda message: click.echo(message, err=True))
    click.echo(f"wrote {out_path}: scores {tuple(model.coef_.shape)} from {len(model.records_)} networks")


@cli.command()
@estimate_io("REPLAY.h5")
@click.option("--point", default="centre", show_default=True,
              help="Linearisation point: pool (every weight 1), centre (every weight alpha) or row:N (row N's mask).")
@click.option("--mode", type=click.Choice(estimate_options.REPLAY_MODES), default="auto", show_default=True,
              help="Reverse mode (one adjoint per target) or forward mode (one tangent per source example); "
                   "auto takes the fewer.")
@click.option("--double", is_flag=True, help="Replay in float64 (about twice the time; float32 otherwise).")
@click.option("--chunk", type=click.IntRange(min=1), default=estimate_options.REPLAY_TARGET_CHUNK, show_default=True,
              help="Targets (reverse) or source examples (forward) sharing one sweep (memory grows with it).")
@click.option("--networks", type=click.IntRange(min=1), default=1, show_default=True,
              help="Replay this many networks (the first fitting rows' training seeds) and average their derivatives; "
                   "for stores trained from several seeds (randomness per-model).")
@HOLDOUT_OPTION
@seed_option("Seed of the held-out split.")
@FORCE_OPTION
def replay(store_path: Path, out_path: Path, device: str | None, targets: slice | None, point: str, mode: str, double: bool,
           chunk: int, networks: int, holdout_frac: float, seed: int, force: bool) -> None:
    """Exact derivative of every transferred margin w.r.t. every source example's weight (example-level stores).

    Replays the built-in source training with per-example loss weights, step by step, through feature
    extraction and the closed-form ridge head, and differentiates the whole pipeline (reverse or forward mode). Needs a
    store made by the built-in trainer; deterministic only with `randomness: shared`. See docs/gradient.md.

    \b
    Example:
      dmtoolkit replay stores/runs-examples.h5 -o stores/replay.h5 --point centre --targets 0:64
      dmtoolkit evaluate stores/runs-examples.h5 --estimate stores/replay.h5
    """
    from dmtoolkit.estimate.replay import fit_replay

    model = fit_replay(store_path, out_path, point=point, mode=mode, double=double, chunk=chunk, networks=networks,
                       device=device, targets=targets, holdout_frac=holdout_frac, seed=seed, force=force,
                       progress=lambda message: click.echo(message, err=True))
    for warning in model.warnings_:
        click.echo(f"warning: {warning}", err=True)
    import math

    train = "" if math.isnan(model.train_cpu_seconds_) else \
        f"; one training {model.train_cpu_seconds_:.1f} CPU-s"  # NaN in forward mode (no plain training is run)
    averaged = f", mean of {networks} networks" if networks > 1 else ""
    click.echo(f"wrote {out_path}: derivatives {tuple(model.coef_.shape)} at w0 = {point}{averaged}, {model.mode_} mode "
               f"({model.cpu_seconds_ / 60:.1f} CPU-minutes{train})")


@cli.command()
@RUNS_ARGUMENT
@click.option("--estimate", "estimate_path", required=True, type=FILE,
              help="ESTIMATE.h5 made from RUNS.h5 by `dmtoolkit influence`, `datamodels`, `gradient` or `replay`.")
@JSON_OPTION
def evaluate(store_path: Path, estimate_path: Path, as_json: bool) -> None:
    """LDS: per target example, Spearman correlation of predicted and true margins on held-out test models.

    Prints a verdict first: no better than chance (mean <= 0 or its interval reaching 0), weak, moderate or
    useful; below useful, the estimator is refitted on half its fitting models to see how LDS grows in this
    store and how many models a rough extrapolation needs (or that the store cannot tell).

    \b
    Every estimate predicts f(S) = intercept + sum_k coef_k * 1[k in S].
    Example:
      dmtoolkit evaluate stores/runs.h5 --estimate stores/influence.h5 --json
    """
    from dmtoolkit.estimate.lds import evaluate as lds
    from dmtoolkit.report.text import format_lds

    result = lds(store_path, estimate_path)
    _show(result, format_lds, as_json)


@cli.command()
@STORE_ARGUMENT
@path_argument("other_path", "[OTHER.h5]", required=False)
@estimator_option("Influence estimator whose answers are compared.")
@JSON_OPTION
def reliability(store_path: Path, other_path: Path | None, estimator: str, as_json: bool) -> None:
    """How reproducible a store's answers are: the ranking of its source classes (or, for an example-level
    store, examples) by mean influence and the class (example) x target-class influences, each with a verdict.

    Split-half within each store (halves keep antithetic pairs and orthogonal blocks whole), taken to the
    full store by Spearman-Brown; with OTHER.h5, the agreement of the two stores, read as the reliability of
    one run of sqrt(m1*m2) models. Each with the models one run needs for 0.8 and 0.9. Two stores with the
    same mask seed or training seed are not independent runs: a warning says so.

    \b
    Example:
      dmtoolkit reliability stores/runs.h5
      dmtoolkit reliability stores/runs-seed0.h5 stores/runs-seed1.h5 --json
    """
    from dmtoolkit.analyze.reliability import reliability_report
    from dmtoolkit.report.text import format_reliability

    result = reliability_report(store_path, other_path, estimator=estimator)
    for warning in result.warnings:
        click.echo(f"warning: {warning}", err=True)
    _show(result, format_reliability, as_json)


@cli.group()
def data() -> None:
    """Built-in datasets and their cache."""


@data.command("list")
@click.argument("dataset", required=False)
def data_list(dataset: str | None) -> None:
    """Names usable as `dataset:` in a recipe; with DATASET, its class names (for `classes:`)."""
    from dmtoolkit.data import available_datasets, load_dataset

    if dataset is None:
        for name in available_datasets():
            click.echo(name)
        return
    click.echo(" ".join(load_dataset(dataset, "train").class_names))


@data.command("prepare")
@force_option("Rebuild caches that exist.")
def data_prepare(force: bool) -> None:
    """Build the caches of the built-in datasets (glyph rendering); run once at set-up."""
    from dmtoolkit.data import prepare_all

    for path in prepare_all(force=force):
        click.echo(f"ready: {path}")


@data.command("write-beton")
@click.argument("dataset")
@path_argument("out", "OUT.beton")
@click.option("--split", type=click.Choice(["train", "test"]), default="train", show_default=True)
@click.option("--image-field", type=click.Choice(["ndarray", "rgb-raw", "rgb-jpg"]), default="ndarray",
              show_default=True, help="ndarray: exact uint8, any channels; rgb-raw: exact RGB; rgb-jpg: lossy, small.")
@force_option("Overwrite an existing beton.")
def data_write_beton(dataset: str, out: Path, split: str, image_field: str, force: bool) -> None:
    """Write a dataset (built-in name or imagefolder:PATH) to an ffcv beton (image, label, index).

    \b
    Example:
      dmtoolkit data write-beton glyphs stores/glyphs-train.beton --split train
    A sidecar OUT.beton.json keeps class names and example ids. Name the betons in a recipe's
    source/target as beton_train and beton_test. Needs pip install 'dmtoolkit[ffcv]'.
    """
    from dmtoolkit.atomic import check_output
    from dmtoolkit.data import load_dataset
    from dmtoolkit.data.beton import write_beton

    check_output(out, force=force)
    ds = load_dataset(dataset, split)
    write_beton(ds, out, image_field=image_field, force=force)
    click.echo(f"wrote {out}: {len(ds)} {split} images {'x'.join(map(str, ds.images.shape[1:]))}, "
               f"{len(ds.class_names)} classes ({image_field})")


@cli.command()
@click.option("--quick", "scale", flag_value="quick", help="A tiny run for smoke tests (about two minutes).")
@click.option("--full", "scale", flag_value="full", help="The recipes' own scale, the one docs/signal.md measures (about 25 minutes, estimated).")
@click.option("--out", type=FOLDER, default=Path("stores/demo"),
              show_default=True, help="Folder for the demo's stores, estimates and report.")
@workers_option("Worker processes (1 thread each).")
@DEVICE
@json_option("All figures as JSON on stdout.")
def demo(scale: str | None, out: Path, workers: int, device: str | None, as_json: bool) -> None:
    """The whole pipeline on built-in data: glyphs -> MNIST, class- and example-level, estimates, report.

    \b
    Example:
      dmtoolkit demo --quick --out /tmp/demo
    Rerunning resumes the stores; estimates and the report are recomputed.
    """
    from dmtoolkit.demo import run_demo
    from dmtoolkit.report.text import format_demo

    summary = run_demo(out, scale=scale or "default", workers=workers, device=device, progress=_progress)
    _show(summary, format_demo, as_json)


# --- analyses and report (dmtoolkit.analyze, dmtoolkit.report) --------------------------------------

def _analysis_inputs(estimate_path: Path, store_path: Path | None) -> tuple[Path, ...]:
    """An analysis's input files for the output guard: the estimate and its run store (given, or recorded)."""
    if store_path is None:
        from dmtoolkit.estimate.files import recorded_store

        store_path = recorded_store(estimate_path)
    return (estimate_path,) if store_path is None else (estimate_path, store_path)


def _check_outputs(*outputs: Path | None, force: bool, inputs: tuple[Path, ...]) -> None:
    """Every output through the guard before the work; two outputs may not be one file either."""
    from dmtoolkit.atomic import check_output

    given = [out for out in outputs if out is not None]
    for k, out in enumerate(given):
        check_output(out, force=force, inputs=inputs)
        for other in given[k + 1:]:
            if os.path.realpath(out) == os.path.realpath(other):
                raise UserError(f"{out}: given for two outputs of this command; choose a path for each")


def _progress(message: str) -> None:
    """Progress of long analyses: one line on stderr."""
    click.echo(message, err=True)


def _echo_text(text: str) -> None:
    """A formatted result on stdout (nothing at all when it is empty, as before)."""
    if text:
        click.echo(text)


def _show(result: Any, format_text: Callable[[Any], str], as_json: bool, *, wrote: Path | None = None) -> None:
    """A result on stdout: its JSON with --json, else its text and then, on stderr, which file was written."""
    if as_json:
        _echo_json(result.to_json())
        return
    _echo_text(format_text(result))
    if wrote:
        click.echo(f"wrote {wrote}", err=True)


def _write_png(png: Path | None, figure: str, result: Any, *, force: bool, inputs: tuple[Path, ...]) -> None:
    """--png: `figure` (a function of dmtoolkit.report.figures, imported only when a PNG is asked for) of
    `result`, written through the output guard."""
    if png is None:
        return
    from dmtoolkit.atomic import write_bytes_atomic
    from dmtoolkit.report import figures

    write_bytes_atomic(png, getattr(figures, figure)(result), force=force, inputs=inputs)


@cli.command()
@ESTIMATE_FILE
@top_option(analyze_options.RANK_TOP, "How many classes to list each way.")
@click.option("--target-class", help="Average over the target examples of this class only (e.g. 3).")
@LEVEL_OPTION
@STORE_OPTION
@JSON_OPTION
@PNG_OPTION
@FORCE_OPTION
def rank(estimate_path: Path, top: int, target_class: str | None, level: float, store_path: Path | None,
         as_json: bool, png: Path | None, force: bool) -> None:
    """Rank source classes by mean influence over the target examples (most positive and most negative).

    Each mean has an interval (--level) whose standard error comes from refitting the estimator on the
    per-model mean margin over those targets (read from the run store), so correlation across targets counts.

    \b
    Example:
      dmtoolkit rank stores/influence.h5 --top 10 --png stores/rank.png
      dmtoolkit rank stores/influence.h5 --target-class 3 --json
    """
    from dmtoolkit.analyze import rank_classes
    from dmtoolkit.report.text import format_ranking

    inputs = _analysis_inputs(estimate_path, store_path)
    _check_outputs(png, force=force, inputs=inputs)
    result = rank_classes(estimate_path, top=top, target_class=target_class, level=level, store=store_path)
    _write_png(png, "rank_figure", result, force=force, inputs=inputs)
    _show(result, format_ranking, as_json, wrote=png)


@cli.command()
@ESTIMATE_FILE
@click.option("--k", "ks", type=IntList("k"), help="Numbers of classes to consider removing, e.g. 0,2,4,8 "
              "(default: 0 up to the share of classes the store's masks leave out).")
@click.option("--validation-fraction", type=UNIT_INTERVAL,
              default=analyze_options.RECOMMEND_VALIDATION_FRACTION, show_default=True,
              help="Share of the target examples k is chosen on; the rest are never read.")
@click.option("--split-seed", type=int, default=analyze_options.RECOMMEND_SPLIT_SEED, show_default=True,
              help="Seed of the validation/test split of the target examples.")
@fdr_option("False discovery rate of the test for harm a removed class must pass.")
@LEVEL_OPTION
@STORE_OPTION
@JSON_OPTION
def recommend(estimate_path: Path, ks: list[int] | None, validation_fraction: float, split_seed: int, fdr: float,
              level: float, store_path: Path | None, as_json: bool) -> None:
    """Propose source classes to remove: the k most negative classes on a validation part of the target data.

    For each k the linear predictor of the estimate gives the validation accuracy and the change of mean margin
    (with an interval) after removing the k classes with the most negative mean influence on the validation
    part. Only classes with evidence of harm (mean influence below zero, Benjamini–Hochberg at --fdr) may be
    removed; among those k the highest predicted accuracy is proposed (k = 0: remove nothing), ties decided by the
    mean-margin evidence. It says why, and how far to trust the prediction, with the `dmtoolkit counterfactual`
    command that retrains it; the test part is left untouched so the proposal can be verified that way.

    \b
    Example:
      dmtoolkit recommend stores/influence.h5
      dmtoolkit recommend stores/influence.h5 --k 0,2,4,8 --json
    """
    from dmtoolkit.analyze.recommend import recommend_removal
    from dmtoolkit.report.text import format_recommendation

    result = recommend_removal(estimate_path, ks=ks,
                               validation_fraction=validation_fraction, split_seed=split_seed, level=level,
                               fdr=fdr, store=store_path)
    _show(result, format_recommendation, as_json)


@cli.command()
@ESTIMATE_FILE
@click.option("--class", "class_name", required=True, help="Source class name (as in `dmtoolkit rank`).")
@click.option("-n", type=click.IntRange(min=1), default=analyze_options.SUBPOP_SIZE, show_default=True,
              help="How many target images.")
@LEVEL_OPTION
@STORE_OPTION
@JSON_OPTION
@PNG_OPTION
@FORCE_OPTION
def subpop(estimate_path: Path, class_name: str, n: int, level: float, store_path: Path | None, as_json: bool,
           png: Path | None, force: bool) -> None:
    """Target images most positively influenced by one source class (an image grid with --png).

    \b
    Example:
      dmtoolkit subpop stores/influence.h5 --class 3 -n 16 --png stores/subpop-3.png
    """
    from dmtoolkit.analyze import subpopulation
    from dmtoolkit.report.text import format_subpopulation

    inputs = _analysis_inputs(estimate_path, store_path)
    _check_outputs(png, force=force, inputs=inputs)
    result = subpopulation(estimate_path, class_name, n=n, store=store_path, with_images=png is not None, level=level)
    _write_png(png, "subpop_figure", result, force=force, inputs=inputs)
    _show(result, format_subpopulation, as_json, wrote=png)


@cli.command()
@ESTIMATE_FILE
@click.option("--target", type=click.IntRange(min=0), required=True, help="Target test example index.")
@top_option(analyze_options.EXPLAIN_TOP, "Classes to list each way.")
@click.option("--verify", type=click.IntRange(min=1), help="Retrain R models without the most negative class and R with it.")
@LEVEL_OPTION
@fdr_option("False discovery rate at which a listed class counts as really negative/positive.")
@STORE_OPTION
@JSON_OPTION
@DEVICE
@TIMEOUT_OPTION
def explain(estimate_path: Path, target: int, top: int, verify: int | None, level: float, fdr: float,
            store_path: Path | None, as_json: bool, device: str | None, timeout: float | None) -> None:
    """Why target J is (mis)classified: its labels and its most negative / positive source classes.

    Each listed class has an interval (--level) and a one-sided p-value (influence < 0 for the most negative,
    > 0 for the most positive) with its Benjamini–Hochberg q over this target's classes; the first line of each
    says whether that class is negative (positive) at --fdr or not distinguishable from 0.

    \b
    Example:
      dmtoolkit explain stores/influence.h5 --target 17
      dmtoolkit explain stores/influence.h5 --target 17 --verify 5
    """
    from dmtoolkit.analyze import explain_target, verify_explanation
    from dmtoolkit.report.text import format_explanation

    if verify:
        result = verify_explanation(estimate_path, target, verify, store=store_path, device=device,
                                    progress=_progress, level=level, fdr=fdr,
                                    executor=_executor_factory("local", 1, device, None, timeout))
    else:
        result = explain_target(estimate_path, target, top=top, store=store_path, level=level, fdr=fdr)
    _show(result, lambda r: format_explanation(r, top=top), as_json)


@cli.command("counterfactual")
@RECIPE_ARGUMENT
@click.option("--influence", "influence_path", required=True, type=FILE,
              help="Class-level INFLUENCE.h5 giving the removal order.")
@click.option("--order", type=click.Choice(analyze_options.ORDERS), default=analyze_options.ORDERS[0], show_default=True,
              help="Remove the most negative (bottom), most positive (top) or random classes.")
@click.option("--k", "ks", type=IntList("k"), default=analyze_options.COUNTERFACTUAL_KS, show_default=True,
              help="Comma-separated numbers of classes to remove.")
@click.option("--repeats", type=click.IntRange(min=1), default=analyze_options.COUNTERFACTUAL_REPEATS, show_default=True,
              help="Retrainings per k.")
@output_option("OUT.h5")
@PNG_OPTION
@force_option("Overwrite OUT.h5.")
@JSON_OPTION
@DEVICE
@workers_option("Worker processes per retraining (as `dmtoolkit train`).", default=1)
@executor_options("Where the retrained models are computed (as `dmtoolkit train`).",
                  "Ray cluster to join with --executor ray.")
@TIMEOUT_OPTION
def counterfactual_cmd(recipe_path: Path, influence_path: Path, order: str, ks: list[int], repeats: int, output: Path,
                       png: Path | None, force: bool, as_json: bool, device: str | None, workers: int, executor: str,
                       address: str | None, timeout: float | None) -> None:
    """Retrain without the k most negative / positive / random classes; target accuracy per k.

    \b
    Example:
      dmtoolkit counterfactual recipes/glyphs-to-mnist.yaml --influence stores/influence.h5 \\
          --order bottom --k 0,5,10,20 --repeats 3 -o stores/cf-bottom.h5 --png stores/cf-bottom.png
    """
    from dmtoolkit.analyze import counterfactual
    from dmtoolkit.recipe import load_recipe
    from dmtoolkit.report.text import format_counterfactual

    make = _executor_factory(executor, workers, device, address, timeout)
    inputs = (recipe_path, *_analysis_inputs(influence_path, None))
    _check_outputs(output, png, force=force, inputs=inputs)
    result = counterfactual(load_recipe(recipe_path), influence_path, output, order=order, ks=ks, repeats=repeats,
                            force=force, device=device, progress=_progress, executor=make)
    _write_png(png, "counterfactual_figure", result.curve, force=force, inputs=(*inputs, output))
    _show(result, format_counterfactual, as_json, wrote=output)


@cli.command()
@ANY_ESTIMATE_FILE
@DETECT_FDR_OPTION
@click.option("--near-duplicate", type=click.FloatRange(-1, 1), default=analyze_options.NEAR_DUPLICATE,
              show_default=True, help="Pixel score from which a pair counts as a copy.")
@top_option(analyze_options.DETECT_TOP, "Pairs listed for browsing beside the flagged ones.")
@click.option("--ranking", type=click.Choice(analyze_options.LEAK_RANKINGS), default=analyze_options.LEAK_RANKINGS[0],
              show_default=True, help="Browsing order: influence standardised within its target and its source "
              "(two-way-z), within its target only, or raw influence.")
@click.option("--all-pairs", is_flag=True, help="Browse several pairs per source example (default: its best one).")
@STORE_OPTION
@JSON_OPTION
@PNG_OPTION
@click.option("--html", "html_out", type=FILE,
              help="Also write a leakage page: flagged pairs side by side with their evidence and the ids to remove.")
@click.option("--csv", "csv_out", type=FILE,
              help="Also write every pair with evidence as CSV.")
@click.option("--features/--no-features", default=True, show_default=True,
              help="Also score each pair's feature similarity in one model trained on the whole pool (seconds).")
@DEVICE
@FORCE_OPTION
def leakage(estimate_path: Path, fdr: float, near_duplicate: float, top: int, ranking: str, all_pairs: bool,
            store_path: Path | None, as_json: bool, png: Path | None, html_out: Path | None, csv_out: Path | None,
            features: bool, device: str | None, force: bool) -> None:
    """Source examples that copy a target test image: by their pixels, and by their influence on it.

    First, without models: every source example is compared with every target test image; identical pixels
    (exact copy) or a pixel score >= --near-duplicate (near copy, a shift-tolerant correlation) is
    contamination whatever the models say, listed first by source id and target index, and among the ids to
    remove. Then the models: each (source, target) pair gets a one-sided p-value of influence > 0 from the
    estimate's standard errors (valid for its mask design); Benjamini–Hochberg at --fdr keeps those with
    evidence, within two families: the pixel copies (so a few networks can confirm them) and every other pair. A copy with evidence is one the models learned from (flagged); significant pairs that do not look
    the same are look-alikes or altered copies (strong influence only). Prints "no evidence of leakage at FDR
    5%" only when there is neither a copy nor a significant pair. Datamodels estimates carry no standard
    errors: fit `dmtoolkit influence` for the evidence. With planted ground truth in the run store, also prints
    precision and recall of the flagged set and, beside it, of influence alone and pixels alone.

    \b
    Example:
      dmtoolkit leakage stores/influence.h5 --html stores/leakage.html --csv stores/leakage.csv
    """
    from dmtoolkit.analyze import detect_leakage
    from dmtoolkit.report.text import format_leakage

    inputs = _analysis_inputs(estimate_path, store_path)
    _check_outputs(png, html_out, csv_out, force=force, inputs=inputs)
    result = detect_leakage(estimate_path, fdr=fdr, top=top, store=store_path, ranking=ranking, all_pairs=all_pairs,
                            near_duplicate=near_duplicate, features=features, device=device)
    _write_png(png, "leakage_figure", result, force=force, inputs=inputs)
    if html_out:
        from dmtoolkit.report.leakage_page import write_leakage_html
        write_leakage_html(result, html_out, force=force, inputs=inputs)
    if csv_out:
        from dmtoolkit.report.leakage_page import write_leakage_csv
        write_leakage_csv(result, csv_out, force=force, inputs=inputs)
    _show(result, format_leakage, as_json)


@cli.command()
@ANY_ESTIMATE_FILE
@DETECT_FDR_OPTION
@top_option(analyze_options.DETECT_TOP, "Candidates listed (flagged or not).")
@click.option("--by", type=click.Choice(analyze_options.MISLABEL_SCORES), default=analyze_options.MISLABEL_SCORES[0],
              show_default=True,
              help="Browsing score: a source example's most negative influence on any target, or its mean.")
@STORE_OPTION
@JSON_OPTION
def mislabels(estimate_path: Path, fdr: float, top: int, by: str, store_path: Path | None, as_json: bool) -> None:
    """Source examples with evidence that they are mislabelled: models that never saw them reject their label.

    Each model of an example-level store trained on a subset of the pool; the trainer records every model's
    stated-label margin on the whole pool and the source test set (the built-in trainer always; a user's
    trainer may, docs/trainers.md), and so do a gradient estimate's own networks. An image is flagged when
    the models that never saw it disagree with its label more than they disagree with the held-out source test
    images (conformal p-values, Benjamini–Hochberg at --fdr; the larger that test set, the more it can flag,
    and the output says when its size is what stops it); harm is shown beside it. Without those margins (older
    stores, trainers that give none) an image gets a p-value for "hurts the source accuracy and some target"
    (the larger of the two one-sided p-values, from the estimate's design-valid standard errors), and
    Benjamini–Hochberg at --fdr flags. Prints "no evidence of mislabelled source examples at FDR 5%"
    when none passes. With planted label flips in the run store, also prints precision and recall of the
    flagged set and the ranking's AUC.

    \b
    Example:
      dmtoolkit mislabels stores/influence.h5
      dmtoolkit mislabels stores/gradient.h5
    """
    from dmtoolkit.analyze import detect_mislabels
    from dmtoolkit.report.text import format_mislabels

    result = detect_mislabels(estimate_path, fdr=fdr, top=top, store=store_path, by=by)
    _show(result, format_mislabels, as_json)


@cli.command()
@click.argument("directory", metavar="DIR", type=FOLDER)
@output_option("Folder for index.html and report.json.", type=FOLDER)
@top_option(10, "Rows per table.")
@force_option("Overwrite an existing index.html and report.json in the folder.")
def report(directory: Path, output: Path, top: int, force: bool) -> None:
    """One self-contained HTML page from the run stores, influences and datamodels in DIR.

    \b
    Example:
      dmtoolkit report stores/demo -o stores/demo/report
    """
    from dmtoolkit.report import build_report

    click.echo(str(build_report(directory, output, top=top, force=force)))


def main() -> None:
    """Console entry point (`dmtoolkit`)."""
    cli()


if __name__ == "__main__":
    main()
