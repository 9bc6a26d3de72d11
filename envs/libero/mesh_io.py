"""Triangle-mesh files for fast rendering: read and write Wavefront .obj, MuJoCo's
binary .msh and .stl (binary or ASCII) into one in-memory :class:`Mesh`."""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from policy.utils import atomic_write


def row_ids(rows: np.ndarray) -> np.ndarray:
    """(n, d) int64 rows -> (n,) int64 ids, equal iff the rows are equal (mixed radix,
    which keeps the lexicographic order)."""
    if len(rows) == 0:
        return np.zeros(0, np.int64)
    rows = rows - rows.min(0)
    dims = rows.max(0) + 1
    if float(np.prod(dims.astype(np.float64))) < 2**62:
        return np.ravel_multi_index(rows.T, dims)
    return np.unique(rows, axis=0, return_inverse=True)[1].reshape(-1)


@dataclass
class Mesh:
    """A triangle mesh with per-vertex attributes.

    verts (n, 3) float32; faces (m, 3) int64 indices into verts; normals (n, 3)
    float32 or None; uvs (n, 2) float32 or None.
    """

    verts: np.ndarray
    faces: np.ndarray
    normals: np.ndarray | None = None
    uvs: np.ndarray | None = None


def _read_obj(path: Path) -> Mesh:
    text = path.read_text(encoding="utf-8", errors="replace").splitlines()
    rows: dict[str, list[str]] = {"v": [], "vt": [], "vn": [], "f": []}
    for line in text:
        head, _, rest = line.partition(" ")
        if head in rows:
            rows[head].append(rest)

    def floats(key: str, width: int) -> np.ndarray:
        if not rows[key]:
            return np.zeros((0, width), np.float32)
        flat = np.fromstring(" ".join(rows[key]), dtype=np.float64, sep=" ")
        if flat.size == width * len(rows[key]):
            return flat.reshape(-1, width).astype(np.float32)
        return np.array([r.split()[:width] for r in rows[key]], dtype=np.float32)

    v, vt, vn = floats("v", 3), floats("vt", 2), floats("vn", 3)
    c = _obj_triangles_fast(rows["f"], (len(v), len(vt), len(vn)))
    if c is None:
        c = _obj_faces_slow(rows["f"], (len(v), len(vt), len(vn)))
    _, first, inv = np.unique(row_ids(c), return_index=True, return_inverse=True)
    uniq = c[first]
    has_t = len(vt) > 0 and bool((uniq[:, 1] >= 0).all())
    has_n = len(vn) > 0 and bool((uniq[:, 2] >= 0).all())
    return Mesh(
        verts=v[uniq[:, 0]],
        faces=inv.reshape(-1, 3).astype(np.int64),
        normals=vn[uniq[:, 2]] if has_n else None,
        uvs=vt[uniq[:, 1]] if has_t else None,
    )


def _obj_triangles_fast(faces: list[str], counts: tuple[int, int, int]) -> np.ndarray | None:
    """Vectorised parse when every face is a triangle with one token layout; else None."""
    if not faces:
        return np.zeros((0, 3), np.int64)
    first = faces[0].split()
    parts = len(first[0].split("/"))
    text = " ".join(faces).replace("//", "/0/")
    toks = text.replace("/", " ").split()
    if len(toks) != len(faces) * 3 * parts or any(len(f.split()) != 3 for f in faces[:: max(1, len(faces) // 50)]):
        return None
    a = np.array(toks, dtype=np.int64).reshape(-1, parts)
    out = np.full((len(a), 3), -1, np.int64)
    for j in range(parts):
        col, n = a[:, j], counts[j]
        out[:, j] = np.where(col > 0, col - 1, np.where(col < 0, n + col, -1))
    return out


def _obj_faces_slow(faces: list[str], counts: tuple[int, int, int]) -> np.ndarray:
    corners: list[list[int]] = []
    for rest in faces:  # polygons are fan-triangulated
        poly = []
        for tok in rest.split():
            parts = (tok.split("/") + ["", ""])[:3]
            poly.append([(int(p) - 1 if int(p) > 0 else n + int(p)) if p else -1 for p, n in zip(parts, counts)])
        for k in range(1, len(poly) - 1):
            corners += [poly[0], poly[k], poly[k + 1]]
    return np.asarray(corners, dtype=np.int64).reshape(-1, 3)


def _write_obj(path: Path, m: Mesh) -> None:
    lines = ["# simplified by envs.libero.render_fast\n"]
    lines += [f"v {a:.6f} {b:.6f} {c:.6f}\n" for a, b, c in m.verts]
    if m.uvs is not None:
        lines += [f"vt {a:.6f} {b:.6f}\n" for a, b in m.uvs]
    if m.normals is not None:
        lines += [f"vn {a:.5f} {b:.5f} {c:.5f}\n" for a, b, c in m.normals]
    fmt = "{0}/{0}/{0}" if m.uvs is not None and m.normals is not None else (
        "{0}/{0}" if m.uvs is not None else ("{0}//{0}" if m.normals is not None else "{0}"))
    for f in m.faces + 1:
        lines.append("f " + " ".join(fmt.format(int(i)) for i in f) + "\n")
    path.write_text("".join(lines), encoding="utf-8")


def _read_msh(path: Path) -> Mesh:
    data = path.read_bytes()
    nv, nn, nt, nf = struct.unpack("<4i", data[:16])
    off = 16
    verts = np.frombuffer(data, np.float32, 3 * nv, off).reshape(nv, 3)
    off += 12 * nv
    normals = np.frombuffer(data, np.float32, 3 * nn, off).reshape(nn, 3) if nn else None
    off += 12 * nn
    uvs = np.frombuffer(data, np.float32, 2 * nt, off).reshape(nt, 2) if nt else None
    off += 8 * nt
    faces = np.frombuffer(data, np.int32, 3 * nf, off).reshape(nf, 3).astype(np.int64)
    return Mesh(verts.copy(), faces, None if normals is None else normals.copy(), None if uvs is None else uvs.copy())


def _write_msh(path: Path, m: Mesh) -> None:
    nn = 0 if m.normals is None else len(m.normals)
    nt = 0 if m.uvs is None else len(m.uvs)
    parts = [struct.pack("<4i", len(m.verts), nn, nt, len(m.faces)), m.verts.astype("<f4").tobytes()]
    if nn:
        parts.append(m.normals.astype("<f4").tobytes())
    if nt:
        parts.append(m.uvs.astype("<f4").tobytes())
    parts.append(m.faces.astype("<i4").tobytes())
    path.write_bytes(b"".join(parts))


def _read_stl(path: Path) -> Mesh:
    data = path.read_bytes()
    if data[:5] == b"solid" and b"facet" in data[:400]:
        pts = [list(map(float, ln.split()[1:4])) for ln in data.decode(errors="replace").splitlines()
               if ln.strip().startswith("vertex")]
        tri = np.asarray(pts, dtype=np.float32).reshape(-1, 3)
    else:
        n = struct.unpack("<I", data[80:84])[0]
        rec = np.frombuffer(data, np.dtype([("n", "<f4", 3), ("v", "<f4", (3, 3)), ("a", "<u2")]), n, 84)
        tri = rec["v"].reshape(-1, 3)
    uniq, inv = np.unique(tri, axis=0, return_inverse=True)
    return Mesh(uniq.astype(np.float32), inv.reshape(-1, 3).astype(np.int64))


def _write_stl(path: Path, m: Mesh) -> None:
    tri = m.verts[m.faces].astype(np.float32)  # (F, 3, 3)
    nrm = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    nrm /= np.maximum(np.linalg.norm(nrm, axis=1, keepdims=True), 1e-12)
    rec = np.zeros(len(tri), np.dtype([("n", "<f4", 3), ("v", "<f4", (3, 3)), ("a", "<u2")]))
    rec["n"], rec["v"] = nrm, tri
    path.write_bytes(b"\0" * 80 + struct.pack("<I", len(tri)) + rec.tobytes())


_READERS: dict[str, Callable[[Path], Mesh]] = {".obj": _read_obj, ".msh": _read_msh, ".stl": _read_stl}
_WRITERS: dict[str, Callable[[Path, Mesh], None]] = {".obj": _write_obj, ".msh": _write_msh, ".stl": _write_stl}


def read_mesh(path: str | os.PathLike) -> Mesh:
    """Read an .obj, MuJoCo .msh or .stl file into a :class:`Mesh`."""
    p = Path(path)
    if p.suffix.lower() not in _READERS:
        raise ValueError(f"unsupported mesh format {p.suffix!r} ({p}); expected .obj, .msh or .stl")
    return _READERS[p.suffix.lower()](p)


def write_mesh(path: str | os.PathLike, mesh: Mesh) -> None:
    """Write a mesh atomically (temp file + rename) in the format named by the suffix."""
    p = Path(path)
    writer = _WRITERS[p.suffix.lower()]
    atomic_write(p, lambda tmp: writer(Path(tmp), mesh))

MESH_SUFFIXES: tuple[str, ...] = tuple(_READERS)
"""File suffixes read_mesh and write_mesh handle."""
