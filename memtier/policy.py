"""Which resident expert to evict: a small policy interface, LRU and an adaptive, size-aware default.

`ByteBudgetLRU` keeps the bytes and the pins (one checked budget, pinned entries never
evictable); a policy only *orders* the unpinned candidates, so no policy can break a budget or
evict a leased expert. Policies see every request through `record` (one call per request, on a
logical clock of requests, so replays and tests are deterministic) and may refuse to keep a
one-off expert (`admit`): it is served, then dropped.

`AdaptiveLRFU`, the default, scores each expert by its *combined recency and frequency*
(CRF) from LRFU (D. Lee et al., "LRFU: A Spectrum of Policies that Subsumes the Least Recently
Used and Least Frequently Used Policies", IEEE Trans. Computers 50(12), 2001): every past
request adds 2^(-lambda * age), so lambda = 0 is LFU with lifetime counts and lambda = 1 is
LRU. The right lambda depends on the traffic (LFU on a stationary skew, near-LRU for chatty
sessions, in between after popularity shifts), so it is chosen online, as ACME does with its
"experts" (I. Ari et al., "ACME: Adaptive Caching using Multiple Experts", WDAS 2002): one
shadow cache per lambda replays the same requests at the same byte budget, each shadow's hits
are counted with exponential forgetting, and the real cache ranks victims with the lambda of
the shadow that has been hitting most. The CRF is weighed by the expert's miss cost per byte
held, as GreedyDual-Size-Frequency does (L. Cherkasova, "Improving WWW Proxies Performance
with Greedy-Dual-Size-Frequency Caching Policy", HP Labs HPL-98-69, 1998): cost =
fixed_cost_bytes + size (a fixed per-miss cost, expressed in bytes at load bandwidth, plus the
bytes), so a small expert's fixed cost weighs a little more per byte and equal sizes reduce to
plain CRF.

Chosen on `bench.policy` evidence (bench/results/policy.md): on every trace and budget there it
is within 0.01 of the better of LRU and LFU or above it, and >= 0.88x Belady's OPT on
stationary Zipf; a fixed lambda loses up to 0.06 to LRU on session traces, LFU-DA up to 0.1 to
LFU on stationary Zipf. W-TinyLFU and S3-FIFO were not adopted: their 1% window and 10% small
queue are less than one expert at HBM budgets of 2-8 experts.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable, Iterable, Mapping

from cluster.config import MemtierConfig

__all__ = ["AdaptiveLRFU", "EvictionPolicy", "LRUPolicy", "make_policy"]

# Half-lives, in requests, of the shadow lambdas: LFU (inf) through LRU (1). A factor 4 apart is
# fine enough: bench.policy moved by < 0.005 with a factor 2 grid.
DEFAULT_HALF_LIVES: tuple[float, ...] = (math.inf, 4096, 1024, 256, 64, 16, 4, 1)


class EvictionPolicy:
    """Orders eviction candidates; `ByteBudgetLRU` enforces bytes and pins."""

    name = "policy"

    def record(self, key: Hashable) -> None:
        """One request for `key` (hit or miss); the policy's clock advances by one."""

    def rank(self, candidates: list, size_of: Callable[[Hashable], int]) -> list:
        """`candidates` (unpinned, least recently used first) in the order they should be evicted."""
        return candidates

    def value(self, key: Hashable, size_bytes: int) -> float:
        """How much keeping `key` is worth now (higher = keep); LRU has no opinion (0)."""
        return 0.0

    def admit(self, key: Hashable, size_bytes: int, victims: Iterable[tuple[Hashable, int]]) -> bool:
        """Keep `key` after its request? Only a refusal with evidence; LRU always keeps."""
        return True

    def resize(self, capacity_bytes: int) -> None:
        """The tier's total budget changed (a socket joined or left)."""


class LRUPolicy(EvictionPolicy):
    """Least recently used first: the order `ByteBudgetLRU` already keeps."""

    name = "lru"


class _CRF:
    """Combined recency-frequency per key at one lambda: value decays as 2^(-lambda * age)."""

    __slots__ = ("lam", "value_at", "last")

    def __init__(self, half_life: float) -> None:
        self.lam = 0.0 if math.isinf(half_life) else 1.0 / half_life
        self.value_at: dict[Hashable, float] = {}
        self.last: dict[Hashable, int] = {}

    def hit(self, key: Hashable, now: int) -> None:
        self.value_at[key] = self.value(key, now) + 1.0
        self.last[key] = now

    def value(self, key: Hashable, now: int) -> float:
        crf = self.value_at.get(key)
        if crf is None:
            return 0.0
        return crf if self.lam == 0.0 else crf * 2.0 ** (-self.lam * (now - self.last[key]))


class _Shadow:
    """A byte-budgeted cache of keys only, replaying the same requests with one lambda."""

    __slots__ = ("crf", "capacity_bytes", "resident", "used_bytes")

    def __init__(self, half_life: float, capacity_bytes: int) -> None:
        self.crf = _CRF(half_life)
        self.capacity_bytes = capacity_bytes
        self.resident: dict[Hashable, int] = {}
        self.used_bytes = 0

    def access(
        self, key: Hashable, size_bytes: int, now: int, weight: Callable[[Hashable, int], float]
    ) -> bool:
        self.crf.hit(key, now)
        if key in self.resident:
            return True
        if size_bytes > self.capacity_bytes:
            return False  # it could never stay: as the real tier, serve it and keep nothing
        crf, last = self.crf, self.crf.last
        while self.used_bytes + size_bytes > self.capacity_bytes:
            victim = min(
                self.resident, key=lambda k: (crf.value(k, now) * weight(k, self.resident[k]), last[k])
            )
            self.used_bytes -= self.resident.pop(victim)
        self.resident[key] = size_bytes
        self.used_bytes += size_bytes
        return False


class AdaptiveLRFU(EvictionPolicy):
    """CRF scores whose lambda follows the best-hitting shadow; weighed by miss cost per byte."""

    name = "adaptive"

    def __init__(
        self,
        capacity_bytes: int,
        sizes: Mapping[Hashable, int] | None = None,
        *,
        half_lives: tuple[float, ...] = DEFAULT_HALF_LIVES,
        fixed_cost_bytes: int = 20 * 10**6,
        score_half_life: float = 500.0,
        admission: bool = False,
    ) -> None:
        if not half_lives:
            raise ValueError("need at least one half-life")
        self.sizes = sizes if sizes is not None else {}  # by reference: a DDR store sizes experts lazily
        self.fixed_cost_bytes = fixed_cost_bytes
        self.admission = admission
        self.shadows = [_Shadow(h, capacity_bytes) for h in half_lives]
        self.scores = [0.0] * len(half_lives)
        self._forget = 2.0 ** (-1.0 / score_half_life)
        self.leader = 0
        self.now = 0

    @property
    def half_life(self) -> float:
        """The half-life (requests) the real cache ranks with now: inf = LFU, 1 = LRU."""
        lam = self.shadows[self.leader].crf.lam
        return math.inf if lam == 0.0 else 1.0 / lam

    def weight(self, key: Hashable, size_bytes: int) -> float:
        """Miss cost per byte held, GDSF's cost/size: (fixed + size) / size."""
        return (self.fixed_cost_bytes + size_bytes) / max(size_bytes, 1)

    def record(self, key: Hashable) -> None:
        self.now += 1
        size_bytes = self.sizes.get(key, 1)
        best = self.leader
        for i, shadow in enumerate(self.shadows):
            hit = shadow.access(key, size_bytes, self.now, self.weight)
            self.scores[i] = self.scores[i] * self._forget + (1.0 if hit else 0.0)
            if self.scores[i] > self.scores[best]:
                best = i
        self.leader = best  # a challenger must strictly beat the leader: no flapping on ties

    def value(self, key: Hashable, size_bytes: int) -> float:
        return self.shadows[self.leader].crf.value(key, self.now) * self.weight(key, size_bytes)

    def rank(self, candidates: list, size_of: Callable[[Hashable], int]) -> list:
        # sorted() is stable and candidates come least recently used first: LRU breaks ties.
        return sorted(candidates, key=lambda k: self.value(k, size_of(k)))

    def admit(self, key: Hashable, size_bytes: int, victims: Iterable[tuple[Hashable, int]]) -> bool:
        victims = list(victims)
        if not self.admission or not victims:
            return True  # it fits beside what is there: keeping it costs nothing
        mine = self.value(key, size_bytes)
        return any(mine >= self.value(v, s) for v, s in victims)

    def resize(self, capacity_bytes: int) -> None:
        for shadow in self.shadows:
            shadow.capacity_bytes = capacity_bytes


def make_policy(
    config: MemtierConfig | None, capacity_bytes: int, sizes: Mapping[Hashable, int] | None = None
) -> EvictionPolicy:
    """The policy a tier of `capacity_bytes` runs under `config` (None = the default)."""
    config = config or MemtierConfig()
    if config.policy == "lru":
        return LRUPolicy()
    return AdaptiveLRFU(
        capacity_bytes,
        sizes,
        fixed_cost_bytes=config.fixed_cost_bytes,
        score_half_life=config.score_half_life,
        admission=config.admission,
    )
