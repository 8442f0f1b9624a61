"""Local profiling: PII detection, no raw values in reports, schema and quality."""

from __future__ import annotations

import json
import random

import polars as pl
import pytest
from stdnum import iban as stdnum_iban
from stdnum import luhn
from stdnum.us import ssn as stdnum_ssn

from node.profiling import PII_KINDS, pii_rules, profile_path, render_text

ROWS = 60
FIRST = ["Alice", "John", "Maria", "David", "Emma", "Liam", "Sophia", "Noah", "Olivia", "Lucas"]
LAST = ["Johnson", "Carter", "Garcia", "Okafor", "Brown", "Wilson", "Tanaka", "Novak", "Rossi", "Dubois"]
PHONES = ["+1 415-555-{:04d}", "+44 20 7946 {:04d}", "(212) 555-{:04d}", "+49 30 9018{:04d}"]


def card_number(rng: random.Random) -> str:
    """A Luhn-valid 16-digit Visa-style number, grouped in fours."""
    body = "4" + "".join(rng.choice("0123456789") for _ in range(14))
    number = body + luhn.calc_check_digit(body)
    return " ".join(number[i : i + 4] for i in range(0, 16, 4))


def german_iban(rng: random.Random) -> str:
    """A valid German IBAN with random account digits."""
    bban = "".join(rng.choice("0123456789") for _ in range(18))
    numeric = bban + "131400"  # "DE" = 13 14, then check digits 00
    check = 98 - int(numeric) % 97
    return f"DE{check:02d}{bban}"


def ssn(rng: random.Random) -> str:
    return f"{rng.randint(1, 665):03d}-{rng.randint(1, 99):02d}-{rng.randint(1, 9999):04d}"


def planted_frame(seed: int = 7) -> pl.DataFrame:
    """A dataset with every PII kind planted, as columns and inside free text."""
    rng = random.Random(seed)
    rows = []
    for i in range(ROWS):
        first, last = FIRST[i % 10], LAST[(i * 3 + i // 10) % 10]
        ip = f"10.{i}.{rng.randint(0, 255)}.{rng.randint(1, 254)}" if i % 2 else f"2001:db8::{i + 1:x}:{rng.randint(1, 9999)}"
        note = [
            f"Please call {first} {last} tomorrow about order {i}",
            f"Customer wrote from {first.lower()}.{i}@inbox.example.org yesterday",
            f"Reported a wrong delivery address for parcel {i}, resent today",
        ][i % 3]
        rows.append({
            "customer_name": f"{first} {last}",
            "email": f"{first.lower()}.{last.lower()}{i}@example.com",
            "phone": PHONES[i % 4].format(100 + i),
            "card": card_number(rng),
            "iban": german_iban(rng),
            "ssn": ssn(rng),
            "client_ip": ip,
            "notes": note,
            "age": str(18 + i),
        })
    return pl.DataFrame(rows)


def write(frame: pl.DataFrame, path, fmt: str) -> None:
    if fmt == "csv":
        frame.write_csv(path)
    elif fmt == "parquet":
        frame.write_parquet(path)
    else:
        frame.write_ndjson(path)


@pytest.fixture(params=["csv", "parquet", "jsonl"])
def planted(request, tmp_path):
    frame = planted_frame()
    path = tmp_path / f"customers.{request.param}"
    write(frame, path, request.param)
    return frame, path


def test_planted_values_are_valid_by_stdnum():
    frame = planted_frame()
    assert all(luhn.is_valid(v.replace(" ", "")) for v in frame["card"])
    assert all(stdnum_iban.is_valid(v) for v in frame["iban"])
    assert all(stdnum_ssn.is_valid(v) for v in frame["ssn"])


def test_every_kind_is_detected_with_sensible_counts(planted):
    _, path = planted
    report = profile_path(path)
    pii = report["pii"]
    assert pii["kinds_detected"] == list(PII_KINDS)
    assert pii["verdict"] == "high"
    by_kind = pii["by_kind"]
    for kind, column in [("phone", "phone"), ("payment_card", "card"), ("iban", "iban"), ("national_id", "ssn")]:
        assert by_kind[kind]["count"] == ROWS, kind
        assert by_kind[kind]["row_share"] == 1.0
        assert by_kind[kind]["columns"] == [column]
        assert by_kind[kind]["confidence"] >= 0.9
    # E-mails: one per row in the column plus one in every third note.
    assert by_kind["email"]["count"] == ROWS + ROWS // 3
    assert by_kind["email"]["columns"] == ["email", "notes"]
    assert by_kind["ip_address"]["count"] == ROWS
    # Names: every customer_name cell plus "First Last" in every third note.
    assert by_kind["person_name"]["count"] == ROWS + ROWS // 3
    assert set(by_kind["person_name"]["columns"]) == {"customer_name", "notes"}
    free = pii["free_text"]
    assert free["columns"] == ["notes"]
    assert free["by_kind"] == {"email": ROWS // 3, "person_name": ROWS // 3}
    assert free["row_share"] == pytest.approx(2 / 3, abs=0.01)
    columns = {c["name"]: c for c in report["columns"]}
    assert columns["email"]["pii"]["verdict"] == "pii"
    assert columns["notes"]["pii"]["verdict"] == "contains_pii"
    assert columns["age"]["pii"]["verdict"] == "none"
    assert columns["ssn"]["example_format"] == "999-99-9999"
    assert columns["customer_name"]["example_format"].startswith("Aaaa")


def test_report_contains_no_raw_value(planted):
    frame, path = planted
    report = profile_path(path)
    text = json.dumps(report, ensure_ascii=False)
    cells = {str(v) for col in frame.columns for v in frame[col].to_list()}
    leaked = sorted(v for v in cells if len(v) > 3 and v in text)
    assert leaked == []
    for value in frame["card"].to_list() + frame["iban"].to_list() + frame["ssn"].to_list():
        assert value.replace(" ", "") not in text.replace(" ", "")
    # Rendering uses the report only, so it cannot leak either.
    rendered = render_text(report)
    assert [v for v in cells if len(v) > 3 and v in rendered] == []


def test_pii_columns_have_no_min_max_and_numbers_do(tmp_path):
    frame = planted_frame().with_columns(pl.Series("card_digits", [luhn_digits(i) for i in range(ROWS)]))
    path = tmp_path / "x.parquet"
    frame.with_columns(pl.col("card_digits").cast(pl.Int64), pl.col("age").cast(pl.Int64)).write_parquet(path)
    columns = {c["name"]: c for c in profile_path(path)["columns"]}
    assert columns["card_digits"]["pii"]["kind"] == "payment_card"
    assert "min" not in columns["card_digits"] and "max" not in columns["card_digits"]
    assert (columns["age"]["min"], columns["age"]["max"]) == (18, 18 + ROWS - 1)
    assert columns["age"]["type"] == "integer"


def luhn_digits(i: int) -> str:
    body = f"5{i:014d}"
    return body + luhn.calc_check_digit(body)


def test_invalid_cards_and_ibans_are_not_counted(tmp_path):
    rng = random.Random(3)
    bad_cards = []
    while len(bad_cards) < 40:
        card = card_number(rng)
        broken = card[:-1] + str((int(card[-1]) + 1) % 10)
        assert not luhn.is_valid(broken.replace(" ", ""))
        bad_cards.append(broken)
    bad_ibans = [german_iban(rng)[:-1] + "X" for _ in range(40)]
    bad_ibans = [v[:2] + f"{(int(v[2:4]) + 1) % 100:02d}" + v[4:-1] + "0" for v in bad_ibans]
    assert not any(stdnum_iban.is_valid(v) for v in bad_ibans)
    path = tmp_path / "bad.csv"
    pl.DataFrame({"card": bad_cards, "iban": bad_ibans}).write_csv(path)
    report = profile_path(path)
    assert report["pii"]["kinds_detected"] == []
    assert report["pii"]["verdict"] == "none"


def test_clean_dataset_has_verdict_none(tmp_path):
    rng = random.Random(5)
    frame = pl.DataFrame({
        "sku": [f"SKU-{i:05d}" for i in range(500)],
        "category": [rng.choice(["garden", "kitchen", "toys"]) for _ in range(500)],
        "price": [round(rng.uniform(1, 500), 2) for _ in range(500)],
        "order_id": [rng.randint(10**15, 10**16 - 1) for _ in range(500)],  # ~10% pass Luhn
        "shipped": [f"2024-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}" for _ in range(500)],
        "comment": [rng.choice(["arrived on time and well packed", "box was slightly damaged",
                                "would order again from this shop"]) for _ in range(500)],
    })
    path = tmp_path / "clean.csv"
    frame.write_csv(path)
    report = profile_path(path)
    assert report["pii"] == {**report["pii"], "kinds_detected": [], "verdict": "none", "by_kind": {}}
    columns = {c["name"]: c for c in report["columns"]}
    assert columns["price"]["type"] == "float" and 1 <= columns["price"]["min"] < columns["price"]["max"] <= 500
    assert columns["shipped"]["type"] == "date" and columns["shipped"]["min"].startswith("2024-")
    assert "min" not in columns["order_id"]  # identifier-like header: extremes are real ids
    assert columns["category"]["distinct_count"] == 3
    assert "personal-data" not in report["tags"]


def test_vectorised_validators_agree_with_stdnum():
    rng = random.Random(11)
    numbers = ["".join(rng.choice("0123456789") for _ in range(rng.randint(13, 19))) for _ in range(3000)]
    ours = pii_rules.luhn_valid(pl.Series(numbers)).to_list()
    assert ours == [luhn.is_valid(n) for n in numbers]
    ssns = [f"{rng.randint(0, 999):03d}-{rng.randint(0, 99):02d}-{rng.randint(0, 9999):04d}" for _ in range(3000)]
    ssns += ["078-05-1120", "666-12-3456", "900-12-3456", "123-00-4567", "123-45-0000"]
    assert pii_rules.ssn_valid(pl.Series(ssns)).to_list() == [stdnum_ssn.is_valid(s) for s in ssns]


def test_extra_name_list(tmp_path):
    path = tmp_path / "people.csv"
    pl.DataFrame({"who": [f"Zorblax Quint{i}" for i in range(30)]}).write_csv(path)
    assert profile_path(path)["pii"]["kinds_detected"] == []
    report = profile_path(path, name_list=["Zorblax"])
    assert report["pii"]["kinds_detected"] == ["person_name"]


def test_email_syntax_check_matches_its_pattern():
    # email_valid uses literal searches; they must agree with the documented pattern.
    rng = random.Random(13)
    values = ["".join(rng.choice("ab.@-1") for _ in range(rng.randint(0, 8))) for _ in range(20_000)]
    series = pl.Series(values)
    expected = ~series.str.contains(r"\.\.|^\.|\.@|@[.-]|-\.")
    assert pii_rules.email_valid(series).to_list() == expected.to_list()
