"""The study's sweep over the energy models' population and noise dimensions, evaluations on a
subset of the tasks sharing the protocol's folders, and one writer per run dir or evaluation folder."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from envs.evaluation.harness import EvalConfig, run_evaluation
from envs.study.config import parse_energy, parse_overrides
from envs.study.report import StudyError
from envs.study.runner import aggregate, plan_eval, plan_training, training_spec, write_spec
from policy.utils import FolderBusyError, folder_lock
from test_study import SUITE, fake_eval, quick

REPO = Path(__file__).resolve().parents[2]


def test_energy_entries_name_their_population_and_noise_dims() -> None:
    """energy=1:0.1:m4,1:0.1:xi2: runs of their own (name suffix), their loss and model overrides;
    the plain pair keeps the spec its run dirs were trained with (no noise_dim key)."""
    assert parse_energy("1:1,1:0.1:m4,1:0.1:xi2,1:0.1:m4:xi2") == [
        (1.0, 1.0), (1.0, 0.1, 4, 0), (1.0, 0.1, 0, 2), (1.0, 0.1, 4, 2)]
    cfg = parse_overrides(["preset=objects_suite", "seeds=2", "energy=1:0.1,1:0.1:m4,1:0.1:xi2", "mse=false"])
    runs = {m.run: m for m in cfg.models()}
    assert list(runs) == ["energy_lam1_beta0.1", "energy_lam1_beta0.1_m4", "energy_lam1_beta0.1_xi2",
                          "energy_lam1_beta0.1_seed1", "energy_lam1_beta0.1_m4_seed1", "energy_lam1_beta0.1_xi2_seed1"]
    assert runs["energy_lam1_beta0.1_m4"].overrides() == [
        "loss=energy", "loss.lam=1", "loss.beta=0.1", "loss.population=4"]
    assert runs["energy_lam1_beta0.1_xi2_seed1"].overrides()[-2:] == ["loss.population=16", "model.noise_dim=2"]
    base = training_spec(cfg, runs["energy_lam1_beta0.1"])["loss"]
    assert base == {"name": "energy_lam1_beta0.1", "loss": "energy", "lam": 1.0, "beta": 0.1, "population": 16}
    assert training_spec(cfg, runs["energy_lam1_beta0.1_xi2"])["loss"]["noise_dim"] == 2


@pytest.mark.parametrize("text, msg", [
    ("1:0.1:m1", "need a population m >= 2 and noise dims xi >= 1"),
    ("1:0.1:xi0", "need a population m >= 2"),
    ("1:0.1:q3", "bad option 'q3'"),
    ("1:0.1:m4:m8", "bad option 'm8'"),
    ("1:0.1:m", "bad option 'm'"),
    ("1:0.1:m4,1:0.1:m4", "lists a model twice"),
])
def test_bad_sweep_entries_are_one_line(text: str, msg: str) -> None:
    with pytest.raises(StudyError, match=msg):
        parse_energy(text)


def test_the_sweeps_noise_dims_reach_the_trained_policy(tmp_path: Path) -> None:
    """The planned training command of an xi entry sets the generator's noise dims (checked on the
    composed training config, which is what the run's policy is built from)."""
    cfg = quick(tmp_path, "energy=1:1:xi2", "mse=false")
    cmd = plan_training(cfg)[0].cmd
    out = subprocess.run([*cmd[:3], "--cfg", "job", *cmd[3:]], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "noise_dim: 2" in out.stdout and "population: 16" in out.stdout


def test_a_task_subset_shares_the_protocols_folders(tmp_path: Path) -> None:
    """eval_tasks alone runs the protocol's own episodes: the same folders (only a noise or starts
    variant gets its own), a cell is done when every evaluated task has its episodes, and the
    variant's table counts its tasks only, while the full table counts them all."""
    assert parse_overrides(["preset=objects_suite", "eval_tasks=1,6,8"]).eval_root == "eval/study"
    assert parse_overrides(["preset=objects_suite", "eval_tasks=1,6,8", "noise=fixed"]).eval_root == "eval/study_noise_fixed"
    full = quick(tmp_path, "tasks=0,1,2", "eval_steps=1", "episodes=2")
    sub = quick(tmp_path, "tasks=0,1,2", "eval_steps=1", "episodes=2", "eval_tasks=1,2",
                f"results={tmp_path}/libero_tasks.json")
    for m in full.models():
        write_spec(full, m, "test machine")
    energy, mse = full.models()
    assert sub.eval_dir(energy, 1) == full.eval_dir(energy, 1)
    # tasks 0 and 1 done: the subset (1, 2) is not finished, the full evaluation neither
    fake_eval(full.eval_dir(energy, 1), SUITE, 1, [[True, True], [True, False]])
    fake_eval(full.eval_dir(mse, 1), SUITE, 1, [[False, False], [False, False], [True, True]])
    trained = {m.run for m in full.models()}
    state = {(cfg.preset, j.name): j.state for cfg in (full, sub) for j in plan_eval(cfg, trained)}
    assert [state[("quick", f"{m.run} steps=1")] for m in (energy, mse)] == ["run", "done"]
    assert [j.state for j in plan_eval(sub, trained)] == ["run", "done"]
    aggregate(full)
    paths = aggregate(sub)
    assert paths is not None
    whole = json.loads(Path(full.results).read_text())[SUITE]
    part = json.loads(paths["json"].read_text())[SUITE]
    assert whole["mse"]["1"] == {"success": pytest.approx(2 / 6), "episodes": 6}
    assert part["mse"]["1"] == {"success": 0.5, "episodes": 4} and part[energy.name]["1"] == {"success": 0.5, "episodes": 2}
    md = paths["md"].read_text()
    assert "| model | steps | task 1 | task 2 |" in md and "| mse | 1 | 0 | 100 |" in md
    assert "evaluated on tasks 1,2" in json.loads(paths["json"].read_text())["notes"]


def _hold(folder: Path) -> subprocess.Popen:
    """A second process that holds ``folder``'s lock until it is killed."""
    code = f"from policy.utils import folder_lock\nimport time\nwith folder_lock({str(folder)!r}):\n print('held', flush=True)\n time.sleep(120)"
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, cwd=REPO)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
    return proc


def test_one_writer_per_folder(tmp_path: Path) -> None:
    """A folder another live process is writing is refused in one line naming it and the holder's
    pid; once that process is gone (even killed) the folder is free again."""
    proc = _hold(tmp_path / "run")
    try:
        with pytest.raises(FolderBusyError, match=rf"run dir {tmp_path}/run is being written by another process "
                                                  rf"\(pid {proc.pid}\); wait for it to finish"):
            with folder_lock(tmp_path / "run", "run dir"):
                pass
    finally:
        proc.kill()
        proc.wait()
    with folder_lock(tmp_path / "run"):
        with pytest.raises(FolderBusyError):  # a second open file in the same process is a second writer too
            with folder_lock(tmp_path / "run"):
                pass


def test_evaluation_and_training_refuse_a_busy_folder(tmp_path: Path, monkeypatch, capsys) -> None:
    """The harness and train_policy.py, each with its folder held by another process: one line,
    nothing written into the folder."""
    out = tmp_path / "eval"
    proc = _hold(out)
    try:
        cfg = EvalConfig(suites=[SUITE], out_dir=str(out), steps=1, episodes=1, workers=1, policy="x")
        with pytest.raises(FolderBusyError, match="evaluation folder .* is being written by another process"):
            run_evaluation(object(), cfg)
        assert sorted(p.name for p in out.iterdir()) == [".lock"]
    finally:
        proc.kill()
        proc.wait()
    from envs import training_cli
    from envs.libero.dataset import write_synthetic_suite

    suite, run = tmp_path / "suite", tmp_path / "run"
    write_synthetic_suite(suite, n_tasks=1, n_demos=2, length=12, size=32)
    monkeypatch.chdir(tmp_path)
    proc = _hold(run)
    try:
        rc = training_cli.main(["suite=libero_object", f"suite.data_dirs=[{suite}]", "train.steps=1", f"run_dir={run}",
                                "train.wandb_mode=disabled", "train.batch_size=4"])
    finally:
        proc.kill()
        proc.wait()
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and err[-1] == (f"error: run dir {run} is being written by another process (pid {proc.pid}); "
                                   "wait for it to finish, stop it, or use another folder")
    assert sorted(p.name for p in run.iterdir()) == [".lock"]


def test_xi_scale_is_an_evaluation_variant(tmp_path: Path) -> None:
    """xi_scale=0: the same runs evaluated with the generator noise scaled, in folders and a table
    of their own; the command passes it on; a bad value is one line."""
    cfg = parse_overrides(["preset=objects_suite", "xi_scale=0", "seeds=1", "eval_steps=1"])
    assert (cfg.variant(), cfg.eval_root, cfg.results) == (
        "xiscale0", "eval/study_xiscale0", "benchmarks/results/libero_objects_suite_xiscale0.json")
    cmd = plan_eval(cfg)[0].cmd
    assert cmd[cmd.index("--xi-scale") + 1] == "0"
    assert "--xi-scale" not in plan_eval(parse_overrides(["preset=objects_suite", "seeds=1"]))[0].cmd
    for bad in ("-1", "low"):
        with pytest.raises(StudyError, match=f"xi_scale must be a number >= 0 \\(1 = as trained\\), got '{bad}'"):
            parse_overrides(["preset=objects_suite", f"xi_scale={bad}"])
