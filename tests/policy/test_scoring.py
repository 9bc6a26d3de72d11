"""The loss core: MSE special case, propriety of the energy and kernel scores, errors."""

import math

import pytest
import torch

from policy.scoring import (
    LossConfig,
    energy_score_loss,
    kernel,
    kernel_score_loss,
    median_bandwidth,
    scoring_rule_loss,
)


def test_lambda0_beta2_is_exactly_the_x0_mse():
    g = torch.Generator().manual_seed(0)
    target = torch.randn(5, 8, 7, generator=g)
    samples = torch.randn(5, 1, 8, 7, generator=g, requires_grad=True)
    terms = energy_score_loss(samples, target, lam=0.0, beta=2.0)
    mse = torch.nn.functional.mse_loss(samples[:, 0], target, reduction="none").flatten(1).sum(1)
    assert torch.equal(terms.loss, mse)
    assert torch.equal(terms.interaction, torch.zeros(5))
    # and the gradients agree exactly
    (g1,) = torch.autograd.grad(terms.loss.sum(), samples)
    (g2,) = torch.autograd.grad(mse.sum(), samples)
    assert torch.equal(g1, g2)


def test_lambda0_beta2_with_population_averages_the_mse():
    target = torch.randn(3, 4)
    samples = torch.randn(3, 6, 4)
    terms = scoring_rule_loss(samples, target, LossConfig(kind="energy", lam=0.0, beta=2.0, population=6))
    expected = (samples - target[:, None]).pow(2).sum(-1).mean(1)
    torch.testing.assert_close(terms.loss, expected, rtol=0, atol=1e-6)


def test_mse_config_is_the_classical_loss_and_refuses_other_parameters():
    cfg = LossConfig(kind="mse", population=1)
    assert cfg.is_classical and cfg.lam == 0.0 and cfg.beta == 2.0
    assert LossConfig(kind="mse", lam=0.0, beta=2.0, population=1) == cfg
    with pytest.raises(ValueError, match="'mse' means lam=0, beta=2"):
        LossConfig(kind="mse", lam=0.5, population=1)
    default = LossConfig()
    assert (default.kind, default.lam, default.beta) == ("energy", 1.0, 1.0) and not default.is_classical


def test_energy_terms_by_hand():
    target = torch.tensor([[0.0, 0.0]])
    samples = torch.tensor([[[3.0, 4.0], [0.0, 0.0]]])  # distances to x0: 5 and 0; between: 5
    terms = energy_score_loss(samples, target, lam=1.0, beta=1.0, delta=0.0)
    assert terms.confinement.item() == pytest.approx(2.5)
    assert terms.interaction.item() == pytest.approx(-0.5 * 5.0)  # lam/(2 m (m-1)) * 2 * 5
    assert terms.loss.item() == pytest.approx(0.0)


def _gaussian_scale_argmin(lam: float, beta: float, score: str = "energy") -> float:
    """Argmin over s of the expected loss of a N(0, s^2) generator against N(0, 1) data."""
    g = torch.Generator().manual_seed(1)
    b, m = 6000, 8
    y = torch.randn(b, 1, generator=g)
    z = torch.randn(b, m, 1, generator=g)  # common random numbers across the grid
    grid = torch.linspace(0.05, 2.0, 79)
    values = []
    for s in grid:
        if score == "energy":
            values.append(energy_score_loss(s * z, y, lam=lam, beta=beta).loss.mean())
        else:
            values.append(kernel_score_loss(s * z, y, score, bandwidth=1.0, lam=lam).loss.mean())
    return float(grid[int(torch.stack(values).argmin())])


@pytest.mark.parametrize("beta", [1.0, 1.5])
def test_energy_score_is_minimised_at_the_true_scale_when_lambda_is_one(beta):
    assert _gaussian_scale_argmin(1.0, beta) == pytest.approx(1.0, abs=0.08)


@pytest.mark.parametrize("lam,beta", [(0.5, 1.0), (0.7, 1.0), (0.5, 1.5)])
def test_lambda_below_one_underestimates_the_scale(lam, beta):
    # Section 4.1: for N(0, s^2) against N(0, 1) in 1D the expected loss is proportional to
    # (s^2 + 1)^(b/2) - lam/2 (2 s^2)^(b/2), minimised at s^2 = 1 / (2 lam^(-2/(2-b)) - 1).
    s_star = math.sqrt(1.0 / (2.0 * lam ** (-2.0 / (2.0 - beta)) - 1.0))
    found = _gaussian_scale_argmin(lam, beta)
    assert found == pytest.approx(s_star, abs=0.06)
    assert found < 0.9


@pytest.mark.parametrize("name", ["rbf", "imq", "exp"])
def test_kernel_scores_are_proper(name):
    assert _gaussian_scale_argmin(1.0, 1.0, score=name) == pytest.approx(1.0, abs=0.12)


@pytest.mark.parametrize("name", ["rbf", "imq", "exp"])
def test_kernels_equal_one_on_the_diagonal_and_decrease(name):
    d2 = torch.tensor([0.0, 0.5, 2.0, 8.0])
    k = kernel(d2, name, bandwidth=1.0)
    assert k[0].item() == pytest.approx(1.0)
    assert bool((k[1:] < k[:-1]).all())


@pytest.mark.parametrize(
    "name,expected",
    [
        ("rbf", math.exp(-2.0 / (2 * 1.5**2))),  # exp(-d^2 / (2 s^2)) = exp(-4/9)
        ("imq", 3.0 / math.sqrt(17.0)),  # (1 + d^2 / c^2)^(-1/2) = (1 + 8/9)^(-1/2)
        ("exp", math.exp(-math.sqrt(2.0) / 1.5)),  # exp(-||d|| / s)
    ],
    ids=["rbf", "imq", "exp"],
)
def test_kernel_values_at_a_known_distance(name, expected):
    # d^2 = 2, bandwidth 1.5 (docs/reference.md, Maths); delta=0 turns the exp kernel's smoothing off
    d2 = torch.tensor([2.0], dtype=torch.float64)
    assert kernel(d2, name, bandwidth=1.5, delta=0.0).item() == pytest.approx(expected, rel=1e-12)
    # the default smoothing moves the value by well under a percent at this distance
    assert kernel(d2, name, bandwidth=1.5).item() == pytest.approx(expected, rel=1e-3)


def test_rbf_kernel_score_by_hand():
    # x0 = (0, 0); samples (1, 0) and (0, 2): d^2 to x0 = 1 and 4, between them 5. s = 1, lam = 0.6:
    #   confinement = -(e^(-1/2) + e^(-2)) / 2,  interaction = lam/(2 m (m-1)) * 2 e^(-5/2) = lam/2 e^(-5/2)
    target = torch.tensor([[0.0, 0.0]], dtype=torch.float64)
    samples = torch.tensor([[[1.0, 0.0], [0.0, 2.0]]], dtype=torch.float64)
    terms = kernel_score_loss(samples, target, "rbf", bandwidth=1.0, lam=0.6)
    conf = -(math.exp(-0.5) + math.exp(-2.0)) / 2
    inter = 0.3 * math.exp(-2.5)
    assert terms.confinement.item() == pytest.approx(conf, rel=1e-12)
    assert terms.interaction.item() == pytest.approx(inter, rel=1e-12)
    assert terms.loss.item() == pytest.approx(conf + inter, rel=1e-12)


@pytest.mark.parametrize("beta", [1.0, 1.5])
def test_energy_interaction_gradient_by_hand(beta):
    # d/dx_j of -lam/(2 m (m-1)) sum_{k != l} ||x_k - x_l||^beta: x_j sits in the pairs (j, l) and
    # (l, j), so the gradient is -lam beta / (m (m-1)) sum_{l != j} ||x_j - x_l||^(beta-2) (x_j - x_l).
    # The confinement gradient is (beta/m) ||x_j - x0||^(beta-2) (x_j - x0). Norms are the smoothed
    # ||d||_delta = sqrt(||d||^2 + delta) of the module docstring (delta > 0 is needed: the diagonal j = l).
    lam, m, delta = 0.7, 3, 1e-6
    target = torch.tensor([[0.5, -1.0]], dtype=torch.float64)
    pts = torch.tensor([[1.0, 2.0], [-1.0, 0.5], [3.0, -2.0]], dtype=torch.float64)
    samples = pts[None].clone().requires_grad_(True)
    terms = energy_score_loss(samples, target, lam=lam, beta=beta, delta=delta)
    (g_inter,) = torch.autograd.grad(terms.interaction.sum(), samples, retain_graph=True)
    (g_loss,) = torch.autograd.grad(terms.loss.sum(), samples)
    want_inter = torch.zeros_like(pts)
    want_conf = torch.zeros_like(pts)
    for j in range(m):
        for k in range(m):
            if k != j:
                d = pts[j] - pts[k]
                want_inter[j] -= lam * beta / (m * (m - 1)) * (d.norm() ** 2 + delta) ** (beta / 2 - 1) * d
        d0 = pts[j] - target[0]
        want_conf[j] = beta / m * (d0.norm() ** 2 + delta) ** (beta / 2 - 1) * d0
    torch.testing.assert_close(g_inter[0], want_inter, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(g_loss[0], want_conf + want_inter, rtol=1e-10, atol=1e-12)


def test_per_sample_weights_scale_every_term():
    samples, target = torch.randn(4, 3, 2), torch.randn(4, 2)
    w = torch.tensor([0.0, 1.0, 2.0, 3.0])
    plain = energy_score_loss(samples, target)
    weighted = energy_score_loss(samples, target, weights=w)
    for a, b in zip(weighted, plain):
        torch.testing.assert_close(a, b * w)


def test_small_beta_has_finite_gradients_at_coinciding_samples():
    samples = torch.zeros(2, 4, 3, requires_grad=True)
    loss = energy_score_loss(samples, torch.zeros(2, 3), lam=1.0, beta=0.1).loss.sum()
    (grad,) = torch.autograd.grad(loss, samples)
    assert torch.isfinite(grad).all()


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(lam=0.5, beta=1.0, m=1), "m >= 2"),
        (dict(lam=1.0, beta=0.0, m=4), "beta"),
        (dict(lam=1.0, beta=2.5, m=4), "beta"),
        (dict(lam=1.5, beta=1.0, m=4), "lambda"),
    ],
)
def test_bad_parameters_raise_clear_errors(kwargs, match):
    samples = torch.randn(2, kwargs["m"], 3)
    with pytest.raises(ValueError, match=match):
        energy_score_loss(samples, torch.randn(2, 3), lam=kwargs["lam"], beta=kwargs["beta"])
    with pytest.raises(ValueError, match=match):
        LossConfig(kind="energy", lam=kwargs["lam"], beta=kwargs["beta"], population=kwargs["m"])


def test_shape_mismatch_raises():
    with pytest.raises(ValueError, match="shape mismatch"):
        energy_score_loss(torch.randn(2, 4, 3), torch.randn(2, 5))
    with pytest.raises(ValueError, match="shape mismatch"):
        kernel_score_loss(torch.randn(2, 4, 3), torch.randn(3, 3))
    with pytest.raises(ValueError, match="population"):
        scoring_rule_loss(torch.randn(2, 4, 3), torch.randn(2, 3), LossConfig(population=8))
    with pytest.raises(ValueError, match="weights"):
        energy_score_loss(torch.randn(2, 4, 3), torch.randn(2, 3), weights=torch.ones(3))


def test_unknown_kernel_and_kind_raise():
    with pytest.raises(ValueError, match="kernel"):
        kernel_score_loss(torch.randn(2, 4, 3), torch.randn(2, 3), kernel_name="cauchy")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="unknown"):
        LossConfig(kind="l1")  # type: ignore[arg-type]


def test_median_bandwidth_of_unit_gaussian():
    x = torch.randn(2000, 2, generator=torch.Generator().manual_seed(0))
    # the distance between two N(0, I_2) points is Rayleigh(sqrt 2): median sqrt(2) * sqrt(2 ln 2)
    assert median_bandwidth(x) == pytest.approx(math.sqrt(2) * math.sqrt(2 * math.log(2)), rel=0.05)
    assert median_bandwidth(x, multiplier=2.0) == pytest.approx(2 * median_bandwidth(x))
