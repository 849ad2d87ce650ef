"""What the app's lifespan builds, for the routes and middleware to use: one typed object.

`app.py`'s lifespan creates every client, engine and pool, and sets `app.state.services`
once; handlers read it through `services(request)` (typed), never an `app.state` attribute of
their own.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from starlette.requests import HTTPConnection

if TYPE_CHECKING:
    from redis.asyncio import Redis

    from .auth import Authenticator
    from .chat import ChatService
    from .keys import ApiKeys
    from .metrics import Metrics
    from .quotas import Quotas
    from .routes.health import UpstreamProbe
    from .settings import Settings
    from .store import Store
    from .streams import StreamHub


@dataclass(frozen=True, slots=True)
class Services:
    settings: Settings
    chat: ChatService
    streams: StreamHub
    store: Store
    keys: ApiKeys
    quotas: Quotas
    metrics: Metrics
    auth: Authenticator
    redis: Redis | None
    tracer: Any  # an OpenTelemetry tracer, or None when tracing is off
    upstream_probe: UpstreamProbe  # /readyz?probe=upstream


def services(connection: HTTPConnection) -> Services:
    """The app's services (a request's or a WebSocket's)."""
    found: Services = connection.app.state.services
    return found
