"""Analytic FLOP counts agree with torch's FlopCounterMode; the modelled ratios are well formed."""

from __future__ import annotations

import json
import math

import pytest
import torch
from transformers import Gemma2Config, Qwen3Config, Qwen3ForCausalLM

from dspa_lite.evaluation import flopcount, flops
from dspa_lite.evaluation.flops import KNOWN_MODELS, ModelShape, forward_flops

COMPONENTS = ("forward", "forward_until_l_out", "sae_in_encode", "sae_out_encode", "dspa_fit_pass", "train_step",
              "lora_step", "decode_step", "decode_edit")
REAL = ("gemma-2-2b", "gemma-2-9b", "qwen3-8b")


@pytest.fixture(scope="module")
def tiny():
    return flopcount.tiny_setup(seed=0)


@pytest.fixture(scope="module")
def checked(tiny):
    # batch 2, seq 24 (12 prompt + 12 response tokens); l_in=1, l_out=2 of 4 layers
    return flopcount.cross_check(*tiny, l_in=1, l_out=2, batch=2, prompt_len=12, response_len=12)


@pytest.mark.parametrize("component", COMPONENTS)
def test_cross_check_within_5_percent(checked, component):
    row = checked[component]
    assert row["measured"] > 0, f"{component}: the counter saw no matmul"
    assert row["rel_err"] < 0.05, f"{component}: analytic {row['analytic']} vs measured {row['measured']}"


def test_cross_check_has_exactly_the_documented_components(checked):
    assert tuple(checked) == COMPONENTS


def test_forward_backward_is_three_forwards(checked):
    assert checked["train_step"]["measured"] == pytest.approx(3 * checked["forward"]["measured"], rel=0.01)


def test_frozen_lora_step_is_cheaper_than_full_training(checked):
    assert checked["forward"]["measured"] < checked["lora_step"]["measured"] < checked["train_step"]["measured"]


def test_cross_check_leaves_the_model_clean(tiny, checked):
    model = tiny[0]
    assert all(p.grad is None for p in model.parameters())
    assert all(p.requires_grad for p in model.parameters())
    ours = [f for m in model.modules() for f in m._forward_hooks.values() if f.__module__.startswith("dspa_lite")]
    assert not ours, f"hooks leaked: {ours}"  # transformers installs its own output-capturing hooks: not ours


def test_from_config_matches_presets(tiny):
    assert ModelShape.from_config(tiny[0].config) == KNOWN_MODELS["tiny"]
    assert ModelShape.from_config(Gemma2Config()) == KNOWN_MODELS["gemma-2-2b"]  # transformers' defaults are 2b


def test_qwen3_forward_is_exact_with_untied_head():
    cfg = Qwen3Config(vocab_size=151, hidden_size=64, intermediate_size=192, num_hidden_layers=3,
                      num_attention_heads=4, num_key_value_heads=2, head_dim=16, tie_word_embeddings=False,
                      attn_implementation="eager")
    model, ids = Qwen3ForCausalLM(cfg).eval(), torch.randint(0, 151, (2, 10))
    with torch.no_grad():
        measured = flopcount.measure(model, lambda m: m(input_ids=ids, use_cache=False))
    shape = ModelShape.from_config(cfg)
    assert not shape.tied_embeddings
    assert forward_flops(shape, 20, 10) == measured


def test_doubling_tokens_doubles_forward_flops():
    shape = KNOWN_MODELS["gemma-2-2b"]
    assert forward_flops(shape, 2 * 512, 512) == 2 * forward_flops(shape, 512, 512)
    # longer sequences cost more than linearly (attention is quadratic)
    assert forward_flops(shape, 1024, 1024) > 2 * forward_flops(shape, 512, 512)


def test_upto_layer_reduces_and_drops_the_lm_head():
    shape = KNOWN_MODELS["gemma-2-2b"]
    costs = [forward_flops(shape, 64, 64, upto_layer=layer) for layer in range(shape.n_layers)]
    assert costs == sorted(costs) and len(set(costs)) == len(costs)
    head = 2 * 64 * shape.d_model * shape.vocab
    assert costs[-1] + head == forward_flops(shape, 64, 64)
    assert forward_flops(shape, 64, 64, lm_head=False) == costs[-1]
    with pytest.raises(ValueError, match="out of range"):
        forward_flops(shape, 64, 64, upto_layer=shape.n_layers)


def test_dspa_fit_components_add_up_and_static_is_cheaper():
    shape = KNOWN_MODELS["gemma-2-2b"]
    fit = flops.dspa_fit(shape, 16384, 16384, 100, 256, 256, 6, 20)
    assert fit["total"] == sum(v for k, v in fit.items() if k != "total")
    assert fit["forward_to_l_out"] > 0.9 * fit["total"]  # the passes dominate; SAEs and map are small
    assert flops.static_fit(shape, 16384, 100, 256, 256, 20)["total"] < fit["total"]
    assert flops.dspa_fit(shape, 16384, 16384, 200, 256, 256, 6, 20)["total"] == 2 * fit["total"]
    with pytest.raises(ValueError, match="l_in < l_out"):
        flops.dspa_fit(shape, 16384, 16384, 100, 256, 256, 20, 6)


def test_rahf_stage2_does_not_depend_on_the_number_of_pairs():
    shape = KNOWN_MODELS["gemma-2-2b"]
    small, big = flops.rahf_scit(shape, 100, 512), flops.rahf_scit(shape, 1000, 512)
    assert big["stage1"] == 10 * small["stage1"]
    assert big["total"] - big["stage1"] == small["total"] - small["stage1"]
    # per pair and epoch stage 1 is 2 sequences x 3 passes x 3 (forward+backward) = 18 forwards
    assert small["stage1"] == 2 * 100 * 18 * forward_flops(shape, 512, 512)


def test_dpo_is_eight_forwards_per_pair_and_epoch():
    shape = KNOWN_MODELS["qwen3-8b"]
    assert flops.dpo(shape, 10, 512, epochs=2)["total"] == 2 * 10 * 8 * forward_flops(shape, 512, 512)


@pytest.mark.parametrize("name", REAL)
def test_known_model_ratios(name):
    r = flops.ratios(name)
    for key in ("rahf_scit_to_dspa_ratio", "dpo_to_dspa_ratio", "rahf_stage2_to_dspa_ratio"):
        assert math.isfinite(r[key]) and r[key] > 1, f"{name}: {key}={r[key]}"
    assert r["rahf_scit_to_dspa_ratio"] > r["dpo_to_dspa_ratio"]
    assert {"n_triples", "prompt_len", "response_len", "l_in", "l_out", "d_sae"} <= set(r["assumptions"])
    json.dumps(r)  # what the CLI prints must be JSON


def test_ratio_shrinks_with_more_data():
    assert flops.ratios("gemma-2-2b", n_triples=10000)["rahf_scit_to_dspa_ratio"] < \
        flops.ratios("gemma-2-2b", n_triples=250)["rahf_scit_to_dspa_ratio"]


def test_decode_overhead():
    shape = KNOWN_MODELS["gemma-2-2b"]
    dspa, static, caa = (flops.decode_overhead(shape, 16384, m) for m in ("dspa", "static", "caa"))
    assert dspa["edit_per_token"] == static["edit_per_token"] == 4 * shape.d_model * 16384
    assert caa["ratio"] < 1e-5 < dspa["ratio"] < 0.1
    assert dspa["per_prompt"] > static["per_prompt"] > caa["per_prompt"] == 0
    with pytest.raises(ValueError, match="dspa, static, caa"):
        flops.decode_overhead(shape, 16384, "lora")


def test_unknown_model_error_lists_known_names():
    with pytest.raises(ValueError) as err:
        ModelShape.preset("llama-7b")
    for name in KNOWN_MODELS:
        assert name in str(err.value)
    with pytest.raises(ValueError, match="gemma-2-2b"):
        flopcount.cli_report("gpt-5", measure=False)


def test_model_shape_validates():
    with pytest.raises(ValueError, match="n_layers=0"):
        ModelShape(0, 8, 16, 2, 1, 4, 10)
    with pytest.raises(ValueError, match="multiple"):
        ModelShape(2, 8, 16, 3, 2, 4, 10)


def test_cli_report():
    tiny = flopcount.cli_report("tiny", measure=False)
    assert set(tiny["cross_check"]) == set(COMPONENTS)
    assert tiny["cross_check"]["forward"] == {"analytic": 99102720}
    real = flopcount.cli_report("qwen3-8b", measure=False)
    assert "assumptions" in real and real["shape"]["vocab"] == 151936
    json.dumps(real)
    with pytest.raises(ValueError, match="--model tiny"):
        flopcount.cli_report("gemma-2-9b", measure=True)


def test_flop_settings_follow_the_profiles():
    from dspa_lite.evaluation.flops import SETTINGS
    from dspa_lite.loading.profiles import PROFILES

    for name, s in SETTINGS.items():
        p, shape = PROFILES[name], KNOWN_MODELS[name]
        assert (s["l_in"], s["l_out"], s["d_sae"]) == (p.l_in, p.l_out, p.d_sae), name
        assert (shape.n_layers, shape.d_model) == (p.n_layers, p.d_model), name
