"""NaN/inf never trains silently: every training loop (2D, image, LIBERO policy) stops with
one line naming the step and what was non-finite, and the scripts print that line."""

from __future__ import annotations

import importlib
from pathlib import Path

import numpy as np
import pytest
import torch

import policy.image.train as image
import policy.toy2d.train as toy2d_train
from policy.training.optim import NonFiniteError, check_finite
from policy.scoring import LossConfig

ROOT = Path(__file__).resolve().parents[2]
torch.set_num_threads(1)  # the test machine has 2 shared cores


def _script(name: str):
    """The entry module behind scripts/<name>.py."""
    return importlib.import_module({"train_toy2d": "policy.toy2d.cli", "train_image": "policy.image.cli",
                                    "train_policy": "envs.training_cli"}[name])


def _one_line(text: str) -> str:
    """The one error line of a script's stderr (progress bars aside), and no traceback."""
    lines = [line for line in text.replace("\r", "\n").splitlines() if line.startswith("error")]
    assert len(lines) == 1 and "Traceback" not in text, text
    return lines[0]


def test_check_finite_names_the_step_and_what_was_non_finite():
    check_finite(torch.tensor(0.5), 3, torch.tensor(2.0))  # finite: nothing happens
    check_finite(torch.tensor(0.5), 3)
    with pytest.raises(NonFiniteError, match=r"^train x: step 7: the loss is nan;") as e:
        check_finite(torch.tensor(float("nan")), 7, torch.tensor(1.0), "train x")
    assert isinstance(e.value, ValueError) and "\n" not in str(e.value)
    with pytest.raises(NonFiniteError, match=r"step 8: the loss is inf"):
        check_finite(torch.tensor(float("inf")), 8)
    with pytest.raises(NonFiniteError, match=r"step 9: the gradient norm is inf \(loss 0.5\)"):
        check_finite(torch.tensor(0.5), 9, torch.tensor(float("inf")))


# ---------------------------------------------------------------- 2D (policy/toy2d/train.py)

_TINY_2D = toy2d_train.Toy2DConfig(steps=6, warmup_steps=1, hidden=16, depth=1, population=2, batch_size=8)


def _nan_targets_from_step(step: int, monkeypatch: pytest.MonkeyPatch) -> None:
    real, calls = toy2d_train.sample_target, []

    def bad(target, n, generator=None):
        x = real(target, n, generator)
        calls.append(1)
        if len(calls) > step:
            x[0, 1] = float("nan")
        return x

    monkeypatch.setattr(toy2d_train, "sample_target", bad)


def test_2d_loop_stops_on_a_nan_target(monkeypatch: pytest.MonkeyPatch) -> None:
    _nan_targets_from_step(2, monkeypatch)
    loss = LossConfig(kind="energy", population=2)
    with pytest.raises(NonFiniteError, match=r"^mixture/energy: step 2: the loss is nan"):
        toy2d_train.train_generator("mixture", loss, _TINY_2D, progress=False)


def test_2d_loop_stops_on_non_finite_gradients(monkeypatch: pytest.MonkeyPatch) -> None:
    real = toy2d_train.diffusion_loss
    hooked: list[torch.nn.Module] = []

    def spy(model, *a, **k):
        if not hooked:  # from the first backward on, one weight's gradient is inf; the loss stays finite
            next(model.parameters()).register_hook(lambda g: g * float("inf"))
            hooked.append(model)
        return real(model, *a, **k)

    monkeypatch.setattr(toy2d_train, "diffusion_loss", spy)
    with pytest.raises(NonFiniteError, match=r"step 0: the gradient norm is (nan|inf) \(loss "):
        toy2d_train.train_generator("mixture", LossConfig(kind="mse", population=1), _TINY_2D, progress=False)
    assert all(torch.isfinite(p).all() for p in hooked[0].parameters())  # stopped before opt.step


def test_train_toy2d_script_prints_one_line(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys) -> None:
    _nan_targets_from_step(0, monkeypatch)
    rc = _script("train_toy2d").main(["--quick", "--steps", "3", "--targets", "mixture", "--nfes", "1",
                                      "--mmd-samples", "64", "--out", str(tmp_path), "--no-progress"])
    assert rc == 1
    line = _one_line(capsys.readouterr().err)
    assert line.startswith("error: mixture/energy: step 0: the loss is nan")


# ---------------------------------------------------------------- images (policy/image/train.py)

_TINY_UNET = image.UNetConfig(image_channels=1, image_size=8, base_channels=8, channel_mult=(1, 2), num_res_blocks=1,
                              attn_resolutions=(), num_heads=2, groups=4)


def _digits8(nan: bool = False) -> image.ImageData:
    data = image.load_digits(8)
    images = data.images[:64].clone()
    if nan:
        images[:, :, 0, 0] = float("nan")
    return image.ImageData("digits", images, data.labels[:64], 10)


def test_image_loop_stops_on_nan_images() -> None:
    loss = LossConfig(kind="energy", population=2)
    with pytest.raises(NonFiniteError, match=r"^train energy: step 0: the loss is nan"):
        image.train_image_model(image.UNet(_TINY_UNET), _digits8(nan=True), loss, image.TrainConfig(steps=3, batch_size=4),
                                desc="train energy")


def test_image_loop_stops_on_a_non_finite_loss_weight() -> None:
    cfg = image.TrainConfig(steps=3, batch_size=4, weighting="sigmoid", weight_bias=float("inf"))  # w(t) = inf * 0
    with pytest.raises(NonFiniteError, match=r"step 0: the loss is nan"):
        image.train_image_model(image.UNet(_TINY_UNET), _digits8(), LossConfig(kind="mse", population=1), cfg)


def test_npz_with_nan_pixels_is_refused_in_one_line(tmp_path: Path) -> None:
    arr = np.full((3, 8, 8), 0.5, dtype=np.float32)
    arr[1, 2, 3] = np.nan
    np.savez(tmp_path / "d.npz", images=arr)
    with pytest.raises(ValueError, match=r"1 pixel values are NaN or inf"):
        image.load_npz(tmp_path / "d.npz")


def test_train_image_script_prints_one_line(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys) -> None:
    mod = _script("train_image")
    monkeypatch.setattr(mod, "load_data", lambda args, name: _digits8(nan=True))
    monkeypatch.setitem(mod.PRESETS, "digits", {**mod.PRESETS["digits"], "unet": _TINY_UNET})
    # the metric's classifier is not under test: stand-ins keep this fast
    monkeypatch.setattr(mod.frechet, "train_classifier_features", lambda *a, **k: (torch.nn.Flatten(), 1.0))
    monkeypatch.setattr(mod.frechet, "extract_features", lambda net, x, device="cpu": np.random.default_rng(0).normal(size=(len(x), 4)))
    rc = mod.main(["--quick", "--steps", "2", "--batch-size", "4", "--timing-steps", "0", "--threads", "1",
                   "--out", str(tmp_path / "out"), "--run-dir", str(tmp_path / "runs")])
    assert rc == 1
    line = _one_line(capsys.readouterr().err)
    assert line.startswith("error: train energy: step 0: the loss is nan")


# ---------------------------------------------------------------- LIBERO policy (policy/training/loop.py)


@pytest.fixture(scope="module")
def suite(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from envs.libero.dataset import write_synthetic_suite

    folder = tmp_path_factory.mktemp("nonfinite") / "libero_syn"
    write_synthetic_suite(folder, n_tasks=1, n_demos=1, length=12, size=32)
    return folder


@pytest.fixture(scope="module")
def language():
    from policy.model.language import LanguageEncoder

    return LanguageEncoder()


_TINY_POLICY = [
    "model.image_size=32", "model.resnet_widths=[8,16,32,64]", "model.d_model=64", "model.decoder_layers=2",
    "train.num_workers=0", "train.wandb_mode=disabled", "train.batch_size=4", "train.warmup_steps=1",
    "loss.population=2", "train.steps=4", "train.log_every=1",
]


def _nan_actions_from_call(monkeypatch: pytest.MonkeyPatch, first_bad: int) -> None:
    """LiberoDataset items get a NaN action from the first_bad-th item read on (stats stay clean)."""
    from envs.libero.dataset import LiberoDataset

    real, calls = LiberoDataset.__getitem__, []

    def bad(self, i):
        item = real(self, i)
        calls.append(i)
        if len(calls) > first_bad:
            item["actions"] = item["actions"].clone()
            item["actions"][0, 0] = float("nan")
        return item

    monkeypatch.setattr(LiberoDataset, "__getitem__", bad)


def test_policy_loop_stops_on_nan_actions(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, suite: Path, language) -> None:
    from envs.libero.dataset import LiberoDataset
    from policy.training.loop import train
    from policy.training.config import compose_config, split_config

    p, t, loss, _, _ = split_config(compose_config(_TINY_POLICY))
    ds = LiberoDataset(suite, augment=False, progress=False)
    _nan_actions_from_call(monkeypatch, 4)  # the first batch (4 items) is clean: step 1 trains, step 2 does not
    with pytest.raises(NonFiniteError, match=r"^training: step 2: the loss is nan"):
        train(p, t, loss, ds, tmp_path / "run", language=language, progress=False)


def test_train_policy_script_prints_one_line(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, suite: Path, language, capsys) -> None:
    import policy.training.loop

    monkeypatch.setattr(policy.training.loop, "LanguageEncoder", lambda *a, **k: language)  # reuse the loaded BERT
    monkeypatch.chdir(tmp_path)
    _nan_actions_from_call(monkeypatch, 0)
    rc = _script("train_policy").main(["suite=libero_10", f"suite.data_dirs=[{suite}]", *_TINY_POLICY,
                                       f"run_dir={tmp_path / 'run'}"])
    assert rc == 1
    line = _one_line(capsys.readouterr().err)
    assert line.startswith("error: training: step 1: the loss is nan")
