"""Aggregates without I/O: what each command records and refuses."""

from __future__ import annotations

import uuid

import pytest

from domain.model.account import Account
from domain.model.device import ROTATION_GRACE_S, Device
from domain.model.errors import (
    DeviceNotEnrolled,
    DeviceSuspended,
    InsufficientScope,
    InvalidInput,
    InvalidState,
    KeyExpired,
)
from domain.model.keyring import KEYRING_ID, Keyring
from domain.model.money import Money

META = {"actor": "test", "correlation_id": "c", "causation_id": ""}


def new_device() -> Device:
    return Device(id=uuid.uuid4(), meta=META, account_id="a", name="n", public_key="zOld", kid="old",
                  kx_public_key="zKx", endpoint="http://127.0.0.1:1")


def test_every_event_carries_meta() -> None:
    account = Account(id=uuid.uuid4(), meta=META, email="a@b.co", password_hash="h", roles=["buyer"])
    account.grant_role(META, "seller")
    account.issue_credential(META, kind="api_key", credential_id="k1", name="n", secret_ciphertext="x",
                             scopes=["buyer"])
    for event in account.collect_events():
        assert event.meta == META


def test_credential_scopes_cannot_exceed_roles() -> None:
    account = Account(id=uuid.uuid4(), meta=META, email="a@b.co", password_hash="h", roles=["buyer"])
    with pytest.raises(InsufficientScope):
        account.issue_credential(META, kind="api_key", credential_id="k1", name="n", secret_ciphertext="x",
                                 scopes=["admin"])


def test_totp_needs_proposal_before_enabling() -> None:
    account = Account(id=uuid.uuid4(), meta=META, email="a@b.co", password_hash="h", roles=["buyer"])
    with pytest.raises(InvalidState):
        account.enable_totp(META)


def test_rotated_key_valid_for_exactly_24_hours() -> None:
    device = new_device()
    device.rotate_key(META, public_key="zNew", kid="new", kx_public_key="zKx", signature="s", at_s=1000)
    assert device.key_for("old", 1000 + ROTATION_GRACE_S - 1)["kid"] == "old"
    with pytest.raises(KeyExpired):
        device.key_for("old", 1000 + ROTATION_GRACE_S)
    assert device.key_for("new", 10**10)["kid"] == "new"
    with pytest.raises(DeviceNotEnrolled):
        device.key_for("other", 1000)


def test_second_rotation_shortens_the_oldest_grace_never_extends_it() -> None:
    device = new_device()
    device.rotate_key(META, public_key="zB", kid="b", kx_public_key="zKx", signature="s", at_s=1000)
    device.rotate_key(META, public_key="zC", kid="c", kx_public_key="zKx", signature="s", at_s=2000)
    assert device.keys[0]["valid_until_s"] == 1000 + ROTATION_GRACE_S
    assert device.keys[1]["valid_until_s"] == 2000 + ROTATION_GRACE_S


def test_key_reuse_and_suspension_refused() -> None:
    device = new_device()
    with pytest.raises(InvalidState):
        device.rotate_key(META, public_key="zOld", kid="old", kx_public_key="zKx", signature="s", at_s=1)
    device.suspend(META, "abuse")
    with pytest.raises(DeviceSuspended):
        device.key_for("old", 1)


def test_keyring_rotation_grace() -> None:
    keyring = Keyring(id=KEYRING_ID, meta=META)
    assert keyring.current("session") == "session-1"
    keyring.rotate(META, "session", at_s=100)
    assert keyring.accepted("session", 100 + 86399) == ["session-2", "session-1"]
    assert keyring.accepted("session", 100 + 86400) == ["session-2"]
    with pytest.raises(KeyExpired):
        keyring.check_accepted("session", "session-1", 100 + 86400)


def test_money_is_integer_minor_units_with_currency() -> None:
    assert Money(1999, "USD").fee(500) == Money(99, "USD")  # rounded down: the payer never pays more
    assert (Money(5, "USDT") + Money(7, "USDT")).amount_minor == 12
    assert Money(-1250, "USD").display() == "-12.50 USD"
    for bad in (lambda: Money(1.5, "USD"), lambda: Money(True, "USD"), lambda: Money(1, "XXX"),
                lambda: Money(1, "USD") + Money(1, "EUR"), lambda: Money(1, "USD").fee(10_001)):
        with pytest.raises(InvalidInput):
            bad()
