"""Sparse autoencoders: load them (sae-lens releases or local folders) and train the toy ones.

All SAEs are sae-lens objects (``sae_lens.SAE``): ``encode``, ``decode``, ``W_enc (d_in, d_sae)``,
``W_dec (d_sae, d_in)``, ``b_dec``, ``cfg.d_in``, ``cfg.d_sae``. Training uses sae-lens's own
trainer (``LanguageModelSAETrainingRunner``) on a plain Hugging Face model.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch
from jaxtyping import Float
from torch import Tensor

__all__ = ["load", "load_from_disk", "train_toy_sae", "sae_stats", "sae_id"]


def load(profile, layer: int, device=None):
    """The SAE of ``profile`` at ``layer`` (a sae-lens release id, or a local folder): see :func:`dspa_lite.models.load_sae`."""
    from .models import load_sae

    return load_sae(profile, layer, device)


def load_from_disk(path: str | os.PathLike, device: str | torch.device = "cpu"):
    """Load an SAE saved in sae-lens layout (``cfg.json`` + ``sae_weights.safetensors``)."""
    from sae_lens import SAE

    path = Path(path)
    for name in ("cfg.json", "sae_weights.safetensors"):
        if not (path / name).is_file():
            raise FileNotFoundError(f"no SAE at {path}: {name} is missing (an sae-lens folder holds cfg.json and "
                                    "sae_weights.safetensors)")
    sae = SAE.load_from_disk(str(path), device=str(device))
    sae.eval()
    for p in sae.parameters():
        p.requires_grad_(False)
    return sae


def sae_id(sae) -> str:
    """A short identity for an SAE: its release/id if known, else its hook name and width."""
    meta = sae.cfg.metadata
    release = getattr(meta, "release", None) or getattr(sae.cfg, "release", None)
    sid = getattr(meta, "sae_id", None)
    if release and sid:
        return f"{release}/{sid}"
    return f"{meta.model_name or 'model'}/{meta.hook_name}/d_sae={sae.cfg.d_sae}"


def train_toy_sae(
    model_dir: str | os.PathLike,
    rows: list[list[int]],
    layer: int,
    out_dir: str | os.PathLike,
    *,
    d_sae: int,
    training_tokens: int,
    l1_coefficient: float,
    lr: float,
    seed: int,
    exclude_token_ids: list[int],
    batch_tokens: int = 2048,
):
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
    try:
        runner = LanguageModelSAETrainingRunner(cfg, override_dataset=Dataset.from_dict({"input_ids": rows}))
        sae = runner.run()
    finally:
        sae_logger.setLevel(level)
    return sae


def _hidden_size(model_dir) -> int:
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(model_dir).hidden_size


@torch.no_grad()
def sae_stats(sae, acts: Float[Tensor, "n d_model"]) -> dict[str, float]:
    """L0 (mean active latents per token) and fraction of variance explained on ``acts``.

    FVE = 1 - sum ||x - x_hat||^2 / sum ||x - mean(x)||^2 over tokens.
    """
    acts = acts.to(sae.W_dec.dtype)
    z = sae.encode(acts)
    x_hat = sae.decode(z)
    resid = (acts - x_hat).pow(2).sum()
    total = (acts - acts.mean(0)).pow(2).sum()
    return {"l0": float((z > 0).float().sum(-1).mean()), "fve": float(1 - resid / total)}
