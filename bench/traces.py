"""Expert-request traces that look like use, for the cache-policy benchmark (issue 17, point 3).

`bench.workloads` has the stationary ones (Zipf, uniform, one phase shift). Real traffic also
moves in other ways, each of which punishes a different policy:

* ``bursty_trace``: Markov-modulated popularity. A hidden state (a ranking of the experts) holds
  for a geometric number of requests, then jumps to another: a news cycle, a batch job, a tenant
  coming online. Frequency that never forgets is wrong after each jump; pure recency is noisy
  inside a state.
* ``diurnal_trace``: popularity drifts smoothly between two rankings over a day-long cycle (say
  code by day, chat by night), so the right answer changes slowly and keeps changing.
* ``session_trace``: multi-turn sessions. A conversation picks an expert (Zipf) and sends a run
  of turns to it (geometric length); several sessions interleave. Recency matters a lot here.
* ``mixed_sizes``: expert sizes of 2-3 classes (e.g. 1x, 2.5x, 6x bytes, as random-weight
  configs of three shapes would be) assigned independently of popularity, so the byte budget,
  not the expert count, decides what fits.

Every generator is deterministic for a seed (numpy's PCG64 ``default_rng``) and takes
``experts`` ordered by base popularity rank, as `bench.workloads` does.
"""

from __future__ import annotations

import numpy as np

from bench.workloads import Forecast, zipf_probabilities

__all__ = [
    "SIZE_CLASSES",
    "bursty_forecast",
    "bursty_trace",
    "diurnal_forecast",
    "diurnal_trace",
    "mixed_sizes",
    "session_forecast",
    "session_trace",
]

# Byte multiples of the three size classes (issue 17: "random-weight configs at 1x/2.5x/6x bytes").
SIZE_CLASSES: tuple[float, ...] = (1.0, 2.5, 6.0)


def _check(experts: list[str], n: int) -> None:
    if not experts:
        raise ValueError("need at least one expert")
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")


def bursty_trace(
    experts: list[str], n: int, s: float, seed: int, *, states: int = 4, mean_dwell: int = 400
) -> list[str]:
    """Zipf(s) requests whose ranking is one of ``states`` random permutations, switching after a
    geometric number of requests (mean ``mean_dwell``) to a uniformly chosen other state."""
    return _bursty(experts, n, s, seed, states, mean_dwell)[0]


def bursty_forecast(
    experts: list[str], n: int, s: float, seed: int, *, states: int = 4, mean_dwell: int = 400
) -> Forecast:
    """The law of each request of `bursty_trace` (same arguments): its state's ranking, as known
    to an oracle that sees the hidden state, even the moment it switches."""
    _, dwells = _bursty(experts, n, s, seed, states, mean_dwell)
    p = zipf_probabilities(len(experts), s)
    laws = np.empty((n, len(experts)))
    start = 0
    for dwell, ranking in dwells:
        laws[start : start + dwell, ranking] = p  # experts[ranking[r]] has Zipf rank r
        start += dwell
    return Forecast(tuple(experts), laws)


def _bursty(
    experts: list[str], n: int, s: float, seed: int, states: int, mean_dwell: int
) -> tuple[list[str], list[tuple[int, np.ndarray]]]:
    """The trace and its (length, ranking) dwells, in order."""
    _check(experts, n)
    if states < 1 or mean_dwell < 1:
        raise ValueError(f"states and mean_dwell must be >= 1, got {states} and {mean_dwell}")
    rng = np.random.default_rng(seed)
    p = zipf_probabilities(len(experts), s)
    rankings = [np.arange(len(experts))] + [rng.permutation(len(experts)) for _ in range(states - 1)]
    out: list[str] = []
    dwells: list[tuple[int, np.ndarray]] = []
    state = 0
    while len(out) < n:
        dwell = min(int(rng.geometric(1.0 / mean_dwell)), n - len(out))
        ranks = rng.choice(len(experts), size=dwell, p=p)
        out.extend(experts[rankings[state][r]] for r in ranks)
        dwells.append((dwell, rankings[state]))
        if states > 1:
            state = (state + int(rng.integers(1, states))) % states
    return out, dwells


def diurnal_trace(experts: list[str], n: int, s: float, seed: int, *, period: int = 2000) -> list[str]:
    """Zipf(s) popularity that moves smoothly from one ranking (day) to a shifted one (night) and
    back every ``period`` requests: p_t = w_t * day + (1 - w_t) * night, w_t = (1 + cos 2*pi*t/period) / 2."""
    day, night, weight = _diurnal(experts, n, s, period)
    u = np.random.default_rng(seed).random(n)
    out: list[str] = []
    for i in range(n):
        p = weight[i] * day + (1.0 - weight[i]) * night
        out.append(experts[min(int(np.searchsorted(np.cumsum(p), u[i])), len(experts) - 1)])
    return out


def diurnal_forecast(experts: list[str], n: int, s: float, *, period: int = 2000) -> Forecast:
    """The law p_t of each request of `diurnal_trace` (it depends on t alone, not on the seed)."""
    day, night, weight = _diurnal(experts, n, s, period)
    return Forecast(tuple(experts), weight[:, None] * day + (1.0 - weight[:, None]) * night)


def _diurnal(experts: list[str], n: int, s: float, period: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The day and night laws and each request's day weight w_t."""
    _check(experts, n)
    if period < 2:
        raise ValueError(f"period must be >= 2 requests, got {period}")
    day = zipf_probabilities(len(experts), s)
    night = np.roll(day, len(experts) // 2)  # the cold half becomes the hot half
    return day, night, (1.0 + np.cos(2.0 * np.pi * np.arange(n) / period)) / 2.0


def session_trace(
    experts: list[str], n: int, s: float, seed: int, *, concurrent: int = 6, mean_turns: float = 4.0
) -> list[str]:
    """``concurrent`` live conversations; each request is the next turn of a random live one. A
    conversation's expert is drawn Zipf(s) when it starts; it lasts a geometric number of turns
    (mean ``mean_turns``), then a new conversation takes its place."""
    return _sessions(experts, n, s, seed, concurrent, mean_turns)[0]


def session_forecast(
    experts: list[str], n: int, s: float, seed: int, *, concurrent: int = 6, mean_turns: float = 4.0
) -> Forecast:
    """The law of each request of `session_trace` (same arguments) for an oracle that knows which
    conversation slot every past request came from, but not when a conversation ends (no server
    does) nor a new one's expert before its first turn: the next request is a uniform slot's
    turn; a slot last seen with expert e continues it with probability 1 - 1/mean_turns (the
    geometric length is memoryless), else starts a new Zipf(s) conversation. So the law is
    unseen/c * p + seen/c * (1 - g) * p + g/c * (slots last seen with e), g = 1 - 1/mean_turns."""
    trace, slots = _sessions(experts, n, s, seed, concurrent, mean_turns)
    p = zipf_probabilities(len(experts), s)
    goes_on = 1.0 - 1.0 / mean_turns
    column = {e: i for i, e in enumerate(experts)}
    last_seen: list[int | None] = [None] * concurrent
    slots_on = np.zeros(len(experts))  # slots whose last request went to each expert
    laws = np.empty((n, len(experts)))
    seen = 0  # slots with a request so far
    for t, (expert, slot) in enumerate(zip(trace, slots, strict=True)):
        new_mass = ((concurrent - seen) + seen * (1.0 - goes_on)) / concurrent
        laws[t] = new_mass * p + goes_on / concurrent * slots_on
        previous = last_seen[slot]
        if previous is None:
            seen += 1
        else:
            slots_on[previous] -= 1
        last_seen[slot] = column[expert]
        slots_on[column[expert]] += 1
    return Forecast(tuple(experts), laws)


def _sessions(
    experts: list[str], n: int, s: float, seed: int, concurrent: int, mean_turns: float
) -> tuple[list[str], list[int]]:
    """The trace and the conversation slot of each request."""
    _check(experts, n)
    if concurrent < 1 or mean_turns < 1:
        raise ValueError(f"concurrent and mean_turns must be >= 1, got {concurrent} and {mean_turns}")
    rng = np.random.default_rng(seed)
    p = zipf_probabilities(len(experts), s)

    def new_session() -> list:
        return [int(rng.choice(len(experts), p=p)), int(rng.geometric(1.0 / mean_turns))]

    live = [new_session() for _ in range(concurrent)]
    out: list[str] = []
    slots: list[int] = []
    for _ in range(n):
        slot = int(rng.integers(concurrent))
        expert, turns_left = live[slot]
        out.append(experts[expert])
        slots.append(slot)
        live[slot] = [expert, turns_left - 1] if turns_left > 1 else new_session()
    return out, slots


def mixed_sizes(
    experts: list[str], base_bytes: int, seed: int, classes: tuple[float, ...] = SIZE_CLASSES
) -> dict[str, int]:
    """Sizes cycling through ``classes`` (x ``base_bytes``), shuffled independently of popularity
    rank, so every class has hot and cold experts."""
    if base_bytes < 1 or not classes:
        raise ValueError(f"need base_bytes >= 1 and at least one class, got {base_bytes} and {classes}")
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(experts))
    return {experts[i]: int(round(base_bytes * classes[k % len(classes)])) for k, i in enumerate(order)}
