"""Tests for dspa_lite.loading.data: triples, JSONL files, data hashes, nested subsets, local `datasets` loading.

Everything is local: `datasets` folders are built with `Dataset.from_list` in tmp_path, and the
hub test runs with HF_HUB_OFFLINE=1 against an empty cache.
"""

from __future__ import annotations

import hashlib
import json
import os
import time

import pytest

from dspa_lite.loading.data import DataError, PreferenceTriple, data_hash, load_preferences, read_jsonl, subsets, write_jsonl

datasets = pytest.importorskip("datasets")  # imported before any env change, as in a notebook


def _triples(n: int) -> list[PreferenceTriple]:
    return [PreferenceTriple(f"prompt {i}", f"good answer {i}", f"bad {i}", category=("a", "b")[i % 2]) for i in range(n)]


def _write_bytes(path, lines: list[bytes]) -> None:
    path.write_bytes(b"\n".join(lines) + b"\n")


def _row(prompt="p", chosen="c", rejected="r") -> bytes:
    return json.dumps({"prompt": prompt, "chosen": chosen, "rejected": rejected}).encode()


# --- PreferenceTriple -------------------------------------------------------------------------


def test_triple_dict_round_trip_and_extra_keys_go_to_meta():
    t = PreferenceTriple("q", "yes", "no", category="chat", meta={"score": 1.5})
    assert t.to_dict() == {"prompt": "q", "chosen": "yes", "rejected": "no", "category": "chat", "meta": {"score": 1.5}}
    assert PreferenceTriple.from_dict(t.to_dict()) == t
    assert PreferenceTriple("q", "yes", "no").to_dict() == {"prompt": "q", "chosen": "yes", "rejected": "no"}
    u = PreferenceTriple.from_dict({"prompt": "q", "chosen": "yes", "rejected": "no", "id": 7, "meta": {"a": 1}})
    assert u.meta == {"a": 1, "id": 7}
    assert PreferenceTriple.from_dict(PreferenceTriple("q", "y", "n", meta={}).to_dict()).meta == {}


def test_triple_validation_and_hashable():
    with pytest.raises(DataError, match="field 'prompt' is empty"):
        PreferenceTriple("  \n", "a", "b")
    with pytest.raises(DataError, match="field 'rejected' must be a string, got int"):
        PreferenceTriple("p", "a", 3)
    with pytest.raises(DataError, match="category"):
        PreferenceTriple("p", "a", "b", category=1)
    with pytest.raises(DataError, match="JSON-serialisable"):
        PreferenceTriple("p", "a", "b", meta={"x": object()})
    meta = {"k": 1}
    t = PreferenceTriple("p", "a", "b", meta=meta)
    meta["k"] = 2  # the triple keeps its own copy
    assert t.meta == {"k": 1}
    assert len({t, PreferenceTriple("p", "a", "b", meta={"k": 1})}) == 1


# --- JSONL --------------------------------------------------------------------------------------


def test_jsonl_round_trip(tmp_path):
    triples = [
        PreferenceTriple("Explain café ☕", "1. Boil.\n2. Pour.", "no", category="explain", meta={"src": {"a": [1, 2]}}),
        PreferenceTriple("line\u2028separator inside", "chosen\ttab", "rejected \"quoted\""),
        *_triples(3),
    ]
    path = write_jsonl(triples, tmp_path / "sub" / "prefs.jsonl")
    assert read_jsonl(path) == triples
    assert path.read_bytes().count(b"\n") == len(triples)  # one row a line, U+2028 kept raw
    assert "café ☕" in path.read_text(encoding="utf-8")
    assert sorted(p.name for p in path.parent.iterdir()) == ["prefs.jsonl"]  # no temp file left
    assert write_jsonl([t.to_dict() for t in triples], tmp_path / "from_dicts.jsonl").read_bytes() == path.read_bytes()


def test_jsonl_blank_lines_crlf_and_bom(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + _row("a") + b"\r\n\r\n   \n" + _row("b") + b"\r\n")
    assert [t.prompt for t in read_jsonl(path)] == ["a", "b"]


def test_write_jsonl_is_atomic(tmp_path, monkeypatch):
    path = write_jsonl(_triples(2), tmp_path / "p.jsonl")
    before = path.read_bytes()
    with pytest.raises(DataError, match="triple 2 duplicates triple 0"):
        write_jsonl([*_triples(2), _triples(1)[0]], path)

    def broken_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk full"):
        write_jsonl(_triples(5), path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["p.jsonl"]


BAD_FILES = {
    "invalid JSON": ([_row("a"), b'{"prompt": "b", "chosen": '], 2, "invalid JSON"),
    "invalid UTF-8": ([_row("a"), _row("b"), b'{"prompt": "caf\xe9", "chosen": "c", "rejected": "r"}'], 3, "invalid UTF-8"),
    "missing field": ([b'{"prompt": "p", "chosen": "c"}'], 1, "missing field 'rejected'"),
    "empty prompt": ([_row("a"), _row(prompt="")], 2, "field 'prompt' is empty"),
    "blank chosen": ([_row(chosen="  ")], 1, "field 'chosen' is empty"),
    "non-string": ([_row("a"), _row("b"), b'{"prompt": "p", "chosen": 5, "rejected": "r"}'], 3,
                   "field 'chosen' must be a string, got int"),
    "not an object": ([b'["p", "c", "r"]'], 1, "expected a JSON object"),
    "duplicate": ([_row("a"), b"", _row("b"), _row("a")], 4, "duplicate of line 1"),
}


@pytest.mark.parametrize("case", list(BAD_FILES))
def test_read_jsonl_errors_name_file_and_line(tmp_path, case):
    lines, lineno, what = BAD_FILES[case]
    path = tmp_path / "bad.jsonl"
    _write_bytes(path, lines)
    with pytest.raises(DataError) as err:
        read_jsonl(path)
    msg = str(err.value)
    assert str(path) in msg
    assert f"line {lineno}:" in msg
    assert what in msg


# --- data_hash and subsets --------------------------------------------------------------------


def test_data_hash_stable_and_order_sensitive(tmp_path):
    triples = _triples(4)
    h = data_hash(triples)
    assert len(h) == 16 and int(h, 16) >= 0
    assert data_hash(_triples(4)) == h
    assert data_hash(read_jsonl(write_jsonl(triples, tmp_path / "p.jsonl"))) == h
    assert data_hash(triples[::-1]) != h
    assert data_hash([*triples[:3], PreferenceTriple("prompt 3", "good answer 3", "bad 3")]) != h  # category counts
    reference = json.dumps([t.to_dict() for t in triples], sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    assert h == hashlib.sha256(reference.encode()).hexdigest()[:16]


def test_subsets_are_nested_and_deterministic():
    triples = _triples(300)
    s = subsets(triples, [25, 100, 250], seed=3)
    assert [len(v) for v in s.values()] == [25, 100, 250]
    assert s[100][:25] == s[25] and s[250][:100] == s[100]
    assert len(set(s[250])) == 250
    assert subsets(triples, [100], seed=3)[100] == s[100]
    assert subsets(triples, [100], seed=4)[100] != s[100]
    assert s[250] != triples[:250]  # actually shuffled
    with pytest.raises(DataError, match="n=301 .* only 300 are available"):
        subsets(triples, [301])
    for bad in (0, -1, 2.5, True):
        with pytest.raises(DataError, match="positive integer"):
            subsets(triples, [bad])


# --- load_preferences ---------------------------------------------------------------------------


def test_load_local_jsonl_subsets_and_length_filter(tmp_path):
    triples = _triples(120)
    path = write_jsonl(triples, tmp_path / "prefs.jsonl")
    assert load_preferences(str(path)) == triples  # n=None keeps the source order
    small, big = load_preferences(str(path), n=25, seed=1), load_preferences(str(path), n=100, seed=1)
    assert big[:25] == small
    assert big == subsets(triples, [100], seed=1)[100]
    with pytest.raises(DataError, match="n=500 .* only 120"):
        load_preferences(str(path), n=500)
    limit = len("prompt 10") + len("good answer 10") - 1  # keeps i < 10 only
    assert load_preferences(str(path), max_chars=limit) == triples[:10]
    with pytest.raises(DataError, match="only 10"):
        load_preferences(str(path), max_chars=limit, n=11)
    with pytest.raises(DataError, match="no usable preference triples"):
        load_preferences(str(path), max_chars=5)


def test_load_missing_or_unsupported_path(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_preferences(str(tmp_path / "nope.jsonl"))
    (tmp_path / "prefs.csv").write_text("prompt,chosen,rejected\n")
    with pytest.raises(DataError, match="neither a .jsonl file nor"):
        load_preferences(str(tmp_path / "prefs.csv"))
    (tmp_path / "empty_dir").mkdir()
    with pytest.raises(DataError, match="not one written by Dataset.save_to_disk"):
        load_preferences(str(tmp_path / "empty_dir"))


def _msgs(prompt: str, reply: str, system: str | None = None) -> list[dict]:
    head = [{"role": "system", "content": system}] if system else []
    return [*head, {"role": "user", "content": prompt}, {"role": "assistant", "content": reply}]


def _ultrafeedback_rows() -> list[dict]:
    rows = []
    for i in range(6):
        prompt = f"How do I fold shirt {i}?"
        chosen, rejected = _msgs(prompt, f"1. Lay it flat. 2. Fold {i}."), _msgs(prompt, "Whatever.", system="Be brief")
        rows.append({"prompt": prompt, "prompt_id": f"id{i}", "chosen": chosen, "rejected": rejected,
                     "messages": chosen, "score_chosen": 8.0, "score_rejected": 2.5})
    return rows


def test_load_ultrafeedback_schema_from_disk(tmp_path):
    folder = tmp_path / "uf"
    datasets.Dataset.from_list(_ultrafeedback_rows()).save_to_disk(str(folder))
    triples = load_preferences(str(folder))
    assert len(triples) == 6
    assert triples[2] == PreferenceTriple(
        "How do I fold shirt 2?", "1. Lay it flat. 2. Fold 2.", "Whatever.",
        meta={"prompt_id": "id2", "score_chosen": 8.0, "score_rejected": 2.5},
    )
    assert load_preferences(str(folder), n=3, seed=0) == subsets(triples, [3], seed=0)[3]


def test_load_ultrafeedback_datasetdict_splits_and_multi_turn(tmp_path):
    rows = _ultrafeedback_rows()
    multi = _msgs("Hi", "Hello!") + _msgs("And a joke?", "Knock knock.")
    rows[0] = {**rows[0], "chosen": multi, "rejected": [*multi[:3], {"role": "assistant", "content": "No."}]}
    folder = tmp_path / "uf_dict"
    datasets.DatasetDict({"train_prefs": datasets.Dataset.from_list(rows),
                          "test_prefs": datasets.Dataset.from_list(rows[3:])}).save_to_disk(str(folder))
    with pytest.warns(UserWarning, match=r"skipped 1 of 6 rows \(multi-turn dialogue: 1\)"):
        train = load_preferences(str(folder), split="train")
    assert [t.prompt for t in train] == [f"How do I fold shirt {i}?" for i in range(1, 6)]
    assert len(load_preferences(str(folder), split="test_prefs")) == 3
    with pytest.raises(DataError, match=r"splits \['train_prefs', 'test_prefs'\], not 'validation'"):
        load_preferences(str(folder), split="validation")


def test_load_hh_rlhf_schema_from_disk(tmp_path):
    def dialog(*turns: str) -> str:
        return "".join(f"\n\n{'Human' if i % 2 == 0 else 'Assistant'}: {t}" for i, t in enumerate(turns))

    rows = [
        {"chosen": dialog("What is 2+2?", "It is 4."), "rejected": dialog("What is 2+2?", "Five, obviously.")},
        {"chosen": dialog("Hi", "Hello!", "Tell me a joke", "Knock knock."),
         "rejected": dialog("Hi", "Hello!", "Tell me a joke", "No.")},  # multi-turn: skipped
        {"chosen": dialog("Name a colour", "Blue."), "rejected": dialog("Name a fruit", "Pear.")},  # prefixes differ
        {"chosen": dialog("Say yes", "Yes."), "rejected": dialog("Say yes", "")},  # empty response
        {"chosen": dialog("Capital of France?", "Paris."), "rejected": dialog("Capital of France?", "Rome.")},
    ]
    folder = tmp_path / "hh"
    datasets.Dataset.from_list(rows).save_to_disk(str(folder))
    with pytest.warns(UserWarning, match="skipped 3 of 5 rows") as record:
        triples = load_preferences(str(folder))
    message = str(record[0].message)
    assert "multi-turn dialogue: 1" in message and "field 'rejected' is empty: 1" in message
    assert triples == [PreferenceTriple("What is 2+2?", "It is 4.", "Five, obviously."),
                       PreferenceTriple("Capital of France?", "Paris.", "Rome.")]


def test_load_flat_schema_and_unknown_columns(tmp_path):
    flat = [{"prompt": f"p{i}", "chosen": "good", "rejected": "bad", "category": "chat"} for i in range(3)]
    datasets.Dataset.from_list(flat).save_to_disk(str(tmp_path / "flat"))
    assert load_preferences(str(tmp_path / "flat")) == [PreferenceTriple(f"p{i}", "good", "bad", "chat") for i in range(3)]
    datasets.Dataset.from_list([{"instruction": "p", "output": "o"}]).save_to_disk(str(tmp_path / "alpaca"))
    with pytest.raises(DataError, match=r"columns \['instruction', 'output'\], missing \['chosen', 'rejected'\]"):
        load_preferences(str(tmp_path / "alpaca"))


@pytest.fixture
def offline_hub(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf" / "datasets"))
    return tmp_path


@pytest.mark.parametrize(("name", "repo"), [("ultrafeedback", "HuggingFaceH4/ultrafeedback_binarized"),
                                            ("dspa-lite-tests/no-such-dataset", "dspa-lite-tests/no-such-dataset")])
def test_unreachable_hub_gives_one_clear_error(offline_hub, name, repo):
    offline_before = datasets.config.HF_HUB_OFFLINE
    start = time.perf_counter()
    with pytest.raises(DataError) as err:
        load_preferences(name)
    assert time.perf_counter() - start < 10, "offline mode was not honoured: datasets went to the network"
    msg = str(err.value)
    for part in (repr(name), repo, "could not be reached", "HF_HUB_OFFLINE", "no network", ".jsonl", "save_to_disk"):
        assert part in msg, f"{part!r} missing from: {msg}"
    assert err.value.__cause__ is None and err.value.__suppress_context__
    assert datasets.config.HF_HUB_OFFLINE == offline_before  # the switch was undone
    if name == "ultrafeedback":
        assert "train_prefs" in msg
