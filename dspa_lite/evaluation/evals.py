"""Evaluation: win rate with a pluggable judge, multiple-choice log-likelihood, text metrics.

On the toy world every number here is exact: the judge is :class:`dspa_lite.toyworld.language.Judge`.
"""

from __future__ import annotations

import contextlib
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from ..method.features import batches
from ..method.generation import format_prompts
from .protocols import length_controlled, length_diffs, win_rate

__all__ = ["judge_responses", "mcq_scores", "mcq_accuracy", "pairwise_scores", "judge_alpaca_files", "judged_win_rate",
           "stop_probabilities", "text_metrics"]


def judge_responses(judge, prompts: Sequence[str], responses: Sequence[str]) -> dict:
    """Exact win rate, preferred share, fluency and classifiable rate, overall and per category.

    ``judge(prompt, response)`` returns a :class:`~dspa_lite.toyworld.language.Verdict`; first/later
    segments are reported separately because token-active edits cannot reach the first one.
    """
    if len(prompts) != len(responses):
        raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
    groups: dict[str, list] = defaultdict(list)
    for p, r in zip(prompts, responses):
        groups[judge.category(p)].append(judge(p, r))

    def summary(verdicts) -> dict[str, float]:
        n = max(1, len(verdicts))
        later = [v for v in verdicts if len(v.styles) > 1]
        return {
            "n": len(verdicts),
            "preferred_share": sum(v.preferred_share for v in verdicts) / n,
            "win_rate": sum(v.win for v in verdicts) / n,
            "fluency": sum(v.fluency for v in verdicts) / n,
            # share of segments whose style the judge recognises, and of responses with a dominant style
            "classifiable_rate": sum(sum(s is not None for s in v.styles) for v in verdicts)
            / max(1, sum(len(v.styles) for v in verdicts)),
            "dominant_style_rate": sum(v.dominant for v in verdicts) / n,
            "first_segment_share": sum(v.styles[0] == v.preferred for v in verdicts if v.styles) / n,
            "later_segments_share": sum(
                sum(s == v.preferred for s in v.styles[1:]) / (len(v.styles) - 1) for v in later
            ) / max(1, len(later)),
        }

    out = summary([v for vs in groups.values() for v in vs])
    out["per_category"] = {c: summary(vs) for c, vs in sorted(groups.items())}
    return out


def pairwise_scores(scores: Sequence[float], ref_scores: Sequence[float], words: Sequence[int],
                    ref_words: Sequence[int]) -> dict:
    """The exact judge as a pairwise one: each response against the reference's answer to the same prompt
    (and sampling seed), a win when its score (e.g. preferred share) is higher, a tie (half) when equal.

    Returns :func:`~dspa_lite.evaluation.protocols.length_controlled` of those outcomes on the length
    difference in words: the raw ``win_rate`` and the length-controlled ``lc_win_rate``.

    >>> r = pairwise_scores([0.5, 0.2, 0.3], [0.1, 0.2, 0.4], [12, 8, 6], [8, 8, 9])
    >>> r["win_rate"], r["n"]
    (0.5, 3)
    """
    if not len(scores) == len(ref_scores) == len(words) == len(ref_words):
        raise ValueError(f"{len(scores)}, {len(ref_scores)}, {len(words)} and {len(ref_words)} items: parallel lists")
    outcomes = [1.0 if a > b else 0.5 if a == b else 0.0 for a, b in zip(scores, ref_scores)]
    return length_controlled(outcomes, [a - b for a, b in zip(words, ref_words)])


def judge_alpaca_files(judge, model_outputs, reference_outputs, seed: int = 0, progress: bool = True) -> dict:
    """Two AlpacaEval ``model_outputs`` files judged pairwise by an endpoint judge
    (:class:`~dspa_lite.evaluation.judges.Judge`): the model's raw and length-controlled win rates against the
    reference, matched by instruction (:func:`~dspa_lite.evaluation.protocols.win_rate` with word lengths)."""
    from .formats import read_alpaca_outputs

    rows, refs = read_alpaca_outputs(model_outputs), read_alpaca_outputs(reference_outputs)
    by_instruction = {r["instruction"]: r["output"] for r in refs}
    if missing := [r["instruction"] for r in rows if r["instruction"] not in by_instruction]:
        raise ValueError(f"{len(missing)} instructions of {model_outputs} are not in {reference_outputs}, e.g. "
                         f"{missing[0]!r:.80}: both files must answer the same instructions")
    instructions, outputs = [r["instruction"] for r in rows], [r["output"] for r in rows]
    references = [by_instruction[x] for x in instructions]
    return {"generator": rows[0]["generator"] if rows else None,
            "reference": refs[0]["generator"] if refs else None,
            **judged_win_rate(judge, instructions, outputs, references, seed, progress)}


def judged_win_rate(judge, instructions: Sequence[str], outputs: Sequence[str], references: Sequence[str],
                    seed: int = 0, progress: bool = True) -> dict:
    """``outputs`` against ``references`` judged pairwise by an endpoint judge: raw and length-controlled win rates
    (:func:`~dspa_lite.evaluation.protocols.win_rate` with word lengths)."""
    comparisons = judge.compare(instructions, outputs, references, seed=seed, progress=progress)
    return win_rate(comparisons, length_diffs(outputs, references))


@torch.no_grad()
def mcq_scores(model, tokenizer, items, steer: Callable | None = None, batch_size: int = 32) -> list[list[float]]:
    """Summed log-likelihood of each option (a full response) given the chat-formatted question.

    ``steer(prompts, input_ids, attention_mask, start=...)`` may return a context manager that
    edits the forward pass (as in :func:`dspa_lite.generate`). Log-likelihood scoring has no
    generated positions; the positions whose predictions are scored play their part: ``start``
    gives, per row, the last prompt position (it predicts the first answer token), and DSPA edits
    it and every answer position after it, as it would while generating that answer.
    """
    rows, spans, owners = [], [], []
    for i, item in enumerate(items):
        prefix = format_prompts(tokenizer, [item.prompt])[0]
        n_prefix = len(tokenizer(prefix, add_special_tokens=False).input_ids)
        for option in item.options:
            ids = tokenizer(prefix + option + (" " if not option.endswith(" ") else ""),
                            add_special_tokens=False).input_ids
            rows.append(ids)
            spans.append((n_prefix, len(ids)))
            owners.append(i)
    scores: list[list[float]] = [[] for _ in items]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    for b, ids, mask in batches(rows, batch_size, pad, model.device):
        starts = [start - 1 for start, _ in spans[b:b + batch_size]]
        ctx = (steer([items[o].prompt for o in owners[b:b + batch_size]], ids, mask, start=starts)
               if steer else contextlib.nullcontext())
        with ctx:
            logp = model(input_ids=ids, attention_mask=mask).logits.float().log_softmax(-1)  # (B, T, V)
        for j, (start, end) in enumerate(spans[b:b + batch_size]):
            tgt = ids[j, start:end]
            scores[owners[b + j]].append(float(logp[j, start - 1:end - 1].gather(-1, tgt[:, None]).sum()))
    return scores


def mcq_accuracy(model, tokenizer, items, steer: Callable | None = None) -> dict:
    """Accuracy (argmax log-likelihood), also split by whether the fact was in the training text."""
    picks = [max(range(len(s)), key=s.__getitem__) for s in mcq_scores(model, tokenizer, items, steer)]
    correct = [p == it.answer for p, it in zip(picks, items)]
    out = {"accuracy": sum(correct) / max(1, len(items)), "n": len(items), "picks": picks}
    for flag, name in ((True, "seen"), (False, "unseen")):
        sub = [c for c, it in zip(correct, items) if getattr(it, "seen", None) is flag]
        if sub:
            out[f"accuracy_{name}"] = sum(sub) / len(sub)
    return out


@torch.no_grad()
def stop_probabilities(model, tokenizer, prompts: Sequence[str], responses: Sequence[str], steer: Callable | None = None,
                       stop_id: int | None = None, batch_size: int = 32) -> list[tuple[list[int], Tensor]]:
    """Teacher-forced, per response: its token ids and, after each of them, ``P(next token = stop_id)``.

    ``stop_id`` defaults to the tokenizer's end of turn (``eos_token_id``). With ``steer`` (a method's
    ``steer``) the edit covers the last prompt position and every response position, as it would while
    generating that response (as in :func:`mcq_scores`), so the two runs differ only by the edit.
    """
    stop_id = tokenizer.eos_token_id if stop_id is None else stop_id
    rows, starts = [], []
    for p, r in zip(prompts, responses, strict=True):
        prefix = format_prompts(tokenizer, [p])[0]
        starts.append(len(tokenizer(prefix, add_special_tokens=False).input_ids))
        rows.append(tokenizer(prefix + r, add_special_tokens=False).input_ids)
    out = []
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    for b, ids, mask in batches(rows, batch_size, pad, model.device):
        chunk = list(prompts[b:b + batch_size])
        ctx = (steer(chunk, ids, mask, start=[s - 1 for s in starts[b:b + batch_size]]) if steer
               else contextlib.nullcontext())
        with ctx:
            p_stop = model(input_ids=ids, attention_mask=mask).logits.float().softmax(-1)[..., stop_id]  # (B, T)
        for j, row in enumerate(rows[b:b + batch_size]):
            out.append((row[starts[b + j]:], p_stop[j, starts[b + j]:len(row)].cpu()))
    return out


def text_metrics(responses: Sequence[str], n: int = 2) -> dict[str, float]:
    """Mean length in words, distinct-n (unique n-grams / all n-grams) and repetition rate.

    >>> m = text_metrics(["a b a b", "c d"])
    >>> m["mean_words"], round(m["distinct_2"], 2)
    (3.0, 0.75)
    """
    words = [r.split() for r in responses]
    grams = [tuple(ws[i:i + n]) for ws in words for i in range(len(ws) - n + 1)]
    reps = [1 - len(set(ws)) / len(ws) for ws in words if ws]
    return {
        "mean_words": sum(map(len, words)) / max(1, len(words)),
        f"distinct_{n}": len(set(grams)) / max(1, len(grams)),
        "repetition_rate": sum(reps) / max(1, len(reps)),
        "top_word_share": (Counter(w for ws in words for w in ws).most_common(1) or [("", 0)])[0][1]
        / max(1, sum(map(len, words))),
    }
