"""Chapters 08-11: evaluation, auditing, data efficiency."""

from __future__ import annotations

from .core import passed

__all__ = [
    "check_nested_subsets",
    "check_pairwise_win_rate",
    "check_precision_at_k",
    "check_saved_by_stopping",
    "check_training_steps",
]


def check_precision_at_k(fn) -> None:
    """``fn(selected, reference, k) -> float``: the share of the first ``k`` selected latents that are in ``reference``."""
    cases = [([3, 1, 7, 9], {1, 9, 42}, 4, 0.5), ([3, 1, 7, 9], {1, 9, 42}, 2, 0.5), ([5, 6], set(), 2, 0.0)]
    for selected, reference, k, want in cases:
        got = float(fn(selected, reference, k))
        if abs(got - want) > 1e-9:
            hint = ""
            if abs(got - len(set(selected[:k]) & reference) / max(1, len(reference))) < 1e-9 and reference:
                hint = " You divided by the size of the reference set (that is recall); precision divides by k."
            elif abs(got - len(set(selected) & reference) / k) < 1e-9:
                hint = " Only the first k selected latents count."
            raise AssertionError(f"selected={selected}, reference={sorted(reference)}, k={k}: expected {want}, "
                                 f"got {got}.{hint}")
    passed("precision_at_k")


def check_pairwise_win_rate(fn) -> None:
    """``fn(verdicts, model_positions) -> float``: the model's pairwise win rate, AlpacaEval's way.

    ``verdicts[i]`` is the judge's ``"A"``, ``"B"``, ``"tie"`` or ``None`` (unreadable); ``model_positions[i]``
    is where the model's output was shown (``"A"`` or ``"B"``). Wins count 1, ties 1/2, unreadable verdicts
    are left out; the answer must equal :func:`dspa_lite.evaluation.judges.win_rate`.
    """
    from ...evaluation.judges import Comparison, win_rate

    cases = [
        (["A", "B", "tie", None, "B", "A", "B"], ["A", "A", "B", "A", "B", "B", "A"]),
        (["A", "A", "A", "A"], ["A", "B", "B", "A"]),
    ]
    for verdicts, positions in cases:
        comps = [Comparison(i, f"instruction {i}", p, v, {None: None, "tie": "tie", p: "model"}.get(v, "reference"),
                            "", False) for i, (v, p) in enumerate(zip(verdicts, positions))]
        want = win_rate(comps)["win_rate"]
        got = float(fn(list(verdicts), list(positions)))
        if abs(got - want) < 1e-9:
            continue
        decided = [(v, p) for v, p in zip(verdicts, positions) if v is not None]
        wins = sum(v == p for v, p in decided)
        ties = sum(v == "tie" for v, _ in decided)
        mistakes = [
            ((sum(v == "A" for v, _ in decided) + ties / 2) / len(decided),
             "you counted verdict 'A' as a model win: the model's output was shown as A or B at random, so a "
             "verdict is a model win only where it names model_positions[i]."),
            (wins / len(decided), "ties count half a win (AlpacaEval's rule), not zero."),
            ((wins + ties) / len(decided), "ties count half a win, not a whole one."),
            ((wins + ties / 2) / len(verdicts),
             "an unreadable verdict (None) is left out of the denominator, not counted as a loss."),
            (100 * want, "return a fraction in [0, 1], not a percentage."),
        ]
        hint = next((msg for value, msg in mistakes if abs(got - value) < 1e-9 and abs(value - want) > 1e-9), "")
        raise AssertionError(f"for verdicts {verdicts} with the model shown at {positions} you returned {got:.4f}, "
                             f"expected {want:.4f}. {hint}".rstrip())
    passed("pairwise_win_rate")


def check_nested_subsets(fn) -> None:
    """``fn(triples, sizes, seed) -> {n: list}``: seeded random subsets without replacement, nested across sizes."""
    from ...loading.data import PreferenceTriple

    pool = [PreferenceTriple(f"prompt {i}", f"good {i}", f"bad {i}") for i in range(40)]
    sizes = [5, 20, 40]
    copy = list(pool)
    out = {s: list(v) for s, v in fn(pool, list(sizes), 0).items()}
    if pool != copy:
        raise AssertionError("you changed the caller's list (random.shuffle shuffles in place): shuffle a copy, or "
                             "a list of indices, and leave `triples` as it was.")
    if sorted(out) != sizes:
        raise AssertionError(f"return a dict with one entry per size: keys {sizes}, got {sorted(out)}.")
    for n in sizes:
        if len(out[n]) != n:
            raise AssertionError(f"the subset for n={n} has {len(out[n])} triples.")
        if any(t not in pool for t in out[n]):
            raise AssertionError(f"the subset for n={n} holds something that is not one of the input triples.")
        if len(set(out[n])) != n:
            raise AssertionError(f"the subset for n={n} repeats triples: sample without replacement "
                                 "(a permutation, or random.sample), not with random.choice.")
    for small, large in zip(sizes, sizes[1:]):
        if not set(out[small]) <= set(out[large]):
            raise AssertionError(f"the n={small} subset is not contained in the n={large} one: draw one permutation per "
                                 "seed and take its first n for every size, so that a larger n adds triples instead of "
                                 "drawing a new sample (which would mix the effect of n with the luck of the draw).")
    if out[5] == pool[:5] and fn(pool, [5], 1)[5] == pool[:5]:
        raise AssertionError("you returned the first n triples in the source's order: shuffle first. Sources are "
                             "often sorted (by date, topic or score), so their first n are not a random sample.")
    again = {s: list(v) for s, v in fn(pool, list(sizes), 0).items()}
    if again != out:
        raise AssertionError("the same seed gave different subsets: draw from random.Random(seed) (or "
                             "torch.Generator().manual_seed(seed)), not from the global random state.")
    if fn(pool, [20], 1)[20] == out[20]:
        raise AssertionError("seeds 0 and 1 gave the same subset: the seed must choose the permutation.")
    try:
        fn(pool, [len(pool) + 1], 0)
    except ValueError:
        pass
    else:
        raise AssertionError(f"asking for {len(pool) + 1} of {len(pool)} triples must raise ValueError, not return "
                             "fewer triples than asked for: a curve labelled n must have n triples.")
    passed("nested_subsets")


def check_training_steps(fn) -> None:
    """``fn(n, epochs, batch_size, min_steps) -> int``: ``max(min_steps, ceil(epochs * n / batch_size))``."""
    import math
    import numbers

    from ...evaluation.finetune import n_steps

    cases = [(25, 1.0, 16, 8), (250, 1.0, 16, 8), (1000, 1.0, 16, 8), (100, 0.5, 16, 4), (1000, 0.5, 16, 4),
             (40, 2.0, 8, 0), (50, 1.0, 8, 16)]
    for n, epochs, bs, min_steps in cases:
        want = n_steps(n, epochs, bs, min_steps)
        got = fn(n, epochs, bs, min_steps)
        if isinstance(got, float) and got.is_integer():
            got = int(got)
        if not isinstance(got, numbers.Integral) or isinstance(got, bool):
            raise AssertionError(f"return a whole number of steps (an int), got {got!r} for n={n}, epochs={epochs}, "
                                 f"batch_size={bs}: round up with math.ceil.")
        if int(got) == want:
            continue
        got = int(got)
        mistakes = [
            (max(min_steps, math.floor(epochs * n / bs)), "you rounded down: a last, partial batch is still a step, "
                                                          "so round up (math.ceil)."),
            (math.ceil(epochs * n / bs), f"min_steps={min_steps} is a floor on the number of steps: take the max with it."),
            (max(min_steps, math.ceil(n / bs)), f"epochs={epochs} scales the passes over the data: multiply n by it."),
            (min(min_steps, math.ceil(epochs * n / bs)), "min_steps is a lower bound: use max, not min."),
            (max(min_steps, math.ceil(epochs * n)), "one step processes batch_size triples: divide by batch_size."),
        ]
        hint = next((msg for value, msg in mistakes if value == got), "")
        raise AssertionError(f"for n={n}, epochs={epochs}, batch_size={bs}, min_steps={min_steps} expected {want} "
                             f"steps, got {got}. {hint}".rstrip())
    passed("training_steps")


def check_saved_by_stopping(fn) -> None:
    """``fn(config, B, T, l_out) -> int``: the matmul FLOPs a forward pass over ``B x T`` tokens saves by stopping
    after layer ``l_out`` (0-based, so layers ``0..l_out`` run) and computing no logits (chapter 9)."""
    from transformers import Gemma2Config

    from ...evaluation.flops import ModelShape, forward_flops

    for layers, d, B, T, l_out in ((4, 64, 2, 8, 1), (6, 32, 1, 5, 0), (3, 48, 3, 7, 2)):
        cfg = Gemma2Config(hidden_size=d, intermediate_size=2 * d, num_attention_heads=4, num_key_value_heads=2,
                           head_dim=d // 4, vocab_size=100, num_hidden_layers=layers)
        shape = ModelShape.from_config(cfg)
        full = forward_flops(shape, B * T, T)
        want = full - forward_flops(shape, B * T, T, upto_layer=l_out, lm_head=False)
        got = fn(cfg, B, T, l_out)
        if got == want:
            continue
        head = 2 * B * T * d * cfg.vocab_size
        per_layer = (full - head) // layers
        hint = {want - head: " A pass that stops early computes no logits either: add the LM head, 2*B*T*d_model*vocab.",
                want + per_layer: " Layers 0..l_out all run (l_out + 1 of them): n_layers - l_out - 1 are skipped.",
                want - per_layer: " One layer too few: with 0-based l_out, n_layers - l_out - 1 layers are skipped.",
                full: " That is the whole forward pass: subtract what still runs, layers 0..l_out."}.get(got, "")
        raise AssertionError(f"{layers} layers, B={B}, T={T}, l_out={l_out}: expected {want:,} FLOPs saved, got {got!r}."
                             + hint)
    passed("saved_by_stopping")
