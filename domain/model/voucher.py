"""EIP-712 cumulative vouchers for on-chain payment channels.

A buyer signs ``Voucher(bytes32 channelId, uint256 cumulativeAmount)`` under the domain
``EIP712Domain(name="aimarket-channels", version="1", chainId, verifyingContract)``.
Vouchers are cumulative: each one replaces the previous, so only the latest matters and
the hub can never settle more than the largest amount the buyer signed.

Pure code: no I/O, no clock. The acceptance rules are exactly the contract's
(``ops/adapters/evm/contracts/Channels.vy``): 65 bytes ``r || s || v``, ``v`` in {27, 28},
``0 < r < n``, ``0 < s <= n/2`` (EIP-2 low-s: the malleable twin is refused).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from eth_account import Account
from eth_keys import keys
from eth_keys.exceptions import BadSignature, ValidationError
from eth_utils import is_address, keccak, to_checksum_address

from domain.model.errors import InvalidInput, SignatureInvalid

DOMAIN_NAME = "aimarket-channels"
DOMAIN_VERSION = "1"
UINT256_MAX = 2**256 - 1
SECP256K1_N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
SECP256K1_N_HALF = SECP256K1_N // 2
SIGNATURE_LENGTH = 65

EIP712_DOMAIN_TYPE = [
    {"name": "name", "type": "string"},
    {"name": "version", "type": "string"},
    {"name": "chainId", "type": "uint256"},
    {"name": "verifyingContract", "type": "address"},
]
VOUCHER_TYPE = [
    {"name": "channelId", "type": "bytes32"},
    {"name": "cumulativeAmount", "type": "uint256"},
]
_DOMAIN_TYPEHASH = keccak(text="EIP712Domain(string name,string version,uint256 chainId,address verifyingContract)")
_VOUCHER_TYPEHASH = keccak(text="Voucher(bytes32 channelId,uint256 cumulativeAmount)")


@dataclass(frozen=True, slots=True)
class VoucherDomain:
    """Where a voucher is valid: one chain and one Channels contract.

    Attributes:
        chain_id: EIP-155 chain id.
        verifying_contract: the Channels contract address (stored checksummed).
    """

    chain_id: int
    verifying_contract: str

    def __post_init__(self) -> None:
        if type(self.chain_id) is not int or not 0 < self.chain_id <= UINT256_MAX:
            raise InvalidInput("chain_id must be a positive integer", param="chain_id")
        if not isinstance(self.verifying_contract, str) or not is_address(self.verifying_contract):
            raise InvalidInput("verifying_contract must be an address", param="verifying_contract")
        object.__setattr__(self, "verifying_contract", to_checksum_address(self.verifying_contract))

    def separator(self) -> bytes:
        """The EIP-712 domain separator (32 bytes)."""
        return keccak(
            _DOMAIN_TYPEHASH
            + keccak(text=DOMAIN_NAME)
            + keccak(text=DOMAIN_VERSION)
            + self.chain_id.to_bytes(32, "big")
            + bytes(12)
            + bytes.fromhex(self.verifying_contract[2:])
        )


def channel_id_bytes(channel_id: bytes | str) -> bytes:
    """Parse a channel id given as 32 bytes or ``0x`` + 64 hex digits (any letter case)."""
    if isinstance(channel_id, (bytes, bytearray)):
        raw = bytes(channel_id)
    elif isinstance(channel_id, str) and channel_id[:2] in ("0x", "0X") and len(channel_id) == 66:
        try:
            raw = bytes.fromhex(channel_id[2:])
        except ValueError:
            raise InvalidInput("channel_id is not hex", param="channel_id") from None
    else:
        raise InvalidInput("channel_id must be 32 bytes or 0x-hex", param="channel_id")
    if len(raw) != 32:
        raise InvalidInput("channel_id must be 32 bytes", param="channel_id")
    return raw


def _check_amount(cumulative_amount: int) -> int:
    if type(cumulative_amount) is not int or not 0 <= cumulative_amount <= UINT256_MAX:
        raise InvalidInput("cumulative_amount must be a uint256", param="cumulative_amount")
    return cumulative_amount


def voucher_typed_data(domain: VoucherDomain, channel_id: bytes | str, cumulative_amount: int) -> dict[str, Any]:
    """The full EIP-712 message (as for ``eth_signTypedData_v4``) a wallet signs."""
    return {
        "types": {"EIP712Domain": EIP712_DOMAIN_TYPE, "Voucher": VOUCHER_TYPE},
        "primaryType": "Voucher",
        "domain": {
            "name": DOMAIN_NAME,
            "version": DOMAIN_VERSION,
            "chainId": domain.chain_id,
            "verifyingContract": domain.verifying_contract,
        },
        "message": {
            "channelId": "0x" + channel_id_bytes(channel_id).hex(),
            "cumulativeAmount": _check_amount(cumulative_amount),
        },
    }


def voucher_digest(domain: VoucherDomain, channel_id: bytes | str, cumulative_amount: int) -> bytes:
    """The 32-byte EIP-712 digest ``keccak256(0x1901 || domainSeparator || structHash)``."""
    struct_hash = keccak(
        _VOUCHER_TYPEHASH + channel_id_bytes(channel_id) + _check_amount(cumulative_amount).to_bytes(32, "big")
    )
    return keccak(b"\x19\x01" + domain.separator() + struct_hash)


def _private_key(private_key: bytes | str | keys.PrivateKey) -> keys.PrivateKey:
    if isinstance(private_key, keys.PrivateKey):
        return private_key
    try:
        raw = bytes.fromhex(private_key.removeprefix("0x")) if isinstance(private_key, str) else private_key
        return keys.PrivateKey(bytes(raw))
    except (ValueError, ValidationError, TypeError):
        raise InvalidInput("private_key must be 32 bytes", param="private_key") from None


def sign_voucher(
    private_key: bytes | str | keys.PrivateKey,
    domain: VoucherDomain,
    channel_id: bytes | str,
    cumulative_amount: int,
) -> bytes:
    """Sign a voucher; returns 65 bytes ``r || s || v`` with ``v`` in {27, 28} and low ``s``."""
    digest = voucher_digest(domain, channel_id, cumulative_amount)
    signed = Account.unsafe_sign_hash(digest, _private_key(private_key).to_bytes())
    sig = signed.r.to_bytes(32, "big") + signed.s.to_bytes(32, "big") + bytes([signed.v])
    # eth_account signs deterministically (RFC 6979) with low s; the contract demands it.
    assert signed.s <= SECP256K1_N_HALF and signed.v in (27, 28), "non-canonical signature"
    return sig


def recover_voucher_signer(
    domain: VoucherDomain, channel_id: bytes | str, cumulative_amount: int, signature: bytes
) -> str:
    """Return the checksum address that signed this voucher.

    Raises:
        SignatureInvalid: the signature is not 65 canonical bytes or recovers no key.
        InvalidInput: the channel id or amount is malformed.
    """
    digest = voucher_digest(domain, channel_id, cumulative_amount)
    if not isinstance(signature, (bytes, bytearray)) or len(signature) != SIGNATURE_LENGTH:
        raise SignatureInvalid("voucher signature must be 65 bytes", param="signature")
    r = int.from_bytes(signature[0:32], "big")
    s = int.from_bytes(signature[32:64], "big")
    v = signature[64]
    if v not in (27, 28):
        raise SignatureInvalid("voucher signature v must be 27 or 28", param="signature")
    if not (0 < r < SECP256K1_N and 0 < s <= SECP256K1_N_HALF):
        raise SignatureInvalid("voucher signature r/s out of range (high s is refused)", param="signature")
    try:
        public_key = keys.Signature(vrs=(v - 27, r, s)).recover_public_key_from_msg_hash(digest)
    except (BadSignature, ValidationError, ValueError):
        raise SignatureInvalid("voucher signature recovers no key", param="signature") from None
    return public_key.to_checksum_address()


def verify_voucher(
    expected_signer: str,
    domain: VoucherDomain,
    channel_id: bytes | str,
    cumulative_amount: int,
    signature: bytes,
) -> None:
    """Check the voucher was signed by ``expected_signer``; returns nothing, raises otherwise.

    Raises:
        SignatureInvalid: malformed signature, or signed by anyone else.
    """
    if not isinstance(expected_signer, str) or not is_address(expected_signer):
        raise InvalidInput("expected_signer must be an address", param="expected_signer")
    signer = recover_voucher_signer(domain, channel_id, cumulative_amount, signature)
    # Addresses are public: a plain comparison leaks nothing worth a constant-time compare.
    if signer != to_checksum_address(expected_signer):
        raise SignatureInvalid("voucher not signed by the channel's buyer", param="signature")
