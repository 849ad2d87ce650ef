// Node tests of the page's client module, src/chatrelay/static/chatrelay.js (run by
// tests/test_chatrelay_js.py with `node --test`): the SSE parser on tricky input, and
// streamChat's resume, dedup, stop and error handling against a scripted fetch.
import assert from "node:assert/strict";
import { test } from "node:test";

import { ChatRelayError, SSEParser, stopStream, streamChat } from "../../src/chatrelay/static/chatrelay.js";
import { CASES, checkParser } from "./sse_cases.mjs";

test("SSEParser: every case, split at every byte and character, byte by byte, random", () => {
  const { runs, failures, failed } = checkParser(SSEParser);
  assert.equal(failed, 0, failures.join("\n"));
  assert.ok(runs > CASES.length * 50, `only ${runs} runs`);
});

// -- a scripted server -----------------------------------------------------------------------

const encoder = new TextEncoder();

function content(id, text) {
  return `id: ${id}\ndata: ${JSON.stringify({ content: text })}\n\n`;
}
function start(id, extra = {}) {
  return `event: start\nid: ${id}\ndata: ${JSON.stringify({ stream_id: "s1", model: "mock", provider: "mock", conversation_id: "c1", ...extra })}\n\n`;
}
function end(id, reason = "completed") {
  return (
    `event: end\nid: ${id}\ndata: ${JSON.stringify({ reason, stop_reason: "end_turn", usage: { input_tokens: 3, output_tokens: 2 } })}\n\n` +
    `id: ${id + 1}\ndata: [DONE]\n\n`
  );
}

/** A body that sends `parts` (strings), then ends, fails ("error") or hangs ("hang"). */
function body(parts, ending = "end") {
  return new ReadableStream({
    async start(controller) {
      for (const part of parts) {
        controller.enqueue(encoder.encode(part));
        await new Promise((r) => setTimeout(r, 1));
      }
      if (ending === "error") controller.error(new TypeError("network error"));
      else if (ending === "end") controller.close();
    },
  });
}

function sse(parts, ending = "end", headers = {}) {
  return new Response(body(parts, ending), {
    headers: { "content-type": "text/event-stream", "x-stream-id": "s1", "x-conversation-id": "c1", ...headers },
  });
}

/** fetch that answers each call with the next scripted answer and records the calls. */
function scripted(...answers) {
  const calls = [];
  const fetch = async (url, init = {}) => {
    const headers = Object.fromEntries(Object.entries(init.headers || {}).map(([k, v]) => [k.toLowerCase(), v]));
    calls.push({ url, method: init.method || "GET", headers, body: init.body });
    const answer = answers.shift();
    if (answer === undefined) throw new Error(`unexpected call ${url}`);
    if (answer instanceof Error) throw answer;
    return typeof answer === "function" ? answer(init) : answer;
  };
  return { fetch, calls };
}

const fast = { retryDelayMs: 1, maxRetryDelayMs: 5 };

test("streamChat: text, events and result of a plain reply", async () => {
  const { fetch, calls } = scripted(sse([start(1), content(2, "Hel"), ": ping\n\n", content(3, "lo"), end(4)]));
  const texts = [];
  const types = [];
  const result = await streamChat(
    { messages: [{ role: "user", content: "hi" }], conversationId: "c1", maxTokens: 50, model: "mock" },
    { fetch, baseUrl: "http://relay/", token: "crk_x", onText: (d, t) => texts.push([d, t]), onEvent: (e) => types.push(e.type) },
  );
  assert.deepEqual(texts, [["Hel", "Hel"], ["lo", "Hello"]]);
  assert.deepEqual(types, ["open", "start", "text", "text", "end", "done"]);
  assert.equal(result.text, "Hello");
  assert.equal(result.reason, "completed");
  assert.equal(result.conversationId, "c1");
  assert.equal(result.streamId, "s1");
  assert.equal(result.model, "mock");
  assert.deepEqual(result.usage, { input_tokens: 3, output_tokens: 2 });
  assert.equal(result.error, null);
  assert.equal(calls.length, 1);
  assert.equal(calls[0].url, "http://relay/ai/stream/chat");
  assert.equal(calls[0].method, "POST");
  assert.equal(calls[0].headers.authorization, "Bearer crk_x");
  assert.ok(calls[0].headers["idempotency-key"]);
  assert.deepEqual(JSON.parse(calls[0].body), {
    messages: [{ role: "user", content: "hi" }],
    conversation_id: "c1",
    max_tokens: 50,
    model: "mock",
  });
});

test("streamChat: a dropped connection is resumed after the last id, without duplicates", async () => {
  const { fetch, calls } = scripted(
    sse([start(1), content(2, "one "), content(3, "two ")], "error"),
    new TypeError("connection refused"), // the first resume attempt fails too
    // The replay overlaps what was seen (ids 2 and 3): those frames must be skipped.
    sse([content(2, "one "), content(3, "two "), content(4, "three"), end(5)]),
  );
  const events = [];
  const result = await streamChat({ messages: [] }, { fetch, token: () => "tok", ...fast, onEvent: (e) => events.push(e) });
  assert.equal(result.text, "one two three");
  assert.equal(result.reason, "completed");
  assert.equal(calls.length, 3);
  for (const call of calls.slice(1)) {
    assert.equal(call.url, "/ai/stream/s1");
    assert.equal(call.method, "GET");
    assert.equal(call.headers["last-event-id"], "3");
    assert.equal(call.headers.authorization, "Bearer tok");
  }
  const kinds = events.map((e) => e.type);
  assert.deepEqual(kinds.filter((k) => k === "reconnecting").length, 2);
  assert.ok(kinds.indexOf("resumed") > kinds.lastIndexOf("reconnecting"));
  assert.equal(kinds.filter((k) => k === "text").length, 3);
});

test("streamChat: a stream that ends without [DONE] is resumed", async () => {
  const { fetch, calls } = scripted(sse([start(1), content(2, "a")]), sse([content(3, "b"), end(4)]));
  const result = await streamChat({ messages: [] }, { fetch, ...fast });
  assert.equal(result.text, "ab");
  assert.equal(calls[1].headers["last-event-id"], "2");
});

test("streamChat: a silent connection counts as dropped", async () => {
  const { fetch, calls } = scripted(sse([start(1), content(2, "a")], "hang"), sse([content(3, "b"), end(4)]));
  const result = await streamChat({ messages: [] }, { fetch, ...fast, idleTimeoutMs: 50 });
  assert.equal(result.text, "ab");
  assert.equal(calls.length, 2);
});

test("streamChat: a POST whose response is lost is sent again with the same Idempotency-Key", async () => {
  const { fetch, calls } = scripted(new TypeError("reset"), sse([start(1), content(2, "x"), end(3)]));
  const result = await streamChat({ messages: [] }, { fetch, ...fast });
  assert.equal(result.text, "x");
  assert.equal(calls.length, 2);
  assert.equal(calls[1].method, "POST");
  assert.equal(calls[0].headers["idempotency-key"], calls[1].headers["idempotency-key"]);
});

test("streamChat: an error frame ends the reply with result.error", async () => {
  const error = 'id: 3\ndata: {"error":"The model is overloaded.","code":"overloaded","request_id":"r1"}\n\n';
  const ending = 'event: end\nid: 4\ndata: {"reason":"error","stop_reason":null,"usage":{"input_tokens":null,"output_tokens":null}}\n\nid: 5\ndata: [DONE]\n\n';
  const { fetch } = scripted(sse([start(1), content(2, "par"), error, ending]));
  const events = [];
  const result = await streamChat({ messages: [] }, { fetch, onEvent: (e) => events.push(e.type) });
  assert.equal(result.text, "par");
  assert.equal(result.reason, "error");
  assert.deepEqual(result.error, { message: "The model is overloaded.", code: "overloaded", retryAfter: undefined, requestId: "r1" });
  assert.ok(events.includes("error"));
});

test("streamChat: a refused request rejects with a ChatRelayError", async () => {
  const refusal = new Response(
    JSON.stringify({ error: { code: "invalid_request", message: "messages: required", fields: [{ field: "messages", message: "required" }], request_id: "r2" } }),
    { status: 422, headers: { "content-type": "application/json" } },
  );
  const { fetch } = scripted(refusal);
  await assert.rejects(streamChat({ messages: [] }, { fetch }), (error) => {
    assert.ok(error instanceof ChatRelayError);
    assert.equal(error.status, 422);
    assert.equal(error.code, "invalid_request");
    assert.equal(error.fields[0].field, "messages");
    assert.equal(error.requestId, "r2");
    return true;
  });
});

test("streamChat: a 429 carries Retry-After", async () => {
  const refusal = new Response(JSON.stringify({ error: { code: "limit_exceeded", message: "slow down" } }), {
    status: 429,
    headers: { "retry-after": "7" },
  });
  const { fetch } = scripted(refusal);
  await assert.rejects(streamChat({ messages: [] }, { fetch }), (e) => e.code === "limit_exceeded" && e.retryAfter === 7);
});

test("streamChat: a stream that expired cannot be resumed: result.error connection_lost", async () => {
  const gone = new Response(JSON.stringify({ error: { code: "not_found", message: "Stream not found" } }), { status: 404 });
  const { fetch } = scripted(sse([start(1), content(2, "a")], "error"), gone);
  const result = await streamChat({ messages: [] }, { fetch, ...fast });
  assert.equal(result.text, "a");
  assert.equal(result.reason, "error");
  assert.equal(result.error.code, "connection_lost");
});

test("streamChat: gives up after maxRetries failed reconnections", async () => {
  const down = () => {
    throw new TypeError("refused");
  };
  const { fetch, calls } = scripted(sse([start(1), content(2, "a")], "error"), down, down, down);
  const events = [];
  const result = await streamChat({ messages: [] }, { fetch, ...fast, maxRetries: 3, onEvent: (e) => events.push(e.type) });
  assert.equal(result.error.code, "connection_lost");
  assert.equal(calls.length, 4);
  assert.equal(events.filter((t) => t === "reconnecting").length, 3);
});

test("streamChat: stop() posts to the stop endpoint; the stream then ends as stopped", async () => {
  let release;
  const gate = new Promise((r) => (release = r));
  const parts = new ReadableStream({
    async start(controller) {
      controller.enqueue(encoder.encode(start(1) + content(2, "a")));
      await gate;
      controller.enqueue(encoder.encode(end(3, "stopped")));
      controller.close();
    },
  });
  const { fetch, calls } = scripted(
    new Response(parts, { headers: { "x-stream-id": "s1" } }),
    () => {
      release();
      return new Response(JSON.stringify({ stream_id: "s1", status: "stopped" }));
    },
  );
  const reply = streamChat({ messages: [] }, {
    fetch,
    token: "t",
    onText: () => {
      reply.stop().then((answer) => assert.equal(answer.status, "stopped"));
    },
  });
  const result = await reply;
  assert.equal(result.reason, "stopped");
  assert.equal(reply.streamId, "s1");
  assert.equal(calls[1].url, "/ai/stream/s1/stop");
  assert.equal(calls[1].method, "POST");
  assert.equal(calls[1].headers.authorization, "Bearer t");
});

test("streamChat: stop() before the stream id is known is sent once it is", async () => {
  let answerPost;
  const post = new Promise((r) => (answerPost = r));
  const { fetch, calls } = scripted(
    () => post,
    () => new Response(JSON.stringify({ stream_id: "s1", status: "stopped" })),
  );
  const reply = streamChat({ messages: [] }, { fetch });
  const stopped = reply.stop();
  await new Promise((r) => setTimeout(r, 5));
  assert.equal(calls.length, 1); // nothing to stop yet
  answerPost(sse([start(1), end(2, "stopped")]));
  assert.equal((await stopped).status, "stopped");
  assert.equal((await reply).reason, "stopped");
  assert.equal(calls[1].url, "/ai/stream/s1/stop");
});

test("stopStream: a refusal is a ChatRelayError", async () => {
  const { fetch } = scripted(new Response(JSON.stringify({ error: { code: "not_found", message: "nope" } }), { status: 404 }));
  await assert.rejects(stopStream("zz", { fetch }), (e) => e instanceof ChatRelayError && e.status === 404);
});

test("streamChat: aborting the signal rejects with an AbortError, also while reconnecting", async () => {
  const controller = new AbortController();
  const { fetch } = scripted(sse([start(1), content(2, "a")], "error"), new TypeError("down"), new TypeError("down"));
  const reply = streamChat({ messages: [] }, {
    fetch,
    signal: controller.signal,
    retryDelayMs: 10_000,
    onEvent: (e) => {
      if (e.type === "reconnecting") controller.abort();
    },
  });
  await assert.rejects(reply, (e) => e.name === "AbortError");
});
