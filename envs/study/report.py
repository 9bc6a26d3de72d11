"""Aggregation of the LIBERO study: evaluation results -> libero.json, a markdown table
with 95% Wilson intervals, and a PNG of success rate against sampler steps.

Pure functions of files written by ``envs.evaluation.harness`` (no simulator, no training); used by
``envs.study.runner.aggregate`` and the tests.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from envs.evaluation.results import PROTOCOL_KEYS, RUN_CONFIG_FILE, describe_producer, read_run_record, same_producer, save_figure
from policy.utils import atomic_write_text


class StudyError(ValueError):
    """A bad study option or an inconsistent output folder (one line, names the fix)."""


# model -> str(steps) -> {"success", "episodes"[, "success_length"][, "outcomes"][, "tasks": {task: [successes, episodes]}]
#                          [, "seeds", "seed_spread", "seed_success" (several seeds)]}
Table = dict[str, dict[str, dict[str, Any]]]
JSON_KEYS = ("success", "episodes")  # what libero.json keeps of a cell (issue 8's format)
SEED_KEYS = ("seeds", "seed_spread")  # and, for a several-seed study, these


def _cell_record(folder: Path, steps: int, res: dict[str, Any]) -> dict[str, Any]:
    """The record of how ``<model>/steps_<k>/`` was evaluated (its eval_config.json), checked
    against the folder's name and its results.json; one-line StudyError naming the fix."""
    try:
        rec = read_run_record(folder)
    except ValueError as exc:
        raise StudyError(str(exc)) from None
    if rec is None:
        raise StudyError(f"{folder} has results but no {RUN_CONFIG_FILE} saying how they were made; "
                         f"delete {folder} and rerun the study to evaluate it again")
    rec = {"noise": "shared", "init_states": "official", "xi_scale": 1.0, **rec}  # recorded only when not the default
    config = res.get("config", {})
    for got in (rec.get("steps"), config.get("steps")):
        if got is None or int(got) != steps:
            raise StudyError(f"{folder} holds results of steps={got}, not {steps}; "
                             f"move them to {folder.parent / f'steps_{got}'} or delete {folder}")
    for k in PROTOCOL_KEYS:
        if k in config and config[k] != rec.get(k):
            raise StudyError(f"{folder}: results.json says {k}={config[k]!r} but {RUN_CONFIG_FILE} {k}={rec.get(k)!r}; "
                             f"delete {folder} and rerun the study to evaluate it again")
    return rec


def collect_results(suite: str, eval_dirs: dict[str, Path], expect: dict[str, Any] | None = None,
                    tasks: list[int] | None = None) -> tuple[Table, str]:
    """Read ``<dir>/steps_<k>/results.json`` (as envs/evaluation/harness.py writes them) for each model.

    Args: eval_dirs maps a model name (starting with ``energy`` or ``mse``) to its folder;
    expect: protocol values (of :data:`envs.evaluation.results.PROTOCOL_KEYS`) every folder must
    have been evaluated with; tasks: count these tasks only (a folder may hold more: a study
    evaluated on a subset of its tasks shares the full evaluation's folders).
    Returns (table, protocol): success = successes / episodes pooled over the suite's
    evaluated tasks; success_length (when any episode succeeded) = the mean length in env
    steps of the successful episodes, pooled the same way (a policy that hesitates at a
    fork succeeds later); outcomes (when the episodes recorded them) = episodes per outcome
    label (``envs.evaluation.outcome``); protocol is the harness's own protocol line ("" if nothing found).
    Raises StudyError (one line: the folder, what differs, the fix) when a folder's recorded
    evaluation (eval_config.json) is of another step count than its name, differs from
    ``expect`` or from the other folders in churn, resolution or protocol, or when the step
    counts of one model come from different checkpoints: nothing is merged or relabelled.
    """
    table: Table = {}
    protocol = ""
    first: tuple[Path, dict[str, Any]] | None = None  # the folder the others' protocol is compared with
    for name, folder in eval_dirs.items():
        if not name.startswith(("energy", "mse")):
            raise StudyError(f"model name {name!r} must start with 'energy' or 'mse'")
        cells = [p for p in Path(folder).glob("steps_*/results.json") if p.parent.name[6:].isdigit()]
        producer: tuple[Path, dict[str, Any]] | None = None
        for path in sorted(cells, key=lambda p: int(p.parent.name[6:])):
            res = json.loads(path.read_text())
            d = res["suites"].get(suite)
            if d is not None and tasks is not None:
                d = _only_tasks(d, tasks)
            if d is None or not d["episodes"]:
                continue
            steps = int(path.parent.name[6:])
            rec = _cell_record(path.parent, steps, res)
            for k, v in (expect or {}).items():
                if rec.get(k, "unrecorded") != v:
                    raise StudyError(f"{path.parent} was evaluated with {k}={rec.get(k, 'unrecorded')!r} but the study "
                                     f"evaluates with {k}={v!r}; delete {path.parent} and rerun the study")
            if first is None:
                first = (path.parent, rec)
            for k in [k for k in PROTOCOL_KEYS if k != "steps"]:
                if rec.get(k, "unrecorded") != first[1].get(k, "unrecorded"):
                    raise StudyError(f"{path.parent} was evaluated with {k}={rec.get(k, 'unrecorded')!r} but {first[0]} "
                                     f"with {k}={first[1].get(k, 'unrecorded')!r}; one table needs one protocol: "
                                     f"delete the odd folder and rerun the study")
            if rec.get("producer"):
                if producer is None:
                    producer = (path.parent, rec["producer"])
                elif not same_producer(producer[1], rec["producer"]):
                    raise StudyError(f"{path.parent} holds rollouts of {describe_producer(rec['producer'])} but {producer[0]} "
                                     f"of {describe_producer(producer[1])}; the step counts of {name} must come from one "
                                     f"checkpoint: delete the stale folder and rerun the study")
            cell: dict[str, Any] = {"success": d["successes"] / d["episodes"], "episodes": int(d["episodes"])}
            ok = [(t["successes"], t["mean_success_length"]) for t in d.get("tasks", []) if t.get("mean_success_length")]
            if ok:
                cell["success_length"] = sum(n * length for n, length in ok) / sum(n for n, _ in ok)
            if d.get("outcomes"):
                cell["outcomes"] = d["outcomes"]
            if d.get("tasks"):
                cell["tasks"] = {str(t["task_index"]): [int(t["successes"]), int(t["episodes"])] for t in d["tasks"]}
            table.setdefault(name, {})[str(steps)] = cell
            protocol = protocol or str(res.get("protocol", ""))
    return table, protocol


def _only_tasks(d: dict[str, Any], tasks: list[int]) -> dict[str, Any]:
    """A suite's results (results.json's ``suites[suite]``) reduced to ``tasks``: the pooled
    counts and outcomes summed again from the per-task entries."""
    kept = [t for t in d.get("tasks", []) if int(t["task_index"]) in tasks]
    if len(kept) == len(d.get("tasks", [])):
        return d
    outcomes: dict[str, int] = {}
    for t in kept:
        for label, n in (t.get("outcomes") or {}).items():
            outcomes[label] = outcomes.get(label, 0) + int(n)
    return {"tasks": kept, "episodes": sum(int(t["episodes"]) for t in kept),
            "successes": sum(int(t["successes"]) for t in kept), **({"outcomes": outcomes} if outcomes else {})}


def combine_seeds(runs: Table, model_of: dict[str, str]) -> Table:
    """Rows of single runs (run name -> cells) -> one row per model (``model_of[run]``): success =
    the mean over its seeds of each seed's success, episodes pooled over the seeds, ``seeds``, the
    ``seed_spread`` (max minus min over the seeds) and the per-seed ``seed_success``; the mean
    length of successful episodes weighted by successes; the outcome counts summed."""
    grouped: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for run, row in runs.items():
        for k, cell in row.items():
            grouped.setdefault(model_of[run], {}).setdefault(k, []).append(cell)
    table: Table = {}
    for name, row in grouped.items():
        for k, cells in sorted(row.items(), key=lambda kv: int(kv[0])):
            rates = [float(c["success"]) for c in cells]
            out: dict[str, Any] = {"success": sum(rates) / len(rates), "episodes": sum(int(c["episodes"]) for c in cells),
                                   "seeds": len(cells), "seed_spread": max(rates) - min(rates), "seed_success": rates}
            wins = [(c["success"] * c["episodes"], c["success_length"]) for c in cells if "success_length" in c]
            if sum(n for n, _ in wins) > 0:
                out["success_length"] = sum(n * length for n, length in wins) / sum(n for n, _ in wins)
            if any("outcomes" in c for c in cells):
                outcomes: dict[str, int] = {}
                for c in cells:
                    for label, n in c.get("outcomes", {}).items():
                        outcomes[label] = outcomes.get(label, 0) + int(n)
                out["outcomes"] = outcomes
            if any("tasks" in c for c in cells):
                tasks: dict[str, list[int]] = {}
                for c in cells:
                    for t, (wins, n) in c.get("tasks", {}).items():
                        tasks[t] = [a + b for a, b in zip(tasks.get(t, [0, 0]), (wins, n))]
                out["tasks"] = tasks
            table.setdefault(name, {})[k] = out
    return table


def _ci(entry: dict[str, Any]) -> tuple[float, float]:
    from envs.evaluation.results import wilson_interval

    n = int(entry["episodes"])
    return wilson_interval(round(float(entry["success"]) * n), n)


def markdown_table(suite: str, table: Table, groups: dict[str, list[int]] | None = None) -> str:
    """Models x steps: success % with the 95% Wilson interval and the episode count, plus
    the comparisons of issue 8 computed from the same numbers; ``groups`` (a name -> task
    indices, e.g. the route-fork and the grasp-yaw tasks) adds the success pooled over each."""
    steps = sorted({int(k) for row in table.values() for k in row})
    head = ["| model | " + " | ".join(f"{k} step{'s' * (k > 1)}" for k in steps) + " |", "|---|" + "---:|" * len(steps)]
    seeded = any("seeds" in e for row in table.values() for e in row.values())
    title = (f"### {suite}: success rate (%) against sampler steps: mean over seeds, 95% Wilson interval of the pooled "
             "episodes, episodes, seed spread (max - min, points)\n" if seeded else
             f"### {suite}: success rate (%) against sampler steps, 95% Wilson interval, episodes\n")
    lines = [title, *head]
    for name, row in table.items():
        cells = []
        for k in steps:
            e = row.get(str(k))
            lo, hi = _ci(e) if e else (0.0, 0.0)
            spread = f" ({e['seeds']} seeds, spread {100 * e['seed_spread']:.0f})" if e and "seeds" in e else ""
            cells.append(f"{100 * e['success']:.1f} [{100 * lo:.0f}-{100 * hi:.0f}] n={e['episodes']}{spread}" if e else "-")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    energy = {n: r for n, r in table.items() if n.startswith("energy")}
    mse = next((r for n, r in table.items() if n.startswith("mse")), None)
    if energy and mse:
        lines.append("")
        for k in ("1", "2"):
            vals = {n: r[k]["success"] for n, r in energy.items() if k in r}
            if vals and k in mse:
                best = max(vals, key=vals.__getitem__)
                lines.append(f"- {k} step{'s' * (k != '1')}: best energy model {best} minus mse = "
                             f"{100 * (vals[best] - mse[k]['success']):+.1f} points")
        at2 = {n: r["2"]["success"] for n, r in energy.items() if "2" in r}
        if at2 and "16" in mse:
            best = max(at2, key=at2.__getitem__)
            lines.append(f"- best energy model at 2 steps ({best}) minus mse at 16 steps = "
                         f"{100 * (at2[best] - mse['16']['success']):+.1f} points")
    if any("success_length" in e for row in table.values() for e in row.values()):
        lines += ["", "Mean length of the successful episodes (env steps; hesitation shows as a longer episode):", "", *head]
        for name, row in table.items():
            cells = [f"{row[str(k)]['success_length']:.0f}" if "success_length" in row.get(str(k), {}) else "-" for k in steps]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
    if any("outcomes" in e for row in table.values() for e in row.values()):
        from envs.evaluation.results import failure_text

        lines += ["", "Failed episodes by outcome (envs/evaluation/outcome.py; '?' = not recorded by that evaluation):", "", *head]
        for name, row in table.items():
            cells = [failure_text(row[str(k)]["outcomes"]) if "outcomes" in row.get(str(k), {}) else "?" for k in steps]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines + group_lines(table, steps, groups or {}) + task_lines(table, steps)) + "\n"


def group_lines(table: Table, steps: list[int], groups: dict[str, list[int]]) -> list[str]:
    """Success % [95% Wilson] of each model and step count pooled over each group of tasks."""
    from envs.evaluation.results import wilson_interval

    if not groups or not any("tasks" in e for row in table.values() for e in row.values()):
        return []
    lines = ["", "Success (%) by kind of task, episodes pooled over the tasks and seeds: "
             + "; ".join(f"{g}: tasks {','.join(map(str, ts))}" for g, ts in groups.items()), "",
             "| model | steps | " + " | ".join(groups) + " |", "|---|---:|" + "---:|" * len(groups)]
    for name, row in table.items():
        for k in steps:
            per = row.get(str(k), {}).get("tasks", {})
            if not per:
                continue
            cells = []
            for ts in groups.values():
                wins = sum(per[str(t)][0] for t in ts if str(t) in per)
                n = sum(per[str(t)][1] for t in ts if str(t) in per)
                lo, hi = wilson_interval(wins, n) if n else (0.0, 0.0)
                cells.append(f"{100 * wins / n:.1f} [{100 * lo:.0f}-{100 * hi:.0f}] n={n}" if n else "-")
            lines.append(f"| {name} | {k} | " + " | ".join(cells) + " |")
    return lines


def task_lines(table: Table, steps: list[int]) -> list[str]:
    """Per task: success % of each (model, steps) on each task, its episodes pooled over the
    seeds (where a model's gain or loss comes from; nothing when only one task was evaluated)."""
    tasks = sorted({t for row in table.values() for e in row.values() for t in e.get("tasks", {})}, key=int)
    if len(tasks) < 2:
        return []
    lines = ["", "Success (%) per task, episodes pooled over the seeds:", "",
             "| model | steps | " + " | ".join(f"task {t}" for t in tasks) + " |", "|---|---:|" + "---:|" * len(tasks)]
    for name, row in table.items():
        for k in steps:
            per = row.get(str(k), {}).get("tasks", {})
            if per:
                cells = [f"{100 * per[t][0] / per[t][1]:.0f}" if per.get(t, [0, 0])[1] else "-" for t in tasks]
                lines.append(f"| {name} | {k} | " + " | ".join(cells) + " |")
    return lines


def plot_success_vs_steps(suite: str, table: Table, path: str | Path) -> None:
    """Success rate against sampler steps (log2 axis), one line per model with 95% Wilson
    error bars (dodged a little along x), each seed's success as a small mark when there are
    several; energy models solid, the MSE model dashed (paper Fig. 9). Atomic write."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.0, 3.4))
    all_steps: set[int] = set()
    for i, (name, row) in enumerate(table.items()):
        ks = sorted(int(k) for k in row)
        all_steps |= set(ks)
        dodge = 2 ** (0.05 * (i - (len(table) - 1) / 2))  # small x offset so equal points stay visible
        ys = [float(row[str(k)]["success"]) for k in ks]
        cis = [_ci(row[str(k)]) for k in ks]
        err = [[max(0.0, y - lo) for y, (lo, _) in zip(ys, cis)], [max(0.0, hi - y) for y, (_, hi) in zip(ys, cis)]]
        line = ax.errorbar([k * dodge for k in ks], ys, yerr=err, marker="o", capsize=3, label=name,
                           ls="--" if name.startswith("mse") else "-")
        seeds = [(k * dodge, v) for k in ks for v in row[str(k)].get("seed_success", [])]
        if seeds:  # each seed's own success, small marks around the mean
            ax.scatter(*zip(*seeds), s=9, marker="_", color=line[0].get_color(), zorder=3)
    ax.set_xscale("log", base=2)
    ax.set_xticks(sorted(all_steps), [str(k) for k in sorted(all_steps)])
    ax.set_xlabel("sampler steps (NFE)")
    ax.set_ylabel("success rate")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title(f"{suite} (95% Wilson intervals)", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, path)


def write_study_results(suite: str, table: Table, results_json: str | Path, protocol: str, notes: str,
                        groups: dict[str, list[int]] | None = None) -> dict[str, Path]:
    """Merge ``table`` into ``results_json`` as ``{suite: table, "protocol": ..., "notes": ...}``
    (other suites are kept; notes hold one ``<suite>: ...`` line per suite) and write
    ``<stem>_<suite>.md`` and ``<stem>_<suite>.png`` beside it. Returns the three paths."""
    path = Path(results_json)
    data: dict[str, Any] = json.loads(path.read_text()) if path.is_file() else {}
    old_notes = [ln for ln in str(data.get("notes", "")).split("\n") if ln and not ln.startswith(f"{suite}:")]
    data[suite] = {name: {k: {key: e[key] for key in (*JSON_KEYS, *SEED_KEYS) if key in e} for k, e in row.items()}
                   for name, row in table.items()}
    data["protocol"] = protocol or data.get("protocol", "")
    data["notes"] = "\n".join(sorted(old_notes + [f"{suite}: {notes}"]))
    suites = {k: data[k] for k in sorted(data) if k not in ("protocol", "notes")}
    atomic_write_text(path, json.dumps({**suites, "protocol": data["protocol"], "notes": data["notes"]}, indent=2) + "\n")
    md, png = path.with_name(f"{path.stem}_{suite}.md"), path.with_name(f"{path.stem}_{suite}.png")
    atomic_write_text(md, markdown_table(suite, table, groups) + f"\nProtocol: {data['protocol']}\n\nNotes: {notes}\n")
    plot_success_vs_steps(suite, table, png)
    return {"json": path, "md": md, "png": png}


