"""Gateway settings: defaults, then ``laneway.toml``, then ``LANEWAY_*`` environment,
then command-line flags (each overrides the one before).

Every setting is checked here, before anything binds a port, so a bad value
is one clear message and exit code 2 rather than a half-started server.
"""

from __future__ import annotations

import ipaddress
import re
import shutil
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AliasChoices,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from .._errors import ConfigError
from .._types import Limits

__all__ = ["Settings", "SettingsError", "load_settings"]

_TOKEN_NAME = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
_STORE_SCHEMES = ("memory", "sqlite", "postgresql", "postgres")
_ORIGIN = re.compile(r"^https?://[^/\s?#]+$")

Seconds = Annotated[float | None, Field(gt=0)]


class SettingsError(ConfigError):
    """The gateway settings are invalid."""


class Settings(BaseSettings):
    """Everything ``laneway serve`` can be told. Env names are ``LANEWAY_<FIELD>``."""

    model_config = SettingsConfigDict(
        env_prefix="LANEWAY_",
        extra="forbid",
        validate_by_name=True,
        validate_default=True,
        env_parse_none_str="none",
    )

    store: str = Field("sqlite:///laneway.db", description="job store URL")
    host: str = Field("127.0.0.1", description="address to bind")
    port: int = Field(8787, ge=0, le=65535, description="port to bind (0 = any free port)")
    tokens: Annotated[dict[str, SecretStr], NoDecode] = Field(
        default_factory=dict, description="bearer tokens, 'name:secret,name2:secret2'"
    )
    model: Literal["demo", "openai", "echo", "cli"] = Field("demo", description="the model handler")
    openai_base_url: str | None = Field(None, description="OpenAI-compatible endpoint")
    openai_model: str | None = Field(None, description="model name for the openai handler")
    openai_api_key: SecretStr | None = Field(
        None,
        validation_alias=AliasChoices("openai_api_key", "LANEWAY_OPENAI_API_KEY", "OPENAI_API_KEY"),
        description="API key (env OPENAI_API_KEY)",
    )
    cli_command: str | None = Field(
        None, description="agent CLI command line for model 'cli' (message appended or at {text})"
    )
    cli_format: Literal["text", "stream-json"] = Field("text", description="the CLI's output")
    cli_resume_arg: str | None = Field(
        None, description="arguments that resume the CLI's session, e.g. '--resume {session_id}'"
    )
    openai_system_prompt: str | None = Field(
        None, description="system message sent first on every openai turn"
    )
    openai_history: int = Field(
        50, ge=0, description="earlier messages of the session sent with each openai turn"
    )
    llm_lane: int = Field(8, ge=1, description="cap of the shared 'llm' lane (turns at once)")
    session_limit: int = Field(1, ge=1, description="turns at once per session")
    deadline: Seconds = Field(900.0, description="hard cap per attempt, seconds")
    idle: Seconds = Field(300.0, description="max seconds without progress")
    queue_wait: Seconds = Field(None, description="max seconds queued (unset = no limit)")
    cancel_grace: float = Field(5.0, ge=0, description="seconds a cancelled turn may unwind")
    max_attempts: int = Field(3, ge=1, description="attempts per job (retries + 1)")
    shutdown_grace: float = Field(
        30.0, ge=0, allow_inf_nan=False, description="seconds running turns get on SIGTERM"
    )
    max_queued: int = Field(10_000, ge=1, description="queued jobs in all (then 429)")
    max_queued_per_session: int = Field(100, ge=1, description="queued jobs per session")
    max_body_bytes: int = Field(65_536, ge=256, description="largest request body")
    max_text_chars: int = Field(32_000, ge=1, description="longest message text")
    watchdog_threshold: float = Field(1.0, gt=0, description="seconds of loop block = blocked")
    unhealthy_after_block: float = Field(
        10.0, ge=0, description="/healthz fails this long after a loop block"
    )
    heartbeat: float = Field(15.0, gt=0, description="seconds between SSE keep-alive comments")
    max_streams_per_token: int = Field(
        100, ge=1, description="open SSE streams and WebSockets per token (then 429)"
    )
    max_subscriptions: int = Field(100, ge=1, description="subscriptions per WebSocket")
    ws_frames_per_second: float = Field(
        100.0, gt=0, description="frames a WebSocket may send per second (bursts of 2 s)"
    )
    body_timeout: float = Field(
        10.0, gt=0, description="seconds a request body may take to arrive (then 408)"
    )
    max_event_bytes: int = Field(
        1_048_576, ge=1, description="largest event data, as JSON (a larger emit fails)"
    )
    log_level: Literal["debug", "info", "warning", "error"] = Field("info")
    log_format: Literal["text", "json"] = Field(
        "text", description="log lines: text, or one JSON object per line"
    )
    cors_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="origins whose pages may call the API, 'https://a.example,https://b.example'",
    )

    @field_validator("tokens", mode="before")
    @classmethod
    def _parse_tokens(cls, value: Any) -> Any:
        if not isinstance(value, str):
            return value
        tokens: dict[str, str] = {}
        for pair in filter(None, (p.strip() for p in value.split(","))):
            name, sep, secret = pair.partition(":")
            if not sep:
                raise ValueError("tokens must look like 'name:secret,name2:secret2'")
            tokens[name.strip()] = secret.strip()
        return tokens

    @field_validator("tokens")
    @classmethod
    def _check_tokens(cls, value: dict[str, SecretStr]) -> dict[str, SecretStr]:
        secrets: set[str] = set()
        for name, secret in value.items():
            if not _TOKEN_NAME.match(name):
                raise ValueError(f"token name {name!r} must be 1-64 of [A-Za-z0-9._-]")
            raw = secret.get_secret_value()
            if len(raw) < 8:
                raise ValueError(f"the secret of token {name!r} is shorter than 8 characters")
            if raw in secrets:
                raise ValueError("two tokens share a secret")
            secrets.add(raw)
        return value

    @field_validator("cors_origins", mode="before")
    @classmethod
    def _parse_origins(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [o.strip() for o in value.split(",") if o.strip()]
        return value

    @field_validator("cors_origins")
    @classmethod
    def _check_origins(cls, value: list[str]) -> list[str]:
        for origin in value:
            if origin != "*" and not _ORIGIN.match(origin):
                raise ValueError(
                    f"{origin!r} is not an origin: scheme://host[:port], no path (or '*')"
                )
        return value

    @field_validator("store")
    @classmethod
    def _check_store(cls, value: str) -> str:
        scheme, sep, _ = value.partition("://")
        if not sep or scheme.lower() not in _STORE_SCHEMES:
            raise ValueError("must be a URL such as 'sqlite:///laneway.db' or 'memory://'")
        return value

    @model_validator(mode="after")
    def _check_whole(self) -> Settings:
        self.limits()  # raises ConfigError (a ValueError) on nonsense
        if not self.tokens and not _is_loopback(self.host):
            raise ValueError(
                f"refusing to bind {self.host!r} without tokens: anyone who can reach it could "
                "read every session. Set LANEWAY_TOKENS='name:secret' or bind 127.0.0.1"
            )
        if self.model == "openai" and not self.openai_model:
            raise ValueError("model 'openai' needs LANEWAY_OPENAI_MODEL (the model name)")
        if self.model == "cli":
            self._check_cli()
        return self

    def _check_cli(self) -> None:
        if not self.cli_command:
            raise ValueError("model 'cli' needs LANEWAY_CLI_COMMAND (the agent CLI's command line)")
        from ..handlers.cli import CliModel

        model = CliModel(self.cli_command, format=self.cli_format, resume_arg=self.cli_resume_arg)
        if shutil.which(model.command[0]) is None:
            # Found out at start, not as a failed first turn after its retries.
            raise ValueError(f"cli_command: {model.command[0]!r} is not an executable on PATH")

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        toml = settings_cls.model_config.get("toml_file")
        sources: tuple[PydanticBaseSettingsSource, ...] = (init_settings, env_settings)
        if toml is not None:
            sources += (TomlConfigSettingsSource(settings_cls, toml_file=toml),)
        return sources

    def limits(self) -> Limits:
        return Limits(
            deadline=self.deadline,
            idle=self.idle,
            queue_wait=self.queue_wait,
            cancel_grace=self.cancel_grace,
        )

    def secret_of(self) -> dict[str, str]:
        """secret -> token name, for the auth check."""
        return {s.get_secret_value(): name for name, s in self.tokens.items()}


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def load_settings(config: str | Path | None = None, **overrides: Any) -> Settings:
    """Settings from ``config`` (default ``./laneway.toml`` if it exists), the
    environment and ``overrides`` (None values are ignored).

    Raises ``SettingsError`` with one readable message listing every problem.
    """
    path = Path(config) if config is not None else Path("laneway.toml")
    if config is not None and not path.is_file():
        raise SettingsError(f"config file {str(path)!r} does not exist")
    given = {k: v for k, v in overrides.items() if v is not None}

    class _FromFile(Settings):
        model_config = SettingsConfigDict(toml_file=path if path.is_file() else None)

    try:
        return _FromFile(**given)
    except ValidationError as exc:
        raise SettingsError(_describe(exc)) from None
    except ValueError as exc:  # a malformed TOML file
        raise SettingsError(f"cannot read {str(path)!r}: {exc}") from None


def _describe(exc: ValidationError) -> str:
    lines = ["invalid settings:"]
    for err in exc.errors(include_url=False, include_input=False):
        msg = err["msg"].removeprefix("Value error, ")
        if not err["loc"]:
            lines.append(f"  {msg}")
            continue
        field = str(err["loc"][0])
        env = "OPENAI_API_KEY" if field == "openai_api_key" else f"LANEWAY_{field.upper()}"
        lines.append(f"  {field} ({env}): {msg}")
    return "\n".join(lines)
