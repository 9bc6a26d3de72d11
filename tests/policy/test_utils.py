"""The package's one atomic writer: whole files only, with the normal mode under the umask."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
import torch

from policy.utils import atomic_dir, atomic_save_safetensors, atomic_write, atomic_write_json, atomic_write_text


def _mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


@pytest.fixture
def umask():
    """Set the process umask for one test and put the old one back."""
    old = os.umask(0o022)
    yield lambda m: os.umask(m)
    os.umask(old)


def test_written_files_get_the_normal_mode_under_the_umask(tmp_path: Path, umask) -> None:
    """mkstemp makes files 0600: checkpoints and results were unreadable by other users."""
    umask(0o022)
    atomic_write_text(tmp_path / "a.txt", "hello")
    atomic_write_json(tmp_path / "b.json", {"x": 1})
    atomic_save_safetensors({"w": torch.ones(2)}, tmp_path / "c.safetensors")
    with atomic_dir(tmp_path / "ckpt") as d:
        atomic_write_text(d / "inner.txt", "x")
    assert {p.name: _mode(p) for p in tmp_path.iterdir()} == {
        "a.txt": 0o644, "b.json": 0o644, "c.safetensors": 0o644, "ckpt": 0o755}
    assert _mode(tmp_path / "ckpt" / "inner.txt") == 0o644
    umask(0o077)  # a private umask is respected
    atomic_write_text(tmp_path / "a.txt", "again")
    assert _mode(tmp_path / "a.txt") == 0o600


def test_a_failed_write_leaves_the_old_file_and_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "r.json"
    atomic_write_json(target, {"old": True})

    def boom(tmp: str) -> None:
        Path(tmp).write_text("half")
        raise RuntimeError("crash")

    with pytest.raises(RuntimeError):
        atomic_write(target, boom)
    with pytest.raises(RuntimeError), atomic_dir(tmp_path / "ck") as d:
        (d / "x").write_text("half")
        raise RuntimeError("crash")
    assert target.read_text() == '{\n  "old": true\n}\n'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.json"]


def test_temp_file_keeps_the_suffix(tmp_path: Path) -> None:
    """Writers that choose the format by suffix (video, HDF5, meshes) see the final one."""
    seen = []
    atomic_write(tmp_path / "v.mp4", lambda tmp: (seen.append(tmp), Path(tmp).write_bytes(b"x")))
    assert seen[0].endswith(".mp4") and Path(seen[0]).name.startswith(".v.mp4.")


def test_state_sha256_names_the_weights_in_memory() -> None:
    """The identity the periodic in-training evaluation records (there is no weights file to hash)."""
    from policy.utils import state_sha256

    torch.manual_seed(0)
    a = torch.nn.Linear(3, 2)
    b = torch.nn.Linear(3, 2)
    b.load_state_dict(a.state_dict())
    assert state_sha256(a) == state_sha256(b) and len(state_sha256(a)) == 64
    with torch.no_grad():
        b.weight[0, 0] = torch.nextafter(b.weight[0, 0], torch.tensor(1.0))  # one ulp
    assert state_sha256(b) != state_sha256(a)
    assert state_sha256(a.to(torch.float64)) != state_sha256(b.to(torch.float64))
    assert state_sha256(torch.nn.Linear(3, 2).to(torch.bfloat16)) != state_sha256(a)
