"""DSPA: fit the conditional-difference map, then steer decoding with token-active SAE edits.

The method (Wedgwood et al., arXiv 2603.21461; docs/design.md §3):

1. ``u(x)``: input-SAE features of the prompt at ``l_in``; ``s(x) = A^T u(x) / max(1, |u|_1)``.
2. ``K_neg``/``K_pos``: the ``k`` most negative / positive entries of ``s(x)``.
3. At ``l_out``, on every position whose next token is sampled, ``z = f_out(h)``; only latents
   with ``z > 0`` are touched (token-active gating): ``ablate`` zeroes active ``K_neg`` latents,
   ``augment`` scales active ``K_pos`` latents by ``1 + alpha``, ``both`` does both. The edit is
   written back as ``h + (z' - z) @ W_dec``, so the SAE's reconstruction error is kept and an
   empty edit is the identity (the pattern of Dynamic SAE Guardrails, arXiv 2504.08192).
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Sequence
from typing import Any

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor
from torch.profiler import record_function

from .cdmap import CDMap, CDMapConfig, LowRankMap, select_latents
from .checks import DegenerateMapError, check_alpha, check_choice, check_finite_weights, check_k, check_triples
from .features import prompt_features, triple_features
from .generation import Steerer, content_start
from .hooks import edit, observe
from .prefill import PrefillSets, prompt_rows
from .saes import check_sae, model_id, sae_id, sae_layer
from .sparse import EDIT_PATHS, add_decoded, edit_path, gather, mask_indices, sparse_diff
from .triples import data_hash

__all__ = ["DSPA", "LatentEdit", "MODES", "fit_cdmap", "masks_from"]

MODES = ("ablate", "augment", "both")
GATES = ("active", "none")
POSITIONS = ("generated", "all")
SMALL_FIT = 10  # fewer triples than this: a warning (chapter 11 measures how steering grows with data)
NONFINITE = "the SAE edit produced NaN/inf: check the model dtype and alpha"


def fit_cdmap(model, tokenizer, sae_in, sae_out, triples, config: CDMapConfig | None = None, *,
              l_in: int | None = None, l_out: int | None = None, progress: bool = False) -> CDMap:
    """Fit the conditional-difference map from preference triples (two forward passes each, to ``l_out``).

    Refused before any forward pass: fewer than ``config.n_min`` triples, a triple whose chosen equals its
    rejected, one longer than the model's context, text mostly unknown to the tokenizer, NaN/inf SAE weights.
    Refused after: a map that is all zero (it would steer nothing), as :class:`DegenerateMapError`."""
    config = config or CDMapConfig.default()
    l_in = sae_layer(sae_in) if l_in is None else l_in
    l_out = sae_layer(sae_out) if l_out is None else l_out
    check_sae(sae_in, l_in, "sae_in", model=model)
    check_sae(sae_out, l_out, "sae_out", model=model)
    check_finite_weights(sae_in, "sae_in")
    check_finite_weights(sae_out, "sae_out")
    triples = check_triples(triples, "the triples passed to fit_cdmap", min_n=config.n_min)
    if len(triples) < SMALL_FIT:
        warnings.warn(f"fitting on {len(triples)} triples: a map from so few steers weakly or not at all; use "
                      "hundreds", UserWarning, stacklevel=2)
    feats = triple_features(model, tokenizer, sae_in, sae_out, l_in, l_out, triples, pooling=config.pooling,
                            exclude_template=config.exclude_template, batch_size=config.batch_size, progress=progress)
    active = (feats.V_pos > 0).float()
    latent_mean = (feats.V_pos.sum(0) / active.sum(0).clamp_min(1)).float()  # mean value where active
    meta = dict(model_id=model_id(model), sae_in_id=sae_id(sae_in), sae_out_id=sae_id(sae_out), l_in=l_in,
                l_out=l_out, d_model=model.config.hidden_size, d_sae_in=sae_in.cfg.d_sae,
                d_sae_out=sae_out.cfg.d_sae, data_hash=data_hash(triples))
    cdmap = CDMap.from_features(feats.U, feats.Delta, latent_mean, config, meta)
    parts = (cdmap.A.left, cdmap.A.right) if isinstance(cdmap.A, LowRankMap) else (cdmap.A,)
    if any(float(torch.linalg.vector_norm(t, ord=float("inf"))) == 0 for t in parts):  # max |entry|, no copy
        raise DegenerateMapError(
            f"the map fitted on {len(triples)} triples is all zero, so it would steer nothing: no prompt latent was "
            f"active in at least n_min={config.n_min} triples with a chosen-rejected difference; use more triples "
            "(hundreds), in text the model reads")
    return cdmap


class LatentEdit:
    """The token-active SAE edit at one layer, with per-row latent sets.

    ``neg``/``pos`` are boolean masks ``(B or 1, d_sae)``; a row of ones broadcasts over the batch. With ``None``
    for both, the sets come later from :meth:`set_latents` (``(B, k)`` indices padded with ``-1``; DSPA sets them
    during the prefill). ``start``: per-row first position to edit during the first (prefill or teacher-forced) call;
    ``None`` edits only the last position there (the one that predicts the first response token).
    Later calls (one new token each, under ``generate``) are always edited.

    ``path``: ``"auto"`` takes :func:`~dspa_lite.method.sparse.edit_path` (``"sparse"`` for ReLU and JumpReLU SAEs:
    the edit encodes and decodes the selected latents only; ``"dense"`` for TopK and anything else); the path taken is
    ``self.path``. No call reads a value back to the host (a device synchronisation on a GPU): a NaN/inf edit makes its
    float32 sum on the device non-finite, and :meth:`check_finite` reads those sums once, after generation;
    ``debug=True`` checks on every call.
    """

    def __init__(self, sae, neg: Bool[Tensor, "B d_sae"] | None, pos: Bool[Tensor, "B d_sae"] | None, mode: str,
                 alpha: float, gate: str = "active", latent_mean: Tensor | None = None,
                 start: Sequence[int] | None = None, every_position: bool = False, path: str = "auto",
                 debug: bool = False):
        check_choice(mode, MODES, "mode")
        check_choice(gate, GATES, "gate")
        check_choice(path, ("auto", *EDIT_PATHS), "path")
        alpha = check_alpha(alpha)
        if gate == "none" and latent_mean is None:
            raise ValueError("gate='none' injects K_pos latents at their mean active value: pass latent_mean")
        self.sae, self.mode, self.alpha, self.gate, self.debug = sae, mode, alpha, gate, debug
        self.latent_mean, self.start, self.every_position = latent_mean, start, every_position
        # on the device now, so the hook's first call copies nothing from the host (a sync on a GPU)
        self._starts = None if start is None else torch.as_tensor(list(start), device=sae.W_dec.device)[:, None]
        self.path = edit_path(sae) if path == "auto" else path
        if self.path == "sparse" and edit_path(sae) != "sparse":
            raise ValueError(f"path='sparse' needs an SAE with an elementwise activation (ReLU, JumpReLU); this "
                             f"{type(sae).__name__} needs the dense edit: use path='auto' or 'dense'")
        self.calls = 0
        self.trace: list[Tensor] = []  # per call: (B, t, d_sae) bool of edited latents, if record=True
        self.record = False
        self.empty: bool | None = None  # True: known on the host to select nothing (the edit returns h itself)
        self._sets: Any = None  # sparse.Gathered, or the (neg, pos) masks on the SAE's device
        self._totals: list[Tensor] = []  # per call, the float32 sum of z' - z (finite unless it held NaN/inf)
        if neg is not None or pos is not None:
            none = torch.zeros(1, sae.W_dec.shape[0], dtype=torch.bool)
            neg = none if neg is None or mode == "augment" else neg
            pos = none if pos is None or mode == "ablate" else pos
            neg, pos = torch.broadcast_tensors(neg, pos)
            self.set_latents(mask_indices(neg & ~pos), mask_indices(pos))  # in "both", K_pos wins a shared latent

    def set_latents(self, neg: Int[Tensor, "B kn"], pos: Int[Tensor, "B kp"]) -> None:
        """This batch's ``K_neg``/``K_pos`` as ``(B, k)`` latent indices padded with ``-1`` (any order, any device),
        gathered once for the sparse path."""
        neg = neg if self.mode in ("ablate", "both") else neg[:, :0]
        pos = pos if self.mode in ("augment", "both") else pos[:, :0]
        if neg.shape[0] != pos.shape[0]:
            neg, pos = (t.expand(max(neg.shape[0], pos.shape[0]), -1) for t in (neg, pos))
        neg, pos = _ascending(neg), _ascending(pos)  # one order whichever way the sets came
        self.K_neg, self.K_pos, self.empty = neg, pos, neg.shape[1] + pos.shape[1] == 0
        if self.path == "sparse":
            self._sets = gather(self.sae, neg, pos, self.alpha, self.latent_mean if self.gate == "none" else None)
        else:
            d_sae, dev = self.sae.W_dec.shape[0], self.sae.W_dec.device
            self._sets = (masks_from(neg, d_sae).to(dev), masks_from(pos, d_sae).to(dev))

    @record_function("dspa.LatentEdit")
    def __call__(self, h: Float[Tensor, "B T d_model"]) -> Float[Tensor, "B T d_model"]:
        first, self.calls = self.calls == 0, self.calls + 1
        if self.empty:
            return h
        if self._sets is None:
            raise RuntimeError("LatentEdit has no latent sets: pass neg/pos masks or call set_latents first")
        if first and self.start is None and not self.every_position and h.shape[1] > 1:
            # the prompt pass: edit only the last position instead of the whole prompt
            return torch.cat([h[:, :-1], self._edit(h[:, -1:], None)], 1)
        sel = None
        if first and self.start is not None and not self.every_position:
            starts = self._starts.to(h.device)
            sel = torch.arange(h.shape[1], device=h.device)[None, :] >= starts
        return self._edit(h, sel)

    def _edit(self, h: Float[Tensor, "B T d_model"], sel: Bool[Tensor, "B T"] | None) -> Float[Tensor, "B T d_model"]:
        if self.path == "sparse":
            with record_function("dspa.LatentEdit.encode"):
                diff = sparse_diff(self._sets, h, sel)  # (B, T, J)
            W_dec = self._sets.W_dec
        else:
            diff, W_dec = self._dense_diff(h, sel), self.sae.W_dec  # (B, T, d_sae)
        if self.record:
            self.trace.append(self._edited(diff))
        # NaN/inf anywhere in the edit makes its float32 sum non-finite: one reduction, read after generation
        total = diff.sum(dtype=torch.float32)
        if self.debug and not torch.isfinite(total):  # a host read: debug only
            raise FloatingPointError(NONFINITE)
        self._totals.append(total)
        return add_decoded(h, diff, W_dec)

    def _dense_diff(self, h: Float[Tensor, "B T d_model"], sel: Bool[Tensor, "B T"] | None) -> Float[Tensor, "B T d_sae"]:
        neg, pos = (m[:, None, :] for m in self._sets)
        with record_function("dspa.LatentEdit.encode"):
            z = self.sae.encode(h.to(self.sae.W_dec.dtype))  # (B, T, d_sae)
        active = z > 0 if sel is None else (z > 0) & sel[:, :, None]
        z_new = torch.where(neg & active, torch.zeros_like(z), z)
        z_new = torch.where(pos & active, z * (1 + self.alpha), z_new)
        if self.gate == "none":
            inject = pos & (z <= 0) if sel is None else pos & (z <= 0) & sel[:, :, None]
            z_new = torch.where(inject, self.alpha * self.latent_mean.to(z) * torch.ones_like(z), z_new)
        return z_new - z

    def _edited(self, diff: Tensor) -> Tensor:
        """``(B, T, d_sae)`` bool of the latents this call changed (for ``record``; a host copy)."""
        if self.path == "dense":
            return (diff != 0).cpu()
        d_sae, (B, T, J) = self.sae.W_dec.shape[0], diff.shape
        idx = self._sets.idx.masked_fill(~self._sets.valid, d_sae).expand(B, J)  # padding to a spare column
        out = torch.zeros(B, T, d_sae + 1, dtype=torch.bool, device=diff.device)
        return out.scatter_(2, idx[:, None, :].expand(B, T, J), diff != 0)[..., :d_sae].cpu()

    def check_finite(self) -> None:
        """Raise ``FloatingPointError`` if any call so far produced NaN/inf (one host read of the summed edits)."""
        if self._totals and not bool(torch.isfinite(torch.stack(self._totals).sum())):
            raise FloatingPointError(NONFINITE)


def _ascending(idx: Int[Tensor, "B k"]) -> Int[Tensor, "B k"]:
    """Each row's latent indices in ascending order, the ``-1`` padding last."""
    big = torch.iinfo(idx.dtype).max
    out = torch.sort(idx.masked_fill(idx < 0, big), dim=1).values
    return out.masked_fill(out == big, -1)


def masks_from(idx: Tensor, d_sae: int) -> Bool[Tensor, "B d_sae"]:
    """Boolean masks from (B, k) latent indices padded with -1."""
    idx = idx if idx.ndim == 2 else idx[None]
    mask = torch.zeros(idx.shape[0], d_sae + 1, dtype=torch.bool, device=idx.device)
    mask.scatter_(1, torch.where(idx < 0, d_sae, idx), True)
    return mask[:, :d_sae]


class DSPA(Steerer):
    """Dynamic, prompt-conditional SAE steering.

    Args:
        mode: ``"ablate"`` (zero active ``K_neg`` latents), ``"augment"`` (scale active ``K_pos``
            latents by ``1 + alpha``) or ``"both"``.
        k: how many latents go into ``K_neg`` and ``K_pos`` for each prompt.
        positions: ``"generated"`` edits every position whose next token is sampled (the last
            prompt position and each generated one); ``"all"`` also edits the rest of the prompt (not
            padding, nor a leading BOS, whose residual is an outlier the SAEs were not trained on).
        gate: ``"active"`` (the paper's rule: only latents with ``z > 0``) or ``"none"`` (an
            ablation: also inject inactive ``K_pos`` latents at ``alpha`` times their mean active value).
        path: the edit's arithmetic (:class:`LatentEdit`): ``"auto"`` (sparse for ReLU/JumpReLU SAEs, dense for
            TopK), ``"sparse"`` or ``"dense"``; both give the same edit to float rounding.
        prefill: under :meth:`generate`, compute ``u(x)`` and the latent sets from the prefill itself (a capture at
            ``l_in`` in the same forward pass, :mod:`~dspa_lite.method.prefill`); ``False``, or input the prefill
            cannot map back to the prompts, runs the separate prompt pass (:meth:`scores`).
    """

    def __init__(self, model, tokenizer, sae_in, sae_out, cdmap: CDMap, mode: str = "both", k: int = 32,
                 alpha: float = 3.0, positions: str = "generated", gate: str = "active", path: str = "auto",
                 prefill: bool = True):
        super().__init__(model, tokenizer)
        self.sae_in, self.sae_out, self.cdmap = sae_in, sae_out, cdmap
        self.l_in, self.l_out = int(cdmap.meta["l_in"]), int(cdmap.meta["l_out"])
        # the map's provenance first: a map for another model says so, rather than "layer 12 is out of range"
        cdmap.check_compatible(model_id(model), sae_id(sae_in), sae_id(sae_out), self.l_in, self.l_out,
                               model.config.hidden_size, sae_in.cfg.d_sae, sae_out.cfg.d_sae)
        check_sae(sae_in, self.l_in, "sae_in", model=model)
        check_sae(sae_out, self.l_out, "sae_out", model=model)
        check_finite_weights(sae_in, "sae_in")
        check_finite_weights(sae_out, "sae_out")
        check_k(k, sae_out.cfg.d_sae)
        check_choice(positions, POSITIONS, "positions")
        if self.l_out <= self.l_in:
            raise ValueError(f"l_out={self.l_out} must be greater than l_in={self.l_in}")
        LatentEdit(sae_out, None, None, mode, alpha, gate, cdmap.latent_mean, path=path)  # validates mode/gate/path now
        self.mode, self.k, self.alpha, self.positions, self.gate = mode, k, alpha, positions, gate
        self.path, self.prefill = path, bool(prefill)
        self.last_edit: LatentEdit | None = None
        self.record = False  # keep, per forward call, which latents were edited (for the explorer and audits)

    def scores(self, prompt: str | Sequence[str]) -> dict[str, Any]:
        """``s(x)``, ``K_neg`` and ``K_pos`` for one prompt (or a list: batched tensors)."""
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        with record_function("dspa.prompt_features"):
            u = prompt_features(self.model, self.tokenizer, self.sae_in, self.l_in, prompts,
                                self.cdmap.config.pooling, self.cdmap.config.exclude_template)
        with record_function("dspa.map_lookup"):  # on the SAE's device (the map is copied there once)
            s = self.cdmap.scores(u.to(self.sae_out.W_dec.device))  # (B, m_out)
            k_neg, k_pos = select_latents(s, self.k)
            s, k_neg, k_pos = s.cpu(), k_neg.cpu(), k_pos.cpu()
        if isinstance(prompt, str):
            return {"s": s[0], "K_neg": k_neg[0][k_neg[0] >= 0], "K_pos": k_pos[0][k_pos[0] >= 0], "u": u[0]}
        return {"s": s, "K_neg": k_neg, "K_pos": k_pos, "u": u}

    def make_edit(self, prompts: Sequence[str], start: Sequence[int] | None = None) -> LatentEdit:
        """This batch's edit, its latent sets from a separate prompt pass (:meth:`scores`)."""
        ed = self._new_edit(start)
        if self.k == 0:
            none = torch.empty(len(prompts), 0, dtype=torch.long)
            ed.set_latents(none, none)
        else:
            sc = self.scores(list(prompts))
            ed.set_latents(sc["K_neg"], sc["K_pos"])
        return ed

    def _new_edit(self, start: Sequence[int] | None) -> LatentEdit:
        ed = LatentEdit(self.sae_out, None, None, self.mode, self.alpha, self.gate, self.cdmap.latent_mean,
                        start=start, every_position=self.positions == "all" and start is None, path=self.path)
        ed.record = self.record
        return ed

    @contextlib.contextmanager
    def steer(self, prompts: Sequence[str], input_ids: Tensor | None = None, attention_mask: Tensor | None = None,
              start: Sequence[int] | None = None):
        """Hooks for one batch (the ``steer`` argument of :func:`dspa_lite.generate`)."""
        if self.positions == "all" and input_ids is not None:  # every position but padding and BOS
            start = content_start(input_ids, attention_mask, self.tokenizer.bos_token_id)
        rows = None
        if self.prefill and self.k > 0 and input_ids is not None:
            rows = prompt_rows(self.tokenizer, list(prompts), input_ids, attention_mask,
                               self.cdmap.config.exclude_template)
        if rows is None:  # a separate prompt pass
            self.last_edit, fill = self.make_edit(prompts, start), None
        else:  # u(x) from the prefill: the hook at l_in fires before the edit at l_out in the same pass
            self.last_edit = self._new_edit(start)
            fill = PrefillSets(self.sae_in, self.cdmap, self.k, rows, self.last_edit)
        with contextlib.ExitStack() as stack:
            if fill is not None:
                stack.enter_context(observe(self.model, self.l_in, fill))
            stack.enter_context(edit(self.model, self.l_out, self.last_edit))
            yield self.last_edit
        if fill is not None:
            fill.check_finite()
        self.last_edit.check_finite()  # the edit's device-side NaN/inf flag, read once per batch
