"""The grasp-yaw analysis of recorded rollouts (envs/study/grasps.py) on synthetic chunks."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest

from envs.study import grasps

SUITE = "libero_object"


def _actions(yaw_total: float, close_at: int = 40, regrasps: int = 0, length: int = 64) -> np.ndarray:
    """(length, 7) actions: yaw commands summing to ``yaw_total`` before the close at ``close_at``,
    the gripper open (-1) before and closed (+1) after, reopened and closed ``regrasps`` times."""
    a = np.zeros((length, 7))
    a[:, 6] = -1.0
    a[10:20, 5] = yaw_total / 10
    a[close_at:, 6] = 1.0
    for k in range(regrasps):
        a[close_at + 4 + 6 * k: close_at + 7 + 6 * k, 6] = -1.0
    return a


def _demo_file(path: Path, yaws: list[float]) -> Path:
    with h5py.File(path, "w") as f:
        for i, y in enumerate(yaws):
            f.create_dataset(f"data/demo_{i}/actions", data=_actions(y))
    return path


def _eval_folder(out: Path, task: int, episodes: list[tuple[float, bool, int]]) -> Path:
    from envs.evaluation.harness import chunk_file

    lines = []
    for ep, (yaw, ok, regrasps) in enumerate(episodes):
        lines.append(json.dumps({"suite": SUITE, "task_index": task, "episode": ep, "success": ok}))
        path = chunk_file(out, SUITE, task, ep)
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez(path, t=np.arange(8) * 8, chunks=_actions(yaw, regrasps=regrasps).reshape(8, 8, 7))
    (out / "episodes.jsonl").write_text("\n".join(lines) + "\n")
    return out


def test_modes_and_errors() -> None:
    rng = np.random.default_rng(0)
    yaws = np.concatenate([rng.normal(0.0, 0.5, 25), rng.normal(40.0, 0.5, 25)])
    lo, hi = grasps.demo_modes(yaws)
    assert abs(lo) < 0.3 and abs(hi - 40.0) < 0.3
    assert grasps.yaw_error_deg(20.0, (0.0, 40.0)) == pytest.approx(90.0)  # the average of the two
    assert grasps.yaw_error_deg(38.0, (0.0, 40.0)) == pytest.approx(9.0)
    with pytest.raises(ValueError, match="no two modes"):
        grasps.demo_modes(rng.normal(0.0, 1.0, 50))
    a = _actions(12.0, regrasps=2)
    assert grasps.first_close(a) == 40 and grasps.closes(a) == 3 and grasps.yaw_at_close(a) == pytest.approx(12.0)
    assert grasps.yaw_at_close(np.full((5, 7), -1.0)) is None


def test_command_splits_committed_from_averaged(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    demos = _demo_file(tmp_path / "demo.hdf5", [0.0, 0.2, -0.2, 40.0, 40.2, 39.8])
    folder = _eval_folder(tmp_path / "eval", 1, [(0.5, True, 0), (39.0, False, 2), (20.0, False, 3), (41.0, True, 0)])
    assert grasps.main([str(folder), "--demos", str(demos), "--task", "1", "--out", str(tmp_path / "g.json")]) == 0
    s = json.loads((tmp_path / "g.json").read_text())[str(folder)]
    assert s["committed"] == {"episodes": 3, "successes": 2} and s["averaged"] == {"episodes": 1, "successes": 0}
    assert s["failed"]["mean_closes"] == 3.5 and s["successful"]["mean_closes"] == 1.0
    assert "| 4 | 3 (2) | 1 (0) | 0 |" in capsys.readouterr().out
    assert grasps.main([str(folder), "--demos", str(demos), "--task", "2"]) == 2
    assert "no recorded chunks of task 2" in capsys.readouterr().err
    flat = _demo_file(tmp_path / "flat.hdf5", [0.0, 0.1, -0.1, 0.2])
    assert grasps.main([str(folder), "--demos", str(flat), "--task", "1"]) == 2
    assert capsys.readouterr().err.startswith(f"error: {flat}: the demonstrations' yaw at the grasp has no two modes")
