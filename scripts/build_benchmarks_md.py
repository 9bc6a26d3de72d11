#!/usr/bin/env python
"""Assemble BENCHMARKS.md from benchmarks/header.md and the per-topic sections benchmarks/<topic>.md.

Edit the sections, then run `python scripts/build_benchmarks_md.py`; links to results/ are
rewritten to benchmarks/results/ so they work from the repository root.
"""

from __future__ import annotations

import sys
from pathlib import Path

from policy.utils import atomic_write_text

ROOT = Path(__file__).resolve().parents[1]
TOPICS = ("toy2d", "image", "train", "data", "eval", "cluster", "demos", "serve", "features", "libero")


def build() -> str:
    parts = [(ROOT / "benchmarks" / "header.md").read_text().rstrip("\n")]
    for topic in TOPICS:
        text = (ROOT / "benchmarks" / f"{topic}.md").read_text().rstrip("\n")
        parts.append(text.replace("](results/", "](benchmarks/results/"))
    return "\n\n".join(parts) + "\n"


def main() -> int:
    atomic_write_text(ROOT / "BENCHMARKS.md", build())
    print(f"wrote {ROOT / 'BENCHMARKS.md'} from {len(TOPICS)} sections")
    return 0


if __name__ == "__main__":
    sys.exit(main())
