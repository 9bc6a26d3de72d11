"""The study runner (envs/study/cli.py behind scripts/run_study.py, envs/study/runner.py): aggregation of real-format
evaluation results, the resume/skip plan, and one-line errors. No training, no rollouts."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import h5py
import pytest

from envs.evaluation.results import summarize, weights_identity, wilson_interval, write_results
from envs.evaluation.harness import EvalConfig, record_run
from envs.study.report import StudyError, collect_results, write_study_results
from envs.study.runner import aggregate, eval_order, plan_demos, plan_eval, plan_training, training_spec
from envs.study.config import parse_energy, parse_overrides

REPO = Path(__file__).resolve().parents[2]
SUITE = "libero_object"


def run_study(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """The study's main() (envs/study/cli.py) in this process (no interpreter start-up): (exit code, stdout, stderr)."""
    from envs.study import cli as module

    capsys.readouterr()
    rc = module.main(argv)
    out, err = capsys.readouterr()
    return rc, out, err


def fake_eval(out: Path, suite: str, steps: int, successes: list[list[bool]], outcomes: bool = True,
              **record: object) -> None:
    """results.json written by the harness's own functions from synthetic episode records
    (successes[task][episode]); a success of task t lasts 100 + 20 t steps, a failure 290;
    with ``outcomes``, task 0 fails by missed_grasp and the others by dropped. The folder's
    eval_config.json is the harness's own record of an EvalConfig with ``steps`` and ``record``
    (churn, resolution, producer, ...; the study's protocol by default)."""
    cfg = EvalConfig(**{"suites": [suite], "out_dir": str(out), "steps": steps, "resolution": 64, "fast_render": True,
                        "policy": "x", **record})  # type: ignore[arg-type]
    record_run(cfg)
    recs = [{"suite": suite, "task_index": t, "episode": e, "success": ok, "length": 100 + 20 * t if ok else 290,
             **({"outcome": "success" if ok else "dropped" if t else "missed_grasp"} if outcomes else {})}
            for t, eps in enumerate(successes) for e, ok in enumerate(eps)]
    summary = summarize(recs, {(suite, t): f"task{t}" for t in range(len(successes))})
    summary.update(protocol="common (wait 10 no-op steps, cap per-suite MAX_STEPS, execute 8/8 actions per chunk)",
                   config={"steps": steps, "churn": cfg.churn, "episodes": len(successes[0]), "workers": 2,
                           "resolution": cfg.resolution, "fast_render": cfg.fast_render, "seed": 0, "policy": "x"})
    write_results(out, summary)


# the quick preset at the sizes these tests fake (its own sizes are the README's measured quickstart)
SMALL = ["demos=5", "train_steps=300", "episodes=4"]


def quick(tmp: Path, *extra: str):
    return parse_overrides(["preset=quick", f"data_root={tmp}/data", f"runs_root={tmp}/runs", f"eval_root={tmp}/eval",
                            f"results={tmp}/libero.json", *SMALL, *extra])


def test_aggregate_writes_json_table_and_plot(tmp_path: Path) -> None:
    cfg = quick(tmp_path, "eval_steps=1,2,16", "tasks=0,1", "episodes=4")
    # energy: 7/8 at 1 step, 8/8 at 2 steps; mse: 1/8 and 3/8
    fake_eval(cfg.eval_dir(cfg.models()[0], 1), SUITE, 1, [[True] * 4, [True, True, True, False]])
    fake_eval(cfg.eval_dir(cfg.models()[0], 2), SUITE, 2, [[True] * 4, [True] * 4])
    fake_eval(cfg.eval_dir(cfg.models()[1], 1), SUITE, 1, [[True, False, False, False], [False] * 4])
    fake_eval(cfg.eval_dir(cfg.models()[1], 2), SUITE, 2, [[True, True, False, False], [True, False, False, False]])
    fake_eval(cfg.eval_dir(cfg.models()[1], 16), SUITE, 16, [[True, True, True, True], [True, True, True, False]],
              outcomes=False)  # an evaluation from before outcomes were recorded
    (tmp_path / "libero.json").write_text(json.dumps({"libero_goal": {"mse": {"2": {"success": 0.5, "episodes": 2}}},
                                                      "protocol": "p", "notes": "libero_goal: older run"}))
    paths = aggregate(cfg)
    assert paths is not None
    data = json.loads(paths["json"].read_text())
    assert data[SUITE] == {"energy_lam1_beta1": {"1": {"success": 0.875, "episodes": 8}, "2": {"success": 1.0, "episodes": 8}},
                           "mse": {"1": {"success": 0.125, "episodes": 8}, "2": {"success": 0.375, "episodes": 8},
                                   "16": {"success": 0.875, "episodes": 8}}}
    assert data["libero_goal"]["mse"]["2"]["episodes"] == 2  # other suites are kept
    assert data["notes"].splitlines()[0] == "libero_goal: older run" and "preset=quick" in data["notes"].splitlines()[1]
    assert "common" in data["protocol"] and "init state i" in data["protocol"]
    md = paths["md"].read_text()
    lo, hi = wilson_interval(7, 8)
    assert f"| energy_lam1_beta1 | 87.5 [{100 * lo:.0f}-{100 * hi:.0f}] n=8 | 100.0" in md
    assert "1 step: best energy model energy_lam1_beta1 minus mse = +75.0 points" in md
    assert "(energy_lam1_beta1) minus mse at 16 steps = +12.5 points" in md
    assert "| mse | 12.5 [" in md and "| energy_lam1_beta1 | 87.5" in md
    # mean length of the successes, pooled over tasks by their successes: (4 * 100 + 3 * 120) / 7 = 108.6
    assert "| energy_lam1_beta1 | 109 | 110 | - |" in md and "| mse | 100 | 107 | 109 |" in md
    assert "| energy_lam1_beta1 | dropped 1 | - | ? |" in md and "| mse | dropped 4, missed_grasp 3 | dropped 3, missed_grasp 2 | ? |" in md
    assert md.count("| - |") == 3 and "success_length" not in paths["json"].read_text() and "outcomes" not in paths["json"].read_text()
    assert "| model | steps | task 0 | task 1 |" in md and "| energy_lam1_beta1 | 1 | 100 | 75 |" in md
    assert "| mse | 2 | 50 | 25 |" in md and '"tasks"' not in paths["json"].read_text()
    assert paths["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and paths["png"].stat().st_size > 5000


def test_several_seeds_train_apart_and_report_mean_and_spread(tmp_path: Path) -> None:
    cfg = quick(tmp_path, "eval_steps=1,2", "tasks=0", "episodes=4", "seeds=3", "seed=5")
    runs = cfg.models()
    assert [m.run for m in runs] == ["energy_lam1_beta1", "mse", "energy_lam1_beta1_seed6", "mse_seed6",
                                     "energy_lam1_beta1_seed7", "mse_seed7"]  # seed-major
    assert [m.seed for m in runs] == [5, 5, 6, 6, 7, 7] and len({cfg.run_dir(m) for m in runs}) == 6
    assert "train.seed=6" in plan_training(cfg)[2].cmd and training_spec(cfg, runs[2])["seed"] == 6
    assert training_spec(cfg, runs[0])["loss"] == {"name": "energy_lam1_beta1", "loss": "energy", "lam": 1.0,
                                                   "beta": 1.0, "population": 16}  # as recorded before seeds
    assert [j.name.split()[-1] for j in plan_eval(cfg)] == ["steps=1"] * 6 + ["steps=2"] * 6  # step-major
    assert "--record-chunks" not in plan_eval(cfg)[0].cmd
    assert "--record-chunks" in plan_eval(quick(tmp_path, "record_chunks=true"))[0].cmd
    assert eval_order([16, 8, 4, 2, 1]) == [1, 2, 16, 4, 8] and eval_order([4, 2]) == [2, 4]
    wins = {1: [4, 2, 3], 2: [4, 4, 3]}  # successes of 4 episodes per energy seed
    for m in runs:
        for k in (1, 2):
            n = wins[k][m.seed - 5] if m.name.startswith("energy") else 1
            fake_eval(cfg.eval_dir(m, k), SUITE, k, [[e < n for e in range(4)]])
    paths = aggregate(cfg)
    assert paths is not None
    data = json.loads(paths["json"].read_text())[SUITE]
    assert data["energy_lam1_beta1"]["1"] == {"success": 0.75, "episodes": 12, "seeds": 3, "seed_spread": 0.5}
    assert data["energy_lam1_beta1"]["2"]["success"] == pytest.approx(11 / 12)
    assert data["mse"]["2"] == {"success": 0.25, "episodes": 12, "seeds": 3, "seed_spread": 0.0}
    md = paths["md"].read_text()
    lo, hi = wilson_interval(9, 12)
    assert f"| energy_lam1_beta1 | 75.0 [{100 * lo:.0f}-{100 * hi:.0f}] n=12 (3 seeds, spread 50) |" in md
    assert "mean over seeds" in md and "seeds 5-7" in json.loads(paths["json"].read_text())["notes"]


def test_per_task_success_pools_the_seeds() -> None:
    """The per-task table sums each task's successes and episodes over the seeds; a study of one
    task has none."""
    from envs.study.report import combine_seeds, markdown_table

    runs = {"energy": {"1": {"success": 0.5, "episodes": 4, "tasks": {"0": [1, 2], "1": [1, 2]}}},
            "energy_seed1": {"1": {"success": 0.5, "episodes": 4, "tasks": {"0": [2, 2], "1": [0, 2]}}},
            "mse": {"1": {"success": 0.25, "episodes": 4, "tasks": {"0": [1, 2], "1": [0, 2]}}}}
    table = combine_seeds(runs, {"energy": "energy", "energy_seed1": "energy", "mse": "mse"})
    assert table["energy"]["1"]["tasks"] == {"0": [3, 4], "1": [1, 4]}
    md = markdown_table(SUITE, table)
    assert "| energy | 1 | 75 | 25 |" in md and "| mse | 1 | 50 | 0 |" in md
    one = {"mse": {"1": {"success": 0.5, "episodes": 2, "tasks": {"0": [1, 2]}}}}
    assert "per task" not in markdown_table(SUITE, one)
    grouped = markdown_table(SUITE, table, {"route-fork tasks": [0], "grasp-yaw tasks": [1]})
    lo, hi = wilson_interval(3, 4)
    assert "| model | steps | route-fork tasks | grasp-yaw tasks |" in grouped
    assert f"| energy | 1 | 75.0 [{100 * lo:.0f}-{100 * hi:.0f}] n=4 | 25.0 [" in grouped and "| mse | 1 | 50.0 [" in grouped


def test_task_groups_split_route_from_yaw_tasks(tmp_path: Path) -> None:
    from envs.study.runner import task_groups

    assert task_groups(quick(tmp_path, "tasks=0,1,2", "detour=0.12", "yaw_tasks=1")) == {
        "route-fork tasks": [0, 2], "grasp-yaw tasks": [1]}
    assert task_groups(quick(tmp_path, "tasks=0,1,2")) == {}  # plain demos: one kind
    assert task_groups(quick(tmp_path, "tasks=1", "detour=0.12", "yaw_tasks=1")) == {}


def test_aggregate_refuses_to_merge_or_relabel_other_evaluations(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Each cell of the table must be what its folder says: the step count of its name, the
    study's churn and protocol, one resolution, one checkpoint per model. Otherwise one line
    naming the folder, what differs and the fix; nothing is written."""
    cfg = quick(tmp_path, "eval_steps=2,4")
    energy, mse = cfg.models()
    for m in (energy, mse):
        fake_run(cfg.run_dir(m), 300)
    ident = {m.name: weights_identity(cfg.run_dir(m)) for m in (energy, mse)}

    def fill(**odd: object) -> Path:
        """Every cell evaluated alike, then energy's steps_4 cell redone with ``odd``; returns that folder."""
        for m in (energy, mse):
            for k in (2, 4):
                folder = cfg.eval_dir(m, k)
                for f in folder.glob("*"):
                    f.unlink()
                fake_eval(folder, SUITE, k, [[True, False] * 2], producer=ident[m.name])
        folder = cfg.eval_dir(energy, 4)
        for f in folder.glob("*"):
            f.unlink()
        fake_eval(folder, SUITE, int(odd.pop("steps", 4)), [[True] * 4], **{"producer": ident[energy.name], **odd})
        return folder

    fill()
    assert aggregate(cfg) is not None  # all alike: fine
    (tmp_path / "libero.json").unlink()
    odd_producer = {**ident[energy.name], "train_step": 200, "weights_sha256": "f" * 64}
    for odd, msg in [
        ({"steps": 2}, "{f} holds results of steps=2, not 4; move them to {p}/steps_2 or delete {f}"),
        ({"churn": 0.5}, "{f} was evaluated with churn=0.5 but the study evaluates with churn=0.0; delete {f} and rerun the study"),
        ({"fast_render": False}, "{f} was evaluated with fast_render=False but the study evaluates with fast_render=True; "
                                 "delete {f} and rerun the study"),
        ({"max_steps": 40}, "{f} was evaluated with max_steps=40 but the study evaluates with max_steps=None; "
                            "delete {f} and rerun the study"),
        ({"wait_steps": 5}, "{f} was evaluated with wait_steps=5 but the study evaluates with wait_steps=10; "
                            "delete {f} and rerun the study"),
        ({"resolution": 128}, "{f} was evaluated with resolution=128 but {first} with resolution=64; one table needs one "
                              "protocol: delete the odd folder and rerun the study"),
        ({"producer": odd_producer}, "{f} holds rollouts of checkpoint step 200, weights sha256 ffffffffffff but {first} of "
                                     "checkpoint step 300, weights sha256 {sha}; the step counts of energy_lam1_beta1 must "
                                     "come from one checkpoint: delete the stale folder and rerun the study"),
    ]:
        folder = fill(**odd)
        with pytest.raises(StudyError) as err:
            aggregate(cfg)
        assert str(err.value) == msg.format(f=folder, p=folder.parent, first=cfg.eval_dir(energy, 2),
                                            sha=ident[energy.name]["weights_sha256"][:12]), odd
        assert not (tmp_path / "libero.json").exists()
    # a folder with results but no record of how they were made
    folder = fill()
    (folder / "eval_config.json").unlink()
    with pytest.raises(StudyError, match=f"{folder} has results but no eval_config.json saying how they were made; "
                                         f"delete {folder} and rerun the study"):
        aggregate(cfg)
    # the CLI on a finished study (nothing to run): one line, exit 2
    from envs.libero.suites import list_tasks
    from envs.scripted.demos import task_file_name

    write_demo_file(tmp_path / "data" / SUITE / task_file_name(list_tasks(SUITE)[0].name), 5, 64, True)
    folder = fill(churn=0.5)
    rc, out, err = run_study(["preset=quick", f"data_root={tmp_path}/data", f"runs_root={tmp_path}/runs",
                              f"eval_root={tmp_path}/eval", f"results={tmp_path}/libero.json", "eval_steps=2,4", *SMALL],
                             capsys)
    assert rc == 2 and "$ " not in out
    assert err.splitlines() == [f"error: {folder} was evaluated with churn=0.5 but the study evaluates with churn=0.0; "
                                f"delete {folder} and rerun the study"]


def test_collect_ignores_other_suites_and_checks_names(tmp_path: Path) -> None:
    fake_eval(tmp_path / "a" / "steps_4", "libero_goal", 4, [[True, False]])
    assert collect_results(SUITE, {"mse": tmp_path / "a"}) == ({}, "")
    with pytest.raises(StudyError, match="must start with 'energy' or 'mse'"):
        collect_results(SUITE, {"diffusion": tmp_path / "a"})
    table, _ = collect_results("libero_goal", {"mse": tmp_path / "a"})
    assert table == {"mse": {"4": {"success": 0.5, "episodes": 2, "success_length": 100.0,
                                   "outcomes": {"success": 1, "missed_grasp": 1}, "tasks": {"0": [1, 2]}}}}
    table["energy_lam1_beta1"] = {"4": {"success": 0.0, "episodes": 50}}  # Wilson lo rounds above 0 here
    paths = write_study_results("libero_goal", table, tmp_path / "out" / "r.json", "", "n")
    assert paths["md"].name == "r_libero_goal.md" and paths["png"].is_file()
    assert "| energy_lam1_beta1 | 0.0 [0-7] n=50 |" in paths["md"].read_text()


def write_demo_file(path: Path, n: int, resolution: int, fast: bool, detour: float | None = None,
                    yaw_modes: bool | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as f:
        data = f.create_group("data")
        data.attrs["env_args"] = json.dumps({"env_kwargs": {"camera_heights": resolution, "fast_render": fast}})
        if detour is not None:
            data.attrs["scripted_detour"] = detour
        if yaw_modes is not None:
            data.attrs["scripted_yaw_modes"] = yaw_modes
        for i in range(n):
            data.create_group(f"demo_{i}")


def fake_run(run: Path, step: int) -> None:
    """A run dir trained to ``step``: its checkpoint and its policy/ (weights differ per step)."""
    ck = run / "checkpoints" / f"step_{step:08d}"
    ck.mkdir(parents=True)
    (ck / "trainer_state.json").write_text(json.dumps({"step": step}))
    (run / "policy").mkdir(exist_ok=True)
    (run / "policy" / "config.json").write_text(json.dumps({"train_step": step}))
    (run / "policy" / "model.safetensors").write_bytes(f"weights of step {step}".encode())


def test_plan_skips_finished_stages_and_resumes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from envs.libero.suites import list_tasks
    from envs.scripted.demos import task_file_name

    cfg = quick(tmp_path)
    assert cfg.threads == 1 and parse_overrides(["preset=paper"]).threads == 0  # OMP_NUM_THREADS of the children
    demo_file = tmp_path / "data" / SUITE / task_file_name(list_tasks(SUITE)[0].name)
    assert plan_demos(cfg)[0].state == "run"
    write_demo_file(demo_file, 3, 64, True)
    assert plan_demos(cfg)[0].state == "run" and "3/5 demos" in plan_demos(cfg)[0].detail
    write_demo_file(demo_file, 5, 64, True)
    assert plan_demos(cfg)[0].state == "done"

    energy, mse = cfg.models()
    fake_run(cfg.run_dir(energy), 300)  # finished
    fake_run(cfg.run_dir(mse), 100)  # interrupted after its first checkpoint
    jobs = {j.name: j for j in plan_training(cfg)}
    assert jobs[energy.name].state == "done"
    assert jobs["mse"].state == "resume" and "resume=true" in jobs["mse"].cmd and f"run_dir={cfg.run_dir(mse)}" in jobs["mse"].cmd
    ev = {j.name: j for j in plan_eval(cfg)}
    assert ev[f"{energy.name} steps=2"].state == "run" and ev["mse steps=2"].state == "wait"
    # rollouts of the step-300 checkpoint, recorded by the evaluation itself ...
    fake_eval(cfg.eval_dir(energy, 2), SUITE, 2, [[True, False, True, False]], producer=weights_identity(cfg.run_dir(energy)))
    assert {j.name: j.state for j in plan_eval(cfg)}[f"{energy.name} steps=2"] == "done"
    fake_run(cfg.run_dir(energy), 600)  # ... then the model is trained further
    with pytest.raises(StudyError, match=r"another checkpoint of energy_lam1_beta1 \(checkpoint step 300, weights sha256 "
                                         r"\w{12}; its run dir now holds checkpoint step 600, .*\): delete that folder"):
        plan_eval(quick(tmp_path, "train_steps=600"))
    (cfg.eval_dir(energy, 2) / "eval_config.json").unlink()
    # folders of older studies recorded the step in study_eval.json: still read
    (cfg.eval_dir(energy, 2) / "study_eval.json").write_text(json.dumps({"train_step": 300}))
    with pytest.raises(StudyError, match=r"another checkpoint of energy_lam1_beta1 \(checkpoint step 300; its run dir now"):
        plan_eval(quick(tmp_path, "train_steps=600"))
    (cfg.eval_dir(energy, 2) / "study_eval.json").write_text(json.dumps({"train_step": 600}))
    assert {j.name: j.state for j in plan_eval(quick(tmp_path, "train_steps=600"))}[f"{energy.name} steps=2"] == "done"
    (cfg.eval_dir(energy, 2) / "study_eval.json").unlink()

    # the CLI dry run prints the same plan and runs nothing
    rc, out, err = run_study(["preset=quick", "dry_run=true", f"data_root={tmp_path}/data", f"runs_root={tmp_path}/runs",
                              f"eval_root={tmp_path}/eval", f"results={tmp_path}/libero.json", *SMALL], capsys)
    assert rc == 0, err
    lines = out.splitlines()
    assert any(ln.strip().startswith("done  demos") for ln in lines)
    assert any(ln.strip().startswith(f"done  train {energy.name}") for ln in lines)
    assert any(ln.strip().startswith("resume  train mse") for ln in lines)
    assert any("-m envs.evaluation.cli --checkpoint" in ln and "--tasks 0 --fast-render" in ln for ln in lines)
    assert "dry run: nothing executed" in lines[-1] and not (tmp_path / "libero.json").exists()


def test_reused_folders_with_other_settings_are_refused(tmp_path: Path) -> None:
    from envs.libero.suites import list_tasks
    from envs.scripted.demos import task_file_name
    from envs.study.runner import write_spec

    cfg = quick(tmp_path)
    write_demo_file(tmp_path / "data" / SUITE / task_file_name(list_tasks(SUITE)[0].name), 5, 128, False)
    with pytest.raises(StudyError, match="128 px.*use another data_root"):
        plan_demos(cfg)
    write_spec(cfg, cfg.models()[1], "test machine")
    with pytest.raises(StudyError, match=r"other settings \(seed\)"):
        plan_training(quick(tmp_path, "seed=3"))


def test_route_mode_demos_are_kept_apart(tmp_path: Path) -> None:
    from envs.libero.suites import list_tasks
    from envs.scripted.demos import task_file_name

    bimodal = parse_overrides(["preset=cpu_bimodal", f"data_root={tmp_path}/data", f"runs_root={tmp_path}/runs"])
    assert bimodal.detour == 0.12 and [m.name for m in bimodal.models()] == ["energy_lam1_beta1", "energy_lam1_beta0.1", "mse"]
    assert bimodal.results.endswith("libero_bimodal.json")
    job = plan_demos(bimodal)[0]
    assert job.state == "run" and job.cmd[-2:] == ["--detour", "0.12"]
    unimodal = quick(tmp_path)
    assert "--detour" not in plan_demos(unimodal)[0].cmd
    path = tmp_path / "data" / SUITE / task_file_name(list_tasks(SUITE)[0].name)
    write_demo_file(path, 50, 64, True, detour=0.0)  # demos without route modes in the same folder
    with pytest.raises(StudyError, match="route modes detour=0 but the study wants detour=0.12; use another data_root"):
        plan_demos(bimodal)
    write_demo_file(path, 50, 64, True, detour=0.12)
    assert plan_demos(bimodal)[0].state == "done"
    # the route modes are part of a run's identity only when on: run dirs of earlier studies stay valid
    from envs.study.runner import training_spec

    assert "detour" not in training_spec(unimodal, unimodal.models()[0])
    assert training_spec(bimodal, bimodal.models()[0])["detour"] == 0.12
    with pytest.raises(StudyError, match="detour must be a number of metres"):
        parse_overrides(["preset=quick", "detour=left"])


def test_yaw_mode_demos_are_kept_apart(tmp_path: Path) -> None:
    from envs.libero.suites import list_tasks
    from envs.scripted.demos import task_file_name
    from envs.study.runner import training_spec

    yaw = parse_overrides(["preset=cpu_yaw_task1", f"data_root={tmp_path}/data", f"runs_root={tmp_path}/runs"])
    assert yaw.yaw_modes and yaw.detour == 0.0 and yaw.task_indices() == [1]
    assert [m.name for m in yaw.models()] == ["energy_lam1_beta0.1", "mse"]
    job = plan_demos(yaw)[0]
    assert job.state == "run" and job.cmd[-1] == "--yaw-modes" and "--detour" not in job.cmd
    assert "--yaw-modes" not in plan_demos(quick(tmp_path))[0].cmd
    path = tmp_path / "data" / SUITE / task_file_name(list_tasks(SUITE)[1].name)
    write_demo_file(path, 50, 64, True)  # older demos without the attribute: no yaw modes
    with pytest.raises(StudyError, match="yaw_modes=False but the study wants yaw_modes=True; use another data_root"):
        plan_demos(yaw)
    write_demo_file(path, 50, 64, True, detour=0.0, yaw_modes=True)
    assert plan_demos(yaw)[0].state == "done"
    assert training_spec(yaw, yaw.models()[0])["yaw_modes"] is True
    assert "yaw_modes" not in training_spec(quick(tmp_path), quick(tmp_path).models()[0])
    assert parse_overrides(["preset=quick", "yaw_modes=true"]).yaw_modes


def test_yaw_tasks_get_their_own_demos_and_the_rest_route_modes(tmp_path: Path) -> None:
    from envs.libero.suites import list_tasks
    from envs.scripted.demos import task_file_name

    cfg = quick(tmp_path, "tasks=0,1,2", "detour=0.12", "yaw_tasks=1")
    assert [cfg.demo_modes(i) for i in (0, 1, 2)] == [(0.12, False), (0.0, True), (0.12, False)]
    jobs = plan_demos(cfg)
    assert [j.name for j in jobs] == [f"{SUITE} tasks 0,2", f"{SUITE} tasks 1"]
    assert jobs[0].cmd[jobs[0].cmd.index("--tasks") + 1] == "0,2" and "--detour" in jobs[0].cmd
    assert "--yaw-modes" in jobs[1].cmd and "--detour" not in jobs[1].cmd
    path = tmp_path / "data" / SUITE / task_file_name(list_tasks(SUITE)[1].name)
    write_demo_file(path, 5, 64, True, detour=0.12)  # route-mode demos where yaw modes are wanted
    with pytest.raises(StudyError, match="detour=0.12 but the study wants detour=0; use another data_root"):
        plan_demos(cfg)
    write_demo_file(path, 5, 64, True, detour=0.0, yaw_modes=True)
    assert [j.state for j in plan_demos(cfg)] == ["run", "done"]
    assert training_spec(cfg, cfg.models()[0])["yaw_tasks"] == [1]
    assert "yaw_tasks" not in training_spec(quick(tmp_path), quick(tmp_path).models()[0])
    assert parse_overrides(["preset=objects_suite"]).yaw_tasks == [1, 6, 8]


def test_bad_input_gives_one_clear_error(tmp_path: Path) -> None:
    assert parse_energy("1:1,0.5:1,1:0.1") == [(1.0, 1.0), (0.5, 1.0), (1.0, 0.1)]
    for argv, msg in [(["suite=libero_100"], "unknown suite 'libero_100'; choose one of libero_spatial"),
                      (["preset=huge"], "unknown preset 'huge'; choose one of quick, cpu, cpu_suite, cpu_bimodal, cpu_bimodal_task1, cpu_yaw_task1, objects, objects_suite, images_yaw, paper"),
                      (["model=tiny"], "unknown model 'tiny'; choose small, paper, objects"),
                      (["energy=1:3"], "need lambda in [0, 1] and beta in (0, 2]"),
                      (["energy=1,1"], "write lambda:beta pairs"),
                      (["energy=1:1,1:1"], "twice"),
                      (["energy=none", "mse=false"], "no model to train"),
                      (["eval_steps=0,2"], "integers >= 1"),
                      (["tasks=12"], "out of range"),
                      (["lr=3"], "unknown option 'lr'"),
                      (["quick"], "write key=value")]:
        with pytest.raises(StudyError, match=msg.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")):
            parse_overrides(["preset=quick", *argv])
    out = subprocess.run([sys.executable, str(REPO / "scripts" / "run_study.py"), "suite=libero_100"],
                         capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert out.returncode == 2 and out.stdout == ""
    assert out.stderr.strip().splitlines() == [
        "error: unknown suite 'libero_100'; choose one of libero_spatial, libero_object, libero_goal, libero_10, libero_90"]


def test_rerun_of_a_finished_study_runs_nothing_and_aggregates(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from envs.libero.suites import list_tasks
    from envs.scripted.demos import task_file_name

    cfg = quick(tmp_path)
    write_demo_file(tmp_path / "data" / SUITE / task_file_name(list_tasks(SUITE)[0].name), 5, 64, True)
    for m, wins in zip(cfg.models(), ([True, True, False, False], [False] * 4)):
        fake_run(cfg.run_dir(m), 300)
        fake_eval(cfg.eval_dir(m, 2), SUITE, 2, [wins])
    rc, out, err = run_study(["preset=quick", f"data_root={tmp_path}/data", f"runs_root={tmp_path}/runs",
                              f"eval_root={tmp_path}/eval", f"results={tmp_path}/libero.json", *SMALL], capsys)
    assert rc == 0, err
    assert "$ " not in out  # no command was run
    assert out.count("skip ") == 1 + 2 + 2
    assert "| energy_lam1_beta1 | 50.0 [15-85] n=4 |" in out and "| mse | 0.0 [0-49] n=4 |" in out
    assert out.strip().splitlines()[-1].startswith("done: study libero_object preset=quick in ")
    data = json.loads((tmp_path / "libero.json").read_text())
    assert data[SUITE] == {"energy_lam1_beta1": {"2": {"success": 0.5, "episodes": 4}}, "mse": {"2": {"success": 0.0, "episodes": 4}}}


def test_parallel_stage_runs_jobs_side_by_side_with_logs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """jobs=2: two children at once, each writing to its own log; a failing one is reported
    with the tail of its log and the others still run."""
    from envs.study.runner import Job

    from envs.study import cli as module

    stamp = ("import os, sys, time; open(sys.argv[1], 'w').write(str(time.time())); time.sleep(1.5); "
             "print('hello', sys.argv[1], os.environ['TQDM_MININTERVAL'])")  # progress bars redraw rarely into logs
    jobs = [Job("eval", f"ok{i}", [sys.executable, "-c", stamp, str(tmp_path / f"start{i}")], "run",
                log=tmp_path / f"ok{i}" / "study_eval.log") for i in range(2)]
    jobs.append(Job("eval", "bad", [sys.executable, "-c", "import sys; print('boom: bad key'); sys.exit(3)"], "run",
                    log=tmp_path / "bad" / "study_eval.log"))
    jobs.append(Job("eval", "old", [], "done", "finished earlier"))
    seen = []
    failed = module.run_stage("eval", jobs, before=lambda j: seen.append(j.name), threads=1, parallel=2)
    out = capsys.readouterr().out
    assert failed == ["bad"] and seen == ["ok0", "ok1", "bad"]
    starts = [float((tmp_path / f"start{i}").read_text()) for i in range(2)]
    assert abs(starts[0] - starts[1]) < 1.0  # both ran at once (each sleeps 1.5 s)
    for i in range(2):
        assert (tmp_path / f"ok{i}" / "study_eval.log").read_text().strip() == f"hello {tmp_path / f'start{i}'} 30"
    assert "FAILED (eval bad, exit 3)" in out and "| boom: bad key" in out and "skip eval old" in out


def test_sigterm_stops_the_children_of_a_stage(tmp_path: Path) -> None:
    """kill <run_study> (SIGTERM, as a scheduler stops a job) stops the jobs it started, as
    Ctrl-C does: none keeps training to collide with the rerun that resumes the study."""
    import os
    import signal

    script = f"""
import sys
import time
from pathlib import Path
from envs.study.cli import run_stage, stop_on_sigterm
from envs.study.runner import Job
child = [sys.executable, "-c", "import os, sys, time; open(sys.argv[1], 'w').write(str(os.getpid())); time.sleep(120)"]
jobs = [Job("train", f"j{{i}}", child + [rf"{tmp_path}/pid{{i}}"], "run", log=Path(r"{tmp_path}") / f"j{{i}}.log")
        for i in range(2)]
with stop_on_sigterm():
    try:
        run_stage("train", jobs, parallel=2)
    except KeyboardInterrupt:
        sys.exit(130)
"""
    parent = subprocess.Popen([sys.executable, "-c", script])
    pids = [tmp_path / f"pid{i}" for i in range(2)]
    deadline = time.time() + 60
    while not all(p.is_file() and p.read_text() for p in pids):
        assert time.time() < deadline and parent.poll() is None, "the stage's children did not start"
        time.sleep(0.1)
    parent.send_signal(signal.SIGTERM)
    assert parent.wait(timeout=30) == 130
    for p in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(int(p.read_text()), 0)


def test_loss_curves_show_each_run_and_whether_it_flattened(tmp_path: Path) -> None:
    """aggregate() writes <table>_loss.png beside the table and one row per run with its final
    loss (the last tenth) and tail drop ((q3 - q4) / q3 of the mean loss); a resumed run's
    repeated steps count once (the last line), a torn last line is skipped."""
    from envs.study.curves import convergence, read_curve

    cfg = quick(tmp_path, "eval_steps=1", "tasks=0", "episodes=2", "train_steps=400")
    energy, mse = cfg.models()
    for m, tail in ((energy, 1.0), (mse, 0.5)):  # energy flat at 1.0 in its last half, mse still falling
        run = cfg.run_dir(m)
        run.mkdir(parents=True)
        lines = []
        for step in range(10, 410, 10):
            loss = 4.0 if step <= 200 else (tail if m is energy else 2.0 - 1.5 * (step - 200) / 200)
            lines.append(json.dumps({"step": step, "loss": loss}))
        lines.insert(5, json.dumps({"step": 300, "loss": 99.0}))  # an earlier attempt at step 300, resumed over
        (run / "metrics.jsonl").write_text("\n".join(lines) + '\n{"step": 41')
        fake_eval(cfg.eval_dir(m, 1), SUITE, 1, [[True, False]])
    steps, loss = read_curve(cfg.run_dir(mse))
    assert len(steps) == 40 and loss[list(steps).index(300)] != 99.0
    flat = convergence(*read_curve(cfg.run_dir(energy)), 400)
    assert flat == {"steps": 400, "final": 1.0, "tail_drop": 0.0}
    falling = convergence(steps, loss, 400)
    q3, q4 = loss[(steps > 200) & (steps <= 300)].mean(), loss[steps > 300].mean()
    assert falling["tail_drop"] == pytest.approx((q3 - q4) / q3, abs=1e-4) and falling["tail_drop"] > 0.3
    assert convergence(steps[:10], loss[:10], 400)["final"] is None  # not half-way yet
    paths = aggregate(cfg)
    assert paths is not None and paths["loss_png"].read_bytes()[:4] == b"\x89PNG"
    assert paths["loss_png"].name == f"libero_{SUITE}_loss.png"
    md = paths["md"].read_text()
    assert f"[{paths['loss_png'].name}]" in md and "| mse / mse | 400 |" in md and "| 0.0% |" in md


def test_reversals_count_mode_switches_between_consecutive_chunks() -> None:
    """A yaw reversal: two strong turns in opposite directions; a planar one: two strong moves more
    than 120 degrees apart; weak commands and perpendicular moves are none."""
    import numpy as np

    from envs.study.switching import demo_chunks, reversals, summarize

    def chunk(x: float, y: float, yaw: float) -> np.ndarray:
        c = np.zeros((8, 7))
        c[:, 0], c[:, 1], c[:, 5], c[:, 6] = x, y, yaw, -1.0
        return c

    seq = np.stack([chunk(0.5, 0, 0.6), chunk(-0.5, 0.1, -0.6),  # both kinds reverse
                    chunk(0, 0.5, 0.1), chunk(0, -0.5, -0.1),  # planar only (the yaw is weak)
                    chunk(0.5, 0, 0), chunk(0, 0.5, 0)])  # perpendicular: none
    seq[2:4, :, 6] = 1.0  # the gripper closes at chunk 2 and opens at chunk 4: two flips
    assert reversals(seq) == {"pairs": 5, "yaw": 1, "planar": 2, "gripper": 2}
    assert reversals(seq[:1]) == {"pairs": 0, "yaw": 0, "planar": 0, "gripper": 0}
    assert demo_chunks(np.zeros((20, 7))).shape == (2, 8, 7)
    s = summarize([{"pairs": 5, "yaw": 1, "planar": 0, "gripper": 4, "success": False},
                   {"pairs": 5, "yaw": 0, "planar": 0, "gripper": 2, "success": True}])
    assert s["gripper_flips_per_episode"] == 3.0
    assert s["yaw_reversals_per_100_pairs"] == 10.0 and s["episodes_with_yaw_reversal"] == 0.5
    assert s["success_with_reversal"] == 0.0 and s["success_without_reversal"] == 1.0


@pytest.mark.parametrize("key, value, flag, default, where, marker, bad", [
    ("noise", "fixed", "--noise", "shared", "notes", "sampler noise fixed", "noise must be shared, episode or fixed"),
    ("init_states", "fresh", "--init-states", "official", "protocol", "starts from fresh layout i",
     "init_states must be official or fresh"),
])
def test_an_evaluation_variant_evaluates_and_reports_only_itself(tmp_path: Path, key: str, value: str, flag: str,
                                                                  default: str, where: str, marker: str, bad: str) -> None:
    """noise=fixed, init_states=fresh: the evaluations run with the flag, the table says so, and a
    folder evaluated otherwise is refused in one line (the defaults are not recorded)."""
    cfg = quick(tmp_path, "eval_steps=1", "tasks=0", "episodes=2", f"{key}={value}")
    assert cfg.eval_root == f"{tmp_path}/eval"  # given: kept
    energy, mse = cfg.models()
    cmd = plan_eval(cfg)[0].cmd
    assert cmd[cmd.index(flag) + 1] == value
    assert flag not in plan_eval(quick(tmp_path, "eval_steps=1"))[0].cmd
    fake_eval(cfg.eval_dir(energy, 1), SUITE, 1, [[True, False]], **{key: value})
    fake_eval(cfg.eval_dir(mse, 1), SUITE, 1, [[True, True]])  # the default: not this study's
    with pytest.raises(StudyError, match=f"evaluated with {key}='{default}' but the study evaluates with {key}='{value}'"):
        aggregate(cfg)
    fake_eval(cfg.eval_dir(mse, 1), SUITE, 1, [[True, True]], **{key: value})
    paths = aggregate(cfg)
    assert paths is not None and marker in json.loads(paths["json"].read_text())[where]
    with pytest.raises(StudyError, match=bad):
        quick(tmp_path, f"{key}=sometimes")


def test_a_variant_gets_its_own_folders_and_table_unless_given() -> None:
    """Another evaluation of the same runs: eval_root and results get the variant's suffix, and the
    fork probe is not repeated (unless asked for)."""
    cfg = parse_overrides(["preset=objects_suite", "init_states=fresh", "seeds=1", "eval_steps=1,2"])
    assert (cfg.eval_root, cfg.results, cfg.probe_steps) == (
        "eval/study_fresh", "benchmarks/results/libero_objects_suite_fresh.json", [])
    both = parse_overrides(["preset=objects_suite", "init_states=fresh", "noise=fixed", "probe_steps=1"])
    assert both.eval_root == "eval/study_noise_fixed_fresh" and both.probe_steps == [1]
    assert parse_overrides(["preset=objects_suite", "noise=fixed", "eval_root=e"]).eval_root == "e"


def test_eval_tasks_evaluate_a_subset_of_the_trained_runs(tmp_path: Path) -> None:
    """eval_tasks=1,6,8: the same training (its spec unchanged), evaluations of those tasks only (in
    the folders of their noise variant); a task that was not trained is refused in one line."""
    cfg = parse_overrides(["preset=objects_suite", "eval_tasks=1,6,8", "noise=fixed", "seeds=1", "eval_steps=1"])
    assert cfg.variant() == "noise_fixed_tasks1-6-8" and cfg.eval_root == "eval/study_noise_fixed"
    full = parse_overrides(["preset=objects_suite", "seeds=1"])
    m = cfg.models()[0]
    assert training_spec(cfg, m) == training_spec(full, m)
    cmd = plan_eval(cfg)[0].cmd
    assert cmd[cmd.index("--tasks") + 1] == "1,6,8"
    small = quick(tmp_path, "tasks=0,1,2", "eval_tasks=2", "eval_steps=1", "episodes=2")
    energy = small.models()[0]
    fake_eval(small.eval_dir(energy, 1), SUITE, 1, [[True], [], [True, True]])  # all of eval_tasks=2 (and one more)
    assert [j.state for j in plan_eval(small) if j.name.startswith(energy.run)] == ["done"]
    with pytest.raises(StudyError, match=r"eval_tasks \[3\] are not among the trained tasks \[0, 1, 2\]"):
        quick(tmp_path, "tasks=0,1,2", "eval_tasks=3")


def test_demos_from_rerenders_another_studys_demonstrations(tmp_path: Path) -> None:
    """demos_from: the demo stage re-renders that data_root's task files at the study's resolution
    (one replay_demos.py per task short of demos); a missing source is one clear line."""
    from envs.scripted.demos import task_file_name
    from envs.libero.suites import list_tasks

    cfg = parse_overrides(["preset=images_yaw", f"demos_from={tmp_path}/objects", f"data_root={tmp_path}/images",
                           "demos=2"])
    names = {t: task_file_name(list_tasks(SUITE)[t].name) for t in (1, 6, 8)}
    with pytest.raises(StudyError, match=f"demos_from={tmp_path}/objects: no demo file .*{names[1]} for task 1"):
        plan_demos(cfg)
    (tmp_path / "objects" / SUITE).mkdir(parents=True)
    for t, name in names.items():  # grasp-yaw demos, but task 8's made without their modes
        with h5py.File(tmp_path / "objects" / SUITE / name, "w") as f:
            f.create_group("data").attrs["scripted_yaw_modes"] = t != 8
    with pytest.raises(StudyError, match=f"{names[8]} holds demos made with yaw_modes=False but the study wants "
                                         "yaw_modes=True; use another demos_from"):
        plan_demos(cfg)
    with h5py.File(tmp_path / "objects" / SUITE / names[8], "r+") as f:
        f["data"].attrs["scripted_yaw_modes"] = True
    dst = tmp_path / "images" / SUITE / names[6]
    dst.parent.mkdir(parents=True)
    with h5py.File(dst, "w") as f:  # task 6 already re-rendered: two demos at 64 px, fast, yaw modes
        data = f.create_group("data")
        data.attrs.update(env_args=json.dumps({"env_kwargs": {"camera_heights": 64, "fast_render": True}}),
                          scripted_yaw_modes=True)
        for k in range(2):
            data.create_group(f"demo_{k}")
    jobs = {j.name: j for j in plan_demos(cfg)}
    assert jobs[f"{SUITE} task 6"].state == "done"
    cmd = jobs[f"{SUITE} task 1"].cmd
    assert cmd[cmd.index("envs.scripted.replay_cli") + 1] == str(tmp_path / "objects" / SUITE / names[1])
    assert cmd[cmd.index("--resolution") + 1] == "64" and "--fast-render" in cmd
    assert cmd[cmd.index("--out") + 1] == str(tmp_path / "images" / SUITE / names[1])
    assert training_spec(cfg, cfg.models()[0])["demos_from"] == f"{tmp_path}/objects"


def test_switching_command_reads_demonstrations(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """python -m envs.study.switching --demos FILE: one row per file (two yaw reversals in a demo
    that turns, turns back and turns again), --out JSON; nothing to read is one line."""
    import h5py
    import numpy as np

    from envs.study.switching import main

    actions = np.zeros((32, 7))
    actions[:, 6] = -1.0
    actions[0:8, 5], actions[8:16, 5], actions[16:24, 5] = 0.8, -0.8, 0.8
    path = tmp_path / "demo.hdf5"
    with h5py.File(path, "w") as f:
        f.create_dataset("data/demo_0/actions", data=actions)
    assert main(["--demos", str(path), "--out", str(tmp_path / "s.json")]) == 0
    s = json.loads((tmp_path / "s.json").read_text())[f"demonstrations {path}"]
    assert s["chunk_pairs"] == 3 and s["yaw_reversals_per_100_pairs"] == pytest.approx(200 / 3, abs=0.01)
    capsys.readouterr()
    assert main([]) == 2 and capsys.readouterr().err.startswith("error: name evaluation folders")
    assert main([str(tmp_path)]) == 2 and "has no recorded chunks" in capsys.readouterr().err


def test_switching_command_keeps_the_tasks_asked_for(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--tasks 1: only task 1's episodes of an evaluation folder (the grasp-yaw tasks apart from
    the route tasks); no episode of those tasks, or a bad list, is one line."""
    import numpy as np

    from envs.evaluation.harness import chunk_file
    from envs.study.switching import main

    steady, turning = np.zeros((3, 8, 7)), np.zeros((3, 8, 7))
    turning[0, :, 5], turning[1, :, 5], turning[2, :, 5] = 0.8, -0.8, 0.8  # two yaw reversals
    lines = []
    for task, chunks in ((0, steady), (1, turning)):
        lines.append(json.dumps({"suite": SUITE, "task_index": task, "episode": 0, "success": task == 0}))
        path = chunk_file(tmp_path, SUITE, task, 0)
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez(path, t=np.arange(3), chunks=chunks)
    (tmp_path / "episodes.jsonl").write_text("\n".join(lines) + "\n")
    assert main([str(tmp_path), "--tasks", "1", "--out", str(tmp_path / "s.json")]) == 0
    s = json.loads((tmp_path / "s.json").read_text())[str(tmp_path)]
    assert s["episodes"] == 1 and s["yaw_reversals_per_100_pairs"] == 100
    assert main([str(tmp_path), "--out", str(tmp_path / "s.json")]) == 0
    assert json.loads((tmp_path / "s.json").read_text())[str(tmp_path)]["yaw_reversals_per_100_pairs"] == 50
    capsys.readouterr()
    assert main([str(tmp_path), "--tasks", "5"]) == 2 and "no recorded chunks of tasks 5" in capsys.readouterr().err
    assert main([str(tmp_path), "--tasks", "one"]) == 2 and "bad --tasks list 'one'" in capsys.readouterr().err


def test_probe_stage_plans_each_fork_and_pools_the_probes(tmp_path: Path) -> None:
    """probe_steps: one probe per (first-seed model, task with a fork, steps), route or yaw by the
    task's demos, waiting for training; the written probes pool into <results>_<suite>_probe.md/json."""
    from envs.study.probe_stage import aggregate_probe, plan_probe, probe_file

    cfg = quick(tmp_path, "tasks=0,1,2", "detour=0.12", "yaw_tasks=1", "seeds=2", "probe_steps=1", "train_steps=300")
    jobs = plan_probe(cfg)
    assert len(jobs) == 6 and {j.state for j in jobs} == {"wait"}  # 2 models x 3 tasks, seed 0 only
    fork = {j.name: j.cmd[j.cmd.index("--fork") + 1] for j in jobs}
    assert fork["mse task 1 steps=1"] == "yaw" and fork["mse task 0 steps=1"] == "route"
    assert plan_probe(quick(tmp_path, "tasks=0", "probe_steps=1")) == []  # plain demos: no fork
    energy, mse = [m for m in cfg.models() if m.seed == cfg.seed]
    fake_run(cfg.run_dir(mse), 300)
    assert {j.name: j.state for j in plan_probe(cfg)}["mse task 0 steps=1"] == "run"
    assert aggregate_probe(cfg) == {}
    for task, strength in ((0, 0.4), (2, 0.8), (1, 0.1)):
        out = probe_file(cfg, mse, task, 1)
        out.parent.mkdir(parents=True, exist_ok=True)
        stats = {"strength": strength, "both_sides": 0.5, "p_left": 0.5, "observations": 50, "samples": 8,
                 **({"weak": 0.3} if task == 1 else {})}  # the route probes from before weak was measured
        out.write_text(json.dumps({"train_starts": {**stats, "agrees_with_demo": 0.5}, "held_out_starts": stats}))
    assert {j.name: j.state for j in plan_probe(cfg)}["mse task 0 steps=1"] == "done"
    paths = aggregate_probe(cfg)
    cells = {c["fork"]: c for c in json.loads(paths["probe_json"].read_text())["cells"]}
    assert cells["route"]["train_strength"] == pytest.approx(0.6) and cells["route"]["tasks"] == [0, 2]
    assert cells["yaw"]["held_out_strength"] == pytest.approx(0.1)
    md = paths["probe_md"].read_text()
    assert "| route | 1 | mse | 0,2 | 0.60 / 0.60 | - / - |" in md and "| yaw | 1 | mse | 1 | 0.10 / 0.10 | 0.30 / 0.30 |" in md


def test_loss_curves_are_drawn_before_any_evaluation(tmp_path: Path) -> None:
    """While the evaluations wait, aggregate() has no table (None) but draws the loss curves of
    the runs that logged metrics; with no metrics at all it writes nothing."""
    cfg = quick(tmp_path, "eval_steps=1", "tasks=0")
    assert aggregate(cfg) is None and not list(tmp_path.glob("*_loss.png"))
    run = cfg.run_dir(cfg.models()[0])
    run.mkdir(parents=True)
    (run / "metrics.jsonl").write_text("\n".join(json.dumps({"step": s, "loss": 1.0 / s}) for s in range(10, 310, 10)))
    assert aggregate(cfg) is None
    assert (tmp_path / f"libero_{SUITE}_loss.png").read_bytes()[:4] == b"\x89PNG"
