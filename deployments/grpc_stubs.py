"""The generated gRPC modules, generated first when missing or stale.

Import stubs from here, not from `deployments.coe_pb2*` directly: this import runs
`deployments.protogen` when needed, so a fresh clone works before `make install`, and a proto
edit takes effect without a manual step. Where the package folder is read-only (an installed
image), generation must have happened at build time; stale stubs are then used with a warning.
"""

from __future__ import annotations

import logging

from deployments import protogen

logger = logging.getLogger(__name__)

try:
    protogen.generate()
except (OSError, RuntimeError) as err:
    if not all(path.exists() for path in protogen.OUTPUTS):
        raise ImportError(
            f"the gRPC stubs are missing and could not be generated ({err}); "
            "run `python -m deployments.protogen` where the package folder is writable"
        ) from err
    logger.warning("gRPC stubs may be stale (%s); using the ones on disk", err)

from deployments import coe_pb2, coe_pb2_grpc  # noqa: E402  (generated just above)

__all__ = ["coe_pb2", "coe_pb2_grpc"]
