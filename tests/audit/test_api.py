"""The audit trail over HTTP: an account sees its own entries, each with an inclusion proof that
verifies with the keys ``GET /v1/audit/tree-heads`` publishes; an auditor sees every entry;
consistency proofs between any two heads; problems with stable codes."""

from __future__ import annotations

from domain.app.audit_trail import AuditTrail
from domain.model.audit_entry import check_consistency_bundle, check_inclusion_bundle
from domain.model.base import Meta
from domain.model.keys import VerifyKey
from projections.audit_tree import TreeStore
from tests.helpers import auth, login, register


def sign(runtime) -> None:
    for runner in runtime.runners():
        runner.catch_up()
    AuditTrail(runtime.market, TreeStore(runtime.views)).sign_head(force=True)


def keys_of(client) -> list[VerifyKey]:
    r = client.simulate_get("/v1/audit/tree-heads")
    assert r.status_code == 200, r.json
    return [VerifyKey.from_multibase(k["public_key"]) for k in r.json["keys"].values()]


def test_own_entries_with_proofs_and_the_auditor_sees_all(client, runtime) -> None:
    alice, bob = register(client), register(client)
    alice_token, bob_token = login(client, alice["email"]), login(client, bob["email"])
    client.simulate_post("/v1/api-keys", json={"name": "node"}, headers=auth(alice_token))
    sign(runtime)
    keys = keys_of(client)
    page = client.simulate_get("/v1/audit", headers=auth(alice_token))
    assert page.status_code == 200, page.json
    items = page.json["items"]
    assert items and page.json["tree_head"]["tree_size"] >= len(items)
    for item in items:
        entry, _head = check_inclusion_bundle(item, keys)
        assert alice["id"] in entry["state"] or entry["originator_id"] == alice["id"]
    assert not any(bob["id"] in i["entry"]["state"] for i in items)
    bob_items = client.simulate_get("/v1/audit", headers=auth(bob_token)).json["items"]
    assert {i["position"] for i in bob_items}.isdisjoint({i["position"] for i in items})

    runtime.market.identity.grant_role(Meta("operator:cli", "cli").as_dict(), bob["email"], "auditor")
    auditor = login(client, bob["email"])
    everything = client.simulate_get("/v1/audit", params={"limit": "100"}, headers=auth(auditor)).json
    assert len(everything["items"]) > len(items) + len(bob_items) - 1
    first = client.simulate_get("/v1/audit", params={"limit": "2"}, headers=auth(auditor)).json
    rest = client.simulate_get("/v1/audit", params={"after": str(first["next_after"])}, headers=auth(auditor)).json
    assert [i["position"] for i in first["items"] + rest["items"]] == [i["position"] for i in everything["items"]]


def test_tree_heads_and_consistency_are_public(client, runtime) -> None:
    register(client)
    sign(runtime)
    register(client)
    sign(runtime)
    heads = client.simulate_get("/v1/audit/tree-heads").json
    assert len(heads["items"]) == 2 and heads["origin"] == "hub.test/audit"
    assert set(heads["keys"]) == {"signing-1"} and heads["keys"]["signing-1"]["verifier_key"].startswith(
        "hub.test/audit+")
    first, second = (h["tree_size"] for h in heads["items"])
    r = client.simulate_get("/v1/audit/consistency", params={"first": str(first), "second": str(second)})
    assert r.status_code == 200, r.json
    assert check_consistency_bundle(r.json, keys_of(client))[1].tree_size == second
    later = client.simulate_get("/v1/audit/tree-heads", params={"after": str(first)}).json
    assert [h["tree_size"] for h in later["items"]] == [second]


def test_problems_have_codes(client, runtime) -> None:
    assert client.simulate_get("/v1/audit").status_code == 401
    r = client.simulate_get("/v1/audit/consistency", params={"first": "1"})
    assert r.status_code == 422 and r.json["code"] == "invalid_input" and r.json["param"] == "second"
    r = client.simulate_get("/v1/audit/consistency", params={"first": "1", "second": "2"})
    assert r.status_code == 404 and r.json["code"] == "tree_head_not_found"
    token = login(client, register(client)["email"])
    r = client.simulate_get("/v1/audit", params={"limit": "1000"}, headers=auth(token))
    assert r.status_code == 422 and r.json["param"] == "limit"
    page = client.simulate_get("/v1/audit", headers=auth(token)).json  # no head yet: entries pending
    assert page["tree_head"] is None and all(i["proof"] is None for i in page["items"])
