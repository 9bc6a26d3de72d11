"""The Ray worker pool (envs/evaluation/ray_pool.py) on real Ray clusters that each test starts and
stops itself on the loopback interface (envs/evaluation/ray_local.py: `ray start` processes, a head
and a second node), with the real simulator (libero_goal task 0, camera-less envs, short caps):
the same episodes as the local pool; an actor killed mid-episode; a node lost mid-episode (its
episode run again); the driver killed and the run resumed; and the default path in an environment without Ray."""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable

import numpy as np
import pytest

from envs.evaluation.harness import EvalConfig, run_evaluation
from envs.evaluation.pool import WorkerPool
from envs.evaluation.policies import NoopPolicy
from envs.evaluation.results import EPISODES_FILE, load_episodes
from envs.libero.benchmark import LIBERO

GOAL_SUITE, GOAL_TASK = "libero_goal", 0
DRAWER_JOINT, DRAWER_OPEN = "wooden_cabinet_1_middle_level", -0.15  # as in conftest.py: the goal holds
REPO = Path(__file__).resolve().parents[2]
needs_ray = pytest.mark.skipif(importlib.util.find_spec("ray") is None,
                               reason='ray is not installed (pip install -e ".[cluster]"); the Ray pool is not tested')


def _cfg(out: Path, **kw: Any) -> EvalConfig:
    base = dict(suites=[GOAL_SUITE], tasks={GOAL_SUITE: [GOAL_TASK]}, out_dir=str(out), episodes=2, workers=2,
                max_steps=16, resolution=0, progress=False, policy="test", producer={"kind": "test"})
    base.update(kw)
    return EvalConfig(**base)


def _ray_pool(resolution: int = 0) -> Any:
    from envs.evaluation.ray_pool import RayPool

    return RayPool(LIBERO, resolution, False, log=None)


class _Probe:
    """A closed-loop, deterministic policy: each row steers the hand towards a point of its own
    episode and closes the gripper after 8 steps; records what every (episode, t) observed."""

    uses_episode_info = True

    def __init__(self, on_call: Callable[[int], None] | None = None) -> None:
        self.seen: dict[tuple[int, int], np.ndarray] = {}
        self.calls, self.on_call = 0, on_call

    def reset(self) -> None:
        pass

    def predict(self, obs: dict, steps: int = 2, churn: float = 0.0) -> np.ndarray:
        self.calls += 1
        if self.on_call is not None:
            self.on_call(self.calls)
        out = np.zeros((len(obs["language"]), 8, 7), np.float32)
        for b, info in enumerate(obs["episode_info"]):
            state = np.concatenate([obs["ee_pos"][b], obs["joint_states"][b], obs["gripper_states"][b]])
            self.seen[(info["episode"], info["t"])] = state
            target = np.array([0.05 * info["episode"], 0.1, 1.0])
            out[b, :, :3] = np.clip(4.0 * (target - obs["ee_pos"][b]), -1, 1)
            out[b, :, 6] = 1.0 if info["t"] >= 8 else -1.0
        return out


@pytest.fixture(scope="module")
def goal_state() -> np.ndarray:
    """Official init state 0 with the middle drawer open: the goal holds at the first step."""
    from envs.libero.suites import get_init_states
    from envs.libero.env import make_env

    env = make_env(GOAL_SUITE, GOAL_TASK, resolution=0)
    try:
        state = get_init_states(GOAL_SUITE, GOAL_TASK)[0].copy()
        state[1 + env.sim.model.get_joint_qpos_addr(DRAWER_JOINT)] = DRAWER_OPEN
    finally:
        env.close()
    return state


KEYS = ("success", "length", "outcome", "grasps", "lift_m", "env_steps", "error")


@needs_ray
@pytest.mark.sim
@pytest.mark.timeout(600)
def test_two_nodes_give_the_episodes_of_the_local_pool(tmp_path, ray_cluster, goal_state) -> None:
    """Head + second node, one actor on each (SPREAD): the same episodes (success, length,
    outcome, ...) and the same observations at every policy step as the local process pool."""
    from envs.libero.suites import get_init_states

    def init_state(suite: str, task: int, episode: int) -> np.ndarray:
        return goal_state if episode == 0 else get_init_states(suite, task)[episode]

    local, remote = _Probe(), _Probe()
    run_evaluation(local, _cfg(tmp_path / "local"), init_state)
    ray_cluster((1, 1))
    pool = _ray_pool()
    summary = run_evaluation(remote, _cfg(tmp_path / "ray"), init_state, pool=pool)
    nodes = {pool.where(w).split(" node ")[1].split()[0] for w in range(2)}  # type: ignore[union-attr]
    assert len(nodes) == 2  # one actor on each node

    def records(name: str) -> dict[int, dict]:
        return {r["episode"]: {k: r[k] for k in KEYS} for r in load_episodes(tmp_path / name / EPISODES_FILE)}

    assert records("ray") == records("local")
    assert records("ray")[0]["success"] and records("ray")[0]["length"] == 1
    assert records("ray")[1]["length"] == 16 and not records("ray")[1]["success"]
    assert local.seen.keys() == remote.seen.keys() and len(local.seen) == 3
    assert all(np.array_equal(local.seen[k], remote.seen[k]) for k in local.seen)
    assert summary["new_episodes"] == 2 and summary["suites"][GOAL_SUITE]["successes"] == 1


@needs_ray
@pytest.mark.sim
@pytest.mark.timeout(600)
def test_an_actor_killed_mid_episode_fails_that_episode_only(tmp_path, ray_cluster) -> None:
    """ray.kill of worker 0's actor at the second policy call: its episode is recorded as failed,
    the error naming the actor and ray.kill; a new actor replaces it; the other episodes finish,
    their videos (made on the actors' nodes) written on the driver where the harness asked."""
    import ray

    ray_cluster((1, 1))
    pool = _ray_pool(resolution=64)

    def kill(call: int) -> None:
        if call == 2:
            ray.kill(pool.actor(0))

    run_evaluation(_Probe(kill), _cfg(tmp_path / "run", episodes=3, resolution=64, video=3), pool=pool)
    recs = sorted(load_episodes(tmp_path / "run" / EPISODES_FILE), key=lambda r: r["episode"])
    assert [r["episode"] for r in recs] == [0, 1, 2]
    failed = [r for r in recs if r["error"] is not None]
    assert len(failed) == 1 and failed[0]["worker"] == 0 and failed[0]["outcome"] == "error"
    assert "Ray actor" in failed[0]["error"] and "of worker 0" in failed[0]["error"]
    assert "ray.kill" in failed[0]["error"] and "\n" not in failed[0]["error"]
    assert all(r["length"] == 16 for r in recs if r["error"] is None)
    assert pool.actors_started == 3  # two, and the replacement
    for r in recs:
        video = tmp_path / "run" / "videos" / GOAL_SUITE / f"task00_ep{r['episode']:03d}.mp4"
        assert (r["video"], video.is_file()) == ((None, False) if r["error"] else (str(video), True))
        assert r["error"] or video.read_bytes()[4:8] == b"ftyp"  # an mp4


@needs_ray
@pytest.mark.sim
@pytest.mark.timeout(600)
def test_a_node_lost_mid_episode_runs_its_episode_again(tmp_path, ray_cluster, capsys) -> None:
    """The second node is killed (all its Ray processes) while its actor runs an episode: nothing
    is recorded for that episode; it runs again on a replacement actor on the head, and every
    episode is recorded once, none failed. Ray's health checks take ~3 s to call the node dead,
    longer than a call waits for the cause: the actor is first unreachable, then probed."""
    cluster = ray_cluster((2, 1), system={"health_check_period_ms": 1000, "health_check_failure_threshold": 3,
                                          "health_check_timeout_ms": 1000})
    import ray

    head = next(n["NodeID"][:12] for n in ray.nodes() if "node:__internal_head__" in n["Resources"])
    pool = _ray_pool()
    doomed: list[int] = []

    def lose_node(call: int) -> None:
        if call == 2:
            doomed.extend(w for w in range(2) if head not in (pool.where(w) or head))
            cluster.kill_node(1)

    capsys.readouterr()
    run_evaluation(_Probe(lose_node), _cfg(tmp_path / "run", episodes=3, worker_timeout_s=120), pool=pool)
    assert len(doomed) == 1  # SPREAD put one actor on the second node
    recs = sorted(load_episodes(tmp_path / "run" / EPISODES_FILE), key=lambda r: r["episode"])
    assert [r["episode"] for r in recs] == [0, 1, 2]  # each once
    assert all(r["error"] is None and r["length"] == 16 for r in recs)
    notes = [ln for ln in capsys.readouterr().err.splitlines() if "run again" in ln]
    assert len(notes) == 1 and f"of worker {doomed[0]}" in notes[0] and "node" in notes[0], notes
    episode = int(notes[0].split(" episode ")[1].split(":")[0])
    assert notes[0].endswith("run again (1/2)")
    assert next(r for r in recs if r["episode"] == episode)["worker"] == doomed[0]  # its replacement ran it
    assert pool.actors_started == 3 and head in (pool.where(doomed[0]) or "")  # the replacement runs on the head


class _LosingPool(WorkerPool):
    """No workers: each "start" is answered at once, "node_lost" while ``lose(episode, attempt)``, else
    "done" (a success of 3 steps)."""

    def __init__(self, lose: Callable[[int, int], bool]) -> None:
        self.lose, self.replies, self.starts, self.restarts = lose, {}, [], []

    def start(self, n: int) -> None:
        pass

    def send(self, wid: int, msg: tuple[str, Any]) -> None:
        kind, spec = msg
        if kind == "start":
            self.starts.append(spec.episode)
            if self.lose(spec.episode, self.starts.count(spec.episode)):
                self.replies[wid] = ("node_lost", f"Ray actor of worker {wid} lost with its node")
            else:
                self.replies[wid] = ("done", {"success": True, "length": 3, "env_steps": 13, "error": None,
                                              "video": None, "outcome": "success"})

    def poll(self, wids: Any, timeout: float) -> list:
        return [(w, *self.replies.pop(w)) for w in wids if w in self.replies]

    def restart(self, wid: int) -> None:
        self.restarts.append(wid)
        self.replies.pop(wid, None)

    def close(self) -> None:
        pass


def test_a_node_lost_episode_runs_again_a_bounded_number_of_times(tmp_path, capsys) -> None:
    """The batching loop and "node_lost" without Ray: episode 1 lost twice runs a third time and
    succeeds; episode 2, lost every time, is run 1 + max_reschedules times, then recorded as failed."""
    from envs.evaluation.harness import BatchingLoop
    from envs.evaluation.worker import EpisodeSpec

    cfg = _cfg(tmp_path, episodes=3)
    pool = _LosingPool(lambda episode, attempt: episode == 2 or (episode == 1 and attempt <= 2))
    finished: dict[int, dict] = {}

    def finish(spec: EpisodeSpec, wid: int, result: dict) -> None:
        assert spec.episode not in finished
        finished[spec.episode] = result

    queue = [(GOAL_SUITE, GOAL_TASK, e) for e in range(3)]
    loop = BatchingLoop(None, pool, cfg, queue, lambda k: EpisodeSpec(*k, np.zeros(1), 16, 0, 0, None), finish)
    assert loop.max_reschedules == 2
    capsys.readouterr()
    loop.run()
    assert sorted(finished) == [0, 1, 2] and finished[0]["success"] and finished[1]["success"]
    assert finished[2]["outcome"] == "error" and not finished[2]["success"]
    assert finished[2]["error"].endswith(" lost with its node (its worker was lost with its node 3 times; not run again)")
    assert sorted(pool.starts) == [0, 1, 1, 1, 2, 2, 2] and len(pool.restarts) == 5
    assert loop.rescheduled == {(GOAL_SUITE, GOAL_TASK, 1): 2, (GOAL_SUITE, GOAL_TASK, 2): 3}
    notes = capsys.readouterr().err.splitlines()
    assert len(notes) == 4 and all(": Ray actor of worker " in n and " lost with its node; run again (" in n for n in notes)


_DRIVER = """
import json, sys
from envs.evaluation.harness import EvalConfig, run_evaluation
from envs.evaluation.pool import WorkerPool
from envs.evaluation.policies import NoopPolicy
from envs.evaluation.ray_pool import RayPool
from envs.libero.benchmark import LIBERO
if __name__ == "__main__":
    pool = RayPool(LIBERO, 0, False, sys.argv[2], log=None)
    run_evaluation(NoopPolicy(), EvalConfig(**json.loads(sys.argv[1])), pool=pool)
"""


@needs_ray
@pytest.mark.sim
@pytest.mark.timeout(600)
def test_a_killed_driver_resumes_without_repeating_finished_episodes(tmp_path, ray_cluster, monkeypatch,
                                                                      capsys) -> None:
    """A driver process on the cluster SIGKILLed once an episode is written (its actors die with
    it); rerunning into the same folder on the same cluster, as `eval_rollouts.py --ray <address>`,
    runs only the episodes left."""
    import envs.evaluation.policies as eval_policies
    from envs.evaluation import cli

    cluster = ray_cluster((1, 1))
    out = tmp_path / "run"
    kw = dict(suites=[GOAL_SUITE], tasks={GOAL_SUITE: [GOAL_TASK]}, out_dir=str(out), episodes=3, workers=1,
              max_steps=24, resolution=0, progress=False, policy="noop", producer={"kind": "noop"})
    env = {**os.environ, **cluster.env, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-c", _DRIVER, json.dumps(kw), cluster.address], cwd=REPO, env=env,
                            start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    log = out / EPISODES_FILE
    try:
        deadline = time.time() + 300
        while not (log.is_file() and log.read_text().count("\n") >= 1):
            assert proc.poll() is None, proc.stderr.read().decode()[-2000:]  # type: ignore[union-attr]
            assert time.time() < deadline, "no episode finished in 300 s"
            time.sleep(0.05)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert not (out / "results.json").exists()
    before = log.read_text()
    done = {r["episode"]: r for r in load_episodes(log)}
    assert 1 <= len(done) < 3
    noop = NoopPolicy()
    noop.config = SimpleNamespace(render_resolution=0, suites=[GOAL_SUITE])  # type: ignore[attr-defined]
    monkeypatch.setattr(eval_policies, "load_policy", lambda *a, **k: noop)  # camera-less, as the first driver's
    capsys.readouterr()
    assert cli.main(["--policy", "noop", "--suites", GOAL_SUITE, "--tasks", str(GOAL_TASK), "--episodes", "3",
                     "--workers", "1", "--max-steps", "24", "--out", str(out), "--ray", cluster.address]) == 0
    printed = capsys.readouterr().out
    assert "Ray: 2 nodes, 2 CPUs, 0 GPUs" in printed and "done: 3 episodes over libero_goal" in printed
    recs = load_episodes(log)
    assert sorted(r["episode"] for r in recs) == [0, 1, 2]  # each once
    assert all(r == done[r["episode"]] for r in recs if r["episode"] in done)
    assert log.read_text().startswith(before[: before.rfind("\n") + 1])  # appended to, never rewritten


_NO_RAY = """
import json, sys
from envs.evaluation.harness import EvalConfig, run_evaluation
from envs.evaluation.pool import WorkerPool
from envs.evaluation.policies import NoopPolicy
import envs.evaluation.ray_pool  # the module itself imports without Ray
if __name__ == "__main__":
    s = run_evaluation(NoopPolicy(), EvalConfig(**json.loads(sys.argv[1])))
    print(json.dumps({"episodes": s["overall"]["episodes"], "ray_loaded": "ray" in sys.modules}))
"""


@pytest.mark.sim
@pytest.mark.timeout(600)
def test_the_default_path_needs_no_ray(tmp_path) -> None:
    """An evaluation with the local pool where `import ray` fails (a package named ray that raises,
    first on the path of the driver and its spawned workers)."""
    blocked = tmp_path / "noray" / "ray"
    blocked.mkdir(parents=True)
    (blocked / "__init__.py").write_text("raise ImportError('ray is blocked in this test')\n")
    kw = dict(suites=[GOAL_SUITE], tasks={GOAL_SUITE: [GOAL_TASK]}, out_dir=str(tmp_path / "run"), episodes=1,
              workers=1, max_steps=8, resolution=0, progress=False, policy="noop", producer={"kind": "noop"})
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": f"{blocked.parent}{os.pathsep}{REPO}"}
    res = subprocess.run([sys.executable, "-c", _NO_RAY, json.dumps(kw)], cwd=REPO, env=env, capture_output=True,
                         text=True, timeout=500)
    assert res.returncode == 0, res.stderr[-2000:]
    assert json.loads(res.stdout.strip().splitlines()[-1]) == {"episodes": 1, "ray_loaded": False}


def test_eval_rollouts_ray_errors_are_one_line(tmp_path, monkeypatch, capsys) -> None:
    """--ray without Ray installed names the extra; a bad or unreachable address is one line."""
    from envs.evaluation import cli
    from envs.evaluation.ray_local import free_port

    monkeypatch.chdir(tmp_path)
    argv = ["--policy", "noop", "--suites", GOAL_SUITE, "--tasks", "0", "--episodes", "1", "--ray"]
    with monkeypatch.context() as m:
        m.setitem(sys.modules, "ray", None)  # import ray -> ImportError
        assert cli.main(argv + ["auto"]) == 2
    assert capsys.readouterr().err.splitlines() == ['error: Ray is not installed; install the cluster extra: '
                                                    'pip install -e ".[cluster]"']
    if importlib.util.find_spec("ray") is None:
        return
    port = free_port()
    assert cli.main(argv + [f"127.0.0.1:{port}"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: no Ray cluster reachable at 127.0.0.1:{port} (")
    assert err[0].endswith(f"start one there with `ray start --head --port={port}` or use --ray auto")
    assert cli.main(argv + ["nohost"]) == 2
    assert capsys.readouterr().err.splitlines() == ["error: bad Ray address 'nohost'; expected host:port "
                                                    "(e.g. 10.0.0.1:6379), ray://host:port or auto"]
    assert not (tmp_path / "eval").exists()  # nothing ran
