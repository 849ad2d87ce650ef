// chatrelay's chat page. Plain ES modules, no build step; the streaming, resume and Stop logic
// is in chatrelay.js (the reusable client), the Markdown rendering in markdown.js.
import { ChatRelayError, streamChat } from "./chatrelay.js";
import { MarkdownView } from "./markdown.js";

const $ = (id) => document.getElementById(id);
const els = {
  app: $("app"),
  sidebar: $("sidebar"),
  backdrop: $("backdrop"),
  menu: $("menu"),
  newChat: $("new-chat"),
  list: $("conversations"),
  listEmpty: $("conversations-empty"),
  more: $("more"),
  title: $("title"),
  model: $("model"),
  keyButton: $("key-button"),
  auth: $("auth"),
  authMessage: $("auth-message"),
  token: $("token"),
  tokenForget: $("token-forget"),
  messages: $("messages"),
  welcome: $("welcome"),
  composer: $("composer"),
  input: $("input"),
  send: $("send"),
  stop: $("stop"),
  status: $("status"),
};

// The API is served next to the page (also when the page is under a path prefix).
const BASE = new URL(".", document.baseURI).href.replace(/\/$/, "");

const storage = {
  get(key) {
    try {
      return localStorage.getItem(`chatrelay.${key}`);
    } catch {
      return null;
    }
  },
  set(key, value) {
    try {
      if (value) localStorage.setItem(`chatrelay.${key}`, value);
      else localStorage.removeItem(`chatrelay.${key}`);
    } catch {
      // storage disabled: the value lasts as long as the page
    }
  },
};
const token = () => storage.get("token") || "";

const state = {
  conversationId: null, // the conversation on screen; null: a new chat
  conversations: [],
  nextCursor: null,
  jobs: new Set(), // replies being received (one per conversation at most)
  authOn: false,
};

// -- API -------------------------------------------------------------------------------------

async function api(path, { method = "GET", body } = {}) {
  const headers = { accept: "application/json" };
  if (token()) headers.authorization = `Bearer ${token()}`;
  if (body !== undefined) headers["content-type"] = "application/json";
  const response = await fetch(BASE + path, {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
    cache: "no-store",
  });
  if (!response.ok) {
    const error = await ChatRelayError.fromResponse(response);
    if (response.status === 401) needAuth(error.message);
    throw error;
  }
  return response.status === 204 ? null : response.json();
}

function setStatus(text) {
  els.status.textContent = text;
}

// -- messages --------------------------------------------------------------------------------

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

function textOf(content) {
  if (typeof content === "string") return content;
  if (Array.isArray(content)) {
    return content
      .filter((block) => !["tool_use", "tool_result", "thinking"].includes(block.type))
      .map((block) => (block.type === "text" ? block.text : `[${block.type}]`))
      .join("\n");
  }
  return "";
}

/** A tool call or result as a collapsed block: its name in the summary, its JSON inside. */
function toolBlock(title, body) {
  const details = el("details", "tool");
  const pre = el("pre", "", body);
  details.append(el("summary", "", title), pre);
  return { details, pre };
}

function pretty(json) {
  try {
    return JSON.stringify(JSON.parse(json), null, 2);
  } catch {
    return json; // still streaming, or cut before it was whole
  }
}

function toolResultText(block) {
  const content = block.content;
  const text = typeof content === "string" ? content : textOf(content || []);
  return block.is_error ? `Error: ${text}` : text;
}

function nearBottom() {
  const m = els.messages;
  return m.scrollHeight - m.scrollTop - m.clientHeight < 80;
}

let stick = true;
els.messages.addEventListener("scroll", () => {
  stick = nearBottom();
});
function autoscroll() {
  if (stick) els.messages.scrollTop = els.messages.scrollHeight;
}

function append(node) {
  els.welcome.hidden = true;
  els.messages.appendChild(node);
  autoscroll();
}

function addUser(text, blocks = []) {
  const article = el("article", "msg user");
  article.append(el("div", "who", "You"));
  for (const block of blocks) {
    if (block.type === "tool_result") {
      article.append(toolBlock(`Tool result · ${block.tool_use_id}`, toolResultText(block)).details);
    }
  }
  if (text) article.append(el("div", "body", text));
  append(article);
  return article;
}

const ENDED = {
  stopped: "Stopped",
  disconnected: "Disconnected",
  server_restarting: "Cut by a server restart",
  interrupted: "Cut off: its server went away",
  generating: "Still being written",
};

/** One assistant reply on screen: streaming, finished, or loaded from the server. */
class ReplyView {
  constructor() {
    this.el = el("article", "msg assistant");
    this.who = el("div", "who", "Assistant");
    this.body = el("div", "body");
    this.notice = el("div", "notice");
    this.notice.setAttribute("role", "status");
    this.notice.hidden = true;
    this.meta = el("footer", "meta");
    this.meta.hidden = true;
    this.el.append(this.who, this.body, this.notice, this.meta);
    this.md = new MarkdownView(this.body);
    this.md.onRender = autoscroll;
  }

  streaming() {
    this.el.dataset.state = "waiting";
    this.el.setAttribute("aria-busy", "true");
  }

  setModel(model) {
    if (model) this.who.textContent = `Assistant · ${model}`;
  }

  /** A tool call the model makes, shown collapsed; `update` follows its arguments. */
  toolCall(name, args) {
    if (this.el.dataset.state === "waiting") this.el.dataset.state = "streaming";
    const block = toolBlock(`Tool call · ${name}`, pretty(args));
    this.el.insertBefore(block.details, this.notice);
    return { update: (json) => (block.pre.textContent = pretty(json)) };
  }

  setText(text) {
    if (this.el.dataset.state === "waiting") this.el.dataset.state = "streaming";
    this.md.set(text);
  }

  final(text) {
    this.md.set(text);
    this.md.flush();
    this.el.removeAttribute("aria-busy");
  }

  reconnecting(attempt) {
    this.el.dataset.state = "reconnecting";
    this.notice.hidden = false;
    this.notice.textContent =
      attempt > 1 ? `Connection lost. Reconnecting (attempt ${attempt})…` : "Connection lost. Reconnecting…";
  }

  resumed() {
    this.el.dataset.state = "streaming";
    this.notice.hidden = true;
  }

  setMeta({ usage, reason, model }) {
    this.notice.hidden = true;
    this.el.dataset.state = reason || "completed";
    this.setModel(model);
    this.meta.replaceChildren();
    if (usage && (usage.input_tokens != null || usage.output_tokens != null)) {
      const approx = usage.estimated ? "≈" : "";
      const part = (n) => (n == null ? "?" : `${approx}${n}`);
      const span = el(
        "span",
        "usage",
        `${part(usage.input_tokens)} in · ${part(usage.output_tokens)} out tokens`,
      );
      span.title = usage.estimated ? "Estimated by chatrelay" : "Reported by the model";
      this.meta.append(span);
    }
    if (usage && typeof usage.cost_usd === "number") {
      const digits = usage.cost_usd < 0.01 ? 5 : 2;
      const cost = el("span", "cost", `$${usage.cost_usd.toFixed(digits)}`);
      cost.title = "What this reply cost, at its model's price";
      this.meta.append(cost);
    }
    if (ENDED[reason]) this.meta.append(el("span", "ended", ENDED[reason]));
    this.meta.hidden = this.meta.childElementCount === 0;
  }

  showError(error, retry) {
    const box = el("div", "error");
    box.setAttribute("role", "alert");
    box.append(el("p", "", error.message || "The reply failed."));
    const details = [error.code, error.requestId && `request ${error.requestId}`].filter(Boolean);
    if (details.length) box.append(el("span", "code", details.join(" · ")));
    if (retry) {
      const button = el("button", "button retry", "Retry");
      button.type = "button";
      button.addEventListener("click", () => {
        if (currentJob()) return;
        button.disabled = true;
        retry();
      });
      box.append(button);
    }
    this.el.insertBefore(box, this.meta);
    this.el.dataset.state = "error";
  }
}

function addStoredReply(message) {
  const view = new ReplyView();
  const blocks = Array.isArray(message.content) ? message.content : [];
  view.final(Array.isArray(message.content) ? textOf(blocks) : message.content || "");
  for (const block of blocks) {
    if (block.type === "tool_use") view.toolCall(block.name, JSON.stringify(block.input));
  }
  view.setMeta({ usage: message.usage, reason: message.end_reason, model: message.model });
  if (message.error_code) {
    // The message the stream showed; replies stored before the server kept it have only a code.
    const fallback = message.content ? "The reply was cut off by an error." : "The reply failed.";
    view.showError({ message: message.error_message || fallback, code: message.error_code });
  }
  append(view.el);
}

function clearMessages() {
  els.messages.replaceChildren(els.welcome);
  els.welcome.hidden = false;
  stick = true;
}

// -- sending ---------------------------------------------------------------------------------

function currentJob() {
  for (const job of state.jobs) if (job.conversationId === state.conversationId) return job;
  return null;
}

function updateComposer() {
  const job = currentJob();
  els.send.hidden = Boolean(job);
  els.stop.hidden = !job;
  els.stop.disabled = Boolean(job && job.stopping);
}

function describeRefusal(error) {
  if (error instanceof ChatRelayError) {
    let message = error.message;
    if (error.retryAfter) message += ` (try again in ${Math.ceil(error.retryAfter)} s)`;
    return { message, code: error.code, requestId: error.requestId };
  }
  return { message: `Could not reach the server (${error.message}).`, code: "network_error" };
}

async function send(text, { showUser = true } = {}) {
  if (!text.trim() || currentJob()) return;
  for (const button of els.messages.querySelectorAll(".retry")) button.disabled = true;
  stick = true;
  if (showUser) addUser(text);
  const view = new ReplyView();
  view.streaming();
  append(view.el);
  const job = { conversationId: state.conversationId, view, stopping: false, reply: null };
  state.jobs.add(job);
  updateComposer();
  setStatus("");
  let result = null;
  let refused = null;
  try {
    job.reply = streamChat(
      {
        messages: [{ role: "user", content: text }],
        conversationId: job.conversationId || undefined,
        model: els.model.value || undefined,
      },
      {
        baseUrl: BASE,
        token,
        onText: (_delta, full) => view.setText(full),
        onEvent: (event) => onStreamEvent(job, event),
      },
    );
    result = await job.reply;
  } catch (error) {
    refused = error;
  }
  state.jobs.delete(job);
  const retry = () => send(text, { showUser: Boolean(result && result.text) });
  if (refused) {
    view.final("");
    view.setMeta({ reason: "error" });
    view.showError(describeRefusal(refused), retry);
    if (refused.status === 401) needAuth(refused.message);
  } else {
    view.final(result.text);
    view.setMeta(result);
    if (result.error) view.showError(result.error, retry);
    setStatus(result.reason === "stopped" ? "Stopped." : "");
    const usage = result.usage;
    if (!usage || usage.output_tokens == null) storedUsage(view, job.conversationId, result);
  }
  updateComposer();
  loadConversations().catch(() => {});
}

async function storedUsage(view, conversationId, result) {
  // A stopped or cut reply's end frame has no usage; the server stores its estimate.
  if (!conversationId || !result.streamId) return;
  try {
    const conversation = await api(`/conversations/${encodeURIComponent(conversationId)}`);
    const message = conversation.messages.find((m) => m.stream_id === result.streamId);
    if (message) view.setMeta({ ...result, usage: message.usage });
  } catch {
    // the usage is a nicety: leave it out
  }
}

function onStreamEvent(job, event) {
  const { view } = job;
  switch (event.type) {
    case "open":
      if (event.conversationId && !job.conversationId) {
        const onScreen = state.conversationId === null && view.el.isConnected;
        job.conversationId = event.conversationId;
        if (onScreen) {
          state.conversationId = event.conversationId;
          history.replaceState(null, "", `#c/${encodeURIComponent(event.conversationId)}`);
          updateComposer();
        }
        // The user's message is stored once the request is accepted: list it now.
        loadConversations().catch(() => {});
      }
      break;
    case "start":
      view.setModel(event.data.model);
      break;
    case "tool_call":
      job.toolViews = job.toolViews || [];
      job.toolViews[event.data.index] = view.toolCall(event.call.name, "");
      break;
    case "tool_call_delta":
      if (job.toolViews && job.toolViews[event.data.index] && event.call) {
        job.toolViews[event.data.index].update(event.call.arguments);
      }
      break;
    case "reconnecting":
      view.reconnecting(event.attempt);
      setStatus("Connection lost: reconnecting…");
      break;
    case "resumed":
      view.resumed();
      setStatus("Reconnected.");
      break;
    default:
      break;
  }
}

function stop() {
  const job = currentJob();
  if (!job || job.stopping || !job.reply) return;
  job.stopping = true;
  updateComposer();
  setStatus("Stopping…");
  job.reply.stop().catch((error) => {
    job.stopping = false;
    updateComposer();
    setStatus(`Could not stop the reply: ${error.message}`);
  });
}

// -- conversations ---------------------------------------------------------------------------

function renderList() {
  els.list.replaceChildren();
  for (const conversation of state.conversations) {
    const li = el("li");
    const a = el("a", "", conversation.title || "Untitled");
    a.href = `#c/${encodeURIComponent(conversation.id)}`;
    a.dataset.id = conversation.id;
    a.title = conversation.title || "";
    if (conversation.id === state.conversationId) a.setAttribute("aria-current", "page");
    li.append(a);
    els.list.append(li);
  }
  els.listEmpty.hidden = state.conversations.length > 0;
  els.more.hidden = !state.nextCursor;
  updateTitle();
}

function updateTitle() {
  const current = state.conversations.find((c) => c.id === state.conversationId);
  const title = state.conversationId ? (current && current.title) || "Conversation" : "New chat";
  els.title.textContent = title;
  document.title = `${title} · chatrelay`;
}

async function loadConversations({ more = false } = {}) {
  const query = new URLSearchParams({ limit: "30" });
  if (more && state.nextCursor) query.set("cursor", state.nextCursor);
  const page = await api(`/conversations?${query}`);
  state.conversations = more ? [...state.conversations, ...page.data] : page.data;
  state.nextCursor = page.next_cursor;
  renderList();
}

async function openConversation(id) {
  closeDrawer();
  if (id === state.conversationId && els.messages.childElementCount > 1) return;
  state.conversationId = id;
  const wanted = id ? `#c/${encodeURIComponent(id)}` : "";
  if (location.hash !== wanted) history.pushState(null, "", wanted || location.pathname);
  clearMessages();
  renderList();
  updateComposer();
  if (id) {
    els.welcome.hidden = true;
    try {
      const conversation = await api(`/conversations/${encodeURIComponent(id)}`);
      if (state.conversationId !== id) return;
      for (const message of conversation.messages) {
        if (message.role === "user") {
          addUser(textOf(message.content), Array.isArray(message.content) ? message.content : []);
        }
        else addStoredReply(message);
      }
    } catch (error) {
      if (state.conversationId !== id) return;
      const note = el("p", "error", `Could not load this conversation: ${error.message}`);
      note.setAttribute("role", "alert");
      append(note);
    }
  }
  const job = currentJob();
  if (job) append(job.view.el); // a reply still streaming into this conversation
  updateComposer();
}

function idFromHash() {
  const m = /^#c\/(.+)$/.exec(location.hash);
  return m ? decodeURIComponent(m[1]) : null;
}

// -- models, identity, key -------------------------------------------------------------------

async function loadModels() {
  const body = await api("/v1/models");
  const saved = storage.get("model");
  const models = body.data || [];
  els.model.replaceChildren();
  let selected = null;
  for (const model of models) {
    const option = el("option", "", model.available === false ? `${model.id} (unavailable)` : model.id);
    option.value = model.id;
    option.disabled = model.available === false;
    els.model.append(option);
    if (model.id === saved && model.available !== false) selected = model.id;
  }
  const fallback = models.find((m) => m.default) || models[0];
  els.model.value = selected || (fallback ? fallback.id : "");
}

function showAuth(show, message) {
  els.auth.hidden = !show;
  els.keyButton.setAttribute("aria-expanded", String(show));
  if (message) els.authMessage.textContent = message;
  if (show) els.token.value = token();
}

function needAuth(message) {
  state.authOn = true;
  els.keyButton.hidden = false;
  const already = !els.auth.hidden;
  showAuth(true, token() ? `The server refused this key: ${message}` : "This server needs an API key or a token.");
  if (!already) els.token.focus();
}

async function loadIdentity() {
  const me = await api("/me");
  state.authOn = me.principal.kind !== "public";
  els.keyButton.hidden = !state.authOn;
}

async function loadAll() {
  const results = await Promise.allSettled([loadIdentity(), loadModels(), loadConversations()]);
  const failed = results.find((r) => r.status === "rejected" && r.reason.status !== 401);
  if (failed) setStatus(`Could not reach the server: ${failed.reason.message}`);
  return results.every((r) => r.status === "fulfilled");
}

// -- drawer (phone-sized screens) ------------------------------------------------------------

function openDrawer() {
  els.app.classList.add("drawer-open");
  els.backdrop.hidden = false;
  els.menu.setAttribute("aria-expanded", "true");
  els.newChat.focus();
}

function closeDrawer() {
  if (!els.app.classList.contains("drawer-open")) return false;
  els.app.classList.remove("drawer-open");
  els.backdrop.hidden = true;
  els.menu.setAttribute("aria-expanded", "false");
  return true;
}

// -- wiring ----------------------------------------------------------------------------------

function resizeInput() {
  els.input.style.height = "auto";
  els.input.style.height = `${Math.min(els.input.scrollHeight + 2, 200)}px`;
}

els.composer.addEventListener("submit", (event) => {
  event.preventDefault();
  const text = els.input.value;
  if (!text.trim() || currentJob()) return;
  els.input.value = "";
  resizeInput();
  send(text);
});

els.input.addEventListener("keydown", (event) => {
  if (event.key === "Enter" && !event.shiftKey && !event.altKey && !event.ctrlKey && !event.metaKey && !event.isComposing) {
    event.preventDefault();
    els.composer.requestSubmit();
  }
});
els.input.addEventListener("input", resizeInput);

document.addEventListener("keydown", (event) => {
  if (event.key !== "Escape") return;
  if (closeDrawer()) {
    els.menu.focus();
    return;
  }
  if (currentJob()) {
    event.preventDefault();
    stop();
  }
});

els.stop.addEventListener("click", stop);
els.newChat.addEventListener("click", () => {
  openConversation(null);
  els.input.focus();
});
els.list.addEventListener("click", (event) => {
  const a = event.target.closest("a[data-id]");
  if (!a) return;
  event.preventDefault();
  openConversation(a.dataset.id);
});
els.more.addEventListener("click", () => loadConversations({ more: true }).catch(() => {}));
els.model.addEventListener("change", () => storage.set("model", els.model.value));
els.menu.addEventListener("click", () => {
  if (!closeDrawer()) openDrawer();
});
els.backdrop.addEventListener("click", closeDrawer);
els.keyButton.addEventListener("click", () => showAuth(els.auth.hidden));
els.auth.addEventListener("submit", async (event) => {
  event.preventDefault();
  storage.set("token", els.token.value.trim());
  showAuth(false);
  if (await loadAll()) setStatus("Key saved.");
});
els.tokenForget.addEventListener("click", async () => {
  storage.set("token", "");
  els.token.value = "";
  await loadAll();
});
window.addEventListener("popstate", () => {
  const id = idFromHash();
  if (id !== state.conversationId) openConversation(id);
});

await loadAll();
const initial = idFromHash();
if (initial) await openConversation(initial);
else updateTitle();
if (els.auth.hidden) els.input.focus();
document.documentElement.dataset.ready = "true";
