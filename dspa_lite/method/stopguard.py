"""A length guard for steering: leave the residual unedited where the model is about to end its turn.

Steering with SAE latents can keep a model talking: the style latents DSPA amplifies also lower the
end-of-turn probability at the segment boundaries where the unsteered model would stop (book chapter 06,
``benchmarks/length_diagnosis.py``). :class:`StopGuard` wraps any steerer. At each edited forward
pass it reads the *unedited* residual at the edit layer with a linear probe of "the next token ends the
turn" (:class:`StopProbe`, fitted on the preference triples' own dialogues by :func:`fit_stop_probe`) and
restores that residual at the positions where the probe's probability exceeds ``threshold`` (or, with
``cumulative=True``, for the rest of a response once the model would probably have ended it): the edit acts
where the model continues and stands aside where it would stop. The per-step cost is one dot product of
width ``d_model`` per position.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from jaxtyping import Float
from torch import Tensor

from .features import batches
from .generation import Steerer
from .hooks import edit, forward_until

__all__ = ["StopGuard", "StopProbe", "fit_stop_probe", "stop_texts"]


@dataclass(frozen=True)
class StopProbe:
    """``P(next token ends the turn | h) = sigmoid(h @ w + b)`` on the residual ``h`` after decoder layer ``layer``."""

    w: Float[Tensor, " d_model"]
    b: float
    layer: int

    def probability(self, h: Float[Tensor, "*B d_model"]) -> Float[Tensor, "*B"]:
        return torch.sigmoid(h.float() @ self.w.to(h.device) + self.b)


def stop_texts(tokenizer, triples) -> list[str]:
    """Each triple's prompt with its chosen and with its rejected response, as whole chats ending the turn."""
    texts = []
    for t in triples:
        for y in (t.chosen, t.rejected):
            chat = [{"role": "user", "content": t.prompt}, {"role": "assistant", "content": y}]
            texts.append(tokenizer.apply_chat_template(chat, tokenize=False) if getattr(tokenizer, "chat_template", None)
                         else f"{t.prompt}{y}{tokenizer.eos_token}")
    return texts


@torch.no_grad()
def _residuals(model, tokenizer, texts: Sequence[str], layer: int, stop_ids: set[int],
               batch_size: int) -> tuple[Tensor, Tensor]:
    rows = [tokenizer(x, add_special_tokens=False).input_ids for x in texts]
    xs, ys = [], []
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    for b, ids, mask in batches(rows, batch_size, pad, model.device):
        h = forward_until(model, [layer], ids, mask)[layer]  # (B, T, d_model)
        for j, row in enumerate(rows[b:b + batch_size]):
            xs.append(h[j, :len(row) - 1].float().cpu())
            ys.append(torch.tensor([t in stop_ids for t in row[1:]], dtype=torch.float32))
    return torch.cat(xs), torch.cat(ys)


def fit_stop_probe(model, tokenizer, triples, layer: int, stop_ids: Sequence[int] | None = None,
                   l2: float = 1e-4, batch_size: int = 16) -> StopProbe:
    """A logistic-regression probe, at ``layer``, of whether the next token is one of ``stop_ids`` (default: the
    tokens generation stops on, the tokenizer's ``eos_token_id`` and the model's ``generation_config.eos_token_id``,
    e.g. Gemma's ``<end_of_turn>``), fitted by L-BFGS on every position of the triples' chats (:func:`stop_texts`)
    on standardised residuals, then folded back so :meth:`StopProbe.probability` reads the raw residual."""
    if stop_ids is None:
        gen = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
        stop_ids = [tokenizer.eos_token_id, *([gen] if isinstance(gen, int) else (gen or []))]
    stop = {t for t in stop_ids if t is not None}
    X, y = _residuals(model, tokenizer, stop_texts(tokenizer, triples), layer, stop, batch_size)
    if not 0 < float(y.sum()) < len(y):
        raise ValueError(f"the triples' chats have {int(y.sum())} of {len(y)} positions before a stop token "
                         f"{sorted(stop)}: the probe needs both; pass stop_ids= the model's end-of-turn token")
    mu, sd = X.mean(0), X.std(0).clamp_min(1e-6)
    Z = (X - mu) / sd
    w = torch.zeros(X.shape[1], requires_grad=True)
    b = torch.zeros((), requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=200, line_search_fn="strong_wolfe")

    def loss() -> Tensor:
        opt.zero_grad()
        value = torch.nn.functional.binary_cross_entropy_with_logits(Z @ w + b, y) + l2 * (w * w).sum()
        value.backward()
        return value

    with torch.enable_grad():
        opt.step(loss)
    w_raw = (w.detach() / sd).contiguous()
    return StopProbe(w_raw, float(b.detach() - mu @ w_raw), layer)


class StopGuard(Steerer):
    """``steerer`` with its edit undone wherever ``probe`` says the unedited model ends its turn.

    ``cumulative=False`` restores a position when the probe's ``P(stop)`` there exceeds ``threshold``.
    ``cumulative=True`` tracks, per row, the probability that the model would have ended its turn by now,
    ``1 - prod(1 - P(stop))`` over the positions generated so far (the last prompt position and each new one;
    with ``start``, every position from ``start``), and once that exceeds ``threshold`` leaves the rest of the
    row unedited: a response the model would probably have finished stops being steered. The probe must read
    the layer the steerer edits; it sees the residual before the edit at that layer (earlier positions keep
    their edits, so the model's state is the steered one). ``threshold=1`` never restores.
    """

    def __init__(self, steerer: Steerer, probe: StopProbe, threshold: float = 0.5, cumulative: bool = False):
        super().__init__(steerer.model, steerer.tokenizer)
        layer = getattr(steerer, "l_out", getattr(steerer, "layer", probe.layer))
        if layer != probe.layer:
            raise ValueError(f"the probe reads layer {probe.layer} but the steerer edits layer {layer}: fit the probe "
                             f"with fit_stop_probe(..., layer={layer})")
        if not 0 < threshold <= 1:
            raise ValueError(f"threshold={threshold!r} must be a probability in (0, 1]")
        self.steerer, self.probe, self.threshold = steerer, probe, float(threshold)
        self.cumulative = bool(cumulative)

    def _stop(self, p: Tensor, state: dict, start) -> Tensor:
        """``(B, T)`` positions to leave unedited, from the probe's ``p`` ``(B, T)`` at this call."""
        if not self.cumulative:
            return p > self.threshold
        B, T = p.shape
        if "log_survival" not in state:  # the first call: the prompt, or a whole teacher-forced sequence
            first = torch.full((B, 1), T - 1, device=p.device) if start is None else \
                torch.as_tensor(list(start), device=p.device)[:, None]
            counted = torch.arange(T, device=p.device)[None, :] >= first
            state["log_survival"] = torch.zeros(B, device=p.device)
        else:
            counted = torch.ones_like(p, dtype=torch.bool)
        logs = torch.where(counted, torch.log1p(-p.clamp(max=1 - 1e-6)), torch.zeros_like(p))
        log_survival = state["log_survival"][:, None] + logs.cumsum(1)  # (B, T)
        state["log_survival"] = log_survival[:, -1]
        return counted & (-torch.expm1(log_survival) > self.threshold)

    @contextlib.contextmanager
    def steer(self, prompts, input_ids=None, attention_mask=None, start=None):
        state: dict[str, Tensor] = {}

        def keep(h: Tensor) -> Tensor:  # registered first: runs before the steerer's edit
            state["h"] = h
            return h

        def restore(h: Tensor) -> Tensor:  # registered last: runs after it
            stop = self._stop(self.probe.probability(state["h"]), state, start)  # (B, T)
            return torch.where(stop[..., None], state["h"], h)

        with (edit(self.model, self.probe.layer, keep),
              self.steerer.steer(prompts, input_ids, attention_mask, start) as inner,
              edit(self.model, self.probe.layer, restore)):
            yield inner
