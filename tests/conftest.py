"""Shared fixtures: built zoos (idempotent, cached in the ignored zoo folder) and configs."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest

from cluster import zoo
from cluster.config import ClusterConfig, load_config
from cluster.paths import REPO_ROOT, zoo_dir

CONFIGS = REPO_ROOT / "cluster" / "configs"
TINY_EXPERTS = 16


@pytest.fixture(scope="session")
def zoo_root() -> Path:
    root = zoo_dir()
    root.mkdir(parents=True, exist_ok=True)
    return root


@pytest.fixture(scope="session")
def tiny_zoo(zoo_root: Path) -> list[Path]:
    """16 tiny random-weight experts, as `coe zoo --tiny 16` writes them."""
    return zoo.build_tiny(zoo_root, TINY_EXPERTS)


@pytest.fixture(scope="session")
def demo_zoo(zoo_root: Path) -> list[Path]:
    """The real SmolLM2 demo zoo (about 30 s the first time, then a no-op)."""
    return zoo.build_demo(zoo_root)


@pytest.fixture(scope="session")
def tiny_config(tiny_zoo: list[Path]) -> ClusterConfig:
    return load_config(CONFIGS / "tiny.yaml")


@pytest.fixture(scope="session")
def router_artifact(zoo_root: Path):
    """The demo router artifact (trained once into the zoo folder if missing)."""
    from router import load_router

    return load_router(None)


@pytest.fixture(scope="module", autouse=True)
def no_ray_left_behind():
    """Every module starts with no Ray session in this process. A module whose cluster fixture
    died half-way (after `ray.init`, before its teardown) would otherwise make every later Ray
    module in the same pytest worker fail with "ray.init twice", hiding the one real error."""
    yield
    import ray

    if ray.is_initialized():
        warnings.warn("a test module left Ray initialised; shut down after it", stacklevel=1)
        ray.shutdown()
