r"""Preference triples (prompt, chosen, rejected): the type, JSONL files, ``datasets`` loaders.

DSPA fits its map from preference triples (Wedgwood et al. 2026, arXiv 2603.21461).
:func:`load_preferences` returns them as :class:`PreferenceTriple` from:

- ``"ultrafeedback"``: ``HuggingFaceH4/ultrafeedback_binarized`` (``"train"``/``"test"`` map onto its
  ``train_prefs``/``test_prefs``): the standard binarised UltraFeedback of DPO work (Zephyr was
  trained on it), with a fixed held-out split and chat-message lists for chosen/rejected, so the
  response is exactly the last assistant message. ``argilla/ultrafeedback-binarized-preferences-cleaned``
  (re-binarised by mean rating, fixing a scoring bug; split ``train``) has the same columns: pass its id.
- ``"hh-rlhf"``: ``Anthropic/hh-rlhf``, transcripts ``"\n\nHuman: ...\n\nAssistant: ..."``; the prompt
  is the shared prefix up to the last ``"\n\nAssistant:"``. **Single-turn dialogues only**: every model
  here sees a prompt as one user message (``generation.format_prompts``), which a pasted multi-turn transcript is not.
- a ``.jsonl`` file (:func:`read_jsonl`: strict, errors name file and line), or a ``save_to_disk``
  folder in either schema above or flat prompt/chosen/rejected strings; else a hub dataset id.

Dataset rows that cannot form a triple (empty text, multi-turn, chosen == rejected, duplicates) are
skipped and counted in one warning. ``datasets`` reads ``HF_HUB_OFFLINE``/``HF_DATASETS_OFFLINE`` at
import only; notebooks set them later, so each call re-reads them (only ever switching offline on).
An unreachable hub gives one :class:`DataError`, at once when offline, else after ``datasets`` retries.
"""

from __future__ import annotations

import json
import os
import random
import warnings
from collections import Counter
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from ..method.checks import check_input_file, check_triple
from ..method.files import atomic_write
from ..method.triples import REQUIRED, DataError, PreferenceTriple, as_triples, data_hash
from .hub import hub_env

__all__ = ["HUB_IDS", "DataError", "PreferenceTriple", "data_hash", "load_preferences", "read_jsonl",
           "subsets", "write_jsonl"]

HUB_IDS = {"ultrafeedback": "HuggingFaceH4/ultrafeedback_binarized", "hh-rlhf": "Anthropic/hh-rlhf"}
_SPLIT_ALIASES = {"train": "train_prefs", "test": "test_prefs"}  # UltraFeedback's preference splits
_HUMAN, _ASSISTANT = "\n\nHuman:", "\n\nAssistant:"
_LOCAL_HINT = ("To use local data instead, pass load_preferences a path: a .jsonl file of "
               '{"prompt", "chosen", "rejected"} rows (see write_jsonl) or a folder written by Dataset.save_to_disk.')


def write_jsonl(triples: Iterable[PreferenceTriple | Mapping], path: str | os.PathLike) -> Path:
    """Write UTF-8 JSONL atomically (a temp file in the same folder, then ``os.replace``); no duplicates."""
    path, rows = Path(path), as_triples(triples)
    seen: dict[tuple[str, str, str], int] = {}
    for i, t in enumerate(rows):
        if (first := seen.setdefault((t.prompt, t.chosen, t.rejected), i)) != i:
            raise DataError(f"not writing {path}: triple {i} duplicates triple {first} (same prompt, chosen, rejected)")
    return atomic_write(path, "".join(json.dumps(t.to_dict(), ensure_ascii=False) + "\n" for t in rows))


def read_jsonl(path: str | os.PathLike) -> list[PreferenceTriple]:
    """Read a JSONL file of triples; any bad row raises :class:`DataError` naming the file and line.

    Lines are split on ``\\n`` bytes and decoded one by one, so an invalid byte is reported at its
    line and a U+2028 inside a string (legal JSON) does not split a row. Blank lines are skipped; a row whose
    chosen equals its rejected is an error, as in :func:`load_preferences`. An empty file gives ``[]``.
    """
    path, triples, seen = check_input_file(path, "preference file"), [], {}
    for lineno, line in enumerate(path.read_bytes().split(b"\n"), start=1):
        where = f"{path} line {lineno}"
        try:
            text = line.decode("utf-8-sig" if lineno == 1 else "utf-8")
        except UnicodeDecodeError as e:
            bad = line[e.start:e.start + 4]
            raise DataError(f"{where}: invalid UTF-8 at byte {e.start} of the line ({bad!r})") from None
        if not text.strip():
            continue
        try:
            t = check_triple(PreferenceTriple.from_dict(json.loads(text)))
        except json.JSONDecodeError as e:
            raise DataError(f"{where}: invalid JSON ({e.msg} at column {e.colno})") from None
        except DataError as e:
            raise DataError(f"{where}: {e}") from None
        if (first := seen.setdefault((t.prompt, t.chosen, t.rejected), lineno)) != lineno:
            raise DataError(f"{where}: duplicate of line {first} (same prompt, chosen and rejected)")
        triples.append(t)
    return triples


def subsets(triples: Iterable[PreferenceTriple], sizes: Iterable[int], seed: int = 0) -> dict[int, list[PreferenceTriple]]:
    """Nested random subsets: one seeded permutation, then its first ``n`` for each size.

    With one seed the n=25 subset is a prefix of the n=100 one: a data-efficiency curve adds data.

    >>> data = [PreferenceTriple(f"p{i}", "good", "bad") for i in range(10)]
    >>> s = subsets(data, [2, 5], seed=0)
    >>> s[5][:2] == s[2]
    True
    """
    triples = list(triples)
    order = list(range(len(triples)))
    random.Random(seed).shuffle(order)  # Random(seed).shuffle gives the same order on every platform
    out = {}
    for n in sizes:
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise DataError(f"subset size must be a positive integer, got {n!r}")
        if n > len(triples):
            raise DataError(f"asked for n={n} triples but only {len(triples)} are available (after any filtering)")
        out[n] = [triples[i] for i in order[:n]]
    return out


def _from_messages(prompt: Any, chosen: list, rejected: list) -> tuple[str, str, str]:
    last = []  # (index, content) of the last assistant message of chosen, then of rejected
    for column, msgs in (("chosen", chosen), ("rejected", rejected)):
        if not (idx := [i for i, m in enumerate(msgs) if isinstance(m, Mapping) and m.get("role") == "assistant"]):
            raise DataError(f"no assistant message in {column}")
        last.append((idx[-1], msgs[idx[-1]].get("content") or ""))
    (i, good), (_, bad) = last
    users = [m.get("content") for m in chosen[:i] if isinstance(m, Mapping) and m.get("role") == "user"]
    if len(users) > 1:
        raise DataError("multi-turn dialogue")
    if not (isinstance(prompt, str) and prompt.strip()):  # no prompt column: the user turn is the prompt
        prompt = users[0] if users else ""  # "" is then reported as an empty prompt
    return prompt, good, bad


def _from_transcripts(chosen: str, rejected: str) -> tuple[str, str, str]:
    cut_c, cut_r = chosen.rfind(_ASSISTANT), rejected.rfind(_ASSISTANT)
    if cut_c < 0 or cut_r < 0:
        raise DataError("no '\\n\\nAssistant:' turn in a transcript")
    prefix = chosen[:cut_c]
    if prefix != rejected[:cut_r]:
        raise DataError("chosen and rejected transcripts differ before the last assistant turn")
    if prefix.count(_HUMAN) != 1 or _ASSISTANT in prefix:
        raise DataError("multi-turn dialogue")
    prompt = prefix.split(_HUMAN, 1)[1].strip()
    return prompt, chosen[cut_c + len(_ASSISTANT):].strip(), rejected[cut_r + len(_ASSISTANT):].strip()


def _row_to_triple(row: Mapping[str, Any]) -> PreferenceTriple:
    prompt, chosen, rejected = row.get("prompt"), row["chosen"], row["rejected"]
    if isinstance(chosen, list) and isinstance(rejected, list):
        prompt, chosen, rejected = _from_messages(prompt, chosen, rejected)
    elif isinstance(chosen, str) and isinstance(rejected, str) and not isinstance(prompt, str):
        prompt, chosen, rejected = _from_transcripts(chosen, rejected)
    elif not (isinstance(chosen, str) and isinstance(rejected, str)):
        raise DataError("chosen/rejected are neither strings nor message lists")
    # Scalar columns (UltraFeedback's prompt_id and scores, Argilla's ratings and models) travel as meta.
    meta = {k: v for k, v in row.items()
            if k not in (*REQUIRED, "category") and isinstance(v, (str, int, float, bool))}
    category = row.get("category") if isinstance(row.get("category"), str) else None
    return check_triple(PreferenceTriple(prompt, chosen, rejected, category, meta or None))


def _triples_from_dataset(ds: Any, source: str) -> list[PreferenceTriple]:
    if missing := [c for c in ("chosen", "rejected") if c not in ds.column_names]:
        raise DataError(f"{source} has columns {ds.column_names}, missing {missing}: expected prompt/chosen/"
                        "rejected (strings or chat-message lists) or HH-RLHF chosen/rejected transcripts")
    if "messages" in ds.column_names:  # UltraFeedback's third copy of the texts: don't read it
        ds = ds.remove_columns(["messages"])
    triples, seen, skipped = [], set(), Counter()
    for row in ds:
        try:
            t = _row_to_triple(row)
        except DataError as why:  # the reason, without its explanation in brackets, is counted
            skipped[str(why).split(" (")[0]] += 1
            continue
        if (key := (t.prompt, t.chosen, t.rejected)) in seen:
            skipped["duplicate"] += 1
            continue
        seen.add(key)
        triples.append(t)
    if skipped:
        reasons = ", ".join(f"{k}: {v}" for k, v in skipped.most_common())
        warnings.warn(f"{source}: skipped {sum(skipped.values())} of {len(ds)} rows ({reasons})", stacklevel=4)
    return triples


def _load_hub(repo: str, split: str, name: str) -> list[PreferenceTriple]:
    import datasets
    what = f"could not load preference dataset {name!r} ({repo}, split {split!r})"
    with hub_env(datasets=True):
        try:  # HF_DATASETS_CACHE is also read at import only: honour a later setting too
            ds = datasets.load_dataset(repo, split=split, cache_dir=os.environ.get("HF_DATASETS_CACHE") or None)
        except (ConnectionError, TimeoutError, OSError, datasets.exceptions.DatasetsError) as e:
            raise DataError(
                f"{what}: the Hugging Face Hub could not be reached (or does not have it) and there is no cached "
                "copy. HF_HUB_OFFLINE=1 / HF_DATASETS_OFFLINE=1 or no network access may be the cause; a gated "
                f"dataset also needs `hf auth login`. {_LOCAL_HINT} [datasets said: {type(e).__name__}: {e!s:.200}]"
            ) from None
        except ValueError as e:  # an unknown split or an invalid repo id
            raise DataError(f"{what}: {e}. {_LOCAL_HINT}") from None
    return _triples_from_dataset(ds, f"{repo}[{split}]")


def _load_local(path: Path, split: str) -> list[PreferenceTriple]:
    if path.is_file():
        if path.suffix != ".jsonl":
            raise DataError(f"{path} is neither a .jsonl file nor a Dataset.save_to_disk folder")
        return read_jsonl(path)
    import datasets
    try:
        ds = datasets.load_from_disk(str(path))
    except (FileNotFoundError, ValueError) as e:
        raise DataError(f"{path} is a folder but not one written by Dataset.save_to_disk ({e})") from None
    if isinstance(ds, datasets.DatasetDict):
        key = split if split in ds else _SPLIT_ALIASES.get(split)
        if key not in ds:
            raise DataError(f"{path} has splits {list(ds)}, not {split!r}: pass split= one of them")
        ds = ds[key]
    return _triples_from_dataset(ds, str(path))


def load_preferences(name: str, split: str = "train", n: int | None = None, seed: int = 0,
                     max_chars: int | None = None) -> list[PreferenceTriple]:
    """Load preference triples from ``"ultrafeedback"``, ``"hh-rlhf"``, a local path or a hub id.

    Args:
        name: a key of :data:`HUB_IDS`, a ``.jsonl`` file (``split`` is then ignored), a
            ``save_to_disk`` folder, or a hub dataset id.
        max_chars: drop triples whose ``len(prompt) + max(len(chosen), len(rejected))`` exceeds it.
        n, seed: a seeded random subset of ``n`` triples, nested across ``n`` for one seed and equal
            to ``subsets(all, [n], seed)[n]``; ``n=None`` keeps all, in the source's order.
    """
    path = Path(name).expanduser()
    if path.exists():
        triples, source = _load_local(path, split), str(path)
    elif name.startswith((".", "/", "~")) or name.endswith((".jsonl", ".json")):
        raise DataError(f"preference file {path} does not exist (working directory: {Path.cwd()})")
    else:
        repo = HUB_IDS.get(name, name)
        split = _SPLIT_ALIASES.get(split, split) if repo == HUB_IDS["ultrafeedback"] else split
        triples, source = _load_hub(repo, split, name), f"{repo}[{split}]"
    if max_chars is not None:
        if not isinstance(max_chars, int) or max_chars < 1:
            raise DataError(f"max_chars must be a positive integer or None, got {max_chars!r}")
        kept = [t for t in triples if len(t.prompt) + max(len(t.chosen), len(t.rejected)) <= max_chars]
        triples, source = kept, f"{source} ({len(kept)} of {len(triples)} triples within max_chars={max_chars})"
    if not triples:
        raise DataError(f"no usable preference triples in {source}")
    return triples if n is None else subsets(triples, [n], seed)[n]
