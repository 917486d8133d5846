"""benchmarks/gemma2_2b_colab.py: the dry run works offline and loads nothing; a resumable run writes every stage.

The full pipeline runs on tiny random-weight Gemma-2 checkpoints in the hub's layout (``hubfixtures``),
passed to ``main(profile=...)`` as the tests of ``test_realpath.py`` pass them to ``models.load_all``.
"""

from __future__ import annotations

import dataclasses
import json
import socket

import hubfixtures as hf
import pytest
import torch
from scripts import load_script

from dspa_lite.evaluation.formats import read_alpaca_outputs, read_mt_bench_answers
from dspa_lite.loading import models
from dspa_lite.loading.profiles import get_profile


@pytest.fixture(scope="module")
def colab():
    return load_script("gemma2_2b_colab")


@pytest.fixture
def no_network_no_models(monkeypatch):
    """Any connection attempt or model load fails the test."""

    def refuse(*args, **kwargs):
        raise AssertionError("the dry run tried to reach the network or load a model")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(models, "load", refuse)
    monkeypatch.setattr(models, "load_all", refuse)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def _last_json(capsys) -> dict:
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_dry_run_offline(colab, capsys, tmp_path, no_network_no_models):
    out = tmp_path / "run"
    assert colab.main(["--dry-run", "--json", "--out", str(out)]) == 0
    plan = _last_json(capsys)
    assert not out.exists(), "a dry run writes nothing"
    assert plan["dry_run"] and plan["model_id"] == "google/gemma-2-2b-it"
    stages = [s["stage"] for s in plan["stages"]]
    assert stages[:3] == ["triples", "fit", "calibrate"] and not any(s["done"] for s in plan["stages"])
    assert {f"mt_bench:{m}" for m in colab.METHODS} | {"lm_eval:none", "lm_eval:dspa"} <= set(stages)
    total = {gpu: e["total (stages to run)"] for gpu, e in plan["estimate_minutes"].items()}
    assert 10 < total["A100 40 GB"] <= 30, "the default run is sized for about 30 minutes on an A100"
    assert total["T4 16 GB"] > 1.5 * total["A100 40 GB"] > total["H100 80 GB"]

    assert colab.main(["--dry-run", "--json", "--quick", "--profile", "gemma-2-2b", "--out", str(out)]) == 0
    quick = _last_json(capsys)
    assert quick["model_id"] == "google/gemma-2-2b"
    assert quick["estimate_minutes"]["A100 40 GB"]["total (stages to run)"] < total["A100 40 GB"] / 3
    assert quick["settings"]["n_triples"] < plan["settings"]["n_triples"]


def test_dry_run_shows_finished_stages_and_refuses_bad_args(colab, capsys, tmp_path, no_network_no_models):
    out = tmp_path / "run"
    (out / "cdmap").mkdir(parents=True)
    (out / "triples.jsonl").write_text('{"prompt": "p", "chosen": "' + "good " * 40 + '", "rejected": "bad"}\n')
    assert colab.main(["--dry-run", "--json", "--out", str(out)]) == 0
    plan = _last_json(capsys)
    done = {s["stage"] for s in plan["stages"] if s["done"]}
    assert done == {"triples", "fit"}
    assert plan["tokens_per_triple"]["response"] < 100, "lengths come from the saved triples"
    with pytest.raises(SystemExit):
        colab.main(["--dry-run", "--methods", "none,rlhf"])
    assert "unknown ['rlhf']" in capsys.readouterr().err


def test_steering_formula_agrees_with_chapter_07(colab):
    shape = colab.flops.ModelShape.preset("gemma-2-2b")
    assert abs(colab.n_params(shape) / 2.61e9 - 1) < 0.01
    assert colab.mt_bench_batches(80, 16) == 7 and colab.mt_bench_batches(8, 16) == 3


@pytest.fixture(scope="module")
def fixture_profile(tmp_path_factory):
    """The gemma-2-2b-it profile on a tiny hub-layout checkpoint with Gemma Scope-layout SAEs at layers 1 and 2."""
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("colab-hub")
    folder = hf.gemma2_checkpoint(root / "model")
    shrunk = dataclasses.replace(get_profile("gemma-2-2b-it"), n_layers=hf.N_LAYERS, d_model=hf.D_MODEL,
                                 d_sae=hf.D_SAE, l_in=1, l_out=2)
    model, tok = models.load(shrunk.with_paths(model_path=folder), device="cpu")
    saes = {layer: hf.gemma_scope_sae(root / f"sae-{layer}", layer, acts=hf.residuals(model, tok, layer), seed=layer)
            for layer in (1, 2)}
    data = hf.ultrafeedback_folder(root / "ultrafeedback")
    questions = root / "question.jsonl"
    questions.write_text("".join(json.dumps({"question_id": 81 + i, "category": cat, "turns": [
        f"Tell me about {cat} topic {i}.", "Now say it in one sentence."]}) + "\n"
        for i, cat in enumerate(["writing", "math", "stem", "coding"])))
    alpaca = root / "alpaca_eval.json"
    alpaca.write_text(json.dumps([{"instruction": f"List {i} fruits.", "output": "x", "generator": "gpt4",
                                   "dataset": "helpful_base"} for i in range(1, 6)]))
    return shrunk.with_paths(model_path=folder, sae_paths=saes), data, questions, alpaca


def test_full_run_then_resume(colab, fixture_profile, capsys, tmp_path, monkeypatch):
    profile, data, questions, alpaca = fixture_profile
    out = tmp_path / "run"
    argv = ["--quick", "--out", str(out), "--data", str(data), "--n-triples", "12", "--mt-bench-n", "3",
            "--mt-bench-questions", str(questions), "--alpaca-n", "3", "--alpaca-file", str(alpaca),
            "--max-new-tokens", "6", "--tasks", "", "--k", "4", "--batch-size", "4", "--json"]
    assert colab.main(argv, profile=profile) == 0
    summary = _last_json(capsys)
    for method in colab.METHODS:
        answers = read_mt_bench_answers(out / "mt_bench" / "model_answer" / f"gemma-2-2b-it-{method}.jsonl")
        assert len(answers) == 3 and all(len(a.turns) == 2 for a in answers)
        rows = read_alpaca_outputs(out / "alpaca_eval" / f"gemma-2-2b-it-{method}.json")
        assert len(rows) == 3 and {r["generator"] for r in rows} == {f"gemma-2-2b-it-{method}"}
        assert summary["generation"][f"mt_bench:{method}"]["n_texts"] == 6
    assert (out / "cdmap" / "cdmap.safetensors").is_file() and (out / "calibration.json").is_file()
    assert set(json.loads((out / "calibration.json").read_text())["step_s"]) == set(colab.METHODS)

    def refuse(*args, **kwargs):
        raise AssertionError("a finished run must not load the model again")

    monkeypatch.setattr(models, "load_all", refuse)
    assert colab.main(argv, profile=profile) == 0  # every stage found: skipped, tables printed again
    assert _last_json(capsys)["generation"] == summary["generation"]
    assert colab.main([*argv[:-1], "--lm-eval-limit", "5"], profile=profile) == 0  # only unfinished stages use it
    assert colab.main([*argv[:-1], "--k", "8", "--json"], profile=profile) == 2  # finished answers used k=4
    assert "holds a run with other settings (k: 4 there, 8 now)" in capsys.readouterr().err
