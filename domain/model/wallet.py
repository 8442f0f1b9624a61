"""Wallet: the one EVM address an account proved it controls (EIP-191 signature).

A chain deposit is credited only to the account whose wallet made it, and sellers are
paid on chain to their wallet. The binding is set once per account (never changed), so
other processes may cache it safely.
"""

from __future__ import annotations

from uuid import UUID

from eth_account import Account
from eth_account.messages import encode_defunct
from eth_utils import is_address, to_checksum_address
from eventsourcing.domain import event

from domain.model.base import MarketAggregate
from domain.model.errors import InvalidInput, SignatureInvalid


def wallet_message(account_id: str, address: str, hub_url: str) -> str:
    """The text an account signs (EIP-191 ``personal_sign``) to bind its wallet."""
    return f"aimarket wallet binding v1\nhub: {hub_url}\naccount: {account_id}\naddress: {to_checksum_address(address)}"


def check_address(address: object, param: str = "address") -> str:
    if not isinstance(address, str) or not is_address(address):
        raise InvalidInput(f"{param} must be an EVM address", param=param)
    return to_checksum_address(address)


def verify_wallet_proof(account_id: str, address: str, signature_hex: str, hub_url: str) -> str:
    """Return the checksummed address if ``signature_hex`` signs the binding message with it."""
    address = check_address(address)
    try:
        raw = bytes.fromhex(signature_hex.removeprefix("0x"))
        signer = Account.recover_message(encode_defunct(text=wallet_message(account_id, address, hub_url)),
                                         signature=raw)
    except Exception:  # noqa: BLE001 - any malformed signature is the same answer to the caller
        raise SignatureInvalid("wallet signature does not verify", param="signature") from None
    if signer != address:
        raise SignatureInvalid("wallet signature is by another address", param="signature")
    return address


class Wallet(MarketAggregate):
    """An account's wallet binding; id = uuid5 of the account id."""

    @event("Bound")
    def __init__(self, id: UUID, meta: dict, account_id: str, address: str) -> None:
        self.account_id = account_id
        self.address = address

    def to_public(self) -> dict[str, str]:
        return {"account_id": self.account_id, "address": self.address}
