"""Exact (unprojected) gradient scores in the dual form, projections per network and checkpoint, and the
"auto" projection dimension (issue 32)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dmtoolkit.estimate.gradient import (
    GRADIENT_PROJ_DIM,
    attribute,
    exact_lambda,
    exact_scores,
    gradient_memory_bytes,
    gram_matrices,
    projection_seed,
    relative_lambda,
    resolve_proj_dim,
    trak_scores,
)

from .test_gradient_networks import _user_network


@settings(max_examples=40, deadline=None)
@given(pool=st.integers(3, 12), params=st.integers(2, 30), targets=st.integers(1, 4), kernel=st.sampled_from(["trak", "gauss-newton"]),
       own_q=st.booleans(), seed=st.integers(0, 2**16), lam=st.floats(1e-3, 10.0), share=st.floats(0.2, 1.0))
def test_the_dual_form_equals_the_primal_kernel(pool: int, params: int, targets: int, kernel: str, own_q: bool,
                                                seed: int, lam: float, share: float) -> None:
    """(Φ_SᵀWΦ_S + λI)⁻¹ solved over the parameters (`trak_scores`, the primal) and through the pool's Gram matrix
    (`exact_scores`, the dual) are one matrix, for any subset S, either kernel and with or without q."""
    rng = np.random.default_rng(seed)
    phi = torch.as_tensor(rng.normal(size=(pool, params)), dtype=torch.float32)
    g = torch.as_tensor(rng.normal(size=(targets, params)), dtype=torch.float32)
    q = torch.as_tensor(rng.uniform(0.05, 0.95, pool))
    train = np.sort(rng.choice(pool, max(1, round(share * pool)), replace=False))
    primal = trak_scores(phi, q, train, g, lam, kernel, own_q).numpy()
    gram, cross = gram_matrices(phi, g, precision="float64")
    dual = exact_scores(gram, cross, q, train, lam, kernel, own_q).numpy()
    np.testing.assert_allclose(dual, primal, rtol=1e-6, atol=1e-9 * max(1.0, np.abs(primal).max()))


@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 2**16), lam=st.floats(0.01, 1.0))
def test_float32_block_products_change_the_exact_scores_by_far_less_than_they_matter(seed: int, lam: float) -> None:
    """The default's float32 products (summed per block in float64) against float64 throughout, on gradients
    spanning blocks, with a relative ridge as the library sets it: scores agree to 1e-4 of their scale."""
    rng = np.random.default_rng(seed)
    pool, params = 60, 70_000  # three blocks of PROJECTION_BLOCK
    phi = torch.as_tensor(rng.normal(size=(pool, params)) * rng.lognormal(0, 1, (pool, 1)), dtype=torch.float32)
    g = torch.as_tensor(rng.normal(size=(5, params)), dtype=torch.float32)
    q, train = torch.as_tensor(rng.uniform(0.05, 0.95, pool)), np.arange(pool)
    scores = {}
    for precision in ("float32", "float64"):
        gram, cross = gram_matrices(phi, g, precision=precision)
        scores[precision] = exact_scores(gram, cross, q, train, exact_lambda(gram, train, lam, params), "trak",
                                         False).numpy()
    assert not np.array_equal(scores["float32"], scores["float64"])  # the two paths really differ
    np.testing.assert_allclose(scores["float32"], scores["float64"], rtol=0,
                               atol=1e-4 * np.abs(scores["float64"]).max())
    with pytest.raises(ValueError, match="float32 or float64"):
        gram_matrices(phi[:2, :10], g[:, :10], precision="float16")


def test_the_exact_ridge_is_relative_to_the_mean_non_zero_eigenvalue() -> None:
    rng = np.random.default_rng(3)
    phi = torch.as_tensor(rng.normal(size=(10, 40)))
    gram, _ = gram_matrices(phi, phi[:1])
    train = np.arange(2, 8)
    weights = torch.as_tensor(rng.uniform(0.1, 0.3, 6))
    eigen = torch.linalg.eigvalsh((phi[train] * weights[:, None]).T @ phi[train])
    nonzero = eigen[eigen > 1e-9 * eigen.max()]
    assert len(nonzero) == 6
    assert exact_lambda(gram, train, 0.1, 40, weights) == pytest.approx(0.1 * float(nonzero.mean()), rel=1e-9)
    # with more examples than parameters the rank is p: the projected rule's trace / k
    assert exact_lambda(gram, np.arange(10), 0.1, 4) == pytest.approx(relative_lambda(phi, 0.1) * 40 / 4, rel=1e-9)


def test_auto_chooses_exact_scores_only_where_they_are_smaller_and_fit() -> None:
    assert resolve_proj_dim(None, 40_020, 400) == 0  # the example store: exact
    assert resolve_proj_dim(None, 40_020, 5_080) == 0  # the 5,080-image pool: about 2.8 GB before its targets
    assert resolve_proj_dim(None, 40_020, 52_376) == GRADIENT_PROJ_DIM  # the 52k pool's Gram is 22 GB
    assert resolve_proj_dim(None, 11_000_000, 5_000) == GRADIENT_PROJ_DIM  # a ResNet's gradients: 200+ GB
    assert resolve_proj_dim(None, 300, 400) == GRADIENT_PROJ_DIM  # more examples than parameters
    assert resolve_proj_dim(64, 40_020, 400) == 64 and resolve_proj_dim(0, 300, 400) == 0
    # one choice for every --targets split of a job: the pool decides (exact at 5,080 images), and the memory
    # check sizes the targets, which with 10,000 of them would exceed what "auto" allows itself
    from dmtoolkit.estimate.gradient import EXACT_MEMORY

    assert gradient_memory_bytes(0, 40_020, 5_080, 0) <= EXACT_MEMORY < gradient_memory_bytes(0, 40_020, 5_080, 10_000)
    dual = gradient_memory_bytes(0, 40_020, 5_080, 1_000)
    assert 3e9 < dual < 4 * 2**30 < gradient_memory_bytes(0, 40_020, 52_376, 1_000)


def test_each_network_and_checkpoint_draws_its_own_projection() -> None:
    seeds = {projection_seed(0, n, c) for n in range(8) for c in range(3)}
    assert len(seeds) == 24 and projection_seed(5, 2, 1) == projection_seed(5, 2, 1)
    assert projection_seed(7, 3, 2, shared=True) == 7
    network = _user_network(1)[0]
    one = attribute([network], proj_dim=8, q="own").scores
    # the same network twice: two projections average to something else; one shared projection does not
    twice = attribute([network, network], proj_dim=8, q="own").scores
    shared = attribute([network, network], proj_dim=8, q="own", shared_projection=True).scores
    np.testing.assert_allclose(shared, attribute([network], proj_dim=8, q="own", shared_projection=True).scores,
                               rtol=1e-5, atol=1e-7)
    assert not np.allclose(twice, one, rtol=1e-2)
    assert attribute([network], proj_dim=8).settings["shared_projection"] is False


def test_exact_scores_refuse_traker_s_rescaling() -> None:
    from dmtoolkit.errors import UserError
    from dmtoolkit.estimate.gradient import score_network

    network = _user_network(0)[0]
    with pytest.raises(UserError, match="needs a projection"):
        score_network(network, np.arange(12), slice(0, 3), proj_dim=0, kernel_scale="trak")


def test_the_cli_default_scores_a_small_pool_exactly_and_records_it(tmp_path) -> None:  # noqa: ANN001
    """`dmtoolkit gradient` as a user runs it: on an 18-image pool `--proj-dim auto` resolves to exact scores, the
    same as asking for them (`--proj-dim 0`), recorded in the file; `--q own --kernel-over trained` is another
    estimate; a malformed --kernel-over is refused before anything is written."""
    import json

    from click.testing import CliRunner

    from dmtoolkit.cli import cli
    from dmtoolkit.estimate.files import load_estimate

    from .synthetic import trained_example_store

    store = trained_example_store(tmp_path / "runs.h5")
    common = ["--models", "2", "--holdout-frac", "0.3", "--device", "cpu"]
    for name, extra in (("auto", []), ("zero", ["--proj-dim", "0"]), ("old", ["--q", "own", "--kernel-over", "trained"])):
        result = CliRunner().invoke(cli, ["gradient", str(store), "-o", str(tmp_path / f"{name}.h5"), *common, *extra])
        assert result.exit_code == 0, result.output
    auto, zero, old = (load_estimate(tmp_path / f"{n}.h5") for n in ("auto", "zero", "old"))
    np.testing.assert_array_equal(auto.matrix, zero.matrix)
    assert auto.attrs["gradient_projection"] == "none (exact)" and auto.attrs["gradient_proj_dim_asked"] == "auto"
    assert auto.attrs["gradient_kernel_over"] == "pool" and auto.attrs["gradient_q"] == "mean"
    assert json.loads(auto.attrs["settings"])["proj_dim"] == "auto"
    assert not np.allclose(old.matrix, auto.matrix, rtol=1e-3)
    assert old.attrs["gradient_q"] == "own" and old.attrs["gradient_kernel_over"] == "trained"
    bad = CliRunner().invoke(cli, ["gradient", str(store), "-o", str(tmp_path / "bad.h5"), *common, "--kernel-over", "all"])
    assert bad.exit_code != 0 and "'all' is not one of 'pool', 'trained'" in bad.output
    assert not (tmp_path / "bad.h5").exists()
