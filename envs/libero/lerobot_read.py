"""LeRobot datasets (v2.0, v2.1 and v3.0 layouts) -> the demonstrations training reads.

A LeRobot dataset is a folder (``meta/info.json`` marks it)::

    v3.0  meta/info.json, meta/stats.json, meta/tasks.parquet (task_index, indexed by the task text),
          meta/episodes/chunk-000/file-000.parquet (episode_index, length, tasks, data/chunk_index,
          data/file_index, dataset_from_index, videos/<key>/{chunk_index,file_index,from_timestamp,...})
          data/chunk-000/file-000.parquet (many episodes per file), videos/<key>/chunk-000/file-000.mp4
    v2.x  meta/info.json, meta/episodes.jsonl, meta/tasks.jsonl, meta/episodes_stats.jsonl (v2.1),
          data/chunk-000/episode_000000.parquet, videos/chunk-000/<key>/episode_000000.mp4

Read with pyarrow (the optional extra ``lerobot``) and the ffmpeg of imageio-ffmpeg
(``envs.libero.video``). Each episode becomes a ``Demo``: the policy's cameras from the dataset's
image or video features (taken as stored: upright, as the policy sees them; resized to
``image_size``), the proprio vector from its state features, the actions, the episode's task as
the instruction. ``resolve_features`` maps names (``LEROBOT_ALIASES`` and
``data.lerobot_features``) and refuses, in one line naming the feature and the fix, a dataset
without one of the policy's cameras, with another state or action size, or another frame rate.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from envs.libero.dataset import Demo, _resize
from envs.libero.video import decode_frames, decode_image
from policy.features import FeatureSpec, describe_state

VERSIONS = ("v2.0", "v2.1", "v3.0")
V2_DATA_PATH = "data/chunk-{episode_chunk:03d}/episode_{episode_index:06d}.parquet"
V2_VIDEO_PATH = "videos/chunk-{episode_chunk:03d}/{video_key}/episode_{episode_index:06d}.mp4"
V3_DATA_PATH = "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
V3_VIDEO_PATH = "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"
# dataset keys tried for each policy feature (ours first, then the names of published LIBERO sets)
LEROBOT_ALIASES: dict[str, tuple[str, ...]] = {
    "agentview_rgb": ("observation.images.agentview_rgb", "observation.images.image", "observation.images.agentview", "image"),
    "eye_in_hand_rgb": ("observation.images.eye_in_hand_rgb", "observation.images.wrist_image", "observation.images.image2",
                        "wrist_image"),
    "state": ("observation.state", "state"),
    "action": ("action", "actions"),
}


class LeRobotError(ValueError):
    """A LeRobot dataset that cannot be read, or does not fit the policy (one line)."""


def pyarrow_parquet():
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise LeRobotError("LeRobot datasets need pyarrow: pip install -e '.[lerobot]' (or pip install pyarrow)") from None
    return pq


def is_lerobot(folder: str | Path) -> bool:
    return (Path(folder) / "meta" / "info.json").is_file()


@dataclass
class Episode:
    index: int
    length: int
    data_file: Path
    videos: dict[str, tuple[Path, float]] = field(default_factory=dict)  # key -> (mp4, first timestamp in it)


@dataclass
class LeRobotMeta:
    root: Path
    version: str
    fps: float
    features: dict[str, Any]
    tasks: dict[int, str]
    episodes: list[Episode]


def _jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        raise LeRobotError(f"{path} is missing; the LeRobot dataset is incomplete")
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def load_meta(root: str | Path) -> LeRobotMeta:
    """The dataset's info, tasks and episodes (which data and video file holds each)."""
    root = Path(root)
    info_path = root / "meta" / "info.json"
    if not info_path.is_file():
        raise LeRobotError(f"{root} is not a LeRobot dataset (no meta/info.json)")
    info = json.loads(info_path.read_text())
    version = str(info.get("codebase_version", ""))
    if version not in VERSIONS:
        raise LeRobotError(f"{info_path}: codebase_version {version!r} is not one of {', '.join(VERSIONS)}; convert it "
                           "with LeRobot's conversion scripts")
    feats = info["features"]
    videos = [k for k, f in feats.items() if f.get("dtype") == "video"]
    pq = pyarrow_parquet()
    episodes = []
    if version == "v3.0":
        t = pq.read_table(root / "meta" / "tasks.parquet").to_pydict()
        text = t.get("task") or t.get("__index_level_0__") or []
        tasks = {int(i): str(s) for i, s in zip(t["task_index"], text)}
        for path in sorted((root / "meta" / "episodes").glob("*/*.parquet")):
            rows = pq.read_table(path).to_pylist()
            for r in rows:
                ep = Episode(int(r["episode_index"]), int(r["length"]), root / info["data_path"].format(
                    chunk_index=r["data/chunk_index"], file_index=r["data/file_index"]))
                for key in videos:
                    ep.videos[key] = (root / info["video_path"].format(video_key=key, chunk_index=r[f"videos/{key}/chunk_index"],
                                      file_index=r[f"videos/{key}/file_index"]), float(r[f"videos/{key}/from_timestamp"]))
                episodes.append(ep)
    else:
        tasks = {int(r["task_index"]): str(r["task"]) for r in _jsonl(root / "meta" / "tasks.jsonl")}
        size = int(info.get("chunks_size", 1000))
        for r in _jsonl(root / "meta" / "episodes.jsonl"):
            i = int(r["episode_index"])
            where = {"episode_chunk": i // size, "episode_index": i}
            ep = Episode(i, int(r["length"]), root / info["data_path"].format(**where))
            for key in videos:
                ep.videos[key] = (root / info["video_path"].format(video_key=key, **where), 0.0)
            episodes.append(ep)
    if not episodes:
        raise LeRobotError(f"{root} holds no episodes")
    episodes.sort(key=lambda e: e.index)
    return LeRobotMeta(root, version, float(info["fps"]), feats, tasks, episodes)


@dataclass
class FeatureMap:
    """Dataset keys of the policy's cameras, of its proprio vector (concatenated in order) and of the action."""

    cameras: dict[str, str]
    state: list[str]
    action: str


def _first(feats: Mapping[str, Any], names: Sequence[str]) -> str | None:
    return next((n for n in names if n in feats), None)


def _size(feats: Mapping[str, Any], key: str) -> int:
    return int(np.prod(feats[key]["shape"]))


def resolve_features(meta: LeRobotMeta, spec: FeatureSpec, mapping: Mapping[str, str] | None = None,
                     fps: float | None = None) -> FeatureMap:
    """Which dataset key feeds each policy feature; one-line LeRobotError when one does not fit."""
    feats, mapping, where = meta.features, dict(mapping or {}), f"LeRobot dataset {meta.root}"
    unknown = sorted(set(mapping) - set(spec.image_keys) - {"state", "action"})
    if unknown:
        raise LeRobotError(f"data.lerobot_features names {unknown}, which are not features of this policy; use "
                           f"{', '.join([*spec.image_keys, 'state', 'action'])}")
    for name, key in mapping.items():
        if key not in feats:
            raise LeRobotError(f"data.lerobot_features.{name}={key!r} is not a feature of the {where}; it has "
                               f"{', '.join(sorted(feats))}")
    if spec.objects:
        raise LeRobotError(f"object-token policies (model.objects=true) read object poses, which the {where} does not "
                           "carry; train them from official-layout HDF5 folders")
    if fps is not None and abs(meta.fps - fps) > 1e-6:
        raise LeRobotError(f"the {where} records fps {meta.fps:g}, not data.fps={fps:g} (the rate the policy's 8-step "
                           f"chunks are timed at); resample it to {fps:g} fps, or set data.fps={meta.fps:g} to train at its rate")
    cameras = {}
    images = sorted(k for k, f in feats.items() if f.get("dtype") in ("video", "image"))
    for cam in spec.image_keys:
        key = mapping.get(cam) or _first(feats, LEROBOT_ALIASES.get(cam, (f"observation.images.{cam}",)))
        if key is None or feats[key].get("dtype") not in ("video", "image"):
            raise LeRobotError(f"the {where} has no camera for the policy's {cam} (its cameras: {', '.join(images) or 'none'}); "
                               f"map one with data.lerobot_features.{cam}=<key>, or train a policy without {cam} (model.cameras)")
        cameras[cam] = key
    states = [f"observation.{f.name}" for f in spec.states]
    if "state" in mapping or not all(s in feats for s in states):
        key = mapping.get("state") or _first(feats, LEROBOT_ALIASES["state"])
        if key is None:
            raise LeRobotError(f"the {where} has no state feature (observation.state) for the policy's proprio; map one "
                               "with data.lerobot_features.state=<key>")
        if _size(feats, key) != spec.state_dim:
            raise LeRobotError(f"{key} of the {where} has {_size(feats, key)} values; the policy's proprio is "
                               f"{describe_state(spec)}: choose the matching model.proprio (joints 9, eef 8) or map another "
                               "feature with data.lerobot_features.state=<key>")
        states = [key]
    action = mapping.get("action") or _first(feats, LEROBOT_ALIASES["action"])
    if action is None:
        raise LeRobotError(f"the {where} has no action feature (action); map one with data.lerobot_features.action=<key>")
    if _size(feats, action) != spec.action.shape[-1]:
        raise LeRobotError(f"{action} of the {where} has {_size(feats, action)} values per step; the policy's actions have "
                           f"{spec.action.shape[-1]} (model.action_dim): set model.action_dim={_size(feats, action)} or "
                           "convert the actions")
    return FeatureMap(cameras, states, action)


class _VideoCursor:
    """Sequential reader of one camera's video files (episodes are stored in order)."""

    def __init__(self) -> None:
        self.path: Path | None = None
        self.frames: Iterator[np.ndarray] | None = None
        self.pos = 0

    def take(self, path: Path, start: int, n: int, what: str) -> np.ndarray:
        if path != self.path or start < self.pos:
            self.path, self.frames, self.pos = path, decode_frames(path), 0
        out = []
        for frame in self.frames:
            if self.pos >= start:
                out.append(frame)
            self.pos += 1
            if len(out) == n:
                return np.stack(out)
        raise LeRobotError(f"{path} ends after {self.pos} frames; {what} needs frames {start}..{start + n - 1}")


def iter_demos(meta: LeRobotMeta, fmap: FeatureMap, image_size: int | None = None) -> Iterator[Demo]:
    """The episodes as ``Demo``s, one at a time (memory: one episode and one data file)."""
    pq = pyarrow_parquet()
    cursors = {cam: _VideoCursor() for cam in fmap.cameras}
    image_cols = [k for k in fmap.cameras.values() if meta.features[k].get("dtype") == "image"]
    columns = sorted({"episode_index", "task_index", fmap.action, *fmap.state, *image_cols})
    loaded: tuple[Path, dict[int, dict[str, list]]] | None = None
    for ep in meta.episodes:
        if loaded is None or loaded[0] != ep.data_file:
            if not ep.data_file.is_file():
                raise LeRobotError(f"{ep.data_file} is missing (episode {ep.index}); the LeRobot dataset is incomplete")
            table = pq.read_table(ep.data_file, columns=columns).to_pydict()
            by_ep: dict[int, dict[str, list]] = {}
            for row, e in enumerate(table["episode_index"]):
                cols = by_ep.setdefault(int(e), {c: [] for c in columns})
                for c in columns:
                    cols[c].append(table[c][row])
            loaded = (ep.data_file, by_ep)
        rows = loaded[1].get(ep.index)
        what = f"{meta.root.name} episode {ep.index}"
        if rows is None or len(rows["episode_index"]) != ep.length:
            got = 0 if rows is None else len(rows["episode_index"])
            raise LeRobotError(f"{ep.data_file} holds {got} rows of episode {ep.index}, its metadata says {ep.length}")
        images = {}
        for cam, key in fmap.cameras.items():
            if key in image_cols:
                frames = np.stack([decode_image(v["bytes"] if isinstance(v, dict) else v) for v in rows[key]])
            else:
                path, t0 = ep.videos[key]
                frames = cursors[cam].take(path, int(round(t0 * meta.fps)), ep.length, what)
            if image_size is not None and frames.shape[1:3] != (image_size, image_size):
                frames = _resize(frames, image_size)
            images[cam] = frames
        proprio = np.concatenate([np.asarray(rows[k], np.float32).reshape(ep.length, -1) for k in fmap.state], axis=1)
        actions = np.asarray(rows[fmap.action], np.float32).reshape(ep.length, -1)
        if not (np.isfinite(actions).all() and np.isfinite(proprio).all()):
            raise LeRobotError(f"{what} holds non-finite actions or states")
        task = meta.tasks.get(int(rows["task_index"][0]))
        if not task:
            raise LeRobotError(f"{what}: task_index {rows['task_index'][0]} is not in the dataset's tasks")
        yield Demo(images, proprio, actions, task, f"{meta.root.name}:episode_{ep.index}")


def dataset_stats(meta: LeRobotMeta, fmap: FeatureMap) -> dict[str, np.ndarray]:
    """The training statistics from the dataset's own: meta/stats.json, else (v2.1) meta/episodes_stats.jsonl."""
    path = meta.root / "meta" / "stats.json"
    if path.is_file():
        stats = json.loads(path.read_text())
    elif (meta.root / "meta" / "episodes_stats.jsonl").is_file():
        stats = _pool([r["stats"] for r in _jsonl(meta.root / "meta" / "episodes_stats.jsonl")])
    else:
        raise LeRobotError(f"{meta.root} has no meta/stats.json nor meta/episodes_stats.jsonl; use data.lerobot_stats=recompute")
    try:
        get = lambda key, s: np.asarray(stats[key][s], np.float32).reshape(-1)  # noqa: E731
        return {"action_min": get(fmap.action, "min"), "action_max": get(fmap.action, "max"),
                "proprio_mean": np.concatenate([get(k, "mean") for k in fmap.state]),
                "proprio_std": np.concatenate([get(k, "std") for k in fmap.state])}
    except KeyError as exc:
        raise LeRobotError(f"{path}: no statistic {exc} for the mapped features; use data.lerobot_stats=recompute") from None


def _pool(episodes: list[dict[str, dict[str, Any]]]) -> dict[str, dict[str, np.ndarray]]:
    """Per-episode stats -> dataset stats (min/max, count-weighted mean, pooled std)."""
    out = {}
    for key in episodes[0]:
        parts = [e[key] for e in episodes if key in e]
        n = np.array([float(np.asarray(p["count"]).reshape(-1)[0]) for p in parts])
        mean = np.stack([np.asarray(p["mean"], float) for p in parts])
        var = np.stack([np.asarray(p["std"], float) ** 2 for p in parts])
        w = (n / n.sum()).reshape(-1, *([1] * (mean.ndim - 1)))
        total = (w * mean).sum(0)
        out[key] = {"min": np.min([p["min"] for p in parts], 0), "max": np.max([p["max"] for p in parts], 0),
                    "mean": total, "std": np.sqrt((w * (var + (mean - total) ** 2)).sum(0))}
    return out


def dataset_files(root: str | Path) -> list[Path]:
    """Every file of the dataset (its cache identity)."""
    return sorted(p for sub in ("meta", "data", "videos") for p in (Path(root) / sub).rglob("*") if p.is_file())
