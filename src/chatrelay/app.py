"""The ASGI application: settings, lifespan-owned clients, routes and error mapping."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from . import __version__
from .chat import ChatService
from .conversations import Conversations
from .db import create_engine, upgrade
from .errors import ChatRelayError, InvalidField, RequestError
from .eventlogs.factory import instance_id, open_event_log
from .logs import hide_secrets
from .models import models_config
from .relay import Relay, RetryPolicy
from .routes import chat, conversations, health, openai, streams
from .routes.errors import error_response, openai_error_response
from .routing import Router
from .schemas import problems_from
from .settings import Settings
from .store import Store
from .streams import StreamHub

log = logging.getLogger("chatrelay")


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the app; the settings are read from the environment here unless given."""
    settings = settings or Settings()
    settings.check()
    # Read the models file now, so a bad one stops the server before it listens.
    models = models_config(settings)
    hide_secrets(*models.keys.values())
    only_mock = all(spec.provider == "mock" for spec in models.specs.values())

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        engine = create_engine(settings.database_url, settings.db_pool_size)
        await upgrade(engine)
        store = Store(engine, settings.conversation_lock_s)
        app.state.store = store
        router = Router.build(models, settings)
        relay = Relay(
            first_token_timeout_s=settings.first_token_timeout_s,
            retry=RetryPolicy(
                max_retries=settings.max_retries,
                base_s=settings.retry_base_s,
                retry_after_cap_s=settings.retry_after_cap_s,
            ),
        )
        app.state.chat = ChatService(
            router,
            relay,
            settings.max_tokens_limit,
            Conversations(store, settings.history_budget_tokens),
        )
        log.info(
            "chatrelay %s serving %s (models: %s)",
            __version__,
            router.describe(),
            ", ".join(router.aliases),
        )
        instance = instance_id()
        hub = StreamHub(
            await open_event_log(settings, instance),
            grace_s=settings.resume_grace_s,
            instance=instance,
        )
        await hub.start()
        app.state.streams = hub
        try:
            yield
        finally:
            await hub.drain(0)  # the CLI's server drains with a grace period before this
            await hub.close()
            await router.aclose()
            await store.close()

    app = FastAPI(title="chatrelay", version=__version__, lifespan=lifespan)
    app.state.settings = settings
    app.include_router(chat.router)
    app.include_router(streams.router)
    app.include_router(openai.router)
    app.include_router(conversations.router)
    app.include_router(health.router)
    if origins := settings.allowed_origins(only_mock):
        app.add_middleware(
            CORSMiddleware,
            allow_origins=origins,
            allow_methods=["GET", "POST", "PATCH", "DELETE", "OPTIONS"],
            allow_headers=["*"],
            expose_headers=["X-Stream-ID", "X-Conversation-ID"],
            max_age=600,
        )
    _install_error_handlers(app)
    return app


def _install_error_handlers(app: FastAPI) -> None:
    def respond(request: Request, exc: ChatRelayError) -> JSONResponse:
        if request.url.path.startswith("/v1/"):
            return openai_error_response(exc)
        return error_response(exc)

    @app.exception_handler(ChatRelayError)
    async def relay_error(request: Request, exc: ChatRelayError) -> JSONResponse:
        return respond(request, exc)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        return respond(request, InvalidField(problems_from(exc.errors())))

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        error = RequestError(str(exc.detail))
        error.code, error.status = code, exc.status_code
        response = respond(request, error)
        response.headers.update(exc.headers or {})
        return response
