"""``u(x)`` from the prefill: DSPA's latent sets computed inside generation's own first forward pass.

With causal attention the prefill's residual at ``l_in`` on the prompt's positions is what a separate prompt pass
would give. A hook at ``l_in`` (:func:`hooks.observe`) fires before the edit at ``l_out`` in the same pass, so on
that first call it pools ``u(x)`` over the prompt's own tokens (chosen exactly as :func:`features.prompt_features`
chooses them: no chat-template tokens, no BOS, no padding), scores ``s(x)``, picks ``K_neg``/``K_pos`` and hands them
to the edit. Nothing in the pass is read back to the host; a NaN/inf residual sets a device flag read after
generation (:meth:`PrefillSets.check_finite`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from jaxtyping import Float, Int
from torch import Tensor
from torch.profiler import record_function

from .checks import NonFiniteError
from .estimators import select_latents
from .features import encode_texts, pool_segments
from .saes import sae_encode

__all__ = ["PrefillSets", "PromptRows", "prompt_rows"]


@dataclass
class PromptRows:
    """The positions ``u(x)`` pools in a left-padded batch, flattened (``b * T + t``), each one's row, and the count
    per row, on the batch's device (:func:`features.gather_positions`, :func:`features.pool_segments`)."""

    flat: Int[Tensor, " N"]
    seg: Int[Tensor, " N"]
    counts: Int[Tensor, " B"]


def prompt_rows(tokenizer, prompts: Sequence[str], input_ids: Int[Tensor, "B T"], attention_mask: Tensor | None,
                exclude_template: bool = True) -> PromptRows | None:
    """Where each prompt's own tokens sit in ``input_ids`` (left-padded, as :func:`generation.generate` builds it),
    or ``None`` when ``input_ids`` is not the chat-formatted tokenization of ``prompts`` (text rendered elsewhere,
    lm-eval's contexts): the caller then runs the separate prompt pass. One host read of the ids per batch."""
    enc = encode_texts(tokenizer, prompts)
    positions = enc.content if exclude_template else enc.prompt_all
    ids = input_ids.tolist()
    mask = attention_mask.tolist() if attention_mask is not None else [[1] * len(r) for r in ids]
    if len(ids) != len(enc.ids):
        return None
    flat, seg, counts = [], [], []
    for i, (row, m, own) in enumerate(zip(ids, mask, enc.ids)):
        off = len(row) - len(own)
        if off < 0 or row[off:] != own or any(m[:off]) or not all(m[off:]) or not positions[i]:
            return None
        flat += [i * len(row) + off + t for t in positions[i]]
        seg += [i] * len(positions[i])
        counts.append(len(positions[i]))
    return PromptRows(*(torch.tensor(x, device=input_ids.device) for x in (flat, seg, counts)))


class PrefillSets:
    """The ``observe`` callback at ``l_in``: on its first call (the prefill), ``u(x)``, ``s(x)`` and the sets into
    ``edit.set_latents``; later calls (one new token each) do nothing."""

    def __init__(self, sae_in, cdmap, k: int, rows: PromptRows, edit):
        self.sae_in, self.cdmap, self.k, self.rows, self.edit = sae_in, cdmap, k, rows, edit
        self.u: Float[Tensor, "B m_in"] | None = None
        self.s: Float[Tensor, "B m_out"] | None = None
        self._nonfinite: Tensor | None = None

    def __call__(self, h: Float[Tensor, "B T d_model"]) -> None:
        if self.u is not None:
            return
        with record_function("dspa.prefill_u"):
            r = self.rows
            x = h.reshape(-1, h.shape[-1])[r.flat]  # (N, d_model): the prompts' own tokens
            self._nonfinite = ~torch.isfinite(x).all()
            z = sae_encode(self.sae_in, x)
            self.u = pool_segments(z, r.seg, len(r.counts), self.cdmap.config.pooling, r.counts).float()
        with record_function("dspa.map_lookup"):
            self.s = self.cdmap.scores(self.u)
            k_neg, k_pos = select_latents(self.s, self.k, check=False)
        self.edit.set_latents(k_neg, k_pos)

    def check_finite(self) -> None:
        """Raise :class:`NonFiniteError` if the prefill's residual at ``l_in`` held NaN/inf (one host read)."""
        if self._nonfinite is not None and bool(self._nonfinite):
            raise NonFiniteError("NaN/inf values in the residual stream at l_in during the prefill: check the model's "
                                 "dtype (fp16 overflows on Gemma-2; use bfloat16 or float32) and its weights")
