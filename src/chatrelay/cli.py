"""The `chatrelay` command."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

import click
import orjson
from pydantic import ValidationError

from .errors import ConfigError

if TYPE_CHECKING:  # the commands import what they use: `chatrelay chat` needs no database
    from .store import Store
    from .tables import Conversation

T = TypeVar("T")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="chatrelay")
def main() -> None:
    """chatrelay: relays an AI model's streamed reply as Server-Sent Events."""


@main.command()
@click.option("--host", default=None, help="Interface to bind [env CHATRELAY_HOST; 127.0.0.1].")
@click.option("--port", type=int, default=None, help="Port to listen on [env PORT; 8000].")
def serve(host: str | None, port: int | None) -> None:
    """Start the server (provider and settings from the environment and .env)."""

    from .app import create_app
    from .logs import configure_logging
    from .settings import Settings

    try:
        settings = Settings()
        if host is not None:
            settings.host = host
        if port is not None:
            settings.port = port
        if settings.instance_name is None:  # what a restart of this same server is called
            import socket

            settings.instance_name = f"{socket.gethostname()}:{settings.port}"
        configure_logging(settings.log_level, settings.log_format)
        from .db import upgrade_in_child

        upgrade_in_child(settings.database_url)
        app = create_app(settings)
    except ValidationError as exc:
        raise click.ClickException(f"invalid setting: {exc}") from None
    except ConfigError as exc:
        raise click.ClickException(exc.message) from None
    from .server import run

    run(app, settings)


def _run(coroutine_factory: Callable[[Store], Awaitable[T]], *, setup: bool = False) -> T:
    """Run a command's work against the configured database, which it names first (stderr).

    Only the commands that set a database up (`setup`: `db upgrade`, `keys create`) create and
    migrate it. The others read what is there: a missing SQLite file, or a schema this
    chatrelay does not expect, is an error that says which database and which setting, never
    a new empty database in whatever directory the command ran in.
    """
    from sqlalchemy.exc import SQLAlchemyError

    from .db import (
        HEAD,
        create_engine,
        describe_url,
        normalize_url,
        sqlite_file,
        stored_revision,
        upgrade,
    )
    from .settings import DEFAULT_DATABASE_URL, Settings
    from .store import Store

    try:
        settings = Settings()
        url = normalize_url(settings.database_url)
    except ValidationError as exc:
        raise click.ClickException(f"invalid setting: {exc}") from None
    except ConfigError as exc:
        raise click.ClickException(exc.message) from None
    shown = describe_url(url)
    click.echo(f"database: {shown}", err=True)
    path = sqlite_file(url)
    if not setup and path is not None and not path.is_file():
        where = (
            "DATABASE_URL is not set (in the environment or ./.env), so this is its default,"
            " data/chatrelay.db under the current directory"
            if settings.database_url == DEFAULT_DATABASE_URL
            else "that is the file DATABASE_URL names"
        )
        raise click.ClickException(
            f"no database at {path}: {where}. Set DATABASE_URL to the server's database, or"
            " run `chatrelay db upgrade` to create a new one there"
        )

    async def work() -> T:
        store = Store(create_engine(url))
        try:
            if setup:
                await upgrade(store.engine)
            else:
                _check_schema(await stored_revision(store.engine), HEAD, shown)
            return await coroutine_factory(store)
        finally:
            await store.close()

    try:
        return asyncio.run(work())
    except ConfigError as exc:
        raise click.ClickException(exc.message) from None
    except (OSError, SQLAlchemyError) as exc:
        raise click.ClickException(
            f"cannot use the database {shown} (DATABASE_URL): {_reason(exc, url)}"
        ) from None


def _check_schema(revision: str | None, head: str, shown: str) -> None:
    """A reading command needs the schema it was written for (it migrates nothing)."""
    if revision == head:
        return
    if revision is None:
        found = "has no chatrelay tables yet"
    elif revision < head:
        found = f"is at schema revision {revision}, older than this chatrelay's {head}"
    else:
        raise click.ClickException(
            f"the database {shown} is at schema revision {revision}, newer than this"
            f" chatrelay's {head}: use the chatrelay version that migrated it"
        )
    raise click.ClickException(
        f"the database {shown} {found}: check DATABASE_URL, or run `chatrelay db upgrade`"
        " (the server also migrates when it starts)"
    )


def _reason(exc: BaseException, url: str) -> str:
    """The first line of a database error, with the URL's password (if any) blanked out."""
    from sqlalchemy.engine import make_url

    cause = getattr(exc, "orig", None) or exc
    reason = (str(cause).strip().splitlines() or [type(cause).__name__])[0]
    parsed = make_url(url)
    for secret in (parsed.password, parsed.query.get("password")):
        if isinstance(secret, str) and secret:
            reason = reason.replace(secret, "***")
    return reason


@main.group()
def db() -> None:
    """The database (DATABASE_URL)."""


@db.command("upgrade")
def db_upgrade() -> None:
    """Apply the schema migrations (the server also does this when it starts)."""
    from .db import current_revision

    async def work(store: Store) -> str | None:
        return await current_revision(store.engine)

    click.echo(f"database at revision {_run(work, setup=True)}")


@main.group()
def keys() -> None:
    """API keys for CHATRELAY_AUTH=api_key (stored in DATABASE_URL)."""


@keys.command("create")
@click.option("--name", required=True, help="Who or what the key is for.")
@click.option("--admin", is_flag=True, help="May read every principal's conversations.")
@click.option("--rpm", type=click.IntRange(1), help="Requests per minute (else the default).")
@click.option("--tpm", type=click.IntRange(1), help="Tokens per minute.")
@click.option("--daily-tokens", type=click.IntRange(1), help="Tokens per UTC day.")
@click.option("--concurrency", type=click.IntRange(1), help="Streams at once.")
@click.option(
    "--daily-usd", type=click.FloatRange(0, max_open=True), help="US dollars per UTC day."
)
@click.option(
    "--monthly-usd", type=click.FloatRange(0, max_open=True), help="US dollars per UTC month."
)
def keys_create(
    name: str,
    admin: bool,
    rpm: int | None,
    tpm: int | None,
    daily_tokens: int | None,
    concurrency: int | None,
    daily_usd: float | None,
    monthly_usd: float | None,
) -> None:
    """Create a key and print it: it cannot be shown again."""
    from .keys import ApiKeys

    async def work(store: Store) -> tuple[str, str]:
        key, row = await ApiKeys(store.engine).create(
            name,
            admin=admin,
            rpm=rpm,
            tpm=tpm,
            daily_tokens=daily_tokens,
            concurrency=concurrency,
            daily_usd=daily_usd,
            monthly_usd=monthly_usd,
        )
        return key, row.id

    # A key is often created before the server first starts: this may create the database.
    key, key_id = _run(work, setup=True)
    click.echo(key)
    click.echo(f"created key {key_id} ({name}); store it now, it cannot be shown again", err=True)


@keys.command("list")
def keys_list() -> None:
    """Every key: id, name, limits, created, last used, revoked (never the secret)."""
    from .keys import ApiKeys

    async def work(store: Store) -> list[Any]:
        return await ApiKeys(store.engine).all()

    rows = _run(work)
    if not rows:
        click.echo("no keys", err=True)
    for row in rows:
        limits = " ".join(
            f"{name}={value}"
            for name in ("rpm", "tpm", "daily_tokens", "concurrency", "daily_usd", "monthly_usd")
            if (value := getattr(row, name)) is not None
        )
        used = row.last_used_at.strftime("%Y-%m-%d %H:%M") if row.last_used_at else "never"
        state = f"revoked {row.revoked_at:%Y-%m-%d %H:%M}" if row.revoked_at else "active"
        role = " admin" if row.admin else ""
        click.echo(
            f"{row.id}  {row.name}{role}  created {row.created_at:%Y-%m-%d %H:%M}"
            f"  last used {used}  {state}  {limits}".rstrip()
        )


@keys.command("revoke")
@click.argument("key_id")
def keys_revoke(key_id: str) -> None:
    """Revoke a key by its id (the part after `crk_`, as `keys list` shows it)."""
    from .keys import ApiKeys

    async def work(store: Store) -> bool:
        return await ApiKeys(store.engine).revoke(key_id)

    if not _run(work):
        raise click.ClickException(f"no active key {key_id!r}")
    click.echo(f"revoked {key_id}")


@main.group()
def conversations() -> None:
    """Stored conversations (read from DATABASE_URL directly)."""


@conversations.command("list")
@click.option("--owner", default=None, help="Only this owner's conversations (default: all).")
@click.option("--limit", type=click.IntRange(1, 1000), default=50, show_default=True)
def conversations_list(owner: str | None, limit: int) -> None:
    """The newest conversations: id, last activity (UTC), owner, messages, title."""

    async def work(store: Store) -> tuple[list[Conversation], dict[str, int]]:
        found = (await store.page(owner, limit, None)).conversations
        return found, await store.message_counts([c.id for c in found])

    found, counts = _run(work)
    if not found:
        click.echo("no conversations" + (f" of owner {owner!r}" if owner else ""), err=True)
    for conversation in found:
        when = conversation.updated_at.strftime("%Y-%m-%d %H:%M")
        count = counts.get(conversation.id, 0)
        messages = f"{count} message{'' if count == 1 else 's'}"
        click.echo(
            f"{conversation.id}  {when}  {conversation.owner:<12}  {messages:>12}"
            f"  {conversation.title}"
        )


@main.command()
@click.option(
    "--group-by",
    type=click.Choice(["model", "day", "key", "user"]),
    default="model",
    show_default=True,
)
@click.option("--from", "start", help="From this date (2026-11-24) or ISO 8601 time, UTC.")
@click.option("--to", "end", help="Up to this date (included) or time.")
@click.option("--owner", default=None, help="Only this owner's replies (default: all).")
def usage(group_by: str, start: str | None, end: str | None, owner: str | None) -> None:
    """Tokens and cost of stored replies, summed (as GET /usage, from DATABASE_URL)."""
    from .errors import InvalidField
    from .routes.conversations import _bound, totals

    try:
        bounds = _bound(start, "from", False), _bound(end, "to", True)
    except InvalidField as exc:
        raise click.ClickException(
            f"--{exc.problems[0].field}: {exc.problems[0].message}"
        ) from None

    async def work(store: Store) -> list[dict[str, Any]]:
        return await store.usage(owner, bounds[0], bounds[1], group_by)

    rows = _run(work)
    if not rows:
        click.echo("no usage", err=True)
        return
    head = (group_by, "messages", "input", "output", "cache_read", "cache_write", "cost_usd")
    lines = [
        (
            str(row[group_by]),
            str(row["messages"]),
            str(row["input_tokens"]),
            str(row["output_tokens"]),
            str(row["cache_read_tokens"]),
            str(row["cache_write_tokens"]),
            _dollars(row["cost_usd"], row["unpriced_messages"]),
        )
        for row in rows
    ]
    total = totals(rows)
    lines.append(
        (
            "total",
            str(total["messages"]),
            str(total["input_tokens"]),
            str(total["output_tokens"]),
            str(total["cache_read_tokens"]),
            str(total["cache_write_tokens"]),
            _dollars(total["cost_usd"], total["unpriced_messages"]),
        )
    )
    widths = [max(len(line[i]) for line in (head, *lines)) for i in range(len(head))]
    for line in (head, *lines):
        cells = [line[0].ljust(widths[0])] + [
            c.rjust(w) for c, w in zip(line[1:], widths[1:], strict=True)
        ]
        click.echo("  ".join(cells).rstrip())


def _dollars(cost: float | None, unpriced: int) -> str:
    """A cost, and how many replies it leaves out for want of a price."""
    shown = "-" if cost is None else f"{cost:.6f}"
    return f"{shown} ({unpriced} unpriced)" if unpriced else shown


def _load(conversation_id: str) -> Conversation:
    async def work(store: Store) -> Conversation | None:
        return await store.get(conversation_id, None)

    conversation = _run(work)
    if conversation is None:
        raise click.ClickException(f"no conversation {conversation_id!r}")
    return conversation


@conversations.command("show")
@click.argument("conversation_id")
def conversations_show(conversation_id: str) -> None:
    """A conversation's messages, as a person reads them."""
    click.echo(transcript(_load(conversation_id)), nl=False)


@conversations.command("export")
@click.argument("conversation_id")
@click.option("--format", "fmt", type=click.Choice(["json", "markdown"]), default="json")
def conversations_export(conversation_id: str, fmt: str) -> None:
    """A conversation as JSON (everything stored) or Markdown (the text)."""
    from .routes.conversations import full

    conversation = _load(conversation_id)
    if fmt == "json":
        click.echo(orjson.dumps(full(conversation), option=orjson.OPT_INDENT_2).decode())
    else:
        click.echo(transcript(conversation), nl=False)


def transcript(conversation: Conversation) -> str:
    """Markdown: a heading per turn, the text, and how each reply ended."""
    lines = [f"# {conversation.title or conversation.id}", ""]
    for message in conversation.messages:
        content = message.content
        if not isinstance(content, str):
            content = "\n".join(
                block.get("text", "[image]") if block.get("type") == "text" else "[image]"
                for block in content
            )
        lines += [f"## {message.role}", "", content, ""]
        if message.role == "assistant" and message.end_reason != "completed":
            reason = message.error_code or message.end_reason
            lines += [f"_(reply ended: {reason})_", ""]
    return "\n".join(lines)


@main.command()
@click.argument("prompt", nargs=-1)
@click.option(
    "--url",
    envvar="CHATRELAY_URL",
    default="http://127.0.0.1:8000",
    show_default=True,
    show_envvar=True,
    help="The chatrelay server.",
)
@click.option(
    "--key", envvar="CHATRELAY_KEY", show_envvar=True, help="API key or JWT (sent as Bearer)."
)
@click.option(
    "-c", "--conversation", "conversation_id", metavar="ID", help="Continue this conversation."
)
@click.option("--model", help="A model alias of the server (default: its default).")
@click.option("--system", help="A system prompt.")
@click.option("--max-tokens", type=click.IntRange(1), help="Longest reply, in tokens.")
@click.option(
    "--param",
    "params",
    multiple=True,
    metavar="FIELD=JSON",
    help='Another request field, e.g. --param \'metadata={"mock":{"words":500}}\' (repeatable).',
)
@click.option(
    "-i", "--interactive", is_flag=True, help="Prompt for messages, even when stdin is piped."
)
@click.option("-v", "--verbose", is_flag=True, help="Model, usage and conversation on stderr.")
def chat(
    prompt: tuple[str, ...],
    url: str,
    key: str | None,
    conversation_id: str | None,
    model: str | None,
    system: str | None,
    max_tokens: int | None,
    params: tuple[str, ...],
    interactive: bool,
    verbose: bool,
) -> None:
    """Ask a question and stream the reply (or, with none, chat interactively).

    The question is the arguments, or stdin when it is piped. Ctrl-C stops the reply on the
    server and exits 130; in interactive mode it stops the reply and Ctrl-D quits.
    """
    from .terminal import run

    sys.exit(
        run(
            prompt=prompt,
            url=url,
            key=key,
            conversation_id=conversation_id,
            model=model,
            system=system,
            max_tokens=max_tokens,
            params=params,
            interactive_mode=interactive,
            verbose=verbose,
        )
    )


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
