"""Chapters 07-12: the exercise checks accept right answers and diagnose the usual mistakes; the judge-free
sweep of chapter 07 on the toy world; the machine helpers the chapters call in one line."""

from __future__ import annotations

import json
import math
import os

import pytest
import torch

from dspa_lite.evaluation import sweeps
from dspa_lite.evaluation.flops import ModelShape
from dspa_lite.loading import colab
from dspa_lite.method.cdmap import DENSE_MAX_ENTRIES
from dspa_lite.notebook.exercises import ch07_12 as ex

# --- right answers -----------------------------------------------------------------------------------


def kv(s, B, T, nb):
    return 2 * s.n_layers * s.n_kv_heads * s.head_dim * nb * B * T


def rate(trace, lengths):
    per = torch.cat([trace[0][:, -1:]] + list(trace[1:]), 1).any(-1)
    keep = torch.arange(per.shape[1])[None] < torch.tensor(lengths)[:, None]
    return float(per[keep].float().mean())


def flops_by_hand(c, B, T):
    d, h, k, hd, f, V = (c.hidden_size, c.num_attention_heads, c.num_key_value_heads, c.head_dim,
                         c.intermediate_size, c.vocab_size)
    n = B * T
    proj = 2 * n * d * hd * (2 * h + 2 * k)
    attn = 4 * B * h * T * T * hd
    return c.num_hidden_layers * (proj + attn + 6 * n * d * f) + 2 * n * d * V


def reference(p, style, k):
    return torch.topk(p[style] - p.mean(0), k).indices


def numbers(d_in, d_out, n):
    factored = d_in * d_out > DENSE_MAX_ENTRIES
    return factored, n * (d_in + d_out) if factored else d_in * d_out


def topk(pre, k):
    v, i = pre.topk(k, dim=-1)
    return torch.zeros_like(pre).scatter(-1, i, v.relu())


@pytest.mark.parametrize("check, fn", [
    (ex.check_kv_cache_bytes, kv), (ex.check_edit_rate, rate), (ex.check_edit_rate, sweeps.edit_rate),
    (ex.check_forward_flops, flops_by_hand), (ex.check_reference_latents, reference),
    (ex.check_reference_latents, lambda p, s, k: set(reference(p, s, k).tolist())),
    (ex.check_map_numbers, numbers), (ex.check_topk_codes, topk)])
def test_right_answers_pass(check, fn, capsys):
    check(fn)
    assert "all checks passed" in capsys.readouterr().out


def test_the_right_flop_count_is_the_counters():
    from torch.utils.flop_counter import FlopCounterMode
    from transformers import Gemma2Config, Gemma2ForCausalLM

    c = Gemma2Config(hidden_size=64, intermediate_size=192, num_attention_heads=4, num_key_value_heads=2, head_dim=32,
                     vocab_size=100, num_hidden_layers=2)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        Gemma2ForCausalLM(c).eval()(input_ids=torch.randint(0, 100, (2, 8)), use_cache=False)
    assert counter.get_total_flops() == flops_by_hand(c, 2, 8)


# --- mistakes ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("wrong, hint", [
    (lambda s, B, T, nb: kv(s, B, T, nb) // 2, "keys \\*and\\* values"),
    (lambda s, B, T, nb: kv(s, B, T, nb) // s.n_kv_heads * s.n_heads, "grouped-query"),
    (lambda s, B, T, nb: 2 * s.n_layers * s.d_model * nb * B * T, "n_kv_heads \\* head_dim"),
    (lambda s, B, T, nb: kv(s, B, T, nb) // s.n_layers, "one layer's cache"),
    (lambda s, B, T, nb: kv(s, B, T, nb) * 8, "bits"),
    (lambda s, B, T, nb: kv(s, B, T, nb) // nb, "value_bytes"),
    (lambda s, B, T, nb: kv(s, B, T, nb) // B, "multiply by batch"),
])
def test_kv_cache_mistakes(wrong, hint):
    with pytest.raises(AssertionError, match=hint):
        ex.check_kv_cache_bytes(wrong)


def _all_positions(trace, lengths):
    return float(torch.cat([trace[0][:, -1:]] + trace[1:], 1).any(-1).float().mean())


def _per_row(trace, lengths):
    per = torch.cat([trace[0][:, -1:]] + trace[1:], 1).any(-1)
    return sum(float(per[i, :n].float().mean()) for i, n in enumerate(lengths)) / len(lengths)


def _latents(trace, lengths):
    per = torch.cat([trace[0][:, -1:]] + trace[1:], 1).sum(-1)
    keep = torch.arange(per.shape[1])[None] < torch.tensor(lengths)[:, None]
    return float(per[keep].float().mean())


def _whole_prompt(trace, lengths):
    per = torch.cat(trace, 1).any(-1)
    extra = trace[0].shape[1] - 1
    keep = torch.arange(per.shape[1])[None] < (torch.tensor(lengths) + extra)[:, None]
    return float(per[keep].float().mean())


def _no_prompt_pass(trace, lengths):
    per = torch.cat(trace[1:], 1).any(-1)
    keep = torch.arange(per.shape[1])[None] < (torch.tensor(lengths) - 1)[:, None]
    return float(per[keep].float().mean())


@pytest.mark.parametrize("wrong, hint", [
    (_all_positions, "padding"), (_per_row, "per-row rates"), (_latents, "edited latents"),
    (_whole_prompt, "every prompt position"), (_no_prompt_pass, "left out the prompt pass"),
])
def test_edit_rate_mistakes(wrong, hint):
    with pytest.raises(AssertionError, match=hint):
        ex.check_edit_rate(wrong)


def _flops_variant(c, B, T, *, macs=False, full_kv=False, d_widths=False, no_attn=False, causal=False,
                   linear_attn=False, no_head=False, two_mlp=False):
    d, h, k, hd, f, V = (c.hidden_size, c.num_attention_heads, c.num_key_value_heads, c.head_dim,
                         c.intermediate_size, c.vocab_size)
    n = B * T
    proj = 2 * n * d * d * 4 if d_widths else 2 * n * d * hd * (2 * h + 2 * (h if full_kv else k))
    attn = 4 * B * h * T * hd * (0 if no_attn else (T + 1) // 2 if causal else 1 if linear_attn else T)
    if causal:
        attn = 4 * B * h * hd * T * (T + 1) // 2
    mlp = (4 if two_mlp else 6) * n * d * f
    total = c.num_hidden_layers * (proj + attn + mlp) + (0 if no_head else 2 * n * d * V)
    return total // 2 if macs else total


@pytest.mark.parametrize("flag, hint", [
    ("macs", "multiply-accumulates"), ("full_kv", "n_kv_heads"), ("d_widths", "heads \\* head_dim"),
    ("no_attn", "Q K\\^T and A V"), ("causal", "causal half"), ("linear_attn", "not T\\."),
    ("no_head", "LM head"), ("two_mlp", "gated"),
])
def test_forward_flops_mistakes(flag, hint):
    with pytest.raises(AssertionError, match=hint):
        ex.check_forward_flops(lambda c, B, T: _flops_variant(c, B, T, **{flag: True}))


@pytest.mark.parametrize("wrong, hint", [
    (lambda p, s, k: torch.topk(p[s], k).indices, "raw activation"),
    (lambda p, s, k: torch.topk(p[s] / p.mean(0), k).indices, "ratio"),
    (lambda p, s, k: torch.topk(p.mean(0) - p[s], k).indices, "least"),
    (lambda p, s, k: torch.topk(p[s] - p.mean(0), k + 1).indices, "exactly k"),
])
def test_reference_latents_mistakes(wrong, hint):
    with pytest.raises(AssertionError, match=hint):
        ex.check_reference_latents(wrong)


@pytest.mark.parametrize("wrong, hint", [
    (lambda a, b, n: (a * b >= DENSE_MAX_ENTRIES, n * (a + b) if a * b >= DENSE_MAX_ENTRIES else a * b), "above"),
    (lambda a, b, n: (n * (a + b) < a * b, min(n * (a + b), a * b)), "smaller form"),
    (lambda a, b, n: (numbers(a, b, n)[0], n * a * b if numbers(a, b, n)[0] else a * b), "not their product"),
    (lambda a, b, n: (numbers(a, b, n)[0], n * b if numbers(a, b, n)[0] else a * b), "both factors"),
    (lambda a, b, n: (True, n * (a + b)), "stays dense"),
    (lambda a, b, n: numbers(a, b, n)[1], "a pair"),
])
def test_map_numbers_mistakes(wrong, hint):
    with pytest.raises(AssertionError, match=hint):
        ex.check_map_numbers(wrong)


def _scatter(pre, idx, values):
    return torch.zeros_like(pre).scatter(-1, idx, values)


@pytest.mark.parametrize("wrong, hint", [
    (lambda pre, k: _scatter(pre, *reversed(pre.topk(k, dim=-1))), "ReLU"),
    (lambda pre, k: _scatter(pre, i := pre.abs().topk(k, dim=-1).indices, pre.gather(-1, i).relu()), "magnitude"),
    (lambda pre, k: torch.zeros_like(pre).scatter(0, (t := pre.topk(k, dim=0)).indices, t.values.relu()), "dim 0"),
    (lambda pre, k: pre.relu(), "plain ReLU"),
    (lambda pre, k: (topk(pre, k) > 0).float(), "0/1 mask"),
])
def test_topk_mistakes(wrong, hint):
    with pytest.raises(AssertionError, match=hint):
        ex.check_topk_codes(wrong)


# --- the sweep on the toy world -----------------------------------------------------------------------


def test_edit_counts_pools_decided_positions():
    trace, lengths = ex._edit_trace(3)
    edited, decided, latents = sweeps.edit_counts(trace, lengths)
    assert decided == sum(lengths) and 0 < edited < decided and latents >= edited
    with pytest.raises(ValueError, match="lengths"):
        sweeps.edit_counts(trace, lengths[:2])


@pytest.fixture(scope="module")
def toy_sweep(world, cdmap):
    prompts = world.prompts("test", 12)
    return sweeps.sweep(world.model, world.tokenizer, world.sae_in, world.sae_out, cdmap, prompts,
                        [(0, 6.0), (8, 1.0), (64, 6.0)], max_new_tokens=40, batch_size=5)


def test_sweep_rows_and_ranges(toy_sweep):
    rows = {(r["k"], r["alpha"]): r for r in toy_sweep["rows"]}
    assert list(rows) == [(0, 6.0), (8, 1.0), (64, 6.0)]
    for r in rows.values():
        for key in ("edit_rate", "distinct_2", "repetition_rate", "length_cap_rate", "changed"):
            assert 0.0 <= r[key] <= 1.0, (key, r)
    assert rows[0, 6.0]["edit_rate"] == 0.0 and rows[0, 6.0]["changed"] == 0.0  # k=0 is the identity
    assert rows[0, 6.0]["distinct_2"] == toy_sweep["unsteered"]["distinct_2"]
    assert 0 < rows[8, 1.0]["edit_rate"] < rows[64, 6.0]["edit_rate"] < 1
    assert toy_sweep["settings"]["n_prompts"] == 12 and toy_sweep["settings"]["l_out"] is not None


def test_sweep_counts_what_the_trace_records(world, cdmap):
    """One batch by hand: the edit rate from ``DSPA.last_edit.trace`` and the responses' lengths."""
    from dspa_lite import DSPA

    prompts = world.prompts("test", 6)
    steerer = DSPA(world.model, world.tokenizer, world.sae_in, world.sae_out, cdmap, "augment", 32, 3.0)
    steerer.record = True
    texts = steerer.generate(prompts, max_new_tokens=30, seed=0, batch_size=6)
    lengths = [min(len(world.tokenizer(t, add_special_tokens=False).input_ids) + 1, 30) for t in texts]
    assert lengths == sweeps.decided_positions(world.tokenizer, texts, 30)
    by_hand = rate(steerer.last_edit.trace, lengths)
    result = sweeps.sweep(world.model, world.tokenizer, world.sae_in, world.sae_out, cdmap, prompts, [(32, 3.0)],
                          max_new_tokens=30, batch_size=6)
    assert result["rows"][0]["edit_rate"] == pytest.approx(by_hand)


def test_sweep_length_cap_matches_compare(world, cdmap):
    """compare draws world.prompts("test", n) with batch size 50 and seed 0, the sweep's defaults: same texts."""
    from dspa_lite import DSPA
    from dspa_lite.evaluation.experiment import MAX_NEW_TOKENS, compare

    steerer = DSPA(world.model, world.tokenizer, world.sae_in, world.sae_out, cdmap, "augment", 64, 6.0)
    judged = compare(world, {"dspa": steerer}, n_prompts=10, seeds=(0,), mcq=False, progress=False)
    swept = sweeps.sweep(world.model, world.tokenizer, world.sae_in, world.sae_out, cdmap, world.prompts("test", 10),
                         [(64, 6.0)], max_new_tokens=MAX_NEW_TOKENS, batch_size=50)
    assert swept["rows"][0]["length_cap_rate"] == judged["methods"]["dspa"]["length_cap_rate"]


def test_choose_takes_the_strongest_within_tolerance():
    base = {"distinct_2": 0.5, "repetition_rate": 0.2, "length_cap_rate": 0.0}
    row = lambda k, a, lp, d2=0.5, rep=0.2, cap=0.0: dict(k=k, alpha=a, latents_per_position=lp, distinct_2=d2,  # noqa: E731
                                                         repetition_rate=rep, length_cap_rate=cap)
    rows = [row(16, 1.0, 1.0), row(64, 3.0, 2.0), row(64, 10.0, 3.0, cap=0.3), row(128, 6.0, 4.0, d2=0.4)]
    assert sweeps.choose({"unsteered": base, "rows": rows}) == rows[1]
    assert sweeps.choose({"unsteered": base, "rows": rows}, {"length_cap_rate": 0.5}) == rows[2]
    assert sweeps.choose({"unsteered": base, "rows": rows[2:]}) is None


def test_recording_round_trip(tmp_path, toy_sweep):
    (tmp_path / "benchmarks" / "results").mkdir(parents=True)
    assert sweeps.recorded(start=tmp_path) is None  # no recording: None, not an error
    path = sweeps.save(toy_sweep, start=tmp_path / "book")
    assert path == tmp_path / "benchmarks" / "results" / sweeps.RECORDING
    back = sweeps.recorded(start=tmp_path / "book")
    assert back["rows"] == json.loads(json.dumps(toy_sweep["rows"])) and "machine" in back and "date" in back
    assert "unsteered" in sweeps.table(back) and len(sweeps.table(back).splitlines()) == 2 + len(back["rows"])


def test_recording_from_the_repository(tmp_path, toy_sweep):
    """Without a clone (Colab), the recording is read from the repository's main branch, or is None."""
    clone = tmp_path / "clone"
    (clone / "main" / "benchmarks" / "results").mkdir(parents=True)
    sweeps.save(toy_sweep, clone / "main" / "benchmarks" / "results" / sweeps.RECORDING)
    elsewhere = tmp_path / "no-clone"
    elsewhere.mkdir()
    assert sweeps.recorded(start=elsewhere) is None
    assert sweeps.recorded(start=elsewhere, repo_url=clone.as_uri())["rows"] == back_rows(toy_sweep)
    assert sweeps.recorded(start=elsewhere, repo_url=(tmp_path / "missing").as_uri()) is None


def back_rows(result):
    return json.loads(json.dumps(result["rows"]))


# --- the machine helpers --------------------------------------------------------------------------------


def test_missing_model_message_restores_the_environment(monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", "/somewhere/else")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    message = colab.missing_model_message("gemma-2-2b")
    assert "hf download" in message and "with_paths" in message
    assert os.environ["HF_HUB_CACHE"] == "/somewhere/else" and "HF_HUB_OFFLINE" not in os.environ


def test_ram_and_kv_cache_helpers(world, capsys):
    assert colab.ram_gb() > 0
    assert colab.enough_ram(0.001) and not colab.enough_ram(math.inf)
    assert "not enough" in capsys.readouterr().out
    shape = ModelShape.from_config(world.model.config)
    value_bytes = next(world.model.parameters()).element_size()
    assert colab.kv_cache_bytes(world.model, torch.randint(10, 100, (3, 24))) == kv(shape, 3, 24, value_bytes)
    assert colab.token_status().startswith(("a Hugging Face token", "no Hugging Face token"))
