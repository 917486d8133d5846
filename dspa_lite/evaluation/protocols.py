"""The two judging protocols' prompts, verdict parsing and scores (used by :class:`dspa_lite.evaluation.judges.Judge`).

- **Single-answer grading** (MT-Bench, Zheng et al. 2023, arXiv 2306.05685): each turn of a two-turn answer gets
  a 1-10 score, read from ``[[score]]`` as FastChat reads it; turn 2 is judged with the whole conversation in
  view; math, reasoning and coding questions may carry a reference answer. :func:`mt_bench_score` averages them.
- **Pairwise comparison** (AlpacaEval, Li et al. 2023): which of two outputs follows an instruction better;
  :func:`win_rate` counts ties as half. The prompts are written for this project, not copied from FastChat's or
  AlpacaEval's.
- **Length control** (AlpacaEval 2, Dubois et al. 2024, arXiv 2404.04475): judges favour longer answers, so
  :func:`length_controlled` regresses the pairwise outcome on the length difference and reports the win rate
  at zero length difference.
"""

from __future__ import annotations

import math
import random
import re
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["GRADE_TURN1", "GRADE_TURN2", "NEED_REFERENCE", "PAIRWISE", "REFERENCE", "RUBRIC", "SYSTEM", "Comparison",
           "Rating", "answer_turns", "length_controlled", "length_diffs", "mt_bench_jobs", "mt_bench_score",
           "pairwise_jobs", "parse_rating", "parse_verdict", "question_fields", "win_rate"]

NEED_REFERENCE = ("math", "reasoning", "coding")  # MT-Bench categories graded against a reference answer

SYSTEM = "You are a careful, impartial evaluator of replies written by AI assistants."
RUBRIC = ("Judge helpfulness, correctness, relevance, depth and level of detail. Length is not a merit in itself, "
           "and the style of a reply should not distract you from its substance.")
GRADE_TURN1 = """Score the assistant's reply to the request below from 1 (useless) to 10 (excellent). {rubric}
{reference}
First justify your score in a few sentences. Then put the score alone on the last line, in double square \
brackets, for example: [[6]]

<request>
{q1}
</request>

<reply>
{a1}
</reply>"""
GRADE_TURN2 = """Below is a two-turn conversation between a user and an AI assistant. Score only the assistant's \
SECOND reply (its answer to the follow-up request), from 1 (useless) to 10 (excellent), using the first turn as \
context. {rubric}
{reference}
First justify your score in a few sentences. Then put the score alone on the last line, in double square \
brackets, for example: [[6]]

<user turn="1">
{q1}
</user>
<assistant turn="1">
{a1}
</assistant>
<user turn="2">
{q2}
</user>
<assistant turn="2">
{a2}
</assistant>"""
REFERENCE = ("A reference answer follows; a reply whose final result disagrees with it is wrong, however well "
              "written.\n<reference>\n{ref}\n</reference>\n")
PAIRWISE = """Two AI assistants answered the same instruction. Decide which response serves the user better: \
more helpful, accurate and complete, and better at following the instruction. Neither the order in which the \
responses appear nor their length should sway you.

<instruction>
{instruction}
</instruction>

<response_A>
{a}
</response_A>

<response_B>
{b}
</response_B>

Explain your reasoning briefly. Then give your verdict alone on the last line: [[A]] if response A is better, \
[[B]] if response B is better, or [[tie]] if neither is better."""


def parse_rating(text: str | None) -> float | None:
    """The 1-10 score in ``[[x]]`` (FastChat's pattern, then its ``[x]`` fallback; the last match wins).

    >>> parse_rating("Clear and correct. [[8]]"), parse_rating("Rating: [7.5]"), parse_rating("[[11]]")
    (8.0, 7.5, None)
    """
    for pattern in (r"\[\[\s*(\d+(?:\.\d+)?)\s*\]\]", r"\[\s*(\d+(?:\.\d+)?)\s*\]"):
        found = re.findall(pattern, text or "")
        if found:
            score = float(found[-1])
            return score if 1 <= score <= 10 else None
    return None


def parse_verdict(text: str | None) -> str | None:
    """``"A"``, ``"B"`` or ``"tie"`` from the last ``[[A]]``/``[[B]]``/``[[tie]]`` in ``text``, else ``None``.

    >>> parse_verdict("A is vague, B answers. [[B]]"), parse_verdict("[[Tie]]"), parse_verdict("B wins")
    ('B', 'tie', None)
    """
    found = re.findall(r"\[\[\s*(A|B|tie)\s*\]\]", text or "", flags=re.IGNORECASE)
    return None if not found else ("tie" if found[-1].lower() == "tie" else found[-1].upper())


@dataclass(frozen=True)
class Rating:
    """One MT-Bench grade: ``score`` is ``None`` when the judgement has no readable ``[[1-10]]``."""

    question_id: int | str
    turn: int
    category: str
    score: float | None
    judgment: str
    cached: bool


@dataclass(frozen=True)
class Comparison:
    """One pairwise verdict. ``model_position`` is where the model's output was shown (``"A"`` or ``"B"``);
    ``verdict`` is the judge's raw ``A``/``B``/``tie``; ``winner`` maps it back (``model``/``reference``/``tie``)."""

    index: int
    instruction: str
    model_position: str
    verdict: str | None
    winner: str | None
    judgment: str
    cached: bool

    @property
    def preference(self) -> float | None:
        """AlpacaEval's convention: 1 = reference (output_1) better, 2 = model (output_2) better, 1.5 = tie."""
        return {"reference": 1.0, "model": 2.0, "tie": 1.5}.get(self.winner or "")


def mean_se(xs: Sequence[float]) -> tuple[float, float]:
    """The mean and its standard error (NaN with fewer than two values)."""
    n = len(xs)
    if not n:
        return math.nan, math.nan
    m = sum(xs) / n
    return m, (math.sqrt(sum((x - m) ** 2 for x in xs) / (n - 1) / n) if n > 1 else math.nan)


def mt_bench_score(ratings: Sequence[Rating]) -> dict:
    """Mean score overall (MT-Bench's headline), per turn and per category; unreadable grades are counted, not scored.

    >>> r = [Rating(1, 1, "math", 8.0, "", False), Rating(1, 2, "math", 6.0, "", False),
    ...      Rating(2, 1, "stem", None, "", False)]
    >>> s = mt_bench_score(r); s["score"], s["turn_2"], s["n_unparsed"]
    (7.0, 6.0, 1)
    """
    scored = [r for r in ratings if r.score is not None]
    score, se = mean_se([r.score for r in scored])
    out = {"score": score, "standard_error": se, "n": len(scored), "n_unparsed": len(ratings) - len(scored)}
    for t in sorted({r.turn for r in ratings}):
        out[f"turn_{t}"] = mean_se([r.score for r in scored if r.turn == t])[0]
    cats = defaultdict(list)
    for r in scored:
        cats[r.category].append(r.score)
    out["per_category"] = {c: sum(v) / len(v) for c, v in sorted(cats.items())}
    return out


def win_rate(comparisons: Sequence[Comparison], length_diff: Sequence[float] | None = None) -> dict:
    """Model win rate against the reference (ties count half, as in AlpacaEval), with its standard error.

    ``position_a_rate`` (share of decided verdicts that picked A) measures the judge's position bias; the
    randomised order keeps it out of ``win_rate``. With ``length_diff`` (per comparison, the model's output
    length minus the reference's, e.g. :func:`length_diffs`) the result adds :func:`length_controlled`'s
    ``lc_win_rate``, ``lc_standard_error`` and ``length_coef``, fitted on the decided comparisons.

    >>> c = [Comparison(0, "x", "A", "A", "model", "", False), Comparison(1, "y", "B", "A", "reference", "", False),
    ...      Comparison(2, "z", "B", "tie", "tie", "", False), Comparison(3, "w", "A", None, None, "", False)]
    >>> s = win_rate(c); s["win_rate"], s["ties"], s["n_unparsed"], round(s["position_a_rate"], 2)
    (0.5, 1, 1, 1.0)
    """
    decided = [c for c in comparisons if c.winner is not None]
    outcomes = [{"model": 1.0, "tie": 0.5, "reference": 0.0}[c.winner] for c in decided]
    wr, se = mean_se(outcomes)
    ab = [c.verdict for c in decided if c.verdict in ("A", "B")]
    out = {"win_rate": wr, "standard_error": se, "n": len(decided),
           "wins": sum(c.winner == "model" for c in decided), "losses": sum(c.winner == "reference" for c in decided),
           "ties": sum(c.winner == "tie" for c in decided), "n_unparsed": len(comparisons) - len(decided),
           "position_a_rate": ab.count("A") / len(ab) if ab else math.nan,
           "model_first_share": sum(c.model_position == "A" for c in comparisons) / max(1, len(comparisons))}
    if length_diff is not None:
        if len(length_diff) != len(comparisons):
            raise ValueError(f"{len(length_diff)} length differences for {len(comparisons)} comparisons")
        lc = length_controlled(outcomes, [d for c, d in zip(comparisons, length_diff) if c.winner is not None])
        out |= {"lc_win_rate": lc["lc_win_rate"], "lc_standard_error": lc["lc_standard_error"],
                "length_coef": lc["length_coef"]}
    return out


def length_diffs(outputs: Sequence[str], references: Sequence[str]) -> list[int]:
    """Per pair, the model output's length minus the reference's, in whitespace-separated words.

    >>> length_diffs(["a b c", ""], ["a", "x y"])
    [2, -2]
    """
    if len(outputs) != len(references):
        raise ValueError(f"{len(outputs)} outputs but {len(references)} references")
    return [len(o.split()) - len(r.split()) for o, r in zip(outputs, references)]


def length_controlled(outcomes: Sequence[float], length_diff: Sequence[float], l2: float = 1e-3,
                      iters: int = 100) -> dict:
    """The win rate at zero length difference: AlpacaEval 2's length control (Dubois et al. 2024).

    Fits ``P(model wins) = sigmoid(b0 + b1 * tanh(d / sd(d)))`` by maximum likelihood (Newton's method,
    a small ``l2`` penalty keeps it finite when every outcome agrees), with ``outcomes`` in ``[0, 1]``
    (1 a win, 0.5 a tie, 0 a loss) and ``d`` the model's length minus the reference's. The
    length-controlled win rate is ``sigmoid(b0)``, the prediction for a pair of equal length; its
    standard error comes from the inverse Hessian by the delta method. AlpacaEval's own model adds a
    per-instruction difficulty term, left out here. Returns ``{"win_rate", "lc_win_rate",
    "lc_standard_error", "length_coef", "scale", "n"}`` (``length_coef`` is ``b1``).

    >>> r = length_controlled([1, 1, 0, 1, 0, 0], [30, 20, -10, 10, -20, -30])
    >>> r["win_rate"], round(r["lc_win_rate"], 2), r["length_coef"] > 0
    (0.5, 0.5, True)
    """
    y, d = [float(v) for v in outcomes], [float(v) for v in length_diff]
    if len(y) != len(d):
        raise ValueError(f"{len(y)} outcomes but {len(d)} length differences")
    if any(not 0 <= v <= 1 for v in y) or any(not math.isfinite(v) for v in d):
        raise ValueError("outcomes must lie in [0, 1] (win 1, tie 0.5, loss 0) and length differences be finite")
    if not y:
        return {"win_rate": math.nan, "lc_win_rate": math.nan, "lc_standard_error": math.nan,
                "length_coef": math.nan, "scale": math.nan, "n": 0}
    mean_d = sum(d) / len(d)
    scale = math.sqrt(sum((v - mean_d) ** 2 for v in d) / len(d)) or 1.0  # all lengths equal: x = 0, b1 stays 0
    x = [math.tanh(v / scale) for v in d]
    b0 = b1 = 0.0
    for _ in range(iters):
        p = [1 / (1 + math.exp(-min(50.0, max(-50.0, b0 + b1 * xi)))) for xi in x]
        w = [pi * (1 - pi) for pi in p]
        g0 = sum(yi - pi for yi, pi in zip(y, p)) - l2 * b0
        g1 = sum((yi - pi) * xi for yi, pi, xi in zip(y, p, x)) - l2 * b1
        h00, h01 = sum(w) + l2, sum(wi * xi for wi, xi in zip(w, x))
        h11 = sum(wi * xi * xi for wi, xi in zip(w, x)) + l2
        det = h00 * h11 - h01 * h01
        step0, step1 = (h11 * g0 - h01 * g1) / det, (h00 * g1 - h01 * g0) / det
        b0, b1 = b0 + step0, b1 + step1
        if abs(step0) + abs(step1) < 1e-10:
            break
    lc = 1 / (1 + math.exp(-b0))
    return {"win_rate": sum(y) / len(y), "lc_win_rate": lc,
            "lc_standard_error": lc * (1 - lc) * math.sqrt(h11 / det), "length_coef": b1, "scale": scale,
            "n": len(y)}


def question_fields(q: Any) -> tuple[Any, str, list[str], list[str] | None]:
    """``(question_id, category, turns, reference)`` of a FastChat question row or an ``MTBenchQuestion``."""
    get = (lambda k: q.get(k)) if isinstance(q, Mapping) else (lambda k: getattr(q, k, None))
    return get("question_id"), get("category") or "", list(get("turns") or []), get("reference")


def answer_turns(answers: Mapping[Any, Sequence[str]] | Sequence[Any]) -> dict[Any, list[str]]:
    """``question_id -> answer turns`` from a mapping, FastChat answer rows or ``MTBenchAnswer`` objects."""
    if isinstance(answers, Mapping):
        return {k: list(v) for k, v in answers.items()}
    out = {}
    for a in answers:
        if isinstance(a, Mapping):
            out[a["question_id"]] = list(a["choices"][0]["turns"])
        else:
            out[a.question_id] = list(a.turns)
    return out


def mt_bench_jobs(questions: Sequence[Any], answers, turns: Sequence[int]) -> tuple[list[list[dict]], list[tuple]]:
    """The grading requests (message lists) for each question's answer ``turns``, and ``(qid, turn, category)``."""
    by_id = answer_turns(answers)
    jobs, meta = [], []
    for q in questions:
        qid, category, q_turns, refs = question_fields(q)
        if qid not in by_id:
            raise ValueError(f"no answer for MT-Bench question {qid!r}: generate answers for every question first")
        a_turns = by_id[qid]
        for t in turns:
            if t not in (1, 2) or t > min(len(q_turns), len(a_turns)):
                raise ValueError(f"question {qid!r}: cannot grade turn {t} with {len(q_turns)} question turns "
                                 f"and {len(a_turns)} answer turns")
            ref = refs[t - 1] if refs and len(refs) >= t and category in NEED_REFERENCE else None
            reference = REFERENCE.format(ref=ref) if ref else ""
            template = GRADE_TURN1 if t == 1 else GRADE_TURN2
            text = template.format(rubric=RUBRIC, reference=reference, q1=q_turns[0], a1=a_turns[0],
                                   q2=q_turns[1] if t == 2 else "", a2=a_turns[1] if t == 2 else "")
            jobs.append([{"role": "system", "content": SYSTEM}, {"role": "user", "content": text}])
            meta.append((qid, t, category))
    return jobs, meta


def pairwise_jobs(instructions: Sequence[str], outputs: Sequence[str], references: Sequence[str],
                  seed: int = 0) -> tuple[list[list[dict]], list[str]]:
    """The pairwise requests, and where each model output is shown (``A``/``B``, a coin seeded per item)."""
    if not len(instructions) == len(outputs) == len(references):
        raise ValueError(f"{len(instructions)} instructions, {len(outputs)} outputs and {len(references)} "
                         "references: they must be parallel lists")
    positions = ["A" if random.Random(f"{seed}:{i}:{x}").random() < 0.5 else "B" for i, x in enumerate(instructions)]
    jobs = []
    for x, out, ref, pos in zip(instructions, outputs, references, positions, strict=True):
        a, b = (out, ref) if pos == "A" else (ref, out)
        jobs.append([{"role": "system", "content": SYSTEM},
                     {"role": "user", "content": PAIRWISE.format(instruction=x, a=a, b=b)}])
    return jobs, positions
