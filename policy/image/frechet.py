"""Frechet distances between image sets: FID with local Inception weights, or a small-classifier proxy.

Frechet distance between Gaussians fitted to features (Heusel et al. 2017)::

    FD = ||mu_1 - mu_2||^2 + Tr(S_1 + S_2 - 2 (S_1 S_2)^{1/2})

- ``InceptionFeatures``: the TF-ported FID Inception-v3 of pytorch-fid (pool3, 2048-d), built
  here without torchvision. The weights file (``pt_inception-2015-12-05-6726825d.pth`` from
  pytorch-fid, or that state dict saved as .safetensors) must be given by the user; ``.pt``/
  ``.pth`` files are opened with ``torch.load(weights_only=True)``. With these weights and
  50k samples the number is comparable with published FID.
- ``ClassifierFeatures``: otherwise, a small CNN classifier trained on the same dataset's
  labels; its penultimate layer (``feature_dim``) is the feature space. This "classifier
  Frechet distance" ranks models on one dataset but is NOT comparable with published FID.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from scipy import linalg
from torch import Tensor, nn
from torch.nn import functional as F

from policy.utils import read_safetensors


def frechet_distance(feats_a: np.ndarray, feats_b: np.ndarray) -> float:
    """FD between Gaussians fitted to feats_a (N, D) and feats_b (M, D); float64 throughout."""
    a, b = np.asarray(feats_a, np.float64), np.asarray(feats_b, np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1] or min(len(a), len(b)) < 2:
        raise ValueError(f"features must be (N, D) and (M, D) with N, M >= 2; got {a.shape}, {b.shape}")
    mu_a, mu_b = a.mean(0), b.mean(0)
    s_a, s_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean, _ = linalg.sqrtm(s_a @ s_b, disp=False)
    if not np.isfinite(covmean).all():  # near-singular product: regularise as pytorch-fid does
        eye = np.eye(len(s_a)) * 1e-6
        covmean = linalg.sqrtm((s_a + eye) @ (s_b + eye))
    covmean = np.real(covmean)
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(s_a) + np.trace(s_b) - 2.0 * np.trace(covmean))


class ClassifierFeatures(nn.Module):
    """Small CNN classifier; ``features`` (its penultimate layer) define the proxy metric.

    images (N, C, H, W) in [-1, 1] -> features (N, feature_dim) -> logits (N, num_classes).
    """

    def __init__(self, channels: int, num_classes: int, width: int = 32, feature_dim: int = 64) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(channels, width, 3, padding=1), nn.GroupNorm(8, width), nn.SiLU(),
            nn.Conv2d(width, 2 * width, 3, stride=2, padding=1), nn.GroupNorm(8, 2 * width), nn.SiLU(),
            nn.Conv2d(2 * width, 2 * width, 3, stride=2, padding=1), nn.GroupNorm(8, 2 * width), nn.SiLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2 * width, feature_dim), nn.SiLU(),
        )
        self.classify = nn.Linear(feature_dim, num_classes)

    def features(self, images: Tensor) -> Tensor:
        """(N, C, H, W) -> (N, feature_dim)."""
        return self.body(images)

    def forward(self, images: Tensor) -> Tensor:
        """(N, C, H, W) -> logits (N, num_classes)."""
        return self.classify(self.body(images))


def train_classifier_features(
    images: Tensor, labels: Tensor | None, num_classes: int, steps: int = 600, batch_size: int = 128, seed: int = 0
) -> tuple[ClassifierFeatures, float]:
    """Train the proxy-metric classifier on (images (N, C, H, W), labels (N,)).

    Light augmentation (1-pixel shifts) keeps it from memorising. Returns the model in eval
    mode and its accuracy on a held-out 10% split.
    """
    if labels is None or num_classes < 2:
        raise ValueError("the classifier Frechet distance needs a labelled dataset; pass --inception-weights for FID instead")
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    perm = torch.randperm(len(images), generator=g)
    n_val = max(1, len(images) // 10)
    val, train = perm[:n_val], perm[n_val:]
    net = ClassifierFeatures(images.shape[1], num_classes)
    opt = torch.optim.Adam(net.parameters(), lr=2e-3)
    for _ in range(steps):
        idx = train[torch.randint(0, len(train), (batch_size,), generator=g)]
        dx, dy = torch.randint(-1, 2, (2,), generator=g).tolist()
        x = torch.roll(images[idx], shifts=(dx, dy), dims=(2, 3))
        loss = F.cross_entropy(net(x), labels[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    net.eval()
    with torch.no_grad():
        acc = (net(images[val]).argmax(-1) == labels[val]).float().mean().item()
    return net, acc


class _BasicConv(nn.Module):
    """conv (no bias) + BatchNorm(eps=1e-3) + ReLU; names match pytorch-fid's state dict."""

    def __init__(self, cin: int, cout: int, k: int | tuple[int, int], s: int = 1, p: int | tuple[int, int] = 0) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, k, stride=s, padding=p, bias=False)
        self.bn = nn.BatchNorm2d(cout, eps=1e-3)

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.bn(self.conv(x)))


def _avg3(x: Tensor) -> Tensor:
    return F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)  # TF pooling (FID patch)


class _A(nn.Module):
    def __init__(self, cin: int, pool: int) -> None:
        super().__init__()
        self.branch1x1 = _BasicConv(cin, 64, 1)
        self.branch5x5_1, self.branch5x5_2 = _BasicConv(cin, 48, 1), _BasicConv(48, 64, 5, p=2)
        self.branch3x3dbl_1, self.branch3x3dbl_2 = _BasicConv(cin, 64, 1), _BasicConv(64, 96, 3, p=1)
        self.branch3x3dbl_3, self.branch_pool = _BasicConv(96, 96, 3, p=1), _BasicConv(cin, pool, 1)

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([self.branch1x1(x), self.branch5x5_2(self.branch5x5_1(x)),
                          self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))), self.branch_pool(_avg3(x))], 1)


class _B(nn.Module):
    def __init__(self, cin: int) -> None:
        super().__init__()
        self.branch3x3 = _BasicConv(cin, 384, 3, s=2)
        self.branch3x3dbl_1, self.branch3x3dbl_2 = _BasicConv(cin, 64, 1), _BasicConv(64, 96, 3, p=1)
        self.branch3x3dbl_3 = _BasicConv(96, 96, 3, s=2)

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([self.branch3x3(x), self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
                          F.max_pool2d(x, 3, stride=2)], 1)


class _C(nn.Module):
    def __init__(self, cin: int, c7: int) -> None:
        super().__init__()
        h, v = ((1, 7), (0, 3)), ((7, 1), (3, 0))
        self.branch1x1 = _BasicConv(cin, 192, 1)
        self.branch7x7_1, self.branch7x7_2 = _BasicConv(cin, c7, 1), _BasicConv(c7, c7, h[0], p=h[1])
        self.branch7x7_3 = _BasicConv(c7, 192, v[0], p=v[1])
        self.branch7x7dbl_1, self.branch7x7dbl_2 = _BasicConv(cin, c7, 1), _BasicConv(c7, c7, v[0], p=v[1])
        self.branch7x7dbl_3, self.branch7x7dbl_4 = _BasicConv(c7, c7, h[0], p=h[1]), _BasicConv(c7, c7, v[0], p=v[1])
        self.branch7x7dbl_5, self.branch_pool = _BasicConv(c7, 192, h[0], p=h[1]), _BasicConv(cin, 192, 1)

    def forward(self, x: Tensor) -> Tensor:
        b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        d = self.branch7x7dbl_1(x)
        for layer in (self.branch7x7dbl_2, self.branch7x7dbl_3, self.branch7x7dbl_4, self.branch7x7dbl_5):
            d = layer(d)
        return torch.cat([self.branch1x1(x), b7, d, self.branch_pool(_avg3(x))], 1)


class _D(nn.Module):
    def __init__(self, cin: int) -> None:
        super().__init__()
        self.branch3x3_1, self.branch3x3_2 = _BasicConv(cin, 192, 1), _BasicConv(192, 320, 3, s=2)
        self.branch7x7x3_1, self.branch7x7x3_2 = _BasicConv(cin, 192, 1), _BasicConv(192, 192, (1, 7), p=(0, 3))
        self.branch7x7x3_3, self.branch7x7x3_4 = _BasicConv(192, 192, (7, 1), p=(3, 0)), _BasicConv(192, 192, 3, s=2)

    def forward(self, x: Tensor) -> Tensor:
        b = self.branch7x7x3_4(self.branch7x7x3_3(self.branch7x7x3_2(self.branch7x7x3_1(x))))
        return torch.cat([self.branch3x3_2(self.branch3x3_1(x)), b, F.max_pool2d(x, 3, stride=2)], 1)


class _E(nn.Module):
    def __init__(self, cin: int, max_pool: bool) -> None:
        super().__init__()
        self.max_pool = max_pool  # FID's Mixed_7c uses max pooling (pytorch-fid FIDInceptionE_2)
        self.branch1x1 = _BasicConv(cin, 320, 1)
        self.branch3x3_1 = _BasicConv(cin, 384, 1)
        self.branch3x3_2a, self.branch3x3_2b = _BasicConv(384, 384, (1, 3), p=(0, 1)), _BasicConv(384, 384, (3, 1), p=(1, 0))
        self.branch3x3dbl_1, self.branch3x3dbl_2 = _BasicConv(cin, 448, 1), _BasicConv(448, 384, 3, p=1)
        self.branch3x3dbl_3a = _BasicConv(384, 384, (1, 3), p=(0, 1))
        self.branch3x3dbl_3b = _BasicConv(384, 384, (3, 1), p=(1, 0))
        self.branch_pool = _BasicConv(cin, 192, 1)

    def forward(self, x: Tensor) -> Tensor:
        a = self.branch3x3_1(x)
        d = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        pooled = F.max_pool2d(x, 3, stride=1, padding=1) if self.max_pool else _avg3(x)
        return torch.cat([self.branch1x1(x), self.branch3x3_2a(a), self.branch3x3_2b(a),
                          self.branch3x3dbl_3a(d), self.branch3x3dbl_3b(d), self.branch_pool(pooled)], 1)


class InceptionFeatures(nn.Module):
    """FID Inception-v3 (pool3 features). images (N, C, H, W) in [-1, 1] -> (N, 2048).

    Grey images are repeated to 3 channels; images are resized bilinearly to 299x299.
    """

    def __init__(self) -> None:
        super().__init__()
        self.Conv2d_1a_3x3 = _BasicConv(3, 32, 3, s=2)
        self.Conv2d_2a_3x3 = _BasicConv(32, 32, 3)
        self.Conv2d_2b_3x3 = _BasicConv(32, 64, 3, p=1)
        self.Conv2d_3b_1x1 = _BasicConv(64, 80, 1)
        self.Conv2d_4a_3x3 = _BasicConv(80, 192, 3)
        self.Mixed_5b, self.Mixed_5c, self.Mixed_5d = _A(192, 32), _A(256, 64), _A(288, 64)
        self.Mixed_6a = _B(288)
        self.Mixed_6b, self.Mixed_6c, self.Mixed_6d, self.Mixed_6e = _C(768, 128), _C(768, 160), _C(768, 160), _C(768, 192)
        self.Mixed_7a, self.Mixed_7b, self.Mixed_7c = _D(768), _E(1280, False), _E(2048, True)
        self.fc = nn.Linear(2048, 1008)  # present in the weights file; unused for features

    def forward(self, images: Tensor) -> Tensor:
        x = images.repeat(1, 3, 1, 1) if images.shape[1] == 1 else images
        x = F.interpolate(x.float(), size=(299, 299), mode="bilinear", align_corners=False)
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(F.max_pool2d(x, 3, stride=2)))
        x = F.max_pool2d(x, 3, stride=2)
        for name in ("5b", "5c", "5d", "6a", "6b", "6c", "6d", "6e", "7a", "7b", "7c"):
            x = getattr(self, f"Mixed_{name}")(x)
        return x.mean((2, 3))


def load_inception(path: str | Path) -> InceptionFeatures:
    """InceptionFeatures with weights from a local .safetensors or .pt/.pth (weights_only=True)."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"Inception weights {p} not found; pass pytorch-fid's pt_inception-2015-12-05-6726825d.pth")
    if p.suffix == ".safetensors":
        state = read_safetensors(p)[0]
    else:
        state = torch.load(p, map_location="cpu", weights_only=True)
    net = InceptionFeatures()
    try:
        missing, unexpected = net.load_state_dict(state, strict=False)
    except RuntimeError as e:  # shape mismatches
        raise ValueError(f"{p} is not the FID Inception state dict ({str(e).splitlines()[-1].strip()})") from None
    missing = [k for k in missing if not k.endswith("num_batches_tracked")]
    if missing or unexpected:
        raise ValueError(f"{p} is not the FID Inception state dict (missing {missing[:3]}, unexpected {unexpected[:3]})")
    return net.eval()


@torch.no_grad()
def extract_features(net: nn.Module, images: Tensor, batch_size: int = 250, device: str = "cpu") -> np.ndarray:
    """Features (N, D) float64 of images (N, C, H, W) in [-1, 1] under ``net.features`` or ``net``."""
    fn = net.features if isinstance(net, ClassifierFeatures) else net
    net.to(device).eval()
    out = [fn(images[i: i + batch_size].to(device)).double().cpu() for i in range(0, len(images), batch_size)]
    return torch.cat(out).numpy()
