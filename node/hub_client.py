"""A small HTTP client for the hub (stdlib only), used by the node agent and by tests.

Problem responses become ``HubError`` carrying the hub's stable ``code``. Everything read
from the hub is bounded like the hub bounds what it reads: at most ``RESPONSE_BYTES_MAX``
bytes and 64 levels of JSON (``domain.model.json_input``: a deeper document would overflow
the C stack of the standard parser), else ``HubError`` ``hub_bad_response``.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
import uuid
from typing import Any

from domain.model.errors import MarketError
from domain.model.json_input import loads_bounded
from domain.model.keys import SigningKey
from domain.model.tokens import encode_device_jwt


class HubError(MarketError):
    """Raised when the hub answers with a problem (its code and members are kept) or cannot be
    reached (status 0, ``hub_unreachable``)."""

    code = "hub_error"

    def __init__(self, status: int, code: str, detail: str, problem: dict[str, Any] | None = None) -> None:
        super().__init__(f"hub answered {status} {code}: {detail}")
        self.status = status
        self.code = code
        self.problem = problem or {}


class HubClient:
    def __init__(self, base_url: str, timeout_s: float = 30.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout_s = timeout_s

    def request(self, method: str, path: str, body: Any = None, *, bearer: str | None = None,
                headers: dict[str, str] | None = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.base_url + path, data=data, method=method)  # noqa: S310 - http(s) only
        req.add_header("Accept", "application/json")
        if data is not None:
            req.add_header("Content-Type", "application/json")
        if bearer:
            req.add_header("Authorization", f"Bearer {bearer}")
        for name, value in (headers or {}).items():
            req.add_header(name, value)
        try:
            with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:  # noqa: S310
                raw = _read(resp)
        except urllib.error.HTTPError as exc:
            try:
                problem = _parse(_read(exc))
            except HubError:
                problem = None
            if not isinstance(problem, dict):
                problem = {}
            code, detail = problem.get("code"), problem.get("detail")
            raise HubError(exc.code, code if isinstance(code, str) else "http_error",
                           detail if isinstance(detail, str) else str(exc.reason), problem) from None
        except (urllib.error.URLError, OSError) as exc:
            raise HubError(0, "hub_unreachable", f"cannot reach {self.base_url}: {exc}") from None
        return _parse(raw) if raw else None


RESPONSE_BYTES_MAX = 16 * 1024 * 1024


def _read(resp: Any) -> bytes:
    raw: bytes = resp.read(RESPONSE_BYTES_MAX + 1)
    if len(raw) > RESPONSE_BYTES_MAX:
        raise HubError(0, "hub_bad_response", f"hub answered more than {RESPONSE_BYTES_MAX} bytes")
    return raw


def _parse(raw: bytes) -> Any:
    try:
        return loads_bounded(raw)
    except MarketError as exc:
        raise HubError(0, "hub_bad_response", f"hub answered unreadable JSON: {exc.detail}") from None


def device_token(key: SigningKey, *, device_id: str, hub_url: str, now_s: int, ttl_s: int = 120) -> str:
    """A fresh EdDSA device token (new jti each time) for one request to the hub."""
    return encode_device_jwt(key.export_seed(), kid=key.key_id, device_id=device_id, audience=hub_url,
                             iat_s=now_s, jti=uuid.uuid4().hex, ttl_s=ttl_s)
