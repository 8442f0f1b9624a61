"""The pure compute model: the handshake, manifests, metering, the session's messages."""

from __future__ import annotations

import copy
import json
import secrets

import pytest

from domain.model import compute as cm
from domain.model.errors import (
    ComputeAssetInvalid,
    InvokeClockSkew,
    InvokeCnfMismatch,
    InvokeHandshakeFailed,
    InvokeMessageInvalid,
    InvokePossessionFailed,
    InvokeTokenExpired,
)
from domain.model.handshake import ServerHandshake
from domain.model.invoke_handshake import InvokeClientHandshake, InvokeServerHandshake
from domain.model.keys import KxPrivateKey, SigningKey
from tests.compute.parties import DEVICE_ID, NOW_S, Parties
from tests.compute.world import EXAMPLES

MS = NOW_S * 1000


def _pair(parties: Parties, *, buyer: SigningKey | None = None, last_seq: int = 0):
    claims = parties.verified()
    client = InvokeClientHandshake(claims=claims, buyer_key=buyer or parties.buyer, eph=KxPrivateKey.generate(),
                                   nonce=secrets.token_bytes(32), now_ms=MS, last_seq=last_seq)
    server = InvokeServerHandshake(device_keys=[parties.device], device_id=DEVICE_ID, hub_keys_by_kid=parties.hub_keys,
                                   eph=KxPrivateKey.generate(), nonce=secrets.token_bytes(32))
    return client, server


def test_the_handshake_agrees_on_keys_and_the_connection_id() -> None:
    parties = Parties()
    client, server = _pair(parties, last_seq=41)
    server.receive_hello(client.hello, MS)
    finish, mine = client.receive_server_hello(server.server_hello(MS + 5), MS + 6)
    theirs = server.receive_finish(finish)
    assert (mine.send_key, mine.recv_key) == (theirs.recv_key, theirs.send_key)
    assert mine.connection_id == theirs.connection_id and theirs.last_seq == 41
    assert theirs.buyer_key == parties.buyer.verify_key


def test_the_handshake_refuses_what_it_must() -> None:
    parties = Parties()
    client, server = _pair(parties)
    with pytest.raises(InvokeClockSkew):
        server.receive_hello(client.hello, MS + 31_000)
    with pytest.raises(InvokeTokenExpired):
        _pair(parties)[1].receive_hello(client.hello, MS + 3_700_000)
    client, server = _pair(parties)
    server.receive_hello(client.hello, MS)
    hello = bytearray(server.server_hello(MS))
    hello[-1] ^= 1  # the node's MAC
    with pytest.raises(InvokePossessionFailed):
        client.receive_server_hello(bytes(hello), MS)
    client, server = _pair(parties)
    server.receive_hello(client.hello, MS)
    finish, _ = client.receive_server_hello(server.server_hello(MS), MS)
    with pytest.raises(InvokePossessionFailed):
        server.receive_finish(finish[:-1] + bytes([finish[-1] ^ 1]))
    with pytest.raises(InvokeCnfMismatch):
        _pair(parties, buyer=SigningKey.generate())
    with pytest.raises(InvokeHandshakeFailed):
        _pair(parties)[1].receive_hello(client.hello + b"x", MS)


def test_a_delivery_server_refuses_an_invoke_hello_and_the_labels_differ() -> None:
    parties = Parties()
    client, _ = _pair(parties)
    delivery = ServerHandshake(device_keys=[parties.device], device_id=DEVICE_ID, hub_keys_by_kid=parties.hub_keys,
                               eph=KxPrivateKey.generate(), nonce=secrets.token_bytes(32))
    with pytest.raises(Exception) as caught:
        delivery.receive_hello(client.hello, MS)
    assert caught.value.code == "delivery_wrong_typ"


def _example(name: str) -> dict:
    return json.loads((EXAMPLES / f"{name}.json").read_text())


def test_the_example_manifests_parse() -> None:
    embed = cm.parse_manifest(_example("embed"))
    assert (embed.metering.unit, embed.metering.pointer, embed.metering.max_units_per_call) == ("tokens", "/tokens",
                                                                                              16384)
    assert cm.parse_manifest(_example("csvstats")).metering.unit == "rows"
    assert cm.parse_manifest(_example("echo")).metering.max_units_per_call == 1


@pytest.mark.parametrize(("change", "param"), [
    ({"metering_unit": "requests"}, "metering_unit"), ({"entry_point": "no colon"}, "entry_point"),
    ({"surprise": 1}, "surprise"), ({"limits": {"timeout_ms": 0}}, "timeout_ms"),
    ({"metering": {"max_units_per_call": 2}}, "metering.max_units_per_call"),
    ({"safety": {"deny_patterns": ["("]}}, "safety.deny_patterns"), ({"input_schema": []}, "input_schema"),
])
def test_a_bad_manifest_names_its_field(change: dict, param: str) -> None:
    data = {**_example("echo"), **change}
    with pytest.raises(ComputeAssetInvalid) as caught:
        cm.parse_manifest(data)
    assert caught.value.param == param


def test_rows_and_tokens_need_a_pointer_and_a_most() -> None:
    data = copy.deepcopy(_example("csvstats"))
    del data["metering"]["pointer"]
    with pytest.raises(ComputeAssetInvalid):
        cm.parse_manifest(data)


def test_metering_counts_what_the_node_can_see() -> None:
    m = cm.Metering
    assert cm.measure_units(m("calls", None, "output", 1), input_bytes=9, output_bytes=9, elapsed_ms=5, counted=None) == 1
    assert cm.measure_units(m("seconds", None, "output", 30), input_bytes=0, output_bytes=0, elapsed_ms=1, counted=None) == 1
    assert cm.measure_units(m("seconds", None, "output", 30), input_bytes=0, output_bytes=0, elapsed_ms=2001,
                            counted=None) == 3
    assert cm.measure_units(m("bytes", None, "both", 100), input_bytes=30, output_bytes=40, elapsed_ms=0,
                            counted=None) == 70
    assert cm.measure_units(m("rows", "/rows", "output", 10), input_bytes=0, output_bytes=0, elapsed_ms=0,
                            counted=25) == 10  # never more than the most per call
    assert cm.count_at({"rows": [1, 2, 3]}, "/rows") == 3
    assert cm.count_at({"a": {"b/c": 4}}, "/a/b~1c") == 4
    with pytest.raises(ValueError):
        cm.count_at({"rows": "many"}, "/rows")
    with pytest.raises(ValueError):
        cm.count_at({"rows": [1]}, "/missing")


def test_messages_round_trip_and_chunk() -> None:
    data = bytes(range(256)) * 9000  # over two records
    chunks = list(cm.chunk_messages(cm.OUTPUT, 7, data))
    assert len(chunks) == 3 and all(len(c) <= cm.MAX_BODY + 6 for c in chunks)
    parsed = [cm.unpack_message(c, allowed=cm.FROM_NODE) for c in chunks]
    assert [p.last for p in parsed] == [False, False, True] and b"".join(p.body for p in parsed) == data
    assert cm.unpack_message(cm.pack_message(cm.CANCEL, 3), allowed=cm.FROM_BUYER).name == "cancel"
    with pytest.raises(InvokeMessageInvalid):
        cm.unpack_message(cm.pack_message(cm.RECEIPT, 1, b"{}"), allowed=cm.FROM_BUYER)
    with pytest.raises(InvokeMessageInvalid):
        cm.unpack_message(b"\x01\0\0\0\1\x04", allowed=cm.FROM_BUYER)  # an unknown flag
