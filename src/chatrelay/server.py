"""Running the app under uvicorn, with the streams drained on shutdown."""

from __future__ import annotations

import asyncio
import gc
import signal
import socket
import sys
from typing import Any

import uvicorn

from .http_protocol import deadline_protocol
from .services import Services
from .settings import Settings


def run(app: Any, settings: Settings) -> None:
    """Serve until SIGTERM/SIGINT; then drain and exit 0."""
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        loop="uvloop",
        http=deadline_protocol(settings.request_timeout_s),
        log_config=None,
        access_log=False,
        # Client addresses come from CHATRELAY_TRUSTED_PROXIES alone (auth.py), not from
        # uvicorn's own X-Forwarded-For handling, which trusts 127.0.0.1 by default.
        proxy_headers=False,
        # Keep-alive must outlast the heartbeat-free gap between a client's requests.
        timeout_keep_alive=int(settings.keep_alive_s),
        # A backstop only: streams are drained (and ended) before uvicorn waits for them.
        timeout_graceful_shutdown=int(settings.shutdown_grace_s) + 5,
    )
    # uvicorn re-raises the signal it caught once it has shut down; after a clean drain that
    # would end the process "killed by SIGTERM" (exit 143), which supervisors read as a crash.
    # It puts back the handler it found before re-raising: this one makes that an exit 0.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    # Everything imported so far (the SDK's thousands of types, the frameworks) lives as long
    # as the process. Left to the collector, each full collection walks all of it on the
    # event loop's thread: pauses of 100 ms and more under load, which a client sees as a
    # stalled stream and a disconnect noticed late (docs/BENCHMARKS.md). Frozen, it is skipped.
    gc.collect()
    gc.freeze()
    # Every relayed delta allocates a few short-lived containers, so the default threshold
    # (700) ran a young collection every few deltas and an older one every few dozen: ~4% of
    # the loop's CPU, and stalls that showed as gaps. Rarer collections halved p99 gaps at
    # sustained C=300 for the same memory (docs/BENCHMARKS.md).
    gc.set_threshold(20_000, 20, 20)
    DrainingServer(config, app, settings.shutdown_grace_s).run()


class DrainingServer(uvicorn.Server):
    """uvicorn, draining the streams on shutdown before it waits for connections to close.

    On SIGTERM: stop accepting connections, let running generations and non-streaming
    replies finish for the grace period, end the rest with `server_restarting` (so their
    readers end cleanly and know to resume or resend; a non-streaming request is answered
    503 `server_restarting`), then shut down as uvicorn does.
    """

    def __init__(self, config: uvicorn.Config, app: Any, grace_s: float) -> None:
        super().__init__(config)
        self._app = app
        self._grace_s = grace_s

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        for server in self.servers:
            server.close()  # no new connections while we drain
        # Streams (the hub's generations) and non-streaming replies (chat.complete's tasks)
        # drain side by side, within the same grace.
        built: Services | None = getattr(self._app.state, "services", None)
        if built is not None:  # (none if the app never finished starting)
            await asyncio.gather(
                built.streams.drain(self._grace_s), built.chat.running.drain(self._grace_s)
            )
        await super().shutdown(sockets)
