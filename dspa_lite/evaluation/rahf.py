"""RAHF-SCIT (Liu et al., ACL 2024, arXiv 2312.15997; reproduction jtbwedgwood/RAHF), small enough for the toy world.

Stage 1 tunes a copy of the model on contrastive instructions; stage 2 fits LoRA on the base model to the stage-1
model's hidden-state differences and merges it. Shared training pieces (stats, batching, the FLOP meter) are in
:mod:`.finetune`.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from ..method.hooks import decoder_layers
from .finetune import (
    AdamW,
    FineTuned,
    StepMeter,
    TrainStats,
    collate,
    encode_responses,
    n_steps,
    response_logps,
    set_mode,
    step_batches,
)

__all__ = ["BAD_INSTRUCTION", "GOOD_INSTRUCTION", "LoRALinear", "train_rahf_scit"]

# The toy vocabulary has no words for RAHF's "You are a good, respectful and honest assistant ...", and unknown
# words become <unk>. The instructions are therefore two arbitrary markers from the quiz vocabulary, which never
# occur in dialogue text (so they prime no style): stage 1 is what gives them their meaning.
GOOD_INSTRUCTION = "green hill"


BAD_INSTRUCTION = "red cave"


# --------------------------------------------------------------------------- RAHF-SCIT
class LoRALinear(nn.Module):
    """``base(x) + (alpha / rank) * x A^T B^T`` (Hu et al. 2021); ``B`` starts at zero, so it starts as ``base``."""

    def __init__(self, base: nn.Linear, rank: int = 8, alpha: float = 16.0):
        super().__init__()
        self.base, self.scale = base, alpha / rank
        self.A = nn.Parameter(torch.empty(rank, base.in_features))
        self.B = nn.Parameter(torch.zeros(base.out_features, rank))
        nn.init.kaiming_uniform_(self.A, a=math.sqrt(5))  # as peft and nn.Linear

    def forward(self, x: Tensor) -> Tensor:
        return self.base(x) + self.scale * (x @ self.A.T) @ self.B.T

    def merged(self) -> nn.Linear:
        with torch.no_grad():
            self.base.weight += self.scale * self.B @ self.A  # (out, in)
        return self.base


def _swap_lora(model, layers: Sequence[int], rank: int = 0, alpha: float = 0.0) -> list[nn.Parameter]:
    """Wrap q/v projections of ``layers`` in :class:`LoRALinear` (``rank > 0``) or merge them back (``rank = 0``)."""
    params = []
    for attn in (decoder_layers(model)[i].self_attn for i in layers):
        for name in ("q_proj", "v_proj"):
            new = LoRALinear(getattr(attn, name), rank, alpha) if rank else getattr(attn, name).merged()
            setattr(attn, name, new)
            params += [new.A, new.B] if rank else []
    return params


def _response_hidden(model, rows, layers: Sequence[int], pad_id: int, width: int) -> tuple[Tensor, Tensor]:
    """Hidden states ``hidden_states[l]`` on the first ``width`` response tokens, ``(L, B, width, d)``, and their mask."""
    ids, attn, _ = collate(rows, pad_id, model.device)
    hs = model(input_ids=ids, attention_mask=attn, output_hidden_states=True, use_cache=False).hidden_states
    pos = torch.tensor([n_prompt for _, n_prompt in rows])[:, None] + torch.arange(width)  # (B, width)
    mask = (pos < torch.tensor([len(r) for r, _ in rows])[:, None]).to(model.device)
    idx = pos.clamp_max(ids.shape[1] - 1).to(model.device)[..., None].expand(-1, -1, hs[0].shape[-1])
    return torch.stack([hs[l].gather(1, idx) for l in layers]), mask


def train_rahf_scit(model, tokenizer, triples, lr: float = 2e-3, epochs: float = 2.0, batch_size: int = 8,
                    epsilon: float = 0.2, stage2_steps: int = 30, stage2_batch: int = 16, stage2_lr: float = 2e-2,
                    rank: int = 8, lora_alpha: float = 16.0, alpha: float = 5.0, target_layers: Sequence[int] = (2, 3),
                    max_res_len: int = 64, seed: int = 0, min_steps: int = 0) -> tuple[FineTuned, TrainStats]:
    """RAHF-SCIT (Liu et al., ACL 2024) on copies of ``model``: returns the merged stage-2 model and its stats.

    Stage 1 (SCIT, full fine-tune of a copy): ``good + prompt -> chosen`` and ``bad + prompt -> rejected``; loss =
    LM loss + ``-(1-epsilon) log p_m/(p_m+p_s) - epsilon log p_s/(p_m+p_s)``, ``p = exp(mean token log-prob)`` under
    the matched and the swapped instruction: two forward+backward passes per sequence (the reproduction's three
    repeat the matched one). Stage 2 (``stage2_steps`` batches of prompt + chosen or rejected, its ``data_type="all"``):
    LoRA (q/v below the deepest target) on the base model, fitted by mean L2 distance to ``h_base(plain) + alpha *
    (h_1(good) - h_1(bad))`` at ``hidden_states[l]``, ``l`` in ``target_layers``, on the first ``max_res_len``
    response tokens; then merged. The reproduction's structure, shrunk for the 4-layer toy (its lr 2e-5, 2 epochs,
    450 x 64 stage-2 examples, layers 10-18 suit Llama-2-7B). Instructions: :data:`GOOD_INSTRUCTION`, ``BAD_...``.
    """
    if not target_layers or not all(0 < l <= model.config.num_hidden_layers for l in target_layers):
        raise ValueError(f"target_layers={tuple(target_layers)} index hidden_states: choose from "
                         f"1..{model.config.num_hidden_layers} (hidden_states[l] is the output of layer l - 1)")
    settings = {k: v for k, v in locals().items() if k not in ("model", "tokenizer", "triples")}
    steps = settings["steps"] = n_steps(len(triples), epochs, batch_size, min_steps)
    settings.update(target_layers=list(target_layers), instructions=[GOOD_INSTRUCTION, BAD_INSTRUCTION])
    pad, losses, stages, t0 = tokenizer.pad_token_id, [], {}, time.perf_counter()
    enc = {(tag, side): encode_responses(tokenizer, [f"{ins} {t.prompt}".strip() for t in triples],
                                [getattr(t, side) for t in triples])
           for tag, ins in (("plain", ""), ("good", GOOD_INSTRUCTION), ("bad", BAD_INSTRUCTION))
           for side in ("chosen", "rejected")}

    scit, meter = _scit_stage(model, enc, len(triples), pad, lr, steps, batch_size, epsilon, seed, losses)
    stages["stage1"] = {"steps": meter.steps, "wall_seconds": time.perf_counter() - t0, "flops": meter.flops}
    t1 = time.perf_counter()
    lora, meter2 = _lora_stage(model, scit, enc, len(triples), pad, tuple(target_layers), rank, lora_alpha, alpha,
                               stage2_lr, stage2_steps, stage2_batch, max_res_len, seed, losses)
    stages["stage2"] = {"steps": meter2.steps, "wall_seconds": time.perf_counter() - t1, "flops": meter2.flops}
    stats = TrainStats("rahf-scit", "dspa_lite", len(triples), meter.steps + meter2.steps, time.perf_counter() - t0,
                       meter.flops + meter2.flops, stages, tuple(losses), settings)
    return FineTuned(set_mode(lora), tokenizer, stats), stats


def _scit_stage(model, enc, n, pad, lr, steps, batch_size, epsilon, seed, losses):
    """RAHF-SCIT stage 1: a full fine-tune of a copy on matched and swapped instructions; ``(model, meter)``."""
    def scit_step(batch, n):  # rows: matched (good->chosen, bad->rejected) then swapped (bad->chosen, good->rejected)
        lp, n_tok = response_logps(scit, *batch), batch[2][:, 1:].sum(-1)  # (2n,) summed; response tokens per row
        lm = -lp[:n].sum() / n_tok[:n].sum()  # token-mean LM loss on the matched rows
        pair = torch.stack([(lp / n_tok)[:n], (lp / n_tok)[n:]], -1).log_softmax(-1)  # (n, 2): matched vs swapped
        return opt(lm - ((1 - epsilon) * pair[:, 0] + epsilon * pair[:, 1]).mean())

    meter, scit = StepMeter(), set_mode(copy.deepcopy(model), True, True)
    opt = AdamW(scit.parameters(), lr, steps)
    for idx in step_batches(list(range(n)), batch_size, steps, seed):
        rows = [enc[k][i] for k in (("good", "chosen"), ("bad", "rejected"), ("bad", "chosen"), ("good", "rejected"))
                for i in idx]
        batch = collate(rows, pad, scit.device)
        losses.append(meter(tuple(batch[0].shape), scit_step, batch, 2 * len(idx)))
    return set_mode(scit), meter


def _lora_stage(model, scit, enc, n_triples, pad, target_layers, rank, lora_alpha, alpha, lr, steps, batch_size, max_res_len,
                seed, losses):
    """RAHF-SCIT stage 2: LoRA on the base model fitted to the steered hidden states, merged; ``(model, meter)``."""
    def lora_step(rows, width):  # three frozen forwards, then the LoRA model's forward and backward
        with torch.no_grad():
            base, mask = _response_hidden(model, rows["plain"], target_layers, pad, width)
            good, bad = (_response_hidden(scit, rows[k], target_layers, pad, width)[0] for k in ("good", "bad"))
            target = base + alpha * (good - bad)  # (L, B, width, d)
        dist = (_response_hidden(lora, rows["plain"], target_layers, pad, width)[0] - target).norm(dim=-1)
        return opt((dist * mask).sum() / (mask.sum() * len(target_layers)))

    meter, lora = StepMeter(), set_mode(copy.deepcopy(model), train=True)
    torch.manual_seed(seed)  # the LoRA A matrices' initialisation
    opt = AdamW(_swap_lora(lora, range(max(target_layers)), rank, lora_alpha), lr, steps)
    examples = [(side, i) for i in range(n_triples) for side in ("chosen", "rejected")]  # data_type "all"
    for ex in step_batches(examples, batch_size, steps, seed):
        rows = {tag: [enc[tag, side][i] for side, i in ex] for tag in ("plain", "good", "bad")}
        width = min(max_res_len, max(len(r) - n for r, n in rows["plain"]))
        key = (len(ex), width, *(max(len(r) for r, _ in rows[k]) for k in rows))
        losses.append(meter(key, lora_step, rows, width))
    _swap_lora(lora, range(max(target_layers)))
    return lora, meter
