"""dspa_lite.evaluation.judges against real OpenAI-style HTTP servers on 127.0.0.1 (http.server in a thread, no mocks)."""

from __future__ import annotations

import json
import re
import socket
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import SimpleNamespace

import pytest

from dspa_lite.evaluation.judges import (
    Judge,
    JudgeConfig,
    JudgeError,
    cache_key,
    mt_bench_score,
    parse_rating,
    parse_verdict,
    win_rate,
)

QUESTIONS = [
    {"question_id": 81, "category": "writing", "turns": ["Write a haiku about rain.", "Now make it about snow."]},
    {"question_id": 111, "category": "math", "turns": ["What is 2+3?", "And 2*3?"], "reference": ["5", "6"]},
    {"question_id": 131, "category": "stem", "turns": ["What is a photon?", "Explain it to a child."]},
]
ANSWERS = {81: ["Rain taps on the roof", "Snow hushes the street"], 111: ["5", "6"],
           131: ["A quantum of light.", "A tiny packet of light."]}


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch):
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")


def completion(text: str, prompt_tokens: int = 100, completion_tokens: int = 20) -> dict:
    return {"id": "chatcmpl-test", "object": "chat.completion", "model": "judge-test",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                      "total_tokens": prompt_tokens + completion_tokens}}


Respond = Callable[[dict, int], tuple[int, object]]


@pytest.fixture
def serve():
    """``serve(respond)`` starts a server; ``respond(body, n)`` (n = 1-based request count) returns (status, JSON)."""
    servers = []

    def start(respond: Respond) -> tuple[str, SimpleNamespace]:
        state = SimpleNamespace(requests=[], lock=threading.Lock())

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with state.lock:
                    state.requests.append({"path": self.path, "headers": dict(self.headers), "body": body})
                    n = len(state.requests)
                status, payload = respond(body, n)
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                if status == 429:
                    self.send_header("Retry-After", "0")
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):  # keep pytest output clean
                pass

        httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()
        servers.append(httpd)
        return f"http://127.0.0.1:{httpd.server_port}/v1", state

    yield start
    for httpd in servers:
        httpd.shutdown()
        httpd.server_close()


def user_text(body: dict) -> str:
    return body["messages"][-1]["content"]


def grader(body: dict, n: int) -> tuple[int, dict]:
    """Scores turn 2 with 6, turn 1 with 8, and the math turn 1 with 9 only if the reference was shown."""
    text = user_text(body)
    if '<assistant turn="2">' in text:
        return 200, completion("Follows up well. [[6]]")
    return 200, completion("Correct per the reference. [[9]]" if "<reference>\n5\n" in text else "Good. [[8]]")


def make_judge(url: str, tmp_path, **kw) -> Judge:
    kw = {"backoff_s": 0.001, "max_retries": 2, "cache_path": str(tmp_path / "judge.jsonl"), **kw}
    return Judge(JudgeConfig(base_url=url, model="judge-test", **kw))


def test_mt_bench_grading_against_an_openai_style_server(serve, tmp_path):
    url, state = serve(grader)
    judge = make_judge(url, tmp_path, api_key="sk-test", price_prompt_per_1k=0.01, price_completion_per_1k=0.03)
    ratings = judge.grade_mt_bench(QUESTIONS, ANSWERS, progress=False)
    assert [(r.question_id, r.turn, r.score) for r in ratings] == [
        (81, 1, 8.0), (81, 2, 6.0), (111, 1, 9.0), (111, 2, 6.0), (131, 1, 8.0), (131, 2, 6.0)]
    req = state.requests[0]
    assert req["path"] == "/v1/chat/completions" and req["headers"]["Authorization"] == "Bearer sk-test"
    assert req["body"]["model"] == "judge-test" and req["body"]["temperature"] == 0.0
    turn2 = next(user_text(r["body"]) for r in state.requests if "Now make it about snow." in user_text(r["body"]))
    assert "Write a haiku about rain." in turn2 and "Rain taps on the roof" in turn2, "turn 2 sees turn 1"
    assert judge.usage == {"requests": 6, "prompt_tokens": 600, "completion_tokens": 120}
    assert judge.cost == pytest.approx(6 * (0.1 * 0.01 + 0.02 * 0.03))
    summary = mt_bench_score(ratings)
    assert summary["score"] == pytest.approx(43 / 6) and summary["turn_1"] == pytest.approx(25 / 3)
    assert summary["per_category"] == {"math": 7.5, "stem": 7.0, "writing": 7.0} and summary["n_unparsed"] == 0


def test_retries_after_server_errors_then_succeeds(serve, tmp_path):
    url, state = serve(lambda body, n: (500, {"error": "overloaded"}) if n == 1 else
                       (429, {"error": "slow down"}) if n == 2 else (200, completion("[[7]]")))
    [rating] = make_judge(url, tmp_path).grade_mt_bench(QUESTIONS[:1], ANSWERS, turns=(1,), progress=False)
    assert rating.score == 7.0 and len(state.requests) == 3


def test_always_failing_server_is_a_clear_error_and_keeps_judged_items(serve, tmp_path):
    fail_on = "What is a photon?"
    url, state = serve(lambda body, n: (503, {"error": "down"}) if fail_on in user_text(body) else grader(body, n))
    judge = make_judge(url, tmp_path, max_retries=2)
    with pytest.raises(JudgeError) as err:
        judge.grade_mt_bench(QUESTIONS, ANSWERS, turns=(1,), progress=False)
    message = str(err.value)
    assert url + "/chat/completions" in message and "HTTP 503" in message and "3 times" in message
    assert "2 of 3 items are judged" in message and "rerun to resume" in message
    assert sum(fail_on in user_text(r["body"]) for r in state.requests) == 3, "bounded: 1 try + 2 retries"
    rows = [json.loads(line) for line in (tmp_path / "judge.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and all(fail_on not in r["messages"][-1]["content"] for r in rows)

    url2, state2 = serve(grader)  # the endpoint recovers: only the missing item is asked
    ratings = make_judge(url2, tmp_path).grade_mt_bench(QUESTIONS, ANSWERS, turns=(1,), progress=False)
    assert [r.cached for r in ratings] == [True, True, False] and len(state2.requests) == 1
    assert fail_on in user_text(state2.requests[0]["body"])


def test_resume_makes_no_requests_for_cached_items(serve, tmp_path):
    url, state = serve(grader)
    first = make_judge(url, tmp_path).grade_mt_bench(QUESTIONS, ANSWERS, progress=False)
    assert len(state.requests) == 6
    second_judge = make_judge(url, tmp_path)
    second = second_judge.grade_mt_bench(QUESTIONS, ANSWERS, progress=False)
    assert len(state.requests) == 6 and all(r.cached for r in second) and second_judge.cost == 0
    assert [r.score for r in second] == [r.score for r in first]
    other_model = Judge(JudgeConfig(base_url=url, model="another-judge", cache_path=str(tmp_path / "judge.jsonl")))
    other_model.grade_mt_bench(QUESTIONS[:1], ANSWERS, turns=(1,), progress=False)
    assert len(state.requests) == 7, "the cache is keyed by judge model too"


def test_torn_cache_line_is_skipped_and_asked_again(serve, tmp_path):
    url, state = serve(grader)
    make_judge(url, tmp_path).grade_mt_bench(QUESTIONS[:1], ANSWERS, turns=(1,), progress=False)
    path = tmp_path / "judge.jsonl"
    path.write_text(path.read_text() + '{"key": "abc", "content": "tor')  # a crash mid-write
    judge = make_judge(url, tmp_path)
    judge.grade_mt_bench(QUESTIONS[:2], ANSWERS, turns=(1,), progress=False)
    assert len(state.requests) == 2
    lines = path.read_text().splitlines()
    assert json.loads(lines[-1])["content"] and len(lines) == 3, "the new row starts on its own line"


def test_unreachable_endpoint_is_a_clear_error(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed when the block ends: nothing listens there
    judge = make_judge(f"http://127.0.0.1:{port}/v1", tmp_path, max_retries=1)
    with pytest.raises(JudgeError, match=rf"127\.0\.0\.1:{port}/v1/chat/completions failed 2 times; last error: "
                                         r".*(refused|Errno)"):
        judge.grade_mt_bench(QUESTIONS[:1], ANSWERS, turns=(1,), progress=False)


def test_client_errors_are_not_retried(serve, tmp_path):
    url, state = serve(lambda body, n: (404, {"error": "model not found"}))
    with pytest.raises(JudgeError, match="HTTP 404.*model not found.*not retried.*DSPA_JUDGE_BASE_URL"):
        make_judge(url, tmp_path).grade_mt_bench(QUESTIONS[:1], ANSWERS, turns=(1,), progress=False)
    assert len(state.requests) == 1
    url, _ = serve(lambda body, n: (200, {"unexpected": True}))
    with pytest.raises(JudgeError, match=r"without choices\[0\]\.message\.content"):
        make_judge(url, tmp_path).grade_mt_bench(QUESTIONS[:1], ANSWERS, turns=(1,), progress=False)


@pytest.mark.parametrize("reply, score", [
    ("Helpful and accurate.\n[[8]]", 8.0), ("[[ 7.5 ]]", 7.5), ("Rating: [4]", 4.0), ("[[10]]", 10.0),
    ("first [[3]], on reflection [[9]]", 9.0), ("[[0]]", None), ("[[11]]", None), ("Score: 8/10", None),
    ("[[eight]]", None), ("", None), (None, None),
])  # fmt: skip
def test_parse_rating(reply, score):
    assert parse_rating(reply) == score


def test_malformed_replies_are_counted_not_scored(serve, tmp_path):
    url, _ = serve(lambda body, n: (200, completion("I would rate this highly." if "photon" in user_text(body)
                                                    else "[[5]]")))
    ratings = make_judge(url, tmp_path).grade_mt_bench(QUESTIONS, ANSWERS, turns=(1,), progress=False)
    assert [r.score for r in ratings] == [5.0, 5.0, None] and ratings[2].judgment == "I would rate this highly."
    summary = mt_bench_score(ratings)
    assert summary["score"] == 5.0 and summary["n"] == 2 and summary["n_unparsed"] == 1


def test_parse_verdict():
    assert [parse_verdict(t) for t in ("[[A]]", "so [[b]]", "[[TIE]]", "[[A]] no wait [[B]]", "A", "[[C]]", None)] == [
        "A", "B", "tie", "B", None, None, None]


def _pairwise_prompt_parts(body: dict) -> dict[str, str]:
    text = user_text(body)
    return {k: re.search(rf"<response_{k}>\n(.*?)\n</response_{k}>", text, re.S).group(1) for k in "AB"}


def test_pairwise_order_is_randomised_recorded_and_undone(serve, tmp_path):
    instructions = [f"Instruction number {i}" for i in range(16)]
    outputs = [f"GOOD answer {i}" for i in range(16)]
    references = [f"plain answer {i}" for i in range(16)]

    # a judge that recognises quality: the model wins every time, whichever side it was shown on
    url, state = serve(lambda body, n: (200, completion(
        "[[A]]" if "GOOD" in _pairwise_prompt_parts(body)["A"] else "[[B]]")))
    comps = make_judge(url, tmp_path).compare(instructions, outputs, references, seed=1, progress=False)
    positions = [c.model_position for c in comps]
    assert set(positions) == {"A", "B"}, "the order is randomised"
    shown = {re.search(r"<instruction>\n(.*?)\n", user_text(r["body"])).group(1): _pairwise_prompt_parts(r["body"])
             for r in state.requests}  # requests arrive concurrently, so match them by instruction
    for c in comps:
        assert "GOOD" in shown[c.instruction][c.model_position], "model_position records where the output was shown"
        assert c.verdict == c.model_position and c.winner == "model"
    assert win_rate(comps)["win_rate"] == 1.0 and comps[0].preference == 2.0

    # a judge with pure position bias (always A): the randomisation turns it into a coin flip, as recorded
    url2, _ = serve(lambda body, n: (200, completion("Both fine. [[A]]")))
    biased = make_judge(url2, tmp_path / "b").compare(instructions, outputs, references, seed=1, progress=False)
    assert [c.model_position for c in biased] == positions, "the same seed gives the same order"
    assert [c.winner for c in biased] == ["model" if p == "A" else "reference" for p in positions]
    summary = win_rate(biased)
    assert summary["win_rate"] == summary["model_first_share"] == positions.count("A") / 16
    assert summary["position_a_rate"] == 1.0
    again = make_judge(url2, tmp_path / "b").compare(instructions, outputs, references, seed=1, progress=False)
    assert all(c.cached for c in again), "a rerun asks exactly the same prompts"
    with pytest.raises(ValueError, match="parallel lists"):
        make_judge(url2, tmp_path).compare(instructions, outputs[:3], references)


def test_config_from_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("DSPA_JUDGE_BASE_URL", "http://judge.local:8000")
    monkeypatch.setenv("DSPA_JUDGE_MODEL", "qwen-judge")
    monkeypatch.setenv("DSPA_JUDGE_API_KEY", "sk-env")
    judge = Judge(cache_path=str(tmp_path / "c.jsonl"), max_retries=1)
    c = judge.config
    assert (c.model, c.api_key, c.max_retries) == ("qwen-judge", "sk-env", 1)
    assert c.endpoint == "http://judge.local:8000/v1/chat/completions"
    assert "sk-env" not in repr(c) and "api_key" not in c.to_dict()
    assert JudgeConfig("https://api.example.com/v1/", "m").endpoint == "https://api.example.com/v1/chat/completions"
    assert Judge(model="other", cache_path=str(tmp_path / "c.jsonl")).config.model == "other", "explicit args win"
    monkeypatch.delenv("DSPA_JUDGE_BASE_URL")
    with pytest.raises(JudgeError, match="set DSPA_JUDGE_BASE_URL"):
        Judge()
    with pytest.raises(ValueError, match="max_retries"):
        JudgeConfig("http://x/v1", "m", max_retries=-1)
    with pytest.raises(ValueError, match="http"):
        JudgeConfig("localhost:8000", "m")
    assert cache_key("m", [{"role": "user", "content": "x"}]) != cache_key("n", [{"role": "user", "content": "x"}])


def test_cli_eval_with_an_endpoint_judge_resumes_from_its_cache(serve, tmp_path, world, capsys):
    """`dspa-lite eval --judge endpoint`: a server that fails twice, then judges by the toy world's ground truth."""
    from dspa_lite.cli import main

    def exact(body, n):
        if n <= 2:
            return 500, {"error": "warming up"}
        text = user_text(body)
        prompt, a, b = (re.search(f"<{tag}>\n(.*?)\n</{tag}>", text, re.S).group(1)
                        for tag in ("instruction", "response_A", "response_B"))
        sa, sb = (world.judge(prompt, r).preferred_share for r in (a, b))
        return 200, completion(f"Scored {sa:.2f} vs {sb:.2f}.\n[[{'A' if sa > sb else 'B' if sb > sa else 'tie'}]]")

    url, state = serve(exact)
    argv = ["eval", "--methods", "none,dspa", "--n-prompts", "24", "--judge", "endpoint", "--judge-base-url", url,
            "--judge-model", "exact-toy", "--judge-cache", str(tmp_path / "cache.jsonl"), "--json"]
    assert main(argv) == 0
    res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    dspa = res["methods"]["dspa"]
    assert len(state.requests) == 24 + 2 and res["usage"]["requests"] == 24
    assert dspa["n"] == 24 and dspa["n_unparsed"] == 0 and dspa["wins"] > dspa["losses"], dspa
    assert 0 <= dspa["lc_win_rate"] <= 1 and "length_coef" in dspa
    assert main(argv) == 0, "a rerun reads every verdict from the cache"
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["methods"]["dspa"] == dspa
    assert len(state.requests) == 26


def test_cli_eval_endpoint_without_a_judge_is_a_clear_error(monkeypatch, capsys):
    from dspa_lite.cli import main

    monkeypatch.delenv("DSPA_JUDGE_BASE_URL", raising=False)
    monkeypatch.delenv("DSPA_JUDGE_MODEL", raising=False)
    assert main(["eval", "--judge", "endpoint", "--methods", "none,dspa"]) == 8  # a judge error
    assert "set DSPA_JUDGE_BASE_URL and DSPA_JUDGE_MODEL" in capsys.readouterr().err
    assert main(["eval", "--judge", "endpoint", "--methods", "dspa"]) == 2
    assert "list 'none'" in capsys.readouterr().err


def test_answer_files_get_raw_and_length_controlled_win_rates(serve, tmp_path):
    """A judge that prefers the longer response, on AlpacaEval files where the model is longer half the time and
    equally good otherwise: the raw win rate rewards length, the length-controlled one sees through it."""
    import random

    from dspa_lite.evaluation.evals import judge_alpaca_files
    from dspa_lite.evaluation.formats import write_alpaca_outputs

    def longer(body, n):
        text = user_text(body)
        a, b = (len(re.search(f"<{tag}>\n(.*?)\n</{tag}>", text, re.S).group(1).split())
                for tag in ("response_A", "response_B"))
        coin = random.Random(text).random() < 0.5  # an equal-length pair is a coin toss
        return 200, completion(f"[[{'A' if a > b or (a == b and coin) else 'B'}]]")

    url, _ = serve(longer)
    rng = random.Random(0)
    instructions = [f"Question {i}?" for i in range(160)]
    refs = [" ".join(["word"] * rng.randint(5, 40)) for _ in instructions]
    outs = [r + " more" * (rng.randint(20, 40) if i % 2 else 0) for i, r in enumerate(refs)]
    write_alpaca_outputs(tmp_path / "model.json", instructions, outs, "model")
    write_alpaca_outputs(tmp_path / "ref.json", instructions[::-1], refs[::-1], "reference")
    r = judge_alpaca_files(make_judge(url, tmp_path), tmp_path / "model.json", tmp_path / "ref.json", progress=False)
    assert (r["generator"], r["reference"], r["n"]) == ("model", "reference", 160)
    assert r["win_rate"] > 0.7 and r["length_coef"] > 1, r
    assert abs(r["lc_win_rate"] - 0.5) < 0.15, r
    write_alpaca_outputs(tmp_path / "other.json", ["Unknown?"], ["x"], "other")
    with pytest.raises(ValueError, match="same instructions"):
        judge_alpaca_files(make_judge(url, tmp_path), tmp_path / "other.json", tmp_path / "ref.json")
