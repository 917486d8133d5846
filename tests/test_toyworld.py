import dataclasses
import json

import pytest
import torch

from dspa_lite import toylang as L
from dspa_lite import toyworld as T
from dspa_lite.sae import load_from_disk

# A world small enough to build twice in a test (the real one is built once per session).
MINI = T.ToyConfig(n_corpus=1500, steps=15, sae_tokens=16_384, d_sae=128, n_triples={"train": 40, "test": 20})


def test_tokenizer_round_trip():
    tok = T.build_tokenizer()
    for prompt, response in T.corpus(dataclasses.replace(T.ToyConfig(), n_corpus=50)):
        text = T.dialogue_text(tok, prompt, response)
        ids = tok(text, add_special_tokens=False).input_ids
        assert tok.unk_token_id not in ids
        assert tok.decode(ids) == text
    chat = tok.apply_chat_template([{"role": "user", "content": "hi !"}], tokenize=False, add_generation_prompt=True)
    assert chat == "<bos> <start_of_turn> user hi ! <end_of_turn> <start_of_turn> model "


def test_data_is_deterministic():
    cfg = T.ToyConfig()
    assert T.corpus(dataclasses.replace(cfg, n_corpus=300)) == T.corpus(dataclasses.replace(cfg, n_corpus=300))
    a, b = T.make_triples(cfg, "train"), T.make_triples(cfg, "train")
    assert a == b and len(a) == cfg.n_triples["train"]
    assert T.make_triples(dataclasses.replace(cfg, seed=1), "train") != a
    assert not {t.prompt + t.chosen for t in a} & {t.prompt + t.chosen for t in T.make_triples(cfg, "test")}


def test_triples_follow_the_preference_rule():
    judge = L.Judge()
    triples = T.make_triples(T.ToyConfig(), "test")
    wins = [judge(t.prompt, t.chosen).preferred_share > judge(t.prompt, t.rejected).preferred_share for t in triples]
    assert sum(wins) / len(wins) > 0.97
    assert {t.category for t in triples} == set(L.CATEGORIES)


def test_model_training_is_deterministic():
    cfg = dataclasses.replace(MINI, steps=5)
    tok = T.build_tokenizer()
    rows = T.packed_rows(T._dialogue_ids(tok, T.corpus(cfg)), cfg.context)
    losses = [T.train_model(cfg, T.build_model(cfg, len(tok), tok), rows, progress=False) for _ in range(2)]
    assert abs(losses[0] - losses[1]) < 1e-4, losses


def test_config_validation():
    with pytest.raises(Exception, match="l_in < l_out"):
        T.ToyConfig(l_in=2, l_out=2)
    assert T.ToyConfig().hash() == T.ToyConfig().hash() != T.ToyConfig(seed=1).hash()


def test_cache_recovery_and_sae_round_trip(tmp_path, monkeypatch):
    monkeypatch.setenv("DSPA_CACHE", str(tmp_path))
    w = T.load(config=MINI, progress=False)
    path = w.path
    assert path == tmp_path / "toyworld" / MINI.hash()
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".")], "temporary folders left behind"
    # the saved SAE reloads to the same weights
    again = load_from_disk(path / "sae_out")
    for name, p in w.sae_out.state_dict().items():
        assert torch.equal(p, again.state_dict()[name]), name
    assert w.sae_out.cfg.d_sae == MINI.d_sae and w.sae_out.cfg.d_in == MINI.d_model
    before = json.loads((path / "report.json").read_text())
    # a truncated weights file is detected and the world rebuilt
    weights = path / "model" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    w2 = T.load(config=MINI, progress=False)
    assert weights.stat().st_size > 1000
    assert w2.report["train_loss"] == pytest.approx(before["train_loss"], abs=1e-3)
    # a missing completeness marker (an interrupted build) also rebuilds
    (path / "report.json").unlink()
    assert T.load(config=MINI, progress=False).report


def test_world_api(world):
    assert world.l_in < world.l_out
    assert world.sae_in.cfg.d_in == world.model.config.hidden_size == world.sae_out.cfg.d_in
    train = world.triples("train")
    assert len(train) == world.config.n_triples["train"] and train[0].category in L.CATEGORIES
    items = world.mcq("test")
    assert any(i.seen for i in items) and not all(i.seen for i in items)
    prompts = world.prompts("test", 8)
    assert [world.judge.category(p) for p in prompts] == list(L.CATEGORIES) * 2
    with pytest.raises(ValueError, match="split='dev'"):
        world.triples("dev")


def test_world_meets_its_targets(world):
    """The targets of the foundation issue, measured at build time (see benchmarks/RESULTS.md)."""
    r = world.report
    assert 0.15 <= r["unsteered_preferred_rate"]["overall"] <= 0.60
    assert r["classifiable_rate"] >= 0.95
    assert 0.60 <= r["mcq_accuracy"]["accuracy"] <= 0.90
    for name in ("sae_in", "sae_out"):
        assert r["sae"][name]["fve"] >= 0.9, (name, r["sae"][name])
    for cat, act in r["style_latents_active"].items():  # style is expressed inside responses, not before them
        assert act["mass_inside_response"] > 2 * act["mass_last_prompt_position"], (cat, act)
