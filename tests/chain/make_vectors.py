"""Generate tests/vectors/eip712_voucher.json (run once: ``python -m tests.chain.make_vectors``).

The vectors are committed and then only read: the tests check them against
domain/voucher.py and against the deployed Channels contract. Signatures are
deterministic (RFC 6979), so regenerating yields the same file.

Domain: chain id 31337 and the address the dev deployer (hardhat account 0) gets for
Channels at nonce 1 (TestToken is nonce 0), identical in process and on hardhat node.
"""

from __future__ import annotations

import json
from pathlib import Path

from eth_account import Account
from eth_utils import keccak

from domain.model.voucher import (
    SECP256K1_N,
    VoucherDomain,
    sign_voucher,
    voucher_digest,
    voucher_typed_data,
)

PATH = Path(__file__).resolve().parents[1] / "vectors" / "eip712_voucher.json"
DOMAIN = VoucherDomain(31337, "0xe7f1725E7734CE288F8367e1Bb143E90bb3F0512")
KEY = keccak(text="aimarket eip712 voucher vector key 1")
OTHER_KEY = keccak(text="aimarket eip712 voucher vector key 2")
CID = "0x" + keccak(text="aimarket vector channel 1").hex()


def _hex(b: bytes) -> str:
    return "0x" + b.hex()


def _case(name: str, expect: str, channel_id: str, amount: int, sig: bytes, why: str) -> dict:
    return {
        "name": name,
        "expect": expect,
        "why": why,
        "channelId": channel_id,
        "cumulativeAmount": str(amount),
        "signature": _hex(sig),
    }


def build() -> dict:
    cases = []
    for name, cid, amount in [
        ("valid_basic", CID, 1_000_000),
        ("valid_zero_amount", CID, 0),
        ("valid_max_uint256", "0x" + "ff" * 32, 2**256 - 1),
    ]:
        sig = sign_voucher(KEY, DOMAIN, cid, amount)
        case = _case(name, "valid", cid, amount, sig, "signed by the vector key")
        case["digest"] = _hex(voucher_digest(DOMAIN, cid, amount))
        case["typedData"] = voucher_typed_data(DOMAIN, cid, amount)
        case["typedData"]["message"]["cumulativeAmount"] = str(amount)
        cases.append(case)

    base = sign_voucher(KEY, DOMAIN, CID, 1_000_000)
    r, s, v = base[:32], int.from_bytes(base[32:64], "big"), base[64]
    other_cid = "0x" + keccak(text="aimarket vector channel 2").hex()
    cases += [
        _case("amount_tampered", "wrong_signer", CID, 1_000_001, base, "valid sig of 1000000 presented for 1000001"),
        _case(
            "channel_tampered", "wrong_signer", other_cid, 1_000_000, base, "valid sig presented for another channel"
        ),
        _case(
            "other_key",
            "wrong_signer",
            CID,
            1_000_000,
            sign_voucher(OTHER_KEY, DOMAIN, CID, 1_000_000),
            "signed by another key",
        ),
        _case(
            "other_chain",
            "wrong_signer",
            CID,
            1_000_000,
            sign_voucher(KEY, VoucherDomain(8453, DOMAIN.verifying_contract), CID, 1_000_000),
            "signed for chain 8453, verified on 31337",
        ),
        _case(
            "other_contract",
            "wrong_signer",
            CID,
            1_000_000,
            sign_voucher(KEY, VoucherDomain(31337, "0x" + "11" * 20), CID, 1_000_000),
            "signed for another verifying contract",
        ),
        _case(
            "high_s_twin",
            "malformed",
            CID,
            1_000_000,
            r + (SECP256K1_N - s).to_bytes(32, "big") + bytes([55 - v]),
            "malleable twin (s > n/2, v flipped): recovers the signer but must be refused",
        ),
        _case("v_0_or_1", "malformed", CID, 1_000_000, base[:64] + bytes([v - 27]), "v must be 27 or 28"),
        _case("v_29", "malformed", CID, 1_000_000, base[:64] + bytes([29]), "v must be 27 or 28"),
        _case("r_zero", "malformed", CID, 1_000_000, bytes(32) + base[32:], "r = 0"),
        _case("s_zero", "malformed", CID, 1_000_000, base[:32] + bytes(32) + base[64:], "s = 0"),
        _case("short_64_bytes", "malformed", CID, 1_000_000, base[:64], "EIP-2098 compact form not accepted"),
        _case("empty", "malformed", CID, 1_000_000, b"", "no signature"),
    ]
    return {
        "description": "EIP-712 Voucher(bytes32 channelId,uint256 cumulativeAmount) vectors for aimarket "
        "channels. expect: valid = recovers signer; wrong_signer = recovers some other address; "
        "malformed = refused outright (contract recover_voucher returns the zero address).",
        "domain": {
            "name": "aimarket-channels",
            "version": "1",
            "chainId": DOMAIN.chain_id,
            "verifyingContract": DOMAIN.verifying_contract,
        },
        "domainSeparator": _hex(DOMAIN.separator()),
        "privateKey": _hex(KEY),
        "signer": Account.from_key(KEY).address,
        "cases": cases,
    }


def main() -> None:
    PATH.parent.mkdir(parents=True, exist_ok=True)
    PATH.write_text(json.dumps(build(), indent=2) + "\n", encoding="utf-8")
    print(f"wrote {PATH}")


if __name__ == "__main__":
    main()
