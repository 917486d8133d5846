"""Stand-ins for chapter 8's offline demonstrations: a judge endpoint on 127.0.0.1 and a local lm-eval task.

- :class:`StandInJudge` starts an OpenAI-compatible ``/v1/chat/completions`` server that answers every
  pairwise prompt with ``[[A]]`` and every grading prompt with ``[[8]]``, whatever they say. Its verdicts
  mean nothing about the answers; it shows the judge client's mechanics (random A/B order, caching,
  resume, the cost estimate) without a network or a bill. ``tests/test_judges.py`` exercises the client
  against servers like it, with failures, retries and rate limits.
- :func:`quiz_task` writes a quiz of multiple-choice items as an lm-eval task that runs offline
  (``dataset_path: json`` on a local file) and reproduces :func:`dspa_lite.evaluation.evals.mcq_scores`.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from ..method.generation import format_prompts

__all__ = ["QUIZ_TASK_YAML", "StandInJudge", "quiz_task"]


class StandInJudge:
    """A judge that says ``[[A]]`` (pairwise) or ``[[8]]`` (grading) to everything, served on a free local port.

    Started on construction, in a thread; :meth:`close` (or leaving a ``with`` block) stops it.
    ``base_url`` is what :class:`~dspa_lite.evaluation.judges.JudgeConfig` needs, ``calls`` the judge model
    named in each request received, in order. ``127.0.0.1`` is added to ``NO_PROXY`` so that a proxy
    configured for the machine is not asked for it.
    """

    def __init__(self):
        self.calls: list[str] = []
        for var in ("NO_PROXY", "no_proxy"):
            os.environ[var] = ",".join(filter(None, [os.environ.get(var), "127.0.0.1"]))
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self.calls))
        threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        self.base_url = f"http://127.0.0.1:{self._server.server_port}/v1"

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> StandInJudge:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _handler(calls: list[str]) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            calls.append(body["model"])  # list.append is atomic: safe from the server's threads
            text = "[[A]]" if "<response_A>" in body["messages"][-1]["content"] else "[[8]]"
            data = json.dumps({"choices": [{"message": {"role": "assistant", "content": f"Stand-in verdict. {text}"}}],
                               "usage": {"prompt_tokens": 300, "completion_tokens": 5}}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: Any) -> None:  # keep the notebook quiet
            pass

    return Handler


QUIZ_TASK_YAML = """task: {name}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
  cache_dir: {cache}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{text}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: "{{{{answer}}}}"
target_delimiter: ""
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
"""
"""The task: the document's ``text`` is the chat-formatted question (the prefix ``mcq_scores`` builds), each
option is appended with no delimiter (lm-eval's default ``" "`` would add a space), and the data is a local
JSON-lines file, so the task runs offline."""


def quiz_task(tokenizer, items: Sequence[Any], folder: str | Path, name: str = "dspa_toy_quiz") -> Path:
    """Write ``items`` (with ``prompt``, ``options``, ``answer``) as the lm-eval task ``name`` in ``folder``.

    Returns the task's YAML file; index the folder with
    ``lm_eval.tasks.TaskManager(include_path=str(folder), include_defaults=False)`` (``include_defaults=False``
    skips lm-eval's own thousands of task files, which take tens of seconds to index). Also quiets
    lm-eval's logging and the progress bars of ``datasets``.
    """
    import logging

    import datasets

    logging.getLogger("lm_eval").setLevel(logging.ERROR)  # lm-eval logs every task setting at INFO/WARNING
    datasets.disable_progress_bars()
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    prefixes = format_prompts(tokenizer, [it.prompt for it in items])
    docs = [{"text": t, "choices": list(it.options), "answer": it.answer} for t, it in zip(prefixes, items)]
    data = folder / f"{name}.jsonl"
    data.write_text("".join(json.dumps(d) + "\n" for d in docs), encoding="utf-8")
    path = folder / f"{name}.yaml"
    path.write_text(QUIZ_TASK_YAML.format(name=name, data=data, cache=folder / "hf_datasets"), encoding="utf-8")
    return path
