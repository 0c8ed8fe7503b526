"""Waiting on state, not on clocks: poll until a condition holds (house rule 5)."""

from __future__ import annotations

import time


def wait_for(predicate, what: str = "condition", timeout_s: float = 60.0, poll_s: float = 0.05):
    """Poll `predicate()` until it returns something true, and return that. The timeout is only a
    bound for a broken run (generous on a shared 2-core box), never the thing tested."""
    deadline = time.monotonic() + timeout_s
    while not (value := predicate()):
        assert time.monotonic() < deadline, f"{what}: not within {timeout_s}s"
        time.sleep(poll_s)
    return value
