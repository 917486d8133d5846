"""The chat path on the real tokenizers' layouts (``hubfixtures``): one rendering for generation, answer files
and lm-eval, with the profile's chat arguments (Qwen3's empty think block); stopping on the template's
end-of-turn token even when ``generation_config`` lists only ``<eos>`` (a base model); and every-position edits
(static SAE steering, ``positions="all"``) that leave padding and BOS alone.
"""

from __future__ import annotations

import dataclasses
import json

import hubfixtures as hf
import pytest
import torch
from tiny import lm_eval_task

from dspa_lite.evaluation import formats
from dspa_lite.loading import models
from dspa_lite.loading.profiles import get_profile
from dspa_lite.method.baselines import StaticSAE
from dspa_lite.method.cdmap import CDMap, CDMapConfig
from dspa_lite.method.dspa import DSPA
from dspa_lite.method.generation import content_start, end_of_turn_id, format_prompts, generate, stop_ids
from dspa_lite.method.hooks import edit
from dspa_lite.method.saes import model_id, sae_id

THINK = "<think>\n\n</think>\n\n"


def shrunk(name: str, folder, **paths):
    return dataclasses.replace(get_profile(name), n_layers=hf.N_LAYERS, d_model=hf.D_MODEL, d_sae=hf.D_SAE,
                               l_in=1, l_out=2).with_paths(model_path=folder, **paths)


@pytest.fixture(scope="module")
def qwen(tmp_path_factory):
    torch.set_num_threads(1)
    return models.load(shrunk("qwen3-8b", hf.qwen3_checkpoint(tmp_path_factory.mktemp("qwen"))), device="cpu")


@pytest.fixture(scope="module")
def gemma_base(tmp_path_factory):
    """google/gemma-2-2b's layout: Gemma's template, but only <eos> in config.json and generation_config.json."""
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("gemma-base")
    folder = hf.gemma2_checkpoint(root / "model", base=True)
    model, tok = models.load(shrunk("gemma-2-2b", folder), device="cpu")
    saes = {layer: hf.gemma_scope_sae(root / f"sae-{layer}", layer, acts=hf.residuals(model, tok, layer), seed=layer)
            for layer in (1, 2)}
    profile = shrunk("gemma-2-2b", folder, sae_paths=saes)
    return model, tok, *(models.load_sae(profile, layer, model=model) for layer in (1, 2))


def _spy_generate(model, monkeypatch) -> list[tuple[torch.Tensor, list[int]]]:
    seen, real = [], model.generate

    def spy(*args, **kwargs):
        seen.append((kwargs["input_ids"], kwargs["eos_token_id"]))
        return real(*args, **kwargs)

    monkeypatch.setattr(model, "generate", spy)
    return seen


def test_qwen3_thinks_nowhere(qwen, monkeypatch, tmp_path):
    """The empty think block in prompts, in both turns of the MT-Bench answers, and in lm-eval's chat contexts."""
    model, tok = qwen
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    assert format_prompts(tok, ["What is 2 + 2?"])[0].endswith("<|im_start|>assistant\n" + THINK)
    seen = _spy_generate(model, monkeypatch)
    generate(model, tok, ["What is 2 + 2?"], max_new_tokens=2, temperature=0)
    questions = [{"question_id": i, "category": c, "turns": [f"Name a {c} fact.", "Now a shorter one."]}
                 for i, c in enumerate(("writing", "math"))]
    answers = formats.generate_mt_bench_answers(model, tok, questions, "qwen3-8b-none", max_new_tokens=3)
    assert [len(a.turns) for a in answers] == [2, 2]
    assert len(seen) == 1 + 2 * 2  # generate, then two temperature groups x two turns
    for ids, eos in seen:
        for row in tok.batch_decode(ids):
            assert row.endswith("<|im_start|>assistant\n" + THINK), row
        assert im_end in eos

    data = tmp_path / "mc.jsonl"
    data.write_text("".join(json.dumps({"question": q, "choices": ["yes", "no"], "answer": 0}) + "\n"
                            for q in ("is the sky blue", "is snow white")))
    lm_eval_task(tmp_path / "tasks", "dspa_chat_mc", data)
    from lm_eval.tasks import TaskManager

    from dspa_lite.evaluation.lmeval import run_lm_eval

    contexts = []

    def spy(prompts, input_ids, attention_mask, start=None):
        contexts.extend(prompts)
        return edit(model, 1, lambda h: h)

    run_lm_eval(model, tok, ["dspa_chat_mc"], spy, batch_size=2, apply_chat_template=True,
                task_manager=TaskManager(include_path=str(tmp_path / "tasks"), include_defaults=False))
    assert contexts and all(c.endswith("<|im_start|>assistant\n" + THINK) for c in contexts), contexts[:1]


def test_base_model_stops_at_the_templates_end_of_turn(gemma_base, monkeypatch):
    model, tok, *_ = gemma_base
    eos, eot = tok.eos_token_id, tok.convert_tokens_to_ids("<end_of_turn>")
    assert model.generation_config.eos_token_id == eos and model.config.eos_token_id == eos  # the base layout
    assert end_of_turn_id(tok) == eot and stop_ids(model, tok) == [eos, eot]
    word = tok("Sure", add_special_tokens=False).input_ids[0]
    steps = []

    def script(module, args, out):  # "Sure Sure <end_of_turn> Sure Sure ...": a base model running on
        out = out.clone()
        out[:, -1, eot if len(steps) == 2 else word] += 1e4
        steps.append(1)
        return out

    handle = model.lm_head.register_forward_hook(script)
    try:
        text = generate(model, tok, ["Explain tides."], max_new_tokens=8, temperature=0)[0]
        assert len(steps) == 3 and text == tok.decode([word, word]).strip()
        steps.clear()
        formats.generate_chat(model, tok, [[{"role": "user", "content": "Explain tides."}]], 8, temperature=0)
        assert len(steps) == 3, "answer files stop where generate stops"
        steps.clear()
        monkeypatch.setattr("dspa_lite.method.generation.end_of_turn_id", lambda tok: None)
        generate(model, tok, ["Explain tides."], max_new_tokens=8, temperature=0)
        assert len(steps) == 8, "without the turn marker the base model would run to max_new_tokens"
    finally:
        handle.remove()


def _edited_positions(steerer, tok, prompts) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    tok.padding_side = "left"
    enc = tok(format_prompts(tok, prompts), return_tensors="pt", padding=True, add_special_tokens=False)
    with steerer.steer(prompts, enc.input_ids, enc.attention_mask) as ed:
        ed.record = True
        steerer.model(input_ids=enc.input_ids, attention_mask=enc.attention_mask)
    return ed.trace[0].any(-1), enc.input_ids, enc.attention_mask  # (B, T) positions with any latent changed


def test_every_position_edits_skip_bos_and_padding(gemma_base):
    model, tok, sae_in, sae = gemma_base
    g = torch.Generator().manual_seed(0)
    U, Delta = (torch.rand(24, hf.D_SAE, generator=g) < 0.5).float(), torch.randn(24, hf.D_SAE, generator=g)
    meta = dict(model_id=model_id(model), sae_in_id=sae_id(sae_in), sae_out_id=sae_id(sae), l_in=1, l_out=2,
                d_model=hf.D_MODEL, d_sae_in=hf.D_SAE, d_sae_out=hf.D_SAE)
    cdmap = CDMap.from_features(U, Delta, torch.ones(hf.D_SAE), CDMapConfig.plain(), meta)
    prompts = ["Explain how ocean tides work to a curious teenager.", "Hi."]
    # gate="none" injects every chosen latent at every edited position, so the edited positions are visible
    static = StaticSAE(model, tok, sae, cdmap, mode="augment", k=8, alpha=3.0, gate="none")
    edited, ids, mask = _edited_positions(static, tok, prompts)
    first = content_start(ids, mask, tok.bos_token_id)
    assert ids[1, first[1] - 1] == tok.bos_token_id and mask[1, 0] == 0  # row 1: left padding, then <bos>
    for b, f in enumerate(first):
        assert not edited[b, :f].any() and edited[b, f:].all(), (b, f, edited[b])
    dspa = DSPA(model, tok, sae_in, sae, cdmap, mode="augment", k=8, alpha=3.0, positions="all", gate="none")
    assert torch.equal(_edited_positions(dspa, tok, prompts)[0], edited)
