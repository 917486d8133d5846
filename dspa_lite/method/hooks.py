"""Context managers that read and edit the residual stream of Hugging Face decoder-only models.

Everything here works on the *output* of a decoder layer (``resid_post`` in TransformerLens terms),
shape ``(batch, seq, d_model)``. Hooks are plain ``register_forward_hook`` handles that take their
parameters from closures and are removed in ``finally``, so contexts nest and never leak
(the pattern of TransformerLens's ``hooks()``).

Decoder layers return a Tensor in transformers 5.x and a tuple ``(hidden, ...)`` in 4.x;
``_split``/``_join`` are the one place that knows.

Hooks run in the order they were entered, so ``capture`` records the residual as changed by every
``edit`` on that layer entered *before* it, and not by those entered after it. (Hugging Face's own
``output_hidden_states`` hooks are installed on first use, so under an ``edit`` they may show
either the edited or the unedited residual: use ``capture`` instead.)
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor, nn
from torch.profiler import record_function

__all__ = ["capture", "check_layer", "decoder_layers", "edit", "forward_until", "observe"]

Residual = Float[Tensor, "batch seq d_model"]
EditFn = Callable[[Residual], Residual]


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The decoder layers of ``model``: ``model.model.layers`` (Gemma-2, Qwen-3, Llama) or ``model.transformer.h`` (GPT-2).

    >>> from transformers import Gemma2Config, Gemma2ForCausalLM
    >>> cfg = Gemma2Config(vocab_size=16, hidden_size=8, intermediate_size=16, num_hidden_layers=2,
    ...                    num_attention_heads=1, num_key_value_heads=1, head_dim=8)
    >>> len(decoder_layers(Gemma2ForCausalLM(cfg)))
    2
    """
    inner = getattr(model, "model", None)
    if isinstance(getattr(inner, "layers", None), nn.ModuleList):
        return inner.layers
    transformer = getattr(model, "transformer", None)
    if isinstance(getattr(transformer, "h", None), nn.ModuleList):
        return transformer.h
    raise ValueError(
        f"cannot find the decoder layers of {type(model).__name__}: expected `model.model.layers` (Gemma-2, Qwen-3, "
        "Llama) or `model.transformer.h` (GPT-2); pass the *ForCausalLM model, not its base model or a wrapper"
    )


def check_layer(model: nn.Module, layer: int) -> None:
    """Raise a ``ValueError`` unless ``layer`` indexes a decoder layer of ``model`` (no negative indices).

    >>> from transformers import Gemma2Config, Gemma2ForCausalLM
    >>> cfg = Gemma2Config(vocab_size=16, hidden_size=8, intermediate_size=16, num_hidden_layers=4,
    ...                    num_attention_heads=1, num_key_value_heads=1, head_dim=8)
    >>> check_layer(Gemma2ForCausalLM(cfg), 7)
    Traceback (most recent call last):
    ...
    ValueError: layer 7 is out of range: Gemma2ForCausalLM has 4 decoder layers (0..3)
    """
    n = len(decoder_layers(model))
    if isinstance(layer, bool) or not isinstance(layer, int):
        raise TypeError(f"layer must be an int in 0..{n - 1}, got {layer!r} of type {type(layer).__name__}")
    if not 0 <= layer < n:
        raise ValueError(f"layer {layer} is out of range: {type(model).__name__} has {n} decoder layers (0..{n - 1})")


def _split(output: Any) -> Residual:
    """The hidden state inside a decoder layer's output (a Tensor in transformers 5.x, ``output[0]`` in 4.x)."""
    return output if isinstance(output, Tensor) else output[0]


def _join(output: Any, hidden: Residual) -> Any:
    """``output`` with its hidden state replaced by ``hidden``, in the same container type."""
    if isinstance(output, Tensor):
        return hidden
    return (hidden, *output[1:]) if isinstance(output, tuple) else type(output)([hidden, *output[1:]])


@contextmanager
def _hooked(model: nn.Module, hooks: dict[int, Callable[..., Any]]) -> Iterator[None]:
    """Register ``hooks[layer]`` as a forward hook on each decoder layer; remove them all on exit."""
    layers = decoder_layers(model)
    for layer in hooks:
        check_layer(model, layer)
    handles = []
    try:
        for layer, hook in hooks.items():
            handles.append(layers[layer].register_forward_hook(hook))
        yield
    finally:
        for handle in handles:
            handle.remove()


@contextmanager
def capture(model: nn.Module, layers: Sequence[int]) -> Iterator[dict[int, Residual]]:
    """Record the detached output hidden state of each layer in ``layers``; each forward pass overwrites the dict.

    >>> from transformers import Gemma2Config, Gemma2ForCausalLM
    >>> cfg = Gemma2Config(vocab_size=16, hidden_size=8, intermediate_size=16, num_hidden_layers=2,
    ...                    num_attention_heads=1, num_key_value_heads=1, head_dim=8)
    >>> model = Gemma2ForCausalLM(cfg)
    >>> with capture(model, [1]) as acts:
    ...     _ = model(torch.tensor([[1, 2, 3]]))
    >>> acts[1].shape
    torch.Size([1, 3, 8])
    """
    acts: dict[int, Residual] = {}

    def make_hook(layer: int) -> Callable[..., None]:
        def hook(module: nn.Module, args: Any, output: Any) -> None:
            acts[layer] = _split(output).detach()

        return hook

    with _hooked(model, {layer: make_hook(layer) for layer in layers}):
        yield acts


@contextmanager
def observe(model: nn.Module, layer: int, fn: Callable[[Residual], None]) -> Iterator[None]:
    """Call ``fn(h)`` with the output hidden state of decoder layer ``layer`` on every forward pass, changing nothing
    (DSPA reads ``u(x)`` at ``l_in`` this way during the prefill, before its edit at ``l_out`` in the same pass).

    >>> from transformers import Gemma2Config, Gemma2ForCausalLM
    >>> cfg = Gemma2Config(vocab_size=16, hidden_size=8, intermediate_size=16, num_hidden_layers=2,
    ...                    num_attention_heads=1, num_key_value_heads=1, head_dim=8)
    >>> model, seen = Gemma2ForCausalLM(cfg), []
    >>> with observe(model, 0, lambda h: seen.append(tuple(h.shape))):
    ...     _ = model(torch.tensor([[1, 2, 3]]))
    >>> seen
    [(1, 3, 8)]
    """

    def hook(module: nn.Module, args: Any, output: Any) -> None:
        fn(_split(output))

    with _hooked(model, {layer: hook}):
        yield


@contextmanager
def edit(model: nn.Module, layer: int, fn: EditFn) -> Iterator[None]:
    """Replace the output hidden state ``h`` of decoder layer ``layer`` by ``fn(h)`` on every forward pass.

    Inside ``model.generate`` the prefill pass sees ``h`` of shape (B, prompt_len, d_model) and each
    later step (B, 1, d_model). ``fn`` must return a tensor of the same shape and dtype.

    >>> from transformers import Gemma2Config, Gemma2ForCausalLM
    >>> cfg = Gemma2Config(vocab_size=16, hidden_size=8, intermediate_size=16, num_hidden_layers=2,
    ...                    num_attention_heads=1, num_key_value_heads=1, head_dim=8)
    >>> model, ids = Gemma2ForCausalLM(cfg), torch.tensor([[1, 2, 3]])
    >>> with edit(model, 0, lambda h: h + 1.0):
    ...     steered = model(ids).logits
    >>> bool((steered != model(ids).logits).any())
    True
    """
    if not callable(fn):
        raise TypeError(f"edit needs a callable fn(h) -> h', got {type(fn).__name__}")

    def hook(module: nn.Module, args: Any, output: Any) -> Any:
        h = _split(output)
        with record_function("hooks.edit"):  # a label for torch.profiler; free when no profiler runs
            new = fn(h)
        if not isinstance(new, Tensor):
            raise TypeError(f"edit fn at layer {layer} returned {type(new).__name__}; it must return a Tensor")
        if new.shape != h.shape or new.dtype != h.dtype:
            raise ValueError(
                f"edit fn at layer {layer} returned shape {tuple(new.shape)} and dtype {new.dtype}, but the residual "
                f"has shape {tuple(h.shape)} and dtype {h.dtype}: return a tensor shaped like the input "
                "(cast with .to(h.dtype) if you computed in another precision)"
            )
        return _join(output, new)

    with _hooked(model, {layer: hook}):
        yield


class _StopForward(Exception):
    """Raised by ``forward_until``'s hook to skip the layers after the last one it needs."""


@torch.no_grad()
def forward_until(
    model: nn.Module,
    layers: Sequence[int],
    input_ids: Int[Tensor, "batch seq"],
    attention_mask: Int[Tensor, "batch seq"] | None = None,
) -> dict[int, Residual]:
    """Run ``model`` just far enough to return the output hidden states of ``layers``.

    The forward pass is stopped right after ``max(layers)``, so no later layer or the LM head runs
    (the cheap way to collect activations for an SAE at layer 6 of a 26-layer model).

    >>> from transformers import Gemma2Config, Gemma2ForCausalLM
    >>> cfg = Gemma2Config(vocab_size=16, hidden_size=8, intermediate_size=16, num_hidden_layers=3,
    ...                    num_attention_heads=1, num_key_value_heads=1, head_dim=8)
    >>> acts = forward_until(Gemma2ForCausalLM(cfg), [0, 1], torch.tensor([[1, 2, 3, 4]]))
    >>> sorted(acts), acts[1].shape
    ([0, 1], torch.Size([1, 4, 8]))
    """
    layers = list(layers)
    if not layers:
        raise ValueError("forward_until needs at least one layer; got an empty list")
    last = max(layers)
    check_layer(model, last)

    def stop(module: nn.Module, args: Any, output: Any) -> None:
        raise _StopForward

    with capture(model, layers) as acts, _hooked(model, {last: stop}):
        try:
            model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
        except _StopForward:
            pass
    return dict(acts)
