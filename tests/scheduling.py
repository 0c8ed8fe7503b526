"""How pytest-xdist splits the suite between workers (see `pytest_xdist_make_scheduler` in conftest)."""

from __future__ import annotations

import pytest
from xdist.scheduler import LoadFileScheduling


class PackageAsOneFileScheduling(LoadFileScheduling):
    """`--dist loadfile`, except that every module under `package` is one unit of work.

    A unit runs whole in one worker, in collection order: the package's modules then share its
    package-scoped fixtures (one Ray cluster and app), which pytest tears down after the package's
    last test, before that worker's next unit starts its own Ray.
    """

    def __init__(self, config: pytest.Config, log=None, *, package: str) -> None:
        super().__init__(config, log)
        self.package_prefix = package.rstrip("/") + "/"

    def _split_scope(self, nodeid: str) -> str:
        if nodeid.startswith(self.package_prefix):
            return self.package_prefix
        return super()._split_scope(nodeid)
