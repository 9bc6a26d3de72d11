"""Opt-in fast rendering: render LIBERO scenes from simplified copies of the heaviest
visual meshes.

Why: on a CPU the software rasteriser (Mesa llvmpipe through EGL) is bound by the
number of triangles, and a LIBERO scene carries ~400k visual triangles (~1.1M
MuJoCo vertices: basket 66k faces, living room 60k, each Panda link ~13k, ...).
Rendering two cameras then costs ~10x the physics of an env step.

What: every mesh asset that is used *only* by purely visual geoms (contype=0,
conaffinity=0 and a geom group outside the compiler's ``inertiagrouprange``, so
that it neither collides nor contributes mass) and has more than ``max_faces``
triangles is replaced by a simplified copy with at most max(``max_faces``, 6% of
its faces) triangles (12% for room-sized meshes, whose thin walls need it).
Collision meshes, masses and inertias are untouched, so the physics is identical
(bit for bit; tests/envs/test_libero.py checks it); only the pictures change.

How: vertex clustering on a uniform grid (Rossignac & Borrel 1993), implemented in
numpy. Corners are clustered by (grid cell, quantised UV, quantised normal) so
texture seams and sharp edges survive; a cluster's vertex is the mean of its
members. The grid is refined by bisection until the face count fits. Simplified
meshes are written in the source format (.obj, .msh, .stl) to
``$DDLIBERO_CACHE/meshes`` (default ``~/.cache/ddlibero/meshes``) with atomic
writes and reused across runs.
"""

from __future__ import annotations

import hashlib
import os
import warnings
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import numpy as np

from envs.libero.mesh_io import MESH_SUFFIXES, Mesh, read_mesh, row_ids, write_mesh
from policy.utils import atomic_write

__all__ = ["Mesh", "read_mesh", "write_mesh", "simplify_mesh", "simplify_scene_xml", "fast_render_env"]

ALGO_VERSION = "vc8"
DEFAULT_MAX_FACES = 500
"""Face budget of one simplified mesh (meshes at or below it are kept as they are)."""
MIN_KEEP_FRACTION = 0.06
"""A mesh keeps at least this fraction of its faces (big textured objects need the detail)."""
ROOM_KEEP_FRACTION = 0.12
ROOM_EXTENT_M = 1.0
"""Meshes larger than this (rooms, tables) keep ROOM_KEEP_FRACTION: under a coarse grid
their thin walls would collapse."""


def cache_dir() -> Path:
    """Folder of the simplified meshes: ``$DDLIBERO_CACHE/meshes`` or ``~/.cache/ddlibero/meshes``."""
    root = os.environ.get("DDLIBERO_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "ddlibero"))
    return Path(root) / "meshes"


# --------------------------------------------------------------------- decimation
def _cluster(mesh: Mesh, cells: int) -> Mesh:
    lo = mesh.verts.min(0)
    size = float((mesh.verts.max(0) - lo).max()) / cells + 1e-12
    keys = [np.floor((mesh.verts - lo) / size).astype(np.int64)]
    if mesh.uvs is not None:
        keys.append(np.floor(mesh.uvs * max(2, 2 * cells)).astype(np.int64))  # keeps seams and texture detail apart
    if mesh.normals is not None:
        n = mesh.normals / np.maximum(np.linalg.norm(mesh.normals, axis=1, keepdims=True), 1e-12)
        keys.append(np.rint(n * 1.5).astype(np.int64))  # ~35 degree bins: sharp edges stay sharp
    _, label = np.unique(row_ids(np.concatenate(keys, axis=1)), return_inverse=True)
    label = label.reshape(-1)
    k = int(label.max()) + 1
    count = np.bincount(label, minlength=k).astype(np.float64)[:, None]

    def mean(a: np.ndarray) -> np.ndarray:
        cols = [np.bincount(label, weights=a[:, j], minlength=k) for j in range(a.shape[1])]
        return (np.stack(cols, axis=1) / count).astype(np.float32)

    faces = label[mesh.faces]
    keep = (faces[:, 0] != faces[:, 1]) & (faces[:, 1] != faces[:, 2]) & (faces[:, 0] != faces[:, 2])
    faces = faces[keep]
    _, first = np.unique(row_ids(np.sort(faces, axis=1)), return_index=True)
    faces = faces[np.sort(first)]
    normals = None
    if mesh.normals is not None:
        normals = mean(mesh.normals)
        normals /= np.maximum(np.linalg.norm(normals, axis=1, keepdims=True), 1e-12)
    out = Mesh(mean(mesh.verts), faces, normals, None if mesh.uvs is None else mean(mesh.uvs))
    used = np.unique(out.faces)  # drop vertices no face uses
    remap = np.full(k, -1, np.int64)
    remap[used] = np.arange(len(used))
    return Mesh(out.verts[used], remap[out.faces], None if normals is None else normals[used],
                None if out.uvs is None else out.uvs[used])


def simplify_mesh(mesh: Mesh, max_faces: int = DEFAULT_MAX_FACES, keep_fraction: float = MIN_KEEP_FRACTION) -> Mesh:
    """Vertex-clustering simplification to at most max(``max_faces``, ``keep_fraction`` x faces)
    triangles (the finest grid that fits, found by bisection over 2..512 cells along
    the longest side).
    Returns the input unchanged if it already fits or no grid makes it fit."""
    if len(mesh.faces) <= max_faces:
        return mesh
    max_faces = max(max_faces, int(len(mesh.faces) * keep_fraction))
    # noisy normals or fragmented UV charts can keep even a coarse grid above budget:
    # then cluster without normals; a textured mesh may use up to 4x the budget to keep
    # its UVs (without them its texture is lost); only then are the UVs dropped
    variants = [(mesh, max_faces), (Mesh(mesh.verts, mesh.faces, None, mesh.uvs), max_faces)]
    if mesh.uvs is not None:
        variants += [(Mesh(mesh.verts, mesh.faces, None, mesh.uvs), 4 * max_faces), (Mesh(mesh.verts, mesh.faces), max_faces)]
    for m, budget in variants:
        if len(m.faces) <= budget:
            return mesh
        if len(_cluster(m, 2).faces) > budget:
            continue
        lo, hi, best = 2, 512, None
        while lo <= hi:
            mid = (lo + hi) // 2
            cand = _cluster(m, mid)
            if len(cand.faces) <= budget:
                best, lo = cand, mid + 1
            else:
                hi = mid - 1
        if best is not None and len(best.faces) >= 4:
            return best
    return mesh  # cannot be simplified within the budget: keep it


def _mesh_compiles(path: Path, scale: str | None) -> bool:
    import mujoco

    s = f' scale="{scale}"' if scale else ""
    xml = (f'<mujoco><compiler inertiagrouprange="0 0"/><asset><mesh name="m" file="{path}"{s}/></asset>'
           '<worldbody><body><geom type="mesh" mesh="m" contype="0" conaffinity="0" group="1"/>'
           '<geom type="sphere" size=".01"/><freejoint/></body></worldbody></mujoco>')
    try:
        mujoco.MjModel.from_xml_string(xml)
        return True
    except Exception:
        return False


def simplified_mesh_path(src: str, max_faces: int = DEFAULT_MAX_FACES, scale: str | None = None) -> str:
    """Path of the cached simplified copy of mesh file ``src`` (created on first use).
    Returns ``src`` itself when the mesh already fits ``max_faces`` or when MuJoCo
    rejects the simplified copy (e.g. a degenerate volume); a ``.keep`` marker records that."""
    p = Path(src)
    st = p.stat()
    key = hashlib.sha1(f"{p.resolve()}|{st.st_size}|{st.st_mtime_ns}|{max_faces}|{ALGO_VERSION}".encode()).hexdigest()[:16]
    out = cache_dir() / f"{p.stem}_{key}{p.suffix.lower()}"
    keep = out.with_suffix(".keep")
    if out.exists():
        return str(out)
    if keep.exists():
        return src
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        mesh = read_mesh(p)
        k = np.array([float(x) for x in scale.split()]) if scale else np.ones(3)
        extent = float(((mesh.verts.max(0) - mesh.verts.min(0)) * k).max()) if len(mesh.verts) else 0.0
        simple = simplify_mesh(mesh, max_faces, ROOM_KEEP_FRACTION if extent > ROOM_EXTENT_M else MIN_KEEP_FRACTION)
    except Exception as exc:  # an unreadable or odd mesh: render it as it is, and say so
        warnings.warn(f"fast rendering keeps the official mesh {p.name}: {type(exc).__name__}: {exc}")
        keep.write_text(f"simplification failed: {type(exc).__name__}: {exc}\n")
        return src
    if simple is mesh:
        keep.parent.mkdir(parents=True, exist_ok=True)
        keep.write_text("fits the face budget, or no simplification within it\n")
        return src
    def write_checked(tmp: str) -> None:  # a unique temp name: parallel workers may build the same mesh
        write_mesh(tmp, simple)
        if not _mesh_compiles(Path(tmp), scale):
            raise _Rejected

    try:
        atomic_write(out, write_checked)
    except _Rejected:
        keep.write_text("MuJoCo rejected the simplified copy; the official mesh is used\n")
        return src
    return str(out)


class _Rejected(Exception):
    """MuJoCo does not compile the simplified copy of a mesh."""


# ---------------------------------------------------------------------- the scene
def visual_only_meshes(root: ET.Element) -> set[str]:
    """Names of mesh assets that only purely visual geoms use (no collision, no mass):
    every geom using them has contype=0, conaffinity=0 and a group outside the
    compiler's inertiagrouprange. Geoms with a default class make their mesh ineligible."""
    comp = root.find("compiler")
    rng = (comp.get("inertiagrouprange") if comp is not None else None) or "0 5"
    glo, ghi = (int(x) for x in rng.split())
    eligible: dict[str, bool] = {}
    for geom in root.iter("geom"):
        name = geom.get("mesh")
        if name is None:
            continue
        group = int(geom.get("group", "0"))
        ok = (geom.get("contype") == "0" and geom.get("conaffinity") == "0"
              and not glo <= group <= ghi and geom.get("class") is None)
        eligible[name] = eligible.get(name, True) and ok
    for tag in ("site", "skin", "flexcomp"):  # any other user of a mesh: leave it alone
        for el in root.iter(tag):
            if el.get("mesh") is not None:
                eligible[el.get("mesh")] = False
    return {n for n, ok in eligible.items() if ok}


def simplify_scene_xml(xml: str, max_faces: int = DEFAULT_MAX_FACES) -> str:
    """MJCF string -> the same model whose visual-only meshes point at simplified copies."""
    root = ET.fromstring(xml)
    if root.find(".//default/geom") is not None:
        raise ValueError("fast rendering expects a flattened robosuite MJCF without geom defaults")
    names = visual_only_meshes(root)
    for mesh in root.iter("mesh"):
        f, n = mesh.get("file"), mesh.get("name")
        if f is None or n not in names or Path(f).suffix.lower() not in MESH_SUFFIXES or not os.path.isabs(f):
            continue
        mesh.set("file", simplified_mesh_path(f, max_faces, mesh.get("scale")))
    return ET.tostring(root, encoding="unicode")


_FAST_CLASSES: dict[type, type] = {}


def _fast_class(base: type) -> type:
    if base not in _FAST_CLASSES:

        def _initialize_sim(self: Any, xml_string: str | None = None) -> None:
            self._xml_processor = simplify_scene_xml
            base._initialize_sim(self, xml_string)

        # same class name: LIBERO asserts that it equals the BDDL problem name
        _FAST_CLASSES[base] = type(base.__name__, (base,), {"_initialize_sim": _initialize_sim})
    return _FAST_CLASSES[base]


def fast_render_env(env_cls: type, kwargs: dict[str, Any]) -> Any:
    """Build ``env_cls(**kwargs)`` (libero's OffScreenRenderEnv) whose robosuite task
    environment renders simplified visual meshes from construction on and at every
    hard reset. The task class is swapped in libero's TASK_MAPPING only while the
    constructor runs."""
    from libero.libero.envs import bddl_utils
    from libero.libero.envs.bddl_base_domain import TASK_MAPPING

    problem = bddl_utils.get_problem_info(kwargs["bddl_file_name"])["problem_name"]
    base = TASK_MAPPING[problem]
    TASK_MAPPING[problem] = _fast_class(base)
    try:
        return env_cls(**kwargs)
    finally:
        TASK_MAPPING[problem] = base
