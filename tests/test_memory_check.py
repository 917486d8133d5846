"""benchmarks/memory_check.py at a tiny shape on the CPU: the script that measures the memory model on a GPU runs,
and models every part it would measure (the measured figures need CUDA and are null here)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import memory_check  # noqa: E402


def test_tiny_cpu_run(tmp_path, capsys):
    out = tmp_path / "m.json"
    assert memory_check.main(["--tiny", "--device", "cpu", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["device"] == "cpu" and result["shape"] == "tiny" and result["dtype"] == "float32"
    assert set(result["parts"]) == {"resident", "stage: generation", "stage: fitting", "stage: lm-eval"}
    assert all(row["modelled"] > 0 and row["measured"] is None for row in result["parts"].values())
    assert "| stage: lm-eval |" in capsys.readouterr().out
