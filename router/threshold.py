"""Calibrating the entropy threshold tau that sends uncertain prompts to the generalist.

Rule: tau is the LOWEST threshold whose held-out fallback rate is at most `max_fallback_rate`
(default 5%). Accuracy of the prompts that are not sent to the fallback rises as tau falls, so
this is the most accurate routing the fallback budget allows; the budget itself is the price we
accept for in-domain prompts handled by the generalist instead of their specialist. Each candidate
sits halfway between two observed held-out entropies, leaving margin on both sides.
"""

from __future__ import annotations

import torch
from pydantic import BaseModel, Field

# Why 5%: one in-domain prompt in twenty served by the generalist costs little quality, and it
# buys a threshold low enough that a useful share of out-of-domain prompts fall back.
DEFAULT_MAX_FALLBACK_RATE = 0.05
TRADEOFF_FALLBACK_RATES = (0.0, 0.01, 0.02, 0.05, 0.10, 0.20, 0.30)


class ThresholdPoint(BaseModel):
    """One row of the accuracy / fallback trade-off on held-out data."""

    max_fallback_rate: float = Field(description="Budget the threshold was chosen for.")
    entropy_threshold: float = Field(description="tau in nats; a prompt falls back when entropy > tau.")
    fallback_rate: float = Field(description="Share of held-out prompts that fall back at tau.")
    accepted_accuracy: float = Field(description="Accuracy on the held-out prompts that do not fall back.")
    ood_fallback_rate: float | None = Field(default=None, description="Share of ood.jsonl that falls back.")


def candidate_thresholds(entropies: torch.Tensor, max_entropy: float) -> torch.Tensor:
    """Midpoints between consecutive distinct entropies, plus `max_entropy` (never falls back)."""
    values = torch.unique(entropies.double())  # sorted ascending
    mids = (values[1:] + values[:-1]) / 2
    return torch.cat([mids, torch.tensor([max(max_entropy, float(values.max()) if len(values) else 0.0)])])


def choose_threshold(entropies: torch.Tensor, max_fallback_rate: float, max_entropy: float) -> float:
    """Lowest candidate tau with fallback rate (share of `entropies` > tau) <= `max_fallback_rate`."""
    if not 0.0 <= max_fallback_rate <= 1.0:
        raise ValueError(f"max_fallback_rate must be in [0, 1]; got {max_fallback_rate}")
    if len(entropies) == 0:
        raise ValueError("cannot calibrate tau on an empty held-out set")
    e = entropies.double()
    for tau in candidate_thresholds(e, max_entropy).tolist():
        if float((e > tau).double().mean()) <= max_fallback_rate:
            return tau
    return max_entropy  # unreachable: the last candidate has no fallbacks


def tradeoff_table(
    entropies: torch.Tensor,
    correct: torch.Tensor,
    max_entropy: float,
    ood_entropies: torch.Tensor | None = None,
    budgets: tuple[float, ...] = TRADEOFF_FALLBACK_RATES,
) -> list[ThresholdPoint]:
    """The threshold each fallback budget would pick, and what it does on held-out and OOD data.

    entropies, correct: [N] held-out entropies and whether the argmax category was right.
    """
    rows = []
    for budget in budgets:
        tau = choose_threshold(entropies, budget, max_entropy)
        accepted = entropies <= tau
        rows.append(
            ThresholdPoint(
                max_fallback_rate=budget,
                entropy_threshold=tau,
                fallback_rate=float((~accepted).double().mean()),
                accepted_accuracy=float(correct[accepted].double().mean()) if accepted.any() else 0.0,
                ood_fallback_rate=None
                if ood_entropies is None or len(ood_entropies) == 0
                else float((ood_entropies > tau).double().mean()),
            )
        )
    return rows


def format_tradeoff(rows: list[ThresholdPoint], chosen_tau: float) -> str:
    lines = ["budget  tau(nats)  held-out fallback  accepted acc  ood fallback"]
    for r in rows:
        ood = "   -" if r.ood_fallback_rate is None else f"{r.ood_fallback_rate:12.3f}"
        mark = "  <- chosen" if abs(r.entropy_threshold - chosen_tau) < 1e-12 else ""
        lines.append(
            f"{r.max_fallback_rate:6.2f}  {r.entropy_threshold:9.4f}  {r.fallback_rate:17.3f}  "
            f"{r.accepted_accuracy:12.3f}  {ood}{mark}"
        )
    return "\n".join(lines)
