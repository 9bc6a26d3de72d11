"""The LIBERO study (issue 8): distributional (energy loss) against classical (MSE)
diffusion policies, success rate against sampler steps (paper Section 6.3, Fig. 9).

``scripts/run_study.py`` parses ``key=value`` overrides into a :class:`StudyConfig`
(:func:`parse_overrides`), plans three stages of subprocess commands whose outputs
decide what is already done (:func:`plan_demos`, :func:`plan_training`,
:func:`plan_eval`), runs them, and aggregates the evaluation results
(:func:`aggregate`) into ``libero.json`` + a markdown table + a PNG plot. Everything
here reads and writes files only: no simulator run, no training. Evaluation folders are
checked through the record every evaluation keeps (``eval_config.json``, see
:mod:`envs.evaluation.results`): rollouts of another checkpoint, step count, churn, resolution or
protocol are refused in one line, never mixed or relabelled.

Folders (``<p>`` = preset): demos ``<data_root>/<suite>/``, runs
``<runs_root>/<p>/<suite>/<model>/``, evaluations ``<eval_root>/<p>/<suite>/<model>/steps_<k>/``.
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from envs.evaluation.results import describe_producer, differing_keys, read_run_record, same_producer, weights_identity
from envs.libero.suites import NUM_WAIT_STEPS, list_tasks
from envs.study.config import ModelSpec, StudyConfig
from envs.study.report import StudyError, collect_results, combine_seeds, write_study_results
from policy.utils import atomic_write_text

SPEC_FILE = "study_spec.json"  # written into a run dir before its training starts
LEGACY_EVAL_MARKER = "study_eval.json"  # the checkpoint step, written by studies before eval_config.json had it (read only)

@dataclass
class Job:
    """One planned subprocess: ``state`` is done (skipped), run, resume, or wait (needs an earlier stage)."""

    stage: str
    name: str
    cmd: list[str]
    state: str
    detail: str = ""
    key: tuple[str, int] | None = None  # eval jobs: (model name, steps)
    log: Path | None = None  # where the job's output goes when jobs run in parallel


def _py(module: str) -> list[str]:
    """[python, -m, <module>]: a stage's entry module (the code behind scripts/<name>.py), found
    through the installed package, so the study runs from any working directory."""
    return [sys.executable, "-m", module]


def demo_file(cfg: StudyConfig, task: int, root: str | None = None) -> Path:
    """The demonstration file of ``task`` under the study's data_root (or under ``root``)."""
    from envs.scripted.demos import task_file_name

    return Path(root or cfg.data_root) / cfg.suite / task_file_name(list_tasks(cfg.suite)[task].name)


def check_demo_modes(cfg: StudyConfig, task: int, path: Path, attrs: Any, fix: str) -> None:
    """StudyError (ending in ``fix``) when the demos of ``path`` (its ``data`` attributes) were
    made with other route or grasp-yaw modes than the study wants for ``task``."""
    from envs.libero.hdf5_writer import scripted_modes

    detour, yaw_modes = scripted_modes(attrs)
    want_detour, want_yaw = cfg.demo_modes(task)
    if abs(detour - want_detour) > 1e-9:
        raise StudyError(f"{path} holds demos made with route modes detour={detour:g} but the study wants "
                         f"detour={want_detour:g}; {fix}")
    if yaw_modes != want_yaw:
        raise StudyError(f"{path} holds demos made with yaw_modes={yaw_modes} but the study wants "
                         f"yaw_modes={want_yaw}; {fix}")


def count_demos(cfg: StudyConfig) -> dict[str, int]:
    """Demonstrations already in ``<data_root>/<suite>/`` per selected task name; raises
    StudyError if a file was made with other modes, or rendered at another resolution or
    rendering mode, than ``cfg``."""
    import h5py

    tasks = list_tasks(cfg.suite)
    out = {}
    for i in cfg.task_indices():
        path = demo_file(cfg, i)
        n = 0
        if path.is_file():
            with h5py.File(path, "r") as f:
                n = sum(k.startswith("demo_") for k in f["data"])
                env = json.loads(f["data"].attrs.get("env_args", "{}")).get("env_kwargs", {})
                check_demo_modes(cfg, i, path, f["data"].attrs, "use another data_root")
            seen = (env.get("camera_heights", cfg.resolution), bool(env.get("fast_render", cfg.fast_render)))
            if seen != (cfg.resolution, cfg.fast_render):
                raise StudyError(f"{path} holds demos at {seen[0]} px, fast_render={seen[1]} but the study wants "
                                 f"{cfg.resolution} px, fast_render={cfg.fast_render}; use another data_root")
        out[tasks[i].name] = n
    return out


def plan_demos(cfg: StudyConfig) -> list[Job]:
    """Stage 1: scripts/generate_demos.py for the tasks still short of ``cfg.demos`` demos: one
    command for all, or one per kind of demonstrations when some tasks have their own modes
    (``yaw_tasks``)."""
    counts = count_demos(cfg)
    names = [t.name for t in list_tasks(cfg.suite)]
    if cfg.demos_from:
        return plan_rerender(cfg, counts, names)
    groups: dict[tuple[float, bool], list[int]] = {}
    for i in cfg.task_indices():
        groups.setdefault(cfg.demo_modes(i), []).append(i)
    jobs = []
    for (detour, yaw), idx in groups.items():
        all_tasks = cfg.tasks is None and len(groups) == 1
        cmd = _py("envs.scripted.cli") + [
            "--suite", cfg.suite, "--tasks", "all" if all_tasks else ",".join(map(str, idx)),
            # the demos run alone: as many planner processes as the study's jobs x evaluation workers
            "--demos-per-task", str(cfg.demos), "--workers", str(max(cfg.workers, cfg.jobs)), "--out", cfg.data_root,
            "--resolution", str(cfg.resolution)] + (["--fast-render"] if cfg.fast_render else []) + (
            ["--detour", f"{detour:g}"] if detour else []) + (["--yaw-modes"] if yaw else [])
        mine = {names[i]: counts[names[i]] for i in idx}
        have = sum(min(v, cfg.demos) for v in mine.values())
        detail = f"{have}/{cfg.demos * len(mine)} demos in {Path(cfg.data_root) / cfg.suite}"
        name = cfg.suite if len(groups) == 1 else f"{cfg.suite} tasks {','.join(map(str, idx))}"
        jobs.append(Job("demos", name, cmd, "run" if any(v < cfg.demos for v in mine.values()) else "done", detail))
    return jobs


def plan_rerender(cfg: StudyConfig, counts: dict[str, int], names: list[str]) -> list[Job]:
    """Stage 1 with ``demos_from``: one replay_demos.py per task short of demos, re-rendering that
    task's file of ``demos_from`` at the study's resolution (the same demonstrations; the file
    keeps their modes). StudyError when a source is missing or made with other modes than the study's."""
    import h5py

    jobs = []
    for i in cfg.task_indices():
        src, dst = demo_file(cfg, i, cfg.demos_from), demo_file(cfg, i)
        have = counts[names[i]]
        if have >= cfg.demos:
            jobs.append(Job("demos", f"{cfg.suite} task {i}", [], "done", f"{have}/{cfg.demos} demos in {dst}"))
            continue
        if not src.is_file():
            raise StudyError(f"demos_from={cfg.demos_from}: no demo file {src} for task {i}; generate it there first "
                             "or drop demos_from")
        with h5py.File(src, "r") as f:
            check_demo_modes(cfg, i, src, f["data"].attrs, "use another demos_from")
        cmd = _py("envs.scripted.replay_cli") + [str(src), "--resolution", str(cfg.resolution), "--out", str(dst)] + (
            ["--fast-render"] if cfg.fast_render else [])
        jobs.append(Job("demos", f"{cfg.suite} task {i}", cmd, "run", f"re-render {src} -> {dst}"))
    return jobs


def training_spec(cfg: StudyConfig, m: ModelSpec) -> dict[str, Any]:
    """What must stay fixed for a run dir to be resumed or reused (steps may grow)."""
    loss = {k: v for k, v in asdict(m).items()  # as recorded before seeds were runs and noise_dim a sweep's option
            if k not in ("seed", "run") and (k != "noise_dim" or v)}
    return {"suite": cfg.suite, "model": cfg.model, "seed": m.seed, "loss": loss, "data_root": cfg.data_root,
            "tasks": cfg.task_indices(), "demos": cfg.demos, "resolution": cfg.resolution,
            **({"demos_from": cfg.demos_from} if cfg.demos_from else {}),
            "fast_render": cfg.fast_render, "train_overrides": cfg.train_overrides,
            **({"detour": cfg.detour} if cfg.detour else {}),  # absent when off: older run dirs stay valid
            **({"yaw_modes": True} if cfg.yaw_modes else {}),
            **({"yaw_tasks": sorted(cfg.yaw_tasks)} if cfg.yaw_tasks else {})}


def checkpoint_step(run: Path) -> int:
    """Step of the newest complete checkpoint in ``run/checkpoints`` (0 if none)."""
    ckpts = run / "checkpoints"
    steps = [json.loads((p / "trainer_state.json").read_text())["step"]
             for p in ckpts.glob("step_*") if (p / "trainer_state.json").is_file()] if ckpts.is_dir() else []
    return max(steps, default=0)


def plan_training(cfg: StudyConfig) -> list[Job]:
    """Stage 2: one train_policy.py run per model in its fixed run dir: done when the newest
    checkpoint reached ``train_steps`` and ``policy/`` exists, resume when a checkpoint exists."""
    jobs = []
    for m in cfg.models():
        run = cfg.run_dir(m)
        spec_path = run / SPEC_FILE
        if spec_path.is_file():
            now = training_spec(cfg, m)
            diff = sorted(differing_keys(json.loads(spec_path.read_text()).get("spec") or {}, now, now))
            if diff:
                raise StudyError(f"{run} was trained with other settings ({', '.join(diff)}); "
                                 f"use another runs_root or delete that run dir")
        step = checkpoint_step(run)
        if step >= cfg.train_steps and (run / "policy" / "config.json").is_file():
            jobs.append(Job("train", m.run, [], "done", f"{step} steps in {run}"))
            continue
        if step > 0:
            cmd = _py("envs.training_cli") + ["resume=true", f"run_dir={run}", f"train.steps={cfg.train_steps}"]
            jobs.append(Job("train", m.run, cmd, "resume", f"from step {step} in {run}", log=run / "study_train.log"))
            continue
        cmd = _py("envs.training_cli") + [
            f"suite={cfg.suite}", f"model={cfg.model}", *m.overrides(), f"train.steps={cfg.train_steps}",
            f"train.seed={m.seed}", f"train.checkpoint_every={cfg.checkpoint_every}",
            f"suite.data_dirs=[{Path(cfg.data_root) / cfg.suite}]", f"run_dir={run}", *cfg.train_overrides]
        jobs.append(Job("train", m.run, cmd, "run", f"-> {run}", log=run / "study_train.log"))
    return jobs


def eval_finished(cfg: StudyConfig, m: ModelSpec, steps: int) -> bool:
    """True when ``steps_<k>/results.json`` holds every planned episode of every evaluated task."""
    path = cfg.eval_dir(m, steps) / "results.json"
    if not path.is_file():
        return False
    res = json.loads(path.read_text())
    done = {int(t["task_index"]): int(t["episodes"]) for t in res["suites"].get(cfg.suite, {}).get("tasks", [])}
    return int(res.get("config", {}).get("steps", steps)) == steps and \
        all(done.get(t, 0) >= cfg.episodes for t in cfg.evaluated_tasks())


def recorded_producer(out: Path) -> dict[str, Any] | None:
    """What made an evaluation folder's rollouts, from its eval_config.json (the record every
    evaluation keeps, :func:`envs.evaluation.results.check_resume_record`); folders of older studies
    only have the checkpoint step in study_eval.json. None when nothing is recorded."""
    try:
        rec = read_run_record(out)
    except ValueError as exc:
        raise StudyError(str(exc)) from None
    if rec and rec.get("producer"):
        return rec["producer"]
    legacy = out / LEGACY_EVAL_MARKER
    if legacy.is_file():
        return {"kind": "checkpoint", "train_step": json.loads(legacy.read_text()).get("train_step")}
    return None


def run_producer(cfg: StudyConfig, m: ModelSpec) -> dict[str, Any] | None:
    """The weights' identity of the model's run dir now (None before its first checkpoint)."""
    run = cfg.run_dir(m)
    return weights_identity(run) if (run / "policy" / "model.safetensors").is_file() else None


def check_eval_producer(cfg: StudyConfig, m: ModelSpec, out: Path, now: dict[str, Any] | None) -> None:
    """Refuse an evaluation folder whose rollouts come from another checkpoint than ``now``
    (:func:`run_producer`: the model's run dir was trained further): never mixed or reported."""
    old = recorded_producer(out)
    run = cfg.run_dir(m)
    if old is None or now is None:
        return
    stale = (not same_producer(old, now)) if "weights_sha256" in old else old.get("train_step") != checkpoint_step(run)
    if stale:
        raise StudyError(f"{out} holds rollouts of another checkpoint of {m.run} ({describe_producer(old)}; its run dir "
                         f"now holds {describe_producer(now)}): delete that folder to evaluate the new one")


def eval_order(steps: list[int]) -> list[int]:
    """The step counts in the order they are evaluated: 1, 2 and the largest first (the cells the
    study's claim compares), the others after, so a study stopped part-way has those."""
    first = [k for k in (1, 2, max(steps, default=0)) if k in steps]
    return list(dict.fromkeys(first + sorted(steps)))


def plan_eval(cfg: StudyConfig, trained: set[str] | None = None) -> list[Job]:
    """Stage 3: eval_rollouts.py per (steps, model), in :func:`eval_order`. ``trained``: models whose training is
    done (default: read from the run dirs); the others wait. Refuses a folder holding rollouts
    of another checkpoint (:func:`check_eval_producer`)."""
    if trained is None:
        trained = {j.name for j in plan_training(cfg) if j.state == "done"}
    jobs = []
    producers = {m.run: run_producer(cfg, m) for m in cfg.models()}
    for k in eval_order(cfg.eval_steps):
        for m in cfg.models():
            now = producers[m.run]
            out = cfg.eval_dir(m, k)
            cmd = _py("envs.evaluation.cli") + [
                "--checkpoint", str(cfg.run_dir(m)), "--steps", str(k), "--suites", cfg.suite,
                "--episodes", str(cfg.episodes), "--workers", str(cfg.workers), "--out", str(out),
                "--device", cfg.device] + (["--tasks", ",".join(map(str, cfg.evaluated_tasks()))]
                                       if cfg.tasks is not None or cfg.eval_tasks is not None else []) \
                + (["--fast-render"] if cfg.fast_render else []) + (["--record-chunks"] if cfg.record_chunks else []) \
                + (["--noise", cfg.noise] if cfg.noise != "shared" else []) \
                + (["--xi-scale", f"{cfg.xi_scale:g}"] if cfg.xi_scale != 1.0 else []) \
                + (["--init-states", cfg.init_states] if cfg.init_states != "official" else [])
            check_eval_producer(cfg, m, out, now)
            if eval_finished(cfg, m, k):
                state = "done"
            else:
                state = "run" if m.run in trained else "wait"
            jobs.append(Job("eval", f"{m.run} steps={k}", cmd, state, str(out), (m.run, k), out / "study_eval.log"))
    return jobs


def write_spec(cfg: StudyConfig, m: ModelSpec, machine: str) -> None:
    """Record the training spec and the machine in the run dir before its training starts."""
    run = cfg.run_dir(m)
    run.mkdir(parents=True, exist_ok=True)
    if not (run / SPEC_FILE).is_file():
        text = json.dumps({"spec": training_spec(cfg, m), "machine": machine, "preset": cfg.preset}, indent=2)
        atomic_write_text(run / SPEC_FILE, text + "\n")


# ---------------------------------------------------------------- aggregation

def study_protocol(cfg: StudyConfig) -> dict[str, Any]:
    """The protocol of the study's evaluations (what :func:`plan_eval`'s commands set): every
    aggregated folder must have been evaluated with it."""
    return {"churn": 0.0, "fast_render": cfg.fast_render, "replan_every": 8, "max_steps": None,
            "wait_steps": NUM_WAIT_STEPS, "noise": cfg.noise, "init_states": cfg.init_states, "xi_scale": cfg.xi_scale}


def aggregate(cfg: StudyConfig) -> dict[str, Path] | None:
    """Stage 4: collect the study's evaluations and write libero.json, the table and the plot
    (None when no evaluation has finished yet)."""
    runs, protocol = collect_results(cfg.suite, {m.run: cfg.eval_dir(m, 1).parent for m in cfg.models()},
                                     expect=study_protocol(cfg), tasks=cfg.evaluated_tasks())
    table = combine_seeds(runs, {m.run: m.name for m in cfg.models()}) if cfg.seeds > 1 else runs
    if not table:  # the loss curves alone, while the evaluations wait
        results = Path(cfg.results)
        write_curves(cfg, results.with_name(f"{results.stem}_{cfg.suite}.md"), append=False)
        return None
    machines = set()
    for m in cfg.models():
        spec = cfg.run_dir(m) / SPEC_FILE
        if spec.is_file():
            machines.add(json.loads(spec.read_text()).get("machine", "unknown"))
    tasks = ("all tasks" if cfg.tasks is None else f"tasks {','.join(map(str, cfg.tasks))}") + (
        f" (evaluated on tasks {','.join(map(str, cfg.eval_tasks))})" if cfg.eval_tasks is not None else "")
    observed = ("object tokens and eef proprio, no cameras (evaluation renders nothing)" if cfg.model == "objects"
                else f"two cameras at {cfg.resolution} px ({'fast' if cfg.fast_render else 'official'} rendering, same "
                     "for evaluation)")
    seeds = f"seed {cfg.seed}" if cfg.seeds == 1 else f"seeds {cfg.seed}-{cfg.seed + cfg.seeds - 1}"
    notes = (f"preset={cfg.preset}: model={cfg.model}, {cfg.train_steps} training steps, {seeds}, "
             f"observation: {observed}, {cfg.demos} scripted demos per task at {cfg.resolution} px"
             + (f" with route modes (every reach and transfer first steps {cfg.detour:g} m left or right, 50/50)"
                if cfg.detour else "")
             + (" with grasp-yaw modes (the hand travels a quarter turn off the grasp axis and turns back "
                "one way or the other above the object, 50/50)" if cfg.yaw_modes else "")
             + (f", tasks {','.join(map(str, cfg.yaw_tasks))} with grasp-yaw modes instead (the hand turns a quarter "
                "turn one way or the other above the object, 50/50; the average grips the box across its wide side)"
                if cfg.yaw_tasks else "") + f", {tasks}, "
             f"up to {cfg.episodes} episodes per task"
             + (f", training overrides {' '.join(cfg.train_overrides)}" if cfg.train_overrides else "")
             + (f", sampler noise {cfg.noise} (eval_rollouts.py --noise)" if cfg.noise != "shared" else "")
             + (f", generator noise xi scaled by {cfg.xi_scale:g} (eval_rollouts.py --xi-scale)" if cfg.xi_scale != 1.0 else "")
             + f"; trained on {'; '.join(sorted(machines)) or 'unknown machine'}")
    starts = ("official init state i" if cfg.init_states == "official" else
              "fresh layout i (seeded by task and episode, used by no demonstration; eval_rollouts.py --init-states fresh)")
    protocol = (f"{protocol}; episode i starts from {starts}; success = successes / episodes "
                f"pooled over the evaluated tasks") if protocol else ""
    paths = write_study_results(cfg.suite, table, cfg.results, protocol, notes, task_groups(cfg))
    return {**paths, **write_curves(cfg, paths["md"])}


def task_groups(cfg: StudyConfig) -> dict[str, list[int]]:
    """The study's tasks by the kind of fork in their demos, when it has two kinds (route forks
    and grasp-yaw forks): where averaging the modes fails (yaw) apart from where it does not."""
    tasks = cfg.evaluated_tasks()
    yaw = [t for t in tasks if t in cfg.yaw_tasks]
    route = [t for t in tasks if t not in cfg.yaw_tasks] if cfg.detour else []
    return {"route-fork tasks": route, "grasp-yaw tasks": yaw} if yaw and route else {}


def write_curves(cfg: StudyConfig, md: Path, append: bool = True) -> dict[str, Path]:
    """The runs' training loss curves beside the table (``<table stem>_loss.png``), their final
    loss and tail drop appended to the table's markdown (``append``; :mod:`envs.study.curves`)."""
    from envs.study.curves import curves_markdown, plot_loss_curves

    models: dict[str, list[Path]] = {}
    for m in cfg.models():
        models.setdefault(m.name, []).append(cfg.run_dir(m))
    if not any((run / "metrics.jsonl").is_file() for runs in models.values() for run in runs):
        return {}
    png = md.with_name(f"{md.stem}_loss.png")
    summary = plot_loss_curves(models, cfg.train_steps, png, f"{cfg.suite} preset={cfg.preset}: training loss")
    if not any(summary.values()):
        return {}
    if append:
        atomic_write_text(md, md.read_text() + "\n" + curves_markdown(summary, png.name))
    return {"loss_png": png}
