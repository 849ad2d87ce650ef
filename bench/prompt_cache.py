"""What automatic prompt caching saves: one 20-turn stored conversation, caching off and auto.

    python bench/prompt_cache.py [--turns 20] [--out bench/results/prompt_cache.json]

chatrelay runs in this process (uvicorn on a free port, SQLite in a temporary directory),
in front of the loopback Anthropic fake with a prompt cache that caches and counts as
Anthropic documents (tests/fakes/prompt_cache.py). Each turn sends one new question (~600
characters) to the stored conversation under a ~6,000-character system prompt; the fake
answers ~2,400 characters. The input cost of each turn is priced as Anthropic bills it:
uncached input at 1×, cache writes at 1.25×, cache reads at 0.1× the input price
(claude-sonnet-5-5's $3 per million input tokens; the ratio does not depend on the price).
The same conversation runs once with the alias's `cache = "off"` and once with `"auto"`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.conftest import make_settings, serve, stream_chat  # noqa: E402
from tests.fakes.anthropic_upstream import FakeAnthropic, Scenario  # noqa: E402
from tests.fakes.prompt_cache import PromptCache  # noqa: E402

INPUT_PRICE = 3.0  # USD per million input tokens
WRITE, READ = 1.25, 0.1  # Anthropic's multipliers of the input price
SYSTEM = "You are a careful assistant for a travel agency. " * 120
QUESTION = "Here is what the customer wrote this time, with all the details they gave. " * 8
ANSWER = "A considered answer with options, prices and caveats for the customer. " * 34


def cost(usage: dict[str, Any]) -> float:
    """The input cost of one reply, from the `end` frame's usage (input includes the cache)."""
    read = usage.get("cache_read_tokens") or 0
    written = usage.get("cache_write_tokens") or 0
    uncached = usage["input_tokens"] - read - written
    return (uncached + WRITE * written + READ * read) * INPUT_PRICE / 1e6


async def conversation(mode: str, turns: int, workdir: Path) -> dict[str, Any]:
    models = workdir / f"models-{mode}.toml"
    async with FakeAnthropic() as fake:
        fake.cache = PromptCache()
        models.write_text(
            "[models.claude]\n"
            'provider = "anthropic"\n'
            'model = "claude-sonnet-5-5"\n'
            f'base_url = "{fake.base_url}"\n'
            f'cache = "{mode}"\n'
        )
        settings = make_settings(
            models_file=str(models), database_url=f"sqlite+aiosqlite:///{workdir}/{mode}.db"
        )
        rows = []
        async with serve(settings) as url, httpx.AsyncClient(timeout=30) as client:
            for turn in range(turns):
                fake.enqueue(Scenario(deltas=[ANSWER]))
                body = {
                    "messages": [{"role": "user", "content": f"Turn {turn}. {QUESTION}"}],
                    "system": SYSTEM,
                    "conversation_id": f"bench-{mode}",
                }
                result = await stream_chat(client, url, body)
                end = result.named("end")
                if end["reason"] != "completed":
                    raise SystemExit(f"turn {turn} ({mode}) ended {end}")
                rows.append(
                    {"turn": turn + 1, **end["usage"], "input_cost_usd": cost(end["usage"])}
                )
    return {
        "mode": mode,
        "turns": rows,
        "input_tokens": sum(r["input_tokens"] for r in rows),
        "input_cost_usd": sum(r["input_cost_usd"] for r in rows),
    }


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--turns", type=int, default=20)
    parser.add_argument("--out", type=Path, default=ROOT / "bench/results/prompt_cache.json")
    args = parser.parse_args()
    os.environ["ANTHROPIC_API_KEY"] = "sk-bench"
    with tempfile.TemporaryDirectory() as tmp:
        off = await conversation("off", args.turns, Path(tmp))
        auto = await conversation("auto", args.turns, Path(tmp))
    saving = 1 - auto["input_cost_usd"] / off["input_cost_usd"]
    result = {"turns": args.turns, "off": off, "auto": auto, "input_cost_saving": saving}
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"input tokens over {args.turns} turns: {off['input_tokens']:,} (same both ways)")
    print(f"input cost, caching off:  ${off['input_cost_usd']:.4f}")
    print(f"input cost, caching auto: ${auto['input_cost_usd']:.4f}")
    print(f"saving: {saving:.1%}")


if __name__ == "__main__":
    asyncio.run(main())
