"""Every validation error names the offending field or expert."""

from __future__ import annotations

import copy

import pytest
import yaml
from pydantic import ValidationError

from cluster.config import config_from_dict, load_config
from tests.conftest import CONFIGS


@pytest.fixture()
def tiny_dict(tiny_zoo) -> dict:
    return yaml.safe_load((CONFIGS / "tiny.yaml").read_text())


def _error(data: dict) -> str:
    with pytest.raises(ValidationError) as info:
        config_from_dict(data)
    return str(info.value)


def test_shipped_configs_load_and_size_experts_from_headers(tiny_config, demo_zoo):
    assert tiny_config.topology.sockets_per_node == 2
    assert all(e.size_bytes > 1_000_000 for e in tiny_config.experts)
    assert tiny_config.experts[0].system_prompt == "You are tiny test expert 0."
    demo = load_config(CONFIGS / "demo.yaml")
    assert demo.topology.sockets_per_node == 8 and len(demo.experts) == 16
    sizes = {e.size_bytes for e in demo.experts}
    assert len(sizes) == 1
    # Fewer than all experts fit in the sockets at once; DDR holds them all.
    per_socket = demo.topology.hbm_per_socket // sizes.pop()
    assert per_socket * demo.topology.total_sockets < len(demo.experts)
    assert sum(e.size_bytes for e in demo.experts) <= demo.topology.ddr_per_node


def test_tiny_config_oversubscribes_hbm_about_twice(tiny_config):
    total_expert_bytes = sum(e.size_bytes for e in tiny_config.experts)
    assert 1.9 <= total_expert_bytes / tiny_config.topology.total_hbm_bytes <= 2.1


def test_sockets_per_node_defaults_to_eight(tiny_dict):
    del tiny_dict["topology"]["sockets_per_node"]
    tiny_dict["topology"]["hbm_per_socket"] = "1GiB"
    assert config_from_dict(tiny_dict).topology.sockets_per_node == 8


def test_sizes_accept_units(tiny_dict):
    tiny_dict["topology"]["ddr_per_node"] = "2GiB"
    assert config_from_dict(tiny_dict).topology.ddr_per_node == 2 * 2**30


def test_duplicate_expert_ids_are_named(tiny_dict):
    tiny_dict["experts"].append(copy.deepcopy(tiny_dict["experts"][3]))
    message = _error(tiny_dict)
    assert "duplicate expert id 'tiny-03'" in message and "experts" in message


def test_missing_checkpoint_names_expert_and_field(tiny_dict):
    tiny_dict["experts"][2]["checkpoint"] = "tiny/does-not-exist"
    message = _error(tiny_dict)
    assert "experts[tiny-02].checkpoint" in message and "does-not-exist" in message


def test_expert_larger_than_a_socket_is_rejected_by_name(tiny_dict, tiny_config):
    sizes = {e.id: e.size_bytes for e in tiny_config.experts}
    smallest = min(sizes.values())
    kv_bytes = tiny_config.topology.kv_cache_per_socket
    # Weights room = the smallest expert: every larger one must be refused, by name.
    tiny_dict["topology"].update(hbm_per_socket=smallest + kv_bytes, sockets_per_node=4)
    message = _error(tiny_dict)
    named = [e for e in sizes if f"experts[{e}]" in message]
    assert len(named) == 1 and sizes[named[0]] > smallest
    assert "hbm_per_socket" in message and "kv_cache_per_socket" in message and "invariant 4" in message


def test_kv_cache_reserve_must_leave_room_for_weights(tiny_dict):
    tiny_dict["topology"].update(hbm_per_socket="1MiB", kv_cache_per_socket="1MiB")
    message = _error(tiny_dict)
    assert "topology.kv_cache_per_socket" in message and "smaller than hbm_per_socket" in message


def test_total_hbm_below_largest_expert_is_rejected(tiny_dict):
    tiny_dict["topology"].update(nodes=1, sockets_per_node=1, hbm_per_socket="1MiB")
    message = _error(tiny_dict)
    assert "total HBM" in message and "tiny-" in message


def test_unknown_device_names_the_field(tiny_dict):
    tiny_dict["topology"]["device"] = "tpu"
    message = _error(tiny_dict)
    assert "topology.device" in message and "'cpu' or 'cuda'" in message


def test_unknown_keys_are_refused(tiny_dict):
    tiny_dict["topology"]["hbm_per_sockets"] = "1GiB"
    assert "topology.hbm_per_sockets" in _error(tiny_dict)


def test_router_must_name_known_experts(tiny_dict):
    tiny_dict["router"]["fallback_expert"] = "nobody"
    assert "router.fallback_expert" in _error(tiny_dict)
    tiny_dict["router"]["fallback_expert"] = "tiny-07"
    tiny_dict["router"]["category_map"]["math"] = "ghost"
    assert "router.category_map[math]" in _error(tiny_dict)


def test_bad_size_names_the_field(tiny_dict):
    tiny_dict["topology"]["ddr_per_node"] = "lots"
    message = _error(tiny_dict)
    assert "topology.ddr_per_node" in message and "'lots'" in message


def test_relative_checkpoints_resolve_under_store_root(tiny_dict, zoo_root, tmp_path):
    config = config_from_dict(tiny_dict)
    assert config.checkpoint_path(config.experts[0]) == zoo_root / "tiny" / "tiny-00"
    tiny_dict["store_root"] = str(tmp_path)
    assert "experts[tiny-00].checkpoint" in _error(tiny_dict)


def test_size_defaults_are_bytes_too(tiny_dict):
    del tiny_dict["limits"]["max_body_bytes"]
    assert config_from_dict(tiny_dict).limits.max_body_bytes == 2**20
