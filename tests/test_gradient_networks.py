"""The gradient estimator's network contract (dmtoolkit/estimate/networks.py): a user's network scored
against finite differences and a kernel in NumPy; `attribute` without a store; the built-in networks'
checkpoints along training; a user trainer's store, its hook and the one-line refusals."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from torch import nn

from dmtoolkit.errors import TrainerError, UserError
from dmtoolkit.estimate.files import load_estimate
from dmtoolkit.estimate.gradient import attribute, fit_gradient, score_network
from dmtoolkit.estimate.networks import (
    Examples,
    Network,
    checkpoint_epochs,
    parse_checkpoints,
)
from dmtoolkit.recipe import parse_recipe_dict
from dmtoolkit.run.api import ensure_trained
from dmtoolkit.train.job import RunContext

from .synthetic import trained_example_store

torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parent.parent


# --- a user's network against finite differences ------------------------------------------------------------
def _user_network(seed: int, n: int = 12, t: int = 5) -> tuple[Network, nn.Module, nn.Linear]:
    """A tiny float64 MLP (5 -> 4 -> 3 source classes) and a fixed 2-class target head on its features."""
    g = torch.Generator().manual_seed(seed)
    data = torch.Generator().manual_seed(100)
    model = nn.Sequential(nn.Linear(5, 4), nn.Tanh(), nn.Linear(4, 3)).double()
    head = nn.Linear(4, 2).double()
    with torch.no_grad():
        for p in [*model.parameters(), *head.parameters()]:
            p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64))
    pool = Examples(torch.randn(n, 5, generator=data, dtype=torch.float64), torch.randint(0, 3, (n,), generator=data))
    targets = Examples(torch.randn(t, 5, generator=data, dtype=torch.float64), torch.randint(0, 2, (t,), generator=data))
    network = Network.from_module(model, lambda m, x: m(x), lambda m, x: head(m[1](m[0](x))), pool=pool,
                                  targets=targets)
    return network, model, head


def _finite_difference_scores(model: nn.Module, head: nn.Linear, network: Network, train: np.ndarray,
                              lam: float, eps: float = 1e-6) -> np.ndarray:
    """τ from central finite differences of the outputs (written here in NumPy) and the kernel solved in NumPy."""
    x, y = network.pool.x.numpy(), network.pool.y.numpy()
    tx, ty = network.targets.x.numpy(), network.targets.y.numpy()
    vector = nn.utils.parameters_to_vector(model.parameters()).detach().clone()

    def outputs(theta: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        nn.utils.vector_to_parameters(theta, model.parameters())
        with torch.no_grad():
            z = model(torch.from_numpy(x)).numpy()
            zt = head(model[1](model[0](torch.from_numpy(tx)))).numpy()
        others = z.copy()
        others[np.arange(len(y)), y] = -np.inf
        f = z[np.arange(len(y)), y] - np.log(np.exp(others).sum(1))
        other_t = zt.copy()
        other_t[np.arange(len(ty)), ty] = -np.inf
        return f, zt[np.arange(len(ty)), ty] - other_t.max(1)

    phi, g = np.zeros((len(y), len(vector))), np.zeros((len(ty), len(vector)))
    for p in range(len(vector)):
        step = torch.zeros_like(vector)
        step[p] = eps
        (f_plus, m_plus), (f_minus, m_minus) = outputs(vector + step), outputs(vector - step)
        phi[:, p], g[:, p] = (f_plus - f_minus) / (2 * eps), (m_plus - m_minus) / (2 * eps)
    nn.utils.vector_to_parameters(vector, model.parameters())
    with torch.no_grad():
        z = model(torch.from_numpy(x)).numpy()
    p_y = np.exp(z - z.max(1, keepdims=True))
    q = 1 - (p_y / p_y.sum(1, keepdims=True))[np.arange(len(y)), y]
    phi_s = phi[train]
    # λ relative to the mean non-zero eigenvalue: without a projection the kernel has rank min(p, |S|)
    lam_absolute = lam * np.trace(phi_s.T @ phi_s) / min(phi.shape[1], len(train))
    solved = np.linalg.solve(phi_s.T @ phi_s + lam_absolute * np.eye(phi.shape[1]), g.T)
    return (phi @ solved) * q[:, None]


def test_a_user_network_is_scored_as_finite_differences_and_a_numpy_kernel_say() -> None:
    network, model, head = _user_network(0)
    train = np.array([0, 2, 3, 5, 8, 9, 11])
    scores, lam, num_params, margins = score_network(network, train, slice(0, 5), proj_dim=0, lam=0.1)
    assert num_params == 5 * 4 + 4 + 4 * 3 + 3 and scores.shape == (12, 5)
    reference = _finite_difference_scores(model, head, network, train, 0.1)
    np.testing.assert_allclose(scores.numpy(), reference, rtol=1e-5, atol=1e-8)
    with torch.no_grad():
        logits = head(model[1](model[0](network.targets.x)))
    y = network.targets.y
    expected = logits[torch.arange(5), y] - logits[torch.arange(5), 1 - y]  # two classes: the other one
    np.testing.assert_allclose(margins, expected.float().numpy(), rtol=1e-6)


def test_the_source_task_column_is_the_mean_source_margin_scored_as_a_target() -> None:
    """The source-task column (the gradient of the mean source margin over `source_test`, one batch-sum gradient)
    equals the mean of the columns of the same network scored with the source test examples as its *targets*
    (per-example gradients of their source margins) and, through it, central finite differences."""
    import dataclasses

    network, model, head = _user_network(0)
    data = torch.Generator().manual_seed(7)
    held_out = Examples(torch.randn(9, 5, generator=data, dtype=torch.float64), torch.randint(0, 3, (9,), generator=data))
    with_task = dataclasses.replace(network, source_test=held_out)
    train = np.array([0, 2, 3, 5, 8, 9, 11])
    scores = score_network(with_task, train, slice(0, 5), proj_dim=0, lam=0.1, source_task=True)[0].numpy()
    plain = score_network(network, train, slice(0, 5), proj_dim=0, lam=0.1)[0].numpy()
    assert scores.shape == (12, 6)
    np.testing.assert_allclose(scores[:, :5], plain, rtol=1e-12)  # the target columns do not change
    as_targets = dataclasses.replace(network, targets=held_out, target_logits=network.source_logits)
    per_example = score_network(as_targets, train, slice(0, 9), proj_dim=0, lam=0.1)[0].numpy()
    np.testing.assert_allclose(scores[:, 5], per_example.mean(1), rtol=1e-8, atol=1e-12)
    # the source network's own last layer as the "head" on the trunk: perturbed with θ by the finite differences
    reference = _finite_difference_scores(model, model[2], as_targets, train, 0.1)
    np.testing.assert_allclose(scores[:, 5], reference.mean(1), rtol=1e-5, atol=1e-8)
    # attribute (no store) returns it beside the scores, and None when a network has no source_test
    every = np.arange(12)
    result = attribute([with_task, with_task], proj_dim=0, lam=0.1, targets=slice(0, 5))
    alone = score_network(with_task, every, slice(0, 5), proj_dim=0, lam=0.1, source_task=True)[0].numpy()
    np.testing.assert_allclose(result.source_task, alone[:, 5], rtol=1e-5)
    np.testing.assert_allclose(result.scores, alone[:, :5], rtol=1e-5)
    assert attribute([with_task, network], proj_dim=0, lam=0.1).source_task is None
    # without source_test the column is kept and undefined, so every network's scores have one shape
    missing = score_network(network, train, slice(0, 5), proj_dim=0, lam=0.1, source_task=True)[0].numpy()
    assert missing.shape == (12, 6) and np.isnan(missing[:, 5]).all()


def test_label_margins_are_each_examples_stated_label_margin() -> None:
    """What the out-of-sample label check reduces: z_y − max_{k≠y} z_k of the source logits, on the pool and on
    `source_test`, against the module's own logits in NumPy."""
    import dataclasses

    from dmtoolkit.estimate.gradient import label_margins

    network, model, _ = _user_network(1)
    data = torch.Generator().manual_seed(8)
    held_out = Examples(torch.randn(7, 5, generator=data, dtype=torch.float64), torch.randint(0, 3, (7,), generator=data))
    pool, test = label_margins(dataclasses.replace(network, source_test=held_out))
    for x, y, got in ((network.pool.x, network.pool.y, pool), (held_out.x, held_out.y, test)):
        with torch.no_grad():
            z = model(x).numpy()
        y = y.numpy()
        other = np.where(np.arange(z.shape[1])[None] == y[:, None], -np.inf, z).max(1)
        np.testing.assert_allclose(got, z[np.arange(len(y)), y] - other, rtol=1e-6, atol=1e-9)
    assert label_margins(network)[1] is None  # no source_test: nothing to compare the pool with


def test_attribute_averages_networks_and_their_checkpoints_without_a_store(tmp_path: Path) -> None:
    first, second, third = (_user_network(seed)[0] for seed in (1, 2, 3))
    result = attribute([first, [second, third]], proj_dim=0, lam=0.5, targets=slice(1, 4), q="own")
    every = np.arange(12)
    one, two, three = (score_network(n, every, slice(1, 4), proj_dim=0, lam=0.5)[0].numpy() for n in
                       (first, second, third))
    np.testing.assert_allclose(result.scores, ((one + (two + three) / 2) / 2).astype(np.float32), rtol=1e-6)
    assert result.scores.shape == (12, 3) and result.columns == slice(1, 4)
    assert result.checkpoints == (("final",), ("final", "final")) and len(result.lambda_absolute) == 2
    path = result.save(tmp_path / "scores.npz")
    with np.load(path) as saved:
        np.testing.assert_array_equal(saved["scores"], result.scores)
        assert json.loads(str(saved["record"]))["networks"] == 2
    before = path.read_bytes()
    with pytest.raises(UserError, match="exists"):
        result.save(path)
    assert path.read_bytes() == before
    with pytest.raises(UserError, match="non-empty list of Networks"):
        attribute([first, "not a network"])  # type: ignore[list-item]
    small = Network(first.params, first.source_logits, first.target_logits,
                    Examples(first.pool.x[:5], first.pool.y[:5]), first.targets)
    with pytest.raises(UserError, match="every network scores the same examples"):
        attribute([first, small])


def _q_numpy(model: nn.Module, network: Network) -> np.ndarray:
    """1 − p_y of the source softmax, in NumPy."""
    with torch.no_grad():
        z = model(network.pool.x).numpy()
    p = np.exp(z - z.max(1, keepdims=True))
    return 1 - (p / p.sum(1, keepdims=True))[np.arange(len(z)), network.pool.y.numpy()]


def test_attribute_with_q_averaged_over_networks_matches_a_numpy_reference() -> None:
    """q="mean" (TRAK's Q): mean over networks of g K⁻¹ φ (checkpoints averaged first) times the mean q."""
    (first, m1, h1), (second, m2, h2), (third, m3, h3) = (_user_network(seed) for seed in (1, 2, 3))
    every = np.arange(12)
    unweighted, qs = [], []
    for network, model, head in ((first, m1, h1), (second, m2, h2), (third, m3, h3)):
        q = _q_numpy(model, network)
        unweighted.append(_finite_difference_scores(model, head, network, every, 0.5)[:, 1:4] / q[:, None])
        qs.append(q)
    mean_q = (qs[0] + (qs[1] + qs[2]) / 2) / 2
    reference = (unweighted[0] + (unweighted[1] + unweighted[2]) / 2) / 2 * mean_q[:, None]
    result = attribute([first, [second, third]], proj_dim=0, lam=0.5, targets=slice(1, 4), q="mean")
    np.testing.assert_allclose(result.scores, reference, rtol=1e-4, atol=1e-7)
    assert result.settings["q"] == "mean" and result.checkpoints == (("final",), ("final", "final"))
    own = attribute([first, [second, third]], proj_dim=0, lam=0.5, targets=slice(1, 4), q="own")
    default = attribute([first, [second, third]], proj_dim=0, lam=0.5, targets=slice(1, 4))
    np.testing.assert_array_equal(default.scores, result.scores)  # TRAK's Q is the default
    assert not np.allclose(own.scores, result.scores, rtol=1e-3)  # the weighting changes the scores
    alone = attribute([first], proj_dim=0, lam=0.5, q="mean").scores  # one network: its own q
    np.testing.assert_allclose(alone, attribute([first], proj_dim=0, lam=0.5, q="own").scores, rtol=1e-5, atol=1e-8)
    with pytest.raises(UserError, match="q='median' must be 'mean'"):
        attribute([first], q="median")


# --- the built-in networks' checkpoints ----------------------------------------------------------------------
def test_checkpoint_choices() -> None:
    assert parse_checkpoints("3") == 3 and parse_checkpoints("10,20,30") == (10, 20, 30)
    assert parse_checkpoints("10,") == (10,)
    with pytest.raises(UserError, match="a count"):
        parse_checkpoints("ten")
    assert checkpoint_epochs(3, 30) == (10, 20, 30) and checkpoint_epochs(1, 30.0) == (30,)
    assert checkpoint_epochs(4, 30) == (8, 15, 22, 30) and checkpoint_epochs((20, 10), 30) == (10, 20)
    for bad, message in [(0, "at least one"), (31, "at most 30"), ((0, 10), "between 1"), ((40,), "between 1")]:
        with pytest.raises(UserError, match=message):
            checkpoint_epochs(bad, 30)


@pytest.fixture(scope="module")
def example_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return trained_example_store(tmp_path_factory.mktemp("networks") / "runs.h5")  # 2 epochs, groups of 4


def test_training_calls_back_after_each_epoch_and_the_last_copy_is_the_final_network(example_store: Path) -> None:
    context = RunContext.from_store(example_store, "cpu")
    job = context.job(0)
    seen: list[tuple[int, dict]] = []
    model = context.trainer.train_source_models(
        [job.source_indices], [job.seed], lambda m, e: seen.append((e, {k: v.clone() for k, v in m.state_dict().items()})))
    assert [e for e, _ in seen] == [1, 2]
    for name, value in model.state_dict().items():
        torch.testing.assert_close(seen[-1][1][name], value, rtol=0, atol=0)
    assert any(not torch.equal(seen[0][1][k], v) for k, v in model.state_dict().items())
    plain = context.trainer.train_source_models([job.source_indices], [job.seed])  # the callback changes nothing
    for name, value in plain.state_dict().items():
        torch.testing.assert_close(value, model.state_dict()[name], rtol=0, atol=0)


def test_builtin_checkpoints_are_scored_averaged_and_recorded(example_store: Path, tmp_path: Path) -> None:
    # each network's own q and one shared projection: then the scores of a network are linear in its checkpoints'
    settings = dict(models=2, proj_dim=32, lam=0.1, holdout_frac=0.3, seed=0, q="own", shared_projection=True)
    final = fit_gradient(example_store, tmp_path / "final.h5", **settings)
    last = fit_gradient(example_store, tmp_path / "last.h5", checkpoints=(2,), **settings)
    early = fit_gradient(example_store, tmp_path / "early.h5", checkpoints=(1,), **settings)
    both = fit_gradient(example_store, tmp_path / "both.h5", checkpoints=2, **settings)
    np.testing.assert_array_equal(last.coef_, final.coef_)  # epoch 2 of 2 is the final weights
    assert not np.allclose(early.coef_, final.coef_)
    np.testing.assert_allclose(both.coef_, (early.coef_.astype(np.float64) + final.coef_) / 2, rtol=1e-5, atol=1e-7)
    est = load_estimate(tmp_path / "both.h5")
    assert json.loads(est.attrs["gradient_checkpoints"]) == [["epoch 1", "epoch 2 (final)"]] * 2
    assert json.loads(est.attrs["settings"])["checkpoints"] == 2
    assert est.attrs["gradient_networks"] == "builtin:tiny-cnn"
    assert json.loads(load_estimate(tmp_path / "final.h5").attrs["gradient_checkpoints"]) == [["epoch 2 (final)"]] * 2
    # the final weights reproduce the stored rows; a run without them has nothing to compare
    assert all(r.margin_error < 1e-3 for r in both.records_)
    assert all(np.isnan(r.margin_error) for r in early.records_)
    with pytest.raises(UserError, match="at most 2"):
        fit_gradient(example_store, tmp_path / "x.h5", checkpoints=3, **settings)
    assert not (tmp_path / "x.h5").exists()


# --- a user trainer's store: its hook, and the refusals ---------------------------------------------------------
@pytest.fixture(scope="module")
def user_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    recipe = yaml.safe_load((ROOT / "examples" / "digits-examples.yaml").read_text())
    recipe["subsets"]["models"] = 6
    recipe["trainer"]["options"] = {"hidden": 8, "epochs": 20, "checkpoints": [10]}
    path = tmp_path_factory.mktemp("user") / "runs.h5"
    parsed = parse_recipe_dict(recipe)
    return ensure_trained(path, parsed, workers=1, device="cpu", progress=False).path


def test_a_user_trainer_store_without_the_hook_is_refused_with_what_to_add(user_store: Path, tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    import examples.digits_examples as module

    monkeypatch.delattr(module, "gradient_networks")
    with pytest.raises(UserError) as error:
        fit_gradient(user_store, tmp_path / "g.h5", models=1, proj_dim=16, holdout_frac=0.3)
    assert str(error.value) == (
        f"{user_store}: made by trainer examples.digits_examples:train; to score it, add `def gradient_networks(job): "
        "...` to examples.digits_examples, returning the job's trained network as "
        "dmtoolkit.estimate.networks.Network (docs/trainers.md, \"Gradients from your trainer\")")
    assert "\n" not in str(error.value) and not (tmp_path / "g.h5").exists()


@pytest.mark.parametrize(("hook", "message"), [
    (lambda job: "junk", r"^examples\.digits_examples:gradient_networks returned for row \d+ a str; expected a "
                         r"dmtoolkit\.estimate\.networks\.Network or a non-empty list of them"),
    (lambda job: 1 / 0, r"^examples\.digits_examples:gradient_networks failed on row \d+: ZeroDivisionError: "
                        "division by zero$"),
])
def test_a_hook_that_fails_or_returns_junk_is_one_trainer_error_line(user_store: Path, tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch, hook,
                                                                     message: str) -> None:
    import examples.digits_examples as module

    monkeypatch.setattr(module, "gradient_networks", hook)
    with pytest.raises(TrainerError) as error:
        fit_gradient(user_store, tmp_path / "g.h5", models=1, proj_dim=16, holdout_frac=0.3, seed=3)
    assert re.search(message, str(error.value)) and "\n" not in str(error.value)


def test_a_hook_whose_network_does_not_match_the_store_is_refused(user_store: Path, tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    import examples.digits_examples as module

    real = module.gradient_networks

    def short_pool(job):  # noqa: ANN001, ANN202
        network = real(job)[-1]
        return Network(network.params, network.source_logits, network.target_logits,
                       Examples(network.pool.x[:10], network.pool.y[:10]), network.targets)

    monkeypatch.setattr(module, "gradient_networks", short_pool)
    with pytest.raises(TrainerError, match="pool inputs of 10 examples with labels \\(10,\\); the store's pool has 170"):
        fit_gradient(user_store, tmp_path / "g.h5", models=1, proj_dim=16, holdout_frac=0.3)


def test_a_hook_whose_source_test_is_not_examples_is_refused(user_store: Path, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    import dataclasses

    import examples.digits_examples as module

    real = module.gradient_networks
    monkeypatch.setattr(module, "gradient_networks",
                        lambda job: [dataclasses.replace(n, source_test=(n.pool.x, n.pool.y)) for n in real(job)])
    with pytest.raises(TrainerError, match=r"^examples\.digits_examples:gradient_networks returned for row \d+ a "
                                           r"network \(epoch 10\) whose source_test is not Examples\(x, y\)"):
        fit_gradient(user_store, tmp_path / "g.h5", models=1, proj_dim=16, holdout_frac=0.3)
    assert not (tmp_path / "g.h5").exists()


def test_user_stores_refuse_the_builtin_only_settings(user_store: Path, tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"from trainer examples\.digits_examples:train, not the built-in networks "
                                        r"\(their training and features\), which `dmtoolkit gradient --checkpoints` needs"):
        fit_gradient(user_store, tmp_path / "g.h5", models=1, checkpoints=3, holdout_frac=0.3)
    with pytest.raises(UserError, match=r"from trainer examples\.digits_examples:train, not the built-in networks "
                                        r"\(their training and features\), which `dmtoolkit gradient --head "
                                        r"differentiated` needs"):
        fit_gradient(user_store, tmp_path / "g.h5", models=1, head="differentiated", holdout_frac=0.3)


def test_a_user_store_is_scored_with_its_own_checkpoints(user_store: Path, tmp_path: Path) -> None:
    model = fit_gradient(user_store, tmp_path / "g.h5", models=2, proj_dim=0, lam=0.1, holdout_frac=0.3)
    assert [r.checkpoints for r in model.records_] == [("epoch 10", "epoch 20")] * 2
    assert all(r.margin_error < 1e-5 for r in model.records_)  # the hook reproduces the trainer's rows
    assert model.coef_.shape == (170, 100) and model.num_params_ == 64 * 8 + 8 + 8 * 10 + 10
