"""ResNet-18 style camera encoder with GroupNorm and language FiLM (LIBERO ResNet-T style).

One encoder per camera. Each BasicBlock is FiLM-conditioned on the instruction
embedding (Perez et al. 2018, as in LIBERO's ResNet-T): after the block's second
norm, h <- (1 + gamma(l)) * h + beta(l), with gamma, beta zero-initialised so training
starts from the plain ResNet. The last feature map is kept spatial: a 1x1 projection to
d_model, flattened to tokens, plus a fixed 2D sine-cosine position embedding.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def _groups(channels: int) -> int:
    return max(1, min(32, channels // 8))


class FiLMBasicBlock(nn.Module):
    """ResNet BasicBlock (two 3x3 convs, GroupNorm) with language FiLM.

    x: (B, C_in, H, W), lang: (B, L) -> (B, C_out, H/stride, W/stride).
    """

    def __init__(self, c_in: int, c_out: int, stride: int, lang_dim: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.norm1 = nn.GroupNorm(_groups(c_out), c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.norm2 = nn.GroupNorm(_groups(c_out), c_out)
        self.film = nn.Linear(lang_dim, 2 * c_out)
        nn.init.zeros_(self.film.weight)
        nn.init.zeros_(self.film.bias)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.GroupNorm(_groups(c_out), c_out))

    def forward(self, x: Tensor, lang: Tensor) -> Tensor:
        h = F.relu(self.norm1(self.conv1(x)))
        h = self.norm2(self.conv2(h))
        gamma, beta = self.film(lang).unsqueeze(-1).unsqueeze(-1).chunk(2, dim=1)
        h = (1.0 + gamma) * h + beta
        return F.relu(h + self.shortcut(x))


def sincos_2d(h: int, w: int, dim: int, device: torch.device | None = None) -> Tensor:
    """Fixed 2D sine-cosine position embedding, shape (h * w, dim); dim % 4 == 0."""
    if dim % 4:
        raise ValueError(f"2D sincos position embedding needs dim % 4 == 0, got {dim}")
    quarter = dim // 4
    freq = 1.0 / (10000 ** (torch.arange(quarter, device=device, dtype=torch.float32) / quarter))
    ys, xs = torch.meshgrid(torch.arange(h, device=device), torch.arange(w, device=device), indexing="ij")
    ys = ys.reshape(-1, 1).float() * freq
    xs = xs.reshape(-1, 1).float() * freq
    return torch.cat([ys.sin(), ys.cos(), xs.sin(), xs.cos()], dim=1)


class FiLMResNetEncoder(nn.Module):
    """ResNet-18 layout (stem, 4 stages x 2 FiLM blocks), GroupNorm, spatial tokens out.

    Args:
        widths: channels of the four stages (ResNet-18: 64, 128, 256, 512).
        lang_dim: size of the language embedding driving FiLM.
        d_model: token size.
    Forward:
        images: (B, 3, H, W) float in [0, 1]; lang: (B, lang_dim)
        -> tokens (B, (H/32) * (W/32), d_model) with 2D position embeddings added.
    """

    def __init__(self, widths: tuple[int, ...], lang_dim: int, d_model: int) -> None:
        super().__init__()
        w0 = widths[0]
        self.stem = nn.Sequential(
            nn.Conv2d(3, w0, 7, 2, 3, bias=False), nn.GroupNorm(_groups(w0), w0), nn.ReLU(), nn.MaxPool2d(3, 2, 1)
        )
        blocks = []
        c_in = w0
        for i, c_out in enumerate(widths):
            stride = 1 if i == 0 else 2
            blocks += [FiLMBasicBlock(c_in, c_out, stride, lang_dim), FiLMBasicBlock(c_out, c_out, 1, lang_dim)]
            c_in = c_out
        self.blocks = nn.ModuleList(blocks)
        self.proj = nn.Conv2d(c_in, d_model, 1)
        self.d_model = d_model

    def forward(self, images: Tensor, lang: Tensor) -> Tensor:
        x = self.stem(images * 2.0 - 1.0)
        for block in self.blocks:
            x = block(x, lang)
        x = self.proj(x)  # (B, D, h, w)
        b, d, h, w = x.shape
        tokens = x.flatten(2).transpose(1, 2)  # (B, h*w, D)
        return tokens + sincos_2d(h, w, d, device=x.device).to(tokens.dtype) / math.sqrt(2.0)
