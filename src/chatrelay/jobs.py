"""The non-streaming replies running on this instance, so that shutdown drains them too.

`/ai/chat` and non-streaming `/v1/chat/completions` collect their reply in a task of the
request (`chat.complete`), not in a `StreamHub` generation. Each such task is registered here
while it runs; on shutdown `drain()` does for them what `StreamHub.drain` does for streams:
new ones are refused (`ServerRestarting`, 503), running ones get the grace period to finish
and are answered normally, and the rest are cancelled with reason `server_restarting`: their
partial reply is stored as a streamed one's is, and the request is answered 503
`server_restarting` in its route's error shape.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .errors import ServerRestarting

if TYPE_CHECKING:
    from .chat import ChatJob

log = logging.getLogger("chatrelay.jobs")

# How long the cancelled replies may take to store their partial reply.
CANCEL_WAIT_S = 5.0


class RunningJobs:
    """This instance's running non-streaming replies."""

    def __init__(self) -> None:
        # Each task, and how to tell its job why it is cut (the job's `events(cut)`).
        self._running: dict[asyncio.Task[Any], Callable[[str], None]] = {}
        self.draining = False

    def __len__(self) -> int:
        return len(self._running)

    async def admit(self, job: ChatJob) -> None:
        """While the server drains, a new reply is refused: its job is ended unrun (its turn
        recorded, its reservation given back)."""
        if self.draining:
            refused = ServerRestarting()
            await job.abandon(refused)
            raise refused

    def add(self, task: asyncio.Task[Any], cut: Callable[[str], None]) -> None:
        """Track `task` until it is done; `cut(reason)` records why, before it is cancelled."""
        self._running[task] = cut
        task.add_done_callback(self._forget)

    def _forget(self, task: asyncio.Task[Any]) -> None:
        self._running.pop(task, None)

    async def drain(self, grace_s: float) -> None:
        """Refuse new replies, let running ones finish for `grace_s`, then cancel the rest."""
        self.draining = True
        if self._running:
            log.info(
                "waiting up to %g s for %d non-streaming replies to finish",
                grace_s,
                len(self._running),
            )
            await asyncio.wait(set(self._running), timeout=grace_s)
        for task, cut in list(self._running.items()):
            if not task.done():
                cut("server_restarting")
                task.cancel()
        if self._running:
            await asyncio.wait(set(self._running), timeout=CANCEL_WAIT_S)
