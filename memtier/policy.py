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

At cluster scale (one policy ranks every socket's HBM: 1,024 experts' worth at 64 nodes x 8
sockets) the shadows replay a *spatial sample* of the experts, as SHARDS does for miss-ratio
curves (C. Waldspurger et al., "Efficient MRC Construction with SHARDS", FAST 2015): an expert is
in the sample when a hash of its name falls under 2^-k, and each shadow simulates 2^-k of the
budget on the sampled experts' requests only. Hit ratios, and so which lambda hits best, carry
over; the CRF of every expert is still kept at every lambda (ranking needs it), which costs a
fraction of a shadow's replay. Up to `FULL_SHADOW_EXPERTS` experts' worth of budget the sample
is everything, so every small-budget result in bench.policy is unchanged. Over 4,096 experts at
budgets of 512 and 1,024 the sample moves hit rates by -0.004 to +0.002 (bench.policy_sampling).
"""

from __future__ import annotations

import heapq
import math
import zlib
from collections.abc import Callable, Hashable, Iterable, Mapping

from cluster.config import MemtierConfig

__all__ = ["AdaptiveLRFU", "EvictionPolicy", "LRUPolicy", "make_policy"]

# Half-lives, in requests, of the shadow lambdas: LFU (inf) through LRU (1), a factor 8 apart. Each
# shadow costs a heap push per request; on bench.policy (seeds 0-2) this 6-shadow grid scored within
# 0.004 of an 8-shadow one (factor 4 apart), and a 4-shadow grid (factor 16) came within 0.009 of
# the LRU/LFU goal line.
DEFAULT_HALF_LIVES: tuple[float, ...] = (math.inf, 2048, 256, 32, 8, 1)
# Shadows replay every request while the budget holds at most this many (mean-sized) experts; past
# it, a 2^-k sample of the experts whose scaled budget holds about this many (SHARDS, above).
FULL_SHADOW_EXPERTS = 128


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

    def demand(self, key: Hashable) -> float | None:
        """Expected requests for `key` soon, in the policy's own terms; None if it keeps no such
        estimate (the prefetcher then keeps its own)."""
        return None

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
    """A byte-budgeted cache of keys only, replaying the same requests with one lambda.

    Victims come off a heap: at a common "now", comparing two CRFs v1 * 2^(-lambda (now - t1))
    and v2 * 2^(-lambda (now - t2)) is comparing log2 v + lambda t, which only changes when a key is
    requested. Each request pushes its key's new score; stale entries are skipped when popped.
    A shadow at 1,024 residents costs O(log n) per request, not a scan (bench.memtier_scale).
    """

    __slots__ = ("crf", "capacity_bytes", "resident", "used_bytes", "_heap", "_score")

    def __init__(self, half_life: float, capacity_bytes: int) -> None:
        self.crf = _CRF(half_life)
        self.capacity_bytes = capacity_bytes
        self.resident: dict[Hashable, int] = {}
        self.used_bytes = 0
        self._heap: list[tuple[float, int, Hashable]] = []
        self._score: dict[Hashable, tuple[float, int]] = {}  # resident key -> its live heap entry

    def access(self, key: Hashable, size_bytes: int, now: int, log2_weight: float) -> bool:
        """One request: update the key's CRF, admit it (evicting the lowest scores), True on a hit."""
        crf = self.crf
        lam = crf.lam
        old = crf.value_at.get(key)
        if old is None:
            value = 1.0
        elif lam == 0.0:
            value = old + 1.0
        else:
            value = old * 2.0 ** (-lam * (now - crf.last[key])) + 1.0
        crf.value_at[key] = value
        crf.last[key] = now
        hit = key in self.resident
        if not hit:
            if size_bytes > self.capacity_bytes:
                return False  # it could never stay: as the real tier, serve it and keep nothing
            while self.used_bytes + size_bytes > self.capacity_bytes:
                self._evict_one()
            self.resident[key] = size_bytes
            self.used_bytes += size_bytes
        score = math.log2(value) + log2_weight + lam * now
        self._score[key] = (score, now)
        heapq.heappush(self._heap, (score, now, key))  # `now` is unique per request: keys never compare
        if len(self._heap) > 4 * len(self.resident) + 64:
            self._heap = [(sc, t, k) for k, (sc, t) in self._score.items()]
            heapq.heapify(self._heap)
        return hit

    def empty(self) -> None:
        """Forget what the shadow holds (its CRFs stay): the sample it replays changed."""
        self.resident.clear()
        self.used_bytes = 0
        self._heap.clear()
        self._score.clear()

    def _evict_one(self) -> None:
        while True:
            score, t, key = heapq.heappop(self._heap)
            if self._score.get(key) == (score, t):  # the live entry, not a stale one
                del self._score[key]
                self.used_bytes -= self.resident.pop(key)
                return


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
        self._forget = 2.0 ** (-1.0 / score_half_life)  # per sampled request
        self.leader = 0
        self.now = 0
        self.sample_bits = 0  # the shadows replay the experts whose hash is 0 mod 2^sample_bits
        self._sampled: dict[Hashable, bool] = {}
        self.resize(capacity_bytes)

    @property
    def half_life(self) -> float:
        """The half-life (requests) the real cache ranks with now: inf = LFU, 1 = LRU."""
        lam = self.shadows[self.leader].crf.lam
        return math.inf if lam == 0.0 else 1.0 / lam

    def weight(self, key: Hashable, size_bytes: int) -> float:
        """Miss cost per byte held, GDSF's cost/size: (fixed + size) / size."""
        return (self.fixed_cost_bytes + size_bytes) / max(size_bytes, 1)

    def record(self, key: Hashable) -> None:
        self.now = now = self.now + 1
        sampled = self._sampled.get(key)
        if sampled is None:
            sampled = self._sampled[key] = _in_sample(key, self.sample_bits)
        if not sampled:  # outside the shadows' sample: only its CRFs move
            for shadow in self.shadows:
                shadow.crf.hit(key, now)
            return
        size_bytes = self.sizes.get(key, 1)
        log2_weight = math.log2(self.weight(key, size_bytes))
        scores, forget = self.scores, self._forget
        best = self.leader
        for i, shadow in enumerate(self.shadows):
            scores[i] = scores[i] * forget + shadow.access(key, size_bytes, now, log2_weight)
            if scores[i] > scores[best]:
                best = i
        self.leader = best  # a challenger must strictly beat the leader: no flapping on ties

    def value(self, key: Hashable, size_bytes: int) -> float:
        return self.shadows[self.leader].crf.value(key, self.now) * self.weight(key, size_bytes)

    def demand(self, key: Hashable) -> float:
        """The CRF at the half-life that has been predicting best: prefetch then agrees with eviction."""
        return self.shadows[self.leader].crf.value(key, self.now)

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
        bits = _sample_bits(capacity_bytes, self.sizes)
        if bits != self.sample_bits:  # another sample: what the shadows hold no longer applies
            self.sample_bits = bits
            self._sampled.clear()
            for shadow in self.shadows:
                shadow.empty()
        for shadow in self.shadows:
            shadow.capacity_bytes = capacity_bytes >> bits


def _sample_bits(capacity_bytes: int, sizes: Mapping[Hashable, int]) -> int:
    """k such that 2^-k of the budget holds about FULL_SHADOW_EXPERTS mean-sized experts (0 below)."""
    if not sizes:
        return 0
    mean_bytes = max(1.0, sum(sizes.values()) / len(sizes))
    experts = capacity_bytes / mean_bytes
    return int(math.log2(experts / FULL_SHADOW_EXPERTS)) if experts > FULL_SHADOW_EXPERTS else 0


def _in_sample(key: Hashable, bits: int) -> bool:
    """A stable hash (not Python's salted `hash`), so replays and restarts sample the same experts."""
    return bits == 0 or zlib.crc32(str(key).encode()) & ((1 << bits) - 1) == 0


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
