"""Is a checkpoint in the OS page cache? `mincore(2)` over a read-only mapping of each file.

The baseline reloads experts with `from_pretrained`, so whether their files sit in the page cache
decides whether a miss costs a disk read or a memory copy. Comparisons warm every file first
(one sequential read) and record the resident fraction before each system starts, so no system
is measured against a colder disk than another.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import mmap
import os
from collections.abc import Iterable
from pathlib import Path

__all__ = ["resident_fraction", "warm"]

_PROT_READ, _MAP_SHARED = 0x1, 0x01
_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_libc.mmap.restype = ctypes.c_void_p
_libc.mmap.argtypes = [
    ctypes.c_void_p,
    ctypes.c_size_t,
    ctypes.c_int,
    ctypes.c_int,
    ctypes.c_int,
    ctypes.c_long,
]
_libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
_libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.POINTER(ctypes.c_ubyte)]
_MAP_FAILED = ctypes.c_void_p(-1).value


def _file_pages(path: Path) -> tuple[int, int]:
    """(resident pages, total pages) of one file; mapping it does not read it."""
    size = path.stat().st_size
    if size == 0:
        return 0, 0
    page = mmap.PAGESIZE
    pages = (size + page - 1) // page
    fd = os.open(path, os.O_RDONLY)
    try:
        addr = _libc.mmap(None, size, _PROT_READ, _MAP_SHARED, fd, 0)
        if addr in (None, _MAP_FAILED):
            raise OSError(ctypes.get_errno(), f"mmap failed for {path}")
        try:
            vec = (ctypes.c_ubyte * pages)()
            if _libc.mincore(addr, size, vec) != 0:
                raise OSError(ctypes.get_errno(), f"mincore failed for {path}")
            return sum(b & 1 for b in vec), pages
        finally:
            _libc.munmap(addr, size)
    finally:
        os.close(fd)


def _weight_files(paths: Iterable[Path]) -> list[Path]:
    files: list[Path] = []
    for path in paths:
        path = Path(path)
        files += sorted(path.glob("*.safetensors")) if path.is_dir() else [path]
    return files


def resident_fraction(paths: Iterable[Path]) -> float:
    """Fraction of the checkpoints' weight-file pages now in the page cache (1.0 = all warm)."""
    resident = total = 0
    for file in _weight_files(paths):
        r, t = _file_pages(file)
        resident, total = resident + r, total + t
    return resident / total if total else 0.0


def warm(paths: Iterable[Path], chunk_bytes: int = 8 * 2**20) -> None:
    """Read every weight file once, so the page cache holds them for every system alike."""
    for file in _weight_files(paths):
        with open(file, "rb", buffering=0) as fh:
            while fh.read(chunk_bytes):
                pass
