"""LIBERO demonstrations in the official HDF5 layout -> training samples.

Layout read (official LIBERO files and envs/scripted/planner.py output alike); the obs/
keys are the image and state features of ``policy.features.DEFAULT_FEATURES``::

    <suite folder>/*.hdf5
      data.attrs["problem_info"]  JSON with "language_instruction"
      data/demo_N/actions                 (T, 7)
      data/demo_N/obs/agentview_rgb       (T, H, W, 3) uint8, as rendered (upside down)
      data/demo_N/obs/eye_in_hand_rgb     (T, H, W, 3) uint8
      data/demo_N/obs/joint_states        (T, 7)
      data/demo_N/obs/gripper_states      (T, 2)
      data/demo_N/obs/<object>_pos, <object>_quat, <object>_to_robot0_eef_pos
                                          (T, 3/4/3), object-token policies only (scripted
                                          files carry them; scripts/add_object_poses.py adds
                                          them to official files from their states)

Every step goes through ``envs.libero.observation.process_observation`` (THE function evaluation
uses too), so training and evaluation see identical images. A sample is the policy
observation at step k, the actions k..k+7 and the instruction. Chunks that run past the
end of an episode are padded by REPEATING THE LAST ACTION (as Diffusion Policy does:
the policy learns to hold its final command); ``action_mask`` marks real actions (True)
vs padding (False).

Everything is decoded once into memory (uint8; ``image_size`` can shrink the images at
load time). Augmentation is a random shift (DrQ: replicate-pad by ``shift`` pixels,
random crop back), drawn from a generator seeded by (seed, epoch, index), so it is
reproducible with any number of DataLoader workers.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset
from tqdm import tqdm

from envs.libero.suites import SUITES
from envs.libero.observation import process_observation
from policy.features import DEFAULT_FEATURES, OBJECT_KEY_SUFFIX, OBJECT_POSE_FIELDS, PROPRIO_LAYOUTS, FeatureSpec, object_text
from envs.libero.synthetic import write_demo_file, write_synthetic_suite  # noqa: F401  (re-exported)

# What is read from obs/ (and written by write_demo_file): the observation features of the spec.
FEATURES = DEFAULT_FEATURES
CAMERA_KEYS = FEATURES.image_keys
OBS_SHAPES = {f.name: f.size for f in FEATURES.states}  # state feature -> values per step
# every proprio layout's state features (joints and eef): written by write_demo_file when a demo has them
LAYOUT_SHAPES = {f.name: f.size for feats in PROPRIO_LAYOUTS.values() for f in feats}
ACTION_DIM = FEATURES.action.shape[-1]
DEMO_SOURCES = (
    "download the official LIBERO HDF5 files (LIBERO's benchmark_scripts/download_libero_datasets.py, or "
    "huggingface.co/datasets/yifengzhu-hf/LIBERO-datasets) into data/<suite>/, or generate scripted ones with {generate}"
)


def generate_hint(folder: Path) -> str:
    """A generate_demos.py command that fills ``folder`` (it writes <out>/<suite>/), or, for a folder not
    named after a suite, one that writes a suite folder beside it to point the config at."""
    out = folder.parent if str(folder.parent) not in ("", ".") else Path(".")
    if folder.name in SUITES:
        return f"`python scripts/generate_demos.py --suite {folder.name} --out {out}/`"
    return (f"`python scripts/generate_demos.py --suite <suite> --out {out}/` (it writes {out}/<suite>/, <suite> one of "
            f"{', '.join(SUITES)}; {folder.name!r} is not a suite name) and use that folder")


class DatasetError(ValueError):
    """A demonstration file is unusable; the message names the file and the key."""


@dataclass
class Demo:
    """One episode, decoded. images: {camera: (T, H, W, 3) uint8 upright}; proprio (T, 9)
    float32 (the state features concatenated in spec order: joint_states ++ gripper_states);
    actions (T, 7) float32; objects (T, N, 10) float32 and object_names (N, sorted) for an
    object-token spec (else None and [])."""

    images: dict[str, np.ndarray]
    proprio: np.ndarray
    actions: np.ndarray
    language: str
    source: str
    objects: np.ndarray | None = None
    object_names: list[str] = field(default_factory=list)


def find_hdf5_files(folders: str | Path | Sequence[str | Path]) -> list[Path]:
    """All *.hdf5 files of one or more suite folders (sorted); one-line error if none."""
    folders = [folders] if isinstance(folders, (str, Path)) else list(folders)
    files: list[Path] = []
    for folder in folders:
        folder = Path(folder)
        found = sorted(folder.glob("*.hdf5")) if folder.is_dir() else []
        if not found:
            state = "has no *.hdf5 files" if folder.is_dir() else "does not exist"
            raise FileNotFoundError(f"demonstration folder {folder} {state}: "
                                    + DEMO_SOURCES.format(generate=generate_hint(folder)))
        files += found
    return files


def _language(path: Path, data: h5py.Group) -> str:
    if "problem_info" not in data.attrs:
        raise DatasetError(f"{path}: missing attribute data.attrs['problem_info'] (JSON with language_instruction)")
    try:
        info = json.loads(data.attrs["problem_info"])
        text = info["language_instruction"]
    except (json.JSONDecodeError, TypeError, KeyError) as exc:
        raise DatasetError(f"{path}: data.attrs['problem_info'] is not JSON with 'language_instruction' ({exc})") from None
    text = " ".join(text) if isinstance(text, list) else str(text)
    if not text.strip():
        raise DatasetError(f"{path}: data.attrs['problem_info'] has an empty language_instruction")
    return text.strip()


def _read(path: Path, group: h5py.Group, key: str) -> np.ndarray:
    if key not in group:
        raise DatasetError(f"{path}: missing key '{group.name.lstrip('/')}/{key}'")
    try:
        return group[key][()]
    except (OSError, KeyError, TypeError) as exc:
        raise DatasetError(f"{path}: key '{group.name.lstrip('/')}/{key}' cannot be read ({exc})") from None


def _resize(images: np.ndarray, size: int) -> np.ndarray:
    """(T, H, W, 3) uint8 -> (T, size, size, 3) uint8 (antialiased bilinear)."""
    out = np.empty((len(images), size, size, 3), dtype=np.uint8)
    for i in range(0, len(images), 256):
        x = torch.from_numpy(images[i : i + 256]).permute(0, 3, 1, 2).float()
        x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        out[i : i + 256] = x.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
    return out


def _demo_keys(data: h5py.Group) -> list[str]:
    keys = [k for k in data.keys() if re.fullmatch(r"demo_\d+", k)]
    return sorted(keys, key=lambda k: int(k.split("_")[1]))


def read_demo_file(path: str | Path, image_size: int | None = None, spec: FeatureSpec | None = None) -> list[Demo]:
    """Decode every demo of one official-layout HDF5 file (see module docstring).

    ``spec`` (a policy's ``config.spec``; default ``FEATURES``) names the cameras and the
    state features read from ``obs/`` (the eef layout reads ee_pos, ee_ori, gripper_states,
    which the official and scripted files carry).

    Raises DatasetError naming the file and key on a corrupt file, a missing key or a
    shape mismatch.
    """
    return list(iter_demo_file(path, image_size, spec))


def iter_demo_file(path: str | Path, image_size: int | None = None, spec: FeatureSpec | None = None) -> Iterator[Demo]:
    """``read_demo_file`` one demo at a time (memory: one decoded demo, not the whole file)."""
    path = Path(path)
    spec = FEATURES if spec is None else spec
    camera_keys, obs_shapes = spec.image_keys, {f.name: f.size for f in spec.states}
    try:
        f = h5py.File(path, "r")
    except OSError as exc:
        raise DatasetError(f"{path}: cannot be opened as HDF5 ({exc}); the file is corrupt or truncated, re-create it") from None
    with f:
        if "data" not in f:
            raise DatasetError(f"{path}: missing key 'data' (not the official LIBERO layout)")
        data = f["data"]
        language = _language(path, data)
        keys = _demo_keys(data)
        if not keys:
            raise DatasetError(f"{path}: 'data' holds no demo_N groups")
        for key in keys:
            demo = data[key]
            if "obs" not in demo:
                raise DatasetError(f"{path}: missing key 'data/{key}/obs'")
            actions = _read(path, demo, "actions")
            if actions.ndim != 2 or actions.shape[1] != ACTION_DIM or len(actions) == 0:
                raise DatasetError(f"{path}: 'data/{key}/actions' has shape {actions.shape}, expected (T>0, {ACTION_DIM})")
            t = len(actions)
            raw: dict[str, np.ndarray] = {}
            for name in camera_keys:
                img = _read(path, demo["obs"], name)
                if img.ndim != 4 or img.shape[0] != t or img.shape[-1] != 3 or img.dtype != np.uint8:
                    raise DatasetError(
                        f"{path}: 'data/{key}/obs/{name}' has shape {img.shape} dtype {img.dtype}, expected ({t}, H, W, 3) uint8"
                    )
                raw[name] = img
            for name, dim in obs_shapes.items():
                arr = _read(path, demo["obs"], name)
                if arr.ndim != 2 or arr.shape != (t, dim):
                    raise DatasetError(f"{path}: 'data/{key}/obs/{name}' has shape {arr.shape}, expected ({t}, {dim})")
                raw[name] = arr
            if spec.objects:
                raw.update(_object_fields(path, demo["obs"], key, t))
            first_state = next(iter(obs_shapes))  # joint_states; as before, only it is checked for NaN/inf
            if not (np.isfinite(actions).all() and np.isfinite(raw[first_state]).all()):
                raise DatasetError(f"{path}: 'data/{key}' holds non-finite actions or {first_state}")
            steps = [process_observation({k: raw[k][i] for k in raw}, language, spec) for i in range(t)]
            images = {cam: np.stack([s[cam] for s in steps]) for cam in camera_keys}
            if camera_keys and image_size is not None and images[camera_keys[0]].shape[1:3] != (image_size, image_size):
                images = {cam: _resize(v, image_size) for cam, v in images.items()}
            proprio = np.stack([np.concatenate([s[name] for name in obs_shapes]) for s in steps]).astype(np.float32)
            demo_out = Demo(images, proprio, actions.astype(np.float32), language, f"{path.name}:{key}")
            if spec.objects:
                poses_f, names_f = spec.objects
                demo_out.objects = np.stack([s[poses_f.name] for s in steps]).astype(np.float32)
                demo_out.object_names = list(steps[0][names_f.name])
                if not np.isfinite(demo_out.objects).all():
                    raise DatasetError(f"{path}: 'data/{key}/obs' holds non-finite object poses")
            yield demo_out


def _object_fields(path: Path, obs: h5py.Group, key: str, t: int) -> dict[str, np.ndarray]:
    """The ``<object>_pos/_quat/_to_robot0_eef_pos`` fields of one demo (T, 3/4/3)."""
    names = sorted(k[: -len(OBJECT_KEY_SUFFIX)] for k in obs.keys() if k.endswith(OBJECT_KEY_SUFFIX))
    if not names:
        raise DatasetError(f"{path}: 'data/{key}/obs' holds no object poses (<object>_pos, _quat, _to_robot0_eef_pos), "
                           "which object-token policies read; add them from the recorded states with "
                           f"`python scripts/add_object_poses.py {path}`")
    out = {}
    for name in names:
        for suffix, size in OBJECT_POSE_FIELDS:
            arr = _read(path, obs, f"{name}_{suffix}")
            if arr.shape != (t, size):
                raise DatasetError(f"{path}: 'data/{key}/obs/{name}_{suffix}' has shape {arr.shape}, expected ({t}, {size})")
            out[f"{name}_{suffix}"] = arr
    return out


def random_shift(image: torch.Tensor, pad: int, rng: np.random.Generator) -> torch.Tensor:
    """DrQ random shift of one (3, H, W) uint8 image: replicate-pad by `pad`, crop (H, W) back."""
    if pad <= 0:
        return image
    _, h, w = image.shape
    padded = F.pad(image[None].float(), (pad, pad, pad, pad), mode="replicate")[0]
    dy, dx = rng.integers(0, 2 * pad + 1, size=2)
    return padded[:, dy : dy + h, dx : dx + w].to(torch.uint8)


class LiberoDataset(Dataset):
    """Samples (observation at step k, actions k..k+chunk-1, instruction) of suite folders.

    Args:
        folders: one suite folder or several (libero_4 = spatial + object + goal + 10).
        chunk_size: actions per sample (8).
        augment: random-shift augmentation of both cameras.
        shift: pad in pixels at 128x128 (scaled with the image size), 0 disables.
        image_size: resize images once at load time (None keeps the stored size).
        seed: seeds the augmentation (with the epoch and the index).
        spec: the policy's features (``PolicyConfig.spec``): cameras and the state features
            read (default ``FEATURES``, the joints layout).
    Item:
        {"agentview_rgb", "eye_in_hand_rgb": (3, H, W) uint8; "proprio": (9,) float32;
         "actions": (chunk, 7) float32; "action_mask": (chunk,) bool; "language": str}
        and for object-token specs "object_poses" (N_max, 10) float32 (zero rows past the
        demo's objects) and "object_ids" (N_max,) int64 (index into ``object_texts``, -1 = padding).
    """

    def __init__(
        self,
        folders: str | Path | Sequence[str | Path],
        chunk_size: int = FEATURES.action.shape[0],
        augment: bool = True,
        shift: int = 4,
        image_size: int | None = None,
        seed: int = 0,
        progress: bool = True,
        spec: FeatureSpec | None = None,
    ) -> None:
        files = find_hdf5_files(folders)
        demos = [d for path in tqdm(files, desc="reading demos", unit="file", disable=not progress)
                 for d in iter_demo_file(path, image_size, spec)]
        self._setup(files, demos, chunk_size, augment, shift, seed, spec)

    @classmethod
    def from_demos(cls, files: Sequence[Path], demos: Iterable[Demo], chunk_size: int = FEATURES.action.shape[0],
                   augment: bool = True, shift: int = 4, seed: int = 0, spec: FeatureSpec | None = None) -> LiberoDataset:
        """The data set of decoded ``demos`` from any source (``files`` names where they came from)."""
        self = cls.__new__(cls)
        self._setup(list(files), list(demos), chunk_size, augment, shift, seed, spec)
        return self

    def _setup(self, files: list[Path], demos: list[Demo], chunk_size: int, augment: bool, shift: int, seed: int,
               spec: FeatureSpec | None, image_hw: int | None = None) -> None:
        """Index the demos; ``image_hw`` is the stored image size when the demos hold no images."""
        if chunk_size < 1:
            raise ValueError(f"chunk_size={chunk_size} must be >= 1")
        if not demos:
            raise DatasetError(f"{', '.join(map(str, files)) or 'the data set'} holds no demonstrations")
        self.files, self.demos = files, demos
        self.chunk_size, self.augment, self.seed, self.epoch = chunk_size, augment, seed, 0
        self.camera_keys = (FEATURES if spec is None else spec).image_keys
        if image_hw is None:
            image_hw = self.demos[0].images[self.camera_keys[0]].shape[1] if self.camera_keys else 128
        self.shift = int(round(shift * image_hw / 128)) if shift > 0 else 0
        self.index = np.array([(d, k) for d, demo in enumerate(self.demos) for k in range(len(demo.actions))], dtype=np.int64)
        self.instructions = sorted({d.language for d in self.demos})
        # object tokens: the names' texts (what the language model embeds) and, per demo, each object's index
        self.object_texts = sorted({object_text(n) for d in self.demos for n in d.object_names})
        self.max_objects = max((len(d.object_names) for d in self.demos), default=0)
        text_id = {t: i for i, t in enumerate(self.object_texts)}
        self._object_ids = [np.array([text_id[object_text(n)] for n in d.object_names] + [-1] * (self.max_objects - len(
            d.object_names)), dtype=np.int64) for d in self.demos]

    def __len__(self) -> int:
        return len(self.index)

    def set_epoch(self, epoch: int) -> None:
        """Changes the augmentation draws (call before creating each epoch's iterator)."""
        self.epoch = int(epoch)

    @property
    def num_steps(self) -> int:
        return len(self.index)

    def stats(self) -> dict[str, np.ndarray]:
        """action_min / action_max (7,) over all actions; proprio_mean / proprio_std (9,);
        object_mean / object_std (10,) over every object of every step (object-token data).
        ``fixed_stats`` (set by a source that brings its own, e.g. a LeRobot meta/stats.json) wins."""
        if getattr(self, "fixed_stats", None) is not None:
            return {k: np.array(v, dtype=np.float32) for k, v in self.fixed_stats.items()}
        actions = np.concatenate([d.actions for d in self.demos])
        proprio = np.concatenate([d.proprio for d in self.demos]).astype(np.float64)
        out = {
            "action_min": actions.min(0),
            "action_max": actions.max(0),
            "proprio_mean": proprio.mean(0).astype(np.float32),
            "proprio_std": proprio.std(0).astype(np.float32),
        }
        if self.max_objects:
            rows = np.concatenate([d.objects.reshape(-1, d.objects.shape[-1]) for d in self.demos if d.objects is not None])
            out["object_mean"] = rows.astype(np.float64).mean(0).astype(np.float32)
            out["object_std"] = rows.astype(np.float64).std(0).astype(np.float32)
        return out

    def __getitem__(self, i: int) -> dict[str, Any]:
        d, k = self.index[i]
        demo = self.demos[d]
        t = len(demo.actions)
        idx = np.minimum(np.arange(k, k + self.chunk_size), t - 1)  # pad by repeating the last action
        item: dict[str, Any] = {
            "proprio": torch.from_numpy(demo.proprio[k]),
            "actions": torch.from_numpy(demo.actions[idx]),
            "action_mask": torch.from_numpy(np.arange(k, k + self.chunk_size) < t),
            "language": demo.language,
        }
        if demo.objects is not None:
            poses = np.zeros((self.max_objects, demo.objects.shape[-1]), np.float32)
            poses[: demo.objects.shape[1]] = demo.objects[k]
            item["object_poses"] = torch.from_numpy(poses)
            item["object_ids"] = torch.from_numpy(self._object_ids[d])
        rng = np.random.default_rng((self.seed, self.epoch, int(i))) if self.augment else None
        for cam in self.camera_keys:
            img = torch.from_numpy(self._frame(int(d), cam, int(k))).permute(2, 0, 1)
            item[cam] = random_shift(img, self.shift, rng) if rng is not None else img.contiguous()
        return item

    def _frame(self, d: int, cam: str, k: int) -> np.ndarray:
        """Image ``cam`` of demo ``d`` at step ``k``, (H, W, 3) uint8 upright (the bounded reader reads its cache)."""
        return self.demos[d].images[cam][k]
