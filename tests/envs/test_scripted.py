"""Scripted demonstrations: BDDL goal parsing, official HDF5 layout, replay to success.

The default (sim) tests plan and render ONE demonstration of libero_object task 0 at
32x32 and check it end to end; the slow tests replay every rendered frame and run the
multi-process generator script.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

import envs  # noqa: F401  (headless rendering defaults)  # pyflakes: ignore
from envs.evaluation.outcome import OutcomeTracker, classify
from envs.libero.hdf5_writer import DATA_ATTRS, DEMO_KEYS, OBS_KEYS, check_official_layout, task_file_name
from envs.libero.suites import get_init_states, list_tasks
from envs.libero.bddl import Atom, order_subgoals, parse_goal

REPO = Path(__file__).resolve().parents[2]
SUITES4 = ("libero_spatial", "libero_object", "libero_goal", "libero_10")


# ----------------------------------------------------------------- BDDL goals (no simulator)
@pytest.mark.parametrize("suite", SUITES4)
def test_parse_goal_every_task_of_suite(suite: str) -> None:
    for task in list_tasks(suite):
        atoms = parse_goal(task.bddl_file)
        assert atoms, task.name
        assert all(a.predicate in ("on", "in", "open", "close", "turnon", "turnoff") for a in atoms)
        assert all(len(a.args) == (2 if a.predicate in ("on", "in") else 1) for a in atoms)


def test_goal_conjunction_order_opens_before_in_and_closes_last() -> None:
    task = next(t for t in list_tasks("libero_10") if "bottom_drawer" in t.name)
    atoms = parse_goal(task.bddl_file)
    assert {a.predicate for a in atoms} == {"close", "in"}
    order = order_subgoals(atoms)
    assert [a.predicate for a in order] == ["open", "in", "close"]
    assert order[0] == Atom("open", ("white_cabinet_1_bottom_region",))
    stove = next(t for t in list_tasks("libero_10") if "both_moka" in t.name)
    assert order_subgoals(parse_goal(stove.bddl_file))[0].predicate == "turnon"


def test_parse_goal_rejects_unknown_predicate() -> None:
    text = "(define (problem p) (:goal (And (Stack a b))))"
    with pytest.raises(ValueError, match="unsupported BDDL goal predicate 'Stack'"):
        parse_goal(text)
    with pytest.raises(ValueError, match="no \\(:goal"):
        parse_goal("(define (problem p) (:init (On a b)))")


# ------------------------------------------------------------------ fresh layouts (simulator)
@pytest.mark.sim
def test_repair_layout_puts_the_bowl_on_the_stove() -> None:
    """LIBERO's sampler drops "bowl on the stove" from ~1 m up and beside the stove (it falls
    to the floor); after :func:`envs.scripted.layout.repair_layout` it rests in the cook region."""
    from envs.libero.suites import NOOP_ACTION, NUM_WAIT_STEPS
    from envs.scripted.demos import make_planning_env
    from envs.scripted.layout import repair_layout

    task = next(t for t in list_tasks("libero_spatial") if "on_the_stove" in t.name)
    env = make_planning_env(task)
    try:
        env.seed(7)
        env.reset()
        repair_layout(env.env)
        for _ in range(NUM_WAIT_STEPS + 10):
            env.step(NOOP_ACTION.astype(np.float64))
        inner = env.env
        bowl = inner.sim.data.body_xpos[inner.obj_body_id["akita_black_bowl_1"]]
        region = "flat_stove_1_cook_region"
        assert np.all(np.abs(bowl[:2] - inner.sim.data.get_site_xpos(region)[:2]) < 0.08), bowl
        assert 0.0 < bowl[2] - inner.sim.data.get_site_xpos(region)[2] < 0.05, bowl
        vel = inner.sim.data.get_joint_qvel(inner.objects_dict["akita_black_bowl_1"].joints[-1])
        assert np.abs(vel).max() < 0.05  # at rest
    finally:
        env.close()


# --------------------------------------------------------------- one real demonstration
@pytest.fixture(scope="module")
def demo_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from envs.scripted.demos import assemble_task_file, generate_task_demos

    out = tmp_path_factory.mktemp("demos")
    task = list_tasks("libero_object")[0]
    kept, tries = generate_task_demos(task, out, needed=1, resolution=32, fast_render=True, max_attempts=3)
    assert kept == 1, f"scripted planner failed {tries} attempts on {task.name}"
    assert assemble_task_file(task, out, limit=1, resolution=32, fast_render=True) == 1
    return out / task_file_name(task.name)


@pytest.mark.sim
def test_file_has_official_layout(demo_file: Path) -> None:
    assert demo_file.name == "pick_up_the_alphabet_soup_and_place_it_in_the_basket_demo.hdf5"
    assert check_official_layout(demo_file) == []
    with h5py.File(demo_file, "r") as f:
        data = f["data"]
        for key in DATA_ATTRS:
            assert key in data.attrs
        info = json.loads(data.attrs["problem_info"])
        assert info["language_instruction"] == "pick up the alphabet soup and place it in the basket"
        assert json.loads(data.attrs["env_args"])["env_kwargs"]["camera_heights"] == 32
        assert Path(data.attrs["bddl_file_name"]).is_file()
        g = data["demo_0"]
        t = int(g.attrs["num_samples"])
        assert int(data.attrs["total"]) == t and 60 < t <= 280
        assert set(DEMO_KEYS) <= set(g.keys()) and set(OBS_KEYS) <= set(g["obs"].keys())
        assert g["actions"].shape == (t, 7) and np.abs(g["actions"][()]).max() <= 1.0
        assert g["obs/agentview_rgb"].shape == (t, 32, 32, 3) and g["obs/agentview_rgb"].dtype == np.uint8
        assert g["obs/joint_states"].shape == (t, 7) and g["obs/ee_states"].shape == (t, 6)
        assert g["robot_states"].shape == (t, 9)
        assert g["dones"][-1] == 1 and g["dones"][:-1].sum() == 0 and g["rewards"][-1] == 1
        # the gripper starts open and closes on the object
        assert (g["actions"][:, 6] < 0).any() and (g["actions"][:, 6] > 0).any()
        first = g["states"][0]
    # randomised layout, not one of the 50 held-out evaluation init states
    inits = get_init_states("libero_object", 0)
    assert inits.shape[1] == first.shape[0]
    assert np.abs(inits[:, 1:] - first[None, 1:]).max(axis=1).min() > 1e-3


@pytest.mark.sim
def test_a_rerendered_file_keeps_the_demonstrator_modes(demo_file: Path, tmp_path: Path) -> None:
    """replay_demos.py --resolution: new images, the same demos, and the file still says which
    modes they were made with (it used to drop them, so a study took them for plain demos)."""
    import shutil

    from envs.libero.hdf5_writer import scripted_modes
    from envs.scripted.replay import rerender_file

    src = tmp_path / demo_file.name
    shutil.copy(demo_file, src)
    with h5py.File(src, "r+") as f:
        f["data"].attrs["scripted_detour"], f["data"].attrs["scripted_yaw_modes"] = 0.12, True
    assert rerender_file(src, tmp_path / "out.hdf5", resolution=16, fast_render=True) == 1
    with h5py.File(tmp_path / "out.hdf5", "r") as f, h5py.File(src, "r") as g:
        assert scripted_modes(f["data"].attrs) == (0.12, True)
        assert f["data/demo_0/obs/agentview_rgb"].shape[1:] == (16, 16, 3)
        np.testing.assert_array_equal(f["data/demo_0/actions"][()], g["data/demo_0/actions"][()])


@pytest.mark.sim
def test_demo_replays_to_success_and_images_match(demo_file: Path) -> None:
    from envs.libero.observation import hdf5_obs_fields
    from envs.libero.env import make_env
    from envs.scripted.demos import make_planning_env
    from envs.scripted.replay import replay_actions

    task = list_tasks("libero_object")[0]
    env = make_planning_env(task)  # a fresh simulator, physics only
    env.reset()
    replayed: dict[int, np.ndarray] = {}
    tracker: list[OutcomeTracker] = []  # the evaluation's outcome tracker watches the replay
    held: list[bool] = []
    with h5py.File(demo_file, "r") as f:
        g = f["data/demo_0"]
        t = int(g.attrs["num_samples"])
        actions = np.asarray(g["actions"])
        check = sorted({0, t // 3, (2 * t) // 3, t - 1})

        def on_state(i: int, e) -> None:
            if i in check:
                replayed[i] = e.get_sim_state().copy()
            if i == 0:
                tracker.append(OutcomeTracker(e.env, task.bddl_file))
            else:
                tracker[0].step(actions[i - 1])
            held.append(tracker[0].held())

        success, worst = replay_actions(env, g, on_state=on_state)
        tracker[0].step(actions[-1])
        stored = {k: g["obs"][k][check] for k in ("agentview_rgb", "eye_in_hand_rgb", "joint_states")}
        # again in the same env, now stale (gripper closed and opened, arm elsewhere): the same path
        again, worst_again = replay_actions(env, g)
    env.close()
    assert again and worst_again < 1e-6, f"a second replay in the same env drifts by {worst_again}"
    assert success, "replaying the stored actions from the first state did not reach the goal"
    assert worst < 1e-6, f"replayed states drift from the stored ones by {worst}"
    # one close command, the soup carried well above LIFT_M in the hand on the way, not at the start
    out = tracker[0].summary(success, None)
    assert out["outcome"] == "success" and out["grasps"] == 1 and out["lift_m"] > 0.05, out
    assert not held[0] and any(held)
    assert classify(False, None, out["grasps"], out["lift_m"], True) == "held_at_cap"
    renv = make_env("libero_object", 0, resolution=32, fast_render=True)
    renv.reset(seed=0)
    try:
        for j, i in enumerate(check):
            renv.set_init_state(replayed[i])
            fields = hdf5_obs_fields(renv.raw_obs)
            # observables recorded during env.step are sampled one 2 ms substep before the step ends
            np.testing.assert_allclose(fields["joint_states"], stored["joint_states"][j], atol=2e-3)
            for k in ("agentview_rgb", "eye_in_hand_rgb"):
                # A frame recorded during env.step shows the kinematics MuJoCo computed before the last
                # 2 ms physics substep; re-rendering from the stored state recomputes them, so pixels
                # may differ by a few grey levels. The slow test replays with rendering, compares exactly.
                diff = np.abs(fields[k].astype(int) - stored[k][j].astype(int))
                assert diff.mean() < 3.0, f"{k} at step {i}: mean |diff| {diff.mean():.3f}"
    finally:
        renv.close()


@pytest.mark.sim
def test_generation_is_resumable(demo_file: Path) -> None:
    from envs.scripted.demos import tried_seeds

    task = list_tasks("libero_object")[0]
    kept, next_attempt = tried_seeds(demo_file.parent, task)
    assert len(kept) == 1 and next_attempt >= 1


@pytest.mark.slow
@pytest.mark.sim
def test_full_rendered_action_replay(demo_file: Path) -> None:
    from envs.libero.env import make_env

    env = make_env("libero_object", 0, resolution=32, fast_render=True)
    env.reset(seed=0)
    with h5py.File(demo_file, "r") as f:
        g = f["data/demo_0"]
        images = g["obs/agentview_rgb"][()]
        env.set_init_state(g["states"][0])
        for i, a in enumerate(g["actions"][()]):
            np.testing.assert_array_equal(env.raw_obs["agentview_image"], images[i])
            _, _, done, _, _ = env.step(a)
    env.close()
    assert done


@pytest.mark.slow
@pytest.mark.sim
def test_generate_script_two_workers_then_resume(tmp_path: Path) -> None:
    cmd = [sys.executable, str(REPO / "scripts/generate_demos.py"), "--suite", "libero_object", "--tasks", "1,2",
           "--demos-per-task", "1", "--workers", "2", "--resolution", "32", "--fast-render", "--out", str(tmp_path)]
    assert subprocess.run(cmd, capture_output=True, text=True).returncode == 0
    files = sorted((tmp_path / "libero_object").glob("*_demo.hdf5"))
    assert len(files) == 2 and all(check_official_layout(p) == [] for p in files)
    cmd[cmd.index("--demos-per-task") + 1] = "2"
    assert subprocess.run(cmd, capture_output=True, text=True).returncode == 0
    for p in files:
        with h5py.File(p, "r") as f:
            assert int(f["data"].attrs["num_demos"]) == 2


# --------------------------------------------------------------- route modes (--detour)
def test_fork_steps_sideways_both_ways_and_is_off_by_default() -> None:
    from envs.scripted.primitives import Style, fork

    rng = np.random.default_rng(0)
    here, goal = np.array([0.0, 0.0]), np.array([0.0, 0.5])
    assert fork(here, goal, Style(), rng) is None  # off: no draw from the random stream
    assert rng.random() == np.random.default_rng(0).random()
    vias = np.array([fork(here, goal, Style(detour=0.12), rng) for _ in range(40)])
    np.testing.assert_allclose(np.abs(vias[:, 0]), 0.12)  # perpendicular to the line, 12 cm away
    np.testing.assert_allclose(vias[:, 1], 0.0, atol=1e-12)
    assert 10 < (vias[:, 0] > 0).sum() < 30  # both sides, about half each
    assert fork(here, here, Style(detour=0.12), rng) is None  # no line to step beside


@pytest.mark.sim
def test_route_mode_demos_go_round_either_side_and_succeed() -> None:
    """Planned (physics only) with --detour 0.12: the reach towards the can first steps ~12 cm
    sideways, to the left in some episodes and to the right in others, and every episode succeeds."""
    from envs.libero.suites import get_task
    from envs.scripted.planner import ScriptedPlanner, run_episode
    from envs.scripted.demos import make_planning_env
    from envs.scripted.layout import repair_layout

    task = get_task("libero_object", 0)
    env = make_planning_env(task)
    sides = []
    try:
        for seed in range(4):
            env.seed(seed)
            env.reset()
            repair_layout(env.env)
            planner = ScriptedPlanner(env.env, parse_goal(task.bddl_file), np.random.default_rng(seed), detour=0.12)
            start = planner.view.eef_pos()[:2].copy()
            path: list[np.ndarray] = []
            ok, _ = run_episode(env, planner, 400, on_step=lambda a, r: path.append(planner.view.eef_pos()[:2].copy()))
            assert ok, f"seed {seed}: {planner.failure}"
            reach = np.array(path[:40]) - start  # the reach towards the can, before the grasp
            line = np.array([0.0, -1.0])  # the can lies in front of the start, along -y
            lateral = reach @ np.array([-line[1], line[0]])
            sides.append(np.sign(lateral[np.argmax(np.abs(lateral))]))
            assert np.abs(lateral).max() > 0.08, f"seed {seed}: reach strayed only {np.abs(lateral).max():.3f} m"
    finally:
        env.close()
    assert set(sides) == {-1.0, 1.0}, f"all reaches went round one side: {sides}"


# --------------------------------------------------------------- grasp-yaw modes (--yaw-modes)
def test_yaw_fork_turns_back_either_way_and_is_off_by_default() -> None:
    from envs.scripted.primitives import Style, yaw_fork

    rng = np.random.default_rng(0)
    assert yaw_fork(0.3, Style(), rng) == (0.3, 0.3)  # off: no draw from the random stream
    assert rng.random() == np.random.default_rng(0).random()
    forks = np.array([yaw_fork(0.3, Style(yaw_modes=True), rng) for _ in range(40)])
    np.testing.assert_allclose(forks[:, 0], 0.3 + np.pi / 2)  # travel across the wide side
    turned = forks[:, 1] - forks[:, 0]
    np.testing.assert_allclose(np.abs(turned), np.pi / 2)  # a quarter turn back, one way or the other
    assert 10 < (turned > 0).sum() < 30  # both ways, about half each
    # both grasp yaws close the fingers along the same axis (a parallel gripper turned half a turn)
    np.testing.assert_allclose(np.cos(2 * forks[:, 1]), np.cos(2 * 0.3))


@pytest.mark.sim
def test_yaw_mode_demos_succeed_either_way_and_their_average_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    """Planned (physics only) on the cream cheese (libero_object task 1, 8.1 cm wide): with yaw modes
    every episode succeeds, turning the hand one way in some and the other way in others; forcing
    the average of the two modes (the fingers stay across the wide side) makes the grasp fail."""
    import envs.scripted.pick as pick
    from envs.libero.suites import get_task
    from envs.scripted.demos import make_planning_env, plan_attempt

    task = get_task("libero_object", 1)
    env = make_planning_env(task)
    try:
        turns = []
        for seed in (0, 2):  # seed 0 turns the hand half a turn, seed 2 does not (fixed draws)
            attempt = plan_attempt(env, task, seed, max_steps=300, yaw_modes=True)
            assert attempt.success, f"seed {seed}: {attempt.failure}"
            turns.append(float(attempt.actions[:, 5].sum()))  # net yaw command over the episode
        assert max(turns) > 20.0 and abs(min(turns)) < 5.0, turns
        monkeypatch.setattr(pick, "yaw_fork", lambda yaw, style, rng: (yaw + np.pi / 2, yaw + np.pi / 2))
        attempt = plan_attempt(env, task, 0, max_steps=300, yaw_modes=True)
        assert not attempt.success and "grasp" in (attempt.failure or ""), attempt.failure
    finally:
        env.close()


def test_demos_of_other_modes_are_refused_in_the_same_folder(tmp_path: Path) -> None:
    """generate_demos.py refuses to mix demonstrations made with other route or yaw modes, from
    the task file's attributes or the shards' marker, with one line naming the fix."""
    from envs.libero.suites import get_task
    from envs.scripted.demos import check_detour, partial_dir

    task = get_task("libero_object", 1)
    check_detour(tmp_path, task, 0.0, True)  # nothing there yet
    part = partial_dir(tmp_path, task)
    part.mkdir(parents=True)
    (part / "modes.json").write_text(json.dumps({"detour": 0.0, "yaw_modes": True}))
    check_detour(tmp_path, task, 0.0, True)
    with pytest.raises(ValueError, match="made with --detour 0 --yaw-modes, not --detour 0; use another --out"):
        check_detour(tmp_path, task, 0.0, False)
    (part / "modes.json").unlink()
    (part / "detour.txt").write_text("0.12")  # the marker of an older version: route modes only
    with pytest.raises(ValueError, match="made with --detour 0.12, not --detour 0.12 --yaw-modes"):
        check_detour(tmp_path, task, 0.12, True)
    check_detour(tmp_path, task, 0.12, False)
    (part / "detour.txt").unlink()
    with h5py.File(tmp_path / task_file_name(task.name), "w") as f:
        f.create_group("data").attrs["scripted_yaw_modes"] = True
    with pytest.raises(ValueError, match="made with --detour 0 --yaw-modes"):
        check_detour(tmp_path, task, 0.0, False)


def test_generate_demos_can_also_write_a_lerobot_dataset(tmp_path) -> None:
    """--format lerobot: the HDF5 task file (the resumable record) and a LeRobot dataset made from it."""
    import json

    from envs.libero.lerobot_read import is_lerobot
    from envs.scripted.cli import main

    argv = ["--suite", "libero_object", "--tasks", "0", "--demos-per-task", "1", "--workers", "1", "--resolution", "32",
            "--fast-render", "--out", str(tmp_path), "--format", "lerobot"]
    assert main(argv) == 0
    info = json.loads((tmp_path / "libero_object_lerobot" / "meta" / "info.json").read_text())
    assert info["total_episodes"] == 1 and info["total_frames"] > 50 and info["codebase_version"] == "v3.0"
    assert is_lerobot(tmp_path / "libero_object_lerobot")
    assert main(argv) == 0  # a rerun: nothing to generate, the dataset is kept
