"""Access: who the caller is (API key, JWT, anonymous IP, or nobody checks), request ids.

`CHATRELAY_AUTH` lists the accepted modes. A bearer token that looks like one of our keys
(`crk_...`) is checked as an API key; one that looks like a JWT (three dot-separated parts) as
a JWT; with `anonymous` on, a request without a token is an anonymous visitor identified by
its client address (`X-Forwarded-For` is believed only when the connection comes from a
trusted proxy). Failures are 401 with a message that says what to send; the token itself is
never echoed or logged.
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
import re
import time
import uuid
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .context import request_id
from .error_bodies import is_anthropic_path
from .errors import ConfigError, Forbidden, Unauthorized, UnsupportedMediaType
from .jwks import JwksKeys, UnknownSigningKey
from .keys import ApiKeys
from .outages import storage_outage
from .principals import PUBLIC, Principal
from .quotas import Limits
from .routes.errors import error_response_for

if TYPE_CHECKING:
    from .services import Services

log = logging.getLogger("chatrelay.auth")
access_log = logging.getLogger("chatrelay.access")

_GOOD_REQUEST_ID = re.compile(r"\A[A-Za-z0-9._:-]{1,64}\Z")
# Reachable without credentials: health checks, the API description, the chat page.
OPEN_PATHS = ("/healthz", "/readyz", "/docs", "/redoc", "/openapi.json")
# Request volumes, token totals and aliases: for the operator only, unless the server is open.
OPERATOR_PATHS = ("/metrics",)


def access_modes(auth: list[str] | None, *, paid: bool, jwt_configured: bool) -> set[str]:
    """The auth modes to enforce; refuses to start an open server that spends money."""
    if auth is None:
        if paid:
            raise ConfigError(
                "CHATRELAY_AUTH is not set and a paid provider is configured: anyone who finds"
                " this server would spend its credits. Choose one or more of: api_key (create"
                " keys with `chatrelay keys create --name NAME`), jwt (with CHATRELAY_JWT_SECRET"
                " or CHATRELAY_JWT_JWKS_URL), anonymous (limited per client address); or set"
                " CHATRELAY_AUTH=none to serve everyone on purpose"
            )
        return {"none"}
    modes = set(auth)
    if "jwt" in modes and not jwt_configured:
        raise ConfigError(
            "CHATRELAY_AUTH=jwt needs CHATRELAY_JWT_SECRET (HS256) or CHATRELAY_JWT_JWKS_URL"
        )
    if modes == {"none"} and paid:
        log.warning(
            "!!! CHATRELAY_AUTH=none with a paid provider: ANYONE who can reach this server"
            " can spend its provider credits. Limits: CHATRELAY_LIMITS_PUBLIC. !!!"
        )
    return modes


class Authenticator:
    """Turns a request's credentials into a `Principal`."""

    def __init__(
        self,
        modes: set[str],
        *,
        keys: ApiKeys | None,
        limits: dict[str, Limits],
        jwt_secret: str | None = None,
        jwks: JwksKeys | None = None,
        issuer: str | None = None,
        audience: str | None = None,
        leeway_s: float = 60.0,
        trusted_proxies: Iterable[str] = (),
        metrics_token: str | None = None,
    ) -> None:
        self.modes = modes
        self._metrics_token = metrics_token.encode() if metrics_token else None
        self._keys = keys
        self._limits = limits
        self._secret = jwt_secret
        self._jwks = jwks if "jwt" in modes else None
        self._issuer = issuer
        self._audience = audience
        self._leeway = leeway_s
        self._proxies = [ipaddress.ip_network(p.strip(), strict=False) for p in trusted_proxies]

        self.public = Principal(PUBLIC.id, PUBLIC.kind, limits=limits["public"])

    @property
    def open(self) -> bool:
        return self.modes == {"none"}

    def has_metrics_token(self, scope: Scope) -> bool:
        """The request carries `CHATRELAY_METRICS_TOKEN` as its bearer token."""
        token = _bearer(scope)
        return (
            self._metrics_token is not None
            and token is not None
            and hmac.compare_digest(token.encode(), self._metrics_token)
        )

    async def principal(self, scope: Scope) -> Principal:
        if self.open:
            return self.public
        token = _bearer(scope)
        if token is None and is_anthropic_path(scope["path"]):
            # Anthropic's clients send the key as `x-api-key` (older SDKs, curl examples).
            token = (_header(scope, b"x-api-key") or "").strip() or None
        if token is not None:
            if "api_key" in self.modes and token.startswith("crk_"):
                return await self._api_key(token)
            if "jwt" in self.modes and token.count(".") == 2:
                return await self._jwt(token)
            raise Unauthorized("The bearer token is not a valid API key or JWT for this server")
        if "anonymous" in self.modes:
            address = self.client_address(scope)
            return Principal(f"anon:{address}", "anonymous", limits=self._limits["anonymous"])
        if is_anthropic_path(scope["path"]):
            raise Unauthorized("Send your API key as `x-api-key` or `Authorization: Bearer <key>`")
        raise Unauthorized("Send your API key or token as `Authorization: Bearer <token>`")

    async def _api_key(self, token: str) -> Principal:
        assert self._keys is not None
        record = await self._keys.verify(token)
        if record is None:
            raise Unauthorized("This API key is not valid (unknown, or revoked)")
        limits = self._limits["api_key"].override(
            rpm=record.rpm,
            tpm=record.tpm,
            daily_tokens=record.daily_tokens,
            concurrency=record.concurrency,
            daily_usd=record.daily_usd,
            monthly_usd=record.monthly_usd,
        )
        return Principal(f"key:{record.id}", "api_key", record.admin, limits, record.name)

    async def _jwt(self, token: str) -> Principal:
        import jwt  # only with JWT auth on: it brings in `cryptography`

        try:
            if self._jwks is not None:
                kid = jwt.get_unverified_header(token).get("kid")
                key: Any = (await self._jwks.key(kid if isinstance(kid, str) else None)).key
                algorithms = ["RS256", "ES256", "RS384", "ES384", "RS512", "PS256"]
            else:
                key, algorithms = self._secret, ["HS256"]
            claims = jwt.decode(
                token,
                key,
                algorithms=algorithms,
                audience=self._audience,
                issuer=self._issuer,
                leeway=self._leeway,
                options={"require": ["exp", "sub"], "verify_aud": self._audience is not None},
            )
        except jwt.ExpiredSignatureError:
            raise Unauthorized("The token has expired") from None
        except jwt.InvalidAudienceError:
            raise Unauthorized("The token is not meant for this server (audience)") from None
        except jwt.InvalidIssuerError:
            raise Unauthorized(
                "The token was issued by an issuer this server does not trust"
            ) from None
        except UnknownSigningKey:
            raise Unauthorized("The token's signing key is not known") from None
        except jwt.InvalidTokenError as exc:
            raise Unauthorized(f"The token is not valid: {_reason(exc)}") from None
        subject = claims["sub"]
        if not isinstance(subject, str) or not subject.strip() or len(subject) > 255:
            # Every token with an empty subject would share one user, and its conversations.
            raise Unauthorized("The token's subject (sub) must be a non-empty user id")
        return Principal(f"user:{subject}", "user", limits=self._limits["user"])

    def client_address(self, scope: Scope) -> str:
        client = scope.get("client")
        peer = client[0] if client else "unknown"
        if not self._proxies or not _within(peer, self._proxies):
            return peer
        forwarded = _header(scope, b"x-forwarded-for")
        if not forwarded:
            return peer
        # The rightmost address that is not one of our proxies is the real client. Anything
        # there that is not an IP address came from the client itself, not from our proxy:
        # it must not become an identity (each made-up value would get its own limits).
        for hop in reversed([h.strip() for h in forwarded.split(",") if h.strip()]):
            try:
                address = ipaddress.ip_address(hop)
            except ValueError:
                return peer
            if not _within(hop, self._proxies):
                return str(address)
        return peer


def _reason(exc: Exception) -> str:
    text = str(exc) or type(exc).__name__
    return text if len(text) < 120 else type(exc).__name__


def _within(address: str, networks: list[Any]) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in network for network in networks)


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key == name:
            return str(value.decode("latin-1"))
    return None


_JSON_TYPE = re.compile(r"^application/(?:[\w.+-]+\+)?json\s*(?:;|$)", re.IGNORECASE)


def _not_json(scope: Scope) -> UnsupportedMediaType | None:
    """Every body this API takes is JSON. A form or `text/plain` body is what any web page can
    make a visitor's browser send cross-site without a CORS preflight, spending the operator's
    tokens through anonymous access: refused. (No Content-Type at all is no such request.)"""
    if scope["method"] not in ("POST", "PUT", "PATCH"):
        return None
    declared = _header(scope, b"content-type")
    if declared is None or _JSON_TYPE.match(declared.strip()):
        return None
    return UnsupportedMediaType(
        f"Send the body as JSON with Content-Type: application/json, not {declared[:60]!r}"
    )


def _bearer(scope: Scope) -> str | None:
    value = _header(scope, b"authorization")
    if value is None:
        return None
    scheme, _, token = value.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized("Send the token as `Authorization: Bearer <token>`")
    return token.strip()


class AccessMiddleware:
    """Per request: an id (echoed in `X-Request-ID`), a principal where one is needed, one
    access log line and one request metric."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        incoming = _header(scope, b"x-request-id")
        rid = incoming if incoming and _GOOD_REQUEST_ID.match(incoming) else uuid.uuid4().hex
        request_id.set(rid)
        state = scope.setdefault("state", {})
        state["request_id"] = rid
        raw_id = rid.encode()
        status = 500
        started = time.perf_counter()

        responded = False

        async def send_with_id(message: Message) -> None:
            nonlocal status, responded
            if message["type"] != "http.response.start":
                await send(message)
                return
            message["headers"] = [*message.get("headers", []), (b"x-request-id", raw_id)]
            # Recorded once the server took it: a start it refuses (a bad header value) is
            # logged as the failure it is, not as the status that never went out.
            await send(message)
            status = message["status"]
            responded = True

        async def serve() -> None:
            try:
                await self._serve(scope, receive, send_with_id, state)
            except Exception as exc:
                # A database or Redis outage, before anything was sent: a 503 the client can
                # act on (and one warning line), not a bare 500 and a traceback per request.
                outage = None if responded else storage_outage(exc)
                if outage is None:
                    raise
                log.warning("%s: %s on %s", outage.code, type(exc).__name__, scope["path"])
                await error_response_for(scope["path"], outage)(scope, receive, send_with_id)

        built = _services(scope)
        tracer = built.tracer if built is not None else None
        if tracer is None:
            try:
                await serve()
            finally:
                self._record(scope, state, status, started)
            return
        from opentelemetry.trace import SpanKind

        with tracer.start_as_current_span(
            scope["method"], kind=SpanKind.SERVER, attributes={"chatrelay.request_id": rid}
        ) as span:
            try:
                await serve()
            finally:
                template = self._record(scope, state, status, started)
                span.update_name(f"{scope['method']} {template}")
                span.set_attribute("http.request.method", scope["method"])
                span.set_attribute("http.route", template)
                span.set_attribute("http.response.status_code", status)

    async def _serve(
        self, scope: Scope, receive: Receive, send: Send, state: dict[str, Any]
    ) -> None:
        path: str = scope["path"]
        if (refused := _not_json(scope)) is not None:
            await error_response_for(path, refused)(scope, receive, send)
            return
        built = _services(scope)
        authenticator = built.auth if built is not None else None
        if authenticator is not None and authenticator.open:
            state["principal"] = authenticator.public
        needs_auth = (
            authenticator is not None
            and not authenticator.open
            and scope["method"] != "OPTIONS"
            and path != "/"
            and not path.startswith(OPEN_PATHS)
            and not path.startswith("/static/")
        )
        operator = path.startswith(OPERATOR_PATHS)
        if needs_auth:
            assert authenticator is not None
            try:
                # The scraper's token needs no principal; any other caller is one.
                if not (operator and authenticator.has_metrics_token(scope)):
                    principal = await authenticator.principal(scope)
                    if operator and not principal.admin:
                        raise Forbidden(
                            f"{path} is for the operator: send an admin API key or"
                            " CHATRELAY_METRICS_TOKEN as the bearer token"
                        )
                    state["principal"] = principal
            except (Unauthorized, Forbidden) as exc:
                await error_response_for(path, exc)(scope, receive, send)
                return
        await self.app(scope, receive, send)

    def _record(self, scope: Scope, state: dict[str, Any], status: int, started: float) -> str:
        # Path templates, not paths: ids must not become log fields' or metrics' values.
        template = getattr(scope.get("route"), "path", None) or "unmatched"
        principal = state.get("principal")
        access_log.info(
            "%s %s %d",
            scope["method"],
            template,
            status,
            extra={
                "method": scope["method"],
                "route": template,
                "status": status,
                "duration_ms": round((time.perf_counter() - started) * 1000, 1),
                "principal": principal.id if principal is not None else None,
            },
        )
        built = _services(scope)
        if built is not None:
            built.metrics.request(template, scope["method"], status)
        return template


def _services(scope: Scope) -> Services | None:
    """The app's services, once its lifespan has built them (not yet while it starts)."""
    found: Services | None = getattr(scope["app"].state, "services", None)
    return found
