"""One builder at a time for a folder shared by processes: the zoo, the router artifact.

Two processes that find the zoo missing (two pytest workers of a fresh clone, `coe up` beside a
test run) would otherwise both write the same temporary folders and rename them over each other.
The second now waits on an exclusive `flock`, then finds the work done and up to date. The lock is
re-entrant within a process (a demo build converts the base and extracts the tokenizer under the
same lock), and the kernel drops it if the holder dies, so a crash never wedges the next build.
"""

from __future__ import annotations

import fcntl
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["build_lock"]

_held: dict[Path, int] = {}  # lock file -> how deep this process holds it


@contextmanager
def build_lock(lock_file: Path) -> Iterator[None]:
    """Hold `lock_file` exclusively (created if missing) for the `with` block."""
    key = lock_file.resolve()
    if _held.get(key):
        _held[key] += 1
        try:
            yield
        finally:
            _held[key] -= 1
        return
    try:
        key.parent.mkdir(parents=True, exist_ok=True)
        handle = open(key, "a")  # noqa: SIM115 (closed below, after the unlock)
    except OSError:
        # A read-only folder (a zoo on a shared read-only store): nobody can build there, so there
        # is nothing to serialise; a builder that finds its work up to date then writes nothing.
        yield
        return
    with handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        _held[key] = 1
        try:
            yield
        finally:
            del _held[key]
            fcntl.flock(handle, fcntl.LOCK_UN)
