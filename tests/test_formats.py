"""dspa_lite.evaluation.formats: MT-Bench / AlpacaEval files (checked against the official readers) and multi-turn generation."""

from __future__ import annotations

import ast
import copy
import glob
import importlib
import importlib.util
import json
import os
import sys
import types
from pathlib import Path

import pytest
import torch
from tiny import CHAT_TEMPLATE, SPECIALS, tiny_gemma, word_tokenizer
from transformers import Gemma2ForCausalLM

from dspa_lite.evaluation import formats
from dspa_lite.evaluation.formats import (
    MT_BENCH_TEMPERATURES,
    FormatError,
    MTBenchAnswer,
    generate_chat,
    generate_mt_bench_answers,
    read_alpaca_outputs,
    read_mt_bench_answers,
    read_mt_bench_questions,
    render_chat,
    write_alpaca_outputs,
    write_mt_bench_answers,
)
from dspa_lite.method.generation import generate
from dspa_lite.method.hooks import edit

WORDS = ("user model the a cat dog sat on mat sun moon red blue green big small happy sad run tree house sky rain "
         "snow bird fish apple tea cup book door light dark fast slow old new hot cold good bad yes no").split()
QUESTIONS = [
    {"question_id": 81, "category": "writing", "turns": ["a happy cat", "now a sad dog"]},
    {"question_id": 111, "category": "math", "turns": ["red sun", "blue moon"], "reference": ["hot", "cold"]},
    {"question_id": 131, "category": "stem", "turns": ["old tree", "new house"]},
    {"question_id": 900, "category": "poetry", "turns": ["rain and snow"]},  # a category FastChat does not list
]


@pytest.fixture(scope="module")
def _model() -> Gemma2ForCausalLM:
    return tiny_gemma(len(SPECIALS + WORDS), n_layers=2, max_positions=256)


@pytest.fixture
def model(_model):
    return copy.deepcopy(_model)


def spy_steer(model, seen: list):
    def steer(prompts, input_ids, attention_mask):
        seen.append((list(prompts), input_ids.clone()))
        return edit(model, 0, lambda h: h)
    return steer


# ---- generation -------------------------------------------------------------------------------------------------

def test_one_turn_chat_is_exactly_generate(model):
    tok, prompts = word_tokenizer(WORDS), ["the cat sat on the mat", "big dog", "a red apple and a cup of hot tea"]
    seen_a, seen_b = [], []
    a = generate(model, tok, prompts, max_new_tokens=8, temperature=1.0, seed=7, batch_size=2,
                 steer=spy_steer(model, seen_a))
    chats = [[{"role": "user", "content": p}] for p in prompts]
    b = generate_chat(model, tok, chats, max_new_tokens=8, temperature=1.0, seed=7, batch_size=2,
                      steer=spy_steer(model, seen_b))
    assert a == b and any(a)
    assert [p for p, _ in seen_a] == [p for p, _ in seen_b]
    assert all(torch.equal(x, y) for (_, x), (_, y) in zip(seen_a, seen_b, strict=True))
    assert tok.padding_side == "right" and tok.chat_template == CHAT_TEMPLATE, "the real tokenizer is left as it was"


def test_second_turn_sees_the_first_through_the_chat_template(model):
    tok, seen = word_tokenizer(WORDS), []
    chat = [{"role": "user", "content": "red sun"}, {"role": "assistant", "content": "hot light"},
            {"role": "user", "content": "blue moon"}]
    generate_chat(model, tok, [chat], max_new_tokens=3, temperature=0, steer=spy_steer(model, seen))
    [(prompts, ids)] = seen
    [text] = render_chat(tok, [chat])
    assert text == ("<bos><start_of_turn> user red sun <end_of_turn> <start_of_turn> model hot light <end_of_turn> "
                    "<start_of_turn> user blue moon <end_of_turn> <start_of_turn> model ")
    assert ids[0].tolist() == tok(text, add_special_tokens=False).input_ids, "one BOS, the whole history, no padding"
    assert prompts == ["red sun\n\nblue moon"], "steering conditions on everything the user asked"
    with pytest.raises(ValueError, match="ending with a user turn"):
        render_chat(tok, [chat[:2]])
    with pytest.raises(ValueError, match="no chat template"):
        render_chat(word_tokenizer(WORDS, chat=False), [chat])
    assert render_chat(word_tokenizer(WORDS, chat=False), [chat[:1]]) == ["red sun"]


def test_mt_bench_answers_use_category_temperatures_and_history(model, monkeypatch):
    calls, real = [], formats.generate_chat

    def recording(model_, tok_, chats, max_new_tokens, temperature, *args, **kwargs):
        calls.append((temperature, [c[0]["content"] for c in chats], [len(c) for c in chats]))
        return real(model_, tok_, chats, max_new_tokens, temperature, *args, **kwargs)

    monkeypatch.setattr(formats, "generate_chat", recording)
    tok = word_tokenizer(WORDS)
    answers = generate_mt_bench_answers(model, tok, QUESTIONS, "tiny-model", max_new_tokens=5, seed=3)
    temperature_of = {first: t for t, firsts, _ in calls for first in firsts}
    assert temperature_of == {"a happy cat": 0.7, "red sun": 0.0, "old tree": 0.1, "rain and snow": 0.7}
    assert sorted(n for _, _, lens in calls for n in lens) == [1, 1, 1, 1, 3, 3, 3], "turn 2 carries turn 1's Q and A"
    assert [a.question_id for a in answers] == [81, 111, 131, 900] and [len(a.turns) for a in answers] == [2, 2, 2, 1]
    # parity with the shared generation path: the greedy (math) answers are what generate/generate_chat give
    math = answers[1]
    assert math.turns[0] == generate(model, tok, ["red sun"], max_new_tokens=5, temperature=0)[0]
    chat = [{"role": "user", "content": "red sun"}, {"role": "assistant", "content": math.turns[0]},
            {"role": "user", "content": "blue moon"}]
    assert math.turns[1] == real(model, tok, [chat], max_new_tokens=5, temperature=0)[0]


# ---- MT-Bench files ---------------------------------------------------------------------------------------------

ANSWERS = [MTBenchAnswer(81, "tiny-dspa", ("a poem", "another poem")), MTBenchAnswer(111, "tiny-dspa", ("5", "6")),
           MTBenchAnswer(131, "tiny-dspa", ("", "a photon is light"))]


def fastchat_like_load_model_answers(answer_dir: str) -> dict:
    """FastChat's ``llm_judge.common.load_model_answers`` (fschat 0.2.36), line for line."""
    model_answers = {}
    for filename in sorted(glob.glob(os.path.join(answer_dir, "*.jsonl"))):
        answer = {}
        with open(filename) as fin:
            for line in fin:
                line = json.loads(line)
                answer[line["question_id"]] = line
        model_answers[os.path.basename(filename)[:-6]] = answer
    return model_answers


def test_mt_bench_answers_round_trip(tmp_path):
    path = write_mt_bench_answers(ANSWERS, tmp_path / "model_answer")
    assert path == tmp_path / "model_answer" / "tiny-dspa.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert [set(r) for r in rows] == [{"question_id", "answer_id", "model_id", "choices", "tstamp"}] * 3
    assert rows[0]["choices"] == [{"index": 0, "turns": ["a poem", "another poem"]}]
    back = read_mt_bench_answers(path)
    assert [(a.question_id, a.turns) for a in back] == [(a.question_id, a.turns) for a in ANSWERS]
    loaded = fastchat_like_load_model_answers(str(tmp_path / "model_answer"))
    assert loaded["tiny-dspa"][111]["choices"][0]["turns"] == ["5", "6"]
    assert not list((tmp_path / "model_answer").glob(".*")), "no temporary file left behind"
    with pytest.raises(ValueError, match="google/gemma-2-2b-it"):
        write_mt_bench_answers([MTBenchAnswer(1, "google/gemma-2-2b-it", ("x",))], tmp_path)
    with pytest.raises(ValueError, match="question_id 81 already appeared"):
        write_mt_bench_answers([ANSWERS[0], ANSWERS[0]], tmp_path)


GOOD = json.dumps({"question_id": 1, "answer_id": "x", "model_id": "m", "choices": [{"index": 0, "turns": ["a"]}],
                   "tstamp": 1.0})


@pytest.mark.parametrize("second, problem", [
    ('{"question_id": 2, "model_id": "m", "choices": [{"index": 0, "turns": ["a"]}', "not valid JSON"),
    ("", "blank line"),
    ('{"question_id": 2, "model_id": "m"}', "missing field 'choices'"),
    ('{"question_id": 2, "model_id": "m", "choices": []}', "choices must be a non-empty list"),
    ('{"question_id": 2, "model_id": "m", "choices": [{"turns": "a"}]}', "non-empty list of strings"),
    ('{"question_id": 2, "model_id": "other", "choices": [{"turns": ["a"]}]}', "differs from the file name"),
    ('{"question_id": true, "model_id": "m", "choices": [{"turns": ["a"]}]}', "expected int or str"),
    ('{"question_id": 2, "model_id": "m", "choices": [{"turns": ["a"]}], "tstamp": "now"}', "tstamp must be a number"),
    (GOOD, r"question_id 1 already appeared at .*m\.jsonl:1"),
])  # fmt: skip
def test_malformed_answer_files_name_file_and_line(tmp_path, second, problem):
    path = tmp_path / "m.jsonl"
    path.write_text(GOOD + "\n" + second + "\n" + GOOD.replace('"question_id": 1', '"question_id": 3') + "\n")
    with pytest.raises(FormatError, match=rf"m\.jsonl:2: .*{problem}"):
        read_mt_bench_answers(path)


def test_questions_reader(tmp_path):
    path = tmp_path / "question.jsonl"
    path.write_text("".join(json.dumps(q) + "\n" for q in QUESTIONS))
    qs = read_mt_bench_questions(path)
    assert qs[1].reference == ("hot", "cold") and qs[0].turns == ("a happy cat", "now a sad dog")
    path.write_text(json.dumps(QUESTIONS[0]) + "\n" + json.dumps({**QUESTIONS[1], "turns": ["x", ""]}) + "\n")
    with pytest.raises(FormatError, match=r"question\.jsonl:2: turns has an empty turn"):
        read_mt_bench_questions(path)


def _fastchat_common() -> types.SimpleNamespace:
    """FastChat's own reader code, compiled from the installed ``fastchat/llm_judge/common.py`` verbatim.

    Only the definitions below are run: importing the module pulls in FastChat's model zoo and the
    ``anthropic`` client (about 20 s here, and ``anthropic`` is not even an fschat dependency outside
    its ``llm_judge`` extra). The code is the package's, not a copy.
    """
    spec = importlib.util.find_spec("fastchat")
    if spec is None or not spec.origin:
        pytest.skip("pip install fschat")
    path = Path(spec.origin).parent / "llm_judge" / "common.py"
    wanted = {"load_model_answers", "check_data", "get_model_list", "temperature_config", "NEED_REF_CATS"}
    nodes = [n for n in ast.parse(path.read_text()).body
             if (isinstance(n, ast.FunctionDef) and n.name in wanted)
             or (isinstance(n, ast.Assign) and any(getattr(t, "id", None) in wanted for t in n.targets))]
    namespace = {"glob": glob, "os": os, "json": json}
    exec(compile(ast.Module(body=nodes, type_ignores=[]), str(path), "exec"), namespace)
    assert wanted <= set(namespace), f"FastChat's {path} no longer defines {wanted - set(namespace)}"
    return types.SimpleNamespace(**{k: namespace[k] for k in wanted})


def test_fastchat_reads_our_answer_files(tmp_path):
    common = _fastchat_common()
    answer_dir = tmp_path / "data" / "mt_bench" / "model_answer"
    write_mt_bench_answers(ANSWERS, answer_dir)
    loaded = common.load_model_answers(str(answer_dir))
    assert loaded == fastchat_like_load_model_answers(str(answer_dir)), "the reimplementation above is faithful"
    assert common.get_model_list(str(answer_dir)) == ["tiny-dspa"]
    common.check_data(QUESTIONS[:3], loaded, None, ["tiny-dspa"], {})  # FastChat's own pre-judging check
    assert {a.question_id: list(a.turns) for a in ANSWERS} == {
        qid: row["choices"][0]["turns"] for qid, row in loaded["tiny-dspa"].items()}
    assert {k: v for k, v in common.temperature_config.items() if k in MT_BENCH_TEMPERATURES} == MT_BENCH_TEMPERATURES


# ---- AlpacaEval files -------------------------------------------------------------------------------------------

def test_alpaca_outputs_round_trip(tmp_path):
    path = write_alpaca_outputs(tmp_path / "outputs.json", ["Say hi", "Name a colour"], ["Hello!", "Blue"],
                                "tiny-dspa", dataset="helpful_base")
    rows = read_alpaca_outputs(path)
    assert rows == [{"instruction": "Say hi", "output": "Hello!", "generator": "tiny-dspa", "dataset": "helpful_base"},
                    {"instruction": "Name a colour", "output": "Blue", "generator": "tiny-dspa",
                     "dataset": "helpful_base"}]
    pd = pytest.importorskip("pandas")
    df = pd.read_json(path)  # what alpaca_eval.utils.load_or_convert_to_dataframe does for a .json path
    assert df.to_dict("records") == rows
    with pytest.raises(ValueError, match=r"\*\.json"):
        write_alpaca_outputs(tmp_path / "outputs.jsonl", ["x"], ["y"], "g")


@pytest.mark.parametrize("text, line, problem", [
    ('{"instruction": "x"}', 1, "JSON list"),
    ('[\n  {"instruction": "a", "output": "b", "generator": "g"},\n  {"instruction": "c", "generator": "g"}\n]', 3,
     "missing field 'output'"),
    ('[\n  {"instruction": "a", "output": "b", "generator": "g"},\n  {"instruction": "c", "output": "d",\n'
     '   "generator": "h"}\n]', 3, "differs from 'g'"),
    ('[\n  {"instruction": "a", "output": "b", "generator": "g"},\n  {"instruction": "c", "output": 5,'
     ' "generator": "g"}\n]', 3, "expected str"),
    ('[\n  {"instruction": "a", "output": "b", "generator": "g"}\n  {"instruction": "c"}\n]', 3, "expected ','"),
    ('[\n  {"instruction": "a", "output": "b", "generator": "g",}\n]', 2, "not valid JSON"),
    ('[\n  {"instruction": "a", "output": "b", "generator": "g"}\n]\n]', 4, "after the closing"),
])  # fmt: skip
def test_malformed_alpaca_outputs_name_file_and_line(tmp_path, text, line, problem):
    path = tmp_path / "outputs.json"
    path.write_text(text)
    with pytest.raises(FormatError, match=rf"outputs\.json:{line}: .*{problem}"):
        read_alpaca_outputs(path)


def _alpaca_eval_utils(monkeypatch):
    """alpaca_eval.utils, importing on setuptools >= 81 (no pkg_resources) through a shim of the two functions
    alpaca_eval uses: ``parse_version`` and ``get_distribution(name).version``."""
    if importlib.util.find_spec("alpaca_eval") is None:
        pytest.skip("pip install alpaca-eval")
    try:
        return importlib.import_module("alpaca_eval.utils")
    except ModuleNotFoundError as e:
        if e.name != "pkg_resources":
            raise
    from importlib.metadata import version

    from packaging.version import parse

    shim = types.ModuleType("pkg_resources")
    shim.parse_version = parse
    shim.get_distribution = lambda name: types.SimpleNamespace(version=version(name))
    monkeypatch.setitem(sys.modules, "pkg_resources", shim)
    return importlib.import_module("alpaca_eval.utils")


def test_alpaca_eval_reads_our_outputs(tmp_path, monkeypatch):
    utils = _alpaca_eval_utils(monkeypatch)
    path = write_alpaca_outputs(tmp_path / "outputs.json", ["Say hi", "Name a colour"], ["Hello!", "Blue"],
                                "tiny-dspa")
    df = utils.load_or_convert_to_dataframe(str(path))
    assert list(df.columns) == ["instruction", "output", "generator"]
    assert df["output"].tolist() == ["Hello!", "Blue"]
    assert utils.get_generator_name(None, df) == "tiny-dspa", "alpaca_eval labels the leaderboard row with it"
