import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys

import pytest
import torch

from dspa_lite import toyworld as T
from dspa_lite.loading.sae import load_from_disk
from dspa_lite.toyworld import build as B
from dspa_lite.toyworld import data as D
from dspa_lite.toyworld import language as L
from dspa_lite.toyworld import store as store
from dspa_lite.toyworld import world as W

# A world small enough to build twice in a test (the real one is built once per session).
MINI = T.ToyConfig(n_corpus=1500, steps=15, sae_tokens=16_384, d_sae=128, n_triples={"train": 40, "test": 20})


def test_tokenizer_round_trip():
    tok = B.build_tokenizer()
    for prompt, response in D.corpus(dataclasses.replace(T.ToyConfig(), n_corpus=50)):
        text = D.dialogue_text(tok, prompt, response)
        ids = tok(text, add_special_tokens=False).input_ids
        assert tok.unk_token_id not in ids
        assert tok.decode(ids) == text
    chat = tok.apply_chat_template([{"role": "user", "content": "hi !"}], tokenize=False, add_generation_prompt=True)
    assert chat == "<bos> <start_of_turn> user hi ! <end_of_turn> <start_of_turn> model "


def test_data_is_deterministic():
    cfg = T.ToyConfig()
    assert D.corpus(dataclasses.replace(cfg, n_corpus=300)) == D.corpus(dataclasses.replace(cfg, n_corpus=300))
    a, b = D.make_triples(cfg, "train"), D.make_triples(cfg, "train")
    assert a == b and len(a) == cfg.n_triples["train"]
    assert D.make_triples(dataclasses.replace(cfg, seed=1), "train") != a
    assert not {t.prompt + t.chosen for t in a} & {t.prompt + t.chosen for t in D.make_triples(cfg, "test")}


def test_triples_follow_the_preference_rule():
    judge = L.Judge()
    triples = D.make_triples(T.ToyConfig(), "test")
    wins = [judge(t.prompt, t.chosen).preferred_share > judge(t.prompt, t.rejected).preferred_share for t in triples]
    assert sum(wins) / len(wins) > 0.97
    assert {t.category for t in triples} == set(L.CATEGORIES)


def test_model_training_is_deterministic():
    cfg = dataclasses.replace(MINI, steps=5)
    tok = B.build_tokenizer()
    rows = B.packed_rows(B.dialogue_ids(tok, D.corpus(cfg)), cfg.context)
    losses = [B.train_model(cfg, W.build_model(cfg, len(tok), tok), rows, progress=False) for _ in range(2)]
    assert abs(losses[0] - losses[1]) < 1e-4, losses


def test_config_validation():
    with pytest.raises(Exception, match="l_in < l_out"):
        T.ToyConfig(l_in=2, l_out=2)
    assert T.ToyConfig().hash() == T.ToyConfig().hash() != T.ToyConfig(seed=1).hash()


@pytest.fixture(scope="module")
def mini_builds(tmp_path_factory):
    """The reduced world built twice from the same seed, into two folders."""
    root = tmp_path_factory.mktemp("mini")
    # the second build runs in another process with another hash seed: nothing may depend on either
    code = ("import json, sys; from dspa_lite import toyworld as T; "
            "T.build_into(sys.argv[1], config=T.ToyConfig(**json.loads(sys.argv[2])), progress=False)")
    subprocess.run([sys.executable, "-c", code, str(root / "b"), json.dumps(MINI.to_dict())], check=True,
                   env={**os.environ, "PYTHONHASHSEED": "12345"})
    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    built = T.build_into(root / "a", config=MINI, progress=False)
    HANDLERS.update(before=before, after=(signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)))
    return [built, T.ToyWorld(root / "b", MINI)]


HANDLERS: dict[str, tuple] = {}  # the process's SIGINT/SIGTERM handlers around the in-process build (mini_builds)


def test_same_seed_rebuild_is_byte_identical(mini_builds):
    a, b = mini_builds
    assert store.content_hashes(a.path) == store.content_hashes(b.path)
    assert {"model/model.safetensors", "model/tokenizer.json", "sae_in/sae_weights.safetensors",
            "sae_out/sae_weights.safetensors", "triples_train.jsonl", "report.json"} <= set(store.content_hashes(a.path))
    assert not [p for p in a.path.parent.iterdir() if p.name.startswith(".") and "tmp" in p.name], "temp folders left"


def test_a_build_leaves_ctrl_c_as_it_found_it(mini_builds):
    """sae-lens's trainer installs SIGINT/SIGTERM handlers of its own; the build puts the process's back."""
    assert HANDLERS["before"] == HANDLERS["after"]
    assert HANDLERS["after"][0] is not None


def test_built_world_round_trips(mini_builds):
    w = mini_builds[0]
    again = load_from_disk(w.path / "sae_out")
    for name, p in w.sae_out.state_dict().items():
        assert torch.equal(p, again.state_dict()[name]), name
    assert w.sae_out.cfg.d_sae == MINI.d_sae and w.sae_out.cfg.d_in == MINI.d_model
    # the model as transformers itself reads the folder equals the world's portable loader
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(w.path / "model", attn_implementation="eager").eval()
    ids = torch.tensor([w.tokenizer("<bos> <start_of_turn> user hi ! <end_of_turn>", add_special_tokens=False).input_ids])
    assert torch.equal(hf(ids).logits, w.model(ids).logits)


def test_load_builds_a_seed_once_into_the_cache(tmp_path, monkeypatch, mini_builds):
    monkeypatch.setenv("DSPA_CACHE", str(tmp_path))
    target = tmp_path / "toyworld" / MINI.hash()
    shutil.copytree(mini_builds[0].path, target)
    w = T.load(config=MINI, progress=False)  # verified, not rebuilt
    assert w.path == target and w.report == mini_builds[0].report
    with pytest.raises(FileExistsError, match="--force"):
        T.build_into(mini_builds[0].path, config=MINI, progress=False)


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
