"""Synthetic expert-request traces for the cache-policy benchmark.

Every generator is deterministic for a seed (numpy's PCG64 ``default_rng``), so committed
results can be regenerated exactly. ``experts`` is ordered by popularity rank: ``experts[0]``
is rank 1, the most requested under a Zipf law.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = [
    "Forecast",
    "phase_shift_forecast",
    "phase_shift_trace",
    "uniform_trace",
    "zipf_forecast",
    "zipf_probabilities",
    "zipf_trace",
]


@dataclass(frozen=True)
class Forecast:
    """What an oracle expects of each request of a generated trace: row t of `laws` is the law
    request t is drawn from, given the generator's hidden state (its popularity ranking, its
    phase, its live conversations) but none of its future draws.

    No online policy or prefetcher knows more than that, and under such a law a request hits at
    most the mass of the experts held when it arrives, whatever was paged in before. So
    `miss_floor` bounds the misses any of them can expect (for i.i.d. requests this is Aho,
    Denning and Ullman's A0 argument, "Principles of optimal page replacement", JACM 1971).
    """

    experts: tuple[str, ...]
    laws: np.ndarray  # [n, E]: rows sum to 1, columns in `experts` order

    def miss_floor(self, slots: int) -> float:
        """Expected misses, over the whole trace, of a cache that always holds the `slots`
        likeliest experts of the next request (paged in for free; cold misses not counted)."""
        if slots >= len(self.experts):
            return 0.0
        held = -np.partition(-self.laws, slots - 1, axis=1)[:, :slots] if slots > 0 else self.laws[:, :0]
        return float((1.0 - held.sum(axis=1)).clip(min=0.0).sum())


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


def zipf_forecast(experts: Sequence[str], n: int, s: float) -> Forecast:
    """`zipf_trace`'s law: the same Zipf(s) for every request."""
    laws = np.broadcast_to(zipf_probabilities(len(experts), s), (n, len(experts)))
    return Forecast(tuple(experts), laws)


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


def phase_shift_forecast(experts: Sequence[str], n: int, s: float, shift: int | None = None) -> Forecast:
    """`phase_shift_trace`'s law: Zipf(s) by list rank, then by the rotated rank from the midpoint
    (an oracle that knows the moment of the shift)."""
    p = zipf_probabilities(len(experts), s)
    shift = (len(experts) // 2 if shift is None else shift) % len(experts)
    laws = np.empty((n, len(experts)))
    laws[: n // 2] = p
    laws[n // 2 :] = np.roll(p, shift)  # rotated[r] = experts[(shift + r) % E] has Zipf rank r
    return Forecast(tuple(experts), laws)
