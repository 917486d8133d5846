"""Bad inputs and faults, as a demanding user tries them, against the command line (in-process) and the API.

Each command-line case asserts the exit code of its kind (``cli.EXIT_CODES``), one error line on stderr with the
case's key words and no traceback, that nothing on disk changed, and, for every input that can be checked up front,
that no world was loaded (the world loader is replaced by one that fails the test if called).
"""

from __future__ import annotations

import _thread
import copy
import hashlib
import json
import os
import signal
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch

from dspa_lite import cli, toyworld
from dspa_lite.evaluation import experiment
from dspa_lite.evaluation.judges import Judge, JudgeConfig
from dspa_lite.loading.data import read_jsonl
from dspa_lite.loading.sae import load_from_disk
from dspa_lite.method.cdmap import CDMap, IncompatibleMapError
from dspa_lite.method.checks import (
    ArgumentError,
    ContextWarning,
    DataError,
    DegenerateMapError,
    NonFiniteError,
    check_output_folder,
)
from dspa_lite.method.dspa import DSPA, fit_cdmap
from dspa_lite.method.generation import generate
from dspa_lite.toyworld.world import identity

GEMMA = dict(model_id="google/gemma-2-2b", sae_in_id="gemma-scope-2b-pt-res-canonical/layer_12/width_16k/canonical",
             sae_out_id="gemma-scope-2b-pt-res-canonical/layer_20/width_16k/canonical", l_in=12, l_out=20, d_model=2304)
SENTENCE = "i love my cat so much !"


# ---- files the cases start from ------------------------------------------------------------------------------


def _rows(path: Path, rows: list) -> None:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))


def _tiny_map(meta: dict) -> CDMap:
    return CDMap(torch.eye(4), torch.zeros(4), torch.ones(4), torch.ones(4), meta=meta)


def _setup(kind: str, tmp: Path, world=None) -> None:
    t = {"prompt": "explain how a tide works", "chosen": "first , the moon pulls .", "rejected": "no ."}
    makers = {
        "folder": lambda: (tmp / "dir.jsonl").mkdir(),
        "empty": lambda: (tmp / "t.jsonl").write_text(""),
        "same": lambda: _rows(tmp / "t.jsonl", [{**t, "rejected": t["chosen"]}]),
        "one": lambda: _rows(tmp / "t.jsonl", [t]),
        "badjson": lambda: _rows(tmp / "t.jsonl", [t, '{"prompt": "x", "chosen": ']),
        "badutf8": lambda: (tmp / "t.jsonl").write_bytes(b'{"prompt": "caf\xe9", "chosen": "a", "rejected": "b"}\n'),
        "map": lambda: _tiny_map({}).save(tmp / "out"),
        "foreign": lambda: ((tmp / "out").mkdir(), (tmp / "out" / "notes.txt").write_text("mine")),
        "file": lambda: (tmp / "out").write_text("a file"),
        "gemma": lambda: _tiny_map(GEMMA).save(tmp / "gemma"),
        "corrupt": lambda: (_tiny_map({}).save(tmp / "bad"), (tmp / "bad" / "cdmap.json").write_text("{oops")),
        "nonempty": lambda: ((tmp / "out").mkdir(), (tmp / "out" / "keep.txt").write_text("mine")),
        "unknown": lambda: _rows(tmp / "t.jsonl", [{"prompt": f"zorg {i} blix", "chosen": f"quux {i} frob .",
                                                     "rejected": f"snarf {i} glorp ."} for i in range(12)]),
        "two": lambda: _rows(tmp / "t.jsonl", [x.to_dict() for x in world.triples("train")[:2]]),
        "huge": lambda: _rows(tmp / "t.jsonl", [{**x.to_dict(), "prompt": " ".join([x.prompt] * 2000)}
                                                for x in world.triples("train")[:3]]),
        "long": lambda: _rows(tmp / "t.jsonl", [{**x.to_dict(), "prompt": " ".join([x.prompt] * 40)}
                                                for x in world.triples("train")[:3]]),
    }
    makers[kind]()


def _snapshot(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): ("dir" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest())
            for p in sorted(root.rglob("*")) if "judge" not in p.name}


# ---- the command-line table -------------------------------------------------------------------------------------


@dataclass
class Case:
    argv: str  # formatted with {tmp} (the case's folder), {map} (a small map of the toy world) and {url} (a judge)
    code: int
    words: tuple[str, ...]
    setup: str | None = None
    env: dict = field(default_factory=dict)
    world: bool = False  # True: the world may load (the error needs the model or tokenizer)


NO_JUDGE = {"DSPA_JUDGE_BASE_URL": None, "DSPA_JUDGE_MODEL": None}
ENDPOINT = "eval --methods none,dspa --judge endpoint --judge-model m --judge-base-url http://127.0.0.1:9/v1"
CASES = {
    # counts, ranges and names: exit 2, before anything loads
    "fit --n 0": Case("fit --n 0 --out {tmp}/m", 2, ("--n=0", ">= 1")),
    "fit --n -5": Case("fit --n -5 --out {tmp}/m", 2, ("--n=-5", ">= 1")),
    "fit --n 1 (below n_min)": Case("fit --n 1 --out {tmp}/m", 2, ("--n=1", ">= 2", "n_min=2")),
    "fit --n too many": Case("fit --n 5000 --out {tmp}/m", 2, ("--n=5000", "exceeds the 1000")),
    "eval --n-prompts 0": Case("eval --n-prompts 0", 2, ("--n-prompts=0",)),
    "eval --n-prompts -2": Case("eval --n-prompts -2", 2, ("--n-prompts=-2",)),
    "eval --seeds 0": Case("eval --seeds 0", 2, ("--seeds=0",)),
    "eval --methods ,": Case("eval --methods ,", 2, ("names nothing", "dspa")),
    "eval --methods unknown": Case("eval --methods none,dspa,bogus", 2, ("unknown", "bogus", "choose from")),
    "eval --methods twice": Case("eval --methods none,none", 2, ("twice",)),
    "eval endpoint without none": Case("eval --methods dspa --judge endpoint", 2, ("list 'none'",)),
    "eval --k -1": Case("eval --k -1", 2, ("--k=-1", "d_sae=1024")),
    "eval --k too big": Case("eval --k 5000", 2, ("--k=5000", "d_sae=1024")),
    "eval --k abc": Case("eval --k abc", 2, ("--k", "invalid int value", "--help")),
    "generate --alpha -5": Case(f"generate --map {{tmp}}/m --prompt '{SENTENCE}' --alpha -5", 2, ("--alpha=-5", "0 and 100")),
    "generate --alpha 1e30": Case("generate --map {tmp}/m --prompt hi --alpha 1e30", 2, ("--alpha=1e+30", "finite")),
    "generate --alpha nan": Case("generate --map {tmp}/m --prompt hi --alpha nan", 2, ("--alpha=nan", "finite")),
    "generate --alpha inf": Case("generate --map {tmp}/m --prompt hi --alpha inf", 2, ("--alpha=inf",)),
    "generate --max-new-tokens 0": Case("generate --map {tmp}/m --prompt hi --max-new-tokens 0", 2, ("--max-new-tokens=0",)),
    "generate blank prompt": Case("generate --map {tmp}/m --prompt ' '", 2, ("prompt 0", "non-empty")),
    "generate --seed -1": Case("generate --map {tmp}/m --prompt hi --seed -1", 2, ("--seed=-1",)),
    "audit --k 0": Case("audit --map {tmp}/m --k 0", 2, ("--k=0", "between 1 and 1024")),
    "build-toy --seed -1": Case("build-toy --seed -1", 2, ("--seed=-1", ">= 0")),
    "unknown option": Case("fit --out {tmp}/m --bogus", 2, ("unrecognized arguments", "--bogus")),
    "endpoint --judge-timeout 0": Case(ENDPOINT + " --judge-timeout 0", 2, ("--judge-timeout=0.0", "> 0")),
    "endpoint --judge-max-retries -1": Case(ENDPOINT + " --judge-max-retries -1", 2, ("--judge-max-retries=-1",)),
    "endpoint base url without http": Case("eval --methods none,dspa --judge endpoint --judge-model m "
                                           "--judge-base-url localhost:8000", 2, ("base_url", "http")),
    # settings in the environment: exit 6 (a --profile flag is an argument: exit 2)
    "DSPA_PROFILE=gemma-2-2b": Case("fit --out {tmp}/m", 6, ("DSPA_PROFILE='gemma-2-2b'", "tiny"),
                                    env={"DSPA_PROFILE": "gemma-2-2b"}),
    "DSPA_PROFILE=bogus": Case("eval", 6, ("DSPA_PROFILE='bogus'", "not a known profile"), env={"DSPA_PROFILE": "bogus"}),
    "--profile bogus": Case("fit --profile bogus --out {tmp}/m", 2, ("--profile='bogus'", "gemma-2-2b")),
    "--profile gemma-2-2b": Case("generate --profile gemma-2-2b --map {tmp}/m --prompt hi", 2, ("runs tiny only",)),
    "--profile tiny wins over DSPA_PROFILE": Case("fit --profile tiny --n 0 --out {tmp}/m", 2, ("--n=0",),
                                                  env={"DSPA_PROFILE": "gemma-2-2b"}),
    "DSPA_TOY_SEED=-3": Case("fit --out {tmp}/m", 6, ("DSPA_TOY_SEED='-3'",), env={"DSPA_TOY_SEED": "-3"}),
    "cold cache, bad input: no build": Case("fit --n 0 --out {tmp}/m", 2, ("--n=0",),
                                            env={"DSPA_TOY_SEED": "7", "DSPA_CACHE": "{tmp}/cache"}),
    # input data: exit 3
    "triples path is a folder": Case("fit --triples {tmp}/dir.jsonl --out {tmp}/m", 3, ("is a folder", "dir.jsonl"), "folder"),
    "triples file missing": Case("fit --triples {tmp}/none.jsonl --out {tmp}/m", 3, ("does not exist", "none.jsonl")),
    "triples file empty": Case("fit --triples {tmp}/t.jsonl --out {tmp}/m", 3, ("t.jsonl", "no preference triples"), "empty"),
    "chosen == rejected": Case("fit --triples {tmp}/t.jsonl --out {tmp}/m", 3, ("line 1", "chosen == rejected"), "same"),
    "one triple": Case("fit --triples {tmp}/t.jsonl --out {tmp}/m", 3, ("1 triple", "fewer than the 2"), "one"),
    "invalid JSON line": Case("fit --triples {tmp}/t.jsonl --out {tmp}/m", 3, ("t.jsonl line 2", "invalid JSON"), "badjson"),
    "invalid UTF-8": Case("fit --triples {tmp}/t.jsonl --out {tmp}/m", 3, ("line 1", "invalid UTF-8"), "badutf8"),
    "unknown words": Case("fit --triples {tmp}/t.jsonl --out {tmp}/m", 3, ("does not know",), "unknown", world=True),
    "two triples: all-zero map": Case("fit --triples {tmp}/t.jsonl --out {tmp}/m", 3, ("all zero", "steer nothing"),
                                      "two", world=True),
    "triple longer than the context": Case("fit --triples {tmp}/t.jsonl --out {tmp}/m", 3,
                                           ("longer than the model's context of 256 tokens", "max_chars"), "long",
                                           world=True),
    "a huge line is refused before tokenizing": Case("fit --triples {tmp}/t.jsonl --out {tmp}/m", 3,
                                                     ("characters", "surely more tokens", "context of 256"), "huge",
                                                     world=True),
    # maps: exit 4, before the world loads
    "map missing": Case("generate --map {tmp}/nope --prompt hi", 4, ("no CDMap folder", "nope")),
    "map corrupt": Case("generate --map {tmp}/bad --prompt hi", 4, ("corrupt", "refit"), "corrupt"),
    "map of another model": Case("generate --map {tmp}/gemma --prompt hi", 4,
                                 ("wrong map for another model", "google/gemma-2-2b", "layer 12->20"), "gemma"),
    "audit a map of another model": Case("audit --map {tmp}/gemma", 4, ("wrong map for another model",), "gemma"),
    # output: exit 5, before any work
    "fit --out holds a map": Case("fit --out {tmp}/out", 5, ("already holds a CDMap", "--overwrite"), "map"),
    "fit --out holds other files": Case("fit --out {tmp}/out --overwrite", 5, ("other than a CDMap", "notes.txt"), "foreign"),
    "fit --out is a file": Case("fit --out {tmp}/out", 5, ("is a file",), "file"),
    "fit --out under a file": Case("fit --out {tmp}/out/m", 5, ("cannot write", "is a file"), "file"),
    "build-toy --out not empty": Case("build-toy --seed 3 --out {tmp}/out", 5, ("not empty", "--force"), "nonempty"),
    "judge cache under a file": Case(ENDPOINT + " --judge-cache {tmp}/out/c.jsonl", 5, ("--judge-cache", "is a file"), "file"),
    # the judge: exit 8
    "endpoint judge not configured": Case("eval --methods none,dspa --judge endpoint", 8,
                                          ("DSPA_JUDGE_BASE_URL", "DSPA_JUDGE_MODEL"), env=NO_JUDGE),
}


@pytest.fixture
def no_world(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a world was loaded before the input was checked")

    monkeypatch.setattr(toyworld, "load", refuse)
    monkeypatch.setattr(toyworld, "build_into", refuse)


@pytest.fixture
def the_world(monkeypatch, world):
    monkeypatch.setattr(toyworld, "load", lambda **kwargs: world)
    return world


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch, tmp_path):
    for name in ("DSPA_PROFILE", "DSPA_TOY_SEED", "DSPA_JUDGE_BASE_URL", "DSPA_JUDGE_MODEL", "DSPA_JUDGE_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("DSPA_CACHE", str(tmp_path / "dspa-cache"))
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")


def _run(argv: list[str], capsys) -> tuple[int, str, str]:
    code = cli.main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def _one_error_line(err: str, words) -> None:
    assert "Traceback" not in err, err
    errors = [line for line in err.splitlines() if ": error: " in line]
    assert len(errors) == 1 and errors[0].startswith("dspa-lite"), err
    for w in words:
        assert w in errors[0], (w, errors[0])


@pytest.mark.parametrize("name", list(CASES))
def test_cli_bad_input(name, tmp_path, monkeypatch, capsys, request):
    import shlex

    case = CASES[name]
    request.getfixturevalue("the_world" if case.world else "no_world")
    world = request.getfixturevalue("world") if case.world else None
    for key, value in case.env.items():
        if value is None:
            monkeypatch.delenv(key, raising=False)
        else:
            monkeypatch.setenv(key, value.format(tmp=tmp_path))
    if case.setup:
        _setup(case.setup, tmp_path, world)
    before = _snapshot(tmp_path)
    t0 = time.perf_counter()
    code, out, err = _run(shlex.split(case.argv.format(tmp=tmp_path)), capsys)
    assert code == case.code, err
    _one_error_line(err, case.words)
    assert out == ""
    assert _snapshot(tmp_path) == before, "a failed command changed files"
    if not case.world:
        assert time.perf_counter() - t0 < 10, "a bad argument must be refused at once"


def test_exit_codes_are_distinct_per_kind():
    kinds = {code for _, code in cli.EXIT_CODES}
    assert kinds == {2, 3, 4, 5, 6, 7, 8, 9} and cli.INTERRUPTED == 130
    assert cli.METHODS == experiment.METHOD_NAMES
    with pytest.raises(ValueError, match=f"choose from {', '.join(experiment.METHOD_NAMES)}$"):
        experiment.build_methods(None, ["bogus"], cdmap=object(), plain=object())


def test_debug_shows_the_traceback(tmp_path, no_world):
    with pytest.raises(ArgumentError, match="--n=0"):
        cli.main(["--debug", "fit", "--n", "0", "--out", str(tmp_path / "m")])
    with pytest.raises(ArgumentError, match="--n=0"):
        cli.main(["fit", "--n", "0", "--out", str(tmp_path / "m"), "--debug"])


def test_ctrl_c_during_a_build_is_one_line(monkeypatch, tmp_path, capsys):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(toyworld, "build_into", interrupted)
    code, _, err = _run(["build-toy", "--seed", "3", "--out", str(tmp_path / "w")], capsys)
    assert code == cli.INTERRUPTED and "Traceback" not in err and "interrupted" in err
    assert not (tmp_path / "w").exists()


# ---- commands that need the world --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def small_map(world, tmp_path_factory):
    path = tmp_path_factory.mktemp("map") / "m"
    fit_cdmap(world.model, world.tokenizer, world.sae_in, world.sae_out, world.triples("train")[:64]).save(path)
    return path


def test_long_prompt_is_a_warning_and_map_is_checked(the_world, small_map, capsys):
    long_prompt = " ".join([SENTENCE] * 40)  # 280 words: longer than the toy model's 256 positions
    code, out, err = _run(["generate", "--map", str(small_map), "--prompt", long_prompt, "--max-new-tokens", "2",
                           "--json"], capsys)
    assert code == 0, err
    warning = [line for line in err.splitlines() if ": warning: " in line]
    assert len(warning) == 1 and "longer than the model's context of 256 tokens" in warning[0], err
    assert json.loads(out.strip().splitlines()[-1])["generations"][0]["prompt"] == long_prompt


def test_audit(the_world, small_map, capsys):
    code, out, err = _run(["audit", "--map", str(small_map), "--k", "8", "--n-per-category", "2", "--json"], capsys)
    assert code == 0, err
    res = json.loads(out.strip().splitlines()[-1])
    assert set(res["categories"]) == {"explain", "howto", "chat", "risky"} and res["k"] == 8
    for row in res["categories"].values():
        assert 0 <= row["K_pos_precision"] <= 1 and 0 <= row["K_neg_precision"] <= 1
        assert row["K_pos_styles"] and 0 < len(row["K_pos_latents"]) <= 8 and row["K_neg_latents"]


# ---- the endpoint judge ------------------------------------------------------------------------------------------


@pytest.fixture
def judge_server():
    """``start(reply)`` serves ``reply(n)`` (the n-th request's content, or a delay in seconds as a float)."""
    servers = []

    def start(reply):
        state = {"n": 0}
        lock = threading.Lock()

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                self.rfile.read(int(self.headers["Content-Length"]))
                with lock:
                    state["n"] += 1
                    content = reply(state["n"])
                if isinstance(content, float):
                    time.sleep(content)
                    content = "[[A]]"
                data = json.dumps({"choices": [{"message": {"role": "assistant", "content": content}}],
                                   "usage": {"prompt_tokens": 10, "completion_tokens": 2}}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()
        servers.append(httpd)
        return f"http://127.0.0.1:{httpd.server_port}/v1", state

    yield start
    for httpd in servers:
        httpd.shutdown()
        httpd.server_close()


def _endpoint_argv(url: str, tmp_path: Path, *extra: str) -> list[str]:
    return ["eval", "--methods", "none,dspa", "--n-prompts", "2", "--judge", "endpoint", "--judge-base-url", url,
            "--judge-model", "m", "--judge-cache", str(tmp_path / "judge.jsonl"), "--json", *extra]


@pytest.mark.parametrize("content", ["I cannot decide.", None])
def test_unreadable_verdicts_are_not_cached_and_fail_the_run(content, the_world, small_map, judge_server, tmp_path,
                                                            monkeypatch, capsys):
    monkeypatch.setattr(experiment, "fit_maps", lambda *a, **k: CDMap.load(small_map))
    url, state = judge_server(lambda n: content)
    code, out, err = _run(_endpoint_argv(url, tmp_path), capsys)
    assert code == 8 and out == ""
    _one_error_line(err, ("none of the 2 judge replies had a readable verdict", "none was cached"))
    assert not (tmp_path / "judge.jsonl").exists() or not (tmp_path / "judge.jsonl").read_text().strip()
    assert _run(_endpoint_argv(url, tmp_path), capsys)[0] == 8 and state["n"] == 4, "a rerun asks again"


def test_json_output_is_strict_with_null_reasons(the_world, small_map, judge_server, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(experiment, "fit_maps", lambda *a, **k: CDMap.load(small_map))
    url, _ = judge_server(lambda n: "[[A]]" if n == 1 else "no verdict")
    code, out, err = _run(_endpoint_argv(url, tmp_path), capsys)
    assert code == 0, err

    def refuse(constant):
        raise AssertionError(f"bare {constant} in --json output")

    res = json.loads(out.strip().splitlines()[-1], parse_constant=refuse)
    dspa = res["methods"]["dspa"]
    assert dspa["n"] == 1 and dspa["n_unparsed"] == 1 and dspa["standard_error"] is None and res["unparsed"] == 1
    assert "at least two values" in res["null_reasons"]["methods.dspa.standard_error"]
    rows = (tmp_path / "judge.jsonl").read_text().splitlines()
    assert len(rows) == 1 and "[[A]]" in rows[0], "only the parsed answer is cached"


def test_cache_write_failure_keeps_answers(judge_server, tmp_path, capsys):
    url, state = judge_server(lambda n: "[[B]]")
    (tmp_path / "ro").write_text("a file, so the cache's folder cannot be made")
    judge = Judge(JudgeConfig(url, "m", cache_path=str(tmp_path / "ro" / "judge.jsonl"), backoff_s=0.001))
    first = judge.compare(["a", "b"], ["x", "y"], ["p", "q"], progress=False)
    assert [c.verdict for c in first] == ["B", "B"] and judge.unsaved == 2 and "ro" in judge.cache_error
    assert "kept in memory" in capsys.readouterr().err
    again = judge.compare(["a", "b"], ["x", "y"], ["p", "q"], progress=False)
    assert state["n"] == 2 and all(c.cached for c in again), "the paid answers were kept"


def test_ctrl_c_stops_the_judge_promptly(judge_server, tmp_path):
    url, _ = judge_server(lambda n: 5.0)  # every answer takes 5 s
    judge = Judge(JudgeConfig(url, "m", cache_path=str(tmp_path / "c.jsonl")))
    # Ctrl-C as in a terminal: a process started in the background by a non-interactive shell (nohup, `cmd &`)
    # inherits SIGINT ignored, and interrupt_main then does nothing
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        threading.Timer(0.3, _thread.interrupt_main).start()
        t0 = time.perf_counter()
        with pytest.raises(KeyboardInterrupt):
            judge.compare(["a", "b", "c"], ["x"] * 3, ["y"] * 3, progress=False)
        assert time.perf_counter() - t0 < 2
    finally:
        signal.signal(signal.SIGINT, previous)


# ---- the same rules in the API -----------------------------------------------------------------------------------


def test_api_fit_refuses_bad_data(world, tmp_path):
    W, train = world, world.triples("train")
    fit = lambda triples: fit_cdmap(W.model, W.tokenizer, W.sae_in, W.sae_out, triples)  # noqa: E731
    with pytest.raises(DataError, match="holds no preference triples"):
        fit([])
    with pytest.raises(DataError, match="fewer than the 2"):
        fit(train[:1])
    with pytest.raises(DataError, match="triple 1: chosen == rejected"):
        fit([train[0], {"prompt": train[1].prompt, "chosen": train[1].chosen, "rejected": train[1].chosen}])
    with pytest.warns(UserWarning, match="fitting on 2 triples"), pytest.raises(DegenerateMapError, match="all zero"):
        fit(train[:2])
    _rows(tmp_path / "t.jsonl", [{"prompt": "p", "chosen": "same", "rejected": "same"}])
    with pytest.raises(DataError, match="t.jsonl line 1: chosen == rejected"):
        read_jsonl(tmp_path / "t.jsonl")


def test_api_nan_weights_are_named(world, tmp_path):
    W, triples = world, world.triples("train")[:12]
    sae_in = copy.deepcopy(W.sae_in)
    with torch.no_grad():
        sae_in.W_enc[0, 0] = float("nan")
    with pytest.raises(NonFiniteError, match="sae_in has NaN/inf weights: W_enc"):
        fit_cdmap(W.model, W.tokenizer, sae_in, W.sae_out, triples)
    sae_in.save_model(str(tmp_path / "sae"))
    with pytest.raises(NonFiniteError, match="the SAE at .*sae has NaN/inf weights: W_enc"):
        load_from_disk(tmp_path / "sae")
    model = copy.deepcopy(W.model)
    with torch.no_grad():
        model.model.layers[0].mlp.down_proj.weight[0, 0] = float("nan")
    with pytest.raises(NonFiniteError, match="because the model's weights hold NaN/inf: model.layers.0.mlp.down_proj"):
        fit_cdmap(model, W.tokenizer, W.sae_in, W.sae_out, triples)


def test_api_steering_arguments(world, small_map):
    W, cdmap = world, CDMap.load(small_map)
    for alpha in (float("nan"), float("inf"), -5.0, 1e30):
        with pytest.raises(ArgumentError, match="alpha="):
            DSPA(W.model, W.tokenizer, W.sae_in, W.sae_out, cdmap, alpha=alpha)
    for k in (-1, 1025, 2.5, True):
        with pytest.raises(ArgumentError, match="must be between 0 and d_sae=1024"):
            DSPA(W.model, W.tokenizer, W.sae_in, W.sae_out, cdmap, k=k)
    gemma = _tiny_map({**identity(W.config), **GEMMA, "d_sae_in": None, "d_sae_out": None})
    with pytest.raises(IncompatibleMapError, match=r"^wrong map for another model: .*'google/gemma-2-2b' layer 12->20"):
        DSPA(W.model, W.tokenizer, W.sae_in, W.sae_out, gemma)  # not "layer 12 is out of range"
    with pytest.raises(ArgumentError, match="n=0"):
        W.prompts("test", 0)
    with pytest.warns(ContextWarning, match="prompts: 1 of 2 are longer than the model's context of 256 tokens"):
        generate(W.model, W.tokenizer, [SENTENCE, " ".join([SENTENCE] * 40)], max_new_tokens=1)
    with pytest.raises(ValueError, match="timeout_s"):
        JudgeConfig("http://127.0.0.1:9/v1", "m", timeout_s=0)


def test_output_folder_check_names_the_flag(tmp_path):
    _tiny_map({}).save(tmp_path / "m")
    with pytest.raises(FileExistsError, match="pass --overwrite to replace it"):
        check_output_folder(tmp_path / "m", overwrite=False, owned=("cdmap.json", "cdmap.safetensors"), what="a CDMap",
                            overwrite_hint="pass --overwrite")
    with pytest.raises(FileExistsError, match="overwrite=True"):
        _tiny_map({}).save(tmp_path / "m")


@pytest.mark.parametrize("how", ["chmod", "simulated"])
def test_read_only_output_folder(how, tmp_path, no_world, monkeypatch, capsys):
    from dspa_lite.method import checks

    if how == "chmod" and os.geteuid() == 0:
        pytest.skip("root writes into read-only folders")
    if how == "simulated":  # what a read-only folder does to a non-root user
        def denied(*args, **kwargs):
            raise PermissionError(13, "Permission denied")

        monkeypatch.setattr(checks.tempfile, "mkstemp", denied)
    (tmp_path / "ro").mkdir()
    (tmp_path / "ro").chmod(0o555)
    try:
        code, _, err = _run(["fit", "--out", str(tmp_path / "ro" / "m")], capsys)
    finally:
        (tmp_path / "ro").chmod(0o755)
    assert code == 5
    _one_error_line(err, ("cannot write a CDMap", "not writable (Permission denied)"))
    assert not (tmp_path / "ro" / "m").exists()
