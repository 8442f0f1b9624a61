"""One metered session in the node's memory: counters, calls in flight, receipts and countersignatures.

The object is the authority while the node runs; its durable image is the store's row, written
by the same group commit that makes each receipt durable (``node.compute.store``). Everything
here runs on the event loop's thread, so the counters change one call at a time: a ``seq`` is
handed out when a call ends, in the order calls end.
"""

from __future__ import annotations

import secrets
from typing import Any

from domain.model.errors import (
    InvokeConcurrencyExceeded,
    InvokeCountersignatureInvalid,
    InvokeLimitReached,
    InvokeSessionClosed,
)
from domain.model.invoke import InvokeClaims, admit_call
from domain.model.invoke_receipts import (
    check_receipt_template,
    digest,
    encode,
    issue_receipt,
    verify_countersignature,
)
from domain.model.jcs import sha256_sri
from domain.model.keys import SigningKey, VerifyKey
from node.compute.registry import ComputeAsset
from node.compute.store import SessionRow, op_countersigned, op_receipt

RECENT_RECEIPTS = 4096


def nonce() -> str:
    return secrets.token_urlsafe(16)


class Session:
    """A session: its stored row, its token, its asset and the device key that signs for it."""

    def __init__(self, row: SessionRow, claims: InvokeClaims, asset: ComputeAsset, signer: SigningKey, *,
                 node_concurrency: int, max_bytes_in: int, max_bytes_out: int) -> None:
        self.row, self.claims, self.asset, self.signer = row, claims, asset, signer
        self.concurrency = min(claims.max_concurrency, node_concurrency)
        self.max_bytes_in, self.max_bytes_out = max_bytes_in, max_bytes_out
        self.in_flight: dict[int, int] = {}  # call id of the live connection -> amount reserved
        self.connection: Any = None  # the live connection, if any
        self.finalizing: str | None = None  # the reason, while the final receipt is being made
        self.broken = False  # a commit failed: memory may be ahead of disk, reload before use
        self._digests: dict[int, str] = {}
        c = claims
        self._price = c.unit_price_minor
        self._fixed = check_receipt_template({  # the fields no receipt of the session changes
            "invocation_id": c.sub, "jti": c.jti, "device_id": c.aud, "listing_id": c.listing_id,
            "listing_version": c.listing_version, "buyer_jkt": c.cnf_jkt, "unit": c.unit,
            "unit_price_minor": c.unit_price_minor, "currency": c.currency, "budget_minor": c.budget_minor})
        self._nonce_prefix = secrets.token_urlsafe(12) + "-"

    @property
    def open(self) -> bool:
        return self.row.state == "open" and not self.finalizing

    def state_message(self, last_seq: int) -> dict[str, Any]:
        """The ``state`` message a (re)connecting buyer gets: counters, and the latest receipt
        when the buyer holds an older one (a receipt it may have missed when a connection dropped)."""
        r = self.row
        latest = r.last_receipt if r.last_receipt is not None and r.seq > last_seq else None
        return {"seq": r.seq, "cumulative_units": r.cumulative_units, "cumulative_amount_minor": r.cumulative_minor,
                "countersigned_seq": r.countersigned_seq, "countersigned_amount_minor": r.countersigned_minor,
                "budget_minor": self.claims.budget_minor, "max_concurrency": self.concurrency, "metered": True,
                "receipt": latest}

    # -- admission ----------------------------------------------------------------------------
    def check_open(self) -> None:
        if self.open:
            return
        reason = self.finalizing or self.row.end_reason
        if reason == "budget":  # say what a call would need, as while it was open
            self._admit_rule(sum(self.in_flight.values()))
        raise InvokeSessionClosed(f"the session ended ({reason or 'closing'})")

    def _admit_rule(self, in_flight_minor: int) -> None:
        claims = self.claims
        admit_call(budget_minor=claims.budget_minor, billed_minor=self.row.cumulative_minor,
                   in_flight_minor=in_flight_minor, countersigned_minor=self.row.countersigned_minor,
                   call_max_minor=claims.call_max_minor, max_concurrency=claims.max_concurrency)

    def admit(self, call: int, input_bytes: int) -> None:
        """Reserve one call's most (raises a free refusal: closed, concurrency, bytes, budget,
        countersignature). The safety pre-check runs between :meth:`check_limits` and this."""
        self.check_open()
        self._admit_rule(sum(self.in_flight.values()))
        self.in_flight[call] = self.claims.call_max_minor

    def check_limits(self, input_bytes: int) -> None:
        self.check_open()
        if len(self.in_flight) >= self.concurrency:
            raise InvokeConcurrencyExceeded(f"{self.concurrency} calls are running; wait for one to end",
                                            max_concurrency=self.concurrency)
        if self.row.bytes_in + input_bytes > self.max_bytes_in:
            raise InvokeLimitReached(f"the session may take at most {self.max_bytes_in} input bytes")

    def count_input(self, input_bytes: int) -> None:
        self.row.bytes_in += input_bytes

    def exhausted(self) -> bool:
        """No further call could ever be admitted (the budget cannot cover one more)."""
        return self.row.cumulative_minor + self.claims.call_max_minor > self.claims.budget_minor

    # -- receipts -----------------------------------------------------------------------------
    def _counters(self) -> dict[str, int]:
        r = self.row
        return {"seq": r.seq, "cumulative_units": r.cumulative_units, "cumulative_minor": r.cumulative_minor,
                "bytes_in": r.bytes_in, "bytes_out": r.bytes_out, "calls": r.calls}

    def _subject(self, connection: str, call: int, outcome: str, units: int, **fields: Any) -> dict[str, Any]:
        r, price = self.row, self._price
        r.seq += 1
        r.cumulative_units += units
        r.cumulative_minor = r.cumulative_units * price
        return {**self._fixed, "connection": connection, "seq": r.seq, "call": call, "units": units,
                "amount_minor": units * price, "cumulative_units": r.cumulative_units,
                "cumulative_amount_minor": r.cumulative_minor, "outcome": outcome, "billed": outcome == "ok",
                "countersigned_seq": r.countersigned_seq, "countersigned_amount_minor": r.countersigned_minor,
                **fields}

    def call_receipt(self, *, connection: str, call: int, outcome: str, units: int, error: str | None,
                     input_hash: str | None, output_hash: str | None, input_bytes: int, output_bytes: int,
                     started_ms: int, ended_ms: int, now_ms: int) -> tuple[dict[str, Any], bytes, Any]:
        """End call ``call``: its receipt (signed), the receipt's JCS bytes (what goes on the wire)
        and the store operation that makes it durable. ``units`` is what the call is billed (0
        unless ``outcome`` is ``ok``)."""
        self.in_flight.pop(call, None)
        self.row.calls += 1
        self.row.bytes_out += output_bytes if outcome == "ok" else 0
        subject = self._subject(connection, call, outcome, units if outcome == "ok" else 0, error=error,
                                input_hash=input_hash, output_hash=output_hash if outcome == "ok" else None,
                                input_bytes=input_bytes, output_bytes=output_bytes if outcome == "ok" else 0,
                                started_ms=started_ms, ended_ms=ended_ms, final=False, end_reason=None)
        receipt = issue_receipt(subject, self.signer, now_ms=now_ms, nonce=self._nonce(), check_fields=False)
        wire = self._remember(receipt)
        return receipt, wire, op_receipt(self.claims.jti, receipt, self._counters(), text=wire.decode("utf-8"))

    def final_receipt(self, *, connection: str, reason: str, now_ms: int) -> tuple[dict[str, Any], Any]:
        """The session's last receipt (``outcome: final``) and its store operation."""
        subject = self._subject(connection, 0, "final", 0, error=None, input_hash=None, output_hash=None,
                                input_bytes=0, output_bytes=0, started_ms=now_ms, ended_ms=now_ms, final=True,
                                end_reason=reason)
        receipt = issue_receipt(subject, self.signer, now_ms=now_ms, nonce=self._nonce())
        self.row.state, self.row.end_reason, self.row.final_receipt = "final", reason, receipt
        self.row.last_receipt = receipt
        return receipt, op_receipt(self.claims.jti, receipt, self._counters(), final_reason=reason)

    def _nonce(self) -> str:
        """A receipt nonce: this process's random prefix for the session and the ``seq`` (unique
        without a system call per receipt)."""
        return f"{self._nonce_prefix}{self.row.seq:x}"

    def _remember(self, receipt: dict[str, Any]) -> bytes:
        seq = receipt["credentialSubject"]["seq"]
        wire = encode(receipt)
        self._digests[seq] = sha256_sri(wire)
        self._digests.pop(seq - RECENT_RECEIPTS, None)
        self.row.last_receipt = receipt
        return wire

    # -- countersignatures ---------------------------------------------------------------------
    def countersign(self, vc: Any, buyer_key: VerifyKey, stored: Any) -> Any | None:
        """Accept the buyer's countersignature; return the store operation, or None when it is
        not newer than the one held. ``stored(seq)`` reads an older receipt from the store.

        Raises:
            InvokeCountersignatureInvalid: bad signature, another session, or a receipt this
                node did not issue (its digest, units or amount differ).
        """
        subject = verify_countersignature(vc, self.claims, buyer_key=buyer_key)
        seq = subject["seq"]
        if seq > self.row.seq:
            raise InvokeCountersignatureInvalid(f"no receipt {seq} was issued yet")
        expected = self._digests.get(seq)
        if expected is None:
            receipt = stored(seq)
            expected = digest(receipt) if receipt is not None else None
        if expected != subject["receipt"]:
            raise InvokeCountersignatureInvalid(f"the countersignature does not name receipt {seq} as issued")
        if seq <= self.row.countersigned_seq:
            return None
        self.row.countersigned_seq, self.row.countersigned_minor = seq, subject["cumulative_amount_minor"]
        self.row.countersignature = vc
        return op_countersigned(self.claims.jti, seq, subject["cumulative_amount_minor"], vc)
