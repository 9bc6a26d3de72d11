"""The declared feature spec (policy/features.py) and the one Policy protocol (policy/protocol.py)."""

from __future__ import annotations

import json

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
    from envs.libero.env import process_observation, stack_observations
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
