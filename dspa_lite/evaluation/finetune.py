"""Weight-updating baselines on the toy world, DPO here and RAHF-SCIT in :mod:`.rahf`, with measured FLOPs and time.

DSPA edits no weights; these do (docs/design.md §5), always on copies: the model passed in is never modified.
**DPO** (Rafailov et al. 2023) runs through ``trl.DPOTrainer`` when ``trl`` imports, else the same loss in a short
loop. **RAHF-SCIT** (Liu et al., ACL 2024, arXiv 2312.15997; reproduction jtbwedgwood/RAHF): contrastive
instruction tuning, then LoRA on the base model fitted to the stage-1 model's hidden-state differences, merged.
FLOPs are what ``torch.utils.flop_counter.FlopCounterMode`` counts (matmuls, forward and backward), measured on the
first step of each distinct batch shape (a dense model's matmul FLOPs depend on shapes only), summed over steps.
"""

from __future__ import annotations

import contextlib
import copy
import importlib
import math
import random
import tempfile
import time
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.flop_counter import FlopCounterMode

from ..method.baselines import Unsteered
from ..method.generation import format_prompts

__all__ = ["AdamW", "FineTuned", "StepMeter", "TrainStats", "collate", "dpo_loss", "encode_responses", "n_steps",
           "preference_margin", "response_logps", "set_mode", "step_batches", "train_dpo"]


@dataclass(frozen=True)
class TrainStats:
    """What a training run cost and did. ``stages`` maps a stage name to its own steps, seconds and FLOPs."""

    method: str
    backend: str
    n_triples: int
    steps: int
    wall_seconds: float
    flops: int
    stages: dict = field(default_factory=dict)
    losses: tuple[float, ...] = ()
    settings: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


class FineTuned(Unsteered):
    """A fine-tuned copy through the shared generation path; ``steer`` is a no-op, the weights did the work."""

    def __init__(self, model, tokenizer, stats: TrainStats):
        super().__init__(model, tokenizer)
        self.stats = stats


# --------------------------------------------------------------------------- batches and log-probabilities
def encode_responses(tokenizer, prompts: Sequence[str], responses: Sequence[str]) -> list[tuple[list[int], int]]:
    """``(ids, n_prompt)`` per pair: chat-formatted prompt, then the response and EOS (as the toy world trains)."""
    heads = [tokenizer(t, add_special_tokens=False).input_ids for t in format_prompts(tokenizer, prompts)]
    tails = tokenizer(list(responses), add_special_tokens=False).input_ids
    return [(h + t + [tokenizer.eos_token_id], len(h)) for h, t in zip(heads, tails)]


def collate(rows: Sequence[tuple[list[int], int]], pad_id: int, device) -> tuple[Tensor, Tensor, Tensor]:
    """Right-padded ``ids``, ``attention_mask`` and ``response_mask`` (1 on response tokens), each ``(B, T)``."""
    T = max(len(ids) for ids, _ in rows)
    ids = torch.full((len(rows), T), pad_id, dtype=torch.long)
    attn, resp = torch.zeros_like(ids), torch.zeros_like(ids)
    for i, (r, n_prompt) in enumerate(rows):
        ids[i, :len(r)], attn[i, :len(r)], resp[i, n_prompt:len(r)] = torch.tensor(r), 1, 1
    return ids.to(device), attn.to(device), resp.to(device)


def response_logps(model, ids: Tensor, attn: Tensor, resp: Tensor) -> Tensor:
    """Summed log-probability of each row's response tokens, ``(B,)``."""
    logits = model(input_ids=ids, attention_mask=attn, use_cache=False).logits[:, :-1].float()  # (B, T-1, V)
    logp = logits.log_softmax(-1).gather(-1, ids[:, 1:, None])[..., 0] * resp[:, 1:]  # (B, T-1)
    return logp.sum(-1)


def dpo_loss(pi_chosen: Tensor, pi_rejected: Tensor, ref_chosen: Tensor, ref_rejected: Tensor, beta: float) -> Tensor:
    """DPO's sigmoid loss (Rafailov et al. 2023, eq. 7), ``-log sigma(beta * (chosen log-ratio - rejected log-ratio))``.

    >>> float(dpo_loss(torch.zeros(1), torch.zeros(1), torch.zeros(1), torch.zeros(1), 0.1))  # log 2
    0.6931471824645996
    """
    return -F.logsigmoid(beta * ((pi_chosen - ref_chosen) - (pi_rejected - ref_rejected))).mean()


def _pairs(tokenizer, triples) -> list[tuple[tuple[list[int], int], tuple[list[int], int]]]:
    prompts = [t.prompt for t in triples]
    return list(zip(encode_responses(tokenizer, prompts, [t.chosen for t in triples]),
                    encode_responses(tokenizer, prompts, [t.rejected for t in triples])))


@torch.no_grad()
def preference_margin(model, ref, tokenizer, triples) -> float:
    """Mean ``(log pi/ref)(chosen) - (log pi/ref)(rejected)`` over ``triples`` (DPO's reward margin / beta)."""
    batch = collate([r for pair in _pairs(tokenizer, triples) for r in pair], tokenizer.pad_token_id, model.device)
    ratio = response_logps(model, *batch) - response_logps(ref, *batch)  # rows alternate chosen, rejected
    return (ratio[0::2] - ratio[1::2]).mean().item()


# --------------------------------------------------------------------------- training plumbing
class StepMeter:
    """Sums a step's FLOPs over the run, counting each distinct batch shape once under ``FlopCounterMode``."""

    def __init__(self):
        self.by_shape: dict = {}
        self.flops = self.steps = 0

    def __call__(self, key, fn, *args, **kwargs):
        new = key not in self.by_shape
        with FlopCounterMode(display=False) if new else contextlib.nullcontext() as counter:
            out = fn(*args, **kwargs)
        self.by_shape[key] = int(counter.get_total_flops()) if new else self.by_shape[key]
        self.flops, self.steps = self.flops + self.by_shape[key], self.steps + 1
        return out


def n_steps(n: int, epochs: float, batch_size: int, min_steps: int) -> int:
    """Optimizer steps for ``epochs`` passes over ``n`` examples in batches of ``batch_size``, at least ``min_steps``."""
    if n < 1 or epochs <= 0 or batch_size < 1:
        raise ValueError(f"need triples, epochs > 0, batch_size >= 1: got {n}, epochs={epochs}, batch_size={batch_size}")
    return max(min_steps, math.ceil(epochs * n / batch_size))


def step_batches(items: list, batch_size: int, steps: int, seed: int):
    """``steps`` batches from reshuffled passes over ``items`` (small data sets repeat epochs)."""
    rng, order = random.Random(seed), []
    for _ in range(steps):
        if len(order) < min(batch_size, len(items)):
            order += rng.sample(range(len(items)), len(items))
        yield [items[i] for i in order[:batch_size]]
        del order[:batch_size]


def set_mode(model, train: bool = False, grads: bool = False):
    """``model`` in train or eval mode with its weights trainable or frozen."""
    model.train(train)
    for p in model.parameters():
        p.requires_grad_(grads)
    return model


class AdamW:
    """AdamW, linear decay to zero, gradients clipped at 1: the Hugging Face Trainer's (so TRL's) defaults."""

    def __init__(self, params, lr: float, steps: int):
        self.params = list(params)
        self.opt = torch.optim.AdamW(self.params, lr=lr, weight_decay=0.0)
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, lambda s: max(0.0, 1 - s / steps))

    def __call__(self, loss: Tensor) -> float:
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.params, 1.0)
        self.opt.step()
        self.sched.step()
        return loss.detach().item()


# --------------------------------------------------------------------------- DPO
def train_dpo(model, tokenizer, triples, beta: float = 0.1, lr: float = 5e-4, epochs: float = 1.0, batch_size: int = 16,
              seed: int = 0, use_trl: bool = True, min_steps: int = 0) -> tuple[FineTuned, TrainStats]:
    """DPO on a copy of ``model``; returns the method (``.model`` is the trained copy) and its :class:`TrainStats`.

    ``trl.DPOTrainer`` (which seeds the global RNGs) needs, offline on CPU: an explicit ``ref_model`` (else it loads
    one from the hub id in ``config.name_or_path``), ``bf16=False`` (TRL's default autocasts CPU matmuls to bf16,
    ~7x slower here), ``gradient_checkpointing=False`` (on by default) and ``report_to="none"``. Steps:
    ``max(min_steps, ceil(epochs * n / batch_size))`` of ``batch_size`` pairs; the reference is not cached, so a
    step is the policy's forward+backward and the reference's forward on chosen and rejected (``flops.dpo``).
    """
    settings = {k: v for k, v in locals().items() if k not in ("model", "tokenizer", "triples")}
    steps = settings["steps"] = n_steps(len(triples), epochs, batch_size, min_steps)
    backend = "dspa_lite"
    try:
        backend = f"trl {importlib.import_module('trl').__version__}" if use_trl else backend
    except ImportError:
        warnings.warn("trl is not installed: DPO runs dspa_lite's own loop (pip install trl)", stacklevel=2)
    t0 = time.perf_counter()
    fit = _dpo_trl if backend != "dspa_lite" else _dpo_loop
    policy, meter, losses = fit(model, tokenizer, triples, beta, lr, batch_size, steps, seed)
    stage = {"steps": meter.steps, "wall_seconds": time.perf_counter() - t0, "flops": meter.flops}
    stats = TrainStats("dpo", backend, len(triples), meter.steps, stage["wall_seconds"], meter.flops, {"dpo": stage},
                       tuple(losses), settings)
    return FineTuned(set_mode(policy), tokenizer, stats), stats


def _dpo_loop(model, tokenizer, triples, beta, lr, batch_size, steps, seed):
    policy, meter, losses = set_mode(copy.deepcopy(model), True, True), StepMeter(), []
    opt = AdamW(policy.parameters(), lr, steps)

    def step(batch):
        with torch.no_grad():
            ref = response_logps(model, *batch)  # the untouched input model is the frozen reference
        lp = response_logps(policy, *batch)  # rows alternate chosen, rejected
        return opt(dpo_loss(lp[0::2], lp[1::2], ref[0::2], ref[1::2], beta))

    for pairs in step_batches(_pairs(tokenizer, triples), batch_size, steps, seed):
        batch = collate([r for pair in pairs for r in pair], tokenizer.pad_token_id, policy.device)
        losses.append(meter(tuple(batch[0].shape), step, batch))
    return policy, meter, losses


def _dpo_trl(model, tokenizer, triples, beta, lr, batch_size, steps, seed):
    from datasets import Dataset
    from transformers import PrinterCallback
    from trl import DPOConfig, DPOTrainer

    meter = StepMeter()

    class Trainer(DPOTrainer):
        def training_step(self, model, inputs, *args, **kwargs):
            return meter(tuple(inputs["input_ids"].shape), super().training_step, model, inputs, *args, **kwargs)

    data = Dataset.from_list([{"prompt": [{"role": "user", "content": t.prompt}],
                               "chosen": [{"role": "assistant", "content": t.chosen}],
                               "rejected": [{"role": "assistant", "content": t.rejected}]} for t in triples])
    with tempfile.TemporaryDirectory() as out, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        args = DPOConfig(output_dir=out, beta=beta, learning_rate=lr, per_device_train_batch_size=batch_size,
                         max_steps=steps, seed=seed, data_seed=seed, use_cpu=True, bf16=False,
                         gradient_checkpointing=False, report_to="none", save_strategy="no", logging_steps=1,
                         disable_tqdm=True, max_length=None, dataset_num_proc=None)
        trainer = Trainer(model=set_mode(copy.deepcopy(model), True, True), ref_model=set_mode(copy.deepcopy(model)), args=args,
                          train_dataset=data, processing_class=tokenizer)
        trainer.remove_callback(PrinterCallback)  # disable_tqdm=True would print every log line to stdout
        trainer.train()
    return trainer.model, meter, [h["loss"] for h in trainer.state.log_history if "loss" in h]
