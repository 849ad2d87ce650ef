// The Vercel AI SDK as a client of chatrelay, unchanged: a tool round trip (the model calls
// a tool, the SDK runs it and sends the result back, the model answers) through the
// OpenAI-compatible provider (/v1/chat/completions) and the Anthropic provider (/v1/messages).
// Run by tests/test_vercel_ai_sdk.py, which serves chatrelay (mock provider) at CHATRELAY_URL.
import assert from "node:assert/strict";
import { test } from "node:test";

import { createAnthropic } from "@ai-sdk/anthropic";
import { createOpenAICompatible } from "@ai-sdk/openai-compatible";
import { stepCountIs, streamText, tool } from "ai";
import { z } from "zod";

const url = process.env.CHATRELAY_URL;
assert.ok(url, "CHATRELAY_URL is not set");

const weather = tool({
  description: "The weather in a city",
  inputSchema: z.object({ city: z.string() }),
  execute: async ({ city }) => `Sunny in ${city}`,
});

async function roundTrip(model) {
  const result = streamText({
    model,
    prompt: "What is the weather in Paris?",
    tools: { get_weather: weather },
    stopWhen: stepCountIs(3),
  });
  const parts = [];
  for await (const part of result.fullStream) parts.push(part);
  return { parts, steps: await result.steps, text: await result.text };
}

function checkRoundTrip({ parts, steps, text }) {
  const errors = parts.filter((p) => p.type === "error");
  assert.deepEqual(errors, []);
  // Step 1: the model calls the tool, with the arguments streamed in several pieces.
  const [call] = steps[0].toolCalls;
  assert.equal(call.toolName, "get_weather");
  assert.deepEqual(call.input, { city: "mock" });
  assert.equal(steps[0].finishReason, "tool-calls");
  const deltas = parts.filter((p) => p.type === "tool-input-delta");
  assert.ok(deltas.length > 1, `arguments in ${deltas.length} piece(s)`);
  assert.equal(deltas.map((p) => p.delta).join(""), JSON.stringify({ city: "mock" }));
  assert.equal(steps[0].toolResults[0].output, "Sunny in mock");
  // Step 2: the result went back, and the model answers with it.
  assert.equal(steps.length, 2);
  assert.equal(steps[1].finishReason, "stop");
  assert.match(text, /returned Sunny in mock/);
}

test("a tool round trip through the OpenAI-compatible provider", async () => {
  const provider = createOpenAICompatible({
    name: "chatrelay",
    baseURL: `${url}/v1`,
    apiKey: "unused",
  });
  checkRoundTrip(await roundTrip(provider.chatModel("mock")));
});

test("a tool round trip through the Anthropic provider", async () => {
  const provider = createAnthropic({ baseURL: `${url}/v1`, apiKey: "unused" });
  checkRoundTrip(await roundTrip(provider("mock")));
});
