"""A compute worker process (``python -m node.compute.worker``): runs seller callables, one call at a time.

The node starts a pool of these and talks to each over its stdin and stdout; killing the process
is how a timed-out or cancelled call is really stopped. Messages, both ways:
``u32be(len(header)) || header || body`` framed by a leading ``u32be(total length)``, the header
being JSON:

* node → worker, first: ``{"op": "load", "assets": {listing_id: spec}}`` (no body), where a spec
  is ``node.compute.registry.ComputeAsset.worker_spec``; each entry point is imported now;
* node → worker: ``{"op": "call", "id": n, "asset": listing_id}``, body = the input JSON bytes;
* worker → node: ``{"id": n, "ok": true, "count": int | null}``, body = the output JSON bytes;
  or ``{"id": n, "ok": false, "error": code, "detail": text}``.

The worker checks the output against the output schema and its size limit, and reads the
``rows``/``tokens`` count at the metering pointer (in the input or the output). The seller's code
may print: file descriptor 1 is pointed at stderr, the protocol uses a private copy of it.
"""

from __future__ import annotations

import os
import struct
import sys
from typing import Any, BinaryIO

import orjson

_U32 = struct.Struct(">I")


def read_message(stream: BinaryIO) -> tuple[dict[str, Any], bytes] | None:
    head = stream.read(4)
    if len(head) < 4:
        return None
    (total,) = _U32.unpack(head)
    data = stream.read(total)
    if len(data) < total:
        return None
    (size,) = _U32.unpack_from(data)
    return orjson.loads(data[4 : 4 + size]), data[4 + size :]


def frame(header: dict[str, Any], body: bytes = b"") -> bytes:
    head = orjson.dumps(header)
    return _U32.pack(4 + len(head) + len(body)) + _U32.pack(len(head)) + head + body


class _Asset:
    def __init__(self, spec: dict[str, Any]) -> None:
        from domain.model.compute import count_at
        from node.compute.registry import load_entry_point, validator

        self.function = load_entry_point(spec["entry_point"])
        self.output = validator(spec["output_schema"])
        self.pointer, self.of, self.max_output = spec["pointer"], spec["of"], spec["max_output_bytes"]
        self.count_at = count_at

    def run(self, body: bytes) -> tuple[dict[str, Any], bytes]:
        value = orjson.loads(body)
        try:
            result = self.function(value)
        except Exception as exc:  # noqa: BLE001 - seller code: any failure is a failed (unbilled) call
            return {"ok": False, "error": "invoke_call_failed", "detail": f"{type(exc).__name__}: {exc}"[:256]}, b""
        try:
            output = orjson.dumps(result, option=orjson.OPT_SERIALIZE_NUMPY)
        except (TypeError, orjson.JSONEncodeError) as exc:
            return {"ok": False, "error": "invoke_output_invalid", "detail": f"output is not JSON: {exc}"[:256]}, b""
        if len(output) > self.max_output:
            return {"ok": False, "error": "invoke_output_invalid",
                    "detail": f"output of {len(output)} bytes is over the asset's {self.max_output}"}, b""
        parsed = orjson.loads(output)  # what the buyer will read, numpy types turned into JSON
        error = next(iter(self.output.iter_errors(parsed)), None)
        if error is not None:
            return {"ok": False, "error": "invoke_output_invalid", "detail": f"output schema: {error.message}"[:256]}, b""
        count = None
        if self.pointer is not None:
            try:
                count = self.count_at(value if self.of == "input" else parsed, self.pointer)
            except ValueError as exc:
                return {"ok": False, "error": "invoke_output_invalid", "detail": str(exc)[:256]}, b""
        return {"ok": True, "count": count}, output


def _die_with_parent() -> None:
    """Linux: SIGKILL this worker when the node that started it dies (even by SIGKILL), so a
    crashed node leaves no seller code running."""
    try:
        import ctypes
        import signal

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, int(signal.SIGKILL))  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def main() -> int:
    parent = os.getppid()
    _die_with_parent()
    if os.getppid() != parent:  # the node died before the line above took effect
        return 1
    protocol_out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # whatever the seller's code prints goes to stderr, never into the protocol
    sys.stdout = sys.stderr
    stdin = sys.stdin.buffer
    first = read_message(stdin)
    if first is None or first[0].get("op") != "load":
        return 2
    assets = {listing: _Asset(spec) for listing, spec in first[0]["assets"].items()}
    protocol_out.write(frame({"ready": True}))
    protocol_out.flush()
    while True:
        message = read_message(stdin)
        if message is None:
            return 0
        header, body = message
        asset = assets.get(header.get("asset"))
        if asset is None:
            reply, output = {"ok": False, "error": "invoke_not_served", "detail": "unknown asset"}, b""
        else:
            try:
                reply, output = asset.run(body)
            except ValueError as exc:  # the input was not JSON after all
                reply, output = {"ok": False, "error": "invoke_call_failed", "detail": str(exc)[:256]}, b""
        protocol_out.write(frame({"id": header.get("id"), **reply}, output))
        protocol_out.flush()


if __name__ == "__main__":
    raise SystemExit(main())
