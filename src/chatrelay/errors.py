"""One exception tree for the whole service, mapped to HTTP statuses and stream error codes here.

    ChatRelayError
    ├── ConfigError                 the server cannot start with these settings
    ├── InternalError               a bug: the details go to the log, never to the client
    ├── RequestError                the client's request is wrong (HTTP 4xx, before any stream)
    │   ├── MalformedJSON
    │   ├── BodyTooLarge
    │   ├── InvalidField
    │   ├── UnknownModel
    │   ├── ModelUnavailable
    │   ├── Unsupported
    │   ├── NotFound
    │   ├── MethodNotAllowed
    │   ├── ConversationBusy
    │   ├── ServerRestarting
    │   └── StopUnconfirmed
    └── UpstreamError               the model provider failed (an error frame inside the stream)
        ├── UpstreamRateLimited     rate_limited
        ├── UpstreamOverloaded      overloaded
        ├── UpstreamAuthError       upstream_auth
        ├── UpstreamRejected        invalid_request
        ├── UpstreamTimeout         upstream_timeout
        └── UpstreamFailed          upstream_error

Messages of upstream errors are shown to end users, so they never carry upstream text that
might hold secrets or internals; only `UpstreamRejected` passes the provider's explanation
through, because it describes the user's own request.
"""

from __future__ import annotations

from dataclasses import dataclass


class ChatRelayError(Exception):
    """Base of every error the service raises on purpose."""

    code = "internal"
    status = 500

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


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


@dataclass(frozen=True, slots=True)
class FieldProblem:
    """One invalid field: where it is (e.g. `messages[0].role`) and what is wrong with it."""

    field: str
    message: str


class InvalidField(RequestError):
    """One or more fields of the request are missing, of the wrong type or out of range."""

    def __init__(self, problems: list[FieldProblem]) -> None:
        super().__init__("; ".join(f"{p.field}: {p.message}" for p in problems))
        self.problems = problems


class UnknownModel(RequestError):
    """The requested model is not one of the configured aliases."""

    code = "unknown_model"
    status = 400

    def __init__(self, name: str, known: list[str]) -> None:
        super().__init__(f"Unknown model {name!r}; known models: {', '.join(known)}")
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


class Forbidden(RequestError):
    """The caller is known but may not use this route (an operator route, say)."""

    code = "forbidden"
    status = 403


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
    retry_after_s = 5


class ServerRestarting(RequestError):
    """This instance is shutting down and takes no new streams."""

    code = "server_restarting"
    status = 503

    def __init__(self) -> None:
        super().__init__("The server is restarting; send the request again in a moment")


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
