"""Per-request context that outlives the request's own task: its id follows the generation
task (tasks copy the context they are created in) into log lines and error frames."""

from __future__ import annotations

import contextvars

request_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("request_id", default=None)
