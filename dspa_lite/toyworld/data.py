"""The toy world's text, from its :class:`ToyConfig`: training dialogues, preference triples, quiz items
and evaluation prompts. Every draw comes from a random generator seeded by the config's seed and a purpose,
so the same config always gives the same text (the language itself is :mod:`dspa_lite.toyworld.language`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import random
from dataclasses import dataclass

from ..loading.config import ConfigError
from ..loading.data import PreferenceTriple
from ..method.generation import format_prompts
from . import language as L
from . import store

__all__ = ["ToyConfig", "base_response", "styled_response", "corpus", "make_triples", "make_mcq", "eval_prompts",
           "dialogue_texts", "dialogue_text"]


@dataclass(frozen=True)
class ToyConfig:
    """Everything the toy world is built from; its hash names the cache folder."""

    seed: int = 0
    # the language
    p_stay: float = 0.7  # a response's style stays from one segment to the next with this chance
    min_segments: int = 8
    max_segments: int = 12
    seen_fraction: float = 0.7  # share of quiz facts that appear in the base model's training text
    quiz_fraction: float = 0.15  # share of training dialogues that are quiz answers
    chosen_weight: float = 0.85  # how focused a triple's chosen/rejected response is on its style
    n_corpus: int = 24_000
    n_triples: dict | None = None  # filled in __post_init__
    # the model (Gemma-2 architecture)
    d_model: int = 128
    n_layers: int = 4
    n_heads: int = 4
    n_kv_heads: int = 2
    d_mlp: int = 512
    context: int = 128
    batch_size: int = 16
    steps: int = 600
    lr: float = 3e-3
    # the SAEs
    l_in: int = 1
    l_out: int = 2
    d_sae: int = 1024
    sae_tokens: int = 800_000
    sae_l1: float = 6.0
    sae_lr: float = 1e-3

    def __post_init__(self):
        if self.n_triples is None:
            object.__setattr__(self, "n_triples", {"train": 1000, "test": 400})
        if not 0 <= self.l_in < self.l_out < self.n_layers:
            raise ConfigError(f"need 0 <= l_in < l_out < n_layers, got l_in={self.l_in}, l_out={self.l_out}, "
                              f"n_layers={self.n_layers}")
        if not 0 < self.p_stay < 1:
            raise ConfigError(f"p_stay={self.p_stay} must be in (0, 1)")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def hash(self) -> str:
        blob = json.dumps({"config": self.to_dict(), "format": store.FORMAT_VERSION}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:12]


def _rng(cfg: ToyConfig, purpose: str) -> random.Random:
    return random.Random(f"{cfg.seed}:{purpose}")


def _n_segments(cfg: ToyConfig, rng: random.Random) -> int:
    return rng.randint(cfg.min_segments, cfg.max_segments)


def base_response(cfg: ToyConfig, prompt: L.Prompt, rng: random.Random) -> str:
    """A response as the base model's training text writes it: the category's tendency, drifting."""
    styles = L.sample_styles(L.TENDENCY[prompt.category], _n_segments(cfg, rng), rng, cfg.p_stay)
    return L.render(styles, prompt.topic, rng)


def styled_response(cfg: ToyConfig, prompt: L.Prompt, style: str, rng: random.Random) -> str:
    """A response focused on ``style`` (still drifting a little, as rated responses do)."""
    mix = L.focused_mix(style, cfg.chosen_weight)
    styles = L.sample_styles(mix, _n_segments(cfg, rng), rng, cfg.p_stay)
    styles[0] = style
    return L.render(styles, prompt.topic, rng)


def quiz_facts(cfg: ToyConfig) -> list[tuple[str, str, str, bool]]:
    return L.facts(_rng(cfg, "facts"), cfg.seen_fraction)


def corpus(cfg: ToyConfig) -> list[tuple[str, str]]:
    """The base model's training dialogues as (prompt, response) pairs."""
    rng = _rng(cfg, "corpus")
    seen = [f for f in quiz_facts(cfg) if f[3]]
    out = []
    for _ in range(cfg.n_corpus):
        if rng.random() < cfg.quiz_fraction:
            item = L.quiz_item(*rng.choice(seen), rng)
            out.append((item.prompt, item.options[item.answer]))
        else:
            p = L.sample_prompt(rng.choice(L.CATEGORIES), rng)
            out.append((p.text, base_response(cfg, p, rng)))
    return out


def make_triples(cfg: ToyConfig, split: str) -> list[PreferenceTriple]:
    """Preference triples: chosen in the category's preferred style, rejected in a rejected one."""
    rng = _rng(cfg, f"triples:{split}")
    out, seen = [], set()
    while len(out) < cfg.n_triples[split]:
        cat = L.CATEGORIES[len(out) % len(L.CATEGORIES)]
        p = L.sample_prompt(cat, rng)
        rejected_style = L._draw(L.REJECTED_MIX[cat], rng)
        t = PreferenceTriple(
            prompt=p.text,
            chosen=styled_response(cfg, p, L.PREFERRED[cat], rng),
            rejected=styled_response(cfg, p, rejected_style, rng),
            category=cat,
            meta={"rejected_style": rejected_style},
        )
        if (t.prompt, t.chosen, t.rejected) not in seen:
            seen.add((t.prompt, t.chosen, t.rejected))
            out.append(t)
    return out


def make_mcq(cfg: ToyConfig, split: str) -> list[L.MCQItem]:
    rng = _rng(cfg, f"mcq:{split}")
    return [L.quiz_item(c, a, v, s, rng) for c, a, v, s in quiz_facts(cfg)]


def eval_prompts(cfg: ToyConfig, split: str, n: int) -> list[L.Prompt]:
    """``n`` prompts balanced over categories (the ``test`` split never overlaps training text by seed)."""
    rng = _rng(cfg, f"prompts:{split}")
    return [L.sample_prompt(L.CATEGORIES[i % len(L.CATEGORIES)], rng) for i in range(n)]


def dialogue_texts(tokenizer, pairs: list[tuple[str, str]]) -> list[str]:
    """Whole dialogues (chat-formatted prompt, response, end of turn); the template is rendered once."""
    head, tail = format_prompts(tokenizer, ["PROMPT"])[0].split("PROMPT")
    return [f"{head}{p}{tail}{r} <end_of_turn>" for p, r in pairs]


def dialogue_text(tokenizer, prompt: str, response: str) -> str:
    return dialogue_texts(tokenizer, [(prompt, response)])[0]
