"""Store capabilities (dmtoolkit/capabilities.py): every command that needs what a store lacks is refused in the
capability's one line (exit 1, no traceback, nothing written), and no module outside the capability's home
raises on a store fact by hand.

Stores lacking each capability: an imported store (no recipe, no images) and a store made by a user's trainer
that brings its own data (no images, no built-in networks). Their rows are written directly (real `init` and
`store import` files; no training), so each case runs in well under a second.
"""

from __future__ import annotations

import ast
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import yaml
from click.testing import CliRunner

from dmtoolkit.capabilities import Capability
from dmtoolkit.cli import cli
from dmtoolkit.errors import StoreError
from dmtoolkit.recipe import parse_recipe_dict
from dmtoolkit.store import RunStore
from dmtoolkit.store_import import ImportArrays, import_store

PACKAGE = Path(__file__).resolve().parent.parent / "dmtoolkit"
RECIPES = Path(__file__).resolve().parent.parent / "recipes"

# The one message per capability, written out here (not taken from the module) so a change of wording is seen.
NO_RECIPE = ("{store}: an imported store has no recipe (made by `dmtoolkit store import`), which {command} needs; "
             "influence, datamodels and the analyses of masks and margins work on it; to train, make a store from a "
             "recipe with `dmtoolkit init`")
NO_IMAGES = ("{store}: this store has no images ({why}), which {command} needs; the analyses of masks and margins "
             "(rank, subpop without --png, mislabels, explain) work on it")
IMPORTED = "`dmtoolkit store import` brings masks and margins only"
OWN_DATA = "its recipe's trainer brings its own data"
NO_BUILTIN = ("{store}: this store's rows come from trainer captrainer:train, not the built-in networks (their "
              "training and features), which {command} needs; `dmtoolkit gradient` (--head fixed, --checkpoints 1) "
              "scores a trainer's networks through its module's gradient_networks(job), and influence and "
              "datamodels work on any store")

M, P, T = 16, 6, 5
TRAINER = textwrap.dedent('''
    import numpy as np

    def train(job):
        return job.mask.astype(float) @ np.ones((len(job.mask), job.num_targets))
''')


def run(folder: Path, *args: object) -> tuple[int, str]:
    """The real CLI in process; exit code and everything it printed (stdout and stderr)."""
    result = CliRunner().invoke(cli, [str(a) for a in args])
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result.exit_code, result.output


def refused(folder: Path, args: list[object], message: str, created: str | None = None) -> None:
    """`args` exits 1 with exactly `error: message` on one line, no traceback, and writes nothing."""
    before = sorted(p.name for p in folder.iterdir())
    code, output = run(folder, *args)
    assert code == 1, output
    assert output == f"error: {message}\n"
    assert "Traceback" not in output
    assert sorted(p.name for p in folder.iterdir() if p.suffix != ".lock") == [n for n in before if
                                                                             not n.endswith(".lock")]


def _arrays(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    masks = rng.random((M, P)) < 0.5
    return masks, (masks @ rng.normal(size=(P, T)) + rng.normal(size=(M, T))).astype(np.float32)


@pytest.fixture()
def imported(tmp_path: Path) -> dict[str, Path]:
    """A class-level and an example-level imported store, and an influence estimate of each."""
    masks, margins = _arrays()
    paths = {}
    for kind in ("class", "example"):
        store = tmp_path / f"imported-{kind}.h5"
        import_store(store, ImportArrays(masks=masks, margins=margins, target_labels=np.arange(T) % 2,
                                         unit_names=[f"u{k}" for k in range(P)] if kind == "class" else None),
                     kind=kind)
        code, output = run(tmp_path, "influence", store, "-o", tmp_path / f"infl-{kind}.h5")
        assert code == 0, output
        paths[kind], paths[f"infl-{kind}"] = store, tmp_path / f"infl-{kind}.h5"
    return paths


@pytest.fixture()
def own_data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    """An example-level store made by a user's trainer that brings its own data, its rows written, and an
    influence estimate of it."""
    (tmp_path / "captrainer.py").write_text(TRAINER)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "captrainer", raising=False)
    recipe = tmp_path / "own.yaml"
    recipe.write_text(yaml.safe_dump({
        "name": "own-data-examples", "trainer": "captrainer:train",
        "subsets": {"kind": "example", "alpha": 0.5, "models": M, "seed": 1},
        "own_data": {"num_units": P, "target_labels": [0, 1, 1, 0, 1]},
    }))
    store = tmp_path / "own.h5"
    code, output = run(tmp_path, "init", recipe, store)
    assert code == 0, output
    _, margins = _arrays(1)
    with RunStore(store, writable=True) as s:
        for i in range(M):
            s.write_row(i, margins[i], seed=i, source_accuracy=0.5, target_accuracy=0.5, seconds=0.1)
    code, output = run(tmp_path, "influence", store, "-o", tmp_path / "infl.h5")
    assert code == 0, output
    return {"store": store, "infl": tmp_path / "infl.h5"}


def test_what_each_store_has(imported: dict[str, Path], own_data: dict[str, Path]) -> None:
    with RunStore(imported["class"]) as store:
        assert [store.has(c) for c in Capability] == [False, False, False]
    with RunStore(own_data["store"]) as store:
        assert [store.has(c) for c in Capability] == [True, False, False]
    own = parse_recipe_dict(yaml.safe_load((own_data["store"].parent / "own.yaml").read_text()))
    assert Capability.IMAGES.missing(own) == OWN_DATA
    assert Capability.BUILTIN_NETWORKS.missing(own) == "captrainer:train"
    builtin = parse_recipe_dict(yaml.safe_load((RECIPES / "glyphs-to-mnist.yaml").read_text()))
    assert [c.present(builtin) for c in Capability] == [True, True, True]


def test_no_recipe_refuses_every_command_that_trains(imported: dict[str, Path]) -> None:
    folder, store = imported["class"].parent, imported["class"]
    cases = {
        "train": ["train", store, "--quiet"],
        "gradient": ["gradient", store, "-o", folder / "g.h5"],
        "replay": ["replay", store, "-o", folder / "r.h5"],
        "counterfactual": ["counterfactual", RECIPES / "glyphs-to-mnist.yaml", "--influence",
                           imported["infl-class"], "-o", folder / "cf.h5"],
        "explain --verify": ["explain", imported["infl-class"], "--target", 0, "--verify", 1],
        "train --shard": ["train", store, "--shard", "0/2", "-o", folder / "shard.h5"],
        "store merge": ["store", "merge", store, imported["example"], "-o", folder / "merged.h5"],
    }
    for command, args in cases.items():
        refused(folder, args, NO_RECIPE.format(store=store, command=f"`dmtoolkit {command}`"))


def test_no_images_refuses_the_commands_that_show_pixels(imported: dict[str, Path],
                                                         own_data: dict[str, Path]) -> None:
    folder = imported["class"].parent
    refused(folder, ["subpop", imported["infl-class"], "--class", "u0", "--png", folder / "s.png"],
            NO_IMAGES.format(store=imported["class"], why=IMPORTED, command="`dmtoolkit subpop --png`"))
    refused(folder, ["leakage", imported["infl-example"]],
            NO_IMAGES.format(store=imported["example"], why=IMPORTED, command="`dmtoolkit leakage`"))
    refused(folder, ["leakage", own_data["infl"]],
            NO_IMAGES.format(store=own_data["store"], why=OWN_DATA, command="`dmtoolkit leakage`"))
    code, output = run(folder, "subpop", imported["infl-class"], "--class", "u0")  # no pixels asked: fine
    assert code == 0, output


def test_a_trainers_store_refuses_what_needs_the_builtin_networks(own_data: dict[str, Path]) -> None:
    folder, store = own_data["store"].parent, own_data["store"]
    cases = {
        "replay": ["replay", store, "-o", folder / "r.h5"],
        "gradient --head differentiated": ["gradient", store, "-o", folder / "g.h5", "--head", "differentiated"],
        "gradient --checkpoints": ["gradient", store, "-o", folder / "g.h5", "--checkpoints", "2"],
    }
    for command, args in cases.items():
        refused(folder, args, NO_BUILTIN.format(store=store, command=f"`dmtoolkit {command}`"))


def test_library_calls_read_the_same_line(imported: dict[str, Path], own_data: dict[str, Path]) -> None:
    """Without a command (a library call), the line names "this call"; the rest is the same."""
    with RunStore(imported["class"]) as store, pytest.raises(StoreError) as error:
        store.recipe  # noqa: B018
    assert str(error.value) == NO_RECIPE.format(store=imported["class"], command="this call")
    with RunStore(own_data["store"]) as store, pytest.raises(StoreError) as error:
        store.source_images([0])
    assert str(error.value) == NO_IMAGES.format(store=own_data["store"], why=OWN_DATA, command="this call")
    from dmtoolkit.analyze.features import feature_similarity

    with RunStore(own_data["store"]) as store, pytest.raises(StoreError) as error:
        feature_similarity(store)
    assert str(error.value) == NO_BUILTIN.format(store=own_data["store"], command="`dmtoolkit leakage --features`")


# --- no hand-written refusals on store facts outside the capability's home ----------------------------------
FACTS = {"imported", "has_images", "explicit_masks", "own_data", "trainer"}
HOME = {"capabilities.py"}
# recipe.py validates a recipe's own fields (a trainer with own_data, planting needs data) before any store
# exists: that is the recipe's schema, not a store capability
RECIPE_SCHEMA = {"recipe.py"}


def _facts_tested(test: ast.expr) -> set[str]:
    """The store facts an `if` test reads: `X.imported`, `X.has_images`, `X.explicit_masks`, `X.own_data`, and
    `recipe.trainer` / `X.recipe.trainer` (a store's `trainer` attribute is its name, not a capability)."""
    found = set()
    for node in ast.walk(test):
        if isinstance(node, ast.Attribute) and node.attr in FACTS:
            owner = node.value
            if node.attr == "trainer" and not (isinstance(owner, ast.Name) and owner.id == "recipe"
                                               or isinstance(owner, ast.Attribute) and owner.attr == "recipe"):
                continue
            found.add(node.attr)
    return found


def hand_written_refusals(source: str) -> list[tuple[int, str]]:
    """(line, fact) of every `raise` inside an `if`/`elif`/`else` (or conditional expression) branching on a
    store fact."""
    hits = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.If | ast.IfExp | ast.While) and (facts := _facts_tested(node.test)):
            branches = [*node.body, *node.orelse] if isinstance(node, ast.If | ast.While) else [node.body, node.orelse]
            for branch in branches:
                for inner in ast.walk(branch):
                    if isinstance(inner, ast.Raise):
                        hits.append((inner.lineno, ", ".join(sorted(facts))))
    return hits


def test_the_scan_finds_a_hand_written_refusal() -> None:
    source = textwrap.dedent('''
        def f(run, recipe):
            if run.imported:
                raise UserError("no recipe")
            if recipe.trainer is not None and x:
                for _ in y:
                    raise UserError("a trainer")
            if not run.has_images:
                pass
            else:
                raise ValueError("x")
            if store.trainer:
                raise ValueError("a name, not a capability")
            return run.recipe.trainer if run.explicit_masks else None
    ''')
    assert hand_written_refusals(source) == [(4, "imported"), (7, "trainer"), (11, "has_images")]


MODULES = sorted(p for p in PACKAGE.rglob("*.py") if p.name not in HOME | RECIPE_SCHEMA)


@pytest.mark.parametrize("path", MODULES, ids=[str(p.relative_to(PACKAGE)) for p in MODULES])
def test_no_module_refuses_a_store_fact_by_hand(path: Path) -> None:
    hits = hand_written_refusals(path.read_text())
    assert not hits, (f"{path.relative_to(PACKAGE)} raises on store facts at {hits}: refuse through "
                      "RunStore.require(Capability..., command) (dmtoolkit/capabilities.py) instead")


# --- one overwrite guard --------------------------------------------------------------------------------------
def test_the_overwrite_message_has_one_home() -> None:
    """"already exists; pass --force" lives in `atomic.already_exists`; every writer reaches it through
    `atomic.check_output` / `replacing`, none writes it by hand (package and benchmarks)."""
    roots = [PACKAGE, PACKAGE.parent / "benchmarks"]
    writers = [p for root in roots for p in sorted(root.rglob("*.py"))
               if p.name != "atomic.py" and any(text in p.read_text() for text in ("already exists", "pass --force",
                                                                                  "to overwrite"))]
    assert writers == []
