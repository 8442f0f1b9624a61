"""Helpers for on-chain channel tests: wallets bound through the API, deposits made by the
buyer's own wallet on the contract, debits carrying EIP-712 vouchers, settle-log counting."""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass
from typing import Any

from eth_account import Account
from eth_account.messages import encode_defunct
from eth_account.signers.local import LocalAccount

from domain.model.voucher import channel_id_bytes, sign_voucher
from domain.model.wallet import wallet_message
from ops.adapters.evm import wallet
from ops.adapters.evm.deploy import contract
from ops.adapters.evm.evm import Chain
from ops.adapters.evm.txs import fee_fields, pending_nonce, send_signed, wait_receipt
from tests.money.conftest import person

BUYER_MINT = 5_000_000


@dataclass
class Party:
    """An account of the hub (API headers) and the wallet it bound."""

    account: dict[str, Any]
    key: LocalAccount

    @property
    def id(self) -> str:
        return self.account["id"]

    @property
    def headers(self) -> dict[str, str]:
        return self.account["headers"]


def wallet_signature(key: LocalAccount, account_id: str, hub_url: str, address: str | None = None) -> str:
    message = wallet_message(account_id, address or key.address, hub_url)
    return "0x" + Account.sign_message(encode_defunct(text=message), key.key).signature.hex()


def bind(client: Any, party_account: dict[str, Any], key: LocalAccount, hub_url: str) -> Party:
    r = client.simulate_post("/v1/me/wallet", headers=party_account["headers"],
                             json={"address": key.address,
                                   "signature": wallet_signature(key, party_account["id"], hub_url)})
    assert r.status_code == 201, r.json
    return Party(party_account, key)


def party(client: Any, roles: list[str], key: LocalAccount, hub_url: str) -> Party:
    return bind(client, person(client, roles), key, hub_url)


def deposit(chain: Chain, deployer: LocalAccount, deployment: Any, buyer: LocalAccount, amount: int,
            expiry_s: int, *, hub: Any) -> tuple[str, str]:
    """Mint to the buyer, approve and open a channel from the buyer's wallet; (tx hash, chain id)."""
    hub.wait(wallet.mint(chain, deployer, deployment.token, buyer.address, BUYER_MINT))
    hub.wait(wallet.approve(chain, buyer, deployment.token, deployment.channels, amount))
    chain_cid = "0x" + os.urandom(32).hex()
    tx = wallet.open_channel(chain, buyer, deployment.channels, chain_cid, amount, expiry_s)
    hub.wait(tx)
    return tx, chain_cid


def open_channel(client: Any, buyer: Party, tx_hash: str) -> Any:
    # Every open takes an Idempotency-Key (the document cannot make it depend on the rail).
    return client.simulate_post("/v1/channels", json={"rail": "chain", "tx_hash": tx_hash},
                                headers={**buyer.headers, "Idempotency-Key": f"open-{tx_hash}"})


def debit(client: Any, buyer: Party, channel: dict[str, Any], seller: Party, amount: int, *,
          cumulative: int | None, domain: Any, signer: LocalAccount | None = None) -> Any:
    body: dict[str, Any] = {"amount_minor": amount, "seller_account_id": seller.id, "purpose": "listing:x"}
    if cumulative is not None:
        sig = sign_voucher((signer or buyer.key).key, domain, channel["chain_channel_id"], cumulative)
        body["voucher"] = {"cumulative_minor": cumulative, "signature": "0x" + sig.hex()}
    return client.simulate_post(f"/v1/channels/{channel['id']}/debits", json=body,
                                headers={**buyer.headers, "Idempotency-Key": uuid.uuid4().hex})


def settle_logs(chain: Chain, channels_address: str, chain_cid: str) -> list[Any]:
    """Every ChannelSettled log of one channel (exactly one after any number of settle runs)."""
    event = contract(chain.w3, "Channels", channels_address).events.ChannelSettled
    return list(event.get_logs(from_block=0, argument_filters={"channel_id": channel_id_bytes(chain_cid)}))


def withdraw_all(hub: Any, *addresses: str) -> None:
    for address in addresses:
        hub.wait(hub.withdraw_for(address))


def funded_key(chain: Chain, funder: LocalAccount, wei: int = 10**17) -> LocalAccount:
    """A fresh wallet with some ETH for gas (a wallet binds to one account only: tests that
    share a chain need new ones)."""
    key = Account.create()
    tx = {"to": key.address, "value": wei, "gas": 21_000, "chainId": int(chain.w3.eth.chain_id),
          "nonce": pending_nonce(chain.w3, funder.address), "type": 2, **fee_fields(chain.w3)}
    wait_receipt(chain, send_signed(chain, funder, tx))
    return key
