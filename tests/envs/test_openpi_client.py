"""openpi's own client (the PyPI package ``openpi-client``) drives a LIBERO episode through our server.

Each step builds exactly the observation openpi's LIBERO example (examples/libero/main.py)
builds from the raw robosuite observation: both images rotated 180 degrees and resized with
padding to 224x224 uint8 (``image_tools.resize_with_pad`` + ``convert_to_uint8``), the state
= concat(robot0_eef_pos, quat2axisangle(robot0_eef_quat), robot0_gripper_qpos) (8 values),
the prompt = the task's language. An eef-proprio policy serves it; a joints-proprio policy
refuses that state with one error naming the layout it expects.

openpi-client 0.1.2 pins numpy<2 while this environment runs numpy 2 (robosuite's
opencv-python needs it); install it with ``pip install --no-deps openpi-client==0.1.2 dm-tree``
(it works with numpy 2). Skipped when it is not installed.
"""

from __future__ import annotations

import numpy as np
import pytest

openpi_client = pytest.importorskip("openpi_client")

from openpi_client import image_tools  # noqa: E402
from openpi_client.websocket_client_policy import WebsocketClientPolicy  # noqa: E402

from policy.model.config import PolicyConfig  # noqa: E402
from policy.model.policy import DiffusionPolicy  # noqa: E402
from policy.serving.server import PolicyServer  # noqa: E402

TINY = dict(image_size=32, resnet_widths=(8, 16, 32, 64), d_model=64, n_heads=4, encoder_layers=1, decoder_layers=2, dropout=0.0)
RESIZE = 224  # openpi's LIBERO example
NOOP = [0.0] * 6 + [-1.0]
POLICY_STEPS = 16  # two chunks of 8


def _quat2axisangle(quat: np.ndarray) -> np.ndarray:
    """openpi's LIBERO example's copy of robosuite's transform_utils.quat2axisangle."""
    quat = np.array(quat, dtype=np.float64)
    if quat[3] > 1.0:
        quat[3] = 1.0
    elif quat[3] < -1.0:
        quat[3] = -1.0
    den = np.sqrt(1.0 - quat[3] * quat[3])
    if np.isclose(den, 0.0):
        return np.zeros(3)
    return (quat[:3] * 2.0 * np.arccos(quat[3])) / den


def openpi_libero_element(raw: dict, prompt: str) -> dict:
    """The request openpi's examples/libero/main.py builds from robosuite's raw observation."""
    img = np.ascontiguousarray(raw["agentview_image"][::-1, ::-1])
    wrist_img = np.ascontiguousarray(raw["robot0_eye_in_hand_image"][::-1, ::-1])
    img = image_tools.convert_to_uint8(image_tools.resize_with_pad(img, RESIZE, RESIZE))
    wrist_img = image_tools.convert_to_uint8(image_tools.resize_with_pad(wrist_img, RESIZE, RESIZE))
    return {
        "observation/image": img,
        "observation/wrist_image": wrist_img,
        "observation/state": np.concatenate(
            (raw["robot0_eef_pos"], _quat2axisangle(raw["robot0_eef_quat"]), raw["robot0_gripper_qpos"])),
        "prompt": str(prompt),
    }


@pytest.mark.sim
def test_openpi_client_runs_a_libero_episode_against_an_eef_policy() -> None:
    from envs.libero.suites import NUM_WAIT_STEPS, get_init_states
    from envs.libero.env import make_env

    import torch

    torch.manual_seed(0)
    eef = DiffusionPolicy(PolicyConfig(suites=("libero_object",), proprio="eef", **TINY))
    joints = DiffusionPolicy(PolicyConfig(suites=("libero_object",), **TINY), language=eef.language)
    servers = {name: PolicyServer(p, steps=2, host="127.0.0.1", port=0, metadata={"image_size": 32})
               for name, p in (("eef", eef), ("joints", joints))}
    for srv in servers.values():
        srv.start_in_thread()
    env = make_env("libero_object", 0, resolution=64)
    clients: list[WebsocketClientPolicy] = []
    try:
        client = WebsocketClientPolicy("127.0.0.1", servers["eef"].port)
        clients.append(client)
        meta = client.get_server_metadata()
        assert meta["proprio"] == {"layout": "eef", "features": ["ee_pos", "ee_ori", "gripper_states"], "dim": 8}
        assert meta["observation_shapes"]["openpi"]["observation/state"] == [8]

        env.set_init_state(get_init_states("libero_object", 0)[0])
        for _ in range(NUM_WAIT_STEPS):
            env.step(np.asarray(NOOP, np.float32))
        before, sent, t = servers["eef"].stats["requests"], 0, 0
        while t < POLICY_STEPS:
            element = openpi_libero_element(env.raw_obs, env.language)
            assert element["observation/state"].shape == (8,) and element["observation/image"].shape == (RESIZE, RESIZE, 3)
            actions = client.infer(element)["actions"]  # a refused request raises RuntimeError here
            sent += 1
            assert actions.shape == (8, 7) and np.isfinite(actions).all()
            for action in actions:
                if t == POLICY_STEPS:
                    break
                env.step(np.clip(action, -1.0, 1.0))
                t += 1
        assert sent == 2 and servers["eef"].stats["requests"] - before == sent  # every request answered

        # the joints-layout policy refuses the openpi (eef) state with one clear error
        refusing = WebsocketClientPolicy("127.0.0.1", servers["joints"].port)
        clients.append(refusing)
        assert refusing.get_server_metadata()["proprio"]["layout"] == "joints"
        with pytest.raises(RuntimeError) as err:
            refusing.infer(openpi_libero_element(env.raw_obs, env.language))
        assert ("observation/state has 8 values; this policy expects the joints layout: "
                "joint_states (7) + gripper_states (2) = 9") in str(err.value)
        assert servers["joints"].stats["requests"] == 0
    finally:
        for c in clients:
            c._ws.close()  # openpi-client 0.1.2 has no close()
        env.close()
        for srv in servers.values():
            srv.stop()
