"""The 2D generator of the paper (Appendix I.1): sinusoidal time embedding + MLP.

x0_hat = G(t, x_t, xi): the noise xi is concatenated to x_t on the feature dimension.
Follows the generator protocol of policy/diffusion.py (population dimension m).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn


def sinusoidal_embedding(t: Tensor, dim: int, max_period: float = 10_000.0) -> Tensor:
    """Transformer-style sinusoidal embedding of times t (B,) in [0, 1] -> (B, dim)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = (1000.0 * t.float())[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb


class MLPGenerator(nn.Module):
    """G(t, x_t, xi) for vectors: MLP([x_t ; xi ; emb(t)]) -> x0_hat.

    Args:
        data_dim: D, the event dimension (2 for the 2D targets).
        noise_dim: dimension of xi (concatenated to x_t).
        hidden: width of the hidden layers; depth: number of hidden layers.
        time_dim: size of the sinusoidal time embedding.
    """

    def __init__(self, data_dim: int = 2, noise_dim: int = 2, hidden: int = 256, depth: int = 3, time_dim: int = 64):
        super().__init__()
        self.data_dim, self.noise_dim, self.time_dim = data_dim, noise_dim, time_dim
        self.time_mlp = nn.Sequential(nn.Linear(time_dim, hidden), nn.SiLU(), nn.Linear(hidden, hidden))
        self.inp = nn.Linear(data_dim + noise_dim, hidden)
        layers: list[nn.Module] = []
        for _ in range(depth):
            layers += [nn.SiLU(), nn.Linear(hidden, hidden)]
        self.body = nn.Sequential(*layers)
        self.out = nn.Sequential(nn.SiLU(), nn.Linear(hidden, data_dim))

    @property
    def noise_shape(self) -> tuple[int, ...]:
        return (self.noise_dim,)

    def forward(self, t: Tensor, x_t: Tensor, xi: Tensor, cond: Any = None) -> Tensor:
        """t: (B,), x_t: (B, D), xi: (B, m, noise_dim) -> x0_hat: (B, m, D)."""
        b, m = xi.shape[:2]
        temb = self.time_mlp(sinusoidal_embedding(t, self.time_dim))  # once per data point
        h = self.inp(torch.cat([x_t.unsqueeze(1).expand(b, m, -1), xi], dim=-1)) + temb.unsqueeze(1)
        return self.out(self.body(h))
