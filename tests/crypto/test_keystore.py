"""The node keystore: round trip, file mode, wrong passphrase, tamper, rotation, no secrets shown."""

from __future__ import annotations

import base64
import json
import os
import stat

import pytest

from domain.model.errors import InvalidInput
from domain.model.keys import KxPrivateKey, SigningKey
from node import keystore as ks
from node.keystore import (
    Keystore,
    KeystoreCorrupt,
    KeystoreExists,
    KeystoreInsecure,
    KeystoreLocked,
    KeystoreMissing,
)

CHEAP = {"ops_limit": ks.TEST_OPS_LIMIT, "mem_limit": ks.TEST_MEM_LIMIT}
PASS = "correct horse battery staple"


@pytest.fixture
def path(tmp_path):
    return tmp_path / "aim-node" / "keystore.json"


def _create(path, **kwargs):
    return ks.create(path, PASS, device_id="dev_1", hub_url="https://hub.example", **CHEAP, **kwargs)


def test_round_trip(path):
    created = _create(path, created_at="2025-01-01T00:00:00Z")
    loaded = ks.load(path, PASS)
    assert loaded == created
    assert loaded.signing_key.verify_key == created.signing_key.verify_key
    assert loaded.kx_key.public_key == created.kx_key.public_key
    assert (loaded.device_id, loaded.hub_url, loaded.created_at) == (
        "dev_1",
        "https://hub.example",
        "2025-01-01T00:00:00Z",
    )
    assert loaded.previous_signing_key is None
    message = b"challenge"
    created.signing_key.verify_key.verify(message, loaded.signing_key.sign(message))


def test_file_mode_is_0600_and_directory_0700(path):
    _create(path)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(path.parent).st_mode) == 0o700
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temp files left behind


def test_mode_is_0600_even_with_a_permissive_umask(path):
    old = os.umask(0)
    try:
        _create(path)
        ks.save(ks.load(path, PASS), path, PASS, **CHEAP)
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600


def test_file_format_and_no_secret_in_clear(path):
    store = _create(path)
    text = path.read_text()
    envelope = json.loads(text)
    assert envelope["format"] == "aimarket-node-keystore" and envelope["version"] == 1
    assert envelope["kdf"]["alg"] == "argon2id13"
    assert envelope["kdf"]["opslimit"] == ks.TEST_OPS_LIMIT and envelope["kdf"]["memlimit"] == ks.TEST_MEM_LIMIT
    assert len(base64.b64decode(envelope["kdf"]["salt"])) == 16
    assert envelope["public"]["signing_key"] == store.signing_key.verify_key.to_multibase()
    for secret in (store.signing_key.export_seed(), store.kx_key.export_bytes()):
        assert base64.b64encode(secret).decode() not in text
        assert secret.hex() not in text
    assert ks.read_public(path) == store.public_info()


def test_wrong_passphrase(path):
    _create(path)
    with pytest.raises(KeystoreLocked) as info:
        ks.load(path, "wrong")
    assert info.value.code == "keystore_locked"
    assert str(info.value) == "wrong passphrase or corrupted keystore"
    assert not isinstance(info.value, KeystoreCorrupt)


def test_missing_file(tmp_path):
    with pytest.raises(KeystoreMissing) as info:
        ks.load(tmp_path / "nope.json", PASS)
    assert info.value.code == "keystore_missing"
    assert "aim-node init" in str(info.value)


def test_create_refuses_existing_file_unless_overwrite(path):
    first = _create(path)
    with pytest.raises(KeystoreExists) as info:
        _create(path)
    assert info.value.code == "keystore_exists"
    assert ks.load(path, PASS) == first  # untouched
    second = _create(path, overwrite=True)
    assert second != first and ks.load(path, PASS) == second


def test_refuses_group_or_world_accessible_file(path):
    _create(path)
    for mode in (0o640, 0o604, 0o660, 0o606):
        os.chmod(path, mode)
        with pytest.raises(KeystoreInsecure) as info:
            ks.load(path, PASS)
        assert info.value.code == "keystore_insecure" and "chmod 600" in str(info.value)
    os.chmod(path, 0o400)
    ks.load(path, PASS)


def test_repr_and_str_hold_no_secret(path):
    store = _create(path)
    text = repr(store) + str(store) + f"{store}"
    for secret in (store.signing_key.export_seed(), store.kx_key.export_bytes()):
        assert secret.hex() not in text
        assert base64.b64encode(secret).decode() not in text
    assert store.signing_key.key_id in text
    assert PASS not in text


def test_tampered_ciphertext_is_locked(path):
    _create(path)
    envelope = json.loads(path.read_text())
    raw = bytearray(base64.b64decode(envelope["cipher"]["ciphertext"]))
    raw[-1] ^= 1
    envelope["cipher"]["ciphertext"] = base64.b64encode(bytes(raw)).decode()
    path.write_text(json.dumps(envelope))
    with pytest.raises(KeystoreLocked):
        ks.load(path, PASS)


def test_tampered_public_section_is_detected(path):
    _create(path)
    envelope = json.loads(path.read_text())
    envelope["public"]["hub_url"] = "https://evil.example"
    path.write_text(json.dumps(envelope))
    with pytest.raises(KeystoreCorrupt):
        ks.load(path, PASS)


@pytest.mark.parametrize(
    "mutate",
    [
        lambda e: "not json",
        lambda e: {**e, "format": "other"},
        lambda e: {**e, "version": 2},
        lambda e: {**e, "kdf": {**e["kdf"], "memlimit": 64 * 1024**3}},
        lambda e: {**e, "kdf": {**e["kdf"], "opslimit": 0}},
        lambda e: {**e, "kdf": {**e["kdf"], "salt": "!!"}},
        lambda e: {**e, "cipher": {**e["cipher"], "nonce": base64.b64encode(b"short").decode()}},
        lambda e: {k: v for k, v in e.items() if k != "cipher"},
    ],
)
def test_structurally_broken_files_are_corrupt(path, mutate):
    _create(path)
    changed = mutate(json.loads(path.read_text()))
    path.write_text(changed if isinstance(changed, str) else json.dumps(changed))
    with pytest.raises(KeystoreCorrupt) as info:
        ks.load(path, PASS)
    assert isinstance(info.value, KeystoreLocked)


def test_rotation_persists_previous_key(path):
    store = _create(path)
    new_key = SigningKey.generate()
    rotated = store.rotated(new_key, rotated_at="2025-02-01T00:00:00Z")
    ks.save(rotated, path, PASS, **CHEAP)
    loaded = ks.load(path, PASS)
    assert loaded.signing_key == new_key
    assert loaded.previous_signing_key == store.signing_key
    assert loaded.rotated_at == "2025-02-01T00:00:00Z"
    assert loaded.kx_key == store.kx_key
    with pytest.raises(InvalidInput):
        loaded.rotated(new_key, rotated_at="2025-02-02T00:00:00Z")


def test_enrollment_metadata_and_new_salt_each_save(path):
    store = ks.create(path, PASS, **CHEAP)
    assert store.device_id is None
    salt_before = json.loads(path.read_text())["kdf"]["salt"]
    ks.save(store.with_enrollment(device_id="dev_9", hub_url="https://hub"), path, PASS, **CHEAP)
    envelope = json.loads(path.read_text())
    assert envelope["kdf"]["salt"] != salt_before
    assert ks.load(path, PASS).device_id == "dev_9"


def test_change_passphrase(path):
    store = _create(path)
    ks.save(store, path, "a new passphrase", **CHEAP)
    assert ks.load(path, "a new passphrase") == store
    with pytest.raises(KeystoreLocked):
        ks.load(path, PASS)


def test_passphrase_is_unicode_normalised(path):
    ks.create(path, "caf\u00e9", **CHEAP)  # precomposed é
    ks.load(path, "cafe\u0301")  # e + combining acute


def test_given_keys_are_used(path):
    signing, kx = SigningKey.from_seed(bytes(32)), KxPrivateKey.from_bytes(bytes(range(32)))
    store = ks.create(path, PASS, signing_key=signing, kx_key=kx, **CHEAP)
    assert ks.load(path, PASS).signing_key == signing and store.kx_key == kx


@pytest.mark.parametrize("limits", [{"ops_limit": 0}, {"mem_limit": 1024}, {"mem_limit": 1.5}, {"ops_limit": 1000}])
def test_bad_kdf_limits_refused(path, limits):
    with pytest.raises(InvalidInput):
        ks.create(path, PASS, **{**CHEAP, **limits})
    assert not path.exists()


def test_empty_passphrase_refused(path):
    with pytest.raises(InvalidInput):
        ks.create(path, "", **CHEAP)


def test_secure_defaults():
    from nacl.pwhash import argon2id

    assert ks.DEFAULT_OPS_LIMIT >= argon2id.OPSLIMIT_MODERATE
    assert ks.DEFAULT_MEM_LIMIT >= argon2id.MEMLIMIT_MODERATE


def test_keystore_type_checks():
    with pytest.raises(InvalidInput):
        Keystore(signing_key="seed", kx_key=KxPrivateKey.generate())  # type: ignore[arg-type]
