"""The router: model aliases and patterns -> live providers, with each one's fallback chain."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from .errors import ModelUnavailable, UnknownModel
from .models import ModelsConfig, ModelSpec, is_pattern
from .providers import Provider, create_provider
from .settings import Settings

log = logging.getLogger("chatrelay.routing")


@dataclass(frozen=True, slots=True)
class Target:
    """One model to try: its alias's spec and the provider that serves it."""

    spec: ModelSpec
    provider: Provider


class Router:
    """Knows every alias and hands out the ordered targets for a requested model."""

    def __init__(self, config: ModelsConfig, providers: dict[str, Provider]) -> None:
        self.config = config
        # alias or pattern -> provider (shared between entries where possible); an id a pattern
        # serves uses the pattern's provider, so no client is made per id.
        self._providers = providers

    @classmethod
    def build(cls, config: ModelsConfig, settings: Settings) -> Router:
        """Create the providers (and their clients) for every alias that can serve."""
        shared: dict[tuple[str, str | None, str | None], Provider] = {}
        providers: dict[str, Provider] = {}
        for alias, spec in config.specs.items():
            if alias in config.unavailable:
                log.error("model %r cannot serve: %s", alias, config.unavailable[alias])
                continue
            key = config.keys.get(alias)
            # One client (and connection pool) per upstream and key, whatever the aliases.
            identity = (spec.provider, spec.base_url, key)
            if identity not in shared:
                shared[identity] = create_provider(spec, key, settings)
            providers[alias] = shared[identity]
        return cls(config, providers)

    @property
    def aliases(self) -> list[str]:
        return list(self.config.specs)

    @property
    def default(self) -> str:
        return self.config.default

    def describe(self) -> str:
        spec = self.config.specs[self.default]
        return f"model={self.default} provider={spec.provider}"

    def upstreams(self) -> dict[str, str]:
        """alias -> the base URL its provider sends to, for each alias that can serve over
        the network (the mock has none)."""
        found: dict[str, str] = {}
        for alias, provider in self._providers.items():
            url = getattr(provider, "base_url", None)  # only the network providers have one
            if isinstance(url, str) and url:
                found[alias] = url
        return found

    def targets(self, requested: str | None) -> list[Target]:
        """The requested alias (or the default) first, then its available fallbacks. An id no
        alias names is served by the first pattern that matches it."""
        alias = requested or self.default
        entry = self.config.find(alias)
        if entry is None:
            raise UnknownModel(alias, self.config.exact, self.config.patterns)
        served = is_pattern(entry.alias)
        why = self.config.unavailable.get(entry.alias)
        if why is not None:
            if served:
                why = f"{why} (it is served by the pattern {entry.alias!r})"
            raise ModelUnavailable(alias, why)
        spec = entry.serving(alias) if served else entry
        chain = [Target(spec, self._providers[entry.alias])]
        for name in spec.fallbacks:
            if name in self._providers:
                chain.append(Target(self.config.specs[name], self._providers[name]))
        return chain

    async def aclose(self) -> None:
        for provider in {id(p): p for p in self._providers.values()}.values():
            await provider.aclose()
