"""Device commands: enrollment by challenge and proof of possession, device tokens, rotation."""

from __future__ import annotations

import re
from typing import Any
from uuid import uuid4

from domain.app.service import Service
from domain.model import tokens
from domain.model.device import Device, enrollment_message, rotation_message
from domain.model.errors import AlreadyExists, DeviceNotEnrolled, Forbidden, InvalidInput, NotFound, TokenInvalid
from domain.model.ids import NS_DEVICE, NS_DEVICE_KEY, natural_id, parse_uuid
from domain.model.index import Index
from domain.model.keys import KxPublicKey, VerifyKey, b64url_decode
from domain.model.principal import Principal

CHALLENGE_TTL_S = 300
ENROLL_TYP = "enroll"
# The patterns are published as they are in the OpenAPI document (ECMA-262 and Python agree on
# them: ASCII classes only) and matched whole (``fullmatch``: no trailing newline slips by).
NAME_PATTERN = r"^[A-Za-z0-9_ .:@-]{1,64}$"
NAME_RE = re.compile(NAME_PATTERN)
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_PORT = r"(?:6553[0-5]|655[0-2][0-9]|65[0-4][0-9]{2}|6[0-4][0-9]{3}|[1-5][0-9]{4}|[1-9][0-9]{0,3})"
# http(s), a DNS name or IPv4 address (dot-separated labels) or a bracketed IPv6 literal, an
# optional port 1..65535, an optional path; no user info, query or fragment.
ENDPOINT_PATTERN = (rf"^https?://(?:{_LABEL}(?:\.{_LABEL})*|\[[0-9A-Fa-f:.]{{2,45}}\])(?::{_PORT})?"
                    r"(?:/[A-Za-z0-9._~!\$&'()*+,;=:@%/-]*)?$")
ENDPOINT_RE = re.compile(ENDPOINT_PATTERN)
ENDPOINT_CHARS_MAX = 2048
# Who sees a device's owner view: its own account's session or API key, or the device itself.
OWNER_KINDS = ("session", "api_key")


def check_endpoint(endpoint: Any) -> str:
    if not isinstance(endpoint, str) or len(endpoint) > ENDPOINT_CHARS_MAX or not ENDPOINT_RE.fullmatch(endpoint):
        raise InvalidInput("endpoint must be an http(s) URL of the node: host, optional port and path, "
                           "no user info, query or fragment", param="endpoint")
    return endpoint


def _verify_key(value: Any, param: str) -> VerifyKey:
    if not isinstance(value, str):
        raise InvalidInput(f"{param} must be a multibase Ed25519 public key", param=param)
    return VerifyKey.from_multibase(value)


def _signature(value: Any) -> bytes:
    if not isinstance(value, str):
        raise InvalidInput("signature must be base64url", param="signature")
    return b64url_decode(value)


class DeviceService(Service):
    """The devices service of the marketplace (composed into ``Marketplace.devices``)."""

    def device_challenge(self, account_id: str) -> dict[str, Any]:
        """A stateless, signed, single-use challenge for enrollment (valid five minutes)."""
        kid = self.keyring().current("session")
        now_s = self.now_s()
        claims = {"sub": account_id, "aud": self.hub_url, "iss": self.hub_url, "iat": now_s,
                  "exp": now_s + CHALLENGE_TTL_S, "jti": uuid4().hex, "typ": ENROLL_TYP}
        return {"challenge": tokens.encode_hs256(claims, self.secrets.session_key(kid), kid),
                "expires_in": CHALLENGE_TTL_S}

    def enroll_device(
        self, meta: dict, account_id: str, *, challenge: str, name: str,
        public_key: str, kx_public_key: str, endpoint: str, signature: str,
    ) -> dict[str, Any]:
        """Register a node's public keys after checking the challenge and its signature."""
        if not isinstance(name, str) or not NAME_RE.fullmatch(name):
            raise InvalidInput("name must be 1..64 ASCII letters, digits, spaces or _.:@-", param="name")
        check_endpoint(endpoint)
        verify_key = _verify_key(public_key, "public_key")
        if not isinstance(kx_public_key, str):
            raise InvalidInput("kx_public_key must be a multibase X25519 key", param="kx_public_key")
        KxPublicKey.from_multibase(kx_public_key)
        challenge_claims = self._check_challenge(challenge, account_id)
        message = enrollment_message(challenge=challenge, account_id=account_id, name=name, public_key=public_key,
                                     kx_public_key=kx_public_key, endpoint=endpoint)
        verify_key.verify(message, _signature(signature))
        # Spent only after the signature verified: a bad attempt does not burn the challenge.
        self.nonces.use_once(f"enroll:{challenge_claims['jti']}", ttl_s=CHALLENGE_TTL_S + tokens.CLOCK_SKEW_S)
        device_id = natural_id(NS_DEVICE, public_key)
        kid = verify_key.key_id

        def command() -> dict[str, Any]:
            if self.exists(device_id):
                raise AlreadyExists("this device key is already enrolled", param="public_key")
            device = Device(id=device_id, meta=meta, account_id=account_id, name=name, public_key=public_key,
                            kid=kid, kx_public_key=kx_public_key, endpoint=endpoint)
            index = Index(id=natural_id(NS_DEVICE_KEY, kid), meta=meta, kind="device_key", target_id=str(device_id))
            self.save(device, index)
            return device.owner_view()

        return self.retrying(command)

    def _check_challenge(self, challenge: Any, account_id: str) -> dict[str, Any]:
        if not isinstance(challenge, str):
            raise InvalidInput("challenge is required", param="challenge")
        header = tokens.peek_header(challenge)
        now_s = self.now_s()
        self.check_platform_kid("session", header.kid, now_s)
        claims = tokens.decode_hs256(challenge, self.secrets.session_key(header.kid), audience=self.hub_url,
                                     now_s=now_s, typs=(ENROLL_TYP,))
        if claims.get("sub") != account_id:
            raise TokenInvalid("challenge was issued to another account")
        return claims

    def device(self, device_id: str) -> Device:
        return self.load(Device, parse_uuid(device_id, param="device_id"), "device")

    def device_view(self, device_id: str, who: Principal | None) -> dict[str, Any]:
        """The owner's view for the device's account (session or API key) or the device itself;
        the public view (id, status, keys) for anyone else, anonymous callers included."""
        device = self.device(device_id)
        owner = who is not None and (
            (who.kind in OWNER_KINDS and who.account_id == device.account_id)
            or (who.kind == "device" and who.device_id == str(device.id)))
        return device.owner_view() if owner else device.public_view()

    def device_by_kid(self, kid: str) -> Device:
        try:
            index = self.load(Index, natural_id(NS_DEVICE_KEY, kid))
        except NotFound:
            raise DeviceNotEnrolled("no enrolled device has this key") from None
        return self.device(index.target_id)

    def authenticate_device(self, token: str) -> Principal:
        """Verify an EdDSA device token: known key (rotation grace honoured), fresh, unused jti."""
        header = tokens.peek_header(token)
        if header.alg != "EdDSA":
            raise TokenInvalid("device tokens are EdDSA")
        device = self.device_by_kid(header.kid)
        now_s = self.now_s()
        key = device.key_for(header.kid, now_s)
        claims = tokens.decode_device_jwt(
            token, VerifyKey.from_multibase(key["public_key"]).to_bytes(), audience=self.hub_url, now_s=now_s
        )
        if claims["sub"] != str(device.id):
            raise TokenInvalid("token subject is not the device that owns the key")
        ttl_s = max(1, claims["exp"] - now_s + tokens.CLOCK_SKEW_S)
        self.nonces.use_once(f"jti:{device.id}:{claims['jti']}", ttl_s=ttl_s)
        account = self.market.identity.account(device.account_id)
        return Principal("device", device.account_id, tuple(account.roles), device_id=str(device.id))

    def rotate_device_key(
        self, meta: dict, principal: Principal, device_id: str, *,
        public_key: str, kx_public_key: str, signature: str,
    ) -> dict[str, Any]:
        """Add a new key vouched for by the device's current key; the old one lives 24 h more."""
        if principal.device_id != device_id:
            raise Forbidden("a device can only rotate its own key")
        new_key = _verify_key(public_key, "public_key")
        KxPublicKey.from_multibase(kx_public_key)
        message = rotation_message(device_id=device_id, public_key=public_key, kx_public_key=kx_public_key)

        def command() -> dict[str, Any]:
            device = self.device(device_id)
            VerifyKey.from_multibase(device.current_key["public_key"]).verify(message, _signature(signature))
            device.rotate_key(meta, public_key=public_key, kid=new_key.key_id, kx_public_key=kx_public_key,
                              signature=signature, at_s=self.now_s())
            index = Index(id=natural_id(NS_DEVICE_KEY, new_key.key_id), meta=meta, kind="device_key",
                          target_id=device_id)
            self.save(device, index)
            return device.owner_view()

        return self.retrying(command)
