"""benchmarks/decode_overhead.py: its Gemma-2-2B-shape config, its fast random-weight model builder, and a tiny run."""

from __future__ import annotations

import json
import math

import pytest
import torch
from scripts import load_script

from dspa_lite.evaluation.flops import KNOWN_MODELS, ModelShape

# google/gemma-2-2b config.json (the fields that set its shape and arithmetic)
GEMMA_2_2B = dict(vocab_size=256000, hidden_size=2304, intermediate_size=9216, num_hidden_layers=26,
                  num_attention_heads=8, num_key_value_heads=4, head_dim=256, query_pre_attn_scalar=256,
                  sliding_window=4096, attn_logit_softcapping=50.0, final_logit_softcapping=30.0,
                  max_position_embeddings=8192, rms_norm_eps=1e-6, hidden_activation="gelu_pytorch_tanh",
                  bos_token_id=2, eos_token_id=1, pad_token_id=0, tie_word_embeddings=True)


@pytest.fixture(scope="module")
def bench():
    return load_script("decode_overhead")


def test_gemma2_2b_config_has_the_real_values(bench):
    from transformers import AutoModelForCausalLM

    cfg = bench.gemma2_2b_config()
    assert {k: getattr(cfg, k) for k in GEMMA_2_2B} == GEMMA_2_2B
    assert cfg._attn_implementation == "eager"
    assert ModelShape.from_config(cfg) == KNOWN_MODELS["gemma-2-2b"]
    with torch.device("meta"):
        n = sum(p.numel() for p in AutoModelForCausalLM.from_config(cfg).parameters())
    assert n == 2_614_341_888  # Gemma-2-2B's parameter count (tied embeddings counted once)


def test_random_model_matches_a_normally_built_one(bench):
    """Same buffers as transformers' own construction, a tied LM head, weights of the init's scale, finite logits."""
    from transformers import Gemma2ForCausalLM

    cfg = bench.gemma2_2b_config(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
                                 num_key_value_heads=1, head_dim=32, query_pre_attn_scalar=32, vocab_size=100)
    model, ref = bench.random_model(cfg, seed=0), Gemma2ForCausalLM(cfg)
    ref_buffers = dict(ref.named_buffers())
    for name, buf in model.named_buffers():
        torch.testing.assert_close(buf, ref_buffers[name])
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    assert set(dict(model.named_parameters())) == set(dict(ref.named_parameters()))
    weights = model.model.layers[0].mlp.up_proj.weight
    assert 0.015 < float(weights.std()) < 0.025 and not any(p.requires_grad for p in model.parameters())
    assert all(float(p.abs().max()) == 0 for p in model.parameters() if p.ndim == 1)  # Gemma norms: 1 + w
    with torch.no_grad():
        logits = model(torch.tensor([[2, 5, 7, 9]])).logits
    assert logits.shape == (1, 4, 100) and bool(torch.isfinite(logits).all())


def test_toy_measurement_tiny(bench, world, cdmap):
    """Batch 2, 4 new tokens, 1 repeat: every method timed, DSPA's profiler labels found, the length fixed."""
    old = world.model.generation_config.min_new_tokens
    data = json.loads(json.dumps(bench.run_toy(world, cdmap, dict(batch=2, new_tokens=(4,), repeats=1), triples=64),
                                 default=float))
    res = data["results"]
    assert list(res) == ["none", "dspa", "dspa_dense", "static", "caa"]
    for r in res.values():  # the step ratio is a difference of two walls: one repeat of 4 tokens can make it <= 0
        assert r["ms_per_token"] > 0 and r["first_token_ms"] > 0 and r["ratio_e2e"]["4"] > 0
        assert math.isfinite(r["ratio_step"]) and math.isfinite(r["ratio_step_cpu"])
    assert res["none"]["ratio_e2e"]["4"] == res["none"]["ratio_step"] == 1.0 and "parts" not in res["none"]
    prefill = {"dspa.prefill_u", "dspa.map_lookup"}
    assert set(res["dspa"]["parts"]) == set(bench.LABELS) - {"dspa.prompt_features"}  # u(x) from the prefill
    assert set(res["dspa_dense"]["parts"]) == set(bench.LABELS) - {"dspa.prefill_u"}  # the separate prompt pass
    assert all(p["median_ms"] > 0 and p["total_ms"] >= p["median_ms"] for p in res["dspa"]["parts"].values())
    for name in ("dspa", "dspa_dense", "static", "caa"):  # one edit per forward call: the prefill and 3 decoding steps
        assert res[name]["parts"]["hooks.edit"]["calls"] == 4 and 0 <= res[name]["analytic_share"] < 1
    assert res["dspa"]["parts"]["dspa.prefill_u"]["calls"] == 1 and prefill <= set(res["dspa"]["parts"])
    assert res["dspa"]["analytic_share"] < res["dspa_dense"]["analytic_share"]  # 2k latents instead of d_sae
    assert "dspa.prompt_features" not in res["static"]["parts"]
    assert world.model.generation_config.min_new_tokens == old  # restored
    table = "\n".join(bench.table(data))
    assert all(f"| {name} |" in table for name in res) and "toy" in data["compare"]
    summary = bench.summary({"toy": data})
    assert set(summary["hook_share"]["toy"]) == set(res) and summary["hook_share"]["toy"]["none"] == 0.0
    assert set(summary["end_to_end_ratio"]["toy"]["dspa"]) == {"4", "256"}
    assert summary["end_to_end_ratio_source"]["toy"]["256"].startswith("modelled")
    assert summary["end_to_end_ratio_cpu"]["toy"]["none"] == {"4": 1.0}


def test_gemma_world_tiny(bench, world):
    """The Gemma-shape builder at a tiny shape: SAEs of the requested width at the right layers, a usable map."""
    from dspa_lite import DSPA

    overrides = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=2,
                     num_key_value_heads=1, head_dim=32, query_pre_attn_scalar=32, vocab_size=world.tokenizer.vocab_size)
    prompts = world.prompts("test", 2)
    model, sae_in, sae_out, cdmap, vector = bench.gemma_world(world.tokenizer, prompts, overrides, d_sae=256,
                                                              layers=(1, 2))
    assert sae_out.cfg.d_sae == 256 and sae_in.cfg.d_in == 64 and vector.shape == (64,)
    steerer = DSPA(model, world.tokenizer, sae_in, sae_out, cdmap, k=8)
    assert len(steerer.generate(prompts, max_new_tokens=3)) == 2 and steerer.last_edit.path == "sparse"


def test_gpu_check_runs_on_cpu_at_a_tiny_shape(tmp_path):
    """benchmarks/gpu_check.py, the script prepared for a GPU, end to end at a tiny shape on the CPU."""
    gpu = load_script("gpu_check")
    data = gpu.main(["--tiny", "--device", "cpu", "--batch", "2", "--new-tokens", "4", "--repeats", "1",
                     "--out", str(tmp_path / "g.json")])
    assert json.loads((tmp_path / "g.json").read_text())["methods"].keys() == data["methods"].keys()
    assert list(data["methods"]) == ["none", "caa", "static", "dspa", "dspa_dense"]
    for name, r in data["methods"].items():
        assert r["step_ms_median"] > 0 and r["edit_calls"] == (0 if name == "none" else 4)
        assert r["hook_syncs"] is None and r["peak_mem_gib"] is None  # CUDA-only figures
    assert "| dspa |" in gpu.markdown(data)


def test_step_ratio_swamped_by_noise_is_reported(bench, capfd):
    """When a run of 4 new tokens times faster than a run of 1, the per-step estimate is noise, and the log says so."""
    from torch.utils.benchmark.utils.common import Measurement, TaskSpec

    walls = {("none", 1): 0.10, ("none", 4): 0.16, ("dspa", 1): 0.12, ("dspa", 4): 0.11}  # dspa: 4 tokens < 1 token
    runs = {key: [Measurement(1, [w], TaskSpec("x", ""))] for key, w in walls.items()}
    cpu = {key: [w] for key, w in walls.items()}
    r = bench.ratios(runs, cpu, "dspa", (4,), batch=2)
    assert r["ratio_step"] < 0 and "the step ratios are noise" in capfd.readouterr().err
    bench.ratios(runs, cpu, "none", (4,), batch=2)
    assert "noise" not in capfd.readouterr().err
