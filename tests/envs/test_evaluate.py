"""The rollout harness on the real simulator: success detection, failure at the cap,
resume, a policy that raises, a worker that dies, two workers replaying a demonstration to
success, a killed run resumed, a folder of another checkpoint refused; plus the statistics."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from envs.evaluation.policies import NoopPolicy, ReplayPolicy, load_policy
from envs.evaluation.outcome import LIFT_M, classify
from envs.evaluation.results import (EPISODES_FILE, RUN_CONFIG_FILE, failure_text, load_episodes, markdown_table, summarize,
                               weights_identity, wilson_interval)
from envs.evaluation.harness import EvalConfig, record_run, run_evaluation
from envs.libero.env import get_init_states

GOAL_SUITE, GOAL_TASK = "libero_goal", 0  # as in conftest.py
REPO = Path(__file__).resolve().parents[2]


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


def test_a_task_without_successes_is_plotted(tmp_path) -> None:
    """0/50 (and 0/3, 0/7, ...) put the Wilson lower bound 1e-17 above the rate by rounding:
    matplotlib then refused the error bar and a finished evaluation ended in a ValueError."""
    from envs.evaluation.results import write_results

    for n in range(1, 101):
        assert wilson_interval(0, n)[0] == 0.0 and wilson_interval(n, n)[1] == 1.0
    recs = [{"suite": "s", "task_index": t, "episode": e, "success": t == 1, "length": 5} for t in range(2) for e in range(50)]
    write_results(tmp_path, summarize(recs, {}))
    assert (tmp_path / "results.png").read_bytes()[:4] == b"\x89PNG"


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
    from envs.evaluation import cli as mod

    monkeypatch.chdir(tmp_path)
    assert mod.main([]) == 2
    assert "runs/latest does not exist" in capsys.readouterr().err
    assert mod.main(["--policy", "noop", "--suites", "libero_11"]) == 2
    assert "unknown LIBERO suite 'libero_11'" in capsys.readouterr().err
    assert mod.main(["--policy", "noop", "--steps", "2,,a"]) == 2
    assert "bad --steps list" in capsys.readouterr().err
    assert mod.main(["--policy", "noop", "--suites", "libero_goal", "--tasks", "10"]) == 2
    assert "task index 10 out of range" in capsys.readouterr().err


def _eval_rollouts():
    from envs.evaluation import cli

    return cli


def _fake_checkpoint(path: Path, weights: bytes, step: int | None) -> None:
    """A pretrained-policy dir as save_pretrained writes it, as far as provenance goes."""
    path.mkdir(parents=True, exist_ok=True)
    (path / "model.safetensors").write_bytes(weights)
    (path / "config.json").write_text(json.dumps({"policy": {}, **({"train_step": step} if step is not None else {})}))


def test_weights_identity_is_the_step_and_the_hash_of_the_weights(tmp_path) -> None:
    import hashlib

    _fake_checkpoint(tmp_path / "run" / "policy", b"weights A" * 1000, 300)
    ident = weights_identity(tmp_path / "run")  # a run dir: its policy/
    assert ident == {"kind": "checkpoint", "path": str((tmp_path / "run" / "policy").resolve()), "train_step": 300,
                     "weights_sha256": hashlib.sha256(b"weights A" * 1000).hexdigest()}
    _fake_checkpoint(tmp_path / "old", b"weights A" * 1000, None)  # saved before train_step was recorded
    assert weights_identity(tmp_path / "old")["train_step"] is None
    with pytest.raises(FileNotFoundError, match="no model.safetensors"):
        weights_identity(tmp_path)


def test_a_folder_is_never_resumed_with_other_settings(tmp_path) -> None:
    """No simulator: the record of a folder against a rerun (nothing to run: the episode is done)."""
    out = tmp_path / "run"
    ckpt = {"kind": "checkpoint", "path": "/x", "train_step": 100, "weights_sha256": "a" * 64}
    record_run(_cfg(out, episodes=1, producer=ckpt))
    rec = {"suite": GOAL_SUITE, "task_index": GOAL_TASK, "episode": 0, "success": False, "length": 16, "error": None,
           "steps": 2, "churn": 0.0}
    (out / EPISODES_FILE).write_text(json.dumps(rec) + "\n")
    summary = run_evaluation(NoopPolicy(), _cfg(out, episodes=1, producer={**ckpt, "path": "/moved"}))
    assert summary["new_episodes"] == 0 and summary["config"]["producer"]["train_step"] == 100
    for change, msg in [({"producer": {**ckpt, "train_step": 200, "weights_sha256": "b" * 64}},
                         "the actions of checkpoint step 100, weights sha256 aaaaaaaaaaaa "
                         "(now checkpoint step 200, weights sha256 bbbbbbbbbbbb)"),
                        ({"producer": {**ckpt, "weights_sha256": "b" * 64}}, "weights sha256 bbbbbbbbbbbb"),
                        ({"churn": 0.5}, "churn=0.0 (now 0.5)"),
                        ({"seed": 3}, "seed=0 (now 3)"),
                        ({"wait_steps": 5}, "wait_steps=10 (now 5)")]:
        with pytest.raises(ValueError) as err:
            run_evaluation(NoopPolicy(), _cfg(out, episodes=1, **{"producer": ckpt, **change}))
        line = str(err.value)
        assert msg in line and line.startswith(f"{out} holds episodes made with ")
        assert line.endswith(f"; use a new --out or delete {out}") and "\n" not in line
    # the log itself is checked too: a record rewritten by hand cannot hide other episodes
    (out / EPISODES_FILE).write_text(json.dumps({**rec, "steps": 4}) + "\n")
    with pytest.raises(ValueError, match=f"steps=4 \\(now 2\\) in {EPISODES_FILE}; use a new --out or delete"):
        run_evaluation(NoopPolicy(), _cfg(out, episodes=1, producer=ckpt))
    # a folder whose record says nothing of what made its episodes (older runs) is not resumed
    (out / EPISODES_FILE).write_text(json.dumps(rec) + "\n")
    (out / RUN_CONFIG_FILE).write_text(json.dumps({k: v for k, v in json.loads((out / RUN_CONFIG_FILE).read_text()).items()
                                                   if k != "producer"}))
    with pytest.raises(ValueError, match="the actions of an unrecorded policy"):
        run_evaluation(NoopPolicy(), _cfg(out, episodes=1, producer=ckpt))
    (out / RUN_CONFIG_FILE).unlink()
    with pytest.raises(ValueError, match=f"holds episodes but no {RUN_CONFIG_FILE} saying what made them"):
        run_evaluation(NoopPolicy(), _cfg(out, episodes=1, producer=ckpt))


@pytest.mark.sim
def test_rerun_after_further_training_refuses_the_old_checkpoints_episodes(tmp_path, monkeypatch, capsys) -> None:
    """eval_rollouts.py into a folder whose episodes came from an earlier checkpoint (the run
    was trained further with resume=true) must refuse in one line, not report the old episodes."""
    import envs.evaluation.policies as eval_policies

    fake = NoopPolicy()
    fake.config = SimpleNamespace(image_size=64, suites=[GOAL_SUITE])  # type: ignore[attr-defined]
    monkeypatch.setattr(eval_policies, "load_policy", lambda *a, **k: fake)  # the weights are not read: no torch model
    run = tmp_path / "run"
    _fake_checkpoint(run / "policy", b"weights at step 100", 100)
    out = tmp_path / "eval"
    argv = ["--checkpoint", str(run), "--suites", GOAL_SUITE, "--tasks", "0", "--episodes", "1", "--workers", "1",
            "--max-steps", "2", "--fast-render", "--out", str(out)]
    mod = _eval_rollouts()
    assert mod.main(argv) == 0
    capsys.readouterr()
    assert json.loads((out / RUN_CONFIG_FILE).read_text())["producer"]["train_step"] == 100
    assert mod.main(argv) == 0  # the same weights: resumes (nothing left to run)
    assert "done: 1 episodes" in capsys.readouterr().out
    _fake_checkpoint(run / "policy", b"weights at step 200", 200)  # trained further
    assert mod.main(argv) == 2
    import hashlib

    sha = {k: hashlib.sha256(f"weights at step {k}".encode()).hexdigest()[:12] for k in (100, 200)}
    assert capsys.readouterr().err.splitlines() == [
        f"error: {out} holds episodes made with the actions of checkpoint step 100, weights sha256 {sha[100]} "
        f"(now checkpoint step 200, weights sha256 {sha[200]}); use a new --out or delete {out}"]
    _fake_checkpoint(run / "policy", b"other weights, same step", 100)  # the step alone does not decide
    assert mod.main(argv) == 2 and "use a new --out" in capsys.readouterr().err
    assert len(load_episodes(out / EPISODES_FILE)) == 1


def _replay_demo(tmp_path: Path) -> tuple[np.ndarray, Path, int]:
    """A scripted demonstration of 'open the middle drawer' (the shortest: ~85 steps) planned
    without cameras: its first state and an HDF5 file whose demo 0 holds its actions and demo 1
    none (a replay of demo 1 stands still)."""
    import h5py

    from envs.libero.env import get_task
    from envs.scripted.demos import make_planning_env, plan_attempt

    task = get_task(GOAL_SUITE, GOAL_TASK)
    env = make_planning_env(task)
    try:
        attempt = plan_attempt(env, task, 0, max_steps=200)
    finally:
        env.close()
    assert attempt.success
    path = tmp_path / "demos.hdf5"
    with h5py.File(path, "w") as f:
        f.create_dataset("data/demo_0/actions", data=attempt.actions.astype(np.float32))
        f.create_dataset("data/demo_1/actions", data=np.zeros((0, 7), np.float32))
    return attempt.init_state, path, len(attempt.actions)


@pytest.mark.sim
def test_two_workers_replay_a_demonstration_to_success(tmp_path) -> None:
    """Two workers, both episodes from the same first state: episode 0 replays the scripted
    demonstration (wait_steps=0: the demo was planned from that very state) and must succeed on
    its last action; episode 1 replays nothing and must fail at the cap. Serving a chunk to the
    wrong worker, losing track of an episode's step index or mixing up the episode info turns
    that around or fails both."""
    start, demos, n = _replay_demo(tmp_path)
    out = tmp_path / "run"
    cfg = _cfg(out, workers=2, wait_steps=0, max_steps=n + 8, fast_render=True, policy=f"replay:{demos}")
    summary = run_evaluation(ReplayPolicy(demos), cfg, lambda suite, task, episode: start)
    recs = {r["episode"]: r for r in load_episodes(out / EPISODES_FILE)}
    assert sorted(recs) == [0, 1] and len(load_episodes(out / EPISODES_FILE)) == 2
    assert recs[0]["success"] and recs[0]["length"] == n and recs[0]["env_steps"] == n and recs[0]["error"] is None
    assert not recs[1]["success"] and recs[1]["length"] == n + 8 and recs[1]["error"] is None
    assert {recs[0]["worker"], recs[1]["worker"]} == {0, 1}  # both workers ran an episode
    assert summary["suites"][GOAL_SUITE]["successes"] == 1 and summary["new_episodes"] == 2


_KILLED_RUN = """
import json, sys
from envs.evaluation.policies import NoopPolicy
from envs.evaluation.harness import EvalConfig, run_evaluation
if __name__ == "__main__":
    run_evaluation(NoopPolicy(), EvalConfig(**json.loads(sys.argv[1])))
"""


@pytest.mark.sim
def test_killed_run_resumes_without_redoing_finished_episodes(tmp_path) -> None:
    """A real evaluation process (and its workers) SIGKILLed once an episode is written; the
    rerun finishes the remaining episodes only: no episode twice, the finished ones untouched."""
    out = tmp_path / "run"
    kw = dict(suites=[GOAL_SUITE], tasks={GOAL_SUITE: [GOAL_TASK]}, out_dir=str(out), episodes=3, workers=1,
              max_steps=24, resolution=64, fast_render=True, progress=False, policy="noop", producer={"kind": "noop"})
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-c", _KILLED_RUN, json.dumps(kw)], cwd=REPO, env=env,
                            start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    log = out / EPISODES_FILE
    try:
        deadline = time.time() + 240
        while not (log.is_file() and log.read_text().count("\n") >= 1):
            assert proc.poll() is None, proc.stderr.read().decode()[-2000:]  # type: ignore[union-attr]
            assert time.time() < deadline, "no episode finished in 240 s"
            time.sleep(0.05)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the parent and its workers, mid-episode
        proc.wait()
    assert not (out / "results.json").exists()  # killed before the end
    before = log.read_text()
    done = {r["episode"]: r for r in load_episodes(log)}
    assert 1 <= len(done) < 3
    summary = run_evaluation(NoopPolicy(), EvalConfig(**kw))
    recs = load_episodes(log)
    assert sorted(r["episode"] for r in recs) == [0, 1, 2]  # each once
    assert summary["new_episodes"] == 3 - len(done) and summary["overall"]["episodes"] == 3
    assert all(r == done[r["episode"]] for r in recs if r["episode"] in done)  # finished ones not redone
    assert log.read_text().startswith(before[: before.rfind("\n") + 1])  # appended to, never rewritten
