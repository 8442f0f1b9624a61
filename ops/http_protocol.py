"""Uvicorn's httptools protocol, answering the requests it refuses itself with problem+json.

Below the app, httptools refuses what it cannot parse (a request target above 64 KiB, a
control character in a header, not HTTP at all) and Uvicorn answers a bare ``text/plain``
400. Here the same limits as the app (``api.http``: 8,192 characters of path and query,
16 KiB of header fields) are enforced while parsing, before a large target or header is
buffered whole, and every refusal is ``application/problem+json`` with a stable code:
414 ``uri_too_long``, 431 ``headers_too_large``, 400 ``bad_request``.
"""

from __future__ import annotations

from typing import Any

from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from api.errors import PROBLEM, problem
from api.http import HEADER_BYTES_MAX, URI_CHARS_MAX
from api.jsonbytes import json_bytes

_REFUSALS = {
    400: ("bad_request", "Bad request", "the request is not valid HTTP/1.1"),
    414: ("uri_too_long", "URI too long", f"path and query above {URI_CHARS_MAX} characters"),
    431: ("headers_too_large", "Request header fields too large",
          f"header fields above {HEADER_BYTES_MAX} bytes in total"),
}


class _Refused(Exception):
    """Raised from a parser callback; httptools turns it into a parse error."""


class HubHttpProtocol(HttpToolsProtocol):
    """``HttpToolsProtocol`` with the hub's size limits and problem+json refusals."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._refusal = 400
        self._header_bytes = 0

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._refusal = 400
        self._header_bytes = 0

    def on_url(self, url: bytes) -> None:
        super().on_url(url)
        if len(self.url) > URI_CHARS_MAX:
            self._refusal = 414
            raise _Refused

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_bytes += len(name) + len(value)
        if self._header_bytes > HEADER_BYTES_MAX:
            self._refusal = 431
            raise _Refused
        super().on_header(name, value)

    def send_400_response(self, msg: str) -> None:
        status = self._refusal
        code, title, detail = _REFUSALS[status]
        body = json_bytes({**problem(status, code, title, detail), "request_id": None})
        content = [STATUS_LINE[status]]
        for name, value in self.server_state.default_headers:
            content.extend([name, b": ", value, b"\r\n"])
        content.extend([b"content-type: ", PROBLEM.encode(), b"\r\n",
                        b"content-length: ", str(len(body)).encode("ascii"), b"\r\n",
                        b"connection: close\r\n\r\n", body])
        self.transport.write(b"".join(content))
        self.transport.close()
