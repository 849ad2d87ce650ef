"""What `conversation_id` means on the chat endpoints, and the conversations API (SQLite and
PostgreSQL)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from chatrelay.conversation_ids import STORED_ID_LENGTH, lookup_ids, shown_id, stored_id
from chatrelay.db import create_engine, upgrade
from chatrelay.store import STORED_ID, Reply, Store

from .conftest import make_settings, serve, stream_chat
from .fakes.anthropic_upstream import FakeAnthropic, Scenario


def user(text: str) -> dict[str, str]:
    return {"role": "user", "content": text}


def assistant(text: str) -> dict[str, str]:
    return {"role": "assistant", "content": text}


@pytest.fixture
async def fake() -> AsyncIterator[FakeAnthropic]:
    async with FakeAnthropic() as upstream:
        yield upstream


def claude(fake: FakeAnthropic, database_url: str, **values: Any) -> Any:
    return make_settings(
        provider="anthropic",
        anthropic_api_key="sk-ant-test",
        anthropic_base_url=fake.base_url,
        database_url=database_url,
        retry_base_s=0.01,
        **values,
    )


async def conversation(client: httpx.AsyncClient, url: str, cid: str) -> dict[str, Any]:
    response = await client.get(f"{url}/conversations/{cid}")
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def test_without_an_id_a_conversation_is_created_and_both_turns_stored(
    client: httpx.AsyncClient, fake: FakeAnthropic, database_url: str
) -> None:
    fake.default = Scenario(deltas=["Hi ", "there"], input_tokens=9)
    async with serve(claude(fake, database_url)) as url:
        result = await stream_chat(client, url, {"messages": [user("Plan a trip to Oslo")]})
        cid = result.headers["x-conversation-id"]
        stored = await conversation(client, url, cid)
    assert result.named("start")["conversation_id"] == cid
    assert stored["title"] == "Plan a trip to Oslo"
    assert stored["model"] == "claude-sonnet-5-5"
    first, reply = stored["messages"]
    assert first["role"] == "user" and first["content"] == "Plan a trip to Oslo"
    assert reply["role"] == "assistant" and reply["content"] == "Hi there"
    assert reply["end_reason"] == "completed" and reply["stop_reason"] == "end_turn"
    assert reply["model"] == "claude-sonnet-5-5"
    assert reply["usage"] == {
        "input_tokens": 9,
        "output_tokens": 2,
        "estimated": False,
        "cost_usd": None,
    }
    assert reply["ttft_ms"] is not None and reply["duration_ms"] >= reply["ttft_ms"]
    assert reply["stream_id"] == result.headers["x-stream-id"]


async def test_a_known_id_needs_only_the_new_message(
    client: httpx.AsyncClient, fake: FakeAnthropic, database_url: str
) -> None:
    fake.enqueue(Scenario(deltas=["Oslo is cold."]), Scenario(deltas=["Bring a coat."]))
    async with serve(claude(fake, database_url)) as url:
        first = await stream_chat(client, url, {"messages": [user("Oslo?")]})
        cid = first.headers["x-conversation-id"]
        await stream_chat(
            client, url, {"conversation_id": cid, "messages": [user("What to wear?")]}
        )
        stored = await conversation(client, url, cid)
    assert fake.requests[1].body["messages"] == [
        user("Oslo?"),
        assistant("Oslo is cold."),
        user("What to wear?"),
    ]
    assert [m["content"] for m in stored["messages"]] == [
        "Oslo?",
        "Oslo is cold.",
        "What to wear?",
        "Bring a coat.",
    ]


async def test_the_next_turn_may_be_sent_the_moment_done_arrives(
    client: httpx.AsyncClient, fake: FakeAnthropic, database_url: str
) -> None:
    """A client that posts its next message as soon as it reads `[DONE]` (before the first
    response has even ended) finds the conversation free, with the first reply in it."""
    fake.enqueue(*(Scenario(deltas=[f"answer {n}"]) for n in range(5)))
    async with serve(claude(fake, database_url)) as url:
        cid = None
        for n in range(5):
            body: dict[str, Any] = {"messages": [user(f"question {n}")]}
            if cid is not None:
                body["conversation_id"] = cid
            async with client.stream("POST", f"{url}/ai/stream/chat", json=body) as response:
                assert response.status_code == 200, await response.aread()
                cid = response.headers["x-conversation-id"]
                async for line in response.aiter_lines():
                    if line == "data: [DONE]" and n < 4:
                        break  # and on to the next turn, this response still open
        # The last response was read to its end, which comes once its reply is stored.
        assert cid is not None
        stored = await conversation(client, url, cid)
    assert [m["content"] for m in stored["messages"]] == [
        text for n in range(5) for text in (f"question {n}", f"answer {n}")
    ]


@pytest.mark.parametrize(
    "sent",
    [
        [user("Oslo?"), assistant("Oslo is cold."), user("What to wear?")],  # whole history
        [assistant("Oslo is cold."), user("What to wear?")],  # the last turns
    ],
    ids=["whole-history", "tail"],
)
async def test_history_the_client_resends_is_not_duplicated(
    client: httpx.AsyncClient, fake: FakeAnthropic, database_url: str, sent: list[Any]
) -> None:
    fake.enqueue(Scenario(deltas=["Oslo is cold."]), Scenario(deltas=["Bring a coat."]))
    async with serve(claude(fake, database_url)) as url:
        first = await stream_chat(client, url, {"messages": [user("Oslo?")]})
        cid = first.headers["x-conversation-id"]
        await stream_chat(client, url, {"conversation_id": cid, "messages": sent})
        stored = await conversation(client, url, cid)
    assert len(stored["messages"]) == 4
    assert fake.requests[1].body["messages"] == [
        user("Oslo?"),
        assistant("Oslo is cold."),
        user("What to wear?"),
    ]


async def test_an_unknown_well_formed_id_creates_that_conversation(
    client: httpx.AsyncClient, database_url: str
) -> None:
    async with serve(make_settings(provider="mock", database_url=database_url)) as url:
        result = await stream_chat(
            client, url, {"conversation_id": "video-call-42", "messages": [user("hello")]}
        )
        stored = await conversation(client, url, "video-call-42")
    assert result.named("start")["conversation_id"] == "video-call-42"
    assert len(stored["messages"]) == 2


@pytest.mark.parametrize(
    "bad", ["has space", "-leading-dash", "x" * 101, "semi;colon", "trailing-newline\n"]
)
async def test_a_malformed_id_is_refused_naming_the_field(
    client: httpx.AsyncClient, database_url: str, bad: str
) -> None:
    async with serve(make_settings(provider="mock", database_url=database_url)) as url:
        response = await client.post(
            f"{url}/ai/stream/chat", json={"conversation_id": bad, "messages": [user("hi")]}
        )
        listed = (await client.get(f"{url}/conversations")).json()
    assert response.status_code == 422
    assert response.json()["error"]["fields"][0]["field"] == "conversation_id"
    assert listed["data"] == []


async def test_an_upstream_failure_half_way_keeps_the_partial_reply_and_its_code(
    client: httpx.AsyncClient, fake: FakeAnthropic, database_url: str
) -> None:
    fake.default = Scenario(
        deltas=["one ", "two ", "three ", "four ", "five ", "six"], error_event_after=5
    )
    async with serve(claude(fake, database_url)) as url:
        result = await stream_chat(client, url, {"messages": [user("count")]})
        stored = await conversation(client, url, result.headers["x-conversation-id"])
    assert [e["code"] for e in result.errors] == ["overloaded"]
    question, reply = stored["messages"]
    assert question["content"] == "count"
    assert reply["content"] == "one two three four five "
    assert reply["end_reason"] == "error" and reply["error_code"] == "overloaded"
    # The message the error frame showed is stored with it (the page shows it after a reload).
    assert reply["error_message"] == result.errors[0]["error"]
    assert "overloaded" in reply["error_message"]


async def test_a_reply_cut_by_the_client_is_kept_as_disconnected(
    client: httpx.AsyncClient, fake: FakeAnthropic, database_url: str
) -> None:
    fake.default = Scenario(deltas=["a ", "b ", "c ", "d "], stall_after=2)
    async with serve(claude(fake, database_url, resume_grace_s=0)) as url:
        body = {"messages": [user("cut me")]}
        async with client.stream("POST", f"{url}/ai/stream/chat", json=body) as response:
            cid = response.headers["x-conversation-id"]
            seen = 0
            async for line in response.aiter_lines():
                seen += line.startswith('data: {"content"')
                if seen == 2:
                    break
        deadline = time.monotonic() + 5
        while True:
            stored = await conversation(client, url, cid)
            if len(stored["messages"]) == 2 or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.02)
    reply = stored["messages"][1]
    assert reply["content"] == "a b "
    assert reply["end_reason"] == "disconnected"
    assert reply["error_code"] is None and reply["error_message"] is None


async def test_a_second_request_while_a_reply_streams_gets_409(
    client: httpx.AsyncClient, database_url: str
) -> None:
    settings = make_settings(provider="mock", database_url=database_url, mock_delay_s=0.05)
    async with serve(settings) as url:
        body = {"conversation_id": "busy-1", "messages": [user("long one")]}
        slow = asyncio.create_task(
            stream_chat(client, url, {**body, "metadata": {"mock": {"words": 20}}})
        )
        await asyncio.sleep(0.3)
        busy = await client.post(
            f"{url}/ai/stream/chat", json={"conversation_id": "busy-1", "messages": [user("and?")]}
        )
        await slow
        after = await stream_chat(
            client, url, {"conversation_id": "busy-1", "messages": [user("and now?")]}
        )
        stored = await conversation(client, url, "busy-1")
    assert busy.status_code == 409
    assert busy.json()["error"]["code"] == "conversation_busy"
    assert after.named("end")["reason"] == "completed"
    assert [m["role"] for m in stored["messages"]] == ["user", "assistant", "user", "assistant"]
    assert stored["messages"][2]["content"] == "and now?"  # the refused one was not stored


async def test_a_long_history_leaves_out_the_oldest_turns_but_never_the_system_prompt(
    client: httpx.AsyncClient, fake: FakeAnthropic, database_url: str
) -> None:
    fake.default = Scenario(deltas=["x" * 400])  # ~100 tokens per reply
    settings = claude(fake, database_url, history_budget_tokens=450)
    async with serve(settings) as url:
        first = await stream_chat(
            client, url, {"messages": [user("q" * 400)], "system": "Be brief."}
        )
        cid = first.headers["x-conversation-id"]
        results = [first]
        for n in range(3):
            results.append(
                await stream_chat(
                    client,
                    url,
                    {
                        "conversation_id": cid,
                        "messages": [user(f"{n}" * 400)],
                        "system": "Be brief.",
                    },
                )
            )
    omitted = [r.named("start").get("history_omitted", 0) for r in results]
    assert omitted[0] == 0 and omitted[-1] >= 2
    last = fake.requests[-1].body
    assert last["system"] == "Be brief."
    assert last["messages"][0]["role"] == "user"
    assert last["messages"][-1] == user("2" * 400)
    assert len(last["messages"]) == 7 - omitted[-1]


async def test_the_conversations_api_lists_reads_renames_and_deletes(
    client: httpx.AsyncClient, database_url: str
) -> None:
    async with serve(make_settings(provider="mock", database_url=database_url)) as url:
        ids = []
        for n in range(5):
            result = await stream_chat(client, url, {"messages": [user(f"topic {n}")]})
            ids.append(result.headers["x-conversation-id"])
        pages, cursor = [], None
        while True:
            params = {"limit": 2} | ({"cursor": cursor} if cursor else {})
            page = (await client.get(f"{url}/conversations", params=params)).json()
            pages.append([c["id"] for c in page["data"]])
            cursor = page["next_cursor"]
            if cursor is None:
                break
        renamed = await client.patch(
            f"{url}/conversations/{ids[0]}", json={"title": "Renamed", "metadata": {"pinned": True}}
        )
        bad_patch = await client.patch(f"{url}/conversations/{ids[0]}", json={"title": ""})
        newest = (await client.get(f"{url}/conversations", params={"limit": 1})).json()
        deleted = await client.delete(f"{url}/conversations/{ids[1]}")
        gone = await client.get(f"{url}/conversations/{ids[1]}")
        deleted_again = await client.delete(f"{url}/conversations/{ids[1]}")
        missing = await client.patch(f"{url}/conversations/nope", json={"title": "x"})
    assert [len(p) for p in pages] == [2, 2, 1]
    assert [cid for page in pages for cid in page] == list(reversed(ids))  # newest first, once
    assert renamed.status_code == 200
    assert renamed.json()["title"] == "Renamed"
    assert renamed.json()["metadata"] == {"pinned": True}
    assert bad_patch.status_code == 422
    assert bad_patch.json()["error"]["fields"][0]["field"] == "title"
    assert newest["data"][0]["id"] == ids[0]  # renaming counts as activity
    assert deleted.status_code == 204
    assert gone.status_code == 404 and gone.json()["error"]["code"] == "not_found"
    assert deleted_again.status_code == 404
    assert missing.status_code == 404


async def test_usage_sums_tokens_by_model_and_by_day(
    client: httpx.AsyncClient, fake: FakeAnthropic, database_url: str
) -> None:
    fake.default = Scenario(deltas=["a", "b", "c"], input_tokens=10)
    async with serve(claude(fake, database_url)) as url:
        await stream_chat(client, url, {"messages": [user("one")]})
        await stream_chat(client, url, {"messages": [user("two")]})
        await stream_chat(client, url, {"messages": [user("three")], "model": "mock"})
        by_model = (await client.get(f"{url}/usage", params={"group_by": "model"})).json()
        by_day = (await client.get(f"{url}/usage", params={"group_by": "day"})).json()
        today = time.strftime("%Y-%m-%d", time.gmtime())
        tomorrow = time.strftime("%Y-%m-%d", time.gmtime(time.time() + 86400))
        none_yet = (await client.get(f"{url}/usage", params={"from": tomorrow})).json()
        bad = await client.get(f"{url}/usage", params={"from": "yesterday"})
    claude_row = next(r for r in by_model["data"] if r["model"] == "claude-sonnet-5-5")
    assert claude_row == {
        "model": "claude-sonnet-5-5",
        "messages": 2,
        "input_tokens": 20,
        "output_tokens": 6,
        "cache_read_tokens": 0,
        "cache_write_tokens": 0,
        "estimated_messages": 0,
        "cost_usd": None,  # no price known for this id: unknown, not 0
        "unpriced_messages": 2,
    }
    assert by_day["data"][0]["day"] == today
    assert by_day["total"]["messages"] == 3
    assert none_yet["data"] == [] and none_yet["total"]["messages"] == 0
    assert bad.status_code == 422 and "from" in bad.json()["error"]["message"]


async def test_the_openai_endpoint_is_stateless_unless_metadata_names_a_conversation(
    client: httpx.AsyncClient, database_url: str
) -> None:
    async with serve(make_settings(provider="mock", database_url=database_url)) as url:
        body = {"model": "mock", "messages": [user("hi")]}
        await client.post(f"{url}/v1/chat/completions", json=body)
        before = (await client.get(f"{url}/conversations")).json()["data"]
        await client.post(
            f"{url}/v1/chat/completions", json={**body, "metadata": {"conversation_id": "oa-1"}}
        )
        after = await conversation(client, url, "oa-1")
    assert before == []
    assert [m["role"] for m in after["messages"]] == ["user", "assistant"]


async def test_a_reply_without_upstream_usage_is_estimated_and_flagged(
    client: httpx.AsyncClient, database_url: str
) -> None:
    from .fakes.openai_upstream import FakeOpenAI, OpenAIScenario

    async with FakeOpenAI() as openai_fake:
        openai_fake.default = OpenAIScenario(deltas=["x" * 40], usage_when_asked=False)
        settings = make_settings(
            provider="openai",
            openai_base_url=openai_fake.base_url,
            model="llama3.2",
            database_url=database_url,
        )
        async with serve(settings) as url:
            result = await stream_chat(client, url, {"messages": [user("y" * 80)]})
            stored = await conversation(client, url, result.headers["x-conversation-id"])
    usage = stored["messages"][1]["usage"]
    assert usage == {"input_tokens": 20, "output_tokens": 10, "estimated": True, "cost_usd": None}
    assert json.loads(json.dumps(result.named("end")))["usage"]["output_tokens"] is None


@pytest.mark.parametrize(
    ("resend_history", "why"),
    [
        (False, "must contain at least one user message"),
        (True, "must contain at least one user message that is not already stored"),
    ],
    ids=["assistant-only", "stored-history-then-assistant"],
)
async def test_continuing_with_no_new_user_message_is_refused_and_stores_nothing(
    client: httpx.AsyncClient, database_url: str, resend_history: bool, why: str
) -> None:
    async with serve(make_settings(provider="mock", database_url=database_url)) as url:
        first = await stream_chat(client, url, {"messages": [user("Oslo?")]})
        cid = first.headers["x-conversation-id"]
        before = await conversation(client, url, cid)
        usage_before = (await client.get(f"{url}/usage")).json()["total"]
        sent = [assistant("And dark.")]
        if resend_history:  # the stored turns, exactly: only the assistant one is new
            sent = [user("Oslo?"), assistant(before["messages"][1]["content"]), *sent]
        refused = await client.post(
            f"{url}/ai/stream/chat", json={"conversation_id": cid, "messages": sent}
        )
        after = await conversation(client, url, cid)
        usage_after = (await client.get(f"{url}/usage")).json()["total"]
    assert refused.status_code == 422, refused.text
    [problem] = refused.json()["error"]["fields"]
    assert problem["field"] == "messages"
    assert problem["message"].startswith(why), problem["message"]
    assert after["messages"] == before["messages"]
    assert usage_after == usage_before


# -- ids live in the caller's namespace: neither squatted nor probed -------------------------


def two_visitors(database_url: str) -> Any:
    """Anonymous callers told apart by address (behind a trusted proxy): Bob and Alice."""
    return make_settings(
        provider="mock",
        database_url=database_url,
        auth="anonymous",
        trusted_proxies="127.0.0.0/8",
        limits_anonymous="rpm=1000",
        mock_delay_s=0,
    )


BOB = {"x-forwarded-for": "198.51.100.1"}
ALICE = {"x-forwarded-for": "198.51.100.2"}


def texts(stored: dict[str, Any]) -> list[str]:
    return [m["content"] for m in stored["messages"] if m["role"] == "user"]


async def test_an_id_another_caller_chose_is_a_new_conversation_of_ones_own(
    client: httpx.AsyncClient, database_url: str
) -> None:
    async with serve(two_visitors(database_url)) as url:
        bob = await stream_chat(
            client,
            url,
            {"conversation_id": "project-plan", "messages": [user("Bob's plan")]},
            headers=BOB,
        )
        alice = await stream_chat(
            client,
            url,
            {"conversation_id": "project-plan", "messages": [user("Alice's plan")]},
            headers=ALICE,
        )
        answered = await client.post(
            f"{url}/ai/chat",
            json={"conversation_id": "project-plan", "messages": [user("Alice again")]},
            headers=ALICE,
        )
        again = await stream_chat(
            client,
            url,
            {"conversation_id": "project-plan", "messages": [user("Bob again")]},
            headers=BOB,
        )
        bobs = await client.get(f"{url}/conversations/project-plan", headers=BOB)
        alices = await client.get(f"{url}/conversations/project-plan", headers=ALICE)
        listed = {
            name: (await client.get(f"{url}/conversations", headers=who)).json()["data"]
            for name, who in (("bob", BOB), ("alice", ALICE))
        }
    for result in (bob, alice, again):
        assert result.status == 200
        # The id as the client sent it, not as it is stored.
        assert result.headers["x-conversation-id"] == "project-plan"
        assert result.named("start")["conversation_id"] == "project-plan"
    assert answered.status_code == 200 and answered.json()["conversation_id"] == "project-plan"
    assert bobs.json()["id"] == alices.json()["id"] == "project-plan"
    assert texts(bobs.json()) == ["Bob's plan", "Bob again"]
    assert texts(alices.json()) == ["Alice's plan", "Alice again"]
    assert (
        [c["id"] for c in listed["bob"]] == [c["id"] for c in listed["alice"]] == ["project-plan"]
    )
    assert listed["bob"][0]["title"] == "Bob's plan"
    assert listed["alice"][0]["title"] == "Alice's plan"


async def test_anothers_id_answers_exactly_as_an_id_nobody_has(
    client: httpx.AsyncClient, database_url: str
) -> None:
    """Whether Bob has `bobs-plan` cannot be told from Alice's answers."""

    async def probe(url: str) -> list[tuple[int, Any]]:
        cid = "bobs-plan"
        answers = [
            await client.get(f"{url}/conversations/{cid}", headers=ALICE),
            await client.patch(
                f"{url}/conversations/{cid}", json={"title": "Mine now"}, headers=ALICE
            ),
            await client.delete(f"{url}/conversations/{cid}", headers=ALICE),
        ]
        bodies = [(a.status_code, a.json()) for a in answers]
        for _, body in bodies:
            body["error"].pop("request_id", None)  # one per request
        # A chat naming it starts a conversation of Alice's own (deleted again after).
        chat = await stream_chat(
            client, url, {"conversation_id": cid, "messages": [user("Mine")]}, headers=ALICE
        )
        mine = await client.get(f"{url}/conversations/{cid}", headers=ALICE)
        dropped = await client.delete(f"{url}/conversations/{cid}", headers=ALICE)
        bodies.append((chat.status, chat.named("start")["conversation_id"]))
        bodies.append((mine.status_code, texts(mine.json())))
        bodies.append((dropped.status_code, None))
        return bodies

    async with serve(two_visitors(database_url)) as url:
        created = await stream_chat(
            client,
            url,
            {"conversation_id": "bobs-plan", "messages": [user("Secret")]},
            headers=BOB,
        )
        while_bobs = await probe(url)
        kept = await client.get(f"{url}/conversations/bobs-plan", headers=BOB)
        deleted = await client.delete(f"{url}/conversations/bobs-plan", headers=BOB)
        while_nobodys = await probe(url)
    assert created.status == 200
    assert while_bobs == while_nobodys
    assert [status for status, _ in while_bobs] == [404, 404, 404, 200, 200, 204]
    assert while_bobs[3:5] == [(200, "bobs-plan"), (200, ["Mine"])]
    assert while_bobs[0][1]["error"]["code"] == "not_found"
    # Alice's PATCH and DELETE did nothing to Bob's conversation.
    assert kept.status_code == 200 and kept.json()["title"] == "Secret"
    assert texts(kept.json()) == ["Secret"]
    assert deleted.status_code == 204


async def test_a_conversation_stored_before_namespaces_is_still_its_owners(
    client: httpx.AsyncClient, database_url: str
) -> None:
    """A row of before revision 0005 has a bare id: its owner finds and continues it by that
    id, as before; to anyone else that id is unknown (a new conversation of their own)."""
    engine = create_engine(database_url)
    try:
        await upgrade(engine)
        store = Store(engine)
        await store.begin_turn(
            "old-chat", "anon:198.51.100.1", "s1", [user("Old times")], "Old times", "mock", True
        )
        await store.end_turn("old-chat", Reply("Indeed.", "mock", "s1", "completed"))
        await store.close()
    finally:
        await engine.dispose()
    async with serve(two_visitors(database_url)) as url:
        listed = (await client.get(f"{url}/conversations", headers=BOB)).json()["data"]
        continued = await stream_chat(
            client,
            url,
            {"conversation_id": "old-chat", "messages": [user("New times")]},
            headers=BOB,
        )
        hers = await stream_chat(
            client,
            url,
            {"conversation_id": "old-chat", "messages": [user("Hers")]},
            headers=ALICE,
        )
        renamed = await client.patch(
            f"{url}/conversations/old-chat", json={"title": "Renamed"}, headers=BOB
        )
        alices = await client.get(f"{url}/conversations/old-chat", headers=ALICE)
        deleted = await client.delete(f"{url}/conversations/old-chat", headers=BOB)
        gone = await client.get(f"{url}/conversations/old-chat", headers=BOB)
    assert [c["id"] for c in listed] == ["old-chat"]
    assert continued.status == 200
    assert continued.named("start")["conversation_id"] == "old-chat"
    assert continued.headers["x-conversation-id"] == "old-chat"
    assert hers.status == 200 and hers.named("start")["conversation_id"] == "old-chat"
    assert renamed.status_code == 200 and renamed.json()["id"] == "old-chat"
    assert texts(renamed.json()) == ["Old times", "New times"]  # the old row, continued
    assert renamed.json()["title"] == "Renamed"
    assert texts(alices.json()) == ["Hers"]
    assert deleted.status_code == 204 and gone.status_code == 404


def test_ids_map_into_the_owners_namespace_and_back() -> None:
    bobs, alices = (
        stored_id("anon:198.51.100.1", "project-plan"),
        stored_id("key:a1", "project-plan"),
    )
    assert bobs != alices and bobs.endswith(".project-plan")
    assert shown_id("anon:198.51.100.1", bobs) == "project-plan"
    assert shown_id("key:a1", bobs) == bobs  # another namespace (an admin's view): whole
    assert shown_id("key:a1", "old-chat") == "old-chat"  # a row of before namespaces
    longest = stored_id("key:a1", "x" * 100)
    assert len(longest) == STORED_ID_LENGTH and STORED_ID.match(longest)
    assert lookup_ids("key:a1", "old-chat") == (stored_id("key:a1", "old-chat"), "old-chat")
    # Its own namespaced id is not a second name of another of its conversations.
    assert lookup_ids("key:a1", alices) == (stored_id("key:a1", alices),)
