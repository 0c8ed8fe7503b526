"""The tau rule: lowest threshold whose held-out fallback rate fits the budget."""

from __future__ import annotations

import math

import pytest
import torch

from router.threshold import choose_threshold, tradeoff_table

MAX_H = math.log(8)


def test_tau_is_the_lowest_threshold_within_the_fallback_budget():
    entropies = torch.arange(20, dtype=torch.float64) / 10  # 0.0 .. 1.9
    tau = choose_threshold(entropies, 0.10, MAX_H)  # 2 of 20 may fall back: 1.8 and 1.9
    assert tau == pytest.approx(1.75)
    assert float((entropies > tau).double().mean()) == pytest.approx(0.10)


def test_zero_budget_never_falls_back_and_full_budget_falls_back_on_all_but_the_lowest():
    entropies = torch.tensor([0.1, 0.5, 0.9])
    assert choose_threshold(entropies, 0.0, MAX_H) == pytest.approx(MAX_H)
    assert choose_threshold(entropies, 1.0, MAX_H) == pytest.approx(0.3)


def test_ties_in_entropy_never_let_the_rate_exceed_the_budget():
    entropies = torch.tensor([0.2] * 5 + [1.0] * 5)
    tau = choose_threshold(entropies, 0.3, MAX_H)  # cannot fall back on 3 of the five 1.0s only
    assert float((entropies > tau).double().mean()) == 0.0


def test_tradeoff_rows_trade_fallbacks_for_accuracy_and_count_ood():
    entropies = torch.tensor([0.1, 0.2, 0.3, 1.5])
    correct = torch.tensor([True, True, True, False])
    ood = torch.tensor([0.5, 2.0])
    rows = tradeoff_table(entropies, correct, MAX_H, ood, budgets=(0.0, 0.25))
    assert [r.fallback_rate for r in rows] == [0.0, 0.25]
    assert [r.accepted_accuracy for r in rows] == [0.75, 1.0]
    assert [r.entropy_threshold for r in rows] == pytest.approx([MAX_H, 0.9])
    assert [r.ood_fallback_rate for r in rows] == [0.0, 0.5]


def test_bad_budget_or_empty_heldout_is_rejected():
    with pytest.raises(ValueError, match="max_fallback_rate"):
        choose_threshold(torch.tensor([0.1]), 1.5, MAX_H)
    with pytest.raises(ValueError, match="empty"):
        choose_threshold(torch.empty(0), 0.05, MAX_H)
