#!/usr/bin/env python
"""Compare two captures of capture.py, artifact by artifact.

    python compare.py A.npz B.npz

Prints IDENTICAL / DIFFERENT per artifact (demo, train, eval, eval_replay, serve) with
details (max abs difference, which episodes / steps / keys), then the timings side by
side and the module each name was resolved from (informational). Exit status 0 only if
every artifact is bit-identical (timing.* and meta.* never count).
"""
from __future__ import annotations

import json
import sys
from collections import defaultdict

import numpy as np

ARTIFACTS = ("demo", "train", "eval", "eval_replay", "serve")
INFO = ("timing", "meta")


def _describe_diff(a: np.ndarray, b: np.ndarray) -> str:
    if a.shape != b.shape:
        return f"shape {a.shape} vs {b.shape}"
    if a.dtype.kind in "US" and b.dtype.kind in "US" and a.ndim == 0:
        return f"{str(a)!r} vs {str(b)!r}"
    if a.dtype != b.dtype:
        if not (np.issubdtype(a.dtype, np.number) and np.issubdtype(b.dtype, np.number)):
            return f"dtype {a.dtype} vs {b.dtype}"
    if a.dtype.kind in "fc" or b.dtype.kind in "fc":
        fa, fb = a.astype(np.float64), b.astype(np.float64)
        both_nan = np.isnan(fa) & np.isnan(fb)
        diff = np.where(both_nan, 0.0, np.abs(fa - fb))
        diff = np.where(np.isnan(diff), np.inf, diff)
        bad = np.argwhere(diff > 0)
        first = tuple(int(i) for i in bad[0]) if len(bad) else None
        return (f"max abs diff {diff.max():.3e}, {len(bad)}/{diff.size} elements differ, first at {first}"
                + (f" (dtype {a.dtype} vs {b.dtype})" if a.dtype != b.dtype else ""))
    if a.ndim == 0:
        return f"{a.item()!r} vs {b.item()!r}"
    bad = np.argwhere(a != b)
    items = ", ".join(f"{tuple(int(i) for i in ix)}: {a[tuple(ix)]!r} vs {b[tuple(ix)]!r}" for ix in bad[:5])
    return f"{len(bad)}/{a.size} elements differ: {items}"


def _equal(a: np.ndarray, b: np.ndarray) -> bool:
    """Bit-exact: same shape, dtype and bytes (NaN == NaN, -0.0 != 0.0)."""
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    if a.dtype.kind in "US":
        return bool(np.array_equal(a, b))
    return np.ascontiguousarray(a).tobytes() == np.ascontiguousarray(b).tobytes()


def _episode_of(key: str) -> str:
    """demo.<suite>.<index>.seed<seed>.<field> -> '<suite> <index> seed <seed>'."""
    parts = key.split(".")
    return " ".join(parts[1:4]) if parts[0] == "demo" and len(parts) >= 5 else ""


def _rows_detail(name: str, a: dict, b: dict, key: str) -> str:
    """For per-episode / per-observation arrays: which rows (by id) differ."""
    ids = {"eval": ("eval.episode_id", "eval.obs_id"), "eval_replay": ("eval_replay.episode_id",)}
    for id_key in ids.get(name, ()):
        if id_key in a and id_key in b and key in a and key in b and a[key].shape[:1] == a[id_key].shape[:1] \
                and b[key].shape[:1] == b[id_key].shape[:1] and np.array_equal(a[id_key], b[id_key]):
            rows = [str(a[id_key][i]) for i in range(len(a[id_key])) if not _equal(a[key][i:i + 1], b[key][i:i + 1])]
            if rows:
                return f"; rows {rows[:8]}{' ...' if len(rows) > 8 else ''}"
    if name == "train" and key in a and key in b and a[key].ndim == 1 and a[key].shape == b[key].shape:
        steps = np.nonzero(~np.array([_equal(a[key][i:i + 1], b[key][i:i + 1]) for i in range(len(a[key]))]))[0]
        if len(steps):
            return f"; first differing logged step index {int(steps[0])} (step {int(a['train.step'][steps[0]])})" \
                if "train.step" in a else f"; first differing index {int(steps[0])}"
    return ""


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    with np.load(argv[0], allow_pickle=False) as fa, np.load(argv[1], allow_pickle=False) as fb:
        a = {k: fa[k] for k in fa.files}
        b = {k: fb[k] for k in fb.files}
    groups: dict[str, set[str]] = defaultdict(set)
    for k in set(a) | set(b):
        groups[k.split(".")[0]].add(k)
    all_ok = True
    print(f"A = {argv[0]}\nB = {argv[1]}\n")
    for name in [*ARTIFACTS, *sorted(set(groups) - set(ARTIFACTS) - set(INFO))]:
        keys = sorted(groups.get(name, ()))
        if not keys:
            print(f"{name:12s} MISSING in both (section not captured)")
            all_ok = False
            continue
        only = {side for k in keys for side, d in (("A", a), ("B", b)) if k in d}
        if len(only) == 1:
            print(f"{name:12s} DIFFERENT (captured only in {only.pop()}: {len(keys)} arrays; rerun with all sections)")
            all_ok = False
            continue
        errs = [(side, str(d[f"{name}.capture_error"])) for side, d in (("A", a), ("B", b)) if f"{name}.capture_error" in d]
        if errs:
            all_ok = False
            print(f"{name:12s} DIFFERENT (the capture of this section FAILED)")
            for side, text in errs:
                lines = [ln for ln in text.strip().splitlines() if ln.strip()]
                print(f"{'':12s}   {side}: {lines[-1] if lines else text}")
                for ln in lines[-5:-1]:
                    print(f"{'':12s}      {ln}")
            continue
        problems = []
        for k in keys:
            if k not in a or k not in b:
                problems.append(f"{k}: only in {'A' if k in a else 'B'}")
                continue
            if not _equal(a[k], b[k]):
                problems.append(f"{k}: {_describe_diff(a[k], b[k])}{_rows_detail(name, a, b, k)}")
        if problems:
            all_ok = False
            print(f"{name:12s} DIFFERENT ({len(problems)} of {len(keys)} arrays)")
            if name == "demo":
                eps = sorted({_episode_of(p.split(':')[0]) for p in problems} - {""})
                print(f"{'':12s} episodes that differ: {eps}")
            for p in problems:
                print(f"{'':12s}   {p}")
        else:
            extra = ""
            if name == "demo":
                n = len({_episode_of(k) for k in keys} - {""})
                extra = f", {n} episodes"
            print(f"{name:12s} IDENTICAL ({len(keys)} arrays{extra})")

    print("\ntimings (s)                               A          B")
    for k in sorted(groups.get("timing", ())):
        va = f"{float(a[k]):10.2f}" if k in a else f"{'-':>10s}"
        vb = f"{float(b[k]):10.2f}" if k in b else f"{'-':>10s}"
        if k.startswith("timing.section") or k == "timing.total_s" or k in ("timing.train.s", "timing.eval.s",
                                                                              "timing.eval_replay.s"):
            print(f"  {k[7:]:36s} {va} {vb}")
    ra = json.loads(str(a.get("meta.resolved", "{}")))
    rb = json.loads(str(b.get("meta.resolved", "{}")))
    moved = {k: (ra.get(k), rb.get(k)) for k in sorted(set(ra) | set(rb)) if not k.startswith("module:")}
    print("\nresolved from (A -> B):")
    for k, (x, y) in moved.items():
        print(f"  {k:24s} {x} -> {y}")
    for side, d in (("A", a), ("B", b)):
        bad = json.loads(str(d.get("meta.foreign_modules", "[]")))
        if bad:
            all_ok = False
            print(f"\n{side}: modules loaded from outside its repo: {bad}")
    print("\nRESULT:", "ALL IDENTICAL" if all_ok else "DIFFERENCES FOUND")
    return 0 if all_ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
