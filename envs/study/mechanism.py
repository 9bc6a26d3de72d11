"""The study's mechanism report (``record_chunks=true``): what the rollouts did at the forks,
from the chunks every evaluation saved, pooled over the seeds of each model.

- **Grasps** (tasks with grasp-yaw modes, :mod:`envs.study.grasps`): per model and sampler
  steps, how many episodes grasped in a demonstrated mode (committed), between the two
  (averaged) or never, and how many of each succeeded; per task, the averaged share.
- **Switching** (:mod:`envs.study.switching`): per kind of task (route forks, grasp-yaw forks),
  reversals between consecutive chunks and gripper flips per episode, with the same counts in
  the demonstrations of those tasks as the baseline.

Only finished evaluations count (a seed still running is left out, and the table says how
many seeds each row pools). Written to ``<results stem>_<suite>_mechanism.md`` and ``.json``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from envs.study import grasps, switching
from envs.study.config import StudyConfig
from envs.study.runner import demo_file, eval_finished, task_groups
from policy.utils import atomic_write_json, atomic_write_text


def finished_folders(cfg: StudyConfig) -> dict[tuple[str, int], list[Path]]:
    """{(model name, steps): the finished evaluation folders of its seeds}, in the study's order."""
    out: dict[tuple[str, int], list[Path]] = {}
    for k in cfg.eval_steps:
        for m in cfg.models():
            if eval_finished(cfg, m, k):
                out.setdefault((m.name, k), []).append(cfg.eval_dir(m, k))
    return out


def grasp_cells(cfg: StudyConfig, folders: dict[tuple[str, int], list[Path]]) -> dict[str, Any]:
    """Grasps of the grasp-yaw tasks: {"demos": {task: row}, "cells": [...]} (empty without yaw tasks)."""
    tasks = [t for t in cfg.evaluated_tasks() if t in cfg.yaw_tasks]
    modes, demos = {}, {}
    for t in tasks:
        modes[t], demos[t] = grasps.demo_summary(demo_file(cfg, t))
    cells = []
    for (name, k), dirs in folders.items():
        per_task = {t: grasps.summarize([r for d in dirs for r in grasps.episode_rows(d, t, modes[t])]) for t in tasks}
        pooled = {kind: {key: sum(s[kind][key] for s in per_task.values()) for key in ("episodes", "successes")}
                  for kind in ("committed", "averaged", "none")}
        cells.append({"model": name, "steps": k, "seeds": len(dirs), "tasks": {str(t): s for t, s in per_task.items()},
                      "episodes": sum(s["episodes"] for s in per_task.values()), **pooled})
    return {"demos": {str(t): d for t, d in demos.items()}, "cells": cells} if tasks else {}


def switching_cells(cfg: StudyConfig, folders: dict[tuple[str, int], list[Path]]) -> dict[str, Any]:
    """Reversals per kind of task: {group: {"demos": summary, "cells": [...]}}."""
    groups = task_groups(cfg) or {"evaluated tasks": cfg.evaluated_tasks()}
    rows = {key: [r for d in dirs for r in switching.eval_rows(d)] for key, dirs in folders.items()}
    out = {}
    for group, tasks in groups.items():
        demo_rows = [r for t in tasks for r in switching.demo_rows(demo_file(cfg, t))]
        cells = [{"model": name, "steps": k, "seeds": len(folders[(name, k)]),
                  **switching.summarize(r for r in rows[(name, k)] if r["task"] in tasks)} for name, k in folders]
        out[group] = {"tasks": tasks, "demos": switching.summarize(demo_rows), "cells": cells}
    return out


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.0f}%"


def markdown(cfg: StudyConfig, grasp: dict[str, Any], switch: dict[str, Any]) -> str:
    seeds = f"seed {cfg.seed}" if cfg.seeds == 1 else f"seeds {cfg.seed}-{cfg.seed + cfg.seeds - 1}"
    lines = [f"Mechanism ({cfg.suite}, preset={cfg.preset}, {seeds}; the rollouts' recorded chunks, pooled over "
             "the finished seeds of each model)."]
    if grasp:
        tasks = list(grasp["demos"])
        lines += ["", f"Grasps on the grasp-yaw tasks {','.join(tasks)}: the yaw at the first gripper close against "
                  "the demonstrations' two modes (committed: under 45 degrees from one; averaged: 45 or more; 90 is "
                  "their average). Successes in brackets.", "",
                  "| steps | model | seeds | episodes | committed (succ.) | averaged (succ.) | no grasp "
                  f"| averaged, task {' / '.join(tasks)} |", "|---:|---|---:|---:|---:|---:|---:|---:|"]
        for c in sorted(grasp["cells"], key=lambda c: c["steps"]):
            per = " / ".join(str(c["tasks"][t]["averaged"]["episodes"]) for t in tasks)
            lines.append(f"| {c['steps']} | {c['model']} | {c['seeds']} | {c['episodes']} "
                         f"| {c['committed']['episodes']} ({c['committed']['successes']}) "
                         f"| {c['averaged']['episodes']} ({c['averaged']['successes']}) "
                         f"| {c['none']['episodes']} | {per} |")
        demos = ", ".join(f"task {t}: median {d['median_yaw_error_deg']} deg, {d['mean_closes']} closes"
                          for t, d in grasp["demos"].items())
        lines += ["", f"Demonstrations: {demos}."]
    for group, g in switch.items():
        lines += ["", f"Switching on the {group} ({','.join(map(str, g['tasks']))}): reversals between consecutive "
                  "chunks (the heads of two chunks turning or stepping opposite ways) and gripper flips per "
                  "episode; the demonstrations cut into chunks the same way are the baseline.", "",
                  "| steps | model | seeds | episodes | yaw rev./100 pairs | planar rev./100 pairs "
                  "| success with / without reversal | gripper flips / episode |", "|---:|---|---:|---:|---:|---:|---:|---:|"]
        d = g["demos"]
        lines.append(f"| - | demonstrations | - | {d['episodes']} | {d['yaw_reversals_per_100_pairs']} "
                     f"| {d['planar_reversals_per_100_pairs']} | - | {d['gripper_flips_per_episode']} |")
        for c in sorted(g["cells"], key=lambda c: c["steps"]):
            lines.append(f"| {c['steps']} | {c['model']} | {c['seeds']} | {c['episodes']} "
                         f"| {c['yaw_reversals_per_100_pairs']} | {c['planar_reversals_per_100_pairs']} "
                         f"| {_pct(c['success_with_reversal'])} / {_pct(c['success_without_reversal'])} "
                         f"| {c['gripper_flips_per_episode']} |")
    return "\n".join(lines) + "\n"


def aggregate_mechanism(cfg: StudyConfig) -> dict[str, Path]:
    """Write the mechanism report (see the module docstring); {} without recorded chunks or
    before any evaluation finished."""
    if not cfg.record_chunks:
        return {}
    folders = finished_folders(cfg)
    if not folders:
        return {}
    grasp, switch = grasp_cells(cfg, folders), switching_cells(cfg, folders)
    stem = Path(cfg.results)
    md = stem.with_name(f"{stem.stem}_{cfg.suite}_mechanism.md")
    js = md.with_suffix(".json")
    atomic_write_text(md, markdown(cfg, grasp, switch))
    atomic_write_json(js, {"grasps": grasp, "switching": switch})
    return {"mechanism_md": md, "mechanism_json": js}
