"""Schedule, time sampling, forward noising, weighting, the churn transition and the sampler.

Flow-matching schedule (paper eq. 3): alpha_t = 1 - t, sigma_t = t,
x_t = alpha_t x0 + sigma_t eps, logSNR(t) = 2 log(alpha_t / sigma_t).

The generator protocol shared by every module (2D MLP, image U-Net, LIBERO denoiser)::

    G(t: (B,), x_t: (B, *event), xi: (B, m, *noise), cond) -> x0_hat: (B, m, *event)

The m population members share t, x_t and cond (computed once per data point); only the
noise xi differs. Sampling uses m = 1. A classical (mean-predicting) model is the same
network trained with lam=0, beta=2, and samples through the same code: it learns to ignore xi.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Literal, Protocol

import torch
from torch import Tensor

from policy.scoring import LossConfig, ScoreTerms, scoring_rule_loss

Weighting = Literal["none", "sigmoid"]
DEFAULT_T_MAX = 1.0 - 1e-3


class Generator(Protocol):
    def __call__(self, t: Tensor, x_t: Tensor, xi: Tensor, cond: Any) -> Tensor: ...


def alpha_sigma(t: Tensor) -> tuple[Tensor, Tensor]:
    """Flow-matching schedule (eq. 3): alpha_t = 1 - t, sigma_t = t."""
    return 1.0 - t, t


def log_snr(t: Tensor) -> Tensor:
    """logSNR(t) = 2 log(alpha_t / sigma_t)."""
    alpha, sigma = alpha_sigma(t)
    return 2.0 * (torch.log(alpha) - torch.log(sigma))


def sample_times(batch: int, eps: float = 1e-2, device: torch.device | str = "cpu", generator: torch.Generator | None = None) -> Tensor:
    """Training times t ~ U[eps, 1 - eps], shape (batch,)."""
    if not 0.0 <= eps < 0.5:
        raise ValueError(f"time safety eps={eps} must be in [0, 0.5)")
    u = torch.rand(batch, device=device, generator=generator)
    return eps + (1.0 - 2.0 * eps) * u


def _bcast(v: Tensor, like: Tensor) -> Tensor:
    """(B,) -> (B, 1, ..., 1) to broadcast against like (B, *event)."""
    return v.reshape(v.shape[0], *([1] * (like.dim() - 1))).to(like.dtype)


def add_noise(x0: Tensor, t: Tensor, eps: Tensor | None = None) -> Tensor:
    """Forward noising x_t = alpha_t x0 + sigma_t eps. x0: (B, *event), t: (B,)."""
    if eps is None:
        eps = torch.randn_like(x0)
    alpha, sigma = alpha_sigma(t)
    return _bcast(alpha, x0) * x0 + _bcast(sigma, x0) * eps


def loss_weight(t: Tensor, kind: Weighting = "none", bias: float = 0.0) -> Tensor:
    """Per-sample loss weight w(t), shape (B,), for a loss written in x0-space.

    ``sigmoid`` is the sigmoid weighting of Kingma et al. (2021) / Hoogeboom et al. (2023):
    sigmoid(b - logSNR) in epsilon-space. Since an x0-space squared error is SNR times the
    epsilon-space one, the x0-space weight used here is exp(b) * sigmoid(logSNR - b), which
    makes the MSE case identical to the epsilon-space sigmoid loss.
    """
    if kind == "none":
        return torch.ones_like(t)
    if kind == "sigmoid":
        return math.exp(bias) * torch.sigmoid(log_snr(t) - bias)
    raise ValueError(f"weighting {kind!r} is unknown; use none or sigmoid")


def diffusion_loss(
    model: Generator,
    x0: Tensor,
    cond: Any,
    loss: LossConfig,
    noise_shape: tuple[int, ...],
    time_eps: float = 1e-2,
    weighting: Weighting = "none",
    weight_bias: float = 0.0,
) -> ScoreTerms:
    """The energy (or kernel) diffusion loss for a batch (eq. 14-16), per data point.

    Draws t ~ U[eps, 1-eps], x_t = alpha_t x0 + sigma_t eps, m noises xi, and scores
    the m generator samples G(t, x_t, xi, cond) against x0.

    Args:
        model: a Generator; cond is passed through unchanged (encode it once per sample).
        x0: (B, *event) clean data.
        noise_shape: per-sample shape of xi, without the population dimension.
    Returns:
        ScoreTerms of shape (B,), already weighted by w(t).
    """
    b = x0.shape[0]
    t = sample_times(b, time_eps, device=x0.device)
    x_t = add_noise(x0, t)
    xi = torch.randn(b, loss.population, *noise_shape, device=x0.device, dtype=x0.dtype)
    samples = model(t, x_t, xi, cond)
    expected = (b, loss.population, *x0.shape[1:])
    if tuple(samples.shape) != expected:
        raise ValueError(f"generator returned shape {tuple(samples.shape)}, expected (B, m, *event) = {expected}")
    return scoring_rule_loss(samples, x0, loss, loss_weight(t, weighting, weight_bias))


def transition_coefficients(t: Tensor, s: Tensor, churn: float) -> tuple[Tensor, Tensor, Tensor]:
    """Coefficients of the reverse transition with churn (eq. 4-6), for s < t.

    Returns (c_xt, c_x0, std) with x_s = c_xt x_t + c_x0 x0_hat + std * z.
    churn=0 is deterministic DDIM; churn=1 is the DDPM posterior q(x_s | x_t, x0).
    """
    if not 0.0 <= churn <= 1.0:
        raise ValueError(f"churn={churn} must be in [0, 1]")
    alpha_t, sigma_t = alpha_sigma(t)
    alpha_s, sigma_s = alpha_sigma(s)
    e2 = churn**2
    r01 = sigma_s / sigma_t
    r11 = (alpha_t / alpha_s) * r01
    r12 = r11 * r01
    r22 = r11**2
    c_xt = e2 * r12 + (1.0 - e2) * r01
    c_x0 = alpha_s * (1.0 - e2 * r22 - (1.0 - e2) * r11)
    var = sigma_s**2 * (1.0 - (e2 * r11 + 1.0 - e2) ** 2)
    return c_xt, c_x0, var.clamp_min(0.0).sqrt()


def reverse_transition(x_t: Tensor, x0_hat: Tensor, t: Tensor, s: Tensor, churn: float, noise: Tensor | None = None) -> Tensor:
    """Draw x_s given x_t and x0_hat (eq. 4-6). x_t, x0_hat: (B, *event); t, s: (B,)."""
    c_xt, c_x0, std = transition_coefficients(t.double(), s.double(), churn)
    if noise is None:
        noise = torch.randn_like(x_t)
    return _bcast(c_xt, x_t) * x_t + _bcast(c_x0, x_t) * x0_hat + _bcast(std, x_t) * noise


def time_grid(steps: int, t_max: float = DEFAULT_T_MAX) -> Tensor:
    """Uniform grid t_max = t_N > ... > t_0 = 0, shape (steps + 1,). NFE = steps."""
    if int(steps) != steps or steps < 1:
        raise ValueError(f"steps={steps} must be a positive integer")
    return torch.linspace(t_max, 0.0, int(steps) + 1, dtype=torch.float64)


Generators = torch.Generator | Sequence[torch.Generator] | None


def randn(shape: tuple[int, ...], generator: Generators, device: torch.device | str, dtype: torch.dtype) -> Tensor:
    """N(0, I) of ``shape``; with one generator per sample (a sequence of B), row i is drawn from
    generator i alone, so a sample's noise does not depend on what else is in the batch."""
    if generator is None or isinstance(generator, torch.Generator):
        return torch.randn(shape, device=device, dtype=dtype, generator=generator)
    if len(generator) != shape[0]:
        raise ValueError(f"got {len(generator)} generators for a batch of {shape[0]}; give one per sample")
    rows = [torch.randn(shape[1:], device=g.device, dtype=dtype, generator=g) for g in generator]
    return torch.stack(rows).to(device)


@torch.no_grad()
def sample(
    model: Generator,
    shape: tuple[int, ...],
    noise_shape: tuple[int, ...],
    steps: int,
    churn: float = 0.0,
    cond: Any = None,
    t_max: float = DEFAULT_T_MAX,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    generator: Generators = None,
    xi_scale: float = 1.0,
) -> Tensor:
    """Algorithm 2: start from x ~ N(0, I) at t_max and take `steps` reverse transitions.

    At each grid step k: draw xi, x0_hat = G(t_k, x_{t_k}, xi, cond), then draw
    x_{t_{k-1}} from the churn transition; the last step returns x0_hat.

    Args:
        shape: (B, *event) of the samples; noise_shape: per-sample shape of xi.
        generator: one for the batch, or one per sample (see :func:`randn`).
        xi_scale: multiplies the generator noise xi (1: as trained; below 1 narrows each draw
            toward the generator's central output for its x_t, a temperature; x and the
            transitions' noise are unchanged, so the draws use the same random numbers).
    Returns:
        (B, *event) samples x0.
    """
    grid = time_grid(steps, t_max)
    b = shape[0]
    x = randn(shape, generator, device, dtype)
    x0_hat = x
    for k in range(int(steps)):
        t = torch.full((b,), float(grid[k]), device=device, dtype=dtype)
        xi = xi_scale * randn((b, 1, *noise_shape), generator, device, dtype)
        x0_hat = model(t, x, xi, cond)[:, 0]
        if k + 1 < steps:
            s = torch.full((b,), float(grid[k + 1]), device=device, dtype=dtype)
            z = randn(shape, generator, device, dtype)
            x = reverse_transition(x, x0_hat, t, s, churn, z)
    return x0_hat
