"""Money over HTTP: wallets, channels (open, top up, debit, close), the Stripe webhook,
balances and seller statements."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

import falcon
import structlog

from api.http import check_tree, meta, principal, principal_async, raw_body, read_body, read_json
from api.openapi import obj, op, open_obj
from domain.model.channel import FAILED_REFUND_STATUSES
from domain.model.errors import InvalidInput
from domain.model.json_input import check_depth
from domain.model.money import SCALES
from projections.balances import balances_of, channels_of

if TYPE_CHECKING:
    from domain.app.debit_batcher import DebitBatcher
    from domain.app.marketplace import Marketplace
    from domain.model.ports import SettlementQueue, ViewDB

AMOUNT = {"type": "integer", "minimum": 1, "maximum": 10**15}
TX_HASH = {"type": "string", "pattern": "^0[xX][0-9a-fA-F]{64}$"}
HEX_SIG = {"type": "string", "pattern": "^0x[0-9a-fA-F]{130}$"}
UUID_STR = {"type": "string", "format": "uuid", "minLength": 36, "maxLength": 36}
IDEMPOTENCY_PATTERN = "^[\\x21-\\x7e]{1,255}$"  # visible ASCII, as the server checks (_idempotency_key)
IDEMPOTENCY_RE = re.compile(IDEMPOTENCY_PATTERN)
IDEMPOTENCY = {"name": "Idempotency-Key", "in": "header", "required": True,
               "schema": {"type": "string", "minLength": 1, "maxLength": 255, "pattern": IDEMPOTENCY_PATTERN},
               "description": "Same key + same body = same answer; same key + another body = 409."}
# A card payment must not be made twice by a retry, so every open and top-up takes a key (a
# chain one is idempotent by its tx hash already, but one rule per operation is what the
# document can say).
CARD_CURRENCIES = sorted(code for code, scale in SCALES.items() if scale == 2)
CHANNEL = open_obj(id={"type": "string"}, rail={"type": "string"}, status={"type": "string"},
                   currency={"type": "string"}, deposit_minor={"type": "integer"}, spent_minor={"type": "integer"},
                   remaining_minor={"type": "integer"}, fee_bps={"type": "integer"}, expiry_s={"type": "integer"})
OPEN = {"oneOf": [
    obj(["rail", "currency", "amount_minor"], rail={"const": "card"},
        currency={"type": "string", "enum": CARD_CURRENCIES}, amount_minor=AMOUNT),
    obj(["rail", "tx_hash"], rail={"const": "chain"}, tx_hash=TX_HASH),
]}
TOP_UP = {"oneOf": [obj(["amount_minor"], amount_minor=AMOUNT), obj(["tx_hash"], tx_hash=TX_HASH)]}
DEBIT = obj(["amount_minor", "seller_account_id"], amount_minor=AMOUNT, seller_account_id=UUID_STR,
            purpose={"type": "string", "maxLength": 200},
            voucher=obj(["cumulative_minor", "signature"], cumulative_minor={"type": "integer", "minimum": 1},
                        signature=HEX_SIG))
DEBIT_RESULT = open_obj(channel_id={"type": "string"}, sequence={"type": "integer"},
                        amount_minor={"type": "integer"}, fee_minor={"type": "integer"},
                        remaining_minor={"type": "integer"})
WALLET = obj(["address", "signature"], address={"type": "string", "pattern": "^0x[0-9a-fA-F]{40}$"},
             signature=HEX_SIG)
ITEMS = open_obj(items={"type": "array"})
log = structlog.get_logger("api")


def _idempotency_key(req: falcon.Request) -> str:
    key = req.get_header("Idempotency-Key")
    if not key:
        raise InvalidInput("send an Idempotency-Key header", param="Idempotency-Key")
    if not IDEMPOTENCY_RE.fullmatch(key):
        raise InvalidInput("Idempotency-Key must be 1..255 visible ASCII characters", param="Idempotency-Key")
    return key


def _debit_response(resp: falcon.Response, result: dict[str, Any]) -> None:
    replayed = result.pop("replayed", False)
    resp.set_header("Idempotent-Replayed", "true" if replayed else "false")
    resp.media = result
    resp.status = falcon.HTTP_201


class Wallet:
    openapi = {
        "post": op("Bind your wallet: EIP-191 signature over the binding message", "money", auth="account",
                   body=WALLET, responses={"201": open_obj(address={"type": "string"})}),
        "get": op("Your bound wallet and the message to sign", "money", auth="account",
                  responses={"200": open_obj(address={"type": ["string", "null"]}, message={"type": "string"})}),
    }

    def __init__(self, market: Marketplace) -> None:
        self.market = market

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        who = principal(req)
        body = read_json(req, WALLET)
        resp.media = self.market.money.bind_wallet(meta(req, who), who.account_id, **body)
        resp.status = falcon.HTTP_201

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        from domain.model.errors import WalletRequired
        from domain.model.wallet import wallet_message

        who = principal(req)
        market = self.market
        try:
            address: str | None = market.money.wallet_of(who.account_id)
        except WalletRequired:
            address = None
        template = wallet_message(who.account_id, "0x" + "0" * 40, market.hub_url)
        resp.media = {"address": address, "message": template.replace("0x" + "0" * 40, "<your address>")}


class Channels:
    openapi = {
        "post": op("Open a channel: card (Stripe PaymentIntent; funded by its webhook) or chain (the tx "
                   "that opened it on the contract)", "money", auth="account", body=OPEN,
                   params=[IDEMPOTENCY], responses={"201": CHANNEL}),
        "get": op("Your channels", "money", auth="account", responses={"200": ITEMS}),
    }

    def __init__(self, market: Marketplace, views: ViewDB) -> None:
        self.market = market
        self.views = views

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        who = principal(req)
        body = read_json(req, OPEN)
        key = _idempotency_key(req)
        market = self.market
        if body["rail"] == "card":
            resp.media = market.money.open_card_channel(meta(req, who), who.account_id, currency=body["currency"],
                                                        amount_minor=body["amount_minor"], idempotency_key=key)
        else:
            resp.media = market.money.open_chain_channel(meta(req, who), who.account_id, tx_hash=body["tx_hash"])
        resp.status = falcon.HTTP_201

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        who = principal(req)
        resp.media = {"items": channels_of(self.views, who.account_id)}


class Channel:
    openapi = {"get": op("One of your channels", "money", auth="account", responses={"200": CHANNEL})}

    def __init__(self, market: Marketplace) -> None:
        self.market = market

    def on_get(self, req: falcon.Request, resp: falcon.Response, channel_id: str) -> None:
        who = principal(req)
        channel = self.market.money.channel_for(who.account_id, channel_id, auditor="auditor" in who.roles)
        resp.media = channel.to_public()


class TopUps:
    openapi = {"post": op("Top up: card (amount_minor; a new PaymentIntent) or chain (tx_hash of the top-up)",
                          "money", auth="account", body=TOP_UP, params=[IDEMPOTENCY],
                          responses={"201": CHANNEL})}

    def __init__(self, market: Marketplace) -> None:
        self.market = market

    def on_post(self, req: falcon.Request, resp: falcon.Response, channel_id: str) -> None:
        who = principal(req)
        body = read_json(req, TOP_UP)
        key = _idempotency_key(req)
        market = self.market
        if "tx_hash" in body:
            resp.media = market.money.top_up_chain_channel(meta(req, who), who.account_id, channel_id,
                                                     tx_hash=body["tx_hash"])
        else:
            resp.media = market.money.top_up_card_channel(meta(req, who), who.account_id, channel_id,
                                                          amount_minor=body["amount_minor"], idempotency_key=key)
        resp.status = falcon.HTTP_201


class Debits:
    openapi = {"post": op("Debit the channel to pay a seller (402 channel_exhausted when it cannot)", "money",
                          auth="account", body=DEBIT, params=[IDEMPOTENCY],
                          responses={"201": DEBIT_RESULT, "402": None})}

    def __init__(self, batcher: DebitBatcher) -> None:
        self.batcher = batcher

    # The hot path runs on the event loop (no thread hand-off): the body, a session token
    # seen before and the batcher's cached channel facts need no I/O; the commit is shared.
    async def on_post(self, req: falcon.Request, resp: falcon.Response, channel_id: str) -> None:
        await read_body(req)
        body = read_json(req, DEBIT)
        who = await principal_async(req)
        key = _idempotency_key(req)
        result = await self.batcher.submit(meta(req, who), who.account_id, channel_id, key, body)
        _debit_response(resp, result)


class Close:
    openapi = {"post": op("Close the channel: no more debits; settlement follows", "money", auth="account",
                          responses={"200": CHANNEL})}

    def __init__(self, market: Marketplace, enqueue_settlement: SettlementQueue | None) -> None:
        self.market = market
        self.enqueue_settlement = enqueue_settlement

    def on_post(self, req: falcon.Request, resp: falcon.Response, channel_id: str) -> None:
        who = principal(req)
        resp.media = self.market.money.close_channel(meta(req, who), who.account_id, channel_id)
        if self.enqueue_settlement is not None and resp.media["status"] == "closing":
            try:
                self.enqueue_settlement(resp.media["id"])
            except Exception as exc:  # noqa: BLE001 - Redis down: the sweep (every 60 s) settles it
                log.warning("settlement.enqueue_failed", channel_id=resp.media["id"], error=repr(exc))


REFUND_UPDATES = ("refund.updated", "charge.refund.updated")  # Stripe sends both for some payment methods


class StripeWebhook:
    openapi = {"post": op(
        "Stripe webhook (signed with Stripe-Signature; no other auth): payment_intent.succeeded funds a channel "
        "(or, once it has settled, is returned to the card); refund.failed and failed refund updates are recorded",
        "money", body={"type": "object"},
        responses={"200": open_obj(received={"type": "boolean"}, credited={"type": ["boolean", "null"]},
                                   returned={"type": ["boolean", "null"]},
                                   refund_failure_recorded={"type": ["boolean", "null"]})})}

    def __init__(self, market: Marketplace) -> None:
        self.market = market

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        raw = raw_body(req)
        check_depth(raw)  # the Stripe library parses with the standard module: bound it first
        market = self.market
        event = market.money.card_gateway().verify_webhook(raw, req.get_header("Stripe-Signature"))
        check_tree(event)  # signed by Stripe, yet still only text goes into events
        kind, obj = event["type"], event["data"]
        credited = returned = refund_failure_recorded = None
        if kind == "payment_intent.succeeded":
            outcome = market.money.credit_card_payment(meta(req), obj)
            credited, returned = outcome["credited"], outcome["returned"]
        elif kind == "refund.failed" or (kind in REFUND_UPDATES and obj.get("status") in FAILED_REFUND_STATUSES):
            refund_failure_recorded = market.refunds.record_card_refund_failure(meta(req), obj)["recorded"]
        resp.media = {"received": True, "credited": credited, "returned": returned,
                      "refund_failure_recorded": refund_failure_recorded}


class Balances:
    openapi = {"get": op("Ledger balances: your accounts (auditors: every account)", "money", auth="account",
                         responses={"200": ITEMS})}

    def __init__(self, views: ViewDB) -> None:
        self.views = views

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        who = principal(req)
        everyone = "auditor" in who.roles or "admin" in who.roles
        resp.media = {"items": balances_of(self.views, None if everyone else who.account_id)}


DESTINATION = obj(["stripe_account"], stripe_account={"type": "string", "pattern": "^acct_[A-Za-z0-9]{1,59}$"})


class PayoutDestination:
    openapi = {"post": op("Set where your card-rail earnings are paid (a Stripe Connect account)", "money",
                          auth="account", body=DESTINATION, responses={"201": open_obj(stripe_account={"type": "string"})})}

    def __init__(self, market: Marketplace) -> None:
        self.market = market

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        who = principal(req)
        body = read_json(req, DESTINATION)
        resp.media = self.market.payouts.set_payout_destination(meta(req, who), who.account_id,
                                                                       body["stripe_account"])
        resp.status = falcon.HTTP_201


class Statements:
    openapi = {"get": op("Your seller statement: earnings per channel, fees, payouts, payable", "money",
                         auth="account", responses={"200": open_obj(earnings={"type": "array"},
                                                                    payouts={"type": "array"})})}

    def __init__(self, views: ViewDB) -> None:
        self.views = views

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        from projections.balances import statement_of

        who = principal(req)
        resp.media = statement_of(self.views, who.account_id)
