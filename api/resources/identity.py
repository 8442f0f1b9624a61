"""Accounts, sessions, two-factor, API keys and OAuth2 client credentials."""

from __future__ import annotations

import base64
from typing import TYPE_CHECKING
from urllib.parse import parse_qs

import falcon

from api.authz import TOTP_PARAM
from api.http import check, meta, principal, raw_body, read_json
from api.openapi import obj, op, open_obj
from domain.app.identity import CREDENTIAL_NAME_PATTERN, EMAIL_CHARS_MAX, RECENT_LOGIN_S, TOTP_CODE_PATTERN
from domain.model.account import ROLES, SELF_SERVICE_ROLES
from domain.model.errors import InvalidCredentials, MalformedBody

if TYPE_CHECKING:
    from domain.app.marketplace import Marketplace

EMAIL = {"type": "string", "format": "idn-email", "minLength": 3, "maxLength": EMAIL_CHARS_MAX,
         "description": "Checked and normalised with email-validator (no DNS look-up): surrounding spaces "
                        "stripped; internationalised addresses allowed; no quoted local part, no IP-literal "
                        "domain, the domain needs a dot and may not be a special-use name (.test, .local, "
                        "localhost, ...). Stored NFC-normalised and lower-cased; anything else is 422."}
PASSWORD = {"type": "string", "minLength": 10, "maxLength": 256, "description": "Any characters."}
TOTP_CODE = {"type": "string", "pattern": TOTP_CODE_PATTERN}
NAME = {"type": "string", "minLength": 1, "maxLength": 100, "pattern": CREDENTIAL_NAME_PATTERN,
        "description": "1..100 characters, no control characters (and, as everywhere, no lone "
                       "surrogate escapes: they are not Unicode text)."}
SCOPE = {"type": "string", "enum": list(ROLES)}
SCOPES = {"type": "array", "items": SCOPE, "minItems": 0, "maxItems": len(ROLES), "uniqueItems": True,
          "description": "Roles the credential acts in, each one the calling session holds (else 403 "
                         "insufficient_scope). Omitted: all the session's roles. []: a credential that acts "
                         "in no role (only routes that need none: /v1/me, balances, wallet, ...)."}
ACCOUNT = open_obj(id={"type": "string"}, email={"type": "string"}, roles={"type": "array", "items": SCOPE},
                   totp_enabled={"type": "boolean"})
TOKEN = open_obj(access_token={"type": "string"}, token_type={"type": "string"}, expires_in={"type": "integer"})
CREDENTIAL = open_obj(id={"type": "string"}, name={"type": "string"}, scopes={"type": "array", "items": SCOPE},
                      revoked={"type": "boolean"}, secret={"type": "string"})

REGISTER = obj(["email", "password"], email=EMAIL, password=PASSWORD,
               roles={"type": "array", "items": {"enum": list(SELF_SERVICE_ROLES)}, "minItems": 1, "maxItems": 2})
LOGIN = obj(["email", "password"],
            email={"type": "string", "maxLength": EMAIL_CHARS_MAX,
                   "description": "Normalised as at registration; an address that cannot be one is 401 "
                                  "invalid_credentials, like an unknown one."},
            password={"type": "string", "maxLength": 256},
            totp_code={**TOTP_CODE, "description": "Required when two-factor is on."})
TOTP_CONFIRM = obj(["code"], code=TOTP_CODE)
NEW_CREDENTIAL = obj(["name"], name=NAME, scopes=SCOPES)
RECENT = (f"Needs a session that logged in within {RECENT_LOGIN_S // 60} minutes, or a current two-factor "
          "code in X-Totp-Code (401 reauthentication_required otherwise).")


class Accounts:
    openapi = {"post": op("Register an account (roles: buyer, seller)", "identity", body=REGISTER,
                          responses={"201": ACCOUNT})}

    def __init__(self, market: Marketplace) -> None:
        self.market = market

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        body = read_json(req, REGISTER)
        market = self.market
        resp.media = market.identity.register(meta(req), body["email"], body["password"], body.get("roles", ["buyer"]))
        resp.status = falcon.HTTP_201


class Sessions:
    openapi = {"post": op("Log in: a session token (HS256 JWT); send totp_code when 2FA is on", "identity",
                          body=LOGIN, responses={"201": TOKEN})}

    def __init__(self, market: Marketplace) -> None:
        self.market = market

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        body = read_json(req, LOGIN)
        resp.media = self.market.identity.login(body["email"], body["password"], body.get("totp_code"))
        resp.status = falcon.HTTP_201


class Me:
    openapi = {"get": op("The calling account (or, with a device token, the device's account)", "identity",
                         auth="any", responses={"200": open_obj(account=ACCOUNT, credential={"type": "string"},
                                                                device_id={"type": "string"})})}

    def __init__(self, market: Marketplace) -> None:
        self.market = market

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        who = principal(req)
        account = self.market.identity.account(who.account_id)
        resp.media = {"account": account.to_public(), "credential": who.kind, "device_id": who.device_id}


class Totp:
    openapi = {"post": op("Start two-factor set-up: returns the TOTP secret once", "identity", auth="account",
                          description=f"Session only. {RECENT}", params=[TOTP_PARAM],
                          responses={"201": open_obj(secret={"type": "string"}, otpauth_uri={"type": "string"})})}

    def __init__(self, market: Marketplace) -> None:
        self.market = market

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        who = principal(req)
        resp.media = self.market.identity.begin_totp(meta(req, who), who.account_id)
        resp.status = falcon.HTTP_201


class TotpConfirm:
    openapi = {"post": op("Confirm two-factor with a current code; from now on login needs a code",
                          "identity", auth="account", description=f"Session only. {RECENT}", params=[TOTP_PARAM],
                          body=TOTP_CONFIRM, responses={"200": ACCOUNT})}

    def __init__(self, market: Marketplace) -> None:
        self.market = market

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        who = principal(req)
        body = read_json(req, TOTP_CONFIRM)
        resp.media = self.market.identity.confirm_totp(meta(req, who), who.account_id, body["code"])


class Credentials:
    """API keys (``/v1/api-keys``) and OAuth clients (``/v1/oauth/clients``): one mechanism."""

    def __init__(self, market: Marketplace, kind: str) -> None:
        self.market = market
        self.kind = kind
        noun = "API key" if kind == "api_key" else "OAuth client (client-credentials grant)"
        self.openapi = {
            "post": op(f"Create an {noun}; the secret is shown once", "identity", auth="account",
                       description=f"Session only. {RECENT}", params=[TOTP_PARAM],
                       body=NEW_CREDENTIAL, responses={"201": CREDENTIAL}),
            "get": op(f"List your {noun}s (never their secrets)", "identity", auth="account",
                      description="Session only.",
                      responses={"200": open_obj(items={"type": "array", "items": CREDENTIAL})}),
        }

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        who = principal(req)
        body = read_json(req, NEW_CREDENTIAL)
        resp.media = self.market.identity.issue_credential(
            meta(req, who), who, kind=self.kind, name=body["name"], scopes=body.get("scopes"))
        resp.status = falcon.HTTP_201

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        who = principal(req)
        resp.media = {"items": self.market.identity.list_credentials(who.account_id, self.kind)}


class Credential:
    def __init__(self, market: Marketplace, kind: str) -> None:
        self.market = market
        self.kind = kind
        self.openapi = {"delete": op("Revoke it; it stops working at once", "identity", auth="account",
                                     description="A session revokes any of its account's; the credential "
                                                 "itself may revoke only itself (403 otherwise).",
                                     responses={"204": None})}

    def on_delete(self, req: falcon.Request, resp: falcon.Response, credential_id: str) -> None:
        who = principal(req)
        self.market.identity.revoke_credential(meta(req, who), who, credential_id, self.kind)
        resp.status = falcon.HTTP_204


_ROLE = f"(?:{'|'.join(ROLES)})"
TOKEN_FORM = {"type": "object", "required": ["grant_type"], "properties": {
    "grant_type": {"type": "string", "enum": ["client_credentials"]},
    "client_id": {"type": "string", "maxLength": 64,
                  "description": "With client_secret, unless sent as HTTP Basic credentials."},
    "client_secret": {"type": "string", "maxLength": 256},
    "scope": {"type": "string", "pattern": f"^(?:{_ROLE}(?: {_ROLE})*)?$",
              "description": "Space-separated; a subset of the client's scopes (403 insufficient_scope "
                             "otherwise). Omitted: all of them."}}}


class OAuthToken:
    """RFC 6749 §4.4 client-credentials grant; client authenticated by Basic auth or form fields."""

    openapi = {"post": op("OAuth2 token endpoint (grant_type=client_credentials)", "identity",
                          body=TOKEN_FORM, body_media="application/x-www-form-urlencoded",
                          responses={"200": TOKEN})}

    def __init__(self, market: Marketplace) -> None:
        self.market = market

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        raw = raw_body(req, 16_384)
        try:
            form = {k: v[0] for k, v in parse_qs(raw.decode(), strict_parsing=False).items()}
        except UnicodeDecodeError:
            raise MalformedBody("body must be application/x-www-form-urlencoded") from None
        check(form, TOKEN_FORM)
        client_id, client_secret = form.get("client_id", ""), form.get("client_secret", "")
        auth = req.get_header("Authorization") or ""
        if auth.lower().startswith("basic "):
            try:
                client_id, _, client_secret = base64.b64decode(auth[6:]).decode().partition(":")
            except (ValueError, UnicodeDecodeError):
                raise InvalidCredentials("malformed Basic credentials") from None
        if not client_id or not client_secret:
            raise InvalidCredentials("client_id and client_secret are required")
        resp.media = self.market.identity.client_credentials_token(client_id, client_secret, form.get("scope"))
        resp.cache_control = ["no-store"]
