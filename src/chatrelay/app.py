"""The ASGI application: settings, lifespan-owned clients, routes and error mapping."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException
from starlette.types import Receive, Scope, Send

from . import __version__, openapi, tracing
from .auth import AccessMiddleware, Authenticator, access_modes
from .chat import ChatService, InputLimits
from .context import request_id
from .conversations import Conversations
from .db import create_engine, upgrade
from .errors import ChatRelayError, InternalError, InvalidField, LimitExceeded
from .eventlogs.factory import instance_id, open_event_log
from .jwks import JwksKeys
from .keys import ApiKeys
from .leases import DatabaseLeases, RedisLeases
from .logs import hide_secrets
from .metrics import Metrics
from .models import models_config
from .outages import storage_outage
from .prices import Prices
from .quotas import Limits, MemoryCounters, Quotas, RedisCounters
from .relay import Relay, RetryPolicy
from .routes import chat, conversations, health, me, messages, openai, page, responses, streams
from .routes.errors import error_response_for, framework_error
from .routing import Router
from .schemas import problems_from
from .services import Services, services
from .settings import Settings
from .sse import RAW_SEND
from .store import Store
from .streams import StreamHub

log = logging.getLogger("chatrelay")


class ChatRelayApp(FastAPI):
    """FastAPI, plus the server's own `send` in the scope for the streaming hot path.

    Every ASGI message goes through three `send` wrappers (the error middleware's, the
    access middleware's, the exception handler's) that only look at the response start. A
    stream's body messages, one per delta, skip them: `EventStreamResponse` sends its start
    through the stack as usual and its body through this.
    """

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        scope[RAW_SEND] = send
        await super().__call__(scope, receive, send)


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the app; the settings are read from the environment here unless given."""
    settings = settings or Settings()
    settings.check()
    # Everything that can be wrong with the configuration is found now, before listening.
    models = models_config(settings)
    prices = Prices.packaged()  # the default prices (prices.toml), read now, not at import
    hide_secrets(*models.keys.values())
    if settings.jwt_secret is not None:
        hide_secrets(settings.jwt_secret.get_secret_value())
    if settings.metrics_token:
        hide_secrets(settings.metrics_token.get_secret_value())
    only_mock = all(spec.provider == "mock" for spec in models.specs.values())
    modes = access_modes(
        settings.auth,
        paid=not only_mock,
        jwt_configured=bool(settings.jwt_secret or settings.jwt_jwks_url),
    )
    limits = {
        kind: Limits.parse(getattr(settings, f"limits_{kind}"), f"CHATRELAY_LIMITS_{kind.upper()}")
        for kind in ("api_key", "user", "anonymous", "public")
    }

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with AsyncExitStack() as stack:
            engine = create_engine(settings.database_url, settings.db_pool_size)
            store = Store(engine, settings.conversation_lock_s)
            # Last out: waits for the writes in flight, then disposes of the engine.
            stack.push_async_callback(store.close)
            await upgrade(engine)
            keys = ApiKeys(engine, settings.key_cache_s)
            redis = None
            if settings.redis_url is not None:
                # Only when used: each import costs memory.
                from redis.asyncio import BlockingConnectionPool, Redis

                # A reader on another instance holds a connection while it blocks on XREAD:
                # past the cap, callers wait for one (up to 5 s) instead of failing at once.
                pool = BlockingConnectionPool.from_url(
                    settings.redis_url.get_secret_value(),
                    max_connections=settings.redis_max_connections,
                    timeout=5,
                    health_check_interval=30,
                )
                redis = Redis.from_pool(pool)  # owns it: aclose() closes its connections
                stack.push_async_callback(redis.aclose)
                # Not pinged: an instance may start before Redis. Until Redis answers, /readyz
                # is 503 and what needs Redis is 503 storage_unavailable; the event log's loops
                # (lease, Stop channel, copier) take over once it does, logging the outage once.
            instance = instance_id()
            counters: MemoryCounters | RedisCounters = MemoryCounters()
            if redis is not None:
                # A dead instance's stream slots go with its lease (eventlogs/redis.py).
                leases_at = f"{settings.redis_prefix}:i:"
                counters = RedisCounters(redis, instance=instance, lease_prefix=leases_at)
            quotas = Quotas(counters, settings.redis_prefix, settings.conversation_lock_s)

            router = Router.build(models, settings)
            stack.push_async_callback(router.aclose)
            hub = StreamHub(
                open_event_log(settings, instance, redis),
                grace_s=settings.resume_grace_s,
                instance=instance,
            )
            await hub.start()
            stack.push_async_callback(hub.close)
            # The lease this instance's conversation locks carry (leases.py).
            leases: RedisLeases | DatabaseLeases
            if redis is not None:
                leases = RedisLeases(
                    redis,
                    prefix=settings.redis_prefix,
                    instance=instance,
                    name=settings.instance_name,
                )
            else:
                leases = DatabaseLeases(store, instance=instance, name=settings.instance_name)
            await leases.start()
            stack.push_async_callback(leases.close)
            store.leases = leases
            conversations = Conversations(
                store, settings.history_budget_tokens, reply_retry_s=settings.reply_retry_s
            )
            stack.push_async_callback(conversations.close)
            metrics = Metrics(active_streams=lambda: hub.running)
            exporter = getattr(app.state, "span_exporter", None)  # tests trace to memory
            tracer = tracing.setup(settings.otel_variables(), exporter)
            relay = Relay(
                first_token_timeout_s=settings.first_token_timeout_s,
                retry=RetryPolicy(
                    max_retries=settings.max_retries,
                    base_s=settings.retry_base_s,
                    retry_after_cap_s=settings.retry_after_cap_s,
                ),
                metrics=metrics,
                tracer=tracer,
            )

            jwks = None
            if settings.jwt_jwks_url and "jwt" in modes:
                jwks = JwksKeys(
                    settings.jwt_jwks_url,
                    timeout_s=settings.jwks_timeout_s,
                    refresh_s=settings.jwks_refresh_s,
                    cooldown_s=settings.jwks_cooldown_s,
                )
                await jwks.start()
                stack.push_async_callback(jwks.close)
            auth = Authenticator(
                modes,
                keys=keys,
                limits=limits,
                jwt_secret=settings.jwt_secret.get_secret_value() if settings.jwt_secret else None,
                jwks=jwks,
                issuer=settings.jwt_issuer,
                audience=settings.jwt_audience,
                leeway_s=settings.jwt_leeway_s,
                trusted_proxies=settings.trusted_proxies,
                metrics_token=(
                    settings.metrics_token.get_secret_value() if settings.metrics_token else None
                ),
            )
            chat_service = ChatService(
                router,
                relay,
                InputLimits.from_settings(settings),
                conversations,
                quotas,
                metrics,
                hub,
                prices,
            )
            app.state.services = Services(
                settings=settings,
                chat=chat_service,
                streams=hub,
                store=store,
                keys=keys,
                quotas=quotas,
                metrics=metrics,
                auth=auth,
                redis=redis,
                tracer=tracer,
                upstream_probe=health.UpstreamProbe(),
            )
            log.info(
                "chatrelay %s serving %s (models: %s; auth: %s; instance %s)",
                __version__,
                router.describe(),
                ", ".join(router.aliases),
                ",".join(sorted(modes)),
                instance,
            )
            try:
                yield
            finally:
                await hub.drain(0)  # the CLI's server drains with a grace period before this

    app = ChatRelayApp(
        title="chatrelay",
        version=__version__,
        lifespan=lifespan,
        # FastAPI's own OpenTelemetry instrumentation would start whenever something sets a
        # global provider, doubling tracing.py's spans; off, it also stops looking the three
        # providers up on every request (~2% of a burst's set-up CPU).
        telemetry={"tracing": False, "metrics": False, "logs": False},
        docs_url="/docs" if settings.api_docs else None,
        redoc_url="/redoc" if settings.api_docs else None,
        openapi_url="/openapi.json" if settings.api_docs else None,
    )
    app.include_router(chat.router)
    app.include_router(streams.router)
    app.include_router(openai.router)
    app.include_router(messages.router)
    app.include_router(responses.router)
    app.include_router(conversations.router)
    app.include_router(me.router)
    app.include_router(health.router)
    app.include_router(page.router)
    app.mount("/static", page.static_files(), name="static")
    # Outermost first: CORS answers preflights before access checks run.
    app.add_middleware(AccessMiddleware)
    if origins := settings.allowed_origins(only_mock):
        app.add_middleware(
            CORSMiddleware,
            allow_origins=origins,
            allow_methods=["GET", "POST", "PATCH", "DELETE", "OPTIONS"],
            allow_headers=["*"],
            expose_headers=["X-Stream-ID", "X-Conversation-ID", "X-Request-ID", "Retry-After"],
            max_age=600,
        )
    _install_error_handlers(app)
    openapi.install(app)
    return app


def _install_error_handlers(app: FastAPI) -> None:
    def respond(request: Request, exc: ChatRelayError) -> JSONResponse:
        return error_response_for(request.url.path, exc)

    @app.exception_handler(ChatRelayError)
    async def relay_error(request: Request, exc: ChatRelayError) -> JSONResponse:
        if isinstance(exc, LimitExceeded):
            services(request).metrics.limited(exc.limit_name)
        return respond(request, exc)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        # Starlette's last resort (outside every middleware): JSON, never its plain-text 500.
        # (Outages are answered 503 by AccessMiddleware; Starlette logs this one's traceback.)
        response = respond(request, storage_outage(exc) or InternalError())
        if (rid := request_id.get()) is not None:
            response.headers["x-request-id"] = rid
        return response

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        return respond(request, InvalidField(problems_from(exc.errors())))

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        return respond(request, framework_error(exc))
