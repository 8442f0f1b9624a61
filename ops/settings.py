"""Settings from the environment, read once into an immutable object (no I/O here).

Embedded default (nothing set): SQLite files under ``AIMARKET_DATA_DIR`` (``./.aimarket``),
in-process workers, in-process EVM. Production: ``AIMARKET_DATABASE_URL`` points at
PostgreSQL and ``AIMARKET_REDIS_URL`` at the Dramatiq broker.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlsplit

_SCHEMA_RE = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
_BIND_RE = re.compile(r"^(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+):(?P<port>[0-9]{1,5})$")
_ADDRESS_RE = re.compile(r"^0x[0-9a-fA-F]{40}$")
_KEY_RE = re.compile(r"^(?:0x)?[0-9a-fA-F]{64}$")
_CURRENCY_RE = re.compile(r"^[A-Z][A-Z0-9]{2,9}$")  # the shape of domain.model.money codes
_STRIPE_KEY_RE = re.compile(r"^(?:sk|rk)_[A-Za-z0-9_]+$")
_STRIPE_WEBHOOK_RE = re.compile(r"^whsec_[A-Za-z0-9_+/=]+$")
_PG_EXAMPLE = "postgresql://user@host:5432/dbname"
_REDIS_EXAMPLE = "redis://host:6379/0 (or rediss://)"


class SettingsError(ValueError):
    """Raised when an environment variable has a value we cannot use."""


@dataclass(frozen=True)
class Settings:
    data_dir: Path = Path(".aimarket")
    database_url: str = ""  # empty = embedded SQLite
    db_schema: str = "public"
    redis_url: str = ""  # empty = in-process broker
    hub_name: str = "aimarket hub"
    hub_url: str = "http://127.0.0.1:8080"
    bind: str = "127.0.0.1:8080"
    secret_hex: str = field(default="", repr=False)
    bcrypt_rounds: int = 12
    session_ttl_s: int = 3600
    web_workers: int = 2
    web_threads: int = 8  # per worker: the pool that runs the plain (blocking) responders
    run_projections_in_web: bool = True
    log_format: str = "json"
    # -- audit trail (issue 13): a signed tree head after this many new events, or seconds ------
    tree_head_every_events: int = 1000
    tree_head_every_s: int = 60
    # -- money (issue 4) ------------------------------------------------------------------
    fee_bps: int = 500
    unsigned_allowance_minor: int = 0
    card_channel_ttl_s: int = 30 * 24 * 3600
    settle_margin_s: int = 3600
    chain_rpc_url: str = ""  # empty = in-process EVM (eth-tester), deployed on first use
    channels_address: str = ""
    token_address: str = ""
    token_currency: str = "TUSD"  # noqa: S105 - a token symbol, not a secret
    operator_key_hex: str = field(default="", repr=False)
    stripe_api_key: str = field(default="", repr=False)  # empty = card rail off, payouts stay pending
    stripe_webhook_secret: str = field(default="", repr=False)
    stripe_api_base: str = ""
    debit_batch_ms: float = 2.0  # group-commit window; 0 = one transaction per debit
    # -- purchases (issue 11): a delivery token's deadlines, counted from the purchase ----------
    delivery_start_s: int = 15 * 60  # the first byte by then (the token's start_by)
    delivery_transfer_s: int = 24 * 3600  # the whole transfer by then (the token's exp)
    # -- invocations (issue 12): an invoke token's deadlines, counted from the open -------------
    invoke_start_s: int = 15 * 60  # the first connection by then (the token's start_by)
    invoke_session_s: int = 3600  # no call after this (the token's exp)
    invoke_report_grace_s: int = 86400  # the hold lapses this long after exp without a final report

    @property
    def embedded(self) -> bool:
        return not self.database_url

    @property
    def store(self) -> str:
        return "sqlite" if self.embedded else "postgres"

    def pg_parts(self) -> dict[str, str]:
        """The URL split into the parts the eventsourcing PostgreSQL factory reads."""
        if not _url_ok(self.database_url, ("postgres", "postgresql")):
            raise SettingsError(f"AIMARKET_DATABASE_URL must look like {_PG_EXAMPLE}")
        parts = urlsplit(self.database_url)
        return {
            "host": parts.hostname, "port": str(parts.port or 5432), "user": unquote(parts.username or ""),
            "password": unquote(parts.password or ""), "dbname": parts.path.lstrip("/") or "postgres",
        }

    def pg_conninfo(self) -> str:
        p = self.pg_parts()
        conninfo = f"host={p['host']} port={p['port']} dbname={p['dbname']} user={p['user']}"
        return conninfo + (f" password={p['password']}" if p["password"] else "")


def _text(env: Mapping[str, str], key: str, default: str) -> str:
    """The raw value; unset or empty means ``default``."""
    raw = env.get(key)
    return default if raw in (None, "") else raw


def _int(env: Mapping[str, str], key: str, default: int, *, low: int | None = None,
         high: int | None = None) -> int:
    raw = env.get(key)
    if raw in (None, ""):
        return default
    try:
        value = int(raw)
    except ValueError:
        raise SettingsError(f"{key} must be an integer, got {raw!r}") from None
    _check_range(key, value, low, high)
    return value


def _float(env: Mapping[str, str], key: str, default: float, *, low: float | None = None,
           high: float | None = None) -> float:
    raw = env.get(key)
    if raw in (None, ""):
        return default
    try:
        value = float(raw)
    except ValueError:
        raise SettingsError(f"{key} must be a number, got {raw!r}") from None
    if not math.isfinite(value):
        raise SettingsError(f"{key} must be a finite number, got {raw!r}")
    _check_range(key, value, low, high)
    return value


def _check_range(key: str, value: float, low: float | None, high: float | None) -> None:
    if low is not None and value < low:
        raise SettingsError(f"{key} must be at least {low}, got {value}")
    if high is not None and value > high:
        raise SettingsError(f"{key} must be at most {high}, got {value}")


def _flag(env: Mapping[str, str], key: str, *, default: bool) -> bool:
    raw = (env.get(key) or "").strip().lower()
    if not raw:
        return default
    if raw not in ("1", "0", "yes", "no", "true", "false", "y", "n"):
        raise SettingsError(f"{key} must be yes or no, got {raw!r}")
    return raw in ("1", "yes", "true", "y")


def _choice(env: Mapping[str, str], key: str, default: str, choices: tuple[str, ...]) -> str:
    value = _text(env, key, default)
    if value not in choices:
        raise SettingsError(f"{key} must be one of {', '.join(choices)}, got {value!r}")
    return value


def _match(env: Mapping[str, str], key: str, default: str, pattern: re.Pattern[str], shape: str) -> str:
    value = _text(env, key, default)
    if value and not pattern.fullmatch(value):
        raise SettingsError(f"{key} must be {shape}")  # the value itself may be a secret: not echoed
    return value


def _url(env: Mapping[str, str], key: str, default: str, schemes: tuple[str, ...], example: str) -> str:
    """A URL with one of ``schemes`` and a host (empty stays empty: the feature is off)."""
    value = _text(env, key, default)
    if value and not _url_ok(value, schemes):
        raise SettingsError(f"{key} must look like {example}")  # may hold a password: not echoed
    return value


def _url_ok(value: str, schemes: tuple[str, ...]) -> bool:
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 - raises ValueError on a port that is not a number in range
    except ValueError:
        return False
    return parts.scheme in schemes and bool(parts.hostname) and not any(c.isspace() for c in value)


def _redis_url(env: Mapping[str, str], key: str) -> str:
    value = _url(env, key, "", ("redis", "rediss"), _REDIS_EXAMPLE)
    if value and not re.fullmatch(r"/?[0-9]*", urlsplit(value).path):
        raise SettingsError(f"{key} must look like {_REDIS_EXAMPLE}: the path is a database number")
    return value


def _bind(env: Mapping[str, str], key: str, default: str) -> str:
    value = _text(env, key, default)
    m = _BIND_RE.fullmatch(value)
    if not m or not 1 <= int(m.group("port")) <= 65535:
        raise SettingsError(f"{key} must be host:port (e.g. 127.0.0.1:8080 or [::1]:8080), got {value!r}")
    return value


def _secret(env: Mapping[str, str], key: str) -> str:
    value = _text(env, key, "")
    if value:
        try:
            raw = bytes.fromhex(value)
        except ValueError:
            raise SettingsError(f"{key} must be hex (64+ characters)") from None
        if len(raw) < 32:
            raise SettingsError(f"{key} must hold at least 32 bytes (64 hex characters)")
    return value


def _data_dir(env: Mapping[str, str], key: str) -> Path:
    value = _text(env, key, ".aimarket")
    if "\x00" in value:
        raise SettingsError(f"{key} must be a directory path, got {value!r}")
    return Path(value)


def _hub_name(env: Mapping[str, str], key: str) -> str:
    value = _text(env, key, "aimarket hub")
    if not value.strip() or len(value) > 200 or any(not c.isprintable() for c in value):
        raise SettingsError(f"{key} must be one line of printable text (at most 200 characters)")
    return value


def load_settings(env: Mapping[str, str] | None = None) -> Settings:
    """Every value parsed and checked here: a bad one is a ``SettingsError`` naming its variable."""
    env = os.environ if env is None else env
    schema = _text(env, "AIMARKET_DB_SCHEMA", "public")
    if not _SCHEMA_RE.fullmatch(schema):
        raise SettingsError("AIMARKET_DB_SCHEMA must be a lower-case SQL identifier")
    database_url = _url(env, "AIMARKET_DATABASE_URL", "", ("postgres", "postgresql"), _PG_EXAMPLE)
    bind = _bind(env, "AIMARKET_BIND", "127.0.0.1:8080")
    http = ("http", "https")
    delivery_start_s = _int(env, "AIMARKET_DELIVERY_START_S", 15 * 60, low=1, high=30 * 86400)
    delivery_transfer_s = _int(env, "AIMARKET_DELIVERY_TRANSFER_S", 24 * 3600, low=1, high=30 * 86400)
    if delivery_start_s > delivery_transfer_s:
        raise SettingsError("AIMARKET_DELIVERY_START_S must not exceed AIMARKET_DELIVERY_TRANSFER_S")
    invoke_start_s = _int(env, "AIMARKET_INVOKE_START_S", 15 * 60, low=1, high=7 * 86400)
    invoke_session_s = _int(env, "AIMARKET_INVOKE_SESSION_S", 3600, low=60, high=7 * 86400)
    if invoke_start_s > invoke_session_s:
        raise SettingsError("AIMARKET_INVOKE_START_S must not exceed AIMARKET_INVOKE_SESSION_S")
    return Settings(
        data_dir=_data_dir(env, "AIMARKET_DATA_DIR"),
        database_url=database_url,
        db_schema=schema,
        redis_url=_redis_url(env, "AIMARKET_REDIS_URL"),
        hub_name=_hub_name(env, "AIMARKET_HUB_NAME"),
        hub_url=_url(env, "AIMARKET_HUB_URL", f"http://{bind}", http, "https://hub.example.com").rstrip("/"),
        bind=bind,
        secret_hex=_secret(env, "AIMARKET_SECRET"),
        bcrypt_rounds=_int(env, "AIMARKET_BCRYPT_ROUNDS", 12, low=4, high=31),  # bcrypt's own range
        session_ttl_s=_int(env, "AIMARKET_SESSION_TTL_S", 3600, low=1),
        web_workers=_int(env, "AIMARKET_WEB_WORKERS", 2, low=1),
        web_threads=_int(env, "AIMARKET_WEB_THREADS", 8, low=1),
        run_projections_in_web=_flag(env, "AIMARKET_PROJECTIONS_IN_WEB", default=not database_url),
        log_format=_choice(env, "AIMARKET_LOG_FORMAT", "json", ("json", "console")),
        tree_head_every_events=_int(env, "AIMARKET_TREE_HEAD_EVERY_EVENTS", 1000, low=1, high=10_000_000),
        tree_head_every_s=_int(env, "AIMARKET_TREE_HEAD_EVERY_S", 60, low=1, high=86_400),
        fee_bps=_int(env, "AIMARKET_FEE_BPS", 500, low=0, high=10_000),
        unsigned_allowance_minor=_int(env, "AIMARKET_UNSIGNED_ALLOWANCE_MINOR", 0, low=0),
        card_channel_ttl_s=_int(env, "AIMARKET_CARD_CHANNEL_TTL_S", 30 * 24 * 3600, low=1),
        settle_margin_s=_int(env, "AIMARKET_SETTLE_MARGIN_S", 3600, low=0),
        chain_rpc_url=_url(env, "AIMARKET_CHAIN_RPC_URL", "", http, "http://127.0.0.1:8545"),
        channels_address=_match(env, "AIMARKET_CHANNELS_ADDRESS", "", _ADDRESS_RE, "an address: 0x and 40 hex digits"),
        token_address=_match(env, "AIMARKET_TOKEN_ADDRESS", "", _ADDRESS_RE, "an address: 0x and 40 hex digits"),
        token_currency=_match(env, "AIMARKET_TOKEN_CURRENCY", "TUSD", _CURRENCY_RE,
                              "a token symbol: upper-case letters and digits, 3 to 10 (e.g. TUSD)"),
        operator_key_hex=_match(env, "AIMARKET_OPERATOR_KEY", "", _KEY_RE,
                                "a private key: 64 hex digits (0x optional)"),
        stripe_api_key=_match(env, "AIMARKET_STRIPE_API_KEY", "", _STRIPE_KEY_RE,
                              "a Stripe secret or restricted key (sk_... or rk_...)"),
        stripe_webhook_secret=_match(env, "AIMARKET_STRIPE_WEBHOOK_SECRET", "", _STRIPE_WEBHOOK_RE,
                                     "a Stripe webhook signing secret (whsec_...)"),
        stripe_api_base=_url(env, "AIMARKET_STRIPE_API_BASE", "", http, "https://api.stripe.com"),
        debit_batch_ms=_float(env, "AIMARKET_DEBIT_BATCH_MS", 2.0, low=0, high=1000),
        delivery_start_s=delivery_start_s,
        delivery_transfer_s=delivery_transfer_s,
        invoke_start_s=invoke_start_s,
        invoke_session_s=invoke_session_s,
        invoke_report_grace_s=_int(env, "AIMARKET_INVOKE_REPORT_GRACE_S", 86400, low=0, high=30 * 86400),
    )
