"""dspa_lite.evaluation.lmeval on a tiny random Gemma-2, a word-level tokenizer and a local multiple-choice task YAML.

The DSPA here is the real class on stand-in SAEs (a ReLU encoder with the attributes dspa_lite reads
from an sae-lens SAE), because importing sae-lens costs more than this whole file's budget. Only the
default-free TaskManager is used (indexing lm-eval's own thousands of task YAMLs takes about a minute).
"""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch
from tiny import lm_eval_task, tiny_gemma, word_tokenizer
from transformers import PreTrainedTokenizerFast

from dspa_lite import DSPA
from dspa_lite.method.cdmap import CDMap, CDMapConfig
from dspa_lite.method.hooks import decoder_layers, edit
from dspa_lite.method.saes import model_id, sae_id

lm_eval = pytest.importorskip("lm_eval")
from lm_eval.tasks import TaskManager  # noqa: E402

from dspa_lite.evaluation.lmeval import STANDARD_TASKS, _steered_hflm, run_lm_eval, task_scores  # noqa: E402

WORDS = ("Question: Answer: what colour is the sky grass snow sun night blue green white yellow black red cat dog "
         "sat on mat a big small which animal barks meows").split()
DOCS = [
    {"question": "what colour is the sky", "choices": ["blue", "green", "black"], "answer": 0},
    {"question": "what colour is the grass", "choices": ["red", "green", "white"], "answer": 1},
    {"question": "what colour is the snow", "choices": ["white", "black", "yellow"], "answer": 0},
    {"question": "what colour is the sun", "choices": ["blue", "black", "yellow"], "answer": 2},
    {"question": "what colour is the night", "choices": ["black", "white", "green"], "answer": 0},
    {"question": "which animal barks", "choices": ["cat", "dog", "mat"], "answer": 1},
    {"question": "which animal meows", "choices": ["cat", "dog", "sun"], "answer": 0},
    {"question": "the cat sat on a", "choices": ["mat", "sky", "big sun"], "answer": 0},
]


class TinySAE(torch.nn.Module):
    """ReLU SAE with unit-norm random decoder rows, shaped like an sae-lens SAE as far as dspa_lite looks."""

    def __init__(self, d_in: int, d_sae: int, layer: int, seed: int):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        W_dec = torch.randn(d_sae, d_in, generator=g)
        self.W_dec = torch.nn.Parameter(W_dec / W_dec.norm(dim=1, keepdim=True), requires_grad=False)
        meta = SimpleNamespace(hook_name=f"blocks.{layer}.hook_resid_post", model_name="tiny", release=None, sae_id=None)
        self.cfg = SimpleNamespace(d_in=d_in, d_sae=d_sae, metadata=meta)

    def encode(self, h: torch.Tensor) -> torch.Tensor:
        return torch.relu(h @ self.W_dec.T - 0.5)  # (..., d_sae)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tok = word_tokenizer(list(WORDS), chat=False)
    tok_dir = tmp_path_factory.mktemp("tok")
    tok.save_pretrained(tok_dir)  # the tokenizer survives a save/load round trip, as a real one would
    tok = PreTrainedTokenizerFast.from_pretrained(tok_dir)
    model = tiny_gemma(len(tok), n_layers=2)

    root = tmp_path_factory.mktemp("lmeval")
    data = root / "toy_mc.jsonl"
    data.write_text("".join(json.dumps(d) + "\n" for d in DOCS))
    lm_eval_task(root / "tasks", "dspa_toy_mc", data)
    lm_eval_task(root / "tasks", "dspa_toy_gen", data, generate=True)
    tm = TaskManager(include_path=str(root / "tasks"), include_defaults=False)

    sae_in, sae_out = TinySAE(32, 64, 0, seed=1), TinySAE(32, 64, 1, seed=2)
    g = torch.Generator().manual_seed(3)
    U, Delta = (torch.rand(24, 64, generator=g) < 0.3).float(), torch.randn(24, 64, generator=g)
    meta = dict(model_id=model_id(model), sae_in_id=sae_id(sae_in), sae_out_id=sae_id(sae_out), l_in=0, l_out=1,
                d_model=32, d_sae_in=64, d_sae_out=64)
    cdmap = CDMap.from_features(U, Delta, torch.ones(64), CDMapConfig.plain(), meta)
    run = lambda steerer=None, **kw: run_lm_eval(model, tok, ["dspa_toy_mc"], steerer, batch_size=4,  # noqa: E731
                                                 task_manager=tm, log_samples=True, **kw)
    return SimpleNamespace(model=model, tok=tok, tm=tm, run=run, cdmap=cdmap, sae_in=sae_in, sae_out=sae_out,
                           baseline=run())


def _loglik(results) -> list[list[float]]:
    return [[r[0][0] for r in s["resps"]] for s in sorted(results["samples"]["dspa_toy_mc"], key=lambda s: s["doc_id"])]


def _hooks(model) -> int:
    return sum(len(layer._forward_hooks) + len(layer._forward_pre_hooks) for layer in decoder_layers(model))


def test_unsteered_accuracy_is_computed(setup):
    scores = task_scores(setup.baseline)
    assert set(scores) == {"dspa_toy_mc"} and 0.0 <= scores["dspa_toy_mc"]["acc"] <= 1.0
    assert setup.baseline["results"]["dspa_toy_mc"]["sample_len"] == len(DOCS)
    picks = [max(range(3), key=s.__getitem__) for s in _loglik(setup.baseline)]
    assert scores["dspa_toy_mc"]["acc"] == sum(p == d["answer"] for p, d in zip(picks, DOCS, strict=True)) / len(DOCS)
    assert set(STANDARD_TASKS) == {"mmlu", "arc_challenge", "hellaswag", "truthfulqa_mc2", "winogrande"}


def test_noop_steerers_equal_unsteered_and_hooks_are_removed(setup):
    calls = []

    def identity(prompts, input_ids, attention_mask, start=None):
        calls.append(len(prompts))
        return edit(setup.model, 1, lambda h: h)

    for steerer in (identity, DSPA(setup.model, setup.tok, setup.sae_in, setup.sae_out, setup.cdmap, k=0)):
        res = setup.run(steerer)
        assert _loglik(res) == _loglik(setup.baseline)
        assert res["results"]["dspa_toy_mc"]["acc,none"] == setup.baseline["results"]["dspa_toy_mc"]["acc,none"]
        assert _hooks(setup.model) == 0
    # lm-eval runs one row per distinct context + continuation[:-1] (one-token answers share a row)
    rows = {(d["question"], tuple(c.split()[:-1])) for d in DOCS for c in d["choices"]}
    assert sum(calls) == len(rows), "every scored row ran under the identity steerer"


def test_dspa_edits_the_continuation_positions_conditioned_on_the_context(setup):
    dspa = DSPA(setup.model, setup.tok, setup.sae_in, setup.sae_out, setup.cdmap, mode="both", k=16, alpha=4.0)
    seen = []

    def spy(prompts, input_ids, attention_mask, start=None):
        seen.append((list(prompts), input_ids.clone(), list(start)))
        return dspa.steer(prompts, input_ids, attention_mask, start=start)

    steered = _loglik(setup.run(spy))
    assert _hooks(setup.model) == 0
    assert steered != _loglik(setup.baseline), "the DSPA edit changed no log-likelihood: was it applied?"
    contexts = {f"Question: {d['question']} Answer:" for d in DOCS}
    assert {p for prompts, _, _ in seen for p in prompts} == contexts

    # parity: one request scored by hand under the same edit equals lm-eval's number
    doc, choice = DOCS[0], 0
    ctx = setup.tok(f"Question: {doc['question']} Answer:", add_special_tokens=False).input_ids
    cont = setup.tok(" " + doc["choices"][choice], add_special_tokens=False).input_ids
    ids = torch.tensor([ctx + cont[:-1]])
    row = next(i for prompts, batch, _ in seen for i in range(len(prompts)) if batch[i, :ids.shape[1]].tolist() ==
               ids[0].tolist() and not batch[i, ids.shape[1]:].any())
    starts = [s for _, _, st in seen for s in st]
    assert starts[row] == len(ctx) - 1, "the first edited position is the last context position"
    with torch.no_grad(), dspa.steer([f"Question: {doc['question']} Answer:"], ids, torch.ones_like(ids),
                                     start=[len(ctx) - 1]):
        logp = setup.model(ids).logits.float().log_softmax(-1)[0, len(ctx) - 1:]
    reference = float(logp.gather(-1, torch.tensor(cont)[:, None]).sum())
    assert steered[0][choice] == pytest.approx(reference, abs=1e-4)


def test_generation_tasks_steer_each_prompt(setup):
    seen = []

    def identity(prompts, input_ids, attention_mask, start=None):
        seen.append((list(prompts), start))
        return edit(setup.model, 1, lambda h: h)

    run = lambda steerer=None: run_lm_eval(setup.model, setup.tok, ["dspa_toy_gen"], steerer, limit=4,  # noqa: E731
                                           batch_size=4, task_manager=setup.tm, log_samples=True)
    plain, steered = run(), run(identity)
    assert [s["resps"] for s in plain["samples"]["dspa_toy_gen"]] == [
        s["resps"] for s in steered["samples"]["dspa_toy_gen"]]
    assert sorted(p for prompts, _ in seen for p in prompts) == sorted(
        f"Question: {d['question']} Answer:" for d in DOCS[:4])
    assert all(start is None for _, start in seen), "generation edits the last prompt position, then each new token"
    assert _hooks(setup.model) == 0


def test_hooks_removed_when_a_batch_raises(setup):
    def exploding(prompts, input_ids, attention_mask, start=None):
        def fn(h):
            raise RuntimeError("boom")
        return edit(setup.model, 0, fn)

    with pytest.raises(RuntimeError, match="boom"):
        setup.run(exploding)
    assert _hooks(setup.model) == 0


def test_refusals(setup):
    with pytest.raises(ValueError, match="positions='last'"):
        setup.run(positions="last")
    with pytest.raises(TypeError, match="wrap it in"):
        run_lm_eval(setup.model, setup.tok, "dspa_toy_mc")
    with pytest.raises(TypeError, match=r"\.steer"):
        setup.run(steerer=42)
    lm = _steered_hflm()(pretrained=setup.model, tokenizer=setup.tok, steer=lambda *a, **k: edit(setup.model, 0,
                                                                                                   lambda h: h))
    with pytest.raises(NotImplementedError, match="perplexity"):
        lm.loglikelihood_rolling([])


def test_prompt_of_maps_each_context_before_the_steerer_sees_it(setup):
    dspa = DSPA(setup.model, setup.tok, setup.sae_in, setup.sae_out, setup.cdmap, mode="both", k=16, alpha=4.0)
    seen = []

    def spy(prompts, input_ids, attention_mask, start=None):
        seen.extend(prompts)
        return dspa.steer(prompts, input_ids, attention_mask, start=start)

    question = {f"Question: {d['question']} Answer:": d["question"] for d in DOCS}
    mapped = _loglik(setup.run(spy, prompt_of=lambda c: question[c]))
    assert set(seen) == {d["question"] for d in DOCS}, "the steerer conditioned on the mapped prompts"
    assert mapped != _loglik(setup.run(spy)), "conditioning on other text changes the edit here"
    assert _hooks(setup.model) == 0
