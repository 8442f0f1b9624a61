"""Account: a person or organisation that buys, sells, audits or administers.

Secrets never enter an event in the clear: the password is a bcrypt hash, the TOTP secret
is AES-256-GCM ciphertext, API keys and OAuth client secrets are Fernet ciphertext. The
application layer hashes and encrypts (it holds the keys); the aggregate only stores.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any
from uuid import UUID

from eventsourcing.domain import event

from domain.model.base import MarketAggregate
from domain.model.errors import InsufficientScope, InvalidInput, InvalidState, NotFound

ROLES = ("buyer", "seller", "auditor", "admin")
SELF_SERVICE_ROLES = ("buyer", "seller")
CREDENTIAL_KINDS = ("api_key", "oauth_client")


def check_roles(roles: list[str], allowed: tuple[str, ...] = ROLES) -> list[str]:
    """Return the roles sorted and de-duplicated, or raise InvalidInput."""
    bad = [r for r in roles if r not in allowed]
    if bad or not roles:
        raise InvalidInput(f"roles must be a non-empty subset of {list(allowed)}", param="roles")
    return sorted(set(roles))


def check_scopes(scopes: Any, ceiling: Iterable[str]) -> list[str]:
    """The scopes of a new API key or OAuth client, sorted and de-duplicated: role names
    (else ``invalid_input``), each one the caller acts in and its account holds (``ceiling``;
    else ``insufficient_scope``). An empty list is a credential that acts in no role."""
    if not isinstance(scopes, list) or any(s not in ROLES for s in scopes):
        raise InvalidInput(f"scopes must be a list of {list(ROLES)}", param="scopes")
    beyond = sorted(set(scopes) - set(ceiling))
    if beyond:
        raise InsufficientScope(f"cannot grant scopes the caller does not hold: {beyond}", param="scopes")
    return sorted(set(scopes))


class Account(MarketAggregate):
    """A marketplace account and the credentials it owns."""

    @event("Registered")
    def __init__(self, id: UUID, meta: dict, email: str, password_hash: str, roles: list[str]) -> None:
        self.email = email
        self.password_hash = password_hash
        self.roles = list(roles)
        self.totp_ciphertext: str | None = None
        self.totp_pending_ciphertext: str | None = None
        self.credentials: dict[str, dict[str, Any]] = {}

    # -- password and two-factor -------------------------------------------------------
    def change_password(self, meta: dict, password_hash: str) -> None:
        self._password_changed(meta=meta, password_hash=password_hash)

    @event("PasswordChanged")
    def _password_changed(self, meta: dict, password_hash: str) -> None:
        self.password_hash = password_hash

    @property
    def totp_enabled(self) -> bool:
        return self.totp_ciphertext is not None

    def begin_totp(self, meta: dict, secret_ciphertext: str) -> None:
        if self.totp_enabled:
            raise InvalidState("two-factor is already enabled")
        self._totp_proposed(meta=meta, secret_ciphertext=secret_ciphertext)

    @event("TotpProposed")
    def _totp_proposed(self, meta: dict, secret_ciphertext: str) -> None:
        self.totp_pending_ciphertext = secret_ciphertext

    def enable_totp(self, meta: dict) -> None:
        if self.totp_pending_ciphertext is None:
            raise InvalidState("start two-factor set-up first")
        self._totp_enabled(meta=meta)

    @event("TotpEnabled")
    def _totp_enabled(self, meta: dict) -> None:
        self.totp_ciphertext = self.totp_pending_ciphertext
        self.totp_pending_ciphertext = None

    # -- roles -----------------------------------------------------------------------
    def grant_role(self, meta: dict, role: str) -> None:
        check_roles([role])
        if role not in self.roles:
            self._role_granted(meta=meta, role=role)

    @event("RoleGranted")
    def _role_granted(self, meta: dict, role: str) -> None:
        self.roles = sorted({*self.roles, role})

    # -- credentials (API keys, OAuth clients) --------------------------------------------
    def issue_credential(
        self, meta: dict, *, kind: str, credential_id: str, name: str, secret_ciphertext: str,
        scopes: list[str] | None, caller_roles: Iterable[str] | None = None,
    ) -> None:
        """Record a new credential whose scopes never exceed the caller's roles (``caller_roles``,
        default: the account's) nor the account's; ``scopes=None`` means all of those."""
        if kind not in CREDENTIAL_KINDS:
            raise InvalidInput(f"kind must be one of {CREDENTIAL_KINDS}", param="kind")
        if credential_id in self.credentials:
            raise InvalidState("credential id already used")
        ceiling = sorted(set(self.roles) & set(self.roles if caller_roles is None else caller_roles))
        self._credential_issued(
            meta=meta, kind=kind, credential_id=credential_id, name=name, secret_ciphertext=secret_ciphertext,
            scopes=check_scopes(ceiling if scopes is None else scopes, ceiling),
        )

    @event("CredentialIssued")
    def _credential_issued(
        self, meta: dict, kind: str, credential_id: str, name: str, secret_ciphertext: str, scopes: list[str]
    ) -> None:
        self.credentials[credential_id] = {
            "kind": kind, "name": name, "secret_ciphertext": secret_ciphertext,
            "scopes": scopes, "revoked": False, "issued_version": self.version,
        }

    def credential(self, credential_id: str, kind: str) -> dict[str, Any]:
        cred = self.credentials.get(credential_id)
        if cred is None or cred["kind"] != kind:
            raise NotFound(f"no such {kind}", param="id")
        return cred

    def revoke_credential(self, meta: dict, credential_id: str, kind: str) -> None:
        if not self.credential(credential_id, kind)["revoked"]:
            self._credential_revoked(meta=meta, credential_id=credential_id)

    @event("CredentialRevoked")
    def _credential_revoked(self, meta: dict, credential_id: str) -> None:
        self.credentials[credential_id]["revoked"] = True

    def to_public(self) -> dict[str, Any]:
        return {"id": str(self.id), "email": self.email, "roles": self.roles, "totp_enabled": self.totp_enabled}
