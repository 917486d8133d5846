"""Chapters 01-04: the SAE encoder, the error-preserving edit, top-activating tokens, a split without leakage.

The other checks these chapters use (``check_fve``, ``check_style_labels``, ``check_delta``,
``check_static_sets``, ``check_prompt_features``) live in :mod:`.representations` and :mod:`.method`.
"""

from __future__ import annotations

from types import SimpleNamespace

import torch

from ...method.triples import PreferenceTriple
from .core import passed

__all__ = ["TinySAE", "check_prompt_split", "check_sae_edit", "check_sae_encode", "check_static_score",
           "check_top_activating"]


class TinySAE:
    """A small SAE with sae-lens's attribute names (``W_enc``, ``b_enc``, ``W_dec``, ``b_dec``, ``cfg``,
    ``encode``, ``decode``; ``threshold`` for a JumpReLU SAE), with known answers for the checks."""

    def __init__(self, seed: int = 0, apply_b_dec_to_input: bool = True, jumprelu: bool = False,
                 d_in: int = 6, d_sae: int = 12):
        g = torch.Generator().manual_seed(seed)
        self.W_enc = torch.randn(d_in, d_sae, generator=g)
        self.W_dec = torch.randn(d_sae, d_in, generator=g)  # not W_enc.T, so mixing the two up shows
        self.b_enc = 0.5 * torch.randn(d_sae, generator=g)
        self.b_dec = 1.0 + torch.randn(d_in, generator=g)  # large enough that forgetting it shows
        arch = "jumprelu" if jumprelu else "standard"
        self.cfg = SimpleNamespace(d_in=d_in, d_sae=d_sae, apply_b_dec_to_input=apply_b_dec_to_input,
                                   normalize_activations="none", architecture=lambda: arch)
        if jumprelu:
            self.threshold = 0.3 + torch.rand(d_sae, generator=g)

    def pre(self, h: torch.Tensor, subtract_b_dec: bool | None = None) -> torch.Tensor:
        sub = self.cfg.apply_b_dec_to_input if subtract_b_dec is None else subtract_b_dec
        return (h - self.b_dec * sub) @ self.W_enc + self.b_enc

    def encode(self, h: torch.Tensor) -> torch.Tensor:
        pre = self.pre(h)
        z = torch.relu(pre)
        return z * (pre > self.threshold) if hasattr(self, "threshold") else z

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return z @ self.W_dec + self.b_dec


def _encode_mistakes(sae: TinySAE, h: torch.Tensor) -> list[tuple[torch.Tensor, str]]:
    """What the usual wrong encoders return on ``h``, each with its diagnosis."""
    pre, jump = sae.pre(h), hasattr(sae, "threshold")
    gate = (pre > sae.threshold) if jump else torch.ones_like(pre, dtype=torch.bool)
    out = [
        (pre * gate, "some latents are negative: z = ReLU(pre-activation), so a latent is never below 0."),
        (torch.relu(pre - sae.b_enc) * gate, "you left out the encoder bias b_enc: pre = (h - b_dec) W_enc + b_enc."),
        (torch.relu((h - sae.b_dec * sae.cfg.apply_b_dec_to_input) @ sae.W_dec.T + sae.b_enc) * gate,
         "you encoded with W_dec.T: the encoder has its own weights W_enc (an SAE's encoder and decoder are "
         "trained separately, not tied)."),
    ]
    if sae.cfg.apply_b_dec_to_input:
        out += [(torch.relu(sae.pre(h, False)) * gate,
                 "this SAE's cfg.apply_b_dec_to_input is True: subtract b_dec from h before the encoder."),
                (torch.relu((h + sae.b_dec) @ sae.W_enc + sae.b_enc) * gate,
                 "you added b_dec to h: the encoder centres its input by subtracting it.")]
    else:
        out.append((torch.relu(sae.pre(h, True)) * gate,
                    "this SAE's cfg.apply_b_dec_to_input is False (as Gemma Scope's): do not subtract b_dec from h."))
    if jump:
        out += [(torch.relu(pre), "this is a JumpReLU SAE (it has sae.threshold): a latent fires only where its "
                                  "pre-activation exceeds its threshold, z = ReLU(pre) * (pre > threshold)."),
                (torch.relu(pre - sae.threshold), "you shifted by the threshold, ReLU(pre - threshold): JumpReLU "
                                                  "gates instead, keeping the full value pre where pre > threshold.")]
    return out


def check_sae_encode(fn) -> None:
    """``fn(sae, h) -> z``: the SAE encoder ``ReLU((h - b_dec) W_enc + b_enc)`` (``b_dec`` subtracted only if
    ``sae.cfg.apply_b_dec_to_input``; a JumpReLU SAE also zeroes latents at or below ``sae.threshold``)."""
    cases = [("a standard SAE that centres its input", TinySAE(0, True, False)),
             ("a standard SAE that does not centre its input", TinySAE(1, False, False)),
             ("a JumpReLU SAE (Gemma Scope's kind)", TinySAE(2, False, True))]
    for name, sae in cases:
        h = 2.0 * torch.randn(2, 5, sae.cfg.d_in, generator=torch.Generator().manual_seed(3))  # (batch, seq, d_in)
        want = sae.encode(h)
        got = torch.as_tensor(fn(sae, h.clone()))
        if got.shape != want.shape:
            raise AssertionError(f"for h of shape {tuple(h.shape)} expected z of shape {tuple(want.shape)} "
                                 f"(..., d_sae), got {tuple(got.shape)}: keep the leading dimensions.")
        if torch.allclose(got.float(), want, atol=1e-5):
            continue
        hint = next((msg for value, msg in _encode_mistakes(sae, h) if torch.allclose(got.float(), value, atol=1e-5)),
                    f"your z differs from the encoder's by up to {(got.float() - want).abs().max():.3f}.")
        raise AssertionError(f"on {name}: {hint}")
    passed("sae_encode")


def check_sae_edit(fn) -> None:
    """``fn(sae, change) -> edit``: ``edit(h) = h + (change(z) - z) @ W_dec`` with ``z = sae.encode(h)``, the edit
    that keeps the SAE's reconstruction error."""
    sae = TinySAE(4, True, False)
    h = 2.0 * torch.randn(1, 7, sae.cfg.d_in, generator=torch.Generator().manual_seed(5))  # (batch, seq, d_model)
    z = sae.encode(h)
    k = int(z.sum((0, 1)).argmax())  # the latent most active on h

    def ablate(z):
        z = z.clone()
        z[..., k] = 0.0
        return z

    changes = {"the empty edit (change(z) = z)": lambda z: z, f"ablating latent {k}": ablate,
               "doubling every latent": lambda z: 2 * z}
    for name, change in changes.items():
        edit = fn(sae, change)
        if not callable(edit):
            raise AssertionError("return a function of h (what hooks.edit calls at every forward pass), "
                                 f"not a {type(edit).__name__}.")
        got = torch.as_tensor(edit(h.clone())).float()
        z_new = change(z)
        want = h + (z_new - z) @ sae.W_dec
        if got.shape == want.shape and torch.allclose(got, want, atol=1e-5):
            continue
        mistakes = [
            (sae.decode(z_new), "you returned the edited reconstruction z' W_dec + b_dec and so threw away the "
                                "error term e = h - h_hat: add the change to h instead, h + (z' - z) W_dec."),
            (h + z_new @ sae.W_dec, "you added all of z' W_dec to h: write back only the change, (z' - z) W_dec."),
            (h - (z_new - z) @ sae.W_dec, "the change has the wrong sign: h' = h + (z' - z) W_dec."),
            (h + (z_new - z) @ sae.W_enc.T, "you wrote the change back through W_enc.T: latent k writes the "
                                            "decoder row W_dec[k] into the residual stream."),
        ]
        hint = next((msg for value, msg in mistakes if got.shape == value.shape and torch.allclose(got, value, atol=1e-5)),
                    "")
        if not hint and name.startswith("the empty"):
            hint = "the empty edit must return h unchanged."
        raise AssertionError(f"for {name}: your edit differs from h + (z' - z) W_dec. {hint}".rstrip())
    passed("sae_edit")


def check_top_activating(fn) -> None:
    """``fn(Z, latent, n) -> rows``: the (at most ``n``) rows of ``Z`` (tokens) where column ``latent`` is largest,
    strongest first, leaving out rows where the latent does not fire (``Z[row, latent] == 0``)."""
    g = torch.Generator().manual_seed(6)
    Z = torch.relu(torch.randn(14, 5, generator=g)) * torch.rand(14, 5, generator=g)  # (n_tokens, d_sae)
    Z[:, 4] = 0.0
    Z[[3, 9], 4] = torch.tensor([0.7, 1.9])  # latent 4 fires on two tokens only
    for latent, n in ((1, 4), (4, 5)):  # latent 1 fires on 8 tokens
        col = Z[:, latent]
        firing = int((col > 0).sum())
        want = col.topk(min(n, firing)).indices.tolist()
        out = torch.as_tensor(fn(Z.clone(), latent, n)).flatten()
        if out.is_floating_point() and not torch.equal(out, out.round()):
            raise AssertionError("you returned activations: return the row indices (topk(...).indices), which say "
                                 "where in the corpus the latent fires.")
        got = [int(i) for i in out.tolist()]
        if got == want:
            continue
        if got == Z[latent].topk(n).indices.tolist():
            hint = ("you ranked row `latent` of Z, the latents of one token: Z has one row per token and one column "
                    "per latent, so rank the column Z[:, latent].")
        elif sorted(got) == sorted(want):
            hint = "put the strongest activation first (descending order)."
        elif got[:len(want)] == want:
            hint = (f"latent {latent} fires on only {firing} tokens: leave out rows where it is 0, they are not "
                    "contexts where it is active.")
        elif got and float(col[got[0]]) <= float(col[col > 0].min()):
            hint = "you took the weakest activations: rank from the largest."
        else:
            hint = ""
        raise AssertionError(f"for latent {latent}, n={n} expected rows {want}, got {got}. {hint}".rstrip())
    passed("top_activating")


def check_static_score(fn) -> None:
    """``fn(delta_mean, delta_std) -> score``: ``delta_mean / delta_std`` per latent, 0 where ``delta_std`` is 0."""
    d = torch.tensor([0.6, -2.0, 0.2, 3.0, 0.0, -0.5])
    std = torch.tensor([0.2, 4.0, 0.1, 2.0, 0.0, 0.0])  # latents 4 and 5 never vary
    want = torch.tensor([3.0, -0.5, 2.0, 1.5, 0.0, 0.0])
    got = torch.as_tensor(fn(d.clone(), std.clone())).float()
    if got.shape != want.shape:
        raise AssertionError(f"return one score per latent, shape {tuple(want.shape)}; got {tuple(got.shape)}.")
    if torch.allclose(got, want, atol=1e-5):
        passed("static_score")
        return
    if not torch.isfinite(got[4:]).all():
        hint = ("latents 4 and 5 have std 0: their score must be 0, not NaN or inf (torch.topk would rank NaN "
                "above every number); use torch.where(delta_std > 0, ..., 0).")
    elif torch.allclose(got[:4], d[:4], atol=1e-5):
        hint = "you returned delta_mean itself: divide by delta_std."
    elif torch.allclose(got[:4], std[:4] / d[:4], atol=1e-5):
        hint = "you divided the wrong way round: the score is delta_mean / delta_std."
    elif got[5].abs() > 1:
        hint = ("latent 5 never varies (std 0) but got a large score: clamping the std to a small number "
                "divides by almost zero; set the score to 0 where delta_std is 0.")
    else:
        hint = ""
    raise AssertionError(f"expected {want.tolist()}, got {[round(float(x), 4) for x in got]}. {hint}".rstrip())


def _split_data() -> list[PreferenceTriple]:
    """40 prompts with 1 to 6 triples each, in the interleaved order of the toy world's files."""
    sizes = [1 + (i * 7) % 6 for i in range(40)]
    out = []
    for rep in range(max(sizes)):
        out += [PreferenceTriple(f"prompt {p} ?", f"chosen {p}.{rep}", f"rejected {p}.{rep}", category=f"c{p % 4}")
                for p in range(40) if rep < sizes[p]]
    return out


def check_prompt_split(fn) -> None:
    """``fn(triples, test_fraction, seed) -> (train, test)``: about ``test_fraction`` of the distinct prompts, with
    all their triples, in ``test``; no prompt on both sides; no triple lost; the split fixed by ``seed``."""
    data = _split_data()
    n_prompts = len({t.prompt for t in data})
    for frac in (0.25, 0.5):
        splits = []
        for seed in (0, 1, 2):
            given = list(data)
            out = fn(given, frac, seed)
            if not (isinstance(out, (tuple, list)) and len(out) == 2):
                raise AssertionError("return a pair (train, test) of lists of triples.")
            train, test = list(out[0]), list(out[1])
            if given != data:
                raise AssertionError("you reordered the caller's list in place: shuffle a copy (or the prompts).")
            if sorted(map(repr, train + test)) != sorted(map(repr, data)):
                lost = len(set(data) - set(train) - set(test))
                raise AssertionError(f"train + test must hold every triple exactly once; {lost} are missing and "
                                     f"{len(train) + len(test) - (len(data) - lost)} extra. A prompt with several "
                                     "triples keeps all of them, on one side.")
            shared = {t.prompt for t in train} & {t.prompt for t in test}
            if shared:
                raise AssertionError(f"{len(shared)} prompts have triples on both sides (e.g. {sorted(shared)[0]!r}): "
                                     "the test set then measures prompts it was fitted on. Split the distinct "
                                     "prompts, then send every triple to its prompt's side.")
            n_test = len({t.prompt for t in test})
            if abs(n_test - frac * n_prompts) > 1:
                share = len(test) / len(data)
                hint = (" You split the triples' count; test_fraction is the share of distinct prompts (the triples "
                        "follow their prompt)." if abs(share - frac) < 0.02 else "")
                raise AssertionError(f"with test_fraction={frac}, {n_test} of the {n_prompts} distinct prompts are "
                                     f"in test; expected about {frac * n_prompts:.0f}.{hint}")
            again = fn(list(data), frac, seed)[1]
            if sorted(map(repr, again)) != sorted(map(repr, test)):
                raise AssertionError(f"seed={seed} gave two different splits: draw from random.Random(seed), not "
                                     "the global random state, so a split can be reproduced.")
            splits.append({t.prompt for t in test})
        if splits[0] == splits[1] == splits[2]:
            raise AssertionError("seeds 0, 1 and 2 give the same test prompts: shuffle the prompts with "
                                 "random.Random(seed) before cutting, so the seed chooses the split.")
    passed("prompt_split")

