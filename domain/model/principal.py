"""Who is calling: the result of authenticating a request, whatever the credential."""

from __future__ import annotations

from dataclasses import dataclass, field

from domain.model.base import actor_for_account, actor_for_device
from domain.model.errors import Forbidden, InsufficientScope

PRINCIPAL_KINDS = ("session", "api_key", "oauth_client", "device")
# Credentials that act for an account within their scopes (a subset of the account's roles).
DELEGATED_KINDS = ("api_key", "oauth_client")


@dataclass(frozen=True, slots=True)
class Principal:
    """An authenticated caller: an account (via session, API key or OAuth client) or a device.

    ``roles`` are what the caller may act as: a session's roles (signed in at login), a
    device's account roles, or, for an API key or OAuth client, its scopes that the account
    still holds. ``scopes`` are the credential's scopes as issued (empty for sessions and
    devices). ``issued_at_s`` is when a session logged in (its token's ``iat``)."""

    kind: str
    account_id: str
    roles: tuple[str, ...] = ()
    credential_id: str = ""
    device_id: str = ""
    scopes: tuple[str, ...] = field(default=())
    issued_at_s: int = 0

    @property
    def actor(self) -> str:
        return actor_for_device(self.device_id) if self.kind == "device" else actor_for_account(self.account_id)

    @property
    def delegated(self) -> bool:
        return self.kind in DELEGATED_KINDS

    def require_role(self, *roles: str) -> None:
        """Raise unless the caller holds one of ``roles``: ``insufficient_scope`` for an API key
        or OAuth client (its scopes do not cover the call), ``forbidden`` otherwise."""
        if not set(roles) & set(self.roles):
            error = InsufficientScope if self.delegated else Forbidden
            noun = "scope" if self.delegated else "role"
            raise error(f"requires {noun} {' or '.join(roles)}")

    def require_kind(self, *kinds: str) -> None:
        if self.kind not in kinds:
            raise Forbidden(f"this call needs a {' or '.join(kinds)} credential")

    def logged_in_within(self, now_s: int, window_s: int) -> bool:
        """A session whose login is at most ``window_s`` old (never true for other kinds)."""
        return self.kind == "session" and now_s - self.issued_at_s <= window_s
