"""The gradient (TRAK-style) estimator: exact against brute force on a tiny network, close to exact
leave-one-out on a model simple enough to retrain for every source example, and end to end on a tiny
example-level store (retrained rows reproduce the stored margins; the file saves, reloads and is scored)."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner
from scipy.stats import pearsonr, spearmanr
from torch import nn

from dmtoolkit.cli import cli
from dmtoolkit.errors import UserError
from dmtoolkit.estimate.files import load_estimate
from dmtoolkit.estimate.gradient import (
    FixedHead,
    GradientEstimator,
    Projector,
    fit_gradient,
    head_gradients,
    margin_of,
    ridge_head_margins,
    source_features,
    source_output,
    target_gradients,
    trak_scores,
)
from dmtoolkit.estimate.lds import evaluate
from dmtoolkit.recipe import parse_recipe_dict
from dmtoolkit.run.api import ensure_trained
from dmtoolkit.train.models import BatchedTinyCNN

from .synthetic import synthetic_data, synthetic_store, trained_example_store

torch.set_num_threads(1)


# --- (1) brute force on a tiny network ----------------------------------------------------------------
def _tiny_network(seed: int = 0) -> BatchedTinyCNN:
    net = BatchedTinyCNN(1, 1, 3, 4, 2, 4)  # ~150 parameters: identity projection, an exact kernel
    net.init_from_seeds([seed])
    with torch.no_grad():  # non-trivial BatchNorm statistics, so evaluation mode matters
        for block in net.blocks:
            block.norm.running_mean.uniform_(-0.2, 0.2)
            block.norm.running_var.uniform_(0.5, 1.5)
    return net.eval()


def _brute_force_grad(net: nn.Module, value: torch.Tensor) -> np.ndarray:
    params = [p for p in net.parameters() if p.requires_grad]
    grads = torch.autograd.grad(value, params, allow_unused=True)  # the source head is unused by target margins
    return torch.cat([(torch.zeros_like(p) if g is None else g).reshape(-1) for p, g in zip(params, grads)]).double().numpy()


def test_scores_match_a_brute_force_loop_on_a_tiny_network() -> None:
    torch.manual_seed(0)
    net = _tiny_network()
    num_params = sum(p.numel() for p in net.parameters())
    xs, ys = torch.randn(10, 1, 4, 4), torch.randint(0, 3, (10,))
    xt, yt = torch.randn(6, 1, 4, 4), torch.randint(0, 2, (6,))
    d = net.feature_dims["penultimate"]
    head = FixedHead("penultimate", torch.randn(d, 2), torch.randn(2), torch.randn(d) * 0.1, torch.rand(d) + 0.5)
    identity = Projector(num_params, 0)
    phi, q = source_features(net, xs, ys, identity, chunk=4)
    g = target_gradients(net, head, xt, yt, identity, chunk=4)
    train = np.array([0, 2, 3, 5, 7, 8])
    scores = trak_scores(phi, q, train, g, lam=0.3).numpy()

    # brute force: one autograd.grad call per example, the kernel in NumPy
    phi_bf, q_bf, loss_bf = [], [], []
    for x, y in zip(xs, ys):
        z = net(x[None, None])[0, 0]
        phi_bf.append(_brute_force_grad(net, source_output(z, y)))
        loss_bf.append(_brute_force_grad(net, F.cross_entropy(net(x[None, None])[0], y[None])))
        q_bf.append(1 - torch.softmax(z.double(), -1)[y].item())
    g_bf = np.stack([_brute_force_grad(net, margin_of(head.logits(net.features(x[None, None], "penultimate")[0, 0]), y))
                     for x, y in zip(xt, yt)])
    phi_bf, q_bf, loss_bf = np.stack(phi_bf), np.array(q_bf), np.stack(loss_bf)
    np.testing.assert_allclose(phi.numpy(), phi_bf, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(g.numpy(), g_bf, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(q.numpy(), q_bf, rtol=1e-5)
    # TRAK's output function: minus the loss gradient is exactly q·φ
    np.testing.assert_allclose(-loss_bf, q_bf[:, None] * phi_bf, rtol=1e-4, atol=1e-6)
    kernel = phi_bf[train].T @ phi_bf[train] + 0.3 * np.eye(num_params)
    expected = (phi_bf @ np.linalg.solve(kernel, g_bf.T)) * q_bf[:, None]
    assert scores.shape == (10, 6)
    np.testing.assert_allclose(scores, expected, rtol=1e-3, atol=1e-6 * np.abs(expected).max())

    # traker's scaling: its inverse kernel divided by its mean absolute entry (NumPy's own inverse here)
    inverse = np.linalg.inv(kernel)
    scaled = trak_scores(phi, q, train, g, lam=0.3, kernel_scale="trak").numpy()
    np.testing.assert_allclose(scaled, (phi_bf @ (inverse / np.abs(inverse).mean()) @ g_bf.T) * q_bf[:, None],
                               rtol=1e-3, atol=1e-6 * np.abs(scaled).max())
    with pytest.raises(UserError, match="kernel_scale 'max' must be one of none, trak"):
        trak_scores(phi, q, train, g, lam=0.3, kernel_scale="max")


def test_projection_is_seeded_and_preserves_inner_products_on_average() -> None:
    a = Projector(1000, 64, seed=3)
    b = Projector(1000, 64, seed=3, device="cpu")
    c = Projector(1000, 64, seed=4)
    x = torch.randn(5, 1000)
    torch.testing.assert_close(a(x), b(x))
    assert not torch.allclose(a(x), c(x))
    r = Projector(1000, 64, seed=3, kind="rademacher")
    assert set(np.unique(np.abs(r.block(0).numpy())).round(6)) == {round(1 / 8, 6)}
    big = Projector(1000, 4000, seed=0)
    y = torch.randn(1, 1000)
    assert abs(float((big(y) ** 2).sum() / (y ** 2).sum()) - 1) < 0.1
    assert Projector(7, 0)(x[:, :7]) is not None and Projector(7, 0).dim == 7
    with pytest.raises(UserError):
        Projector(7, 2, kind="sparse")


def test_head_differentiation_matches_autograd_through_the_whole_ridge_transfer() -> None:
    from dmtoolkit.estimate.gradient import feature_jacobians
    from dmtoolkit.recipe import TransferSpec

    torch.manual_seed(1)
    net = _tiny_network(2)
    spec = TransferSpec(head="ridge", ridge=0.5, feature_layer="penultimate")
    train_x, train_y = torch.randn(12, 1, 4, 4), torch.arange(12) % 3
    test_x, test_y = torch.randn(5, 1, 4, 4), torch.randint(0, 3, (5,))
    num_params = sum(p.numel() for p in net.parameters())
    identity = Projector(num_params, 0)
    with torch.no_grad():
        train_feats = net.features(train_x[None], "penultimate")[0]
        test_feats = net.features(test_x[None], "penultimate")[0]
    from dmtoolkit.train.transfer import fit_ridge_heads

    w, b, mean, std = fit_ridge_heads(train_feats[None], train_y, 3, spec)
    head = FixedHead("penultimate", w[0], b[0, 0], mean[0, 0], std[0, 0])
    g = target_gradients(net, head, test_x, test_y, identity)
    g = g + head_gradients(train_feats, train_y, test_feats, test_y, 3, spec,
                           feature_jacobians(net, "penultimate", train_x, identity, chunk=5))
    for j in range(len(test_x)):  # brute force: refit the head inside the graph, one backward per target
        margins = ridge_head_margins(net.features(train_x[None], "penultimate")[0], train_y,
                                     net.features(test_x[None], "penultimate")[0], test_y, 3, spec)
        np.testing.assert_allclose(g[j].numpy(), _brute_force_grad(net, margins[j]), rtol=1e-3, atol=1e-5)


# --- (2) against exact leave-one-out --------------------------------------------------------------------
class SoftmaxRegression(nn.Module):
    """A linear source 'network' with the batched interface: logits = x W + b; its features are the logits."""

    def __init__(self, d: int, k: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(d, k, dtype=torch.float64))
        self.bias = nn.Parameter(torch.zeros(k, dtype=torch.float64))

    def features(self, x: torch.Tensor, layer: str) -> torch.Tensor:
        return x.flatten(2) @ self.weight + self.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x, "logits")


def _train_to_convergence(x: torch.Tensor, y: torch.Tensor, reg: float, k: int) -> SoftmaxRegression:
    model = SoftmaxRegression(x.shape[-1], k)
    optimizer = torch.optim.LBFGS(model.parameters(), lr=1, max_iter=500, tolerance_grad=1e-12,
                                  tolerance_change=1e-14, history_size=50, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(model(x[None])[0], y, reduction="sum") + reg / 2 * sum(
            (p ** 2).sum() for p in model.parameters())
        loss.backward()
        return loss

    for _ in range(3):
        optimizer.step(closure)
    return model.eval()


def _leave_one_out(k: int, n: int = 40, d: int = 4, reg: float = 1.0) -> tuple[np.ndarray, ...]:
    """Softmax regression (k classes) on n source examples, trained to convergence with and without each one,
    transferred by a fixed head on its logits: (exact LOO margin changes (n, T), φ, q, target gradients)."""
    rng = np.random.default_rng(0)
    centres = rng.normal(0, 1.5, (k, d))
    y_np = np.arange(n) % k
    x, y = torch.tensor(centres[y_np] + rng.normal(0, 1, (n, d))), torch.tensor(y_np)
    xt = torch.tensor(centres[np.arange(8) % k] + rng.normal(0, 1, (8, d)))
    yt = torch.tensor(np.arange(8) % 2)
    # the transfer: a fixed head on the source model's logits, 2 target classes
    head = FixedHead("logits", torch.tensor(rng.normal(0, 1, (k, 2))), torch.zeros(2, dtype=torch.float64),
                     torch.zeros(k, dtype=torch.float64), torch.ones(k, dtype=torch.float64))

    def target_margins(model: nn.Module) -> np.ndarray:
        with torch.no_grad():
            logits = head.logits(model.features(xt[None], "logits")[0])
            return np.array([margin_of(z, t).item() for z, t in zip(logits, yt)])

    full = _train_to_convergence(x, y, reg, k)
    base = target_margins(full)
    keep = lambda i: np.arange(n) != i  # noqa: E731
    loo = np.stack([base - target_margins(_train_to_convergence(x[keep(i)], y[keep(i)], reg, k)) for i in range(n)])
    identity = Projector(d * k + k, 0)
    phi, q = source_features(full, x, y, identity)
    return loo, phi, q, target_gradients(full, head, xt, yt, identity)


def _agreement(scores: np.ndarray, loo: np.ndarray) -> tuple[float, float]:
    """(lowest per-target Spearman, overall Pearson) of scores against exact leave-one-out changes."""
    return (min(spearmanr(scores[:, j], loo[:, j])[0] for j in range(loo.shape[1])),
            pearsonr(scores.ravel(), loo.ravel())[0])


def test_scores_track_exact_leave_one_out_on_logistic_regression() -> None:
    """Binary logistic regression: the Gauss-Newton kernel is the exact Hessian, TRAK's drops its weights."""
    loo, phi, q, g = _leave_one_out(k=2)
    for kernel, spearman, pearson in (("gauss-newton", 0.98, 0.99), ("trak", 0.9, 0.95)):
        scores = trak_scores(phi, q, np.arange(len(loo)), g, lam=1.0, kernel=kernel).numpy()
        assert scores.shape == loo.shape
        lowest, overall = _agreement(scores, loo)
        assert lowest > spearman and overall > pearson, (kernel, lowest, overall)
        # the sign convention: positive = keeping the example raises the margin (as difference of means)
        big = np.abs(loo) > np.quantile(np.abs(loo), 0.25)
        assert np.mean(np.sign(scores[big]) == np.sign(loo[big])) > 0.95


def test_scores_track_exact_leave_one_out_on_softmax_regression() -> None:
    """Three classes: the one-output kernels approximate the Hessian; the weighted one is the closer."""
    loo, phi, q, g = _leave_one_out(k=3)
    newton = _agreement(trak_scores(phi, q, np.arange(len(loo)), g, lam=1.0, kernel="gauss-newton").numpy(), loo)
    trak = _agreement(trak_scores(phi, q, np.arange(len(loo)), g, lam=1.0, kernel="trak").numpy(), loo)
    assert newton[1] > 0.9 and newton[0] > 0.7, newton
    assert trak[1] > 0.7 and trak[0] > 0.5, trak
    assert newton[1] > trak[1]


def test_sign_convention_matches_difference_of_means_over_every_half_subset() -> None:
    """Models trained on all C(8, 4) half subsets: the gradient scores averaged over them point the same way as
    the exact difference of means (margin with the example minus without it) the store's estimators compute."""
    from itertools import combinations

    from dmtoolkit.estimate.influence import influence_from_arrays

    rng = np.random.default_rng(3)
    n, d, k = 8, 3, 2
    y = torch.tensor(np.arange(n) % k)
    x = torch.tensor(rng.normal(0, 1, (n, d)) + 1.5 * (2 * y.numpy()[:, None] - 1))
    xt, yt = torch.tensor(rng.normal(0, 1.5, (6, d))), torch.tensor(np.arange(6) % k)
    head = FixedHead("logits", torch.eye(k, dtype=torch.float64), torch.zeros(k, dtype=torch.float64),
                     torch.zeros(k, dtype=torch.float64), torch.ones(k, dtype=torch.float64))
    identity = Projector(d * k + k, 0)
    masks, margins, scores = [], [], []
    for subset in map(list, combinations(range(n), n // 2)):
        model = _train_to_convergence(x[subset], y[subset], 0.5, k)
        with torch.no_grad():
            logits = head.logits(model.features(xt[None], "logits")[0])
            margins.append([margin_of(z, t).item() for z, t in zip(logits, yt)])
        masks.append(np.isin(np.arange(n), subset))
        phi, q = source_features(model, x, y, identity)
        scores.append(trak_scores(phi, q, subset, target_gradients(model, head, xt, yt, identity), lam=0.5).numpy())
    dom = influence_from_arrays(np.array(masks), np.array(margins, np.float32)).coef_
    gradient = np.mean(scores, axis=0)
    # the same sign (a flipped convention would correlate at about -0.85); agreement is limited by how far
    # one example moves a model trained on four (the linearisation error), not by the convention
    assert pearsonr(gradient.ravel(), dom.ravel())[0] > 0.75
    half = np.abs(dom) > np.median(np.abs(dom))
    assert np.mean(np.sign(gradient[half]) == np.sign(dom[half])) > 0.8


# --- (3) end to end on a tiny example-level store ---------------------------------------------------------
@pytest.fixture(scope="module")
def example_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return trained_example_store(tmp_path_factory.mktemp("gradient") / "runs.h5")


@pytest.mark.parametrize(("head", "kernel"), [("fixed", "trak"), ("differentiated", "gauss-newton")])
def test_end_to_end_on_an_example_store(example_store: Path, tmp_path: Path, head: str, kernel: str) -> None:
    out = tmp_path / "grad.h5"
    messages: list[str] = []
    model = fit_gradient(example_store, out, models=2, full_models=1, proj_dim=64, proj_seed=7, lam=0.1,
                         head=head, kernel=kernel, holdout_frac=0.3, seed=0, progress=messages.append)
    assert len(messages) == 3
    est = load_estimate(out)
    assert est.estimator == "gradient" and est.kind == "example"
    assert est.matrix.shape == (18, 16) and np.isfinite(est.matrix).all() and np.abs(est.matrix).max() > 0
    np.testing.assert_array_equal(est.matrix, model.coef_)
    rows = [r.row for r in model.records_]
    assert rows[-1] == -1 and set(rows[:2]) <= set(est.fit_rows.tolist()) and not set(rows) & set(est.test_rows)
    attrs = est.attrs
    assert json.loads(attrs["gradient_rows"]) == rows[:2] and attrs["gradient_full_pool_models"] == 1
    assert attrs["gradient_proj_dim"] == 64 and attrs["gradient_proj_seed"] == 7
    assert attrs["gradient_lambda_relative"] == 0.1 and len(json.loads(attrs["gradient_lambda_absolute"])) == 3
    assert bool(attrs["gradient_head_differentiated"]) == (head == "differentiated")
    assert attrs["gradient_kernel"] == kernel
    assert json.loads(attrs["settings"])["proj_dim"] == 64
    with h5py.File(out, "r") as f:
        np.testing.assert_array_equal(f["gradient/rows"][()], rows)
        errors = f["gradient/margin_error"][()]
    # retraining a row through the library's training code reproduces its stored margins
    assert np.all(errors[:2] < 1e-3) and np.isnan(errors[2])
    # the linear predictor is centred on the fitting rows
    with h5py.File(example_store, "r") as f:
        masks, margins = f["masks"][()], f["margins"][()]
    fit = est.fit_rows
    np.testing.assert_allclose(model.predict(masks[fit]).mean(0), margins[fit].mean(0), atol=1e-4)
    result = evaluate(example_store, out)
    assert result.estimator == "gradient" and result.heldout_models == len(est.test_rows)
    # the example-level analyses read it like any estimate (no standard errors, so no p-values: nothing flagged)
    for command in (["leakage", str(out), "--json", "--no-features"], ["mislabels", str(out), "--json"]):
        result = CliRunner().invoke(cli, command)
        assert result.exit_code == 0, (command, result.output)


def test_a_group_member_is_that_model_of_the_batched_network(example_store: Path) -> None:
    from dmtoolkit.estimate.gradient import group_member
    from dmtoolkit.train.job import RunContext

    context = RunContext.from_store(example_store, "cpu")
    trainer = context.trainer
    jobs = [context.job(r) for r in range(4)]
    model = trainer.train_source_models([j.source_indices for j in jobs], [j.seed for j in jobs]).eval()
    x = trainer.pool_x[:7]
    with torch.no_grad():
        batched = model(x[None].expand(4, *x.shape))
        for g in range(4):
            member = group_member(trainer, model, g).eval()
            assert member.groups == 1
            torch.testing.assert_close(member(x[None])[0], batched[g], rtol=1e-5, atol=1e-6)


def test_cli_gradient_then_evaluate(example_store: Path, tmp_path: Path) -> None:
    out = tmp_path / "cli.h5"
    runner = CliRunner()
    result = runner.invoke(cli, ["gradient", str(example_store), "-o", str(out), "--models", "1", "--proj-dim", "32",
                                 "--lambda", "0.5", "--device", "cpu", "--holdout-frac", "0.3", "--alone",
                                 "--targets", "2:7"])
    assert result.exit_code == 0, result.output
    est = load_estimate(out)
    assert est.attrs["gradient_proj_dim"] == 32 and not est.attrs["gradient_whole_groups"]
    assert est.matrix.shape == (18, 5) and est.columns == slice(2, 7)
    with h5py.File(out, "r") as f:  # the columns' retrained margins are compared with the same stored columns
        assert f["gradient/margin_error"][0] < 1e-3
    result = runner.invoke(cli, ["evaluate", str(example_store), "--estimate", str(out), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["estimator"] == "gradient"


def test_refuses_class_level_stores_and_bad_settings(tmp_path: Path, example_store: Path) -> None:
    store = synthetic_store(tmp_path / "class.h5", np.zeros((6, 4), np.float32))
    with pytest.raises(UserError, match="example-level"):
        fit_gradient(store, tmp_path / "x.h5", models=1, holdout_frac=0.2)
    with pytest.raises(UserError, match="at least one network"):
        fit_gradient(example_store, tmp_path / "y.h5", models=0, full_models=0)
    with pytest.raises(UserError, match="fitting rows"):
        GradientEstimator(example_store, models=50).fit(np.zeros((4, 18), bool), np.zeros((4, 16)))
    with h5py.File(example_store, "r") as f:
        masks, margins = f["masks"][()], f["margins"][()]
    with pytest.raises(UserError, match="not those of"):
        GradientEstimator(example_store, models=2, proj_dim=8).fit(~masks, margins)


# --- (4) reproducing the stored rows: the driver's thread setting ------------------------------------------
@pytest.fixture(scope="module")
def long_trained_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A store whose training is long enough (16 epochs of batches of 4, width 16) for two torch threads' float
    differences to grow into another network: retrained at two threads its row's margins differ by 0.29."""
    path = tmp_path_factory.mktemp("threads") / "runs.h5"
    recipe = parse_recipe_dict({
        "name": "long-examples", "source": {"dataset": "synthetic"}, "target": {"dataset": "synthetic"},
        "subsets": {"kind": "example", "alpha": 0.5, "models": 4, "seed": 1, "antithetic": True},
        "model": {"width": 16, "hidden": 32, "resolution": 8},
        "training": {"epochs": 16, "batch_size": 4, "lr": 0.05, "models_per_batch": 4, "randomness": "shared"},
        "transfer": {"head": "ridge", "ridge": 1.0},
    })
    return ensure_trained(path, recipe, workers=1, device="cpu", progress=False,
                          data=synthetic_data(3, 16, per_class=20, seed=5)).path


def test_retrained_rows_reproduce_the_store_whatever_the_callers_threads(long_trained_store: Path,
                                                                        tmp_path: Path) -> None:
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        fit_gradient(long_trained_store, tmp_path / "g.h5", models=1, proj_dim=16, holdout_frac=0.0, device="cpu")
        assert torch.get_num_threads() == 2  # the caller's setting is restored
    finally:
        torch.set_num_threads(before)
    with h5py.File(tmp_path / "g.h5", "r") as f:
        assert f["gradient/margin_error"][0] < 1e-4
