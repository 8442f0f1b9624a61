"""The declared outcome of every route of the OpenAPI document for every actor against the
owner's data: one table, read by ``tests/api/test_authorization_matrix.py``.

The owner is a buyer and seller account with a funded channel, an enrolled device, listings
it published, a purchase it made, a purchase made of it, API keys, OAuth clients, a wallet, a
payout destination and trace entries. Each other actor aims at those objects (their ids in the
path, the owner's channel in a purchase, the owner's signed credentials replayed, ...):

* ``other_buyer``: a buyer account (session); ``other_seller``: a seller account (session);
* ``other_device``: the enrolled device of a third account (a fresh device token per request);
* ``auditor``: a buyer granted the auditor role (session); ``anonymous``: no credential;
* ``owner``: its session, or its device on routes that take only a device credential.

A cell is ``ALLOW`` (2xx; for anyone but the owner, none of the owner's private values in the
answer: an allowed self-service route answers about the caller's own data), ``ALL`` (2xx, and
the owner's data may show: the auditor's read-everything routes; secrets still never do) or the
refusal as ``(status, code)``. Another account's object answering "not found" is a refusal.
The owner's column is ``ALLOW`` on every route it may use: a refusal of the owner fails too.
"""

from __future__ import annotations

ACTORS = ("other_buyer", "other_seller", "other_device", "auditor", "anonymous", "owner")  # owner last
ALLOW = "allow"
ALL = "all"
U = (401, "unauthenticated")
F = (403, "forbidden")


def row(owner, other_buyer, other_seller, other_device, auditor, anonymous) -> dict[str, object]:
    return {"owner": owner, "other_buyer": other_buyer, "other_seller": other_seller,
            "other_device": other_device, "auditor": auditor, "anonymous": anonymous}


def public(outcome: object = ALLOW) -> dict[str, object]:
    """A public route: the same outcome whoever calls, and never the owner's private values."""
    return row(*[outcome] * 6)


SELF = row(ALLOW, ALLOW, ALLOW, F, ALLOW, U)  # an account's own data (session), a device refused
SELF_RECENT = SELF
CHANNEL_NOT_FOUND = (404, "not_found")
PURCHASE_NOT_FOUND = (404, "purchase_not_found")
INVOCATION_NOT_FOUND = (404, "invocation_not_found")
BUYERS_OWN = row(ALLOW, CHANNEL_NOT_FOUND, F, F, CHANNEL_NOT_FOUND, U)  # the owner's channel as the target

# In run order: reads first, then writes, then what destroys an object the rows above use.
MATRIX: dict[tuple[str, str], dict[str, object]] = {
    # -- public ---------------------------------------------------------------------------------
    ("GET", "/healthz"): public(),
    ("GET", "/readyz"): public(),
    ("GET", "/.well-known/ai-market.json"): public(),
    ("GET", "/openapi.json"): public(),
    ("GET", "/metrics"): public(),
    ("GET", "/v1/search"): public(),
    ("POST", "/v1/search"): public(),
    ("GET", "/v1/categories"): public(),
    ("GET", "/v1/listings/{listing_id}"): public(),
    ("GET", "/v1/audit/tree-heads"): public(),
    ("GET", "/v1/audit/consistency"): public((404, "tree_head_not_found")),  # the embedded hub signs no heads
    ("GET", "/v1/trust/{device_id}"): public(),  # the owner device's score and what it came from
    ("POST", "/v1/accounts"): public(),  # a new account of the caller's making
    ("POST", "/v1/sessions"): public(),  # a login to the caller's own account (anonymous: a new one)
    # the owner's device: public keys for anyone, the owner view (endpoint, name) for its account
    ("GET", "/v1/devices/{device_id}"): public(),
    # a payment_intent.succeeded for the owner's unpaid channel, not signed by Stripe
    ("POST", "/v1/webhooks/stripe"): public((401, "signature_invalid")),
    # the owner's OAuth client: only its secret mints a token
    ("POST", "/v1/oauth/token"): row(ALLOW, *[(401, "invalid_credentials")] * 5),
    # -- the caller's own account and credentials ----------------------------------------------
    ("GET", "/v1/me"): row(ALLOW, ALLOW, ALLOW, ALLOW, ALLOW, U),
    ("GET", "/v1/api-keys"): SELF,
    ("GET", "/v1/oauth/clients"): SELF,
    ("POST", "/v1/api-keys"): SELF_RECENT,
    ("POST", "/v1/oauth/clients"): SELF_RECENT,
    ("GET", "/v1/devices"): SELF,
    ("GET", "/v1/devices/me"): row(ALLOW, F, F, ALLOW, F, U),
    ("POST", "/v1/devices/challenges"): row(ALLOW, F, ALLOW, F, F, U),
    # an enrollment over the owner's challenge, signed for the owner's account
    ("POST", "/v1/devices"): row(ALLOW, F, (401, "token_invalid"), F, F, U),
    # the owner's wallet address with the owner's binding signature
    ("POST", "/v1/me/wallet"): row(ALLOW, (401, "signature_invalid"), (401, "signature_invalid"), F,
                                   (401, "signature_invalid"), U),
    ("GET", "/v1/me/wallet"): row(ALLOW, ALLOW, ALLOW, F, ALLOW, U),
    ("POST", "/v1/me/payout-destination"): row(ALLOW, F, ALLOW, F, F, U),
    ("GET", "/v1/balances"): row(ALLOW, ALLOW, ALLOW, F, ALL, U),
    ("GET", "/v1/statements"): row(ALLOW, F, ALLOW, F, F, U),
    ("GET", "/v1/audit"): row(ALLOW, ALLOW, ALLOW, F, ALL, U),
    ("GET", "/v1/audit/events"): row(F, F, F, F, ALL, U),
    # -- the owner's channel ---------------------------------------------------------------------
    ("GET", "/v1/channels"): row(ALLOW, ALLOW, F, F, ALLOW, U),
    ("GET", "/v1/channels/{channel_id}"): row(ALLOW, CHANNEL_NOT_FOUND, F, F, ALL, U),
    ("POST", "/v1/channels"): row(ALLOW, ALLOW, F, F, ALLOW, U),
    ("POST", "/v1/channels/{channel_id}/top-ups"): BUYERS_OWN,
    ("POST", "/v1/channels/{channel_id}/debits"): BUYERS_OWN,
    # -- purchases: the owner's channel pays; the owner's purchases are read ---------------------
    ("POST", "/v1/purchases"): BUYERS_OWN,
    ("GET", "/v1/purchases"): row(ALLOW, ALLOW, ALLOW, F, ALL, U),
    ("GET", "/v1/purchases/{purchase_id}"): row(ALLOW, PURCHASE_NOT_FOUND, PURCHASE_NOT_FOUND, F, ALL, U),
    # -- invocations: the owner's channel holds; the owner's session is read -----------------------
    ("POST", "/v1/invocations"): BUYERS_OWN,
    ("GET", "/v1/invocations/{invocation_id}"): row(ALLOW, INVOCATION_NOT_FOUND, INVOCATION_NOT_FOUND, F, ALL, U),
    # the owner's purchase's path (its seller is the vendor); recent transactions: each account its own
    ("GET", "/v1/transactions/{transaction_id}/trace"): row(ALLOW, PURCHASE_NOT_FOUND, PURCHASE_NOT_FOUND, F, ALL,
                                                            U),
    ("GET", "/v1/stats/live"): row(ALLOW, ALLOW, ALLOW, F, ALL, U),
    # -- the owner's device and listings ---------------------------------------------------------
    # the owner device's own signed credential, replayed by another device
    ("POST", "/v1/listings"): row(ALLOW, F, F, (403, "foreign_device"), F, U),
    # an update signed by the other device for the owner's listing
    ("PUT", "/v1/listings/{listing_id}"): row(ALLOW, F, F, (403, "not_listing_owner"), F, U),
    # the owner device's signed outbox entry, posted by another device (recorded as its signal)
    ("POST", "/v1/traces"): row(ALLOW, F, F, (403, "foreign_device"), F, U),
    # -- sensitive self-service changes ------------------------------------------------------------
    ("POST", "/v1/me/totp"): SELF_RECENT,
    # the owner's current two-factor code, sent by others for their own accounts
    ("POST", "/v1/me/totp/confirm"): row(ALLOW, (401, "totp_required"), (401, "totp_required"), F,
                                         (401, "totp_required"), U),
    # -- what ends an object -------------------------------------------------------------------
    ("POST", "/v1/purchases/{purchase_id}/revoke"): row(ALLOW, F, PURCHASE_NOT_FOUND, F, F, U),
    ("DELETE", "/v1/api-keys/{credential_id}"): row(ALLOW, (404, "not_found"), (404, "not_found"), F,
                                                    (404, "not_found"), U),
    ("DELETE", "/v1/oauth/clients/{credential_id}"): row(ALLOW, (404, "not_found"), (404, "not_found"), F,
                                                         (404, "not_found"), U),
    ("DELETE", "/v1/listings/{listing_id}"): row(ALLOW, F, F, (403, "not_listing_owner"), F, U),
    # a rotation of the owner's device key, signed by the other device's key
    ("POST", "/v1/devices/{device_id}/keys"): row(ALLOW, F, F, (404, "not_found"), F, U),
    ("POST", "/v1/channels/{channel_id}/close"): BUYERS_OWN,
}

# Refusals that record something by design (and nothing else): (route, actor) -> event topic.
RECORDED_ON_REFUSAL: dict[tuple[tuple[str, str], str], str] = {
    (("POST", "/v1/traces"), "other_device"): "domain.model.traces:Signal.BehaviourSignal",
}

# Cells found to allow what they should not: (route, actor) -> the reason (strict xfail).
KNOWN_LEAKS: dict[tuple[tuple[str, str], str], str] = {}
