"""The STORE reader: sizes from headers, memory-mapped reads, GGUF."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from cluster import zoo
from memtier.store import CheckpointError, checkpoint_info, read_weights
from memtier.weights import as_tensor, from_state_dict


def test_size_from_headers_matches_sum_of_tensor_bytes(tiny_zoo):
    for path in tiny_zoo[:4]:
        info = checkpoint_info(path)
        tensors = load_file(str(path / "model.safetensors"))
        assert info.size_bytes == sum(t.numel() * t.element_size() for t in tensors.values())
        assert info.tensor_count == len(tensors)
        assert info.dtype == "bfloat16" and info.format == "hf_dir"


def test_read_weights_is_memory_mapped_and_bit_exact(tiny_zoo):
    path = tiny_zoo[1]
    weights = read_weights(path)
    reference = load_file(str(path / "model.safetensors"))
    assert set(weights.arrays) == set(reference)
    for name, array in weights.arrays.items():
        # A memmap view: no private copy of the weights was made.
        assert isinstance(array.base, np.memmap) or isinstance(array, np.memmap)
        assert torch.equal(as_tensor(weights, name), reference[name])
    assert weights.size_bytes == checkpoint_info(path).size_bytes


def test_sharded_directory_reads_every_shard(tmp_path):
    shard_a = {"a": torch.arange(6, dtype=torch.float32).reshape(2, 3)}
    shard_b = {"b": torch.ones(4, dtype=torch.bfloat16)}
    save_file(shard_a, str(tmp_path / "model-00001-of-00002.safetensors"))
    save_file(shard_b, str(tmp_path / "model-00002-of-00002.safetensors"))
    index = {"weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    info = checkpoint_info(tmp_path)
    assert info.size_bytes == 6 * 4 + 4 * 2 and info.tensor_count == 2
    weights = read_weights(tmp_path)
    assert torch.equal(as_tensor(weights, "a"), shard_a["a"])
    assert as_tensor(weights, "b").dtype == torch.bfloat16


def test_single_safetensors_file_and_round_trip_through_state_dict(tmp_path):
    state = {"w": torch.randn(3, 5).to(torch.bfloat16), "i": torch.arange(4)}
    save_file(state, str(tmp_path / "x.safetensors"))
    weights = read_weights(tmp_path / "x.safetensors")
    again = from_state_dict({name: as_tensor(weights, name) for name in weights.arrays})
    for name, tensor in state.items():
        assert torch.equal(as_tensor(again, name), tensor)


def test_gguf_header_and_dequantised_read():
    path = zoo.gguf_path()
    info = checkpoint_info(path)
    assert info.format == "gguf" and info.dtype.startswith("gguf:")
    assert 50_000_000 < info.size_bytes < path.stat().st_size
    weights = read_weights(path)
    assert "model.embed_tokens.weight" in weights.arrays
    assert weights.arrays["model.embed_tokens.weight"].shape == (49152, 576)


@pytest.mark.parametrize("make", ["missing", "empty_dir", "wrong_suffix"])
def test_unreadable_checkpoints_raise_checkpoint_error(tmp_path, make):
    target = tmp_path / "ckpt"
    if make == "empty_dir":
        target.mkdir()
    elif make == "wrong_suffix":
        target = tmp_path / "weights.bin"
        target.write_bytes(b"0" * 16)
    with pytest.raises(CheckpointError, match=str(target.name)):
        checkpoint_info(target)
