"""Temperature scaling, ECE and the risk-coverage choice of tau, on synthetic predictions."""

from __future__ import annotations

import math

import pytest
import torch

from router.calibration import choose_tau, expected_calibration_error, fit_temperature, risk_coverage_curve
from router.classifier import entropy_nats


def _sampled(n: int, k: int, true_t: float, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits whose labels are drawn from softmax(logits / true_t): calibrated exactly at true_t."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, k, generator=g) * 3
    labels = torch.multinomial(torch.softmax(logits / true_t, -1), 1, generator=g).squeeze(1)
    return logits, labels


def test_temperature_recovers_the_one_that_generated_the_labels():
    logits, labels = _sampled(20_000, 8, true_t=2.5)
    assert fit_temperature(logits, labels) == pytest.approx(2.5, rel=0.08)


def test_scaling_by_the_fitted_temperature_removes_most_calibration_error():
    logits, labels = _sampled(20_000, 8, true_t=3.0)
    before = expected_calibration_error(torch.softmax(logits, -1), labels)
    after = expected_calibration_error(torch.softmax(logits / fit_temperature(logits, labels), -1), labels)
    assert before > 0.1 and after < 0.02


def test_ece_is_the_gap_between_confidence_and_accuracy():
    probs = torch.tensor([[0.9, 0.1]] * 10)
    labels = torch.tensor([0] * 5 + [1] * 5)  # 90% confident, 50% right
    assert expected_calibration_error(probs, labels) == pytest.approx(0.4)


def test_tau_maximises_expected_quality_on_the_curve():
    # Two prompts: a confident right one and an unsure wrong one. Specialists score 1 on their own
    # category and 0 elsewhere; the generalist scores 0.6: falling back on the unsure one pays.
    probs = torch.tensor([[0.98, 0.02], [0.55, 0.45]])
    labels = torch.tensor([0, 1])
    curve = risk_coverage_curve(probs, labels, torch.eye(2, dtype=torch.float64), torch.tensor([0.6, 0.6]))
    best = choose_tau(curve)
    assert best.coverage == 0.5 and best.risk == 0.0
    # Whatever grid the curve uses, tau separates them: the sure prompt routes, the unsure falls back.
    sure, unsure = entropy_nats(probs).tolist()
    assert sure <= best.entropy_threshold < unsure
    assert best.expected_quality == pytest.approx((1.0 + 0.6) / 2)
    assert curve[-1].coverage == 1.0 and curve[-1].entropy_threshold == pytest.approx(math.log(2))
    assert [p.coverage for p in curve] == sorted(p.coverage for p in curve)
