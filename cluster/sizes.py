"""Byte sizes written the way people write them ("512MiB", "2GiB", "1.5GB", 1048576).

Budgets are compared against checkpoint sizes in bytes, so every size in a config becomes one
integer as it is loaded; nothing downstream parses strings.
"""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import BeforeValidator, PlainSerializer

_UNITS = {
    "": 1,
    "b": 1,
    "kb": 10**3,
    "mb": 10**6,
    "gb": 10**9,
    "tb": 10**12,
    "kib": 2**10,
    "mib": 2**20,
    "gib": 2**30,
    "tib": 2**40,
}
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$")


def parse_size(value: object) -> int:
    """Return `value` in bytes; accepts ints and strings like "512MiB", "2 GiB", "1.5GB"."""
    if isinstance(value, bool):
        raise ValueError(f"size must be a number of bytes or a string like '512MiB', got {value!r}")
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"size must not be negative, got {value}")
        return value
    if isinstance(value, float) and value.is_integer() and value >= 0:
        return int(value)
    if isinstance(value, str):
        match = _SIZE_RE.match(value)
        if match and match.group(2).lower() in _UNITS:
            return int(float(match.group(1)) * _UNITS[match.group(2).lower()])
    raise ValueError(
        f"cannot read {value!r} as a size: use bytes (1048576) or a number with a unit "
        f"(KiB, MiB, GiB, TiB, KB, MB, GB, TB), e.g. '512MiB'"
    )


def format_size(num_bytes: int) -> str:
    """Human-readable binary size for messages and tables, e.g. 283115520 -> '270.0MiB'."""
    for unit, scale in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if num_bytes >= scale:
            return f"{num_bytes / scale:.1f}{unit}"
    return f"{num_bytes}B"


ByteSize = Annotated[int, BeforeValidator(parse_size), PlainSerializer(lambda v: v, return_type=int)]
