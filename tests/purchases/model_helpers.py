"""A purchase built without a hub (pure), and real signed receipts and confirmations for it."""

from __future__ import annotations

import base64
import hashlib
import uuid
from dataclasses import dataclass, field
from typing import Any

from domain.model.blocks import BlockCommitment, block_hash
from domain.model.delivery import issue_delivery_token, jwk_thumbprint
from domain.model.keys import KxPrivateKey, SigningKey, b64url
from domain.model.purchase import Purchase
from domain.model.receipts import digest, issue_confirmation, issue_receipt

META = {"actor": "test", "correlation_id": "c", "causation_id": ""}
NOW_S = 1_760_000_000
BLOCK = 4096
SIZE = 3 * BLOCK - 100


@dataclass
class Sale:
    """One purchase with the keys of everyone involved."""

    hub_key: SigningKey = field(default_factory=SigningKey.generate)
    device_key: SigningKey = field(default_factory=SigningKey.generate)
    device_kx: KxPrivateKey = field(default_factory=KxPrivateKey.generate)
    buyer_key: SigningKey = field(default_factory=SigningKey.generate)
    purchase_id: uuid.UUID = field(default_factory=uuid.uuid4)
    device_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    listing_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    jti: str = "jti-0123456789abcdef"
    payload: bytes = field(default_factory=lambda: bytes(range(256)) * (SIZE // 256) + b"x" * (SIZE % 256))

    def __post_init__(self) -> None:
        hashes = [block_hash(self.payload[i:i + BLOCK]) for i in range(0, len(self.payload), BLOCK)]
        self.blocks = BlockCommitment.build(len(self.payload), BLOCK, hashes).to_json()
        self.content_hash = "sha256-" + base64.b64encode(hashlib.sha256(self.payload).digest()).decode()
        self.claims = {
            "iss": "http://hub.test", "aud": self.device_id, "sub": str(self.purchase_id), "jti": self.jti,
            "iat": NOW_S, "start_by": NOW_S + 900, "exp": NOW_S + 86400, "listing_id": self.listing_id,
            "listing_version": 2, "content_hash": self.content_hash, "size_bytes": SIZE, "byte_limit": 2 * SIZE,
            "blocks": self.blocks, "cnf": {"jkt": jwk_thumbprint(self.buyer_key.verify_key)},
            "seller_keys": {"ed25519": self.device_key.verify_key.to_multibase(),
                            "x25519": self.device_kx.public_key.to_multibase()},
        }
        self.token = issue_delivery_token(self.claims, self.hub_key, "signing-1")

    @property
    def jkt(self) -> str:
        return self.claims["cnf"]["jkt"]

    def purchase(self) -> Purchase:
        return Purchase(
            id=self.purchase_id, meta=META, buyer_account_id="buyer", seller_account_id="seller",
            seller_device_id=self.device_id, listing_id=self.listing_id, listing_version=2,
            channel_id=str(uuid.uuid4()), price_minor=1999, fee_minor=99, currency="USD", idempotency_key="k",
            request_hash="h", token=self.token, kid="signing-1", jti=self.jti, cnf_jkt=self.jkt,
            issued_at_s=NOW_S, start_by_s=NOW_S + 900, expires_at_s=NOW_S + 86400)

    def common(self) -> dict[str, Any]:
        return {"purchase_id": str(self.purchase_id), "jti": self.jti, "device_id": self.device_id,
                "content_hash": self.content_hash, "size_bytes": SIZE, "blocks_root": self.blocks["root"],
                "session": b64url(b"s" * 32)}

    def confirmation(self, *, key: SigningKey | None = None, blocks_verified: int | None = None,
                     **overrides: Any) -> dict[str, Any]:
        subject = {**self.common(), "blocks_verified": blocks_verified or self.blocks["count"],
                   "received_at_ms": NOW_S * 1000 + 5000, **overrides}
        return issue_confirmation(subject, key or self.buyer_key, now_ms=NOW_S * 1000 + 5000,
                                  nonce=uuid.uuid4().hex)

    def receipt(self, *, seq: int = 1, outcome: str = "complete", confirmation: dict[str, Any] | None = None,
                key: SigningKey | None = None, intervals: list[list[int]] | None = None,
                **overrides: Any) -> dict[str, Any]:
        intervals = [[0, SIZE]] if intervals is None else intervals
        covered = sum(e - s for s, e in intervals)
        subject = {**self.common(), "listing_id": self.listing_id, "listing_version": 2, "buyer_jkt": self.jkt,
                   "seq": seq, "sessions": seq, "bytes_sent": covered, "intervals": intervals,
                   "first_byte_ms": NOW_S * 1000 + 100, "last_byte_ms": NOW_S * 1000 + 4000,
                   "blocks_acked": self.blocks["count"] if outcome == "complete" else 1, "outcome": outcome,
                   "confirmation": digest(confirmation) if confirmation is not None else None, **overrides}
        return issue_receipt(subject, key or self.device_key, now_ms=NOW_S * 1000 + 6000, nonce=uuid.uuid4().hex)
