"""Benchmark of the training data readers (``scripts/bench_data.py``): peak RSS per rank and
samples/s, the in-RAM reader against the bounded one, on synthetic official-layout data of
1x, 4x and 16x the size of libero_object.

Each (reader, scale, workers) configuration runs in its own process (``python -m
envs.libero.data_bench --child '<json>'``), which opens the data set as a training rank would,
draws ``batches`` batches of random samples through a DataLoader with ``workers`` worker
processes (augmentation on) and reports its own peak resident memory (``VmHWM``: the rank; its
workers are forked from it) and the samples/s after a warm-up. The bounded reader's cache is
built by a separate process first (its time is reported as ``build_s``). The in-RAM reader is
left out at a scale whose frames alone would exceed ``max_ram_gb``. The data sets stay under
``work`` for reruns; each scale's cache is removed once measured.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import h5py
import numpy as np

LIBERO_OBJECT_STEPS = 75_000  # 10 tasks x 50 demos of ~150 steps (the official files)
N_TASKS = 10


def write_data(folder: Path, steps: int, length: int, size: int) -> Path:
    """A suite of ~``steps`` steps in the official layout (gzip: synthetic frames compress well)."""
    if (folder / "done").is_file():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    per_task = max(1, round(steps / length / N_TASKS))
    p = np.linspace(0.0, 1.0, length)
    for task in range(N_TASKS):
        path = folder / f"TASK_{task}_demo.hdf5"
        with h5py.File(path, "w") as f:
            data = f.create_group("data")
            data.attrs["problem_info"] = json.dumps({"problem_name": f"task_{task}", "language_instruction": f"bench task {task}"})
            for d in range(per_task):
                img = np.zeros((length, size, size, 3), np.uint8)
                img[..., task % 3] = 40 + 20 * task
                img[..., (task + 1) % 3] = (d * 7) % 256
                c = (p * (size - 8)).astype(int)
                for k in range(length):
                    img[k, c[k] : c[k] + 8, c[k] : c[k] + 8] = 255
                g = data.create_group(f"demo_{d}")
                g.create_dataset("actions", data=np.stack([np.sin(p * 6 + j + d) for j in range(7)], 1))
                obs = g.create_group("obs")
                for cam in ("agentview_rgb", "eye_in_hand_rgb"):
                    obs.create_dataset(cam, data=img, chunks=(1, size, size, 3), compression="gzip", compression_opts=1)
                obs.create_dataset("joint_states", data=np.stack([p + j for j in range(7)], 1))
                obs.create_dataset("gripper_states", data=np.stack([p, -p], 1))
    (folder / "done").write_text("")
    return folder


def _vm(key: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024.0
    return float("nan")


def child(cfg: dict[str, Any]) -> dict[str, Any]:
    """One configuration, in this process: open the data set, time ``batches`` batches."""
    import torch
    from torch.utils.data import DataLoader

    from envs.libero.data_sources import open_training_data
    from policy.training.loop import EpochBatches

    torch.set_num_threads(1)
    t0 = time.perf_counter()
    ds = open_training_data(cfg["data"], image_size=cfg["image_size"], reader=cfg["reader"], cache_dir=cfg["cache_dir"],
                            progress=False)
    open_s = time.perf_counter() - t0
    if cfg.get("build_only"):
        return {"build_s": open_s, "steps": len(ds)}
    warm = max(2, 2 * cfg["workers"])
    batches = EpochBatches(len(ds), cfg["batch_size"], 0, 0)
    loader = DataLoader(ds, batch_sampler=batches.batches[: warm + cfg["batches"]], num_workers=cfg["workers"])
    start, n = None, 0
    for i, batch in enumerate(loader):
        if i == warm - 1:
            start = time.perf_counter()
        elif i >= warm:
            n += len(batch["actions"])
    rate = n / (time.perf_counter() - start) if start is not None and n else float("nan")
    return {"peak_rss_mb": round(_vm("VmHWM"), 1), "rss_anon_mb": round(_vm("RssAnon"), 1), "open_s": round(open_s, 2),
            "samples_per_s": round(rate, 1), "steps": len(ds)}


def run_child(cfg: dict[str, Any], timeout: float | None = None) -> dict[str, Any]:
    proc = subprocess.run([sys.executable, "-m", "envs.libero.data_bench", "--child", json.dumps(cfg)], capture_output=True,
                          text=True, timeout=timeout)
    lines = [x for x in proc.stdout.splitlines() if x.startswith("{")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"bench child {cfg['reader']} x{cfg.get('scale')} failed: {(proc.stderr.strip().splitlines() or ['?'])[-1]}")
    return json.loads(lines[-1])


def run(work: Path, scales: list[int], workers: list[int], base_steps: int = LIBERO_OBJECT_STEPS, length: int = 150,
        image_size: int = 64, batches: int = 100, batch_size: int = 32, max_ram_gb: float = 16.0,
        log=print) -> dict[str, Any]:
    """Every configuration; returns the detailed results (``to_result`` makes data.json of them)."""
    detail: dict[str, Any] = {"in_ram": {}, "bounded": {}, "build_s": {}, "steps": {}}
    for scale in scales:
        data = write_data(work / f"data_x{scale}", scale * base_steps, length, image_size)
        cache = str(work / "cache")
        common = {"data": str(data), "image_size": image_size, "cache_dir": cache, "batches": batches, "batch_size": batch_size,
                  "scale": scale}
        built = run_child({**common, "reader": "bounded", "workers": 0, "build_only": True})
        detail["build_s"][str(scale)], detail["steps"][str(scale)] = round(built["build_s"], 1), built["steps"]
        frames_gb = built["steps"] * 2 * image_size * image_size * 3 / 1e9
        for reader in ("in_ram", "bounded"):
            if reader == "in_ram" and frames_gb > max_ram_gb:
                log(f"x{scale} in_ram: left out ({frames_gb:.1f} GB of frames > --max-ram-gb {max_ram_gb:g})")
                continue
            for w in workers:
                res = run_child({**common, "reader": "ram" if reader == "in_ram" else "bounded", "workers": w})
                detail[reader].setdefault(str(scale), {})[str(w)] = res
                log(f"x{scale} {reader} workers={w}: {res}")
        shutil.rmtree(cache, ignore_errors=True)  # disk: one scale's cache at a time (16x at 64 px: ~30 GB)
    return detail


def to_result(detail: dict[str, Any], workers: int, machine: str, date: str, config: dict[str, Any]) -> dict[str, Any]:
    """data.json in the issue's format, plus the per-worker-count figures and the settings."""
    pick = lambda reader, key: {s: v[str(workers)][key] for s, v in detail[reader].items() if str(workers) in v}  # noqa: E731
    return {"peak_rss_mb": {"in_ram": pick("in_ram", "peak_rss_mb"), "bounded": pick("bounded", "peak_rss_mb")},
            "samples_per_s": {"in_ram": pick("in_ram", "samples_per_s"), "bounded": pick("bounded", "samples_per_s")},
            "workers": workers, "machine": machine, "date": date,
            "by_workers": {r: detail[r] for r in ("in_ram", "bounded")}, "build_s": detail["build_s"],
            "steps": detail["steps"], "config": config}


if __name__ == "__main__" and len(sys.argv) == 3 and sys.argv[1] == "--child":
    print(json.dumps(child(json.loads(sys.argv[2]))))
