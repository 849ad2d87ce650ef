"""The service's settings: one typed object, read from the environment (and `.env`) once.

`Settings()` is built by `create_app()` / the CLI, never at import time, so tests can build
as many differently configured apps as they like in one process. It is the only reader of the
environment: the variables whose names are only known later (the models file's
`api_key_env`), or that libraries act on themselves (HTTP proxies, `OTEL_*`), are read by its
methods, which the app calls while it is being built.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from .errors import ConfigError

# The guide's model name (claude-3-5-sonnet-20241022) is retired; this is a current one.
DEFAULT_ANTHROPIC_MODEL = "claude-sonnet-5-5"
DEFAULT_OPENAI_MODEL = "gpt-5.4-mini"
MOCK_MODEL = "mock"
# Relative to the working directory: `make run` keeps its data in ./data.
DEFAULT_DATABASE_URL = "sqlite+aiosqlite:///data/chatrelay.db"
# Relative to the working directory, like the data.
ENV_FILE = ".env"
# httpx (under the SDKs) reads these from the process environment, in either case.
PROXY_VARIABLES = ("https_proxy", "http_proxy", "all_proxy")


class Settings(BaseSettings):
    """Every setting the server reads; the README documents each one."""

    model_config = SettingsConfigDict(
        env_file=ENV_FILE, env_file_encoding="utf-8", extra="ignore", populate_by_name=True
    )

    # --- server -----------------------------------------------------------------------------
    host: str = Field("127.0.0.1", validation_alias="CHATRELAY_HOST")
    # PaaS (Railway, Heroku) tell the app its port through PORT.
    port: int = Field(8000, ge=0, le=65535, validation_alias="PORT")
    log_level: Literal["debug", "info", "warning", "error"] = Field(
        "info", validation_alias="CHATRELAY_LOG_LEVEL"
    )
    log_format: Literal["auto", "json", "text"] = Field(
        "auto", validation_alias="CHATRELAY_LOG_FORMAT"
    )
    cors_origins: Annotated[list[str] | None, NoDecode] = Field(
        None, validation_alias="CHATRELAY_CORS_ORIGINS"
    )

    # --- provider ---------------------------------------------------------------------------
    provider: Literal["auto", "anthropic", "openai", "mock"] = Field(
        "auto", validation_alias="CHATRELAY_PROVIDER"
    )
    model: str | None = Field(None, validation_alias="CHATRELAY_MODEL")
    models_file: Path | None = Field(None, validation_alias="CHATRELAY_MODELS_FILE")
    anthropic_api_key: SecretStr | None = Field(None, validation_alias="ANTHROPIC_API_KEY")
    anthropic_base_url: str | None = Field(None, validation_alias="ANTHROPIC_BASE_URL")
    openai_api_key: SecretStr | None = Field(None, validation_alias="OPENAI_API_KEY")
    openai_base_url: str | None = Field(None, validation_alias="OPENAI_BASE_URL")
    send_temperature: Literal["auto", "always", "never"] = Field(
        "auto", validation_alias="CHATRELAY_SEND_TEMPERATURE"
    )
    max_connections: int = Field(2000, ge=1, validation_alias="CHATRELAY_UPSTREAM_MAX_CONNECTIONS")
    # `relay`: our lean HTTP/1.1 transport under the SDKs (providers/transport.py); `httpx`:
    # the SDKs' default one (proxies, HTTP/2). A configured proxy always selects `httpx`.
    upstream_transport: Literal["relay", "httpx"] = Field(
        "relay", validation_alias="CHATRELAY_UPSTREAM_TRANSPORT"
    )

    # --- storage ---------------------------------------------------------------------------
    database_url: str = Field(DEFAULT_DATABASE_URL, validation_alias="DATABASE_URL")
    db_pool_size: int = Field(10, ge=1, validation_alias="CHATRELAY_DB_POOL_SIZE")
    history_budget_tokens: int = Field(
        100_000, ge=1, validation_alias="CHATRELAY_HISTORY_BUDGET_TOKENS"
    )
    conversation_lock_s: float = Field(
        600.0, gt=0, validation_alias="CHATRELAY_CONVERSATION_LOCK_S"
    )
    # How long a reply the database refused is kept in memory and written again.
    reply_retry_s: float = Field(60.0, ge=0, validation_alias="CHATRELAY_REPLY_RETRY_S")
    # Unique among running instances and the same across restarts (`chatrelay serve`: the
    # host name and port): a restarted instance frees the conversations of its previous life.
    instance_name: str | None = Field(
        None, min_length=1, max_length=200, validation_alias="CHATRELAY_INSTANCE_NAME"
    )

    # --- streams -----------------------------------------------------------------------------
    redis_url: SecretStr | None = Field(None, validation_alias="REDIS_URL")
    resume_grace_s: float = Field(10.0, ge=0, validation_alias="CHATRELAY_RESUME_GRACE_S")
    stream_ttl_s: float = Field(600.0, gt=0, validation_alias="CHATRELAY_STREAM_TTL_S")
    shutdown_grace_s: float = Field(20.0, ge=0, validation_alias="CHATRELAY_SHUTDOWN_GRACE_S")
    request_timeout_s: float = Field(30.0, gt=0, validation_alias="CHATRELAY_REQUEST_TIMEOUT_S")
    keep_alive_s: float = Field(30.0, ge=1, validation_alias="CHATRELAY_KEEP_ALIVE_S")
    redis_prefix: str = Field("chatrelay", min_length=1, validation_alias="CHATRELAY_REDIS_PREFIX")
    redis_max_connections: int = Field(
        1000, ge=10, validation_alias="CHATRELAY_REDIS_MAX_CONNECTIONS"
    )

    # --- mock provider ----------------------------------------------------------------------
    mock_delay_s: float = Field(0.02, ge=0, le=10, validation_alias="CHATRELAY_MOCK_DELAY_S")

    # --- access ----------------------------------------------------------------------------
    auth: Annotated[list[str] | None, NoDecode] = Field(None, validation_alias="CHATRELAY_AUTH")
    jwt_secret: SecretStr | None = Field(None, validation_alias="CHATRELAY_JWT_SECRET")
    jwt_jwks_url: str | None = Field(None, validation_alias="CHATRELAY_JWT_JWKS_URL")
    jwt_issuer: str | None = Field(None, validation_alias="CHATRELAY_JWT_ISSUER")
    jwt_audience: str | None = Field(None, validation_alias="CHATRELAY_JWT_AUDIENCE")
    jwt_leeway_s: float = Field(60.0, ge=0, validation_alias="CHATRELAY_JWT_LEEWAY_S")
    jwks_cooldown_s: float = Field(5.0, ge=0, validation_alias="CHATRELAY_JWKS_COOLDOWN_S")
    metrics_token: SecretStr | None = Field(None, validation_alias="CHATRELAY_METRICS_TOKEN")
    api_docs: bool = Field(True, validation_alias="CHATRELAY_API_DOCS")
    jwks_timeout_s: float = Field(3.0, gt=0, validation_alias="CHATRELAY_JWKS_TIMEOUT_S")
    jwks_refresh_s: float = Field(300.0, gt=0, validation_alias="CHATRELAY_JWKS_REFRESH_S")
    trusted_proxies: Annotated[list[str], NoDecode] = Field(
        default_factory=list, validation_alias="CHATRELAY_TRUSTED_PROXIES"
    )
    key_cache_s: float = Field(10.0, ge=0, validation_alias="CHATRELAY_KEY_CACHE_S")
    limits_api_key: str = Field(
        "rpm=600,concurrency=50,tpm=2000000,daily_tokens=50000000",
        validation_alias="CHATRELAY_LIMITS_API_KEY",
    )
    limits_user: str = Field(
        "rpm=30,concurrency=3,tpm=200000,daily_tokens=2000000",
        validation_alias="CHATRELAY_LIMITS_USER",
    )
    limits_anonymous: str = Field(
        "rpm=5,concurrency=1,tpm=20000,daily_tokens=100000",
        validation_alias="CHATRELAY_LIMITS_ANONYMOUS",
    )
    limits_public: str = Field("", validation_alias="CHATRELAY_LIMITS_PUBLIC")

    # --- request limits ---------------------------------------------------------------------
    max_messages: int = Field(500, ge=1, validation_alias="CHATRELAY_MAX_MESSAGES")
    max_message_chars: int = Field(100_000, ge=1, validation_alias="CHATRELAY_MAX_MESSAGE_CHARS")
    max_total_chars: int = Field(400_000, ge=1, validation_alias="CHATRELAY_MAX_TOTAL_CHARS")
    max_image_bytes: int = Field(5_242_880, ge=1, validation_alias="CHATRELAY_MAX_IMAGE_BYTES")
    max_body_bytes: int = Field(1_048_576, ge=1024, validation_alias="CHATRELAY_MAX_BODY_BYTES")
    max_tokens_limit: int = Field(64_000, ge=1, validation_alias="CHATRELAY_MAX_TOKENS_LIMIT")

    # --- stream timing ----------------------------------------------------------------------
    heartbeat_s: float = Field(15.0, gt=0, validation_alias="CHATRELAY_HEARTBEAT_S")
    connect_timeout_s: float = Field(5.0, gt=0, validation_alias="CHATRELAY_CONNECT_TIMEOUT_S")
    first_token_timeout_s: float = Field(
        60.0, gt=0, validation_alias="CHATRELAY_FIRST_TOKEN_TIMEOUT_S"
    )
    # Longest silence tolerated from the upstream once it has started sending text.
    read_timeout_s: float = Field(120.0, gt=0, validation_alias="CHATRELAY_READ_TIMEOUT_S")
    max_retries: int = Field(2, ge=0, le=10, validation_alias="CHATRELAY_MAX_RETRIES")
    retry_base_s: float = Field(0.5, ge=0, validation_alias="CHATRELAY_RETRY_BASE_S")
    # The SDK would sleep for any retry-after an upstream sends; we never wait longer than this.
    retry_after_cap_s: float = Field(20.0, ge=0, validation_alias="CHATRELAY_RETRY_AFTER_CAP_S")

    @field_validator("auth", "trusted_proxies", mode="before")
    @classmethod
    def _split_list(cls, value: object) -> object:
        if isinstance(value, str):
            return [item.strip() for item in value.split(",") if item.strip()]
        return value

    @field_validator("auth")
    @classmethod
    def _known_modes(cls, modes: list[str] | None) -> list[str] | None:
        if modes is None:
            return None
        unknown = set(modes) - {"api_key", "jwt", "anonymous", "none"}
        if unknown:
            raise ValueError(
                f"unknown mode(s) {', '.join(sorted(unknown))}: use api_key, jwt, anonymous or none"
            )
        if "none" in modes and len(modes) > 1:
            raise ValueError("`none` cannot be combined with other modes")
        return modes

    @field_validator("cors_origins", mode="before")
    @classmethod
    def _split_origins(cls, value: object) -> object:
        if isinstance(value, str):
            return [origin.strip() for origin in value.split(",") if origin.strip()]
        return value

    @field_validator("anthropic_api_key", "openai_api_key", mode="before")
    @classmethod
    def _blank_key_is_none(cls, value: object) -> object:
        return None if isinstance(value, str) and not value.strip() else value

    def check(self) -> None:
        """Raise `ConfigError` for settings the server cannot run with."""
        if self.models_file is not None:
            return  # the models file names providers and keys per alias
        if self.provider == "anthropic" and self.anthropic_api_key is None:
            raise ConfigError(
                "CHATRELAY_PROVIDER=anthropic needs ANTHROPIC_API_KEY: set the key, or set"
                " CHATRELAY_PROVIDER=mock (or auto) to serve the built-in mock provider"
            )
        if self.provider_name == "openai":
            if self.openai_api_key is None and self.openai_base_url is None:
                raise ConfigError(
                    "CHATRELAY_PROVIDER=openai needs OPENAI_API_KEY, or OPENAI_BASE_URL for a"
                    " local server that needs no key"
                )
            if self.openai_base_url is not None and not self.model:
                raise ConfigError(
                    "OPENAI_BASE_URL is set: also set CHATRELAY_MODEL to the model id that"
                    " server serves (for example llama3.2)"
                )

    @property
    def provider_name(self) -> Literal["anthropic", "openai", "mock"]:
        """The provider that is live without a models file: `auto` picks by the keys set."""
        if self.provider != "auto":
            return self.provider
        if self.anthropic_api_key:
            return "anthropic"
        if self.openai_api_key:
            return "openai"
        return "mock"

    @property
    def default_model(self) -> str:
        if self.model:
            return self.model
        return {
            "anthropic": DEFAULT_ANTHROPIC_MODEL,
            "openai": DEFAULT_OPENAI_MODEL,
            "mock": MOCK_MODEL,
        }[self.provider_name]

    def secrets(self, names: Iterable[str]) -> dict[str, SecretStr]:
        """The named variables that are set (the models file's `api_key_env` keys), exactly as
        named: the process environment over `.env`, the order of the fields above."""
        wanted = set(names)
        found: dict[str, str] = {}
        if wanted and Path(ENV_FILE).is_file():
            from dotenv import dotenv_values

            found.update(
                (k, v) for k, v in dotenv_values(ENV_FILE).items() if k in wanted and v is not None
            )
        found.update((k, v) for k, v in os.environ.items() if k in wanted)
        return {name: SecretStr(value) for name, value in found.items()}

    def proxy_configured(self) -> bool:
        """Whether the process environment names an HTTP proxy (only the SDKs' own `httpx`
        transport speaks them, and it reads them from there, not from `.env`)."""
        return any(os.environ.get(name) or os.environ.get(name.upper()) for name in PROXY_VARIABLES)

    def otel_variables(self) -> dict[str, str]:
        """The `OTEL_*` variables of the process environment, which say whether to trace (the
        OpenTelemetry SDK reads the rest of its configuration from there itself)."""
        return {k: v for k, v in os.environ.items() if k.startswith("OTEL_")}

    def allowed_origins(self, only_mock: bool) -> list[str]:
        """CORS origins; any origin only while nothing but the (free) mock provider is live."""
        if self.cors_origins is not None:
            return self.cors_origins
        return ["*"] if only_mock else []
