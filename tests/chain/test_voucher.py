"""EIP-712 vouchers: domain/voucher.py against the committed vectors and the contract."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from eth_account import Account
from eth_account.messages import _hash_eip191_message, encode_typed_data

from domain.model.errors import InvalidInput, SignatureInvalid
from domain.model.voucher import (
    VoucherDomain,
    recover_voucher_signer,
    sign_voucher,
    verify_voucher,
    voucher_digest,
    voucher_typed_data,
)
from ops.adapters.evm.deploy import contract
from tests.chain.conftest import World

VECTORS = json.loads((Path(__file__).resolve().parents[1] / "vectors" / "eip712_voucher.json").read_text())
DOMAIN = VoucherDomain(VECTORS["domain"]["chainId"], VECTORS["domain"]["verifyingContract"])
SIGNER = VECTORS["signer"]
CASES = VECTORS["cases"]
ZERO_ADDRESS = "0x" + "00" * 20


def _args(case: dict) -> tuple[str, int, bytes]:
    return case["channelId"], int(case["cumulativeAmount"]), bytes.fromhex(case["signature"][2:])


def test_vector_file_covers_both_outcomes() -> None:
    expects = {c["expect"] for c in CASES}
    assert expects == {"valid", "wrong_signer", "malformed"}
    assert Account.from_key(VECTORS["privateKey"]).address == SIGNER
    assert "0x" + DOMAIN.separator().hex() == VECTORS["domainSeparator"]


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_vectors_in_python(case: dict) -> None:
    cid, amount, sig = _args(case)
    if case["expect"] == "valid":
        assert recover_voucher_signer(DOMAIN, cid, amount, sig) == SIGNER
        verify_voucher(SIGNER, DOMAIN, cid, amount, sig)
        assert "0x" + voucher_digest(DOMAIN, cid, amount).hex() == case["digest"]
        # Re-signing is deterministic (RFC 6979), so the vectors are reproducible.
        assert sign_voucher(VECTORS["privateKey"], DOMAIN, cid, amount) == sig
    elif case["expect"] == "wrong_signer":
        assert recover_voucher_signer(DOMAIN, cid, amount, sig) != SIGNER
        with pytest.raises(SignatureInvalid):
            verify_voucher(SIGNER, DOMAIN, cid, amount, sig)
    else:
        with pytest.raises(SignatureInvalid):
            recover_voucher_signer(DOMAIN, cid, amount, sig)


def test_vectors_against_the_contract(world: World) -> None:
    # Same deployer and nonces as the vectors' verifyingContract (see make_vectors.py).
    assert world.deployment.channels == DOMAIN.verifying_contract
    channels = contract(world.chain.w3, "Channels", world.deployment.channels).functions
    assert "0x" + channels.domain_separator().call().hex() == VECTORS["domainSeparator"]
    for case in CASES:
        cid, amount, sig = _args(case)
        recovered = channels.recover_voucher(bytes.fromhex(cid[2:]), amount, sig).call()
        if case["expect"] == "valid":
            assert recovered == SIGNER, case["name"]
            assert "0x" + channels.voucher_digest(bytes.fromhex(cid[2:]), amount).call().hex() == case["digest"]
        elif case["expect"] == "wrong_signer":
            assert recovered not in (SIGNER, ZERO_ADDRESS), case["name"]
        else:
            assert recovered == ZERO_ADDRESS, case["name"]


def test_digest_matches_eth_account_typed_data_encoding() -> None:
    cid, amount = "0x" + "ab" * 32, 123_456
    signable = encode_typed_data(full_message=voucher_typed_data(DOMAIN, cid, amount))
    assert _hash_eip191_message(signable) == voucher_digest(DOMAIN, cid, amount)
    sig = sign_voucher(VECTORS["privateKey"], DOMAIN, cid, amount)
    assert Account.recover_message(signable, signature=sig) == SIGNER


@pytest.mark.parametrize(
    "garbage", [b"", b"\x00" * 65, b"\xff" * 65, b"\x01" * 64, "not bytes", b"\x00" * 66], ids=repr
)
def test_garbage_signatures_raise_signature_invalid(garbage: object) -> None:
    with pytest.raises(SignatureInvalid):
        recover_voucher_signer(DOMAIN, "0x" + "ab" * 32, 1, garbage)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("chain_id", "contract_address", "cid", "amount"),
    [
        (0, DOMAIN.verifying_contract, "0x" + "ab" * 32, 1),
        (1, "0x1234", "0x" + "ab" * 32, 1),
        (1, DOMAIN.verifying_contract, "0xab", 1),
        (1, DOMAIN.verifying_contract, "0x" + "zz" * 32, 1),
        (1, DOMAIN.verifying_contract, "0x" + "ab" * 32, -1),
        (1, DOMAIN.verifying_contract, "0x" + "ab" * 32, 2**256),
        (1, DOMAIN.verifying_contract, "0x" + "ab" * 32, True),
    ],
)
def test_malformed_inputs_raise_invalid_input(chain_id: int, contract_address: str, cid: str, amount: int) -> None:
    with pytest.raises(InvalidInput):
        voucher_digest(VoucherDomain(chain_id, contract_address), cid, amount)
