"""The one loss core: generalized energy score and kernel scores (paper eq. 14-16).

Every module (2D, images, LIBERO policy) calls this file; none re-implements a norm,
a kernel or the population average.

Shapes: generator samples ``samples`` are ``(B, m, *event)``, the data ``target`` is
``(B, *event)``; the event dimensions are flattened so a norm is the Euclidean norm of
the whole event (an 8x7 action chunk, an image, a 2D point).

Energy diffusion loss for one data point x0 and m generator samples x^_j (eq. 14-16)::

    L = (1/m) sum_j ||x^_j - x0||^beta  -  lam / (2 m (m-1)) sum_{j != j'} ||x^_j - x^_j'||^beta

Kernel diffusion loss (k(x, x) = 1)::

    L = -(1/m) sum_j k(x^_j, x0)  +  lam / (2 m (m-1)) sum_{j != j'} k(x^_j, x^_j')

For beta < 2 the norm is smoothed, ``||d||_delta = sqrt(||d||^2 + delta)`` with
``delta = 1e-6`` by default, so that gradients stay finite when two samples coincide
(beta < 1 would otherwise have an infinite gradient at 0). For beta == 2 no smoothing is
used: lam=0, beta=2 is then *exactly* the x0-prediction squared error
``sum((x^ - x0)^2)`` over the event, averaged over the population.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, NamedTuple

import torch
from torch import Tensor

KernelName = Literal["rbf", "imq", "exp"]
LossKind = Literal["energy", "mse", "rbf", "imq", "exp"]

DEFAULT_DELTA = 1e-6


class ScoreTerms(NamedTuple):
    """Per-sample loss and its two terms, each of shape (B,).

    ``loss == confinement + interaction``. ``confinement`` pulls samples to the data
    (mean distance or minus mean kernel); ``interaction`` is the lambda-weighted spread
    term *as it enters the loss* (negative for the energy score, positive for kernels).
    """

    loss: Tensor
    confinement: Tensor
    interaction: Tensor


@dataclass(frozen=True)
class LossConfig:
    """A scoring-rule loss. ``kind='mse'`` is the energy loss with lam=0, beta=2.

    Attributes:
        kind: ``energy``, ``mse`` or a kernel (``rbf``, ``imq``, ``exp``).
        lam: weight of the interaction term, in [0, 1] (default 1: strictly proper).
        beta: norm exponent of the energy score, in (0, 2] (default 1). ``kind='mse'``
            fixes lam=0, beta=2 and refuses other values.
        population: m, the number of generator samples per data point.
        bandwidth: kernel bandwidth (s for rbf/exp, c for imq), in event-norm units.
        delta: smoothing of the norm for beta < 2.
    """

    kind: LossKind = "energy"
    lam: float | None = None
    beta: float | None = None
    population: int = 8
    bandwidth: float = 1.0
    delta: float = DEFAULT_DELTA

    def __post_init__(self) -> None:
        if self.kind not in ("energy", "mse", "rbf", "imq", "exp"):
            raise ValueError(f"loss kind {self.kind!r} is unknown; use energy, mse, rbf, imq or exp")
        if self.kind == "mse":
            if (self.lam not in (None, 0.0)) or (self.beta not in (None, 2.0)):
                raise ValueError(f"loss kind 'mse' means lam=0, beta=2 (got lam={self.lam}, beta={self.beta}); "
                                 "use kind='energy' for other values")
            object.__setattr__(self, "lam", 0.0)
            object.__setattr__(self, "beta", 2.0)
        else:  # defaults: the strictly proper energy score (lam=1, beta=1)
            object.__setattr__(self, "lam", 1.0 if self.lam is None else float(self.lam))
            object.__setattr__(self, "beta", 1.0 if self.beta is None else float(self.beta))
        if self.population < 1:
            raise ValueError(f"population m={self.population} must be >= 1")
        _check_lambda_population(self.lam, self.population)
        if self.kind in ("energy", "mse"):
            _check_beta(self.beta)
        elif not self.bandwidth > 0:
            raise ValueError(f"kernel bandwidth={self.bandwidth} must be > 0")

    @property
    def is_classical(self) -> bool:
        """True for the classical (mean-predicting) diffusion loss: lam=0, beta=2."""
        return self.kind in ("energy", "mse") and self.lam == 0.0 and self.beta == 2.0


def _check_beta(beta: float) -> None:
    if not (0.0 < beta <= 2.0):
        raise ValueError(f"beta={beta} is outside (0, 2]; the energy score needs 0 < beta <= 2")


def _check_lambda_population(lam: float, m: int) -> None:
    if not (0.0 <= lam <= 1.0):
        raise ValueError(f"lambda={lam} is outside [0, 1]")
    if lam > 0 and m < 2:
        raise ValueError(
            f"lambda={lam} > 0 needs a population m >= 2 (got m={m}): the interaction term "
            "compares generator samples with each other; use m >= 2 or lambda=0"
        )


def _flatten(samples: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
    if samples.dim() < 2:
        raise ValueError(f"samples must have shape (B, m, *event), got {tuple(samples.shape)}")
    if samples.shape[0] != target.shape[0] or samples.shape[2:] != target.shape[1:]:
        raise ValueError(
            f"shape mismatch: samples {tuple(samples.shape)} must be (B, m, *event) for "
            f"target {tuple(target.shape)} = (B, *event)"
        )
    b, m = samples.shape[:2]
    return samples.reshape(b, m, -1), target.reshape(b, 1, -1).to(samples.dtype)


def _pairwise_sq_dists(x: Tensor) -> Tensor:
    """Squared distances between population members. x: (B, m, D) -> (B, m, m)."""
    diff = x.unsqueeze(2) - x.unsqueeze(1)  # (B, m, m, D), exact (no Gram cancellation)
    return diff.pow(2).sum(-1)


def _off_diagonal_mean(mat: Tensor) -> Tensor:
    """Mean over j != j' of a (B, m, m) matrix -> (B,)."""
    m = mat.shape[-1]
    eye = torch.eye(m, dtype=torch.bool, device=mat.device)
    return mat.masked_fill(eye, 0.0).sum((-1, -2)) / (m * (m - 1))


def _powered_norm(sq: Tensor, beta: float, delta: float) -> Tensor:
    """||d||^beta from squared norms; smoothed by delta unless beta == 2."""
    if beta == 2.0:
        return sq
    return (sq + delta).pow(beta / 2.0)


def _weighted(terms: ScoreTerms, weights: Tensor | None) -> ScoreTerms:
    if weights is None:
        return terms
    if weights.shape != terms.loss.shape:
        raise ValueError(f"weights must have shape (B,)={tuple(terms.loss.shape)}, got {tuple(weights.shape)}")
    w = weights.to(terms.loss.dtype)
    return ScoreTerms(terms.loss * w, terms.confinement * w, terms.interaction * w)


def energy_score_loss(
    samples: Tensor,
    target: Tensor,
    lam: float = 1.0,
    beta: float = 1.0,
    weights: Tensor | None = None,
    delta: float = DEFAULT_DELTA,
) -> ScoreTerms:
    """Generalized energy score loss (paper eq. 14-16), per data point.

    Args:
        samples: (B, m, *event) generator samples x^_j = G(t, x_t, xi_j).
        target: (B, *event) data x0.
        lam: interaction weight in [0, 1]; lam=1 with beta in (0, 2) is strictly proper.
        beta: exponent in (0, 2]; lam=0, beta=2 is exactly the x0-prediction MSE
            (sum of squares over the event, averaged over the population).
        weights: optional (B,) per-sample weights w(t).
        delta: norm smoothing for beta < 2 (see module docstring).
    Returns:
        ScoreTerms of shape (B,) each.
    """
    _check_beta(beta)
    m = samples.shape[1] if samples.dim() >= 2 else 0
    _check_lambda_population(lam, m)
    x, y = _flatten(samples, target)
    confinement = _powered_norm((x - y).pow(2).sum(-1), beta, delta).mean(-1)
    if lam > 0:
        spread = _off_diagonal_mean(_powered_norm(_pairwise_sq_dists(x), beta, delta))
        interaction = -0.5 * lam * spread
    else:
        interaction = torch.zeros_like(confinement)
    return _weighted(ScoreTerms(confinement + interaction, confinement, interaction), weights)


def kernel(sq_dist: Tensor, name: KernelName, bandwidth: float, delta: float = DEFAULT_DELTA) -> Tensor:
    """k(x, y) from squared distances; k(x, x) = 1.

    rbf: exp(-d^2 / (2 s^2)); imq: (1 + d^2 / c^2)^(-1/2); exp: exp(-||d||_delta / s).
    """
    if name == "rbf":
        return torch.exp(-sq_dist / (2.0 * bandwidth**2))
    if name == "imq":
        return torch.rsqrt(1.0 + sq_dist / bandwidth**2)
    if name == "exp":
        # the smoothing keeps the gradient finite at d=0; subtract sqrt(delta) so k(x,x)=1.
        return torch.exp(-(torch.sqrt(sq_dist + delta) - math.sqrt(delta)) / bandwidth)
    raise ValueError(f"kernel {name!r} is unknown; use rbf, imq or exp")


def kernel_score_loss(
    samples: Tensor,
    target: Tensor,
    kernel_name: KernelName = "rbf",
    bandwidth: float = 1.0,
    lam: float = 1.0,
    weights: Tensor | None = None,
    delta: float = DEFAULT_DELTA,
) -> ScoreTerms:
    """Kernel diffusion loss (paper Section 3, kernel scoring rule), per data point.

    Args:
        samples: (B, m, *event); target: (B, *event); weights: optional (B,).
        kernel_name: rbf, imq or exp; bandwidth: s (rbf, exp) or c (imq).
    Returns:
        ScoreTerms of shape (B,): confinement = -(1/m) sum_j k(x^_j, x0),
        interaction = +lam/2 * mean_{j != j'} k(x^_j, x^_j').
    """
    if not bandwidth > 0:
        raise ValueError(f"kernel bandwidth={bandwidth} must be > 0")
    m = samples.shape[1] if samples.dim() >= 2 else 0
    _check_lambda_population(lam, m)
    x, y = _flatten(samples, target)
    confinement = -kernel((x - y).pow(2).sum(-1), kernel_name, bandwidth, delta).mean(-1)
    if lam > 0:
        interaction = 0.5 * lam * _off_diagonal_mean(kernel(_pairwise_sq_dists(x), kernel_name, bandwidth, delta))
    else:
        interaction = torch.zeros_like(confinement)
    return _weighted(ScoreTerms(confinement + interaction, confinement, interaction), weights)


def scoring_rule_loss(samples: Tensor, target: Tensor, cfg: LossConfig, weights: Tensor | None = None) -> ScoreTerms:
    """Dispatch on a LossConfig. samples (B, m, *event), target (B, *event) -> ScoreTerms (B,)."""
    if samples.dim() >= 2 and samples.shape[1] != cfg.population:
        raise ValueError(f"samples carry a population of {samples.shape[1]}, the loss config says m={cfg.population}")
    if cfg.kind in ("energy", "mse"):
        return energy_score_loss(samples, target, cfg.lam, cfg.beta, weights, cfg.delta)
    return kernel_score_loss(samples, target, cfg.kind, cfg.bandwidth, cfg.lam, weights, cfg.delta)


def median_bandwidth(x: Tensor, multiplier: float = 1.0, max_points: int = 2048) -> float:
    """Median pairwise distance of data x (N, *event) times a multiplier (the paper's rule)."""
    flat = x.reshape(x.shape[0], -1)[:max_points].double()
    d = torch.cdist(flat, flat)
    iu = torch.triu_indices(len(flat), len(flat), offset=1)
    return float(d[iu[0], iu[1]].median()) * multiplier
