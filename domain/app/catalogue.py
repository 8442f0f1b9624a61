"""Catalogue commands: publish, update and delist listings from device-signed credentials.

Each command takes the secured credential dict a node sent and checks, in this order, each
failure with its own stable code:

1. the closed schema (``invalid_input``): metadata only, bounded sizes;
2. the Data Integrity proof (``signature_invalid``);
3. the signing key belongs to an enrolled device (``device_not_enrolled``), that device is
   not suspended (``device_suspended``) and the key is current or inside its rotation grace
   (``key_expired``);
4. that device is the one that authenticated the request (``foreign_device``);
5. the proof's ``created`` is within ±5 minutes of the hub clock (``credential_stale``);
6. the proof's ``nonce`` was never used by that device (``nonce_replayed``);
7. for update and delist, the listing belongs to the caller's account (``not_listing_owner``).

The nonce is spent only after every check that does not need the listing, so a refused
credential does not burn it, and before the save, so two hosts racing with one credential
cannot both record it.
"""

from __future__ import annotations

import base64
import hashlib
import json
from functools import lru_cache
from typing import TYPE_CHECKING, Any
from uuid import UUID

import jsonschema

from domain.app.service import Service
from domain.model.device import Device
from domain.model.errors import (
    AlreadyExists,
    CredentialStale,
    Forbidden,
    ForeignDevice,
    InvalidInput,
    NonceReplayed,
    TokenReplayed,
)
from domain.model.ids import parse_uuid
from domain.model.jcs import canonical_json
from domain.model.json_input import strict_validator
from domain.model.listing import Listing, listing_id_for
from domain.model.listing_schema import DELIST_CREDENTIAL, PUBLISH_CREDENTIAL, UPDATE_CREDENTIAL
from domain.model.money import check_currency
from domain.model.principal import Principal
from domain.model.vc import verify_credential

if TYPE_CHECKING:
    pass

CREDENTIAL_WINDOW_S = 300


@lru_cache(maxsize=8)
def _validator(schema_json: str) -> jsonschema.protocols.Validator:
    # Strict integers: a price of 1e3 is a float and is refused here, not truncated later.
    return strict_validator(json.loads(schema_json))


def check_schema(value: Any, schema: dict[str, Any]) -> None:
    """Raise InvalidInput naming the first offending field (never echoing its value)."""
    error = jsonschema.exceptions.best_match(_validator(json.dumps(schema, sort_keys=True)).iter_errors(value))
    if error is not None:
        param = ".".join(str(p) for p in error.absolute_path) or None
        raise InvalidInput(f"{param or 'credential'} breaks the listing credential schema ({error.validator})",
                           param=param)


def credential_digest(credential: dict[str, Any]) -> str:
    """SRI digest (``sha256-<b64>``) of the secured credential's canonical JSON."""
    return "sha256-" + base64.b64encode(hashlib.sha256(canonical_json(credential)).digest()).decode()


def _split_offer(listing: dict[str, Any]) -> tuple[dict[str, Any], int, str]:
    metadata = {k: v for k, v in listing.items() if k not in ("price_minor", "currency")}
    return metadata, int(listing["price_minor"]), check_currency(listing["currency"])


class CatalogueService(Service):
    """The catalogue service of the marketplace (composed into ``Marketplace.catalogue``)."""

    def listing(self, listing_id: str | UUID) -> Listing:
        return self.load(Listing, parse_uuid(listing_id, param="listing_id"), "listing")

    def delivery_of(self, listing_id: str | UUID) -> dict[str, Any]:
        """What a buyer's node checks a delivery against, from the listing itself (current,
        never a lagging read model): its version and its signed ``delivery`` commitment
        (``object_hash``, ``size_bytes``, ``blocks``), or None when it has none."""
        listing = self.listing(listing_id)
        return {"version": listing.version, "delivery": listing.metadata.get("delivery")}

    def publish_listing(self, meta: dict, principal: Principal,
                        credential: dict[str, Any]) -> dict[str, Any]:
        """Record ``Listing.Published`` from a publish credential; a retry returns the same listing."""
        device, proof = self._accept_credential(principal, credential, PUBLISH_CREDENTIAL)
        subject = credential["credentialSubject"]
        metadata, price_minor, currency = _split_offer(subject["listing"])
        listing_id = listing_id_for(str(device.id), subject["listing_key"])

        def command() -> dict[str, Any]:
            if self.exists(listing_id):
                existing = self.load(Listing, listing_id)
                if not existing.delisted and existing.same_offer(metadata, price_minor, currency):
                    return existing.to_public()
                raise AlreadyExists("this listing key is already used: update the listing or pick another key",
                                    param="credentialSubject.listing_key")
            listing = Listing(id=listing_id, meta=meta, account_id=device.account_id, device_id=str(device.id),
                              listing_key=subject["listing_key"], metadata=metadata, price_minor=price_minor,
                              currency=currency, proof=proof)
            self.save(listing)
            return listing.to_public()

        return self.retrying(command)

    def update_listing(self, meta: dict, principal: Principal, listing_id: str,
                       credential: dict[str, Any]) -> dict[str, Any]:
        """Record ``Listing.Updated`` (new metadata and price) from an update credential."""
        device, proof = self._accept_credential(principal, credential, UPDATE_CREDENTIAL, listing_id)
        metadata, price_minor, currency = _split_offer(credential["credentialSubject"]["listing"])

        def command() -> dict[str, Any]:
            listing = self.listing(listing_id)
            listing.update(meta, account_id=device.account_id, metadata=metadata, price_minor=price_minor,
                           currency=currency, proof=proof)
            self.save(listing)
            return listing.to_public()

        return self.retrying(command)

    def delist_listing(self, meta: dict, principal: Principal, listing_id: str,
                       credential: dict[str, Any]) -> dict[str, Any]:
        """Record ``Listing.Delisted`` from a delist credential."""
        device, proof = self._accept_credential(principal, credential, DELIST_CREDENTIAL, listing_id)
        reason = credential["credentialSubject"].get("reason", "")

        def command() -> dict[str, Any]:
            listing = self.listing(listing_id)
            listing.delist(meta, account_id=device.account_id, reason=reason, proof=proof)
            self.save(listing)
            return listing.to_public()

        return self.retrying(command)

    def _accept_credential(self, principal: Principal, credential: Any, schema: dict[str, Any],
                           listing_id: str | None = None) -> tuple[Device, dict[str, str]]:
        """Run checks 1-7 of the module docstring; return the signing device and the audit facts."""
        if principal.kind != "device":
            raise Forbidden("catalogue credentials are posted with a device token")
        check_schema(credential, schema)
        if listing_id is not None:
            if str(parse_uuid(listing_id, param="listing_id")) != credential["credentialSubject"]["listing_id"]:
                raise InvalidInput("the credential names another listing", param="credentialSubject.listing_id")
            # Ownership is checked before the nonce is spent: a refused credential keeps it.
            self.listing(listing_id).check_owner(principal.account_id)
        verified = verify_credential(credential)
        kid = verified.verify_key.key_id
        device = self.market.devices.device_by_kid(kid)
        now_s = self.now_s()
        device.key_for(kid, now_s)
        if str(device.id) != principal.device_id:
            whose = "another seller's device" if device.account_id != principal.account_id else "another device"
            raise ForeignDevice(f"the credential is signed by {whose}, not the device that sent it")
        assert verified.created is not None and verified.nonce is not None  # required by the schema
        if abs(verified.created.timestamp() - now_s) > CREDENTIAL_WINDOW_S:
            raise CredentialStale(f"proof.created must be within {CREDENTIAL_WINDOW_S} s of the hub clock",
                                  param="proof.created")
        try:
            self.nonces.use_once(f"vc:{device.id}:{verified.nonce}", ttl_s=2 * CREDENTIAL_WINDOW_S + 60)
        except TokenReplayed:
            raise NonceReplayed("this credential nonce was already used", param="proof.nonce") from None
        return device, {"credential_digest": credential_digest(credential), "nonce": verified.nonce, "kid": kid,
                        "created": credential["proof"]["created"],
                        # the signature itself, so an auditor re-verifies the listing from the log alone
                        "proof_value": credential["proof"]["proofValue"]}
