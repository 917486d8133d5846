"""Tests for dspa_lite.method.generation on a tiny random Gemma-2 and a word-level tokenizer with a chat template."""

from __future__ import annotations

import copy
from contextlib import contextmanager

import pytest
import torch
from tiny import SPECIALS, tiny_gemma, word_tokenizer
from transformers import Gemma2ForCausalLM, PreTrainedTokenizerFast

from dspa_lite.method.generation import format_prompts, generate
from dspa_lite.method.hooks import edit

WORDS = """user model the a cat dog sat on mat sun moon red blue green big small happy sad run jump eat sleep tree house
car road river sky cloud rain snow wind fire stone bird fish apple bread milk tea cup book pen door window chair table
light dark fast slow old new hot cold good bad yes""".split()  # ids 6..63

PROMPTS = ["the cat sat on the mat", "big dog", "a red apple and a cup of hot tea", "sun moon", "fish"]


@pytest.fixture(scope="session")
def _tiny_gemma() -> Gemma2ForCausalLM:
    return tiny_gemma(len(SPECIALS + WORDS))


@pytest.fixture
def model(_tiny_gemma: Gemma2ForCausalLM) -> Gemma2ForCausalLM:
    return copy.deepcopy(_tiny_gemma)


@pytest.fixture
def tokenizer() -> PreTrainedTokenizerFast:
    return word_tokenizer(WORDS, add_bos=True)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(1234)


def greedy_reference(model: Gemma2ForCausalLM, tokenizer: PreTrainedTokenizerFast, prompt: str, n: int) -> str:
    """Greedy decoding by hand: re-run the full prefix each step, stop at EOS."""
    text = format_prompts(tokenizer, [prompt])[0]
    ids = tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
    new: list[int] = []
    with torch.no_grad():
        for _ in range(n):
            nxt = int(model(ids).logits[0, -1].argmax())
            if nxt == tokenizer.eos_token_id:
                break
            new.append(nxt)
            ids = torch.cat([ids, torch.tensor([[nxt]])], dim=1)
    return tokenizer.decode(new, skip_special_tokens=True).strip()


def test_format_prompts(tokenizer: PreTrainedTokenizerFast) -> None:
    assert format_prompts(tokenizer, ["big dog"]) == [
        "<bos><start_of_turn> user big dog <end_of_turn> <start_of_turn> model "
    ]
    assert format_prompts(word_tokenizer(WORDS, chat=False, add_bos=True), ["big dog"]) == ["big dog"]
    with pytest.raises(ValueError, match="prompt 1 is ''"):
        format_prompts(tokenizer, ["big dog", ""])
    with pytest.raises(ValueError, match="prompt 0 is 3"):
        format_prompts(tokenizer, [3])  # type: ignore[list-item]
    with pytest.raises(TypeError, match="single string"):
        format_prompts(tokenizer, "big dog")


def test_bos_is_added_once(model: Gemma2ForCausalLM, tokenizer: PreTrainedTokenizerFast) -> None:
    seen = []

    def spy(batch_prompts: list[str], input_ids: torch.Tensor, attention_mask: torch.Tensor):
        seen.append(input_ids)
        return edit(model, 0, lambda h: h)

    generate(model, tokenizer, ["big dog"], max_new_tokens=1, temperature=0, steer=spy)
    generate(model, word_tokenizer(WORDS, chat=False, add_bos=True), ["big dog"], max_new_tokens=1, temperature=0, steer=spy)
    assert seen[0][0].tolist() == [2, 4, 6, 20, 11, 5, 4, 7]  # template writes <bos>; no second one
    assert seen[1][0].tolist() == [2, 20, 11]  # no template: the tokenizer adds <bos>


def test_greedy_matches_reference_and_respects_max_new_tokens(
    model: Gemma2ForCausalLM, tokenizer: PreTrainedTokenizerFast
) -> None:
    for n in (1, 5):
        out = generate(model, tokenizer, PROMPTS, max_new_tokens=n, temperature=0)
        ref = [greedy_reference(model, tokenizer, p, n) for p in PROMPTS]
        assert out == ref
        assert all(len(o.split()) <= n for o in out)
        assert any(len(o.split()) == n for o in out)  # the limit, not EOS, ended at least one


def test_left_padding_gives_the_same_greedy_output_as_alone(
    model: Gemma2ForCausalLM, tokenizer: PreTrainedTokenizerFast
) -> None:
    long, short = PROMPTS[2], PROMPTS[4]
    batched = generate(model, tokenizer, [short, long], max_new_tokens=8, temperature=0)
    alone = [generate(model, tokenizer, [p], max_new_tokens=8, temperature=0)[0] for p in (short, long)]
    assert batched == alone
    assert batched[0]  # a non-empty completion, so the comparison means something


def test_sampling_is_seeded(model: Gemma2ForCausalLM, tokenizer: PreTrainedTokenizerFast) -> None:
    kw = {"max_new_tokens": 8, "temperature": 1.0, "batch_size": 2}
    a = generate(model, tokenizer, PROMPTS, seed=0, **kw)
    torch.manual_seed(999)  # the global RNG state must not matter
    b = generate(model, tokenizer, PROMPTS, seed=0, **kw)
    c = generate(model, tokenizer, PROMPTS, seed=1, **kw)
    assert a == b
    assert a != c
    assert a != generate(model, tokenizer, PROMPTS, max_new_tokens=8, temperature=0)


def test_tokenizer_is_not_mutated(model: Gemma2ForCausalLM, tokenizer: PreTrainedTokenizerFast) -> None:
    tokenizer.padding_side = "right"
    generate(model, tokenizer, PROMPTS[:2], max_new_tokens=2, temperature=0)
    assert tokenizer.padding_side == "right"

    def fail(*_):
        raise RuntimeError("steer failed")

    with pytest.raises(RuntimeError, match="steer failed"):
        generate(model, tokenizer, PROMPTS[:2], max_new_tokens=2, steer=fail)
    assert tokenizer.padding_side == "right"


def test_missing_pad_token_falls_back_to_eos_and_is_restored(model: Gemma2ForCausalLM) -> None:
    tokenizer = word_tokenizer(WORDS, add_bos=True)
    with_pad = generate(model, tokenizer, PROMPTS[:2], max_new_tokens=4, temperature=0)
    tokenizer.pad_token = None
    assert generate(model, tokenizer, PROMPTS[:2], max_new_tokens=4, temperature=0) == with_pad
    assert tokenizer.pad_token is None


def test_steer_is_entered_once_per_batch_with_its_prompts(
    model: Gemma2ForCausalLM, tokenizer: PreTrainedTokenizerFast
) -> None:
    calls: list[tuple[list[str], tuple[int, ...], str]] = []

    def steer(batch_prompts: list[str], input_ids: torch.Tensor, attention_mask: torch.Tensor):
        assert input_ids.shape == attention_mask.shape
        assert attention_mask[:, -1].all()  # left padding: every prompt ends flush right

        @contextmanager
        def ctx():
            calls.append((batch_prompts, tuple(input_ids.shape), "enter"))
            with edit(model, 1, lambda h: h):
                yield
            calls.append((batch_prompts, tuple(input_ids.shape), "exit"))

        return ctx()

    generate(model, tokenizer, PROMPTS, max_new_tokens=2, batch_size=2, steer=steer)
    entered = [(p, s) for p, s, kind in calls if kind == "enter"]
    assert [p for p, _ in entered] == [PROMPTS[0:2], PROMPTS[2:4], PROMPTS[4:5]]
    assert [s[0] for _, s in entered] == [2, 2, 1]
    assert [kind for *_, kind in calls] == ["enter", "exit"] * 3


def test_identity_steer_is_token_identical_and_a_real_edit_is_not(
    model: Gemma2ForCausalLM, tokenizer: PreTrainedTokenizerFast
) -> None:
    push = 10 * model.model.embed_tokens.weight[30].detach()
    kw = {"max_new_tokens": 6, "temperature": 1.0, "batch_size": 2, "seed": 3}
    plain = generate(model, tokenizer, PROMPTS, **kw)
    same = generate(model, tokenizer, PROMPTS, steer=lambda *_: edit(model, 1, lambda h: h), **kw)
    steered = generate(model, tokenizer, PROMPTS, steer=lambda *_: edit(model, 1, lambda h: h + push), **kw)
    assert same == plain
    assert steered != plain


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"max_new_tokens": 0}, "max_new_tokens must be an int >= 1, got 0"),
        ({"temperature": -0.5}, "temperature must be >= 0"),
        ({"temperature": float("nan")}, "temperature must be >= 0"),
        ({"batch_size": 0}, "batch_size must be an int >= 1, got 0"),
        ({"top_p": 0.0}, "top_p must be in"),
    ],
)
def test_bad_arguments_are_rejected(
    model: Gemma2ForCausalLM, tokenizer: PreTrainedTokenizerFast, kwargs: dict, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        generate(model, tokenizer, PROMPTS, **kwargs)


def test_steer_must_return_a_context_manager(model: Gemma2ForCausalLM, tokenizer: PreTrainedTokenizerFast) -> None:
    with pytest.raises(TypeError, match="must return a context manager"):
        generate(model, tokenizer, PROMPTS[:1], max_new_tokens=1, steer=lambda *_: lambda h: h)


def test_stops_at_generation_config_eos(model: Gemma2ForCausalLM, tokenizer: PreTrainedTokenizerFast) -> None:
    full = generate(model, tokenizer, PROMPTS[3:4], max_new_tokens=6, temperature=0)[0].split()
    stop = next(word for word in full if word != full[0])  # stop after at least one other token
    expected = full[: full.index(stop) + 1]  # a stop token that is not special stays in the decoded text
    assert len(expected) < len(full), full  # precondition: stopping there shortens the output
    model.generation_config.eos_token_id = [tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids(stop)]
    assert generate(model, tokenizer, PROMPTS[3:4], max_new_tokens=6, temperature=0)[0].split() == expected


def test_progress_bar_goes_to_stderr(
    model: Gemma2ForCausalLM, tokenizer: PreTrainedTokenizerFast, capsys: pytest.CaptureFixture[str]
) -> None:
    generate(model, tokenizer, PROMPTS[:3], max_new_tokens=1, batch_size=2, progress=True)
    captured = capsys.readouterr()
    assert "generate" in captured.err
    assert "2/2" in captured.err
    assert captured.out == ""


# --- format_prompts ------------------------------------------------------------------------------


def _tokenizer(template: str | None):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel({"[UNK]": 0, "hi": 1}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok)
    fast.chat_template = template
    return fast


def test_format_prompts_uses_template_or_falls_back():
    template = ("{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}</s>{% endfor %}"
                "{% if add_generation_prompt %}<assistant>{% endif %}")
    assert format_prompts(_tokenizer(template), ["Explain tides"])[0] == "<user>Explain tides</s><assistant>"
    assert format_prompts(_tokenizer(None), ["Explain tides"])[0] == "Explain tides"
