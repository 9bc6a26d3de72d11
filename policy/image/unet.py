"""The image generator: a DDPM-style U-Net with the noise xi concatenated on channels.

Paper Section 6.2 / Appendix I.2: the image experiments use the same loss core
(``policy.scoring``) and sampler (``policy.diffusion``) as every other module, with a
U-Net generator. The architecture follows Ho et al. (2020) / Nichol & Dhariwal (2021):

- channel multipliers per resolution level, ``num_res_blocks`` residual blocks per level;
- residual blocks: GroupNorm -> SiLU -> conv -> adaptive GroupNorm(emb) -> SiLU ->
  dropout -> conv, plus a 1x1 skip when channels change;
- self-attention at chosen resolutions and always in the bottleneck;
- time (and optional class) conditioning through adaptive GroupNorm:
  ``GN(h) * (1 + scale(emb)) + shift(emb)``.

Generator protocol (``policy.diffusion``)::

    G(t: (B,), x_t: (B, C, H, W), xi: (B, m, C, H, W), cond) -> x0_hat: (B, m, C, H, W)

x_t is broadcast over the m population members (expand, no copy until the concat) and
xi is concatenated along channels, so the first conv sees 2C channels. The network
outputs 2C channels and the second half is dropped. ``cond`` is None or class labels
(B,) long. The classical (MSE) and distributional models share this architecture; the
classical one simply learns to ignore xi.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F


@dataclass(frozen=True)
class UNetConfig:
    """U-Net hyperparameters (JSON-serialisable with ``dataclasses.asdict``).

    Attributes:
        image_channels: C, channels of the images (1 grey, 3 RGB).
        image_size: H = W of the images (must be divisible by 2^(len(channel_mult)-1)).
        base_channels: channels of the first level.
        channel_mult: multiplier of base_channels per resolution level.
        num_res_blocks: residual blocks per level (down path; up path has one more).
        attn_resolutions: feature-map sizes (e.g. 16) that get self-attention.
        dropout: dropout in the residual blocks.
        num_classes: 0 for unconditional, else the number of class labels.
        num_heads: attention heads.
        groups: GroupNorm groups (must divide every channel count).
    """

    image_channels: int = 1
    image_size: int = 16
    base_channels: int = 32
    channel_mult: tuple[int, ...] = (1, 2, 2)
    num_res_blocks: int = 1
    attn_resolutions: tuple[int, ...] = (8,)
    dropout: float = 0.0
    num_classes: int = 0
    num_heads: int = 4
    groups: int = 8

    def __post_init__(self) -> None:
        down = 2 ** (len(self.channel_mult) - 1)
        if self.image_size % down != 0:
            raise ValueError(f"image_size={self.image_size} must be divisible by 2^(levels-1)={down}; change channel_mult")
        for mult in self.channel_mult:
            if (self.base_channels * mult) % self.groups != 0:
                raise ValueError(f"groups={self.groups} must divide every channel count (base_channels*mult={self.base_channels * mult})")

    def to_dict(self) -> dict[str, Any]:
        """Plain dict for config.json."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "UNetConfig":
        """Inverse of ``to_dict`` (lists back to tuples)."""
        d = dict(d)
        for key in ("channel_mult", "attn_resolutions"):
            if key in d:
                d[key] = tuple(d[key])
        return cls(**d)


def timestep_embedding(t: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
    """Sinusoidal embedding of t in [0, 1] (scaled by 1000 as in DDPM). t: (B,) -> (B, dim)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = 1000.0 * t.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    return F.pad(emb, (0, dim % 2))


class AdaGroupNorm(nn.Module):
    """Adaptive GroupNorm: GN(h) * (1 + scale(emb)) + shift(emb). h: (N, ch, H, W), emb: (N, E)."""

    def __init__(self, groups: int, channels: int, emb_dim: int) -> None:
        super().__init__()
        self.norm = nn.GroupNorm(groups, channels, affine=False)
        self.proj = nn.Linear(emb_dim, 2 * channels)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, h: Tensor, emb: Tensor) -> Tensor:
        scale, shift = self.proj(emb)[:, :, None, None].chunk(2, dim=1)
        return self.norm(h) * (1.0 + scale) + shift


class ResBlock(nn.Module):
    """Residual block (GroupNorm + SiLU, dropout, adaptive GroupNorm on the embedding)."""

    def __init__(self, in_ch: int, out_ch: int, emb_dim: int, dropout: float, groups: int) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, in_ch)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.norm2 = AdaGroupNorm(groups, out_ch, emb_dim)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)
        self.skip = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        """x: (N, in_ch, H, W), emb: (N, E) -> (N, out_ch, H, W)."""
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(self.dropout(F.silu(self.norm2(h, emb))))
        return self.skip(x) + h


class AttnBlock(nn.Module):
    """Multi-head self-attention over the H*W positions, with a residual connection."""

    def __init__(self, channels: int, num_heads: int, groups: int) -> None:
        super().__init__()
        if channels % num_heads != 0:
            raise ValueError(f"num_heads={num_heads} must divide the channel count {channels}")
        self.heads = num_heads
        self.norm = nn.GroupNorm(groups, channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.out = nn.Conv2d(channels, channels, 1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, x: Tensor) -> Tensor:
        """x: (N, ch, H, W) -> (N, ch, H, W)."""
        n, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(n, 3, self.heads, c // self.heads, h * w).unbind(1)
        o = F.scaled_dot_product_attention(q.transpose(-1, -2), k.transpose(-1, -2), v.transpose(-1, -2))
        return x + self.out(o.transpose(-1, -2).reshape(n, c, h, w))


class _Level(nn.Module):
    """Residual blocks (+ optional attention) applied in sequence at one resolution."""

    def __init__(self, res: ResBlock, attn: nn.Module | None) -> None:
        super().__init__()
        self.res = res
        self.attn = attn if attn is not None else nn.Identity()

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        return self.attn(self.res(x, emb))


class UNet(nn.Module):
    """U-Net generator x0_hat = G(t, x_t, xi, cond) for images (see module docstring)."""

    def __init__(self, config: UNetConfig) -> None:
        super().__init__()
        self.config = cfg = config
        ch, emb_dim, g = cfg.base_channels, 4 * cfg.base_channels, cfg.groups
        self.time_mlp = nn.Sequential(nn.Linear(ch, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        self.class_emb = nn.Embedding(cfg.num_classes, emb_dim) if cfg.num_classes > 0 else None
        self.stem = nn.Conv2d(2 * cfg.image_channels, ch, 3, padding=1)

        self.down = nn.ModuleList()
        self.downsample = nn.ModuleList()
        skips, cur, res = [ch], ch, cfg.image_size
        for i, mult in enumerate(cfg.channel_mult):
            out = ch * mult
            for _ in range(cfg.num_res_blocks):
                attn = AttnBlock(out, cfg.num_heads, g) if res in cfg.attn_resolutions else None
                self.down.append(_Level(ResBlock(cur, out, emb_dim, cfg.dropout, g), attn))
                cur = out
                skips.append(cur)
            if i + 1 < len(cfg.channel_mult):
                self.downsample.append(nn.Conv2d(cur, cur, 3, stride=2, padding=1))
                skips.append(cur)
                res //= 2
        self.mid1 = ResBlock(cur, cur, emb_dim, cfg.dropout, g)
        self.mid_attn = AttnBlock(cur, cfg.num_heads, g)  # bottleneck attention, always on
        self.mid2 = ResBlock(cur, cur, emb_dim, cfg.dropout, g)

        self.up = nn.ModuleList()
        self.upsample = nn.ModuleList()
        for i, mult in reversed(list(enumerate(cfg.channel_mult))):
            out = ch * mult
            for _ in range(cfg.num_res_blocks + 1):
                attn = AttnBlock(out, cfg.num_heads, g) if res in cfg.attn_resolutions else None
                self.up.append(_Level(ResBlock(cur + skips.pop(), out, emb_dim, cfg.dropout, g), attn))
                cur = out
            if i > 0:
                self.upsample.append(nn.Conv2d(cur, cur, 3, padding=1))
                res *= 2
        self.head_norm = nn.GroupNorm(g, cur)
        self.head = nn.Conv2d(cur, 2 * cfg.image_channels, 3, padding=1)

    def embed(self, t: Tensor, cond: Tensor | None) -> Tensor:
        """Time (+ class) embedding. t: (B,), cond: (B,) long or None -> (B, 4*base_channels)."""
        emb = self.time_mlp(timestep_embedding(t, self.config.base_channels))
        if self.class_emb is not None:
            if cond is None:
                raise ValueError("this U-Net is class-conditional (num_classes > 0): pass class labels (B,) as cond")
            emb = emb + self.class_emb(cond.long())
        elif cond is not None:
            raise ValueError("this U-Net is unconditional (num_classes=0) but got class labels; pass cond=None")
        return emb

    def forward(self, t: Tensor, x_t: Tensor, xi: Tensor, cond: Tensor | None = None) -> Tensor:
        """G(t, x_t, xi, cond).

        Args:
            t: (B,) times in [0, 1].
            x_t: (B, C, H, W) noisy images.
            xi: (B, m, C, H, W) generator noise, one per population member.
            cond: None or (B,) class labels.
        Returns:
            (B, m, C, H, W) x0 predictions.
        """
        b, m = xi.shape[:2]
        if x_t.shape[0] != b or xi.shape[2:] != x_t.shape[1:] or x_t.shape[1] != self.config.image_channels:
            raise ValueError(
                f"U-Net expects x_t (B, {self.config.image_channels}, H, W) and xi (B, m, *x_t.shape[1:]); "
                f"got x_t {tuple(x_t.shape)}, xi {tuple(xi.shape)}"
            )
        emb = self.embed(t, cond).repeat_interleave(m, dim=0)  # computed once per sample
        x = torch.cat([x_t.unsqueeze(1).expand_as(xi), xi], dim=2).flatten(0, 1)  # (B*m, 2C, H, W)
        h = self.stem(x)
        hs = [h]
        down_iter = iter(self.downsample)
        per_level = self.config.num_res_blocks
        for i, block in enumerate(self.down):
            h = block(h, emb)
            hs.append(h)
            if (i + 1) % per_level == 0 and (i + 1) // per_level < len(self.config.channel_mult):
                h = next(down_iter)(h)
                hs.append(h)
        h = self.mid2(self.mid_attn(self.mid1(h, emb)), emb)
        up_iter = iter(self.upsample)
        per_level += 1
        for i, block in enumerate(self.up):
            h = block(torch.cat([h, hs.pop()], dim=1), emb)
            if (i + 1) % per_level == 0 and (i + 1) // per_level < len(self.config.channel_mult):
                h = next(up_iter)(F.interpolate(h, scale_factor=2.0, mode="nearest"))
        out = self.head(F.silu(self.head_norm(h)))[:, : self.config.image_channels]
        return out.reshape(b, m, *x_t.shape[1:])


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


PAPER_CIFAR10 = UNetConfig(
    image_channels=3, image_size=32, base_channels=128, channel_mult=(1, 2, 2, 2), num_res_blocks=2,
    attn_resolutions=(16,), dropout=0.1, num_classes=0, num_heads=4, groups=32,
)
"""The DDPM CIFAR-10 U-Net (Ho et al. 2020), the backbone of the paper's CIFAR-10 runs."""

QUICK_DIGITS = UNetConfig(
    image_channels=1, image_size=16, base_channels=32, channel_mult=(1, 2, 2), num_res_blocks=1,
    attn_resolutions=(8,), dropout=0.0, num_classes=0, num_heads=4, groups=8,
)
"""A small U-Net for the 16x16 digits CPU config."""
