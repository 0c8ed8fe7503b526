"""Synthetic expert-request traces for the cache-policy benchmark.

Every generator is deterministic for a seed (numpy's PCG64 ``default_rng``), so committed
results can be regenerated exactly. ``experts`` is ordered by popularity rank: ``experts[0]``
is rank 1, the most requested under a Zipf law.
"""

from __future__ import annotations

import numpy as np

__all__ = ["phase_shift_trace", "uniform_trace", "zipf_probabilities", "zipf_trace"]


def zipf_probabilities(n_experts: int, s: float) -> np.ndarray:
    """P(rank r) proportional to 1 / r**s; s=0 is uniform, larger s is more skewed.

    A finite Zipf law (not numpy's unbounded ``rng.zipf``), since there are only ``n_experts``.
    """
    if n_experts < 1:
        raise ValueError(f"need at least one expert, got {n_experts}")
    if s < 0:
        raise ValueError(f"zipf exponent s must be >= 0, got {s}")
    weights = 1.0 / np.arange(1, n_experts + 1, dtype=np.float64) ** s
    return weights / weights.sum()


def _sample(experts: list[str], n: int, p: np.ndarray, rng: np.random.Generator) -> list[str]:
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    idx = rng.choice(len(experts), size=n, p=p)
    return [experts[i] for i in idx]


def zipf_trace(experts: list[str], n: int, s: float, seed: int) -> list[str]:
    """``n`` requests drawn i.i.d. from a Zipf(s) law over ``experts`` (rank = list order)."""
    rng = np.random.default_rng(seed)
    return _sample(experts, n, zipf_probabilities(len(experts), s), rng)


def uniform_trace(experts: list[str], n: int, seed: int) -> list[str]:
    """``n`` requests, every expert equally likely: the case where no policy can beat capacity/N."""
    return zipf_trace(experts, n, 0.0, seed)


def phase_shift_trace(experts: list[str], n: int, s: float, seed: int, shift: int | None = None) -> list[str]:
    """Zipf(s) requests whose popularity ranking is rotated by ``shift`` at the midpoint.

    Models a change of traffic mix (e.g. from code to chat prompts): the first ``n // 2``
    requests rank ``experts`` as given, the rest rank ``experts[shift:] + experts[:shift]``.
    The default shift, half the experts, moves the formerly cold half to the top, which is
    what punishes a policy that trusts old frequencies.
    """
    if not experts:
        raise ValueError("need at least one expert")
    if shift is None:
        shift = len(experts) // 2
    rng = np.random.default_rng(seed)
    p = zipf_probabilities(len(experts), s)
    shift %= len(experts)
    rotated = experts[shift:] + experts[:shift]
    first_half = n // 2
    return _sample(experts, first_half, p, rng) + _sample(rotated, n - first_half, p, rng)
