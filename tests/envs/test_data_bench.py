"""scripts/bench_data.py on a tiny setting: every configuration runs and data.json has the issue's format."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_bench_data_smoke(tmp_path: Path) -> None:
    out = tmp_path / "data.json"
    proc = subprocess.run([sys.executable, str(REPO / "scripts" / "bench_data.py"), "--scales", "1,2", "--scale-base", "120",
                           "--length", "12", "--image-size", "32", "--workers", "0", "--batches", "2", "--batch-size", "4",
                           "--max-ram-gb", "0.001", "--work", str(tmp_path / "work"), "--out", str(out)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert set(result) >= {"peak_rss_mb", "samples_per_s", "workers", "machine", "date"} and result["workers"] == 0
    assert set(result["peak_rss_mb"]["bounded"]) == {"1", "2"}
    assert set(result["peak_rss_mb"]["in_ram"]) == {"1"}  # x2 holds more frames than --max-ram-gb: left out
    assert all(v > 0 for v in result["samples_per_s"]["bounded"].values())
    assert result["steps"] == {"1": 120, "2": 240}
    assert "left out" in proc.stderr
