"""The chapter 6 and 8 checks accept a correct solution and diagnose the typical mistakes."""

import pytest
import torch

from dspa_lite.evaluation.experiment import paired_bootstrap
from dspa_lite.notebook.exercises import ch06_08 as ex

# ---------------------------------------------------------------- 6.1


def _edit(h, sae, neg, pos, alpha, *, additive=False, times=False, first_row=False, recon=False, sign=1.0,
          via_decode=False, in_place=False):
    if first_row:
        neg, pos = neg[:1].expand_as(neg), pos[:1].expand_as(pos)
    z = sae.encode(h)
    active = z > 0
    z_new = z if in_place else z.clone()
    n3, p3 = neg[:, None, :], pos[:, None, :]
    z_new[n3.expand_as(z) & active] = 0
    if in_place:
        z_new[p3.expand_as(z) & active] *= 1 + alpha
    elif additive:
        z_new = torch.where(p3, z_new + alpha, z_new)
    else:
        z_new = torch.where(p3 & active, z * (alpha if times else 1 + alpha), z_new)
    if recon:
        return sae.decode(z_new)
    if via_decode:
        return h + sae.decode(z_new) - sae.decode(z)
    return h + sign * ((z_new - z) @ sae.W_dec)


def test_residual_edit():
    ex.check_residual_edit(_edit)
    for kw, msg in [
        (dict(recon=True), "reconstruction"),
        (dict(additive=True), "switches inactive latents on"),
        (dict(times=True), "by alpha"),
        (dict(first_row=True), "first row"),
        (dict(sign=-1.0), "subtracted"),
        (dict(in_place=True), "in place"),
        (dict(via_decode=True), "bit for bit"),
    ]:
        with pytest.raises(AssertionError, match=msg):
            ex.check_residual_edit(lambda *a, kw=kw: _edit(*a, **kw))
    with pytest.raises(AssertionError, match="shaped like h"):
        ex.check_residual_edit(lambda h, sae, neg, pos, alpha: sae.encode(h))
    with pytest.raises(AssertionError, match="not zeroed"):
        ex.check_residual_edit(lambda h, sae, neg, pos, alpha: _edit(h, sae, neg & False, pos, alpha))
    with pytest.raises(AssertionError, match="swapped"):
        ex.check_residual_edit(lambda h, sae, neg, pos, alpha: _edit(h, sae, pos, neg, alpha))


def test_residual_edit_matches_the_package():
    """The solution's edit is the package's LatentEdit on every position."""
    from dspa_lite.method.dspa import LatentEdit

    sae, h, neg, pos = ex._edit_cases()
    package = LatentEdit(sae, neg, pos, "both", 2.0, every_position=True)
    torch.testing.assert_close(package(h), _edit(h, sae, neg, pos, 2.0))


# ---------------------------------------------------------------- 6.2


def _shares(verdicts, *, drop_empty=False, pool=False, all_denominator=False, with_first=False):
    firsts = [bool(v.styles) and v.styles[0] == v.preferred for v in verdicts]
    first = sum(firsts) / (sum(bool(v.styles) for v in verdicts) if drop_empty else len(verdicts))
    start = 0 if with_first else 1
    multi = [v for v in verdicts if len(v.styles) > 1]
    if pool:
        segs = [s == v.preferred for v in multi for s in v.styles[start:]]
        return first, sum(segs) / len(segs)
    per = [sum(s == v.preferred for s in v.styles[start:]) / len(v.styles[start:]) for v in multi]
    return first, sum(per) / (len(verdicts) if all_denominator else len(per))


def test_segment_shares():
    ex.check_segment_shares(_shares)
    for kw, msg in [
        (dict(drop_empty=True), "left the empty response out"),
        (dict(pool=True), "pooled the later segments"),
        (dict(all_denominator=True), "wrong denominator"),
        (dict(with_first=True), "start at the second"),
    ]:
        with pytest.raises(AssertionError, match=msg):
            ex.check_segment_shares(lambda v, kw=kw: _shares(v, **kw))
    with pytest.raises(AssertionError, match="two numbers"):
        ex.check_segment_shares(lambda v: 0.4)


def test_segment_shares_agree_with_the_judge_summary(world):
    """The solution computes what evals.judge_responses reports, on real toy responses."""
    from dspa_lite.evaluation.evals import judge_responses
    from dspa_lite.method.baselines import Unsteered

    prompts = world.prompts("test", 24)
    responses = Unsteered(world.model, world.tokenizer).generate(prompts, max_new_tokens=40, seed=0)
    summary = judge_responses(world.judge, prompts, responses)
    first, later = _shares([world.judge(p, r) for p, r in zip(prompts, responses)])
    assert first == pytest.approx(summary["first_segment_share"])
    assert later == pytest.approx(summary["later_segments_share"])


# ---------------------------------------------------------------- 8.1


def _boot(a, b, n_boot, gen, *, unpaired=False, prompts_only=False, cells=False, nested=False, frozen=False):
    S, P = a.shape
    if frozen:
        return (a.mean() - b.mean()).repeat(n_boot)
    if cells:
        idx = torch.randint(S * P, (n_boot, S * P), generator=gen)
        return a.flatten()[idx].mean(1) - b.flatten()[idx].mean(1)
    if nested:
        pi = torch.randint(P, (n_boot, P), generator=gen)
        si = torch.randint(S, (n_boot, P, S), generator=gen)
        return a.T[pi].gather(2, si).mean((1, 2)) - b.T[pi].gather(2, si).mean((1, 2))

    def draw():
        si = torch.arange(S).expand(n_boot, S) if prompts_only else torch.randint(S, (n_boot, S), generator=gen)
        return si, torch.randint(P, (n_boot, P), generator=gen)

    si, pi = draw()
    sj, pj = draw() if unpaired else (si, pi)
    return a[si[:, :, None], pi[:, None, :]].mean((1, 2)) - b[sj[:, :, None], pj[:, None, :]].mean((1, 2))


def test_bootstrap_diffs():
    ex.check_bootstrap_diffs(_boot)
    for kw, msg in [
        (dict(unpaired=True), "separate indices"),
        (dict(prompts_only=True), "draw the seeds with replacement"),
        (dict(cells=True), "cells one by one"),
        (dict(nested=True), "separately for each prompt"),
        (dict(frozen=True), "do not vary"),
    ]:
        with pytest.raises(AssertionError, match=msg):
            ex.check_bootstrap_diffs(lambda a, b, n, g, kw=kw: _boot(a, b, n, g, **kw))
    with pytest.raises(AssertionError, match="one difference per replicate"):
        ex.check_bootstrap_diffs(lambda a, b, n, g: a - b)
    with pytest.raises(AssertionError, match="same draw"):
        ex.check_bootstrap_diffs(lambda a, b, n, g: _boot(a, b, n, g) + 0.5)


def test_the_solution_reproduces_the_package_bootstrap():
    """The chapter's solution draws seeds, then prompts, from one generator, as paired_bootstrap does."""
    g = torch.Generator().manual_seed(3)
    a, b = torch.rand(3, 50, generator=g, dtype=torch.float64), torch.rand(3, 50, generator=g, dtype=torch.float64)
    boots = _boot(a, b, 2000, torch.Generator().manual_seed(0))
    assert float(boots.std()) == pytest.approx(paired_bootstrap(a, b)["se"], rel=1e-12)


# ---------------------------------------------------------------- 8.2


def _quiz(base, steered, answers, *, net=False, correctness=False, argmin=False, share=False, percent=False,
          sign=1.0, count=False):
    pick = (lambda s: min(range(len(s)), key=s.__getitem__)) if argmin else (lambda s: max(range(len(s)),
                                                                                           key=s.__getitem__))
    p0, p1 = [pick(s) for s in base], [pick(s) for s in steered]
    right0 = [p == a for p, a in zip(p0, answers)]
    right1 = [p == a for p, a in zip(p1, answers)]
    change = sign * (sum(right1) - sum(right0)) / (1 if count else len(answers)) * (100 if percent else 1)
    if net:
        changed = abs(sum(right1) - sum(right0))
    elif correctness:
        changed = sum(x != y for x, y in zip(right0, right1))
    else:
        changed = sum(x != y for x, y in zip(p0, p1))
    return change, changed / len(answers) if share else changed


def test_quiz_changes():
    ex.check_quiz_changes(_quiz)
    for kw, msg in [
        (dict(net=True), "cancel"),
        (dict(correctness=True), "another"),
        (dict(argmin=True), "highest"),
        (dict(share=True), "not their share"),
        (dict(percent=True), "fraction"),
        (dict(sign=-1.0), "steered minus base"),
        (dict(count=True), "Divide by the number of items"),
    ]:
        with pytest.raises(AssertionError, match=msg):
            ex.check_quiz_changes(lambda b, s, a, kw=kw: _quiz(b, s, a, **kw))
