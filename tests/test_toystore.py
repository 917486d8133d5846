"""Manifests, verification, seeds and locks of toy-world folders (no world is built here)."""

import json
import os
import subprocess
import threading
import time
from pathlib import Path

import pytest
import torch

from dspa_lite import toyworld as T
from dspa_lite.loading.profiles import ConfigError
from dspa_lite.toyworld import store as store


@pytest.fixture
def folder(tmp_path):
    """A fake world folder with a manifest."""
    path = tmp_path / "world"
    (path / "model").mkdir(parents=True)
    (path / "model" / "model.safetensors").write_bytes(b"weights" * 100)
    (path / "triples_train.jsonl").write_text('{"prompt": "a"}\n')
    store.write_manifest(path, "abc123", seed=3)
    return path


def test_manifest_lists_every_file(folder):
    m = store.verify(folder, "abc123", 3)
    assert set(m["files"]) == {"model/model.safetensors", "triples_train.jsonl"} and m["format"] == store.FORMAT_VERSION


@pytest.mark.parametrize("damage, message", [
    (lambda p: (p / "model" / "model.safetensors").write_bytes(b"weights"), "does not match its SHA-256"),
    (lambda p: (p / "triples_train.jsonl").unlink(), "missing triples_train.jsonl"),
    (lambda p: (p / store.MANIFEST).unlink(), "incomplete"),
    (lambda p: (p / store.MANIFEST).write_text("{not json"), "unreadable"),
])
def test_damage_is_named_with_the_fix(folder, damage, message):
    damage(folder)
    with pytest.raises(store.WorldError, match=message) as e:
        store.verify(folder, "abc123", 3)
    assert "dspa-lite build-toy --seed 3 --force" in str(e.value)


def test_foreign_and_old_format_folders_are_refused(folder):
    with pytest.raises(store.WorldError, match="not the requested 'zzz'"):
        store.verify(folder, "zzz", 3)
    m = json.loads((folder / store.MANIFEST).read_text())
    (folder / store.MANIFEST).write_text(json.dumps({**m, "format": 1}))
    with pytest.raises(store.WorldError, match="format version 1"):
        store.verify(folder, "abc123", 3)


def test_toy_seed_setting(monkeypatch):
    monkeypatch.delenv("DSPA_TOY_SEED", raising=False)
    assert store.toy_seed() == store.REFERENCE_SEED == 0
    monkeypatch.setenv("DSPA_TOY_SEED", "4")
    assert store.toy_seed() == 4
    for bad in ("-1", "two", "1.5"):
        monkeypatch.setenv("DSPA_TOY_SEED", bad)
        with pytest.raises(ConfigError, match=f"DSPA_TOY_SEED={bad!r}"):
            store.toy_seed()


def test_seed_setting_selects_the_world_without_building(monkeypatch, tmp_path):
    monkeypatch.setenv("DSPA_CACHE", str(tmp_path))
    assert T.world_path(T.ToyConfig()) == store.REFERENCE_DIR
    assert T.world_path(T.ToyConfig(seed=2)) == tmp_path / "toyworld" / T.ToyConfig(seed=2).hash()


def test_reference_world_ships_and_verifies():
    m = store.verify(store.REFERENCE_DIR, T.ToyConfig().hash(), 0)
    assert {"model/tokenizer.json", "model/model.safetensors", "sae_in/cfg.json", "sae_out/sae_weights.safetensors",
            "triples_train.jsonl", "triples_test.jsonl", "report.json", "config.json"} <= set(m["files"])
    assert json.loads((store.REFERENCE_DIR / "config.json").read_text()) == T.ToyConfig().to_dict()


def test_stale_temporary_folders_are_cleaned(tmp_path):
    target = tmp_path / "abc"
    for name in (".abc.tmp-1-aa", ".abc.tmp-2-bb", ".other.tmp-3-cc"):
        (tmp_path / name).mkdir()
    store.clean_stale(target)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".other.tmp-3-cc"]


def test_a_second_builder_waits_for_the_first(tmp_path):
    target, order = tmp_path / "w", []

    def builder(name):
        with store.build_lock(target):
            order.append(f"{name} in")
            time.sleep(0.2)
            order.append(f"{name} out")

    threads = [threading.Thread(target=builder, args=(n,)) for n in "ab"]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert order in (["a in", "a out", "b in", "b out"], ["b in", "b out", "a in", "a out"])
    assert not os.path.exists(target)


PEER = Path(__file__).resolve().parents[1] / ".venv-peer" / "bin" / "python"


@pytest.mark.skipif(not PEER.exists(), reason="the transformers 4.x environment (benchmarks/requirements-peer.txt) "
                    "is not installed")
def test_reference_world_reads_the_same_under_transformers_4(world):
    """The world loads under transformers 4.x (the peer environment) to the same logits as under 5.x."""
    probe = ("import json, torch, transformers; from dspa_lite import toyworld; w = toyworld.load(progress=False); "
             "ids = torch.tensor([list(range(2, 40))]); "
             "print(json.dumps([transformers.__version__, w.model(ids).logits[0, -1].tolist()]))")
    out = subprocess.run([str(PEER), "-c", probe], capture_output=True, text=True, check=True)
    version, logits = json.loads(out.stdout.strip().splitlines()[-1])
    assert version.startswith("4.")
    mine = world.model(torch.tensor([list(range(2, 40))])).logits[0, -1]
    assert torch.allclose(torch.tensor(logits), mine, atol=1e-5)
