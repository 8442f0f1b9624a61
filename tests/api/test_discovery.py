"""``/.well-known/ai-market.json``: what a node, a buyer's agent, a peer hub or an auditor reads
first. Its signing key is the one hub-signed things verify under, and every path it names is a
route of the OpenAPI document."""

from __future__ import annotations

import re

from node.delivery.run import hub_keys_from_discovery


def test_the_discovery_document_names_the_key_and_real_routes(client) -> None:
    doc = client.simulate_get("/.well-known/ai-market.json").json
    assert doc["protocol_versions"] and doc["hub_url"].startswith("http")
    keys = hub_keys_from_discovery(doc)
    assert list(keys) == [doc["signing_key"]["kid"]]
    assert keys[doc["signing_key"]["kid"]].to_multibase() == doc["signing_key"]["public_key"]
    spec = client.simulate_get("/openapi.json").json
    routes = set(spec["paths"]) | {"/openapi.json"}
    named = {name: path for name, path in doc["api"].items() if name != "base_path"}
    assert {"audit_tree_heads", "invocations", "purchases", "traces", "trust"} <= set(named)
    for name, path in named.items():
        template = re.sub(r"\{[a-z_]+\}", "{X}", path)
        assert any(re.sub(r"\{[a-z_]+\}", "{X}", route) == template for route in routes), (name, path)
