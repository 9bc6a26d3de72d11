"""Repairs LIBERO's fresh randomised layouts before the scripted demonstrator plans on them.

``env.reset()`` samples objects that start on or in a *fixture's region* (bowl on the
stove, bowl in the top drawer) relative to the region site's world position read
*before* the fixtures were moved, and adds the fixture's position on top of it: such
objects appear up to a metre off, in the air, and fall through or beside their fixture
(the 50 official init states show them resting in the region). Objects stacked on
other objects start well above their support and land tilted. :func:`repair_layout`
puts every region-placed object back over its region (LIBERO's own x/y ranges around
the site) and lowers every movable object straight down until it touches what is
under it, so the settling no-ops that follow start from a resting scene.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from envs.scripted.scene import subtree

__all__ = ["repair_layout"]

DROP_STEP = 0.002  # m, resolution of the lowering search
MAX_DROP = 1.5  # m, never lower an object further than this
IN_JITTER = 0.01  # m, spread of objects placed in a container region (drawer) around its site


def _object_bodies(env: Any, name: str) -> set[int]:
    """Body ids of the subtree rooted at movable object ``name``."""
    return set(subtree(env.sim.model._model, int(env.obj_body_id[name])))


def _penetrates(env: Any, bodies: set[int], depth: float = -1e-4) -> bool:
    """Whether any collision geom of ``bodies`` penetrates another body (after ``forward``)."""
    model, data = env.sim.model._model, env.sim.data._data
    for i in range(data.ncon):
        c = data.contact[i]
        b1, b2 = int(model.geom_bodyid[c.geom1]), int(model.geom_bodyid[c.geom2])
        if (b1 in bodies) != (b2 in bodies) and c.dist < depth:
            return True
    return False


def _set_pose(env: Any, name: str, pos: np.ndarray, quat: np.ndarray) -> None:
    """Put movable object ``name`` at ``pos`` (3,) with quaternion ``quat`` (4,, w first)."""
    env.sim.data.set_joint_qpos(env.objects_dict[name].joints[-1], np.concatenate([pos, quat]))
    env.sim.forward()


def _drop(env: Any, name: str) -> None:
    """Lower (or raise, if it starts inside something) ``name`` until it just touches its support."""
    joint = env.objects_dict[name].joints[-1]
    qpos = np.array(env.sim.data.get_joint_qpos(joint), dtype=np.float64)
    pos, quat = qpos[:3].copy(), qpos[3:7].copy()
    bodies = _object_bodies(env, name)
    _set_pose(env, name, pos, quat)
    if _penetrates(env, bodies):
        for _ in range(int(0.1 / DROP_STEP)):
            pos[2] += DROP_STEP
            _set_pose(env, name, pos, quat)
            if not _penetrates(env, bodies):
                break
        return
    z0 = pos[2]
    while z0 - pos[2] < MAX_DROP:
        pos[2] -= DROP_STEP
        _set_pose(env, name, pos, quat)
        if _penetrates(env, bodies):
            pos[2] += DROP_STEP
            break
    _set_pose(env, name, pos, quat)


def _region_xy(env: Any, region: str, radius: float, inside: bool) -> np.ndarray:
    """A point (2,) drawn the way LIBERO's site samplers intend: on a region, anywhere the object
    of horizontal ``radius`` fits; in a container region, near its site (within ``IN_JITTER``)."""
    centre = env.sim.data.get_site_xpos(region)[:2]
    if inside:
        half = np.full(2, IN_JITTER)
    else:
        half = np.maximum(0.5 * np.asarray(env.object_sites_dict[region].size, np.float64)[:2] - radius, 0.0)
    return centre + np.random.uniform(-1.0, 1.0, 2) * half


def repair_layout(env: Any) -> None:
    """Fix a freshly reset LIBERO scene in place (``env``: the inner ``BDDLBaseDomain``).

    Region-placed objects go back over their region; then every movable object, lowest first
    (supports before what stands on them), is lowered until it rests on what is under it.
    Draws from ``np.random`` (seeded by the caller like LIBERO's own samplers).
    """
    env.sim.forward()
    problem = env.parsed_problem
    regions = problem["regions"]
    movable = [n for n in env.objects_dict if n in env.obj_body_id]
    for state in problem["initial_state"]:
        if len(state) != 3 or state[0] not in ("on", "in") or state[1] not in movable:
            continue
        region = state[2]
        if region not in regions or region not in env.object_sites_dict:
            continue
        target = regions[region]["target"]
        if target not in env.fixtures_dict and target not in env.objects_dict:
            continue  # table regions are sampled correctly
        qpos = np.array(env.sim.data.get_joint_qpos(env.objects_dict[state[1]].joints[-1]), np.float64)
        xy = _region_xy(env, region, float(env.objects_dict[state[1]].horizontal_radius), state[0] == "in")
        z = float(env.sim.data.get_site_xpos(region)[2]) - float(env.objects_dict[state[1]].bottom_offset[-1])
        _set_pose(env, state[1], np.array([xy[0], xy[1], z + 0.01]), qpos[3:7])
    for state in problem["initial_state"]:  # stacked objects: straight over their support
        if len(state) == 3 and state[0] == "on" and state[1] in movable and state[2] in movable:
            qpos = np.array(env.sim.data.get_joint_qpos(env.objects_dict[state[1]].joints[-1]), np.float64)
            qpos[:2] = env.sim.data.xpos[env.obj_body_id[state[2]]][:2]
            _set_pose(env, state[1], qpos[:3], qpos[3:7])
    for name in sorted(movable, key=lambda n: float(env.sim.data.xpos[env.obj_body_id[n]][2])):
        _drop(env, name)
