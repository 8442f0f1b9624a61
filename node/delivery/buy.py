"""The buyer's purchase: ``aim-node buy`` and :func:`buy` for other code (a demo, an agent).

A purchase binds its delivery token to a key the buyer's node makes for it alone (its RFC 7638
thumbprint goes to the hub as ``buyer_jkt``; the hub puts it in the token's ``cnf``). The key
and the request's Idempotency-Key are written to ``<home>/purchases/pending-*`` *before* the
request is sent, so a retry after a timeout, a dropped connection or a killed process sends
the same key and the same body: the hub answers with the same purchase and token, and the
channel pays once. Once answered, everything lives in ``<home>/purchases/<purchase id>/``:

* ``buyer.jwk``: the per-purchase private key (mode 0600, ``node.delivery.keys``);
* ``token.jwt``: the delivery token (mode 0600: it is bound to the key, but still private);
* ``purchase.json``: the hub's answer without the token, and the hub's URL.

``aim-node fetch PURCHASE --out FILE`` finds the token and key there by purchase id.
"""

from __future__ import annotations

import json
import os
import re
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from domain.model.delivery import jwk_thumbprint
from domain.model.errors import InvalidInput
from domain.model.keys import SigningKey
from node.delivery.keys import load_buyer_key, save_buyer_key
from node.hub_client import HubClient, HubError

RETRY_DELAYS_S = (0.5, 1.0, 2.0, 4.0)
_UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


@dataclass(frozen=True)
class Bought:
    """A purchase the hub recorded, and where its token and key are kept."""

    purchase: dict[str, Any]
    folder: Path

    @property
    def purchase_id(self) -> str:
        return str(self.purchase["id"])

    @property
    def token_path(self) -> Path:
        return self.folder / "token.jwt"

    @property
    def key_path(self) -> Path:
        return self.folder / "buyer.jwk"

    @property
    def token(self) -> str:
        return self.token_path.read_text().strip()

    @property
    def hub_url(self) -> str:
        return str(self.purchase.get("hub_url") or "")


def purchases_dir(home: Path) -> Path:
    folder = home / "purchases"
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    return folder


def buy(hub: HubClient, listing_id: str, channel_id: str, *, bearer: str, home: Path,
        voucher: dict[str, Any] | None = None, sleep: Callable[[float], None] = time.sleep) -> Bought:
    """Buy ``listing_id`` from ``channel_id`` as the account of ``bearer`` (an API key, session
    or OAuth access token); return the purchase with its token and key stored under ``home``.

    Transient failures (the hub unreachable, a 503) are retried with the same Idempotency-Key
    and body; so is a second call after a crash, while the request is pending.

    Raises:
        HubError: the hub refused the purchase (its code: ``channel_exhausted``,
            ``listing_delisted``, ``own_listing``...), or stayed unreachable.
        InvalidInput: a malformed listing or channel id.
    """
    for name, value in (("listing", listing_id), ("channel", channel_id)):
        if not isinstance(value, str) or not _UUID.fullmatch(value):
            raise InvalidInput(f"the {name} id must be a UUID", param=name)
    folder = purchases_dir(home)
    pending = folder / f"pending-{listing_id}-{channel_id}.json"
    key_file = pending.with_suffix(".jwk")
    if pending.exists() and key_file.exists():  # a request that may have reached the hub: send it again
        idempotency_key = json.loads(pending.read_text())["idempotency_key"]
        key = load_buyer_key(key_file)
    else:
        key, idempotency_key = SigningKey.generate(), uuid.uuid4().hex
        key_file.unlink(missing_ok=True)
        save_buyer_key(key, key_file)
        _write_private(pending, json.dumps({"idempotency_key": idempotency_key}))
    body: dict[str, Any] = {"listing_id": listing_id, "channel_id": channel_id,
                            "buyer_jkt": jwk_thumbprint(key.verify_key)}
    if voucher is not None:
        body["voucher"] = voucher
    answer = _post(hub, body, bearer=bearer, idempotency_key=idempotency_key, sleep=sleep)
    token = answer.pop("delivery_token")
    bought = folder / answer["id"]
    bought.mkdir(exist_ok=True, mode=0o700)
    _write_private(bought / "token.jwt", token + "\n")
    (bought / "purchase.json").write_text(json.dumps({**answer, "hub_url": hub.base_url}, indent=2) + "\n")
    os.replace(key_file, bought / "buyer.jwk")
    pending.unlink(missing_ok=True)
    return Bought({**answer, "hub_url": hub.base_url}, bought)


def _post(hub: HubClient, body: dict[str, Any], *, bearer: str, idempotency_key: str,
          sleep: Callable[[float], None]) -> dict[str, Any]:
    for delay in (*RETRY_DELAYS_S, None):
        try:
            answer = hub.request("POST", "/v1/purchases", body, bearer=bearer,
                                 headers={"Idempotency-Key": idempotency_key})
        except HubError as exc:
            transient = exc.code == "hub_unreachable" or exc.status in (502, 503, 504)
            if not transient or delay is None:
                raise
            sleep(delay)
            continue
        if not isinstance(answer, dict) or not isinstance(answer.get("delivery_token"), str) or not isinstance(
                answer.get("id"), str) or not _UUID.fullmatch(answer["id"]):
            raise HubError(0, "hub_bad_response", "the hub's purchase answer carries no token")
        return answer
    raise AssertionError("unreachable")  # pragma: no cover - the loop returns or raises


def stored_purchase(home: Path, purchase_id: str) -> Bought:
    """A purchase bought from this node home, by id.

    Raises:
        InvalidInput: no such purchase under ``home`` (bought elsewhere: use ``--token``/``--key``).
    """
    if not isinstance(purchase_id, str) or not _UUID.fullmatch(purchase_id):
        raise InvalidInput("the purchase id must be a UUID", param="purchase")
    folder = home / "purchases" / purchase_id
    try:
        purchase = json.loads((folder / "purchase.json").read_text())
    except FileNotFoundError:
        raise InvalidInput(f"no purchase {purchase_id} under {home / 'purchases'}: bought on another node? give "
                           "--token FILE and --key FILE", param="purchase") from None
    return Bought(purchase, folder)


def fetch_inputs(home: Path, purchase_id: str | None, token_file: str | None,
                 key_file: str | None) -> tuple[str, SigningKey, str | None]:
    """What ``aim-node fetch`` fetches with: the token, the buyer key and the hub's URL (None
    when unknown), from a purchase bought on this node or from ``--token`` and ``--key`` files."""
    if purchase_id:
        if token_file or key_file:
            raise InvalidInput("give a PURCHASE id, or --token FILE and --key FILE, not both")
        stored = stored_purchase(home, purchase_id)
        return stored.token, load_buyer_key(stored.key_path), stored.hub_url or None
    if not (token_file and key_file):
        raise InvalidInput("give a PURCHASE id bought on this node, or --token FILE and --key FILE")
    return Path(token_file).read_text().strip(), load_buyer_key(key_file), None


def _write_private(path: Path, text: str) -> None:
    """Write ``text`` to a new or existing file readable by its owner only (replaced atomically)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
