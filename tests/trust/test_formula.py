"""The trust formula alone (domain.model.trust): pure, no store, no clock."""

from __future__ import annotations

from domain.model import trust
from domain.model.trust import DAY_MS, Fact, Facts, PurchaseFact, SessionFact, score

T0 = 1_800_000_000_000  # an arbitrary epoch ms


def delivered(pid: str, buyer: str, at_ms: int, price_minor: int = 1999) -> PurchaseFact:
    return PurchaseFact(pid, buyer, price_minor, start_by_ms=at_ms - 60_000, expires_at_ms=at_ms + 60_000,
                        redeemed=True, delivered_at_ms=at_ms, outcome_ms=at_ms, refs=(f"1:Purchase.Delivered:{pid}:4",))


def facts(purchases=(), extra=(), identities=None, enrolled_ms=None, sessions=()) -> Facts:
    enrolled = T0 - 40 * DAY_MS if enrolled_ms is None else enrolled_ms
    return Facts("seller", {"dev": enrolled}, {"dev": enrolled}, tuple(extra), tuple(purchases), identities or {},
                 tuple(sessions))


def session(iid: str, buyer: str, at_ms: int, outcome: str = "captured", countersigned: bool = True,
            budget_minor: int = 1000) -> SessionFact:
    return SessionFact(iid, buyer, budget_minor, outcome, countersigned, at_ms, (f"2:Invocation:{iid}:3",))


def test_a_newcomer_gets_the_prior() -> None:
    result = score(facts(enrolled_ms=T0), T0)
    assert result["score"] == trust.PRIOR == 0.5
    assert all(c["score"] == 0.5 for c in result["components"].values())


def test_an_event_30_days_and_1_second_old_no_longer_counts_one_29_days_old_does() -> None:
    base = score(facts(), T0)["components"]["delivery"]["score"]
    old = score(facts([delivered("p", "b", T0 - 30 * DAY_MS - 1000)]), T0)
    recent = score(facts([delivered("p", "b", T0 - 29 * DAY_MS)]), T0)
    assert old["components"]["delivery"]["score"] == base == 0.5
    assert old["components"]["delivery"]["purchases"] == []
    assert recent["components"]["delivery"]["score"] > 0.5
    assert "1:Purchase.Delivered:p:4" in recent["sources"]
    signal = Fact("dev", "signal", T0 - 30 * DAY_MS - 1000, "9:Signal:s:1", code="receipt_invalid")
    assert score(facts(extra=[signal]), T0)["components"]["behaviour"]["negative"] == 0
    signal = Fact("dev", "signal", T0 - 29 * DAY_MS, "9:Signal:s:1", code="receipt_invalid")
    assert score(facts(extra=[signal]), T0)["components"]["behaviour"]["negative"] == 1


def test_a_seller_buying_from_itself_gains_nothing() -> None:
    others = [delivered(f"o{i}", f"buyer{i}", T0 - i * DAY_MS) for i in range(3)]
    base = score(facts(others), T0)
    own = [delivered(f"s{i}", "seller", T0 - i * 3600_000) for i in range(20)]
    wallet = [delivered(f"w{i}", "sock", T0 - i * 3600_000) for i in range(20)]
    ids = {"seller": frozenset({"wallet:0xabc"}), "sock": frozenset({"wallet:0xabc"})}
    result = score(facts([*others, *own, *wallet], identities=ids), T0)
    assert result["score"] == base["score"]
    reasons = {p["purchase_id"]: p["reason"] for p in result["components"]["delivery"]["purchases"]}
    assert reasons["s0"] == "same_account" and reasons["w0"] == "same_wallet" and reasons["o0"] == ""
    payout = {"seller": frozenset({"payout:acct_1"}), "sock": frozenset({"payout:acct_1"})}
    assert score(facts([*others, *wallet], identities=payout), T0)["score"] == base["score"]


def test_many_purchases_by_one_buyer_count_as_one_per_7_days() -> None:
    one = score(facts([delivered("p0", "b", T0)]), T0)
    many = score(facts([delivered(f"p{i}", "b", T0 - i * 3600_000) for i in range(50)]), T0)
    assert many["components"]["delivery"]["positive"] == one["components"]["delivery"]["positive"]
    distinct = score(facts([delivered(f"p{i}", f"b{i}", T0 - i * 3600_000) for i in range(50)]), T0)
    assert distinct["score"] > many["score"]
    # Two weeks apart: two periods, still one buyer's capped share.
    two = score(facts([delivered("a", "b", T0), delivered("c", "b", T0 - 8 * DAY_MS)]), T0)
    assert two["components"]["delivery"]["positive"] == one["components"]["delivery"]["positive"]


def test_one_buyer_share_is_capped() -> None:
    crowd = [delivered(f"c{i}", f"b{i}", T0 - i * DAY_MS, price_minor=100) for i in range(6)]
    whale = [delivered(f"w{i}", "whale", T0 - i * 7 * DAY_MS - 1, price_minor=10**9) for i in range(4)]
    result = score(facts([*crowd, *whale]), T0)["components"]["delivery"]
    crowd_weight = 6 * trust.value_weight(100)
    assert abs(result["positive"] - crowd_weight * (1 + trust.BUYER_SHARE_MAX / (1 - trust.BUYER_SHARE_MAX))) < 1e-5


def test_failures_cost_and_nothing_reaches_0_or_1() -> None:
    bad = [PurchaseFact(f"x{i}", f"b{i}", 1999, T0 - DAY_MS, T0 - DAY_MS, expired_reason="not_started",
                        outcome_ms=T0 - 1000) for i in range(30)]
    good = [delivered(f"g{i}", f"b{i}", T0 - 1000) for i in range(30)]
    assert 0 < score(facts(bad), T0)["components"]["delivery"]["score"] < 0.1
    assert 0.9 < score(facts(good), T0)["components"]["delivery"]["score"] < 1


def test_uptime_keys_and_signals() -> None:
    beats = [Fact("dev", "heartbeat", T0 - h * 3600_000, f"{h}:Trace:t:1") for h in range(1, 30 * 24)]
    up = score(facts(extra=beats), T0)["components"]["uptime"]
    assert up["hours_observed"] == 30 * 24 and up["score"] > 0.99
    assert score(facts(), T0)["components"]["uptime"]["score"] < 0.01  # enrolled, never heard from
    overdue = score(Facts("seller", {"dev": T0 - 100 * DAY_MS}, {"dev": T0 - 91 * DAY_MS}), T0)["components"]["keys"]
    assert overdue["keys_overdue"] == ["dev"] and overdue["score"] < 0.5
    retired = Fact("dev", "signal", T0 - DAY_MS, "5:Signal:k:1", code="key_expired")
    assert score(facts(extra=[retired]), T0)["components"]["keys"]["retired_key_uses"] == 1
    replay = Fact("dev", "signal", T0 - DAY_MS, "6:Signal:r:1", code="token_replayed", signal_kind="redemption")
    reported = Fact("dev", "signal", T0 - DAY_MS, "7:Signal:n:1", code="token_replayed", signal_kind="refusal")
    behaviour = score(facts(extra=[replay, reported]), T0)["components"]["behaviour"]
    assert behaviour["negative"] == trust.REPLAY_SIGNAL_WEIGHT
    assert score(facts(extra=[replay]), T0)["components"]["compute"]["weight"] == trust.WEIGHTS["compute"] > 0
    rejected = Fact("dev", "signal", T0 - DAY_MS, "8:Signal:j:1", code="invoke_input_rejected",
                    signal_kind="invoke_rejection")  # the node rejected a buyer's input: about the buyer
    assert score(facts(extra=[rejected]), T0)["components"]["behaviour"]["negative"] == 0


def test_compute_sessions_count_like_deliveries() -> None:
    base = score(facts(), T0)["components"]["compute"]
    assert (base["score"], base["weight"]) == (0.5, trust.WEIGHTS["compute"])
    good = [session(f"g{i}", f"buyer{i}", T0 - i * DAY_MS) for i in range(4)]
    up = score(facts(sessions=good), T0)
    assert up["components"]["compute"]["score"] > 0.8 and up["score"] > score(facts(), T0)["score"]
    assert "2:Invocation:g0:3" in up["sources"]
    bad = [session("r", "buyer9", T0 - DAY_MS, "refused"), session("l", "buyer8", T0 - DAY_MS, "lapsed")]
    down = score(facts(sessions=bad), T0)["components"]["compute"]
    assert down["score"] < 0.5 and down["negative"] == 2 * trust.BUYER_WEIGHT_FLOOR  # two buyers, capped alike
    # neither way: in flight, captured with no countersignature, older than 30 days, self-dealt
    neutral = [session("o", "buyer1", T0 - DAY_MS, ""), session("n", "buyer2", T0 - DAY_MS, countersigned=False),
               session("x", "buyer3", T0 - 31 * DAY_MS, "lapsed"), session("s", "seller", T0 - DAY_MS)]
    result = score(facts(sessions=neutral), T0)["components"]["compute"]
    assert result["score"] == 0.5
    assert {s["invocation_id"]: s["reason"] for s in result["sessions"]} == {"n": "not_countersigned",
                                                                             "s": "same_account"}


def test_one_buyers_many_sessions_count_once_per_7_days() -> None:
    many = [session(f"m{i}", "buyer", T0 - i * 3600_000) for i in range(50)]
    one = [session("m0", "buyer", T0)]
    assert score(facts(sessions=many), T0)["components"]["compute"]["positive"] == \
        score(facts(sessions=one), T0)["components"]["compute"]["positive"]


def test_the_weights_sum_to_one() -> None:
    assert round(sum(trust.WEIGHTS.values()), 9) == 1.0
