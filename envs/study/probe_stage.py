"""The study's fork-probe stage (``probe_steps=1,2``): what each model samples at the forks of
every task, suite-wide, with :mod:`envs.study.probe_cli` (the route fork on tasks with route modes,
the grasp-yaw fork on ``yaw_tasks``), for the first seed's run of each model.

One job per (model, task, steps) writes ``<eval_root>/<preset>/<suite>/<run>/probe/task<k>_steps<s>.json``
(a rerun skips the written ones); :func:`aggregate_probe` pools them into
``<results stem>_<suite>_probe.md`` and ``.json``: per model, steps and fork kind, the mean over
tasks of the strength (1: the demonstrated sideways motion or turn, 0: the average of the two
modes), of the share of observations where both sides were sampled, and of the agreement with the
demonstration's own side, at the training starts and at held-out starts.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from envs.study.config import ModelSpec, StudyConfig
from envs.study.runner import Job, _py, checkpoint_step
from policy.utils import atomic_write_text

SAMPLES = 8  # chunks drawn per observation


def fork_of(cfg: StudyConfig, task: int) -> str | None:
    """"yaw", "route" or None (the task's demonstrations have no fork)."""
    detour, yaw = cfg.demo_modes(task)
    return "yaw" if yaw else "route" if detour else None


def probed_models(cfg: StudyConfig) -> list[ModelSpec]:
    return [m for m in cfg.models() if m.seed == cfg.seed]


def probe_file(cfg: StudyConfig, m: ModelSpec, task: int, steps: int) -> Path:
    return cfg.eval_dir(m, steps).parent / "probe" / f"task{task}_steps{steps}.json"


def plan_probe(cfg: StudyConfig) -> list[Job]:
    """Stage 4: one probe per (first-seed model, task with a fork, steps); waits for training."""
    jobs = []
    for k in cfg.probe_steps:
        for m in probed_models(cfg):
            run = cfg.run_dir(m)
            trained = checkpoint_step(run) >= cfg.train_steps and (run / "policy" / "config.json").is_file()
            for task in cfg.evaluated_tasks():
                fork = fork_of(cfg, task)
                if fork is None:
                    continue
                out = probe_file(cfg, m, task, k)
                cmd = _py("envs.study.probe_cli") + [
                    "--checkpoint", str(run), "--data", str(Path(cfg.data_root) / cfg.suite), "--suite", cfg.suite,
                    "--task", str(task), "--fork", fork, "--steps", str(k), "--samples", str(SAMPLES),
                    "--out", str(out)] + (["--fast-render"] if cfg.fast_render else [])
                state = "done" if out.is_file() else "run" if trained else "wait"
                jobs.append(Job("probe", f"{m.run} task {task} steps={k}", cmd, state, str(out), (m.run, k),
                                out.with_suffix(".log")))
    return jobs


def _num(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}"


def aggregate_probe(cfg: StudyConfig) -> dict[str, Path]:
    """Pool the written probes (see the module docstring); {} when none is written yet."""
    rows: dict[str, Any] = {}
    for m in probed_models(cfg):
        for k in cfg.probe_steps:
            for task in cfg.evaluated_tasks():
                fork = fork_of(cfg, task)
                path = probe_file(cfg, m, task, k)
                if fork is None or not path.is_file():
                    continue
                p = json.loads(path.read_text())
                cell = rows.setdefault(f"{m.name}|{k}|{fork}", {"model": m.name, "steps": k, "fork": fork, "tasks": []})
                cell["tasks"].append({"task": task, "train": p["train_starts"], "held_out": p["held_out_starts"]})
    if not rows:
        return {}
    table = []
    for cell in rows.values():
        n = len(cell["tasks"])
        mean = lambda where, key: round(sum(t[where][key] for t in cell["tasks"]) / n, 3)  # noqa: E731
        weak = lambda where: (mean(where, "weak") if all("weak" in t[where] for t in cell["tasks"])  # noqa: E731
                              else None)  # probes written before it was measured
        table.append({**{k: cell[k] for k in ("model", "steps", "fork")}, "tasks": sorted(t["task"] for t in cell["tasks"]),
                      "train_strength": mean("train", "strength"), "train_both_sides": mean("train", "both_sides"),
                      "train_agrees_with_demo": mean("train", "agrees_with_demo"),
                      "held_out_strength": mean("held_out", "strength"),
                      "held_out_both_sides": mean("held_out", "both_sides"),
                      "train_weak": weak("train"), "held_out_weak": weak("held_out")})
    table.sort(key=lambda r: (r["fork"], r["steps"], r["model"]))
    stem = Path(cfg.results)
    md, js = stem.with_name(f"{stem.stem}_{cfg.suite}_probe.md"), stem.with_name(f"{stem.stem}_{cfg.suite}_probe.json")
    lines = [f"Fork probe ({cfg.suite}, preset={cfg.preset}, seed {cfg.seed}'s runs, {SAMPLES} chunks per observation; "
             "means over the tasks). Strength: 1 = the demonstrated sideways step or turn, 0 = the average of the two "
             "modes; weak: share of draws under half the demonstrated size (averaged draws); both sides: share of "
             "observations where both were sampled.", "",
             "| fork | steps | model | tasks | strength (train / held out) | weak (train / held out) "
             "| both sides (train / held out) | agrees with demo |", "|---|---:|---|---|---:|---:|---:|---:|"]
    for r in table:
        lines.append(f"| {r['fork']} | {r['steps']} | {r['model']} | {','.join(map(str, r['tasks']))} "
                     f"| {r['train_strength']:.2f} / {r['held_out_strength']:.2f} "
                     f"| {_num(r['train_weak'])} / {_num(r['held_out_weak'])} "
                     f"| {r['train_both_sides']:.2f} / {r['held_out_both_sides']:.2f} | {r['train_agrees_with_demo']:.2f} |")
    atomic_write_text(md, "\n".join(lines) + "\n")
    atomic_write_text(js, json.dumps({"cells": table, "samples": SAMPLES, "seed": cfg.seed}, indent=2) + "\n")
    return {"probe_md": md, "probe_json": js}
