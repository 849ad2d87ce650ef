"""Subprocess servers for the multi-instance tests: `chatrelay serve` instances and nginx.

Every process writes to a log file (a pipe nobody reads would fill up and block it), is
stopped by its own pid, and is always waited for, so no test leaves a process behind.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx

NGINX = shutil.which("nginx") or "/usr/sbin/nginx"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Process:
    """One subprocess, its output in `log_path`."""

    def __init__(
        self, name: str, args: list[str], env: dict[str, str], cwd: Path, log_path: Path
    ) -> None:
        self.name = name
        self.log_path = log_path
        with log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                args,
                env=env,
                cwd=cwd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    @property
    def returncode(self) -> int | None:
        return self.proc.poll()

    def send(self, sig: signal.Signals) -> None:
        if self.alive:
            self.proc.send_signal(sig)

    def output(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    async def wait(self, limit_s: float) -> int | None:
        """The exit code, or None if it is still running after `limit_s` seconds."""
        for _ in range(max(1, round(limit_s / 0.02))):
            if (code := self.proc.poll()) is not None:
                return code
            await asyncio.sleep(0.02)
        return self.proc.poll()

    async def stop(self, limit_s: float = 10) -> int:
        """SIGTERM, then SIGKILL if it does not exit in time; always reaped."""
        self.send(signal.SIGTERM)
        code = await self.wait(limit_s)
        if code is None:
            self.send(signal.SIGKILL)
            code = await self.wait(10)
        if code is None:  # pragma: no cover - a process that survives SIGKILL
            raise RuntimeError(f"{self.name} (pid {self.proc.pid}) did not exit")
        return code


def chatrelay_env(**settings: str) -> dict[str, str]:
    """This process's environment without any chatrelay setting, plus `settings`."""
    clean = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("CHATRELAY_", "ANTHROPIC_", "OPENAI_"))
        and k not in ("PORT", "DATABASE_URL", "REDIS_URL")
    }
    return {**clean, **settings}


def start_chatrelay(name: str, port: int, env: dict[str, str], workdir: Path) -> Process:
    workdir.mkdir(parents=True, exist_ok=True)  # its own cwd: no stray .env
    args = [sys.executable, "-m", "chatrelay", "serve", "--host", "127.0.0.1", "--port", str(port)]
    return Process(name, args, env, workdir, workdir / f"server-{port}.log")


def _lost_port_race(process: Process) -> bool:
    """It exited because another process took its port between free_port() and bind()."""
    return not process.alive and "address already in use" in process.output().lower()


async def wait_healthy(process: Process, port: int, limit_s: float = 30) -> dict[str, Any]:
    """The instance's own /healthz body, once it answers and it is this process listening.

    uvicorn logs "Uvicorn running on ..." only after it bound the port: until then a /healthz
    answer could come from some other server that happens to hold that port.
    """
    listening = f"Uvicorn running on http://127.0.0.1:{port} "
    deadline = time.monotonic() + limit_s
    async with httpx.AsyncClient(timeout=2) as client:
        while True:
            assert process.alive, f"{process.name} exited:\n{process.output()}"
            if listening in process.output():
                try:
                    response = await client.get(f"http://127.0.0.1:{port}/healthz")
                    if response.status_code == 200:
                        body: dict[str, Any] = response.json()
                        return body
                except httpx.TransportError:
                    pass
            assert time.monotonic() < deadline, f"{process.name} did not start:\n{process.output()}"
            await asyncio.sleep(0.05)


async def launch_chatrelay(
    name: str, env: dict[str, str], workdir: Path, started: list[Process], avoid: set[int]
) -> tuple[Process, int, dict[str, Any]]:
    """Start an instance on a free port (another, if that one is taken meanwhile).

    Every process started is appended to `started` at once, so the caller can always stop it.
    Returns the process, its port and its /healthz body.
    """
    for _ in range(3):
        port = free_port()
        if port in avoid:
            continue
        avoid.add(port)
        process = start_chatrelay(name, port, env, workdir)
        started.append(process)
        try:
            return process, port, await wait_healthy(process, port)
        except AssertionError:
            if not _lost_port_race(process):
                raise
    raise AssertionError(f"{name}: no free port after 3 attempts")


@asynccontextmanager
async def running_chatrelay(
    env: dict[str, str], workdir: Path, name: str = "chatrelay"
) -> AsyncIterator[tuple[Process, str]]:
    """One instance on a free port: the process and its base URL; stopped on leaving, with
    its output printed (pytest shows it when the test fails)."""
    started: list[Process] = []
    try:
        process, port, _ = await launch_chatrelay(name, env, workdir, started, set())
        yield process, f"http://127.0.0.1:{port}"
    finally:
        for process in started:
            code = await process.stop()
            print(f"----- {process.name} (exit {code}) -----\n{process.output()}")


def nginx_config(prefix: Path, port: int, upstream_ports: list[int]) -> str:
    """Plain round-robin over the instances, nginx's default (buffered) proxying.

    Buffering is deliberately left on: the instances' `X-Accel-Buffering: no` header is what
    must keep streams flowing. No upstream keepalive, so every request is balanced anew.
    `X-Test-Upstream` tells the tests which instance answered any request (stop included).
    """
    servers = "\n".join(f"        server 127.0.0.1:{p};" for p in upstream_ports)
    return f"""\
daemon off;
master_process off;
worker_processes 1;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log info;

events {{
    worker_connections 256;
}}

http {{
    access_log {prefix}/access.log;
    client_body_temp_path {prefix}/client_body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;

    upstream chatrelay {{
{servers}
    }}

    server {{
        listen 127.0.0.1:{port};

        location / {{
            proxy_pass http://chatrelay;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_read_timeout 300s;
            add_header X-Test-Upstream $upstream_addr always;
        }}
    }}
}}
"""


def start_nginx(prefix: Path, port: int, upstream_ports: list[int]) -> Process:
    prefix.mkdir(parents=True, exist_ok=True)
    conf = prefix / f"nginx-{port}.conf"
    conf.write_text(nginx_config(prefix, port, upstream_ports))
    args = [NGINX, "-p", str(prefix), "-c", str(conf), "-e", str(prefix / "error.log")]
    return Process("nginx", args, dict(os.environ), prefix, prefix / f"nginx-{port}.out")


async def wait_nginx(process: Process, port: int, limit_s: float = 10) -> None:
    """Wait until this nginx proxies: a /healthz through it carries the X-Test-Upstream header
    only our configuration adds (so no other server that holds the port is mistaken for it)."""
    deadline = time.monotonic() + limit_s
    async with httpx.AsyncClient(timeout=2) as client:
        while True:
            assert process.alive, f"{process.name} exited:\n{process.output()}"
            try:
                response = await client.get(f"http://127.0.0.1:{port}/healthz")
                if response.status_code == 200 and "x-test-upstream" in response.headers:
                    return
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, f"nginx did not start:\n{process.output()}"
            await asyncio.sleep(0.05)


async def launch_nginx(
    prefix: Path, upstream_ports: list[int], started: list[Process], avoid: set[int]
) -> tuple[Process, int]:
    """Start nginx on a free port (another, if that one is taken meanwhile)."""
    for _ in range(3):
        port = free_port()
        if port in avoid:
            continue
        avoid.add(port)
        process = start_nginx(prefix, port, upstream_ports)
        started.append(process)
        try:
            await wait_nginx(process, port)
            return process, port
        except AssertionError:
            if not _lost_port_race(process):
                raise
    raise AssertionError("nginx: no free port after 3 attempts")
