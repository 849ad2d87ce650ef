"""The chat page (`/`) end to end, in a real headless Chromium (Debian's `chromium` package,
driven by Playwright's Python package through `executable_path`; no browser is downloaded).

The browser talks to the server through a TCP proxy the test can cut, like a network that
drops; the mock provider is steered per request by adding `metadata.mock` to the page's own
`POST /ai/stream/chat` on its way out. Screenshots of each state go to test-artifacts/page/.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio
from playwright.async_api import Browser, Locator, Page, Route, async_playwright, expect

from chatrelay.app import create_app

from .conftest import make_settings, serve_app

ROOT = Path(__file__).resolve().parent.parent
STATIC = ROOT / "src" / "chatrelay" / "static"
ARTIFACTS = ROOT / "test-artifacts" / "page"
CHROMIUM = os.environ.get("CHATRELAY_TEST_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
MODELS_TOML = """
default = "mock"

[models.mock]
provider = "mock"
model = "mock"

[models.mock-b]
provider = "mock"
model = "mock"
price = { input = 3.0, output = 15.0 }
"""

pytestmark = pytest.mark.asyncio(loop_scope="module")


@asynccontextmanager
async def chromium() -> AsyncIterator[Browser]:
    """Debian's Chromium, headless. Never downloads one: a missing browser fails the test."""
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(
            f"{CHROMIUM} not found: install Debian's chromium (`apt-get install chromium`; "
            ".ci/run does) or point CHATRELAY_TEST_CHROMIUM at a Chromium"
        )
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            await browser.close()


class Proxy:
    """A TCP proxy between the browser and the server that can drop every connection."""

    def __init__(self, target: str) -> None:
        host, port = target.removeprefix("http://").split(":")
        self.target = (host, int(port))
        self.refusing = False
        self.links: set[tuple[asyncio.StreamWriter, asyncio.StreamWriter]] = set()
        self.tasks: set[asyncio.Task[None]] = set()
        self.url = ""

    async def __aenter__(self) -> Proxy:
        self.server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.server.close()
        self.cut()  # the pipes end, and with them their connections' tasks
        await asyncio.wait_for(asyncio.gather(*self.tasks, return_exceptions=True), 5)
        await self.server.wait_closed()

    def cut(self) -> None:
        """Reset every open connection (both sides) and refuse new ones until `restore()`."""
        self.refusing = True
        for client, upstream in list(self.links):
            client.transport.abort()
            upstream.transport.abort()
        self.links.clear()

    def restore(self) -> None:
        self.refusing = False

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.tasks.add(task)
        try:
            if self.refusing:
                writer.transport.abort()
                return
            up_reader, up_writer = await asyncio.open_connection(*self.target)
            link = (writer, up_writer)
            self.links.add(link)
            try:
                await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))
            finally:
                self.links.discard(link)
                up_writer.transport.abort()
                writer.transport.abort()
        finally:
            self.tasks.discard(task)

    @staticmethod
    async def _pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, OSError):
            while data := await source.read(65536):
                sink.write(data)
                await sink.drain()
        with contextlib.suppress(ConnectionError, OSError, RuntimeError):
            if not sink.transport.is_closing():
                sink.write_eof()


@dataclass
class Site:
    """The server (`direct`), the proxy the browser goes through (`url`), and the steering."""

    url: str
    direct: str
    app: Any
    proxy: Proxy
    steer: dict[str, Any] = field(default_factory=dict)  # metadata.mock for the page's POSTs
    requests: list[dict[str, Any]] = field(default_factory=list)  # what the page sent
    auth: dict[str, str] = field(default_factory=dict)  # headers for the test's own requests

    async def conversation(self, conversation_id: str) -> dict[str, Any]:
        async with httpx.AsyncClient(timeout=10) as client:
            response = await client.get(
                f"{self.direct}/conversations/{conversation_id}", headers=self.auth
            )
            response.raise_for_status()
            body: dict[str, Any] = response.json()
            return body


@asynccontextmanager
async def running_site(tmp_path: Path, **settings: Any) -> AsyncIterator[Site]:
    models = tmp_path / "models.toml"
    models.write_text(MODELS_TOML)
    values: dict[str, Any] = {
        "provider": "mock",
        "mock_delay_s": 0.03,
        "retry_base_s": 0.01,  # failures before the first text are retried: quickly
        "models_file": str(models),
        "database_url": f"sqlite+aiosqlite:///{tmp_path}/p.db",
    }
    app = create_app(make_settings(**(values | settings)))
    async with serve_app(app) as direct, Proxy(direct) as proxy:
        yield Site(proxy.url, direct, app, proxy)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def browser() -> AsyncIterator[Browser]:
    async with chromium() as b:
        yield b


@pytest_asyncio.fixture(loop_scope="module")
async def site(tmp_path: Path) -> AsyncIterator[Site]:
    async with running_site(tmp_path) as s:
        yield s


@asynccontextmanager
async def browser_page(browser: Browser, site: Site, **context: Any) -> AsyncIterator[Page]:
    """A fresh browser profile on the page; fails the test on any uncaught page error or any
    request to another origin (no CDN: everything is served by chatrelay)."""
    ctx = await browser.new_context(**({"viewport": {"width": 1280, "height": 800}} | context))
    page = await ctx.new_page()
    errors: list[str] = []
    foreign: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))

    def seen(request: Any) -> None:
        if not request.url.startswith((site.url, "data:")):
            foreign.append(request.url)
        site.requests.append(
            {"method": request.method, "url": request.url, "headers": dict(request.headers)}
        )

    page.on("request", seen)

    async def steer(route: Route) -> None:
        if not site.steer or route.request.method != "POST":
            await route.continue_()
            return
        body = json.loads(route.request.post_data or "{}")
        body["metadata"] = {"mock": dict(site.steer)}
        await route.continue_(post_data=json.dumps(body))

    await ctx.route(re.compile(r"/ai/stream/chat$"), steer)
    try:
        yield page
    finally:
        await ctx.close()
    assert not errors, errors
    assert not foreign, foreign


@pytest_asyncio.fixture(loop_scope="module")
async def page(browser: Browser, site: Site) -> AsyncIterator[Page]:
    async with browser_page(browser, site) as p:
        yield p


# -- helpers ---------------------------------------------------------------------------------


async def load(page: Page, url: str) -> None:
    await page.goto(url)
    await page.wait_for_selector("html[data-ready]")


async def shot(page: Page, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    await page.screenshot(path=ARTIFACTS / f"{name}.png")


async def send(page: Page, text: str) -> Locator:
    """Type a message, press Enter; the reply's element."""
    before = await page.locator(".msg.assistant").count()
    await page.locator("#input").fill(text)
    await page.locator("#input").press("Enter")
    reply = page.locator(".msg.assistant").nth(before)
    await expect(reply).to_be_attached()
    return reply


def words(text: str) -> list[str]:
    return text.split()


async def text_of(reply: Locator) -> str:
    return await reply.locator(".body").inner_text()


async def eventually(check: Callable[[], Awaitable[bool]], within_s: float = 5.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within_s
    while not await check():
        assert loop.time() < deadline, "timed out"
        await asyncio.sleep(0.02)


async def record_states(page: Page) -> None:
    """Record every distinct text the last reply shows, as the DOM changes."""
    await page.evaluate(
        """() => {
            window.__states = [];
            const log = document.getElementById("messages");
            new MutationObserver(() => {
                const replies = log.querySelectorAll(".msg.assistant .body");
                const text = replies.length ? replies[replies.length - 1].innerText : "";
                const states = window.__states;
                if (text && states[states.length - 1] !== text) states.push(text);
            }).observe(log, {subtree: true, childList: true, characterData: true});
        }"""
    )


async def recorded_states(page: Page) -> list[str]:
    states: list[str] = await page.evaluate("window.__states")
    return states


def assert_grows_without_repeats(states: list[str], final: str) -> None:
    """Each state shown is a prefix of the final text, and each longer than the one before:
    text is never repeated nor taken back."""
    flat = [" ".join(s.split()) for s in states]
    goal = " ".join(final.split())
    for before, after in itertools.pairwise(flat):
        assert len(after) > len(before), (before, after)
    for state in flat:
        assert goal.startswith(state), (state, goal)


async def conversation_id(page: Page) -> str:
    hash_: str = await page.evaluate("location.hash")
    assert hash_.startswith("#c/"), hash_
    return hash_.removeprefix("#c/")


# -- tests -----------------------------------------------------------------------------------


async def test_the_page_and_its_module_are_served_without_a_build_step(site: Site) -> None:
    async with httpx.AsyncClient(timeout=10) as client:
        page = await client.get(f"{site.direct}/")
        module = await client.get(f"{site.direct}/static/chatrelay.js")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert module.status_code == 200
    assert module.headers["content-type"].startswith(("text/javascript", "application/javascript"))
    assert "export function streamChat" in module.text
    # No CDN: the page's own files name no other origin and import only each other.
    for path in STATIC.iterdir():
        text = path.read_text()
        if path.suffix in (".html", ".css"):
            assert not re.search(r"(src|href)=\"(https?:)?//", text), path
            assert "url(http" not in text, path
        if path.suffix == ".js":
            for imported in re.findall(r"^import .* from \"([^\"]+)\";", text, flags=re.M):
                assert imported.startswith("./"), (path, imported)


async def test_a_reply_streams_in_and_the_conversation_is_listed_after_a_reload(
    page: Page, site: Site
) -> None:
    await load(page, site.url)
    # The model picker lists /v1/models, the default selected.
    assert await page.locator("#model option").all_inner_texts() == ["mock", "mock-b"]
    await expect(page.locator("#model")).to_have_value("mock")
    await page.locator("#model").select_option("mock-b")
    await expect(page.locator("#key-button")).to_be_hidden()  # auth is off
    await record_states(page)

    # Shift+Enter is a new line, Enter sends.
    box = page.locator("#input")
    await box.fill("Write me")
    await box.press("Shift+Enter")
    await box.type("a long answer")
    assert await box.input_value() == "Write me\na long answer"
    assert await page.locator(".msg").count() == 0
    site.steer.update(words=40, delay_s=0.04)
    await box.press("Enter")
    reply = page.locator(".msg.assistant").first
    assert await box.input_value() == ""
    await expect(page.locator(".msg.user .body")).to_have_text("Write me\na long answer")

    # Part-way: some text, not all of it, and the Stop button instead of Send.
    await eventually(lambda: _has_words(reply, 8))
    await expect(page.locator("#stop")).to_be_visible()
    await expect(page.locator("#send")).to_be_hidden()
    await shot(page, "streaming")
    assert len(words(await text_of(reply))) < 40

    await expect(reply).to_have_attribute("data-state", "completed", timeout=10_000)
    await expect(page.locator("#send")).to_be_visible()
    final = await text_of(reply)
    assert len(words(final)) == 40
    states = await recorded_states(page)
    assert len([s for s in states if len(words(s)) < 40]) >= 5, states
    assert_grows_without_repeats(states, final)
    # Token usage per reply, and the model that answered.
    await expect(reply.locator(".usage")).to_have_text(re.compile(r"^\d+ in · 40 out tokens$"))
    # And what it cost, at the alias's price (40 output tokens alone: 40 × $15 / 1M).
    await expect(reply.locator(".cost")).to_have_text(re.compile(r"^\$0\.000\d\d$"))
    await expect(reply.locator(".who")).to_have_text("Assistant · mock-b")
    await shot(page, "reply")

    cid = await conversation_id(page)
    stored = await site.conversation(cid)
    assert [m["role"] for m in stored["messages"]] == ["user", "assistant"]
    assert words(stored["messages"][1]["content"]) == words(final)
    assert stored["messages"][1]["model"] == "mock-b"

    # A reload (without the conversation in the address) finds it in the list.
    await load(page, site.url + "/")
    entry = page.locator("#conversations a", has_text="Write me a long answer")
    await expect(entry).to_be_visible()
    await expect(page.locator("#model")).to_have_value("mock-b")  # the choice is remembered
    await entry.click()
    await expect(entry).to_have_attribute("aria-current", "page")
    reloaded = page.locator(".msg.assistant")
    await expect(reloaded).to_have_count(1)
    assert words(await text_of(reloaded)) == words(final)
    await expect(reloaded.locator(".usage")).to_have_text(re.compile(r"in · 40 out tokens"))
    await expect(page.locator("#title")).to_have_text("Write me a long answer")
    await shot(page, "reloaded")


async def _has_words(reply: Locator, n: int) -> bool:
    return len(words(await text_of(reply))) >= n


async def _idle(hub: Any) -> bool:
    return bool(hub.running == 0)


async def test_stop_ends_the_generation_on_the_server(page: Page, site: Site) -> None:
    await load(page, site.url)
    site.steer.update(words=400, delay_s=0.03)
    hub = site.app.state.services.streams

    for how in ("button", "escape"):
        reply = await send(page, f"Count slowly ({how})")
        await eventually(lambda reply=reply: _has_words(reply, 6))
        assert hub.running == 1
        if how == "button":
            await page.locator("#stop").click()
        else:
            await page.keyboard.press("Escape")
        await expect(reply).to_have_attribute("data-state", "stopped", timeout=5000)
        await expect(reply.locator(".ended")).to_have_text("Stopped")
        # The end frame of a stopped reply has no usage: the page shows the stored estimate.
        await expect(reply.locator(".usage")).to_have_text(re.compile(r"^≈\d+ in · ≈\d+ out"))
        # Generation ended on the server: nothing runs, the partial reply is stored as
        # stopped with exactly the text the page shows, and no more text arrives.
        await eventually(lambda: _idle(hub))
        shown = await text_of(reply)
        stored = (await site.conversation(await conversation_id(page)))["messages"][-1]
        assert stored["end_reason"] == "stopped"
        assert words(stored["content"]) == words(shown)
        assert 6 <= len(words(shown)) < 400
        await asyncio.sleep(0.3)
        assert await text_of(reply) == shown
        await expect(page.locator("#send")).to_be_visible()
        if how == "button":
            await shot(page, "stopped")

    stops = [r for r in site.requests if r["method"] == "POST" and r["url"].endswith("/stop")]
    assert len(stops) == 2


async def test_a_dropped_connection_resumes_without_duplicated_text(page: Page, site: Site) -> None:
    await load(page, site.url)
    await record_states(page)
    site.steer.update(words=90, delay_s=0.03)
    reply = await send(page, "Tell me a story")
    await eventually(lambda: _has_words(reply, 12))

    site.proxy.cut()  # every connection reset; new ones refused for a while
    await expect(reply).to_have_attribute("data-state", "reconnecting", timeout=3000)
    await expect(reply.locator(".notice")).to_contain_text("Reconnecting")
    await expect(page.locator("#status")).to_contain_text("reconnecting")
    await shot(page, "reconnecting")
    await asyncio.sleep(0.5)  # the server generates on meanwhile (resume grace)
    site.proxy.restore()

    await expect(reply).to_have_attribute("data-state", "completed", timeout=10_000)
    await expect(reply.locator(".notice")).to_be_hidden()
    await shot(page, "resumed")
    final = await text_of(reply)
    stored = (await site.conversation(await conversation_id(page)))["messages"][-1]
    assert stored["end_reason"] == "completed"
    assert words(final) == words(stored["content"])
    assert len(words(final)) == 90
    assert_grows_without_repeats(await recorded_states(page), final)
    # It was resumed with the last event id it had seen, not sent again.
    resumes = [
        r
        for r in site.requests
        if r["method"] == "GET" and re.search(r"/ai/stream/[0-9a-f]+$", r["url"])
    ]
    assert resumes
    assert all(int(r["headers"]["last-event-id"]) >= 12 for r in resumes)
    assert len([r for r in site.requests if r["url"].endswith("/ai/stream/chat")]) == 1


async def test_an_error_frame_is_shown_in_place_with_a_retry_button(page: Page, site: Site) -> None:
    await load(page, site.url)

    # A failure after some text: the text stays, the error is shown under it.
    site.steer.update(fail_after=4, fail_code="overloaded")
    reply = await send(page, "Please answer")
    error = reply.locator(".error")
    await expect(error).to_be_visible()
    await expect(error).to_have_attribute("role", "alert")
    await expect(error).to_contain_text("overloaded")
    await expect(reply).to_have_attribute("data-state", "error")
    assert len(words(await text_of(reply))) == 4
    await shot(page, "error")

    site.steer.clear()
    await error.locator("button.retry").click()
    second = page.locator(".msg.assistant").nth(1)
    await expect(second).to_have_attribute("data-state", "completed", timeout=5000)
    await expect(error.locator("button.retry")).to_be_disabled()
    # The partial reply is part of the history, so the question was asked again.
    await expect(page.locator(".msg.user")).to_have_count(2)
    stored = (await site.conversation(await conversation_id(page)))["messages"]
    assert [(m["role"], m.get("error_code")) for m in stored] == [
        ("user", None),
        ("assistant", "overloaded"),
        ("user", None),
        ("assistant", None),
    ]
    await shot(page, "retried")

    # A failure before any text: Retry asks again without repeating the question.
    await page.locator("#new-chat").click()
    site.steer.update(fail_after=0, fail_code="rate_limited")
    reply = await send(page, "Fail at once")
    await expect(reply.locator(".error")).to_contain_text("rate_limited")
    site.steer.clear()
    await reply.locator("button.retry").click()
    await expect(page.locator(".msg.assistant").nth(1)).to_have_attribute(
        "data-state", "completed", timeout=5000
    )
    await expect(page.locator(".msg.user")).to_have_count(1)
    stored = (await site.conversation(await conversation_id(page)))["messages"]
    assert [m["role"] for m in stored] == ["user", "assistant", "assistant"]
    assert stored[1]["error_code"] == "rate_limited"

    # Reloaded, the failed reply still shows its error.
    await page.reload()
    await page.wait_for_selector("html[data-ready]")
    await expect(page.locator(".msg.assistant .error")).to_contain_text("rate_limited")


async def test_a_failed_reply_shows_its_own_error_message_after_a_reload(
    page: Page, site: Site
) -> None:
    """The stored reply keeps the message its error frame showed; reloaded, the page shows
    that message, not a generic one."""
    await load(page, site.url)
    # The provider rejects the request part-way: its explanation is passed through to the user.
    site.steer.update(fail_after=3, fail_code="invalid_request")
    reply = await send(page, "Say something the provider refuses")
    shown = "The AI provider rejected the request: mock failure after 3 pieces"
    await expect(reply.locator(".error p")).to_have_text(shown)
    assert len(words(await text_of(reply))) == 3
    site.steer.clear()

    stored = (await site.conversation(await conversation_id(page)))["messages"][-1]
    assert (stored["error_code"], stored["error_message"]) == ("invalid_request", shown)

    await page.reload()
    await page.wait_for_selector("html[data-ready]")
    reloaded = page.locator(".msg.assistant")
    await expect(reloaded).to_have_count(1)
    await expect(reloaded.locator(".error p")).to_have_text(shown)
    await expect(reloaded.locator(".error .code")).to_have_text("invalid_request")
    await expect(reloaded).not_to_contain_text("cut off by an error")
    assert len(words(await text_of(reloaded))) == 3
    await shot(page, "error-reloaded")


async def test_a_reply_cut_by_an_error_counts_the_tokens_it_produced(
    page: Page, site: Site
) -> None:
    """SERVER BUG, failing on purpose until it is fixed (see the report): a reply that fails
    after some text is stored, settled against the caller's token limits and shown with the
    usage of the provider's *opening* event (0 output tokens from the mock; Anthropic's
    message_start says 1), not with the tokens it produced. relay.py `_relay` ends an errored
    reply with the opening `usage`, and chat.py `_count_tokens` estimates only when the count is
    None, so the page shows "0 out tokens" under six words of text."""
    await load(page, site.url)
    site.steer.update(fail_after=6, fail_code="overloaded")
    reply = await send(page, "Count these")
    await expect(reply.locator(".error")).to_be_visible()
    assert len(words(await text_of(reply))) == 6
    stored = (await site.conversation(await conversation_id(page)))["messages"][-1]
    assert stored["error_code"] == "overloaded"
    assert stored["usage"]["output_tokens"] > 0, stored["usage"]
    await expect(reply.locator(".usage")).not_to_contain_text(" 0 out tokens")


XSS_REPLY = (
    '<img src=x onerror="window.__xss=1"> and <script>window.__xss=2</script>\n\n'
    "**Bold** and `<b>code</b>` and [bad](javascript:window.__xss=3) and "
    "[good](https://example.com/a?b=1) and ![pic](https://example.com/p.png)\n\n"
    '```html\n<img src=y onerror="window.__xss=4">\n```\n\n'
    '- item <svg onload="window.__xss=5"></svg>\n- <a href="javascript:window.__xss=6">a</a>\n\n'
    '<iframe src="javascript:window.__xss=7"></iframe>'
)


async def test_html_in_model_output_is_shown_as_text(page: Page, site: Site) -> None:
    await load(page, site.url)
    site.steer.update(reply=XSS_REPLY, delay_s=0.005)
    reply = await send(page, 'Show <b>html</b> <img src=z onerror="window.__xss=8">')
    await expect(reply).to_have_attribute("data-state", "completed", timeout=5000)
    await shot(page, "markdown-xss")
    await _assert_inert(page, reply)
    # The stored reply, rendered after a reload, is just as inert.
    await page.reload()
    await page.wait_for_selector("html[data-ready]")
    reply = page.locator(".msg.assistant").first
    await expect(reply).to_be_visible()
    await _assert_inert(page, reply)


async def _assert_inert(page: Page, reply: Locator) -> None:
    messages = page.locator("#messages")
    assert await messages.locator("img, script, svg, iframe, b").count() == 0
    assert await page.evaluate("window.__xss") is None
    text = await text_of(reply)
    assert '<img src=x onerror="window.__xss=1">' in text
    assert "<script>window.__xss=2</script>" in text
    assert '<iframe src="javascript:window.__xss=7"></iframe>' in text
    assert "[bad](javascript:window.__xss=3)" in text
    await expect(reply.locator("strong")).to_have_text("Bold")
    await expect(reply.locator("p code")).to_have_text("<b>code</b>")
    await expect(reply.locator("pre code")).to_have_text('<img src=y onerror="window.__xss=4">')
    await expect(reply.locator("li")).to_have_count(2)
    hrefs = await reply.locator("a").evaluate_all("links => links.map(a => a.href)")
    assert hrefs == ["https://example.com/a?b=1", "https://example.com/p.png"]
    assert await reply.locator("a").first.get_attribute("rel") == "noopener noreferrer nofollow"
    await expect(page.locator(".msg.user .body")).to_have_text(
        'Show <b>html</b> <img src=z onerror="window.__xss=8">'
    )


PHONE_REPLY = (
    "## Steps\n\n1. Install it:\n\n```sh\npip install chatrelay && chatrelay serve "
    "--host 0.0.0.0 --port 8000  # a long line that must scroll inside the block\n```\n\n"
    "2. Open **http://127.0.0.1:8000** in a browser.\n\n> Works *offline*: no CDN."
)


async def test_the_page_fits_a_phone_screen(browser: Browser, site: Site) -> None:
    phone = {
        "viewport": {"width": 390, "height": 844},
        "device_scale_factor": 2,
        "is_mobile": True,
        "has_touch": True,
    }
    async with browser_page(browser, site, **phone) as page:
        await load(page, site.url)
        await expect(page.locator("#sidebar")).not_to_be_in_viewport()
        await expect(page.locator("#menu")).to_be_visible()
        site.steer.update(reply=PHONE_REPLY, delay_s=0.005)
        reply = await send(page, "How do I run it?")
        await expect(reply).to_have_attribute("data-state", "completed", timeout=5000)
        await expect(reply.locator("h2")).to_have_text("Steps")
        await expect(reply.locator("ol")).to_have_count(2)
        await expect(reply.locator("blockquote em")).to_have_text("offline")
        # Nothing is wider than the screen; the code block scrolls on its own.
        assert await page.evaluate("document.documentElement.scrollWidth <= innerWidth")
        assert await reply.locator("pre").evaluate("pre => pre.scrollWidth > pre.clientWidth")
        await expect(page.locator("#input")).to_be_in_viewport()
        await expect(page.locator("#send")).to_be_in_viewport()
        await shot(page, "phone")

        await page.locator("#menu").click()
        await expect(page.locator("#menu")).to_have_attribute("aria-expanded", "true")
        entry = page.locator("#conversations a", has_text="How do I run it?")
        await expect(entry).to_be_in_viewport()
        await page.wait_for_timeout(250)  # the drawer's slide
        await shot(page, "phone-conversations")
        await page.keyboard.press("Escape")
        await expect(page.locator("#menu")).to_have_attribute("aria-expanded", "false")
        await expect(page.locator("#sidebar")).not_to_be_in_viewport()


async def test_the_key_field_when_auth_is_on(browser: Browser, tmp_path: Path) -> None:
    async with running_site(tmp_path, auth="api_key") as site:
        key, _ = await site.app.state.services.keys.create("page")
        site.auth = {"authorization": f"Bearer {key}"}
        async with browser_page(browser, site) as page:
            await load(page, site.url)
            auth = page.locator("#auth")
            await expect(auth).to_be_visible()
            await expect(page.locator("#token")).to_be_focused()
            await expect(page.locator("label[for=token]")).to_have_text("API key or token")
            await shot(page, "key-needed")

            await page.locator("#token").fill("crk_wrong")
            await page.locator("#token").press("Enter")
            await expect(auth).to_be_visible()
            await expect(page.locator("#auth-message")).to_contain_text("refused")

            await page.locator("#token").fill(key)
            await page.locator("#token-save").click()
            await expect(auth).to_be_hidden()
            await expect(page.locator("#model option")).to_have_count(2)
            await expect(page.locator("#key-button")).to_be_visible()
            reply = await send(page, "Hello with a key")
            await expect(reply).to_have_attribute("data-state", "completed", timeout=5000)
            posts = [r for r in site.requests if r["url"].endswith("/ai/stream/chat")]
            assert posts[-1]["headers"]["authorization"] == f"Bearer {key}"

            # The key is kept in the browser: a reload needs no new one.
            await load(page, site.url + "/")
            await expect(auth).to_be_hidden()
            await expect(
                page.locator("#conversations a", has_text="Hello with a key")
            ).to_be_visible()
            assert await page.evaluate("localStorage.getItem('chatrelay.token')") == key
            await page.locator("#key-button").click()
            await expect(auth).to_be_visible()
            await page.locator("#token-forget").click()
            await expect(page.locator("#auth-message")).to_contain_text("needs an API key")
            assert await page.evaluate("localStorage.getItem('chatrelay.token')") is None


async def test_tool_calls_and_results_show_as_collapsed_blocks(page: Page, site: Site) -> None:
    """A conversation an API client had with tools: the page shows each call (its name, its
    arguments inside) and each result collapsed, beside the text."""
    tools = [
        {
            "name": "get_weather",
            "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}},
        }
    ]
    async with httpx.AsyncClient(base_url=site.direct, headers=site.auth, timeout=10) as api:
        first = await api.post(
            "/ai/chat",
            json={"messages": [{"role": "user", "content": "Weather?"}], "tools": tools},
        )
        assert first.status_code == 200, first.text
        chat = first.json()
        [call] = chat["tool_calls"]
        result = [{"type": "tool_result", "tool_use_id": call["id"], "content": "Sunny, 21 C"}]
        second = await api.post(
            "/ai/chat",
            json={
                "messages": [{"role": "user", "content": result}],
                "tools": tools,
                "conversation_id": chat["conversation_id"],
            },
        )
        assert second.status_code == 200, second.text
    await load(page, f"{site.url}/#c/{chat['conversation_id']}")
    calls = page.locator(".msg.assistant details.tool")
    await expect(calls).to_have_count(1)
    await expect(calls.locator("summary")).to_have_text("Tool call · get_weather")
    assert await calls.get_attribute("open") is None  # collapsed
    await calls.locator("summary").click()
    await expect(calls.locator("pre")).to_have_text('{\n  "city": "mock"\n}')
    results = page.locator(".msg.user details.tool")
    await expect(results.locator("summary")).to_have_text(f"Tool result · {call['id']}")
    await results.locator("summary").click()
    await expect(results.locator("pre")).to_have_text("Sunny, 21 C")
    # The model's answer to the result follows as text.
    await expect(page.locator(".msg.assistant").nth(1).locator(".body")).to_contain_text(
        "returned Sunny, 21 C"
    )
    await shot(page, "tool-calls")
