"""``audit verify`` checks every signature the log carries with the key valid at the event's time
(against real PostgreSQL): an edited listing signature, token or receipt byte is named as a
signature failure at its position, also on the process pool and in an exported file."""

from __future__ import annotations

import json
import re

import pytest

from domain.app.audit_trail import AuditTrail, HeadPolicy
from ops.audit import verify_export, verify_log
from ops.audit_trail_cli import cmd_export
from ops.bootstrap import build_runtime, make_runner
from ops.cli import main
from ops.signature_audit import CHECKS
from ops.signature_pool import check_all
from projections.audit_tree import AuditTree, TreeStore
from tests.audit.signed_world import SignedWorld, build_signed
from tests.audit.tamper import Tamper


@pytest.fixture
def pg_runtime(make_settings):
    rt = build_runtime(make_settings("postgres"))
    yield rt
    rt.close()


@pytest.fixture
def signed(pg_runtime) -> SignedWorld:
    return build_signed(pg_runtime)


def signature_problems(report: dict, position: int, what: str) -> list[str]:
    return [p for p in report["signatures"]["problems"] if p.startswith(f"position {position}: ") and what in p]


def test_a_clean_log_verifies_every_kind_of_signature(signed: SignedWorld) -> None:
    report = verify_log(signed.runtime.market)
    assert report["signatures"]["ok"], report["signatures"]
    assert report["ok"], report["problems"]
    checked = report["signatures"]["checked"]
    for what in ("key rotation", "listing signature", "delivery token", "trace envelope", "receipt in trace",
                 "confirmation in trace"):
        assert checked.get(what, 0) >= 1, checked
    assert checked["listing signature"] == 2 and checked["trace envelope"] == 3
    assert report["signatures"]["verified_jobs"] == sum(checked.values())


def test_the_process_pool_gives_the_same_answer(signed: SignedWorld) -> None:
    position = signed.positions["Purchase.Purchased"]
    t = Tamper(signed.runtime)
    signature = signed.sale.token.split(".")[2]
    t.replace_in_state(position, signature.encode(), _flip(signature, 10).encode())
    inline = verify_log(signed.runtime.market, workers=0)
    pooled = verify_log(signed.runtime.market, workers=2, pool_after_jobs=0)
    assert pooled["signatures"]["pooled"] and not inline["signatures"]["pooled"]
    assert pooled["signatures"]["problems"] == inline["signatures"]["problems"] != []
    assert pooled["signatures"]["verified_jobs"] == inline["signatures"]["verified_jobs"]


def _flip(text: str, index: int) -> str:
    alphabet = "ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz23456789"  # in base58 and base64url alike
    replacement = alphabet[(alphabet.index(text[index]) + 1) % len(alphabet)] if text[index] in alphabet else "A"
    return text[:index] + replacement + text[index + 1:]


def test_an_edited_token_signature_byte_is_a_signature_failure(signed: SignedWorld) -> None:
    position = signed.positions["Purchase.Purchased"]
    signature = signed.sale.token.split(".")[2]
    Tamper(signed.runtime).replace_in_state(position, signature.encode(), _flip(signature, 20).encode())
    report = verify_log(signed.runtime.market)
    assert not report["ok"]
    assert signature_problems(report, position, "Purchase.Purchased: delivery token: "), report["signatures"]


def test_an_edited_listing_signature_byte_is_a_signature_failure(signed: SignedWorld) -> None:
    position = signed.positions["Listing.Published"]
    state = Tamper(signed.runtime).row(position)[3]
    value = re.search(rb'"proof_value":"(z[^"]+)"', state).group(1).decode()
    Tamper(signed.runtime).replace_in_state(position, value.encode(), _flip(value, 12).encode())
    report = verify_log(signed.runtime.market)
    assert signature_problems(report, position, "Listing.Published: listing signature: "), report["signatures"]


def test_an_edited_title_fails_the_listing_signature(signed: SignedWorld) -> None:
    position = signed.positions["Listing.Updated"]
    Tamper(signed.runtime).replace_in_state(position, b"(v2)", b"(v3)")
    report = verify_log(signed.runtime.market)
    assert signature_problems(report, position, "Listing.Updated: listing signature: "), report["signatures"]


def test_an_edited_receipt_byte_is_a_signature_failure(signed: SignedWorld) -> None:
    position = signed.positions["TraceRecorded:receipt"]
    state = Tamper(signed.runtime).row(position)[3]
    sent = re.search(rb'"bytes_sent":(\d+)', state).group(0)
    Tamper(signed.runtime).replace_in_state(position, sent, sent[:-1] + b"9" if sent[-1:] != b"9" else sent[:-1] + b"8")
    report = verify_log(signed.runtime.market)
    problems = report["signatures"]["problems"]
    assert signature_problems(report, position, "Trace.TraceRecorded: receipt in trace: "), problems
    assert signature_problems(report, position, "Trace.TraceRecorded: trace envelope: "), problems


def test_a_proof_context_other_than_the_documents_is_named(signed: SignedWorld) -> None:
    position = signed.positions["TraceRecorded:receipt"]
    state = Tamper(signed.runtime).row(position)[3]
    proof_context = re.search(rb'"proofPurpose":"assertionMethod","nonce":"[^"]+","@context":\[[^\]]+\]', state)
    assert proof_context, state[:300]  # the receipt's proof (the envelope's comes after it)
    edited = proof_context.group(0)[:-1] + b',"https://example.org/other"]'
    Tamper(signed.runtime).replace_in_state(position, proof_context.group(0), edited)
    report = verify_log(signed.runtime.market)
    problems = report["signatures"]["problems"]
    assert signature_problems(report, position, "receipt in trace: document @context differs"), problems
    assert signature_problems(report, position, "trace envelope: signature does not verify"), problems


def test_a_recorded_receipt_no_trace_carried_is_named(signed: SignedWorld) -> None:
    position = signed.positions["Purchase.ReceiptRecorded"]
    Tamper(signed.runtime).replace_in_state(position, b'"digest":"sha256-', b'"digest":"sha256-X')
    report = verify_log(signed.runtime.market)
    assert signature_problems(report, position, "recorded receipt: no recorded, signed trace carries it")


def test_a_rotation_not_signed_by_the_previous_key_is_named(signed: SignedWorld) -> None:
    position = signed.positions["Device.KeyRotated"]
    state = Tamper(signed.runtime).row(position)[3]
    value = re.search(rb'"signature":"([^"]+)"', state).group(1).decode()
    Tamper(signed.runtime).replace_in_state(position, value.encode(), _flip(value, 5).encode())
    report = verify_log(signed.runtime.market)
    assert signature_problems(report, position, "Device.KeyRotated: key rotation: "), report["signatures"]


def test_the_check_table_has_one_entry_per_signed_topic() -> None:
    assert all(topic.count(":") == 1 and callable(check) for topic, check in CHECKS.items())
    assert {"domain.model.traces:Trace.TraceRecorded", "domain.model.purchase:Purchase.Purchased",
            "domain.model.listing:Listing.Published", "domain.model.channel:Channel.VoucherRecorded"} <= set(CHECKS)
    assert check_all([(1, "T", "raw", "ed25519", (b"m", bytes(64)), bytes(32))], workers=0)[0][:3] == (1, "T", "raw")


def _export(runtime, tmp_path, monkeypatch=None) -> str:
    trail = AuditTrail(runtime.market, TreeStore(runtime.views), HeadPolicy(every_events=1000, every_s=3600))
    runner = make_runner(runtime, AuditTree())
    runner.setup()
    runner.catch_up()
    trail.sign_head(force=True)
    out = tmp_path / "export.jsonl"

    class Args:
        pass

    args = Args()
    args.out = str(out)
    runtime_close = runtime.close
    runtime.close = lambda: None  # the fixture closes it
    try:
        cmd_export(args, lambda: runtime)
    finally:
        runtime.close = runtime_close
    return str(out)


def test_an_export_verifies_offline_and_an_edited_line_is_named(signed: SignedWorld, tmp_path, capsys) -> None:
    path = _export(signed.runtime, tmp_path)
    key = AuditTrail(signed.runtime.market, TreeStore(signed.runtime.views),
                     HeadPolicy(every_events=1000, every_s=3600)).signing_keys()["signing-1"]
    report = verify_export(path, [key])
    assert report["ok"], report["problems"]
    assert report["signatures"]["checked"]["delivery token"] == 1 and report["keys"] == "given"
    assert main(["audit", "verify", "--file", path, "--key", key.to_multibase()]) == 0
    capsys.readouterr()

    position = signed.positions["Listing.Updated"]
    lines = open(path, encoding="utf-8").read().splitlines()
    edited = [line.replace("(v2)", "(v3)") if f'"position":{position},' in line else line for line in lines]
    assert edited != lines
    open(path, "w", encoding="utf-8").write("\n".join(edited) + "\n")
    assert main(["audit", "verify", "--file", path, "--key", key.to_multibase()]) == 1
    report = json.loads(capsys.readouterr().out)
    assert any(p.startswith(f"position {position}: Listing.Updated: listing signature") for p in report["problems"])
    assert any("does not match the entries before it" in p for p in report["problems"])


def test_listings_published_through_the_api_are_re_verified_from_the_log(pg_runtime) -> None:
    """The catalogue records the proof value beside the digest, nonce, key and time, so the
    listing the node signed is rebuilt from the event and its signature checked, not only its key."""
    from falcon import testing

    from api.app import create_app
    from tests.catalogue.helpers import delist, listing, node, publish, update

    client = testing.TestClient(create_app(runtime=pg_runtime))
    n = node(client)
    item = listing("Signed in the log", "rows of weather")
    r = publish(client, n, item)
    assert r.status_code == 201, r.json
    assert update(client, n, r.json["id"], {**item, "title": "Signed in the log (v2)"}).status_code == 200
    assert delist(client, n, r.json["id"]).status_code in (200, 204)
    report = verify_log(pg_runtime.market)
    assert report["signatures"]["ok"], report["signatures"]
    assert report["signatures"]["checked"].get("listing signature") == 3, report["signatures"]
    assert "listing signature" not in report["signatures"]["not_checked"], report["signatures"]
