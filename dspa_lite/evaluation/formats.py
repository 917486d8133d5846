"""Benchmark files: FastChat MT-Bench answers and AlpacaEval model outputs, read strictly, written atomically.

- **MT-Bench** (FastChat ``llm_judge``): questions are JSONL rows ``{question_id, category, turns,
  reference?}``; a model's answers are ``data/mt_bench/model_answer/<model_id>.jsonl`` with rows
  ``{question_id, answer_id, model_id, choices: [{index: 0, turns: [...]}], tstamp}``. FastChat's
  ``load_model_answers(answer_dir)`` names each model after its file, so pass that folder to
  :func:`write_mt_bench_answers`. Answers are sampled at FastChat's per-category temperatures
  (:data:`MT_BENCH_TEMPERATURES`); turn 2 is generated with turn 1's question and answer in the chat.
- **AlpacaEval**: ``alpaca_eval --model_outputs outputs.json`` reads a JSON list of
  ``{instruction, output, generator, dataset?}``.

Readers raise :class:`FormatError` naming the file and line of the first problem, and reject what the
official loaders would choke on or silently misread (blank lines, duplicate ids, mixed generators).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..method.files import atomic_write
from ..method.generation import SteerFn, generate, render_chat

__all__ = ["DEFAULT_TEMPERATURE", "MT_BENCH_TEMPERATURES", "FormatError", "MTBenchAnswer", "MTBenchQuestion",
           "generate_chat", "generate_mt_bench_answers", "read_alpaca_outputs", "read_mt_bench_answers",
           "read_mt_bench_questions", "render_chat", "write_alpaca_outputs", "write_mt_bench_answers"]

MT_BENCH_TEMPERATURES = {"writing": 0.7, "roleplay": 0.7, "stem": 0.1, "humanities": 0.1, "math": 0.0,
                         "coding": 0.0, "reasoning": 0.0, "extraction": 0.0}  # FastChat's temperature_config
DEFAULT_TEMPERATURE = 0.7  # what FastChat uses for a category it does not list


class FormatError(ValueError):
    """A benchmark file that the official tools would reject or misread; the message names file and line."""


@dataclass(frozen=True)
class MTBenchQuestion:
    question_id: int | str
    category: str
    turns: tuple[str, ...]
    reference: tuple[str, ...] | None = None

    @classmethod
    def from_row(cls, row: Mapping[str, Any] | MTBenchQuestion, where: str = "question") -> MTBenchQuestion:
        if isinstance(row, MTBenchQuestion):
            return row
        _require(row, {"question_id": (int, str), "category": str, "turns": list}, where)
        _check_texts(row["turns"], f"{where}: turns", allow_empty=False)
        ref = row.get("reference")
        if ref is not None:
            _check_texts(ref, f"{where}: reference", allow_empty=True)
        return cls(row["question_id"], row["category"], tuple(row["turns"]), None if ref is None else tuple(ref))


@dataclass(frozen=True)
class MTBenchAnswer:
    question_id: int | str
    model_id: str
    turns: tuple[str, ...]
    answer_id: str = ""
    tstamp: float = 0.0

    def to_row(self) -> dict:
        """The FastChat row; ``answer_id`` defaults to a hash of the content (FastChat uses a random shortuuid)."""
        answer_id = self.answer_id or hashlib.sha256(
            json.dumps([self.model_id, self.question_id, list(self.turns)]).encode()).hexdigest()[:22]
        return {"question_id": self.question_id, "answer_id": answer_id, "model_id": self.model_id,
                "choices": [{"index": 0, "turns": list(self.turns)}], "tstamp": self.tstamp or time.time()}


def _require(row: Any, fields: Mapping[str, type | tuple[type, ...]], where: str) -> None:
    if not isinstance(row, Mapping):
        raise FormatError(f"{where}: expected a JSON object, got {type(row).__name__}")
    for name, kind in fields.items():
        if name not in row:
            raise FormatError(f"{where}: missing field {name!r} (has {sorted(row)})")
        if not isinstance(row[name], kind) or isinstance(row[name], bool):
            want = " or ".join(k.__name__ for k in (kind if isinstance(kind, tuple) else (kind,)))
            raise FormatError(f"{where}: field {name!r} is {row[name]!r:.60}, expected {want}")


def _check_texts(texts: Any, where: str, allow_empty: bool) -> None:
    if not isinstance(texts, list) or not texts or not all(isinstance(t, str) for t in texts):
        raise FormatError(f"{where} must be a non-empty list of strings, got {texts!r:.80}")
    if not allow_empty and not all(t.strip() for t in texts):
        raise FormatError(f"{where} has an empty turn")


def _jsonl_rows(path: str | os.PathLike) -> list[tuple[str, Any]]:
    """``(where, row)`` per line, ``where`` being ``"file:line"``; blank or invalid lines are errors (FastChat
    calls ``json.loads`` on every line)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such file: {path}")
    rows = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            where = f"{path}:{lineno}"
            if not line.strip():
                raise FormatError(f"{where}: blank line (FastChat's loader would fail on it); remove it")
            try:
                rows.append((where, json.loads(line)))
            except json.JSONDecodeError as e:
                raise FormatError(f"{where}: not valid JSON ({e.msg} at column {e.colno})") from None
    return rows


def read_mt_bench_questions(path: str | os.PathLike) -> list[MTBenchQuestion]:
    """FastChat's ``data/mt_bench/question.jsonl`` (80 two-turn questions), validated."""
    rows = _jsonl_rows(path)
    questions = [MTBenchQuestion.from_row(row, where) for where, row in rows]
    _no_duplicates([(where, q.question_id) for (where, _), q in zip(rows, questions, strict=True)])
    return questions


def _no_duplicates(ids: Sequence[tuple[str, Any]]) -> None:
    seen: dict[Any, str] = {}
    for where, qid in ids:
        if qid in seen:
            raise FormatError(f"{where}: question_id {qid!r} already appeared at {seen[qid]} (one row per question)")
        seen[qid] = where


def read_mt_bench_answers(path: str | os.PathLike) -> list[MTBenchAnswer]:
    """A FastChat answer file, validated: every row well-formed, ``model_id`` equal to the file name, no duplicates."""
    path = Path(path)
    answers, ids = [], []
    for where, row in _jsonl_rows(path):
        _require(row, {"question_id": (int, str), "model_id": str, "choices": list}, where)
        if not row["choices"] or not isinstance(row["choices"][0], Mapping) or "turns" not in row["choices"][0]:
            raise FormatError(f"{where}: choices must be a non-empty list of {{'index': 0, 'turns': [...]}} objects")
        _check_texts(row["choices"][0]["turns"], f"{where}: choices[0].turns", allow_empty=True)
        if row["model_id"] != path.stem:
            raise FormatError(f"{where}: model_id {row['model_id']!r} differs from the file name {path.name!r}; "
                              "FastChat names the model after the file, so rename one of them")
        tstamp = row.get("tstamp", 0.0)
        if not isinstance(tstamp, int | float) or isinstance(tstamp, bool):
            raise FormatError(f"{where}: tstamp must be a number (seconds since the epoch), got {tstamp!r:.40}")
        answers.append(MTBenchAnswer(row["question_id"], row["model_id"], tuple(row["choices"][0]["turns"]),
                                     str(row.get("answer_id", "")), float(tstamp)))
        ids.append((where, row["question_id"]))
    _no_duplicates(ids)
    return answers


def write_mt_bench_answers(answers: Sequence[MTBenchAnswer], answer_dir: str | os.PathLike) -> Path:
    """Write ``answer_dir/<model_id>.jsonl`` (replacing it atomically) and return its path.

    ``answer_dir`` is FastChat's ``fastchat/llm_judge/data/mt_bench/model_answer`` when judging with FastChat.
    """
    model_ids = {a.model_id for a in answers}
    if len(model_ids) != 1:
        raise ValueError(f"answers must come from exactly one model_id, got {sorted(model_ids) or 'none'}")
    model_id = model_ids.pop()
    if not model_id or model_id.startswith(".") or any(c in model_id for c in "/\\\n"):
        raise ValueError(f"model_id {model_id!r} cannot be a file name: FastChat names the answer file "
                         "<model_id>.jsonl, so use e.g. 'gemma-2-2b-it-dspa' instead of 'google/gemma-2-2b-it'")
    _no_duplicates([(f"answer {i}", a.question_id) for i, a in enumerate(answers)])
    for a in answers:
        _check_texts(list(a.turns), f"answer to question {a.question_id!r}: turns", allow_empty=True)
    text = "".join(json.dumps(a.to_row(), ensure_ascii=False) + "\n" for a in answers)
    return atomic_write(Path(answer_dir) / f"{model_id}.jsonl", text)


def write_alpaca_outputs(path: str | os.PathLike, instructions: Sequence[str], outputs: Sequence[str],
                         generator: str, dataset: str | Sequence[str] | None = None) -> Path:
    """Write AlpacaEval ``model_outputs`` JSON: ``[{instruction, output, generator, dataset?}, ...]``."""
    path = Path(path)
    if path.suffix != ".json":
        raise ValueError(f"{path}: AlpacaEval picks the reader by suffix; name the file *.json")
    if len(instructions) != len(outputs):
        raise ValueError(f"{len(instructions)} instructions but {len(outputs)} outputs")
    if not (isinstance(generator, str) and generator.strip()):
        raise ValueError(f"generator={generator!r}: name the model (it labels the leaderboard row)")
    datasets = [dataset] * len(outputs) if dataset is None or isinstance(dataset, str) else list(dataset)
    rows = []
    for i, (x, y, d) in enumerate(zip(instructions, outputs, datasets, strict=True)):
        if not (isinstance(x, str) and x.strip()) or not isinstance(y, str):
            raise ValueError(f"row {i}: instruction must be a non-empty string and output a string, got {x!r:.40}, "
                             f"{y!r:.40}")
        rows.append({"instruction": x, "output": y, "generator": generator, **({"dataset": d} if d else {})})
    return atomic_write(path, json.dumps(rows, ensure_ascii=False, indent=2) + "\n")


def read_alpaca_outputs(path: str | os.PathLike) -> list[dict]:
    """An AlpacaEval ``model_outputs`` file, validated element by element (errors give the element's line)."""
    path = Path(path)
    text = path.read_text(encoding="utf-8")
    decoder, rows = json.JSONDecoder(), []

    def where(pos: int) -> str:
        return f"{path}:{text.count(chr(10), 0, pos) + 1}"

    def skip(pos: int) -> int:
        while pos < len(text) and text[pos].isspace():
            pos += 1
        return pos

    pos = skip(0)
    if not text.startswith("[", pos):
        raise FormatError(f"{where(pos)}: AlpacaEval model_outputs must be a JSON list of objects")
    pos = skip(pos + 1)
    while not text.startswith("]", pos):
        start = pos
        try:
            row, pos = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as e:
            raise FormatError(f"{where(e.pos)}: not valid JSON ({e.msg})") from None
        _require(row, {"instruction": str, "output": str, "generator": str}, where(start))
        if "dataset" in row and not isinstance(row["dataset"], str):
            raise FormatError(f"{where(start)}: field 'dataset' must be a string, got {row['dataset']!r:.40}")
        if rows and row["generator"] != rows[0][1]["generator"]:
            raise FormatError(f"{where(start)}: generator {row['generator']!r} differs from {rows[0][1]['generator']!r}"
                              f" at {rows[0][0]}; AlpacaEval expects one model per file")
        rows.append((where(start), row))
        pos = skip(pos)
        if text.startswith(",", pos):
            pos = skip(pos + 1)
        elif not text.startswith("]", pos):
            raise FormatError(f"{where(pos)}: expected ',' or ']' after an element")
    if (end := skip(pos + 1)) != len(text):
        raise FormatError(f"{where(end)}: unexpected text after the closing ']'")
    return [row for _, row in rows]


def generate_chat(model: Any, tokenizer: Any, conversations: Sequence[Sequence[Mapping[str, str]]],
                  max_new_tokens: int = 64, temperature: float = 1.0, seed: int = 0, batch_size: int = 32, *,
                  top_p: float = 1.0, steer: SteerFn | None = None, progress: bool = False) -> list[str]:
    """:func:`dspa_lite.generate` for multi-turn chats: the same padding, batching, seeding and sampling.

    The chats are rendered by :func:`~dspa_lite.method.generation.render_chat` (the profile's chat arguments
    included) and handed to ``generate`` as finished prompts, so a one-message chat gives exactly
    ``generate``'s output, stop tokens and all. ``steer`` receives, as each row's prompt, the
    conversation's user turns joined by blank lines: DSPA conditions ``u(x)`` on everything the user asked.
    """
    texts = render_chat(tokenizer, conversations)
    asked = {t: "\n\n".join(m["content"] for m in c if m["role"] == "user")
             for t, c in zip(texts, conversations, strict=True)}
    wrapped = None if steer is None else (lambda batch, ids, mask: steer([asked[t] for t in batch], ids, mask))
    return generate(model, tokenizer, texts, max_new_tokens, temperature, seed, batch_size, top_p=top_p,
                    steer=wrapped, progress=progress, rendered=True)


def generate_mt_bench_answers(model: Any, tokenizer: Any, questions: Sequence[MTBenchQuestion | Mapping],
                              model_id: str, *, steer: SteerFn | None = None, max_new_tokens: int = 1024,
                              seed: int = 0, batch_size: int = 8, temperatures: Mapping[str, float] | None = None,
                              progress: bool = False) -> list[MTBenchAnswer]:
    """Answer every turn of every question, turn by turn, each turn seeing the earlier questions and answers.

    Questions are grouped by temperature (:data:`MT_BENCH_TEMPERATURES`, else :data:`DEFAULT_TEMPERATURE`;
    0 is greedy) because one :func:`generate_chat` call samples at one temperature. Pass ``steer=dspa.steer``
    for DSPA (or any steering method). Returns answers in question order, for :func:`write_mt_bench_answers`.
    """
    qs = [MTBenchQuestion.from_row(q, f"question {i}") for i, q in enumerate(questions)]
    temps = MT_BENCH_TEMPERATURES if temperatures is None else temperatures
    groups: dict[float, list[int]] = {}
    for i, q in enumerate(qs):
        groups.setdefault(float(temps.get(q.category, DEFAULT_TEMPERATURE)), []).append(i)
    answers: list[list[str]] = [[] for _ in qs]
    for temperature, members in groups.items():
        for t in range(max(len(qs[i].turns) for i in members)):
            rows = [i for i in members if len(qs[i].turns) > t]
            chats = []
            for i in rows:
                history = [m for j in range(t) for m in ({"role": "user", "content": qs[i].turns[j]},
                                                         {"role": "assistant", "content": answers[i][j]})]
                chats.append([*history, {"role": "user", "content": qs[i].turns[t]}])
            outs = generate_chat(model, tokenizer, chats, max_new_tokens, temperature, seed + t, batch_size,
                                 steer=steer, progress=progress)
            for i, out in zip(rows, outs, strict=True):
                answers[i].append(out)
    now = time.time()
    return [MTBenchAnswer(q.question_id, model_id, tuple(a), tstamp=now) for q, a in zip(qs, answers, strict=True)]
