"""Plant every PII kind, profile locally, publish with `aim-node publish`, and prove no raw
value reached the hub: not in the HTTP bodies sent, not in any stored event, not in search."""

from __future__ import annotations

import json
from typing import Any

import pytest
from falcon import testing

import node.cli as cli
from node import keystore as ks
from node.profiling import PII_KINDS, profile_path
from tests.catalogue.helpers import catch_up
from tests.helpers import enroll, seller_with_key
from tests.node.test_profiling import planted_frame, write

PII_COLUMNS = ("customer_name", "email", "phone", "card", "iban", "ssn", "client_ip", "notes")


class CapturingHub:
    """Stands in for node.hub_client.HubClient: forwards to the Falcon app, keeps every body."""

    sent: list[bytes] = []  # noqa: RUF012 - shared by the instances the CLI makes
    client: testing.TestClient

    def __init__(self, base_url: str, timeout_s: float = 30.0) -> None:
        pass

    def request(self, method: str, path: str, body: Any = None, *, bearer: str | None = None,
                headers: dict[str, str] | None = None) -> Any:
        raw = b"" if body is None else json.dumps(body).encode()
        CapturingHub.sent.append(raw)
        r = self.client.simulate_request(method, path, body=raw or None, headers={
            "Content-Type": "application/json", **({"Authorization": f"Bearer {bearer}"} if bearer else {})})
        assert r.status_code < 300, r.json
        return r.json


def _raw_values(frame) -> set[str]:
    values = set()
    for column in PII_COLUMNS:
        for value in frame[column].to_list():
            values.add(str(value))
            values.add(str(value).replace(" ", ""))  # card numbers without their grouping
    return {v for v in values if len(v) >= 6}


@pytest.mark.parametrize("store", ["sqlite"])
def test_planted_pii_is_detected_and_never_leaves_the_node(client, runtime, tmp_path, monkeypatch, capsys) -> None:
    frame = planted_frame()
    data = tmp_path / "people.csv"
    write(frame, data, "csv")
    report = profile_path(data)
    assert set(report["pii"]["kinds_detected"]) == set(PII_KINDS)
    report_path = tmp_path / "people.csv.profile.json"
    report_path.write_text(json.dumps(report))

    seller = seller_with_key(client)
    home = tmp_path / "node"
    store = ks.create(home / "keystore.json", "pass", ops_limit=ks.TEST_OPS_LIMIT, mem_limit=ks.TEST_MEM_LIMIT)
    device = enroll(client, seller, key=store.signing_key)
    ks.save(store.with_enrollment(device_id=device["id"], hub_url="http://hub.test"), home / "keystore.json", "pass",
            ops_limit=ks.TEST_OPS_LIMIT, mem_limit=ks.TEST_MEM_LIMIT)
    CapturingHub.sent, CapturingHub.client = [], client
    monkeypatch.setattr(cli, "HubClient", CapturingHub)
    monkeypatch.setenv("AIM_NODE_PASSPHRASE", "pass")
    code = cli.main(["--home", str(home), "publish", str(report_path), "--price", "1999", "--currency", "USD",
                     "--licence", "CC-BY-4.0", "--category", "customers"])
    assert code == 0
    published = json.loads(capsys.readouterr().out)
    catch_up(runtime)

    detail = client.simulate_get(f"/v1/listings/{published['id']}").json
    assert set(detail["pii"]["kinds_detected"]) == set(PII_KINDS)
    assert detail["pii"]["verdict"] == report["pii"]["verdict"]

    sent = b"\n".join(CapturingHub.sent).decode()
    events = "\n".join(n.state.decode() for n in runtime.market.recorder.select_notifications(start=1, limit=10_000))
    search_rows = json.dumps(runtime.views.fetchall("SELECT * FROM search_listings"), default=str)
    fts_rows = json.dumps(runtime.views.fetchall("SELECT * FROM search_fts"))
    planted = _raw_values(frame)
    assert len(planted) > 100
    for value in planted:
        for where, text in (("request", sent), ("events", events), ("search", search_rows), ("fts", fts_rows)):
            assert value not in text, f"a planted raw value reached the hub ({where})"
