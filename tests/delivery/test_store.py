"""The node's redemption records: bind once at first byte, resume by the same key, bounded re-serves."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from domain.model.delivery import verify_delivery_token
from domain.model.errors import MarketError
from domain.model.keys import SigningKey
from node.delivery.store import DeliveryStore, max_coverage
from tests.delivery.world import World


def test_max_coverage_counts_overlaps_in_the_range() -> None:
    assert max_coverage([], 0, 10) == 0
    assert max_coverage([(0, 10), (5, 10)], 0, 10) == 2
    assert max_coverage([(0, 10), (5, 10)], 0, 5) == 1
    assert max_coverage([(0, 4), (4, 8)], 0, 8) == 1


def _begin(store: DeliveryStore, claims, jkt: str, start: int, **kw) -> int:
    return store.begin_session(claims, jkt, start=start, first_end=start + 1000, now_ms=1, max_resumes=kw.get("r", 16))


def test_bind_resume_and_limits(tmp_path: Path) -> None:
    world = World(tmp_path)
    claims = verify_delivery_token(world.token(), world.hub_keys, audience=None, now_s=int(time.time()))
    store = DeliveryStore(tmp_path / "d.sqlite")
    assert store.redemption(claims.jti) is None
    assert _begin(store, claims, claims.cnf_jkt, 0) == 1
    store.settle(claims.jti, 1, claims.size_bytes, 2)
    with pytest.raises(MarketError) as caught:
        _begin(store, claims, "another-thumbprint", 0)
    assert caught.value.code == "delivery_token_bound"
    assert _begin(store, claims, claims.cnf_jkt, 65536) == 2  # a resume
    store.settle(claims.jti, 2, claims.size_bytes, 3)
    with pytest.raises(MarketError) as caught:  # bytes from 65536 on were served twice
        _begin(store, claims, claims.cnf_jkt, 65536)
    assert caught.value.code == "delivery_resume_limit"
    with pytest.raises(MarketError) as caught:
        _begin(store, claims, claims.cnf_jkt, claims.size_bytes, r=1)
    assert caught.value.code == "delivery_resume_limit"
    assert store.redemption(claims.jti).sessions == 2
    assert store.intervals(claims.jti) == [(0, claims.size_bytes), (65536, claims.size_bytes)]


def test_a_second_key_cannot_bind_even_concurrently(tmp_path: Path) -> None:
    world = World(tmp_path)
    first = verify_delivery_token(world.token(), world.hub_keys, audience=None, now_s=int(time.time()))
    other = verify_delivery_token(world.token(buyer=SigningKey.generate()), world.hub_keys, audience=None,
                                  now_s=int(time.time()))
    one, two = DeliveryStore(tmp_path / "d.sqlite"), DeliveryStore(tmp_path / "d.sqlite")
    _begin(one, first, first.cnf_jkt, 0)
    with pytest.raises(MarketError) as caught:
        _begin(two, other, other.cnf_jkt, 0)
    assert caught.value.code == "delivery_token_bound"
