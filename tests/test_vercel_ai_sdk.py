"""The Vercel AI SDK from npm (`ai` with `@ai-sdk/openai-compatible` and `@ai-sdk/anthropic`)
as a client of chatrelay, unchanged: a tool round trip through each surface, run by Node's
test runner (tests/js/vercel; its packages come from its lock file, see scripts/test-setup.sh).
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from .conftest import make_settings, serve

VERCEL = Path(__file__).resolve().parent / "js" / "vercel"


async def test_a_tool_round_trip_through_both_vercel_ai_sdk_providers(tmp_path: Path) -> None:
    assert (VERCEL / "node_modules" / "ai").is_dir(), "run scripts/test-setup.sh (npm ci)"
    settings = make_settings(provider="mock", database_url=f"sqlite+aiosqlite:///{tmp_path}/v.db")
    async with serve(settings) as url:
        process = await asyncio.create_subprocess_exec(
            "node",
            "--test",
            "--test-reporter=spec",
            str(VERCEL / "tool_round_trip.test.mjs"),
            cwd=VERCEL,
            env={**os.environ, "CHATRELAY_URL": url},
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        output, _ = await asyncio.wait_for(process.communicate(), 120)
    report = output.decode()
    assert process.returncode == 0, report
    assert "pass 2" in report and "fail 0" in report, report
