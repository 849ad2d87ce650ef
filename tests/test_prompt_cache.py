"""Automatic prompt caching of Anthropic requests: where the breakpoints go, turn after turn,
what a client's own breakpoints become, and what the cache saves as Anthropic bills it.

The loopback fake counts each request with a prompt cache that follows Anthropic's documented
rules (tests/fakes/prompt_cache.py), so a breakpoint in the wrong place shows as a miss.
"""

from __future__ import annotations

import copy
import itertools
from pathlib import Path
from typing import Any

import httpx
import pytest

from chatrelay.providers.prompt_cache import add_breakpoints

from .conftest import make_settings, serve, stream_chat
from .fakes.anthropic_upstream import FakeAnthropic, Scenario
from .fakes.prompt_cache import PromptCache

LONG = "The rules of the game, at length. " * 150  # ~5,000 characters: ~1,275 tokens
MARK = {"type": "ephemeral"}


def marks(body: dict[str, Any]) -> list[str]:
    """Where a request's breakpoints are: 'system', 'tools[i]', 'messages[i]'."""
    found = []
    system = body.get("system")
    if isinstance(system, list) and any("cache_control" in b for b in system):
        found.append("system")
    for index, tool in enumerate(body.get("tools") or []):
        if "cache_control" in tool:
            found.append(f"tools[{index}]")
    for index, message in enumerate(body["messages"]):
        content = message["content"]
        if isinstance(content, list) and any("cache_control" in b for b in content):
            found.append(f"messages[{index}]")
    return found


def request(*messages: str, system: str | None = None) -> dict[str, Any]:
    roles = ["user", "assistant"]
    body: dict[str, Any] = {
        "model": "claude-sonnet-5-5",
        "messages": [{"role": roles[i % 2], "content": m} for i, m in enumerate(messages)],
    }
    if system is not None:
        body["system"] = system
    return body


def place(body: dict[str, Any], continues: bool = True, ttl: str = "5m") -> dict[str, Any]:
    return add_breakpoints(body, min_tokens=1024, ttl=ttl, continues=continues)


def test_a_short_prompt_gets_no_breakpoint() -> None:
    assert marks(place(request("Hi", "Hello", "How are you?"))) == []


def test_a_long_system_prompt_is_cached_on_its_own() -> None:
    placed = place(request("Hi", system=LONG), continues=False)
    assert marks(placed) == ["system"]
    assert placed["system"] == [{"type": "text", "text": LONG, "cache_control": MARK}]


def test_a_conversation_writes_its_end_and_reads_the_previous_turns_end() -> None:
    first = place(request(LONG))
    assert marks(first) == ["messages[0]"]
    third = place(request(LONG, "An answer.", "A follow-up.", "Another answer.", "More?"))
    # The previous turn's prompt ended at messages[2]: read back; the whole prompt: written.
    assert marks(third) == ["messages[2]", "messages[4]"]


def test_a_one_off_request_is_not_made_to_pay_for_a_write() -> None:
    assert marks(place(request(LONG), continues=False)) == []


def test_a_clients_own_breakpoints_are_kept_as_they_are_and_none_added() -> None:
    body = request(LONG, "An answer.", "More?", system=LONG)
    body["messages"][0]["content"] = [{"type": "text", "text": LONG, "cache_control": MARK}]
    assert place(body) is body
    assert marks(body) == ["messages[0]"]


def test_the_stored_history_it_is_built_from_is_not_changed() -> None:
    body = request(LONG, "An answer.", "More?", system=LONG)
    before = copy.deepcopy(body)
    placed = place(body, ttl="1h")
    assert body == before
    assert placed["messages"][2]["content"][-1]["cache_control"] == {
        "type": "ephemeral",
        "ttl": "1h",
    }
    assert len(marks(placed)) <= 4


@pytest.fixture(autouse=True)
def _key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-test")


def anthropic(fake: FakeAnthropic, tmp_path: Path, cache: str = "auto") -> Any:
    models = tmp_path / "models.toml"
    models.write_text(
        "[models.claude]\n"
        'provider = "anthropic"\n'
        'model = "claude-sonnet-5-5"\n'
        f'base_url = "{fake.base_url}"\n'
        f'cache = "{cache}"\n'
    )
    return make_settings(
        models_file=str(models), database_url=f"sqlite+aiosqlite:///{tmp_path}/c.db"
    )


async def converse(client: httpx.AsyncClient, url: str, fake: FakeAnthropic, turns: int) -> list:
    """A stored conversation of `turns` turns; the `end` frames' usage of each."""
    usages = []
    for turn in range(turns):
        fake.enqueue(Scenario(deltas=[f"Answer {turn}. " * 40]))
        result = await stream_chat(
            client,
            url,
            {
                "messages": [{"role": "user", "content": f"Question {turn}: " + LONG}],
                "system": LONG,
                "conversation_id": "long",
            },
        )
        assert result.status == 200 and result.named("end")["reason"] == "completed"
        usages.append(result.named("end")["usage"])
    return usages


async def test_each_turn_of_a_stored_conversation_reads_what_the_last_one_wrote(
    client: httpx.AsyncClient, tmp_path: Path
) -> None:
    async with FakeAnthropic() as fake:
        fake.cache = PromptCache()
        async with serve(anthropic(fake, tmp_path)) as url:
            usages = await converse(client, url, fake, 4)
        bodies = [r.body for r in fake.requests]
    assert [marks(b) for b in bodies] == [
        ["system", "messages[0]"],
        ["system", "messages[0]", "messages[2]"],
        ["system", "messages[2]", "messages[4]"],
        ["system", "messages[4]", "messages[6]"],
    ]
    assert usages[0]["cache_write_tokens"] > 0 and usages[0].get("cache_read_tokens", 0) == 0
    for before, usage in itertools.pairwise(usages):
        # All of the previous prompt is read; only the new turn is written.
        assert usage["cache_read_tokens"] >= before["input_tokens"] - 50
        assert usage["cache_write_tokens"] < usage["cache_read_tokens"]
        assert usage["input_tokens"] >= usage["cache_read_tokens"] + usage["cache_write_tokens"]


async def test_an_alias_with_caching_off_sends_no_breakpoints(
    client: httpx.AsyncClient, tmp_path: Path
) -> None:
    async with FakeAnthropic() as fake:
        fake.cache = PromptCache()
        async with serve(anthropic(fake, tmp_path, cache="off")) as url:
            usages = await converse(client, url, fake, 2)
        assert all(marks(r.body) == [] for r in fake.requests)
    assert all(u.get("cache_read_tokens", 0) == 0 for u in usages)


async def test_a_clients_breakpoint_on_its_system_prompt_reaches_claude_unmoved(
    client: httpx.AsyncClient, tmp_path: Path
) -> None:
    system = [{"type": "text", "text": LONG, "cache_control": {"type": "ephemeral", "ttl": "1h"}}]
    async with FakeAnthropic() as fake, serve(anthropic(fake, tmp_path)) as url:
        result = await stream_chat(
            client, url, {"messages": [{"role": "user", "content": LONG}], "system": system}
        )
        assert result.status == 200
        sent = fake.requests[-1].body
    assert sent["system"] == system
    assert marks(sent) == ["system"]
