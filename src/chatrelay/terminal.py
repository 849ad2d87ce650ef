"""`chatrelay chat`: a terminal client of any chatrelay instance, built on `chatrelay.client`.

- One question (`chatrelay chat "question"`, or the question piped on stdin): the reply is
  written to stdout as it arrives, then a newline. Exit 0 when it completed, 1 when it failed
  (the message on stderr), 130 on Ctrl-C, which first stops the generation on the server.
- Interactive (`chatrelay chat` on a terminal, or `-i`): a `> ` prompt; every turn continues
  the same conversation; Ctrl-C stops the reply being written, Ctrl-D quits. On a terminal,
  lines are edited with readline and kept in `~/.chatrelay_history`.
- `-v` writes the model, the token usage and the conversation id on stderr after each reply,
  so stdout holds the reply alone.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TextIO

from .client import (
    APIError,
    ChatClient,
    ChatRelayError,
    ChatStream,
    Error,
    Event,
    Text,
    Thinking,
)

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as shells report a command ended by Ctrl-C
HISTORY_FILE = "~/.chatrelay_history"
HISTORY_LENGTH = 1000


def parse_params(values: Sequence[str]) -> dict[str, Any]:
    """`FIELD=VALUE` pairs as request body fields; a VALUE that parses as JSON is JSON."""
    extra: dict[str, Any] = {}
    for item in values:
        name, sep, raw = item.partition("=")
        if not sep or not name.strip():
            raise ValueError(f"--param {item!r}: expected FIELD=VALUE")
        try:
            value: Any = json.loads(raw)
        except ValueError:
            value = raw
        extra[name.strip()] = value
    return extra


class Printer:
    """Writes one reply: text to `out` as it arrives, thinking and errors to `err`."""

    def __init__(self, out: TextIO, err: TextIO) -> None:
        self.out = out
        self.err = err
        self.line_open = False  # stdout's last character is not a newline
        self.thinking = False
        self.dim = err.isatty()

    def show(self, event: Event) -> None:
        if isinstance(event, Text):
            self._end_thinking()
            if event.text:
                self.out.write(event.text)
                self.out.flush()
                self.line_open = not event.text.endswith("\n")
        elif isinstance(event, Thinking):
            text = f"\x1b[2m{event.text}\x1b[0m" if self.dim else event.text
            self.err.write(text)
            self.err.flush()
            self.thinking = True
        elif isinstance(event, Error):
            self.finish()
            self.err.write(f"error: {event.message} ({event.code})\n")
            self.err.flush()

    def _end_thinking(self) -> None:
        if self.thinking:
            self.err.write("\n")
            self.err.flush()
            self.thinking = False

    def finish(self) -> None:
        """End the reply's line."""
        self._end_thinking()
        if self.line_open:
            self.out.write("\n")
            self.out.flush()
            self.line_open = False


@dataclass
class Chat:
    """A conversation with a server: what every turn sends, and where its output goes."""

    client: ChatClient
    model: str | None
    extra: dict[str, Any]
    verbose: bool
    has_key: bool
    out: TextIO
    err: TextIO
    conversation_id: str | None = None

    def turn(self, prompt: str) -> int:
        """Send one message and write its reply; the exit code of the turn."""
        stream = self.client.stream(
            prompt, conversation_id=self.conversation_id, model=self.model, **self.extra
        )
        printer = Printer(self.out, self.err)
        try:
            for event in stream:
                printer.show(event)
            printer.finish()
            return EXIT_FAILED if stream.error is not None else EXIT_OK
        except KeyboardInterrupt:
            printer.finish()
            self._stop(stream)
            return EXIT_INTERRUPTED
        except BrokenPipeError:
            # Whoever read stdout is gone: nobody needs the rest of this reply.
            _silence_stdout()
            self._stop(stream)
            return EXIT_FAILED
        except APIError as exc:
            printer.finish()
            hint = ""
            if exc.status == 401 and not self.has_key:
                hint = " (give a key with --key or CHATRELAY_KEY)"
            self.err.write(f"error: {exc}{hint}\n")
            return EXIT_FAILED
        except ChatRelayError as exc:
            printer.finish()
            self.err.write(f"error: {exc}\n")
            return EXIT_FAILED
        finally:
            if stream.conversation_id is not None:
                self.conversation_id = stream.conversation_id
            if self.verbose:
                self._report(stream)
            stream.close()

    def _stop(self, stream: ChatStream) -> None:
        try:
            stream.stop()
        except KeyboardInterrupt:
            pass  # a second Ctrl-C: do not wait for the server
        except ChatRelayError as exc:
            self.err.write(f"warning: the reply could not be stopped on the server: {exc}\n")
        self.err.write("[stopped]\n")
        self.err.flush()

    def _report(self, stream: ChatStream) -> None:
        parts = []
        if stream.model:
            parts.append(stream.model)
        usage = stream.usage
        if usage is not None and (usage.input_tokens, usage.output_tokens) != (None, None):
            given = "?" if usage.input_tokens is None else usage.input_tokens
            made = "?" if usage.output_tokens is None else usage.output_tokens
            parts.append(f"{given} input + {made} output tokens")
        if stream.end_reason not in (None, "completed"):
            parts.append(f"ended: {stream.end_reason}")
        if stream.conversation_id:
            parts.append(f"conversation {stream.conversation_id}")
        if parts:
            self.err.write(f"[{', '.join(parts)}]\n")
            self.err.flush()


def _silence_stdout() -> None:
    """Point stdout at /dev/null, so the interpreter's last flush has nowhere to fail."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):
        pass


def _history() -> Callable[[], None] | None:
    """Readline editing and a persistent history, when readline is available."""
    try:
        import readline
    except ImportError:  # pragma: no cover - Windows without pyreadline
        return None
    path = os.path.expanduser(HISTORY_FILE)
    with contextlib.suppress(OSError):
        readline.read_history_file(path)
    readline.set_history_length(HISTORY_LENGTH)

    def save() -> None:
        with contextlib.suppress(OSError):
            readline.write_history_file(path)

    return save


def interactive(chat: Chat, first: str | None, *, tty: bool, url: str) -> int:
    """A `> ` prompt loop, one conversation, until end of input (Ctrl-D)."""
    stdin = sys.stdin
    save_history = _history() if tty else None
    if tty:
        chat.err.write(f"chatrelay chat with {url}: Ctrl-C stops a reply, Ctrl-D quits\n")
    code = EXIT_OK
    pending = first
    try:
        while True:
            if pending is None:
                try:
                    if tty and chat.out.isatty():
                        pending = input("> ")
                    elif tty:
                        chat.err.write("> ")
                        chat.err.flush()
                        pending = input()
                    else:
                        pending = stdin.readline()
                        if not pending:
                            raise EOFError
                except KeyboardInterrupt:
                    chat.err.write("\n")
                    continue
                except EOFError:
                    if tty:
                        chat.err.write("\n")
                    return EXIT_FAILED if code == EXIT_FAILED else EXIT_OK
            prompt, pending = pending.strip(), None
            if prompt:
                code = chat.turn(prompt)
    finally:
        if save_history is not None:
            save_history()


def run(
    *,
    prompt: Sequence[str],
    url: str,
    key: str | None,
    conversation_id: str | None,
    model: str | None,
    system: str | None,
    max_tokens: int | None,
    params: Sequence[str],
    interactive_mode: bool,
    verbose: bool,
) -> int:
    """`chatrelay chat`: the process's exit code."""
    out, err = sys.stdout, sys.stderr
    for stream in (out, err):
        reconfigure = getattr(stream, "reconfigure", None)
        if reconfigure is not None:
            reconfigure(errors="replace")  # a reply may hold what the terminal cannot show
    try:
        extra = parse_params(params)
    except ValueError as exc:
        err.write(f"error: {exc}\n")
        return EXIT_USAGE
    if system is not None:
        extra["system"] = system
    if max_tokens is not None:
        extra["max_tokens"] = max_tokens
    if "://" not in url:
        url = f"http://{url}"  # `--url localhost:8000`
    if not url.startswith(("http://", "https://")):
        err.write(f"error: --url must be an http:// or https:// URL, not {url!r}\n")
        return EXIT_USAGE
    stdin = sys.stdin
    tty = stdin is not None and stdin.isatty()
    text = " ".join(prompt).strip()
    if not text and not interactive_mode and not tty:
        # Piped: the whole input is the question. (With a question given, stdin is not read:
        # a script's inherited stdin must not make it hang.)
        text = stdin.read().strip() if stdin is not None else ""
        if not text:
            err.write("error: no question: give one as an argument, on stdin, or use -i\n")
            return EXIT_USAGE
    try:
        with ChatClient(url, key) as client:
            chat = Chat(
                client=client,
                model=model,
                extra=extra,
                verbose=verbose,
                has_key=bool(key),
                out=out,
                err=err,
                conversation_id=conversation_id,
            )
            if text and not interactive_mode:
                return chat.turn(text)
            return interactive(chat, text or None, tty=tty, url=url)
    except KeyboardInterrupt:  # between turns, or while closing
        return EXIT_INTERRUPTED
