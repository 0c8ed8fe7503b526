"""Where the API keys come from: `COE_API_KEY` (or `security.api_key_env`) and `security.api_keys_file`.

It lives in `cluster/` because two sides need the same answer: the ingress replica, which checks
keys (deployments/auth.py), and `coe up`, whose banner says whether the server is open. Both read
the environment of their own process; on a local cluster the replica inherits the driver's.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path

from cluster.config import SecurityConfig

_SEPARATORS = re.compile(r"[,\s]+")


class ApiKeyConfigError(ValueError):
    """The keys are configured but unusable: refuse to start rather than serve everyone."""


def _split(text: str) -> list[str]:
    return [key for key in _SEPARATORS.split(text) if key]


def load_api_keys(security: SecurityConfig, environ: Mapping[str, str] | None = None) -> list[str]:
    """Every configured key, in order, without duplicates; [] means auth is off.

    A variable that is set but holds no key, or a key file that is missing or empty, is an
    error: it almost always means a Secret that did not arrive, not a wish to run open.
    """
    environ = os.environ if environ is None else environ
    keys: list[str] = []
    raw = environ.get(security.api_key_env)
    if raw is not None:
        found = _split(raw)
        if not found:
            raise ApiKeyConfigError(
                f"{security.api_key_env} is set but holds no key; set it to one key or a comma-separated "
                f"list, or unset it to serve without auth"
            )
        keys += found
    if security.api_keys_file:
        path = Path(security.api_keys_file).expanduser()
        try:
            found = _split(path.read_text())
        except OSError as err:
            raise ApiKeyConfigError(f"security.api_keys_file: cannot read {path}: {err}") from None
        if not found:
            raise ApiKeyConfigError(f"security.api_keys_file: {path} holds no key")
        keys += found
    if not keys and security.require_api_key:
        raise ApiKeyConfigError(
            f"security.require_api_key is true but no key is configured: set {security.api_key_env} "
            f"(in Kubernetes, create the coe-api-key Secret: k8s/README.md) or security.api_keys_file"
        )
    return list(dict.fromkeys(keys))


def auth_banner(security: SecurityConfig, environ: Mapping[str, str] | None = None) -> str:
    """One line for `coe up`: whether a client needs a key, and how to turn auth on if not."""
    keys = load_api_keys(security, environ)
    if keys:
        return (
            f"API keys: ON ({len(keys)} key{'s' if len(keys) > 1 else ''}); send "
            f"'Authorization: Bearer <key>' on /v1/* (gRPC: 'authorization' metadata). "
            f"/healthz and /metrics stay open."
        )
    return (
        f"API keys: OFF. Anyone who reaches the HTTP and gRPC ports can use every expert; "
        f"set {security.api_key_env}=<key>[,<key>...] to require a key."
    )
