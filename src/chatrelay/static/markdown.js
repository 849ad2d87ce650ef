// markdown.js: a small, safe Markdown renderer for model output (ES module, no dependencies).
//
// Safe by construction: it builds DOM nodes with createElement and text nodes, never
// innerHTML, so HTML in the model's text (<script>, <img onerror=...>) is shown as text.
// Links are made only for http(s) URLs; images are shown as links, never loaded.
//
// Supported: fenced code blocks (``` and ~~~, with a language), inline code, **bold**,
// *italic*, ~~strike~~, [links](https://...), <https://autolinks> and bare https:// URLs,
// headings, bullet and numbered lists (nested by indentation), block quotes, tables,
// horizontal rules, paragraphs and line breaks.
//
// MarkdownView renders a streaming reply: blocks that are complete are rendered once and
// kept; only the unfinished tail is parsed again, at most once per animation frame.
//
// MIT licence, as chatrelay.

const FENCE = /^ {0,3}(`{3,}|~{3,})[ \t]*([^\s`]*)[^`]*$/;
const HEADING = /^ {0,3}(#{1,6})(?:[ \t]+(.*?))?(?:[ \t]+#+)?[ \t]*$/;
const RULE = /^ {0,3}([-*_])(?:[ \t]*\1){2,}[ \t]*$/;
const QUOTE = /^ {0,3}> ?/;
const ITEM = /^( {0,12})([-*+]|\d{1,9}[.)])(?:[ \t]+(.*))?$/;
const TABLE_RULE = /^ {0,3}\|?[ \t]*:?-+:?[ \t]*(?:\|[ \t]*:?-+:?[ \t]*)*\|?[ \t]*$/;
const BLANK = /^[ \t]*$/;
const SAFE_URL = /^https?:\/\/[^\s<>"]+$/i;
const PUNCTUATION = /[!-/:-@[-`{-~]/;

/** Parses `src` and returns a DocumentFragment of safe elements. */
export function renderMarkdown(src, doc = globalThis.document) {
  const fragment = doc.createDocumentFragment();
  appendBlocks(fragment, parseBlocks(splitLines(src)), doc);
  return fragment;
}

function splitLines(src) {
  return String(src).replace(/\r\n?/g, "\n").split("\n");
}

function startsBlock(line) {
  return (
    FENCE.test(line) ||
    HEADING.test(line) ||
    RULE.test(line) ||
    QUOTE.test(line) ||
    /^ {0,3}([-*+]|\d{1,9}[.)])[ \t]+\S/.test(line)
  );
}

function indentOf(line) {
  const match = /^[ \t]*/.exec(line)[0];
  return match.replace(/\t/g, "    ").length;
}

function dedent(line, width) {
  let removed = 0;
  let i = 0;
  while (i < line.length && removed < width && (line[i] === " " || line[i] === "\t")) {
    removed += line[i] === "\t" ? 4 : 1;
    i += 1;
  }
  return line.slice(i);
}

function splitRow(line) {
  let row = line.trim();
  if (row.startsWith("|")) row = row.slice(1);
  if (row.endsWith("|") && !row.endsWith("\\|")) row = row.slice(0, -1);
  const cells = [];
  let cell = "";
  let inCode = false;
  for (let i = 0; i < row.length; i++) {
    const c = row[i];
    if (c === "\\" && row[i + 1] === "|") {
      cell += "|";
      i += 1;
    } else if (c === "`") {
      inCode = !inCode;
      cell += c;
    } else if (c === "|" && !inCode) {
      cells.push(cell.trim());
      cell = "";
    } else {
      cell += c;
    }
  }
  cells.push(cell.trim());
  return cells;
}

function parseBlocks(lines) {
  const blocks = [];
  let i = 0;
  while (i < lines.length) {
    const line = lines[i];
    if (BLANK.test(line)) {
      i += 1;
      continue;
    }
    let m = FENCE.exec(line);
    if (m) {
      const marker = m[1];
      const close = new RegExp(`^ {0,3}${marker[0] === "`" ? "`" : "~"}{${marker.length},}[ \\t]*$`);
      const indent = indentOf(line);
      const body = [];
      i += 1;
      let open = true;
      while (i < lines.length) {
        if (close.test(lines[i])) {
          open = false;
          i += 1;
          break;
        }
        body.push(dedent(lines[i], indent));
        i += 1;
      }
      blocks.push({ t: "code", lang: m[2] || "", text: body.join("\n"), open });
      continue;
    }
    m = HEADING.exec(line);
    if (m) {
      blocks.push({ t: "h", level: m[1].length, text: m[2] || "" });
      i += 1;
      continue;
    }
    if (RULE.test(line)) {
      blocks.push({ t: "hr" });
      i += 1;
      continue;
    }
    if (QUOTE.test(line)) {
      const inner = [];
      while (i < lines.length && !BLANK.test(lines[i])) {
        if (QUOTE.test(lines[i])) inner.push(lines[i].replace(QUOTE, ""));
        else if (startsBlock(lines[i])) break;
        else inner.push(lines[i]); // lazy continuation
        i += 1;
      }
      blocks.push({ t: "quote", children: parseBlocks(inner) });
      continue;
    }
    m = ITEM.exec(line);
    if (m && (m[3] !== undefined || i + 1 >= lines.length || !BLANK.test(lines[i + 1]))) {
      i = parseList(lines, i, blocks);
      continue;
    }
    if (line.includes("|") && i + 1 < lines.length && TABLE_RULE.test(lines[i + 1])) {
      const head = splitRow(line);
      const align = splitRow(lines[i + 1]).map((spec) =>
        spec.startsWith(":") && spec.endsWith(":")
          ? "center"
          : spec.endsWith(":")
            ? "right"
            : spec.startsWith(":")
              ? "left"
              : "",
      );
      const rows = [];
      i += 2;
      while (i < lines.length && !BLANK.test(lines[i]) && lines[i].includes("|")) {
        rows.push(splitRow(lines[i]));
        i += 1;
      }
      blocks.push({ t: "table", head, align, rows });
      continue;
    }
    const para = [line];
    i += 1;
    while (i < lines.length && !BLANK.test(lines[i]) && !startsBlock(lines[i])) {
      para.push(lines[i]);
      i += 1;
    }
    blocks.push({ t: "p", text: para.map((l) => l.trim()).join("\n") });
  }
  return blocks;
}

function parseList(lines, i, blocks) {
  const first = ITEM.exec(lines[i]);
  const ordered = /\d/.test(first[2]);
  const baseIndent = first[1].length;
  const list = { t: ordered ? "ol" : "ul", start: ordered ? parseInt(first[2], 10) : 1, items: [] };
  while (i < lines.length) {
    const m = ITEM.exec(lines[i]);
    if (!m || m[1].length > baseIndent + 1 || /\d/.test(m[2]) !== ordered) break;
    if (m[1].length < baseIndent) break;
    const contentIndent = m[1].length + m[2].length + 1;
    const item = [m[3] || ""];
    i += 1;
    while (i < lines.length) {
      const line = lines[i];
      if (BLANK.test(line)) {
        // A blank line continues the item only if an indented line follows.
        let j = i + 1;
        while (j < lines.length && BLANK.test(lines[j])) j += 1;
        if (j < lines.length && indentOf(lines[j]) >= contentIndent) {
          while (i < j) item.push(lines[i++]);
          continue;
        }
        break;
      }
      const indent = indentOf(line);
      if (indent >= Math.min(contentIndent, baseIndent + 2)) {
        item.push(dedent(line, contentIndent));
      } else if (ITEM.test(line) || startsBlock(line)) {
        break;
      } else {
        item.push(line.trim()); // lazy continuation of the item's paragraph
      }
      i += 1;
    }
    list.items.push(parseBlocks(item));
    // Blank lines between items of the same list.
    let j = i;
    while (j < lines.length && BLANK.test(lines[j])) j += 1;
    const next = j < lines.length ? ITEM.exec(lines[j]) : null;
    if (!next || next[1].length !== baseIndent || /\d/.test(next[2]) !== ordered) break;
    i = j;
  }
  blocks.push(list);
  return i;
}

function appendBlocks(parent, blocks, doc) {
  for (const block of blocks) parent.appendChild(blockNode(block, doc));
}

function blockNode(block, doc) {
  switch (block.t) {
    case "code": {
      const pre = doc.createElement("pre");
      const code = doc.createElement("code");
      if (block.lang) {
        pre.dataset.lang = block.lang;
        code.className = `language-${block.lang.replace(/[^\w-]/g, "")}`;
      }
      code.textContent = block.text;
      pre.appendChild(code);
      return pre;
    }
    case "h": {
      const h = doc.createElement(`h${block.level}`);
      appendInline(h, block.text, doc);
      return h;
    }
    case "hr":
      return doc.createElement("hr");
    case "quote": {
      const q = doc.createElement("blockquote");
      appendBlocks(q, block.children, doc);
      return q;
    }
    case "ul":
    case "ol": {
      const list = doc.createElement(block.t);
      if (block.t === "ol" && block.start !== 1) list.start = block.start;
      for (const item of block.items) {
        const li = doc.createElement("li");
        if (item.length === 1 && item[0].t === "p") appendInline(li, item[0].text, doc);
        else appendBlocks(li, item, doc);
        list.appendChild(li);
      }
      return list;
    }
    case "table": {
      const wrap = doc.createElement("div");
      wrap.className = "table-wrap";
      const table = doc.createElement("table");
      const thead = doc.createElement("thead");
      const tr = doc.createElement("tr");
      block.head.forEach((cell, k) => tr.appendChild(cellNode("th", cell, block.align[k], doc)));
      thead.appendChild(tr);
      table.appendChild(thead);
      const tbody = doc.createElement("tbody");
      for (const row of block.rows) {
        const r = doc.createElement("tr");
        block.head.forEach((_, k) => r.appendChild(cellNode("td", row[k] || "", block.align[k], doc)));
        tbody.appendChild(r);
      }
      table.appendChild(tbody);
      wrap.appendChild(table);
      return wrap;
    }
    default: {
      const p = doc.createElement("p");
      appendInline(p, block.text, doc);
      return p;
    }
  }
}

function cellNode(tag, text, align, doc) {
  const cell = doc.createElement(tag);
  if (align) cell.style.textAlign = align;
  appendInline(cell, text, doc);
  return cell;
}

// -- inline ----------------------------------------------------------------------------------

function isWordChar(c) {
  return c !== undefined && /[\p{L}\p{N}]/u.test(c);
}

function isSpace(c) {
  return c === undefined || /\s/.test(c);
}

function link(doc, href, children) {
  const a = doc.createElement("a");
  a.href = href;
  a.rel = "noopener noreferrer nofollow";
  a.target = "_blank";
  for (const child of children) a.appendChild(child);
  return a;
}

function findClosing(text, delim, from) {
  // The next `delim` that can close emphasis: not preceded by a space, and for `_` not
  // followed by a letter (snake_case stays as it is).
  let at = text.indexOf(delim, from);
  while (at !== -1) {
    const before = text[at - 1];
    const after = text[at + delim.length];
    const ok =
      at > from &&
      !isSpace(before) &&
      before !== "\\" &&
      !(delim[0] === "_" && isWordChar(after)) &&
      !(delim.length === 1 && after === delim); // `*` is not the start of `**`
    if (ok) return at;
    at = text.indexOf(delim, at + 1);
  }
  return -1;
}

function matchBracket(text, open) {
  let depth = 0;
  for (let i = open; i < text.length; i++) {
    const c = text[i];
    if (c === "\\") i += 1;
    else if (c === "[") depth += 1;
    else if (c === "]") {
      depth -= 1;
      if (depth === 0) return i;
    }
  }
  return -1;
}

function matchParen(text, open) {
  let depth = 0;
  for (let i = open; i < text.length; i++) {
    const c = text[i];
    if (c === "\\") i += 1;
    else if (c === "(") depth += 1;
    else if (c === ")") {
      depth -= 1;
      if (depth === 0) return i;
    } else if (c === "\n") return -1;
  }
  return -1;
}

/** Inline Markdown of `text` as nodes appended to `parent`. */
function appendInline(parent, text, doc) {
  let buffer = "";
  const flush = () => {
    if (buffer) {
      const lines = buffer.split("\n");
      lines.forEach((line, k) => {
        if (k) parent.appendChild(doc.createElement("br"));
        if (line) parent.appendChild(doc.createTextNode(line));
      });
      buffer = "";
    }
  };
  const inner = (tag, content) => {
    flush();
    const el = doc.createElement(tag);
    appendInline(el, content, doc);
    parent.appendChild(el);
  };
  let i = 0;
  while (i < text.length) {
    const c = text[i];
    if (c === "\\" && i + 1 < text.length && PUNCTUATION.test(text[i + 1])) {
      buffer += text[i + 1];
      i += 2;
      continue;
    }
    if (c === "`") {
      let n = 1;
      while (text[i + n] === "`") n += 1;
      const fence = "`".repeat(n);
      let close = text.indexOf(fence, i + n);
      while (close !== -1 && text[close + n] === "`") {
        let k = close;
        while (text[k] === "`") k += 1;
        close = text.indexOf(fence, k);
      }
      if (close === -1) {
        buffer += fence;
        i += n;
        continue;
      }
      let content = text.slice(i + n, close).replace(/\n/g, " ");
      if (/^ .*[^ ].* $/.test(content)) content = content.slice(1, -1);
      flush();
      const code = doc.createElement("code");
      code.textContent = content;
      parent.appendChild(code);
      i = close + n;
      continue;
    }
    if ((c === "*" || c === "_") && text[i + 1] === c && !isSpace(text[i + 2])) {
      if (!(c === "_" && isWordChar(text[i - 1]))) {
        const close = findClosing(text, c + c, i + 2);
        if (close !== -1) {
          inner("strong", text.slice(i + 2, close));
          i = close + 2;
          continue;
        }
      }
      buffer += c + c;
      i += 2;
      continue;
    }
    if ((c === "*" || c === "_") && !isSpace(text[i + 1])) {
      if (!(c === "_" && isWordChar(text[i - 1]))) {
        const close = findClosing(text, c, i + 1);
        if (close !== -1) {
          inner("em", text.slice(i + 1, close));
          i = close + 1;
          continue;
        }
      }
      buffer += c;
      i += 1;
      continue;
    }
    if (c === "~" && text[i + 1] === "~" && !isSpace(text[i + 2])) {
      const close = findClosing(text, "~~", i + 2);
      if (close !== -1) {
        inner("del", text.slice(i + 2, close));
        i = close + 2;
        continue;
      }
    }
    if (c === "[" || (c === "!" && text[i + 1] === "[")) {
      const open = c === "!" ? i + 1 : i;
      const close = matchBracket(text, open);
      if (close !== -1 && text[close + 1] === "(") {
        const end = matchParen(text, close + 1);
        if (end !== -1) {
          const label = text.slice(open + 1, close);
          const target = text.slice(close + 2, end).trim();
          const href = target.replace(/^<(.*)>$/, "$1").split(/\s+/)[0];
          if (SAFE_URL.test(href)) {
            flush();
            const holder = doc.createElement("span");
            appendInline(holder, label || href, doc);
            parent.appendChild(link(doc, href, [...holder.childNodes]));
            i = end + 1;
            continue;
          }
          // Any other scheme (javascript:, data:, relative...) stays as plain text.
          buffer += text.slice(i, end + 1);
          i = end + 1;
          continue;
        }
      }
    }
    if (c === "<") {
      const m = /^<(https?:\/\/[^\s<>]+)>/i.exec(text.slice(i));
      if (m) {
        flush();
        parent.appendChild(link(doc, m[1], [doc.createTextNode(m[1])]));
        i += m[0].length;
        continue;
      }
    }
    if ((c === "h" || c === "H") && !isWordChar(text[i - 1])) {
      const m = /^https?:\/\/[^\s<>"]+/i.exec(text.slice(i, i + 2048));
      if (m) {
        let href = m[0];
        // Trailing punctuation ends the sentence, not the URL (a ")" only if unbalanced).
        while (/[.,:;!?'"*_~]$/.test(href) || (href.endsWith(")") && !href.includes("("))) {
          href = href.slice(0, -1);
        }
        if (/^https?:\/\/./i.test(href)) {
          flush();
          parent.appendChild(link(doc, href, [doc.createTextNode(href)]));
          i += href.length;
          continue;
        }
      }
    }
    buffer += c;
    i += 1;
  }
  flush();
}

// -- streaming -------------------------------------------------------------------------------

const schedule =
  typeof requestAnimationFrame === "function" ? requestAnimationFrame : (f) => setTimeout(f, 16);

/** Renders a growing Markdown text into `container`, once per animation frame at most. */
export class MarkdownView {
  constructor(container) {
    this.container = container;
    this.doc = container.ownerDocument;
    this.reset("");
  }

  reset(text) {
    this.text = text;
    this.committed = 0; // text[0:committed] is rendered in `done` and never parsed again
    this.scan = 0; // where the scan for block boundaries goes on
    this.inFence = null; // the open fence's closing pattern while scanning inside one
    this.prevBlank = false;
    this.container.replaceChildren();
    this.done = this.doc.createElement("div");
    this.tail = this.doc.createElement("div");
    this.done.className = "md-done";
    this.tail.className = "md-tail";
    this.container.append(this.done, this.tail);
    this.pending = false;
  }

  /** The whole text so far (usually the previous text plus a delta). */
  set(text) {
    if (!text.startsWith(this.text.slice(0, this.committed))) this.reset("");
    this.text = text;
    if (!this.pending) {
      this.pending = true;
      schedule(() => this.flush());
    }
  }

  /** Renders now (at the end of a stream, so the final text is never a frame late). */
  flush() {
    this.pending = false;
    this.advance();
    this.tail.replaceChildren(renderMarkdown(this.text.slice(this.committed), this.doc));
    if (this.onRender) this.onRender();
  }

  advance() {
    // Complete lines only: a block may be committed at a blank line outside a code fence
    // when the next line starts a new top-level block (not indented, not a list item).
    const text = this.text;
    let boundary = -1;
    for (;;) {
      const nl = text.indexOf("\n", this.scan);
      if (nl === -1) break;
      const line = text.slice(this.scan, nl);
      const lineStart = this.scan;
      this.scan = nl + 1;
      if (this.inFence) {
        if (this.inFence.test(line)) this.inFence = null;
        this.prevBlank = false;
        continue;
      }
      const blank = BLANK.test(line);
      if (
        !blank &&
        this.prevBlank &&
        !/^[ \t]/.test(line) &&
        !ITEM.test(line) &&
        !QUOTE.test(line)
      ) {
        boundary = lineStart;
      }
      const m = FENCE.exec(line);
      if (m) {
        this.inFence = new RegExp(`^ {0,3}${m[1][0] === "`" ? "`" : "~"}{${m[1].length},}[ \\t]*$`);
      }
      this.prevBlank = blank;
    }
    if (boundary > this.committed) {
      this.done.appendChild(renderMarkdown(text.slice(this.committed, boundary), this.doc));
      this.committed = boundary;
    }
  }
}
