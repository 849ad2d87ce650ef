"""Which exceptions mean a backing service (the database, Redis) cannot be reached.

A request that meets one is answered `503 storage_unavailable` in the surface's error shape,
with its request id and a `Retry-After`, instead of a bare 500: the client should come back,
and the operator finds the request id in the log line.
"""

from __future__ import annotations

from .errors import StorageUnavailable


def storage_outage(exc: BaseException) -> StorageUnavailable | None:
    """The 503 for an outage, or None if `exc` is some other fault."""
    import sqlalchemy.exc

    if isinstance(exc, sqlalchemy.exc.DBAPIError) and (
        exc.connection_invalidated
        or isinstance(exc, sqlalchemy.exc.OperationalError | sqlalchemy.exc.InterfaceError)
    ):
        return StorageUnavailable("The database cannot be reached; try again shortly")
    if isinstance(exc, sqlalchemy.exc.TimeoutError):  # the pool waited for a connection
        return StorageUnavailable("The database is not answering; try again shortly")
    try:
        import redis.exceptions
    except ImportError:  # pragma: no cover - redis is a dependency
        pass
    else:
        if isinstance(exc, redis.exceptions.ConnectionError | redis.exceptions.TimeoutError):
            return StorageUnavailable("Redis cannot be reached; try again shortly")
    if isinstance(exc, ConnectionError | TimeoutError):
        # asyncpg raises the OS's errors when it cannot connect at all.
        return StorageUnavailable("A backing service cannot be reached; try again shortly")
    return None
