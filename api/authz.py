"""Who may call what: one table of every route's needs, enforced in one middleware.

Each route of the route table (method + Falcon route template) declares the credential kinds
it accepts, the roles it needs (any one of them) and whether it is a sensitive change that
needs a recent login. For an API key or an OAuth client the roles are scopes: the credential
acts only in the roles it was issued with (and its account still holds). ``docs/api.md``
("Scopes") holds the same table; a test checks that the two agree and that every route the
router serves is here.

``Authorize.process_resource`` authenticates before the responder runs and stores the
principal in ``req.context.principal`` (``api.http.principal`` reuses it), then refuses:

* 401 ``unauthenticated`` (or the credential's own 401 code): no or a bad credential;
* 403 ``forbidden``: a credential kind the route does not take, or a session or device whose
  account lacks the role;
* 403 ``insufficient_scope``: an API key or OAuth client whose scopes do not cover the route;
* 401 ``reauthentication_required``: a sensitive change with a session older than 15 minutes
  and no current two-factor code in ``X-Totp-Code``.

A session token seen before is checked without I/O on the loop (the debit route is hot);
anything else is authenticated on the thread pool.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import falcon

from api.http import run_sync
from domain.app.identity import RECENT_LOGIN_S, TOTP_CODE_PATTERN, TOTP_CODE_RE
from domain.model.errors import Forbidden, InvalidInput, Unauthenticated
from domain.model.principal import Principal

ANONYMOUS = "anonymous"
CREDENTIAL_KINDS = (ANONYMOUS, "session", "api_key", "oauth_client", "device")
TOTP_HEADER = "X-Totp-Code"


@dataclass(frozen=True, slots=True)
class Need:
    """What a route needs: ``kinds`` it accepts, ``roles`` (any one; scopes for API keys and
    OAuth clients; empty: any account), ``recent``: a sensitive change (recent login or TOTP)."""

    kinds: tuple[str, ...]
    roles: tuple[str, ...] = ()
    recent: bool = False

    @property
    def public(self) -> bool:
        """Anonymous only: the credential, if any, is not ours to read (Basic auth, signatures)."""
        return self.kinds == (ANONYMOUS,)


PUBLIC = Need((ANONYMOUS,))
ACCOUNT = ("session", "api_key", "oauth_client")
ANY = (*ACCOUNT, "device")
SESSION_RECENT = Need(("session",), recent=True)
BUYER = Need(ACCOUNT, ("buyer",))
SELLER_NODE = Need(("session", "api_key"), ("seller",))
DEVICE_SELLER = Need(("device",), ("seller",))

ROUTES: dict[tuple[str, str], Need] = {
    ("GET", "/healthz"): PUBLIC,
    ("GET", "/readyz"): PUBLIC,
    ("GET", "/.well-known/ai-market.json"): PUBLIC,
    ("GET", "/openapi.json"): PUBLIC,
    ("GET", "/metrics"): PUBLIC,  # Prometheus scrapes (api/resources/metrics.py)
    ("POST", "/v1/accounts"): PUBLIC,
    ("POST", "/v1/sessions"): PUBLIC,
    ("GET", "/v1/me"): Need(ANY),
    ("POST", "/v1/me/totp"): SESSION_RECENT,
    ("POST", "/v1/me/totp/confirm"): SESSION_RECENT,
    ("POST", "/v1/api-keys"): SESSION_RECENT,
    ("GET", "/v1/api-keys"): Need(("session",)),
    ("DELETE", "/v1/api-keys/{credential_id}"): Need(("session", "api_key")),
    ("POST", "/v1/oauth/clients"): SESSION_RECENT,
    ("GET", "/v1/oauth/clients"): Need(("session",)),
    ("DELETE", "/v1/oauth/clients/{credential_id}"): Need(("session", "oauth_client")),
    ("POST", "/v1/oauth/token"): PUBLIC,
    ("POST", "/v1/devices/challenges"): SELLER_NODE,
    ("POST", "/v1/devices"): SELLER_NODE,
    ("GET", "/v1/devices"): Need(("session", "api_key")),
    ("GET", "/v1/devices/me"): Need(("device",)),
    ("GET", "/v1/devices/{device_id}"): Need((ANONYMOUS, *ANY)),
    ("POST", "/v1/devices/{device_id}/keys"): Need(("device",)),
    ("GET", "/v1/audit/events"): Need(ACCOUNT, ("auditor", "admin")),
    ("GET", "/v1/audit"): Need(ACCOUNT),  # api/resources/audit_trail.py: own entries; auditors and admins all
    ("GET", "/v1/audit/tree-heads"): PUBLIC,  # signed tree heads are public: anyone may watch the log grow
    ("GET", "/v1/audit/consistency"): PUBLIC,
    ("POST", "/v1/listings"): DEVICE_SELLER,
    ("GET", "/v1/listings/{listing_id}"): PUBLIC,
    ("PUT", "/v1/listings/{listing_id}"): DEVICE_SELLER,
    ("DELETE", "/v1/listings/{listing_id}"): DEVICE_SELLER,
    ("POST", "/v1/traces"): Need(("device",)),  # api/resources/traces.py: any enrolled node
    ("GET", "/v1/trust/{device_id}"): Need((ANONYMOUS, *ANY)),  # api/resources/trust.py: public, like search
    ("GET", "/v1/search"): PUBLIC,
    ("POST", "/v1/search"): PUBLIC,
    ("GET", "/v1/categories"): PUBLIC,
    ("POST", "/v1/me/wallet"): SESSION_RECENT,
    ("GET", "/v1/me/wallet"): Need(ACCOUNT),
    ("POST", "/v1/channels"): BUYER,
    ("GET", "/v1/channels"): BUYER,
    ("GET", "/v1/channels/{channel_id}"): Need(ACCOUNT, ("buyer", "auditor")),
    ("POST", "/v1/channels/{channel_id}/top-ups"): BUYER,
    ("POST", "/v1/channels/{channel_id}/debits"): BUYER,
    ("POST", "/v1/channels/{channel_id}/close"): BUYER,
    ("POST", "/v1/webhooks/stripe"): PUBLIC,
    ("GET", "/v1/balances"): Need(ACCOUNT),
    ("GET", "/v1/statements"): Need(ACCOUNT, ("seller",)),
    ("POST", "/v1/me/payout-destination"): Need(("session",), ("seller",), recent=True),
    ("POST", "/v1/purchases"): BUYER,
    ("GET", "/v1/purchases"): Need(ACCOUNT),
    ("GET", "/v1/purchases/{purchase_id}"): Need(ACCOUNT),
    ("POST", "/v1/purchases/{purchase_id}/revoke"): Need(ACCOUNT, ("seller", "admin")),
    ("POST", "/v1/invocations"): BUYER,
    ("GET", "/v1/invocations/{invocation_id}"): Need(ACCOUNT),  # buyer, seller, auditor, admin (the service)
    # api/resources/transactions.py: its buyer, its seller, auditors and admins (others: 404)
    ("GET", "/v1/transactions/{transaction_id}/trace"): Need(ACCOUNT),
    # api/resources/stats.py: an account's own transactions; auditors and admins every one
    ("GET", "/v1/stats/live"): Need(ACCOUNT),
}


def need_for(method: str, template: str) -> Need | None:
    return ROUTES.get((method, template))


def check(need: Need, who: Principal) -> None:
    """Raise unless ``who`` may call a route of ``need`` (kind, then role or scope)."""
    if who.kind not in need.kinds:
        accepted = [k for k in need.kinds if k != ANONYMOUS]
        raise Forbidden(f"this route takes a {' or '.join(accepted)} credential, not a {who.kind}")
    if need.roles:
        who.require_role(*need.roles)


class Authorize:
    """Checks each request against the route's declared needs before the responder runs."""

    async def process_resource(self, req: falcon.Request, resp: falcon.Response, resource: Any,
                               params: dict[str, Any]) -> None:
        need = ROUTES.get((req.method, req.uri_template))
        if need is None:
            if hasattr(resource, f"on_{req.method.lower()}"):  # served yet undeclared: closed
                raise Forbidden("this route declares no needs")
            return  # Falcon's own 405 and OPTIONS answers
        if need.public:
            return
        header = req.get_header("Authorization")
        if header is None and ANONYMOUS in need.kinds:
            return
        who = await _authenticate(req, header)
        check(need, who)
        if need.recent:
            await _check_recent_login(req, who)


async def _authenticate(req: falcon.Request, header: str | None) -> Principal:
    """The principal of the bearer credential: a session token seen before without I/O, any
    other credential on the thread pool (store reads, revocation checks)."""
    if not header:
        raise Unauthenticated("send Authorization: Bearer <token or API key>")
    authenticator = req.context.authenticator
    who = None
    if header[:7].lower() == "bearer ":
        who = authenticator.cached_session(header[7:].strip())
    if who is None:
        who = await run_sync(req, authenticator.authenticate, header)
    req.context.principal = who
    return who


async def _check_recent_login(req: falcon.Request, who: Principal) -> None:
    """A login of the last 15 minutes, or a current TOTP code in ``X-Totp-Code`` (checked on
    the thread pool: it reads the account and spends the code). A malformed code is 422
    whether or not the login is recent, as the document says."""
    code = req.get_header(TOTP_HEADER)
    if code is not None and not TOTP_CODE_RE.fullmatch(code):
        raise InvalidInput(f"{TOTP_HEADER} must be 6 digits", param=TOTP_HEADER)
    identity = req.context.authenticator.identity
    if not identity.login_is_recent(who):
        await run_sync(req, identity.check_recent_login, who, code)


# -- the OpenAPI document says the same -----------------------------------------------------
def annotate_spec(spec: dict[str, Any]) -> dict[str, Any]:
    """Write each operation's needs from the table into the document: ``x-credentials`` (with
    ``anonymous`` when no credential is needed), ``x-roles`` (also the scopes keys and OAuth
    clients need), ``x-recent-login`` and the ``X-Totp-Code`` header, and ``security``
    (optional when anonymous callers are served too)."""
    for path, operations in spec.get("paths", {}).items():
        for method, operation in operations.items():
            need = ROUTES.get((method.upper(), path))
            if need is None:
                continue
            operation["x-credentials"] = list(need.kinds)
            operation["x-roles"] = list(need.roles)
            operation["x-recent-login"] = need.recent
            bearer = [k for k in need.kinds if k != ANONYMOUS]
            if not bearer:
                operation.pop("security", None)
            else:
                operation["security"] = ([{}] if ANONYMOUS in need.kinds else []) + [{"bearer": []}]
            if need.recent:
                params = operation.setdefault("parameters", [])
                if not any(p.get("name") == TOTP_HEADER for p in params):
                    params.append(TOTP_PARAM)
    return spec


TOTP_PARAM = {"name": TOTP_HEADER, "in": "header", "required": False,
              "schema": {"type": "string", "pattern": TOTP_CODE_PATTERN},
              "description": f"A current two-factor code: stands in for a login of the last "
                             f"{RECENT_LOGIN_S // 60} minutes when two-factor is on (otherwise log in again)."}
