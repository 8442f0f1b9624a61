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
from email_validator import EmailNotValidError, validate_email

from domain.app.service import Service
from domain.model import tokens
from domain.model.account import SELF_SERVICE_ROLES, Account, check_roles
from domain.model.errors import (
    AlreadyExists,
    Forbidden,
    InsufficientScope,
    InvalidCredentials,
    InvalidInput,
    NotFound,
    ReauthenticationRequired,
    TokenInvalid,
    TotpRequired,
)
from domain.model.ids import NS_CREDENTIAL, NS_EMAIL, natural_id, parse_uuid
from domain.model.index import Index
from domain.model.principal import Principal

if TYPE_CHECKING:
    from domain.app.marketplace import Marketplace

EMAIL_CHARS_MAX = 320
# What e-mails were before email-validator: still how an account registered then is found.
_LEGACY_EMAIL_RE = re.compile(r"^[^@\s]{1,64}@[^@\s]{1,189}\.[^@\s]{2,63}$")
PASSWORD_CHARS_MIN, PASSWORD_CHARS_MAX = 10, 256
CREDENTIAL_RE = re.compile(r"^(aim|cli)_([0-9a-f]{16})_([A-Za-z0-9_-]{43})$")
TOTP_CODE_PATTERN = "^[0-9]{6}$"
TOTP_CODE_RE = re.compile(TOTP_CODE_PATTERN)
CREDENTIAL_NAME_PATTERN = r"^[^\u0000-\u001f\u007f]{1,100}$"  # no control characters
CREDENTIAL_NAME_RE = re.compile(CREDENTIAL_NAME_PATTERN)
RECENT_LOGIN_S = 15 * 60  # sensitive changes need a login at most this old (or a TOTP code)
PLATFORM_TYPS = (tokens.SESSION_TYP, tokens.ACCESS_TYP)
VERIFIED_TOKENS_MAX = 10_000  # per process; cleared when full (a miss only costs one verify)
# A real bcrypt hash to spend the same time on when the e-mail is unknown (no user enumeration).
_DUMMY_HASH = bcrypt.hashpw(b"x" * 44, bcrypt.gensalt(4))


def normalise_email(email: Any) -> str:
    """The address checked by email-validator (no DNS look-up; internationalised addresses
    allowed; no quoted local part, no IP-literal domain, no special-use domain such as
    ``.test``), surrounding spaces stripped, NFC-normalised and lower-cased."""
    if not isinstance(email, str) or len(email) > EMAIL_CHARS_MAX:
        raise InvalidInput("a valid e-mail address is required", param="email")
    try:
        checked = validate_email(email.strip(), check_deliverability=False)
    except EmailNotValidError:
        raise InvalidInput("a valid e-mail address is required", param="email") from None
    return checked.normalized.lower()


def _email_keys(email: Any) -> list[str]:
    """The forms an account may be indexed under: the normalised one, and the form used before
    email-validator (``strip().lower()``) for accounts registered then."""
    keys = []
    try:
        keys.append(normalise_email(email))
    except InvalidInput:
        pass
    if isinstance(email, str) and _LEGACY_EMAIL_RE.fullmatch(email.strip()) and _encodable(email):
        keys.append(email.strip().lower())
    if not keys:
        raise InvalidInput("a valid e-mail address is required", param="email")
    return list(dict.fromkeys(keys))


def _encodable(text: str) -> bool:
    try:
        text.encode()
    except UnicodeEncodeError:  # a lone surrogate
        return False
    return True


def _prehash(password: str) -> bytes:
    # bcrypt reads at most 72 bytes; pre-hashing keeps every character of a long passphrase.
    # Any string is a password (surrogatepass: a lone surrogate is hashed, never a 500).
    return base64.b64encode(hashlib.sha256(password.encode("utf-8", "surrogatepass")).digest())


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
        # Platform tokens whose signature this process already checked: token -> (kid, claims,
        # the session's principal, or None for an OAuth access token).
        self._verified_tokens: dict[str, tuple[str, dict[str, Any], Principal | None]] = {}

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
        keys = _email_keys(email)
        for key in keys[:-1]:
            if self.exists(natural_id(NS_EMAIL, key)):
                return self.account(self.load(Index, natural_id(NS_EMAIL, key)).target_id)
        index = self.load(Index, natural_id(NS_EMAIL, keys[-1]), "account")
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
        if verified is None:
            verified = self._verify_platform_token(token, now_s)
        else:
            # Signature and audience were checked when this exact string was first seen;
            # what can change since (expiry, the key being retired) is checked every time.
            self.check_platform_kid("session", verified[0], now_s)
            tokens.check_hs256_claims(verified[1], now_s=now_s, typs=PLATFORM_TYPS)
        _, claims, session = verified
        return self._client_principal(claims) if session is None else session

    def _verify_platform_token(self, token: str, now_s: int) -> tuple[str, dict[str, Any], Principal | None]:
        """Check a token not seen before; remember it with its principal (None for an OAuth
        access token, whose client is looked up each time: it may have been revoked)."""
        header = tokens.peek_header(token)
        if header.alg != "HS256":
            raise TokenInvalid("unsupported token algorithm")
        self.check_platform_kid("session", header.kid, now_s)
        key = self.secrets.session_key(header.kid)
        claims = tokens.decode_hs256(token, key, audience=self.hub_url, now_s=now_s, typs=PLATFORM_TYPS)
        session = None
        if claims["typ"] == tokens.SESSION_TYP:
            # The roles were signed into the token at login: trusting them saves two reads per
            # request; a role change takes effect at the next login (sessions last an hour).
            roles = claims.get("roles")
            if not isinstance(roles, list) or not all(isinstance(r, str) for r in roles):
                raise TokenInvalid("session token without roles")
            session = Principal("session", str(claims["sub"]), tuple(roles), issued_at_s=claims["iat"])
        if len(self._verified_tokens) >= VERIFIED_TOKENS_MAX:
            self._verified_tokens.clear()
        verified = self._verified_tokens[token] = (header.kid, claims, session)
        return verified

    # -- sensitive changes: a recent login, or a current two-factor code -------------------------
    def login_is_recent(self, who: Principal) -> bool:
        """A session that logged in at most ``RECENT_LOGIN_S`` ago (no I/O)."""
        return who.logged_in_within(self.now_s(), RECENT_LOGIN_S)

    def check_recent_login(self, who: Principal, totp_code: str | None) -> None:
        """Sensitive changes (payout destination, wallet, new credentials, two-factor set-up)
        need a session that logged in within 15 minutes or, when two-factor is on, a current
        code (``X-Totp-Code``) that stands in for a fresh login."""
        if who.kind != "session":
            raise Forbidden("this change needs a session (log in with your password)")
        if self.login_is_recent(who):
            return
        if not totp_code:
            raise ReauthenticationRequired(
                f"this change needs a login of the last {RECENT_LOGIN_S // 60} minutes, or a current "
                "two-factor code in X-Totp-Code", param="X-Totp-Code")
        account = self.account(who.account_id)
        if not account.totp_enabled:
            raise ReauthenticationRequired("two-factor is off: log in again to make this change")
        self._check_totp(account, account.totp_ciphertext or "", totp_code)

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
        if not isinstance(code, str) or not TOTP_CODE_RE.fullmatch(code):
            raise TotpRequired("a 6-digit two-factor code is required", param="totp_code")
        secret = self.secrets.decrypt_totp(ciphertext, str(account.id))
        if not pyotp.TOTP(secret).verify(code, for_time=self.clock(), valid_window=1):
            raise TotpRequired("wrong two-factor code", param="totp_code")
        # A code is good for one login only, even inside its 30-second window.
        self.nonces.use_once(f"totp:{account.id}:{code}", ttl_s=120)

    # -- API keys and OAuth clients (one mechanism: id lookup + Fernet-encrypted secret) --------
    def issue_credential(
        self, meta: dict, who: Principal, *, kind: str, name: str, scopes: list[str] | None
    ) -> dict[str, Any]:
        """A new API key or OAuth client of the caller's account. Its scopes never exceed the
        caller's roles; omitted, they are all of them; ``[]`` is a key that acts in no role."""
        if not isinstance(name, str) or not CREDENTIAL_NAME_RE.fullmatch(name) or not _encodable(name):
            raise InvalidInput("name must be 1..100 characters, no control characters", param="name")
        account_id = who.account_id
        credential_id = pysecrets.token_hex(8)
        secret = pysecrets.token_urlsafe(32)
        prefix = "aim" if kind == "api_key" else "cli"

        def command() -> dict[str, Any]:
            account = self.account(account_id)
            account.issue_credential(
                meta, kind=kind, credential_id=credential_id, name=name,
                secret_ciphertext=self.secrets.encrypt_credential(secret), scopes=scopes, caller_roles=who.roles,
            )
            index = Index(id=natural_id(NS_CREDENTIAL, credential_id), meta=meta, kind=kind, target_id=str(account.id))
            self.save(account, index)
            public = _public_credential(credential_id, account.credentials[credential_id])
            return {**public, "secret": f"{prefix}_{credential_id}_{secret}"}

        return self.retrying(command)

    def list_credentials(self, account_id: str, kind: str) -> list[dict[str, Any]]:
        account = self.account(account_id)
        return [_public_credential(cid, c) for cid, c in account.credentials.items() if c["kind"] == kind]

    def revoke_credential(self, meta: dict, who: Principal, credential_id: str, kind: str) -> None:
        """A session revokes any credential of its account; an API key or OAuth client only itself."""
        if who.kind != "session" and (who.kind != kind or who.credential_id != credential_id):
            raise Forbidden("an API key or OAuth client may revoke only itself; use a session")

        def command() -> None:
            account = self.account(who.account_id)
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
        return Principal("api_key", str(account.id), roles, credential_id=credential_id,
                         scopes=tuple(cred["scopes"]))

    def client_credentials_token(self, client_id: str, client_secret: str,
                                 scope: str | None = None) -> dict[str, Any]:
        """OAuth2 client-credentials grant: an agent trades its client secret for a token whose
        scopes are the client's (those its account still holds), or the narrower ``scope`` asked."""
        presented = client_secret if client_secret.startswith("cli_") else f"cli_{client_id}_{client_secret}"
        account, credential_id, cred = self._check_credential(presented, "oauth_client")
        if credential_id != client_id.removeprefix("cli_"):
            raise InvalidCredentials("client id and secret do not match")
        scopes = [r for r in cred["scopes"] if r in account.roles]
        if scope is not None:
            asked = scope.split()
            if not set(asked) <= set(scopes):
                raise InsufficientScope("scope asks for more than this client holds", param="scope")
            scopes = sorted(set(asked))
        return {**self._issue_platform_token({"sub": f"cli_{credential_id}", "acct": str(account.id),
                                              "roles": scopes, "typ": tokens.ACCESS_TYP}),
                "scope": " ".join(scopes)}

    def _client_principal(self, claims: dict[str, Any]) -> Principal:
        credential_id = str(claims.get("sub", "")).removeprefix("cli_")
        account = self.account(claims.get("acct", ""))
        cred = account.credential(credential_id, "oauth_client")
        if cred["revoked"]:
            raise InvalidCredentials("oauth client revoked")
        roles = tuple(r for r in claims.get("roles", []) if r in account.roles and r in cred["scopes"])
        return Principal("oauth_client", str(account.id), roles, credential_id=credential_id,
                         scopes=tuple(cred["scopes"]))


def _public_credential(credential_id: str, cred: dict[str, Any]) -> dict[str, Any]:
    return {"id": credential_id, "name": cred["name"], "scopes": cred["scopes"], "revoked": cred["revoked"]}
