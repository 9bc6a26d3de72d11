"""Recover the per-object observation keys of demonstration files that lack them.

Object-token policies need, per movable scene object, ``obs/<object>_pos`` (T, 3),
``obs/<object>_quat`` (T, 4, x y z w) and ``obs/<object>_to_robot0_eef_pos`` (T, 3) float64
(the simulator's observations, see :func:`envs.libero.observation.hdf5_obs_fields`). Our recorder writes
them; the official LIBERO files (and ours written before) do not. They are a function of the
simulator state, so :func:`add_object_poses` recovers them from each demo's recorded ``states``:
every row is loaded into a camera-less env of the file's task (``env.reset(seed=0)`` once, then
``env.set_init_state(row)``; nothing is rendered and nothing stepped) and the fields of
``hdf5_obs_fields(env.raw_obs)`` are kept. The file is then copied with those datasets added and
renamed into place (``policy.utils.atomic_write``); everything else is kept byte for byte.

A demo that already has the keys keeps them unless ``force=True`` (then they are recomputed
and replaced), so a rerun over a folder only does what is missing.

Recovered values are the state's own kinematics. The ones a recorder stores come from
robosuite's observables, which ``env.step`` samples one substep before the end of the action
(``joint_pos`` after substep 24 of 25, body and site positions one substep older), so on rows
after the first the recovered ``<object>_to_robot0_eef_pos`` and the carried object's pose differ
from recorded ones by the motion of 1-2 substeps (<= 1e-3 m on a scripted libero_object demo);
objects at rest, and the first row (recorded after ``set_init_state``), agree to <= 1e-9.

CLI: ``python scripts/add_object_poses.py FILE_OR_FOLDER ... [--out PATH] [--force]``
(``envs.libero.object_poses_cli.main``).
"""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any, Callable

import numpy as np

from envs.libero.hdf5_writer import object_obs_keys
from policy.utils import atomic_write

FIX = "pass a demo file in the official LIBERO layout (data.attrs['bddl_file_name'], data/demo_N/states)"


def demo_names(data: Any) -> list[str]:
    """The ``demo_N`` groups of a file's ``data`` group, in N order."""
    names = [k for k in data if k.startswith("demo_") and k[5:].isdigit()]
    return sorted(names, key=lambda k: int(k[5:]))


def check_file(path: str | Path) -> list[str]:
    """The demos of ``path`` (a file in the official layout with ``states``), in order.

    Raises one ValueError line naming the file and the fix when it is not readable HDF5, has no
    ``data`` group, no ``bddl_file_name`` attribute, no demos, or a demo without ``states``."""
    import h5py

    path = Path(path)
    try:
        f = h5py.File(path, "r")
    except OSError as err:
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise ValueError(f"{path}: not a readable HDF5 file ({reason}); {FIX}") from None
    with f:
        if "data" not in f or "bddl_file_name" not in f["data"].attrs:
            raise ValueError(f"{path}: not a LIBERO demo file (no data.attrs['bddl_file_name']); {FIX}")
        names = demo_names(f["data"])
        if not names:
            raise ValueError(f"{path}: no data/demo_N groups; {FIX}")
        for name in names:
            g = f["data"][name]
            if "states" not in g or g["states"].ndim != 2 or len(g["states"]) == 0:
                raise ValueError(f"{path}: data/{name} has no recorded 'states' (T, S), which the object poses are "
                                 "recovered from; use the original LIBERO file or regenerate the demos "
                                 "(python scripts/generate_demos.py), which record states")
    return names


def has_object_poses(path: str | Path) -> bool:
    """Whether every demo of ``path`` has object keys (``obs/<object>_to_robot0_eef_pos`` and friends)."""
    import h5py

    with h5py.File(path, "r") as f:
        names = demo_names(f["data"])
        return bool(names) and all("obs" in f["data"][n] and object_obs_keys(f["data"][n]["obs"]) for n in names)


def demos_to_convert(path: str | Path, force: bool = False) -> list[tuple[str, int]]:
    """(demo name, steps) of the demos of ``path`` that :func:`add_object_poses` computes: those
    without object keys, or all with ``force``. Checks the file first (:func:`check_file`)."""
    import h5py

    names = check_file(path)
    with h5py.File(path, "r") as f:
        groups = [(n, f["data"][n]) for n in names]
        return [(n, len(g["states"])) for n, g in groups if force or "obs" not in g or not object_obs_keys(g["obs"])]


def recover_object_poses(env: Any, states: np.ndarray) -> dict[str, np.ndarray]:
    """Object keys (T, 3/4/3) float64 of flattened MuJoCo states (T, S), loaded one by one into
    ``env`` (a :class:`envs.libero.env.LiberoEnv`, best camera-less: ``resolution=0``)."""
    from envs.libero.observation import hdf5_obs_fields

    out: dict[str, list[np.ndarray]] = {}
    for row in states:
        env.set_init_state(row)
        fields = hdf5_obs_fields(env.raw_obs)
        for key in object_obs_keys(fields):
            out.setdefault(key, []).append(fields[key])
    return {k: np.asarray(v, np.float64) for k, v in out.items()}


def add_object_poses(src: str | Path, dst: str | Path | None = None,
                     progress: Callable[[int], None] | None = None, force: bool = False) -> int:
    """Write ``dst`` (default: ``src``, in place): ``src`` with the object keys of every demo.

    Demos that already have them keep them unless ``force`` (recomputed and replaced). Returns the
    number of demos whose keys were computed; 0 with ``dst`` None means the file was left untouched.
    ``progress(n)`` is called with each converted demo's step count. Bad input is one ValueError line
    (see :func:`check_file`; also raised when the states do not fit the task's simulator)."""
    import h5py

    from envs.libero.env import make_env
    from envs.scripted.replay import task_of_file

    src = Path(src)
    dst = src if dst is None else Path(dst)
    todo = [name for name, _ in demos_to_convert(src, force)]
    if not todo and dst.resolve() == src.resolve():
        return 0
    computed: dict[str, dict[str, np.ndarray]] = {}
    if todo:
        try:
            task = task_of_file(src)
        except ValueError as err:
            raise ValueError(f"{err}; object poses need the task's simulator: {FIX}") from None
        env = make_env(task.suite, task.index, resolution=0)
        try:
            env.reset(seed=0)
            width = len(env.get_sim_state())
            with h5py.File(src, "r") as f:
                for name in todo:
                    states = np.asarray(f["data"][name]["states"], np.float64)
                    if states.shape[1] != width:
                        raise ValueError(f"{src}: data/{name}/states rows have {states.shape[1]} values but the "
                                         f"simulator state of {task.suite} task {task.index} has {width}: the file was "
                                         "recorded with another scene model; regenerate or re-record it with this LIBERO")
                    computed[name] = recover_object_poses(env, states)
                    if progress is not None:
                        progress(len(states))
        finally:
            env.close()

    def write(tmp: str) -> None:
        shutil.copyfile(src, tmp)
        with h5py.File(tmp, "r+") as f:
            for name, fields in computed.items():
                obs = f["data"][name].require_group("obs")
                for key in object_obs_keys(obs):  # force: replace what was there
                    del obs[key]
                for key, arr in fields.items():
                    obs.create_dataset(key, data=arr)

    atomic_write(dst, write)
    return len(computed)


def hdf5_files(folder: str | Path) -> list[Path]:
    """The ``*.hdf5`` files directly in ``folder`` (sorted; hidden temp files skipped)."""
    return sorted(p for p in Path(folder).glob("*.hdf5") if p.is_file() and not p.name.startswith("."))


def add_object_poses_folder(folder: str | Path, out: str | Path | None = None, force: bool = False,
                            show_progress: bool = True) -> dict[Path, int]:
    """:func:`add_object_poses` on every ``*.hdf5`` of ``folder`` (in place, or into folder ``out``
    under the same names), with one tqdm bar over the steps to convert. Every file is checked first,
    so bad input raises before anything is written. Returns {source file: demos converted}."""
    from tqdm import tqdm

    files = hdf5_files(folder)
    if not files:
        raise ValueError(f"{folder}: no *.hdf5 files in it; pass a folder of LIBERO demo files")
    steps = sum(t for path in files for _, t in demos_to_convert(path, force))
    done: dict[Path, int] = {}
    with tqdm(total=steps, desc="object poses", unit="step", disable=not show_progress) as bar:
        for path in files:
            bar.set_postfix_str(path.name[:40])
            done[path] = add_object_poses(path, None if out is None else Path(out) / path.name, bar.update, force)
    return done

