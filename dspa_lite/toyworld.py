"""The embedded toy preference world: tokenizer, tiny Gemma-2 model, SAEs and data, built offline.

``load()`` returns a :class:`ToyWorld`. The first call builds everything from a seed (a few
minutes on two CPU cores, with progress bars on stderr) into
``DSPA_CACHE/toyworld/<config-hash>/``; later calls load it in seconds. The language and the
ground-truth judge live in :mod:`dspa_lite.toylang`.

Build steps: the word-level tokenizer (``tokenizers``, saved as a ``PreTrainedTokenizerFast``
with a chat template) → the base model's training text (dialogues whose response styles follow
each category's *tendency*, plus quiz answers for the facts the model may know) → a ~1M-parameter
``Gemma2ForCausalLM`` trained on packed text → two SAEs trained with sae-lens at ``l_in`` and
``l_out`` → preference triples and quiz items → a report of what was built (:mod:`toyreport`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import random
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from . import toylang as L
from .config import ConfigError, cache_dir, fast_mode
from .data import PreferenceTriple, read_jsonl, write_jsonl

__all__ = ["ToyConfig", "ToyWorld", "load", "build"]

CHAT_TEMPLATE = (
    "{{ bos_token }} {% for m in messages %}<start_of_turn> "
    "{{ 'model' if m['role'] == 'assistant' else m['role'] }} {{ m['content'] }} <end_of_turn> "
    "{% endfor %}{% if add_generation_prompt %}<start_of_turn> model {% endif %}"
)
FORMAT_VERSION = 1


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
        blob = json.dumps({"config": self.to_dict(), "format": FORMAT_VERSION}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:12]


# --------------------------------------------------------------------------- data
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


# --------------------------------------------------------------------------- tokenizer and model
def build_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(L.vocabulary())}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.add_special_tokens(list(L.SPECIAL_TOKENS))
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<bos>", eos_token="<end_of_turn>", pad_token="<pad>", unk_token="<unk>",
        additional_special_tokens=["<start_of_turn>", "<eos>"], chat_template=CHAT_TEMPLATE,
    )


def dialogue_texts(tokenizer, pairs: list[tuple[str, str]]) -> list[str]:
    """Whole dialogues (chat-formatted prompt, response, end of turn); the template is rendered once."""
    from .generation import format_prompts

    head, tail = format_prompts(tokenizer, ["PROMPT"])[0].split("PROMPT")
    return [f"{head}{p}{tail}{r} <end_of_turn>" for p, r in pairs]


def dialogue_text(tokenizer, prompt: str, response: str) -> str:
    return dialogue_texts(tokenizer, [(prompt, response)])[0]


def build_model(cfg: ToyConfig, vocab_size: int, tokenizer):
    from transformers import Gemma2Config, Gemma2ForCausalLM

    mcfg = Gemma2Config(
        vocab_size=vocab_size, hidden_size=cfg.d_model, intermediate_size=cfg.d_mlp,
        num_hidden_layers=cfg.n_layers, num_attention_heads=cfg.n_heads, num_key_value_heads=cfg.n_kv_heads,
        head_dim=cfg.d_model // cfg.n_heads, query_pre_attn_scalar=cfg.d_model // cfg.n_heads,
        max_position_embeddings=2 * cfg.context, sliding_window=cfg.context,
        pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, attn_implementation="eager",
    )
    torch.manual_seed(cfg.seed)
    return Gemma2ForCausalLM(mcfg)


def packed_rows(token_lists: list[list[int]], context: int) -> list[list[int]]:
    """Concatenate dialogues (each starting with BOS) and cut the stream into rows of ``context``."""
    stream = [t for ids in token_lists for t in ids]
    return [stream[i:i + context] for i in range(0, len(stream) - context + 1, context)]


def train_model(cfg: ToyConfig, model, rows: list[list[int]], progress: bool = True) -> float:
    """Plain AdamW with warm-up and cosine decay on packed rows; returns the final mean loss."""
    data = torch.tensor(rows)
    gen = torch.Generator().manual_seed(cfg.seed)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.01, betas=(0.9, 0.95))
    warm = max(1, cfg.steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warm) * 0.5 * (1 + math.cos(math.pi * min(1.0, s / cfg.steps))))
    model.train()
    recent: list[float] = []
    bar = tqdm(range(cfg.steps), desc="train toy model", disable=not progress, file=sys.stderr)
    for _ in bar:
        idx = torch.randint(len(data), (cfg.batch_size,), generator=gen)
        batch = data[idx]
        loss = model(input_ids=batch, labels=batch).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        recent = (recent + [loss.item()])[-50:]
        bar.set_postfix(loss=f"{sum(recent) / len(recent):.3f}")
    model.eval()
    return sum(recent) / len(recent)


# --------------------------------------------------------------------------- build, cache, load
def _dialogue_ids(tokenizer, pairs: list[tuple[str, str]]) -> list[list[int]]:
    return tokenizer(dialogue_texts(tokenizer, pairs), add_special_tokens=False).input_ids


def build(cfg: ToyConfig, path: Path, progress: bool = True) -> None:
    """Build the whole world into ``path`` atomically (a temporary folder, then one rename)."""
    from .sae import train_toy_sae
    from .toyreport import build_report

    path = Path(path)
    tmp = path.parent / f".{path.name}.tmp-{random.getrandbits(32):08x}"
    tmp.mkdir(parents=True)
    times: dict[str, float] = {}
    try:
        t0 = time.perf_counter()
        torch.manual_seed(cfg.seed)
        tokenizer = build_tokenizer()
        rows = packed_rows(_dialogue_ids(tokenizer, corpus(cfg)), cfg.context)
        model = build_model(cfg, len(tokenizer), tokenizer)
        train_loss = train_model(cfg, model, rows, progress)
        model.save_pretrained(tmp / "model")
        tokenizer.save_pretrained(tmp / "model")
        times["model_s"] = time.perf_counter() - t0
        for name, layer in (("sae_in", cfg.l_in), ("sae_out", cfg.l_out)):
            t1 = time.perf_counter()
            if progress:
                print(f"training {name} (layer {layer}) with sae-lens...", file=sys.stderr, flush=True)
            train_toy_sae(tmp / "model", rows, layer, tmp / name, d_sae=cfg.d_sae, training_tokens=cfg.sae_tokens,
                          l1_coefficient=cfg.sae_l1, lr=cfg.sae_lr, seed=cfg.seed,
                          exclude_token_ids=[tokenizer.bos_token_id, tokenizer.pad_token_id])
            times[f"{name}_s"] = time.perf_counter() - t1
        for split in ("train", "test"):
            write_jsonl(make_triples(cfg, split), tmp / f"triples_{split}.jsonl")
        (tmp / "config.json").write_text(json.dumps(cfg.to_dict(), indent=1))
        world = ToyWorld(tmp, cfg)
        t2 = time.perf_counter()
        report = build_report(world, progress=progress)
        times["report_s"] = time.perf_counter() - t2
        report.update(params=sum(p.numel() for p in model.parameters()), train_loss=train_loss,
                      build_seconds={**times, "total_s": time.perf_counter() - t0})
        (tmp / "report.json").write_text(json.dumps(report, indent=1))  # written last: marks completeness
        if path.exists():
            shutil.rmtree(path)
        tmp.rename(path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


class ToyWorld:
    """A built toy world: ``model``, ``tokenizer``, ``sae_in``, ``sae_out``, ``l_in``, ``l_out``, ``judge``.

    Loading is lazy per part, so a corrupt file surfaces as one clear error (and :func:`load`
    rebuilds the world).
    """

    def __init__(self, path: Path, cfg: ToyConfig, fast: bool = False):
        from transformers import AutoModelForCausalLM, AutoTokenizer
        from transformers.utils import logging as hf_logging

        from .sae import load_from_disk

        self.path, self.config, self.fast = Path(path), cfg, fast
        self.l_in, self.l_out = cfg.l_in, cfg.l_out
        self.judge = L.Judge()
        self.model_id = f"dspa-lite/toy-{cfg.hash()}"
        self.tokenizer = AutoTokenizer.from_pretrained(self.path / "model")
        bars = hf_logging.is_progress_bar_enabled()
        hf_logging.disable_progress_bar()  # a million parameters load in milliseconds: no "Loading weights" bar
        try:
            self.model = AutoModelForCausalLM.from_pretrained(self.path / "model", attn_implementation="eager").eval()
        finally:
            if bars:
                hf_logging.enable_progress_bar()
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.model.config.name_or_path = self.model_id  # an identity that does not depend on DSPA_CACHE
        self.sae_in = load_from_disk(self.path / "sae_in")
        self.sae_out = load_from_disk(self.path / "sae_out")
        for sae, layer in ((self.sae_in, self.l_in), (self.sae_out, self.l_out)):
            sae.cfg.metadata.model_name = self.model_id
            sae.cfg.metadata.release = f"dspa-lite-toy-{cfg.hash()}"
            sae.cfg.metadata.sae_id = f"layer_{layer}/width_{sae.cfg.d_sae}"
        report = self.path / "report.json"
        self.report = json.loads(report.read_text()) if report.exists() else {}

    def triples(self, split: str = "train") -> list[PreferenceTriple]:
        """Preference triples of ``split`` (``train`` or ``test``)."""
        if split not in ("train", "test"):
            raise ValueError(f"split={split!r}: the toy world has 'train' and 'test' triples")
        return read_jsonl(self.path / f"triples_{split}.jsonl")

    def mcq(self, split: str = "test") -> list[L.MCQItem]:
        """Quiz items about every fact (``seen`` says whether the model's training text had it)."""
        return make_mcq(self.config, split)

    def prompts(self, split: str = "test", n: int | None = None) -> list[str]:
        """``n`` held-out prompts balanced over categories (default 200, or 80 in fast mode)."""
        n = n or (80 if self.fast else 200)
        return [p.text for p in eval_prompts(self.config, split, n)]

    def __repr__(self) -> str:
        return f"ToyWorld({self.path}, l_in={self.l_in}, l_out={self.l_out}, d_sae={self.sae_out.cfg.d_sae})"


def load(fast: bool | None = None, config: ToyConfig | None = None, force: bool = False,
         progress: bool = True) -> ToyWorld:
    """The toy world, built on first use and cached under ``DSPA_CACHE/toyworld/<config-hash>/``.

    Args:
        fast: shrink default evaluation sizes (``prompts()``); default from ``DSPA_FAST``.
            The world itself is the same in both modes.
        force: rebuild even if a cached copy exists.
    """
    cfg = config or ToyConfig()
    fast = fast_mode() if fast is None else fast
    path = cache_dir("toyworld") / cfg.hash()
    if force or not (path / "report.json").is_file():
        if progress:
            print(f"building the toy world into {path} (a few minutes, once)", file=sys.stderr, flush=True)
        build(cfg, path, progress)
    try:
        return ToyWorld(path, cfg, fast)
    except Exception as e:  # noqa: BLE001 - any unreadable part means the cache is corrupt
        print(f"the cached toy world at {path} could not be loaded ({type(e).__name__}: {str(e)[:200]}); "
              "rebuilding it", file=sys.stderr, flush=True)
        build(cfg, path, progress)
        return ToyWorld(path, cfg, fast)
