"""The bounded-memory reader: processed frames in a uint8 cache on disk, built once per machine.

``LiberoDataset`` decodes every demonstration into the RAM of every process (libero_10 at
128 px: ~13.5 GB per DDP rank). ``CachedLiberoDataset`` gives the same items (same index,
statistics and augmentation for the same seed) while each process holds only the small
arrays (proprio, actions, object poses: ~0.1 KB per step) and reads each image when a sample
asks for it, with ``os.preadv`` from one file per camera:

    <cache_dir>/<key>/meta.json            version, identity, image size, cameras, per-demo
                                           language, source, length, first frame, object names
    <cache_dir>/<key>/<camera>.u8          (N_steps, H, W, 3) uint8: processed frames (upright,
                                           resized), every demo's steps one after another
    <cache_dir>/<key>/proprio.npy, actions.npy, objects.npy   the small arrays, concatenated

Reads go through the OS page cache, which every DataLoader worker and every DDP rank of the
machine share and which the kernel evicts under memory pressure; nothing is mapped into the
processes, so their resident memory stays flat in the data size (np.memmap would count every
page touched in each process's RSS). ``key`` hashes the source files' identity (resolved path,
size, mtime), the image size, the cameras, the state features and the object tokens, so a
changed file, size or policy layout gets a new cache (an old one is left for ``rm -r``).

Build once: the first process takes an exclusive ``flock`` on ``<key>.lock``, decodes the source
one demo at a time into ``<key>.tmp-<pid>/`` and renames it to ``<key>/`` (atomic); the others
wait on the lock and then open the finished cache. A builder that died leaves its temp folder,
which the next builder removes; the kernel releases a dead process's lock.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from envs.libero.dataset import Demo, LiberoDataset
from policy.features import FeatureSpec

CACHE_VERSION = 1
CACHE_ENV = "DDL_DATA_CACHE"


def default_cache_dir() -> Path:
    """``$DDL_DATA_CACHE`` or ``~/.cache/distributional-diffusion-libero/frames`` (a local disk:
    the build-once lock is an ``flock``, which network file systems may not honour)."""
    env = os.environ.get(CACHE_ENV)
    return Path(env) if env else Path.home() / ".cache" / "distributional-diffusion-libero" / "frames"


def file_identity(files: Iterable[str | Path]) -> list[list[Any]]:
    """[resolved path, size, mtime_ns] of each file: what makes a cache stale when it changes."""
    out = []
    for f in files:
        st = Path(f).stat()
        out.append([str(Path(f).resolve()), st.st_size, st.st_mtime_ns])
    return out


def spec_identity(spec: FeatureSpec, image_size: int | None) -> dict[str, Any]:
    """The parts of a policy's features that change the cached content."""
    return {"cameras": list(spec.image_keys), "states": [f.name for f in spec.states],
            "objects": spec.objects is not None, "image_size": image_size}


def cache_key(identity: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps({"v": CACHE_VERSION, **identity}, sort_keys=True).encode()).hexdigest()[:24]


def _write_cache(tmp: Path, demos: Iterable[Demo], cameras: Sequence[str], identity: dict[str, Any]) -> None:
    """Stream ``demos`` into the folder ``tmp`` (one demo in memory at a time)."""
    tmp.mkdir(parents=True)
    outs = {cam: open(tmp / f"{cam}.u8", "wb") for cam in cameras}
    proprio, actions, objects, rows = [], [], [], []
    start = obj_start = 0
    hw: list[int] | None = None
    try:
        for demo in demos:
            t = len(demo.actions)
            for cam in cameras:
                img = np.ascontiguousarray(demo.images[cam], dtype=np.uint8)
                if hw is None:
                    hw = [int(img.shape[1]), int(img.shape[2])]
                if list(img.shape[1:3]) != hw:
                    raise ValueError(f"{demo.source}: {cam} frames are {img.shape[1:3]}, the cache holds {tuple(hw)}; "
                                     "set data.image_size so that every demo is resized to one size")
                outs[cam].write(img.tobytes())
            proprio.append(demo.proprio)
            actions.append(demo.actions)
            n_obj = 0
            if demo.objects is not None:
                objects.append(demo.objects.reshape(-1, demo.objects.shape[-1]))
                n_obj = demo.objects.shape[1]
            rows.append({"language": demo.language, "source": demo.source, "length": t, "start": start,
                         "object_names": list(demo.object_names), "object_start": obj_start, "objects": n_obj,
                         "has_objects": demo.objects is not None})
            start += t
            obj_start += t * n_obj
    finally:
        for f in outs.values():
            f.flush()
            os.fsync(f.fileno())
            f.close()
    if not rows:
        raise ValueError(f"the source {identity.get('source', '')} holds no demonstrations")
    np.save(tmp / "proprio.npy", np.concatenate(proprio).astype(np.float32))
    np.save(tmp / "actions.npy", np.concatenate(actions).astype(np.float32))
    np.save(tmp / "objects.npy", np.concatenate(objects).astype(np.float32) if objects else np.zeros((0, 10), np.float32))
    meta = {"version": CACHE_VERSION, "identity": identity, "cameras": list(cameras), "image_hw": hw or [0, 0],
            "steps": start, "demos": rows}
    (tmp / "meta.json").write_text(json.dumps(meta))


def build_once(cache_dir: str | Path, identity: dict[str, Any], demos: Callable[[], Iterable[Demo]],
               cameras: Sequence[str]) -> Path:
    """The cache folder for ``identity``, built from ``demos()`` by the first process of the
    machine to get here (the others wait for it); see the module docstring."""
    cache_dir = Path(cache_dir)
    final = cache_dir / cache_key(identity)
    if (final / "meta.json").is_file():
        return final
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        lock = open(cache_dir / f"{final.name}.lock", "a+")
    except OSError as exc:
        raise ValueError(f"data.cache_dir={cache_dir} cannot be written ({exc}); point data.cache_dir at a local "
                         "folder with room for the processed frames") from None
    with lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX)  # released on close, or by the kernel if this process dies
        except OSError as exc:
            raise ValueError(f"data.cache_dir={cache_dir} cannot be locked ({exc}); put the cache on a local disk") from None
        if not (final / "meta.json").is_file():
            for stale in cache_dir.glob(f"{final.name}.tmp-*"):
                shutil.rmtree(stale, ignore_errors=True)
            tmp = cache_dir / f"{final.name}.tmp-{os.getpid()}"
            try:
                _write_cache(tmp, demos(), cameras, identity)
                if final.exists():  # a folder without meta.json: an interrupted copy, not ours
                    shutil.rmtree(final)
                os.rename(tmp, final)
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
    return final


class CachedLiberoDataset(LiberoDataset):
    """``LiberoDataset``'s items from a frame cache (``build_once``): the same index, statistics and
    augmentation; images are read per sample. Picklable for spawned DataLoader workers (each
    process opens its own file descriptors)."""

    def __init__(self, path: str | Path, chunk_size: int, augment: bool = True, shift: int = 4, seed: int = 0,
                 spec: FeatureSpec | None = None, files: Sequence[Path] | None = None) -> None:
        self.cache_path = Path(path)
        meta = json.loads((self.cache_path / "meta.json").read_text())
        proprio = np.load(self.cache_path / "proprio.npy")
        actions = np.load(self.cache_path / "actions.npy")
        objects = np.load(self.cache_path / "objects.npy")
        demos = []
        for row in meta["demos"]:
            s, t = row["start"], row["length"]
            demo = Demo({}, proprio[s : s + t], actions[s : s + t], row["language"], row["source"])
            if row["has_objects"]:
                o, n = row["object_start"], row["objects"]
                demo.objects = objects[o : o + t * n].reshape(t, n, objects.shape[-1])
                demo.object_names = list(row["object_names"])
            demos.append(demo)
        self._starts = np.array([row["start"] for row in meta["demos"]], dtype=np.int64)
        self._hw = tuple(meta["image_hw"])
        self._cameras = list(meta["cameras"])
        self._fds: dict[str, int] = {}
        self._pid = os.getpid()
        src = files if files is not None else [Path(p) for p, *_ in meta["identity"].get("files", [])]
        self._setup(list(src), demos, chunk_size, augment, shift, seed, spec, image_hw=self._hw[0] or 128)
        missing = [c for c in self.camera_keys if c not in self._cameras]
        if missing:
            raise ValueError(f"{self.cache_path}: the cache holds cameras {self._cameras}, not {missing}")

    def _fd(self, cam: str) -> int:
        if self._pid != os.getpid():  # a forked worker: its own descriptors (offsets are not shared by pread)
            self._fds, self._pid = {}, os.getpid()
        fd = self._fds.get(cam)
        if fd is None:
            fd = self._fds[cam] = os.open(self.cache_path / f"{cam}.u8", os.O_RDONLY)
        return fd

    def _frame(self, d: int, cam: str, k: int) -> np.ndarray:
        h, w = self._hw
        buf = np.empty((h, w, 3), np.uint8)
        offset = (int(self._starts[d]) + k) * buf.nbytes
        if os.preadv(self._fd(cam), [buf], offset) != buf.nbytes:
            raise ValueError(f"{self.cache_path / (cam + '.u8')} is truncated; delete {self.cache_path} to rebuild it")
        return buf

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_fds"] = {}
        return state

    def __del__(self) -> None:
        if getattr(self, "_pid", None) == os.getpid():
            for fd in getattr(self, "_fds", {}).values():
                try:
                    os.close(fd)
                except OSError:
                    pass
