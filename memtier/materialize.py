"""HBM materialisation: turn DDR arrays into a runnable model on a socket's device.

The skeleton is built without allocating weights (`accelerate.init_empty_weights`, meta
device) and filled with `load_state_dict(assign=True)`, so activation costs the bytes and not
an initialisation. Skeletons are pooled per architecture: RAY-NOTES measured that on CPU the
skeleton (80 ms), not the bytes (6 ms for 269 MB zero-copy), dominates a switch.

- CPU: parameters are zero-copy views of the node's object store (DDR and HBM share memory).
- CUDA: each tensor is staged through one pinned host buffer (allocated once, grown as needed)
  and copied host-to-device with `non_blocking=True` on a side stream; eviction drops the device
  tensors (weights are read-only, nothing is copied back).
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass

import torch

from memtier.weights import ExpertWeights, as_tensor

_ALIGN_BYTES = 256  # keeps every staged tensor aligned for any dtype view


@dataclass
class Materialized:
    expert: str
    model: torch.nn.Module
    size_bytes: int
    config_key: str


def _drop_parameters(model: torch.nn.Module) -> None:
    """Replace every parameter with a meta tensor (frees the weights, keeps buffers such as
    rotary `inv_freq`), so the skeleton can be refilled by the next expert of its architecture."""
    for module in model.modules():
        for name, param in list(module._parameters.items()):
            if param is not None:
                module._parameters[name] = torch.nn.Parameter(
                    torch.empty(param.shape, dtype=param.dtype, device="meta"), requires_grad=False
                )


class Materializer:
    """Builds experts on one device; one per socket."""

    def __init__(self, device: str = "cpu", *, pool_per_architecture: int = 2) -> None:
        self.device = torch.device(device)
        self.pool_per_architecture = pool_per_architecture
        self._pool: dict[str, list[torch.nn.Module]] = {}
        self._staging: torch.Tensor | None = None
        self._stream = torch.cuda.Stream(self.device) if self.device.type == "cuda" else None
        self._lock = threading.Lock()  # one staging buffer: activations on a socket are serial

    @staticmethod
    def _key(config_dict: dict, dtype: torch.dtype) -> str:
        return json.dumps({"config": config_dict, "dtype": str(dtype)}, sort_keys=True)

    def _skeleton(self, config_dict: dict, dtype: torch.dtype) -> tuple[torch.nn.Module, str]:
        key = self._key(config_dict, dtype)
        pool = self._pool.get(key)
        if pool:
            return pool.pop(), key
        return self._build(config_dict, dtype), key

    @staticmethod
    def _build(config_dict: dict, dtype: torch.dtype) -> torch.nn.Module:
        from accelerate import init_empty_weights
        from transformers import AutoConfig, AutoModelForCausalLM

        fields = dict(config_dict)
        model_type = fields.pop("model_type")
        config = AutoConfig.for_model(model_type, **fields)
        with init_empty_weights():
            model = AutoModelForCausalLM.from_config(config, dtype=dtype)
        return model.eval()

    def warm(self, config_dict: dict, dtype: torch.dtype = torch.bfloat16) -> bool:
        """Pool one skeleton of this architecture ahead of the first page-in; True if one was built.

        Traced on `make serve`: a socket's first page-in spent ~4 s of its switch building the
        first skeleton (transformers' lazy model imports plus the module tree) against ~0.02 s
        with a pooled one. Sockets call this at start, off the request path.
        """
        key = self._key(config_dict, dtype)
        with self._lock:
            if self._pool.get(key):
                return False
            model = self._build(config_dict, dtype)
            self._pool.setdefault(key, []).append(model)
            return True

    def _staging_buffer(self, num_bytes: int) -> torch.Tensor:
        if self._staging is None or self._staging.numel() < num_bytes:
            # Pinning is slow (RAY-NOTES): grow rarely, reuse always.
            self._staging = torch.empty(num_bytes, dtype=torch.uint8, pin_memory=True)
        return self._staging

    def _to_device(self, weights: ExpertWeights, dtype: torch.dtype) -> dict[str, torch.Tensor]:
        tensors = {name: as_tensor(weights, name) for name in weights.arrays}
        tensors = {
            name: t if t.dtype == dtype or not t.is_floating_point() else t.to(dtype)
            for name, t in tensors.items()
        }
        if self.device.type == "cpu":
            return tensors
        total = sum(-(-t.nbytes // _ALIGN_BYTES) * _ALIGN_BYTES for t in tensors.values())
        staging = self._staging_buffer(total)
        out: dict[str, torch.Tensor] = {}
        offset = 0
        with torch.cuda.stream(self._stream):
            for name, tensor in tensors.items():
                # pageable object store -> pinned staging (CPU memcpy), then async H2D; the next
                # tensor's memcpy overlaps this tensor's DMA.
                slot = staging[offset : offset + tensor.nbytes].view(tensor.dtype).view(tensor.shape)
                slot.copy_(tensor)
                out[name] = slot.to(self.device, non_blocking=True)
                offset += -(-tensor.nbytes // _ALIGN_BYTES) * _ALIGN_BYTES
        self._stream.synchronize()
        return out

    def materialize(
        self, expert: str, weights: ExpertWeights, config_dict: dict, dtype: torch.dtype = torch.bfloat16
    ) -> Materialized:
        with self._lock:
            model, key = self._skeleton(config_dict, dtype)
            tensors = self._to_device(weights, dtype)
            missing, unexpected = model.load_state_dict(tensors, strict=False, assign=True)
            if unexpected:
                raise ValueError(f"{expert}: checkpoint has tensors the model lacks: {unexpected[:5]}")
            tied = {"lm_head.weight"} if getattr(model.config, "tie_word_embeddings", False) else set()
            if set(missing) - tied:
                raise ValueError(f"{expert}: checkpoint lacks tensors: {sorted(set(missing) - tied)[:5]}")
            model.tie_weights()
            if self.device.type != "cpu":
                model.to(self.device)  # buffers (rotary tables) follow the weights
            for param in model.parameters():
                param.requires_grad_(False)
            return Materialized(expert, model, weights.size_bytes, key)

    def free(self, materialized: Materialized) -> None:
        """Drop the expert's weights; keep its skeleton for the next expert of that architecture."""
        model = materialized.model
        _drop_parameters(model)
        pool = self._pool.setdefault(materialized.config_key, [])
        if len(pool) < self.pool_per_architecture:
            pool.append(model)
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
