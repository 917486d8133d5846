"""dspa_lite.loading.memory: the one GPU memory model (a modelled plan), checked part by part against what
a model really allocates where that can be measured on a CPU, and its verdicts for Colab's cards."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from tiny import tiny_gemma

from dspa_lite.loading import colab, memory, models
from dspa_lite.loading.profiles import PROFILES, get_profile

T4, L4, A100_40, A100_80 = (memory.GPUS[g] for g in ("T4 16 GB", "L4 24 GB", "A100 40 GB", "A100 80 GB"))


def test_colab_cards():
    """Gemma-2-2B runs on every card (float32 on the T4, which has no native bfloat16); the 8-9B models need an
    A100; an L4 does not hold Qwen3-8B with its 64k SAEs (its resident bytes alone are at the L4's budget)."""
    small, big = PROFILES["gemma-2-2b-it"], (PROFILES["gemma-2-9b"], PROFILES["qwen3-8b"])
    t4 = memory.plan(small, *T4)
    assert t4["dtype"] == "float32" and t4["fits"] and 1 <= t4["batch"]["generation"] < 16
    assert memory.plan(small, *L4)["dtype"] == "bfloat16"
    for card in (L4, A100_40, A100_80):
        assert memory.plan(small, *card)["batch"]["generation"] >= 16, "the pipeline's default batch fits"
    for p in big:
        assert [memory.plan(p, *card)["fits"] for card in (T4, L4, A100_40, A100_80)] == [False, False, True, True]
        small_card, large_card = memory.plan(p, *A100_40)["batch"], memory.plan(p, *A100_80)["batch"]
        assert all(small_card[s] <= large_card[s] for s in small_card)
    assert memory.resident_bytes(PROFILES["qwen3-8b"]) > memory.budget_bytes(L4[0]) * 0.95
    table = memory.table([small, *big])
    assert table.count("\n") == 3 * len(memory.GPUS) and "T4 16 GB    float32" in table


def test_headroom_is_kept():
    p = PROFILES["gemma-2-2b-it"]
    need = memory.need_bytes(p)
    just = (need + memory.CONTEXT_BYTES) / (1 - memory.HEADROOM)
    big = memory.Workload(gen_batch=64, fit_batch=64, lm_eval_batch=64)
    need = memory.need_bytes(p, work=big)  # the largest batches the plan considers
    just = (need + memory.CONTEXT_BYTES) / (1 - memory.HEADROOM)
    assert memory.plan(p, just * 1.001, (8, 0))["batch"] == {"generation": 64, "fitting": 64, "lm-eval": 64}
    at_need = memory.plan(p, need, (8, 0))
    assert at_need["budget_gb"] < need / 1e9 and at_need["batch"]["lm-eval"] < 64, "no run fills the card"


def test_weights_match_the_real_parameter_counts():
    """n_params from a profile's shape against transformers' own model built on the meta device at real sizes."""
    from transformers import AutoModelForCausalLM, Gemma2Config, Qwen3Config

    real = {"gemma-2-2b": Gemma2Config(num_hidden_layers=26, hidden_size=2304, intermediate_size=9216,
                                       num_attention_heads=8, num_key_value_heads=4, head_dim=256),
            "qwen3-8b": Qwen3Config(vocab_size=151936, num_hidden_layers=36, hidden_size=4096,
                                    intermediate_size=12288, num_attention_heads=32, num_key_value_heads=8,
                                    head_dim=128, tie_word_embeddings=False)}
    for name, cfg in real.items():
        with torch.device("meta"):
            counted = sum(t.numel() for t in AutoModelForCausalLM.from_config(cfg).parameters())
        assert abs(memory.n_params(get_profile(name)) / counted - 1) < 1e-3, name  # norms are the rest


def test_kv_cache_and_logits_match_a_real_forward_pass():
    model = tiny_gemma(97, n_layers=3, max_positions=64)
    shape = dataclasses.replace(PROFILES["tiny"], n_layers=3, d_model=32, n_heads=2, n_kv_heads=1, head_dim=16,
                                d_mlp=64, vocab_size=97, dtype="float32")
    B, T = 3, 20
    ids = torch.randint(0, 97, (B, T))
    kv = colab.kv_cache_bytes(model, ids)  # what the cache really holds
    work = memory.Workload(gen_batch=B, prompt_tokens=T, new_tokens=0)
    per_token = 2 * shape.n_layers * shape.n_kv_heads * shape.head_dim * 4
    assert kv == per_token * B * T
    gen = memory.parts(shape, "float32", work)["stage: generation"]
    assert gen >= kv + B * shape.vocab_size * 4
    logits = model(ids).logits
    lm = memory.parts(shape, "float32", memory.Workload(lm_eval_batch=B, lm_eval_tokens=T))["stage: lm-eval"]
    assert lm >= 4 * logits.numel() * logits.element_size()


def test_dtype_follows_compute_capability(monkeypatch):
    """A T4 (7.5) says is_bf16_supported() through emulation: the capability decides, and float32 is chosen."""
    p = get_profile("gemma-2-2b")
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    for capability, want in (((7, 5), torch.float32), ((8, 0), torch.bfloat16), ((8, 9), torch.bfloat16)):
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a, cap=capability: cap)
        assert models.resolve_dtype(p, torch.device("cuda")) == want
    assert models.resolve_dtype(p, torch.device("cpu")) == torch.float32


def test_export_hf_token_for_subprocesses(monkeypatch):
    import sys
    import types

    monkeypatch.delenv("HF_TOKEN", raising=False)
    assert colab.export_hf_token() is False  # outside Colab: nothing to copy
    userdata = types.SimpleNamespace(get=lambda name: {"HF_TOKEN": "hf_test"}[name])
    monkeypatch.setitem(sys.modules, "google", types.ModuleType("google"))
    monkeypatch.setitem(sys.modules, "google.colab", types.SimpleNamespace(userdata=userdata))
    assert colab.export_hf_token() is True
    import os

    assert os.environ["HF_TOKEN"] == "hf_test"
    assert "notebook_login()" in colab.LOGIN and "export_hf_token()" in colab.LOGIN


@pytest.mark.parametrize("name", ["gemma-2-2b", "gemma-2-9b", "qwen3-8b"])
def test_profile_figure_is_the_memory_model(name):
    p = get_profile(name)
    assert p.est_gpu_memory_gb == round(memory.need_bytes(p) / 1e9, 1)
    assert p.est_gpu_memory_gb * 1e9 > memory.parts(p)["weights"] + memory.parts(p)["two SAEs (fp32)"]
