"""SAE features of prompts and responses: ``u(x)`` at ``l_in`` and ``v(x, y)`` at ``l_out``.

DSPA (arXiv 2603.21461) conditions on *prompt* features and edits *generation-control*
features. With causal attention one teacher-forced pass over ``x + y`` yields both the prompt's
residuals (which do not see ``y``) and the response's, so the features of a triple cost two
forward passes (``x + y+`` and ``x + y-``), each stopped right after ``l_out``.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from jaxtyping import Float, Int
from torch import Tensor
from tqdm.auto import tqdm

from .checks import (
    DataError,
    NonFiniteError,
    check_context,
    check_known_tokens,
    check_text_length,
    model_context,
    nonfinite_weights,
)
from .generation import format_prompts
from .hooks import forward_until
from .saes import sae_encode

__all__ = ["POOLINGS", "Encoded", "TripleFeatures", "batches", "check_finite_residual", "encode_texts", "encode_segments",
           "gather_positions", "pool", "pool_segments", "prompt_features", "residual_batches", "residual_rows",
           "triple_features", "with_responses"]

POOLINGS = ("binary", "mean", "max", "last")


@dataclass
class Encoded:
    """Token ids of chat-formatted prompts (+ optional responses) and where each part sits."""

    ids: list[list[int]]
    content: list[list[int]]  # positions of the prompt's own words (no BOS, no chat-template tokens)
    prompt_all: list[list[int]]  # every prompt position but BOS
    response: list[list[int]]  # positions of the response tokens


def encode_texts(tokenizer, prompts: Sequence[str], responses: Sequence[str] | None = None) -> Encoded:
    """Tokenize chat-formatted prompts and find the content and response positions.

    Content positions are the tokens whose character offsets fall inside the user's text in the
    formatted prompt, so template tokens (``<start_of_turn>``, ``user``, ...) are excluded for any
    fast tokenizer. Prompt and response are tokenized separately and concatenated, so no token
    straddles the boundary (:func:`with_responses` appends responses to already encoded prompts).
    """
    texts = format_prompts(tokenizer, prompts)
    bos = tokenizer.bos_token_id
    add_special = [bool(tokenizer.bos_token) and not text.startswith(tokenizer.bos_token) for text in texts]
    if len(set(add_special)) == 1:  # one batched call (the usual case: one template for every prompt)
        encs = tokenizer(texts, add_special_tokens=add_special[0], return_offsets_mapping=True)
        encs = [{k: encs[k][i] for k in ("input_ids", "offset_mapping")} for i in range(len(texts))]
    else:
        encs = [tokenizer(t, add_special_tokens=a, return_offsets_mapping=True) for t, a in zip(texts, add_special)]
    out = Encoded([], [], [], [])
    for i, (p, text, enc) in enumerate(zip(prompts, texts, encs)):
        content_text = p.strip()  # chat templates (Gemma's) trim the message
        start = text.rfind(content_text)
        if start < 0:
            raise ValueError(f"prompt {i} ({p[:40]!r}) does not appear in its chat-formatted text; "
                             "the tokenizer's chat template rewrites it, so its content tokens cannot be found")
        end = start + len(content_text)
        ids = list(enc["input_ids"])
        content = [t for t, (a, b) in enumerate(enc["offset_mapping"]) if a >= start and b <= end and b > a]
        if not content:
            raise ValueError(f"prompt {i} ({p[:40]!r}) has no content tokens after chat formatting")
        out.ids.append(ids)
        out.content.append(content)
        out.prompt_all.append([t for t in range(len(ids)) if ids[t] != bos])
        out.response.append([])
    return out if responses is None else with_responses(tokenizer, out, responses)


def with_responses(tokenizer, prompts: Encoded, responses: Sequence[str]) -> Encoded:
    """Encoded prompts (from :func:`encode_texts`) with one response appended to each, tokenized in one call."""
    if len(responses) != len(prompts.ids):
        raise ValueError(f"{len(prompts.ids)} prompts but {len(responses)} responses")
    out = Encoded([], prompts.content, prompts.prompt_all, [])
    for i, (ids, r_ids) in enumerate(zip(prompts.ids, tokenizer(list(responses), add_special_tokens=False).input_ids)):
        if not r_ids:
            raise ValueError(f"response {i} is empty after tokenization")
        out.ids.append(ids + list(r_ids))
        out.response.append(list(range(len(ids), len(ids) + len(r_ids))))
    return out


def pool(z: Float[Tensor, "n_tokens d_sae"], pooling: str) -> Float[Tensor, " d_sae"]:
    """Pool token features of one prompt: binary "active anywhere" (default), mean, max or last.

    >>> z = torch.tensor([[0.0, 2.0], [1.0, 0.0]])
    >>> pool(z, "binary").tolist(), pool(z, "mean").tolist(), pool(z, "last").tolist()
    ([1.0, 1.0], [0.5, 1.0], [1.0, 0.0])
    """
    if pooling == "binary":
        return (z > 0).any(0).to(z.dtype)
    if pooling == "mean":
        return z.mean(0)
    if pooling == "max":
        return z.max(0).values
    if pooling == "last":
        return z[-1]
    raise ValueError(f"pooling={pooling!r}: choose one of {', '.join(POOLINGS)}")


def gather_positions(h: Float[Tensor, "B T d_model"], positions: Sequence[Sequence[int]]
                     ) -> tuple[Float[Tensor, "N d_model"], Int[Tensor, " N"]]:
    """The residuals at ``positions[j]`` of each row ``j`` of ``h``, stacked, and the row each came from.

    >>> x, seg = gather_positions(torch.arange(12.0).reshape(2, 3, 2), [[0, 2], [1]])
    >>> x.tolist(), seg.tolist()
    ([[0.0, 1.0], [4.0, 5.0], [8.0, 9.0]], [0, 0, 1])
    """
    T, counts = h.shape[1], np.fromiter(map(len, positions), np.int64, len(positions))
    flat = np.concatenate([np.asarray(p, np.int64) + j * T for j, p in enumerate(positions)])
    seg = np.repeat(np.arange(len(positions)), counts)
    return h.reshape(-1, h.shape[-1])[torch.from_numpy(flat).to(h.device)], torch.from_numpy(seg).to(h.device)


def pool_segments(z: Float[Tensor, "N d_sae"], seg: Int[Tensor, " N"], n: int, pooling: str,
                  counts: Int[Tensor, " n"] | None = None) -> Float[Tensor, "n d_sae"]:
    """:func:`pool` of each segment of rows of ``z`` (``seg``: the segment of each row, ascending; every one of the
    ``n`` segments non-empty), in one call for a whole batch. ``counts``: rows per segment, if known (else counted:
    on a GPU a host synchronisation).

    >>> z, seg = torch.tensor([[0.0, 2.0], [1.0, 0.0], [3.0, 0.0]]), torch.tensor([0, 0, 1])
    >>> pool_segments(z, seg, 2, "binary").tolist(), pool_segments(z, seg, 2, "mean").tolist()
    ([[1.0, 1.0], [1.0, 0.0]], [[0.5, 1.0], [3.0, 0.0]])
    """
    zeros = torch.zeros(n, z.shape[-1], dtype=z.dtype, device=z.device)
    if pooling == "binary":
        return zeros.index_add_(0, seg, (z > 0).to(z.dtype)).gt(0).to(z.dtype)
    counts = torch.bincount(seg, minlength=n) if counts is None else counts
    if pooling == "mean":
        return zeros.index_add_(0, seg, z) / counts[:, None].to(z.dtype)
    if pooling == "max":
        return zeros.index_reduce_(0, seg, z, "amax", include_self=False)
    if pooling == "last":
        return z[torch.cumsum(counts, 0) - 1]
    raise ValueError(f"pooling={pooling!r}: choose one of {', '.join(POOLINGS)}")


def batches(rows: Sequence[Sequence[int]], batch_size: int, pad_id: int, device):
    """``(start, ids, mask)`` for each right-padded batch of token-id ``rows``."""
    for b in range(0, len(rows), batch_size):
        chunk = rows[b:b + batch_size]
        lengths = np.fromiter(map(len, chunk), np.int64, len(chunk))
        ids = np.full((len(chunk), int(lengths.max())), pad_id, np.int64)
        for j, r in enumerate(chunk):
            ids[j, :len(r)] = r
        mask = (np.arange(ids.shape[1])[None, :] < lengths[:, None]).astype(np.int64)
        yield b, torch.from_numpy(ids).to(device), torch.from_numpy(mask).to(device)


@torch.no_grad()
def residual_batches(model, tokenizer, enc: Encoded, layers: Sequence[int], batch_size: int = 16, progress=None,
                     check: bool = True) -> Iterator[tuple[int, Tensor, dict[int, Tensor]]]:
    """``(first row, ids, {layer: (B, T, d_model)})`` for each right-padded batch of ``batch_size`` rows of ``enc``:
    one forward pass each, stopped after the last of ``layers``. ``check``: raise :class:`NonFiniteError` on NaN/inf
    residuals (``False``: the caller checks the positions it uses, :func:`check_finite_residual`)."""
    pad = tokenizer.pad_token_id or 0
    for b, ids, mask in batches(enc.ids, batch_size, pad, model.device):
        acts = forward_until(model, list(layers), ids, mask)
        if check:
            for layer, h in acts.items():
                check_finite_residual(h, layer, model)
        yield b, ids, acts
        if progress is not None:
            progress.update(ids.shape[0])


def residual_rows(model, tokenizer, enc: Encoded, layers: Sequence[int], batch_size: int = 16,
                  progress=None) -> Iterator[tuple[int, dict[int, Tensor]]]:
    """The residual stream of every row of ``enc`` at ``layers``: ``(row, {layer: (n_tokens, d_model)})`` in order.

    One batched forward pass per ``batch_size`` rows (:func:`residual_batches`); row ``i``'s tensors are indexed by
    the positions in ``enc`` (``enc.content[i]``, ``enc.response[i]``...). The loop behind the CAA vector and the
    toy world's reports and audits; the features use the batches whole.
    """
    for b, ids, acts in residual_batches(model, tokenizer, enc, layers, batch_size, progress):
        for j in range(ids.shape[0]):
            yield b + j, {layer: h[j, :len(enc.ids[b + j])] for layer, h in acts.items()}


def check_finite_residual(h: Tensor, layer: int, model) -> None:
    """Raise :class:`NonFiniteError` if ``h`` (residuals at ``layer``) holds NaN/inf, naming the likely cause."""
    if torch.isfinite(h.sum()) or torch.isfinite(h).all():  # a finite sum: no NaN/inf (one pass, no bool copy)
        return
    bad = int((~torch.isfinite(h)).sum())
    if weights := nonfinite_weights(model):  # only on failure: name the cause instead of guessing it
        names = ", ".join(f"{n} ({c})" for n, c in weights[:3])
        raise NonFiniteError(f"{bad} NaN/inf values in the residual stream at layer {layer}, because the model's "
                             f"weights hold NaN/inf: {names}; reload the model (its file is corrupt or it was changed)")
    raise NonFiniteError(f"{bad} NaN/inf values in the residual stream at layer {layer} although the weights are "
                         "finite: check the model's dtype (fp16 overflows on Gemma-2; use bfloat16 or float32) and "
                         "any edit hooks on the model")


@dataclass
class TripleFeatures:
    """``U`` prompt features (n_triples, m_in); ``V_pos``/``V_neg`` response features (n_triples, m_out)."""

    U: Float[Tensor, "n_triples m_in"]
    V_pos: Float[Tensor, "n_triples m_out"]
    V_neg: Float[Tensor, "n_triples m_out"]

    @property
    def Delta(self) -> Float[Tensor, "n_triples m_out"]:  # noqa: N802 - the paper's symbol
        return self.V_pos - self.V_neg


@torch.no_grad()
def prompt_features(model, tokenizer, sae_in, l_in: int, prompts: Sequence[str], pooling: str = "binary",
                    exclude_template: bool = True, batch_size: int = 16) -> Float[Tensor, "n m_in"]:
    """``u(x)`` for each prompt: SAE features at ``l_in`` pooled over the prompt's own tokens."""
    enc = encode_texts(tokenizer, prompts)
    positions = enc.content if exclude_template else enc.prompt_all
    out = [encode_segments(model, sae_in, acts[l_in], l_in, positions[b:b + len(ids)], pooling)
           for b, ids, acts in residual_batches(model, tokenizer, enc, [l_in], batch_size, check=False)]
    return torch.cat(out)


def encode_segments(model, sae, h: Float[Tensor, "B T d_model"], layer: int, positions: Sequence[Sequence[int]],
                    pooling: str) -> Float[Tensor, "B d_sae"]:
    """SAE features of ``h`` (a batch's residuals at ``layer``) at each row's ``positions``, pooled per row (fp32,
    on the CPU): one gather, one encode and one segment reduction per batch. NaN/inf residuals there raise."""
    x, seg = gather_positions(h, positions)
    check_finite_residual(x, layer, model)
    return pool_segments(sae_encode(sae, x), seg, len(positions), pooling).float().cpu()


@torch.no_grad()
def triple_features(model, tokenizer, sae_in, sae_out, l_in: int, l_out: int, triples, pooling: str = "binary",
                    exclude_template: bool = True, batch_size: int = 16, progress: bool = False) -> TripleFeatures:
    """``u(x)``, ``v(x, y+)`` and ``v(x, y-)`` for each triple in two passes stopped after ``l_out``."""
    if l_out <= l_in:
        raise ValueError(f"l_out={l_out} must be greater than l_in={l_in}: DSPA conditions on an earlier layer "
                         "and edits a later one")
    prompts = [t.prompt for t in triples]
    U, V = [], {}
    _check_triple_tokens(model, tokenizer, triples)  # huge rows, before tokenizing them
    prompt_enc = encode_texts(tokenizer, prompts)  # formatted and tokenized once for both sides
    encs = {side: with_responses(tokenizer, prompt_enc, [getattr(t, side) for t in triples])
            for side in ("chosen", "rejected")}
    _check_triple_tokens(model, tokenizer, triples, encs)  # before any forward pass
    bar = tqdm(total=2 * len(triples), desc="features", disable=not progress, file=sys.stderr)
    for side, enc in encs.items():
        positions = enc.content if exclude_template else enc.prompt_all
        layers = [l_in, l_out] if side == "chosen" else [l_out]
        V[side] = []
        for b, ids, acts in residual_batches(model, tokenizer, enc, layers, batch_size, bar, check=False):
            rows = slice(b, b + len(ids))
            V[side].append(encode_segments(model, sae_out, acts[l_out], l_out, enc.response[rows], "mean"))
            if side == "chosen":
                U.append(encode_segments(model, sae_in, acts[l_in], l_in, positions[rows], pooling))
    bar.close()
    return TripleFeatures(torch.cat(U), torch.cat(V["chosen"]), torch.cat(V["rejected"]))


def _check_triple_tokens(model, tokenizer, triples, encs: dict[str, Encoded] | None = None) -> None:
    """Every triple fits the model's context, and the text is mostly words the tokenizer knows."""
    context = model_context(model)
    try:
        if encs is None:  # characters only: a lower bound on the tokens, with no tokenizing
            lengths = [len(t.prompt) + max(len(t.chosen), len(t.rejected)) for t in triples]
            check_text_length(lengths, context, tokenizer, "triples (prompt + longer response)")
            return
        for side, enc in encs.items():
            check_context([len(ids) for ids in enc.ids], context, f"triples (prompt + {side} response)", strict=True)
    except DataError as e:
        raise DataError(f"{e}; drop or shorten such triples (load_preferences(..., max_chars=N) drops long "
                        "ones)") from None
    rows = [[ids[t] for t in enc.content[i] + enc.response[i]] for enc in encs.values() for i, ids in enumerate(enc.ids)]
    check_known_tokens(rows, getattr(tokenizer, "unk_token_id", None), "the triples' prompts and responses")
