"""Listing: what a seller offers, as metadata only (never a data row), signed by a device.

A node publishes a listing as a W3C Verifiable Credential signed by its device key; the
application layer checks the credential (see ``domain.app.catalogue``) and hands the
aggregate plain metadata plus the facts an auditor needs to tie the event to that
credential: its SHA-256 digest (``credential_digest``, SRI form), the proof's ``nonce`` and
the signing key id. Money is ``price_minor`` (int) beside a ``currency`` code.

The listing id is uuid5 over (device id, listing key), where the listing key is chosen by the
client or defaults to the content hash, so a retried publish lands on the same id.
"""

from __future__ import annotations

from typing import Any
from uuid import UUID

from eventsourcing.domain import event

from domain.model.base import MarketAggregate
from domain.model.errors import InvalidState, NotListingOwner
from domain.model.ids import NS_PLATFORM, natural_id

NS_LISTING = natural_id(NS_PLATFORM, "listing")
KINDS = ("dataset", "model", "pipeline")


def listing_id_for(device_id: str, listing_key: str) -> UUID:
    """The listing id for a device's listing key (stable across retries and hosts)."""
    return natural_id(NS_LISTING, f"{device_id}\n{listing_key}")


class Listing(MarketAggregate):
    """A listing in the catalogue: metadata, price, owner, and its signing history."""

    @event("Published")
    def __init__(
        self, id: UUID, meta: dict, account_id: str, device_id: str, listing_key: str,
        metadata: dict[str, Any], price_minor: int, currency: str, proof: dict[str, str],
    ) -> None:
        self.account_id = account_id
        self.device_id = device_id
        self.listing_key = listing_key
        self.metadata = metadata
        self.price_minor = price_minor
        self.currency = currency
        self.proofs = [proof]
        self.delisted = False

    def check_owner(self, account_id: str) -> None:
        """Raise NotListingOwner unless ``account_id`` owns this listing."""
        if account_id != self.account_id:
            raise NotListingOwner("this listing belongs to another seller")

    def same_offer(self, metadata: dict[str, Any], price_minor: int, currency: str) -> bool:
        """Whether a publish retry carries exactly what is already recorded."""
        return (metadata, price_minor, currency) == (self.metadata, self.price_minor, self.currency)

    def update(
        self, meta: dict, *, account_id: str, metadata: dict[str, Any], price_minor: int, currency: str,
        proof: dict[str, str],
    ) -> None:
        """Replace the metadata and price; only the owner, only while listed."""
        self.check_owner(account_id)
        if self.delisted:
            raise InvalidState("listing is delisted")
        self._updated(meta=meta, metadata=metadata, price_minor=price_minor, currency=currency, proof=proof)

    @event("Updated")
    def _updated(self, meta: dict, metadata: dict[str, Any], price_minor: int, currency: str,
                 proof: dict[str, str]) -> None:
        self.metadata = metadata
        self.price_minor = price_minor
        self.currency = currency
        self.proofs.append(proof)

    def delist(self, meta: dict, *, account_id: str, reason: str, proof: dict[str, str]) -> None:
        """Withdraw the listing from the catalogue; only the owner, only once."""
        self.check_owner(account_id)
        if self.delisted:
            raise InvalidState("listing is already delisted")
        self._delisted(meta=meta, reason=reason, proof=proof)

    @event("Delisted")
    def _delisted(self, meta: dict, reason: str, proof: dict[str, str]) -> None:
        self.delisted = True
        self.proofs.append(proof)

    def to_public(self) -> dict[str, Any]:
        return {
            "id": str(self.id), "account_id": self.account_id, "device_id": self.device_id,
            "listing_key": self.listing_key, "status": "delisted" if self.delisted else "active",
            "version": self.version, **self.metadata, "price_minor": self.price_minor, "currency": self.currency,
        }
