"""One exception tree for every error the service raises on purpose: each class declares its
HTTP status, its machine code and the headers it implies (`headers()`, from its own fields).

What an error looks like on the wire is decided once per surface in `error_bodies.py` (the
project's JSON shape, OpenAI's shape), and turned into an HTTP response in `routes/errors.py`;
nothing else builds an error body or changes an error's code or status.

    ChatRelayError                  status  code                    headers
    ├── ConfigError                 500     config                  x-should-retry: false
    ├── InternalError               500     internal                x-should-retry: false
    ├── RequestError                422     invalid_request         (the request cannot be
    │   │                                                            served as sent: 4xx/503,
    │   │                                                            before any stream)
    │   ├── MalformedJSON           400     invalid_json
    │   ├── UnsupportedMediaType    415     unsupported_media_type
    │   ├── BodyTooLarge            413     body_too_large
    │   ├── RequestTimeout          408     request_timeout
    │   ├── InvalidField            422     invalid_request         (fields)
    │   ├── OverLimit               422     request_over_limit      (fields)
    │   ├── UnknownModel            400     unknown_model           (fields)
    │   ├── ModelUnavailable        503     model_unavailable       x-should-retry: false
    │   ├── Unsupported             400     unsupported             (fields)
    │   ├── NotFound                404     not_found
    │   ├── MethodNotAllowed        405     method_not_allowed      Allow
    │   ├── FrameworkError          (given) http_error              (given)
    │   ├── Unauthorized            401     unauthorized            WWW-Authenticate: Bearer
    │   ├── Forbidden               403     forbidden
    │   ├── LimitExceeded           429     limit_exceeded          Retry-After, X-RateLimit-*
    │   ├── ConversationBusy        409     conversation_busy
    │   ├── StreamEnded             416     stream_ended
    │   ├── StorageUnavailable      503     storage_unavailable     Retry-After, x-should-retry
    │   ├── ServerRestarting        503     server_restarting       x-should-retry: false
    │   └── StopUnconfirmed         503     stop_unconfirmed        x-should-retry: false
    ├── StreamCut                   503     (a stream's last error frame, never a status)
    │   ├── InstanceLost                    instance_lost
    │   └── StreamIncomplete                stream_incomplete
    └── UpstreamError               502     upstream_error          [Retry-After], x-should-retry
        ├── UpstreamRateLimited     429     rate_limited
        ├── UpstreamOverloaded      503     overloaded
        ├── UpstreamAuthError       502     upstream_auth
        ├── UpstreamRejected        400     invalid_request
        ├── UpstreamTimeout         504     upstream_timeout
        └── UpstreamFailed          502     upstream_error

Any 5xx without headers of its own says `x-should-retry: false`: the OpenAI and Anthropic SDKs
retry every 5xx unless told not to.

Messages of upstream errors are shown to end users, so they never carry upstream text that
might hold secrets or internals; only `UpstreamRejected` passes the provider's explanation
through, because it describes the user's own request.

Not in this tree, on purpose: `chatrelay.client`'s exceptions (the client library's own API,
raised in the client's process), and internal signals that never leave the server
(`jwks.UnknownSigningKey`, becomes `Unauthorized`; `store.ConversationGone`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class FieldProblem:
    """One invalid field: where it is (e.g. `messages[0].role`) and what is wrong with it."""

    field: str
    message: str


class ChatRelayError(Exception):
    """Base of every error the service raises on purpose."""

    code = "internal"
    status = 500
    # The fields at fault, where the error is about some: the bodies name them.
    problems: Sequence[FieldProblem] = ()
    # Seconds until trying again may succeed, where the error knows (a stream's error frame
    # carries it; the headers say it as Retry-After).
    retry_after: float | None = None

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def headers(self) -> dict[str, str]:
        """The HTTP headers this error implies, on every surface."""
        # The OpenAI and Anthropic SDKs retry every 5xx unless told not to.
        return {"x-should-retry": "false"} if self.status >= 500 else {}


class ConfigError(ChatRelayError):
    """The settings are inconsistent; the message says which setting to change."""

    code = "config"


class InternalError(ChatRelayError):
    """An unexpected failure inside the server; the cause is logged, not shown."""

    def __init__(self) -> None:
        super().__init__("Something went wrong on the server. Please try again.")


class RequestError(ChatRelayError):
    """The client's request cannot be served as sent."""

    code = "invalid_request"
    status = 422


class MalformedJSON(RequestError):
    """The request body is not valid JSON."""

    code = "invalid_json"
    status = 400


class UnsupportedMediaType(RequestError):
    """A body that is not declared as JSON: forms and text/plain are what a cross-site page
    can send without a preflight."""

    code = "unsupported_media_type"
    status = 415


class BodyTooLarge(RequestError):
    """The request body exceeds the configured size limit."""

    code = "body_too_large"
    status = 413


class RequestTimeout(RequestError):
    """The request's head and body did not arrive within CHATRELAY_REQUEST_TIMEOUT_S
    (answered by the HTTP protocol itself, `http_protocol.py`)."""

    code = "request_timeout"
    status = 408

    def __init__(self) -> None:
        super().__init__("The request did not arrive in time (CHATRELAY_REQUEST_TIMEOUT_S)")


class InvalidField(RequestError):
    """One or more fields of the request are missing, of the wrong type or out of range."""

    def __init__(self, problems: list[FieldProblem]) -> None:
        super().__init__("; ".join(f"{p.field}: {p.message}" for p in problems))
        self.problems = problems


class OverLimit(RequestError):
    """A request larger than a token limit of its caller: no wait would let it through."""

    code = "request_over_limit"
    status = 422

    def __init__(self, name: str, limit: int, tokens: int) -> None:
        super().__init__(
            f"This request needs about {tokens} tokens (its input plus max_tokens), more than"
            f" your {name} limit of {limit}: lower max_tokens or send less"
        )
        self.problems = [
            FieldProblem("max_tokens", f"{name} is {limit}; this request needs ~{tokens}")
        ]


class OverBudget(RequestError):
    """A request whose worst-case cost is more than a whole money budget of its caller."""

    code = "request_over_limit"
    status = 422

    def __init__(self, name: str, budget: float, cost: float) -> None:
        super().__init__(
            f"This request may cost up to ${cost:.4f} (its input plus max_tokens at the"
            f" model's prices), more than your {name} budget of ${budget:.2f}: lower"
            " max_tokens or send less"
        )
        self.problems = [
            FieldProblem(
                "max_tokens", f"{name} is ${budget:.2f}; this request may cost ${cost:.4f}"
            )
        ]


class ModelUnpriced(RequestError):
    """A caller with a budget in money asked for a model whose price is not known: its
    spend could not be counted, so it is refused rather than let through uncounted."""

    code = "model_unpriced"
    status = 403

    def __init__(self, alias: str, model: str) -> None:
        super().__init__(
            f"Model {alias!r} ({model}) has no known price, and your limits include a budget in"
            " dollars: its cost could not be counted. Choose a priced model, or ask the"
            f" operator to give [models.{alias}] a price in the models file"
        )
        self.problems = [FieldProblem("model", self.message)]


class UnknownModel(RequestError):
    """The requested model is not one of the configured aliases, nor matched by a pattern."""

    code = "unknown_model"
    status = 400

    def __init__(self, name: str, known: list[str], patterns: list[str] | None = None) -> None:
        message = f"Unknown model {name!r}; known models: {', '.join(known)}"
        if patterns:
            message += f"; patterns: {', '.join(patterns)}"
        super().__init__(message)
        self.problems = [FieldProblem("model", self.message)]


class ModelUnavailable(RequestError):
    """The requested model is configured but cannot serve (e.g. its key is missing)."""

    code = "model_unavailable"
    status = 503

    def __init__(self, name: str, why: str) -> None:
        super().__init__(f"Model {name!r} is not available: {why}")


class Unsupported(RequestError):
    """The request asks for a feature this endpoint or model does not offer."""

    code = "unsupported"
    status = 400

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.problems = [FieldProblem(field, message)]


class NotFound(RequestError):
    """No such conversation or stream (or it belongs to someone else: we don't say)."""

    code = "not_found"
    status = 404


class MethodNotAllowed(RequestError):
    """The route exists, but not with this method; `allow` lists the ones it takes."""

    code = "method_not_allowed"
    status = 405

    def __init__(self, message: str, allow: list[str]) -> None:
        super().__init__(message)
        self.allow = allow

    def headers(self) -> dict[str, str]:
        return {"allow": ", ".join(self.allow)}


class FrameworkError(RequestError):
    """An HTTP error Starlette or FastAPI raised itself, with no class of its own here (a
    404 or a 405 from routing is `NotFound` or `MethodNotAllowed`): its status and headers
    are the framework's, given once when it is made."""

    code = "http_error"

    def __init__(self, status: int, message: str, headers: Mapping[str, str] | None) -> None:
        super().__init__(message)
        self.status = status
        self._headers = {name.lower(): value for name, value in (headers or {}).items()}

    def headers(self) -> dict[str, str]:
        return {**super().headers(), **self._headers}


class Unauthorized(RequestError):
    """The request carries no acceptable credentials."""

    code = "unauthorized"
    status = 401

    def headers(self) -> dict[str, str]:
        return {"www-authenticate": "Bearer"}


class Forbidden(RequestError):
    """The caller is known but may not use this route (an operator route, say)."""

    code = "forbidden"
    status = 403


class LimitExceeded(RequestError):
    """A spending limit of the caller was reached; it resets in `retry_after` seconds."""

    code = "limit_exceeded"
    status = 429
    retry_after: float

    limit: float

    def __init__(self, name: str, limit: int, reset_s: float) -> None:
        super().__init__(
            f"Limit reached: {name} is {limit}; try again in {max(1, round(reset_s))} s"
        )
        self.limit_name = name
        self.limit = limit
        self.retry_after = reset_s

    def headers(self) -> dict[str, str]:
        reset = str(max(1, round(self.retry_after)))
        return {
            "retry-after": reset,
            "x-ratelimit-limit": str(self.limit),
            "x-ratelimit-remaining": "0",
            "x-ratelimit-reset": reset,
            "x-ratelimit-scope": self.limit_name,
        }


class BudgetExceeded(LimitExceeded):
    """A budget in dollars (`daily_usd`, `monthly_usd`) would be passed by this request's
    worst-case cost; it resets with its UTC day or month."""

    def __init__(self, name: str, budget: float, spent: float, reset_s: float) -> None:
        RequestError.__init__(
            self,
            f"Budget reached: your {name} budget is ${budget:.2f} and ${spent:.4f} of it is"
            " spent or reserved by replies running now, too little left for this request's"
            f" worst case; it resets in {max(1, round(reset_s))} s",
        )
        self.limit_name = name
        self.limit = budget
        self.retry_after = reset_s


class ConversationBusy(RequestError):
    """A reply is already being generated for this conversation."""

    code = "conversation_busy"
    status = 409

    def __init__(self, conversation_id: str) -> None:
        super().__init__(
            f"Conversation {conversation_id!r} is already answering a message;"
            " wait for that reply to end, or stop it, then send again"
        )


class StreamEnded(RequestError):
    """A resume from past the last frame of a stream that has ended: nothing more will come."""

    code = "stream_ended"
    status = 416

    def __init__(self, stream_id: str, after: int) -> None:
        super().__init__(
            f"Stream {stream_id!r} has ended and has no frame after {after}: Last-Event-ID is"
            " past its end (resume from the last id you received)"
        )


class StorageUnavailable(RequestError):
    """The database or Redis cannot be reached: come back shortly."""

    code = "storage_unavailable"
    status = 503

    def __init__(self, message: str, *, retry_after_s: int = 5) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s

    def headers(self) -> dict[str, str]:
        return {"retry-after": str(self.retry_after_s), "x-should-retry": "true"}


class ServerRestarting(RequestError):
    """This instance is shutting down and takes no new streams."""

    code = "server_restarting"
    status = 503

    def __init__(
        self, message: str = "The server is restarting; send the request again in a moment"
    ) -> None:
        super().__init__(message)


class StopUnconfirmed(RequestError):
    """The instance generating a stream did not confirm a Stop in time (it may be cut off
    from Redis): the reply may still be running."""

    code = "stop_unconfirmed"
    status = 503

    def __init__(self, stream_id: str, wait_s: float) -> None:
        super().__init__(
            f"The server generating stream {stream_id!r} did not confirm the stop within"
            f" {wait_s:g} s; the reply may still be running: send the stop again"
        )


class StreamCut(ChatRelayError):
    """A stream cut before its end by the server's side, not the upstream: the last error
    frame its readers get (the stream has started, so never an HTTP status)."""

    code = "stream_cut"
    status = 503


class InstanceLost(StreamCut):
    """The instance generating the reply went away (its lease is gone)."""

    code = "instance_lost"

    def __init__(self) -> None:
        super().__init__("The server generating this reply went away; send the message again.")


class StreamIncomplete(StreamCut):
    """A reader on another instance found frames missing from Redis that nobody can fill."""

    code = "stream_incomplete"

    def __init__(self) -> None:
        super().__init__("Part of this reply was lost; send the message again.")


class UpstreamError(ChatRelayError):
    """The model provider failed; `retryable` says whether trying again may help."""

    code = "upstream_error"
    status = 502
    retryable = False
    show_detail = False
    public_message = "The AI provider failed to answer. Please try again."

    def __init__(
        self,
        detail: str = "",
        *,
        retry_after: float | None = None,
        retryable: bool | None = None,
        request_id: str | None = None,
    ) -> None:
        # `detail` is for the operator's log; users see `public_message`, plus the detail only
        # where it describes the user's own request (`show_detail`).
        shown = f"{self.public_message} {detail}" if self.show_detail and detail else None
        super().__init__(shown or self.public_message)
        self.detail = detail
        self.retry_after = retry_after
        self.request_id = request_id
        if retryable is not None:
            self.retryable = retryable

    def headers(self) -> dict[str, str]:
        headers: dict[str, str] = {}
        if self.retry_after is not None:
            headers["retry-after"] = str(max(1, round(self.retry_after)))
        # A rejected key would otherwise be sent upstream again and again by the SDKs.
        headers["x-should-retry"] = "true" if self.retryable else "false"
        return headers


class UpstreamRateLimited(UpstreamError):
    """The provider refused because a rate limit was hit (HTTP 429)."""

    code = "rate_limited"
    status = 429
    retryable = True
    public_message = "The AI provider is rate limiting requests. Please wait a moment and retry."


class UpstreamOverloaded(UpstreamError):
    """The provider is temporarily overloaded (HTTP 529/503 or an overloaded_error event)."""

    code = "overloaded"
    status = 503
    retryable = True
    public_message = "The AI provider is overloaded right now. Please retry shortly."


class UpstreamAuthError(UpstreamError):
    """The provider rejected the server's credentials (HTTP 401/403)."""

    code = "upstream_auth"
    status = 502
    public_message = "The server's AI provider credentials were rejected. Contact the operator."


class UpstreamRejected(UpstreamError):
    """The provider rejected the request itself (HTTP 400/404/413)."""

    code = "invalid_request"
    status = 400
    show_detail = True
    public_message = "The AI provider rejected the request:"


class UpstreamTimeout(UpstreamError):
    """The provider did not connect or answer in time."""

    code = "upstream_timeout"
    status = 504
    public_message = "The AI provider took too long to answer. Please try again."


class UpstreamFailed(UpstreamError):
    """The provider failed otherwise: 5xx, dropped connection, or a stream cut short."""

    code = "upstream_error"
