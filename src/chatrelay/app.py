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
from .errors import ChatRelayError, InvalidField
from .providers import build_provider
from .relay import Relay, RetryPolicy
from .routes import chat, health
from .schemas import problems_from
from .settings import Settings

log = logging.getLogger("chatrelay")


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the app; the settings are read from the environment here unless given."""
    settings = settings or Settings()
    settings.check()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        provider = build_provider(settings)
        relay = Relay(
            provider,
            first_token_timeout_s=settings.first_token_timeout_s,
            retry=RetryPolicy(
                max_retries=settings.max_retries,
                base_s=settings.retry_base_s,
                retry_after_cap_s=settings.retry_after_cap_s,
            ),
        )
        app.state.chat = ChatService(relay, settings.default_model, settings.max_tokens_limit)
        log.info(
            "chatrelay %s serving provider=%s model=%s",
            __version__,
            provider.name,
            settings.default_model,
            extra={"provider": provider.name, "model": settings.default_model},
        )
        try:
            yield
        finally:
            await provider.aclose()

    app = FastAPI(title="chatrelay", version=__version__, lifespan=lifespan)
    app.state.settings = settings
    app.include_router(chat.router)
    app.include_router(health.router)
    if settings.allowed_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.allowed_origins,
            allow_methods=["GET", "POST", "OPTIONS"],
            allow_headers=["*"],
            expose_headers=["X-Stream-ID", "X-Conversation-ID"],
            max_age=600,
        )
    _install_error_handlers(app)
    return app


def error_body(code: str, message: str, **extra: object) -> dict[str, object]:
    return {"error": {"code": code, "message": message, **extra}}


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ChatRelayError)
    async def relay_error(request: Request, exc: ChatRelayError) -> JSONResponse:
        extra: dict[str, object] = {}
        if isinstance(exc, InvalidField):
            extra["fields"] = [{"field": p.field, "message": p.message} for p in exc.problems]
        return JSONResponse(error_body(exc.code, exc.message, **extra), status_code=exc.status)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        error = InvalidField(problems_from(exc.errors()))
        return await relay_error(request, error)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return JSONResponse(
            error_body(code, str(exc.detail)), status_code=exc.status_code, headers=exc.headers
        )
