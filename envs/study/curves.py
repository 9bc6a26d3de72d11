"""Training loss curves of a study's runs: one panel per model (the energy and MSE losses have
other scales), each seed's curve smoothed, and how far each run still was from converged.

A run's curve is its ``metrics.jsonl`` (``step``, ``loss``; written by the training loop every
``log_every`` steps; a resumed run's lines for the same step are read once, the last one kept).
Convergence is read from the last half: ``tail_drop`` is the relative fall of the mean loss from
the third quarter of the run to the fourth ((q3 - q4) / q3): near 0 the loss has flattened, a few
percent means it was still falling when training stopped.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from policy.utils import atomic_write_bytes


def read_curve(run: Path) -> tuple[np.ndarray, np.ndarray]:
    """(steps, losses) of a run dir's metrics.jsonl, sorted by step (empty arrays when none)."""
    path = Path(run) / "metrics.jsonl"
    by_step: dict[int, float] = {}
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                rec = json.loads(line)
                by_step[int(rec["step"])] = float(rec["loss"])
            except (ValueError, KeyError, TypeError):
                continue  # a torn last line of a killed run
    steps = np.array(sorted(by_step), dtype=np.int64)
    return steps, np.array([by_step[s] for s in steps], dtype=np.float64)


def smooth(y: np.ndarray, window: int) -> np.ndarray:
    """Running mean over ``window`` points (shorter at the start)."""
    if len(y) == 0 or window <= 1:
        return y
    c = np.cumsum(np.insert(y, 0, 0.0))
    idx = np.arange(1, len(y) + 1)
    lo = np.maximum(idx - window, 0)
    return (c[idx] - c[lo]) / (idx - lo)


def convergence(steps: np.ndarray, loss: np.ndarray, total: int) -> dict[str, Any]:
    """``final`` (mean loss over the last tenth of ``total`` steps), ``tail_drop`` (see the module
    docstring) and ``steps`` (the last logged step); None values before the run's last half."""
    last = int(steps[-1]) if len(steps) else 0
    out: dict[str, Any] = {"steps": last, "final": None, "tail_drop": None}
    if last < total // 2 or len(steps) < 8:
        return out
    q3 = loss[(steps > 0.5 * last) & (steps <= 0.75 * last)]
    q4 = loss[steps > 0.75 * last]
    tail = loss[steps > 0.9 * last]
    out["final"] = round(float(tail.mean()), 5)
    if len(q3) and len(q4):
        out["tail_drop"] = round(float((q3.mean() - q4.mean()) / abs(q3.mean())), 4)
    return out


def plot_loss_curves(models: dict[str, list[Path]], total: int, png: str | Path, title: str) -> dict[str, list[dict]]:
    """One panel per model name (its seeds' runs ``models[name]``), written to ``png`` atomically;
    returns ``{name: [convergence(...) per run]}``. Runs without metrics are left out."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(models)
    fig, axes = plt.subplots(1, max(len(names), 1), figsize=(4.2 * max(len(names), 1), 3.4), squeeze=False)
    summary: dict[str, list[dict]] = {}
    for ax, name in zip(axes[0], names):
        summary[name] = []
        positive = True
        for run in models[name]:
            steps, loss = read_curve(run)
            if not len(steps):
                continue
            positive = positive and bool((loss > 0).all())
            window = max(1, len(loss) // 40)
            ax.plot(steps, smooth(loss, window), lw=1.2, label=Path(run).name)
            summary[name].append({"run": Path(run).name, **convergence(steps, loss, total)})
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("training step")
        ax.set_yscale("log" if positive else "symlog")
        ax.grid(alpha=0.3)
        if summary[name]:
            ax.legend(fontsize=7)
        else:
            ax.text(0.5, 0.5, "not trained yet", transform=ax.transAxes, ha="center", va="center", color="grey")
    axes[0][0].set_ylabel("training loss (running mean)")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    Path(png).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(png, buf.getvalue())
    return summary


def curves_markdown(summary: dict[str, list[dict]], png_name: str) -> str:
    """A short table of each run's final loss and tail drop, under a link to the figure."""
    lines = [f"Training loss curves: [{png_name}]({png_name}). final = mean loss over the last tenth of the run; "
             "tail drop = relative fall of the mean loss from its third quarter to its fourth (near 0: flat).", "",
             "| run | steps | final loss | tail drop |", "|---|---:|---:|---:|"]
    for name, runs in summary.items():
        for r in runs:
            drop = "-" if r["tail_drop"] is None else f"{100 * r['tail_drop']:.1f}%"
            final = "-" if r["final"] is None else f"{r['final']:.4g}"
            lines.append(f"| {name} / {r['run']} | {r['steps']} | {final} | {drop} |")
    return "\n".join(lines) + "\n"
