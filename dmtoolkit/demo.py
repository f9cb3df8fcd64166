"""`dmtoolkit demo`: the whole pipeline on the built-in data, sized to the machine's time budget.

Class-level and example-level stores (glyphs -> MNIST), both estimators, LDS, digit ranks,
counterfactual retraining, leakage and mislabel detection, and the HTML report. Stores are resumed
when rerun; derived files (estimates, counterfactuals, report) are recomputed each time.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from dmtoolkit.analyze import class_positions, counterfactual, detect_leakage, detect_mislabels, open_estimate
from dmtoolkit.analyze.results import DemoSummary
from dmtoolkit.estimate.datamodels import fit_datamodels
from dmtoolkit.estimate.influence import compute_influence
from dmtoolkit.estimate.lds import evaluate
from dmtoolkit.recipe import RECIPES_DIR
from dmtoolkit.recipe_overrides import recipe_with
from dmtoolkit.report import build_report
from dmtoolkit.run.api import ensure_trained
from dmtoolkit.store import RunStore

RECIPES = RECIPES_DIR


@dataclass(frozen=True)
class DemoScale:
    """How much the demo trains: models per store, counterfactual grid and repeats."""

    class_models: int
    example_models: int
    ks: tuple[int, ...]
    repeats: int
    lambdas: int
    # None: the recipe's mask design; "random" where the class store is smaller than two orthogonal blocks
    # (128 models each), below which difference of means has no design-valid standard errors
    class_design: str | None = None


SCALES = {
    "quick": DemoScale(class_models=16, example_models=16, ks=(0, 5), repeats=1, lambdas=10,
                       class_design="random"),
    # 7 minutes on 2 cores (2026-12-04); 768 class models are 6 orthogonal blocks, ≈ 0.89 cross-run agreement
    # by Spearman–Brown from the 256-model fresh pair (0.73); example level at a quarter of its recipe
    "default": DemoScale(class_models=768, example_models=512, ks=(0, 5, 10, 20), repeats=3, lambdas=50),
    # the recipes' own scale, which docs/signal.md measures (~25 minutes on 2 cores, summed from its parts)
    "full": DemoScale(class_models=1024, example_models=2048, ks=(0, 5, 10, 20), repeats=5, lambdas=100),
}


def _silent(message: str) -> None:
    pass


def _demo_store(path: Path, recipe_name: str, models: int, workers: int, device: str | None,
                    say: Callable[[str], None], design: str | None = None) -> Path:
    """The store of the shipped recipe at the demo's scale, created or resumed (`ensure_trained`), and trained."""
    recipe = recipe_with(RECIPES / recipe_name, {} if design is None else {"subsets.design": design},
                         origin="demo scale", models=models)
    return ensure_trained(path, recipe, workers=workers, device=device, executor="local", say=say).path


def run_demo(out: Path, *, scale: str = "default", workers: int = 2, device: str | None = None,
             progress: Callable[[str], None] | None = None) -> DemoSummary:
    """Run the pipeline into `out`; returns the figures the CLI prints (report path, LDS, detection).

    `progress(message)` hears each step ("demo: ..." lines) and the counterfactual's progress.
    """
    progress = progress or _silent

    def say(message: str) -> None:
        progress(f"demo: {message}")

    size = SCALES[scale]
    out.mkdir(parents=True, exist_ok=True)
    classes = _demo_store(out / "class-runs.h5", "glyphs-to-mnist.yaml", size.class_models, workers, device,
                              say, design=size.class_design)
    examples = _demo_store(out / "example-runs.h5", "glyphs-to-mnist-examples.yaml", size.example_models,
                               workers, device, say)
    say("estimating influences and datamodels")
    class_influence, example_influence = out / "class-influence.h5", out / "example-influence.h5"
    datamodels = out / "example-datamodels.h5"
    holdout = max(0.1, 4 / size.class_models)  # LDS needs at least 3 held-out test models
    compute_influence(classes, class_influence, device=device, holdout_frac=holdout, force=True)
    compute_influence(examples, example_influence, device=device, holdout_frac=holdout, force=True)
    fit_datamodels(examples, datamodels, device=device, n_lambdas=size.lambdas, holdout_frac=holdout,
                   val_frac=max(0.1, 4 / size.example_models), force=True)
    with RunStore(classes) as store:
        recipe, data = store.recipe, store.run_data()
    digits = [str(d) for d in range(10)]
    say("counterfactual retraining (most negative classes removed vs random classes removed)")
    retrained = {order: counterfactual(recipe, class_influence, out / f"counterfactual-{order}.h5", order=order,
                                       ks=size.ks, repeats=size.repeats, data=data, device=device, force=True,
                                       progress=progress)
                 for order in ("bottom", "random")}
    lds = {name: evaluate(store, estimate, curve=False).lds_mean for name, store, estimate in (  # the mean only
        ("class influence", classes, class_influence),
        ("example influence", examples, example_influence),
        ("example datamodels", examples, datamodels))}
    with open_estimate(class_influence) as opened:  # its store opened and hash-checked once for the ten ranks
        digit_ranks = {d: class_positions(opened, [d], target_class=d)[d] for d in digits}
    # detectors need standard errors (datamodels have none): the difference-of-means estimate carries them
    with open_estimate(example_influence) as opened:
        leakage, mislabels = detect_leakage(opened).planted, detect_mislabels(opened).planted
    return DemoSummary(out=str(out), scale=scale, class_models=size.class_models, example_models=size.example_models,
                       lds=lds, digit_ranks=digit_ranks, counterfactual=retrained, leakage=leakage,
                       mislabels=mislabels, report=str(build_report(out, out / "report", force=True)))
