"""Tiny stand-ins for hub downloads, written in the hub's exact on-disk layout (helpers, not tests).

Nothing can be downloaded here, so the real loading code (``dspa_lite.loading.models``) is exercised on:

- :func:`gemma2_checkpoint`: a random-weight ``Gemma2ForCausalLM`` folder as ``google/gemma-2-2b-it``
  ships it: ``config.json`` with the keys of the hub's file (written by transformers 4.42, so with
  ``torch_dtype`` and ``hidden_act``), sharded ``model-0000k-of-0000n.safetensors`` plus
  ``model.safetensors.index.json``, ``generation_config.json``, and ``tokenizer.json`` /
  ``tokenizer_config.json`` (class ``GemmaTokenizer``, Gemma's real chat template inline) /
  ``special_tokens_map.json``. The BPE tokenizer uses the real pipeline (spaces to ``▁``, byte
  fallback) and the real special-token names and first ids (``<pad>`` 0, ``<eos>`` 1, ``<bos>`` 2).
- :func:`qwen3_checkpoint`: the same for ``Qwen/Qwen3-8B``: one ``model.safetensors`` in bfloat16,
  a byte-level BPE ``Qwen2Tokenizer`` with ChatML (``<|im_start|>``, ``<|im_end|>``, no BOS),
  ``<think>`` tokens and a vocabulary padded past the tokenizer's as in the real model.
- :func:`gemma_scope_sae` / :func:`qwen_scope_sae`: sae-lens folders (``cfg.json`` +
  ``sae_weights.safetensors``) whose config is the one sae-lens's own loaders build for Gemma Scope
  (JumpReLU, ``blocks.L.hook_resid_post``) and Qwen-Scope (TopK k=100 scaled down,
  ``hf_hook_name`` ``model.layers.L``), only narrower; thresholds are set from real residuals so
  latents fire on some tokens and not others.
- :func:`ultrafeedback_folder`: a ``Dataset.save_to_disk`` folder in the schema of
  ``HuggingFaceH4/ultrafeedback_binarized`` (``train_prefs``/``test_prefs``).
- :func:`fill_hub_cache`: copies a checkpoint into a Hugging Face cache folder
  (``models--org--name/snapshots/<commit>``, ``refs/main``) so it loads *by hub id* offline.
"""

from __future__ import annotations

import hashlib
import json
import random
import shutil
from pathlib import Path

import torch

D_MODEL, N_LAYERS, D_SAE = 64, 4, 64

# Gemma-2's chat template as google/gemma-2-2b-it ships it (tokenizer_config.json).
GEMMA_TEMPLATE = (
    "{{ bos_token }}{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}"
    "{% endif %}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if (message['role'] == 'assistant') %}{% set role = 'model' %}{% else %}{% set role = message['role'] %}"
    "{% endif %}{{ '<start_of_turn>' + role + '\n' + message['content'] | trim + '<end_of_turn>\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{'<start_of_turn>model\n'}}{% endif %}"
)
# Qwen3's ChatML template, without its tool-calling branches; thinking as in the real one.
QWEN_TEMPLATE = (
    "{%- if messages[0].role == 'system' %}{{- '<|im_start|>system\n' + messages[0].content + '<|im_end|>\n' }}"
    "{%- endif %}{%- for message in messages %}{%- if message.role == 'system' and loop.first %}"
    "{%- elif message.role == 'user' or message.role == 'system' %}"
    "{{- '<|im_start|>' + message.role + '\n' + message.content + '<|im_end|>\n' }}"
    "{%- elif message.role == 'assistant' %}{{- '<|im_start|>assistant\n' + message.content + '<|im_end|>\n' }}"
    "{%- endif %}{%- endfor %}{%- if add_generation_prompt %}{{- '<|im_start|>assistant\n' }}"
    "{%- if enable_thinking is defined and enable_thinking is false %}{{- '<think>\n\n</think>\n\n' }}{%- endif %}"
    "{%- endif %}"
)
QWEN_SPLIT = (r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|"""
              r"""\s+(?!\S)|\s+""")

# --- preference data ------------------------------------------------------------------------------------

_TOPICS = ["photosynthesis", "a rainbow", "compound interest", "the water cycle", "bicycle gears", "vaccines",
           "ocean tides", "binary search", "inflation", "volcanoes", "bread dough rising", "a solar eclipse",
           "the immune system", "recycling plastic", "fridge magnets", "rain clouds", "a heat pump", "jet engines",
           "coral reefs", "a credit score"]
_ASKS = ["Explain how {t} works to a curious teenager.", "Can you describe {t} in a few sentences?",
         "What should a beginner know about {t}?", "Give me a short overview of {t}, please."]


def preference_rows(n: int = 20, seed: int = 0) -> list[dict]:
    """Rows in UltraFeedback-binarized's schema: a helpful chosen reply and a curt or rambling rejected one."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        topic = _TOPICS[i % len(_TOPICS)]
        prompt = rng.choice(_ASKS).format(t=topic)
        good = (f"Sure! Here is a clear answer about {topic}. First, the main idea is simple and worth knowing. "
                f"Second, a small example helps: think of {topic} in everyday life. In short, {topic} is easy "
                "to follow once you see the steps.")
        bad = rng.choice([f"{topic.capitalize()}? Look it up yourself.",
                          f"Well, {topic} is {topic} and it is what it is, you know, {topic} and so on and so on."])
        chosen = [{"content": prompt, "role": "user"}, {"content": good, "role": "assistant"}]
        rejected = [{"content": prompt, "role": "user"}, {"content": bad, "role": "assistant"}]
        rows.append({"prompt": prompt, "prompt_id": hashlib.sha256(prompt.encode()).hexdigest(), "chosen": chosen,
                     "rejected": rejected, "messages": chosen, "score_chosen": 8.5, "score_rejected": 3.0})
    return rows


def ultrafeedback_folder(path: Path, n_train: int = 16, n_test: int = 4) -> Path:
    """A ``DatasetDict.save_to_disk`` folder with ``train_prefs``/``test_prefs`` splits."""
    from datasets import Dataset, DatasetDict

    rows = preference_rows(n_train + n_test)
    DatasetDict({"train_prefs": Dataset.from_list(rows[:n_train]),
                 "test_prefs": Dataset.from_list(rows[n_train:])}).save_to_disk(str(path))
    return Path(path)


def _corpus() -> list[str]:
    texts = []
    for r in preference_rows(len(_TOPICS) * 2):
        texts += [r["prompt"], r["chosen"][1]["content"], r["rejected"][1]["content"]]
    return texts + ["user\nmodel\nassistant\nsystem\n"] * 4


# --- tokenizers -----------------------------------------------------------------------------------------


def _added(tok, tokens: list[str], special: bool = True) -> dict:
    return {str(tok.token_to_id(t)): {"content": t, "lstrip": False, "normalized": False, "rstrip": False,
                                      "single_word": False, "special": special} for t in tokens}


def _write_json(path: Path, obj) -> None:
    path.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def _gemma_tokenizer(folder: Path, vocab_size: int = 384) -> dict[str, int]:
    from tokenizers import Tokenizer, decoders, normalizers, pre_tokenizers, processors, trainers
    from tokenizers.models import BPE

    specials = ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>", "<start_of_turn>", "<end_of_turn>"]
    tok = Tokenizer(BPE(unk_token="<unk>", fuse_unk=True, byte_fallback=True))
    tok.normalizer = normalizers.Replace(" ", "▁")  # Gemma's pipeline, as transformers' GemmaTokenizer builds it
    tok.pre_tokenizer = pre_tokenizers.Split(" ", behavior="merged_with_previous")
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()])
    tok.train_from_iterator(_corpus(), trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials,
                                                           show_progress=False))
    tok.post_processor = processors.TemplateProcessing(single="<bos> $A", pair="<bos> $A <bos> $B",
                                                       special_tokens=[("<bos>", tok.token_to_id("<bos>"))])
    tok.save(str(folder / "tokenizer.json"))
    _write_json(folder / "tokenizer_config.json", {
        "add_bos_token": True, "add_eos_token": False, "added_tokens_decoder": _added(tok, specials),
        "additional_special_tokens": ["<start_of_turn>", "<end_of_turn>"], "bos_token": "<bos>",
        "chat_template": GEMMA_TEMPLATE, "clean_up_tokenization_spaces": False, "eos_token": "<eos>",
        "model_max_length": 1000000000000000019884624838656, "pad_token": "<pad>", "padding_side": "left",
        "sp_model_kwargs": {}, "spaces_between_special_tokens": False, "tokenizer_class": "GemmaTokenizer",
        "unk_token": "<unk>", "use_default_system_prompt": False})
    _write_json(folder / "special_tokens_map.json", {
        "additional_special_tokens": ["<start_of_turn>", "<end_of_turn>"], "bos_token": "<bos>",
        "eos_token": "<eos>", "pad_token": "<pad>", "unk_token": "<unk>"})
    return {t: tok.token_to_id(t) for t in specials} | {"vocab": tok.get_vocab_size()}


def _qwen_tokenizer(folder: Path, vocab_size: int = 512) -> dict[str, int]:
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, normalizers, pre_tokenizers, processors, trainers
    from tokenizers.models import BPE

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tok = Tokenizer(BPE(unk_token=None, fuse_unk=False, byte_fallback=False))
    tok.normalizer = normalizers.NFC()  # Qwen's pipeline, as transformers' Qwen2Tokenizer builds it
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN_SPLIT), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(_corpus(), trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False))
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in ("<think>", "</think>")])
    tok.save(str(folder / "tokenizer.json"))
    _write_json(folder / "tokenizer_config.json", {
        "add_bos_token": False, "add_prefix_space": False,
        "added_tokens_decoder": _added(tok, specials) | _added(tok, ["<think>", "</think>"], special=False),
        "additional_special_tokens": ["<|im_start|>", "<|im_end|>"], "bos_token": None,
        "chat_template": QWEN_TEMPLATE, "clean_up_tokenization_spaces": False, "eos_token": "<|im_end|>",
        "errors": "replace", "model_max_length": 131072, "pad_token": "<|endoftext|>",
        "split_special_tokens": False, "tokenizer_class": "Qwen2Tokenizer", "unk_token": None})
    _write_json(folder / "special_tokens_map.json", {
        "additional_special_tokens": ["<|im_start|>", "<|im_end|>"], "eos_token": "<|im_end|>",
        "pad_token": "<|endoftext|>"})
    return {t: tok.token_to_id(t) for t in specials} | {"vocab": tok.get_vocab_size()}


# --- checkpoints ----------------------------------------------------------------------------------------


def _write_weights(folder: Path, dtype: torch.dtype, seed: int, max_shard_size: str | None) -> None:
    """Random weights for ``folder/config.json``, saved by transformers in the hub's file names."""
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(folder)).to(dtype)
    staging = folder / ".staging"
    model.save_pretrained(staging, **({"max_shard_size": max_shard_size} if max_shard_size else {}))
    for f in staging.iterdir():
        if f.name.endswith((".safetensors", ".safetensors.index.json")):
            f.rename(folder / f.name)
    shutil.rmtree(staging)


def gemma2_checkpoint(folder: Path, seed: int = 0, base: bool = False) -> Path:
    """A tiny ``google/gemma-2-2b-it`` look-alike (4 layers, hidden size 64), sharded like the real one; with
    ``base``, ``google/gemma-2-2b``'s: the same tokenizer and template, but only ``<eos>`` in the configs."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    ids = _gemma_tokenizer(folder)
    eos = ids["<eos>"] if base else [ids["<eos>"], ids["<end_of_turn>"]]  # [1, 107] in the real -it model
    _write_json(folder / "config.json", {
        "architectures": ["Gemma2ForCausalLM"], "attention_bias": False, "attention_dropout": 0.0,
        "attn_logit_softcapping": 50.0, "bos_token_id": ids["<bos>"], "cache_implementation": "hybrid",
        "eos_token_id": eos, "final_logit_softcapping": 30.0, "head_dim": 16, "hidden_act": "gelu_pytorch_tanh",
        "hidden_activation": "gelu_pytorch_tanh", "hidden_size": D_MODEL, "initializer_range": 0.02,
        "intermediate_size": 128, "max_position_embeddings": 8192, "model_type": "gemma2",
        "num_attention_heads": 4, "num_hidden_layers": N_LAYERS, "num_key_value_heads": 2,
        "pad_token_id": ids["<pad>"], "query_pre_attn_scalar": 16, "rms_norm_eps": 1e-06, "rope_theta": 10000.0,
        "sliding_window": 4096, "torch_dtype": "float32", "transformers_version": "4.42.4", "use_cache": True,
        "vocab_size": ids["vocab"]})
    _write_json(folder / "generation_config.json", {
        "_from_model_config": True, "bos_token_id": ids["<bos>"], "cache_implementation": "hybrid",
        "eos_token_id": eos, "pad_token_id": ids["<pad>"], "transformers_version": "4.42.4"})
    _write_weights(folder, torch.float32, seed, max_shard_size="150KB")
    return folder


def qwen3_checkpoint(folder: Path, seed: int = 0) -> Path:
    """A tiny ``Qwen/Qwen3-8B`` look-alike (4 layers, hidden size 64), bfloat16 weights in one file."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    ids = _qwen_tokenizer(folder)
    vocab = (ids["vocab"] + 2 + 63) // 64 * 64  # padded past the tokenizer, as 151936 > 151669 in the real one
    _write_json(folder / "config.json", {
        "architectures": ["Qwen3ForCausalLM"], "attention_bias": False, "attention_dropout": 0.0,
        "bos_token_id": ids["<|endoftext|>"], "eos_token_id": ids["<|im_end|>"], "head_dim": 16,
        "hidden_act": "silu", "hidden_size": D_MODEL, "initializer_range": 0.02, "intermediate_size": 128,
        "max_position_embeddings": 40960, "max_window_layers": N_LAYERS, "model_type": "qwen3",
        "num_attention_heads": 4, "num_hidden_layers": N_LAYERS, "num_key_value_heads": 2, "rms_norm_eps": 1e-06,
        "rope_scaling": None, "rope_theta": 1000000, "sliding_window": None, "tie_word_embeddings": False,
        "torch_dtype": "bfloat16", "transformers_version": "4.51.0", "use_cache": True,
        "use_sliding_window": False, "vocab_size": vocab})
    _write_json(folder / "generation_config.json", {
        "bos_token_id": ids["<|endoftext|>"], "do_sample": True,
        "eos_token_id": [ids["<|im_end|>"], ids["<|endoftext|>"]], "pad_token_id": ids["<|endoftext|>"],
        "temperature": 0.6, "top_k": 20, "top_p": 0.95, "transformers_version": "4.51.0"})
    _write_weights(folder, torch.bfloat16, seed, max_shard_size=None)
    return folder


def fill_hub_cache(cache: Path, repo_id: str, checkpoint: Path) -> Path:
    """Copy ``checkpoint`` into the Hugging Face cache layout under ``cache`` (what ``hf download`` leaves)."""
    commit = hashlib.sha1(repo_id.encode()).hexdigest()
    repo = Path(cache) / f"models--{repo_id.replace('/', '--')}"
    shutil.copytree(checkpoint, repo / "snapshots" / commit)
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(commit)
    return repo


# --- SAEs -----------------------------------------------------------------------------------------------


@torch.no_grad()
def residuals(model, tokenizer, layer: int, texts: list[str] | None = None) -> torch.Tensor:
    """Output residuals of ``layer`` on chat-formatted preference texts, ``(n_tokens, d_model)`` in float32."""
    from dspa_lite.method.generation import format_prompts
    from dspa_lite.method.hooks import forward_until

    rows = preference_rows(8)
    texts = texts or [p + r["chosen"][1]["content"] for r, p in
                      zip(rows, format_prompts(tokenizer, [r["prompt"] for r in rows]), strict=True)]
    out = []
    for text in texts:
        ids = tokenizer(text, add_special_tokens=False, return_tensors="pt").input_ids.to(model.device)
        out.append(forward_until(model, [layer], ids)[layer][0, 1:].float().cpu())  # (T - 1, d_model)
    return torch.cat(out)


def _random_sae(sae, acts: torch.Tensor | None, seed: int):
    g = torch.Generator().manual_seed(seed)
    d_in, d_sae = sae.cfg.d_in, sae.cfg.d_sae
    with torch.no_grad():
        W_dec = torch.randn(d_sae, d_in, generator=g)
        W_dec /= W_dec.norm(dim=1, keepdim=True)  # unit-norm decoder rows, as Gemma Scope's
        sae.W_dec.copy_(W_dec)
        sae.W_enc.copy_(W_dec.T)
        sae.b_enc.zero_()
        sae.b_dec.zero_()
        if hasattr(sae, "threshold"):
            if acts is not None:  # each latent fires on about the top 20% of real tokens
                sae.threshold.copy_(torch.quantile(acts.float() @ W_dec.T, 0.8, dim=0).clamp_min(1e-3))
            else:
                sae.threshold.fill_(0.1)
    return sae


def gemma_scope_sae(folder: Path, layer: int, d_in: int = D_MODEL, d_sae: int = D_SAE,
                    acts: torch.Tensor | None = None, seed: int = 0) -> Path:
    """A JumpReLU SAE whose cfg is sae-lens's Gemma Scope cfg (gemma-scope-2b-pt-res) with tiny sizes."""
    from sae_lens import JumpReLUSAE, JumpReLUSAEConfig
    from sae_lens.loading.pretrained_sae_loaders import get_gemma_2_config_from_hf, handle_config_defaulting

    cfg = handle_config_defaulting(get_gemma_2_config_from_hf(
        "google/gemma-scope-2b-pt-res", f"layer_{layer}/width_16k/average_l0_82", "cpu"))
    sae = JumpReLUSAE(JumpReLUSAEConfig.from_dict({**cfg, "d_in": d_in, "d_sae": d_sae}))
    _random_sae(sae, acts, seed).save_model(folder)
    return Path(folder)


def qwen_scope_sae(folder: Path, layer: int, d_in: int = D_MODEL, d_sae: int = D_SAE, k: int = 8,
                   seed: int = 0) -> Path:
    """A TopK SAE whose cfg is sae-lens's Qwen-Scope cfg (SAE-Res-Qwen3-8B-Base-W64K-L0_100), scaled down."""
    from sae_lens import TopKSAE, TopKSAEConfig
    from sae_lens.loading.pretrained_sae_loaders import get_qwen_scope_config_from_hf, handle_config_defaulting

    cfg = handle_config_defaulting(get_qwen_scope_config_from_hf(
        "Qwen/SAE-Res-Qwen3-8B-Base-W64K-L0_100", f"layer{layer}.sae.pt", "cpu"))
    sae = TopKSAE(TopKSAEConfig.from_dict({**cfg, "d_in": d_in, "d_sae": d_sae, "k": k}))
    _random_sae(sae, None, seed).save_model(folder)
    return Path(folder)


def hub_cache_file(cache: Path, repo_id: str, filename: str) -> Path:
    """Where ``hf_hub_download(repo_id, filename)`` finds a file in a cache filled as ``hf download`` leaves it
    (``models--org--name/snapshots/<commit>/<filename>``, ``refs/main``); parent folders are created."""
    commit = hashlib.sha1(repo_id.encode()).hexdigest()
    repo = Path(cache) / f"models--{repo_id.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(commit)
    path = repo / "snapshots" / commit / filename
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def gemma_scope_params(path: Path, d_in: int, d_sae: int, seed: int = 0) -> Path:
    """Gemma Scope's ``params.npz`` (``w_enc (d_in, d_sae)``, ``w_dec (d_sae, d_in)``, ``b_enc``, ``b_dec``,
    ``threshold``; float32), as sae-lens's ``gemma_2`` converter reads it."""
    import numpy as np

    rng = np.random.default_rng(seed)
    w_dec = rng.standard_normal((d_sae, d_in), dtype=np.float32)
    w_dec /= np.linalg.norm(w_dec, axis=1, keepdims=True)
    np.savez(path, w_enc=np.ascontiguousarray(w_dec.T), w_dec=w_dec, b_enc=np.zeros(d_sae, np.float32),
             b_dec=np.zeros(d_in, np.float32), threshold=np.full(d_sae, 0.5, np.float32))
    return Path(path)


def qwen_scope_checkpoint(path: Path, d_in: int, d_sae: int, seed: int = 0) -> Path:
    """A Qwen-Scope ``layer{L}.sae.pt``: a dict with ``W_enc (d_sae, d_in)``, ``W_dec (d_in, d_sae)``, ``b_enc``,
    ``b_dec`` (the transposed convention sae-lens's ``qwen_scope`` converter undoes)."""
    g = torch.Generator().manual_seed(seed)
    w_dec = torch.randn(d_sae, d_in, generator=g)
    w_dec /= w_dec.norm(dim=1, keepdim=True)
    torch.save({"W_enc": w_dec.clone(), "W_dec": w_dec.T.contiguous(), "b_enc": torch.zeros(d_sae),
                "b_dec": torch.zeros(d_in)}, path)
    return Path(path)
