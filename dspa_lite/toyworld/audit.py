"""Auditing what DSPA edits: which latents, what they respond to, and (on the toy world) whether
they are the right ones.

The paper audits its edited features and finds them dominated by discourse and style signals.
On the toy world the ground truth is known, so the audit can be scored: per category, the styles
the edited latents belong to, and precision@k against the latents most associated, on held-out
pure-style responses, with that category's preferred (for ``K_pos``) and rejected (for ``K_neg``)
styles.
"""

from __future__ import annotations

from collections import Counter

import torch

from ..method.features import encode_texts, residual_rows
from ..method.saes import sae_encode
from . import language as L
from .report import pure_style_responses, style_latents

__all__ = ["style_profiles", "reference_sets", "audit_steerer", "top_contexts"]


@torch.no_grad()
def style_profiles(world, seed: int = 321) -> torch.Tensor:
    """Mean activation of every output latent on response tokens of each style: ``(n_styles, d_sae)``."""
    data = pure_style_responses(world, seed=seed)
    enc = encode_texts(world.tokenizer, [d[0] for d in data], [d[1] for d in data])
    total = torch.zeros(len(L.STYLES), world.sae_out.cfg.d_sae)
    count = torch.zeros(len(L.STYLES), 1)
    for i, acts in residual_rows(world.model, world.tokenizer, enc, [world.l_out], 32):
        z = sae_encode(world.sae_out, acts[world.l_out][enc.response[i]]).float()
        style = L.STYLES.index(data[i][2])
        total[style] += z.sum(0)
        count[style] += z.shape[0]
    return total / count


def reference_sets(world, k: int, profiles: torch.Tensor | None = None) -> dict[str, dict[str, set[int]]]:
    """Per category, the ``k`` latents most associated with its preferred style and with its rejected styles.

    Association is a latent's mean activation on that style minus its mean over all styles
    (rejected styles weighted by how often the category's triples reject them).
    """
    profiles = style_profiles(world) if profiles is None else profiles
    base = profiles.mean(0)
    out = {}
    for cat in L.CATEGORIES:
        pos = profiles[L.STYLES.index(L.PREFERRED[cat])] - base
        neg = sum(w * profiles[L.STYLES.index(s)] for s, w in L.REJECTED_MIX[cat].items()) - base
        out[cat] = {"K_pos": set(torch.topk(pos, k).indices.tolist()), "K_neg": set(torch.topk(neg, k).indices.tolist())}
    return out


def audit_steerer(world, steerer, n_per_category: int = 20) -> dict:
    """Styles of the latents ``steerer`` selects for each category's prompts, and precision@k."""
    latent_style = {k: s for s, ks in style_latents(world).items() for k in ks}
    refs = reference_sets(world, steerer.k)
    prompts = world.prompts("test", n_per_category * len(L.CATEGORIES))
    out = {}
    for cat in L.CATEGORIES:
        ps = [p for p in prompts if world.judge.category(p) == cat]
        sc = steerer.scores(ps)
        row: dict = {}
        for side in ("K_pos", "K_neg"):
            sets = [set(r[r >= 0].tolist()) for r in sc[side]]
            styles = Counter(latent_style.get(k, "other") for s in sets for k in s)
            n = max(1, sum(styles.values()))
            row[f"{side}_styles"] = {s: c / n for s, c in styles.most_common()}
            row[f"{side}_precision"] = sum(len(s & refs[cat][side]) / max(1, steerer.k) for s in sets) / len(sets)
        out[cat] = row
    return out


@torch.no_grad()
def top_contexts(world, latent: int, texts: list[tuple[str, str]], n: int = 5, width: int = 4) -> list[tuple[float, str]]:
    """The ``n`` response tokens (with ``width`` tokens of context) where an output latent fires most."""
    enc = encode_texts(world.tokenizer, [p for p, _ in texts], [r for _, r in texts])
    hits = []
    for i, acts in residual_rows(world.model, world.tokenizer, enc, [world.l_out], 32):
        resp = enc.response[i]
        z = sae_encode(world.sae_out, acts[world.l_out][resp])[:, latent]
        words = world.tokenizer.convert_ids_to_tokens(enc.ids[i])
        for t, v in zip(resp, z.tolist()):
            if v > 0:
                hits.append((v, " ".join(words[max(resp[0], t - width):t]) + f" [{words[t]}]"))
    return sorted(hits, reverse=True)[:n]
