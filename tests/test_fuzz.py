"""Fuzzing every route: no input, generated or hand-picked, gets a 5xx or shows a stack trace.

Three layers, against one live uvicorn serving the mock provider on a temp SQLite file:

- schemathesis generates valid and invalid requests for every operation of the app's own
  OpenAPI document (path and query parameters, the JSON bodies attached with `openapi_extra`,
  and the `Idempotency-Key` / `Last-Event-ID` headers the routes read by hand, which the
  document does not list and this file adds);
- hypothesis sends chat-shaped bodies with any value anywhere, arbitrary JSON values and raw
  bytes to every route that takes a body;
- tables of hand-picked nasty inputs (deep nesting, huge numbers, NaN, invalid UTF-8, NUL,
  a wrong type in every field, odd content types, unicode in path segments, odd headers and
  query parameters); NUL in ids and text also on PostgreSQL, which refuses it in text.

Every response must be below 500, every 4xx must be JSON in the project's error shape
(`{"error": {"code", "message", ...}}`, or OpenAI's `{"error": {"message", "type", "param",
"code"}}` under `/v1/`, Anthropic's `{"type": "error", "error": {"type", "message"}}` under
`/v1/messages`), and no body may carry a Python stack trace. Generation is
derandomized with a fixed seed and bounded, so CI sees the same inputs every run.
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chatrelay.app import create_app
from chatrelay.sse import EventStreamResponse

from .conftest import make_settings, serve

SEED = 20261124
TIMEOUT_S = 15.0

# Placeholders the fuzzed document offers for path parameters and `conversation_id`; the test
# swaps them for ids that exist on the live server, so generated input reaches past the 404s.
EXISTING_CONVERSATION = "existing-conversation-placeholder"
DOOMED_CONVERSATION = "doomed-conversation-placeholder"  # DELETE gets its own: it removes it
EXISTING_STREAM = "existing-stream-placeholder"

BODY_ROUTES = [
    ("POST", "/ai/chat"),
    ("POST", "/ai/stream/chat"),
    ("POST", "/v1/chat/completions"),
    ("POST", "/v1/responses"),
    ("PATCH", f"/conversations/{EXISTING_CONVERSATION}"),
]
TRACE_MARKERS = ("Traceback", 'File "')
OUR_ERROR_KEYS = {"code", "message", "fields", "request_id", "partial_content"}
OPENAI_ERROR_KEYS = {"message", "type", "param", "code"}
ANTHROPIC_ERROR_KEYS = {"type", "message"}


# --- what every response must look like --------------------------------------------------------


def problem_with(
    method: str, path: str, status: int, content_type: str, body: bytes, sent: bytes = b""
) -> str | None:
    """Why this response breaks the contract, or None. `sent` is everything the client sent:
    a stack-trace marker the client itself sent may be echoed back (the mock repeats prompts)."""
    text = body.decode("utf-8", "replace")
    for marker in TRACE_MARKERS:
        if marker in text and marker.encode() not in sent:
            return f"{method} {path}: the body shows a stack trace ({marker!r}): {text[:300]!r}"
    if status >= 500:
        return f"{method} {path}: status {status}, body {text[:300]!r}"
    if not 400 <= status < 500:
        return None
    where = f"{method} {path}: {status}"
    if not content_type.startswith("application/json"):
        return f"{where} with content-type {content_type!r}, body {text[:300]!r}"
    try:
        data = json.loads(body)
    except ValueError:
        return f"{where} body is not JSON: {text[:300]!r}"
    error = data.get("error") if isinstance(data, dict) else None
    if not isinstance(error, dict):
        return f"{where} body has no `error` object: {text[:300]!r}"
    if path == "/v1/messages" or path.startswith("/v1/messages/"):
        ok = (
            data.get("type") == "error"
            and set(data) <= {"type", "error", "request_id"}
            and set(error) == ANTHROPIC_ERROR_KEYS
            and all(isinstance(v, str) for v in error.values())
        )
        return None if ok else f"{where} is not Anthropic's error shape: {text[:300]!r}"
    if path.startswith("/v1/"):
        ok = (
            set(error) == OPENAI_ERROR_KEYS
            and isinstance(error["message"], str)
            and isinstance(error["type"], str)
            and isinstance(error["code"], str)
            and (error["param"] is None or isinstance(error["param"], str))
        )
        return None if ok else f"{where} is not OpenAI's error shape: {text[:300]!r}"
    fields = error.get("fields", [])
    ok = (
        isinstance(error.get("code"), str)
        and isinstance(error.get("message"), str)
        and set(error) <= OUR_ERROR_KEYS
        and isinstance(fields, list)
        and all(
            isinstance(f, dict)
            and set(f) == {"field", "message"}
            and all(isinstance(v, str) for v in f.values())
            for f in fields
        )
    )
    return None if ok else f"{where} is not the project's error shape: {text[:300]!r}"


def sent_bytes(request: httpx.Request | Any) -> bytes:
    """The request line, headers and body, as far as a marker check needs them."""
    if isinstance(request, httpx.Request):
        try:
            body: Any = request.content
        except httpx.RequestNotRead:  # streamed: the test knows what it sent
            body = b""
    else:
        body = request.body or b""
    if isinstance(body, str):
        body = body.encode("utf-8", "replace")
    head = f"{request.url}\n{dict(request.headers)}".encode("utf-8", "replace")
    return head + b"\n" + bytes(body)


def check_response(response: httpx.Response) -> str | None:
    request = response.request
    return problem_with(
        request.method,
        request.url.path,
        response.status_code,
        response.headers.get("content-type", ""),
        response.content,
        sent_bytes(request),
    )


# --- the live server ---------------------------------------------------------------------------


@dataclass
class Live:
    base_url: str
    conversation_id: str
    doomed_conversation_id: str
    stream_id: str
    log_path: Path

    def resolve(self, text: str) -> str:
        return (
            text.replace(EXISTING_CONVERSATION, self.conversation_id)
            .replace(DOOMED_CONVERSATION, self.doomed_conversation_id)
            .replace(EXISTING_STREAM, self.stream_id)
        )

    def last_error(self) -> str:
        """The end of the server's last logged traceback, to say why a request got a 500."""
        log = self.log_path.read_text(errors="replace")
        start = log.rfind("Traceback (most recent call last)")
        return "" if start < 0 else "\n    the server's last traceback: ..." + log[start:][-1500:]


def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """What conftest's `clean_environ` does, for building the document at import time."""
    for name in list(os.environ):
        if name.startswith(("CHATRELAY_", "ANTHROPIC_", "OPENAI_")) or name in (
            "PORT",
            "DATABASE_URL",
            "REDIS_URL",
        ):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tempfile.gettempdir())  # no stray .env


def _mock_settings(database_url: str) -> Any:
    return make_settings(provider="mock", mock_delay_s=0, database_url=database_url)


# The app as conftest's `serve` runs it (`make_settings`, uvicorn on port 0), but in a process
# of its own: a server thread in the test process would format the tracebacks it logs while
# pytest formats its own, and CPython 3.11's `ast` module is not safe for that ("SystemError:
# AST constructor recursion depth mismatch").
SERVER_SCRIPT = """
import asyncio, os, sys
sys.path.insert(0, sys.argv[1])
import uvicorn
from chatrelay.app import create_app
from tests.conftest import make_settings

async def main(database_url, port_file):
    settings = make_settings(provider="mock", mock_delay_s=0, database_url=database_url)
    config = uvicorn.Config(
        create_app(settings), host="127.0.0.1", port=0, http="httptools", access_log=False
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            return task.result()
        await asyncio.sleep(0.01)
    with open(port_file + ".tmp", "w") as file:
        file.write(str(server.servers[0].sockets[0].getsockname()[1]))
    os.replace(port_file + ".tmp", port_file)
    await task

asyncio.run(main(*sys.argv[2:]))
"""
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    """One server for the whole module, with a conversation and a finished stream in it."""
    tmp = tmp_path_factory.mktemp("fuzz")
    port_file, log_path = tmp / "port", tmp / "server.log"
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("CHATRELAY_", "ANTHROPIC_", "OPENAI_"))
        and k not in ("PORT", "DATABASE_URL", "REDIS_URL")
    }
    database_url = f"sqlite+aiosqlite:///{tmp}/f.db"
    args = [sys.executable, "-c", SERVER_SCRIPT, str(ROOT), database_url, str(port_file)]
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            args, env=env, cwd=tmp, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT
        )
    try:
        deadline = time.monotonic() + 30
        while not port_file.exists():
            assert process.poll() is None, f"the server exited:\n{log_path.read_text()}"
            assert time.monotonic() < deadline, f"no server in 30 s:\n{log_path.read_text()}"
            time.sleep(0.02)
        base_url = f"http://127.0.0.1:{port_file.read_text()}"
        with httpx.Client(base_url=base_url, timeout=TIMEOUT_S) as http:
            hi = {"messages": [{"role": "user", "content": "Hi"}]}
            kept = http.post("/ai/chat", json=hi)
            doomed = http.post("/ai/chat", json=hi)
            stream = http.post("/ai/stream/chat", json=hi)  # read to its end: finished
            assert kept.status_code == doomed.status_code == stream.status_code == 200
        yield Live(
            base_url,
            kept.json()["conversation_id"],
            doomed.json()["conversation_id"],
            stream.headers["x-stream-id"],
            log_path,
        )
    finally:
        process.terminate()
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)


@pytest.fixture(scope="module")
def http(live: Live) -> Iterator[httpx.Client]:
    # A new connection for every request: after a 500 uvicorn closes the connection, and the
    # next request must not fail on it (each failure is then the request's own).
    limits = httpx.Limits(max_keepalive_connections=0)
    with httpx.Client(base_url=live.base_url, timeout=TIMEOUT_S, limits=limits) as client:
        yield client


# --- the OpenAPI document ----------------------------------------------------------------------


def openapi_document(app: Any) -> dict[str, Any]:
    """What `GET /openapi.json` serves, built in-process (the app never starts here)."""
    try:
        return copy.deepcopy(app.openapi())
    except UnboundLocalError:
        # FastAPI cannot tell the status code of the routes whose `response_class` is
        # EventStreamResponse (its __init__ takes no `status_code`), so the document fails to
        # build: `test_openapi_document_is_served` fails on it. Only to fuzz the rest of the
        # document, and only while it is built, EventStreamResponse takes one here.
        original = EventStreamResponse.__init__

        def init(self: Any, *args: Any, status_code: int = 200, **kwargs: Any) -> None:
            original(self, *args, **kwargs)

        app.openapi_schema = None
        with pytest.MonkeyPatch.context() as monkeypatch:
            monkeypatch.setattr(EventStreamResponse, "__init__", init)
            document = copy.deepcopy(app.openapi())
        app.openapi_schema = None
        return document


def _app_for_document() -> Any:
    with pytest.MonkeyPatch.context() as monkeypatch:
        clean_environment(monkeypatch)
        return create_app(_mock_settings("sqlite+aiosqlite:///:memory:"))


def _string_or(placeholder: str) -> dict[str, Any]:
    return {"anyOf": [{"type": "string", "enum": [placeholder]}, {"type": "string"}]}


def dangling_refs(document: dict[str, Any]) -> list[str]:
    """Every `$ref` of the document that does not resolve within it."""
    found: list[str] = []

    def walk(node: Any, where: str) -> None:
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str):
                target: Any = document
                for part in ref.removeprefix("#/").split("/"):
                    target = target.get(part) if isinstance(target, dict) else None
                if not ref.startswith("#/") or target is None:
                    found.append(f"{where}: {ref}")
            for key, value in node.items():
                walk(value, f"{where}/{key}")
        elif isinstance(node, list):
            for index, value in enumerate(node):
                walk(value, f"{where}/{index}")

    walk(document, "#")
    return found


def hoist_defs(document: dict[str, Any]) -> None:
    """Move the `$defs` that pydantic puts inside each body schema to `components/schemas`,
    where the `#/...` refs of an OpenAPI document resolve (see `test_openapi_refs_resolve`)."""
    schemas = document.setdefault("components", {}).setdefault("schemas", {})
    for methods in document["paths"].values():
        for operation in methods.values():
            content = operation.get("requestBody", {}).get("content", {})
            for media in content.values():
                for name, definition in media["schema"].pop("$defs", {}).items():
                    assert schemas.setdefault(name, definition) == definition, name
    text = json.dumps(document).replace('"#/$defs/', '"#/components/schemas/')
    document.clear()
    document.update(json.loads(text))


def body_schema(document: dict[str, Any], path: str, method: str) -> dict[str, Any]:
    """The operation's JSON body schema, inlined here if it is a `$ref` (so it can be edited
    for this operation alone)."""
    media = document["paths"][path][method]["requestBody"]["content"]["application/json"]
    ref = media["schema"].get("$ref")
    if isinstance(ref, str):
        target: Any = document
        for part in ref.removeprefix("#/").split("/"):
            target = target[part]
        media["schema"] = copy.deepcopy(target)
    schema: dict[str, Any] = media["schema"]
    return schema


def fuzz_document() -> dict[str, Any]:
    """The app's document, plus what the routes read by hand and the document leaves out."""
    document = openapi_document(_app_for_document())
    if dangling_refs(document):
        hoist_defs(document)
    assert not dangling_refs(document)
    paths = document["paths"]
    header = {"in": "header", "required": False, "schema": {"type": "string"}}
    paths["/ai/stream/chat"]["post"].setdefault("parameters", []).append(
        {**header, "name": "Idempotency-Key"}
    )
    paths["/ai/stream/{stream_id}"]["get"].setdefault("parameters", []).append(
        {
            **header,
            "name": "Last-Event-ID",
            "schema": {
                "anyOf": [{"type": "string", "pattern": "^[0-9]{1,30}$"}, {"type": "string"}]
            },
        }
    )
    # What `/usage` documents in words: a date or an ISO 8601 time, so generate those too.
    for parameter in paths["/usage"]["get"]["parameters"]:
        if parameter["name"] in ("from", "to"):
            parameter["schema"] = {
                "anyOf": [
                    {"type": "string", "format": "date"},
                    {"type": "string", "format": "date-time"},
                    {"type": "string"},
                ]
            }
    for path, methods in paths.items():
        for method, operation in methods.items():
            for parameter in operation.get("parameters", []):
                if parameter["name"] == "conversation_id":
                    doomed = method == "delete"
                    parameter["schema"] = _string_or(
                        DOOMED_CONVERSATION if doomed else EXISTING_CONVERSATION
                    )
                elif parameter["name"] == "stream_id":
                    parameter["schema"] = _string_or(EXISTING_STREAM)
            if path in ("/ai/chat", "/ai/stream/chat"):
                body = body_schema(document, path, method)
                body["properties"]["conversation_id"] = {
                    "anyOf": [
                        {"type": "string", "enum": [EXISTING_CONVERSATION]},
                        body["properties"]["conversation_id"],
                    ]
                }
    return document


def test_openapi_refs_resolve() -> None:
    """Every `$ref` in the document points into it (tools such as Swagger UI and client
    generators cannot resolve the rest)."""
    assert dangling_refs(openapi_document(_app_for_document())) == []


def test_openapi_document_is_served(http: httpx.Client) -> None:
    """`/openapi.json` (and so `/docs`) works, and lists every route this file fuzzes."""
    response = http.get("/openapi.json")
    assert response.status_code == 200, response.text[:300]
    paths = response.json()["paths"]
    assert {
        "/ai/chat",
        "/ai/stream/chat",
        "/ai/stream/{stream_id}",
        "/ai/stream/{stream_id}/stop",
        "/v1/chat/completions",
        "/v1/models",
        "/v1/responses",
        "/conversations",
        "/conversations/{conversation_id}",
        "/usage",
        "/me",
        "/healthz",
    } <= set(paths)


# --- schemathesis: every operation of the document ---------------------------------------------

CONFIG = schemathesis.Config.from_dict(
    {
        "seed": SEED,
        "request-timeout": TIMEOUT_S,
        "generation": {
            "mode": "all",
            "max-examples": 30,
            "deterministic": True,
            "database": "none",
        },
        "phases": {
            "examples": {"enabled": False},
            "coverage": {"enabled": True},
            "fuzzing": {"enabled": True},
            "stateful": {"enabled": False},
        },
    }
)
DOCUMENT = fuzz_document()
schema = schemathesis.openapi.from_dict(copy.deepcopy(DOCUMENT), config=CONFIG)


@schemathesis.check
def contract(ctx: schemathesis.CheckContext, response: schemathesis.Response, case: Any) -> None:
    """Below 500, no stack trace, and every 4xx in the error shape of its surface."""
    problem = problem_with(
        case.method,
        case.formatted_path,
        response.status_code,
        response.headers.get("content-type", [""])[0],
        response.content,
        sent_bytes(response.request),
    )
    if problem is not None:
        raise AssertionError(problem)


def _swap_placeholders(case: Any, live: Live) -> None:
    for name, value in (case.path_parameters or {}).items():
        if isinstance(value, str):
            case.path_parameters[name] = live.resolve(value)
    if isinstance(case.body, dict):
        if case.body.get("conversation_id") == EXISTING_CONVERSATION:
            case.body["conversation_id"] = live.conversation_id
        metadata = case.body.get("metadata")
        if isinstance(metadata, dict):
            # `metadata.mock` steers the mock into upstream failures (502/503 by design),
            # stalls and long replies; that is the mock's own feature, not the request schema.
            metadata.pop("mock", None)


@schema.parametrize()
@settings(
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=list(HealthCheck),
)
def test_generated_requests(case: Any, live: Live) -> None:
    _swap_placeholders(case, live)
    try:
        case.call_and_validate(
            base_url=live.base_url,
            checks=[schemathesis.checks.not_a_server_error, contract],
            timeout=TIMEOUT_S,
        )
    except Exception as exc:
        exc.add_note(live.last_error())
        raise


# --- hand-picked nasty inputs ------------------------------------------------------------------

HI = {"role": "user", "content": "Hi"}
VALID_BODY: dict[str, dict[str, Any]] = {
    "/ai/chat": {"messages": [HI]},
    "/ai/stream/chat": {"messages": [HI]},
    "/v1/chat/completions": {"messages": [HI]},
    "/v1/responses": {"input": [HI]},
    f"/conversations/{EXISTING_CONVERSATION}": {"title": "A title"},
}
# Each of these is the wrong type (or value) for some field, and the right one for others.
WRONG_VALUES: list[Any] = [
    None,
    True,
    0,
    -1,
    2**63,
    2**64 - 1,
    1.5,
    1e308,
    "",
    " ",
    "x",
    "\u0000",
    "🙂" * 3,
    [],
    [None],
    [[{}]],
    {},
    {"a": None},
    {"type": None},
]
HUGE_NUMBERS = [
    b"123456789012345678901234567890",
    b"-123456789012345678901234567890",
    b"18446744073709551616",
    b"9223372036854775808",
    b"-9223372036854775809",
    b"1e308",
    b"-1e308",
    b"1e999",
    b"4.9e-324",
    b"1e-400",
    b"0.1e1",
    b"-0",
]
NUMERIC_FIELDS = [
    "max_tokens",
    "max_completion_tokens",
    "temperature",
    "top_p",
    "top_k",
    "n",
    "top_logprobs",
    "presence_penalty",
    "frequency_penalty",
]


def nested(depth: int, opening: str = "[", closing: str = "]", leaf: str = "1") -> bytes:
    return (opening * depth + leaf + closing * depth).encode()


def with_field(route: str, field: str, raw: bytes) -> bytes:
    """The route's valid body with `field` set to the raw JSON text `raw`."""
    base = {k: v for k, v in VALID_BODY[route].items() if k != field}
    head = json.dumps(base)[:-1].encode()
    return head + (b", " if base else b"") + b'"' + field.encode() + b'": ' + raw + b"}"


def nasty_bodies(route: str) -> list[bytes]:
    messages = b'"messages": [{"role": "user", "content": "Hi"}]'
    bodies = [
        b"",
        b" ",
        b"\x00",
        b"null",
        b"true",
        b"0",
        b'"x"',
        b"[]",
        b"{}",
        b"{",
        b"}",
        b'{"messages": [',
        b"{" + messages + b"} trailing",
        b"{" + messages + b"}\x00",
        b"\xef\xbb\xbf{" + messages + b"}",  # a UTF-8 byte order mark
        b'{"messages": 1, ' + messages + b"}",  # a duplicate key
        b"{" + messages + b', "messages": 1}',
        nested(100_000),  # past every parser's depth limit
        nested(5_000, '{"a":', "}"),
        nested(1_000, '{"a":', "}"),  # within orjson's limit of 1024
        nested(1_020, '{"a":', "}"),
        b'{"messages": ' + nested(1_000) + b"}",
        b'{"messages": [{"role": "user", "content": ' + nested(1_000) + b"}]}",
        b"NaN",
        b"Infinity",
        b"{" + messages + b', "temperature": NaN}',
        b"{" + messages + b', "temperature": Infinity}',
        b"{" + messages + b', "temperature": -Infinity}',
        b"{" + messages + b', "max_tokens": NaN}',
        b'{"messages": [{"role": "user", "content": "\xff\xfe"}]}',  # invalid UTF-8
        b'{"messages": [{"role": "user", "content": "\xc0\xaf"}]}',  # an overlong encoding
        b'{"messages": [{"role": "user", "content": "\xed\xa0\x80"}]}',  # an encoded surrogate
        b'{"messages": [{"role": "user", "content": "\\ud800"}]}',  # a lone surrogate escape
        b'{"messages": [{"role": "user", "content": "\\udc00\\ud800"}]}',
        b'{"messages": [{"role": "user", "content": "\\u0000"}]}',
        b'{"messages": [{"role": "\\u0000", "content": "Hi"}]}',
        b'{"messages": [{"role": "user", "content": "a\\u0000b"}]}',
        b'{"messages": [{"role": "user", "content": [{"type": "text", "text": "\\u0000"}]}]}',
        b'{"\\u0000": 1, ' + messages + b"}",
        b"{" + messages + b', "metadata": {"\\u0000": "\\u0000"}}',
        b'{"messages": [{"role": "user", "content": "' + b"a" * 150_000 + b'"}]}',
        b"{" + messages + b', "pad": "' + b"a" * 1_100_000 + b'"}',  # past max_body_bytes
        b'{"title": "\\u0000"}',
        b'{"title": "' + "🙂".encode() * 300 + b'"}',
        b'{"metadata": ' + nested(1_000, '{"a":', "}", "null") + b"}",
        b'{"metadata": {"a": ' + nested(1_000) + b"}}",
        b"{" + messages + b', "metadata": ' + nested(1_020, '{"a":', "}", "null") + b"}",
        b"{" + messages + b', "metadata": {"a": ' + nested(1_020) + b"}}",
        b'{"metadata": {"n": 18446744073709551615, "m": -9223372036854775808, "f": 1e308}}',
    ]
    for field in (*NUMERIC_FIELDS, "metadata", "title", "stop", "stop_sequences"):
        for number in HUGE_NUMBERS:
            bodies.append(with_field(route, field, number))
    return bodies


def field_names(route: str) -> list[str]:
    """The top-level fields of the route's body, as the document names them."""
    path = "/conversations/{conversation_id}" if route.startswith("/conversations/") else route
    method = "patch" if route.startswith("/conversations/") else "post"
    return sorted(body_schema(copy.deepcopy(DOCUMENT), path, method)["properties"])


def wrong_field_bodies(route: str) -> list[bytes]:
    """The route's valid body with one field (top level, or inside a message) made wrong."""
    bodies: list[bytes] = []
    for value in WRONG_VALUES:
        raw = json.dumps(value).encode()
        for field in field_names(route):
            bodies.append(with_field(route, field, raw))
        messages: list[Any] = [
            [value],
            [HI, value],
            [{"role": value, "content": "Hi"}],
            [{"role": "user", "content": value}],
            [{"role": "user", "content": [value]}],
            [{"role": "user", "content": [{"type": value, "text": "Hi"}]}],
            [{"role": "user", "content": [{"type": "text", "text": value}]}],
            [{"role": "user", "content": [{"type": "image", "source": value}]}],
            [{"role": "user", "content": [{"type": "image", "source": {"type": value}}]}],
            [{"role": "user", "content": [{"type": "image_url", "image_url": value}]}],
            [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": value}}]}],
            [{"role": "system", "content": value}, HI],
            [{"role": "developer", "content": [value]}, HI],
            [{"role": "assistant", "content": "Hi", "tool_calls": value}, HI],
        ]
        for message_list in messages:
            bodies.append(with_field(route, "messages", json.dumps(message_list).encode()))
        for field, inner in (
            ("thinking", {"type": "enabled", "budget_tokens": value}),
            ("thinking", {"type": value}),
            ("stream_options", {"include_usage": value}),
            ("response_format", {"type": value}),
            ("metadata", {"conversation_id": value}),
            ("system", [{"type": "text", "text": value}]),
            ("stop_sequences", [value]),
            ("stop", [value]),
        ):
            bodies.append(with_field(route, field, json.dumps(inner).encode()))
    return bodies


def problems_of(responses: list[tuple[str, httpx.Response]]) -> list[str]:
    found = []
    for what, response in responses:
        problem = check_response(response)
        if problem is not None:
            found.append(f"{problem}\n    sent: {what[:300]}")
    return found


def send_all(
    http: httpx.Client, live: Live, method: str, route: str, bodies: list[bytes], **kwargs: Any
) -> list[str]:
    responses = []
    for body in bodies:
        response = http.request(method, live.resolve(route), content=body, **kwargs)
        responses.append((repr(body[:300]), response))
    return problems_of(responses)


def body_routes() -> list[Any]:
    return [
        pytest.param(method, route, id=f"{method} {route.replace(EXISTING_CONVERSATION, '{id}')}")
        for method, route in BODY_ROUTES
    ]


@pytest.mark.parametrize(("method", "route"), body_routes())
def test_nasty_bodies(http: httpx.Client, live: Live, method: str, route: str) -> None:
    """Empty, truncated, deeply nested, NaN, huge numbers, invalid UTF-8, NUL, oversized."""
    problems = send_all(http, live, method, route, nasty_bodies(route))
    assert not problems, "\n".join(problems) + live.last_error()


@pytest.mark.parametrize(("method", "route"), body_routes())
def test_wrong_type_in_every_field(http: httpx.Client, live: Live, method: str, route: str) -> None:
    problems = send_all(http, live, method, route, wrong_field_bodies(route))
    assert not problems, "\n".join(problems) + live.last_error()


@pytest.mark.parametrize(("method", "route"), body_routes())
def test_content_types(http: httpx.Client, live: Live, method: str, route: str) -> None:
    """The body is read as JSON whatever the client calls it; forms and garbage are refused."""
    url = live.resolve(route)
    valid = json.dumps(VALID_BODY[route]).encode()
    responses = []
    for content_type in (
        "text/plain",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=x",
        "application/json; charset=latin-1",
        "application/octet-stream",
        "\u00e9/\u00e9",
        "",
    ):
        for body in (valid, b"messages=Hi&title=x", b"\xe9\xe9", b"--x\r\n\r\n--x--"):
            headers = {"content-type": content_type.encode("latin-1")}
            response = http.request(method, url, content=body, headers=headers)
            responses.append((f"content-type {content_type!r}, body {body[:80]!r}", response))
    responses.append(("form data", http.request(method, url, data={"messages": "Hi"})))
    responses.append(("a file", http.request(method, url, files={"f": ("a.json", valid)})))
    responses.append(
        (
            "gzip",
            http.request(
                method, url, content=b"\x1f\x8b\x08junk", headers={"content-encoding": "gzip"}
            ),
        )
    )
    chunks = (valid[i : i + 7] for i in range(0, len(valid), 7))
    responses.append(("chunked", http.request(method, url, content=chunks)))
    problems = problems_of(responses)
    assert not problems, "\n".join(problems) + live.last_error()


SEGMENTS = [
    "日本語",
    "🙂",
    "\u202e",
    "é",
    "%00",
    "a%00b",
    "%FF",
    "%C0%AF",
    "%ED%A0%80",
    "%25",
    "%2F",
    "..",
    "%2e%2e",
    "%20",
    "x" * 2_000,
    "🙂" * 500,
    "0",
    "-1",
    "null",
]


def test_odd_path_segments(http: httpx.Client, live: Live) -> None:
    """Unicode, NUL, invalid UTF-8 and dots in every path parameter (and unknown paths)."""
    responses = []
    for segment in SEGMENTS:
        for method, template in (
            ("GET", "/conversations/{}"),
            ("PATCH", "/conversations/{}"),
            ("DELETE", "/conversations/{}"),
            ("GET", "/ai/stream/{}"),
            ("POST", "/ai/stream/{}/stop"),
            ("GET", "/v1/{}"),
            ("POST", "/v1/chat/{}"),
            ("GET", "/{}"),
        ):
            url = template.format(segment)
            body = b'{"title": "x"}' if method == "PATCH" else None
            responses.append((f"{method} {url[:80]}", http.request(method, url, content=body)))
    problems = problems_of(responses)
    assert not problems, "\n".join(problems) + live.last_error()


QUERY_CASES = [
    *(f"/conversations?limit={v}" for v in ("0", "-1", "101", "x", "1e2", "1.0", "9" * 30, "")),
    *(
        f"/conversations?cursor={v}"
        for v in ("", "x", "%00", "====", "é", "a" * 201, "W10", "WzEsMl0", "WyJhIiwiYiJd")
    ),
    *(
        f"/usage?{name}={v}"
        for name in ("from", "to")
        for v in (
            "9999-12-31",
            "0001-01-01",
            "0001-01-01T00:00:00%2B14:00",
            "9999-12-31T23:59:59-14:00",
            "9999-12-31T23:59:59.999999",
            "2026-02-30",
            "2026-13-01",
            "2026-11-24T25:00",
            "2026-W48-1",
            "20261124",
            "%00%00%00%00%00%00%00%00%00%00",
            "x" * 10,
            "",
        )
    ),
    *(f"/usage?group_by={v}" for v in ("", "x", "%00", "model&group_by=day")),
    "/usage?from=2026-11-25&to=2026-11-24",
    *(f"/ai/stream/{EXISTING_STREAM}?after={v}" for v in ("-1", "x", "1e3", "9" * 30, "", "0")),
]


def test_odd_query_parameters(http: httpx.Client, live: Live) -> None:
    responses = []
    for url in QUERY_CASES:
        responses.append((url[:120], http.get(live.resolve(url))))
    problems = problems_of(responses)
    assert not problems, "\n".join(problems) + live.last_error()


LAST_EVENT_IDS = [
    "",
    "-1",
    "0",
    "1",
    "3",
    "9" * 30,
    "1e3",
    "0x10",
    "+1",
    "1_000",
    "7\t7",
    "NaN",
    "٣",  # an Arabic-Indic digit, which int() takes
    "x" * 1_000,
]


def test_odd_headers(http: httpx.Client, live: Live) -> None:
    """`Last-Event-ID`, `Idempotency-Key`, `X-Request-ID` and `Authorization` of every kind."""
    responses = []
    for value in LAST_EVENT_IDS:
        raw = value.encode()  # sent as UTF-8 bytes; the server reads headers as latin-1
        for stream in (live.stream_id, "unknown"):
            url = f"/ai/stream/{stream}"
            response = http.get(url, headers={"last-event-id": raw})
            responses.append((f"GET {url} Last-Event-ID {value[:40]!r}", response))
    body = VALID_BODY["/ai/stream/chat"]
    for value in ("", "a" * 200, "a" * 201, "ключ", "a\tb", "k", "k"):  # "k" twice: a replay
        response = http.post(
            "/ai/stream/chat", json=body, headers={"idempotency-key": value.encode()}
        )
        responses.append((f"POST /ai/stream/chat Idempotency-Key {value[:40]!r}", response))
    response = http.post("/ai/stream/chat", json={"messages": 1}, headers={"idempotency-key": "k"})
    responses.append(("an Idempotency-Key replayed with another body", response))
    for name, value in (
        ("x-request-id", "ключ"),
        ("x-request-id", "a" * 1_000),
        ("authorization", "Bearer"),
        ("authorization", "Bearer \u00e9"),
        ("authorization", "Basic Og=="),
        ("accept", "text/event-stream"),
        ("accept-encoding", "gzip, br, zstd"),
    ):
        for method, url in (("POST", "/ai/chat"), ("POST", "/v1/chat/completions"), ("GET", "/me")):
            content = json.dumps(body).encode() if method == "POST" else None
            response = http.request(method, url, content=content, headers={name: value.encode()})
            responses.append((f"{method} {url} {name}: {value[:40]!r}", response))
    problems = problems_of(responses)
    assert not problems, "\n".join(problems) + live.last_error()


# --- hypothesis: arbitrary JSON and raw bytes on every route with a body ----------------------

JSON_LEAVES = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**64), max_value=2**64)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
    | st.sampled_from(["user", "assistant", "system", "developer", "tool", "text", "image"])
    | st.sampled_from(["image_url", "base64", "url", "data:image/png;base64,AAAA", "http://x/"])
)
JSON_VALUES = st.recursive(
    JSON_LEAVES,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=12,
)
CONTENT_PARTS = st.fixed_dictionaries(
    {"type": st.sampled_from(["text", "image", "image_url", "input_audio", "file"]) | JSON_VALUES},
    optional={
        "text": JSON_VALUES,
        "image_url": JSON_VALUES
        | st.fixed_dictionaries({}, optional={"url": JSON_VALUES, "detail": JSON_VALUES}),
        "source": JSON_VALUES
        | st.fixed_dictionaries(
            {"type": st.sampled_from(["base64", "url"]) | JSON_VALUES},
            optional={"media_type": JSON_VALUES, "data": JSON_VALUES, "url": JSON_VALUES},
        ),
    },
)
MESSAGES = st.fixed_dictionaries(
    {
        "role": st.sampled_from(["user", "user", "assistant", "system", "developer", "tool"])
        | JSON_VALUES,
        "content": st.text(max_size=30) | st.lists(CONTENT_PARTS, max_size=3) | JSON_VALUES,
    },
    optional={"tool_calls": JSON_VALUES, "name": JSON_VALUES},
)
BODY_FIELDS = [
    *NUMERIC_FIELDS,
    "model",
    "system",
    "thinking",
    "stop",
    "stop_sequences",
    "stream",
    "stream_options",
    "conversation_id",
    "metadata",
    "title",
    "tools",
    "response_format",
    "modalities",
]
# Shaped like the routes' bodies, with any value anywhere: messages, and at most two other
# fields (with more, nearly every body fails on some field before its messages are read).
CHAT_LIKE = st.builds(
    lambda messages, extra: {"messages": messages, **extra},
    st.lists(MESSAGES, min_size=1, max_size=3) | JSON_VALUES,
    st.dictionaries(st.sampled_from(BODY_FIELDS), JSON_VALUES, max_size=2),
)
HYPOTHESIS = settings(
    max_examples=150,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


def _no_mock_steering(value: Any) -> bytes:
    if isinstance(value, dict) and isinstance(value.get("metadata"), dict):
        value["metadata"].pop("mock", None)  # the mock's failure switches (see above)
    return json.dumps(value).encode()


@HYPOTHESIS
@given(route=st.sampled_from(BODY_ROUTES), body=CHAT_LIKE.map(_no_mock_steering))
def test_chat_shaped_bodies(http: httpx.Client, live: Live, route: Any, body: bytes) -> None:
    method, path = route
    response = http.request(method, live.resolve(path), content=body)
    problem = check_response(response)
    assert problem is None, f"{problem}\n    sent: {body[:300]!r}{live.last_error()}"


@HYPOTHESIS
@given(route=st.sampled_from(BODY_ROUTES), body=JSON_VALUES.map(_no_mock_steering))
def test_arbitrary_json(http: httpx.Client, live: Live, route: Any, body: bytes) -> None:
    method, path = route
    response = http.request(method, live.resolve(path), content=body)
    problem = check_response(response)
    assert problem is None, f"{problem}\n    sent: {body[:300]!r}{live.last_error()}"


@HYPOTHESIS
@given(
    route=st.sampled_from(BODY_ROUTES),
    body=st.binary(max_size=300)
    | st.text(max_size=100).map(lambda t: t.encode("utf-8", "replace")),
)
def test_garbage_bytes(http: httpx.Client, live: Live, route: Any, body: bytes) -> None:
    method, path = route
    response = http.request(method, live.resolve(path), content=body)
    problem = check_response(response)
    assert problem is None, f"{problem}\n    sent: {body[:300]!r}{live.last_error()}"


# --- NUL in ids and text, on both databases ----------------------------------------------------

NUL_REQUESTS: list[tuple[str, str, Any]] = [
    ("GET", "/conversations/%00", None),
    ("GET", "/conversations/a%00b", None),
    ("PATCH", "/conversations/%00", {"title": "x"}),
    ("DELETE", "/conversations/%00", None),
    ("GET", "/ai/stream/%00", None),
    ("POST", "/ai/stream/%00/stop", None),
    ("POST", "/ai/chat", {"messages": [{"role": "user", "content": "a\u0000b"}]}),
    (
        "POST",
        "/ai/chat",
        {"messages": [{"role": "user", "content": [{"type": "text", "text": "\u0000"}]}]},
    ),
    ("POST", "/ai/chat", {"messages": [HI], "system": "\u0000"}),
    ("POST", "/ai/chat", {"messages": [HI], "metadata": {"\u0000": "\u0000"}}),
    ("POST", "/ai/chat", {"messages": [HI], "conversation_id": "\u0000"}),
    ("POST", "/ai/stream/chat", {"messages": [{"role": "user", "content": "\u0000"}]}),
    ("POST", "/v1/chat/completions", {"messages": [{"role": "user", "content": "\u0000"}]}),
    ("POST", "/v1/chat/completions", {"messages": [HI], "metadata": {"conversation_id": "\u0000"}}),
]


async def test_nul_in_ids_and_text(database_url: str) -> None:
    """PostgreSQL refuses NUL in text: ids and prompts with one must still not be a 500."""
    async with (
        serve(_mock_settings(database_url)) as base_url,
        httpx.AsyncClient(
            base_url=base_url,
            timeout=TIMEOUT_S,
            limits=httpx.Limits(max_keepalive_connections=0),  # see the `http` fixture
        ) as client,
    ):
        created = await client.post("/ai/chat", json={"messages": [HI]})
        conversation = created.json()["conversation_id"]
        requests = [
            *NUL_REQUESTS,
            ("PATCH", f"/conversations/{conversation}", {"title": "a\u0000"}),
            ("PATCH", f"/conversations/{conversation}", {"metadata": {"\u0000": "\u0000"}}),
            (
                "POST",
                "/ai/chat",
                {"messages": [HI], "conversation_id": conversation, "system": "\u0000"},
            ),
        ]
        responses = []
        for method, url, body in requests:
            content = None if body is None else json.dumps(body).encode()
            response = await client.request(method, url, content=content)
            responses.append((f"{method} {url} {content!r}", response))
    problems = problems_of(responses)
    assert not problems, "\n".join(problems)
