"""``dspa-lite pipeline`` (dspa_lite.evaluation.pipeline): the dry run loads nothing; a run writes every stage's
file; a rerun skips every stage; other settings in the same ``--out`` stop it with a one-line error.

The whole pipeline runs on tiny random-weight Gemma-2 checkpoints in the hub's layout (``hubfixtures``), put
in the profile registry under ``gemma-2-2b-it``, with local preference data, MT-Bench questions, AlpacaEval
instructions and a local lm-eval multiple-choice task.
"""

from __future__ import annotations

import dataclasses
import json
import socket

import hubfixtures as hf
import pytest
import torch
from tiny import lm_eval_task

from dspa_lite import cli
from dspa_lite.evaluation import pipeline
from dspa_lite.evaluation.formats import read_alpaca_outputs, read_mt_bench_answers, read_mt_bench_questions
from dspa_lite.loading import models
from dspa_lite.loading.data import read_jsonl
from dspa_lite.loading.profiles import PROFILES, get_profile
from dspa_lite.method.cdmap import CDMap


def _refuse(*args, **kwargs):
    raise AssertionError("this run must not load a model or reach the network")


def _last_json(capsys) -> tuple[dict, str]:
    cap = capsys.readouterr()
    return json.loads(cap.out.strip().splitlines()[-1]), cap.err


@pytest.fixture
def nothing_loads(monkeypatch):
    monkeypatch.setattr(socket.socket, "connect", _refuse)
    monkeypatch.setattr(models, "load", _refuse)
    monkeypatch.setattr(models, "load_all", _refuse)


def test_dry_run_prints_the_plan_and_loads_nothing(tmp_path, capsys, nothing_loads):
    out = tmp_path / "run"
    assert cli.main(["pipeline", "--dry-run", "--json", "--out", str(out)]) == 0
    plan, err = _last_json(capsys)
    assert not out.exists(), "a dry run writes nothing"
    assert plan["model"] == "google/gemma-2-2b-it" and plan["layers"] == [12, 20] and plan["d_sae"] == 16384
    assert plan["saes"]["20"] == "gemma-scope-2b-pt-res-canonical/layer_20/width_16k/canonical"
    stages = [s["stage"] for s in plan["stages"]]
    assert stages == ["triples", "questions", "instructions", "fit", *[f"mt_bench:{m}" for m in pipeline.METHODS],
                      *[f"alpaca:{m}" for m in pipeline.METHODS], "lm_eval:none", "lm_eval:dspa"]
    assert not any(s["exists"] for s in plan["stages"]) and plan["settings"]["n_triples"] == 250
    assert "to do  fit" in err and "layer_12/width_16k/canonical" in err

    assert cli.main(["pipeline", "--dry-run", "--json", "--quick", "--profile", "gemma-2-2b", "--tasks", "",
                     "--out", str(out)]) == 0
    quick, _ = _last_json(capsys)
    assert quick["model"] == "google/gemma-2-2b" and quick["settings"]["n_triples"] == 32
    assert not any(s["stage"].startswith("lm_eval") for s in quick["stages"])
    assert cli.main(["pipeline", "--dry-run", "--profile", "gemma-7"]) == 2
    assert "unknown profile 'gemma-7'" in capsys.readouterr().err




@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """The gemma-2-2b-it profile shrunk to a tiny hub-layout checkpoint with Gemma Scope-layout SAEs at layers
    1 and 2, and every input file the pipeline reads, all local."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("pipeline-inputs")
    folder = hf.gemma2_checkpoint(root / "model")
    shrunk = dataclasses.replace(get_profile("gemma-2-2b-it"), n_layers=hf.N_LAYERS, d_model=hf.D_MODEL,
                                 d_sae=hf.D_SAE, l_in=1, l_out=2)
    model, tok = models.load(shrunk.with_paths(model_path=folder), device="cpu")
    saes = {layer: hf.gemma_scope_sae(root / f"sae-{layer}", layer, acts=hf.residuals(model, tok, layer), seed=layer)
            for layer in (1, 2)}
    (data := root / "prefs.jsonl").write_text("".join(json.dumps(
        {"prompt": r["prompt"], "chosen": r["chosen"][-1]["content"], "rejected": r["rejected"][-1]["content"]}) + "\n"
        for r in hf.preference_rows(20)))
    topics = ["a rainbow", "vaccines", "ocean tides", "inflation", "volcanoes"]  # as in the preference data
    (questions := root / "question.jsonl").write_text("".join(json.dumps(
        {"question_id": 81 + i, "category": cat, "turns": [f"Explain how {topics[i]} works.", "Now in one sentence."]})
        + "\n" for i, cat in enumerate(["writing", "writing", "math", "stem", "coding"])))
    (alpaca := root / "alpaca_eval.json").write_text(json.dumps(
        [{"instruction": f"Can you describe {t} in a few sentences?", "output": "x", "generator": "gpt4",
          "dataset": "helpful_base"} for t in topics]))
    (docs := root / "mc.jsonl").write_text("".join(json.dumps(
        {"question": f"what colour is the {w}", "choices": ["blue", "green", "white"], "answer": i % 3}) + "\n"
        for i, w in enumerate(["sky", "grass", "snow", "sea"])))
    (tasks := root / "tasks").mkdir()
    lm_eval_task(tasks, "toy_mc", docs)
    yield shrunk.with_paths(model_path=folder, sae_paths=saes), dict(
        data=data, mt_bench_questions=questions, alpaca_file=alpaca, lm_eval_include=tasks)
    torch.set_num_threads(threads)


def test_run_writes_every_stage_then_resumes_skipping_all(inputs, tmp_path, capsys, monkeypatch):
    profile, files = inputs
    monkeypatch.setitem(PROFILES, "gemma-2-2b-it", profile)
    out = tmp_path / "run"
    argv = ["pipeline", "--out", str(out), "--n-triples", "12", "--mt-bench-n", "3", "--alpaca-n", "3",
            "--max-new-tokens", "6", "--tasks", "toy_mc", "--lm-eval-limit", "4", "--k", "4", "--batch-size", "4",
            *[a for key, path in files.items() for a in ("--" + key.replace("_", "-"), str(path))], "--json"]
    assert cli.main(argv) == 0
    summary, err = _last_json(capsys)
    name = "gemma-2-2b-it"

    settings = json.loads((out / "settings.json").read_text())
    assert settings["n_triples"] == 12 and settings["k"] == 4 and settings["tasks"] == "toy_mc"
    assert len(read_jsonl(out / "triples.jsonl")) == 12
    assert CDMap.load(out / "cdmap").meta["l_out"] == 2
    questions = read_mt_bench_questions(out / "mt_bench" / "question.jsonl")
    assert [q.category for q in questions] == ["writing", "math", "stem"], "round-robin over the categories"
    assert len(json.loads((out / "alpaca_eval" / "instructions.json").read_text())) == 3
    for m in pipeline.METHODS:
        answers = read_mt_bench_answers(out / "mt_bench" / "model_answer" / f"{name}-{m}.jsonl")
        assert len(answers) == 3 and all(len(a.turns) == 2 for a in answers)
        rows = read_alpaca_outputs(out / "alpaca_eval" / f"{name}-{m}.json")
        assert len(rows) == 3 and {r["generator"] for r in rows} == {f"{name}-{m}"}
        assert summary["generation"][f"mt_bench:{m}"]["n_texts"] == 6
    texts = {m: [t for a in read_mt_bench_answers(out / "mt_bench" / "model_answer" / f"{name}-{m}.jsonl")
                 for t in a.turns] + [r["output"] for r in read_alpaca_outputs(out / "alpaca_eval" / f"{name}-{m}.json")]
             for m in pipeline.METHODS}
    assert texts["dspa"] != texts["none"] and texts["static"] != texts["none"], "the steerers steer"
    for m in pipeline.LM_EVAL_METHODS:
        scores = json.loads((out / "lm_eval" / f"{m}.json").read_text())["scores"]
        assert 0 <= scores["toy_mc"]["acc"] <= 1 and summary["lm_eval"][m] == scores
    assert json.loads((out / "summary.json").read_text()) == summary
    stages = pipeline.stages(pipeline.Settings(**settings), out, name)
    assert set(summary["seconds"]) == {s for s, _ in stages} and all(path.exists() for _, path in stages)
    timings = json.loads((out / "timings.json").read_text())
    assert summary["timings"] == timings and set(summary["stage_seconds"]) == set(summary["seconds"])
    assert {timings[f"mt_bench:{m}"]["batch_size"] for m in pipeline.METHODS} == {4} and timings["triples"]["batch_size"] is None
    assert all(row["device"] == "cpu" and row["seconds"] >= 0 for row in timings.values())
    assert "alpaca_eval --model_outputs" in err

    # a rerun finds every file: no stage runs, nothing is loaded or rewritten
    load_all, mtimes = models.load_all, {s: path.stat().st_mtime_ns for s, path in stages}
    monkeypatch.setattr(models, "load_all", _refuse)
    assert cli.main(argv) == 0
    again, err = _last_json(capsys)
    assert again["seconds"] == {} and "== [" not in err and again["generation"] == summary["generation"]
    assert again["stage_seconds"] == summary["stage_seconds"], "recorded times survive a resumed run"
    assert {s: path.stat().st_mtime_ns for s, path in stages} == mtimes

    # a lost file: only its stage runs again (and loads the model)
    (out / "alpaca_eval" / f"{name}-static.json").unlink()
    loads = []
    monkeypatch.setattr(models, "load_all", lambda p: loads.append(p.name) or load_all(p))
    assert cli.main(argv) == 0
    again, _ = _last_json(capsys)
    assert loads == [name] and list(again["seconds"]) == ["alpaca:static"]
    assert again["stage_seconds"]["alpaca:static"] == round(again["seconds"]["alpaca:static"], 2)
    assert again["generation"] == summary["generation"], "the same seeds give the same answers"

    # other settings in the same folder: a one-line error, nothing run
    assert cli.main([*argv, "--k", "8"]) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("dspa-lite pipeline: error:") and "k: 4 there, 8 now" in last and "new --out" in last
    assert json.loads((out / "settings.json").read_text()) == settings


def test_batch_sizes_come_from_the_memory_model(monkeypatch):
    """Without --batch-size the stages take the memory model's batches for this GPU (generation and fitting
    capped at 16, so every card that fits them samples alike); a card that cannot hold the run stops it."""
    from argparse import Namespace

    from dspa_lite.loading import colab, memory

    def run_on(card: str, batch_size=None):
        total, capability = memory.GPUS[card]
        fake = lambda profile, work=None: {"gpu": card, "total_gb": total / 1e9,  # noqa: E731
                                           **memory.plan(profile, total, capability, work or memory.Workload())}
        monkeypatch.setattr(colab, "gpu_plan", fake)
        return pipeline._Run(pipeline.Settings(), get_profile("gemma-2-2b-it"), {}, Namespace(batch_size=batch_size))

    t4 = run_on("T4 16 GB")
    assert t4.batches == {"generation": 4, "fitting": 8, "lm-eval": 1} and t4.batch_of("alpaca:dspa") == 4
    assert t4.batch_of("triples") is None and t4.batch_of("lm_eval:none") == 1
    assert run_on("A100 80 GB").batches == {"generation": 16, "fitting": 16, "lm-eval": 64}
    assert run_on("T4 16 GB", batch_size=2).batches == dict.fromkeys(("generation", "fitting", "lm-eval"), 2)
    big = pipeline._Run(pipeline.Settings(profile="qwen3-8b"), get_profile("qwen3-8b"), {}, Namespace(batch_size=None))
    monkeypatch.setattr(colab, "gpu_plan", lambda profile, work=None: {
        "gpu": "NVIDIA L4", "total_gb": 24.2, **memory.plan(profile, *memory.GPUS["L4 24 GB"], work)})
    with pytest.raises(pipeline.PipelineError, match=r"qwen3-8b does not fit NVIDIA L4 \(24 GB\) in bfloat16"):
        big.batch_of("fit")
