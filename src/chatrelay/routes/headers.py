"""The request headers every streaming surface reads, parsed once, each error naming its header."""

from __future__ import annotations

import math

from fastapi import Request

from ..errors import FieldProblem, InvalidField


def idempotency_key(request: Request) -> str | None:
    """`Idempotency-Key`: a retried POST with the same key gets the same stream."""
    key = request.headers.get("idempotency-key")
    if key is not None and not 1 <= len(key) <= 200:
        raise InvalidField([FieldProblem("Idempotency-Key", "must be 1 to 200 characters")])
    return key


def resume_grace(request: Request) -> float | None:
    """`X-Resume-Grace`: how long (seconds, at most the server's resume grace) the reply runs
    on once its reader has gone, waiting for a resume; None if the header is absent."""
    value = request.headers.get("x-resume-grace")
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        seconds = -1.0
    if not math.isfinite(seconds) or seconds < 0:
        raise InvalidField(
            [FieldProblem("X-Resume-Grace", "must be a number of seconds, 0 or more")]
        )
    return seconds
