// Tricky Server-Sent Events input for chatrelay.js's SSEParser, shared by the Node test
// (tests/js/chatrelay.test.mjs) and the in-browser test (tests/test_chatrelay_js.py).
// checkParser(SSEParser) feeds every case split at every byte position, byte by byte, split at
// every character, and in seeded random chunks, and returns the failures (empty when all pass).

const FRAMES =
  'event: start\nid: 1\ndata: {"stream_id":"s1","model":"mock"}\n\n' +
  'id: 2\ndata: {"content":"Hel"}\n\n' +
  ": ping\n\n" +
  'id: 3\ndata: {"content":"lo “wörld” 👋 ✓"}\n\n' +
  'event: end\nid: 4\ndata: {"reason":"completed"}\n\n' +
  "id: 5\ndata: [DONE]\n\n";
const FRAME_EVENTS = [
  { type: "start", id: "1", data: '{"stream_id":"s1","model":"mock"}' },
  { type: "message", id: "2", data: '{"content":"Hel"}' },
  { type: "message", id: "3", data: '{"content":"lo “wörld” 👋 ✓"}' },
  { type: "end", id: "4", data: '{"reason":"completed"}' },
  { type: "message", id: "5", data: "[DONE]" },
];

export const CASES = [
  { name: "chatrelay frames (LF)", input: FRAMES, events: FRAME_EVENTS, comments: ["ping"] },
  {
    name: "CRLF line ends",
    input: FRAMES.replace(/\n/g, "\r\n"),
    events: FRAME_EVENTS,
    comments: ["ping"],
  },
  {
    name: "CR line ends",
    input: FRAMES.replace(/\n/g, "\r"),
    events: FRAME_EVENTS,
    comments: ["ping"],
  },
  {
    name: "mixed line ends, CR LF as one",
    input: "data: a\r\ndata: b\rdata: c\n\r\nid: 9\r\rdata: d\n\n",
    events: [
      { type: "message", id: "", data: "a\nb\nc" },
      { type: "message", id: "9", data: "d" },
    ],
  },
  {
    name: "multi-line data keeps inner spaces",
    input: "data: line one\ndata:line two\ndata:  indented\ndata\ndata: {\"a\":\n data: ignored\n\n",
    events: [{ type: "message", id: "", data: 'line one\nline two\n indented\n\n{"a":' }],
  },
  {
    name: "comments, unknown fields and retry",
    input: ":no space\n: with space\n:\nfoo: bar\nretry: 1500\nretry: x1\ndata: x\n\n",
    events: [{ type: "message", id: "", data: "x" }],
    comments: ["no space", "with space", ""],
  },
  {
    name: "a byte order mark at the start is skipped",
    input: "\uFEFFdata: x\n\ndata: \uFEFFy\n\n",
    events: [
      { type: "message", id: "", data: "x" },
      { type: "message", id: "", data: "\uFEFFy" },
    ],
  },
  {
    name: "ids persist; no data, no event; empty data is an event",
    input: "id: 7\n\nevent: e\n\ndata\n\nid\ndata: y\n\nid: 8\u00009\ndata: z\n\n",
    events: [
      { type: "message", id: "7", data: "" },
      { type: "message", id: "", data: "y" },
      { type: "message", id: "", data: "z" },
    ],
  },
  {
    name: "an event name applies to one event only",
    input: "event: thinking\ndata: a\n\ndata: b\n\nevent:\ndata: c\n\n",
    events: [
      { type: "thinking", id: "", data: "a" },
      { type: "message", id: "", data: "b" },
      { type: "message", id: "", data: "c" },
    ],
  },
  {
    name: "an unterminated last event is dropped",
    input: "data: complete\n\ndata: cut off",
    events: [{ type: "message", id: "", data: "complete" }],
  },
  {
    name: "a colon in the value and no space after the colon",
    input: 'data:{"content":"a: b"}\nevent:start\n\n',
    events: [{ type: "start", id: "", data: '{"content":"a: b"}' }],
  },
];

function run(SSEParser, chunks) {
  const events = [];
  const comments = [];
  const parser = new SSEParser((e) => events.push({ type: e.type, id: e.id, data: e.data }), {
    onComment: (c) => comments.push(c),
  });
  for (const chunk of chunks) parser.push(chunk);
  parser.end();
  return { events, comments };
}

function same(a, b) {
  return JSON.stringify(a) === JSON.stringify(b);
}

function random(seed) {
  let x = seed >>> 0 || 1;
  return () => {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    return (x >>> 0) / 4294967296;
  };
}

export function chunkings(input) {
  const bytes = new TextEncoder().encode(input);
  const ways = [];
  ways.push(["whole text", [input]]);
  ways.push(["whole bytes", [bytes]]);
  for (let p = 0; p <= bytes.length; p++) {
    ways.push([`bytes split at ${p}`, [bytes.slice(0, p), bytes.slice(p)]]);
  }
  for (let p = 0; p <= input.length; p++) {
    ways.push([`text split at ${p}`, [input.slice(0, p), input.slice(p)]]);
  }
  ways.push(["byte by byte", Array.from(bytes, (_, k) => bytes.slice(k, k + 1))]);
  const next = random(input.length * 7919);
  for (let round = 0; round < 20; round++) {
    const chunks = [];
    for (let at = 0; at < bytes.length; ) {
      const size = 1 + Math.floor(next() * 9);
      chunks.push(bytes.slice(at, at + size));
      at += size;
    }
    ways.push([`random chunks #${round}`, chunks]);
  }
  return ways;
}

export function checkParser(SSEParser) {
  const failures = [];
  let runs = 0;
  for (const testCase of CASES) {
    for (const [how, chunks] of chunkings(testCase.input)) {
      runs += 1;
      const got = run(SSEParser, chunks);
      if (!same(got.events, testCase.events)) {
        failures.push(`${testCase.name}, ${how}: events ${JSON.stringify(got.events)}`);
      } else if (testCase.comments && !same(got.comments, testCase.comments)) {
        failures.push(`${testCase.name}, ${how}: comments ${JSON.stringify(got.comments)}`);
      }
    }
  }
  return { runs, failures: failures.slice(0, 20), failed: failures.length };
}
