"""The one generation path every method shares: chat formatting, left padding, seeded batches, steering.

Every method in the book (no steering, static steering, DSPA) calls :func:`generate`, and differs
only in the ``steer`` context it passes, so a comparison between methods never mixes in a
difference in prompting, padding, sampling or decoding.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Any

import torch
from jaxtyping import Int
from torch import Tensor
from tqdm.auto import tqdm

from .checks import check_context, check_prompts, model_context

__all__ = ["SteerFn", "Steerer", "chat_kwargs", "content_start", "end_of_turn_id", "format_prompts", "generate",
           "render_chat", "stop_ids"]

SteerFn = Callable[[list[str], Int[Tensor, "batch seq"], Int[Tensor, "batch seq"]], AbstractContextManager[Any]]
"""``steer(batch_prompts, input_ids, attention_mask)`` returns the context (e.g. ``hooks.edit``) to generate under."""


def chat_kwargs(tokenizer: Any) -> dict[str, Any]:
    """The profile's extra chat-template variables that :func:`dspa_lite.loading.models.load` attached to the
    tokenizer (Qwen3: ``enable_thinking=False``); ``{}`` for any other tokenizer."""
    return dict(getattr(tokenizer, "dspa_chat_kwargs", None) or {})


def render_chat(tokenizer: Any, conversations: Sequence[Sequence[Mapping[str, str]]]) -> list[str]:
    """Each conversation (``[{"role": "user"|"assistant", "content": ...}, ...]``, ending with a user turn) as the
    text the model continues: ``apply_chat_template(..., add_generation_prompt=True, **chat_kwargs(tokenizer))``.

    The one rendering path: :func:`format_prompts` (generation, fitting, features), the MT-Bench and AlpacaEval
    answers (``formats.generate_chat``) and lm-eval's chat prompts (``lmeval.run_lm_eval``) all come here, so a
    profile's chat arguments apply everywhere. Without a template a single user turn passes through unchanged.
    """
    texts = []
    for i, conv in enumerate(conversations):
        roles = [m.get("role") for m in conv] if isinstance(conv, Sequence) else []
        if not roles or roles[-1] != "user" or any(r not in ("system", "user", "assistant") for r in roles):
            raise ValueError(f"conversation {i} must be a list of role/content messages ending with a user turn, "
                             f"got roles {roles}")
        if getattr(tokenizer, "chat_template", None):
            texts.append(tokenizer.apply_chat_template(list(conv), tokenize=False, add_generation_prompt=True,
                                                       **chat_kwargs(tokenizer)))
        elif roles == ["user"]:
            texts.append(conv[0]["content"])
        else:
            raise ValueError(f"{type(tokenizer).__name__} has no chat template, so conversation {i} ({len(conv)} "
                             "messages) cannot be rendered: set tokenizer.chat_template")
    return texts


def format_prompts(tokenizer: Any, prompts: Sequence[str]) -> list[str]:
    """Wrap each prompt as a single user turn with the tokenizer's chat template (:func:`render_chat`), if it has one.

    >>> class NoTemplate:
    ...     chat_template = None
    >>> format_prompts(NoTemplate(), ["Hi there"])
    ['Hi there']
    """
    prompts = check_prompts(prompts)
    return render_chat(tokenizer, [[{"role": "user", "content": p}] for p in prompts])


def end_of_turn_id(tokenizer: Any) -> int | None:
    """The special token the chat template closes a turn with (Gemma ``<end_of_turn>``, ChatML ``<|im_end|>``),
    or ``None`` when there is no template or it closes turns with ordinary text."""
    if not getattr(tokenizer, "chat_template", None):
        return None
    mark = "dspa0answer0mark"
    try:
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": "hi"}, {"role": "assistant", "content": mark}], tokenize=False,
            **chat_kwargs(tokenizer))
    except Exception:  # noqa: BLE001 - a template that cannot render a plain exchange has no turn marker to find
        return None
    after = text.rpartition(mark)[2] if mark in text else ""
    ids = tokenizer(after, add_special_tokens=False)["input_ids"] if after.strip() else []
    special = set(getattr(tokenizer, "all_special_ids", None) or [])
    special |= {i for i, t in (getattr(tokenizer, "added_tokens_decoder", None) or {}).items()
                if getattr(t, "special", False)}
    return ids[0] if ids and ids[0] in special else None


def stop_ids(model: Any, tokenizer: Any) -> list[int]:
    """Where generation stops: the tokenizer's EOS, the model's ``generation_config.eos_token_id`` and the chat
    template's end-of-turn token. A base model's config lists only ``<eos>``; it is not trained on the template,
    so without the turn marker its answers would run on and invent the next turns."""
    ids = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    cfg_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids += [cfg_eos] if isinstance(cfg_eos, int) else list(cfg_eos or [])
    ids += [i] if (i := end_of_turn_id(tokenizer)) is not None else []
    return list(dict.fromkeys(ids))


def content_start(input_ids: Int[Tensor, "batch seq"], attention_mask: Int[Tensor, "batch seq"] | None,
                  bos_id: int | None) -> list[int]:
    """Per row, the first position after left padding and a leading BOS: where an every-position edit starts.

    Gemma-2's BOS residual is an outlier that Gemma Scope left out of training, and padding is no text, so
    static steering and ``positions="all"`` edit neither.

    >>> content_start(torch.tensor([[0, 0, 2, 7], [2, 5, 6, 7]]), torch.tensor([[0, 0, 1, 1], [1, 1, 1, 1]]), 2)
    [3, 1]
    """
    mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask
    starts = []
    for ids, m in zip(input_ids.tolist(), mask.tolist(), strict=True):
        first = next((t for t, v in enumerate(m) if v), len(m))
        starts.append(first + int(first < len(ids) and bos_id is not None and ids[first] == bos_id))
    return starts


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
    rendered: bool = False,
) -> list[str]:
    """Generate one completion per prompt (chat-formatted, left-padded, batched, seeded).

    Sampling uses ``temperature`` and ``top_p`` only (``top_k`` is switched off so that a model's
    ``generation_config`` cannot silently change the distribution); ``temperature=0`` is greedy.
    Batch ``i`` is seeded with ``torch.manual_seed(seed + i)``, so a repeated call, or a steered call
    whose edit is the identity, returns the same text. ``steer(batch_prompts, input_ids,
    attention_mask)`` returns a context manager entered around ``model.generate`` for that batch.
    ``rendered=True``: the prompts are already chat texts (:func:`render_chat`'s), used as they are.

    Returns:
        The new text of each completion (special tokens removed, stripped), in prompt order.
    """
    _check_sampling(max_new_tokens, temperature, top_p, batch_size)
    texts = list(check_prompts(prompts)) if rendered else format_prompts(tokenizer, prompts)
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
        "max_new_tokens": max_new_tokens, "eos_token_id": stop_ids(model, tokenizer) or None}
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
