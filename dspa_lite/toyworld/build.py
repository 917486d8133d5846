"""Build a toy world from scratch: the word-level tokenizer, a ~1M-parameter Gemma-2 trained with torch,
two SAEs trained with sae-lens, the triples and quiz, and a report of what was built.

Torch runs on :data:`BUILD_THREADS` threads, so the same seed on the same machine gives byte-identical files;
the build writes into a temporary folder and renames it, so an interrupted build leaves nothing half-written.
"""

from __future__ import annotations

import json
import logging
import math
import os
import signal
import sys
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..loading.data import write_jsonl
from ..method.files import atomic_folder
from . import language as L
from . import store
from .data import ToyConfig, corpus, dialogue_texts, make_triples
from .report import build_report
from .world import CHAT_TEMPLATE, ToyWorld, build_model

__all__ = ["BUILD_THREADS", "build", "build_tokenizer", "packed_rows", "train_model", "train_toy_sae"]


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


def train_toy_sae(model_dir: str | os.PathLike, rows: list[list[int]], layer: int, out_dir: str | os.PathLike, *,
                  d_sae: int, training_tokens: int, l1_coefficient: float, lr: float, seed: int,
                  exclude_token_ids: list[int], batch_tokens: int = 2048):
    """Train a standard (ReLU + L1) SAE on the residual output of ``layer`` with sae-lens.

    Args:
        model_dir: a Hugging Face model folder that also holds its tokenizer (sae-lens loads both).
        rows: pre-tokenized training rows, all of the same length (the context size).
        exclude_token_ids: tokens whose activations the SAE never sees (BOS, padding).
    """
    from datasets import Dataset
    from sae_lens import LanguageModelSAERunnerConfig, LanguageModelSAETrainingRunner, StandardTrainingSAEConfig
    from sae_lens.config import LoggingConfig

    context = len(rows[0])
    with torch.device("cpu"):
        dim = _hidden_size(model_dir)
    cfg = LanguageModelSAERunnerConfig(
        sae=StandardTrainingSAEConfig(d_in=dim, d_sae=d_sae, l1_coefficient=l1_coefficient,
                                      l1_warm_up_steps=max(1, training_tokens // batch_tokens // 10)),
        model_name=str(model_dir),
        model_class_name="AutoModelForCausalLM",
        hook_name=f"model.layers.{layer}",
        dataset_path="local",
        is_dataset_tokenized=True,
        streaming=False,
        context_size=context,
        prepend_bos=False,
        training_tokens=training_tokens,
        train_batch_size_tokens=batch_tokens,
        store_batch_size_prompts=32,
        n_batches_in_buffer=64,
        lr=lr,
        lr_scheduler_name="constant",
        lr_warm_up_steps=20,
        exclude_special_tokens=exclude_token_ids,
        device="cpu",
        seed=seed,
        logger=LoggingConfig(log_to_wandb=False),
        n_checkpoints=0,
        checkpoint_path=None,
        output_path=str(out_dir),
        n_batches_for_norm_estimate=10,
        verbose=False,
    )
    sae_logger = logging.getLogger("sae_lens")
    level = sae_logger.level
    sae_logger.setLevel(logging.ERROR)
    # sae-lens installs its own SIGINT/SIGTERM handlers for training and leaves them: Ctrl-C would raise its
    # InterruptedException, not KeyboardInterrupt, for the rest of the process (a notebook's kernel included)
    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        runner = LanguageModelSAETrainingRunner(cfg, override_dataset=Dataset.from_dict({"input_ids": rows}))
        sae = runner.run()
    finally:
        sae_logger.setLevel(level)
        for sig, handler in handlers.items():
            if handler is not None and signal.getsignal(sig) is not handler:
                signal.signal(sig, handler)
    return sae


def _hidden_size(model_dir) -> int:
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(model_dir).hidden_size


def dialogue_ids(tokenizer, pairs: list[tuple[str, str]]) -> list[list[int]]:
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
    times: dict[str, float] = {}
    threads = torch.get_num_threads()
    torch.set_num_threads(BUILD_THREADS)
    try:
        with atomic_folder(path) as tmp:
            t0 = time.perf_counter()
            torch.manual_seed(cfg.seed)
            tokenizer = build_tokenizer()
            rows = packed_rows(dialogue_ids(tokenizer, corpus(cfg)), cfg.context)
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
    finally:
        torch.set_num_threads(threads)


def _canonical_sae_files(folder: Path) -> None:
    """Make sae-lens's JSON files the same for the same seed: the (temporary) folders it trained in become
    paths relative to the world, and keys are sorted (their order varies between processes)."""
    for f in sorted(folder.glob("sae_*/*.json")):
        data = json.loads(f.read_text().replace(f"{folder}/", ""))
        f.write_text(json.dumps(data, indent=1, sort_keys=True))
