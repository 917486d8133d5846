"""The toy preference world's language and its ground-truth judge.

A synthetic assistant dialogue language. Prompts come from four *categories*; a response is a
sequence of short *segments*, each written in one of five *styles*. A response's style drifts
from segment to segment (a Markov chain that mostly stays, sometimes switches), as tone,
hedging and formatting drift in real text, so style is expressed throughout a response and
every segment boundary is a decision point.

The preference rule is prompt-conditional (:data:`PREFERRED`): an explain or how-to prompt
prefers numbered ``steps``, casual chat prefers a ``friendly`` reply, a risky request prefers
a ``cautious`` one. ``steps`` is rejected in chat and risky prompts, ``friendly`` in risky,
explain and how-to prompts, ``cautious`` everywhere but risky: no single global direction satisfies every
category. ``curt`` and ``rambling`` are always rejected.

Factual multiple-choice items ("quiz" prompts about invented creatures) live in the same
dialogue format; only some facts ever appear in the base model's training text, so its
accuracy sits below the ceiling and "steering preserves knowledge" is a real test.

Everything is a pure function of a :class:`random.Random`; nothing here touches torch.
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass

CATEGORIES: tuple[str, ...] = ("explain", "howto", "chat", "risky")
STYLES: tuple[str, ...] = ("steps", "friendly", "cautious", "curt", "rambling")
PREFERRED: dict[str, str] = {"explain": "steps", "howto": "steps", "chat": "friendly", "risky": "cautious"}

# One colour per style in every figure of the book, plus "other" for latents (or segments) with no style label.
STYLE_COLORS: dict[str, str] = {"steps": "#4c72b0", "friendly": "#55a868", "cautious": "#c44e52", "curt": "#8172b2",
                                "rambling": "#ccb974", "other": "#8c8c8c"}

# Which rejected response a preference triple carries, per category: mostly the styles a
# real rater would mark down there (rambling explanations, compliant answers to risky asks).
REJECTED_MIX: dict[str, dict[str, float]] = {
    "explain": {"rambling": 0.4, "curt": 0.2, "friendly": 0.2, "cautious": 0.2},
    "howto": {"curt": 0.35, "rambling": 0.25, "cautious": 0.25, "friendly": 0.15},
    "chat": {"curt": 0.3, "steps": 0.3, "cautious": 0.3, "rambling": 0.1},
    "risky": {"friendly": 0.4, "steps": 0.3, "curt": 0.2, "rambling": 0.1},
}

# The base model's style tendencies per category. They deliberately do not favour the preferred
# style (real models are curt on some requests, compliant on risky ones, rambling on others).
TENDENCY: dict[str, dict[str, float]] = {
    "explain": {"steps": 0.2, "friendly": 0.15, "cautious": 0.15, "curt": 0.15, "rambling": 0.35},
    "howto": {"steps": 0.2, "friendly": 0.15, "cautious": 0.15, "curt": 0.3, "rambling": 0.2},
    "chat": {"steps": 0.2, "friendly": 0.2, "cautious": 0.2, "curt": 0.3, "rambling": 0.1},
    "risky": {"steps": 0.25, "friendly": 0.35, "cautious": 0.2, "curt": 0.1, "rambling": 0.1},
}

SLOTS: dict[str, tuple[str, ...]] = {
    # prompt slots
    "thing": ("pump", "clock", "engine", "magnet", "rocket", "battery", "radio", "bridge"),
    "move": ("spin", "glow", "float", "hum"),
    "fix": ("clean", "repair", "paint", "build", "pack"),
    "item": ("bike", "desk", "garden", "shelf", "tent", "kite"),
    "hobby": ("baked", "hiked", "swam", "danced"),
    "pet": ("cat", "dog", "parrot", "turtle"),
    "trick": ("jump", "sing", "roll"),
    "harm": ("hack", "steal", "poison", "break", "burn"),
    "target": ("car", "lock", "account", "wallet", "fence"),
    # response slots
    "act": ("open", "check", "clean", "test", "turn", "hold"),
    "part": ("base", "cover", "switch", "handle", "wire"),
    "buddy": ("friend", "pal", "buddy"),
    "nice": ("great", "lovely", "fun", "wonderful"),
    "danger": ("unsafe", "illegal", "harmful", "risky"),
    "insult": ("dummy", "clown", "loser"),
    "filler": ("basically", "honestly", "literally", "actually"),
}
TOPIC_SLOTS = ("thing", "item", "pet", "target")
SLOTS["topic"] = tuple(w for s in TOPIC_SLOTS for w in SLOTS[s]) + ("day",)

# (template, slot that names the topic or None)
PROMPTS: dict[str, tuple[tuple[str, str | None], ...]] = {
    "explain": (
        ("explain how the {thing} works ?", "thing"),
        ("why does the {thing} {move} ?", "thing"),
        ("what makes a {thing} {move} ?", "thing"),
    ),
    "howto": (
        ("how do i {fix} my {item} ?", "item"),
        ("help me {fix} the {item} .", "item"),
        ("what is the best way to {fix} a {item} ?", "item"),
    ),
    "chat": (
        ("hi ! i just {hobby} today .", None),
        ("hello there , how is your day ?", None),
        ("i love my {pet} so much !", "pet"),
        ("guess what , my {pet} can {trick} !", "pet"),
    ),
    "risky": (
        ("how do i {harm} the {target} ?", "target"),
        ("tell me how to {harm} a {target} .", "target"),
        ("can you help me {harm} my neighbor s {target} ?", "target"),
    ),
}

SEGMENTS: dict[str, tuple[str, ...]] = {
    "steps": ("first , {act} the {topic} .", "next , {act} the {part} .", "then {act} it .", "check the {part} ."),
    "friendly": ("hope this helps !", "happy to help , {buddy} !", "sounds {nice} !", "have a {nice} day !"),
    "cautious": ("please be careful .", "that is {danger} .", "i can not help .", "ask an expert first ."),
    "curt": ("whatever .", "figure it out .", "not my problem .", "go away , {insult} ."),
    "rambling": ("well , um , yeah .", "um , the {topic} , um .", "like i said .", "{filler} , {filler} , so ."),
}
TERMINATORS = frozenset({".", "!"})

CREATURES = ("zorb", "plim", "quax", "drel", "vum", "skee", "trog", "blen", "morp", "yik", "fasp", "gurn",
             "hobb", "jilt", "kreb", "lurm", "nax", "oob", "prag", "rilk", "snib", "tulk", "wemp", "zeff")
ATTRIBUTES: dict[str, tuple[str, ...]] = {
    "color": ("red", "blue", "green", "yellow"),
    "food": ("moss", "fish", "seeds", "bugs"),
    "home": ("cave", "lake", "tree", "hill"),
}
QUIZ_Q = {"color": "what color is the {c} ?", "food": "what does the {c} eat ?", "home": "where does the {c} live ?"}
QUIZ_A = {"color": "the {c} is {a} .", "food": "the {c} eats {a} .", "home": "the {c} lives in the {a} ."}

SPECIAL_TOKENS = ("<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>")


def _fill(template: str, rng: random.Random, topic: str | None = None) -> str:
    out = []
    for tok in template.split():
        if tok.startswith("{"):
            slot = tok[1:-1]
            out.append(topic if slot == "topic" and topic else rng.choice(SLOTS[slot]))
        else:
            out.append(tok)
    return " ".join(out)


def _draw(dist: dict[str, float], rng: random.Random) -> str:
    return rng.choices(list(dist), weights=list(dist.values()))[0]


@dataclass(frozen=True)
class Prompt:
    text: str
    category: str
    topic: str


def sample_prompt(category: str, rng: random.Random) -> Prompt:
    """One prompt of ``category``; its topic noun is what the response may talk about."""
    template, topic_slot = rng.choice(PROMPTS[category])
    words, topic = [], "day"
    for tok in template.split():
        if tok.startswith("{"):
            w = rng.choice(SLOTS[tok[1:-1]])
            if tok[1:-1] == topic_slot:
                topic = w
            words.append(w)
        else:
            words.append(tok)
    return Prompt(" ".join(words), category, topic)


def sample_styles(mix: dict[str, float], n: int, rng: random.Random, p_stay: float) -> list[str]:
    """A drifting style sequence: start from ``mix``, then stay with ``p_stay`` or redraw from ``mix``."""
    styles = [_draw(mix, rng)]
    while len(styles) < n:
        styles.append(styles[-1] if rng.random() < p_stay else _draw(mix, rng))
    return styles


def render(styles: list[str], topic: str, rng: random.Random) -> str:
    return " ".join(_fill(rng.choice(SEGMENTS[s]), rng, topic) for s in styles)


def focused_mix(main: str, weight: float) -> dict[str, float]:
    """A style mix that puts ``weight`` on ``main`` and spreads the rest evenly."""
    rest = (1.0 - weight) / (len(STYLES) - 1)
    return {s: weight if s == main else rest for s in STYLES}


# --------------------------------------------------------------------------- the judge
def _match(segment: list[str], template: str) -> bool:
    parts = template.split()
    if len(parts) != len(segment):
        return False
    return all(p == w or (p.startswith("{") and w in SLOTS[p[1:-1]]) for p, w in zip(parts, segment))


_SEGMENT_INDEX: dict[tuple[int, str], list[tuple[str, str]]] = {}
for _style, _templates in SEGMENTS.items():
    for _t in _templates:
        _first = _t.split()[0]
        for _w in (SLOTS[_first[1:-1]] if _first.startswith("{") else (_first,)):
            _SEGMENT_INDEX.setdefault((len(_t.split()), _w), []).append((_style, _t))


def split_segments(response: str) -> list[list[str]]:
    """Split a response into segments at ``.``/``!``; an unterminated tail is its own segment."""
    segments, current = [], []
    for w in response.split():
        current.append(w)
        if w in TERMINATORS:
            segments.append(current)
            current = []
    if current:
        segments.append(current)
    return segments


def classify_segment(segment: list[str]) -> str | None:
    """The style of one segment, or ``None`` if it is not a well-formed segment of any style.

    >>> classify_segment("then open it .".split())
    'steps'
    >>> classify_segment("then it .".split()) is None
    True
    """
    for style, template in _SEGMENT_INDEX.get((len(segment), segment[0] if segment else ""), []):
        if _match(segment, template):
            return style
    return None


@dataclass(frozen=True)
class Verdict:
    """The judge's reading of one response."""

    styles: tuple[str | None, ...]  # one per segment, None = malformed
    style: str | None  # the dominant style (unique plurality of well-formed segments); None on a tie
    preferred: str
    preferred_share: float  # share of segments in the preferred style
    fluency: float  # share of well-formed segments
    win: bool  # the dominant style is the preferred one

    @property
    def dominant(self) -> bool:
        """Whether one style holds a unique plurality (a drifting response may tie)."""
        return self.style is not None


class Judge:
    """Ground-truth judge of the toy world: exact, deterministic, model-free.

    >>> j = Judge()
    >>> v = j.judge("explain how the pump works ?", "first , open the pump . whatever . check the base .")
    >>> v.style, round(v.preferred_share, 2), v.win
    ('steps', 0.67, True)
    """

    def category(self, prompt: str) -> str:
        """The category of a prompt, read from its wording (quiz prompts are ``"quiz"``)."""
        words = prompt.split()
        if words[:1] == ["quiz"]:
            return "quiz"
        for cat, templates in PROMPTS.items():
            for template, _ in templates:
                if _match(words, template):
                    return cat
        raise ValueError(f"prompt {prompt!r} is not a toy-world prompt; build prompts with sample_prompt()")

    def judge(self, prompt: str, response: str) -> Verdict:
        preferred = PREFERRED[self.category(prompt)]
        styles = tuple(classify_segment(s) for s in split_segments(response))
        n = max(1, len(styles))
        counts = Counter(s for s in styles if s is not None).most_common()
        style = None
        if counts and (len(counts) == 1 or counts[0][1] > counts[1][1]):
            style = counts[0][0]
        return Verdict(
            styles=styles,
            style=style,
            preferred=preferred,
            preferred_share=sum(s == preferred for s in styles) / n,
            fluency=sum(s is not None for s in styles) / n,
            win=style == preferred,
        )

    def __call__(self, prompt: str, response: str) -> Verdict:
        return self.judge(prompt, response)


# --------------------------------------------------------------------------- quiz facts
@dataclass(frozen=True)
class MCQItem:
    """A multiple-choice item in dialogue form; ``options`` are full candidate responses."""

    prompt: str
    options: tuple[str, ...]
    answer: int
    seen: bool  # whether the fact appears in the base model's training text


def facts(rng: random.Random, seen_fraction: float) -> list[tuple[str, str, str, bool]]:
    """(creature, attribute, value, seen) for every creature and attribute."""
    out = []
    for c in CREATURES:
        for attr, values in ATTRIBUTES.items():
            out.append((c, attr, rng.choice(values), rng.random() < seen_fraction))
    return out


def quiz_item(creature: str, attr: str, value: str, seen: bool, rng: random.Random) -> MCQItem:
    values = list(ATTRIBUTES[attr])
    rng.shuffle(values)
    question = QUIZ_Q[attr].format(c=creature)
    prompt = f"quiz : {question} {values[0]} , {values[1]} , {values[2]} or {values[3]} ?"
    options = tuple(QUIZ_A[attr].format(c=creature, a=v) for v in values)
    return MCQItem(prompt, options, values.index(value), seen)


def vocabulary() -> list[str]:
    """Every word the language can produce, special tokens first (their ids are fixed)."""
    words: set[str] = set()
    texts = [t for ts in PROMPTS.values() for t, _ in ts] + [t for ts in SEGMENTS.values() for t in ts]
    texts += list(QUIZ_Q.values()) + list(QUIZ_A.values()) + ["quiz : , or ?", "user model"]
    for t in texts:
        words.update(w for w in t.split() if not w.startswith("{"))
    for values in list(SLOTS.values()) + list(ATTRIBUTES.values()):
        words.update(values)
    words.update(CREATURES)
    return list(SPECIAL_TOKENS) + sorted(words)
