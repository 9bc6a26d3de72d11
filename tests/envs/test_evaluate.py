"""The rollout harness on the real simulator: success detection, failure at the cap,
resume, a policy that raises, a worker that dies; plus the statistics."""

from __future__ import annotations

import json
import multiprocessing as mp
from pathlib import Path

import numpy as np
import pytest

from envs.eval_policies import NoopPolicy, ReplayPolicy, load_policy
from envs.eval_outcome import LIFT_M, classify
from envs.eval_results import EPISODES_FILE, failure_text, load_episodes, markdown_table, summarize, wilson_interval
from envs.evaluate import EvalConfig, run_evaluation
from envs.libero import get_init_states

GOAL_SUITE, GOAL_TASK = "libero_goal", 0  # as in conftest.py


def test_wilson_interval_and_summary() -> None:
    lo, hi = wilson_interval(0, 50)
    assert abs(lo) < 1e-12 and abs(hi - 0.0714) < 1e-3  # the textbook value for 0/50
    lo, hi = wilson_interval(25, 50)
    assert abs(lo - 0.3664) < 1e-3 and abs(hi - 0.6336) < 1e-3
    recs = [{"suite": "s", "task_index": t, "episode": e, "success": (t + e) % 2 == 0 or t == 2, "length": 10, "error": None}
            for t in range(3) for e in range(4)]
    s = summarize(recs, {("s", 0): "a"})["suites"]["s"]
    assert [t["success_rate"] for t in s["tasks"]] == [0.5, 0.5, 1.0]
    assert s["median_over_tasks"] == 0.5 and abs(s["mean_over_tasks"] - 2 / 3) < 1e-12 and s["episodes"] == 12
    assert s["outcomes"] is None and s["tasks"][0]["outcomes"] is None  # logs from before outcomes


def test_outcome_labels_and_their_counts() -> None:
    assert classify(True, None, 1, 0.2, False) == "success"
    assert classify(False, "policy raised", 3, 0.2, True) == "error"  # an error wins over everything
    assert classify(False, None, 0, 0.0, False) == "no_grasp"
    assert classify(False, None, 2, LIFT_M / 2, False) == "missed_grasp"
    assert classify(False, None, 2, 0.15, False) == "dropped"
    assert classify(False, None, 1, 0.15, True) == "held_at_cap"
    assert classify(False, None, 1, None, False) == "failed"  # the goal moves no object (a drawer)
    outcomes = ["success", "missed_grasp", "missed_grasp", "dropped", "success", "no_grasp"]
    recs = [{"suite": "s", "task_index": i % 2, "episode": i, "success": o == "success", "length": 10, "error": None,
             "outcome": o} for i, o in enumerate(outcomes)]
    s = summarize(recs, {})["suites"]["s"]
    assert s["tasks"][0]["outcomes"] == {"success": 2, "missed_grasp": 1}
    assert s["outcomes"] == {"success": 2, "no_grasp": 1, "missed_grasp": 2, "dropped": 1}  # OUTCOMES order
    assert failure_text(s["outcomes"]) == "missed_grasp 2, no_grasp 1, dropped 1" and failure_text(None) == "-"
    table = markdown_table(summarize(recs, {}))
    assert "| 10 | missed_grasp 1 |" in table and "| 10 | no_grasp 1, missed_grasp 1, dropped 1 |" in table  # ties: OUTCOMES order


def _cfg(out: Path, **kw) -> EvalConfig:
    base = dict(suites=[GOAL_SUITE], tasks={GOAL_SUITE: [GOAL_TASK]}, out_dir=str(out), episodes=2, workers=1,
                max_steps=16, resolution=64, progress=False, policy="test")
    base.update(kw)
    return EvalConfig(**base)


class _Raising:
    """A broken policy: every call raises."""

    def reset(self) -> None:
        pass

    def predict(self, obs, steps: int = 2, churn: float = 0.0) -> np.ndarray:
        raise RuntimeError("policy exploded")


@pytest.mark.sim
def test_success_detection_cap_resume_and_raising_policy(tmp_path, goal_state) -> None:
    """Episode 0 starts in a goal-satisfying state (drawer open through the MuJoCo
    state): the harness must report success at the first policy step. Episode 1 starts
    from official init state 1 and the no-op policy must fail at the cap. Then the run
    is 'interrupted' (episode 1's record lost, a torn line left) and resumed with a
    policy that raises: only episode 1 runs again, it is recorded as a failure with the
    error, and the run finishes."""

    def init_state(suite: str, task: int, episode: int) -> np.ndarray:
        return goal_state if episode == 0 else get_init_states(suite, task)[episode]

    out = tmp_path / "run"
    summary = run_evaluation(NoopPolicy(), _cfg(out, video=1), init_state)
    recs = {r["episode"]: r for r in load_episodes(out / EPISODES_FILE)}
    assert recs[0]["success"] and recs[0]["length"] == 1 and recs[0]["error"] is None
    assert not recs[1]["success"] and recs[1]["length"] == 16 and recs[1]["env_steps"] == 10 + 16
    assert recs[1]["error"] is None
    # the no-op policy never closes the gripper; the drawer goal moves no object
    assert (recs[0]["outcome"], recs[1]["outcome"], recs[1]["grasps"], recs[1]["lift_m"]) == ("success", "no_grasp", 0, None)
    task = summary["suites"][GOAL_SUITE]["tasks"][0]
    assert task["successes"] == 1 and task["episodes"] == 2
    assert (out / "results.md").read_text().count("| libero_goal |") == 2 and (out / "results.png").stat().st_size > 0
    assert Path(recs[0]["video"]).stat().st_size > 0 and recs[1]["video"] is None

    lines = (out / EPISODES_FILE).read_text().splitlines()
    keep = [ln for ln in lines if json.loads(ln)["episode"] == 0]
    (out / EPISODES_FILE).write_text(keep[0] + "\n" + '{"suite": "libero_go')
    summary = run_evaluation(_Raising(), _cfg(out, video=1), init_state)
    assert summary["new_episodes"] == 1
    recs = sorted(load_episodes(out / EPISODES_FILE), key=lambda r: r["episode"])
    assert [r["episode"] for r in recs] == [0, 1] and recs[0] == json.loads(keep[0])
    assert not recs[1]["success"] and "policy raised RuntimeError: policy exploded" in recs[1]["error"]
    assert recs[1]["outcome"] == "error" and "| error 1 |" in (out / "results.md").read_text()
    assert summary["suites"][GOAL_SUITE]["successes"] == 1 and summary["suites"][GOAL_SUITE]["errors"] == 1
    with pytest.raises(ValueError, match="steps=2"):
        run_evaluation(NoopPolicy(), _cfg(out, steps=4), init_state)


class _KillThenNaN(NoopPolicy):
    """First call kills the worker process (as a simulator crash would); later calls
    return NaN actions."""

    calls = 0

    def predict(self, obs, steps: int = 2, churn: float = 0.0) -> np.ndarray:
        self.calls += 1
        if self.calls == 1:
            for child in mp.active_children():
                child.kill()
                child.join()
            return super().predict(obs, steps, churn)
        return np.full((len(obs["language"]), 8, 7), np.nan, np.float32)


@pytest.mark.sim
@pytest.mark.slow
def test_dead_worker_and_nan_actions_are_failures(tmp_path) -> None:
    summary = run_evaluation(_KillThenNaN(), _cfg(tmp_path / "run", max_steps=8))
    recs = sorted(load_episodes(tmp_path / "run" / EPISODES_FILE), key=lambda r: r["episode"])
    assert [r["success"] for r in recs] == [False, False]
    assert "worker process died" in recs[0]["error"]
    assert "non-finite action" in recs[1]["error"] and recs[1]["env_steps"] == 10  # no NaN reached the simulator
    assert summary["suites"][GOAL_SUITE]["errors"] == 2


def test_policy_loading_errors(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError, match="train one with `python scripts/train_policy.py suite=libero_10`"):
        load_policy("checkpoint")
    with pytest.raises(ValueError, match="unknown policy"):
        load_policy("random")
    with pytest.raises(FileNotFoundError, match="replay file"):
        load_policy("replay:missing.hdf5")
    import h5py

    with h5py.File(tmp_path / "d.hdf5", "w") as f:
        f.create_dataset("data/demo_0/actions", data=np.arange(70, dtype=np.float32).reshape(10, 7))
    p = ReplayPolicy(tmp_path / "d.hdf5")
    obs = {"language": ["x"], "episode_info": [{"suite": "s", "task_index": 0, "episode": 0, "t": 8}]}
    chunk = p.predict(obs)
    assert chunk.shape == (1, 8, 7) and chunk[0, 0, 0] == 56 and np.array_equal(chunk[0, 2], [0, 0, 0, 0, 0, 0, -1])


def test_eval_rollouts_cli_errors(tmp_path, monkeypatch, capsys) -> None:
    import importlib.util

    spec = importlib.util.spec_from_file_location("eval_rollouts", Path(__file__).parents[2] / "scripts" / "eval_rollouts.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    monkeypatch.chdir(tmp_path)
    assert mod.main([]) == 2
    assert "runs/latest does not exist" in capsys.readouterr().err
    assert mod.main(["--policy", "noop", "--suites", "libero_11"]) == 2
    assert "unknown LIBERO suite 'libero_11'" in capsys.readouterr().err
    assert mod.main(["--policy", "noop", "--steps", "2,,a"]) == 2
    assert "bad --steps list" in capsys.readouterr().err
    assert mod.main(["--policy", "noop", "--suites", "libero_goal", "--tasks", "10"]) == 2
    assert "task index 10 out of range" in capsys.readouterr().err
