"""Identity commands: accounts, passwords, sessions, two-factor, API keys, OAuth clients."""

from __future__ import annotations

import base64
import hashlib
import re
import secrets as pysecrets
from typing import TYPE_CHECKING, Any
from uuid import UUID, uuid4

import bcrypt
import pyotp

from domain.app.service import Service
from domain.model import tokens
from domain.model.account import SELF_SERVICE_ROLES, Account, check_roles
from domain.model.errors import (
    AlreadyExists,
    InvalidCredentials,
    InvalidInput,
    NotFound,
    TokenInvalid,
    TotpRequired,
)
from domain.model.ids import NS_CREDENTIAL, NS_EMAIL, natural_id, parse_uuid
from domain.model.index import Index
from domain.model.principal import Principal

if TYPE_CHECKING:
    from domain.app.marketplace import Marketplace

EMAIL_RE = re.compile(r"^[^@\s]{1,64}@[^@\s]{1,189}\.[^@\s]{2,63}$")
PASSWORD_CHARS_MIN, PASSWORD_CHARS_MAX = 10, 256
CREDENTIAL_RE = re.compile(r"^(aim|cli)_([0-9a-f]{16})_([A-Za-z0-9_-]{43})$")
TOTP_CODE_RE = re.compile(r"^\d{6}$")
PLATFORM_TYPS = (tokens.SESSION_TYP, tokens.ACCESS_TYP)
VERIFIED_TOKENS_MAX = 10_000  # per process; cleared when full (a miss only costs one verify)
# A real bcrypt hash to spend the same time on when the e-mail is unknown (no user enumeration).
_DUMMY_HASH = bcrypt.hashpw(b"x" * 44, bcrypt.gensalt(4))


def normalise_email(email: Any) -> str:
    if not isinstance(email, str) or not EMAIL_RE.match(email.strip()):
        raise InvalidInput("a valid e-mail address is required", param="email")
    return email.strip().lower()


def _prehash(password: str) -> bytes:
    # bcrypt reads at most 72 bytes; pre-hashing keeps every character of a long passphrase.
    return base64.b64encode(hashlib.sha256(password.encode()).digest())


def _check_password_shape(password: Any) -> str:
    if not isinstance(password, str) or not PASSWORD_CHARS_MIN <= len(password) <= PASSWORD_CHARS_MAX:
        raise InvalidInput(
            f"password must be {PASSWORD_CHARS_MIN}..{PASSWORD_CHARS_MAX} characters", param="password"
        )
    return password


class IdentityService(Service):
    """The identity service of the marketplace (composed into ``Marketplace.identity``)."""

    def __init__(self, market: Marketplace, *, bcrypt_rounds: int = 12, session_ttl_s: int = 3600) -> None:
        super().__init__(market)
        self.bcrypt_rounds = bcrypt_rounds
        self.session_ttl_s = session_ttl_s
        # Platform tokens whose signature this process already checked: token -> (kid, claims).
        self._verified_tokens: dict[str, tuple[str, dict[str, Any]]] = {}

    # -- accounts ---------------------------------------------------------------------------
    def register(self, meta: dict, email: str, password: str, roles: list[str]) -> dict[str, Any]:
        email = normalise_email(email)
        roles = check_roles(roles, SELF_SERVICE_ROLES)
        password_hash = bcrypt.hashpw(_prehash(_check_password_shape(password)), bcrypt.gensalt(self.bcrypt_rounds))
        index_id = natural_id(NS_EMAIL, email)

        def command() -> dict[str, Any]:
            if self.exists(index_id):
                raise AlreadyExists("an account with this e-mail exists", param="email")
            account = Account(id=uuid4(), meta=meta, email=email, password_hash=password_hash.decode(), roles=roles)
            index = Index(id=index_id, meta=meta, kind="email", target_id=str(account.id))
            self.save(account, index)
            return account.to_public()

        return self.retrying(command)

    def account(self, account_id: str | UUID) -> Account:
        return self.load(Account, parse_uuid(str(account_id), param="account_id"), "account")

    def account_by_email(self, email: str) -> Account:
        index = self.load(Index, natural_id(NS_EMAIL, normalise_email(email)), "account")
        return self.account(index.target_id)

    def grant_role(self, meta: dict, email: str, role: str) -> dict[str, Any]:
        def command() -> dict[str, Any]:
            account = self.account_by_email(email)
            account.grant_role(meta, role)
            self.save(account)
            return account.to_public()

        return self.retrying(command)

    # -- sessions --------------------------------------------------------------------------------
    def login(self, email: str, password: str, totp_code: str | None = None) -> dict[str, Any]:
        """Check the password (and TOTP code when enabled); return a session token."""
        try:
            account = self.account_by_email(email)
        except (NotFound, InvalidInput):
            bcrypt.checkpw(b"y" * 44, _DUMMY_HASH)
            raise InvalidCredentials("wrong e-mail or password") from None
        if not isinstance(password, str) or not bcrypt.checkpw(_prehash(password), account.password_hash.encode()):
            raise InvalidCredentials("wrong e-mail or password")
        if account.totp_enabled:
            self._check_totp(account, account.totp_ciphertext or "", totp_code)
        return self._issue_platform_token(
            {"sub": str(account.id), "roles": account.roles, "typ": tokens.SESSION_TYP}
        )

    def _issue_platform_token(self, claims: dict[str, Any]) -> dict[str, Any]:
        kid = self.keyring().current("session")
        now_s = self.now_s()
        full = {**claims, "iss": self.hub_url, "aud": self.hub_url, "iat": now_s,
                "exp": now_s + self.session_ttl_s, "jti": uuid4().hex}
        token = tokens.encode_hs256(full, self.secrets.session_key(kid), kid)
        return {"access_token": token, "token_type": "Bearer", "expires_in": self.session_ttl_s}

    def cached_session_principal(self, token: str) -> Principal | None:
        """The principal of a session token verified before, found without any I/O; None when
        the token was not seen yet or its principal needs the store (an OAuth access token:
        its client may have been revoked)."""
        verified = self._verified_tokens.get(token)
        if verified is None or verified[1].get("typ") == tokens.ACCESS_TYP:
            return None
        return self.authenticate_platform_token(token)

    def authenticate_platform_token(self, token: str) -> Principal:
        now_s = self.now_s()
        verified = self._verified_tokens.get(token)
        if verified is not None:
            # Signature and audience were checked when this exact string was first seen;
            # what can change since (expiry, the key being retired) is checked every time.
            kid, claims = verified
            self.check_platform_kid("session", kid, now_s)
            tokens.check_hs256_claims(claims, now_s=now_s, typs=PLATFORM_TYPS)
        else:
            header = tokens.peek_header(token)
            if header.alg != "HS256":
                raise TokenInvalid("unsupported token algorithm")
            self.check_platform_kid("session", header.kid, now_s)
            key = self.secrets.session_key(header.kid)
            claims = tokens.decode_hs256(token, key, audience=self.hub_url, now_s=now_s, typs=PLATFORM_TYPS)
            if len(self._verified_tokens) >= VERIFIED_TOKENS_MAX:
                self._verified_tokens.clear()
            self._verified_tokens[token] = (header.kid, claims)
        if claims["typ"] == tokens.ACCESS_TYP:
            return self._client_principal(claims)
        # The roles were signed into the token at login: trusting them saves two reads per
        # request; a role change takes effect at the next login (sessions last an hour).
        roles = claims.get("roles")
        if not isinstance(roles, list) or not all(isinstance(r, str) for r in roles):
            raise TokenInvalid("session token without roles")
        return Principal("session", str(claims["sub"]), tuple(roles))

    # -- two-factor ------------------------------------------------------------------------------
    def begin_totp(self, meta: dict, account_id: str) -> dict[str, str]:
        secret = pyotp.random_base32()

        def command() -> dict[str, str]:
            account = self.account(account_id)
            account.begin_totp(meta, self.secrets.encrypt_totp(secret, str(account.id)))
            self.save(account)
            uri = pyotp.TOTP(secret).provisioning_uri(name=account.email, issuer_name="aimarket")
            return {"secret": secret, "otpauth_uri": uri}

        return self.retrying(command)

    def confirm_totp(self, meta: dict, account_id: str, code: str) -> dict[str, Any]:
        def command() -> dict[str, Any]:
            account = self.account(account_id)
            if account.totp_pending_ciphertext is None:
                account.enable_totp(meta)  # raises InvalidState with a clear message
            self._check_totp(account, account.totp_pending_ciphertext or "", code)
            account.enable_totp(meta)
            self.save(account)
            return account.to_public()

        return self.retrying(command)

    def _check_totp(self, account: Account, ciphertext: str, code: str | None) -> None:
        if not isinstance(code, str) or not TOTP_CODE_RE.match(code):
            raise TotpRequired("a 6-digit two-factor code is required", param="totp_code")
        secret = self.secrets.decrypt_totp(ciphertext, str(account.id))
        if not pyotp.TOTP(secret).verify(code, for_time=self.clock(), valid_window=1):
            raise TotpRequired("wrong two-factor code", param="totp_code")
        # A code is good for one login only, even inside its 30-second window.
        self.nonces.use_once(f"totp:{account.id}:{code}", ttl_s=120)

    # -- API keys and OAuth clients (one mechanism: id lookup + Fernet-encrypted secret) --------
    def issue_credential(
        self, meta: dict, account_id: str, *, kind: str, name: str, scopes: list[str] | None
    ) -> dict[str, Any]:
        if not isinstance(name, str) or not 1 <= len(name) <= 100:
            raise InvalidInput("name must be 1..100 characters", param="name")
        credential_id = pysecrets.token_hex(8)
        secret = pysecrets.token_urlsafe(32)
        prefix = "aim" if kind == "api_key" else "cli"

        def command() -> dict[str, Any]:
            account = self.account(account_id)
            account.issue_credential(
                meta, kind=kind, credential_id=credential_id, name=name,
                secret_ciphertext=self.secrets.encrypt_credential(secret), scopes=scopes or account.roles,
            )
            index = Index(id=natural_id(NS_CREDENTIAL, credential_id), meta=meta, kind=kind, target_id=str(account.id))
            self.save(account, index)
            public = _public_credential(credential_id, account.credentials[credential_id])
            return {**public, "secret": f"{prefix}_{credential_id}_{secret}"}

        return self.retrying(command)

    def list_credentials(self, account_id: str, kind: str) -> list[dict[str, Any]]:
        account = self.account(account_id)
        return [_public_credential(cid, c) for cid, c in account.credentials.items() if c["kind"] == kind]

    def revoke_credential(self, meta: dict, account_id: str, credential_id: str, kind: str) -> None:
        def command() -> None:
            account = self.account(account_id)
            account.revoke_credential(meta, credential_id, kind)
            self.save(account)

        self.retrying(command)

    def _check_credential(self, presented: str, kind: str) -> tuple[Account, str, dict[str, Any]]:
        """Find the credential by its id (no scan), then decrypt that one secret and compare."""
        match = CREDENTIAL_RE.match(presented or "")
        if not match or match.group(1) != ("aim" if kind == "api_key" else "cli"):
            raise InvalidCredentials(f"malformed {kind.replace('_', ' ')}")
        credential_id, secret = match.group(2), match.group(3)
        try:
            index = self.load(Index, natural_id(NS_CREDENTIAL, credential_id))
            account = self.account(index.target_id)
            cred = account.credential(credential_id, kind)
        except NotFound:
            raise InvalidCredentials(f"unknown {kind.replace('_', ' ')}") from None
        if cred["revoked"]:
            raise InvalidCredentials(f"{kind.replace('_', ' ')} revoked")
        self.secrets.check_credential(cred["secret_ciphertext"], secret)
        return account, credential_id, cred

    def authenticate_api_key(self, presented: str) -> Principal:
        account, credential_id, cred = self._check_credential(presented, "api_key")
        roles = tuple(r for r in cred["scopes"] if r in account.roles)
        return Principal("api_key", str(account.id), roles, credential_id=credential_id)

    def client_credentials_token(self, client_id: str, client_secret: str) -> dict[str, Any]:
        """OAuth2 client-credentials grant: an agent trades its client secret for a token."""
        presented = client_secret if client_secret.startswith("cli_") else f"cli_{client_id}_{client_secret}"
        account, credential_id, cred = self._check_credential(presented, "oauth_client")
        if credential_id != client_id.removeprefix("cli_"):
            raise InvalidCredentials("client id and secret do not match")
        scopes = [r for r in cred["scopes"] if r in account.roles]
        return {**self._issue_platform_token({"sub": f"cli_{credential_id}", "acct": str(account.id),
                                              "roles": scopes, "typ": tokens.ACCESS_TYP}),
                "scope": " ".join(scopes)}

    def _client_principal(self, claims: dict[str, Any]) -> Principal:
        credential_id = str(claims.get("sub", "")).removeprefix("cli_")
        account = self.account(claims.get("acct", ""))
        cred = account.credential(credential_id, "oauth_client")
        if cred["revoked"]:
            raise InvalidCredentials("oauth client revoked")
        roles = tuple(r for r in claims.get("roles", []) if r in account.roles)
        return Principal("oauth_client", str(account.id), roles, credential_id=credential_id)


def _public_credential(credential_id: str, cred: dict[str, Any]) -> dict[str, Any]:
    return {"id": credential_id, "name": cred["name"], "scopes": cred["scopes"], "revoked": cred["revoked"]}
