"""Each check accepts a correct solution and diagnoses typical mistakes."""

from collections import Counter

import pytest

from dspa_lite.notebook import exercises as ex
from dspa_lite.toyworld import language as L


def good_share(prompt, response):
    return L.Judge()(prompt, response).preferred_share


def first_segment_only(prompt, response):
    v = L.Judge()(prompt, response)
    return float(v.styles[0] == v.preferred)


def test_preferred_share():
    ex.check_preferred_share(good_share)
    with pytest.raises(AssertionError, match="first segment"):
        ex.check_preferred_share(first_segment_only)


def good_dominant(response):
    return L.Judge()("explain how the pump works ?", response).style


def counts_malformed(response):
    counts = Counter(L.classify_segment(g) for g in L.split_segments(response)).most_common()
    return counts[0][0] if len(counts) == 1 or counts[0][1] > counts[1][1] else None


def test_dominant_style():
    ex.check_dominant_style(good_dominant)
    with pytest.raises(AssertionError, match="tie"):
        ex.check_dominant_style(lambda r: max(L.STYLES, key=lambda s: [
            L.classify_segment(g) for g in L.split_segments(r)].count(s)))
    with pytest.raises(AssertionError, match="not only the first"):
        ex.check_dominant_style(lambda r: L.classify_segment(L.split_segments(r)[0]))
    with pytest.raises(AssertionError, match="well-formed"):
        ex.check_dominant_style(counts_malformed)


def test_preferred_share_hints():
    with pytest.raises(AssertionError, match="cautious"):
        ex.check_preferred_share(lambda p, r: 1.0 if p.startswith("how do i hack") else good_share(p, r))


def test_precision_at_k():
    ex.check_precision_at_k(lambda sel, ref, k: len(set(list(sel)[:k]) & set(ref)) / k)
    with pytest.raises(AssertionError, match="recall"):
        ex.check_precision_at_k(lambda sel, ref, k: len(set(list(sel)[:k]) & set(ref)) / max(1, len(ref)))


def test_pairwise_win_rate():
    def good(verdicts, positions):
        decided = [(v, p) for v, p in zip(verdicts, positions) if v is not None]
        return sum(1.0 if v == p else 0.5 if v == "tie" else 0.0 for v, p in decided) / len(decided)

    ex.check_pairwise_win_rate(good)
    with pytest.raises(AssertionError, match="half a win"):
        ex.check_pairwise_win_rate(lambda v, p: sum(a == b for a, b in zip(v, p) if a) / len([a for a in v if a]))
