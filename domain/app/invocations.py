"""Invocation commands: open a metered compute session (a hold and an invoke token), read it,
capture it from the node's final report, lapse it.

``open`` (``POST /v1/invocations``) places a hold of ``budget_minor`` on the buyer's channel (not a
spend) and records ``Invocation.Opened`` with the hub-signed invoke token in ONE
``market.save(channel, invocation)``, retried on a lost race: a session exists exactly when its
budget is reserved. The same Idempotency-Key with the same body replays the first answer (the
same token); another body under it is ``idempotency_key_reused``. Claims follow
``docs/protocol.md`` "Invoke token": the unit from the listing's ``metering_unit``, the unit price
its ``price_minor``, ``aud`` and ``seller_keys`` from the seller device, deadlines from
:class:`InvocationConfig` (``AIMARKET_INVOKE_START_S``, ``AIMARKET_INVOKE_SESSION_S``); the hold
lapses at ``exp + AIMARKET_INVOKE_REPORT_GRACE_S``, which must come before the channel can
settle (its expiry, less the settle margin on chain), so ``exp`` is cut short on a channel
expiring soon (``invocation_channel_expiring`` when not even the start window fits).

Refusals (distinct codes, decided before anything is recorded): ``listing_not_found``,
``own_listing``, ``listing_delisted``, ``listing_not_invocable``, ``seller_device_suspended``,
``currency_mismatch``, ``invocation_channel_expiring``, ``channel_exhausted`` (402, with
``available_minor``), ``channel_unsigned_allowance_exhausted`` (chain), and the channel's own
(not open, expired).

Contract for the node-to-hub traces (the trace intake, ``domain.app.traces``, calls these inside
its own retried command, each loading fresh): ``apply_bound(meta, device, body)``,
``apply_final(meta, device, body)`` and ``apply_rejection(meta, device, body)`` decide on the
outbox kinds ``invoke_bound``, ``invoke_final`` and ``invoke_rejection`` (bodies as in
``docs/protocol.md`` "Durability and the compute outbox") and return the aggregates to save
together with the trace (``()`` when nothing changed, e.g. a duplicate final); they raise a
``MarketError`` with a stable code to refuse. ``device`` is the reporting device: it must be the
invocation's seller device. A final capture returns ``(invocation, channel)``: the channel's
``HoldReleased`` and ``Debited`` (fee as a sale's) commit with the trace.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from uuid import UUID

from domain.app.money import RACING_ATTEMPTS, request_hash
from domain.app.service import Service
from domain.model.channel import Channel
from domain.model.channel_rules import debit_fee
from domain.model.compute import UNITS
from domain.model.device import Device
from domain.model.errors import (
    CurrencyMismatch,
    IdempotencyKeyReused,
    InvalidInput,
    InvocationChannelExpiring,
    InvocationNotFound,
    InvocationWrongDevice,
    InvokeReceiptTampered,
    ListingDelisted,
    ListingNotFound,
    ListingNotInvocable,
    NotFound,
    OwnListing,
    SellerDeviceSuspended,
)
from domain.model.ids import parse_uuid
from domain.model.invocation import Invocation, invocation_id_for
from domain.model.invoke import MAX_AMOUNT_MINOR, MAX_CONCURRENCY, MAX_LIFETIME_S, issue_invoke_token
from domain.model.keys import SigningKey, VerifyKey
from domain.model.listing import Listing

_JKT = re.compile(r"^[A-Za-z0-9_-]{43}$")
_ENDPOINT_HOST_PORT = re.compile(r"^[A-Za-z0-9.\-\[\]:]{1,253}:[0-9]{1,5}$")
COMPUTE_KINDS = ("model", "pipeline")
# The most units one call may count when the buyer does not say, per unit (the manifest's defaults,
# ``domain.model.compute``); rows and tokens have no default (the manifest must give one).
DEFAULT_CALL_UNITS = {"calls": 1, "seconds": 30, "bytes": 17 * 2**20}
MIN_SESSION_S = 60  # a session shorter than this is not worth a token


@dataclass(frozen=True)
class InvocationConfig:
    """Session deadlines (``ops.settings``): the first connection within ``start_window_s``,
    no call after ``session_s``, the final report within ``report_grace_s`` after that."""

    start_window_s: int = 15 * 60
    session_s: int = 3600
    report_grace_s: int = 86400

    def __post_init__(self) -> None:
        if not 0 < self.start_window_s <= self.session_s <= MAX_LIFETIME_S or self.report_grace_s < 0:
            raise ValueError("need 0 < start_window_s <= session_s <= 7 days and report_grace_s >= 0")


class InvocationService(Service):
    """The invocations service of the marketplace (composed into ``Marketplace.invocations``)."""

    def __init__(self, market: Any, config: InvocationConfig | None = None) -> None:
        super().__init__(market)
        self.config = config or InvocationConfig()
        self._signers: dict[str, SigningKey] = {}

    # -- reading ----------------------------------------------------------------------------
    def invocation(self, invocation_id: str | UUID) -> Invocation:
        """The invocation aggregate. Raises InvocationNotFound."""
        try:
            return self.load(Invocation, parse_uuid(str(invocation_id), param="invocation_id"), "invocation")
        except NotFound:
            raise InvocationNotFound("invocation not found") from None

    def view(self, account_id: str, roles: Sequence[str], invocation_id: str) -> dict[str, Any]:
        """The invocation for its buyer (with the token), its seller, or an auditor or admin;
        anyone else gets InvocationNotFound."""
        invocation = self.invocation(invocation_id)
        if invocation.buyer_account_id == account_id:
            return invocation.to_public(with_token=True)
        if invocation.seller_account_id == account_id or {"auditor", "admin"} & set(roles):
            return invocation.to_public()
        raise InvocationNotFound("invocation not found")

    # -- opening ----------------------------------------------------------------------------
    def invocation_body(self, body: Any) -> dict[str, Any]:
        """Normalise an invocation request (what the idempotency hash covers)."""
        if not isinstance(body, dict):
            raise InvalidInput("the body must be a JSON object")
        unknown = set(body) - {"listing_id", "channel_id", "budget_minor", "buyer_jkt", "max_concurrency",
                               "listing_version", "max_call_units"}
        if unknown:
            raise InvalidInput(f"unknown fields: {sorted(unknown)}", param=sorted(unknown)[0])
        jkt = body.get("buyer_jkt")
        if not isinstance(jkt, str) or not _JKT.fullmatch(jkt):
            raise InvalidInput("buyer_jkt must be the RFC 7638 thumbprint of your key (43 base64url characters)",
                               param="buyer_jkt")
        return {"listing_id": str(parse_uuid(body.get("listing_id"), param="listing_id")),
                "channel_id": str(parse_uuid(body.get("channel_id"), param="channel_id")),
                "budget_minor": _bounded(body, "budget_minor", 1, MAX_AMOUNT_MINOR, None),
                "buyer_jkt": jkt, "max_concurrency": _bounded(body, "max_concurrency", 1, MAX_CONCURRENCY, 1),
                "listing_version": _bounded(body, "listing_version", 1, 2**31, None, optional=True),
                "max_call_units": _bounded(body, "max_call_units", 1, 2**31, None, optional=True)}

    def open(self, meta: dict, account_id: str, *, idempotency_key: str, body: Any) -> dict[str, Any]:
        """Open a session: hold the budget on the channel and issue the invoke token (one save).

        Returns the invocation as its buyer sees it (with ``invoke_token``) and ``replayed``.
        """
        normal = self.invocation_body(body)
        digest = request_hash(normal)
        invocation_id = invocation_id_for(account_id, idempotency_key)

        def command() -> dict[str, Any]:
            if self.exists(invocation_id):
                return _replay(self.invocation(invocation_id), digest)
            channel = self.market.money.channel_for(account_id, normal["channel_id"])
            listing, device = self._decide_on(normal, account_id, channel)
            unit = listing.metadata["metering_unit"]
            call_units = _call_units(listing, unit, normal["max_call_units"])
            if call_units * listing.price_minor > normal["budget_minor"]:
                raise InvalidInput(f"budget_minor must cover one call ({call_units} × {listing.price_minor})",
                                   param="budget_minor")
            now = self.now_s()
            deadlines = self._deadlines(channel, now)
            jti = secrets.token_urlsafe(16)  # random: the node binds it, nobody may guess it
            claims = self._claims(invocation_id, listing, device, normal, unit, call_units, jti, now, deadlines)
            kid = self.keyring().current("signing")
            token = issue_invoke_token(claims, self._signer(kid), kid)
            channel.hold(meta, invocation_id=str(invocation_id), amount_minor=normal["budget_minor"], now_s=now,
                         lapse_at_s=deadlines[2], seller_account_id=listing.account_id)
            invocation = Invocation(
                id=invocation_id, meta=meta, buyer_account_id=account_id, seller_account_id=listing.account_id,
                seller_device_id=str(device.id), listing_id=str(listing.id), listing_version=listing.version,
                channel_id=str(channel.id), unit=unit, unit_price_minor=listing.price_minor,
                currency=listing.currency, budget_minor=normal["budget_minor"], max_call_units=call_units,
                max_concurrency=normal["max_concurrency"], idempotency_key=idempotency_key, request_hash=digest,
                token=token, kid=kid, jti=jti, cnf_jkt=normal["buyer_jkt"], issued_at_s=now,
                start_by_s=claims["start_by"], expires_at_s=claims["exp"], lapse_at_s=deadlines[2])
            channel.check_invariants()
            self.save(channel, invocation)
            return {**invocation.to_public(with_token=True), "replayed": False}

        # The channel's batcher commits debits every few ms: race it as a close does.
        return self.retrying(command, attempts=RACING_ATTEMPTS)

    def _decide_on(self, normal: dict[str, Any], account_id: str, channel: Channel) -> tuple[Listing, Device]:
        try:
            listing = self.load(Listing, UUID(normal["listing_id"]))
        except NotFound:
            raise ListingNotFound("listing not found", param="listing_id") from None
        if listing.account_id == account_id:
            raise OwnListing("you cannot invoke your own listing", param="listing_id")
        if listing.delisted:
            raise ListingDelisted("the listing was delisted", param="listing_id")
        if normal["listing_version"] not in (None, listing.version):
            raise ListingNotInvocable(f"the listing is at version {listing.version}, not "
                                      f"{normal['listing_version']}", param="listing_version")
        facts = listing.metadata
        if facts.get("kind") not in COMPUTE_KINDS or facts.get("metering_unit") not in UNITS:
            raise ListingNotInvocable(f"the listing is not a model or pipeline metered in one of {UNITS}",
                                      param="listing_id")
        device = self.load(Device, UUID(listing.device_id), "seller device")
        if device.suspended:
            raise SellerDeviceSuspended("the seller's device is suspended", param="listing_id")
        if listing.currency != channel.currency:
            raise CurrencyMismatch(f"the listing is priced in {listing.currency}, the channel holds {channel.currency}",
                                   param="channel_id")
        return listing, device

    def _deadlines(self, channel: Channel, now: int) -> tuple[int, int, int]:
        """``(start_by, exp, lapse_at)``: the hold lapses before the channel can settle."""
        margin = self.market.money.config.settle_margin_s if channel.rail == "chain" else 0
        latest_lapse = channel.expiry_s - margin
        exp = min(now + self.config.session_s, latest_lapse - self.config.report_grace_s)
        if exp < now + MIN_SESSION_S:
            raise InvocationChannelExpiring(
                f"the channel expires at {channel.expiry_s}: a session, its {self.config.report_grace_s} s report "
                f"grace{' and the settle margin' if margin else ''} no longer fit; open a new channel",
                param="channel_id")
        return min(now + self.config.start_window_s, exp), exp, exp + self.config.report_grace_s

    def _claims(self, invocation_id: UUID, listing: Listing, device: Device, normal: dict[str, Any], unit: str,
                call_units: int, jti: str, now: int, deadlines: tuple[int, int, int]) -> dict[str, Any]:
        key = device.current_key
        claims: dict[str, Any] = {
            "iss": self.hub_url, "aud": str(device.id), "sub": str(invocation_id), "jti": jti, "iat": now,
            "start_by": deadlines[0], "exp": deadlines[1], "listing_id": str(listing.id),
            "listing_version": listing.version, "unit": unit, "unit_price_minor": listing.price_minor,
            "currency": listing.currency, "budget_minor": normal["budget_minor"], "max_call_units": call_units,
            "max_concurrency": normal["max_concurrency"], "cnf": {"jkt": normal["buyer_jkt"]},
            "seller_keys": {"ed25519": key["public_key"], "x25519": key["kx_public_key"]},
        }
        rest = device.endpoint.split("://", 1)[-1].split("/", 1)[0] if device.endpoint else ""
        if _ENDPOINT_HOST_PORT.fullmatch(rest):
            claims["endpoint"] = rest
        return claims

    def _signer(self, kid: str) -> SigningKey:
        signer = self._signers.get(kid)
        if signer is None:
            signer = self._signers[kid] = SigningKey.from_seed(bytes(self.secrets.signing_key(kid)))
        return signer

    # -- the node's reports (called by the trace intake, inside its retried command) -----------
    def apply_bound(self, meta: dict, device: Device, body: dict[str, Any]) -> tuple[Any, ...]:
        """``invoke_bound``: the node bound the token to the buyer's key. ``()`` if known already."""
        invocation = self._reported(device, body)
        if body.get("listing_id") != invocation.listing_id:
            raise InvocationWrongDevice("the binding names another listing than the invocation's", param="listing_id")
        changed = invocation.record_bound(meta, jti=body.get("jti"), device_id=body.get("device_id"),
                                          buyer_jkt=body.get("jkt"), bound_at_ms=body.get("bound_at_ms"))
        return (invocation,) if changed else ()

    def apply_final(self, meta: dict, device: Device, body: dict[str, Any]) -> tuple[Any, ...]:
        """``invoke_final``: capture the metered amount, release the rest of the hold.
        ``(invocation, channel)``; ``()`` when this final was captured already."""
        invocation = self._reported(device, body)
        if body.get("jti") != invocation.jti:
            raise InvocationWrongDevice("the final report names another token than the invocation's", param="jti")
        receipt = body.get("receipt")
        channel = self.market.money.channel(invocation.channel_id)
        split = invocation.record_final(
            meta, receipt, body.get("countersignature"), device_key=_device_key(device, receipt),
            fee_of=lambda amount: debit_fee(channel.spent_minor, amount, channel.fee_bps))
        if split is None:
            return ()
        channel.capture_hold(meta, invocation_id=str(invocation.id), amount_minor=split.captured_minor,
                             seller_account_id=invocation.seller_account_id, now_s=self.now_s())
        channel.settle_after_holds(meta)  # the buyer closed while the session ran: it settles now
        channel.check_invariants()
        return invocation, channel

    def apply_rejection(self, meta: dict, device: Device, body: dict[str, Any]) -> tuple[Any, ...]:
        """``invoke_rejection``: a safety rejection, recorded on the invocation (costs nothing)."""
        rejection = body.get("rejection")
        subject = rejection.get("credentialSubject") if isinstance(rejection, dict) else None
        invocation = self._reported(device, subject if isinstance(subject, dict) else {})
        changed = invocation.record_rejection(meta, rejection, device_key=_device_key(device, rejection))
        return (invocation,) if changed else ()

    def _reported(self, device: Device, body: dict[str, Any]) -> Invocation:
        if not isinstance(body, dict):
            raise InvalidInput("the report body must be a JSON object")
        invocation = self.invocation(str(body.get("invocation_id")))
        if invocation.seller_device_id != str(device.id):
            raise InvocationWrongDevice("only the invocation's seller device reports on it")
        return invocation

    # -- lapse (the sweep) ---------------------------------------------------------------------
    def lapse(self, meta: dict, invocation_id: str | UUID) -> bool:
        """Release the hold of a session with no final report by its lapse time; False if not due."""

        def command() -> bool:
            invocation = self.invocation(invocation_id)
            if not invocation.lapse(meta, now_s=self.now_s()):
                return False
            channel = self.market.money.channel(invocation.channel_id)
            channel.release_hold(meta, invocation_id=str(invocation.id), now_s=self.now_s())
            channel.settle_after_holds(meta)
            channel.check_invariants()
            self.save(channel, invocation)
            return True

        return self.retrying(command, attempts=RACING_ATTEMPTS)

    def lapse_due(self, meta: dict, due_ids: Sequence[str]) -> list[str]:
        """Lapse each of ``due_ids`` (open holds past their lapse time, from the balances read
        model: ``projections.balances.holds_due``); returns the ones lapsed."""
        return [i for i in due_ids if self.lapse({**meta, "causation_id": i}, i)]


def _bounded(body: dict[str, Any], name: str, low: int, high: int, default: int | None, *,
             optional: bool = False) -> int | None:
    value = body.get(name)
    if value is None and (optional or default is not None):
        return default
    if type(value) is not int or not low <= value <= high:
        raise InvalidInput(f"{name} must be an integer in {low}..{high}", param=name)
    return value


def _device_key(device: Device, credential: Any) -> VerifyKey:
    """The reporting device's key that issued ``credential`` (any key it registered: the
    report may have waited in the outbox past a rotation)."""
    issuer = credential.get("issuer") if isinstance(credential, dict) else None
    for key in device.keys:
        verify_key = VerifyKey.from_multibase(key["public_key"])
        if issuer == verify_key.did_key:
            return verify_key
    raise InvokeReceiptTampered("the credential is not signed by a key of the device that reports it")


def _replay(invocation: Invocation, digest: str) -> dict[str, Any]:
    if not invocation.replays(digest):
        raise IdempotencyKeyReused("this Idempotency-Key was used with another request", param="Idempotency-Key")
    return {**invocation.to_public(with_token=True), "replayed": True}


def _call_units(listing: Listing, unit: str, asked: int | None) -> int:
    """The token's ``max_call_units``: the listing's ``max_units_per_call`` (the seller signed it),
    which the buyer may repeat but not lower (the node bills a call at most the token's cap, so a
    lower one would under-bill the seller; the node also refuses such a token). A listing published
    before it was carried: the buyer's figure or the unit's default."""
    listed = listing.metadata.get("max_units_per_call")
    if isinstance(listed, int):
        if asked is not None and asked != listed:
            raise InvalidInput(f"this listing counts up to {listed} {unit} per call: max_call_units is that "
                               "or absent", param="max_call_units")
        return listed
    call_units = asked or DEFAULT_CALL_UNITS.get(unit)
    if call_units is None:
        raise InvalidInput(f"a listing metered in {unit} needs max_call_units (its asset's max_units_per_call)",
                           param="max_call_units")
    return call_units
