"""Generate the gRPC stubs from `deployments/coe.proto`: `python -m deployments.protogen [--force]`.

The stubs are build outputs, not source: committing them invites hand edits and a proto/stub
drift that only shows at runtime. `make install` runs this; `deployments.grpc_stubs` runs it
again on import, so a fresh clone (or a pod whose image skipped it) still works.

It writes `coe_pb2.py`, `coe_pb2.pyi` and `coe_pb2_grpc.py` next to the proto, compiled with the
repository root as the include path so the generated import reads `from deployments import
coe_pb2` (the path Serve's proxy imports `deployments.coe_pb2_grpc` by). A stamp holding the
proto's SHA-256 makes a second run a no-op; a hash rather than mtimes, because checkouts and
image builds rewrite mtimes.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import importlib
import importlib.resources
import os
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
ROOT = PACKAGE_DIR.parent
PROTO = PACKAGE_DIR / "coe.proto"
OUTPUTS = tuple(PACKAGE_DIR / name for name in ("coe_pb2.py", "coe_pb2.pyi", "coe_pb2_grpc.py"))
STAMP = PACKAGE_DIR / "coe_pb2.stamp"  # packaged with the stubs (pyproject package-data)
# Bump when the protoc arguments change, so existing stubs count as stale.
GENERATOR_VERSION = "1"


def proto_digest() -> str:
    """What the stubs were generated from: the proto's bytes and this generator's version."""
    return hashlib.sha256(PROTO.read_bytes() + GENERATOR_VERSION.encode()).hexdigest()


def is_stale() -> bool:
    if not all(path.exists() for path in OUTPUTS) or not STAMP.exists():
        return True
    return STAMP.read_text().strip() != proto_digest()


@contextlib.contextmanager
def _lock() -> Iterator[None]:
    """Serialise generation across processes (replicas and the proxy may import at once)."""
    key = hashlib.sha256(str(PACKAGE_DIR).encode()).hexdigest()[:16]
    with open(Path(tempfile.gettempdir()) / f"coe-protogen-{key}.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _protoc(out_dir: Path) -> None:
    try:
        from grpc_tools import protoc
    except ImportError as err:
        raise RuntimeError(
            "grpcio-tools is not installed, so the gRPC stubs cannot be generated: "
            "`pip install grpcio-tools`, then `python -m deployments.protogen`"
        ) from err
    well_known = importlib.resources.files("grpc_tools") / "_proto"
    args = [
        "grpc_tools.protoc",
        f"-I{ROOT}",
        f"-I{well_known}",
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        str(PROTO),
    ]
    if protoc.main(args) != 0:
        raise RuntimeError(f"protoc failed on {PROTO} (its message is above)")


def generate(*, force: bool = False) -> bool:
    """Write the stubs if missing or stale; True if it wrote them. Files are replaced atomically."""
    if not force and not is_stale():
        return False
    with _lock():
        if not force and not is_stale():  # another process generated them while we waited
            return False
        digest = proto_digest()
        with tempfile.TemporaryDirectory(prefix=".protogen-", dir=PACKAGE_DIR) as tmp:
            _protoc(Path(tmp))
            generated = Path(tmp) / PROTO.relative_to(ROOT).parent
            for target in OUTPUTS:  # same filesystem: each replace is atomic for concurrent readers
                os.replace(generated / target.name, target)
        STAMP.write_text(digest + "\n")
    importlib.invalidate_caches()  # the import system may have cached the folder without them
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m deployments.protogen", description="Generate the gRPC stubs from coe.proto."
    )
    parser.add_argument("--force", action="store_true", help="regenerate even if up to date")
    parser.add_argument("--check", action="store_true", help="exit 1 if the stubs are missing or stale")
    args = parser.parse_args(argv)
    if args.check:
        stale = is_stale()
        print("stale" if stale else "up to date")
        return int(stale)
    wrote = generate(force=args.force)
    print(f"{'generated' if wrote else 'up to date'}: {', '.join(p.name for p in OUTPUTS)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
