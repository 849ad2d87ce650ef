// chatrelay.js: a small browser (and Node 18+) client for chatrelay's streaming chat API.
// ES module, no dependencies, no build step. Served by chatrelay at /static/chatrelay.js.
//
//   import { streamChat } from "/static/chatrelay.js";
//   const reply = streamChat(
//     { messages: [{ role: "user", content: "Hi" }], conversationId, model: "mock" },
//     { onText: (delta, text) => show(text), onEvent: (event) => {}, signal, token },
//   );
//   stopButton.onclick = () => reply.stop();   // POST /ai/stream/{id}/stop
//   const result = await reply;  // {text, reason, usage, error, conversationId, streamId, ...}
//
// - The reply is read with fetch (so it can POST and send an Authorization header, which
//   EventSource cannot) and parsed by SSEParser, which follows the WHATWG SSE rules.
// - A dropped connection is resumed with `GET /ai/stream/{id}` and `Last-Event-ID`, with
//   backoff; frames are deduplicated by their id, so text is never shown twice. A connection
//   that stays silent longer than `idleTimeoutMs` (the server pings every 15 s) counts as dropped.
// - The first POST carries an `Idempotency-Key`, so re-sending it after a lost response joins
//   the same reply instead of starting (and paying for) a second one.
// - `reply.stop()` stops generation on the server; aborting `signal` only stops reading
//   (the server then keeps generating for its resume grace period, then cancels).
//
// MIT licence, as chatrelay.

const LINE_END = /[\r\n]/g;

/** Incremental Server-Sent Events parser (https://html.spec.whatwg.org/#event-stream-interpretation).
 *
 * `push()` takes text or bytes in chunks split anywhere (even inside a UTF-8 character or
 * between `\r` and `\n`); `onEvent({type, data, id, retry})` is called once per complete
 * event; comments (`: ping`) go to `onComment`. An event that is not ended by a blank line
 * when the stream ends is dropped, as the standard says. */
export class SSEParser {
  constructor(onEvent, { onComment } = {}) {
    this.onEvent = onEvent;
    this.onComment = onComment;
    this.lastEventId = "";
    this.retry = undefined;
    this._decoder = new TextDecoder("utf-8", { ignoreBOM: true });
    this._buffer = "";
    this._started = false;
    this._skipLF = false; // the previous chunk ended with "\r": a leading "\n" belongs to it
    this._type = "";
    this._data = [];
  }

  push(chunk) {
    let text = typeof chunk === "string" ? chunk : this._decoder.decode(chunk, { stream: true });
    if (!this._started) {
      if (!text) return;
      this._started = true;
      if (text.charCodeAt(0) === 0xfeff) text = text.slice(1);
    }
    let buffer = this._buffer + text;
    let start = 0;
    if (this._skipLF && buffer.length) {
      if (buffer[0] === "\n") start = 1;
      this._skipLF = false;
    }
    LINE_END.lastIndex = start;
    let match;
    while ((match = LINE_END.exec(buffer)) !== null) {
      const end = match.index;
      let next = end + 1;
      if (buffer[end] === "\r") {
        if (next < buffer.length) {
          if (buffer[next] === "\n") next += 1;
        } else {
          this._skipLF = true;
        }
      }
      this._line(buffer.slice(start, end));
      start = next;
      LINE_END.lastIndex = next;
    }
    this._buffer = start ? buffer.slice(start) : buffer;
  }

  /** The stream ended: an unterminated last event is discarded; the parser can be reused. */
  end() {
    this._decoder.decode();
    this._buffer = "";
    this._started = false;
    this._skipLF = false;
    this._type = "";
    this._data = [];
  }

  _line(line) {
    if (line === "") {
      this._dispatch();
      return;
    }
    const colon = line.indexOf(":");
    if (colon === 0) {
      if (this.onComment) this.onComment(line.slice(line[1] === " " ? 2 : 1));
      return;
    }
    let field = line;
    let value = "";
    if (colon > 0) {
      field = line.slice(0, colon);
      value = line.slice(line[colon + 1] === " " ? colon + 2 : colon + 1);
    }
    if (field === "data") this._data.push(value);
    else if (field === "event") this._type = value;
    else if (field === "id") {
      if (!value.includes("\0")) this.lastEventId = value;
    } else if (field === "retry" && /^\d+$/.test(value)) this.retry = Number(value);
  }

  _dispatch() {
    const data = this._data;
    const type = this._type || "message";
    this._data = [];
    this._type = "";
    if (data.length === 0) return;
    this.onEvent({ type, data: data.join("\n"), id: this.lastEventId, retry: this.retry });
  }
}

/** A request chatrelay refused (an HTTP error status), or a failed stop. */
export class ChatRelayError extends Error {
  constructor(message, { status = 0, code = "error", fields, retryAfter, requestId } = {}) {
    super(message);
    this.name = "ChatRelayError";
    this.status = status;
    this.code = code;
    this.fields = fields;
    this.retryAfter = retryAfter;
    this.requestId = requestId;
  }

  static async fromResponse(response) {
    let body = null;
    try {
      body = await response.json();
    } catch {
      // not JSON (a proxy's error page): keep the status
    }
    const error = (body && body.error) || {};
    const retry = response.headers.get("retry-after");
    return new ChatRelayError(
      typeof error.message === "string" ? error.message : `HTTP ${response.status}`,
      {
        status: response.status,
        code: error.code || (response.status === 401 ? "unauthorized" : `http_${response.status}`),
        fields: error.fields,
        retryAfter: retry !== null && retry !== "" ? Number(retry) : undefined,
        requestId: error.request_id || response.headers.get("x-request-id") || undefined,
      },
    );
  }
}

function url(options, path) {
  return `${(options.baseUrl || "").replace(/\/+$/, "")}${path}`;
}

async function headersFor(options, extra) {
  const headers = { ...(options.headers || {}), ...extra };
  let token = options.token;
  if (typeof token === "function") token = await token();
  if (token) headers.authorization = `Bearer ${token}`;
  return headers;
}

function fetcher(options) {
  const f = options.fetch || globalThis.fetch;
  return (...args) => f(...args);
}

/** `POST /ai/stream/{streamId}/stop`: resolves to `{stream_id, status}` ("stopped" or
 * "finished"); throws ChatRelayError when refused (404: unknown or expired). */
export async function stopStream(streamId, options = {}) {
  const response = await fetcher(options)(
    url(options, `/ai/stream/${encodeURIComponent(streamId)}/stop`),
    { method: "POST", headers: await headersFor(options, {}) },
  );
  if (!response.ok) throw await ChatRelayError.fromResponse(response);
  return response.json();
}

function requestBody(request) {
  // camelCase keys become the API's snake_case ones (conversationId -> conversation_id).
  const body = {};
  for (const [key, value] of Object.entries(request)) {
    if (value === undefined || value === null) continue;
    body[key.replace(/[A-Z]/g, (c) => `_${c.toLowerCase()}`)] = value;
  }
  return body;
}

function randomKey() {
  const c = globalThis.crypto;
  if (c && typeof c.randomUUID === "function") return c.randomUUID();
  return `${Date.now().toString(36)}-${Math.random().toString(36).slice(2)}`;
}

function abortError(signal) {
  if (signal.reason !== undefined) return signal.reason;
  const error = new Error("The operation was aborted.");
  error.name = "AbortError";
  return error;
}

function sleep(ms, signal) {
  return new Promise((resolve, reject) => {
    if (signal && signal.aborted) return reject(abortError(signal));
    const timer = setTimeout(() => {
      if (signal) signal.removeEventListener("abort", onAbort);
      resolve();
    }, ms);
    const onAbort = () => {
      clearTimeout(timer);
      reject(abortError(signal));
    };
    if (signal) signal.addEventListener("abort", onAbort, { once: true });
  });
}

const DEFAULTS = {
  maxRetries: 8, // reconnection attempts in a row (reset whenever a frame arrives)
  retryDelayMs: 250, // first backoff; doubles per attempt
  maxRetryDelayMs: 4000,
  idleTimeoutMs: 45000, // silence (no frame, no ping) after which a connection counts as dropped
};

class ChatStream {
  constructor(request, options) {
    this.options = { ...DEFAULTS, ...options };
    this.body = JSON.stringify(requestBody(request));
    this.idempotencyKey = this.options.idempotencyKey || randomKey();
    this.fetch = fetcher(this.options);
    this.streamId = null;
    this.lastEventId = 0;
    this.result = {
      text: "",
      thinking: "",
      toolCalls: [], // {id, name, arguments}: arguments is JSON text, whole once the reply ends
      streamId: null,
      conversationId: request.conversationId || request.conversation_id || null,
      model: null,
      reason: null,
      stopReason: null,
      usage: null,
      error: null,
      lastEventId: 0,
    };
    this.done = false;
    this.stopRequested = false;
    this.stopPromise = null;
    this.parser = new SSEParser((event) => this.frame(event));
  }

  emit(event) {
    if (this.options.onEvent) this.options.onEvent(event);
  }

  async run() {
    try {
      return await this.loop();
    } finally {
      if (this.stopWaiter) {
        // Ended (or refused) before its stream id was known: nothing left to stop.
        this.stopWaiter.resolve({ stream_id: this.streamId, status: "finished" });
        this.stopWaiter = null;
      }
    }
  }

  async loop() {
    const { signal, maxRetries } = this.options;
    let attempt = 0;
    let opened = false;
    for (;;) {
      if (signal && signal.aborted) throw abortError(signal);
      let response;
      let failure;
      try {
        response = await this.connect();
      } catch (error) {
        if (signal && signal.aborted) throw abortError(signal);
        failure = error;
      }
      if (response && !response.ok) {
        const error = await ChatRelayError.fromResponse(response);
        const retriable =
          error.code === "server_restarting" || (error.status >= 502 && error.status <= 504);
        if (response.status === 404 && this.streamId) return this.lost(error);
        if (!retriable) {
          if (opened) return this.lost(error);
          throw error;
        }
        failure = error;
        response = undefined;
      }
      if (response) {
        this.streamId = this.streamId || response.headers.get("x-stream-id");
        this.result.streamId = this.streamId;
        const conversationId = response.headers.get("x-conversation-id");
        if (conversationId) this.result.conversationId = conversationId;
        if (!opened) {
          opened = true;
          this.emit({
            type: "open",
            streamId: this.streamId,
            conversationId: this.result.conversationId,
          });
        } else {
          this.emit({ type: "resumed", streamId: this.streamId, lastEventId: this.lastEventId });
        }
        if (this.stopRequested) this.sendStop();
        const before = this.lastEventId;
        failure = await this.read(response);
        if (this.done) return this.finish();
        if (this.lastEventId > before) attempt = 0; // progress: start the backoff over
      }
      attempt += 1;
      if (attempt > maxRetries) return this.lost(failure);
      const delay = Math.min(
        this.options.retryDelayMs * 2 ** (attempt - 1),
        this.options.maxRetryDelayMs,
      );
      this.emit({ type: "reconnecting", attempt, delayMs: delay, error: failure });
      await sleep(delay, signal);
    }
  }

  async connect() {
    const { signal } = this.options;
    if (this.streamId) {
      const headers = await headersFor(this.options, {
        accept: "text/event-stream",
        "last-event-id": String(this.lastEventId),
      });
      return this.fetch(url(this.options, `/ai/stream/${encodeURIComponent(this.streamId)}`), {
        headers,
        signal,
        cache: "no-store",
      });
    }
    // No stream id yet (the POST's response was lost): the same POST again, with the same
    // Idempotency-Key, joins the reply the first one started.
    const headers = await headersFor(this.options, {
      accept: "text/event-stream",
      "content-type": "application/json",
      "idempotency-key": this.idempotencyKey,
    });
    return this.fetch(url(this.options, "/ai/stream/chat"), {
      method: "POST",
      headers,
      body: this.body,
      signal,
      cache: "no-store",
    });
  }

  /** Reads one response to its end; returns why it ended early (undefined if it did not). */
  async read(response) {
    const { signal, idleTimeoutMs } = this.options;
    const reader = response.body.getReader();
    let idle = false;
    let timer;
    const arm = () => {
      clearTimeout(timer);
      timer = setTimeout(() => {
        idle = true;
        reader.cancel().catch(() => {});
      }, idleTimeoutMs);
    };
    try {
      arm();
      for (;;) {
        let chunk;
        try {
          chunk = await reader.read();
        } catch (error) {
          if (signal && signal.aborted) throw abortError(signal);
          return error;
        }
        if (chunk.done) break;
        arm();
        this.parser.push(chunk.value);
        if (this.done) break;
      }
    } finally {
      clearTimeout(timer);
      this.parser.end();
      reader.cancel().catch(() => {});
    }
    if (signal && signal.aborted) throw abortError(signal);
    if (this.done) return undefined;
    return new Error(idle ? "the connection went silent" : "the stream ended before [DONE]");
  }

  frame(event) {
    const id = Number(event.id);
    if (event.id !== "" && Number.isFinite(id)) {
      if (id <= this.lastEventId) return; // already seen (a replay): never shown twice
      this.lastEventId = id;
      this.result.lastEventId = id;
    }
    if (event.data === "[DONE]") {
      this.done = true;
      this.emit({ type: "done", id });
      return;
    }
    let data;
    try {
      data = JSON.parse(event.data);
    } catch {
      this.emit({ type: event.type, id, data: event.data });
      return;
    }
    const result = this.result;
    if (event.type === "message" && data && typeof data.content === "string") {
      result.text += data.content;
      if (this.options.onText) this.options.onText(data.content, result.text);
      this.emit({ type: "text", id, data });
    } else if (event.type === "message" && data && typeof data.error === "string") {
      result.error = {
        message: data.error,
        code: data.code || "error",
        retryAfter: data.retry_after,
        requestId: data.request_id,
      };
      this.emit({ type: "error", id, data });
    } else if (event.type === "start") {
      if (data.stream_id) this.streamId = result.streamId = data.stream_id;
      if (data.conversation_id) result.conversationId = data.conversation_id;
      result.model = data.model || null;
      this.emit({ type: "start", id, data });
      if (this.stopRequested) this.sendStop();
    } else if (event.type === "thinking") {
      result.thinking += data.thinking || "";
      this.emit({ type: "thinking", id, data });
    } else if (event.type === "tool_call") {
      result.toolCalls[data.index] = { id: data.id, name: data.name, arguments: "" };
      this.emit({ type: "tool_call", id, data, call: result.toolCalls[data.index] });
    } else if (event.type === "tool_call_delta") {
      const call = result.toolCalls[data.index];
      if (call) call.arguments += data.arguments || "";
      this.emit({ type: "tool_call_delta", id, data, call });
    } else if (event.type === "end") {
      result.reason = data.reason || null;
      result.stopReason = data.stop_reason || null;
      result.usage = data.usage || null;
      this.emit({ type: "end", id, data });
    } else {
      this.emit({ type: event.type, id, data });
    }
  }

  finish() {
    if (!this.result.reason) this.result.reason = this.result.error ? "error" : "completed";
    return this.result;
  }

  lost(cause) {
    // Not resumable (expired, or the server stayed unreachable): an error the UI can show.
    const message =
      cause && cause.status === 404
        ? "The reply can no longer be resumed (it expired or the server lost it)."
        : "The connection was lost and could not be re-established.";
    this.result.reason = "error";
    this.result.error = { message, code: "connection_lost", cause };
    return this.result;
  }

  stop() {
    this.stopRequested = true;
    if (this.done) return Promise.resolve({ stream_id: this.streamId, status: "finished" });
    if (!this.streamId) {
      // Sent as soon as the stream id is known.
      if (!this.stopPromise) {
        this.stopPromise = new Promise((resolve, reject) => {
          this.stopWaiter = { resolve, reject };
        });
      }
      return this.stopPromise;
    }
    return this.sendStop();
  }

  sendStop() {
    if (this.stopSent) return this.stopSent;
    const sent = stopStream(this.streamId, this.options);
    this.stopSent = sent;
    sent.catch(() => {
      this.stopSent = null; // e.g. the network is down: sent again on reconnection
    });
    if (this.stopWaiter) {
      sent.then(this.stopWaiter.resolve, this.stopWaiter.reject);
      this.stopWaiter = null;
    }
    return sent;
  }
}

/** Streams one chat reply. `request` is the body of `POST /ai/stream/chat` (camelCase or
 * snake_case keys: messages, conversationId, model, system, maxTokens, metadata, ...).
 *
 * options: onText(delta, text), onEvent(event), signal, baseUrl, token (string or function),
 * headers, fetch, maxRetries, retryDelayMs, maxRetryDelayMs, idleTimeoutMs, idempotencyKey.
 *
 * onEvent gets `{type, id, data}` for each frame: "open" (headers arrived: streamId,
 * conversationId), "start", "text", "thinking", "tool_call" and "tool_call_delta" (with `call`, the call so
 * far), "error", "end", "done", and "reconnecting"
 * ({attempt, delayMs, error}) / "resumed" around a dropped connection.
 *
 * Returns a promise of `{text, thinking, streamId, conversationId, model, reason, stopReason,
 * usage, error, lastEventId}` (`reason`: "completed", "error", "stopped" or "disconnected";
 * `error`: `{message, code, retryAfter, requestId}` from an error frame, or code
 * "connection_lost"). It rejects with a ChatRelayError when the request is refused (4xx/5xx:
 * `status`, `code`, `fields`, `retryAfter`), or with the abort reason when `signal` aborts.
 * The promise has `stop()` (resolves to the stop endpoint's answer) and `streamId`. */
export function streamChat(request, options = {}) {
  const stream = new ChatStream(request, options);
  const promise = stream.run();
  promise.stop = () => stream.stop();
  Object.defineProperty(promise, "streamId", { get: () => stream.streamId });
  return promise;
}
