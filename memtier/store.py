"""The STORE tier: read an expert's checkpoint from disk.

Two jobs, kept apart on purpose. `checkpoint_info` reads headers only, so the config can size
every expert (and reject one that can never fit a socket) without touching weights.
`read_weights` returns name -> array, memory-mapped for safetensors, so the only copy made on a
DDR miss is the one into the node's object store; no model is built here.
"""

from __future__ import annotations

import json
import struct
from collections import Counter
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel, Field

from memtier.weights import SAFETENSORS_DTYPES, ExpertWeights

CheckpointFormat = Literal["safetensors", "hf_dir", "gguf"]


class CheckpointError(ValueError):
    """A checkpoint path that does not exist or holds no weights we can read."""


class CheckpointInfo(BaseModel):
    """What the headers say about a checkpoint; costs no weight reads."""

    path: str
    format: CheckpointFormat
    files: list[str] = Field(description="Weight files, in the order they are read.")
    size_bytes: int = Field(description="Sum of tensor bytes as stored (what DDR and HBM will hold).")
    dtype: str = Field(description="The dtype holding most bytes, e.g. 'bfloat16' or 'gguf:Q4_1'.")
    tensor_count: int
    metadata: dict[str, str] = Field(default_factory=dict)


def _safetensors_header(path: Path) -> tuple[dict, int]:
    """Return (header JSON, byte offset where tensor data starts)."""
    with path.open("rb") as fh:
        raw_len = fh.read(8)
        if len(raw_len) != 8:
            raise CheckpointError(f"{path}: too short to be a safetensors file")
        (header_len,) = struct.unpack("<Q", raw_len)
        header = json.loads(fh.read(header_len))
    return header, 8 + header_len


def _weight_files(path: Path) -> tuple[CheckpointFormat, list[Path]]:
    if not path.exists():
        raise CheckpointError(f"checkpoint not found: {path}")
    if path.is_file():
        if path.suffix == ".safetensors":
            return "safetensors", [path]
        if path.suffix == ".gguf":
            return "gguf", [path]
        raise CheckpointError(f"{path}: unknown checkpoint file type (want .safetensors or .gguf)")
    index = path / "model.safetensors.index.json"
    if index.exists():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        return "hf_dir", [path / shard for shard in shards]
    shards = sorted(path.glob("*.safetensors"))
    if shards:
        return "hf_dir", shards
    ggufs = sorted(path.glob("*.gguf"))
    if len(ggufs) == 1:
        return "gguf", ggufs
    raise CheckpointError(f"{path}: no *.safetensors (or single *.gguf) weights in this directory")


def checkpoint_info(path: str | Path) -> CheckpointInfo:
    """Size, dtype and tensor count of a checkpoint, from headers alone."""
    path = Path(path)
    fmt, files = _weight_files(path)
    bytes_by_dtype: Counter[str] = Counter()
    metadata: dict[str, str] = {}
    count = 0
    if fmt == "gguf":
        from gguf import GGUFReader  # memory-maps; tensor infos come from the header

        reader = GGUFReader(str(files[0]))
        for tensor in reader.tensors:
            bytes_by_dtype[f"gguf:{tensor.tensor_type.name}"] += int(tensor.n_bytes)
            count += 1
    else:
        for file in files:
            header, _ = _safetensors_header(file)
            metadata.update(header.pop("__metadata__", None) or {})
            for entry in header.values():
                start, end = entry["data_offsets"]
                code = entry["dtype"]
                bytes_by_dtype[SAFETENSORS_DTYPES[code][1] if code in SAFETENSORS_DTYPES else code] += (
                    end - start
                )
                count += 1
    if count == 0:
        raise CheckpointError(f"{path}: checkpoint holds no tensors")
    return CheckpointInfo(
        path=str(path),
        format=fmt,
        files=[str(f) for f in files],
        size_bytes=sum(bytes_by_dtype.values()),
        dtype=bytes_by_dtype.most_common(1)[0][0],
        tensor_count=count,
        metadata=metadata,
    )


def _read_safetensors(file: Path, arrays: dict[str, np.ndarray], dtypes: dict[str, str]) -> None:
    header, data_start = _safetensors_header(file)
    header.pop("__metadata__", None)
    mapped = np.memmap(file, dtype=np.uint8, mode="r")
    for name, entry in header.items():
        if entry["dtype"] not in SAFETENSORS_DTYPES:
            raise CheckpointError(f"{file}: tensor {name} has unsupported dtype {entry['dtype']}")
        np_dtype, torch_dtype = SAFETENSORS_DTYPES[entry["dtype"]]
        start, end = entry["data_offsets"]
        arrays[name] = mapped[data_start + start : data_start + end].view(np_dtype).reshape(entry["shape"])
        dtypes[name] = torch_dtype


def _read_gguf(file: Path) -> ExpertWeights:
    """GGUF is quantised: dequantise with transformers' own loader, under Hugging Face names.

    The loader needs a model to map tensor names; an empty (meta-device) skeleton gives it one
    without allocating weights.
    """
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModelForCausalLM
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

    from memtier.weights import from_state_dict

    config_fields = load_gguf_checkpoint(str(file), return_tensors=False)["config"]
    with init_empty_weights():
        skeleton = AutoModelForCausalLM.from_config(AutoConfig.for_model(**config_fields))
    loaded = load_gguf_checkpoint(str(file), return_tensors=True, model_to_load=skeleton)
    return from_state_dict(dict(loaded["tensors"]))


def model_config_dict(path: str | Path) -> dict | None:
    """The checkpoint's `config.json` as a dict (None if it has none).

    It travels with the weights into DDR, so sockets need no STORE access to build the model; a
    socket that can read it anyway pre-builds its skeletons from it at start (`Materializer.warm`).
    """
    path = Path(path)
    config_file = (path if path.is_dir() else path.parent) / "config.json"
    return json.loads(config_file.read_text()) if config_file.exists() else None


def read_weights(path: str | Path) -> ExpertWeights:
    """All of an expert's tensors as name -> array; safetensors are memory-mapped, not read."""
    path = Path(path)
    fmt, files = _weight_files(path)
    if fmt == "gguf":
        return _read_gguf(files[0])
    arrays: dict[str, np.ndarray] = {}
    dtypes: dict[str, str] = {}
    for file in files:
        _read_safetensors(file, arrays, dtypes)
    return ExpertWeights(arrays=arrays, torch_dtypes=dtypes)
