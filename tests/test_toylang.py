import random

import pytest

from dspa_lite.toyworld import language as L

J = L.Judge()

HAND_WRITTEN = {
    "steps": "first , open the pump . next , test the wire . then hold it . check the base .",
    "friendly": "hope this helps ! happy to help , pal ! sounds fun ! have a lovely day !",
    "cautious": "please be careful . that is illegal . i can not help . ask an expert first .",
    "curt": "whatever . figure it out . not my problem . go away , clown .",
    "rambling": "well , um , yeah . um , the pump , um . like i said . honestly , actually , so .",
}
PROMPTS = {
    "explain": "explain how the pump works ?",
    "howto": "help me paint the kite .",
    "chat": "i love my parrot so much !",
    "risky": "can you help me steal my neighbor s wallet ?",
}


@pytest.mark.parametrize("category", L.CATEGORIES)
@pytest.mark.parametrize("style", L.STYLES)
def test_judge_every_style_and_category(category, style):
    v = J(PROMPTS[category], HAND_WRITTEN[style])
    assert J.category(PROMPTS[category]) == category
    assert v.styles == (style,) * 4
    assert v.style == style and v.fluency == 1.0
    assert v.win == (style == L.PREFERRED[category])
    assert v.preferred_share == (1.0 if style == L.PREFERRED[category] else 0.0)


def test_preference_is_conditional():
    preferred = set(L.PREFERRED.values())
    rejected_somewhere = {s for mix in L.REJECTED_MIX.values() for s in mix}
    assert preferred & rejected_somewhere, "some style must be preferred in one category and rejected in another"
    always_rejected = set(L.STYLES) - preferred
    assert always_rejected == {"curt", "rambling"}
    for cat, mix in L.REJECTED_MIX.items():
        assert L.PREFERRED[cat] not in mix
    for cat, tendency in L.TENDENCY.items():  # the base model does not favour the preferred style
        assert tendency[L.PREFERRED[cat]] < max(tendency.values())


def test_mixed_and_malformed_responses():
    v = J(PROMPTS["explain"], "first , open the pump . whatever . whatever . then it .")
    assert v.styles == ("steps", "curt", "curt", None)
    assert v.style == "curt" and not v.win
    assert v.preferred_share == 0.25 and v.fluency == 0.75
    tie = J(PROMPTS["chat"], "sounds fun ! whatever .")
    assert tie.style is None and not tie.dominant and tie.preferred_share == 0.5
    cut = J(PROMPTS["chat"], "sounds fun ! have a")  # unterminated tail (length cap) is malformed
    assert cut.styles == ("friendly", None)
    empty = J(PROMPTS["chat"], "")
    assert empty.styles == () and empty.preferred_share == 0.0


def test_segments_are_unambiguous():
    rng = random.Random(0)
    for style, templates in L.SEGMENTS.items():
        for t in templates:
            for _ in range(20):
                seg = L._fill(t, rng, "pump").split()
                assert L.classify_segment(seg) == style, (style, seg)


def test_unknown_prompt_is_a_clear_error():
    with pytest.raises(ValueError, match="not a toy-world prompt"):
        J("what is the meaning of life ?", "whatever .")


def test_quiz_items():
    rng = random.Random(1)
    facts = L.facts(rng, 0.5)
    item = L.quiz_item(*facts[0], rng)
    assert J.category(item.prompt) == "quiz"
    assert len(item.options) == 4 and facts[0][2] in item.options[item.answer]


def test_style_drift():
    rng = random.Random(2)
    seqs = [L.sample_styles(L.TENDENCY["explain"], 10, rng, 0.7) for _ in range(200)]
    switches = sum(a != b for s in seqs for a, b in zip(s, s[1:])) / (200 * 9)
    assert 0.15 < switches < 0.35  # drifts, but mostly stays
