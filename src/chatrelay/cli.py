"""The `chatrelay` command."""

from __future__ import annotations

import sys

import click
from pydantic import ValidationError

from .errors import ConfigError


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="chatrelay")
def main() -> None:
    """chatrelay: relays an AI model's streamed reply as Server-Sent Events."""


@main.command()
@click.option("--host", default=None, help="Interface to bind [env CHATRELAY_HOST; 127.0.0.1].")
@click.option("--port", type=int, default=None, help="Port to listen on [env PORT; 8000].")
def serve(host: str | None, port: int | None) -> None:
    """Start the server (provider and settings from the environment and .env)."""
    import uvicorn

    from .app import create_app
    from .logs import configure_logging
    from .settings import Settings

    try:
        settings = Settings()
        if host is not None:
            settings.host = host
        if port is not None:
            settings.port = port
        configure_logging(settings.log_level, settings.log_format)
        app = create_app(settings)
    except ValidationError as exc:
        raise click.ClickException(f"invalid setting: {exc}") from None
    except ConfigError as exc:
        raise click.ClickException(exc.message) from None
    uvicorn.run(
        app,
        host=settings.host,
        port=settings.port,
        loop="uvloop",
        http="httptools",
        log_config=None,
        access_log=False,
        # Keep-alive must outlast the heartbeat-free gap between a client's requests.
        timeout_keep_alive=30,
    )


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
