"""What a freshly built toy world measures about itself (``dspa-lite build-toy --json``).

- the base model unsteered: preferred share, win rate, fluency, classifiable rate, per category;
- multiple-choice accuracy (seen and unseen facts);
- each SAE's L0 and fraction of variance explained on held-out dialogues;
- *style latents* of the output SAE (latents that put >= 80% of their activation mass on one
  style) and how many are active at the last prompt position versus inside responses, per
  category: token-active edits can only act where such latents are active.
"""

from __future__ import annotations

import random

import torch

from ..evaluation.evals import judge_responses, mcq_accuracy
from ..method.features import encode_texts, residual_rows
from ..method.generation import generate
from ..method.saes import sae_encode, sae_stats
from . import language as L
from .data import base_response

__all__ = ["build_report", "pure_style_responses", "style_activity", "style_latents"]


def pure_style_responses(world, n_per_style: int = 40, seed: int = 123) -> list[tuple[str, str, str]]:
    """(prompt, response, style) with every segment in one style, on held-out prompts."""
    rng = random.Random(seed)
    out = []
    for style in L.STYLES:
        for i in range(n_per_style):
            p = L.sample_prompt(L.CATEGORIES[i % len(L.CATEGORIES)], rng)
            n = rng.randint(world.config.min_segments, world.config.max_segments)
            out.append((p.text, L.render([style] * n, p.topic, rng), style))
    return out


@torch.no_grad()
def style_latents(world, threshold: float = 0.8) -> dict[str, list[int]]:
    """Output-SAE latents that put >= ``threshold`` of their activation mass on one style.

    Mass is summed over every position of pure-style dialogues (prompt and response, BOS excluded),
    so a latent that fires on prompts, which all styles share, is not a style latent.
    """
    data = pure_style_responses(world)
    enc = encode_texts(world.tokenizer, [d[0] for d in data], [d[1] for d in data])
    mass = torch.zeros(len(L.STYLES), world.sae_out.cfg.d_sae)
    for i, acts in residual_rows(world.model, world.tokenizer, enc, [world.l_out], 32):
        z = sae_encode(world.sae_out, acts[world.l_out][enc.prompt_all[i] + enc.response[i]]).float()
        mass[L.STYLES.index(data[i][2])] += z.sum(0)
    total = mass.sum(0)
    share = mass / total.clamp_min(1e-9)
    live = total > 0
    return {s: [int(k) for k in torch.nonzero(live & (share[i] >= threshold)).flatten()]
            for i, s in enumerate(L.STYLES)}


@torch.no_grad()
def style_activity(world, latents: dict[str, list[int]], n_per_category: int = 40) -> dict[str, dict[str, float]]:
    """Style latents active at the last prompt position vs per response token: counts and summed activation."""
    rng = random.Random(7)
    style_ids = torch.tensor(sorted({k for ks in latents.values() for k in ks}), dtype=torch.long)
    out = {}
    for cat in L.CATEGORIES:
        prompts = [L.sample_prompt(cat, rng) for _ in range(n_per_category)]
        responses = [base_response(world.config, p, rng) for p in prompts]
        enc = encode_texts(world.tokenizer, [p.text for p in prompts], responses)
        rows: list[list[float]] = []
        for i, acts in residual_rows(world.model, world.tokenizer, enc, [world.l_out], 32):
            resp = enc.response[i]
            z = sae_encode(world.sae_out, acts[world.l_out][[resp[0] - 1] + resp])[:, style_ids].float()  # (1 + n_resp, n_style)
            on = z > 0
            rows.append([float(on[0].sum()), float(on[1:].sum(-1).float().mean()),
                         float(z[0].sum()), float(z[1:].sum(-1).mean())])
        mean = [sum(col) / len(col) for col in zip(*rows)]
        out[cat] = {"last_prompt_position": mean[0], "inside_response": mean[1],
                    "mass_last_prompt_position": mean[2], "mass_inside_response": mean[3]}
    return out


@torch.no_grad()
def _held_out_acts(world, layer: int, n: int = 200) -> torch.Tensor:
    rng = random.Random(11)
    prompts = [L.sample_prompt(L.CATEGORIES[i % 4], rng) for i in range(n)]
    enc = encode_texts(world.tokenizer, [p.text for p in prompts], [base_response(world.config, p, rng) for p in prompts])
    acts = [a[layer][enc.prompt_all[i][0]:] for i, a in residual_rows(world.model, world.tokenizer, enc, [layer], 32)]
    return torch.cat(acts)


def build_report(world, progress: bool = True, n_prompts: int = 200, seed: int = 0) -> dict:
    prompts = world.prompts("test", n_prompts)
    responses = generate(world.model, world.tokenizer, prompts, max_new_tokens=80, temperature=1.0, seed=seed,
                         batch_size=50, progress=progress)
    judged = judge_responses(world.judge, prompts, responses)
    mcq = mcq_accuracy(world.model, world.tokenizer, world.mcq("test"))
    latents = style_latents(world)
    sae = {name: sae_stats(getattr(world, name), _held_out_acts(world, layer))
           for name, layer in (("sae_in", world.l_in), ("sae_out", world.l_out))}
    return {
        "unsteered_preferred_rate": {"overall": judged["preferred_share"],
                                     **{c: v["preferred_share"] for c, v in judged["per_category"].items()}},
        "unsteered_win_rate": {"overall": judged["win_rate"],
                               **{c: v["win_rate"] for c, v in judged["per_category"].items()}},
        "classifiable_rate": judged["classifiable_rate"],
        "fluency": judged["fluency"],
        "mcq_accuracy": {k: v for k, v in mcq.items() if k.startswith("accuracy")},
        "style_latents": {s: len(ks) for s, ks in latents.items()},
        "style_latents_active": style_activity(world, latents),
        "sae": sae,
        "n_prompts": n_prompts,
    }
