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
import torch
import pytest

from envs.evaluation.policies import NoopPolicy, ReplayPolicy, load_policy
from envs.evaluation.outcome import LIFT_M, classify
from envs.evaluation.results import (EPISODES_FILE, RUN_CONFIG_FILE, failure_text, load_episodes, markdown_table, summarize,
                               weights_identity, wilson_interval)
from envs.evaluation.harness import EvalConfig, record_run, run_evaluation
from envs.libero.suites import get_init_states

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

    from envs.libero.suites import get_task
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


# ----------------------------------------------------------------------------- the seams, without a simulator
class _ToyEnv:
    """A point on a line that must reach ``target`` (both from the init state); action[0] moves it."""

    def __init__(self, resolution: int, language: str) -> None:
        self.resolution, self.language, self.x, self.target = resolution, language, 0.0, 0.0
        self.closed = False

    def _obs(self) -> dict:
        img = np.full((self.resolution, self.resolution, 3), int(10 * self.x) % 256, np.uint8)
        return {"camera": img, "state": np.array([self.x, self.target], np.float64), "language": self.language,
                "extra": "dropped by the batch"}

    def reset(self, *, seed=None):
        self.x = 0.0
        return self._obs(), {}

    def set_init_state(self, state):
        self.x, self.target = float(state[0]), float(state[1])
        return self._obs()

    def step(self, action):
        self.x += float(action[0])
        done = self.x >= self.target - 1e-9
        return self._obs(), float(done), done, False, {}

    def close(self) -> None:
        self.closed = True


class _ToyBenchmark:
    """A Benchmark with two tasks: reach 1.0 (task 0) or 2.0 (task 1); episode 1 starts with an
    unreachable target (fails at the cap)."""

    suites = ("toy",)
    noop_action = np.zeros(3)
    wait_steps = 2
    action_dim = 3

    def __init__(self, name: str = "toy") -> None:
        self.name = name

    def check_suite(self, suite: str) -> str:
        if suite not in self.suites:
            raise ValueError(f"unknown toy suite {suite!r}")
        return suite

    def task_names(self, suite: str) -> list[str]:
        return ["reach_one", "reach_two"]

    def max_steps(self, suite: str) -> int:
        return 12

    def init_state(self, suite: str, task_index: int, episode: int) -> np.ndarray:
        return np.array([0.0, 100.0 if episode == 1 else 1.0 + task_index])

    def make_env(self, suite, task_index, resolution, fast_render):
        return _ToyEnv(resolution, self.task_names(suite)[task_index])

    def observation_spec(self, resolution: int):
        from envs.benchmark import ObsField

        return {"camera": ObsField((resolution, resolution, 3), np.uint8), "state": ObsField((2,), np.float32)}

    def episode_tracker(self, env, suite, task_index):
        return None


class _StepPolicy:
    """Moves 0.25 per action towards the target; records every batch."""

    uses_episode_info = True

    def __init__(self) -> None:
        self.batches: list[dict] = []

    def predict(self, obs, steps: int = 2, churn: float = 0.0) -> np.ndarray:
        self.batches.append(obs)
        out = np.zeros((len(obs["language"]), 8, 3), np.float32)
        out[:, :, 0] = 0.25
        return out


class _InlinePool:
    """A WorkerPool in this process: each worker the real EpisodeRunner (worker.py) of a benchmark,
    replying at once."""

    def __init__(self, benchmark, resolution: int) -> None:
        from envs.evaluation.worker import EpisodeRunner

        self.make = lambda: EpisodeRunner(benchmark, resolution, False)
        self.runners: list = []
        self.pending: dict[int, tuple] = {}
        self.closed = False

    def start(self, n: int) -> None:
        self.runners = [self.make() for _ in range(n)]

    def send(self, wid: int, msg) -> None:
        reply = self.runners[wid].handle(*msg)
        if reply is not None:
            assert wid not in self.pending  # one reply outstanding per worker
            self.pending[wid] = reply

    def poll(self, wids, timeout: float):
        return [(w, *self.pending.pop(w)) for w in wids if w in self.pending]

    def restart(self, wid: int) -> None:
        self.runners[wid].close()
        self.runners[wid] = self.make()

    def close(self) -> None:
        for r in self.runners:
            r.close()
        self.closed = True


def test_a_fake_benchmark_runs_through_the_harness(tmp_path) -> None:
    """run_evaluation with a toy Benchmark on an in-process pool of the real worker logic: planning,
    the record, the batching loop, the worker's wait steps, caps and success, the summary."""
    from envs.evaluation.harness import run_evaluation as run

    toy, policy = _ToyBenchmark(), _StepPolicy()
    out = tmp_path / "toy"
    cfg = EvalConfig(suites=["toy"], out_dir=str(out), episodes=2, workers=2, resolution=4, progress=False,
                     policy="step", benchmark=toy)
    assert cfg.wait_steps == 2  # the benchmark's
    pool = _InlinePool(toy, 4)
    summary = run(policy, cfg, pool=pool)
    assert pool.closed
    recs = {(r["task_index"], r["episode"]): r for r in load_episodes(out / EPISODES_FILE)}
    assert sorted(recs) == [(0, 0), (0, 1), (1, 0), (1, 1)]
    assert recs[0, 0]["success"] and recs[0, 0]["length"] == 4 and recs[0, 0]["env_steps"] == 2 + 4
    assert recs[1, 0]["success"] and recs[1, 0]["length"] == 8 and recs[1, 0]["task"] == "reach_two"
    assert not recs[0, 1]["success"] and recs[0, 1]["length"] == 12 and recs[0, 1]["outcome"] == "failed"
    assert recs[0, 0]["outcome"] == "success" and recs[0, 0]["grasps"] == 0 and recs[0, 0]["lift_m"] is None
    assert summary["overall"]["episodes"] == 4 and summary["overall"]["successes"] == 2 and summary["new_episodes"] == 4
    assert summary["config"]["benchmark"] == "toy" and summary["config"]["wait_steps"] == 2
    record = json.loads((out / RUN_CONFIG_FILE).read_text())
    assert record["benchmark"] == "toy" and list(record)[-1] == "benchmark"
    b = policy.batches[0]  # the batch: spec keys in spec order and dtype, then language; episode info
    assert list(b) == ["camera", "state", "language", "episode_info"] and len(b["language"]) == 2
    assert b["camera"].shape == (2, 4, 4, 3) and b["camera"].dtype == np.uint8 and b["state"].dtype == np.float32
    assert max(len(x["language"]) for x in policy.batches) == 2  # both workers served by one call
    assert run(policy, cfg, pool=_InlinePool(toy, 4))["new_episodes"] == 0  # resumes: nothing left
    with pytest.raises(ValueError, match="benchmark='toy' \\(now 'toy2'\\); use a new --out"):
        run(policy, EvalConfig(**{**{k: getattr(cfg, k) for k in ("suites", "out_dir", "episodes", "resolution",
                                                                     "policy")}, "benchmark": _ToyBenchmark("toy2")}))


class _ReplayPool:
    """A WorkerPool whose workers replay fixed observations: worker w answers every message with
    an observation whose state is [w, n] (n: chunks it received), and ends an episode after
    ``chunks`` chunks. ``lose`` = {(wid, nth act of the run)}: that act reports the worker lost;
    ``hang`` = {(wid, nth start)}: that start is never answered."""

    def __init__(self, chunks: int = 2, lose=(), hang=()) -> None:
        self.chunks, self.lose, self.hang = chunks, set(lose), set(hang)
        self.pending: dict[int, tuple] = {}
        self.received: list[tuple[int, np.ndarray]] = []
        self.restarts: list[int] = []
        self.starts: dict[int, int] = {}
        self.acts: dict[int, int] = {}  # in the current episode
        self.total: dict[int, int] = {}  # in the run

    def _obs(self, wid: int) -> dict:
        return {"camera": np.full((2, 2, 3), wid, np.uint8), "state": np.array([wid, self.acts.get(wid, 0)]),
                "language": f"worker {wid}"}

    def start(self, n: int) -> None:
        self.n = n

    def send(self, wid: int, msg) -> None:
        kind, payload = msg
        if kind == "start":
            self.starts[wid] = self.starts.get(wid, 0) + 1
            self.acts[wid] = 0
            if (wid, self.starts[wid]) not in self.hang:
                self.pending[wid] = ("obs", self._obs(wid))
        elif kind == "act":
            self.received.append((wid, np.array(payload)))
            self.acts[wid] += 1
            self.total[wid] = self.total.get(wid, 0) + 1
            if (wid, self.total[wid]) in self.lose:
                self.pending[wid] = ("lost", f"worker {wid} vanished")
            elif self.acts[wid] >= self.chunks:
                self.pending[wid] = ("done", {"success": True, "length": self.acts[wid], "env_steps": 1})
            else:
                self.pending[wid] = ("obs", self._obs(wid))

    def poll(self, wids, timeout: float):
        events = [(w, *self.pending.pop(w)) for w in wids if w in self.pending]
        if not events:
            time.sleep(0.02)  # as a real pool would wait
        return events

    def restart(self, wid: int) -> None:
        self.restarts.append(wid)
        self.pending.pop(wid, None)

    def close(self) -> None:
        pass


class _EchoPolicy:
    """Chunk row b = the state of observation b (worker id, chunks so far), so a chunk delivered to
    the wrong worker shows; counts the calls and their batch sizes."""

    def __init__(self) -> None:
        self.sizes: list[int] = []

    def predict(self, obs, steps: int = 2, churn: float = 0.0) -> np.ndarray:
        self.sizes.append(len(obs["language"]))
        out = np.zeros((len(obs["language"]), 8, 3), np.float32)
        out[:, :, :2] = obs["state"][:, None, :]
        out[:, :, 2] = np.arange(8)
        return out


def _drive(tmp_path: Path, pool: _ReplayPool, episodes: int, timeout_s: float = 900.0):
    from envs.evaluation.harness import BatchingLoop, episode_spec_fn

    cfg = EvalConfig(suites=["toy"], out_dir=str(tmp_path), episodes=episodes, workers=3, replan_every=3, resolution=2,
                     benchmark=_ToyBenchmark(), worker_timeout_s=timeout_s)
    policy, finished = _EchoPolicy(), []
    queue = [("toy", t, e) for t in range(2) for e in range(episodes)]
    loop = BatchingLoop(policy, pool, cfg, queue, episode_spec_fn(cfg),
                        lambda spec, wid, result: finished.append((spec.task_index, spec.episode, wid, result)))
    loop.run()
    assert sorted((t, e) for t, e, _, _ in finished) == [(t, e) for t in range(2) for e in range(episodes)]  # each once
    assert not queue and all(s.state == "idle" for s in loop.slots) and loop.policy_time > 0
    assert len(pool.received) == sum(policy.sizes)
    for wid, chunk in pool.received:  # each worker its own row, replan_every actions of it
        assert chunk.shape == (3, 3) and np.all(chunk[:, 0] == wid) and list(chunk[:, 2]) == [0, 1, 2]
    return policy, finished


def test_a_fake_worker_pool_drives_the_batching_loop(tmp_path) -> None:
    """The loop on a pool without processes or simulator: one predict for all waiting workers, each
    worker gets its own row cut to replan_every; a lost worker and a hung one are restarted and their
    episodes recorded as errors; every episode is finished once."""
    pool = _ReplayPool(chunks=2)
    policy, finished = _drive(tmp_path, pool, episodes=3)  # 6 episodes of 2 chunks on 3 workers
    assert policy.sizes == [3, 3, 3, 3] and pool.restarts == []
    assert sorted(pool.starts.values()) == [2, 2, 2] and all(r["success"] for _, _, _, r in finished)
    pool = _ReplayPool(chunks=2, lose={(1, 1)}, hang={(2, 1)})
    policy, finished = _drive(tmp_path, pool, episodes=4, timeout_s=0.05)
    errors = {(t, e, w): r["error"] for t, e, w, r in finished if r.get("error")}
    assert errors == {(0, 1, 1): "worker 1 vanished", (0, 2, 2): "worker timed out after 0 s"}
    assert pool.restarts == [1, 2] and all(r["success"] for _, _, _, r in finished if not r.get("error"))
    assert policy.sizes[0] == 2  # worker 2 hung: the two others were served without it


def test_libero_behind_the_seam_is_what_it_was(tmp_path) -> None:
    """LIBERO through envs.benchmark: the same batch as envs.libero.observation.stack_observations, the
    dataset's observation keys, and an eval_config.json without a benchmark entry."""
    from envs.benchmark import Benchmark, image_keys, stack_observations
    from envs.libero.benchmark import LIBERO
    from envs.libero.dataset import CAMERA_KEYS, OBS_SHAPES
    from envs.libero.suites import MAX_STEPS, NOOP_ACTION
    from envs.libero.observation import ENV_FEATURES, stack_observations as libero_stack

    assert isinstance(LIBERO, Benchmark) and LIBERO.max_steps("libero_10") == MAX_STEPS["libero_10"]
    assert LIBERO.noop_action is NOOP_ACTION and LIBERO.wait_steps == 10 and LIBERO.action_dim == 7
    spec = LIBERO.observation_spec(16)
    assert image_keys(spec) == list(CAMERA_KEYS)
    assert {k: spec[k].shape for k in OBS_SHAPES} == {k: (v,) for k, v in OBS_SHAPES.items()}
    rng = np.random.default_rng(0)
    obs = [{"agentview_rgb": rng.integers(0, 255, (16, 16, 3), dtype=np.uint8),
            "eye_in_hand_rgb": rng.integers(0, 255, (16, 16, 3), dtype=np.uint8),
            "joint_states": rng.normal(size=7).astype(np.float32), "gripper_states": rng.normal(size=2).astype(np.float32),
            "ee_pos": rng.normal(size=3).astype(np.float32), "ee_ori": rng.normal(size=3).astype(np.float32),
            "object_poses": rng.normal(size=(n, 10)).astype(np.float32), "object_names": [f"bowl_{j}" for j in range(n)],
            "language": "put the bowl on the plate"} for n in (2, 3, 1)]  # scenes of different sizes
    # every proprio layout, then the object tokens
    assert list(spec) == [*CAMERA_KEYS, "joint_states", "gripper_states", "ee_pos", "ee_ori", "object_poses", "object_names"]
    a, b = stack_observations(obs, spec), libero_stack(obs, ENV_FEATURES)
    assert list(a) == list(b) and a["language"] == b["language"] and a["object_names"] == b["object_names"]
    assert all(a[k].dtype == b[k].dtype and np.array_equal(a[k], b[k]) for k in spec if k != "object_names")
    assert a["object_poses"].shape == (3, 3, 10) and a["object_names"][2] == ["bowl_0", "", ""]
    cfg = _cfg(tmp_path / "run")
    assert cfg.benchmark is LIBERO and cfg.wait_steps == 10
    record_run(cfg)
    assert list(json.loads((tmp_path / "run" / RUN_CONFIG_FILE).read_text())) == [
        "suites", "out_dir", "tasks", "episodes", "workers", "steps", "churn", "replan_every", "resolution",
        "fast_render", "max_steps", "wait_steps", "seed", "video", "policy", "producer", "worker_timeout_s", "progress"]


class _Watching:
    """Wraps a policy and keeps every observation batch it was asked to act on."""

    def __init__(self, inner) -> None:
        self.inner, self.seen = inner, []

    def reset(self) -> None:
        self.inner.reset()

    def predict(self, obs, steps: int = 2, churn: float = 0.0):
        self.seen.append(obs)
        return self.inner.predict(obs, steps=steps, churn=churn)


@pytest.mark.sim
def test_an_eef_policy_evaluates_on_the_end_effector_state(tmp_path) -> None:
    """LiberoEnv observes the state features of every proprio layout, so an eef policy (openpi's
    layout) runs through the harness; before, it failed every episode on missing ee_pos/ee_ori."""
    from policy.model.config import PolicyConfig
    from policy.model.policy import DiffusionPolicy

    tiny = dict(image_size=32, resnet_widths=(8, 16, 32, 64), d_model=64, n_heads=4, encoder_layers=1,
                decoder_layers=2, dropout=0.0)
    torch.manual_seed(0)
    policy = _Watching(DiffusionPolicy(PolicyConfig(suites=(GOAL_SUITE,), proprio="eef", **tiny)))
    out = tmp_path / "run"
    run_evaluation(policy, _cfg(out, episodes=1, max_steps=8, fast_render=True))
    rec = load_episodes(out / EPISODES_FILE)[0]
    assert rec["error"] is None and rec["length"] == 8, rec
    batch = policy.seen[0]
    assert batch["ee_pos"].shape == (1, 3) and batch["ee_ori"].shape == (1, 3) and batch["gripper_states"].shape == (1, 2)
    assert 0.5 < float(batch["ee_pos"][0, 2]) < 1.5  # the hand above the table (world frame, metres)


def _tiny_object_policy():
    """A small untrained object-token policy (no cameras, eef proprio), seeded."""
    from policy.model.config import PolicyConfig
    from policy.model.policy import DiffusionPolicy

    torch.manual_seed(0)
    return DiffusionPolicy(PolicyConfig(suites=(GOAL_SUITE,), cameras=(), objects=True, proprio="eef", d_model=64,
                                        n_heads=4, encoder_layers=1, decoder_layers=2, dropout=0.0))


def test_a_camera_less_object_policy_evaluates_without_rendering(tmp_path) -> None:
    """An object-token policy without cameras: the harness builds camera-less environments
    (resolution 0, robosuite's use_camera_obs=False) and batches the scene's object tokens."""
    inner = _tiny_object_policy()
    cfg = inner.config
    assert cfg.render_resolution == 0
    policy = _Watching(inner)
    out = tmp_path / "run"
    run_evaluation(policy, _cfg(out, episodes=1, max_steps=8, resolution=cfg.render_resolution))
    rec = load_episodes(out / EPISODES_FILE)[0]
    assert rec["error"] is None and rec["length"] == 8, rec
    batch = policy.seen[0]
    assert not any(k.endswith("_rgb") for k in batch)  # nothing rendered
    poses, names = batch["object_poses"], batch["object_names"]
    assert poses.shape[0] == 1 and poses.shape[2] == 10 and len(names[0]) == poses.shape[1] >= 1
    assert names[0] == sorted(names[0]) and all(names[0])
    np.testing.assert_allclose(np.linalg.norm(poses[0, :, 3:7], axis=1), 1.0, atol=1e-4)  # unit quaternions


@pytest.mark.sim
def test_a_camera_less_policy_gets_videos_drawn_apart_from_its_episode(tmp_path) -> None:
    """--video with a camera-less policy: the agentview camera is drawn for the video episodes
    by a renderer of their own; the policy sees the same observations and the episodes end
    the same as without a video."""
    import imageio.v3 as iio

    inner = _tiny_object_policy()
    runs = {}
    for video in (0, 1):
        policy = _Watching(inner)
        out = tmp_path / f"video{video}"
        torch.manual_seed(1)
        run_evaluation(policy, _cfg(out, episodes=1, max_steps=8, resolution=0, video=video))
        runs[video] = (policy.seen, sorted(load_episodes(out / EPISODES_FILE), key=lambda r: r["episode"]))
    (seen0, recs0), (seen1, recs1) = runs[0], runs[1]
    assert len(seen0) == len(seen1) and all(not any(k.endswith("_rgb") for k in b) for b in seen1)
    for a, b in zip(seen0, seen1):
        np.testing.assert_array_equal(a["object_poses"], b["object_poses"])
        np.testing.assert_array_equal(a["ee_pos"], b["ee_pos"])
    keep = ("success", "length", "env_steps", "outcome")
    assert [{k: r[k] for k in keep} for r in recs0] == [{k: r[k] for k in keep} for r in recs1]
    assert recs0[0]["video"] is None
    frames = iio.imread(recs1[0]["video"])
    assert frames.shape == (recs1[0]["env_steps"] + 1, 128, 128, 3) and frames.std() > 10  # a scene, not a blank


class _Seeds:
    """Wraps a policy, records each chunk's actions and its generator's seed by (episode, t)."""

    uses_episode_info = True

    def __init__(self, inner) -> None:
        self.inner, self.chunks, self.seeds = inner, {}, {}

    def reset(self) -> None:
        self.inner.reset()

    def predict(self, obs, steps: int = 2, churn: float = 0.0, generator=None):
        actions = self.inner.predict(obs, steps=steps, churn=churn, generator=generator)
        for b, info in enumerate(obs["episode_info"]):
            key = (info["episode"], info["t"])
            self.chunks[key] = actions[b].copy()
            self.seeds[key] = generator[b].initial_seed() if generator is not None else None
        return actions


def test_per_episode_noise_makes_episodes_independent_of_batching(tmp_path) -> None:
    """noise=episode: each chunk's noise comes from its own generator (seed, suite, task, episode,
    step), so one worker and two workers (other batches) give the same actions; noise=fixed uses
    one seed per episode for every chunk; a policy without generator= is refused up front."""
    inner = _tiny_object_policy()
    runs = {}
    for workers in (1, 2):
        runs[workers] = _Seeds(inner)
        run_evaluation(runs[workers], _cfg(tmp_path / f"w{workers}", episodes=3, workers=workers, max_steps=16,
                                           resolution=0, noise="episode"))
    assert set(runs[1].chunks) == set(runs[2].chunks) and len(runs[1].chunks) == 6
    for key, chunk in runs[1].chunks.items():
        np.testing.assert_array_equal(chunk, runs[2].chunks[key])
    assert len(set(runs[1].seeds.values())) == 6  # a new seed for every chunk
    fixed = _Seeds(inner)
    run_evaluation(fixed, _cfg(tmp_path / "fixed", episodes=2, resolution=0, noise="fixed"))
    assert fixed.seeds[(0, 0)] == fixed.seeds[(0, 8)] != fixed.seeds[(1, 0)] == fixed.seeds[(1, 8)]
    assert json.loads((tmp_path / "fixed" / "eval_config.json").read_text())["noise"] == "fixed"
    with pytest.raises(ValueError, match="noise=fixed on this folder|holds episodes made with noise='fixed'"):
        run_evaluation(fixed, _cfg(tmp_path / "fixed", episodes=2, resolution=0, noise="episode"))
    with pytest.raises(ValueError, match="needs a policy whose predict takes generator="):
        run_evaluation(NoopPolicy(), _cfg(tmp_path / "noop", noise="episode"))


class _Scales(_Seeds):
    """Records the xi_scale each call passes (None: not passed)."""

    def __init__(self, inner) -> None:
        super().__init__(inner)
        self.scales: list[float | None] = []

    def predict(self, obs, steps: int = 2, churn: float = 0.0, generator=None, xi_scale=None):
        self.scales.append(xi_scale)
        kw = {} if xi_scale is None else {"xi_scale": xi_scale}
        return self.inner.predict(obs, steps=steps, churn=churn, generator=generator, **kw)


def test_xi_scale_reaches_the_policy_and_is_recorded(tmp_path) -> None:
    """--xi-scale: every predict gets it (1, as trained, is not passed at all), the folder records it
    and refuses episodes made with another scale; a policy without xi_scale= is refused up front."""
    inner = _tiny_object_policy()
    plain, scaled = _Scales(inner), _Scales(inner)
    run_evaluation(plain, _cfg(tmp_path / "plain", episodes=1, max_steps=16, resolution=0))
    run_evaluation(scaled, _cfg(tmp_path / "scaled", episodes=1, max_steps=16, resolution=0, xi_scale=0.25))
    assert set(plain.scales) == {None} and set(scaled.scales) == {0.25} and len(scaled.scales) == 2
    assert "xi_scale" not in json.loads((tmp_path / "plain" / "eval_config.json").read_text())
    assert json.loads((tmp_path / "scaled" / "eval_config.json").read_text())["xi_scale"] == 0.25
    assert json.loads((tmp_path / "scaled" / "results.json").read_text())["config"]["xi_scale"] == 0.25
    with pytest.raises(ValueError, match=r"holds episodes made with xi_scale=0.25 \(now 1\); use a new --out"):
        run_evaluation(scaled, _cfg(tmp_path / "scaled", episodes=2, resolution=0))
    with pytest.raises(ValueError, match="xi_scale=0.5 needs a policy whose predict takes xi_scale="):
        run_evaluation(NoopPolicy(), _cfg(tmp_path / "noop", xi_scale=0.5))
    with pytest.raises(ValueError, match="xi_scale must be >= 0"):
        run_evaluation(scaled, _cfg(tmp_path / "neg", xi_scale=-1.0))
    with pytest.raises(ValueError, match="xi_scale must be >= 0, got -1"):
        inner.predict({}, xi_scale=-1)


class _Steering:
    """Deterministic chunks that depend on (episode, t): row value 0.01 * (episode + 1) + t / 1000."""

    uses_episode_info = True

    def reset(self) -> None:
        pass

    def predict(self, obs, steps: int = 2, churn: float = 0.0):
        out = np.zeros((len(obs["language"]), 8, 7), np.float32)
        for b, info in enumerate(obs["episode_info"]):
            out[b, :, :6] = 0.01 * (info["episode"] + 1) + info["t"] / 1000
            out[b, :, 6] = -1.0
        return out


def test_record_chunks_saves_each_episodes_chunks_and_changes_nothing(tmp_path) -> None:
    """--record-chunks: chunks/<suite>/task<k>_ep<i>.npz holds the policy step and the full
    predicted chunk of every policy call of that episode; the episodes are those of a run
    without it, and eval_config.json records the option only when it is on."""
    from envs.evaluation.harness import chunk_file

    plain, rec = tmp_path / "plain", tmp_path / "rec"
    run_evaluation(_Steering(), _cfg(plain, episodes=2, workers=2, max_steps=24, resolution=0))
    run_evaluation(_Steering(), _cfg(rec, episodes=2, workers=2, max_steps=24, resolution=0, record_chunks=True))
    def strip(recs):  # the episodes by number, less their timings
        return sorted(({k: v for k, v in r.items() if not k.endswith("_s") and k != "worker"} for r in recs),
                      key=lambda r: r["episode"])

    assert strip(load_episodes(rec / EPISODES_FILE)) == strip(load_episodes(plain / EPISODES_FILE))
    assert not (plain / "chunks").exists()
    assert "record_chunks" not in json.loads((plain / "eval_config.json").read_text())
    assert json.loads((rec / "eval_config.json").read_text())["record_chunks"] is True
    for ep in (0, 1):
        with np.load(chunk_file(rec, GOAL_SUITE, GOAL_TASK, ep), allow_pickle=False) as z:
            t, chunks = z["t"], z["chunks"]
        assert t.tolist() == [0, 8, 16] and chunks.shape == (3, 8, 7) and chunks.dtype == np.float32
        np.testing.assert_allclose(chunks[:, 0, 0], 0.01 * (ep + 1) + t / 1000, rtol=1e-6)
    from envs.study.switching import eval_rows

    rows = eval_rows(rec)  # what the switching analysis reads: steady chunks, no reversal
    assert len(rows) == 2 and all(r["pairs"] == 2 and r["yaw"] == r["planar"] == 0 for r in rows)


def test_fresh_init_states_are_new_layouts_kept_with_the_folder(tmp_path) -> None:
    """--init-states fresh: each episode starts from a fresh layout (not an official init state,
    not another episode's), made reproducibly from its seed and kept in init_states/; the rerun
    resumes on them; a folder of fresh starts refuses official ones; the protocol line says so."""
    from envs.libero.suites import get_init_states
    from envs.scripted.fresh_states import fresh_init_states, fresh_seed

    out = tmp_path / "fresh"
    cfg = _cfg(out, episodes=2, workers=1, max_steps=4, resolution=0, init_states="fresh")
    summary = run_evaluation(NoopPolicy(), cfg)
    assert summary["new_episodes"] == 2 and "fresh layouts instead of the official init states" in summary["protocol"]
    assert all(r["error"] is None for r in load_episodes(out / EPISODES_FILE))
    saved = np.load(out / "init_states" / f"{GOAL_SUITE}_task{GOAL_TASK}_seed0.npy")
    official = get_init_states(GOAL_SUITE, GOAL_TASK)
    assert saved.shape == (2, official.shape[1]) and not np.allclose(saved[0], saved[1])
    assert min(np.abs(saved[:, None] - official[None]).max(axis=2).ravel()) > 1e-3  # none is an official state
    again = fresh_init_states(GOAL_SUITE, GOAL_TASK, 2, 0, tmp_path / "elsewhere")  # made again from the seeds
    np.testing.assert_allclose(again, saved, atol=1e-9)
    assert fresh_seed(1, 0) == 1_000_003 + 500_000 and fresh_seed(0, 3, seed=2) == 520_003
    assert run_evaluation(NoopPolicy(), cfg)["new_episodes"] == 0
    assert json.loads((out / "eval_config.json").read_text())["init_states"] == "fresh"
    with pytest.raises(ValueError, match="started from fresh init states"):
        run_evaluation(NoopPolicy(), _cfg(out, episodes=2, workers=1, max_steps=4, resolution=0))
