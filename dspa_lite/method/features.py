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

import torch
from jaxtyping import Bool, Float
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

__all__ = ["POOLINGS", "Encoded", "TripleFeatures", "batches", "encode_texts", "pool", "pool_rows", "prompt_features",
           "residual_rows", "triple_features", "with_responses"]

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


def pool_rows(z: Float[Tensor, "B C d_sae"], valid: Bool[Tensor, "B C"], pooling: str) -> Float[Tensor, "B d_sae"]:
    """:func:`pool` of each row's valid tokens, for a padded batch (every row has at least one valid token).

    >>> z = torch.tensor([[[0.0, 2.0], [1.0, 0.0]], [[3.0, 0.0], [9.0, 9.0]]])
    >>> valid = torch.tensor([[True, True], [True, False]])
    >>> pool_rows(z, valid, "binary").tolist(), pool_rows(z, valid, "last").tolist()
    ([[1.0, 1.0], [1.0, 0.0]], [[1.0, 0.0], [3.0, 0.0]])
    """
    v = valid[:, :, None]
    if pooling == "binary":
        return ((z > 0) & v).any(1).to(z.dtype)
    if pooling == "mean":
        return torch.where(v, z, torch.zeros((), dtype=z.dtype)).sum(1) / valid.sum(1, keepdim=True).to(z.dtype)
    if pooling == "max":
        return torch.where(v, z, torch.full((), float("-inf"), dtype=z.dtype)).max(1).values
    if pooling == "last":
        last = (valid.sum(1) - 1).clamp_min(0)
        return z[torch.arange(z.shape[0], device=z.device), last]
    raise ValueError(f"pooling={pooling!r}: choose one of {', '.join(POOLINGS)}")


def batches(rows: Sequence[Sequence[int]], batch_size: int, pad_id: int, device):
    """``(start, ids, mask)`` for each right-padded batch of token-id ``rows``."""
    for b in range(0, len(rows), batch_size):
        chunk = rows[b:b + batch_size]
        width = max(map(len, chunk))
        ids = torch.tensor([list(r) + [pad_id] * (width - len(r)) for r in chunk], device=device)
        mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in chunk], device=device)
        yield b, ids, mask


@torch.no_grad()
def residual_rows(model, tokenizer, enc: Encoded, layers: Sequence[int], batch_size: int = 16,
                  progress=None) -> Iterator[tuple[int, dict[int, Tensor]]]:
    """The residual stream of every row of ``enc`` at ``layers``: ``(row, {layer: (n_tokens, d_model)})`` in order.

    One batched forward pass per ``batch_size`` rows, stopped after the last of ``layers``; row ``i``'s
    tensors are indexed by the positions in ``enc`` (``enc.content[i]``, ``enc.response[i]``...). The
    one loop behind prompt and response features, the CAA vector, and the toy world's reports and audits.
    """
    pad = tokenizer.pad_token_id or 0
    for b, ids, mask in batches(enc.ids, batch_size, pad, model.device):
        acts = forward_until(model, list(layers), ids, mask)
        for layer, h in acts.items():
            _check_finite(h, layer, model)
        for j in range(ids.shape[0]):
            yield b + j, {layer: h[j, :len(enc.ids[b + j])] for layer, h in acts.items()}
        if progress is not None:
            progress.update(ids.shape[0])


def _check_finite(h: Tensor, layer: int, model) -> None:
    if torch.isfinite(h).all():
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
    out = [pool(sae_encode(sae_in, acts[l_in][positions[i]]), pooling).float().cpu()
           for i, acts in residual_rows(model, tokenizer, enc, [l_in], batch_size)]
    return torch.stack(out)


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
        for i, acts in residual_rows(model, tokenizer, enc, layers, batch_size, bar):
            V[side].append(sae_encode(sae_out, acts[l_out][enc.response[i]]).mean(0).float().cpu())
            if side == "chosen":
                U.append(pool(sae_encode(sae_in, acts[l_in][positions[i]]), pooling).float().cpu())
    bar.close()
    return TripleFeatures(torch.stack(U), torch.stack(V["chosen"]), torch.stack(V["rejected"]))


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
