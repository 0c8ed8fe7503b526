"""API-key check for the ingress: `Authorization: Bearer <key>` (HTTP) or `authorization` metadata (gRPC).

The check takes the same time whichever key matches, or none does: the presented key and every
configured key are hashed to 32 bytes (so lengths leak nothing either) and compared with
`hmac.compare_digest`, over all keys, without stopping at a match. A caller is then named by the
index of its key ("key-0"): the key itself never reaches logs, metrics or rate-limit tables.
"""

from __future__ import annotations

import hashlib
import hmac

from deployments.errors import Unauthorized

_BEARER = "bearer "


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


class ApiKeyAuth:
    """The configured keys, as digests. `authenticate` returns the caller's name or raises 401."""

    def __init__(self, keys: list[str]) -> None:
        self._digests = [_digest(key) for key in keys]

    @property
    def enabled(self) -> bool:
        return bool(self._digests)

    def match(self, presented: str) -> int | None:
        """Index of the key equal to `presented`, comparing against every key in constant time."""
        digest = _digest(presented)
        found = -1
        for index, expected in enumerate(self._digests):
            equal = hmac.compare_digest(digest, expected)
            found = index if equal and found < 0 else found  # no early exit, no branch on the key
        return found if found >= 0 else None

    def authenticate(self, authorization: str | None, client: str) -> str:
        """The caller's name: `key-<i>` with auth on, the client address with auth off."""
        if not self.enabled:
            return f"client-{client}"
        if not authorization:
            raise Unauthorized(
                "no API key: send 'Authorization: Bearer <key>' (gRPC: 'authorization' metadata)"
            )
        scheme_ok = authorization[: len(_BEARER)].lower() == _BEARER
        index = self.match(authorization[len(_BEARER) :].strip() if scheme_ok else authorization.strip())
        if not scheme_ok or index is None:
            raise Unauthorized("the API key is not valid")  # never echo the key back
        return f"key-{index}"
