"""Image module: U-Net protocol, datasets, shared loss core, a tiny training run, the metric."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import policy.diffusion
import policy.image.train as image
import policy.scoring
from policy.image import frechet
from policy.image.unet import UNet, UNetConfig
from policy.scoring import LossConfig

ROOT = Path(__file__).resolve().parents[2]
TINY = UNetConfig(image_channels=1, image_size=8, base_channels=8, channel_mult=(1, 2), num_res_blocks=1,
                  attn_resolutions=(4,), num_heads=2, groups=4)


def _randomise(net: torch.nn.Module) -> None:
    """Perturb the zero-initialised output layers so every path carries signal."""
    torch.manual_seed(1)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.05 * torch.randn_like(p))


@pytest.mark.parametrize("num_classes", [0, 10])
def test_unet_shapes_with_and_without_class_conditioning(num_classes: int) -> None:
    cfg = UNetConfig(image_channels=3, image_size=16, base_channels=16, channel_mult=(1, 2, 2), num_res_blocks=2,
                     attn_resolutions=(8,), num_classes=num_classes, num_heads=4, groups=8)
    net = UNet(cfg)
    assert net.stem.in_channels == 6 and net.head.out_channels == 6  # 2C in, 2C out (half dropped)
    b, m = 3, 4
    cond = torch.randint(0, 10, (b,)) if num_classes else None
    out = net(torch.rand(b), torch.randn(b, 3, 16, 16), torch.randn(b, m, 3, 16, 16), cond)
    assert out.shape == (b, m, 3, 16, 16)
    wrong = None if num_classes else torch.zeros(b, dtype=torch.long)
    with pytest.raises(ValueError, match="cond"):
        net(torch.rand(b), torch.randn(b, 3, 16, 16), torch.randn(b, m, 3, 16, 16), wrong)
    with pytest.raises(ValueError, match="xi"):
        net(torch.rand(b), torch.randn(b, 3, 16, 16), torch.randn(b, m, 1, 16, 16), cond)


def test_class_label_changes_output() -> None:
    net = UNet(UNetConfig(**{**TINY.to_dict(), "num_classes": 10, "channel_mult": (1, 2)}))
    _randomise(net)
    x, xi, t = torch.randn(2, 1, 8, 8), torch.randn(2, 1, 1, 8, 8), torch.rand(2)
    a = net(t, x, xi, torch.tensor([0, 0]))
    b = net(t, x, xi, torch.tensor([3, 3]))
    assert not torch.allclose(a, b)


def test_noise_channels_change_the_output() -> None:
    net = UNet(TINY).eval()
    _randomise(net)
    t, x = torch.rand(2), torch.randn(2, 1, 8, 8)
    xi = torch.randn(2, 3, 1, 8, 8)
    out = net(t, x, xi)
    assert torch.allclose(net(t, x, xi), out)  # deterministic given xi
    assert (out[:, 0] - out[:, 1]).abs().mean() > 1e-3  # population members differ only through xi
    xi2 = xi.clone()
    xi2[:, 0] = torch.randn(2, 1, 8, 8)
    out2 = net(t, x, xi2)
    assert (out2[:, 0] - out[:, 0]).abs().mean() > 1e-3
    assert torch.allclose(out2[:, 1:], out[:, 1:], atol=1e-5)  # members are independent


def test_training_calls_the_shared_loss_core(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: dict[str, list] = {"diffusion_loss": [], "energy": [], "sample": []}
    real_dl, real_energy, real_sample = image.diffusion_loss, policy.scoring.energy_score_loss, image.sample

    def spy_dl(*a, **k):
        calls["diffusion_loss"].append(a[3])
        return real_dl(*a, **k)

    def spy_energy(samples, target, *a, **k):
        calls["energy"].append(tuple(samples.shape))
        return real_energy(samples, target, *a, **k)

    def spy_sample(*a, **k):
        calls["sample"].append(a[3])
        return real_sample(*a, **k)

    monkeypatch.setattr(image, "diffusion_loss", spy_dl)
    monkeypatch.setattr(policy.scoring, "energy_score_loss", spy_energy)
    monkeypatch.setattr(image, "sample", spy_sample)
    assert image.diffusion_loss is not policy.diffusion.diffusion_loss  # patched the name image.py uses
    data = image.load_digits(8)
    loss = LossConfig(kind="energy", lam=1.0, beta=1.0, population=3)
    image.train_image_model(UNet(TINY), data, loss, image.TrainConfig(steps=2, batch_size=4, warmup=1))
    assert calls["diffusion_loss"] == [loss, loss]
    assert calls["energy"] == [(4, 3, 1, 8, 8)] * 2
    image.generate(UNet(TINY), 5, steps=3)
    assert calls["sample"] == [3]


def test_image_module_defines_no_loss_schedule_or_sampler_of_its_own() -> None:
    src = (ROOT / "policy" / "image" / "train.py").read_text()
    assert "from policy.diffusion import diffusion_loss, sample" in src
    defs = re.findall(r"^def (\w+)", src, flags=re.M)
    banned = ("norm", "kernel", "energy", "score", "schedule", "alpha", "sigma", "snr", "transition", "weight")
    assert not [d for d in defs if any(b in d.lower() for b in banned)]
    for pattern in ("torch.norm", "linalg.norm", "cdist", "linspace", ".pow(", "randn_like", "1.0 - t", "1 - t"):
        assert pattern not in src, pattern


def test_tiny_training_run_lowers_the_loss() -> None:
    torch.set_num_threads(1)
    data = image.load_digits(8)
    loss = LossConfig(kind="energy", lam=1.0, beta=1.0, population=2)
    cfg = image.TrainConfig(steps=120, batch_size=16, lr=3e-3, warmup=10, seed=0)
    _, hist = image.train_image_model(UNet(TINY), data, loss, cfg)
    first, last = np.mean(hist[:20]), np.mean(hist[-20:])
    assert last < 0.7 * first, (first, last)


def test_step_timing_and_checkpoint_roundtrip(tmp_path: Path) -> None:
    data = image.load_digits(8)
    losses = {"mse": LossConfig(kind="mse", population=1), "m2": LossConfig(kind="energy", population=2)}
    times = image.measure_step_time(TINY, data, losses, batch_size=4, steps=2, warmup=1)
    assert set(times) == {"mse", "m2"} and all(v > 0 for v in times.values())
    net = UNet(TINY)
    _randomise(net)
    image.save_image_model(net, tmp_path / "m", {"loss": "mse"})
    back = image.load_image_model(tmp_path / "m")
    x = (torch.rand(2), torch.randn(2, 1, 8, 8), torch.randn(2, 2, 1, 8, 8))
    assert torch.equal(back(*x), net(*x))


def test_digits_dataset_and_grid(tmp_path: Path) -> None:
    import imageio.v3 as iio

    data = image.load_digits(16)
    assert data.images.shape == (1797, 1, 16, 16) and data.num_classes == 10
    assert data.images.min() >= -1 and data.images.max() <= 1 and data.images.min() < -0.99
    path = image.save_grid(data.images[:10], tmp_path / "g.png", nrow=5, scale=2)
    arr = iio.imread(path)
    assert arr.shape == (2 * (2 * 17 + 1), 2 * (5 * 17 + 1)) and arr.dtype == np.uint8
    assert not list(tmp_path.glob("*.tmp*"))


def test_npz_folder_and_cifar_loaders(tmp_path: Path) -> None:
    import imageio.v3 as iio
    import pickle

    imgs = np.random.default_rng(0).integers(0, 256, (6, 32, 32, 3), dtype=np.uint8)
    np.savez(tmp_path / "c.npz", images=imgs, labels=np.arange(6) % 3)
    d = image.load_npz(tmp_path / "c.npz", size=16)
    assert d.images.shape == (6, 3, 16, 16) and d.num_classes == 3
    assert image.load_cifar10(tmp_path / "c.npz").images.shape == (6, 3, 32, 32)
    for k, cls in enumerate(("cat", "dog")):
        (tmp_path / "f" / cls).mkdir(parents=True)
        iio.imwrite(tmp_path / "f" / cls / "a.png", imgs[k])
    f = image.load_image_folder(tmp_path / "f", size=8, channels=1)
    assert f.images.shape == (2, 1, 8, 8) and f.labels.tolist() == [0, 1]
    batches = tmp_path / "cifar-10-batches-py"
    batches.mkdir()
    with open(batches / "data_batch_1", "wb") as fh:
        pickle.dump({b"data": imgs.transpose(0, 3, 1, 2).reshape(6, -1), b"labels": [1] * 6}, fh)
    with pytest.raises(PermissionError, match="trust-pickle"):
        image.load_cifar10(tmp_path)
    assert image.load_cifar10(tmp_path, trust_pickle=True).images.shape == (6, 3, 32, 32)
    with pytest.raises(FileNotFoundError, match="images"):
        image.load_npz(tmp_path / "missing.npz")


def test_frechet_distance_and_classifier_features() -> None:
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(2000, 4)), rng.normal(size=(2000, 4))
    assert frechet.frechet_distance(a, b) < 0.05
    assert abs(frechet.frechet_distance(a, b + np.array([2.0, 0, 0, 0])) - 4.0) < 0.2
    data = image.load_digits(8)
    net, acc = frechet.train_classifier_features(data.images, data.labels, 10, steps=80, batch_size=64)
    assert acc > 0.7
    f = frechet.extract_features(net, data.images[:300])
    assert f.shape == (300, 64)
    with pytest.raises(ValueError, match="labelled"):
        frechet.train_classifier_features(data.images, None, 0)


def test_inception_loads_its_own_state_dict(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    net = frechet.InceptionFeatures()
    assert sum(p.numel() for p in net.parameters()) > 20_000_000
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, tmp_path / "inc.safetensors")
    frechet.load_inception(tmp_path / "inc.safetensors")
    torch.save({"fc.weight": torch.zeros(3)}, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match="not the FID Inception"):
        frechet.load_inception(tmp_path / "bad.pt")


def test_script_help_and_bad_input_exit_nonzero() -> None:
    script = str(ROOT / "scripts" / "train_image.py")
    out = subprocess.run([sys.executable, script, "--help"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "--quick" in out.stdout
    assert len(out.stdout.splitlines()) < 50  # fits a screen
    from policy.image import cli as mod

    with pytest.raises(SystemExit, match="--data"):
        mod.main(["--config", "cifar10"])
    assert mod.main(["--data", "/nonexistent/x.npz", "--threads", "1"]) == 2


def test_script_writes_runs_by_default_and_the_reference_only_when_asked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from policy.image import cli as mod

    reference = tmp_path / "reference"
    monkeypatch.setattr(mod, "REFERENCE_DIR", reference)  # stands in for the committed benchmarks/results
    monkeypatch.chdir(tmp_path)
    digits = image.load_digits(8)
    small = image.ImageData("digits", digits.images[:32], digits.labels[:32], 10)
    # training, sampling and the metric are tested elsewhere: stand-ins keep this about where files go
    monkeypatch.setattr(mod, "load_data", lambda args, name: small)
    monkeypatch.setitem(mod.PRESETS, "digits", {**mod.PRESETS["digits"], "unet": TINY})
    monkeypatch.setattr(mod.frechet, "train_classifier_features", lambda *a, **k: (torch.nn.Flatten(), 1.0))
    monkeypatch.setattr(mod.frechet, "extract_features", lambda net, x, device="cpu": np.random.default_rng(len(x)).normal(size=(len(x), 4)))
    monkeypatch.setattr(mod, "train_image_model", lambda model, *a, **k: (model, [1.0]))
    monkeypatch.setattr(mod, "generate", lambda model, n, *a, **k: torch.rand(n, 1, 8, 8) * 2 - 1)
    written = []
    real_write = mod.atomic_write_json  # the shared atomic helper, not a hand-written temp file + rename
    monkeypatch.setattr(mod, "atomic_write_json", lambda path, obj: written.append(Path(path)) or real_write(path, obj))
    args = ["--quick", "--threads", "1", "--timing-steps", "0", "--nfe", "1", "--n-samples", "16"]
    assert mod.main(args) == 0
    doc = json.loads((tmp_path / "runs" / "image" / "image.json").read_text())
    assert doc["digits"]["nfe"] == [1] and (tmp_path / "runs" / "image" / "image" / "digits_energy_nfe1.png").is_file()
    assert written == [Path("runs/image/image.json")]
    assert not reference.exists() and not (tmp_path / "benchmarks").exists()
    assert mod.main([*args, "--save-reference"]) == 0
    assert json.loads((reference / "image.json").read_text())["digits"]["nfe"] == [1]
    assert (reference / "image" / "digits_mse_nfe1.png").is_file() and written[-1] == reference / "image.json"
    assert mod.main([*args, "--save-reference", "--out", str(tmp_path / "x")]) == 2
    assert "tempfile" not in (ROOT / "policy" / "image" / "cli.py").read_text()
