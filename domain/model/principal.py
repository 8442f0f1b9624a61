"""Who is calling: the result of authenticating a request, whatever the credential."""

from __future__ import annotations

from dataclasses import dataclass, field

from domain.model.base import actor_for_account, actor_for_device
from domain.model.errors import Forbidden

PRINCIPAL_KINDS = ("session", "api_key", "oauth_client", "device")


@dataclass(frozen=True, slots=True)
class Principal:
    """An authenticated caller: an account (via session, API key or OAuth client) or a device."""

    kind: str
    account_id: str
    roles: tuple[str, ...] = ()
    credential_id: str = ""
    device_id: str = ""
    scopes: tuple[str, ...] = field(default=())

    @property
    def actor(self) -> str:
        return actor_for_device(self.device_id) if self.kind == "device" else actor_for_account(self.account_id)

    def require_role(self, *roles: str) -> None:
        """Raise Forbidden unless the caller holds one of ``roles``."""
        if not set(roles) & set(self.roles):
            raise Forbidden(f"requires role {' or '.join(roles)}")

    def require_kind(self, *kinds: str) -> None:
        if self.kind not in kinds:
            raise Forbidden(f"this call needs a {' or '.join(kinds)} credential")
