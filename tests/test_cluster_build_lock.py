"""cluster/build_lock.py: a second process waits for the first builder; re-entrant in a process."""

from __future__ import annotations

import multiprocessing
import threading
from pathlib import Path

from cluster.build_lock import build_lock


def _hold(lock_file: str, held, release) -> None:
    with build_lock(Path(lock_file)):
        held.set()
        release.wait(60)


def test_a_second_process_waits_until_the_first_builder_is_done(tmp_path: Path) -> None:
    lock_file = tmp_path / "zoo" / ".build.lock"
    context = multiprocessing.get_context("spawn")
    held, release = context.Event(), context.Event()
    holder = context.Process(target=_hold, args=(str(lock_file), held, release))
    holder.start()
    try:
        assert held.wait(60)
        entered = threading.Event()

        def build() -> None:
            with build_lock(lock_file):
                entered.set()

        waiter = threading.Thread(target=build)
        waiter.start()
        assert not entered.wait(0.5)  # the other process holds it
        release.set()
        assert entered.wait(60)  # and it is ours once that one is done
        waiter.join(60)
    finally:
        release.set()
        holder.join(60)
    assert holder.exitcode == 0


def test_the_lock_is_reentrant_within_a_process_and_free_after(tmp_path: Path) -> None:
    lock_file = tmp_path / ".build.lock"
    with build_lock(lock_file):
        with build_lock(lock_file):  # a demo build converts the base under the same lock
            pass
    context = multiprocessing.get_context("spawn")
    held, release = context.Event(), context.Event()
    release.set()
    other = context.Process(target=_hold, args=(str(lock_file), held, release))
    other.start()
    other.join(60)
    assert held.is_set() and other.exitcode == 0  # released: another process takes it at once


def test_a_lock_file_that_cannot_be_created_takes_no_lock_and_the_block_still_runs(tmp_path: Path) -> None:
    """As in a read-only store (root, as in CI, may write anywhere: a file where the folder
    should be fails the same way)."""
    not_a_folder = tmp_path / "store"
    not_a_folder.write_text("a file")
    ran = []
    with build_lock(not_a_folder / ".build.lock"):
        ran.append(True)
    assert ran == [True] and not_a_folder.read_text() == "a file"
