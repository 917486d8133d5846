"""benchmarks/chapter_times.py's readers: pytest's durations, a chapter's prerequisites and exercises, the guide."""

from __future__ import annotations

import json

import pytest
from scripts import load_script


@pytest.fixture(scope="module")
def ct():
    return load_script("chapter_times")


def _notebook(tmp_path, *markdown: str):
    cells = [{"cell_type": "markdown", "metadata": {}, "source": m.splitlines(True)} for m in markdown]
    cells.insert(1, {"cell_type": "code", "metadata": {}, "source": ["### Exercise in a code cell: ignored\n"]})
    path = tmp_path / "05_demo.ipynb"
    path.write_text(json.dumps({"cells": cells}))
    return path


def test_durations_add_up_per_notebook(ct):
    out = """
============================= slowest durations ==============================
61.20s call     book/05_conditional_map.ipynb::
0.50s setup    book/05_conditional_map.ipynb::
12.00s call     book/00_preface.ipynb::
(3 durations < 0.005s hidden.  Use -vv to show these durations.)
"""
    assert ct.parse_durations(out) == {"05_conditional_map": pytest.approx(61.7), "00_preface": 12.0}


def test_chapter_title_prerequisites_and_exercises(ct, tmp_path):
    path = _notebook(
        tmp_path,
        "[badge](x)\n\n# The demo chapter\n\n**Prerequisites:** chapters 3 and 4; a causal attention\n"
        "mask.\n\n**Compute:** a minute.",
        "## The map\n\n### Exercise 5.1: fit the map yourself\n\n*Difficulty 2/5 · Importance 5/5 · about 15 minutes*",
        "### Exercise 5.2: a range\n*Difficulty 3/5 · Importance 3/5 · about 20-30 minutes*\n\nText.",
        "### Exercise 5.3: no cost line\n\nText.\n\n## Summary\n\n*Difficulty 1/5 · Importance 1/5 · about 5 minutes*",
    )
    got = ct.read_chapter(path)
    assert got["title"] == "The demo chapter"
    assert got["prerequisites"] == "chapters 3 and 4; a causal attention mask."
    assert [(e["title"], e["difficulty"], e["importance"], e["minutes"]) for e in got["exercises"]] == [
        ("Exercise 5.1: fit the map yourself", 2, 5, 15),
        ("Exercise 5.2: a range", 3, 3, 25),
        ("Exercise 5.3: no cost line", None, None, None),  # the cost line under another heading is not its own
    ]


def test_guide_table_is_written_between_the_markers(ct, tmp_path):
    guide = tmp_path / "guide.md"
    guide.write_text("# Guide\n\n<!-- chapter-table:start -->\nold\n<!-- chapter-table:end -->\n\nAfter.\n")
    state = {"chapters": {
        "05_demo": {"title": "Demo", "prerequisites": "a | b", "seconds": 125.0, "failure": "", "measured": "d",
                    "exercises": [{"title": "Exercise 5.1: x", "difficulty": 2, "importance": 5, "minutes": 15}]},
        "07_gpu": {"title": "GPU", "prerequisites": "", "seconds": None, "failure": "", "measured": None,
                   "exercises": []},
    }}
    ct.write_guide("\n".join(ct.summary(state) + [""] + ct.tables(state)), guide)
    text = guide.read_text()
    assert "old" not in text and text.startswith("# Guide") and text.rstrip().endswith("After.")
    assert "| 05 Demo | CPU lab | 2.1 min | a \\| b | 1, about 15 min |" in text
    assert "| 07 GPU | GPU | – | – | – |" in text
    assert "not measured yet: 07_gpu" in text


def test_missing_markers_are_an_error(ct, tmp_path):
    guide = tmp_path / "guide.md"
    guide.write_text("# Guide\n")
    with pytest.raises(SystemExit, match="markers"):
        ct.write_guide("table", guide)
