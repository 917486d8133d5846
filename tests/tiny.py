"""Tiny stand-ins shared by the unit tests: a random-weight Gemma-2, a word-level tokenizer with Gemma's chat
layout, and an lm-eval task file over local JSON documents. (The toy world and the hub-layout checkpoints are
elsewhere: conftest.py and hubfixtures.py.)"""

from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import Gemma2Config, Gemma2ForCausalLM, PreTrainedTokenizerFast

SPECIALS = ["<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>"]  # ids as Gemma2Config's defaults
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<start_of_turn> {{ 'model' if m['role'] == 'assistant' else m['role'] }} "
    "{{ m['content'] }} <end_of_turn> {% endfor %}{% if add_generation_prompt %}<start_of_turn> model {% endif %}"
)


def tiny_gemma(vocab_size: int, n_layers: int = 3, max_positions: int = 64, **config) -> Gemma2ForCausalLM:
    """A seeded random Gemma-2 of width 32 (eager attention), in eval mode."""
    cfg = Gemma2Config(vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=n_layers,
                       num_attention_heads=2, num_key_value_heads=1, head_dim=16, max_position_embeddings=max_positions,
                       attn_implementation="eager", **config)
    torch.manual_seed(0)
    return Gemma2ForCausalLM(cfg).eval()


def word_tokenizer(words: list[str], chat: bool = True, add_bos: bool = False) -> PreTrainedTokenizerFast:
    """A whitespace word-level tokenizer over :data:`SPECIALS` + ``words`` (ids in that order)."""
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(SPECIALS + words)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    if add_bos:
        tok.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", 2)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>", bos_token="<bos>",
                                   unk_token="<unk>", additional_special_tokens=SPECIALS[4:],
                                   chat_template=CHAT_TEMPLATE if chat else None)


def lm_eval_task(folder: Path, name: str, data: Path, generate: bool = False) -> Path:
    """Write an lm-eval task over the JSONL documents ``data`` ({question, choices, answer}): multiple choice
    scored by accuracy, or (``generate``) greedy generation scored by exact match."""
    kind = ("output_type: generate_until\ndoc_to_target: \"{{choices[answer]}}\"\ngeneration_kwargs:\n"
            "  until: [\"Question:\"]\n  max_gen_toks: 3\n  do_sample: false\nmetric_list:\n  - metric: exact_match\n"
            if generate else
            "output_type: multiple_choice\ndoc_to_choice: \"{{choices}}\"\ndoc_to_target: \"{{answer}}\"\n"
            "metric_list:\n  - metric: acc\n")
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.yaml"
    path.write_text(f"task: {name}\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {data}\n"
                    f"  cache_dir: {folder / 'hf_datasets'}\ntest_split: test\n"
                    "doc_to_text: \"Question: {{question}} Answer:\"\n" + kind
                    + "    aggregation: mean\n    higher_is_better: true\n")
    return path
