"""A built toy world on disk, read back: :class:`ToyWorld` (model, tokenizer, SAEs, judge, data).

The tokenizer is rebuilt from ``tokenizer.json`` and the model from the world's config plus
``model.safetensors``, so a world reads the same under transformers 4.x and 5.x.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from ..loading.data import PreferenceTriple, read_jsonl
from ..loading.sae import load_from_disk
from ..method.checks import check_finite_weights, check_int
from . import language as L
from . import store
from .data import ToyConfig, eval_prompts, make_mcq

__all__ = ["CHAT_TEMPLATE", "ToyWorld", "build_model", "identity", "load_tokenizer"]


CHAT_TEMPLATE = (
    "{{ bos_token }} {% for m in messages %}<start_of_turn> "
    "{{ 'model' if m['role'] == 'assistant' else m['role'] }} {{ m['content'] }} <end_of_turn> "
    "{% endfor %}{% if add_generation_prompt %}<start_of_turn> model {% endif %}"
)


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


def identity(cfg: ToyConfig) -> dict:
    """What a map fitted on the world of ``cfg`` records about it (``CDMap.check_compatible``'s arguments), known
    before the world is loaded or built."""
    release = f"dspa-lite-toy-{cfg.hash()}"
    return dict(model_id=f"dspa-lite/toy-{cfg.hash()}", sae_in_id=f"{release}/layer_{cfg.l_in}/width_{cfg.d_sae}",
                sae_out_id=f"{release}/layer_{cfg.l_out}/width_{cfg.d_sae}", l_in=cfg.l_in, l_out=cfg.l_out,
                d_model=cfg.d_model, d_sae_in=cfg.d_sae, d_sae_out=cfg.d_sae)


class ToyWorld:
    """A built toy world: ``model``, ``tokenizer``, ``sae_in``, ``sae_out``, ``l_in``, ``l_out``, ``judge``.

    The tokenizer is rebuilt from ``tokenizer.json`` and the model from the world's config plus
    ``model.safetensors``, so a world reads the same under transformers 4.x and 5.x.
    """

    def __init__(self, path: Path, cfg: ToyConfig, fast: bool = False):
        from safetensors.torch import load_file

        self.path, self.config, self.fast = Path(path), cfg, fast
        self.l_in, self.l_out = cfg.l_in, cfg.l_out
        self.judge = L.Judge()
        self.model_id = identity(cfg)["model_id"]
        self.tokenizer = load_tokenizer(self.path / "model" / "tokenizer.json")
        with torch.random.fork_rng(devices=[]):  # the weights are overwritten: leave the caller's RNG alone
            self.model = build_model(cfg, len(self.tokenizer), self.tokenizer)
        missing, unexpected = self.model.load_state_dict(load_file(self.path / "model" / "model.safetensors"),
                                                          strict=False)
        if unexpected or set(missing) - {"lm_head.weight"}:
            raise store.WorldError(f"{self.path / 'model' / 'model.safetensors'} does not fit the world's config "
                                   f"(missing {sorted(missing)[:3]}, unexpected {sorted(unexpected)[:3]})")
        self.model.tie_weights()
        check_finite_weights(self.model, f"the toy world's model {self.path / 'model' / 'model.safetensors'}")
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
        n = (80 if self.fast else 200) if n is None else check_int(n, "n")
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
