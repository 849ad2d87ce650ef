"""Who is asking. Every conversation and stream belongs to the principal that created it.

The access middleware (auth.py) puts the caller's `Principal` in the request's state; with
authentication off every caller is the same principal, `public`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from starlette.requests import Request

from .quotas import Limits


@dataclass(frozen=True, slots=True)
class Principal:
    """An API key (`key:<id>`), a signed-in user (`user:<sub>`), an anonymous visitor
    (`anon:<ip>`), or everyone when auth is off (`public`)."""

    id: str
    kind: str  # api_key | user | anonymous | public
    admin: bool = False
    limits: Limits = field(default_factory=Limits)
    name: str | None = None

    @property
    def scope(self) -> str | None:
        """The owner whose data this principal may read: its own, or everyone's (admin)."""
        return None if self.admin else self.id


PUBLIC = Principal("public", "public")


def principal_of(request: Request) -> Principal:
    principal: Principal = getattr(request.state, "principal", PUBLIC)
    return principal
