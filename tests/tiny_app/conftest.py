"""One tiny-expert CoE app on a 2-node cluster, shared by every module in this package.

Why shared: starting a rig is ~20 processes that each import torch and transformers, 60-160 s of
a 2-core CI box's time apiece, and these modules each started the same one (same tiny config)
for tests that need only a serving app. The root conftest makes the package one pytest-xdist unit
of work, so that one worker runs all of it, back to back, and starts the app once.

What the modules must respect, sharing it: assert on deltas (metrics, hit counts), not on
totals since start; do not assume a cold cache unless the test pages its own experts; a test that
kills part of the app (Serve replaces it) carries `disturbs_the_app`, and one that swaps the app
away carries `replaces_the_app`: the root conftest runs the first after the rest, the second last.
"""

from __future__ import annotations

import warnings

import pytest

from tests.serving_rig import ServingRig
from tests.tiny_app import LONG_TOKENS


@pytest.fixture(scope="package")
def request_log(tmp_path_factory):
    return tmp_path_factory.mktemp("coe-requests") / "requests.jsonl"


@pytest.fixture(scope="package")
def rig(tiny_config, router_artifact, request_log):
    """The tiny config with the JSON request log on (test_serving_http reads it) and max_tokens up to
    LONG_TOKENS (test_serving_grpc's mid-stream cases)."""
    observability = tiny_config.observability.model_copy(update={"request_log_path": str(request_log)})
    limits = tiny_config.limits.model_copy(update={"max_tokens": LONG_TOKENS})
    rig = ServingRig(tiny_config.model_copy(update={"observability": observability, "limits": limits}))
    yield rig
    rig.close()


@pytest.fixture(scope="module", autouse=True)
def no_ray_left_behind():
    """Overrides the root conftest's per-module check: Ray stays up between this package's modules
    (the app is theirs to share); `ray_left_behind_by_the_package` checks at the package's end."""
    yield


@pytest.fixture(scope="package", autouse=True)
def ray_left_behind_by_the_package():
    yield
    import ray

    if ray.is_initialized():
        warnings.warn("the tiny_app package left Ray initialised; shut down after it", stacklevel=1)
        ray.shutdown()
