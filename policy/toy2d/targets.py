"""2D targets, the mixture's closed-form posterior, exact denoisers and the MMD metric.

Targets (docs/reference.md, Maths):
- ``mixture``: 0.5 N((3, 3), 0.5^2 I) + 0.5 N((-3, 3), 0.5^2 I). Under the flow-matching
  schedule its posterior p(x0 | x_t) is a two-component Gaussian mixture in closed form.
- ``checkerboard`` (FFJORD form): x1 = 4u - 2, x2 = u' - 2 randint{0,1} + (floor(x1) mod 2),
  both times 2, so the support is 8 squares of side 2 inside [-4, 4]^2.

Metric: the unbiased MMD^2 estimate with an RBF kernel exp(-||x - y||^2 / (2 h^2)),
bandwidth h = MMD_BANDWIDTH = 1.0, on 4096 samples per side by default.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import torch
from torch import Tensor

from policy.diffusion import alpha_sigma, sample

MIXTURE_MEANS = torch.tensor([[3.0, 3.0], [-3.0, 3.0]])
MIXTURE_STD = 0.5
MMD_BANDWIDTH = 1.0


def sample_mixture(n: int, generator: torch.Generator | None = None) -> Tensor:
    """n samples (n, 2) from 0.5 N((3,3), 0.25 I) + 0.5 N((-3,3), 0.25 I)."""
    comp = torch.randint(0, 2, (n,), generator=generator)
    return MIXTURE_MEANS[comp] + MIXTURE_STD * torch.randn(n, 2, generator=generator)


def sample_checkerboard(n: int, generator: torch.Generator | None = None) -> Tensor:
    """n samples (n, 2) from the FFJORD checkerboard, scaled by 2 (support in [-4, 4]^2)."""
    x1 = torch.rand(n, generator=generator) * 4 - 2
    x2 = torch.rand(n, generator=generator) - torch.randint(0, 2, (n,), generator=generator).float() * 2
    x2 = x2 + torch.floor(x1) % 2
    return torch.stack([x1, x2], dim=1) * 2


TARGETS: dict[str, Callable[[int, torch.Generator | None], Tensor]] = {
    "mixture": sample_mixture,
    "checkerboard": sample_checkerboard,
}


def sample_target(name: str, n: int, generator: torch.Generator | None = None) -> Tensor:
    """n samples (n, 2) of a named 2D target."""
    if name not in TARGETS:
        raise ValueError(f"unknown 2D target {name!r}; choose one of {sorted(TARGETS)}")
    return TARGETS[name](n, generator)


def mixture_posterior(x_t: Tensor, t: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Closed-form p(x0 | x_t) of the mixture: a Gaussian mixture.

    With component k ~ N(mu_k, v I), v = 0.25: x_t | k ~ N(alpha mu_k, (alpha^2 v + sigma^2) I),
    x0 | x_t, k ~ N(m_k, s2 I) with s2 = v sigma^2 / (sigma^2 + alpha^2 v) and
    m_k = s2 (mu_k / v + alpha x_t / sigma^2).

    Args:
        x_t: (B, 2); t: (B,) in (0, 1).
    Returns:
        weights (B, K), means (B, K, 2), variance s2 (B,) (isotropic, shared by components).
    """
    x_t, t = x_t.double(), t.double()
    alpha, sigma = alpha_sigma(t)
    v = MIXTURE_STD**2
    mu = MIXTURE_MEANS.double().to(x_t.device)  # (K, 2)
    marg_var = alpha**2 * v + sigma**2  # (B,)
    sq = (x_t[:, None, :] - alpha[:, None, None] * mu[None]).pow(2).sum(-1)  # (B, K)
    weights = torch.softmax(-0.5 * sq / marg_var[:, None], dim=-1)  # equal priors, shared variance
    s2 = v * sigma**2 / (sigma**2 + alpha**2 * v)
    means = s2[:, None, None] * (mu[None] / v + (alpha / sigma**2)[:, None, None] * x_t[:, None, :])
    return weights, means, s2


def mixture_posterior_mean(x_t: Tensor, t: Tensor) -> Tensor:
    """E[x0 | x_t] (B, 2): the ideal classical denoiser."""
    w, means, _ = mixture_posterior(x_t, t)
    return (w[..., None] * means).sum(1).to(x_t.dtype)


def mixture_posterior_std(x_t: Tensor, t: Tensor) -> Tensor:
    """Per-coordinate standard deviation of p(x0 | x_t), shape (B, 2)."""
    w, means, s2 = mixture_posterior(x_t, t)
    mean = (w[..., None] * means).sum(1)
    second = (w[..., None] * (means.pow(2) + s2[:, None, None])).sum(1)
    return (second - mean.pow(2)).clamp_min(0).sqrt().to(x_t.dtype)


class ExactMixturePosteriorSampler:
    """G(t, x_t, xi) returning exact samples of p(x0 | x_t): a perfect distributional denoiser.

    The noise xi has 3 coordinates: two Gaussian ones move the sample inside the component,
    the third, mapped to a uniform by the normal CDF, picks the component.
    """

    noise_shape = (3,)

    def __call__(self, t: Tensor, x_t: Tensor, xi: Tensor, cond: Any = None) -> Tensor:
        w, means, s2 = mixture_posterior(x_t, t)  # (B, K), (B, K, 2), (B,)
        u = 0.5 * (1 + torch.erf(xi[..., 2].double() / math.sqrt(2)))  # (B, m) uniform
        comp = (u > w[:, :1]).long()  # component 1 when u exceeds the weight of component 0
        mean = torch.gather(means, 1, comp[..., None].expand(-1, -1, 2))  # (B, m, 2)
        out = mean + s2.sqrt()[:, None, None] * xi[..., :2].double()
        return out.to(x_t.dtype)


class ExactMixturePosteriorMean:
    """G(t, x_t, xi) = E[x0 | x_t]: the ideal classical (MSE) denoiser; ignores xi."""

    noise_shape = (3,)

    def __call__(self, t: Tensor, x_t: Tensor, xi: Tensor, cond: Any = None) -> Tensor:
        return mixture_posterior_mean(x_t, t).unsqueeze(1).expand(-1, xi.shape[1], -1)


def mmd2_unbiased(x: Tensor, y: Tensor, bandwidth: float = MMD_BANDWIDTH) -> float:
    """Unbiased MMD^2 between samples x (N, D) and y (M, D), RBF kernel of bandwidth h.

    MMD^2 = mean_{i != i'} k(x_i, x_i') + mean_{j != j'} k(y_j, y_j') - 2 mean_{i, j} k(x_i, y_j).
    Can be slightly negative when the two distributions are equal.
    """
    x, y = x.double(), y.double()

    def k(a: Tensor, b: Tensor) -> Tensor:
        return torch.exp(-torch.cdist(a, b).pow(2) / (2 * bandwidth**2))

    n, m = len(x), len(y)
    kxx = (k(x, x).sum() - n) / (n * (n - 1))
    kyy = (k(y, y).sum() - m) / (m * (m - 1))
    return float(kxx + kyy - 2 * k(x, y).mean())


def sample_model(model: Any, n: int, steps: int, churn: float = 0.0, generator: torch.Generator | None = None) -> Tensor:
    """n samples (n, 2) from a 2D generator with `steps` sampling steps (NFE = steps)."""
    noise_shape = tuple(getattr(model, "noise_shape", (2,)))
    return sample(model, (n, 2), noise_shape, steps, churn, generator=generator)


def model_mmd(
    model: Any, target: str, steps: int, n: int = 4096, repeats: int = 1, churn: float = 0.0, seed: int = 0
) -> float:
    """MMD^2 between n model samples and n fresh target samples, averaged over repeats."""
    g = torch.Generator().manual_seed(seed)
    vals = [mmd2_unbiased(sample_model(model, n, steps, churn, g), sample_target(target, n, g)) for _ in range(repeats)]
    return sum(vals) / len(vals)


def noise_floor_mmd(target: str, n: int = 4096, repeats: int = 1, seed: int = 0) -> float:
    """MMD^2 between two independent target samples of size n: the metric's noise floor."""
    g = torch.Generator().manual_seed(seed)
    vals = [mmd2_unbiased(sample_target(target, n, g), sample_target(target, n, g)) for _ in range(repeats)]
    return sum(vals) / len(vals)


@torch.no_grad()
def posterior_std_metric(
    model: Any, times: tuple[float, ...] = (0.1, 0.3, 0.5, 0.7, 0.9), n_points: int = 256, k: int = 128, seed: int = 0
) -> dict[str, list[float]]:
    """Section 6.1's posterior-spread check on the mixture.

    For each t, draws n_points x_t from the marginal, k generator samples G(t, x_t, xi) each,
    and compares the per-coordinate sample std with the closed-form posterior std.

    Returns:
        {"t": [...], "true": mean true std, "model": mean model std, "abs_error": mean |diff|}.
    """
    g = torch.Generator().manual_seed(seed)
    noise_shape = tuple(getattr(model, "noise_shape", (2,)))
    out: dict[str, list[float]] = {"t": [], "true": [], "model": [], "abs_error": []}
    for tv in times:
        x0 = sample_mixture(n_points, g)
        t = torch.full((n_points,), tv)
        alpha, sigma = alpha_sigma(t)
        x_t = alpha[:, None] * x0 + sigma[:, None] * torch.randn(n_points, 2, generator=g)
        xi = torch.randn(n_points, k, *noise_shape, generator=g)
        est = model(t, x_t, xi, None).std(dim=1)  # (n_points, 2)
        true = mixture_posterior_std(x_t, t)
        out["t"].append(tv)
        out["true"].append(float(true.mean()))
        out["model"].append(float(est.mean()))
        out["abs_error"].append(float((est - true).abs().mean()))
    return out
