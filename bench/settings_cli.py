"""A bench whose knobs are one pydantic model gets its flags and its command line from that model.

Every field becomes `--field-name` with the field's default, and the command written beside the
results spells every setting out, so a result file says exactly how to reproduce it even after a
default changes.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import TypeVar

from pydantic import BaseModel

__all__ = ["parse_settings"]

S = TypeVar("S", bound=BaseModel)


def parse_settings(
    model: type[S], prog: str, description: str, argv: Sequence[str] | None, out: Path
) -> tuple[S, Path, str]:
    """(settings, --out folder, the full command line) from `argv`."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    for name, field in model.model_fields.items():
        parser.add_argument(f"--{name.replace('_', '-')}", type=type(field.default), default=field.default)
    parser.add_argument("--out", type=Path, default=out)
    args = parser.parse_args(argv)
    settings = model(**{name: getattr(args, name) for name in model.model_fields})
    flags = " ".join(f"--{k.replace('_', '-')} {v}" for k, v in settings.model_dump().items())
    return settings, args.out, f"{prog} {flags} --out {args.out}"
