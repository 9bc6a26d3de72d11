"""Small shared helpers: atomic file writes (temp file in the same folder + rename).

A crash or Ctrl-C never leaves a half-written file behind: readers see the old file or the
new one. Every file (and folder) written here gets the normal mode under the process's umask
(0644 / 0755 with the usual 022), not the owner-only 0600 of ``tempfile.mkstemp``, so other
users and containers can read checkpoints and results. This is the package's one atomic
writer: write through it rather than by hand. :func:`folder_lock` keeps a second process from
writing into a folder another one is writing (a run dir, an evaluation's out folder).
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # torch is imported where it is used: simulator workers write files too
    import torch


def _umask() -> int:
    """The process's umask, read without changing it where Linux tells it (os.umask can only
    be read by setting it, which races with other threads)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def file_mode() -> int:
    """The normal mode of a new file under the current umask (0644 under 022)."""
    return 0o666 & ~_umask()


def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> Path:
    """Call write(tmp_path) on a temp file next to path, then rename it onto path.

    The temp file keeps path's suffix (``.<name>.XXXX.tmp<suffix>``) so writers that pick a
    format by suffix (video, HDF5, meshes) work on it; it gets the normal file mode before the rename.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp" + path.suffix)
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, file_mode())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


@contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """``with atomic_dir(final) as tmp:`` fill the temp folder ``tmp`` next to ``final``; on a
    clean exit it gets the normal folder mode and replaces ``final`` (an old ``final`` is removed first), on
    an error it is removed and ``final`` is left as it was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))
    try:
        yield tmp
        os.chmod(tmp, 0o777 & ~_umask())
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write bytes atomically (fsynced before the rename)."""

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())

    return atomic_write(path, write)


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write UTF-8 text atomically."""
    return atomic_write_bytes(path, text.encode())


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Write obj as indented JSON, atomically."""
    return atomic_write_text(path, json.dumps(obj, indent=2) + "\n")


class FolderBusyError(ValueError):
    """Another live process holds the folder's lock (:func:`folder_lock`)."""


LOCK_FILE = ".lock"


@contextmanager
def folder_lock(folder: str | os.PathLike, what: str = "folder") -> Iterator[Path]:
    """Hold an exclusive lock on ``folder`` (an ``flock`` on ``<folder>/.lock``, which records the
    holder's pid) for the block. A second process that would write the same ``what`` (a run dir,
    an evaluation folder) gets one :class:`FolderBusyError` line instead of files interleaved with
    the first one's. The kernel drops the lock when the holder exits, even on a crash or kill -9,
    so a stale lock file never blocks; network file systems may not honour ``flock``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    f = open(folder / LOCK_FILE, "a+", encoding="utf-8")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.seek(0)
        holder = f.read().strip()
        f.close()
        raise FolderBusyError(f"{what} {folder} is being written by another process" + (f" (pid {holder})" if holder else "")
                              + "; wait for it to finish, stop it, or use another folder") from None
    try:
        f.truncate(0)
        f.write(f"{os.getpid()}\n")
        f.flush()
        yield folder
    finally:
        f.close()


def read_safetensors(path: str | os.PathLike, device: str = "cpu") -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(tensors, metadata) of a safetensors file; a truncated or corrupt file is one ValueError
    line naming it (safetensors' own error says only "Error while deserializing header")."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt", device=str(device)) as f:
            return {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata() or {})
    except SafetensorError as exc:
        reason = (str(exc).strip().splitlines() or ["unreadable"])[0]
        raise ValueError(f"{path}: not a readable safetensors file ({reason}): it is truncated or corrupt; "
                         "copy it again or re-export it") from None


def state_sha256(module: torch.nn.Module) -> str:
    """sha256 of a module's state (names, dtypes, shapes and bytes, in name order): the identity
    of weights held in memory, e.g. for results made during training (no file to hash)."""
    import hashlib

    import torch

    h = hashlib.sha256()
    for name, t in sorted(module.state_dict().items()):
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        flat = t.detach().cpu().contiguous().reshape(-1)
        h.update(flat.view(torch.uint8).numpy().tobytes() if flat.numel() else b"")
    return h.hexdigest()


def atomic_save_safetensors(tensors: Mapping[str, torch.Tensor], path: str | os.PathLike, metadata: dict[str, str] | None = None) -> Path:
    """safetensors.torch.save_file, atomically; tensors are moved to CPU and made contiguous."""
    from safetensors.torch import save_file

    cpu = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    return atomic_write(path, lambda tmp: save_file(cpu, tmp, metadata=metadata))
