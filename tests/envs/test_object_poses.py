"""Per-object observation keys: written by the demo recorder, recovered from ``states`` for files
that lack them (``envs.libero.object_poses``), with the real simulator.

One scripted demo of libero_object task 0 (32x32, ~15 s) is recorded, copied without its object
keys, and converted back; the recovered poses are compared with the recorded ones.
"""
from __future__ import annotations

import os
import shutil
import stat
from pathlib import Path

import h5py
import numpy as np
import pytest

import envs  # noqa: F401  (headless rendering defaults)  # pyflakes: ignore
from envs.libero.suites import list_tasks
from envs.libero.hdf5_writer import OBS_KEYS, check_official_layout, object_obs_keys, task_file_name
from envs.libero.object_poses import add_object_poses, check_file, has_object_poses
from envs.libero.object_poses_cli import main as cli_main
from policy.features import OBJECT_POSE_FIELDS

OBJECTS = ("alphabet_soup_1", "basket_1", "butter_1", "cream_cheese_1", "milk_1", "salad_dressing_1",
           "tomato_sauce_1")  # libero_object task 0's movable objects
CARRIED = "alphabet_soup_1"  # "pick up the alphabet soup and place it in the basket"
EXACT = 1e-9  # measured: 0.0 on row 0, <= 1.1e-10 for objects at rest
SUBSTEP_LAG = 2e-3  # measured <= 9.6e-4: recorded obs are sampled 1-2 physics substeps before the stored state


@pytest.fixture(scope="module")
def demo_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from envs.scripted.demos import assemble_task_file, generate_task_demos

    out = tmp_path_factory.mktemp("object_demos")
    task = list_tasks("libero_object")[0]
    kept, tries = generate_task_demos(task, out, needed=1, resolution=32, fast_render=True, max_attempts=3)
    assert kept == 1, f"scripted planner failed {tries} attempts on {task.name}"
    assert assemble_task_file(task, out, limit=1, resolution=32, fast_render=True) == 1
    return out / task_file_name(task.name)


def strip_object_keys(src: Path, dst: Path) -> None:
    """A copy of ``src`` without any object key (as an official LIBERO file is)."""
    shutil.copyfile(src, dst)
    with h5py.File(dst, "r+") as f:
        for name in f["data"]:
            obs = f["data"][name]["obs"]
            for key in object_obs_keys(obs):
                del obs[key]


@pytest.mark.sim
def test_recorded_demo_has_object_keys(demo_file: Path) -> None:
    assert check_official_layout(demo_file) == []
    with h5py.File(demo_file, "r") as f:
        obs = f["data/demo_0/obs"]
        t = int(f["data/demo_0"].attrs["num_samples"])
        expected = [f"{o}_{s}" for o in OBJECTS for s, _ in OBJECT_POSE_FIELDS]
        assert object_obs_keys(obs) == expected
        assert set(obs) == set(OBS_KEYS) | set(expected)
        for o in OBJECTS:
            for suffix, width in OBJECT_POSE_FIELDS:
                arr = obs[f"{o}_{suffix}"]
                assert arr.shape == (t, width) and arr.dtype == np.float64, (o, suffix, arr.shape, arr.dtype)
            q = obs[f"{o}_quat"][()]
            np.testing.assert_allclose(np.linalg.norm(q, axis=1), 1.0, atol=1e-6)
        # to_robot0_eef_pos is the object's position in the hand's frame: zero-ish only for the carried object
        assert np.linalg.norm(obs[f"{CARRIED}_to_robot0_eef_pos"][()], axis=1).min() < 0.05


@pytest.mark.sim
def test_poses_recovered_from_states_equal_recorded(demo_file: Path, tmp_path: Path) -> None:
    stripped = tmp_path / "stripped.hdf5"
    strip_object_keys(demo_file, stripped)
    assert not has_object_poses(stripped) and has_object_poses(demo_file)

    converted = tmp_path / "out" / "converted.hdf5"
    assert add_object_poses(stripped, converted) == 1
    assert not has_object_poses(stripped)  # the source is untouched when dst is given
    assert stat.S_IMODE(os.stat(converted).st_mode) == stat.S_IMODE(os.stat(stripped).st_mode)
    assert not [p for p in converted.parent.iterdir() if p != converted]  # no temp file left
    assert check_official_layout(converted) == []
    worst: dict[str, float] = {}
    with h5py.File(demo_file, "r") as a, h5py.File(converted, "r") as b:
        ga, gb = a["data/demo_0"], b["data/demo_0"]
        assert object_obs_keys(gb["obs"]) == object_obs_keys(ga["obs"])
        for key in ("actions", "states", "obs/agentview_rgb", "obs/ee_pos"):  # the rest is kept as it was
            np.testing.assert_array_equal(gb[key][()], ga[key][()])
        for key in object_obs_keys(ga["obs"]):
            rec, got = ga["obs"][key][()], gb["obs"][key][()]
            assert got.dtype == np.float64 and got.shape == rec.shape
            np.testing.assert_allclose(got[0], rec[0], rtol=0, atol=EXACT, err_msg=key)  # row 0: after a state load
            at_rest = not key.startswith(CARRIED) and not key.endswith("_to_robot0_eef_pos")
            np.testing.assert_allclose(got, rec, rtol=0, atol=EXACT if at_rest else SUBSTEP_LAG, err_msg=key)
            worst[key] = float(np.abs(got - rec).max())
    print("max |recovered - recorded| per key:", {k: f"{v:.2g}" for k, v in sorted(worst.items())})

    # in place: a file that has them is left alone unless forced; forced, the result is the same
    mtime = converted.stat().st_mtime_ns
    assert add_object_poses(converted) == 0 and converted.stat().st_mtime_ns == mtime
    forced = tmp_path / "forced.hdf5"
    assert cli_main([str(converted), "--out", str(forced), "--force"]) == 0
    with h5py.File(converted, "r") as b, h5py.File(forced, "r") as c:
        for key in object_obs_keys(b["data/demo_0/obs"]):
            np.testing.assert_array_equal(c["data/demo_0/obs"][key][()], b["data/demo_0/obs"][key][()])


def _file_without_states(path: Path, bddl: str = "whatever.bddl") -> Path:
    with h5py.File(path, "w") as f:
        data = f.create_group("data")
        data.attrs["bddl_file_name"] = bddl
        g = data.create_group("demo_0")
        g.create_dataset("actions", data=np.zeros((3, 7)))
        g.create_group("obs").create_dataset("ee_pos", data=np.zeros((3, 3)))
    return path


def test_file_without_states_is_one_line_error(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    bad = _file_without_states(tmp_path / "no_states.hdf5")
    with pytest.raises(ValueError) as err:
        add_object_poses(bad)
    msg = str(err.value)
    assert "\n" not in msg and str(bad) in msg and "'states'" in msg and "generate_demos.py" in msg
    before = bad.read_bytes()
    assert cli_main([str(bad)]) == 2
    out = capsys.readouterr()
    assert out.err.count("\n") == 1 and out.err.startswith("error: ") and str(bad) in out.err
    assert "Traceback" not in out.err and bad.read_bytes() == before  # nothing written


def test_bad_inputs_are_one_line_errors(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    not_libero = tmp_path / "plain.hdf5"
    with h5py.File(not_libero, "w") as f:
        f.create_dataset("x", data=np.zeros(3))
    not_hdf5 = tmp_path / "text.hdf5"
    not_hdf5.write_text("hello")
    with pytest.raises(ValueError, match="not a LIBERO demo file"):
        check_file(not_libero)
    with pytest.raises(ValueError, match="not a readable HDF5 file"):
        check_file(not_hdf5)
    empty = tmp_path / "empty"
    empty.mkdir()
    for argv, needle in [([str(not_libero)], "not a LIBERO demo file"), ([str(not_hdf5)], "not a readable HDF5"),
                         ([str(tmp_path / "missing.hdf5")], "no such file or folder"),
                         ([str(empty)], "no *.hdf5 files"),
                         ([str(tmp_path)], "not a LIBERO demo file")]:  # a folder is checked file by file, first
        assert cli_main(argv) == 2, argv
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and needle in err and "Traceback" not in err, (argv, err)
