"""Accounts, sessions, two-factor, API keys and OAuth2 client credentials."""

from __future__ import annotations

import base64
from typing import TYPE_CHECKING
from urllib.parse import parse_qs

import falcon

from api.http import meta, principal, raw_body, read_json
from api.openapi import obj, op, open_obj
from domain.app.identity import EMAIL_RE
from domain.model.account import SELF_SERVICE_ROLES
from domain.model.errors import InvalidCredentials, InvalidInput, MalformedBody

if TYPE_CHECKING:
    from domain.app.marketplace import Marketplace

EMAIL = {"type": "string", "minLength": 3, "maxLength": 320, "pattern": EMAIL_RE.pattern}
PASSWORD = {"type": "string", "minLength": 10, "maxLength": 256}
NAME = {"type": "string", "minLength": 1, "maxLength": 100}
ROLE_LIST = {"type": "array", "items": {"enum": ["buyer", "seller", "auditor", "admin"]}, "minItems": 1,
             "maxItems": 4}
ACCOUNT = open_obj(id={"type": "string"}, email={"type": "string"}, roles={"type": "array"},
                   totp_enabled={"type": "boolean"})
TOKEN = open_obj(access_token={"type": "string"}, token_type={"type": "string"}, expires_in={"type": "integer"})
CREDENTIAL = open_obj(id={"type": "string"}, name={"type": "string"}, scopes={"type": "array"},
                      revoked={"type": "boolean"}, secret={"type": "string"})

REGISTER = obj(["email", "password"], email=EMAIL, password=PASSWORD,
               roles={"type": "array", "items": {"enum": list(SELF_SERVICE_ROLES)}, "minItems": 1, "maxItems": 2})
LOGIN = obj(["email", "password"], email=EMAIL, password={"type": "string", "maxLength": 256},
            totp_code={"type": "string", "maxLength": 12})
TOTP_CONFIRM = obj(["code"], code={"type": "string", "maxLength": 12})
NEW_CREDENTIAL = obj(["name"], name=NAME, scopes=ROLE_LIST)


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
                          responses={"201": open_obj(secret={"type": "string"}, otpauth_uri={"type": "string"})})}

    def __init__(self, market: Marketplace) -> None:
        self.market = market

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        who = principal(req, "session")
        resp.media = self.market.identity.begin_totp(meta(req, who), who.account_id)
        resp.status = falcon.HTTP_201


class TotpConfirm:
    openapi = {"post": op("Confirm two-factor with a current code; from now on login needs a code",
                          "identity", auth="account", body=TOTP_CONFIRM, responses={"200": ACCOUNT})}

    def __init__(self, market: Marketplace) -> None:
        self.market = market

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        who = principal(req, "session")
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
                       body=NEW_CREDENTIAL, responses={"201": CREDENTIAL}),
            "get": op(f"List your {noun}s (never their secrets)", "identity", auth="account",
                      responses={"200": open_obj(items={"type": "array", "items": CREDENTIAL})}),
        }

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        who = principal(req, "session", "api_key")
        body = read_json(req, NEW_CREDENTIAL)
        resp.media = self.market.identity.issue_credential(
            meta(req, who), who.account_id, kind=self.kind, name=body["name"], scopes=body.get("scopes"))
        resp.status = falcon.HTTP_201

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        who = principal(req, "session", "api_key")
        resp.media = {"items": self.market.identity.list_credentials(who.account_id, self.kind)}


class Credential:
    def __init__(self, market: Marketplace, kind: str) -> None:
        self.market = market
        self.kind = kind
        self.openapi = {"delete": op("Revoke it; it stops working at once", "identity", auth="account",
                                     responses={"204": None})}

    def on_delete(self, req: falcon.Request, resp: falcon.Response, credential_id: str) -> None:
        who = principal(req, "session", "api_key")
        self.market.identity.revoke_credential(meta(req, who), who.account_id, credential_id, self.kind)
        resp.status = falcon.HTTP_204


TOKEN_FORM = {"type": "object", "required": ["grant_type"], "properties": {
    "grant_type": {"type": "string"}, "client_id": {"type": "string"}, "client_secret": {"type": "string"},
    "scope": {"type": "string"}}}


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
        if form.get("grant_type") != "client_credentials":
            raise InvalidInput("only grant_type=client_credentials is supported", param="grant_type")
        client_id, client_secret = form.get("client_id", ""), form.get("client_secret", "")
        auth = req.get_header("Authorization") or ""
        if auth.lower().startswith("basic "):
            try:
                client_id, _, client_secret = base64.b64decode(auth[6:]).decode().partition(":")
            except (ValueError, UnicodeDecodeError):
                raise InvalidCredentials("malformed Basic credentials") from None
        if not client_id or not client_secret:
            raise InvalidCredentials("client_id and client_secret are required")
        resp.media = self.market.identity.client_credentials_token(client_id, client_secret)
        resp.cache_control = ["no-store"]
