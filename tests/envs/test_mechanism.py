"""The study's mechanism report (envs/study/mechanism.py) on synthetic recorded rollouts."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from envs.study.config import parse_overrides
from envs.study.mechanism import aggregate_mechanism
from envs.study.runner import demo_file
from tests.envs.test_grasps import _actions, _demo_file

SUITE = "libero_object"


def _write_eval(folder: Path, episodes: dict[int, list[tuple[float, bool]]], finished: bool) -> None:
    """An evaluation folder with recorded chunks: {task: [(yaw at the grasp, success), ...]}."""
    from envs.evaluation.harness import chunk_file

    lines, n = [], 0
    for task, eps in episodes.items():
        for ep, (yaw, ok) in enumerate(eps):
            lines.append(json.dumps({"suite": SUITE, "task_index": task, "episode": ep, "success": ok}))
            path = chunk_file(folder, SUITE, task, ep)
            path.parent.mkdir(parents=True, exist_ok=True)
            np.savez(path, t=np.arange(8) * 8, chunks=_actions(yaw).reshape(8, 8, 7))
            n += 1
    (folder / "episodes.jsonl").write_text("\n".join(lines) + "\n")
    tasks = [{"task_index": task, "episodes": len(eps)} for task, eps in episodes.items()]
    tasks[-1]["episodes"] -= 0 if finished else 1
    (folder / "results.json").write_text(json.dumps({"config": {"steps": 1}, "suites": {SUITE: {
        "episodes": sum(t["episodes"] for t in tasks), "tasks": tasks}}}))


def test_mechanism_pools_the_finished_seeds(tmp_path: Path) -> None:
    cfg = parse_overrides(["preset=objects_suite", "tasks=1,2", "seeds=2", "eval_steps=1", "episodes=2", "energy=1:1",
                           f"data_root={tmp_path}/data", f"eval_root={tmp_path}/eval", f"runs_root={tmp_path}/runs",
                           f"results={tmp_path}/res/libero.json"])
    assert aggregate_mechanism(cfg) == {}  # nothing evaluated yet
    for task in (1, 2):  # task 1 has grasp-yaw modes (0 and 40 of net yaw), task 2 route modes
        path = demo_file(cfg, task)
        path.parent.mkdir(parents=True, exist_ok=True)
        _demo_file(path, [0.0, 0.2, -0.2, 40.0, 40.2, 39.8])
    committed, averaged = (0.5, True), (20.0, False)
    for m in cfg.models():
        yaw_eps = [committed, averaged] if m.name == "mse" else [committed, committed]
        # the second seed's MSE evaluation is unfinished: left out
        _write_eval(cfg.eval_dir(m, 1), {1: yaw_eps, 2: [committed, committed]}, finished=m.run != "mse_seed1")
    paths = aggregate_mechanism(cfg)
    report = json.loads(paths["mechanism_json"].read_text())
    cells = {c["model"]: c for c in report["grasps"]["cells"]}
    assert cells["energy_lam1_beta1"]["seeds"] == 2 and cells["energy_lam1_beta1"]["episodes"] == 4
    assert cells["energy_lam1_beta1"]["committed"] == {"episodes": 4, "successes": 4}
    assert cells["mse"]["seeds"] == 1 and cells["mse"]["averaged"] == {"episodes": 1, "successes": 0}
    assert set(report["grasps"]["demos"]) == {"1"}  # only the grasp-yaw task
    switching = report["switching"]
    assert switching["route-fork tasks"]["tasks"] == [2] and switching["grasp-yaw tasks"]["tasks"] == [1]
    assert switching["grasp-yaw tasks"]["demos"]["episodes"] == 6
    assert {c["model"]: c["episodes"] for c in switching["route-fork tasks"]["cells"]} == {"energy_lam1_beta1": 4, "mse": 2}
    md = paths["mechanism_md"].read_text()
    assert "| 1 | mse | 1 | 2 | 1 (1) | 1 (0) | 0 | 1 |" in md
    assert "Switching on the route-fork tasks (2)" in md
    assert aggregate_mechanism(parse_overrides(["preset=objects", f"results={tmp_path}/x.json"])) == {}  # no chunks recorded
