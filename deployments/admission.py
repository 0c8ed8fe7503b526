"""Whether a request may start now: per-key token buckets (429) and a bounded admission queue (503).

Both answer in microseconds and before any tokenizer or model work, so a 10x overload is refused
fast with a Retry-After rather than queued until it times out. State is per ingress replica (one
process, one event loop: no locks); with several ingress replicas each enforces its own share.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import OrderedDict
from dataclasses import dataclass, field

from cluster.config import ClusterConfig
from deployments.errors import Overloaded, RateLimited

_MAX_CALLERS = 10_000  # idle buckets beyond this are forgotten (a forgotten bucket restarts full)
CHARS_PER_TOKEN = 4  # OpenAI's rule of thumb: the prompt is charged bytes / 4 before tokenising


@dataclass
class TokenBucket:
    """`capacity` units, refilled at `rate_per_s`. `take` spends `cost` or says how long to wait."""

    capacity: float
    rate_per_s: float
    level: float = field(default=-1.0)
    updated_s: float = field(default=0.0)

    def take(self, cost: float, now_s: float) -> float:
        """0.0 if `cost` was spent now; otherwise the seconds until it could be (nothing spent).

        A cost above the capacity is charged as the full bucket, so a large request is slow, not
        impossible.
        """
        if self.level < 0:
            self.level, self.updated_s = self.capacity, now_s
        self.level = min(self.capacity, self.level + (now_s - self.updated_s) * self.rate_per_s)
        self.updated_s = now_s
        cost = min(cost, self.capacity)
        if self.level >= cost:
            self.level -= cost
            return 0.0
        return (cost - self.level) / self.rate_per_s


class RateLimiter:
    """Requests/s and tokens/min per caller (an API key's name, or a client address)."""

    def __init__(self, requests_per_s: float | None, request_burst: int, tokens_per_min: int | None) -> None:
        self.requests_per_s, self.request_burst, self.tokens_per_min = (
            requests_per_s,
            request_burst,
            tokens_per_min,
        )
        self._buckets: OrderedDict[tuple[str, str], TokenBucket] = OrderedDict()

    @property
    def limits_tokens(self) -> bool:
        return self.tokens_per_min is not None

    def _bucket(self, caller: str, kind: str, capacity: float, rate_per_s: float) -> TokenBucket:
        key = (caller, kind)
        bucket = self._buckets.pop(key, None) or TokenBucket(capacity, rate_per_s)
        self._buckets[key] = bucket  # most recent last
        while len(self._buckets) > _MAX_CALLERS:
            self._buckets.popitem(last=False)
        return bucket

    def check_request(self, caller: str, now_s: float | None = None) -> None:
        if self.requests_per_s is None:
            return
        bucket = self._bucket(caller, "requests", self.request_burst, self.requests_per_s)
        wait_s = bucket.take(1, time.monotonic() if now_s is None else now_s)
        if wait_s:
            raise RateLimited(
                f"rate limit: {self.requests_per_s:g} requests/s (burst {self.request_burst}) per key; "
                f"retry in {wait_s:.1f} s",
                retry_after_s=max(1.0, wait_s),
            )

    def check_tokens(self, caller: str, tokens: int, now_s: float | None = None) -> None:
        if self.tokens_per_min is None:
            return
        bucket = self._bucket(caller, "tokens", self.tokens_per_min, self.tokens_per_min / 60)
        wait_s = bucket.take(tokens, time.monotonic() if now_s is None else now_s)
        if wait_s:
            error = RateLimited(
                f"rate limit: {self.tokens_per_min} tokens/min per key, this request counts {tokens} "
                f"(prompt bytes / {CHARS_PER_TOKEN} + max_tokens); retry in {wait_s:.1f} s",
                retry_after_s=max(1.0, wait_s),
            )
            error.type = "tokens"
            raise error


def estimate_tokens(body_bytes: int, max_tokens: int) -> int:
    """What a request is charged against tokens/min before anything tokenises it."""
    return math.ceil(body_bytes / CHARS_PER_TOKEN) + max_tokens


class AdmissionQueue:
    """At most `max_in_flight` requests at work and `max_queued` waiting; beyond that, 503 at once."""

    def __init__(self, max_in_flight: int, max_queued: int, max_wait_s: float, retry_after_s: float) -> None:
        self.max_in_flight, self.max_queued = max_in_flight, max_queued
        self.max_wait_s, self.retry_after_s = max_wait_s, retry_after_s
        self.in_flight = 0
        self.waiting = 0
        self.refused = 0
        self._slots = asyncio.Semaphore(max_in_flight)

    async def acquire(self) -> None:
        """Take a slot (waiting in the queue if needed) or raise Overloaded; pair with `release`."""
        if self._slots.locked() or self.waiting:
            if self.waiting >= self.max_queued:
                self.refused += 1
                raise Overloaded(
                    f"the server is at capacity: {self.in_flight} requests at work and {self.waiting} "
                    f"queued (limits.max_in_flight, limits.max_queued); retry shortly",
                    retry_after_s=self.retry_after_s,
                )
            self.waiting += 1
            try:
                await asyncio.wait_for(self._slots.acquire(), self.max_wait_s)
            except TimeoutError:
                self.refused += 1
                raise Overloaded(
                    f"no slot freed within limits.max_queue_wait_s ({self.max_wait_s:g} s); retry shortly",
                    retry_after_s=self.retry_after_s,
                ) from None
            finally:
                self.waiting -= 1
        else:
            await self._slots.acquire()
        self.in_flight += 1

    def release(self) -> None:
        self.in_flight -= 1
        self._slots.release()


def admission_queue(config: ClusterConfig) -> AdmissionQueue:
    limits = config.limits
    in_flight = limits.max_in_flight or config.topology.total_sockets * config.serve.max_ongoing_requests
    return AdmissionQueue(
        in_flight, limits.max_queued, limits.max_queue_wait_s, limits.overload_retry_after_s
    )


def rate_limiter(config: ClusterConfig) -> RateLimiter:
    security = config.security
    return RateLimiter(security.requests_per_s, security.request_burst, security.tokens_per_min)
