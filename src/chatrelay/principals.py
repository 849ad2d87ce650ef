"""Who is asking. Every conversation and stream belongs to the principal that created it.

Without authentication every caller is the same principal, `public`; the access layer sets
`request.state.principal` to the caller's key, user or anonymous id instead.
"""

from __future__ import annotations

from starlette.requests import Request

PUBLIC = "public"


def principal_of(request: Request) -> str:
    return getattr(request.state, "principal", PUBLIC)
