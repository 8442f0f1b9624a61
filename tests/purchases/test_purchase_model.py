"""The Purchase aggregate without I/O: the contract the node-to-hub traces use, with real
signed receipts and confirmations (domain/model/receipts.py)."""

from __future__ import annotations

import pytest

from domain.model.delivery import verify_delivery_token
from domain.model.errors import (
    ConfirmationWrongSigner,
    InvalidInput,
    PurchaseNotRevocable,
    ReceiptInvalid,
    ReceiptWrongSigner,
    ReceiptWrongToken,
    RedemptionKeyMismatch,
    RedemptionWrongDevice,
    RedemptionWrongToken,
)
from domain.model.keys import SigningKey
from domain.model.purchase import Purchase, purchase_id_for, purchase_status
from tests.purchases.model_helpers import META, NOW_S, SIZE, Sale


def events(purchase: Purchase) -> list[str]:
    return [type(e).__name__ for e in purchase.collect_events()]


def test_a_new_purchase_is_issued_and_its_claims_are_the_token_s() -> None:
    sale = Sale()
    purchase = sale.purchase()
    assert purchase.status == "issued"
    claims = purchase.delivery_claims()
    assert claims.raw == verify_delivery_token(sale.token, {"signing-1": sale.hub_key.verify_key},
                                               audience=sale.device_id, now_s=NOW_S).raw
    assert "delivery_token" not in purchase.to_public()
    assert purchase.to_public(with_token=True)["delivery_token"] == sale.token
    assert events(purchase) == ["Purchased"]


def test_purchase_ids_are_stable_per_buyer_and_key() -> None:
    assert purchase_id_for("a", "k") == purchase_id_for("a", "k")
    assert purchase_id_for("a", "k") != purchase_id_for("b", "k")


def test_redemption_is_recorded_once_and_checked() -> None:
    sale = Sale()
    purchase = sale.purchase()
    purchase.collect_events()
    args = {"jti": sale.jti, "device_id": sale.device_id, "buyer_jkt": sale.jkt, "redeemed_at_ms": NOW_S * 1000}
    assert purchase.record_redemption(META, **args) is True
    assert purchase.record_redemption(META, **args) is False  # the same report again: nothing new
    assert events(purchase) == ["TokenRedeemed"]
    assert purchase.status == "redeemed"
    with pytest.raises(RedemptionKeyMismatch):
        purchase.record_redemption(META, **{**args, "buyer_jkt": "A" * 43})
    with pytest.raises(RedemptionWrongDevice):
        purchase.record_redemption(META, **{**args, "device_id": "another-device"})
    with pytest.raises(RedemptionWrongToken):
        purchase.record_redemption(META, **{**args, "jti": "another-token-0000"})
    with pytest.raises(InvalidInput):
        sale.purchase().record_redemption(META, **{**args, "redeemed_at_ms": -1})
    assert {RedemptionKeyMismatch.code, RedemptionWrongDevice.code, RedemptionWrongToken.code} == {
        "redemption_key_mismatch", "redemption_wrong_device", "redemption_wrong_token"}


def test_a_complete_receipt_with_its_confirmation_delivers() -> None:
    sale = Sale()
    purchase = sale.purchase()
    purchase.collect_events()
    confirmation = sale.confirmation()
    receipt = sale.receipt(confirmation=confirmation)
    assert purchase.record_confirmation(META, confirmation) is True
    assert purchase.status == "issued"
    assert purchase.record_receipt(META, receipt, device_key=sale.device_key.verify_key) is True
    assert events(purchase) == ["ConfirmationRecorded", "ReceiptRecorded", "Delivered"]
    assert purchase.status == "delivered"
    # Idempotent per digest: the same credentials again record nothing.
    assert purchase.record_receipt(META, receipt, device_key=sale.device_key.verify_key) is False
    assert purchase.record_confirmation(META, confirmation) is False
    assert events(purchase) == []
    view = purchase.to_public()
    assert view["receipts"]["count"] == 1 and view["confirmations"]["count"] == 1
    assert view["delivered_at_ms"] == NOW_S * 1000 + 4000


def test_the_receipt_may_come_first_and_the_confirmation_delivers() -> None:
    sale = Sale()
    purchase = sale.purchase()
    confirmation = sale.confirmation()
    purchase.record_receipt(META, sale.receipt(confirmation=confirmation), device_key=sale.device_key.verify_key)
    assert purchase.status == "issued"
    purchase.record_confirmation(META, confirmation)
    assert purchase.status == "delivered"


def test_the_last_seq_wins_and_interrupted_receipts_do_not_deliver() -> None:
    sale = Sale()
    purchase = sale.purchase()
    device = sale.device_key.verify_key
    purchase.record_receipt(META, sale.receipt(seq=2, outcome="interrupted", intervals=[[0, 4096]]), device_key=device)
    purchase.record_receipt(META, sale.receipt(seq=1, outcome="interrupted", intervals=[[0, 100]]), device_key=device)
    view = purchase.to_public()
    assert view["receipts"]["count"] == 2
    assert view["receipts"]["latest"]["seq"] == 2
    assert purchase.status == "issued"


def test_a_complete_receipt_without_a_matching_confirmation_does_not_deliver() -> None:
    sale = Sale()
    purchase = sale.purchase()
    purchase.record_confirmation(META, sale.confirmation(session="B" * 43))
    purchase.record_receipt(META, sale.receipt(confirmation=sale.confirmation()),
                            device_key=sale.device_key.verify_key)
    assert purchase.status == "issued"
    partial = sale.confirmation(blocks_verified=1)
    purchase.record_confirmation(META, partial)
    purchase.record_receipt(META, sale.receipt(seq=2, confirmation=partial), device_key=sale.device_key.verify_key)
    assert purchase.status == "issued"  # the buyer confirmed one block, not the object


def test_receipts_from_the_wrong_key_or_about_another_token_are_refused_with_their_codes() -> None:
    sale = Sale()
    purchase = sale.purchase()
    purchase.collect_events()
    stranger = SigningKey.generate()
    with pytest.raises(ReceiptWrongSigner):
        purchase.record_receipt(META, sale.receipt(key=stranger), device_key=sale.device_key.verify_key)
    with pytest.raises(ReceiptWrongSigner):  # signed by the device, but the hub holds another key
        purchase.record_receipt(META, sale.receipt(), device_key=stranger.verify_key)
    with pytest.raises(ReceiptWrongToken):
        purchase.record_receipt(META, sale.receipt(jti="another-token-00000"), device_key=sale.device_key.verify_key)
    tampered = sale.receipt()
    tampered["credentialSubject"]["bytes_sent"] = SIZE + 1
    with pytest.raises(ReceiptInvalid) as refused:
        purchase.record_receipt(META, tampered, device_key=sale.device_key.verify_key)
    assert refused.value.code == "receipt_invalid"
    with pytest.raises(ConfirmationWrongSigner):
        purchase.record_confirmation(META, sale.confirmation(key=stranger))
    with pytest.raises(ReceiptWrongToken):
        purchase.record_confirmation(META, sale.confirmation(size_bytes=SIZE + 1))
    with pytest.raises(ReceiptInvalid):
        purchase.record_confirmation(META, {"not": "a credential"})
    assert events(purchase) == []
    assert len({ReceiptWrongSigner.code, ConfirmationWrongSigner.code, ReceiptWrongToken.code,
                ReceiptInvalid.code}) == 4


def test_expiry_not_started_then_not_delivered() -> None:
    sale = Sale()
    purchase = sale.purchase()
    purchase.collect_events()
    assert purchase.expire(META, now_s=NOW_S + 900 + 30) is False  # inside the skew nodes allow
    assert purchase.expire(META, now_s=NOW_S + 900 + 31) is True
    assert purchase.status == "expired"
    assert purchase.expire(META, now_s=NOW_S + 1000) is False
    # The node did bind it in time; its report came late: the facts win.
    purchase.record_redemption(META, jti=sale.jti, device_id=sale.device_id, buyer_jkt=sale.jkt,
                               redeemed_at_ms=(NOW_S + 800) * 1000)
    assert purchase.status == "redeemed"
    assert purchase.expire(META, now_s=NOW_S + 86400 + 31) is True
    assert purchase.status == "expired"
    assert purchase.to_public()["token"]["expired_reason"] == "not_delivered"
    assert purchase.expire(META, now_s=NOW_S + 86400 * 2) is False
    assert events(purchase) == ["TokenExpired", "TokenRedeemed", "TokenExpired"]


def test_a_delivered_purchase_never_expires() -> None:
    sale = Sale()
    purchase = sale.purchase()
    confirmation = sale.confirmation()
    purchase.record_confirmation(META, confirmation)
    purchase.record_receipt(META, sale.receipt(confirmation=confirmation), device_key=sale.device_key.verify_key)
    assert purchase.expire(META, now_s=NOW_S + 10 * 86400) is False
    assert purchase.status == "delivered"


def test_revocation_only_while_issued() -> None:
    sale = Sale()
    purchase = sale.purchase()
    assert purchase.revoke(META, by="account:seller", reason="cannot deliver", now_s=NOW_S + 5) is True
    assert purchase.revoke(META, by="account:seller", reason="again", now_s=NOW_S + 6) is False
    assert purchase.status == "revoked"
    assert purchase.to_public()["token"]["revoked_at_s"] == NOW_S + 5
    redeemed = sale.purchase()
    redeemed.record_redemption(META, jti=sale.jti, device_id=sale.device_id, buyer_jkt=sale.jkt,
                               redeemed_at_ms=NOW_S * 1000)
    with pytest.raises(PurchaseNotRevocable):
        redeemed.revoke(META, by="account:seller", reason="", now_s=NOW_S + 5)


def test_status_order() -> None:
    assert purchase_status(delivered=True, revoked=True, expired_reason="not_delivered", redeemed=True) == "delivered"
    assert purchase_status(delivered=False, revoked=True, expired_reason="", redeemed=False) == "revoked"
    assert purchase_status(delivered=False, revoked=False, expired_reason="not_started", redeemed=True) == "redeemed"
    assert purchase_status(delivered=False, revoked=False, expired_reason="not_started", redeemed=False) == "expired"
    assert purchase_status(delivered=False, revoked=False, expired_reason="", redeemed=False) == "issued"
