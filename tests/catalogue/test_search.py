"""Hybrid search on both stores: paraphrase (semantic path), filters, pages, categories."""

from __future__ import annotations

import re

from tests.catalogue.helpers import catch_up, delist, listing, node, publish, update

CORPUS = [
    ("Hospital admissions by ward", "Daily counts of patients admitted to hospital wards, by diagnosis.",
     {"category": "health"}),
    ("Used car prices in Germany", "Listings of second-hand vehicles with mileage and asking price.",
     {"category": "automotive", "price_minor": 500}),
    ("Weather station temperature readings", "Hourly air temperature and humidity from rural stations.",
     {"category": "climate", "price_minor": 0}),
    ("Football match results", "Scores and line-ups of professional soccer league games.",
     {"category": "sports", "currency": "EUR"}),
    ("Retail store sales receipts", "Basket contents and totals from supermarket tills.",
     {"category": "retail", "pii": {"verdict": "high", "kinds_detected": ["email"], "by_kind": {}}}),
    ("Flight delays at European airports", "Departure and arrival delays per airline and route.",
     {"category": "transport", "kind": "dataset", "quality": {"score": 30, "components": {}}}),
    ("Sentiment classifier for product reviews", "A model that labels review text positive or negative.",
     {"category": "nlp", "kind": "model", "licence": "Apache-2.0"}),
]
PARAPHRASE = "medical centre inpatient intake statistics"


def _words(text: str) -> set[str]:
    return {w[:5] for w in re.findall(r"[a-z]+", text.lower())}


def _seed(client, runtime) -> tuple[dict, dict[str, str]]:
    n = node(client)
    ids = {}
    for title, description, extra in CORPUS:
        r = publish(client, n, listing(title, description, **extra))
        assert r.status_code == 201, r.json
        ids[title] = r.json["id"]
    catch_up(runtime)
    return n, ids


def _titles(result) -> list[str]:
    assert result.status_code == 200, result.json
    return [item["title"] for item in result.json["items"]]


def test_paraphrase_finds_listing_in_top_3(client, runtime) -> None:
    _, _ = _seed(client, runtime)
    target = CORPUS[0]
    assert not _words(PARAPHRASE) & _words(" ".join([target[0], target[1], "tabular admission_date"]))
    got = _titles(client.simulate_get("/v1/search", params={"q": PARAPHRASE}))
    assert target[0] in got[:3], got
    by_post = _titles(client.simulate_post("/v1/search", json={"q": PARAPHRASE, "limit": 3}))
    assert target[0] in by_post


def test_lexical_match_ranks_first_and_filters_apply(client, runtime) -> None:
    _seed(client, runtime)
    assert _titles(client.simulate_get("/v1/search", params={"q": "football"}))[0] == "Football match results"
    assert _titles(client.simulate_get("/v1/search", params={"kind": "model"})) == [
        "Sentiment classifier for product reviews"]
    cheap = _titles(client.simulate_get("/v1/search", params={"price_max": "500"}))
    assert set(cheap) == {"Used car prices in Germany", "Weather station temperature readings"}
    assert _titles(client.simulate_post("/v1/search", json={"currency": "EUR"})) == ["Football match results"]
    assert "Retail store sales receipts" not in _titles(client.simulate_post("/v1/search", json={"pii_free": True}))
    assert "Flight delays at European airports" not in _titles(
        client.simulate_post("/v1/search", json={"q": "flight delays", "quality_min": 50}))
    assert _titles(client.simulate_post("/v1/search", json={"licence": "Apache-2.0", "q": "reviews"})) == [
        "Sentiment classifier for product reviews"]
    assert _titles(client.simulate_post("/v1/search", json={"trust_min": 0.9})) == []
    bad = client.simulate_get("/v1/search", params={"kind": "spaceship"})
    assert bad.status_code == 422 and bad.headers["content-type"].startswith("application/problem+json")


def test_cursor_pages_are_stable_and_complete(client, runtime) -> None:
    _seed(client, runtime)
    seen, cursor = [], None
    for _ in range(10):
        body = {"q": "data", "limit": 2, **({"cursor": cursor} if cursor else {})}
        r = client.simulate_post("/v1/search", json=body)
        assert r.status_code == 200, r.json
        seen += [i["id"] for i in r.json["items"]]
        cursor = r.json["next_cursor"]
        if cursor is None:
            break
    everything = [i["id"] for i in client.simulate_post("/v1/search", json={"q": "data", "limit": 100}).json["items"]]
    assert seen == everything and len(set(seen)) == len(seen)
    wrong = client.simulate_post("/v1/search", json={"q": "other", "cursor": cursor or "x"})
    assert wrong.status_code == 422 and wrong.json["param"] == "cursor"


def test_categories_detail_update_and_delist(client, runtime) -> None:
    n, ids = _seed(client, runtime)
    cats = {c["category"]: c for c in client.simulate_get("/v1/categories").json["items"]}
    assert cats["health"]["count"] == 1 and cats["nlp"]["by_kind"] == {"model": 1}

    hospital = ids["Hospital admissions by ward"]
    detail = client.simulate_get(f"/v1/listings/{hospital}").json
    assert detail["price"] == {"price_minor": 1999, "currency": "USD"}
    assert detail["schema_preview"][0]["name"] == "admission_date" and detail["quality"]["score"] == 80
    assert detail["seller"]["device_id"] == n["id"] and detail["seller"]["trust_score"] == 0.5

    r = update(client, n, hospital, listing("Glacier ice thickness survey", "Ice core depth measurements."))
    assert r.status_code == 200, r.json
    catch_up(runtime)
    assert _titles(client.simulate_get("/v1/search", params={"q": "glacier ice"}))[0] == "Glacier ice thickness survey"
    assert delist(client, n, hospital).status_code == 200
    catch_up(runtime)
    assert hospital not in [i["id"] for i in client.simulate_get("/v1/search", params={"limit": 100}).json["items"]]
    assert "health" not in {c["category"] for c in client.simulate_get("/v1/categories").json["items"]}
    assert client.simulate_get("/v1/listings/00000000-0000-0000-0000-000000000000").status_code == 404
