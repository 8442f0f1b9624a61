"""Keys, claims and receipt subjects for the pure compute tests (no files, no processes)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from domain.model.delivery import jwk_thumbprint
from domain.model.invoke import InvokeClaims, issue_invoke_token, verify_invoke_token
from domain.model.invoke_receipts import issue_receipt
from domain.model.keys import KxPrivateKey, SigningKey, VerifyKey

NOW_S = 1_800_000_000
DEVICE_ID = "5d2c1b0a-9e8f-5a7b-8c6d-1e2f3a4b5c6d"
LISTING_ID = "0b7e6f0e-1d2c-5b3a-9f8e-7d6c5b4a3f2e"
CONNECTION = "Q29ubmVjdGlvbi1pZC1mb3ItdGVzdHMtb25seS0wMDA"
SRI = "sha256-47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU="


@dataclass
class Parties:
    hub: SigningKey = field(default_factory=SigningKey.generate)
    device: SigningKey = field(default_factory=SigningKey.generate)
    device_kx: KxPrivateKey = field(default_factory=KxPrivateKey.generate)
    buyer: SigningKey = field(default_factory=SigningKey.generate)

    @property
    def hub_keys(self) -> dict[str, VerifyKey]:
        return {self.hub.key_id: self.hub.verify_key}

    def claims(self, **overrides: Any) -> dict[str, Any]:
        claims = {"iss": "https://hub.example", "aud": DEVICE_ID, "sub": "invocation-0001",
                  "jti": "invoke-token-000000001", "iat": NOW_S, "start_by": NOW_S + 300, "exp": NOW_S + 3600,
                  "listing_id": LISTING_ID, "listing_version": 3, "unit": "calls", "unit_price_minor": 7,
                  "currency": "USD", "budget_minor": 100, "max_call_units": 1, "max_concurrency": 2,
                  "cnf": {"jkt": jwk_thumbprint(self.buyer.verify_key)},
                  "seller_keys": {"ed25519": self.device.verify_key.to_multibase(),
                                  "x25519": self.device_kx.public_key.to_multibase()}}
        claims.update(overrides)
        return claims

    def token(self, **overrides: Any) -> str:
        return issue_invoke_token(self.claims(**overrides), self.hub, self.hub.key_id)

    def verified(self, **overrides: Any) -> InvokeClaims:
        return verify_invoke_token(self.token(**overrides), self.hub_keys, audience=DEVICE_ID, now_s=NOW_S)


def subject(claims: InvokeClaims, seq: int, *, cumulative_units: int, units: int = 1, outcome: str = "ok",
            **overrides: Any) -> dict[str, Any]:
    price = claims.unit_price_minor
    billed = outcome == "ok"
    out = {"invocation_id": claims.sub, "jti": claims.jti, "device_id": claims.aud, "listing_id": claims.listing_id,
           "listing_version": claims.listing_version, "buyer_jkt": claims.cnf_jkt, "connection": CONNECTION,
           "seq": seq, "call": seq, "unit": claims.unit, "unit_price_minor": price, "currency": claims.currency,
           "units": units if billed else 0, "amount_minor": (units if billed else 0) * price,
           "cumulative_units": cumulative_units, "cumulative_amount_minor": cumulative_units * price,
           "budget_minor": claims.budget_minor, "outcome": outcome,
           "error": None if outcome in ("ok", "final") else f"invoke_call_{'failed' if outcome == 'failed' else outcome}",
           "billed": billed, "input_hash": SRI, "output_hash": SRI if billed else None, "input_bytes": 2,
           "output_bytes": 2 if billed else 0, "started_ms": NOW_S * 1000, "ended_ms": NOW_S * 1000 + 5,
           "countersigned_seq": 0, "countersigned_amount_minor": 0, "final": outcome == "final",
           "end_reason": "closed" if outcome == "final" else None}
    if outcome == "final":
        out.update(call=0, units=0, amount_minor=0, input_hash=None, input_bytes=0)
    out.update(overrides)
    return out


def receipt(parties: Parties, claims: InvokeClaims, seq: int, *, key: SigningKey | None = None,
            **options: Any) -> dict[str, Any]:
    return issue_receipt(subject(claims, seq, **options), key or parties.device, now_ms=NOW_S * 1000,
                         nonce=f"receipt-nonce-{seq:06d}")
