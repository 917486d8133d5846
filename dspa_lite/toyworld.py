"""The embedded toy preference world: tokenizer, tiny Gemma-2 model, SAEs and data, built offline.

``load()`` returns a :class:`ToyWorld`: the reference world (seed 0) that ships with the package,
or, for another seed (``DSPA_TOY_SEED``), one built once (a few minutes on two CPU cores, with
progress bars on stderr) into ``DSPA_CACHE/toyworld/<config-hash>/``. Where worlds live and how
they are verified is :mod:`dspa_lite.toystore`; the language and the ground-truth judge live in
:mod:`dspa_lite.toylang`.

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
import os
import random
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from . import toylang as L
from . import toystore as store
from .config import ConfigError, cache_dir, fast_mode
from .data import PreferenceTriple, read_jsonl, write_jsonl

__all__ = ["ToyConfig", "ToyWorld", "load", "build", "load_tokenizer", "world_path", "WorldError"]

WorldError = store.WorldError

CHAT_TEMPLATE = (
    "{{ bos_token }} {% for m in messages %}<start_of_turn> "
    "{{ 'model' if m['role'] == 'assistant' else m['role'] }} {{ m['content'] }} <end_of_turn> "
    "{% endfor %}{% if add_generation_prompt %}<start_of_turn> model {% endif %}"
)


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


BUILD_THREADS = 1  # torch threads during a build: pinned, so a build does not depend on the core count


def _environment() -> dict:
    import platform

    import sae_lens
    import transformers

    cpu = platform.processor() or "unknown"
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {"python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__,
            "sae_lens": sae_lens.__version__, "machine": platform.machine(), "cpu": cpu, "threads": BUILD_THREADS}


def build(cfg: ToyConfig, path: Path, progress: bool = True) -> None:
    """Build the whole world into ``path`` atomically (a temporary folder, its manifest, then one rename).

    Torch runs on :data:`BUILD_THREADS` threads, so the same seed on the same machine gives
    byte-identical files. An interrupted build leaves no half-written world behind.
    """
    from .sae import train_toy_sae
    from .toyreport import build_report

    path = Path(path)
    tmp = path.parent / f".{path.name}.tmp-{os.getpid()}-{random.getrandbits(32):08x}"
    tmp.mkdir(parents=True)
    times: dict[str, float] = {}
    threads = torch.get_num_threads()
    torch.set_num_threads(BUILD_THREADS)
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
        _canonical_sae_files(tmp)
        for split in ("train", "test"):
            write_jsonl(make_triples(cfg, split), tmp / f"triples_{split}.jsonl")
        (tmp / "config.json").write_text(json.dumps(cfg.to_dict(), indent=1))
        t2 = time.perf_counter()
        report = build_report(ToyWorld(tmp, cfg), progress=progress)
        times["report_s"] = time.perf_counter() - t2
        report.update(params=sum(p.numel() for p in model.parameters()), train_loss=train_loss)
        (tmp / "report.json").write_text(json.dumps(report, indent=1))
        # when, where and how long: kept apart from the content, which is byte-identical per seed
        (tmp / "build_info.json").write_text(json.dumps(
            {"build_seconds": {**times, "total_s": time.perf_counter() - t0}, **_environment()}, indent=1))
        store.write_manifest(tmp, cfg.hash(), cfg.seed)
        if path.exists():
            shutil.rmtree(path)
        tmp.rename(path)
    finally:
        torch.set_num_threads(threads)
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _canonical_sae_files(folder: Path) -> None:
    """Make sae-lens's JSON files the same for the same seed: the (temporary) folders it trained in become
    paths relative to the world, and keys are sorted (their order varies between processes)."""
    for f in sorted(folder.glob("sae_*/*.json")):
        data = json.loads(f.read_text().replace(f"{folder}/", ""))
        f.write_text(json.dumps(data, indent=1, sort_keys=True))


class ToyWorld:
    """A built toy world: ``model``, ``tokenizer``, ``sae_in``, ``sae_out``, ``l_in``, ``l_out``, ``judge``.

    The tokenizer is rebuilt from ``tokenizer.json`` and the model from the world's config plus
    ``model.safetensors``, so a world reads the same under transformers 4.x and 5.x.
    """

    def __init__(self, path: Path, cfg: ToyConfig, fast: bool = False):
        from safetensors.torch import load_file

        from .sae import load_from_disk

        self.path, self.config, self.fast = Path(path), cfg, fast
        self.l_in, self.l_out = cfg.l_in, cfg.l_out
        self.judge = L.Judge()
        self.model_id = f"dspa-lite/toy-{cfg.hash()}"
        self.tokenizer = load_tokenizer(self.path / "model" / "tokenizer.json")
        with torch.random.fork_rng(devices=[]):  # the weights are overwritten: leave the caller's RNG alone
            self.model = build_model(cfg, len(self.tokenizer), self.tokenizer)
        missing, unexpected = self.model.load_state_dict(load_file(self.path / "model" / "model.safetensors"),
                                                          strict=False)
        if unexpected or set(missing) - {"lm_head.weight"}:
            raise store.WorldError(f"{self.path / 'model' / 'model.safetensors'} does not fit the world's config "
                                   f"(missing {sorted(missing)[:3]}, unexpected {sorted(unexpected)[:3]})")
        self.model.tie_weights()
        self.model.eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.model.config.name_or_path = self.model_id  # an identity that does not depend on where the world lives
        self.sae_in = load_from_disk(self.path / "sae_in")
        self.sae_out = load_from_disk(self.path / "sae_out")
        for sae, layer in ((self.sae_in, self.l_in), (self.sae_out, self.l_out)):
            sae.cfg.metadata.model_name = self.model_id
            sae.cfg.metadata.release = f"dspa-lite-toy-{cfg.hash()}"
            sae.cfg.metadata.sae_id = f"layer_{layer}/width_{sae.cfg.d_sae}"
        report, info = self.path / "report.json", self.path / "build_info.json"
        self.report = json.loads(report.read_text()) if report.exists() else {}
        self.build_info = json.loads(info.read_text()) if info.exists() else {}

    @property
    def seed(self) -> int:
        return self.config.seed

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
        return (f"ToyWorld(seed={self.seed}, {self.path}, l_in={self.l_in}, l_out={self.l_out}, "
                f"d_sae={self.sae_out.cfg.d_sae})")


def load_tokenizer(path: str | os.PathLike):
    """The toy tokenizer from its ``tokenizer.json`` (the chat template and special tokens are code)."""
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(
        tokenizer_file=str(path), bos_token="<bos>", eos_token="<end_of_turn>", pad_token="<pad>",
        unk_token="<unk>", additional_special_tokens=["<start_of_turn>", "<eos>"], chat_template=CHAT_TEMPLATE)


def world_path(cfg: ToyConfig) -> Path:
    """Where the world of ``cfg`` lives: inside the package for the reference world, else the cache."""
    if cfg == ToyConfig(seed=store.REFERENCE_SEED):
        return store.REFERENCE_DIR
    return cache_dir("toyworld") / cfg.hash()


def build_into(out: str | os.PathLike, seed: int | None = None, force: bool = False, progress: bool = True,
               config: ToyConfig | None = None) -> ToyWorld:
    """Build a world from scratch into the folder ``out`` (``dspa-lite build-toy --seed N --out DIR``)."""
    cfg = config or ToyConfig(seed=store.toy_seed() if seed is None else seed)
    out = Path(out).expanduser().resolve()
    if out == store.REFERENCE_DIR:
        raise store.WorldError(f"{out} is the reference world shipped with the package; build somewhere else")
    if out.exists() and any(out.iterdir()) and not force:
        raise FileExistsError(f"{out} exists and is not empty; choose another --out or pass --force to replace it")
    out.parent.mkdir(parents=True, exist_ok=True)
    with store.build_lock(out):
        store.clean_stale(out)
        build(cfg, out, progress)
    store.verify(out, cfg.hash(), cfg.seed)
    return ToyWorld(out, cfg, fast_mode())


def load(fast: bool | None = None, config: ToyConfig | None = None, seed: int | None = None, force: bool = False,
         progress: bool = True) -> ToyWorld:
    """The toy world: the shipped reference world (seed 0) or one built once into the cache.

    Args:
        fast: shrink default evaluation sizes (``prompts()``); default from ``DSPA_FAST``.
            The world itself is the same in both modes.
        config: a full world config; default ``ToyConfig(seed=seed)``.
        seed: the world seed; default from ``DSPA_TOY_SEED``, else 0 (the reference world).
        force: rebuild into the cache even if a verified copy exists (the reference world shipped
            with the package is never overwritten; ``force`` builds a copy of it in the cache).

    Raises:
        WorldError: the world on disk is incomplete, corrupt or foreign; the message names the file
            and the command that rebuilds it. A world is never rebuilt silently.
    """
    cfg = config or ToyConfig(seed=store.toy_seed() if seed is None else seed)
    fast = fast_mode() if fast is None else fast
    path = world_path(cfg)
    if force or path != store.REFERENCE_DIR:
        path = cache_dir("toyworld") / cfg.hash()
        if force or not (path / store.MANIFEST).is_file():
            with store.build_lock(path):
                if force or not (path / store.MANIFEST).is_file():  # another process may have built it meanwhile
                    store.clean_stale(path)
                    if progress:
                        print(f"building the toy world (seed {cfg.seed}) into {path}: a few minutes, once",
                              file=sys.stderr, flush=True)
                    build(cfg, path, progress)
    store.verify(path, cfg.hash(), cfg.seed)
    return ToyWorld(path, cfg, fast)
