"""The declared feature spec (policy/features.py) and the one Policy protocol (policy/protocol.py)."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from policy.features import (ACTION, DEFAULT_FEATURES, IMAGE, LANGUAGE, LEGACY_FEATURES, STATE, Feature,
                             FeatureSpec)

# Golden (LeRobot style): the features every policy so far was trained with, written out once
# here. A change to this list changes what old checkpoints are read as: it must be deliberate.
GOLDEN = [
    {"name": "agentview_rgb", "kind": "image", "shape": [None, None, 3], "dtype": "uint8"},
    {"name": "eye_in_hand_rgb", "kind": "image", "shape": [None, None, 3], "dtype": "uint8"},
    {"name": "joint_states", "kind": "state", "shape": [7], "dtype": "float32"},
    {"name": "gripper_states", "kind": "state", "shape": [2], "dtype": "float32"},
    {"name": "language", "kind": "language", "shape": [], "dtype": "str"},
    {"name": "action", "kind": "action", "shape": [8, 7], "dtype": "float32"},
]


def test_the_spec_declares_exactly_todays_keys_shapes_and_dtypes() -> None:
    assert LEGACY_FEATURES.to_list() == GOLDEN
    assert DEFAULT_FEATURES.to_list() == GOLDEN
    assert json.loads(json.dumps(DEFAULT_FEATURES.to_list())) == GOLDEN  # JSON-ready, order kept
    assert FeatureSpec.from_list(GOLDEN) == DEFAULT_FEATURES
    spec = DEFAULT_FEATURES
    assert spec.observation_keys == ("agentview_rgb", "eye_in_hand_rgb", "joint_states", "gripper_states", "language")
    assert spec.image_keys == ("agentview_rgb", "eye_in_hand_rgb")
    assert [f.name for f in spec.states] == ["joint_states", "gripper_states"] and spec.state_dim == 9
    assert spec.language.name == "language" and spec.action.shape == (8, 7)


def test_feature_validation_is_one_line_naming_the_feature() -> None:
    with pytest.raises(ValueError, match="kind 'depth' is unknown"):
        Feature("x", "depth", (3,), "float32")
    with pytest.raises(ValueError, match=r"image feature 'cam' must be \(H, W, 3\) uint8"):
        Feature("cam", IMAGE, (None, None, 4), "uint8")
    with pytest.raises(ValueError, match="state feature 's' needs a fixed shape"):
        Feature("s", STATE, (None,), "float32")
    with pytest.raises(ValueError, match="unique"):
        FeatureSpec((*DEFAULT_FEATURES.features, Feature("joint_states", STATE, (7,), "float32")))
    with pytest.raises(ValueError, match="exactly one action"):
        FeatureSpec(DEFAULT_FEATURES.observation)
    with pytest.raises(ValueError, match="keys"):
        FeatureSpec.from_list([{"name": "a", "kind": LANGUAGE}])
    assert Feature("a", ACTION, (4, 2), "float32").size == 8


def test_policy_config_defaults_and_records_come_from_the_spec() -> None:
    from policy.model.config import PolicyConfig

    cfg = PolicyConfig()
    assert cfg.cameras == DEFAULT_FEATURES.image_keys and cfg.proprio_dim == DEFAULT_FEATURES.state_dim
    assert (cfg.chunk_size, cfg.action_dim) == DEFAULT_FEATURES.action.shape
    assert cfg.spec == DEFAULT_FEATURES and cfg.to_dict()["features"] == GOLDEN
    assert "features" not in repr(cfg)  # repr (logged, captured) is what it was
    one = PolicyConfig(cameras=("eye_in_hand_rgb",), chunk_size=4)
    assert one.spec.image_keys == ("eye_in_hand_rgb",) and one.spec.action.shape == (4, 7)
    assert PolicyConfig.from_dict(one.to_dict()) == one
    with pytest.raises(ValueError, match=r"features declare actions \[8, 7\] but chunk_size=4"):
        PolicyConfig(chunk_size=4, features=GOLDEN)
    with pytest.raises(ValueError, match="PolicyConfig.features: feature 'x': kind"):
        PolicyConfig(features=[*GOLDEN, {"name": "x", "kind": "depth", "shape": [1], "dtype": "float32"}])


def test_the_readers_use_the_spec() -> None:
    from envs.libero import dataset
    from envs.libero.observation import process_observation, stack_observations
    from policy.serving import wire

    assert wire.PACKAGE_KEYS == DEFAULT_FEATURES.observation_keys and wire.IMAGE_KEYS == DEFAULT_FEATURES.image_keys
    assert dataset.CAMERA_KEYS == DEFAULT_FEATURES.image_keys
    assert dataset.OBS_SHAPES == {"joint_states": 7, "gripper_states": 2} and dataset.ACTION_DIM == 7
    rng = np.random.default_rng(0)
    fields = {"agentview_rgb": rng.integers(0, 256, (16, 20, 3), dtype=np.uint8),
              "eye_in_hand_rgb": rng.integers(0, 256, (16, 20, 3), dtype=np.uint8),
              "joint_states": rng.normal(size=7), "gripper_states": rng.normal(size=2), "ee_pos": np.zeros(3)}
    obs = process_observation(fields, "do it")
    assert list(obs) == list(DEFAULT_FEATURES.observation_keys)
    for f in DEFAULT_FEATURES.observation:
        if f.kind == LANGUAGE:
            assert obs[f.name] == "do it"
        else:
            assert obs[f.name].dtype == np.dtype(f.dtype) and all(d in (None, s) for d, s in zip(f.shape, obs[f.name].shape))
    np.testing.assert_array_equal(obs["agentview_rgb"], fields["agentview_rgb"][::-1, ::-1])
    batch = stack_observations([obs, obs])
    assert list(batch) == list(DEFAULT_FEATURES.observation_keys) and batch["joint_states"].shape == (2, 7)
    # the wire: package keys and openpi keys give the same validated observation, stacked the same way
    openpi = {"observation/image": obs["agentview_rgb"], "observation/wrist_image": obs["eye_in_hand_rgb"],
              "observation/state": np.concatenate([obs["joint_states"], obs["gripper_states"]]), "prompt": "do it"}
    a, b = wire.parse_observation(obs), wire.parse_observation(openpi)
    assert list(a) == list(DEFAULT_FEATURES.observation_keys) and set(b) == set(a)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
    assert list(wire.stack_observations([a, b])) == list(DEFAULT_FEATURES.observation_keys)


def test_server_metadata_comes_from_the_spec() -> None:
    from policy.serving.server import PolicyServer

    class _Noop:
        def reset(self) -> None: ...

        def predict(self, obs, steps=2, churn=0.0):
            return np.zeros((len(obs["language"]), 8, 7), np.float32)

    meta = PolicyServer(_Noop(), port=0).metadata
    assert (meta["chunk_length"], meta["action_dim"]) == (8, 7)
    assert meta["observation_keys"] == {"package": list(DEFAULT_FEATURES.observation_keys),
                                        "openpi": ["observation/image", "observation/wrist_image", "observation/state", "prompt"]}


def test_one_policy_protocol() -> None:
    import typing

    import envs.evaluation.policies as eval_policies
    import policy.serving.server as server
    from policy.protocol import Policy

    assert eval_policies.Policy is Policy
    assert not hasattr(server, "BatchPolicy")
    assert typing.get_type_hints(server.PolicyServer.__init__)["policy"] is Policy


# --- proprio layouts (joints, eef) -----------------------------------------------------------

EEF_STATES = [
    {"name": "ee_pos", "kind": "state", "shape": [3], "dtype": "float32"},
    {"name": "ee_ori", "kind": "state", "shape": [3], "dtype": "float32"},
    {"name": "gripper_states", "kind": "state", "shape": [2], "dtype": "float32"},
]
EEF_GOLDEN = [*GOLDEN[:2], *EEF_STATES, *GOLDEN[4:]]
EEF_ERROR = "this policy expects the eef layout: ee_pos (3) + ee_ori (3) + gripper_states (2) = 8"
JOINTS_ERROR = "this policy expects the joints layout: joint_states (7) + gripper_states (2) = 9"


def test_proprio_layouts_in_the_config() -> None:
    from policy.features import PROPRIO_LAYOUTS, describe_state, proprio_layout, with_proprio
    from policy.model.config import PolicyConfig

    assert list(PROPRIO_LAYOUTS) == ["joints", "eef"] and proprio_layout(DEFAULT_FEATURES) == "joints"
    assert with_proprio(DEFAULT_FEATURES, "joints") == DEFAULT_FEATURES
    assert with_proprio(DEFAULT_FEATURES, "eef").to_list() == EEF_GOLDEN
    assert describe_state(with_proprio(DEFAULT_FEATURES, "eef")) == EEF_ERROR.removeprefix("this policy expects ")
    # joints: today's config, config.json content unchanged (no new key; proprio_dim 9)
    joints = PolicyConfig()
    assert (joints.proprio, joints.proprio_dim, joints.spec) == ("joints", 9, DEFAULT_FEATURES)
    assert "proprio" not in joints.to_dict() and joints.to_dict()["proprio_dim"] == 9
    assert PolicyConfig(proprio="joints", proprio_dim=9).to_dict() == joints.to_dict()
    assert "proprio=" not in repr(joints)  # repr is what it was
    # eef: the features record it; a saved config reloads as eef
    eef = PolicyConfig(proprio="eef")
    assert (eef.proprio, eef.proprio_dim) == ("eef", 8) and eef.to_dict()["features"] == EEF_GOLDEN
    back = PolicyConfig.from_dict(json.loads(eef.to_json()))
    assert back == eef and back.proprio == "eef" and back.spec == eef.spec
    with pytest.raises(ValueError, match="proprio_dim=9 does not match the state features .* use 8"):
        PolicyConfig(proprio="eef", proprio_dim=9)
    with pytest.raises(ValueError, match="proprio='joints' but the features declare"):
        PolicyConfig(proprio="joints", features=EEF_GOLDEN)
    with pytest.raises(ValueError, match=r"proprio='xyz' is unknown; use one of \['joints', 'eef'\]"):
        PolicyConfig(proprio="xyz")


def test_proprio_from_hydra() -> None:
    from policy.training.config import compose_config, split_config

    for model in ("small", "paper"):
        joints = split_config(compose_config([f"model={model}"]))[0]
        assert (joints.proprio, joints.proprio_dim, joints.spec.to_list()) == ("joints", 9, GOLDEN)
        eef = split_config(compose_config([f"model={model}", "model.proprio=eef"]))[0]
        assert (eef.proprio, eef.proprio_dim, eef.to_dict()["features"]) == ("eef", 8, EEF_GOLDEN)
    with pytest.raises(ValueError, match="proprio_dim=9 does not match"):
        split_config(compose_config(["model.proprio=eef", "model.proprio_dim=9"]))


def test_the_readers_follow_the_eef_layout(tmp_path) -> None:
    from envs.libero.dataset import LiberoDataset, read_demo_file, write_synthetic_suite
    from envs.libero.observation import process_observation, stack_observations
    from policy.features import with_proprio
    from policy.serving import wire

    spec = with_proprio(DEFAULT_FEATURES, "eef")
    rng = np.random.default_rng(0)
    fields = {"agentview_rgb": rng.integers(0, 256, (16, 16, 3), dtype=np.uint8),
              "eye_in_hand_rgb": rng.integers(0, 256, (16, 16, 3), dtype=np.uint8),
              "joint_states": rng.normal(size=7), "gripper_states": rng.normal(size=2),
              "ee_pos": rng.normal(size=3), "ee_ori": rng.normal(size=3)}
    obs = process_observation(fields, "do it", spec)
    assert list(obs) == list(spec.observation_keys) and obs["ee_ori"].dtype == np.float32
    assert list(process_observation(fields, "do it")) == list(DEFAULT_FEATURES.observation_keys)
    assert stack_observations([obs, obs], spec)["ee_pos"].shape == (2, 3)
    # the wire: openpi's 8-value state splits into ee_pos, ee_ori, gripper_states
    state = np.concatenate([obs["ee_pos"], obs["ee_ori"], obs["gripper_states"]])
    openpi = {"observation/image": obs["agentview_rgb"], "observation/wrist_image": obs["eye_in_hand_rgb"],
              "observation/state": state, "prompt": "do it"}
    a, b = wire.parse_observation(obs, spec), wire.parse_observation(openpi, spec)
    assert list(a) == list(spec.observation_keys) and set(b) == set(a)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
    assert list(wire.stack_observations([a, b], spec)) == list(spec.observation_keys)
    # the wrong layout: one error naming the layout the policy expects
    with pytest.raises(wire.RequestError, match=re.escape(f"observation/state has 9 values; {EEF_ERROR}") + "$"):
        wire.parse_observation({**openpi, "observation/state": np.zeros(9, np.float32)}, spec)
    with pytest.raises(wire.RequestError, match=re.escape(f"observation/state has 8 values; {JOINTS_ERROR}") + "$"):
        wire.parse_observation(openpi, DEFAULT_FEATURES)
    with pytest.raises(wire.RequestError, match="unknown observation key.*'ee_ori', 'ee_pos'; " + re.escape(JOINTS_ERROR)):
        wire.parse_observation(obs)
    with pytest.raises(wire.RequestError, match="unknown observation key.*'joint_states'; " + re.escape(EEF_ERROR)):
        wire.parse_observation({**obs, "joint_states": np.zeros(7, np.float32)}, spec)
    # the dataset: the synthetic suite carries ee_pos / ee_ori, read by the eef spec
    write_synthetic_suite(tmp_path, n_tasks=1, n_demos=1, length=10, size=16)
    demo = read_demo_file(tmp_path / "TASK_0_demo.hdf5", spec=spec)[0]
    assert demo.proprio.shape == (10, 8)
    np.testing.assert_allclose(demo.proprio[:, 0], np.linspace(0, 1, 10), atol=1e-6)  # ee_pos[0] = phase
    assert read_demo_file(tmp_path / "TASK_0_demo.hdf5")[0].proprio.shape == (10, 9)
    ds = LiberoDataset(tmp_path, augment=False, progress=False, spec=spec)
    assert ds[0]["proprio"].shape == (8,) and ds.stats()["proprio_mean"].shape == (8,)


def test_an_eef_policy_trains_and_saves_its_layout(tmp_path, monkeypatch, capsys) -> None:
    """model.proprio=eef: 2 training steps on a synthetic suite; config.json records the eef
    features, the reloaded policy and its server expect the eef layout."""
    from envs import training_cli
    from envs.libero.dataset import write_synthetic_suite
    from policy.model.policy import DiffusionPolicy
    from policy.serving.server import PolicyServer

    suite = tmp_path / "suite"
    write_synthetic_suite(suite, n_tasks=1, n_demos=2, length=12, size=32)
    monkeypatch.chdir(tmp_path)
    rc = training_cli.main(["suite=libero_object", f"suite.data_dirs=[{suite}]", "model.proprio=eef",
                            "model.image_size=32", "model.resnet_widths=[8,16,32,64]", "model.d_model=64",
                            "model.decoder_layers=2", "train.num_workers=0", "train.wandb_mode=disabled",
                            "train.batch_size=4", "train.warmup_steps=1", "loss.population=2", "train.steps=2",
                            "train.log_every=1", f"run_dir={tmp_path / 'run'}"])
    assert rc == 0, capsys.readouterr().err[-2000:]
    saved = json.loads((tmp_path / "run" / "policy" / "config.json").read_text())["policy"]
    assert saved["features"] == EEF_GOLDEN and saved["proprio_dim"] == 8 and "proprio" not in saved
    policy = DiffusionPolicy.from_pretrained(tmp_path / "run")
    assert policy.config.proprio == "eef" and policy.net.proprio_proj[0].in_features == 8
    obs = policy.config.spec.example(2, 32)
    assert policy.predict(obs, steps=1).shape == (2, 8, 7)
    with pytest.raises(KeyError, match=re.escape(EEF_ERROR)):
        policy.predict(DEFAULT_FEATURES.example(2, 32))
    meta = PolicyServer(policy, port=0, warmup=False).metadata
    assert meta["proprio"] == {"layout": "eef", "features": ["ee_pos", "ee_ori", "gripper_states"], "dim": 8}
    assert meta["observation_keys"]["package"] == ["agentview_rgb", "eye_in_hand_rgb", "ee_pos", "ee_ori",
                                                   "gripper_states", "language"]
    assert meta["observation_shapes"]["openpi"] == {"observation/image": [None, None, 3],
                                                    "observation/wrist_image": [None, None, 3],
                                                    "observation/state": [8], "prompt": []}
