"""Alignment-stage FLOPs of DSPA, static SAE steering, DPO and RAHF-SCIT, counted by component.

FLOPs, not MACs: a matmul ``(m, k) @ (k, n)`` costs ``2*m*n*k``. Only matmuls count, as in ``torch.utils.flop_counter``,
so :func:`dspa_lite.evaluation.flopcount.cross_check` measures every formula (as nanoGPT's ``transformer_sizing``
does). Sources: Kaplan et al. 2020, "Scaling Laws" (2N per token forward, 6N with backward);
Hoffmann et al. 2022 (Chinchilla, app. F).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

from ..loading.profiles import PROFILES

__all__ = ["KNOWN_MODELS", "SETTINGS", "ModelShape", "decode_overhead", "dpo", "dspa_fit", "forward_flops",
           "lora_step_flops", "rahf_scit", "ratios", "sae_decode_flops", "sae_encode_flops", "static_fit"]


@dataclass(frozen=True)
class ModelShape:
    """The dimensions of a decoder-only transformer that its matmul FLOPs depend on."""

    n_layers: int
    d_model: int
    d_mlp: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    vocab: int
    tied_embeddings: bool = True  # changes the parameter count, not the FLOPs: the LM head matmul runs either way
    gated_mlp: bool = True  # gate/up/down (Gemma-2, Qwen-3, Llama) vs up/down (GPT-2)

    def __post_init__(self):
        bad = [f"{k}={v!r}" for k, v in asdict(self).items() if type(v) is not bool and not (type(v) is int and v > 0)]
        if bad:
            raise ValueError(f"ModelShape sizes must be positive ints, got {', '.join(bad)}")
        if self.n_heads % self.n_kv_heads:
            raise ValueError(f"n_heads={self.n_heads} must be a multiple of n_kv_heads={self.n_kv_heads}")

    @classmethod
    def from_config(cls, cfg) -> ModelShape:
        """Read a Hugging Face config (Gemma-2, Qwen-3, Llama; GPT-2 field names as a fallback)."""
        get = lambda *names, default=None: next((getattr(cfg, n) for n in names if getattr(cfg, n, None)), default)  # noqa: E731
        d, h = get("hidden_size", "n_embd"), get("num_attention_heads", "n_head")
        return cls(get("num_hidden_layers", "n_layer"), d, get("intermediate_size", "n_inner", default=4 * d), h,
                   get("num_key_value_heads", default=h), get("head_dim", default=d // h), cfg.vocab_size,
                   bool(getattr(cfg, "tie_word_embeddings", True)), getattr(cfg, "model_type", "") != "gpt2")

    @classmethod
    def from_profile(cls, profile) -> ModelShape:
        """The shape a :class:`~dspa_lite.loading.profiles.Profile` records (the profiles are the one source)."""
        return cls(profile.n_layers, profile.d_model, profile.d_mlp, profile.n_heads, profile.n_kv_heads,
                   profile.head_dim, profile.vocab_size, profile.tied_embeddings)

    @classmethod
    def preset(cls, name: str) -> ModelShape:
        """One of :data:`KNOWN_MODELS` by name."""
        if name not in KNOWN_MODELS:
            raise ValueError(f"unknown model {name!r}: known models are {', '.join(KNOWN_MODELS)}")
        return KNOWN_MODELS[name]

    def to_dict(self) -> dict:
        return asdict(self)


KNOWN_MODELS: dict[str, ModelShape] = {name: ModelShape.from_profile(p) for name, p in PROFILES.items()
                                        if p.name != "gemma-2-2b-it"}  # -it has 2b's shape


def _layer(shape: ModelShape, n_tokens: int, seq_len: int) -> dict[str, int]:
    """One decoder layer: weight matmuls (``linear``) and activation-by-activation ones (``attention``)."""
    d, hd = shape.d_model, shape.head_dim
    proj = 2 * n_tokens * d * hd * (2 * shape.n_heads + 2 * shape.n_kv_heads)  # q, o; k, v with GQA's fewer heads
    mlp = (3 if shape.gated_mlp else 2) * 2 * n_tokens * d * shape.d_mlp
    attn = 2 * 2 * n_tokens * shape.n_heads * hd * seq_len  # QK^T and AV against every key (masked, not skipped)
    return {"linear": proj + mlp, "attention": attn}


def forward_flops(shape: ModelShape, n_tokens: int, seq_len: int, upto_layer: int | None = None,
                  lm_head: bool = True) -> int:
    """Matmul FLOPs of a forward pass over ``n_tokens`` query tokens, each scored against ``seq_len`` keys.

    Per token and layer (Chinchilla app. F; nanoGPT ``transformer_sizing``): ``2*d*hd*(2H + 2KV)`` for
    q/k/v/o, ``4*H*hd*seq_len`` for ``QK^T`` and ``AV``, ``2*(3 if gated else 2)*d*d_mlp`` for the MLP;
    plus ``2*d*vocab`` for the LM head (Kaplan's ``2N`` is this without attention). A batch ``(B, T)``
    is ``n_tokens=B*T, seq_len=T`` (eager attention computes all ``T x T`` scores, then masks); a cached
    decoding step ``n_tokens=B, seq_len=past+1``. ``upto_layer``: stop after it, as ``forward_until``.

    >>> forward_flops(ModelShape.preset("tiny"), n_tokens=2 * 24, seq_len=24)
    99102720
    """
    n = shape.n_layers if upto_layer is None else upto_layer + 1
    if not 1 <= n <= shape.n_layers:
        raise ValueError(f"upto_layer={upto_layer} is out of range for a model with {shape.n_layers} layers")
    head = 2 * n_tokens * shape.d_model * shape.vocab if lm_head and upto_layer is None else 0
    return n * sum(_layer(shape, n_tokens, seq_len).values()) + head


def sae_encode_flops(d_model: int, d_sae: int, n_tokens: int) -> int:
    """``x @ W_enc``: ``2*n*d_model*d_sae`` (biases and the (Jump)ReLU are not matmuls)."""
    return 2 * n_tokens * d_model * d_sae


def sae_decode_flops(d_sae: int, d_model: int, n_tokens: int) -> int:
    """``z @ W_dec``, dense as sae-lens computes it: ``2*n*d_sae*d_model``."""
    return 2 * n_tokens * d_sae * d_model


def _total(parts: dict[str, int]) -> dict[str, int]:
    return {**parts, "total": sum(parts.values())}


def dspa_fit(shape: ModelShape, d_sae_in: int, d_sae_out: int, n_triples: int, prompt_len: int, response_len: int,
             l_in: int, l_out: int) -> dict[str, int]:
    """Fitting DSPA (:func:`dspa_lite.method.features.triple_features`, then the map): two passes per triple
    (``x+y+``, ``x+y-``) stopped after ``l_out``; ``sae_in`` on the prompt tokens once (an upper bound:
    template tokens are dropped); ``sae_out`` on both responses; ``U^T Delta`` as a dense matmul (binary
    ``u`` is sparse, so really ``n*|u|_0*m_out``; negligible either way)."""
    if not 0 <= l_in < l_out < shape.n_layers:
        raise ValueError(f"need 0 <= l_in < l_out < {shape.n_layers}, got l_in={l_in}, l_out={l_out}")
    T = prompt_len + response_len
    return _total({"forward_to_l_out": 2 * n_triples * forward_flops(shape, T, T, upto_layer=l_out),
                   "sae_in_encode": sae_encode_flops(shape.d_model, d_sae_in, n_triples * prompt_len),
                   "sae_out_encode": sae_encode_flops(shape.d_model, d_sae_out, 2 * n_triples * response_len),
                   "map": 2 * n_triples * d_sae_in * d_sae_out})


def static_fit(shape: ModelShape, d_sae_out: int, n_triples: int, prompt_len: int, response_len: int,
               l_out: int) -> dict[str, int]:
    """Static SAE steering's fit: DSPA's passes and ``sae_out`` encodes, no ``sae_in``, no map; the mean
    of ``delta`` is ``n*m_out`` additions (listed, though no matmul counter sees it)."""
    T = prompt_len + response_len
    return _total({"forward_to_l_out": 2 * n_triples * forward_flops(shape, T, T, upto_layer=l_out),
                   "sae_out_encode": sae_encode_flops(shape.d_model, d_sae_out, 2 * n_triples * response_len),
                   "mean_delta": n_triples * d_sae_out})


def dpo(shape: ModelShape, n_pairs: int, seq_len: int, epochs: int = 1) -> dict[str, int]:
    """DPO (Rafailov et al. 2023) as TRL runs it: per pair and epoch, the policy's forward+backward on chosen
    and rejected (3x a forward, Kaplan's 6N vs 2N) and the reference model's forward on both (not cached)."""
    f = forward_flops(shape, seq_len, seq_len)
    return _total({"policy_forward_backward": epochs * n_pairs * 2 * 3 * f,
                   "reference_forward": epochs * n_pairs * 2 * f})


def lora_step_flops(shape: ModelShape, n_tokens: int, seq_len: int, target_layers: Sequence[int], rank: int,
                    grad_checkpointing: bool = False) -> dict[str, int]:
    """One RAHF stage-2 LoRA pass over a batch, as the reproduction's ``code/step2/RAHF.py`` runs it.

    A full forward (``output_hidden_states=True`` still computes the logits), LoRA on q/v of layers
    ``0..max(target_layers)``; the loss reads ``hidden_states[l]`` (layer ``l - 1``'s output), so the backward
    runs through layers ``0..max-1``: frozen weights need only input gradients (1x their forward), attention and
    LoRA matmuls both operands' (2x); the embeddings require grad (``enable_input_require_grads``)."""
    hi, layer = max(target_layers), _layer(shape, n_tokens, seq_len)
    lora = 2 * n_tokens * rank * (2 * shape.d_model + (shape.n_heads + shape.n_kv_heads) * shape.head_dim)
    return _total({"forward": forward_flops(shape, n_tokens, seq_len) + (hi + 1) * lora,
                   "backward": hi * (layer["linear"] + 2 * layer["attention"] + 2 * lora),
                   "recompute": hi * (sum(layer.values()) + lora) if grad_checkpointing else 0})


def rahf_scit(shape: ModelShape, n_pairs: int, seq_len: int, stage1_epochs: int = 2, stage2_steps: int = 450,
              stage2_batch: int = 64, lora_rank: int = 8, target_layers: Sequence[int] = range(10, 19),
              stage2_seq_len: int | None = None, grad_checkpointing: bool = True) -> dict[str, int]:
    """RAHF-SCIT (Liu et al., ACL 2024) as the jtbwedgwood/RAHF reproduction runs it.

    Stage 1 (``SCIT-step1.py``, full fine-tune): two sequences of ``seq_len`` tokens per pair (good instruction ->
    chosen, bad -> rejected), each through three passes with gradients, 3x a forward each (LM loss; matched and
    swapped instruction for the contrastive term). Stage 2 (``RAHF.py``): ``stage2_steps * stage2_batch`` examples
    whatever ``n_pairs`` is, each three frozen full forwards (base; stage-1 model with good and bad instruction) and
    a LoRA pass (:func:`lora_step_flops`, plus checkpointing's recompute) on ``stage2_seq_len`` (256 + 512) tokens."""
    T2, n2 = stage2_seq_len or seq_len, stage2_steps * stage2_batch
    lora = lora_step_flops(shape, n2 * T2, T2, target_layers, lora_rank, grad_checkpointing)
    return _total({"stage1": stage1_epochs * n_pairs * 2 * 3 * 3 * forward_flops(shape, seq_len, seq_len),
                   "stage2_frozen_forwards": 3 * forward_flops(shape, n2 * T2, T2),
                   "stage2_lora_forward_backward": lora["forward"] + lora["backward"],
                   "stage2_recompute": lora["recompute"]})


def decode_overhead(shape: ModelShape, d_sae: int, method: str, context_len: int = 512, prompt_len: int = 256,
                    d_sae_in: int | None = None, l_in: int | None = None, latents: int | None = None) -> dict:
    """A steering method's extra FLOPs per generated token, and their ratio to the model's own step.

    ``dspa``, ``static``: an ``sae_out`` encode and ``(z' - z) @ W_dec`` per edited token, ``4*d*d_sae``; ``caa``: a
    vector add, ``d_model`` FLOPs. The model's step is a cached forward against ``context_len`` keys. ``per_prompt``:
    the edit over every prefill position; DSPA adds a forward to ``l_in`` (default depth/4), ``sae_in``, ``A^T u``.
    ``latents``: the sparse edit (ReLU/JumpReLU SAEs) encodes and decodes only the selected latents, ``4*d*latents``."""
    if method not in ("dspa", "static", "caa"):
        raise ValueError(f"method={method!r}: choose one of dspa, static, caa")
    d, step = shape.d_model, forward_flops(shape, 1, context_len)
    width = d_sae if latents is None else latents
    edit = d if method == "caa" else sae_encode_flops(d, width, 1) + sae_decode_flops(width, d, 1)
    per_prompt = 0 if method == "caa" else prompt_len * edit
    if method == "dspa":
        m_in, l_in = d_sae_in or d_sae, shape.n_layers // 4 if l_in is None else l_in
        per_prompt += (forward_flops(shape, prompt_len, prompt_len, upto_layer=l_in)
                       + sae_encode_flops(d, m_in, prompt_len) + 2 * m_in * d_sae)
    return {"method": method, "model_per_token": step, "edit_per_token": edit, "ratio": edit / step,
            "per_prompt": per_prompt, "per_prompt_ratio": per_prompt / forward_flops(shape, prompt_len, prompt_len)}


# The modelled comparison's settings (the paper's are not public): DSPA's layers and SAE widths come from the profiles
# (Gemma Scope width_16k, Qwen-Scope W64K); RAHF-SCIT's LoRA targets are layers 10-18 as in the reproduction (the tiny
# model: its two upper blocks).
_RAHF_TARGETS = {"tiny": (1, 2), "gemma-2-2b": tuple(range(10, 19)), "gemma-2-9b": tuple(range(10, 19)),
                 "qwen3-8b": tuple(range(10, 19))}
SETTINGS = {name: dict(l_in=PROFILES[name].l_in, l_out=PROFILES[name].l_out, d_sae=PROFILES[name].d_sae,
                       rahf_target_layers=targets) for name, targets in _RAHF_TARGETS.items()}


def ratios(model_name: str, n_triples: int = 1000, prompt_len: int = 256, response_len: int = 256,
           instruction_len: int = 90, dpo_epochs: int = 1, stage2_seq_len: int = 768) -> dict:
    """Alignment-stage FLOPs of RAHF-SCIT and DPO relative to fitting DSPA, under stated settings.

    Defaults: the same 1000 UltraFeedback-like triples (256 prompt + 256 response tokens) for every method; DPO
    one epoch; RAHF-SCIT as reproduced (2 stage-1 epochs with a ~90-token instruction prepended; 450 x 64 stage-2
    examples padded to 768 tokens; LoRA r=8 on q/v; targets 10-18; gradient checkpointing). This naive count lands
    far above the paper's "up to 4.47x": stage 1 alone is 36 forward-equivalents per pair against DSPA's two
    partial forwards, and stage 2's fixed 28,800 examples dominate at small data sizes. The paper's modelled
    figure must count differently (stage 2 only, stage 1 as shared SFT, other lengths or data sizes:
    ``rahf_stage2_to_dspa_ratio`` is one such count); its ~11.5x wall-clock speed-up is another measure again."""
    shape, s = ModelShape.preset(model_name), SETTINGS[model_name]
    fit = dspa_fit(shape, s["d_sae"], s["d_sae"], n_triples, prompt_len, response_len, s["l_in"], s["l_out"])
    stat = static_fit(shape, s["d_sae"], n_triples, prompt_len, response_len, s["l_out"])
    d = dpo(shape, n_triples, prompt_len + response_len, dpo_epochs)
    r = rahf_scit(shape, n_triples, instruction_len + prompt_len + response_len, target_layers=s["rahf_target_layers"],
                  stage2_seq_len=stage2_seq_len)
    stage2 = r["total"] - r["stage1"]
    assumptions = dict(n_triples=n_triples, prompt_len=prompt_len, response_len=response_len, **s,
                       dpo_epochs=dpo_epochs, rahf_instruction_len=instruction_len, rahf_stage1_epochs=2,
                       rahf_stage2_examples=450 * 64, rahf_stage2_seq_len=stage2_seq_len, rahf_lora_rank=8,
                       rahf_grad_checkpointing=True, counting="matmul FLOPs (2*m*n*k), as FlopCounterMode counts")
    return {"model": model_name, "dspa_flops": fit["total"], "static_flops": stat["total"], "dpo_flops": d["total"],
            "rahf_scit_flops": r["total"], "rahf_stage1_flops": r["stage1"], "rahf_stage2_flops": stage2,
            "rahf_scit_to_dspa_ratio": r["total"] / fit["total"], "dpo_to_dspa_ratio": d["total"] / fit["total"],
            "rahf_stage2_to_dspa_ratio": stage2 / fit["total"], "dspa_to_static_ratio": fit["total"] / stat["total"],
            "components": {"dspa": fit, "static": stat, "dpo": d, "rahf_scit": r}, "assumptions": assumptions}
