"""Chapter 8's offline stand-ins (dspa_lite.evaluation.demo): the always-A judge server and the local lm-eval quiz."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from dspa_lite.evaluation import judges
from dspa_lite.evaluation.demo import StandInJudge, quiz_task
from dspa_lite.evaluation.formats import MTBenchQuestion


def test_stand_in_judge_answers_a_and_eight_and_the_client_caches(tmp_path):
    instructions = [f"question {i} ?" for i in range(6)]
    outputs, references = [f"model answer {i} ." for i in range(6)], [f"reference {i} ." for i in range(6)]
    questions = [MTBenchQuestion(1, "writing", ("write a poem .", "now shorter ."))]
    with StandInJudge() as server:
        config = judges.JudgeConfig(base_url=server.base_url, model="stand-in", cache_path=str(tmp_path / "c.jsonl"))
        comps = judges.Judge(config).compare(instructions, outputs, references, progress=False)
        summary = judges.win_rate(comps)
        assert summary["position_a_rate"] == 1.0 and summary["win_rate"] == summary["model_first_share"]
        assert server.calls == ["stand-in"] * 6
        again = judges.Judge(config)
        assert all(c.cached for c in again.compare(instructions, outputs, references, progress=False))
        ratings = again.grade_mt_bench(questions, {1: ["a poem .", "short ."]}, progress=False)
        assert [r.score for r in ratings] == [8.0, 8.0] and len(server.calls) == 8
    with pytest.raises(OSError):  # closed on leaving the block
        import urllib.request
        urllib.request.urlopen(server.base_url + "/chat/completions", data=b"{}", timeout=2)


def test_quiz_task_writes_an_offline_multiple_choice_task(tmp_path):
    from lm_eval.tasks import TaskManager

    class Tok:
        chat_template = None

    items = [SimpleNamespace(prompt="what colour is the zorb ?", options=("it is red .", "it is blue ."), answer=0)]
    path = quiz_task(Tok(), items, tmp_path / "tasks", name="demo_quiz")
    text = path.read_text()
    assert 'target_delimiter: ""' in text and "dataset_path: json" in text and str(tmp_path) in text
    assert (tmp_path / "tasks" / "demo_quiz.jsonl").read_text().startswith('{"text": "what colour is the zorb ?"')
    assert "demo_quiz" in TaskManager(include_path=str(path.parent), include_defaults=False).all_tasks
