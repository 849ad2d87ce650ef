"""Model providers. Only the configured provider's SDK is imported (each costs memory)."""

from __future__ import annotations

from ..settings import Settings
from .base import ChatParams, Provider

__all__ = ["ChatParams", "Provider", "build_provider"]


def build_provider(settings: Settings) -> Provider:
    """Create the live provider (and its client) from the settings."""
    name = settings.provider_name
    if name == "mock":
        from .mock import MockProvider

        return MockProvider(delay_s=settings.mock_delay_s)
    settings.check()
    assert settings.anthropic_api_key is not None
    from .anthropic import AnthropicProvider

    return AnthropicProvider.from_settings(
        api_key=settings.anthropic_api_key.get_secret_value(),
        base_url=settings.anthropic_base_url,
        connect_timeout=settings.connect_timeout_s,
        # The relay enforces the first-token timeout itself; the SDK's read timeout must not
        # fire before it.
        read_timeout=max(settings.read_timeout_s, settings.first_token_timeout_s),
        max_connections=settings.max_connections,
        temperature=settings.send_temperature,
    )
