"""Validation shared by the API and the command line: one function per concept, each raising a named error whose
one-line message gives what is wrong, the value, and what to do.

``fit_cdmap``, ``DSPA``, ``generate``, the data readers and ``dspa-lite`` call the same functions, so a value the
API refuses is refused by the command line with the same words (the command line names its flag, e.g. ``--k``),
and before any model, world or map is loaded. The error types say which kind of input was wrong; the command
line turns each kind into its own exit code (README, "Command line").
"""

from __future__ import annotations

import math
import os
import tempfile
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path

import torch

from .triples import DataError, PreferenceTriple, as_triples

__all__ = ["ALPHA_MAX", "ArgumentError", "ContextWarning", "DataError", "DegenerateMapError", "NonFiniteError",
           "OutputError", "check_alpha", "check_choice", "check_context", "check_finite_weights", "check_float",
           "check_input_file", "check_int", "check_k", "check_known_tokens", "check_names", "check_output_folder",
           "check_prompts", "check_text_length", "check_triple", "check_triples", "check_writable_file", "model_context",
           "nonfinite_weights", "strict_json"]

ALPHA_MAX = 100.0  # (1 + alpha) z: beyond this the edit swamps the residual stream and the text degenerates


class ArgumentError(ValueError):
    """An argument's value is outside what it may be (a count below 1, ``alpha`` not finite, an unknown name)."""


class OutputError(FileExistsError):
    """An output path is taken (and replacing it was not asked for) or cannot be written."""


class NonFiniteError(FloatingPointError):
    """NaN or inf in a model's or an SAE's weights, or in the activations they produce."""


class DegenerateMapError(DataError):
    """A fit produced a map that steers nothing (every entry zero): too little data, or text the model cannot read."""


class ContextWarning(UserWarning):
    """A prompt is longer than the model's context."""


def check_int(value, name: str, low: int = 1, high: int | None = None, hint: str = "") -> int:
    """``value`` as an int in ``low..high`` (bools and floats refused), else :class:`ArgumentError`."""
    rng = f"between {low} and {high}" if high is not None else f">= {low}"
    if isinstance(value, bool) or not isinstance(value, int) or value < low or (high is not None and value > high):
        raise ArgumentError(f"{name}={value!r} is invalid: it must be an integer {rng}{hint}")
    return value


def check_float(value, name: str, low: float = 0.0, high: float = math.inf, *, above_low: bool = False,
                hint: str = "") -> float:
    """``value`` as a finite float in ``[low, high]`` (``(low, high]`` with ``above_low``), else :class:`ArgumentError`."""
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or value < low or value > high or (above_low and value == low):
        rng = f"{'>' if above_low else '>='} {low:g}" + (f" and <= {high:g}" if high < math.inf else "")
        raise ArgumentError(f"{name}={value!r} is invalid: it must be a finite number {rng}{hint}")
    return float(value)


def check_k(k, d_sae: int, name: str = "k") -> int:
    """``k``, the latents per set, in ``0..d_sae`` (``0`` steers nothing)."""
    if isinstance(k, bool) or not isinstance(k, int) or not 0 <= k <= d_sae:
        raise ArgumentError(f"{name}={k!r} must be between 0 and d_sae={d_sae} (an integer: the latents edited per "
                            "set; 0 steers nothing)")
    return k


def check_alpha(alpha, name: str = "alpha") -> float:
    """``alpha``, the augmentation ``z -> (1 + alpha) z``: a finite number in ``0..ALPHA_MAX``."""
    ok = isinstance(alpha, int | float) and not isinstance(alpha, bool) and math.isfinite(alpha)
    if not ok or not 0 <= alpha <= ALPHA_MAX:
        raise ArgumentError(f"{name}={alpha!r} is invalid: active K_pos latents are scaled by (1 + alpha), so it must "
                            f"be a finite number between 0 and {ALPHA_MAX:g} (the toy world's default is 6; to "
                            "remove latents use mode 'ablate' instead of a negative alpha)")
    return float(alpha)


def check_choice(value, choices: Sequence[str], name: str) -> str:
    if value not in choices:
        raise ArgumentError(f"{name}={value!r} is invalid: choose one of {', '.join(choices)}")
    return value


def check_names(text: str, choices: Sequence[str], name: str) -> list[str]:
    """A comma-separated list of distinct names from ``choices`` (at least one)."""
    names = [n.strip() for n in str(text).split(",") if n.strip()]
    if not names:
        raise ArgumentError(f"{name}={text!r} names nothing: list one or more of {', '.join(choices)}, "
                            "separated by commas")
    if unknown := [n for n in names if n not in choices]:
        raise ArgumentError(f"{name}={text!r}: unknown name(s) {', '.join(unknown)}; choose from {', '.join(choices)}")
    if len(set(names)) < len(names):
        raise ArgumentError(f"{name}={text!r} names a method twice: list each once")
    return names


def check_prompts(prompts: Sequence[str]) -> list[str]:
    """A list of non-empty prompt strings (a single string is refused: wrap it in a list)."""
    if isinstance(prompts, str):
        raise TypeError(f"prompts must be a list of strings, got the single string {prompts[:40]!r}: wrap it in [...]")
    prompts = list(prompts)
    for i, p in enumerate(prompts):
        if not isinstance(p, str) or not p.strip():
            raise ArgumentError(f"prompt {i} is {p!r}: every prompt must be a non-empty string")
    return prompts


def check_triple(t: PreferenceTriple, where: str = "") -> PreferenceTriple:
    """A triple that can teach a preference: its chosen and rejected responses differ."""
    if t.chosen.strip() == t.rejected.strip():
        raise DataError(f"{where + ': ' if where else ''}chosen == rejected (both {t.chosen[:40]!r}), so it says "
                        "nothing about which response is preferred; drop it or fix the data")
    return t


def check_triples(triples: Iterable, source: str, min_n: int = 1) -> list[PreferenceTriple]:
    """At least ``min_n`` usable triples from ``source`` (a file name, or the caller's description)."""
    triples = as_triples(triples)
    if not triples:
        raise DataError(f"{source} holds no preference triples: give a JSONL file with one "
                        '{"prompt", "chosen", "rejected"} object per line')
    for i, t in enumerate(triples):
        check_triple(t, f"{source}, triple {i}")
    if len(triples) < min_n:
        raise DataError(f"{source} holds {len(triples)} triple(s), fewer than the {min_n} the map needs (a prompt "
                        f"latent must be active in at least n_min={min_n} triples): use more triples, ideally hundreds")
    return triples


def check_input_file(path, what: str) -> Path:
    """An existing, readable regular file."""
    p = Path(path).expanduser()
    if not p.exists():
        raise DataError(f"{what} {p} does not exist (working directory: {Path.cwd()})")
    if not p.is_file():
        raise DataError(f"{what} {p} is a folder, not a file: give the path of the file itself")
    if not os.access(p, os.R_OK):
        raise DataError(f"{what} {p} is not readable: check its permissions")
    return p


def _probe_writable(folder: Path, what: str, hint: str) -> None:
    """Raise :class:`OutputError` unless a file can be created in ``folder`` (or the nearest existing ancestor)."""
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise OutputError(f"cannot write {what}: {existing} is a file, not a folder; {hint}")
    try:
        fd, probe = tempfile.mkstemp(prefix=".dspa-write-test-", dir=existing)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise OutputError(f"cannot write {what}: {existing} is not writable ({e.strerror or e}); {hint}") from None


def check_output_folder(path, *, overwrite: bool, owned: Iterable[str] | None, what: str,
                        overwrite_hint: str = "pass overwrite=True") -> Path:
    """A folder that may be written: new or empty, or (with ``overwrite``) holding only the ``owned`` files (any
    files when ``owned`` is ``None``); in a writable place. Checked before the work that fills it, so nothing is lost
    at save time."""
    target = Path(path).expanduser()
    if target.exists() and not target.is_dir():
        raise OutputError(f"{target} is a file, not a folder: choose a new folder for {what}")
    contents = {p.name for p in target.iterdir()} if target.is_dir() else set()
    if owned is not None and (foreign := sorted(contents - set(owned))):
        raise OutputError(f"refusing to replace {target}: it holds files other than {what} ({', '.join(foreign[:3])}); "
                          "choose a new or empty folder")
    if contents and not overwrite:
        held = f"already holds {what}" if owned is not None else "exists and is not empty"
        raise OutputError(f"{target} {held}: {overwrite_hint} to replace it, or choose another folder")
    _probe_writable(target.parent, what, "choose a folder you can write")  # written beside, then renamed
    return target


def check_writable_file(path, what: str) -> Path:
    """A file that can be appended to: writable if it exists, else creatable."""
    p = Path(path).expanduser()
    if p.is_dir():
        raise OutputError(f"{what} {p} is a folder: give a file name")
    if p.exists():
        try:
            with open(p, "ab"):
                pass
        except OSError as e:
            raise OutputError(f"{what} {p} is not writable ({e.strerror or e}): fix its permissions or choose "
                              "another file") from None
        return p
    _probe_writable(p.parent, f"{what} {p}", "choose another file")
    return p


def nonfinite_weights(module: torch.nn.Module) -> list[tuple[str, int]]:
    """``(name, count)`` of every floating-point parameter or buffer of ``module`` holding NaN or inf."""
    out = []
    for name, t in [*module.named_parameters(), *module.named_buffers()]:
        if t.is_floating_point() and t.device.type != "meta" and not bool(torch.isfinite(t).all()):  # meta: offloaded
            out.append((name, int((~torch.isfinite(t)).sum())))
    return out


def check_finite_weights(module: torch.nn.Module, what: str) -> None:
    """Raise :class:`NonFiniteError` if any weight of ``module`` is NaN or inf (checked at load and before a fit)."""
    if bad := nonfinite_weights(module):
        names = ", ".join(f"{n} ({c})" for n, c in bad[:3]) + (f" and {len(bad) - 3} more" if len(bad) > 3 else "")
        raise NonFiniteError(f"{what} has NaN/inf weights: {names}; its file is corrupt or it was changed in "
                             "memory: reload it (or re-download it)")


def model_context(model) -> int | None:
    """The model's context in tokens (``config.max_position_embeddings``), if it says."""
    n = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    return n if isinstance(n, int) and n > 0 else None


def check_context(lengths: Sequence[int], context: int | None, what: str = "prompts", *, strict: bool = False) -> None:
    """Inputs (token counts, in order) longer than the model's ``context``: a :class:`DataError` with ``strict``
    (fitting: a row that long would also cost memory quadratic in its length), else one :class:`ContextWarning`."""
    if context is None or not (long := [(i, n) for i, n in enumerate(lengths) if n > context]):
        return
    i, n = max(long, key=lambda x: x[1])
    message = (f"{what}: {len(long)} of {len(lengths)} are longer than the model's context of {context} tokens (the "
               f"longest, number {i}, has {n} tokens)")
    if strict:
        raise DataError(message)
    warnings.warn(f"{message}: the model never saw positions that far, so expect degraded text; shorten them",
                  ContextWarning, stacklevel=3)


def check_text_length(lengths: Sequence[int], context: int | None, tokenizer, what: str) -> None:
    """Before tokenizing: a text of more characters than ``context`` times the longest token of the vocabulary is
    surely longer than the context, so a huge row is a :class:`DataError` at once, not after a long tokenization."""
    vocab = getattr(tokenizer, "get_vocab", None)
    if context is None or vocab is None or not (longest := max(map(len, vocab()), default=0)):
        return
    if long := [(i, n) for i, n in enumerate(lengths) if n > context * longest]:
        i, n = max(long, key=lambda x: x[1])
        raise DataError(f"{what}: {len(long)} of {len(lengths)} have more than {context * longest} characters, so "
                        f"surely more tokens than the model's context of {context} tokens (the longest, number {i}, "
                        f"has {n} characters)")


def check_known_tokens(rows: Sequence[Sequence[int]], unk_id: int | None, source: str, max_share: float = 0.5) -> None:
    """Refuse text that is mostly unknown words: more than ``max_share`` of the tokens of ``rows`` are ``unk_id``
    (a word-level tokenizer's ``<unk>``), so every input would look alike to the model."""
    total = sum(len(r) for r in rows)
    if unk_id is None or not total:
        return
    unknown = sum(t == unk_id for r in rows for t in r)
    if unknown > max_share * total:
        raise DataError(f"{source}: {unknown} of {total} tokens ({unknown / total:.0%}) are words the tokenizer does "
                        "not know (its unknown token), so the model cannot tell the texts apart; use text in the "
                        "model's vocabulary (for the toy world: the words of toyworld.language.vocabulary())")


NAN_REASONS = (("standard_error", "a standard error needs at least two values (seeds, or judged items)"),
               ("stderr", "a standard error needs at least two values (seeds, or judged items)"),
               ("position_a_rate", "no verdict picked A or B"), ("win_rate", "no item had a readable verdict"),
               ("score", "no item had a readable score"))


def strict_json(obj, path: str = "", reasons: dict | None = None):
    """``obj`` as strict JSON data: NaN/inf become ``None`` and, at the top level, ``"null_reasons"`` maps each
    one's path to its value and why it is undefined (tensors and numpy scalars become floats)."""
    top, reasons = reasons is None, {} if reasons is None else reasons
    if isinstance(obj, dict):
        out = {k: strict_json(v, f"{path}.{k}" if path else str(k), reasons) for k, v in obj.items()}
    elif isinstance(obj, list | tuple):
        out = [strict_json(v, f"{path}[{i}]", reasons) for i, v in enumerate(obj)]
    else:
        out = obj if isinstance(obj, str | int | float | bool | type(None)) else float(obj)
        if isinstance(out, float) and not math.isfinite(out):
            reasons[path] = f"{out} ({next((r for key, r in NAN_REASONS if key in path), 'not a finite number')})"
            out = None
    if top and reasons and isinstance(out, dict):
        out["null_reasons"] = reasons
    return out
