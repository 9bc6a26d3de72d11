"""Schedule, weighting, the churn transition and the sampler."""

import math

import pytest
import torch

from policy.diffusion import (
    add_noise,
    alpha_sigma,
    diffusion_loss,
    log_snr,
    loss_weight,
    reverse_transition,
    sample,
    sample_times,
    time_grid,
    transition_coefficients,
)
from policy.scoring import LossConfig


def test_schedule_and_forward_noising():
    t = torch.tensor([0.0, 0.25, 0.9])
    alpha, sigma = alpha_sigma(t)
    torch.testing.assert_close(alpha, 1 - t)
    torch.testing.assert_close(sigma, t)
    x0, eps = torch.randn(3, 8, 7), torch.randn(3, 8, 7)
    torch.testing.assert_close(add_noise(x0, t, eps), (1 - t)[:, None, None] * x0 + t[:, None, None] * eps)
    torch.testing.assert_close(log_snr(torch.tensor([0.5])), torch.tensor([0.0]))


def test_training_times_respect_the_safety_epsilon():
    t = sample_times(10000, eps=0.01, generator=torch.Generator().manual_seed(0))
    assert t.min() >= 0.01 and t.max() <= 0.99
    assert abs(t.mean().item() - 0.5) < 0.02
    with pytest.raises(ValueError):
        sample_times(4, eps=0.7)


def test_sigmoid_weight_in_x0_space_equals_the_epsilon_space_sigmoid_loss():
    b = -1.5
    t = torch.tensor([0.05, 0.3, 0.6, 0.95])
    x0, eps, x0_hat = torch.randn(4, 2), torch.randn(4, 2), torch.randn(4, 2)
    x_t = add_noise(x0, t, eps)
    alpha, sigma = alpha_sigma(t)
    eps_hat = (x_t - alpha[:, None] * x0_hat) / sigma[:, None]
    eps_loss = torch.sigmoid(b - log_snr(t)) * (eps - eps_hat).pow(2).sum(-1)
    x0_loss = loss_weight(t, "sigmoid", b) * (x0 - x0_hat).pow(2).sum(-1)
    torch.testing.assert_close(x0_loss, eps_loss, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(loss_weight(t, "none"), torch.ones(4))
    with pytest.raises(ValueError, match="weighting"):
        loss_weight(t, "snr")  # type: ignore[arg-type]


@pytest.mark.parametrize("churn", [0.0, 0.3, 0.7, 1.0])
def test_transition_preserves_the_marginals(churn):
    # x0 ~ N(mu, v); (x0, x_t) drawn jointly, so x0 is an exact posterior sample given x_t.
    g = torch.Generator().manual_seed(0)
    n, mu, v = 400_000, 1.5, 0.3
    t, s = torch.full((n,), 0.8), torch.full((n,), 0.35)
    x0 = mu + math.sqrt(v) * torch.randn(n, 1, generator=g)
    x_t = add_noise(x0, t, torch.randn(n, 1, generator=g))
    x_s = reverse_transition(x_t, x0, t, s, churn, torch.randn(n, 1, generator=g))
    a_s, s_s = 1 - 0.35, 0.35
    assert x_s.mean().item() == pytest.approx(a_s * mu, abs=0.01)
    assert x_s.var().item() == pytest.approx(a_s**2 * v + s_s**2, rel=0.01)
    # and the joint with x0 is that of q(x_s | x0): Cov(x_s, x0) = alpha_s v
    cov = ((x_s - x_s.mean()) * (x0 - x0.mean())).mean().item()
    assert cov == pytest.approx(a_s * v, rel=0.02)


def test_churn_one_is_the_ddpm_posterior_and_churn_zero_is_ddim():
    t, s = torch.tensor([0.9, 0.5, 0.2], dtype=torch.float64), torch.tensor([0.6, 0.25, 0.05], dtype=torch.float64)
    a_t, s_t = alpha_sigma(t)
    a_s, s_s = alpha_sigma(s)
    a_ts = a_t / a_s
    var_ts = s_t**2 - a_ts**2 * s_s**2
    c_xt, c_x0, std = transition_coefficients(t, s, 1.0)
    torch.testing.assert_close(c_xt, a_ts * s_s**2 / s_t**2)
    torch.testing.assert_close(c_x0, a_s * var_ts / s_t**2)
    torch.testing.assert_close(std, (var_ts * s_s**2 / s_t**2).sqrt())
    c_xt, c_x0, std = transition_coefficients(t, s, 0.0)
    torch.testing.assert_close(std, torch.zeros(3, dtype=torch.float64))
    torch.testing.assert_close(c_xt, s_s / s_t)  # x_s = alpha_s x0_hat + sigma_s eps_hat
    torch.testing.assert_close(c_x0, a_s - a_t * s_s / s_t)
    with pytest.raises(ValueError, match="churn"):
        transition_coefficients(t, s, 1.5)


def test_transition_coefficients_at_an_interior_churn_by_hand():
    # t=0.8, s=0.4, churn e=0.5 (e^2 = 1/4): alpha_t=0.2, sigma_t=0.8, alpha_s=0.6, sigma_s=0.4, so
    # r01 = 1/2, r11 = (0.2/0.6)(1/2) = 1/6, r12 = 1/12, r22 = 1/36 and (docs/reference.md, Maths, eq. 4-6)
    #   c_xt = e^2 r12 + (1-e^2) r01               = 1/48 + 3/8           = 19/48
    #   c_x0 = alpha_s (1 - e^2 r22 - (1-e^2) r11)  = 0.6 (1 - 1/144 - 1/8) = 0.6 * 125/144
    #   var  = sigma_s^2 (1 - (e^2 r11 + 1 - e^2)^2) = 0.16 (1 - (19/24)^2) = 0.16 * 215/576
    # Using e where e^2 belongs gives c_xt = 7/24, c_x0 = 0.6 * 47/72, var = 0.16 (1 - (7/12)^2).
    t, s = torch.tensor([0.8], dtype=torch.float64), torch.tensor([0.4], dtype=torch.float64)
    c_xt, c_x0, std = transition_coefficients(t, s, 0.5)
    assert c_xt.item() == pytest.approx(19 / 48, rel=1e-12)
    assert c_x0.item() == pytest.approx(0.6 * 125 / 144, rel=1e-12)
    assert std.item() == pytest.approx(math.sqrt(0.16 * 215 / 576), rel=1e-12)
    # and reverse_transition applies exactly these coefficients
    x_t, x0_hat, z = torch.tensor([[1.0, -2.0]]), torch.tensor([[0.5, 3.0]]), torch.tensor([[-1.0, 0.25]])
    expected = 19 / 48 * x_t + 0.6 * 125 / 144 * x0_hat + math.sqrt(0.16 * 215 / 576) * z
    torch.testing.assert_close(reverse_transition(x_t, x0_hat, t.float(), s.float(), 0.5, z), expected)


def test_time_grid():
    grid = time_grid(4)
    assert grid.shape == (5,) and grid[-1] == 0 and grid[0] == pytest.approx(1 - 1e-3)
    assert bool((grid[1:] < grid[:-1]).all())
    for bad in (0, -1, 2.5):
        with pytest.raises(ValueError, match="steps"):
            time_grid(bad)  # type: ignore[arg-type]


class _Recorder:
    """A generator that records its calls and returns a fixed x0 guess for any event shape."""

    def __init__(self):
        self.calls = []

    def __call__(self, t, x_t, xi, cond):
        self.calls.append((t.clone(), x_t.shape, xi.shape, cond))
        return torch.full((x_t.shape[0], xi.shape[1], *x_t.shape[1:]), 0.25)


@pytest.mark.parametrize("steps", [1, 2, 5])
def test_sampler_calls_the_generator_once_per_step_with_any_event_shape(steps):
    g = _Recorder()
    out = sample(g, (3, 8, 7), (8, 4), steps, churn=0.5, cond="obs")
    assert out.shape == (3, 8, 7)
    torch.testing.assert_close(out, torch.full((3, 8, 7), 0.25))  # the last step returns x0_hat
    assert len(g.calls) == steps
    assert all(c[2] == (3, 1, 8, 4) and c[3] == "obs" for c in g.calls)
    times = [float(c[0][0]) for c in g.calls]
    assert times[0] == pytest.approx(1 - 1e-3) and times == sorted(times, reverse=True)


def _uses_its_noise(t, x_t, xi, cond):
    """A stand-in generator whose output depends on x_t and on the noise xi (event = noise shape)."""
    return 0.5 * x_t.unsqueeze(1) + xi


def test_sampler_is_reproducible_with_a_torch_generator():
    # The stand-in uses x_t and xi, so the output depends on every random draw of the sampler
    # (x_1, each xi, each churn noise z): all of them must come from the generator.
    def run(seed):
        return sample(_uses_its_noise, (2, 3), (3,), 3, churn=1.0, generator=torch.Generator().manual_seed(seed))

    torch.manual_seed(0)
    a = run(3)
    torch.manual_seed(1)  # the global RNG must not matter
    b = run(3)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert not torch.allclose(a, run(4))  # and the seed does


def test_xi_scale_multiplies_only_the_generator_noise():
    """xi_scale s: every draw of xi is s times the one it replaces (a generator linear in xi moves
    by exactly that), x_1 and the transitions' noise are the same random numbers; 0 leaves a
    sampler that no longer depends on xi."""
    def run(scale, seed=3, steps=1):
        return sample(_uses_its_noise, (2, 3), (3,), steps, generator=torch.Generator().manual_seed(seed), xi_scale=scale)

    full, half, none = run(1.0), run(0.5), run(0.0)
    torch.testing.assert_close(run(1.0), sample(_uses_its_noise, (2, 3), (3,), 1, generator=torch.Generator().manual_seed(3)))
    x1 = torch.randn((2, 3), generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(none, 0.5 * x1)  # one step: 0.5 x_1 + 0 * xi
    torch.testing.assert_close(half - none, 0.5 * (full - none))
    assert not torch.allclose(run(0.0, steps=3), run(1.0, steps=3))


def test_diffusion_loss_equals_the_hand_computed_weighted_energy_loss():
    # The generator records what it was given; the loss is recomputed by hand from eq. 14-16
    # with the x0-space sigmoid weight exp(b) sigmoid(logSNR - b), logSNR = 2 log((1-t)/t).
    seen = {}

    def gen(t, x_t, xi, cond):
        seen.update(t=t.clone(), x_t=x_t.clone(), xi=xi.clone())
        return 0.3 * x_t.unsqueeze(1) + xi

    torch.manual_seed(0)
    b, m, lam, bias = 3, 3, 0.7, -1.0
    x0 = torch.randn(b, 2, dtype=torch.float64)
    terms = diffusion_loss(gen, x0, None, LossConfig(lam=lam, beta=1.0, population=m, delta=0.0), (2,),
                           time_eps=0.05, weighting="sigmoid", weight_bias=bias)
    t, x_t, xi = seen["t"], seen["x_t"], seen["xi"]
    assert t.shape == (b,) and xi.shape == (b, m, 2) and bool(((t >= 0.05) & (t <= 0.95)).all())
    expected = []
    for i in range(b):
        ti = float(t[i])
        xs = [0.3 * x_t[i] + xi[i, j] for j in range(m)]
        confinement = sum(float((xj - x0[i]).norm()) for xj in xs) / m
        spread = sum(float((xs[j] - xs[k]).norm()) for j in range(m) for k in range(m) if j != k)
        snr = 2 * math.log((1 - ti) / ti)
        w = math.exp(bias) / (1 + math.exp(-(snr - bias)))
        expected.append(w * (confinement - lam / (2 * m * (m - 1)) * spread))
    torch.testing.assert_close(terms.loss, torch.tensor(expected, dtype=torch.float64), rtol=1e-6, atol=1e-9)  # t is float32


def test_diffusion_loss_noises_x0_with_the_flow_matching_schedule():
    seen = {}

    def gen(t, x_t, xi, cond):
        seen.update(t=t.clone(), x_t=x_t.clone())
        return x_t.unsqueeze(1).expand(-1, xi.shape[1], -1)

    torch.manual_seed(0)
    x0 = 3.0 + torch.randn(4000, 2, dtype=torch.float64)
    diffusion_loss(gen, x0, None, LossConfig(kind="mse", population=1), (2,))
    t = seen["t"][:, None]
    eps = (seen["x_t"] - (1 - t) * x0) / t  # x_t = alpha_t x0 + sigma_t eps must leave eps ~ N(0, I)
    assert eps.mean().abs().item() < 0.05 and eps.std().item() == pytest.approx(1.0, abs=0.05)


def test_diffusion_loss_shapes_and_generator_shape_check():
    def good(t, x_t, xi, cond):
        return x_t.unsqueeze(1).expand(-1, xi.shape[1], *x_t.shape[1:]) + 0.1 * xi[..., :7]

    x0 = torch.randn(5, 8, 7)
    terms = diffusion_loss(good, x0, None, LossConfig(population=4), (8, 7), weighting="sigmoid", weight_bias=-1.0)
    assert terms.loss.shape == (5,) and torch.isfinite(terms.loss).all()

    def bad(t, x_t, xi, cond):
        return x_t

    with pytest.raises(ValueError, match="expected"):
        diffusion_loss(bad, x0, None, LossConfig(population=4), (8, 7))
