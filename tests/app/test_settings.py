"""Settings from the environment: every bad value is a SettingsError naming its variable."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import pytest

from ops.settings import Settings, SettingsError, load_settings

ADDRESS = "0x" + "aB" * 20
KEY = "12" * 32

# Every variable load_settings reads, with values it must refuse.
BAD: dict[str, list[str]] = {
    "AIMARKET_DATA_DIR": ["data\x00dir"],
    "AIMARKET_DATABASE_URL": ["sqlite:///x.db", "postgresql:///nohost", "postgresql://u@h:99999/db",
                              "postgresql://u@h:port/db", "host:5432/db"],
    "AIMARKET_DB_SCHEMA": ["Robert'); DROP", "1abc", "public\n"],
    "AIMARKET_REDIS_URL": ["http://127.0.0.1:6379/0", "127.0.0.1:6379", "redis://", "redis://h:70000/0",
                           "redis://h:6379/zero"],
    "AIMARKET_HUB_NAME": ["   ", "two\nlines", "x" * 201],
    "AIMARKET_HUB_URL": ["hub.example.com", "ftp://hub.example.com", "http://", "http://h:99999"],
    "AIMARKET_BIND": ["8080", "127.0.0.1", "127.0.0.1:http", "127.0.0.1:0", "127.0.0.1:65536", ":8080",
                      "127.0.0.1:8080\n"],
    "AIMARKET_SECRET": ["zz" * 32, "abc", "ab" * 16],
    "AIMARKET_BCRYPT_ROUNDS": ["many", "3", "32", "-1"],
    "AIMARKET_SESSION_TTL_S": ["1h", "0", "-5"],
    "AIMARKET_WEB_WORKERS": ["two", "0", "-1"],
    "AIMARKET_WEB_THREADS": ["8.5", "0"],
    "AIMARKET_PROJECTIONS_IN_WEB": ["maybe"],
    "AIMARKET_LOG_FORMAT": ["text", "JSON"],
    "AIMARKET_TREE_HEAD_EVERY_EVENTS": ["many", "0", "-1", "10000001"],
    "AIMARKET_TREE_HEAD_EVERY_S": ["1m", "0", "86401"],
    "AIMARKET_FEE_BPS": ["5%", "-1", "10001"],
    "AIMARKET_UNSIGNED_ALLOWANCE_MINOR": ["1.5", "-1"],
    "AIMARKET_CARD_CHANNEL_TTL_S": ["month", "0", "-1"],
    "AIMARKET_SETTLE_MARGIN_S": ["soon", "-1"],
    "AIMARKET_CHAIN_RPC_URL": ["127.0.0.1:8545", "ws://127.0.0.1:8545", "http://"],
    "AIMARKET_CHANNELS_ADDRESS": ["0x1234", ADDRESS[2:], "0x" + "g" * 40],
    "AIMARKET_TOKEN_ADDRESS": ["0x1234", ADDRESS + "00"],
    "AIMARKET_TOKEN_CURRENCY": ["tusd", "T", "TOO-LONG-SYMBOL"],
    "AIMARKET_OPERATOR_KEY": ["zz" * 32, "12" * 16, "0x" + "12" * 33],
    "AIMARKET_STRIPE_API_KEY": ["pk_test_abc", "secret", "sk_test abc"],
    "AIMARKET_STRIPE_WEBHOOK_SECRET": ["secret", "whsec_"],
    "AIMARKET_STRIPE_API_BASE": ["api.stripe.com", "ftp://api.stripe.com"],
    "AIMARKET_DEBIT_BATCH_MS": ["abc", "-1", "nan", "inf", "1001"],
    "AIMARKET_DELIVERY_START_S": ["soon", "0", "-1", "2592001", "86401"],  # the last: above the transfer's
    "AIMARKET_DELIVERY_TRANSFER_S": ["day", "0", "2592001", "899"],  # the last: below the start's
    "AIMARKET_INVOKE_START_S": ["soon", "0", "604801", "3601"],  # the last: above the session's
    "AIMARKET_INVOKE_SESSION_S": ["hour", "59", "604801", "899"],  # the last: below the start's
    "AIMARKET_INVOKE_REPORT_GRACE_S": ["day", "-1", "2592001"],
}
CASES = [(name, value) for name, values in BAD.items() for value in values]


def test_the_cases_cover_every_variable_load_settings_reads() -> None:
    read = set(re.findall(r'"(AIMARKET_[A-Z_]+)"', inspect.getsource(load_settings)))
    assert read == set(BAD)


@pytest.mark.parametrize(("name", "value"), CASES, ids=[f"{n}={v!r}" for n, v in CASES])
def test_a_bad_value_is_a_settings_error_naming_the_variable(name: str, value: str) -> None:
    with pytest.raises(SettingsError) as info:
        load_settings({name: value})
    assert name in str(info.value)


@pytest.mark.parametrize("name", ["AIMARKET_SECRET", "AIMARKET_OPERATOR_KEY", "AIMARKET_STRIPE_API_KEY",
                                  "AIMARKET_STRIPE_WEBHOOK_SECRET", "AIMARKET_DATABASE_URL"])
def test_a_refused_secret_is_not_echoed(name: str) -> None:
    value = "postgresql://u:hunter2hunter2@/db" if name == "AIMARKET_DATABASE_URL" else "hunter2hunter2"
    with pytest.raises(SettingsError) as info:
        load_settings({name: value})
    assert "hunter2" not in str(info.value)


def test_an_empty_env_loads_the_defaults() -> None:
    assert load_settings({}) == Settings()
    empty = load_settings(dict.fromkeys(BAD, ""))  # set but empty counts as unset
    assert empty == Settings()


def test_good_values_parse() -> None:
    env = {
        "AIMARKET_DATA_DIR": "/var/lib/aimarket",
        "AIMARKET_DATABASE_URL": "postgresql://app:p%40ss@db.internal:6432/market",
        "AIMARKET_DB_SCHEMA": "tenant_1",
        "AIMARKET_REDIS_URL": "rediss://:pw@cache.internal:6380/2",
        "AIMARKET_HUB_NAME": "Example hub",
        "AIMARKET_HUB_URL": "https://hub.example.com/",
        "AIMARKET_BIND": "0.0.0.0:9000",
        "AIMARKET_SECRET": "cd" * 32,
        "AIMARKET_BCRYPT_ROUNDS": "10",
        "AIMARKET_SESSION_TTL_S": "600",
        "AIMARKET_WEB_WORKERS": "4",
        "AIMARKET_WEB_THREADS": "16",
        "AIMARKET_PROJECTIONS_IN_WEB": "yes",
        "AIMARKET_LOG_FORMAT": "console",
        "AIMARKET_TREE_HEAD_EVERY_EVENTS": "50",
        "AIMARKET_TREE_HEAD_EVERY_S": "5",
        "AIMARKET_FEE_BPS": "10000",
        "AIMARKET_UNSIGNED_ALLOWANCE_MINOR": "50",
        "AIMARKET_CARD_CHANNEL_TTL_S": "86400",
        "AIMARKET_SETTLE_MARGIN_S": "0",
        "AIMARKET_CHAIN_RPC_URL": "http://127.0.0.1:8545",
        "AIMARKET_CHANNELS_ADDRESS": ADDRESS,
        "AIMARKET_TOKEN_ADDRESS": ADDRESS.lower(),
        "AIMARKET_TOKEN_CURRENCY": "USDC",
        "AIMARKET_OPERATOR_KEY": "0x" + KEY,
        "AIMARKET_STRIPE_API_KEY": "sk_test_abc123",
        "AIMARKET_STRIPE_WEBHOOK_SECRET": "whsec_abc123",
        "AIMARKET_STRIPE_API_BASE": "https://api.stripe.com",
        "AIMARKET_DEBIT_BATCH_MS": "0.5",
        "AIMARKET_DELIVERY_START_S": "60",
        "AIMARKET_DELIVERY_TRANSFER_S": "7200",
        "AIMARKET_INVOKE_START_S": "120",
        "AIMARKET_INVOKE_SESSION_S": "1800",
        "AIMARKET_INVOKE_REPORT_GRACE_S": "0",
    }
    assert set(env) == set(BAD)
    s = load_settings(env)
    assert s == Settings(
        data_dir=Path("/var/lib/aimarket"), database_url=env["AIMARKET_DATABASE_URL"], db_schema="tenant_1",
        redis_url=env["AIMARKET_REDIS_URL"], hub_name="Example hub", hub_url="https://hub.example.com",
        bind="0.0.0.0:9000", secret_hex="cd" * 32, bcrypt_rounds=10, session_ttl_s=600, web_workers=4,
        web_threads=16, run_projections_in_web=True, log_format="console", fee_bps=10_000,
        tree_head_every_events=50, tree_head_every_s=5,
        unsigned_allowance_minor=50, card_channel_ttl_s=86_400, settle_margin_s=0,
        chain_rpc_url="http://127.0.0.1:8545", channels_address=ADDRESS, token_address=ADDRESS.lower(),
        token_currency="USDC", operator_key_hex="0x" + KEY, stripe_api_key="sk_test_abc123",
        stripe_webhook_secret="whsec_abc123", stripe_api_base="https://api.stripe.com", debit_batch_ms=0.5,
        delivery_start_s=60, delivery_transfer_s=7200, invoke_start_s=120, invoke_session_s=1800,
        invoke_report_grace_s=0,
    )
    assert s.pg_parts() == {"host": "db.internal", "port": "6432", "user": "app", "password": "p@ss",
                            "dbname": "market"}
    assert load_settings({"AIMARKET_DEBIT_BATCH_MS": "0"}).debit_batch_ms == 0.0
    assert load_settings({"AIMARKET_BIND": "[::1]:8080"}).hub_url == "http://[::1]:8080"
    assert load_settings({"AIMARKET_DATABASE_URL": "postgres://root@127.0.0.1/test"}).run_projections_in_web is False
    assert load_settings({"AIMARKET_REDIS_URL": "redis://127.0.0.1:6379"}).redis_url == "redis://127.0.0.1:6379"


def test_the_process_environment_is_read_when_no_mapping_is_given(monkeypatch) -> None:
    monkeypatch.setenv("AIMARKET_DEBIT_BATCH_MS", "abc")
    with pytest.raises(SettingsError, match="AIMARKET_DEBIT_BATCH_MS"):
        load_settings()
