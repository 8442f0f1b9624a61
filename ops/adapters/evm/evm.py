"""Connections to an EVM: in process (eth-tester + py-evm) or JSON-RPC over HTTP.

Both kinds use hardhat's well-known development mnemonic and chain id 31337 by default, so
the in-process chain and ``hardhat node`` have the same funded accounts and the same
deployment addresses (deployer account 0, nonces 0 and 1): one set of EIP-712 test vectors
holds for both. These dev keys are public: never fund them anywhere real.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from eth_account import Account
from eth_account.signers.local import LocalAccount
from web3 import HTTPProvider, Web3

DEV_MNEMONIC = "test test test test test test test test test test test junk"
DEV_HD_PATH = "m/44'/60'/0'/0"
DEV_CHAIN_ID = 31337
DEV_ACCOUNT_COUNT = 10


@dataclass(frozen=True, slots=True)
class Chain:
    """A connection plus the settings needed to wait on it. Holds no chain state.

    Attributes:
        w3: the web3 instance.
        kind: ``"in_process"`` (eth-tester, auto-mines each tx) or ``"http"``.
        poll_latency_s: receipt polling interval.
        receipt_timeout_s: how long to wait for a receipt before giving up.
    """

    w3: Web3
    kind: Literal["in_process", "http"]
    poll_latency_s: float = 0.05
    receipt_timeout_s: float = 60.0


def dev_accounts(count: int = DEV_ACCOUNT_COUNT) -> list[LocalAccount]:
    """The development accounts (hardhat's defaults) as signing accounts. Tests/embedded only."""
    Account.enable_unaudited_hdwallet_features()
    return [Account.from_mnemonic(DEV_MNEMONIC, account_path=f"{DEV_HD_PATH}/{i}") for i in range(count)]


def in_process_chain(*, accounts: int = DEV_ACCOUNT_COUNT, chain_id: int = DEV_CHAIN_ID) -> Chain:
    """A fresh in-process EVM (Prague) with ``accounts`` funded dev accounts (1e6 ETH each).

    Every transaction is mined into its own block at once; reverts raise
    ``eth_tester.exceptions.TransactionFailed``.
    """
    from eth_tester import EthereumTester, PyEVMBackend
    from web3 import EthereumTesterProvider
    from web3.providers.eth_tester.defaults import API_ENDPOINTS, static_return

    backend = PyEVMBackend.from_mnemonic(DEV_MNEMONIC, num_accounts=accounts, hd_path=DEV_HD_PATH)
    # py-evm reads chain_id from the chain (CHAINID opcode, tx validation); web3's tester
    # provider answers eth_chainId from a static table. Both must agree.
    backend.chain.chain_id = chain_id
    endpoints = {namespace: dict(methods) for namespace, methods in API_ENDPOINTS.items()}
    endpoints["eth"]["chainId"] = static_return(chain_id)
    w3 = Web3(EthereumTesterProvider(EthereumTester(backend), api_endpoints=endpoints))
    return Chain(w3=w3, kind="in_process", poll_latency_s=0.0, receipt_timeout_s=5.0)


def http_chain(
    url: str,
    *,
    poll_latency_s: float = 0.05,
    receipt_timeout_s: float = 60.0,
    request_timeout_s: float = 10.0,
) -> Chain:
    """A JSON-RPC connection (hardhat node in tests, Base in production). Does not connect yet."""
    provider = HTTPProvider(url, request_kwargs={"timeout": request_timeout_s})
    return Chain(
        w3=Web3(provider),
        kind="http",
        poll_latency_s=poll_latency_s,
        receipt_timeout_s=receipt_timeout_s,
    )


def advance_time(chain: Chain, seconds: int) -> int:
    """Move chain time forward and mine a block; returns the new block timestamp. Dev only."""
    w3 = chain.w3
    if chain.kind == "in_process":
        tester = w3.provider.ethereum_tester  # type: ignore[attr-defined]
        now = w3.eth.get_block("latest")["timestamp"]
        tester.time_travel(now + seconds)
    else:
        w3.provider.make_request("evm_increaseTime", [seconds])
        w3.provider.make_request("evm_mine", [])
    return int(w3.eth.get_block("latest")["timestamp"])
