"""The one generation path every method shares: chat formatting, left padding, seeded batches, steering.

Every method in the book (no steering, static steering, DSPA) calls :func:`generate`, and differs
only in the ``steer`` context it passes, so a comparison between methods never mixes in a
difference in prompting, padding, sampling or decoding.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Any

import torch
from jaxtyping import Int
from torch import Tensor
from tqdm.auto import tqdm

from .checks import check_context, check_prompts, model_context

__all__ = ["SteerFn", "Steerer", "format_prompts", "generate"]

SteerFn = Callable[[list[str], Int[Tensor, "batch seq"], Int[Tensor, "batch seq"]], AbstractContextManager[Any]]
"""``steer(batch_prompts, input_ids, attention_mask)`` returns the context (e.g. ``hooks.edit``) to generate under."""


def format_prompts(tokenizer: Any, prompts: Sequence[str]) -> list[str]:
    """Wrap each prompt as a single user turn with the tokenizer's chat template, if it has one.

    >>> class NoTemplate:
    ...     chat_template = None
    >>> format_prompts(NoTemplate(), ["Hi there"])
    ['Hi there']
    """
    prompts = check_prompts(prompts)
    if not getattr(tokenizer, "chat_template", None):
        return list(prompts)
    extra = getattr(tokenizer, "dspa_chat_kwargs", None) or {}  # e.g. Qwen3's enable_thinking=False (models.load)
    return [
        tokenizer.apply_chat_template([{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True,
                                      **extra)
        for p in prompts
    ]


def _eos_ids(model: Any, tokenizer: Any) -> list[int]:
    """The tokenizer's EOS plus the model's ``generation_config.eos_token_id`` (e.g. Gemma's ``<end_of_turn>``)."""
    ids = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    cfg_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids += [cfg_eos] if isinstance(cfg_eos, int) else list(cfg_eos or [])
    return list(dict.fromkeys(ids))


@torch.no_grad()
def generate(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[str],
    max_new_tokens: int = 64,
    temperature: float = 1.0,
    seed: int = 0,
    batch_size: int = 32,
    *,
    top_p: float = 1.0,
    steer: SteerFn | None = None,
    progress: bool = False,
) -> list[str]:
    """Generate one completion per prompt (chat-formatted, left-padded, batched, seeded).

    Sampling uses ``temperature`` and ``top_p`` only (``top_k`` is switched off so that a model's
    ``generation_config`` cannot silently change the distribution); ``temperature=0`` is greedy.
    Batch ``i`` is seeded with ``torch.manual_seed(seed + i)``, so a repeated call, or a steered call
    whose edit is the identity, returns the same text. ``steer(batch_prompts, input_ids,
    attention_mask)`` returns a context manager entered around ``model.generate`` for that batch.

    Returns:
        The new text of each completion (special tokens removed, stripped), in prompt order.
    """
    _check_sampling(max_new_tokens, temperature, top_p, batch_size)
    texts = format_prompts(tokenizer, prompts)
    if tokenizer.pad_token is None and tokenizer.eos_token is None:
        raise ValueError(
            f"{type(tokenizer).__name__} has neither a pad nor an EOS token to pad batches with: set tokenizer.pad_token"
        )
    # Chat templates such as Gemma's already write <bos>; adding it again would give two.
    bos = tokenizer.bos_token
    add_special_tokens = not (bos and all(t.startswith(bos) for t in texts))
    lengths = [len(ids) for ids in tokenizer(texts, add_special_tokens=add_special_tokens)["input_ids"]]
    check_context(lengths, model_context(model), "prompts")  # a warning: the text is still generated
    sampling = {"do_sample": True, "temperature": float(temperature), "top_p": float(top_p), "top_k": 0}
    gen_kwargs = (sampling if temperature > 0 else {"do_sample": False}) | {
        "max_new_tokens": max_new_tokens, "eos_token_id": _eos_ids(model, tokenizer) or None}
    outputs: list[str] = []
    with _left_padded(tokenizer):  # generation appends on the right, so prompts must end flush
        starts = range(0, len(texts), batch_size)
        for i, start in enumerate(tqdm(starts, desc="generate", disable=not progress, file=sys.stderr)):
            enc = tokenizer(texts[start:start + batch_size], return_tensors="pt", padding=True,
                            add_special_tokens=add_special_tokens)
            input_ids = enc["input_ids"].to(model.device)  # (B, T)
            attention_mask = enc["attention_mask"].to(model.device)  # (B, T)
            context = _steer_context(steer, list(prompts[start:start + batch_size]), input_ids, attention_mask)
            torch.manual_seed(seed + i)
            with context:
                out = model.generate(input_ids=input_ids, attention_mask=attention_mask,
                                     pad_token_id=tokenizer.pad_token_id, **gen_kwargs)
            new_tokens = out[:, input_ids.shape[1]:]  # (B, <= max_new_tokens)
            outputs += [t.strip() for t in tokenizer.batch_decode(new_tokens, skip_special_tokens=True)]
    return outputs


def _check_sampling(max_new_tokens: int, temperature: float, top_p: float, batch_size: int) -> None:
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be an int >= 1, got {max_new_tokens!r}")
    if not temperature >= 0:  # also catches NaN
        raise ValueError(f"temperature must be >= 0 (0 means greedy), got {temperature!r}")
    if not 0 < top_p <= 1:
        raise ValueError(f"top_p must be in (0, 1], got {top_p!r}; use 1.0 to switch nucleus sampling off")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")


@contextmanager
def _left_padded(tokenizer: Any) -> Iterator[None]:
    """Left padding, with EOS as the pad token if there is none, restored on exit."""
    old_side, old_pad = tokenizer.padding_side, tokenizer.pad_token
    try:
        tokenizer.padding_side = "left"
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        yield
    finally:
        tokenizer.padding_side = old_side
        if old_pad is None:
            tokenizer.pad_token = None


def _steer_context(steer: SteerFn | None, prompts: list[str], input_ids: Tensor,
                   attention_mask: Tensor) -> AbstractContextManager[Any]:
    context = steer(prompts, input_ids, attention_mask) if steer else None
    if context is not None and not hasattr(context, "__enter__"):
        raise TypeError(f"steer(...) returned {type(context).__name__}; it must return a context manager such as "
                        "hooks.edit(model, layer, fn)")
    return context if context is not None else nullcontext()


class Steerer:
    """What every method shares: a ``model``, a ``tokenizer``, a :meth:`steer` context, and :meth:`generate`.

    This base steers nothing (it is the unsteered model); a method overrides :meth:`steer` only, so every
    method generates through the same :func:`generate`.
    """

    def __init__(self, model: Any, tokenizer: Any):
        self.model, self.tokenizer = model, tokenizer

    def steer(self, prompts: list[str], input_ids: Tensor | None = None, attention_mask: Tensor | None = None,
              start: Sequence[int] | None = None) -> AbstractContextManager[Any]:
        """The context to run the model under for this batch of prompts (here: no change)."""
        return nullcontext()

    def generate(self, prompts: Sequence[str], max_new_tokens: int = 64, temperature: float = 1.0, seed: int = 0,
                 batch_size: int = 32, **kwargs: Any) -> list[str]:
        """:func:`generate` under this method's :meth:`steer`: same arguments, same output."""
        return generate(self.model, self.tokenizer, prompts, max_new_tokens, temperature, seed, batch_size,
                        steer=self.steer, **kwargs)
