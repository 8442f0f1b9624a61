"""Settings from the environment, read once into an immutable object (no I/O here).

Embedded default (nothing set): SQLite files under ``AIMARKET_DATA_DIR`` (``./.aimarket``),
in-process workers, in-process EVM. Production: ``AIMARKET_DATABASE_URL`` points at
PostgreSQL and ``AIMARKET_REDIS_URL`` at the Dramatiq broker.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlsplit

_SCHEMA_RE = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


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

    @property
    def embedded(self) -> bool:
        return not self.database_url

    @property
    def store(self) -> str:
        return "sqlite" if self.embedded else "postgres"

    def pg_parts(self) -> dict[str, str]:
        """The URL split into the parts the eventsourcing PostgreSQL factory reads."""
        parts = urlsplit(self.database_url)
        if parts.scheme not in ("postgres", "postgresql") or not parts.hostname:
            raise SettingsError("AIMARKET_DATABASE_URL must look like postgresql://user@host:5432/dbname")
        return {
            "host": parts.hostname, "port": str(parts.port or 5432), "user": unquote(parts.username or ""),
            "password": unquote(parts.password or ""), "dbname": parts.path.lstrip("/") or "postgres",
        }

    def pg_conninfo(self) -> str:
        p = self.pg_parts()
        conninfo = f"host={p['host']} port={p['port']} dbname={p['dbname']} user={p['user']}"
        return conninfo + (f" password={p['password']}" if p["password"] else "")


def _int(env: Mapping[str, str], key: str, default: int) -> int:
    raw = env.get(key)
    if raw in (None, ""):
        return default
    try:
        return int(raw)
    except ValueError:
        raise SettingsError(f"{key} must be an integer, got {raw!r}") from None


def _flag(env: Mapping[str, str], key: str, *, default: bool) -> bool:
    raw = (env.get(key) or "").strip().lower()
    if not raw:
        return default
    if raw not in ("1", "0", "yes", "no", "true", "false", "y", "n"):
        raise SettingsError(f"{key} must be yes or no, got {raw!r}")
    return raw in ("1", "yes", "true", "y")


def load_settings(env: Mapping[str, str] | None = None) -> Settings:
    env = os.environ if env is None else env
    schema = env.get("AIMARKET_DB_SCHEMA", "public")
    if not _SCHEMA_RE.match(schema):
        raise SettingsError("AIMARKET_DB_SCHEMA must be a lower-case SQL identifier")
    bind = env.get("AIMARKET_BIND", "127.0.0.1:8080")
    return Settings(
        data_dir=Path(env.get("AIMARKET_DATA_DIR", ".aimarket")),
        database_url=env.get("AIMARKET_DATABASE_URL", ""),
        db_schema=schema,
        redis_url=env.get("AIMARKET_REDIS_URL", ""),
        hub_name=env.get("AIMARKET_HUB_NAME", "aimarket hub"),
        hub_url=env.get("AIMARKET_HUB_URL", f"http://{bind}").rstrip("/"),
        bind=bind,
        secret_hex=env.get("AIMARKET_SECRET", ""),
        bcrypt_rounds=_int(env, "AIMARKET_BCRYPT_ROUNDS", 12),
        session_ttl_s=_int(env, "AIMARKET_SESSION_TTL_S", 3600),
        web_workers=_int(env, "AIMARKET_WEB_WORKERS", 2),
        web_threads=_int(env, "AIMARKET_WEB_THREADS", 8),
        run_projections_in_web=_flag(env, "AIMARKET_PROJECTIONS_IN_WEB", default=not env.get("AIMARKET_DATABASE_URL")),
        log_format=env.get("AIMARKET_LOG_FORMAT", "json"),
        fee_bps=_int(env, "AIMARKET_FEE_BPS", 500),
        unsigned_allowance_minor=_int(env, "AIMARKET_UNSIGNED_ALLOWANCE_MINOR", 0),
        card_channel_ttl_s=_int(env, "AIMARKET_CARD_CHANNEL_TTL_S", 30 * 24 * 3600),
        settle_margin_s=_int(env, "AIMARKET_SETTLE_MARGIN_S", 3600),
        chain_rpc_url=env.get("AIMARKET_CHAIN_RPC_URL", ""),
        channels_address=env.get("AIMARKET_CHANNELS_ADDRESS", ""),
        token_address=env.get("AIMARKET_TOKEN_ADDRESS", ""),
        token_currency=env.get("AIMARKET_TOKEN_CURRENCY", "TUSD"),
        operator_key_hex=env.get("AIMARKET_OPERATOR_KEY", ""),
        stripe_api_key=env.get("AIMARKET_STRIPE_API_KEY", ""),
        stripe_webhook_secret=env.get("AIMARKET_STRIPE_WEBHOOK_SECRET", ""),
        stripe_api_base=env.get("AIMARKET_STRIPE_API_BASE", ""),
        debit_batch_ms=float(env.get("AIMARKET_DEBIT_BATCH_MS", "2") or 2),
    )
