"""CPU per upstream request of the two ways to send one through the anthropic SDK.

    python bench/sdk_request.py --turns 0,1,20,100

Starts the fake upstream (tests/fakes/anthropic_upstream.py) in a SUBPROCESS, so its CPU is
not counted, and sends streaming requests of one delta each, 10 at a time, through the SDK on
chatrelay's transport, with a history of N earlier turns (a ~500-character question and a
~1,100-character answer each) before a one-word message. Reported: ``time.process_time()``
of this process per request, the best of three rounds of 1,000 requests per mode.

Modes:
  create  client.messages.with_streaming_response.create(**body): the typed call; the SDK
          walks and copies the body, then encodes it with the standard library's json
  post    client.post("/v1/messages", cast_to=httpx2.Response, content=orjson.dumps(body),
          stream=True): the SDK's documented raw call, as chatrelay sends (sdk.post_stream)
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import anthropic
import orjson

from chatrelay.providers.sdk import post_stream
from chatrelay.providers.transport import RelayTransport
from sdk_streaming import start_fake  # a sibling script: bench/ is on sys.path

Send = Callable[[anthropic.AsyncAnthropic, dict[str, Any]], Awaitable[None]]


def request_body(turns: int) -> dict[str, Any]:
    messages: list[dict[str, Any]] = []
    for i in range(turns):
        messages.append({"role": "user", "content": f"question {i} " + "lorem ipsum " * 40})
        messages.append({"role": "assistant", "content": f"answer {i} " + "dolor sit amet " * 80})
    messages.append({"role": "user", "content": "bench"})
    return {"model": "claude-bench", "max_tokens": 100, "messages": messages, "stream": True}


async def via_create(client: anthropic.AsyncAnthropic, body: dict[str, Any]) -> None:
    async with client.messages.with_streaming_response.create(**body) as response:
        async for _ in response.http_response.aiter_raw():
            pass


async def via_post(client: anthropic.AsyncAnthropic, body: dict[str, Any]) -> None:
    response = await post_stream(client, "/v1/messages", body)
    try:
        async for _ in response.aiter_raw():
            pass
    finally:
        await response.aclose()


async def cpu_per_request(client: anthropic.AsyncAnthropic, send: Send, turns: int) -> float:
    body = request_body(turns)
    for _ in range(50):  # warm-up: connections, imports, caches
        await send(client, body)
    best = float("inf")
    for _ in range(3):
        start = time.process_time()
        for _ in range(100):
            await asyncio.gather(*(send(client, body) for _ in range(10)))
        best = min(best, (time.process_time() - start) / 1000)
    return best


async def amain(turns: list[int]) -> None:
    proc, url = start_fake(1, 0.0)
    try:
        transport = RelayTransport(max_connections=100)
        client = anthropic.AsyncAnthropic(
            api_key="bench-key",
            base_url=url,
            max_retries=0,
            http_client=anthropic.DefaultAsyncHttpxClient(transport=transport),
        )
        print("| earlier turns | body KB | create µs/request | post µs/request | saved |")
        print("|---:|---:|---:|---:|---:|")
        for n in turns:
            create = await cpu_per_request(client, via_create, n)
            post = await cpu_per_request(client, via_post, n)
            size = len(orjson.dumps(request_body(n))) / 1024
            print(
                f"| {n} | {size:.1f} | {create * 1e6:.0f} | {post * 1e6:.0f} "
                f"| {(create - post) * 1e6:.0f} |"
            )
        await client.close()
    finally:
        proc.terminate()
        proc.wait()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--turns", default="0,1,20,100", help="history sizes, comma-separated")
    args = p.parse_args()
    asyncio.run(amain([int(n) for n in args.turns.split(",")]))


if __name__ == "__main__":
    main()
