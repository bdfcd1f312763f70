"""Drafting and acceptance of speculative decoding (impl/runtime/draft.py): pure functions."""

from __future__ import annotations

import pytest
import torch

from verisplit.impl.runtime.draft import (greedy_accept, propose_ngram, sampling_distribution, speculative_accept)
from verisplit.impl.runtime.errors import SegmentInputError


def test_propose_copies_what_followed_the_latest_match() -> None:
    history = [1, 2, 3, 4, 5, 9, 1, 2, 3]
    assert propose_ngram(history, 2) == [4, 5]  # trigram [1, 2, 3] recurs at 0
    assert propose_ngram([7, 1, 8, 1, 9, 1], 3) == [9, 1]  # most recent earlier "1" is at index 3 -> [9, 1]
    assert propose_ngram([5, 6, 7], 4) == []  # nothing recurs
    assert propose_ngram(history, 0) == [] and propose_ngram([], 3) == [] and propose_ngram([1], 3) == []


def test_propose_prefers_the_longest_ngram() -> None:
    history = [3, 9, 8, 1, 3, 5, 6, 1, 3]  # "3" alone would match index 4 -> [5, 6]; "1 3" matches index 3 -> [5 ...]
    assert propose_ngram(history, 2, max_ngram=2) == [5, 6]
    history = [1, 3, 7, 0, 3, 9, 1, 3]  # bigram [1, 3] at 0 -> [7, 0]; unigram [3] at 4 would give [9, 1]
    assert propose_ngram(history, 2, max_ngram=2) == [7, 0]
    assert propose_ngram(history, 2, max_ngram=1) == [9, 1]


def test_propose_never_invents_tokens_and_caps_at_k() -> None:
    gen = torch.Generator().manual_seed(0)
    for _ in range(200):
        history = torch.randint(0, 6, (int(torch.randint(1, 30, (1,), generator=gen)),), generator=gen).tolist()
        k = int(torch.randint(0, 6, (1,), generator=gen))
        draft = propose_ngram(history, k)
        assert len(draft) <= k and set(draft) <= set(history)


def _rows(targets: list[int], vocab: int = 10) -> torch.Tensor:
    rows = torch.zeros(len(targets), vocab)
    for i, t in enumerate(targets):
        rows[i, t] = 5.0
    return rows


def test_greedy_accept_is_longest_matching_prefix_plus_one() -> None:
    assert greedy_accept([4, 5, 6], _rows([4, 5, 6, 7])) == [4, 5, 6, 7]  # all accepted + bonus
    assert greedy_accept([4, 5, 6], _rows([4, 2, 6, 7])) == [4, 2]  # correction at the first mismatch
    assert greedy_accept([4], _rows([1, 3])) == [1]
    assert greedy_accept([], _rows([8])) == [8]  # no draft: plain greedy
    with pytest.raises(SegmentInputError, match="rows"):
        greedy_accept([1, 2], _rows([1, 2]))


def test_greedy_accept_equals_token_by_token_argmax() -> None:
    gen = torch.Generator().manual_seed(1)
    for _ in range(100):
        rows = torch.randn(4, 7, generator=gen)
        argmax = torch.argmax(rows, dim=-1).tolist()
        draft = [argmax[0], argmax[1], int(torch.randint(0, 7, (1,), generator=gen))]
        out = greedy_accept(draft, rows)
        assert out == argmax[:len(out)]  # every emitted token is the argmax of its row


def test_sampling_distribution_matches_sample_next_nucleus() -> None:
    row = torch.tensor([2.0, 1.0, 0.5, -1.0, 0.0])
    p = sampling_distribution(row, 1.0, 1.0)
    assert torch.allclose(p, torch.softmax(row, -1))
    p = sampling_distribution(row, 1.0, 0.7)  # softmax ~ [.55, .20, .12, .03, .07]: the nucleus is {0, 1}
    kept = (p > 0).nonzero().flatten().tolist()
    assert kept == [0, 1] and abs(float(p.sum()) - 1) < 1e-6


def test_speculative_sampling_keeps_the_target_distribution() -> None:
    """Point-mass draft: the first emitted token is distributed as p (chi-square-free bound check)."""
    row = torch.tensor([1.0, 0.2, 0.0, -0.5])
    rows = torch.stack([row, row])
    p = sampling_distribution(row, 1.0, 1.0)
    gen = torch.Generator().manual_seed(7)
    n = 20000
    counts = torch.zeros(4)
    for _ in range(n):
        counts[speculative_accept([0], rows, 1.0, 1.0, gen)[0]] += 1
    assert torch.allclose(counts / n, p, atol=0.015)  # ~5 sigma at n = 20000


def test_speculative_sampling_point_mass_target_always_accepts() -> None:
    rows = _rows([3, 3, 3]) * 100  # p is (numerically) a point mass on 3
    gen = torch.Generator().manual_seed(0)
    assert speculative_accept([3, 3], rows, 1.0, 1.0, gen) == [3, 3, 3]


def test_drafting_searches_a_bounded_window() -> None:
    """A match older than the window is not found (the search is bounded), one inside it is."""
    from verisplit.impl.runtime.draft import propose_ngram
    history = [7, 8, 9] + list(range(100, 200)) + [7, 8]
    assert propose_ngram(history, 2, window=len(history)) == [9, 100]
    assert propose_ngram(history, 2, window=50) == []
