"""Run lm-evaluation-harness tasks with a steering method's hooks attached (DSPA's "accuracy preserved" check).

:func:`run_lm_eval` wraps an already-loaded model in lm-eval's ``HFLM`` and calls ``simple_evaluate``.
Steering goes through the same ``steer(prompts, input_ids, attention_mask, start=...)`` contract as
:func:`dspa_lite.evaluation.evals.mcq_scores`, entered around each batched forward pass, so DSPA, static SAE steering
and the CAA baseline all run unchanged.

**Which positions are edited.** A multiple-choice task is scored by log-likelihood: each request
``(context, continuation)`` is one forward pass over ``context + continuation[:-1]``, and nothing is
generated. The edit for a batch is built from the batch's *request contexts* (the prompt lm-eval formats,
few-shot examples included, without the continuation being scored; DSPA computes ``u(x)`` from it), so
every option of a question is scored under the same latent sets; with ``positions="continuation"``
(default) it applies from the last context position, which predicts the first continuation token, through
every continuation position: the positions DSPA would edit while generating that continuation, exactly as
``mcq_scores`` does. ``positions="all"`` also edits the context (after a leading BOS). The contexts are recovered by matching
each padded input row against the requests' token ids (lm-eval right-pads with zeros and passes no
attention mask); rows shared by several requests, which lm-eval scores once, are steered with the first
request's context. Under ``generate_until`` tasks the prompt is the decoded context and the edit follows
generation (the last prompt position, then every new token). Perplexity tasks (``loglikelihood_rolling``)
have no prompt to condition on and are refused when steering.

Results are not comparable across different ``num_fewshot``, prompts or lm-eval versions: record them.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from typing import Any

import torch

from ..method.generation import chat_kwargs, render_chat

__all__ = ["POSITIONS", "STANDARD_TASKS", "document_scores", "run_lm_eval", "task_scores"]

STANDARD_TASKS = {
    # lm-eval task name: (metric usually reported, few-shot count of the Open LLM Leaderboard v1)
    "mmlu": ("acc", 5),  # 57 subjects, 4-way multiple choice
    "arc_challenge": ("acc_norm", 25),  # grade-school science, hard split
    "hellaswag": ("acc_norm", 10),  # commonsense sentence completion
    "truthfulqa_mc2": ("acc", 0),  # probability mass on the true answers
    "winogrande": ("acc", 5),  # pronoun resolution (the option sits in the context: each gets its own edit)
}
POSITIONS = ("continuation", "all")
_ROLLING = ("perplexity tasks (loglikelihood_rolling, e.g. wikitext) have no prompt for a steering method to "
            "condition on: run them without a steerer")

Steer = Callable[..., AbstractContextManager[Any]]


def _steer_fn(steerer: Any) -> Steer | None:
    if steerer is None:
        return None
    steer = getattr(steerer, "steer", steerer)
    if not callable(steer):
        raise TypeError(f"steerer must have a .steer(prompts, input_ids, attention_mask, start=...) method (DSPA, "
                        f"StaticSAE...) or be such a function; got {type(steerer).__name__}")
    return steer


def _request_rows(requests, max_length: int, positions: str,
                  bos_id: int | None = None) -> dict[tuple[int, ...], tuple[str, int]]:
    """Each log-likelihood request's input row, as ``HFLM`` feeds it to the model, -> (context, first edited position);
    ``positions="all"`` starts after a leading BOS."""
    rows: dict[tuple[int, ...], tuple[str, int]] = {}
    for (context, _), ctx_enc, cont_enc in requests:
        if context is None:
            raise NotImplementedError(_ROLLING)
        row = tuple((ctx_enc + cont_enc)[-(max_length + 1):][:-1])
        first = int(bool(row) and bos_id is not None and row[0] == bos_id)
        rows.setdefault(row, (context, max(0, len(row) - len(cont_enc)) if positions == "continuation" else first))
    return rows


@functools.cache
def _steered_hflm() -> type:
    from lm_eval.models.huggingface import HFLM

    class SteeredHFLM(HFLM):
        """``HFLM`` whose forward passes run inside ``steer(contexts, input_ids, attention_mask, start=...)``."""

        def __init__(self, *args: Any, steer: Steer | None = None, positions: str = "continuation", **kwargs: Any):
            super().__init__(*args, **kwargs)
            self.steer, self.positions = steer, positions
            self._rows: dict[tuple[int, ...], tuple[str, int]] = {}

        def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, override_bs: int | None = None):
            if self.steer is None:
                return super()._loglikelihood_tokens(requests, disable_tqdm=disable_tqdm, override_bs=override_bs)
            self._rows = _request_rows(requests, self.max_length, self.positions, self.tokenizer.bos_token_id)
            try:
                return super()._loglikelihood_tokens(requests, disable_tqdm=disable_tqdm, override_bs=override_bs)
            finally:
                self._rows = {}

        def apply_chat_template(self, chat_history: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
            """The package's one rendering path (the profile's chat arguments included) for a chat ending in a
            user turn; lm-eval's own for anything else (a system turn the template refuses, a continued reply)."""
            if add_generation_prompt and chat_history and chat_history[-1].get("role") == "user":
                try:
                    return render_chat(self.tokenizer, [chat_history])[0]
                except Exception:  # noqa: BLE001 - e.g. Gemma's template raising on a system turn: lm-eval drops it
                    pass
            return super().apply_chat_template(chat_history, add_generation_prompt)

        def loglikelihood_rolling(self, requests, disable_tqdm: bool = False):
            if self.steer is not None:
                raise NotImplementedError(_ROLLING)
            return super().loglikelihood_rolling(requests, disable_tqdm=disable_tqdm)

        def _match(self, row: list[int]) -> tuple[str, int, int] | None:
            """(context, start, length) of a right-padded input row, or None."""
            for n in sorted({len(k) for k in self._rows}, reverse=True):
                if n <= len(row) and not any(row[n:]) and (hit := self._rows.get(tuple(row[:n]))):
                    return hit[0], hit[1], n
            return None

        def _model_call(self, inps: torch.Tensor, attn_mask=None, labels=None) -> torch.Tensor:
            if self.steer is None or not self._rows:
                return super()._model_call(inps, attn_mask, labels)
            matches = [self._match(row) for row in inps.tolist()]
            if all(m is None for m in matches):  # lm-eval's batch-size probe: nothing is scored
                return super()._model_call(inps, attn_mask, labels)
            if any(m is None for m in matches):
                raise RuntimeError("cannot match an lm-eval input row to its request; this lm-eval version batches "
                                   "differently from the one dspa_lite.evaluation.lmeval was written for (0.4.x)")
            mask = torch.zeros_like(inps)
            for b, (_, _, n) in enumerate(matches):
                mask[b, :n] = 1
            with self.steer([m[0] for m in matches], inps, mask, start=[m[1] for m in matches]):
                return super()._model_call(inps, attn_mask, labels)

        def _model_generate(self, context: torch.Tensor, max_length: int, stop: list[str], **kwargs: Any):
            if self.steer is None:
                return super()._model_generate(context, max_length, stop, **kwargs)
            mask = kwargs.get("attention_mask")
            mask = torch.ones_like(context) if mask is None else mask
            prompts = [self.tokenizer.decode(row[m.bool()], skip_special_tokens=True) for row, m in zip(
                context, mask, strict=True)]
            with self.steer(prompts, context, mask, start=None):
                return super()._model_generate(context, max_length, stop, **kwargs)

    return SteeredHFLM


def run_lm_eval(model: Any, tokenizer: Any, tasks: Sequence[str], steerer: Any = None, limit: int | float | None = None,
                *, batch_size: int = 8, num_fewshot: int | None = None, positions: str = "continuation",
                include_path: str | None = None, task_manager: Any = None, log_samples: bool = False,
                random_seed: int = 0, prompt_of: Callable[[str], str] | None = None, **kwargs: Any) -> dict:
    """Evaluate ``model`` on lm-eval ``tasks`` (e.g. keys of :data:`STANDARD_TASKS`), steered by ``steerer``.

    Args:
        steerer: an object with ``.steer(prompts, input_ids, attention_mask, start=...)`` (``DSPA``, the
            baselines) or that function itself; ``None`` evaluates the unsteered model.
        limit: documents per task (an int) or a fraction; ``None`` runs them all. For a group such as
            ``mmlu`` it applies to each of its subtasks.
        include_path: a folder of extra task YAMLs (local tasks work offline with ``dataset_path: json``).
            lm-eval's own task index is built too, which takes tens of seconds; pass
            ``task_manager=TaskManager(include_path=..., include_defaults=False)`` for local tasks only.
        prompt_of: maps each request context (as lm-eval formats it: few-shot examples and any chat markup
            included) to the prompt the steerer conditions on, e.g. the bare question. DSPA wraps what it gets in
            the chat template itself, so with ``apply_chat_template=True`` pass one that strips the markup.
        kwargs: passed to ``lm_eval.simple_evaluate`` (``apply_chat_template``, ``gen_kwargs``...). With
            ``apply_chat_template=True`` the contexts a steerer receives already hold the chat markup.

    Returns:
        ``simple_evaluate``'s results dict; :func:`task_scores` extracts the headline numbers. The model's
        training flag and the tokenizer's pad token are restored afterwards; each batch's hooks are removed
        when its forward pass ends, also on error.
    """
    try:
        import lm_eval
        from lm_eval.tasks import TaskManager
    except ImportError as e:
        raise ImportError(f"run_lm_eval needs lm-evaluation-harness ({e}); install it with "
                          "pip install 'lm-eval>=0.4.13,<0.5'") from None
    if positions not in POSITIONS:
        raise ValueError(f"positions={positions!r}: choose 'continuation' (DSPA's decision positions) or 'all'")
    if isinstance(tasks, str):
        raise TypeError(f"tasks must be a list of task names, got the string {tasks!r}: wrap it in [...]")
    steer = _steer_fn(steerer)
    if prompt_of is not None and steer is not None:
        inner = steer

        def steer(contexts, input_ids, attention_mask, start=None):  # noqa: F811 (the mapped steerer)
            return inner([prompt_of(c) for c in contexts], input_ids, attention_mask, start=start)
    if task_manager is None and include_path is not None:
        task_manager = TaskManager(include_path=str(include_path))
    was_training, old_pad = model.training, tokenizer.pad_token
    try:
        lm = _steered_hflm()(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, steer=steer,
                             positions=positions, chat_template_args=chat_kwargs(tokenizer))
        return lm_eval.simple_evaluate(model=lm, tasks=list(tasks), limit=limit, num_fewshot=num_fewshot,
                                       task_manager=task_manager, log_samples=log_samples, random_seed=random_seed,
                                       numpy_random_seed=random_seed, torch_random_seed=random_seed,
                                       fewshot_random_seed=random_seed, **kwargs)
    finally:
        model.train(was_training)
        if old_pad is None:
            tokenizer.pad_token = None


def task_scores(results: dict, metrics: Sequence[str] = ("acc", "acc_norm")) -> dict[str, dict[str, float]]:
    """``{task: {metric: value}}`` from a results dict, for the unfiltered (``,none``) metrics named.

    >>> task_scores({"results": {"arc_easy": {"acc,none": 0.5, "acc_stderr,none": 0.1, "alias": "arc_easy"}}})
    {'arc_easy': {'acc': 0.5}}
    """
    out = {}
    for task, values in results.get("results", {}).items():
        found = {m: float(values[f"{m},none"]) for m in metrics if isinstance(values.get(f"{m},none"), int | float)}
        if found:
            out[task] = found
    return out


def document_scores(results: dict, metric: str = "acc") -> list[float]:
    """Per-document ``metric`` (1.0 right, 0.0 wrong) of a run with ``log_samples=True``, in (task, doc_id)
    order: what a paired interval over documents needs, since two runs on the same documents line up.

    >>> document_scores({"samples": {"b": [{"doc_id": 1, "acc": 0.0}, {"doc_id": 0, "acc": 1.0}]}})
    [1.0, 0.0]
    """
    samples = results.get("samples")
    if not samples:
        raise ValueError("no per-document samples: run run_lm_eval(..., log_samples=True)")
    return [float(row[metric]) for task in sorted(samples)
            for row in sorted(samples[task], key=lambda row: row["doc_id"])]

