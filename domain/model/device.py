"""Device: a seller's or buyer's self-hosted node, known by its Ed25519 device key.

Enrollment proves possession of the private key (signature over a hub challenge). A key
rotation is signed by the old key; the old key stays valid for ``ROTATION_GRACE_S``
(24 h) after the rotation, then is refused. Time comes in as integer epoch seconds
(``at_s``/``now_s``) from the application layer, so replays reproduce the same state.
"""

from __future__ import annotations

from typing import Any
from uuid import UUID

from eventsourcing.domain import event

from domain.model.base import MarketAggregate
from domain.model.errors import DeviceNotEnrolled, DeviceSuspended, InvalidState, KeyExpired
from domain.model.jcs import canonical_json

ROTATION_GRACE_S = 24 * 3600


class Device(MarketAggregate):
    """An enrolled node: its owner, endpoint and the history of its keys."""

    @event("Enrolled")
    def __init__(
        self, id: UUID, meta: dict, account_id: str, name: str, public_key: str,
        kid: str, kx_public_key: str, endpoint: str,
    ) -> None:
        self.account_id = account_id
        self.name = name
        self.endpoint = endpoint
        self.suspended = False
        self.keys: list[dict[str, Any]] = [
            {"kid": kid, "public_key": public_key, "kx_public_key": kx_public_key, "valid_until_s": None}
        ]

    @property
    def current_key(self) -> dict[str, Any]:
        return self.keys[-1]

    def rotate_key(
        self, meta: dict, *, public_key: str, kid: str, kx_public_key: str,
        signature: str, at_s: int, grace_s: int = ROTATION_GRACE_S,
    ) -> None:
        """Record a new key; ``signature`` (by the current key) was checked by the caller."""
        self.check_can_act()
        if any(k["kid"] == kid for k in self.keys):
            raise InvalidState("this key was already used by the device")
        self._key_rotated(
            meta=meta, public_key=public_key, kid=kid, kx_public_key=kx_public_key,
            signature=signature, previous_kid=self.current_key["kid"], previous_valid_until_s=at_s + grace_s,
        )

    @event("KeyRotated")
    def _key_rotated(
        self, meta: dict, public_key: str, kid: str, kx_public_key: str,
        signature: str, previous_kid: str, previous_valid_until_s: int,
    ) -> None:
        for key in self.keys:
            if key["valid_until_s"] is None or key["valid_until_s"] > previous_valid_until_s:
                key["valid_until_s"] = previous_valid_until_s
        self.keys.append({"kid": kid, "public_key": public_key, "kx_public_key": kx_public_key, "valid_until_s": None})

    def check_can_act(self) -> None:
        if self.suspended:
            raise DeviceSuspended(f"device {self.id} is suspended")

    def key_for(self, kid: str, now_s: int) -> dict[str, Any]:
        """The key ``kid`` if it may sign now; raise KeyExpired after its grace period."""
        self.check_can_act()
        for key in self.keys:
            if key["kid"] == kid:
                if key["valid_until_s"] is not None and now_s >= key["valid_until_s"]:
                    raise KeyExpired("this device key was rotated out more than 24 hours ago")
                return key
        raise DeviceNotEnrolled("key is not registered for this device")

    def suspend(self, meta: dict, reason: str) -> None:
        if self.suspended:
            raise InvalidState("device already suspended")
        self._suspended(meta=meta, reason=reason)

    @event("Suspended")
    def _suspended(self, meta: dict, reason: str) -> None:
        self.suspended = True

    @property
    def status(self) -> str:
        return "suspended" if self.suspended else "active"

    def public_view(self) -> dict[str, Any]:
        """What a stranger needs to verify this device's signatures and seal data to it: its id,
        status, current key ids and public keys, and every key with its validity."""
        return {
            "id": str(self.id), "status": self.status, "kid": self.current_key["kid"],
            "public_key": self.current_key["public_key"], "kx_public_key": self.current_key["kx_public_key"],
            "keys": [dict(k) for k in self.keys],
        }

    def owner_view(self) -> dict[str, Any]:
        """The public view plus what only the owner (its account, or the device itself) sees."""
        return {**self.public_view(), "account_id": self.account_id, "name": self.name,
                "endpoint": self.endpoint, "suspended": self.suspended}


# -- what a node signs (protocol messages, shared by hub and node) ---------------------------
def enrollment_message(*, challenge: str, account_id: str, name: str, public_key: str,
                       kx_public_key: str, endpoint: str) -> bytes:
    """The bytes a node signs to prove it holds the device key (RFC 8785 canonical JSON)."""
    return canonical_json({
        "purpose": "aimarket/enroll/v1", "challenge": challenge, "account_id": account_id, "name": name,
        "public_key": public_key, "kx_public_key": kx_public_key, "endpoint": endpoint,
    })


def rotation_message(*, device_id: str, public_key: str, kx_public_key: str) -> bytes:
    """The bytes the *old* device key signs to vouch for the new one."""
    return canonical_json({"purpose": "aimarket/rotate/v1", "device_id": device_id,
                           "public_key": public_key, "kx_public_key": kx_public_key})
