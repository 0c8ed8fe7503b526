"""Weights as plain arrays: the currency between STORE, DDR and HBM.

numpy has no bfloat16, so a bf16 tensor travels as a uint16 array plus the dtype name it must be
reinterpreted as on the socket (RAY-NOTES: `t.view(torch.uint16).numpy()` and back). Keeping the
arrays plain numpy is what lets `ray.put` store them once per node and lets sockets on that node
map them zero-copy.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import numpy as np
import torch

# safetensors dtype code -> (numpy storage dtype, torch dtype name)
SAFETENSORS_DTYPES: dict[str, tuple[np.dtype, str]] = {
    "BF16": (np.dtype(np.uint16), "bfloat16"),
    "F16": (np.dtype(np.float16), "float16"),
    "F32": (np.dtype(np.float32), "float32"),
    "F64": (np.dtype(np.float64), "float64"),
    "I64": (np.dtype(np.int64), "int64"),
    "I32": (np.dtype(np.int32), "int32"),
    "I16": (np.dtype(np.int16), "int16"),
    "I8": (np.dtype(np.int8), "int8"),
    "U8": (np.dtype(np.uint8), "uint8"),
    "BOOL": (np.dtype(np.bool_), "bool"),
}

# Torch dtypes numpy cannot hold directly, stored as a same-width integer view.
_VIEW_AS: dict[torch.dtype, torch.dtype] = {torch.bfloat16: torch.uint16}


@dataclass(frozen=True)
class ExpertWeights:
    """An expert's tensors as name -> array, with the torch dtype each array stands for.

    `arrays` may be memory-mapped (read from STORE) or read-only object-store views (DDR);
    nobody writes to them.
    """

    arrays: dict[str, np.ndarray]
    torch_dtypes: dict[str, str] = field(default_factory=dict)

    @property
    def size_bytes(self) -> int:
        return sum(int(a.nbytes) for a in self.arrays.values())

    def torch_dtype_of(self, name: str) -> torch.dtype:
        return getattr(torch, self.torch_dtypes.get(name, str(self.arrays[name].dtype)))


def from_state_dict(state_dict: dict[str, torch.Tensor]) -> ExpertWeights:
    """Turn torch tensors into arrays (bf16 as uint16 views) without copying contiguous data."""
    arrays: dict[str, np.ndarray] = {}
    dtypes: dict[str, str] = {}
    for name, tensor in state_dict.items():
        tensor = tensor.detach().cpu().contiguous()
        storage_dtype = _VIEW_AS.get(tensor.dtype)
        arrays[name] = (tensor.view(storage_dtype) if storage_dtype else tensor).numpy()
        dtypes[name] = str(tensor.dtype).removeprefix("torch.")
    return ExpertWeights(arrays=arrays, torch_dtypes=dtypes)


def as_tensor(weights: ExpertWeights, name: str) -> torch.Tensor:
    """A CPU tensor sharing memory with the array (zero-copy), reinterpreted to its torch dtype."""
    array = weights.arrays[name]
    with warnings.catch_warnings():
        # Object-store arrays are read-only; inference never writes weights, so the warning is noise.
        warnings.simplefilter("ignore", UserWarning)
        tensor = torch.from_numpy(array)
    target = weights.torch_dtype_of(name)
    return tensor.view(target) if tensor.dtype != target else tensor
