"""bench.switch on one tiny expert: the report's shape, and what one run must show about the tiers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import ray

from bench.switch import TIERS, build_expert, ddr_maps_zero_copy, run_switch_bench, write_outputs
from memtier.ddr_store import DDRStore

TINY_BYTES = 4 * 10**6
REQUIRED_ROW_FIELDS = {"expert_bytes", "tier", "seconds", "gbps", "ratio_to_memcpy"}

pytestmark = pytest.mark.integration  # a private local Ray


@pytest.fixture(scope="module")
def tiny_expert(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_expert(tmp_path_factory.mktemp("switch-zoo"), TINY_BYTES)


@pytest.fixture(scope="module")
def local_ray():
    """One small private Ray for the module (run_switch_bench reuses a running one)."""
    ray.init(
        address="local",
        num_cpus=2,
        object_store_memory=128 * 2**20,
        include_dashboard=False,
        logging_level="warning",
        log_to_driver=False,
    )
    yield
    ray.shutdown()


def test_one_run_reports_every_tier_each_from_the_tier_it_names(local_ray, tiny_expert, tmp_path):
    # One repetition: no timing is compared here (that is the bench's job, in bench/results/).
    # `_time_tier` refuses a run whose STORE reads do not match its tier, so finishing proves that
    # store_cold read the STORE and every DDR tier did not.
    report = run_switch_bench([tiny_expert], repetitions=1, command="pytest", memcpy_bytes=16 * 2**20)
    write_outputs(report, tmp_path)

    data = json.loads((tmp_path / "switch.json").read_text())
    assert {"memcpy_gbps", "cold_store_gbps", "command", "machine", "rows"} <= set(data)
    assert data["memcpy_gbps"] > 0 and data["cold_store_gbps"] > 0 and data["command"] == "pytest"
    assert {"cpu_count", "torch_version", "device"} <= set(data["machine"])
    rows = {row["tier"]: row for row in data["rows"]}
    assert set(rows) == set(TIERS) and len(data["rows"]) == len(TIERS)
    for row in data["rows"]:
        assert REQUIRED_ROW_FIELDS <= set(row)
        assert row["expert_bytes"] > 0.9 * TINY_BYTES
        assert row["seconds"] > 0 and row["gbps"] > 0 and row["ratio_to_memcpy"] > 0
    for tier in ("ddr", "ddr_copy", "ddr_first", "store_cold"):  # each page-in says where its time went
        assert {"fetch", "map", "materialize"} <= set(rows[tier]["parts_s"]), tier
    # Two requests for one cold expert at once: the serving path read the STORE once.
    assert data["parallel"]["same_expert_store_reads"] == 1
    markdown = (tmp_path / "switch.md").read_text()
    assert "pytest" in markdown and "| store_cold |" in markdown


def test_a_ddr_hit_maps_the_object_store_zero_copy(local_ray, tiny_expert):
    store = DDRStore.remote(
        "zero-copy", ray.get_runtime_context().get_node_id(), 64 * 2**20, {tiny_expert.name: str(tiny_expert)}
    )
    try:
        assert ddr_maps_zero_copy(store, tiny_expert.name)
    finally:
        ray.kill(store)
