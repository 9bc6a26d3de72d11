"""Object tokens: one observation token per scene object, camera-less policies, through one
code path (features -> data set -> training -> saved policy -> predict -> wire -> server)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from envs.libero.dataset import LiberoDataset, write_synthetic_suite
from policy.features import (DEFAULT_FEATURES, OBJECT_FEATURES, Feature, FeatureSpec, object_text, stack_objects,
                             with_objects)
from policy.model.config import PolicyConfig, TrainConfig
from policy.model.policy import DiffusionPolicy
from policy.scoring import LossConfig
from policy.serving.client import PolicyClient
from policy.serving.server import PolicyServer
from policy.serving.wire import RequestError, parse_observation
from policy.serving.wire import stack_observations as wire_stack
from policy.training.loop import train

TINY = dict(d_model=64, n_heads=4, encoder_layers=1, decoder_layers=2, dropout=0.0, suites=("libero_object",))


def objects_config(**kw) -> PolicyConfig:
    return PolicyConfig(cameras=(), objects=True, proprio="eef", **{**TINY, **kw})


def scene(n: int, seed: int = 0) -> tuple[np.ndarray, list[str]]:
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, 10)).astype(np.float32), [f"object_{chr(97 + i)}_1" for i in range(n)]


def obs_of(cfg: PolicyConfig, scenes: list[tuple[np.ndarray, list[str]]]) -> dict:
    obs = cfg.spec.example(len(scenes), 64)
    obs["object_poses"], obs["object_names"] = stack_objects([s[0] for s in scenes], [s[1] for s in scenes])
    return obs


def test_the_object_features_and_their_spec_rules():
    spec = with_objects(DEFAULT_FEATURES, True)
    assert spec.objects == OBJECT_FEATURES and "object_poses" in spec.observation_keys
    assert with_objects(spec, False) == DEFAULT_FEATURES
    camera_less = spec.with_config((), 8, 7)
    assert camera_less.images == () and camera_less.objects == OBJECT_FEATURES
    assert FeatureSpec.from_list(camera_less.to_list()) == camera_less
    with pytest.raises(ValueError, match="needs an image or an objects feature"):
        DEFAULT_FEATURES.with_config((), 8, 7)
    with pytest.raises(ValueError, match="one objects and one object_names feature"):
        FeatureSpec((*DEFAULT_FEATURES.features[:-1], OBJECT_FEATURES[0], DEFAULT_FEATURES.action))
    with pytest.raises(ValueError, match=r"must be \[null, k\] float"):
        Feature("object_poses", "objects", (7, 10), "float32")
    assert object_text("akita_black_bowl_1") == "akita black bowl" and object_text("basket_12") == "basket"
    poses, names = stack_objects([np.ones((2, 10)), np.ones((3, 10))], [["a_1", "b_1"], ["a_1", "b_1", "c_1"]])
    assert poses.shape == (2, 3, 10) and poses.dtype == np.float32 and not poses[0, 2].any()
    assert names == [["a_1", "b_1", ""], ["a_1", "b_1", "c_1"]]


def test_config_records_object_tokens_and_refuses_a_policy_that_observes_nothing():
    cfg = objects_config()
    assert cfg.objects and cfg.cameras == () and cfg.render_resolution == 0 and cfg.proprio == "eef"
    again = PolicyConfig.from_dict(cfg.to_dict())
    assert "objects" not in cfg.to_dict() and again.objects and again.spec == cfg.spec
    assert PolicyConfig().objects is False and PolicyConfig().render_resolution == 128
    with pytest.raises(ValueError, match=r"cameras is empty.*model=objects"):
        PolicyConfig(cameras=())
    with pytest.raises(ValueError, match="objects=False but the features declare object tokens"):
        PolicyConfig(cameras=(), objects=False, features=cfg.features)


def test_padding_and_object_order_do_not_change_the_actions():
    torch.manual_seed(0)
    policy = DiffusionPolicy(objects_config())
    small, big = scene(2, seed=1), scene(4, seed=2)
    swapped = (small[0][::-1].copy(), small[1][::-1])
    outs = []  # the same batch size and generator: the same noise for row 0
    for batch in ([small, small], [small, big], [swapped, small]):
        outs.append(policy.predict(obs_of(policy.config, batch), generator=torch.Generator().manual_seed(3))[0])
    assert np.abs(outs[0]).max() > 0.01
    np.testing.assert_allclose(outs[1], outs[0], atol=1e-5)  # padded to 4 objects next to a bigger scene
    np.testing.assert_allclose(outs[2], outs[0], atol=1e-5)  # the objects listed in another order


def test_a_mismatched_object_observation_is_one_clear_error():
    policy = DiffusionPolicy(objects_config())
    obs = obs_of(policy.config, [scene(3)])
    with pytest.raises(KeyError, match="lacks \\['object_poses'\\]"):
        policy.predict({k: v for k, v in obs.items() if k != "object_poses"})
    with pytest.raises(ValueError, match="expected \\(B=1, N objects, 10\\)"):
        policy.predict({**obs, "object_poses": obs["object_poses"][..., :7]})
    with pytest.raises(ValueError, match="must hold B=1 lists of N=3 object names"):
        policy.predict({**obs, "object_names": [["a_1", "b_1"]]})
    image_policy = DiffusionPolicy(PolicyConfig(image_size=32, resnet_widths=(8, 16, 32, 64), **TINY))
    with pytest.raises(ValueError, match="object tokens given to a policy built without them"):
        images, proprio, lang, _ = image_policy.observation_tensors(image_policy.config.spec.example(1, 32))
        _, _, _, objects = policy.observation_tensors(obs)
        image_policy.net.encode(images, proprio, lang, objects)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """An object-token policy trained a few steps on the synthetic suite (scenes of 2 and 3 objects)."""
    root = tmp_path_factory.mktemp("objects")
    write_synthetic_suite(root / "suite", n_tasks=2, n_demos=2, length=20)
    cfg = objects_config()
    data = LiberoDataset(root / "suite", spec=cfg.spec, augment=False, progress=False)
    tc = TrainConfig(steps=30, batch_size=8, warmup_steps=2, checkpoint_every=30, log_every=10, num_workers=0,
                     wandb_mode="disabled", lr=1e-3)
    result = train(cfg, tc, LossConfig(), data, root / "run", progress=False)
    return data, result, DiffusionPolicy.from_pretrained(root / "run")


def test_the_data_set_reads_object_poses_and_pads_smaller_scenes(trained):
    data, _, _ = trained
    assert data.object_texts == ["bowl", "cup", "plate"] and data.max_objects == 3
    item = data[0]  # task 0: bowl and plate, padded to 3
    assert item["object_poses"].shape == (3, 10) and item["object_ids"].tolist() == [0, 2, -1]
    assert "agentview_rgb" not in item and item["proprio"].shape == (8,)
    stats = data.stats()
    assert stats["object_mean"].shape == (10,) and np.isfinite(stats["object_std"]).all()


def test_a_trained_object_policy_saves_its_features_and_predicts(trained):
    _, result, policy = trained
    assert np.isfinite(result.last_loss) and policy.config.objects and policy.config.cameras == ()
    assert {"bowl", "plate", "cup"} <= set(policy.language.cache)  # object names embedded once, saved
    assert "object_mean" in policy.net.normalizer.stats()
    actions = policy.predict(obs_of(policy.config, [scene(2), scene(3, seed=1)]))
    assert actions.shape == (2, 8, 7) and np.isfinite(actions).all()


def test_the_wire_format_validates_and_pads_object_tokens():
    spec = objects_config().spec
    poses, names = scene(3)
    one = {"ee_pos": np.zeros(3), "ee_ori": np.zeros(3), "gripper_states": np.zeros(2), "object_poses": poses,
           "object_names": names, "language": "pick up the bowl"}
    parsed = parse_observation(one, spec)
    assert parsed["object_poses"].dtype == np.float32 and parsed["object_names"] == names
    batch = wire_stack([parsed, parse_observation({**one, "object_poses": poses[:1], "object_names": names[:1]}, spec)],
                       spec)
    assert batch["object_poses"].shape == (2, 3, 10) and batch["object_names"][1] == [names[0], "", ""]
    bad = [({"object_poses": poses[:, :9]}, "object_poses has shape \\(3, 9\\)"),
           ({"object_names": names[:2]}, "must be a list of 3 object names"),
           ({"object_names": ["a", "", "c"]}, "non-empty strings"),
           ({"object_poses": np.full((3, 10), np.nan)}, "NaN or inf"),
           ({"object_poses": np.zeros((65, 10))}, "1 <= N <= 64")]
    for change, message in bad:
        with pytest.raises(RequestError, match=message):
            parse_observation({**one, **change}, spec)


def test_the_server_serves_an_object_policy_and_lists_its_keys(trained):
    _, _, policy = trained
    srv = PolicyServer(policy, steps=2, port=0)
    srv.start_in_thread()
    try:
        with PolicyClient("127.0.0.1", srv.port) as client:
            meta = client.get_server_metadata()
            assert meta["observation_shapes"]["package"]["object_poses"] == [None, 10]
            assert "agentview_rgb" not in meta["observation_keys"]["package"]
            poses, names = scene(2)
            reply = client.infer({"ee_pos": np.zeros(3, np.float32), "ee_ori": np.zeros(3, np.float32),
                                  "gripper_states": np.zeros(2, np.float32), "object_poses": poses,
                                  "object_names": names, "language": "pick up the bowl"})
            assert np.asarray(reply["actions"]).shape == (8, 7)
            with pytest.raises(RuntimeError, match="observation lacks \\['object_poses', 'object_names'\\]"):
                client.infer({"ee_pos": np.zeros(3), "ee_ori": np.zeros(3), "gripper_states": np.zeros(2),
                              "language": "pick up the bowl"})
    finally:
        srv.stop()
