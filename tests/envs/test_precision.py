"""The grasp-precision probe's arithmetic (envs/study/precision.py): the approach step, the
commanded translation, error^2 = bias^2 + spread^2, pooling over tasks and seeds, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from envs.study.precision import (approach_step, main, model_name, pool, rms, sums, table, translation)


def test_approach_step_is_one_chunk_before_the_first_close() -> None:
    actions = np.zeros((30, 7))
    actions[:, 6] = -1.0
    actions[20:, 6] = 1.0
    assert approach_step(actions) == 12
    actions[:, 6] = -1.0
    assert approach_step(actions) is None  # never closes
    actions[5:, 6] = 1.0
    assert approach_step(actions) is None  # closes before a whole chunk


def test_error_splits_into_bias_and_spread() -> None:
    """Two draws at +-s around a mean that sits b off the target: spread s, bias b, error sqrt(b^2 + s^2)."""
    chunks = np.zeros((2, 1, 8, 7))
    chunks[0, 0, :, 0] = (0.3 + 0.4) / 8  # the position actions sum to 0.7 along x
    chunks[1, 0, :, 0] = (0.3 - 0.4) / 8  # and to -0.1
    moved = translation(chunks)
    assert moved.shape == (2, 1, 3) and moved[0, 0, 0] == pytest.approx(0.7)
    out = rms(sums(moved, np.zeros((1, 3))), observations=1, samples=2)
    assert out == pytest.approx({"error": 0.5, "bias": 0.3, "spread": 0.4})
    rng = np.random.default_rng(0)
    draws, target = rng.normal(size=(8, 50, 3)), rng.normal(size=(50, 3))
    r = rms(sums(draws, target), 50, 8)
    assert r["error"] ** 2 == pytest.approx(r["bias"] ** 2 + r["spread"] ** 2)


def test_pooling_over_tasks_and_seeds() -> None:
    """Runs of one model (``_seed<k>``) pool with it; a group counts its tasks only; the pooled RMS
    weighs every draw once."""
    assert model_name(Path("runs/mse_seed2")) == "mse" and model_name(Path("energy_lam1_beta1")) == "energy_lam1_beta1"
    rng = np.random.default_rng(1)
    cells, every = [], {}
    for run in ("mse", "mse_seed1"):
        for task in (0, 1):
            draws, target = rng.normal(size=(4, 5, 3)), rng.normal(size=(5, 3))
            every.setdefault(task, []).append((draws, target))
            cells.append({"run": run, "model": model_name(Path(run)), "steps": 2, "task": task, "observations": 5,
                          "samples": 4, "sum_sq": sums(draws, target)})
    both = pool(cells, [0, 1])[("mse", 2, 1.0)]
    alld = np.concatenate([d for pairs in every.values() for d, _ in pairs], axis=1)
    allt = np.concatenate([t for pairs in every.values() for _, t in pairs])
    assert both["runs"] == 2 and both["observations"] == 20
    assert both["error"] == pytest.approx(rms(sums(alld, allt), 20, 4)["error"])
    one = pool(cells, [1])[("mse", 2, 1.0)]
    assert one["observations"] == 10
    md = table({"cells": cells}, {"route": [0], "yaw": [1]})
    assert md.splitlines()[0] == "| model | steps | xi scale | runs | route: error / bias / spread | yaw: error / bias / spread |"
    assert md.splitlines()[2].startswith("| mse | 2 | 1 | 2 | ")


def test_bad_input_is_one_line(tmp_path: Path, capsys) -> None:
    assert main([str(tmp_path / "run"), "--data", str(tmp_path), "--samples", "1"]) == 2
    assert capsys.readouterr().err.strip() == "error: --samples must be >= 2, --steps >= 1 and --xi-scales >= 0"
    assert main([str(tmp_path / "run"), "--data", str(tmp_path), "--tasks", "x"]) == 2
    assert capsys.readouterr().err.strip() == "error: --tasks 'x': expected numbers and ranges such as 0-9 or 1,2,16"
    assert main([str(tmp_path / "run"), "--data", str(tmp_path), "--groups", "yaw"]) == 2
    assert "error: --groups yaw '': expected numbers" in capsys.readouterr().err


def test_an_interrupted_measurement_resumes(tmp_path: Path, monkeypatch) -> None:
    """--out holds the report after every (task, run): a rerun measures only what is missing, and
    a report of other settings is refused in one line."""
    import types

    import envs.evaluation.policies as policies
    import envs.study.precision as precision
    import envs.study.probe_cli as probe

    calls: list[tuple[int, int]] = []
    monkeypatch.setattr(policies, "load_policy", lambda kind, path: types.SimpleNamespace(
        config=types.SimpleNamespace(render_resolution=0), name=Path(path).name))
    monkeypatch.setattr(precision, "task_observations", lambda suite, task, data, res, fast: (
        [{}] * 3, np.full((3, 3), float(task))))

    def draw(policy, obs, steps, samples, xi_scale=1.0):
        if len(calls) == 3 and crash:
            raise KeyboardInterrupt
        calls.append((steps, len(obs)))
        return np.ones((samples, len(obs), 8, 7))

    monkeypatch.setattr(probe, "draw", draw)
    out = tmp_path / "p.json"
    runs = [tmp_path / "mse", tmp_path / "mse_seed1"]
    crash = True
    with pytest.raises(KeyboardInterrupt):
        precision.measure(runs, "libero_object", [0, 1], tmp_path, [1, 2], 4, out=out)
    assert len(json.loads(out.read_text())["cells"]) == 2  # task 0 of the first run, both step counts
    crash, calls[:] = False, []
    report = precision.measure(runs, "libero_object", [0, 1], tmp_path, [1, 2], 4, out=out)
    assert len(calls) == 6 and len(report["cells"]) == 8
    assert {(c["run"], c["task"], c["steps"]) for c in report["cells"]} == {
        (r, t, k) for r in ("mse", "mse_seed1") for t in (0, 1) for k in (1, 2)}
    with pytest.raises(ValueError, match="holds a report of suite=libero_object, samples=4 \\(now libero_object, 8\\)"):
        precision.measure(runs, "libero_object", [0], tmp_path, [1], 8, out=out)
