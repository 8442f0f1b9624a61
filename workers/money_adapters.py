"""Wires the money adapters (chain, Stripe) onto a runtime's application, lazily.

Nothing connects here at import or at wiring time: the chain is built on first use (an
in-process EVM with freshly deployed contracts for the embedded default, or JSON-RPC to
``chain_rpc_url``), so processes that never touch the chain pay nothing for it.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

from domain.commands.money import MoneyConfig
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

        from workers.chain.channels import ChainChannels
        from workers.chain.deploy import deploy_all
        from workers.chain.evm import dev_accounts, http_chain, in_process_chain

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


def wire_money(runtime: Any) -> None:
    """Give the application its money configuration and adapters (called by bootstrap)."""
    s: Settings = runtime.settings
    market = runtime.market
    market.money = MoneyConfig(fee_bps=s.fee_bps, unsigned_allowance_minor=s.unsigned_allowance_minor,
                               card_channel_ttl_s=s.card_channel_ttl_s, settle_margin_s=s.settle_margin_s,
                               token_currency=s.token_currency)
    market.chain_factory = LazyChain(s)
    if s.debit_batch_ms > 0:
        from domain.commands.debit_batcher import DebitBatcher

        router = None
        if s.redis_url and not s.embedded:
            from ops.debit_routing import RedisDebitRouter

            # Joins the members on the first debit this process takes (see DebitBatcher).
            router = RedisDebitRouter(s.redis_url, namespace=f"aimarket:{s.pg_parts()['dbname']}:{s.db_schema}")
        saver = None
        if not s.embedded:
            from ops.pg_async_writer import AsyncPgSaver

            saver = AsyncPgSaver(market, s.pg_conninfo())  # connects on the first batch
        runtime.debit_batcher = DebitBatcher(market, window_s=s.debit_batch_ms / 1000, router=router, saver=saver)
    if s.redis_url and not s.embedded:
        from workers.settlement import settlement_sender

        runtime.enqueue_settlement = settlement_sender(s.redis_url)
    if s.stripe_api_key:
        from workers.payments.stripe_gateway import StripeGateway

        market.payments = StripeGateway(s.stripe_api_key, s.stripe_webhook_secret,
                                        api_base=s.stripe_api_base or None)
