"""method/stopguard.py: the end-of-turn probe reads the toy model's own stopping, and the guard is an exact
pass-through (threshold 1), an exact undo (a probe that always fires), and cleans up its hooks."""

from __future__ import annotations

import pytest
import torch

from dspa_lite import generate
from dspa_lite.method.baselines import CAA
from dspa_lite.method.dspa import DSPA
from dspa_lite.method.hooks import decoder_layers
from dspa_lite.method.stopguard import StopGuard, StopProbe, fit_stop_probe


@pytest.fixture(scope="module")
def probe(world):
    return fit_stop_probe(world.model, world.tokenizer, world.triples("train")[:60], world.l_out)


def test_probe_ranks_the_positions_before_end_of_turn_first(world, probe):
    from dspa_lite.method.stopguard import _residuals, stop_texts

    X, y = _residuals(world.model, world.tokenizer, stop_texts(world.tokenizer, world.triples("test")[:40]),
                      world.l_out, {world.tokenizer.eos_token_id}, 16)
    p = probe.probability(X)
    pos, neg = p[y == 1], p[y == 0]
    auc = float((pos[:, None] > neg[None, :]).float().mean())
    assert auc > 0.95, auc  # held-out chats: the model's stopping is linearly readable at l_out
    assert float(pos.mean()) > 0.3 > float(neg.mean())


def test_threshold_one_is_the_steerer_and_an_always_firing_probe_is_unsteered(world, cdmap, probe):
    prompts = world.prompts("test", 8)
    dspa = DSPA(world.model, world.tokenizer, world.sae_in, world.sae_out, cdmap, "augment", 64, 6.0)
    kw = dict(max_new_tokens=40, temperature=1.0, seed=3)
    steered, unsteered = dspa.generate(prompts, **kw), generate(world.model, world.tokenizer, prompts, **kw)
    assert steered != unsteered
    always = StopProbe(torch.zeros_like(probe.w), 50.0, probe.layer)
    for cumulative in (False, True):
        assert StopGuard(dspa, probe, threshold=1.0, cumulative=cumulative).generate(prompts, **kw) == steered
        assert StopGuard(dspa, always, threshold=0.5, cumulative=cumulative).generate(prompts, **kw) == unsteered


def test_cumulative_guard_turns_the_edit_off_once_the_model_would_have_stopped(world, cdmap, probe):
    """Teacher-forced, against a reference: each row is edited up to the first position where the running stop
    probability (from the last prompt position on, read by the probe from the unedited residual) exceeds the
    threshold, and left unedited from there on."""
    from dspa_lite.evaluation.evals import stop_probabilities
    from dspa_lite.method.generation import format_prompts
    from dspa_lite.method.hooks import forward_until

    tok, triples = world.tokenizer, world.triples("test")[:6]
    prompts, responses = [t.prompt for t in triples], [t.chosen for t in triples]
    dspa = DSPA(world.model, tok, world.sae_in, world.sae_out, cdmap, "augment", 64, 6.0)
    edited = stop_probabilities(world.model, tok, prompts, responses, dspa.steer)
    guard = StopGuard(dspa, probe, threshold=0.3, cumulative=True)
    guarded = stop_probabilities(world.model, tok, prompts, responses, guard.steer)
    crossed = 0
    for x, y, (_, p1), (_, pg) in zip(prompts, responses, edited, guarded):
        prefix = format_prompts(tok, [x])[0]
        n = len(tok(prefix, add_special_tokens=False).input_ids)
        ids = tok(prefix + y, add_special_tokens=False, return_tensors="pt").input_ids
        with torch.no_grad():
            p = probe.probability(forward_until(world.model, [world.l_out], ids, torch.ones_like(ids))[world.l_out])[0]
        stopped = 1 - torch.cumprod(1 - p[n - 1:], 0) > 0.3  # from the last prompt position on
        t = int(stopped.float().argmax()) if stopped.any() else len(stopped)  # first unedited position
        if t > 1:
            assert torch.allclose(pg[:t - 1], p1[:t - 1]), "edited until the model would have stopped"
        if t < len(pg):
            crossed += 1
            assert not torch.allclose(pg[t - 1:], p1[t - 1:]), "unedited from there on"
    assert crossed, "some response runs past the point where the model would have stopped"


def test_guard_refuses_a_probe_of_another_layer_and_cleans_up(world, cdmap, probe):
    caa = CAA(world.model, world.tokenizer, torch.ones(world.model.config.hidden_size), world.l_in, 1.0)
    with pytest.raises(ValueError, match="layer"):
        StopGuard(caa, probe)
    dspa = DSPA(world.model, world.tokenizer, world.sae_in, world.sae_out, cdmap, "augment", 8, 3.0)
    with pytest.raises(ValueError, match="threshold"):
        StopGuard(dspa, probe, threshold=0.0)
    layer = decoder_layers(world.model)[world.l_out]
    before = dict(layer._forward_hooks)  # transformers may keep its own output-capture hooks here
    with pytest.raises(RuntimeError, match="boom"), StopGuard(dspa, probe).steer(world.prompts("test", 2)):
        raise RuntimeError("boom")
    assert dict(layer._forward_hooks) == before


def test_stop_probabilities_read_the_model_after_each_response_token(world, cdmap):
    from dspa_lite.evaluation.evals import stop_probabilities
    from dspa_lite.method.generation import Steerer, format_prompts

    tok, triples = world.tokenizer, world.triples("test")[:3]
    prompts, responses = [t.prompt for t in triples], [t.chosen for t in triples]
    rows = stop_probabilities(world.model, tok, prompts, responses)
    assert rows[0][0] == tok(responses[0], add_special_tokens=False).input_ids  # the response's own tokens
    ids = tok(format_prompts(tok, prompts[:1])[0] + responses[0], add_special_tokens=False, return_tensors="pt")
    with torch.no_grad():
        last = world.model(**ids).logits[0, -1].float().softmax(-1)[tok.eos_token_id]
    assert torch.isclose(rows[0][1][-1], last, atol=1e-5)  # after a whole response the turn usually ends
    assert float(rows[0][1][-1]) > 0.1 > float(rows[0][1][:3].max())
    same = stop_probabilities(world.model, tok, prompts, responses, Steerer(world.model, tok).steer)
    assert all(torch.equal(a[1], b[1]) for a, b in zip(rows, same))
    dspa = DSPA(world.model, tok, world.sae_in, world.sae_out, cdmap, "augment", 64, 6.0)
    edited = stop_probabilities(world.model, tok, prompts, responses, dspa.steer)
    assert any(not torch.equal(a[1], b[1]) for a, b in zip(rows, edited))


def test_probe_stops_on_the_models_stop_tokens_and_refuses_a_token_never_seen(world):
    tok, triples = world.tokenizer, world.triples("train")[:8]
    with pytest.raises(ValueError, match="stop_ids"):
        fit_stop_probe(world.model, tok, triples, world.l_out, stop_ids=[tok.pad_token_id])
    gen = world.model.generation_config
    saved = gen.eos_token_id
    try:  # a Gemma-style setup: eos is one token, generation also stops on another (here: the real end of turn)
        gen.eos_token_id = [tok.eos_token_id, tok.pad_token_id]
        probe = fit_stop_probe(world.model, tok, triples, world.l_out)
    finally:
        gen.eos_token_id = saved
    assert probe.layer == world.l_out and torch.isfinite(probe.w).all()
