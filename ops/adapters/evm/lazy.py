"""The chain, built once on first use: an in-process EVM with freshly deployed contracts for
the embedded default, or JSON-RPC to ``AIMARKET_CHAIN_RPC_URL``. Processes that never touch
the chain pay nothing for it; nothing connects at wiring time."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

from ops.settings import Settings, SettingsError


@dataclass
class DevChain:
    """The embedded in-process chain and its development accounts (demo and tests)."""

    chain: Any
    deployment: Any
    accounts: list[Any]  # 0 deployer/token owner, 1 operator, 2 fee recipient, 3.. free for buyers/sellers


class LazyChain:
    """Builds the ``ChainChannels`` client once, on first use, thread-safely."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._lock = threading.Lock()
        self._client: Any = None
        self.dev: DevChain | None = None

    def __call__(self) -> Any:
        if self._client is None:
            with self._lock:
                if self._client is None:
                    self._client = self._build()
        return self._client

    def _build(self) -> Any:
        from eth_account import Account

        from ops.adapters.evm.channels import ChainChannels
        from ops.adapters.evm.deploy import deploy_all
        from ops.adapters.evm.evm import dev_accounts, http_chain, in_process_chain

        s = self.settings
        if s.chain_rpc_url:
            if not (s.channels_address and s.token_address and s.operator_key_hex):
                raise SettingsError("AIMARKET_CHAIN_RPC_URL needs CHANNELS_ADDRESS, TOKEN_ADDRESS and OPERATOR_KEY")
            operator = Account.from_key(bytes.fromhex(s.operator_key_hex.removeprefix("0x")))
            return ChainChannels(http_chain(s.chain_rpc_url, poll_latency_s=0.02), channels_address=s.channels_address,
                                 token_address=s.token_address, operator=operator)
        chain = in_process_chain()
        accounts = dev_accounts()
        deployment = deploy_all(chain, accounts[0], operator=accounts[1].address, fee_recipient=accounts[2].address,
                                fee_bps=s.fee_bps)
        self.dev = DevChain(chain, deployment, accounts)
        return ChainChannels(chain, channels_address=deployment.channels, token_address=deployment.token,
                             operator=accounts[1])
