"""Choosing the event log: Redis when `REDIS_URL` is set, else in-process memory."""

from __future__ import annotations

import uuid
from typing import Any

from ..settings import Settings
from . import EventLog
from .memory import MemoryEventLog


def instance_id() -> str:
    """This process's name among the instances sharing Redis (random, per start)."""
    return uuid.uuid4().hex[:12]


def open_event_log(settings: Settings, instance: str, redis: Any | None) -> EventLog:
    if redis is None:
        return MemoryEventLog(instance, settings.stream_ttl_s)
    from .redis import RedisEventLog

    return RedisEventLog(
        redis, instance=instance, prefix=settings.redis_prefix, ttl_s=settings.stream_ttl_s
    )
