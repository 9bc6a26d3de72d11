"""Official-layout HDF5 demonstrations -> a LeRobot dataset (v3.0, LeRobot's current layout, or
v2.1, the layout of older LeRobot releases such as openpi's), written with pyarrow and the
ffmpeg of imageio-ffmpeg so that LeRobot's own ``LeRobotDataset`` loads it.

Per frame (every demo step, after ``process_observation``: images upright, as the policy sees
them, optionally resized): ``observation.images.agentview_rgb`` and
``observation.images.eye_in_hand_rgb`` (video), ``observation.state`` (the ``state`` layout:
joints = joint_states + gripper_states (9), eef = ee_pos + ee_ori + gripper_states (8)), each
state feature on its own (``observation.joint_states``, ``observation.gripper_states``,
``observation.ee_pos``, ``observation.ee_ori``: so a policy of either layout trains from it),
``action`` (7), and LeRobot's ``timestamp``, ``frame_index``, ``episode_index``, ``index``,
``task_index``. The task is the file's instruction. Statistics per episode and for the whole
dataset (min, max, mean, std, count; images per channel in [0, 1]). The folder is built beside
``out`` and renamed into place when complete.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from envs.libero.dataset import find_hdf5_files, iter_demo_file
from envs.libero.lerobot_read import V2_DATA_PATH, V2_VIDEO_PATH, V3_DATA_PATH, V3_VIDEO_PATH, pyarrow_parquet
from envs.libero.video import CODECS, DEFAULT_CODEC, VideoWriter
from policy.features import DEFAULT_FEATURES, PROPRIO_LAYOUTS, all_layouts

CHUNKS_SIZE = 1000  # files per chunk folder (LeRobot's default)
ACTION_NAMES = ["x", "y", "z", "roll", "pitch", "yaw", "gripper"]
INDEX_FEATURES = {"timestamp": "float32", "frame_index": "int64", "episode_index": "int64", "index": "int64",
                  "task_index": "int64"}


def _vec_stats(x: np.ndarray) -> dict[str, Any]:
    x = x.astype(np.float64).reshape(len(x), -1)
    return {"min": x.min(0).tolist(), "max": x.max(0).tolist(), "mean": x.mean(0).tolist(), "std": x.std(0).tolist(),
            "count": [len(x)]}


def _image_stats(frames: np.ndarray) -> dict[str, Any]:
    x = frames.reshape(-1, 3).astype(np.float64) / 255.0
    shape = lambda v: [[[float(c)]] for c in v]  # noqa: E731  (3, 1, 1), as LeRobot keeps them
    return {"min": shape(x.min(0)), "max": shape(x.max(0)), "mean": shape(x.mean(0)), "std": shape(x.std(0)),
            "count": [len(frames)]}


def _pool(stats: list[dict[str, Any]]) -> dict[str, Any]:
    """Episodes' stats -> the dataset's (count-weighted mean, pooled std)."""
    n = np.array([s["count"][0] for s in stats], float)
    mean = np.array([s["mean"] for s in stats], float)
    var = np.array([s["std"] for s in stats], float) ** 2
    w = (n / n.sum()).reshape(-1, *([1] * (mean.ndim - 1)))
    total = (w * mean).sum(0)
    return {"min": np.min([s["min"] for s in stats], 0).tolist(), "max": np.max([s["max"] for s in stats], 0).tolist(),
            "mean": total.tolist(), "std": np.sqrt((w * (var + (mean - total) ** 2)).sum(0)).tolist(), "count": [int(n.sum())]}


def _tasks_table(tasks: dict[str, int]):
    """meta/tasks.parquet as pandas writes a DataFrame indexed by the task text (what LeRobot reads)."""
    import pyarrow as pa

    meta = {"index_columns": ["__index_level_0__"],
            "column_indexes": [{"name": None, "field_name": None, "pandas_type": "unicode", "numpy_type": "object",
                                "metadata": {"encoding": "UTF-8"}}],
            "columns": [{"name": "task_index", "field_name": "task_index", "pandas_type": "int64", "numpy_type": "int64",
                         "metadata": None},
                        {"name": None, "field_name": "__index_level_0__", "pandas_type": "unicode", "numpy_type": "object",
                         "metadata": None}],
            "creator": {"library": "pyarrow", "version": pa.__version__}, "pandas_version": "2.2.3"}
    table = pa.table({"task_index": pa.array(list(tasks.values()), pa.int64()),
                      "__index_level_0__": pa.array(list(tasks), pa.string())})
    return table.replace_schema_metadata({b"pandas": json.dumps(meta).encode()})


def _frame_table(cols: dict[str, list], features: dict[str, Any]):
    import pyarrow as pa

    arrays = {}
    for key, values in cols.items():
        dtype = features[key]["dtype"]
        if key in INDEX_FEATURES:
            arrays[key] = pa.array(np.concatenate(values), pa.float32() if dtype == "float32" else pa.int64())
        else:
            flat = np.concatenate(values).astype(np.float32)
            arrays[key] = pa.FixedSizeListArray.from_arrays(pa.array(flat.reshape(-1)), flat.shape[1])
    return pa.table(arrays)


class _Writer:
    """The folder being written: data files, videos, per-episode metadata."""

    def __init__(self, root: Path, version: str, fps: float, codec: str, state: str, per_file: int) -> None:
        self.root, self.version, self.fps, self.codec, self.per_file = root, version, fps, codec, per_file
        self.pq = pyarrow_parquet()
        self.state_feats = PROPRIO_LAYOUTS[state]
        self.cameras = DEFAULT_FEATURES.image_keys
        self.features: dict[str, Any] = {}
        self.tasks: dict[str, int] = {}
        self.episodes: list[dict[str, Any]] = []
        self.frames = 0
        self.cols: dict[str, list] = {}
        self.videos: dict[str, VideoWriter] = {}
        self.file = (-1, -1)
        self.file_frames = 0

    def _declare(self, demo, obs: dict[str, np.ndarray]) -> None:
        h, w = demo.images[self.cameras[0]].shape[1:3]
        for cam in self.cameras:
            self.features[f"observation.images.{cam}"] = {
                "dtype": "video", "shape": [h, w, 3], "names": ["height", "width", "channels"],
                "info": {"video.height": h, "video.width": w, "video.codec": CODECS[self.codec], "video.pix_fmt": "yuv420p",
                         "video.is_depth_map": False, "video.fps": self.fps, "video.channels": 3, "has_audio": False}}
        names = [f"{f.name}_{i}" for f in self.state_feats for i in range(f.size)]
        self.features["observation.state"] = {"dtype": "float32", "shape": [len(names)], "names": names}
        for key, arr in obs.items():
            self.features[key] = {"dtype": "float32", "shape": [arr.shape[1]], "names": None}
        self.features["action"] = {"dtype": "float32", "shape": [len(ACTION_NAMES)], "names": ACTION_NAMES}
        self.features.update({k: {"dtype": d, "shape": [1], "names": None} for k, d in INDEX_FEATURES.items()})

    def add(self, demo, fields: dict[str, np.ndarray]) -> None:
        e, t = len(self.episodes), len(demo.actions)
        obs = {f"observation.{name}": np.asarray(v, np.float32) for name, v in fields.items()}
        if not self.features:
            self._declare(demo, obs)
        task = self.tasks.setdefault(demo.language, len(self.tasks))
        cols = {"observation.state": np.concatenate([fields[f.name] for f in self.state_feats], axis=1).astype(np.float32),
                **obs, "action": demo.actions.astype(np.float32), "timestamp": (np.arange(t) / self.fps).astype(np.float32),
                "frame_index": np.arange(t), "episode_index": np.full(t, e), "index": np.arange(self.frames, self.frames + t),
                "task_index": np.full(t, task)}
        stats = {k: _vec_stats(v) for k, v in cols.items()}
        row: dict[str, Any] = {"episode_index": e, "tasks": [demo.language], "length": t}
        chunk, file = divmod(e // self.per_file, CHUNKS_SIZE) if self.version == "v3.0" else (e // CHUNKS_SIZE, e)
        if (chunk, file) != self.file:
            self._flush()
            self.file, self.file_frames = (chunk, file), 0
        for key, v in cols.items():
            self.cols.setdefault(key, []).append(v)
        for cam in self.cameras:
            key, frames = f"observation.images.{cam}", demo.images[cam]
            stats[key] = _image_stats(frames)
            if key not in self.videos:
                path = self.root / (V3_VIDEO_PATH.format(video_key=key, chunk_index=chunk, file_index=file) if self.version == "v3.0"
                                    else V2_VIDEO_PATH.format(episode_chunk=chunk, video_key=key, episode_index=e))
                path.parent.mkdir(parents=True, exist_ok=True)
                self.videos[key] = VideoWriter(path, self.fps, self.codec)
            self.videos[key].add(frames)
            row.update({f"videos/{key}/chunk_index": chunk, f"videos/{key}/file_index": file,
                        f"videos/{key}/from_timestamp": self.file_frames / self.fps,
                        f"videos/{key}/to_timestamp": (self.file_frames + t) / self.fps})
        row.update({"data/chunk_index": chunk, "data/file_index": file, "dataset_from_index": self.frames,
                    "dataset_to_index": self.frames + t, "meta/episodes/chunk_index": 0, "meta/episodes/file_index": 0})
        row["stats"] = stats
        self.episodes.append(row)
        self.frames += t
        self.file_frames += t

    def _flush(self) -> None:
        if not self.cols:
            return
        chunk, file = self.file
        path = self.root / (V3_DATA_PATH.format(chunk_index=chunk, file_index=file) if self.version == "v3.0"
                            else V2_DATA_PATH.format(episode_chunk=chunk, episode_index=file))
        path.parent.mkdir(parents=True, exist_ok=True)
        self.pq.write_table(_frame_table(self.cols, self.features), path, compression="snappy")
        for writer in self.videos.values():
            writer.close()
        self.cols, self.videos = {}, {}

    def finish(self, robot_type: str) -> None:
        self._flush()
        meta = self.root / "meta"
        meta.mkdir(parents=True, exist_ok=True)
        stats = {k: _pool([ep["stats"][k] for ep in self.episodes]) for k in self.episodes[0]["stats"]}
        info = {"codebase_version": self.version, "robot_type": robot_type, "total_episodes": len(self.episodes),
                "total_frames": self.frames, "total_tasks": len(self.tasks)}
        if self.version == "v3.0":
            self.pq.write_table(_tasks_table(self.tasks), meta / "tasks.parquet")
            import pyarrow as pa

            rows = [{**{k: v for k, v in ep.items() if k != "stats"},
                     **{f"stats/{k}/{s}": v for k, st in ep["stats"].items() for s, v in st.items()}} for ep in self.episodes]
            (meta / "episodes" / "chunk-000").mkdir(parents=True, exist_ok=True)
            self.pq.write_table(pa.Table.from_pylist(rows), meta / "episodes" / "chunk-000" / "file-000.parquet")
            info.update({"chunks_size": CHUNKS_SIZE, "data_files_size_in_mb": 100, "video_files_size_in_mb": 200,
                         "fps": self.fps, "splits": {"train": f"0:{len(self.episodes)}"}, "data_path": V3_DATA_PATH,
                         "video_path": V3_VIDEO_PATH})
        else:
            lines = lambda rows: "".join(json.dumps(r) + "\n" for r in rows)  # noqa: E731
            (meta / "tasks.jsonl").write_text(lines({"task_index": i, "task": t} for t, i in self.tasks.items()))
            (meta / "episodes.jsonl").write_text(lines({"episode_index": ep["episode_index"], "tasks": ep["tasks"],
                                                        "length": ep["length"]} for ep in self.episodes))
            (meta / "episodes_stats.jsonl").write_text(lines({"episode_index": ep["episode_index"], "stats": ep["stats"]}
                                                             for ep in self.episodes))
            info.update({"total_videos": len(self.episodes) * len(self.cameras),
                         "total_chunks": (len(self.episodes) - 1) // CHUNKS_SIZE + 1, "chunks_size": CHUNKS_SIZE,
                         "fps": self.fps, "splits": {"train": f"0:{len(self.episodes)}"}, "data_path": V2_DATA_PATH,
                         "video_path": V2_VIDEO_PATH})
        info["features"] = self.features
        (meta / "stats.json").write_text(json.dumps(stats, indent=2))
        (meta / "info.json").write_text(json.dumps(info, indent=4))


def convert_hdf5_to_lerobot(folders: str | Path | Sequence[str | Path], out: str | Path, version: str = "v3.0",
                            fps: float = 20, codec: str = DEFAULT_CODEC, image_size: int | None = None, state: str = "joints",
                            robot_type: str = "panda", episodes_per_file: int = 500, progress: bool = True) -> Path:
    """Write the demos of official-layout HDF5 folders as the LeRobot dataset ``out`` (see module doc)."""
    out = Path(out)
    if version not in ("v2.1", "v3.0"):
        raise ValueError(f"version {version!r}: write v3.0 (LeRobot >= 0.4) or v2.1 (older LeRobot, openpi)")
    if state not in PROPRIO_LAYOUTS:
        raise ValueError(f"state {state!r} is not a proprio layout; use one of {', '.join(PROPRIO_LAYOUTS)}")
    if codec not in CODECS:
        raise ValueError(f"video codec {codec!r} is not one of {', '.join(CODECS)}")
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out} exists and is not empty; choose a new folder (the converter does not append)")
    files = find_hdf5_files(folders)
    spec = all_layouts(DEFAULT_FEATURES)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    writer = _Writer(tmp, version, float(fps) if float(fps) != int(fps) else int(fps), codec, state, max(1, episodes_per_file))
    try:
        for path in tqdm(files, desc="converting", unit="file", disable=not progress):
            for demo in iter_demo_file(path, image_size, spec):
                fields = {f.name: demo.proprio[:, i : i + f.size] for f, i in zip(spec.states, np.cumsum(
                    [0] + [g.size for g in spec.states]))}
                writer.add(demo, fields)
        writer.finish(robot_type)
        if out.exists():
            out.rmdir()
        os.rename(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out
