"""Calibration: temperature scaling, expected calibration error, and the risk-coverage curve.

A classifier trained on a few sources is over-confident on prompts from a new one (ECE 0.33
before this module). Temperature scaling divides the logits by one number T > 0 fitted by
minimising the negative log-likelihood on held-out logits; argmax (and so accuracy) is
unchanged, only confidence moves. The logits it is fitted on come from leave-one-source-out
(each prompt scored by a head that never saw its source), so T reflects the shift a new
user's prompts bring, not the easy in-distribution case.
"""

from __future__ import annotations

import torch
from pydantic import BaseModel, Field

from router.classifier import entropy_nats

# Why 15 bins: the usual choice for ECE (Guo et al. 2017); with ~4,500 held-out prompts each bin
# still holds hundreds of predictions where confidence is dense.
ECE_BINS = 15


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """T minimising NLL of softmax(logits / T); logits [N, K], labels [N]. Deterministic (LBFGS)."""
    if len(labels) == 0:
        raise ValueError("cannot fit a temperature on no held-out predictions")
    logits = logits.detach().double()
    log_t = torch.zeros(1, dtype=torch.float64, requires_grad=True)  # T = exp(log_t) stays > 0
    opt = torch.optim.LBFGS([log_t], lr=0.5, max_iter=200, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(logits / log_t.exp(), labels)
        loss.backward()
        return loss

    opt.step(closure)
    return float(log_t.detach().exp())


def expected_calibration_error(probs: torch.Tensor, labels: torch.Tensor, bins: int = ECE_BINS) -> float:
    """Weighted mean |accuracy - confidence| over equal-width confidence bins; probs [N, K]."""
    if len(labels) == 0:
        return 0.0
    confidence, predicted = probs.max(-1)
    correct = (predicted == labels).double()
    edges = torch.linspace(0, 1, bins + 1, dtype=torch.float64)
    ece = 0.0
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        inside = (confidence.double() > lo) & (confidence.double() <= hi)
        if inside.any():
            gap = (correct[inside].mean() - confidence[inside].double().mean()).abs()
            ece += float(gap) * float(inside.double().mean())
    return ece


class RiskCoveragePoint(BaseModel):
    """One threshold on the curve: prompts with entropy <= tau go to their category's expert."""

    entropy_threshold: float = Field(description="tau in nats.")
    coverage: float = Field(description="Share of prompts routed to a specialist (not the fallback).")
    risk: float = Field(description="Error rate among the covered prompts (wrong specialist).")
    expected_quality: float = Field(
        description="Mean score of the expert each prompt reaches (score table), fallbacks included."
    )


def risk_coverage_curve(
    probs: torch.Tensor,
    labels: torch.Tensor,
    expert_quality: torch.Tensor,
    fallback_quality: torch.Tensor,
    points: int = 41,
) -> list[RiskCoveragePoint]:
    """Coverage, risk and expected quality for `points` entropy thresholds from 0 to ln K.

    probs [N, K] calibrated; labels [N]; expert_quality [K_pred, K_true]: score of the expert that
    category k_pred maps to on a prompt of category k_true; fallback_quality [K_true]: the
    fallback expert's score.
    """
    k = probs.shape[1]
    entropy = entropy_nats(probs).double()
    predicted = probs.argmax(-1)
    routed_q = expert_quality[predicted, labels].double()  # [N]
    fallback_q = fallback_quality[labels].double()  # [N]
    wrong = (predicted != labels).double()
    max_h = float(torch.log(torch.tensor(float(k))))
    curve = []
    for tau in torch.linspace(0, max_h, points, dtype=torch.float64).tolist():
        covered = entropy <= tau
        n_cov = int(covered.sum())
        curve.append(
            RiskCoveragePoint(
                entropy_threshold=tau,
                coverage=n_cov / len(labels),
                risk=float(wrong[covered].mean()) if n_cov else 0.0,
                expected_quality=float(torch.where(covered, routed_q, fallback_q).mean()),
            )
        )
    return curve


def choose_tau(curve: list[RiskCoveragePoint]) -> RiskCoveragePoint:
    """The point of highest expected quality; ties go to the higher coverage (fewer fallbacks)."""
    return max(curve, key=lambda p: (round(p.expected_quality, 6), p.coverage))
