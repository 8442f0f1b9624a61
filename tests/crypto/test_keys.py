"""Typed Ed25519/X25519 keys against RFC 8032 and did:key published vectors."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import base58
import pytest

from domain.model.errors import InvalidInput, SignatureInvalid
from domain.model.keys import (
    KxPrivateKey,
    KxPublicKey,
    SigningKey,
    VerifyKey,
    b64url,
    b64url_decode,
)

VECTORS = Path(__file__).resolve().parents[1] / "vectors"
RFC8032 = json.loads((VECTORS / "rfc8032_ed25519.json").read_text())
DIDKEY = json.loads((VECTORS / "didkey_ed25519.json").read_text())


@pytest.mark.parametrize("vector", RFC8032["vectors"], ids=lambda v: v["name"])
def test_rfc8032_sign_and_verify(vector):
    key = SigningKey.from_seed(bytes.fromhex(vector["secret_key"]))
    message = bytes.fromhex(vector["message"])
    assert key.verify_key.to_bytes().hex() == vector["public_key"]
    assert key.sign(message).hex() == vector["signature"]
    public = VerifyKey.from_bytes(bytes.fromhex(vector["public_key"]))
    assert public.verify(message, bytes.fromhex(vector["signature"])) is None


@pytest.mark.parametrize("case", RFC8032["negative"]["cases"], ids=lambda c: c["name"])
def test_rfc8032_tampered_signatures_raise(case):
    public = VerifyKey.from_bytes(bytes.fromhex(case["public_key"]))
    with pytest.raises(SignatureInvalid):
        public.verify(bytes.fromhex(case["message"]), bytes.fromhex(case["signature"]))


def test_verify_rejects_non_bytes():
    public = SigningKey.from_seed(bytes(32)).verify_key
    with pytest.raises(InvalidInput):
        public.verify("text", bytes(64))  # type: ignore[arg-type]
    with pytest.raises(InvalidInput):
        public.verify(b"x", "sig")  # type: ignore[arg-type]


@pytest.mark.parametrize("vector", DIDKEY["ed25519"], ids=lambda v: v["did"][-8:])
def test_did_key_vectors(vector):
    key = SigningKey.from_seed(bytes.fromhex(vector["seed"]))
    public = key.verify_key
    assert public.to_bytes() == base58.b58decode(vector["publicKeyBase58"])
    assert public.did_key == vector["did"]
    assert public.to_multibase() == vector["did"].removeprefix("did:key:")
    assert public.verification_method == f"{vector['did']}#{public.to_multibase()}"
    assert VerifyKey.from_did_key(vector["did"]) == public
    assert VerifyKey.from_did_key(public.verification_method) == public
    assert VerifyKey.from_multibase(public.to_multibase()) == public


@pytest.mark.parametrize("vector", DIDKEY["x25519"], ids=lambda v: v["multibase"][-8:])
def test_x25519_vectors(vector):
    private = KxPrivateKey.from_bytes(base58.b58decode(vector["privateKeyBase58"]))
    assert private.public_key.to_bytes() == base58.b58decode(vector["publicKeyBase58"])
    assert private.public_key.to_multibase() == vector["multibase"]
    assert KxPublicKey.from_multibase(vector["multibase"]) == private.public_key


@pytest.mark.parametrize("vector", DIDKEY["x25519_public_only"], ids=lambda v: v["did"][-8:])
def test_x25519_public_multibase(vector):
    public = KxPublicKey.from_multibase(vector["did"].removeprefix("did:key:"))
    assert public.to_bytes() == base58.b58decode(vector["publicKeyBase58"])


@pytest.mark.parametrize("case", DIDKEY["invalid_ed25519_did_keys"]["cases"], ids=lambda c: c["name"])
def test_invalid_did_keys(case):
    with pytest.raises(InvalidInput):
        VerifyKey.from_did_key(case["did"])


def test_ed25519_key_is_not_an_x25519_key():
    mb = SigningKey.from_seed(bytes(32)).verify_key.to_multibase()
    with pytest.raises(InvalidInput):
        KxPublicKey.from_multibase(mb)


def test_private_multibase_round_trip():
    key = SigningKey.from_seed(bytes(range(32)))
    text = key.export_multibase()
    assert text.startswith("z3u2")
    assert SigningKey.from_multibase(text) == key
    assert key.export_seed() == bytes(range(32))


def test_key_id_is_short_and_stable():
    public = SigningKey.from_seed(bytes(32)).verify_key
    assert public.key_id == "ed25519:139e3940e64b5491"
    assert len(public.key_id) == len("ed25519:") + 16
    assert SigningKey.from_seed(bytes(32)).key_id == public.key_id


def test_equality_and_hashing():
    a = SigningKey.from_seed(bytes(32))
    b = SigningKey.from_seed(bytes(32))
    c = SigningKey.from_seed(b"\x01" * 32)
    assert a == b and a != c
    assert a.verify_key == b.verify_key and hash(a.verify_key) == hash(b.verify_key)
    assert len({a.verify_key, b.verify_key, c.verify_key}) == 2
    assert a.verify_key != a.verify_key.to_bytes()
    x = KxPrivateKey.from_bytes(bytes(range(32)))
    assert x == KxPrivateKey.from_bytes(bytes(range(32)))
    assert hash(x.public_key) == hash(KxPublicKey.from_bytes(x.public_key.to_bytes()))


def test_secrets_never_in_repr_or_pickle():
    seed = bytes(range(32))
    key = SigningKey.from_seed(seed)
    kx = KxPrivateKey.from_bytes(seed)
    for obj in (key, kx):
        text = repr(obj) + str(obj)
        for form in (seed.hex(), b64url(seed), base58.b58encode(seed).decode()):
            assert form not in text
        with pytest.raises(TypeError):
            pickle.dumps(obj)
    assert key.export_multibase() not in repr(key)


def test_bad_key_material():
    with pytest.raises(InvalidInput):
        SigningKey.from_seed(bytes(31))
    with pytest.raises(InvalidInput):
        SigningKey.from_seed("00" * 32)  # type: ignore[arg-type]
    with pytest.raises(InvalidInput):
        VerifyKey.from_bytes(bytes(33))
    with pytest.raises(InvalidInput):
        KxPublicKey.from_bytes(bytes(32))


def test_signatures_made_here_verify_and_wrong_length_raises():
    key = SigningKey.generate()
    sig = key.sign(b"hello")
    assert len(sig) == 64
    key.verify_key.verify(b"hello", sig)
    with pytest.raises(SignatureInvalid):
        key.verify_key.verify(b"hello", sig[:-1])
    with pytest.raises(SignatureInvalid):
        SigningKey.generate().verify_key.verify(b"hello", sig)


def test_x25519_keys_agree():
    import nacl.public

    a, b = KxPrivateKey.generate(), KxPrivateKey.generate()
    box_ab = nacl.public.Box(a.to_nacl(), b.public_key.to_nacl())
    box_ba = nacl.public.Box(b.to_nacl(), a.public_key.to_nacl())
    assert box_ba.decrypt(box_ab.encrypt(b"payload key")) == b"payload key"


@pytest.mark.parametrize("data", [b"", b"\x00", b"\xff\xfe", bytes(range(256))])
def test_b64url_round_trip(data):
    text = b64url(data)
    assert "=" not in text and "+" not in text and "/" not in text
    assert b64url_decode(text) == data


@pytest.mark.parametrize("garbage", ["a", "ab=", "a+bc", "a/bc", "ab c", "AB==", "AR", "é", 5])
def test_b64url_decode_rejects_garbage(garbage):
    with pytest.raises(InvalidInput):
        b64url_decode(garbage)  # type: ignore[arg-type]
