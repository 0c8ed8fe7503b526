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
SHARED_APP_PACKAGE = Path(__file__).parent / "tiny_app"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The tiny_app package first, its `disturbs_the_app` tests after the rest of it and its
    `replaces_the_app` tests at its end.

    First because it is the suite's largest unit of work (several minutes in one worker, see
    `pytest_xdist_make_scheduler`): a worker that drew it last would run alone at the end.
    """
    in_package = [item for item in items if item.path.is_relative_to(SHARED_APP_PACKAGE)]
    in_package.sort(key=_place_in_the_shared_app)  # stable: file order within each group
    items[:] = in_package + [item for item in items if not item.path.is_relative_to(SHARED_APP_PACKAGE)]


def _place_in_the_shared_app(item: pytest.Item) -> int:
    """0 for tests that need the app whole, 1 for those that kill part of it, 2 for those that
    replace it."""
    if item.get_closest_marker("replaces_the_app") is not None:
        return 2
    return 1 if item.get_closest_marker("disturbs_the_app") is not None else 0


@pytest.hookimpl(optionalhook=True)  # a hook of pytest-xdist, absent when it is not installed
def pytest_xdist_make_scheduler(config: pytest.Config, log):
    """`--dist loadfile`, with the tiny_app package as one unit: one worker runs all of it, back
    to back, so its package-scoped app starts once; every other module stays whole in one worker,
    so its module-scoped cluster starts once. (xdist's own `loadgroup` cannot do this under
    pytest 9, whose node ids ignore the group suffix xdist writes.)"""
    if config.getvalue("dist") != "loadfile":
        return None
    from tests.scheduling import PackageAsOneFileScheduling

    package = SHARED_APP_PACKAGE.relative_to(config.rootpath).as_posix()
    return PackageAsOneFileScheduling(config, log, package=package)


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
