"""Cross-attention transformer denoiser over the action chunk (ALOHA Unleashed style).

Generator protocol (policy/diffusion.py)::

    G(t: (B,), x_t: (B, 8, 7), xi: (B, m, 8, noise_dim), cond: (B, N, D_cond)) -> x0_hat (B, m, 8, 7)

``cond`` may also be (tokens (B, N, D_cond), mask (B, N) bool): cross-attention then ignores
the tokens whose mask is False (padding, e.g. the missing objects of a smaller scene).

Queries are the 8 action tokens, each Linear([x_t ; xi]) + a learned position
embedding (the noise xi is concatenated to the noisy action on the feature dimension,
docs/architecture.md). Time enters through adaptive LayerNorm with zero-initialised
gates (adaLN-Zero, Peebles & Xie 2023). Each block: self-attention among the 8 action
tokens of one population member (batched as (B*m, 8, D)), cross-attention to the
observation tokens, MLP.

The observation tokens are computed once per data point and shared by the m population
members WITHOUT copying: for cross-attention the queries of all members are laid out
as (B, m*8, D) and attend to keys/values projected once from (B, N, D). This is exact,
since attention treats every query independently.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def timestep_embedding(t: Tensor, dim: int, scale: float = 1000.0) -> Tensor:
    """Sinusoidal embedding of t in [0, 1]: (B,) -> (B, dim)."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = (t.float() * scale)[:, None] * freqs[None]
    emb = torch.cat([args.cos(), args.sin()], dim=-1)
    return F.pad(emb, (0, dim % 2))


class Attention(nn.Module):
    """Multi-head attention. x: (B, Lq, D) attends to ctx: (B, Lk, D) -> (B, Lq, D)."""

    def __init__(self, d_model: int, n_heads: int, dropout: float) -> None:
        super().__init__()
        self.n_heads = n_heads
        self.q = nn.Linear(d_model, d_model)
        self.kv = nn.Linear(d_model, 2 * d_model)
        self.out = nn.Linear(d_model, d_model)
        self.dropout = dropout

    def forward(self, x: Tensor, ctx: Tensor, mask: Tensor | None = None) -> Tensor:
        """mask: (B, Lk) bool, False = a key to ignore (None: attend to all)."""
        b, lq, d = x.shape
        lk = ctx.shape[1]
        h = self.n_heads
        q = self.q(x).view(b, lq, h, d // h).transpose(1, 2)
        k, v = self.kv(ctx).view(b, lk, 2, h, d // h).permute(2, 0, 3, 1, 4)
        attn_mask = None if mask is None else mask[:, None, None, :]
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=self.dropout if self.training else 0.0)
        return self.out(o.transpose(1, 2).reshape(b, lq, d))


def _modulate(x: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    return x * (1.0 + scale) + shift


class DenoiserBlock(nn.Module):
    """adaLN-Zero block: self-attention, cross-attention, MLP.

    h: (B, m, L, D) action tokens; cond: (B, N, D) observation tokens (normalised);
    temb: (B, D) time embedding.
    """

    def __init__(self, d_model: int, n_heads: int, mlp_ratio: float, dropout: float) -> None:
        super().__init__()
        self.norm_sa = nn.LayerNorm(d_model, elementwise_affine=False, eps=1e-6)
        self.norm_ca = nn.LayerNorm(d_model, elementwise_affine=False, eps=1e-6)
        self.norm_mlp = nn.LayerNorm(d_model, elementwise_affine=False, eps=1e-6)
        self.self_attn = Attention(d_model, n_heads, dropout)
        self.cross_attn = Attention(d_model, n_heads, dropout)
        hidden = int(d_model * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(d_model, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, d_model))
        self.ada = nn.Linear(d_model, 9 * d_model)
        nn.init.zeros_(self.ada.weight)
        nn.init.zeros_(self.ada.bias)

    def forward(self, h: Tensor, cond: Tensor, temb: Tensor, mask: Tensor | None = None) -> Tensor:
        b, m, length, d = h.shape
        mod = self.ada(F.silu(temb))[:, None, None, :].chunk(9, dim=-1)  # 9 x (B, 1, 1, D), broadcast over m
        x = _modulate(self.norm_sa(h), mod[0], mod[1]).reshape(b * m, length, d)
        h = h + mod[2] * self.self_attn(x, x).view(b, m, length, d)
        x = _modulate(self.norm_ca(h), mod[3], mod[4]).reshape(b, m * length, d)
        h = h + mod[5] * self.cross_attn(x, cond, mask).view(b, m, length, d)
        return h + mod[8] * self.mlp(_modulate(self.norm_mlp(h), mod[6], mod[7]))


class CrossAttentionDenoiser(nn.Module):
    """x0-prediction generator over action chunks (see module docstring for the protocol).

    Args:
        chunk_size: 8 action tokens; action_dim: 7; noise_dim: size of xi per token.
        d_model, n_heads, n_layers, mlp_ratio, dropout: transformer sizes.
        cond_dim: size of the observation tokens (None: d_model); other sizes are
            projected to d_model once per data point.
    """

    def __init__(
        self,
        chunk_size: int,
        action_dim: int,
        noise_dim: int,
        d_model: int,
        n_heads: int,
        n_layers: int,
        mlp_ratio: float,
        dropout: float,
        cond_dim: int | None = None,
    ) -> None:
        super().__init__()
        self.cond_dim = cond_dim or d_model
        self.cond_proj: nn.Module = nn.Linear(self.cond_dim, d_model) if self.cond_dim != d_model else nn.Identity()
        self.chunk_size, self.action_dim, self.noise_dim = chunk_size, action_dim, noise_dim
        self.d_model = d_model
        self.in_proj = nn.Linear(action_dim + noise_dim, d_model)
        self.pos = nn.Parameter(torch.randn(chunk_size, d_model) * 0.02)
        self.time_mlp = nn.Sequential(nn.Linear(d_model, d_model), nn.SiLU(), nn.Linear(d_model, d_model))
        self.cond_norm = nn.LayerNorm(d_model)
        self.blocks = nn.ModuleList([DenoiserBlock(d_model, n_heads, mlp_ratio, dropout) for _ in range(n_layers)])
        self.norm_out = nn.LayerNorm(d_model, elementwise_affine=False, eps=1e-6)
        self.ada_out = nn.Linear(d_model, 2 * d_model)
        nn.init.zeros_(self.ada_out.weight)
        nn.init.zeros_(self.ada_out.bias)
        self.out = nn.Linear(d_model, action_dim)

    def forward(self, t: Tensor, x_t: Tensor, xi: Tensor, cond: Tensor | tuple[Tensor, Tensor]) -> Tensor:
        """t: (B,), x_t: (B, 8, 7), xi: (B, m, 8, noise_dim), cond: (B, N, D) or (it, (B, N) mask) -> (B, m, 8, 7)."""
        cond, mask = cond if isinstance(cond, tuple) else (cond, None)
        b, m = xi.shape[:2]
        expected_xi = (b, m, self.chunk_size, self.noise_dim)
        if x_t.shape != (b, self.chunk_size, self.action_dim) or xi.shape != expected_xi:
            raise ValueError(
                f"denoiser got x_t {tuple(x_t.shape)} and xi {tuple(xi.shape)}; expected "
                f"(B, {self.chunk_size}, {self.action_dim}) and (B, m, {self.chunk_size}, {self.noise_dim})"
            )
        if cond.dim() != 3 or cond.shape[0] != b or cond.shape[2] != self.cond_dim:
            raise ValueError(f"denoiser cond must be (B={b}, N, D={self.cond_dim}) observation tokens, got {tuple(cond.shape)}")
        x_in = torch.cat([x_t.unsqueeze(1).expand(b, m, *x_t.shape[1:]), xi.to(x_t.dtype)], dim=-1)
        h = self.in_proj(x_in) + self.pos  # (B, m, 8, D)
        temb = self.time_mlp(timestep_embedding(t, self.d_model).to(h.dtype))
        cond = self.cond_norm(self.cond_proj(cond))  # once per data point, shared by the m members
        for block in self.blocks:
            h = block(h, cond, temb, mask)
        shift, scale = self.ada_out(F.silu(temb))[:, None, None, :].chunk(2, dim=-1)
        # float32 out: under bf16 autocast the scoring rule (pairwise distances) stays in fp32
        return self.out(_modulate(self.norm_out(h), shift, scale)).float()
