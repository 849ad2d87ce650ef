"""Model providers. Only the SDKs of providers in use are imported (each costs memory)."""

from __future__ import annotations

from ..models import ModelSpec
from ..settings import Settings
from .base import ChatParams, Provider

__all__ = ["ChatParams", "Provider", "create_provider"]


def create_provider(spec: ModelSpec, api_key: str | None, settings: Settings) -> Provider:
    """A provider (with its own client and connection pool) for one alias's upstream."""
    if spec.provider == "mock":
        from .mock import MockProvider

        return MockProvider(delay_s=settings.mock_delay_s)
    assert api_key is not None
    from .sdk import ClientOptions

    options = ClientOptions(
        connect_timeout=settings.connect_timeout_s,
        # The relay enforces the first-token timeout itself; the SDK's read timeout must not
        # fire before it.
        read_timeout=max(settings.read_timeout_s, settings.first_token_timeout_s),
        max_connections=settings.max_connections,
        transport=settings.upstream_transport,
        proxied=settings.proxy_configured(),
    )
    if spec.provider == "anthropic":
        from .anthropic import AnthropicProvider

        return AnthropicProvider.create(api_key=api_key, base_url=spec.base_url, options=options)
    from .openai import OpenAIProvider

    return OpenAIProvider.create(api_key=api_key, base_url=spec.base_url, options=options)
