"""Image module (paper Section 6.2, Appendix I.2): datasets, training, sampling, grids.

Loss, schedule and sampler all come from the shared core: training calls
``policy.diffusion.diffusion_loss`` (which calls ``policy.scoring``) and sampling calls
``policy.diffusion.sample``. Nothing here defines a norm, a kernel or a noise schedule.

Images are tensors (N, C, H, W) float32 in [-1, 1]. Datasets:

- ``digits``: scikit-learn's bundled 8x8 digits (1797 images, offline), upsampled
  bilinearly to 16x16, scaled to [-1, 1], with their 10 labels (CPU runs);
- an ``.npz`` file with ``images`` (N, H, W[, C]) or (N, C, H, W), uint8 in [0, 255] or
  float in [0, 1], and optional ``labels`` (N,); loaded with ``allow_pickle=False``;
- an image folder (PNG/JPEG; one sub-folder per class gives labels);
- CIFAR-10 from a local path: a ``cifar10.npz`` (as above), a PNG folder, or the
  official python batches ``cifar-10-batches-py``. Those batches are pickles, which can
  run code when loaded: they are refused unless ``trust_pickle=True``.
"""

from __future__ import annotations

import json
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import Tensor
from torch.nn import functional as F
from tqdm.auto import tqdm

from policy.diffusion import diffusion_loss, sample
from policy.image.unet import UNet, UNetConfig
from policy.training.optim import EMA, optimizer_step
from policy.scoring import LossConfig
from policy.utils import atomic_save_safetensors, atomic_write, atomic_write_text, read_safetensors

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


@dataclass
class ImageData:
    """A dataset in memory. images: (N, C, H, W) float32 in [-1, 1]; labels: (N,) long or None."""

    name: str
    images: Tensor
    labels: Tensor | None
    num_classes: int

    @property
    def shape(self) -> tuple[int, int, int]:
        """(C, H, W) of one image."""
        c, h, w = self.images.shape[1:]
        return int(c), int(h), int(w)


def _from_uint8_or_unit(arr: np.ndarray, what: str) -> Tensor:
    """uint8 [0,255] or float [0,1] array (N,C,H,W) -> float32 tensor in [-1, 1]."""
    if np.issubdtype(arr.dtype, np.floating) and not np.isfinite(arr).all():
        raise ValueError(f"{what}: {int((~np.isfinite(arr)).sum())} pixel values are NaN or inf; fix or drop those images")
    if arr.dtype == np.uint8:
        x = torch.from_numpy(arr.astype(np.float32) / 255.0)
    elif np.issubdtype(arr.dtype, np.floating):
        if arr.min() < -1e-6 or arr.max() > 1.0 + 1e-6:
            raise ValueError(f"{what}: float images must lie in [0, 1] (got [{arr.min():.3g}, {arr.max():.3g}]); store uint8 or rescale")
        x = torch.from_numpy(arr.astype(np.float32))
    else:
        raise ValueError(f"{what}: images must be uint8 or float, got dtype {arr.dtype}")
    return x * 2.0 - 1.0


def _to_nchw(arr: np.ndarray, what: str) -> np.ndarray:
    """(N,H,W), (N,H,W,C) or (N,C,H,W) with C in {1,3} -> (N,C,H,W)."""
    if arr.ndim == 3:
        return arr[:, None]
    if arr.ndim == 4 and arr.shape[-1] in (1, 3) and arr.shape[1] not in (1, 3):
        return arr.transpose(0, 3, 1, 2)
    if arr.ndim == 4 and arr.shape[1] in (1, 3):
        return arr
    raise ValueError(f"{what}: images must be (N,H,W), (N,H,W,C) or (N,C,H,W) with C in {{1,3}}, got {arr.shape}")


def _resize(x: Tensor, size: int | None) -> Tensor:
    if size is None or x.shape[-1] == size and x.shape[-2] == size:
        return x
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True).clamp(-1.0, 1.0)


def load_digits(size: int = 16) -> ImageData:
    """scikit-learn's bundled 8x8 digits (offline): (1797, 1, size, size) in [-1, 1], 10 labels."""
    from sklearn.datasets import load_digits as sk_digits

    d = sk_digits()
    x = torch.from_numpy(d.images.astype(np.float32) / 16.0)[:, None] * 2.0 - 1.0
    x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False).clamp(-1.0, 1.0)
    return ImageData("digits", x.contiguous(), torch.from_numpy(d.target).long(), 10)


def load_npz(path: str | Path, size: int | None = None, name: str | None = None) -> ImageData:
    """An .npz with ``images`` and optional ``labels`` (see module docstring); no pickles."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"npz dataset {path} does not exist; pass the path of an .npz with an 'images' array")
    with np.load(path, allow_pickle=False) as z:
        if "images" not in z.files:
            raise ValueError(f"{path} has arrays {z.files}; it needs one named 'images' (and optionally 'labels')")
        images = _from_uint8_or_unit(_to_nchw(z["images"], str(path)), str(path))
        labels = torch.from_numpy(z["labels"].astype(np.int64)).reshape(-1) if "labels" in z.files else None
    if labels is not None and len(labels) != len(images):
        raise ValueError(f"{path}: {len(labels)} labels for {len(images)} images")
    n_cls = int(labels.max()) + 1 if labels is not None else 0
    return ImageData(name or path.stem, _resize(images, size).contiguous(), labels, n_cls)


def load_image_folder(path: str | Path, size: int, channels: int = 3, name: str | None = None) -> ImageData:
    """PNG/JPEG files under ``path``; one sub-folder per class gives labels (sorted names)."""
    import imageio.v3 as iio

    root = Path(path)
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise FileNotFoundError(f"no .png/.jpg images under {root}; pass a folder of images (one sub-folder per class for labels)")
    classes = sorted({p.parent.name for p in files}) if all(p.parent != root for p in files) else []
    out = []
    for p in tqdm(files, desc=f"reading {root.name}", leave=False):
        a = np.asarray(iio.imread(p))
        a = a[..., :3] if a.ndim == 3 else a[..., None]
        a = a.mean(-1, keepdims=True) if channels == 1 else (np.repeat(a, 3, -1) if a.shape[-1] == 1 else a)
        x = _from_uint8_or_unit(a.astype(np.uint8)[None].transpose(0, 3, 1, 2), str(p))
        out.append(_resize(x, size))
    labels = torch.tensor([classes.index(p.parent.name) for p in files]) if classes else None
    return ImageData(name or root.name, torch.cat(out).contiguous(), labels, len(classes))


def load_cifar10(path: str | Path, trust_pickle: bool = False) -> ImageData:
    """CIFAR-10 train set (50000, 3, 32, 32) from a local path (no download).

    ``path`` may be a ``.npz`` (images, labels), a PNG folder with one sub-folder per
    class, or the official ``cifar-10-batches-py`` folder (pickles: needs trust_pickle).
    """
    p = Path(path)
    if p.suffix == ".npz":
        return load_npz(p, 32, "cifar10")
    batches = sorted(p.glob("data_batch_*")) or sorted(p.glob("cifar-10-batches-py/data_batch_*"))
    if batches:
        if not trust_pickle:
            raise PermissionError(
                f"{batches[0].parent} holds python pickles, which can run code when loaded; pass --trust-pickle "
                "if you trust the file, or convert it to an .npz with 'images' and 'labels'"
            )
        xs, ys = [], []
        for b in batches:
            with open(b, "rb") as f:
                d = pickle.load(f, encoding="bytes")  # noqa: S301 - explicitly trusted by the user
            xs.append(np.asarray(d[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
            ys.append(np.asarray(d[b"labels"], dtype=np.int64))
        return ImageData("cifar10", _from_uint8_or_unit(np.concatenate(xs), str(p)), torch.from_numpy(np.concatenate(ys)), 10)
    if p.is_dir():
        return load_image_folder(p, 32, 3, "cifar10")
    raise FileNotFoundError(f"CIFAR-10 not found at {p}; pass a cifar10.npz, a PNG folder or the cifar-10-batches-py folder")


def save_grid(images: Tensor, path: str | Path, nrow: int = 8, scale: int = 1, pad: int = 1) -> Path:
    """Write images (N, C, H, W) in [-1, 1] as one PNG grid (atomic), each pixel scale x scale."""
    import imageio.v3 as iio

    n, c, h, w = images.shape
    ncol = (n + nrow - 1) // nrow
    x = ((images.detach().float().cpu().clamp(-1, 1) + 1.0) * 127.5).round().to(torch.uint8)
    grid = torch.full((c, ncol * (h + pad) + pad, nrow * (w + pad) + pad), 255, dtype=torch.uint8)
    for i in range(n):
        r, k = divmod(i, nrow)
        grid[:, pad + r * (h + pad): pad + r * (h + pad) + h, pad + k * (w + pad): pad + k * (w + pad) + w] = x[i]
    arr = grid.repeat_interleave(scale, 1).repeat_interleave(scale, 2).permute(1, 2, 0).numpy()
    arr = arr[..., 0] if c == 1 else arr
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return atomic_write(path, lambda tmp: iio.imwrite(tmp, arr, extension=".png"))


@dataclass
class TrainConfig:
    """Optimisation settings shared by the classical and distributional runs."""

    steps: int = 2000
    batch_size: int = 32
    lr: float = 1e-3
    warmup: int = 100
    ema_decay: float = 0.995
    grad_clip: float = 1.0
    time_eps: float = 1e-2
    weighting: str = "none"
    weight_bias: float = 0.0
    seed: int = 0


def train_image_model(
    model: UNet,
    data: ImageData,
    loss: LossConfig,
    cfg: TrainConfig,
    class_cond: bool = False,
    device: str = "cpu",
    desc: str = "train",
    log: Callable[[int, float], None] | None = None,
) -> tuple[UNet, list[float]]:
    """Train ``model`` with ``policy.diffusion.diffusion_loss`` under ``loss``.

    Each step draws a batch x0 (B, C, H, W); the loss core draws t, x_t and the m noises
    xi (B, m, C, H, W) and scores the m samples. Returns (EMA copy of the model, the
    per-step mean loss values). Raises policy.training.optim.NonFiniteError (one line naming the
    step) when the loss or the gradient norm becomes NaN/inf.
    """
    if class_cond and data.labels is None:
        raise ValueError(f"dataset {data.name} has no labels; drop class conditioning or give labels")
    torch.manual_seed(cfg.seed)
    model.to(device).train()
    ema = EMA(model, cfg.ema_decay)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / max(1, cfg.warmup)))
    g = torch.Generator().manual_seed(cfg.seed)
    images = data.images
    losses: list[float] = []
    bar = tqdm(range(cfg.steps), desc=desc, leave=False)
    for step in bar:
        idx = torch.randint(0, len(images), (cfg.batch_size,), generator=g)
        x0 = images[idx].to(device)
        cond = data.labels[idx].to(device) if class_cond and data.labels is not None else None
        terms = diffusion_loss(model, x0, cond, loss, tuple(x0.shape[1:]), cfg.time_eps, cfg.weighting, cfg.weight_bias)  # type: ignore[arg-type]
        value = terms.loss.mean()
        optimizer_step(value, model, opt, sched, ema, cfg.grad_clip, step, desc)  # NonFiniteError: one line
        losses.append(float(value.detach()))
        if step % 50 == 0:
            bar.set_postfix(loss=f"{np.mean(losses[-50:]):.4f}")
            if log is not None:
                log(step, float(np.mean(losses[-50:])))
    return ema.model, losses


@torch.no_grad()
def generate(
    model: UNet,
    n: int,
    steps: int,
    churn: float = 0.0,
    labels: Tensor | None = None,
    batch_size: int = 500,
    seed: int = 0,
    device: str = "cpu",
) -> Tensor:
    """n images (n, C, H, W) from ``policy.diffusion.sample`` with ``steps`` = NFE."""
    cfg = model.config
    model.eval()
    gen = torch.Generator(device=device).manual_seed(seed)
    out = []
    for start in range(0, n, batch_size):
        b = min(batch_size, n - start)
        cond = labels[start: start + b].to(device) if labels is not None else None
        shape = (b, cfg.image_channels, cfg.image_size, cfg.image_size)
        out.append(sample(model, shape, shape[1:], steps, churn, cond, device=device, generator=gen).cpu())
    return torch.cat(out)


def measure_step_time(
    model_config: UNetConfig,
    data: ImageData,
    losses: dict[str, LossConfig],
    batch_size: int,
    steps: int = 10,
    warmup: int = 2,
    device: str = "cpu",
) -> dict[str, float]:
    """Seconds per training step (forward + backward + Adam) for each loss, side by side.

    The losses are timed round-robin (one step of each in turn) so that load changes on a
    shared machine hit all of them alike; returns the median per loss.
    """
    import time

    torch.manual_seed(0)
    model = UNet(model_config).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    x0 = data.images[:batch_size].to(device)
    times: dict[str, list[float]] = {k: [] for k in losses}
    for i in range(warmup + steps):
        for name, lc in losses.items():
            if device != "cpu":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            value = diffusion_loss(model, x0, None, lc, tuple(x0.shape[1:])).loss.mean()
            opt.zero_grad(set_to_none=True)
            value.backward()
            opt.step()
            if device != "cpu":
                torch.cuda.synchronize()
            if i >= warmup:
                times[name].append(time.perf_counter() - t0)
    return {k: float(np.median(v)) for k, v in times.items()}


def save_image_model(model: UNet, directory: str | Path, extra: dict[str, Any] | None = None) -> Path:
    """Write ``model.safetensors`` + ``config.json`` (U-Net config and ``extra``) atomically."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    atomic_save_safetensors(model.state_dict(), d / "model.safetensors")
    atomic_write_text(d / "config.json", json.dumps({"unet": model.config.to_dict(), **(extra or {})}, indent=2))
    return d


def load_image_model(directory: str | Path) -> UNet:
    """Inverse of ``save_image_model``."""
    d = Path(directory)
    if not (d / "config.json").is_file() or not (d / "model.safetensors").is_file():
        raise FileNotFoundError(f"{d} is not an image model directory (needs config.json and model.safetensors)")
    cfg = UNetConfig.from_dict(json.loads((d / "config.json").read_text())["unet"])
    model = UNet(cfg)
    model.load_state_dict(read_safetensors(d / "model.safetensors")[0])
    return model
