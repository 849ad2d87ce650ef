"""The page's JavaScript modules on their own: chatrelay.js (the reusable client: SSE parser,
resume, Stop) in Node and in Chromium, and markdown.js (the safe renderer) in Chromium.

The Node tests are tests/js/chatrelay.test.mjs (`node --test`); the tricky SSE input is shared
with the in-browser test through tests/js/sse_cases.mjs.
"""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from playwright.async_api import Browser, Page, Route

from chatrelay.app import create_app

from .conftest import make_settings, serve_app
from .test_page import chromium

JS_TESTS = Path(__file__).resolve().parent / "js"
ROOT = JS_TESTS.parent.parent

pytestmark = pytest.mark.asyncio(loop_scope="module")


async def test_client_module_in_node() -> None:
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed (the parser cases also run in Chromium below)")
    process = await asyncio.create_subprocess_exec(
        node,
        "--test",
        "--test-reporter=spec",
        str(JS_TESTS / "chatrelay.test.mjs"),
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    output, _ = await asyncio.wait_for(process.communicate(), 60)
    report = output.decode()
    assert process.returncode == 0, report
    assert "# fail 0" in report or "ℹ fail 0" in report, report


# -- in Chromium -----------------------------------------------------------------------------


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def js_page(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Page]:
    """A page on chatrelay's origin that can import its modules, and the shared test cases
    (served from tests/js under /__tests__/ by the browser itself)."""
    tmp = tmp_path_factory.mktemp("js")
    app = create_app(make_settings(provider="mock", database_url=f"sqlite+aiosqlite:///{tmp}/p.db"))
    async with serve_app(app) as url, chromium() as browser:
        page = await _blank_page(browser, url)
        yield page


async def _blank_page(browser: Browser, url: str) -> Page:
    page = await browser.new_page()

    async def tests_dir(route: Route) -> None:
        name = route.request.url.rsplit("/", 1)[1]
        await route.fulfill(
            path=JS_TESTS / name, headers={"content-type": "text/javascript; charset=utf-8"}
        )

    await page.route("**/__tests__/*.mjs", tests_dir)
    await page.goto(f"{url}/healthz")
    return page


async def test_sse_parser_in_chromium(js_page: Page) -> None:
    outcome: dict[str, Any] = await js_page.evaluate(
        """async () => {
            const { SSEParser } = await import("/static/chatrelay.js");
            const { checkParser } = await import("/__tests__/sse_cases.mjs");
            return checkParser(SSEParser);
        }"""
    )
    assert outcome["failed"] == 0, "\n".join(outcome["failures"])
    assert outcome["runs"] > 500


# Model output that must never become active HTML, each with what must stay visible as text.
HOSTILE = [
    '<img src=x onerror="window.__xss=1">',
    "<script>window.__xss=2</script>",
    '<svg onload="window.__xss=3"></svg>',
    '<a href="javascript:window.__xss=4">x</a>',
    "[x](javascript:window.__xss=5)",
    "[x](JaVaScRiPt:window.__xss=6)",
    "[x](data:text/html,<script>window.__xss=7</script>)",
    "[x](//evil.example/x)",
    "[x](/relative)",
    '<iframe srcdoc="<script>parent.__xss=8</script>"></iframe>',
    "![i](https://example.com/x.png)",
    "`<b>code</b>` and **<i>bold</i>**",
    '```html\n<img src=x onerror="window.__xss=9">\n```',
    "<style>body{display:none}</style>",
    '<div style="position:fixed;inset:0">overlay</div>',
    '[ok](https://example.com/a"onmouseover="window.__xss=10)',
    "- <img src=x onerror=window.__xss=11>\n- [a](javascript:x)\n\n> <script>1</script>",
    "| a | <b>b</b> |\n|---|---|\n| <img src=x onerror=window.__xss=12> | [c](javascript:x) |",
]


async def test_markdown_renders_model_html_as_text(js_page: Page) -> None:
    report: list[dict[str, Any]] = await js_page.evaluate(
        """async (inputs) => {
            const { renderMarkdown } = await import("/static/markdown.js");
            const allowed = new Set(["P", "BR", "STRONG", "EM", "DEL", "CODE", "PRE", "A", "UL",
                "OL", "LI", "BLOCKQUOTE", "H1", "H2", "H3", "H4", "H5", "H6", "HR", "TABLE",
                "THEAD", "TBODY", "TR", "TH", "TD", "DIV"]);
            const attributes = new Set(["href", "rel", "target", "class", "start", "data-lang",
                "style"]);
            return inputs.map((input) => {
                const host = document.createElement("div");
                host.appendChild(renderMarkdown(input));
                document.body.appendChild(host);
                const problems = [];
                for (const el of host.querySelectorAll("*")) {
                    if (!allowed.has(el.tagName)) problems.push(`element ${el.tagName}`);
                    for (const attr of el.attributes) {
                        if (!attributes.has(attr.name)) problems.push(`attribute ${attr.name}`);
                    }
                    if (el.tagName === "A" && !/^https?:\\/\\//.test(el.getAttribute("href"))) {
                        problems.push(`link ${el.getAttribute("href")}`);
                    }
                    if (el.tagName === "DIV" && el.className !== "table-wrap") {
                        problems.push("div");
                    }
                    const style = el.getAttribute("style");
                    if (style && !/^text-align: (left|right|center);$/.test(style)) {
                        problems.push(`style ${style}`);
                    }
                }
                const text = host.textContent;
                host.remove();
                return { input, problems, text, html: host.innerHTML };
            });
        }""",
        HOSTILE,
    )
    assert await js_page.evaluate("window.__xss") is None
    for case in report:
        assert case["problems"] == [], case
    text = {case["input"]: case["text"] for case in report}
    for hostile in HOSTILE[:10]:
        assert hostile.split("(", 1)[-1].rstrip(")") in text[hostile], text[hostile]
    assert text["`<b>code</b>` and **<i>bold</i>**"] == "<b>code</b> and <i>bold</i>"
    links = {case["input"]: case["html"] for case in report}
    assert 'href="https://example.com/x.png"' in links["![i](https://example.com/x.png)"]
    assert "<img" not in links["![i](https://example.com/x.png)"]


MARKDOWN = """# Title

Some *emphasis*, **strong**, ~~gone~~, `code`, a [link](https://example.com/a_b) and
https://example.com/bare. A snake_case_name stays as it is, and 2 * 3 * 4 too.

```python
def f(x):
    return x * 2  # **not bold**

```

1. one
2. two
   - nested *a*
   - nested b
3. three

> quoted
> text

| left | right |
|:-----|------:|
| a | `b|c` |

---
Escaped: \\*literal stars\\*.
"""


async def test_markdown_rendering(js_page: Page) -> None:
    html: str = await js_page.evaluate(
        """async (src) => {
            const { renderMarkdown } = await import("/static/markdown.js");
            const host = document.createElement("div");
            host.appendChild(renderMarkdown(src));
            return host.innerHTML;
        }""",
        MARKDOWN,
    )
    expected = [
        "<h1>Title</h1>",
        "<em>emphasis</em>",
        "<strong>strong</strong>",
        "<del>gone</del>",
        "<code>code</code>",
        '<a href="https://example.com/a_b" rel="noopener noreferrer nofollow" target="_blank">'
        "link</a>",
        '<a href="https://example.com/bare" rel="noopener noreferrer nofollow" target="_blank">'
        "https://example.com/bare</a>.",
        "A snake_case_name stays as it is, and 2 * 3 * 4 too.",
        '<pre data-lang="python"><code class="language-python">def f(x):\n'
        "    return x * 2  # **not bold**\n</code></pre>",
        "<ol><li>one</li><li><p>two</p><ul><li>nested <em>a</em></li><li>nested b</li></ul></li>"
        "<li>three</li></ol>",
        "<blockquote><p>quoted<br>text</p></blockquote>",
        '<th style="text-align: left;">left</th><th style="text-align: right;">right</th>',
        '<td style="text-align: right;"><code>b|c</code></td>',
        "<hr>",
        "*literal stars*.",
    ]
    for part in expected:
        assert part in html, (part, html)


async def test_markdown_view_streams_to_the_same_result(js_page: Page) -> None:
    """Fed a piece at a time (one render per piece), the streaming view ends with exactly the
    DOM of a one-shot render, and has kept completed blocks instead of re-parsing them."""
    result: dict[str, Any] = await js_page.evaluate(
        """async (src) => {
            const { renderMarkdown, MarkdownView } = await import("/static/markdown.js");
            const whole = document.createElement("div");
            whole.appendChild(renderMarkdown(src));
            const host = document.createElement("div");
            const view = new MarkdownView(host);
            let kept = 0;
            for (let end = 1; end <= src.length; end += 3) {
                view.set(src.slice(0, end));
                view.flush();
                kept = Math.max(kept, view.committed);
            }
            view.set(src);
            view.flush();
            const streamed = [...host.children].map((c) => c.innerHTML).join("");
            return { same: streamed === whole.innerHTML, streamed, whole: whole.innerHTML,
                     kept, length: src.length };
        }""",
        MARKDOWN,
    )
    assert result["same"], (result["streamed"], result["whole"])
    assert result["kept"] > result["length"] // 2
