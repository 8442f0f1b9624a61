"""Publishing puts the file's block commitment inside the signed listing and registers the file."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from domain.model.blocks import BlockCommitment
from domain.model.errors import MarketError
from node.delivery.server import open_confined
from node.delivery.store import DeliveryStore
from node.publishing import delivery_commitment, file_blocks, register_object
from tests.catalogue.helpers import catch_up, listing, node, publish

BLOCK = 4096


def _file(tmp_path: Path, size: int = 3 * BLOCK - 7) -> Path:
    path = tmp_path / "data" / "object.bin"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(os.urandom(size))
    return path


def test_the_hub_accepts_a_listing_with_a_delivery_commitment(client, runtime, tmp_path: Path) -> None:
    delivery = delivery_commitment(_file(tmp_path), BLOCK)
    assert delivery["blocks"]["count"] == 3 and delivery["size_bytes"] == 3 * BLOCK - 7
    n = node(client)
    published = publish(client, n, listing("Delivered data", delivery=delivery))
    assert published.status_code == 201, published.json
    assert published.json["delivery"] == delivery
    catch_up(runtime)
    assert client.simulate_get(f"/v1/listings/{published.json['id']}").status_code == 200
    # the commitment is in the recorded (signed) listing the hub will issue tokens from
    assert runtime.market.catalogue.listing(published.json["id"]).metadata["delivery"] == delivery
    bad = publish(client, n, listing("Bad commitment", delivery={**delivery, "blocks": {"alg": "md5"}}))
    assert bad.status_code == 422 and bad.json["code"] == "invalid_input"


def test_an_empty_file_is_one_empty_block(tmp_path: Path) -> None:
    size, object_hash, hashes = file_blocks(_file(tmp_path, 0), BLOCK)
    assert (size, len(hashes)) == (0, 1) and object_hash == "sha256-47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU="
    BlockCommitment.build(0, BLOCK, hashes).check_hashes(0, hashes)


def test_registration_resolves_the_path_and_confines_it(tmp_path: Path) -> None:
    path = _file(tmp_path)
    link = tmp_path / "link.bin"
    link.symlink_to(path)
    commitment = register_object(tmp_path / "home", "0b7e6f0e-1d2c-5b3a-9f8e-7d6c5b4a3f2e", link, block_size=BLOCK)
    store = DeliveryStore(tmp_path / "home" / "delivery.sqlite")
    obj = store.lookup("0b7e6f0e-1d2c-5b3a-9f8e-7d6c5b4a3f2e")
    assert obj.path == str(path.resolve()) and obj.root == str(path.parent.resolve())
    assert obj.commitment.to_json() == commitment["blocks"]
    os.close(open_confined(obj))
    with pytest.raises(MarketError):
        register_object(tmp_path / "home", "x", path, block_size=BLOCK, root=tmp_path / "elsewhere")
    with pytest.raises(MarketError):
        register_object(tmp_path / "home", "x", path, block_size=BLOCK, expected={**commitment, "size_bytes": 1})
    # the registered path is swapped for a symlink out of its folder: refused at serve time
    secret = tmp_path / "secret.bin"
    secret.write_bytes(path.read_bytes())
    path.unlink()
    path.symlink_to(secret)
    with pytest.raises(MarketError) as caught:
        open_confined(obj)
    assert caught.value.code == "delivery_object_changed"
