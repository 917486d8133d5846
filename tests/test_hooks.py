"""Tests for dspa_lite.method.hooks on a tiny random Gemma-2 and on a 4.x-style model whose layers return tuples."""

from __future__ import annotations

import copy

import pytest
import torch
from tiny import tiny_gemma
from torch import nn
from transformers import Gemma2ForCausalLM

from dspa_lite.method.hooks import capture, check_layer, decoder_layers, edit, forward_until

N_LAYERS, D_MODEL = 3, 32


@pytest.fixture(scope="session")
def _tiny_gemma() -> Gemma2ForCausalLM:
    return tiny_gemma(64, n_layers=N_LAYERS)


@pytest.fixture
def model(_tiny_gemma: Gemma2ForCausalLM) -> Gemma2ForCausalLM:
    return copy.deepcopy(_tiny_gemma)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(1234)


@pytest.fixture
def ids() -> torch.Tensor:
    return torch.tensor([[2, 5, 9, 11, 7, 3], [2, 8, 8, 30, 41, 12]])  # (B=2, T=6)


def hook_counts(model: nn.Module) -> list[int]:
    return [len(layer._forward_hooks) for layer in decoder_layers(model)]


def test_decoder_layers_and_check_layer(model: Gemma2ForCausalLM) -> None:
    assert decoder_layers(model) is model.model.layers
    check_layer(model, N_LAYERS - 1)
    with pytest.raises(
        ValueError, match=r"^layer 7 is out of range: Gemma2ForCausalLM has 3 decoder layers \(0\.\.2\)$"
    ):
        check_layer(model, 7)
    with pytest.raises(ValueError, match="layer -1 is out of range"):
        check_layer(model, -1)
    with pytest.raises(TypeError, match="must be an int"):
        check_layer(model, 1.0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="cannot find the decoder layers of Linear"):
        decoder_layers(nn.Linear(2, 2))


def test_capture_shapes_and_parity_with_output_hidden_states(model: Gemma2ForCausalLM, ids: torch.Tensor) -> None:
    with torch.no_grad(), capture(model, range(N_LAYERS)) as acts:
        out = model(ids, output_hidden_states=True)
    assert sorted(acts) == list(range(N_LAYERS))
    hs = out.hidden_states
    for layer in range(N_LAYERS - 1):  # hidden_states[L + 1] is the output of layer L ...
        assert acts[layer].shape == (*ids.shape, D_MODEL)
        assert not acts[layer].requires_grad
        torch.testing.assert_close(acts[layer], hs[layer + 1], rtol=0, atol=0)
    # ... except the last, which HF reports after the final norm.
    torch.testing.assert_close(model.model.norm(acts[N_LAYERS - 1]), hs[-1])
    assert hook_counts(model) == [1] * N_LAYERS  # only HF's own output-capturing hooks are left


def test_identity_edit_is_bit_identical(model: Gemma2ForCausalLM, ids: torch.Tensor) -> None:
    with torch.no_grad():
        ref = model(ids).logits
        with edit(model, 1, lambda h: h):
            same = model(ids).logits
    assert torch.equal(ref, same)


def test_edit_adding_a_vector_matches_manual_residual(model: Gemma2ForCausalLM, ids: torch.Tensor) -> None:
    delta = torch.randn(D_MODEL)
    with torch.no_grad():
        with capture(model, [1]) as clean:
            ref = model(ids).logits
        with edit(model, 1, lambda h: h + delta), capture(model, [1]) as steered:
            out = model(ids).logits
    assert not torch.allclose(ref, out)
    torch.testing.assert_close(steered[1], clean[1] + delta)


def test_edit_rejects_wrong_shape_and_dtype(model: Gemma2ForCausalLM, ids: torch.Tensor) -> None:
    shape_msg = r"edit fn at layer 0 returned shape \(2, 6, 31\)"
    with pytest.raises(ValueError, match=shape_msg), edit(model, 0, lambda h: h[..., :-1]):
        model(ids)
    with pytest.raises(ValueError, match="dtype torch.float64"), edit(model, 0, lambda h: h.double()):
        model(ids)
    with pytest.raises(TypeError, match="returned NoneType"), edit(model, 0, lambda h: None):
        model(ids)
    with pytest.raises(ValueError, match="layer 3 is out of range"), edit(model, 3, lambda h: h):
        pass
    assert hook_counts(model) == [0] * N_LAYERS


def test_hooks_removed_after_exception_in_body(model: Gemma2ForCausalLM, ids: torch.Tensor) -> None:
    before = hook_counts(model)
    with pytest.raises(RuntimeError, match="boom"), capture(model, [0, 2]), edit(model, 1, lambda h: h * 2):
        assert hook_counts(model) == [1, 1, 1]
        model(ids)
        raise RuntimeError("boom")
    assert hook_counts(model) == before == [0] * N_LAYERS


def test_hooks_removed_after_exception_inside_generate(model: Gemma2ForCausalLM, ids: torch.Tensor) -> None:
    shapes = []

    def fail_on_third_call(h: torch.Tensor) -> torch.Tensor:
        shapes.append(tuple(h.shape))
        if len(shapes) == 3:
            raise RuntimeError("boom in generate")
        return h

    with pytest.raises(RuntimeError, match="boom in generate"), capture(model, [0]), edit(model, 2, fail_on_third_call):
        model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=5, do_sample=False)
    assert hook_counts(model) == [0] * N_LAYERS
    assert shapes == [(2, 6, D_MODEL), (2, 1, D_MODEL), (2, 1, D_MODEL)]  # prefill, then one token per step


def test_edit_inside_generate_changes_tokens(model: Gemma2ForCausalLM, ids: torch.Tensor) -> None:
    kw = {"attention_mask": torch.ones_like(ids), "max_new_tokens": 6, "do_sample": False, "eos_token_id": None}
    ref = model.generate(ids, **kw)
    with edit(model, 1, lambda h: h):
        same = model.generate(ids, **kw)
    with edit(model, 1, lambda h: h + 10 * model.model.embed_tokens.weight[20]):
        steered = model.generate(ids, **kw)
    assert torch.equal(ref, same)
    assert not torch.equal(ref, steered)


def test_nested_edits_compose_in_entry_order(model: Gemma2ForCausalLM, ids: torch.Tensor) -> None:
    a = torch.randn(D_MODEL)
    with torch.no_grad():
        with capture(model, [1]) as clean:
            model(ids)
        with edit(model, 1, lambda h: h + a), edit(model, 1, lambda h: h * 2), capture(model, [1]) as both:
            model(ids)
            assert hook_counts(model) == [0, 3, 0]
        with edit(model, 1, lambda h: h * 2), edit(model, 1, lambda h: h + a), capture(model, [1]) as swapped:
            model(ids)
    torch.testing.assert_close(both[1], (clean[1] + a) * 2)
    torch.testing.assert_close(swapped[1], clean[1] * 2 + a)
    assert hook_counts(model) == [0] * N_LAYERS


def test_capture_sees_only_edits_entered_before_it(model: Gemma2ForCausalLM, ids: torch.Tensor) -> None:
    with torch.no_grad(), capture(model, [0]) as outer, edit(model, 0, lambda h: h + 1), capture(model, [0]) as inner:
        model(ids)
    torch.testing.assert_close(inner[0], outer[0] + 1)


def test_forward_until_matches_capture_and_stops_early(model: Gemma2ForCausalLM, ids: torch.Tensor) -> None:
    mask = torch.tensor([[0, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1]])
    with torch.no_grad(), capture(model, [0, 1]) as full:
        model(ids, attention_mask=mask)
    fired = []
    later = model.model.layers[2].register_forward_hook(lambda *_: fired.append("layer 2"))
    head = model.lm_head.register_forward_hook(lambda *_: fired.append("lm_head"))
    try:
        early = forward_until(model, [1, 0], ids, attention_mask=mask)
    finally:
        later.remove()
        head.remove()
    assert fired == []
    assert sorted(early) == [0, 1]
    for layer in (0, 1):
        torch.testing.assert_close(early[layer], full[layer], rtol=0, atol=0)
    assert hook_counts(model) == [0] * N_LAYERS
    with pytest.raises(ValueError, match="layer 5 is out of range"):
        forward_until(model, [5], ids)
    with pytest.raises(ValueError, match="at least one layer"):
        forward_until(model, [], ids)


class _TupleLayer(nn.Module):
    """A transformers-4.x-style decoder layer: returns ``(hidden, attn_weights)``."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(D_MODEL, D_MODEL)

    def forward(self, h: torch.Tensor) -> tuple[torch.Tensor, None]:
        return h + torch.tanh(self.proj(h)), None


class _LegacyGPT(nn.Module):
    """A GPT-2-shaped model (``transformer.h``) that unpacks ``layer(h)[0]`` as transformers 4.x does."""

    def __init__(self) -> None:
        super().__init__()
        self.transformer = nn.Module()
        self.transformer.h = nn.ModuleList(_TupleLayer() for _ in range(N_LAYERS))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        for layer in self.transformer.h:
            h = layer(h)[0]
        return h


def test_tuple_layer_outputs_like_transformers_4() -> None:
    model, x = _LegacyGPT(), torch.randn(2, 4, D_MODEL)
    delta = torch.randn(D_MODEL)
    with torch.no_grad():
        ref = model(x)
        with capture(model, [0, 1]) as acts:
            assert torch.equal(model(x), ref)
        with edit(model, 1, lambda h: h + delta):
            out = model(x)
    layers = model.transformer.h
    torch.testing.assert_close(acts[0], layers[0](x)[0])
    manual = layers[2](acts[1] + delta)[0]  # the 10-line reference: run the last layer on the edited residual
    torch.testing.assert_close(out, manual)
    assert hook_counts(model) == [0] * N_LAYERS
