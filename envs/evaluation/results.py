"""Evaluation bookkeeping: the episode JSONL log (append + resume), the record of what
produced a result folder (``eval_config.json``: the weights' identity, steps, churn and
protocol; checked on every resume and by the study's aggregation), success rates with 95%
Wilson intervals, the results JSON, the markdown table and the plots."""

from __future__ import annotations

import hashlib
import json
import math
import os
import statistics
from pathlib import Path
from typing import Any, Iterable

from policy.utils import atomic_write, atomic_write_text

EPISODES_FILE = "episodes.jsonl"
RESULTS_JSON = "results.json"
RESULTS_MD = "results.md"
RESULTS_PNG = "results.png"


def wilson_interval(successes: int, n: int, z: float = 1.959963984540054) -> tuple[float, float]:
    """95% Wilson score interval (lo, hi) of a binomial proportion; (0, 1) when n == 0.
    lo is exactly 0 when nothing succeeded and hi exactly 1 when everything did (rounding
    would otherwise put the rate a hair outside its own interval)."""
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    den = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / den
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    return (0.0 if successes == 0 else max(0.0, centre - half)), (1.0 if successes == n else min(1.0, centre + half))


RUN_CONFIG_FILE = "eval_config.json"  # the record of what produced a result folder
PROTOCOL_KEYS = ("steps", "churn", "replan_every", "resolution", "fast_render", "max_steps", "wait_steps")
"""How the episodes of a folder were run: must match on resume and across the cells of a study."""
RESUME_KEYS = (*PROTOCOL_KEYS, "seed", "policy", "producer")
"""What must match for a rerun to add episodes to a folder (``producer``: what made the actions)."""


def file_sha256(path: str | os.PathLike, block: int = 1 << 20) -> str:
    """sha256 of a file's bytes, read in 1 MiB blocks (weights files may be large)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(block):
            h.update(chunk)
    return h.hexdigest()


def weights_identity(policy_dir: str | os.PathLike) -> dict[str, Any]:
    """What produced a trained policy's actions: ``{"kind": "checkpoint", "path", "train_step",
    "weights_sha256"}`` of a pretrained policy dir (config.json + model.safetensors) or a
    training run dir (its ``policy/``). ``train_step`` is config.json's ``train_step`` (None for
    checkpoints saved before it was recorded); the hash is over model.safetensors' bytes."""
    root = Path(policy_dir)
    if not (root / "model.safetensors").is_file() and (root / "policy" / "model.safetensors").is_file():
        root = root / "policy"
    weights = root / "model.safetensors"
    if not weights.is_file():
        raise FileNotFoundError(f"{policy_dir}: no model.safetensors (need a pretrained policy dir or a run dir with policy/)")
    step = None
    try:
        step = json.loads((root / "config.json").read_text()).get("train_step")
    except (OSError, ValueError, AttributeError):
        pass
    return {"kind": "checkpoint", "path": str(root.resolve()), "train_step": None if step is None else int(step),
            "weights_sha256": file_sha256(weights)}


def describe_producer(producer: dict[str, Any] | None) -> str:
    """``checkpoint step 300, weights sha256 1a2b3c4d5e6f`` and the like, for one-line messages."""
    if not producer:
        return "an unrecorded policy"
    if producer.get("kind") in ("checkpoint", "training"):  # a saved checkpoint, or weights in a training run
        step = producer.get("train_step")
        sha = producer.get("weights_sha256")
        return f"{producer['kind']} {'step ' + str(step) if step is not None else 'of unrecorded step'}" + (
            f", weights sha256 {str(sha)[:12]}" if sha else "")
    extra = f", sha256 {str(producer['sha256'])[:12]}" if producer.get("sha256") else ""
    return f"{producer.get('kind', 'policy')} {producer.get('path', '')}".strip() + extra


def read_run_record(folder: str | os.PathLike) -> dict[str, Any] | None:
    """The folder's ``eval_config.json`` (None when it has none); one-line ValueError if unreadable."""
    path = Path(folder) / RUN_CONFIG_FILE
    if not path.is_file():
        return None
    try:
        rec = json.loads(path.read_text(encoding="utf-8"))
    except ValueError:
        raise ValueError(f"{path} is not valid JSON; delete {folder} to start that evaluation afresh") from None
    if not isinstance(rec, dict):
        raise ValueError(f"{path} is not an evaluation record; delete {folder} to start that evaluation afresh")
    return rec


def same_producer(a: dict[str, Any] | None, b: dict[str, Any] | None) -> bool:
    """Two producers are the same when all but their ``path`` agree (a moved checkpoint is the same one)."""
    return {k: v for k, v in (a or {}).items() if k != "path"} == {k: v for k, v in (b or {}).items() if k != "path"}


def differing_keys(old: dict[str, Any], now: dict[str, Any], keys: Iterable[str]) -> list[str]:
    """The keys whose recorded value in ``old`` differs from ``now`` (a key the record lacks
    counts as differing: the record cannot vouch for it; producers compare by :func:`same_producer`)."""
    return [k for k in keys if k not in old or
            (not same_producer(old[k], now.get(k)) if k == "producer" else old[k] != now.get(k))]


def record_differences(old: dict[str, Any], now: dict[str, Any], keys: Iterable[str]) -> list[str]:
    """``["steps=2 (now 4)", ...]`` for the :func:`differing_keys`."""
    out = []
    for k in differing_keys(old, now, keys):
        if k == "producer":
            out.append(f"the actions of {describe_producer(old.get(k))} (now {describe_producer(now.get(k))})")
        else:
            was = repr(old[k]) if k in old else "unrecorded"
            out.append(f"{k}={was} (now {now.get(k)!r})")
    return out


def check_resume_record(folder: str | os.PathLike, now: dict[str, Any], has_episodes: bool) -> None:
    """Refuse to add episodes to ``folder`` when they would be mixed with episodes made
    otherwise: ``now`` (the run's :data:`RESUME_KEYS`) against the folder's record. One-line
    ValueError naming the folder, what differs and the fix; a folder without episodes is free."""
    if not has_episodes:
        return
    old = read_run_record(folder)
    if old is None:
        raise ValueError(f"{folder} holds episodes but no {RUN_CONFIG_FILE} saying what made them; "
                         f"use a new --out or delete {folder}")
    diff = record_differences(old, now, RESUME_KEYS)
    if diff:
        raise ValueError(f"{folder} holds episodes made with {'; '.join(diff)}; use a new --out or delete {folder}")


def append_episode(path: str | os.PathLike, record: dict[str, Any]) -> None:
    """Append one finished episode as a JSON line, flushed and fsynced immediately."""
    line = json.dumps(record, sort_keys=True) + "\n"
    with open(path, "a", encoding="utf-8") as f:
        f.write(line)
        f.flush()
        os.fsync(f.fileno())


def load_episodes(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Finished episodes of a (possibly interrupted) run. A torn last line, left by a
    crash in the middle of a write, is ignored; its episode will be run again."""
    p = Path(path)
    if not p.exists():
        return []
    out = []
    for line in p.read_text(encoding="utf-8").splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(rec, dict) and {"suite", "task_index", "episode", "success"} <= rec.keys():
            out.append(rec)
    return out


def repair_episode_log(path: str | os.PathLike) -> int:
    """Drop unreadable lines (a torn last line left by a crash) so that appends start on
    a fresh line; atomic rewrite. Returns the number of lines dropped."""
    p = Path(path)
    if not p.exists():
        return 0
    lines = p.read_text(encoding="utf-8").splitlines()
    good = [ln for ln in lines if _readable(ln)]
    if len(good) != len(lines) or not p.read_text(encoding="utf-8").endswith("\n") and lines:
        atomic_write_text(p, "".join(ln + "\n" for ln in good))
    return len(lines) - len(good)


def _readable(line: str) -> bool:
    try:
        rec = json.loads(line)
    except json.JSONDecodeError:
        return False
    return isinstance(rec, dict) and {"suite", "task_index", "episode", "success"} <= rec.keys()


def episode_key(rec: dict[str, Any]) -> tuple[str, int, int]:
    return str(rec["suite"]), int(rec["task_index"]), int(rec["episode"])


def summarize(episodes: Iterable[dict[str, Any]], task_names: dict[tuple[str, int], str]) -> dict[str, Any]:
    """Per task and per suite success rates (with 95% Wilson intervals), mean and
    median of the per-task rates (the paper reports the median), episode lengths."""
    by_task: dict[tuple[str, int], dict[int, dict[str, Any]]] = {}
    for rec in episodes:  # the last record of an episode wins
        by_task.setdefault((rec["suite"], int(rec["task_index"])), {})[int(rec["episode"])] = rec
    suites: dict[str, Any] = {}
    for (suite, ti), eps in sorted(by_task.items()):
        recs = list(eps.values())
        n, s = len(recs), sum(bool(r["success"]) for r in recs)
        lo, hi = wilson_interval(s, n)
        ok_len = [r["length"] for r in recs if r["success"]]
        task = {
            "task_index": ti,
            "name": task_names.get((suite, ti), ""),
            "episodes": n,
            "successes": s,
            "success_rate": s / n,
            "ci95": [lo, hi],
            "errors": sum(r.get("error") is not None for r in recs),
            "mean_length": statistics.fmean(r["length"] for r in recs),
            "mean_success_length": statistics.fmean(ok_len) if ok_len else None,
            "outcomes": count_outcomes(recs),
        }
        suites.setdefault(suite, {"tasks": []})["tasks"].append(task)
    for suite, d in suites.items():
        tasks = d["tasks"]
        n = sum(t["episodes"] for t in tasks)
        s = sum(t["successes"] for t in tasks)
        rates = [t["success_rate"] for t in tasks]
        d.update(
            episodes=n,
            successes=s,
            success_rate=s / n,
            ci95=list(wilson_interval(s, n)),
            mean_over_tasks=statistics.fmean(rates),
            median_over_tasks=statistics.median(rates),
            errors=sum(t["errors"] for t in tasks),
            outcomes=merge_outcomes(t["outcomes"] for t in tasks),
        )
    all_rates = [t["success_rate"] for d in suites.values() for t in d["tasks"]]
    n = sum(d["episodes"] for d in suites.values())
    s = sum(d["successes"] for d in suites.values())
    return {
        "suites": suites,
        "overall": {
            "episodes": n,
            "successes": s,
            "success_rate": s / n if n else 0.0,
            "ci95": list(wilson_interval(s, n)),
            "mean_over_tasks": statistics.fmean(all_rates) if all_rates else 0.0,
            "median_over_tasks": statistics.median(all_rates) if all_rates else 0.0,
        },
    }


def count_outcomes(recs: Iterable[dict[str, Any]]) -> dict[str, int] | None:
    """Episodes per outcome label (``envs.evaluation.outcome.OUTCOMES`` order), or None when no
    record has one (logs written before outcomes were recorded)."""
    from envs.evaluation.outcome import OUTCOMES

    labels = [r["outcome"] for r in recs if r.get("outcome") is not None]
    if not labels:
        return None
    return {k: labels.count(k) for k in (*OUTCOMES, *sorted(set(labels) - set(OUTCOMES))) if k in labels}


def merge_outcomes(parts: Iterable[dict[str, int] | None]) -> dict[str, int] | None:
    """Sum of per-task outcome counts (None parts skipped; None when all are)."""
    out: dict[str, int] = {}
    for part in parts:
        for k, v in (part or {}).items():
            out[k] = out.get(k, 0) + v
    return out or None


def failure_text(outcomes: dict[str, int] | None) -> str:
    """``missed_grasp 8, dropped 3``: the failed episodes by outcome, most first ('-' if none / unknown)."""
    fails = sorted(((v, k) for k, v in (outcomes or {}).items() if k != "success"), key=lambda x: -x[0])
    return ", ".join(f"{k} {v}" for v, k in fails) or "-"


def markdown_table(summary: dict[str, Any], title: str = "") -> str:
    """Per-suite and per-task success rates as a markdown table (percent, 95% Wilson CI)."""
    pct = lambda x: f"{100 * x:.1f}"  # noqa: E731
    lines = [f"### {title}\n" if title else ""]
    lines += ["| suite | episodes | success % | 95% CI | mean over tasks % | median over tasks % | errors |",
              "|---|---:|---:|---:|---:|---:|---:|"]
    for suite, d in summary["suites"].items():
        lines.append(f"| {suite} | {d['episodes']} | {pct(d['success_rate'])} | {pct(d['ci95'][0])}-{pct(d['ci95'][1])} "
                     f"| {pct(d['mean_over_tasks'])} | {pct(d['median_over_tasks'])} | {d['errors']} |")
    o = summary["overall"]
    lines.append(f"| **all** | {o['episodes']} | {pct(o['success_rate'])} | {pct(o['ci95'][0])}-{pct(o['ci95'][1])} "
                 f"| {pct(o['mean_over_tasks'])} | {pct(o['median_over_tasks'])} | |")
    lines += ["", "| suite | task | name | episodes | success % | 95% CI | mean length | failures |",
              "|---|---:|---|---:|---:|---:|---:|---|"]
    for suite, d in summary["suites"].items():
        for t in d["tasks"]:
            lines.append(f"| {suite} | {t['task_index']} | {t['name']} | {t['episodes']} | {pct(t['success_rate'])} "
                         f"| {pct(t['ci95'][0])}-{pct(t['ci95'][1])} | {t['mean_length']:.0f} "
                         f"| {failure_text(t.get('outcomes'))} |")
    return "\n".join(lines) + "\n"


def plot_results(summary: dict[str, Any], path: str | os.PathLike, title: str = "") -> None:
    """Bar chart of per-task success rates with 95% Wilson error bars, one panel per suite."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    suites = list(summary["suites"].items())
    fig, axes = plt.subplots(1, max(1, len(suites)), figsize=(3.2 * max(1, len(suites)), 3.0), squeeze=False)
    for ax, (suite, d) in zip(axes[0], suites):
        x = [t["task_index"] for t in d["tasks"]]
        y = [t["success_rate"] for t in d["tasks"]]
        err = [[max(0.0, t["success_rate"] - t["ci95"][0]) for t in d["tasks"]],
               [max(0.0, t["ci95"][1] - t["success_rate"]) for t in d["tasks"]]]
        ax.bar(x, y, yerr=err, capsize=2, color="tab:blue", alpha=0.8)
        ax.axhline(d["median_over_tasks"], color="tab:red", lw=1, label=f"median {100 * d['median_over_tasks']:.0f}%")
        ax.set_ylim(0, 1.05)
        ax.set_title(suite, fontsize=9)
        ax.set_xlabel("task")
        ax.legend(fontsize=7, loc="upper right")
    axes[0][0].set_ylabel("success rate")
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    save_figure(fig, path)


def plot_steps_sweep(points: dict[int, dict[str, Any]], path: str | os.PathLike) -> None:
    """Success rate (median over tasks, with the pooled 95% CI band) against sampler
    steps, one line per suite: the paper's Figure 9."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = sorted(points)
    suites = sorted({s for p in points.values() for s in p["suites"]})
    fig, ax = plt.subplots(figsize=(4.5, 3.2))
    for suite in suites:
        xs = [k for k in steps if suite in points[k]["suites"]]
        med = [points[k]["suites"][suite]["median_over_tasks"] for k in xs]
        lo = [points[k]["suites"][suite]["ci95"][0] for k in xs]
        hi = [points[k]["suites"][suite]["ci95"][1] for k in xs]
        (line,) = ax.plot(xs, med, marker="o", label=suite)
        ax.fill_between(xs, lo, hi, color=line.get_color(), alpha=0.15)
    ax.set_xscale("log", base=2)
    ax.set_xticks(steps, [str(k) for k in steps])
    ax.set_xlabel("sampler steps (NFE)")
    ax.set_ylabel("success rate (median over tasks)")
    ax.set_ylim(0, 1.05)
    ax.legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, path)


def save_figure(fig: Any, path: str | os.PathLike, dpi: int = 120) -> None:
    """Save a matplotlib figure atomically (temp file + rename) and close it."""
    import matplotlib.pyplot as plt

    try:
        atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=dpi, format=Path(path).suffix.lstrip(".") or None))
    finally:
        plt.close(fig)


def write_results(out_dir: str | os.PathLike, summary: dict[str, Any], title: str = "") -> None:
    """results.json, results.md and results.png in ``out_dir`` (atomic writes)."""
    out = Path(out_dir)
    atomic_write_text(out / RESULTS_JSON, json.dumps(summary, indent=2) + "\n")
    atomic_write_text(out / RESULTS_MD, markdown_table(summary, title))
    plot_results(summary, out / RESULTS_PNG, title)
