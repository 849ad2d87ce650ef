"""Named models: which alias goes to which provider, upstream model and key, and what to try
when it fails.

The aliases come from a models file (TOML, `CHATRELAY_MODELS_FILE`) or, without one, from the
environment: the provider it selects serves `CHATRELAY_MODEL` as the single default alias. The
mock provider is always reachable as the alias `mock` (unless the file defines that name).

    default = "claude"

    [models.claude]
    provider = "anthropic"
    model = "claude-sonnet-5-5"
    fallbacks = ["local"]

    [models.local]
    provider = "openai"
    model = "llama3.2"
    base_url = "http://127.0.0.1:11434/v1"
    price = { input = 0, output = 0 }   # USD per million tokens (prices.py)

An alias with `*`, `?` or `[` in it is a pattern (an `fnmatch` glob, case-sensitive) that
serves every id it matches, sending the requested id upstream unless it names a `model`:

    [models."claude-*"]
    provider = "anthropic"
    fallbacks = ["local"]

An exact alias wins over the patterns; among patterns the first in the file that matches
does. A pattern cannot be the default or a fallback.

Keys are never written in the file: `api_key_env` names the environment variable that holds
one. An alias whose key is missing is reported at startup and refused at request time; the
other aliases keep serving.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, model_validator

from . import catalog
from .errors import ConfigError
from .prices import Price
from .settings import Settings

ProviderKind = Literal["anthropic", "openai", "mock"]
DEFAULT_KEY_ENV = {"anthropic": "ANTHROPIC_API_KEY", "openai": "OPENAI_API_KEY"}
# Local OpenAI-compatible servers (Ollama, vLLM, llama.cpp) need no key, but the SDK insists
# on a non-empty one.
PLACEHOLDER_KEY = "not-needed"
PATTERN_CHARACTERS = frozenset("*?[")


def is_pattern(name: str) -> bool:
    """Whether a models-file name is a pattern (an fnmatch glob) rather than an exact alias."""
    return not PATTERN_CHARACTERS.isdisjoint(name)


@dataclass(frozen=True, slots=True)
class ModelSpec:
    """One alias: where it goes and what it accepts.

    A pattern entry is kept with its pattern as `alias` and `model` empty unless the file
    names one; the id it serves gets its own spec from `serving`, with `pattern` set.
    """

    alias: str
    provider: ProviderKind
    model: str
    base_url: str | None = None
    api_key_env: str | None = None
    max_tokens: int | None = None
    max_tokens_cap: int | None = None  # the most a request may ask of this model
    temperature: bool | None = None  # accepts sampling parameters; None: catalog.py says
    vision: bool | None = None  # accepts images; None: catalog.py says
    # Prompt caching (Anthropic): breakpoints placed automatically, or none; and their TTL.
    cache: Literal["auto", "off"] = "auto"
    cache_ttl: Literal["5m", "1h"] = "5m"
    fallbacks: tuple[str, ...] = ()
    pattern: str | None = None  # the pattern entry that serves this id; None: an exact alias
    price: Price | None = None  # its own, per million tokens; None: prices.toml says, or unknown

    @property
    def entry(self) -> str:
        """The models-file entry that serves this spec: bounded, for metrics labels."""
        return self.pattern or self.alias

    def serving(self, requested: str) -> ModelSpec:
        """The spec for an id this pattern entry matched: the id is the alias and, unless the
        entry names a model, the upstream model too (so the catalog answers for it)."""
        return replace(self, alias=requested, model=self.model or requested, pattern=self.alias)

    @property
    def accepts_sampling(self) -> bool:
        if self.temperature is not None:
            return self.temperature
        if self.provider == "mock":
            return True
        return catalog.accepts_sampling(self.provider, self.model)

    @property
    def accepts_images(self) -> bool:
        if self.vision is not None:
            return self.vision
        if self.provider == "mock":
            return True
        return catalog.accepts_images(self.provider, self.model)


class _FilePrice(BaseModel):
    """US dollars per million tokens; cache prices left out bill the cache at `input`."""

    model_config = ConfigDict(extra="forbid")

    input: float = Field(ge=0, allow_inf_nan=False)
    output: float = Field(ge=0, allow_inf_nan=False)
    cache_write: float | None = Field(None, ge=0, allow_inf_nan=False)
    cache_read: float | None = Field(None, ge=0, allow_inf_nan=False)


class _FileModel(BaseModel):
    model_config = ConfigDict(extra="forbid")

    provider: ProviderKind
    model: str | None = Field(None, min_length=1)  # required for an exact alias
    base_url: str | None = Field(None, pattern=r"^https?://")
    api_key_env: str | None = Field(None, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    max_tokens: int | None = Field(None, ge=1)
    max_tokens_cap: int | None = Field(None, ge=1)
    temperature: bool | None = None
    vision: bool | None = None
    cache: Literal["auto", "off"] = "auto"
    cache_ttl: Literal["5m", "1h"] = "5m"
    fallbacks: list[str] = Field(default_factory=list)
    price: _FilePrice | None = None


class _File(BaseModel):
    model_config = ConfigDict(extra="forbid")

    default: str | None = None
    models: dict[str, _FileModel] = Field(min_length=1)

    @model_validator(mode="after")
    def _references_exist(self) -> _File:
        if self.default is not None and self.default not in self.models:
            raise ValueError(f"default {self.default!r} is not a model defined in [models]")
        for alias, spec in self.models.items():
            for name in spec.fallbacks:
                if name not in self.models:
                    raise ValueError(f"models.{alias}.fallbacks: {name!r} is not a defined model")
                if name == alias:
                    raise ValueError(
                        f"models.{alias}.fallbacks: a model cannot fall back to itself"
                    )
        return self


@dataclass(slots=True)
class ModelsConfig:
    """The aliases (patterns among them, in file order), the default one, and the aliases that
    cannot serve (with the reason)."""

    specs: dict[str, ModelSpec]
    default: str
    keys: dict[str, str] = field(default_factory=dict)  # alias -> API key
    unavailable: dict[str, str] = field(default_factory=dict)  # alias -> why

    @property
    def exact(self) -> list[str]:
        return [alias for alias in self.specs if not is_pattern(alias)]

    @property
    def patterns(self) -> list[str]:
        return [alias for alias in self.specs if is_pattern(alias)]

    def find(self, requested: str) -> ModelSpec | None:
        """The entry that serves `requested`: its exact alias, else the first pattern in file
        order that matches it (case-sensitive)."""
        spec = self.specs.get(requested)
        if spec is not None and not is_pattern(requested):
            return spec
        return next(
            (self.specs[p] for p in self.patterns if fnmatchcase(requested, p)),
            None,
        )


def load_models_file(path: Path) -> tuple[dict[str, ModelSpec], str | None]:
    """Parse a models file; errors name the file and the line."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"CHATRELAY_MODELS_FILE: cannot read {path}: {exc.strerror}") from None
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        message = str(exc)
        if "end of document" in message:  # tomllib gives no line for this case
            message = message.replace(
                "end of document", f"end of document, line {len(text.splitlines())}"
            )
        raise ConfigError(f"{path}: {message}") from None
    try:
        parsed = _File.model_validate(raw)
    except ValidationError as exc:
        error = exc.errors(include_url=False)[0]
        loc = [str(part) for part in error["loc"]]
        where = ".".join(loc) or "file"
        line = _line_of(text, loc)
        at = f" line {line}" if line else ""
        raise ConfigError(f"{path}{at}: {where}: {error['msg']}") from None
    problem = _pattern_problem(parsed)
    if problem is not None:
        loc, message = problem
        line = _line_of(text, loc)
        at = f" line {line}" if line else ""
        where = ".".join(f'"{part}"' if is_pattern(part) else part for part in loc)
        raise ConfigError(f"{path}{at}: {where}: {message}")
    specs = {
        alias: ModelSpec(
            alias=alias,
            provider=entry.provider,
            model=entry.model or "",
            base_url=entry.base_url,
            api_key_env=entry.api_key_env,
            max_tokens=entry.max_tokens,
            max_tokens_cap=entry.max_tokens_cap,
            temperature=entry.temperature,
            vision=entry.vision,
            cache=entry.cache,
            cache_ttl=entry.cache_ttl,
            fallbacks=tuple(entry.fallbacks),
            price=Price(
                entry.price.input,
                entry.price.output,
                entry.price.cache_write,
                entry.price.cache_read,
            )
            if entry.price is not None
            else None,
        )
        for alias, entry in parsed.models.items()
    }
    return specs, parsed.default


def _pattern_problem(parsed: _File) -> tuple[list[str], str] | None:
    """What is wrong with the file's use of patterns, and where: a pattern may leave out
    `model` but not name a pattern there, and neither `default` nor a fallback is a pattern."""
    if parsed.default is not None and is_pattern(parsed.default):
        return ["default"], f"{parsed.default!r} is a pattern; the default must be an exact alias"
    if all(is_pattern(alias) for alias in parsed.models):
        return ["models"], "only patterns: the file needs an exact alias to be the default"
    for alias, entry in parsed.models.items():
        where = ["models", alias, "model"]
        if entry.model is None and not is_pattern(alias):
            return where, "required for an exact alias (only a pattern may leave it out)"
        if entry.model is not None and is_pattern(alias) and is_pattern(entry.model):
            why = "a pattern's model is one upstream id"
            return where, f"{entry.model!r} contains *, ? or [: {why}"
        for name in entry.fallbacks:
            if is_pattern(name):
                why = "fallbacks must be exact aliases"
                return ["models", alias, "fallbacks"], f"{name!r} is a pattern; {why}"
    return None


def _line_of(text: str, loc: list[str]) -> int | None:
    """The line of `[models.<alias>]` or of a key inside it: where a person should look."""
    lines = text.splitlines()
    if len(loc) >= 2 and loc[0] == "models":
        header = re.compile(rf"^\s*\[\s*models\.[\"']?{re.escape(loc[1])}[\"']?\s*\]")
        start = next((i for i, line in enumerate(lines) if header.match(line)), None)
        if start is None:
            return None
        if len(loc) >= 3:
            key = re.compile(rf"^\s*{re.escape(loc[2])}\s*=")
            for i in range(start + 1, len(lines)):
                if lines[i].lstrip().startswith("["):
                    break
                if key.match(lines[i]):
                    return i + 1
        return start + 1
    if loc:
        key = re.compile(rf"^\s*{re.escape(loc[0])}\s*=")
        return next((i + 1 for i, line in enumerate(lines) if key.match(line)), None)
    return None


def key_variables(config: ModelsConfig) -> set[str]:
    """The names of the variables that hold the aliases' keys."""
    return {
        spec.api_key_env or DEFAULT_KEY_ENV[spec.provider]
        for spec in config.specs.values()
        if spec.provider != "mock"
    }


def resolve_keys(config: ModelsConfig, env: Mapping[str, SecretStr]) -> None:
    """Find each alias's key in `env`; an alias without one becomes unavailable."""
    for alias, spec in config.specs.items():
        if spec.provider == "mock":
            continue
        name = spec.api_key_env or DEFAULT_KEY_ENV[spec.provider]
        value = env.get(name)
        key = value.get_secret_value().strip() if value is not None else ""
        if key:
            config.keys[alias] = key
        elif spec.provider == "openai" and spec.api_key_env is None and spec.base_url:
            config.keys[alias] = PLACEHOLDER_KEY  # a local server
        else:
            config.unavailable[alias] = f"its API key variable {name} is not set"


def models_config(settings: Settings) -> ModelsConfig:
    """The aliases from the models file, or the single default alias the environment selects."""
    if settings.models_file is not None:
        specs, default = load_models_file(settings.models_file)
        exact = next(alias for alias in specs if not is_pattern(alias))  # the file has one
        config = ModelsConfig(specs, default or exact)
        resolve_keys(config, settings.secrets(key_variables(config)))
    else:
        kind = settings.provider_name
        policy = {"auto": None, "always": True, "never": False}[settings.send_temperature]
        base_url = {"anthropic": settings.anthropic_base_url, "openai": settings.openai_base_url}
        alias = settings.default_model
        spec = ModelSpec(alias, kind, alias, base_url=base_url.get(kind), temperature=policy)
        config = ModelsConfig({alias: spec}, alias)
        secret = {"anthropic": settings.anthropic_api_key, "openai": settings.openai_api_key}
        if kind != "mock":
            key = secret[kind]
            config.keys[alias] = key.get_secret_value() if key else PLACEHOLDER_KEY
    if "mock" not in config.specs:
        config.specs["mock"] = ModelSpec("mock", "mock", "mock")
    return config
