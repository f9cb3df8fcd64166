"""Training and transfer: margins are right, models in a batch are independent, reruns are identical."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dmtoolkit.masks import make_masks
from dmtoolkit.recipe import parse_recipe_dict
from dmtoolkit.train.fit import batch_indices, epoch_order, lr_factor, margins_from_logits, resolution_at, slot_batches
from dmtoolkit.train.job import RunContext, model_seed
from dmtoolkit.train.models import BatchedTinyCNN

from .synthetic import synthetic_data


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 4), st.integers(1, 12), st.integers(2, 7), st.integers(0, 10_000))
def test_margins_match_a_plain_loop(groups: int, n: int, classes: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(groups, n, classes)).astype(np.float32)
    labels = rng.integers(0, classes, n)
    got = margins_from_logits(torch.from_numpy(logits), torch.from_numpy(labels)).numpy()
    for g in range(groups):
        for j in range(n):
            others = np.delete(logits[g, j], labels[j])
            assert got[g, j] == pytest.approx(logits[g, j, labels[j]] - others.max(), abs=1e-6)
    assert ((got > 0) == (logits.argmax(-1) == labels)).all()


def test_batched_models_are_independent() -> None:
    """Model g's outputs and gradients depend only on its own inputs and parameters."""
    torch.manual_seed(0)
    net = BatchedTinyCNN(3, 1, 5, 16, 4, 8)
    net.init_from_seeds([1, 2, 3])
    x = torch.randn(3, 6, 1, 16, 16)
    y = net(x)
    x2 = x.clone()
    x2[1] += torch.randn_like(x2[1])  # change model 1's inputs only
    y2 = net(x2)
    torch.testing.assert_close(y[[0, 2]], y2[[0, 2]])
    assert not torch.allclose(y[1], y2[1])
    net.zero_grad()
    net(x)[0].sum().backward()
    conv = net.blocks[0].conv.weight.grad
    assert conv[4:].abs().sum() == 0 and conv[:4].abs().sum() > 0


def test_same_seed_same_initialisation() -> None:
    a, b = BatchedTinyCNN(2, 1, 5, 16, 4, 8), BatchedTinyCNN(2, 1, 5, 16, 4, 8)
    a.init_from_seeds([7, 7])
    b.init_from_seeds([7, 8])
    torch.testing.assert_close(a.hidden.weight[0], a.hidden.weight[1])
    torch.testing.assert_close(a.hidden.weight[0], b.hidden.weight[0])
    assert not torch.allclose(b.hidden.weight[0], b.hidden.weight[1])


def test_shared_data_order_is_consistent_across_subsets() -> None:
    """With one seed, examples two subsets share appear in the same relative order."""
    a, b = np.array([0, 2, 4, 5, 7, 9]), np.array([1, 2, 3, 5, 9])
    oa, ob = epoch_order(a, 10, seed=4, epoch=0), epoch_order(b, 10, seed=4, epoch=0)
    common = [i for i in oa if i in b]
    assert common == [i for i in ob if i in a]
    batches = batch_indices(a, 10, 4, batch_size=4, steps=5)
    assert batches.shape == (5, 4) and set(batches.ravel()) <= set(a)
    assert sorted(batches.ravel()[:6]) == sorted(a)  # first epoch covers the subset once


def test_triangular_schedule() -> None:
    factors = [lr_factor(s, 10, "triangular", 2) for s in range(10)]
    assert factors[2] == pytest.approx(1.0) and factors[0] < factors[1] < factors[2]
    assert all(x >= y for x, y in zip(factors[2:], factors[3:])) and factors[-1] > 0
    assert lr_factor(5, 10, "constant", 2) == 1.0


def _context(mode: str, randomness: str = "shared", kind: str = "class") -> RunContext:
    data = synthetic_data(6, 30, per_class=20, seed=1)
    recipe = parse_recipe_dict({
        "name": "t", "source": {"dataset": "s"}, "target": {"dataset": "t"},
        "subsets": {"kind": kind, "models": 4, "seed": 2},
        "model": {"width": 4, "hidden": 8},
        "training": {"epochs": 1, "batch_size": 32, "models_per_batch": 2, "randomness": randomness},
        "transfer": {"mode": mode, "epochs": 5},
    })
    units = 6 if kind == "class" else len(data.source_pool.labels)
    return RunContext(recipe, make_masks(2, 4, units, 0.5), data, "cpu")


@pytest.mark.parametrize("mode", ["fixed-feature", "full"])
def test_group_results_are_deterministic_and_well_formed(mode: str) -> None:
    context = _context(mode)
    first, again = context.compute_group(1), context.compute_group(1)
    assert [r.index for r in first] == [2, 3]
    for a, b in zip(first, again):
        assert a.margins.dtype == np.float32 and a.margins.shape == (30,)
        np.testing.assert_allclose(a.margins, b.margins, atol=1e-5)
        assert a.target_accuracy == pytest.approx(float((a.margins > 0).mean()))
        assert 0 <= a.source_accuracy <= 1 and a.seconds > 0


def test_randomness_modes_record_seeds() -> None:
    assert model_seed(0, 0, 1, "shared") == model_seed(0, 3, 5, "shared") != model_seed(1, 0, 1, "shared")
    assert model_seed(0, 0, 1, "per-model") != model_seed(0, 0, 2, "per-model") != model_seed(0, 1, 2, "per-model")
    results = _context("fixed-feature", "per-model", kind="example").compute_group(0)
    assert results[0].seed != results[1].seed


def test_pair_and_block_randomness_seed_antithetic_pairs() -> None:
    """per-pair: rows 2p and 2p + 1 share a seed, other pairs and other mask draws differ; seed-blocks: pair p
    gets seed p mod K, the same K seeds for every mask draw."""
    pair = [model_seed(0, 3, i, "per-pair") for i in range(8)]
    assert pair[0::2] == pair[1::2] and len(set(pair)) == 4
    assert model_seed(0, 4, 0, "per-pair") != pair[0] != model_seed(1, 3, 0, "per-pair")
    block = [model_seed(0, 3, i, "seed-blocks", 3) for i in range(12)]
    assert block[0::2] == block[1::2] and len(set(block)) == 3
    assert [block[2 * p] for p in range(6)] == [block[2 * (p % 3)] for p in range(6)]
    assert block == [model_seed(0, 9, i, "seed-blocks", 3) for i in range(12)] != [
        model_seed(1, 3, i, "seed-blocks", 3) for i in range(12)]
    with pytest.raises(ValueError, match="unknown training randomness 'sometimes'"):
        model_seed(0, 0, 0, "sometimes")


@pytest.mark.parametrize("randomness, blocks", [("per-pair", 4), ("seed-blocks", 2)])
def test_pair_and_block_randomness_reach_the_trained_rows(randomness: str, blocks: int) -> None:
    """The seeds a run records (and trains with) are model_seed's; the pair's two rows differ only by mask."""
    data = synthetic_data(6, 30, per_class=20, seed=1)
    recipe = parse_recipe_dict({
        "name": "t", "source": {"dataset": "s"}, "target": {"dataset": "t"},
        "subsets": {"kind": "class", "models": 8, "seed": 2, "antithetic": True},
        "model": {"width": 4, "hidden": 8},
        "training": {"epochs": 1, "batch_size": 32, "models_per_batch": 2, "randomness": randomness,
                     "seed_blocks": blocks},
        "transfer": {"mode": "fixed-feature", "epochs": 5},
    })
    context = RunContext(recipe, make_masks(2, 8, 6, 0.5, antithetic=True), data, "cpu")
    results = [r for g in range(4) for r in context.compute_group(g)]
    seeds = [r.seed for r in results]
    assert seeds == [model_seed(0, 2, i, randomness, blocks) for i in range(8)]
    assert seeds[0::2] == seeds[1::2] and len(set(seeds)) == (4 if randomness == "per-pair" else 2)


def test_class_subsets_select_the_kept_classes() -> None:
    context = _context("fixed-feature")
    for i in range(4):
        kept = np.flatnonzero(context.masks[i])
        labels = context.data.source_pool.labels[context.subset_examples(i)]
        assert set(labels) == set(kept)


def test_progressive_resizing_ramps_in_steps_of_32() -> None:
    sizes = [resolution_at(s, 16, 160, 192) for s in range(16)]
    assert sizes[0] == 160 and sizes[-1] == 192 and sorted(sizes) == sizes and set(sizes) <= {160, 192}


def test_resnet18_path_trains_and_transfers() -> None:
    """The paper's architecture runs end to end (tiny data, 32 px, one model per group)."""
    data = synthetic_data(4, 12, per_class=8, seed=3)
    recipe = parse_recipe_dict({
        "name": "t", "source": {"dataset": "s"}, "target": {"dataset": "t"},
        "subsets": {"models": 2}, "model": {"arch": "resnet18", "resolution": 16, "final_resolution": 32},
        "training": {"epochs": 1, "batch_size": 8}, "transfer": {"epochs": 2},
    })
    context = RunContext(recipe, make_masks(0, 2, 4, 0.5), data, "cpu")
    assert context.group_size == 1 and context.pool_x.shape[-1] == 32
    (result,) = context.compute_group(1)
    assert result.index == 1 and result.margins.shape == (12,) and np.isfinite(result.margins).all()


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 1000), st.integers(1, 5), st.integers(1, 12))
def test_slot_batches_are_the_pool_batches_restricted_to_the_subset(seed: int, slots: int, steps: int) -> None:
    """A model's batch is exactly its kept examples of the slot the whole pool would use at that step."""
    pool = np.arange(40)
    subset = np.sort(np.random.default_rng(seed).permutation(40)[:17])
    index, weight = slot_batches([pool, subset], 40, [seed, seed], slots, steps)
    for step in range(steps):
        full = set(index[step, 0][weight[step, 0] > 0])
        kept = set(index[step, 1][weight[step, 1] > 0])
        assert kept == full & set(subset)
    epoch = index[:slots, 1][weight[:slots, 1] > 0] if steps >= slots else None
    if epoch is not None:
        assert sorted(epoch) == sorted(subset)  # one epoch visits every kept example once


def test_slot_order_trains_without_batchnorm() -> None:
    data = synthetic_data(6, 20, per_class=20, seed=1)
    recipe = parse_recipe_dict({
        "name": "t", "source": {"dataset": "s"}, "target": {"dataset": "t"}, "subsets": {"models": 2},
        "model": {"width": 4, "hidden": 8, "norm": "none"},
        "training": {"epochs": 1, "batch_size": 16, "models_per_batch": 2, "order": "slots"},
        "transfer": {"epochs": 5},
    })
    results = RunContext(recipe, make_masks(0, 2, 6, 0.5), data, "cpu").compute_group(0)
    assert all(np.isfinite(r.margins).all() for r in results)
    with pytest.raises(Exception, match="slots needs model.norm none"):
        parse_recipe_dict({**recipe.model_dump(mode="json"), "model": {"norm": "batch"}})


def test_ridge_head_matches_sklearn_ridge() -> None:
    from sklearn.linear_model import Ridge

    from dmtoolkit.recipe import TransferSpec
    from dmtoolkit.train.transfer import fit_ridge_heads

    rng = np.random.default_rng(0)
    feats = torch.from_numpy(rng.normal(size=(2, 60, 5)).astype(np.float32)) * 3 + 1
    labels = torch.from_numpy(rng.integers(0, 3, size=60))
    spec = TransferSpec(head="ridge", ridge=0.3)
    weight, bias, mean, std = fit_ridge_heads(feats, labels, 3, spec)
    for g in range(2):
        x = ((feats[g] - mean[g]) / std[g]).numpy()
        oracle = Ridge(alpha=0.3 * 60).fit(x, np.eye(3)[labels.numpy()])
        np.testing.assert_allclose(weight[g].numpy(), oracle.coef_.T, atol=1e-5)
        np.testing.assert_allclose(bias[g, 0].numpy(), oracle.intercept_, atol=1e-6)


def test_features_silent_on_training_images_cannot_blow_up_test_margins() -> None:
    from dmtoolkit.recipe import TransferSpec
    from dmtoolkit.train.transfer import fit_head, standardisation

    rng = np.random.default_rng(1)
    train = torch.from_numpy(rng.random((1, 200, 6)).astype(np.float32))
    labels = torch.from_numpy(rng.integers(0, 3, 200))
    train[0, :, 5] = 0.0
    train[0, 0, 5] = 1e-5                      # a unit almost dead on the training images ...
    test = torch.from_numpy(rng.random((1, 50, 6)).astype(np.float32))
    test[0, :, 5] = 1.0                        # ... that fires on every test image
    mean, std = standardisation(train)
    assert float(std[0, 0, 5]) >= 0.05 * float(train.std(dim=1).mean()) * 0.99
    for head in ("ridge", "logistic"):
        weight, bias, mean, std = fit_head(train, labels, 3, TransferSpec(head=head, ridge=0.01, epochs=20), [0])
        logits = torch.baddbmm(bias, (test - mean) / std, weight)
        assert float(logits.abs().max()) < 10, head


def test_source_training_reads_batches_through_the_context_batch_factory() -> None:
    """The seam betons use: RunContext asks its `batches` factory for each group's BatchSource."""
    from dmtoolkit.train.fit import MemoryPool

    context = _context("fixed-feature")
    assert isinstance(context.batches, MemoryPool)  # no beton in the recipe: the in-memory pool
    calls = []

    def recording(subsets, order_seeds, settings):
        calls.append([s.copy() for s in subsets])
        return MemoryPool(context.pool_x, context.pool_y)(subsets, order_seeds, settings)

    same = RunContext(context.recipe, context.masks, context.data, "cpu", batches=recording)
    results = same.compute_group(0)
    assert len(calls) == 1 and len(calls[0]) == len(results)
    for subset, result in zip(calls[0], results):
        np.testing.assert_array_equal(subset, context.subset_examples(result.index))
    expected = context.compute_group(0)
    for a, b in zip(results, expected):
        np.testing.assert_array_equal(a.margins, b.margins)
