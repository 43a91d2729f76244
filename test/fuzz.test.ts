import fc from 'fast-check';
import WebSocket, { type RawData } from 'ws';
import { z } from 'zod';
import { ErrorBody, ErrorCode, ErrorEnvelope, httpStatusOf, isRecoverable } from '../contracts/errors';
import { checkClientFrame } from '../contracts/frames';
import { ID_PATTERN } from '../contracts/ids';
import { MAX_CONTENT_CHARS, MAX_FRAME_BYTES } from '../contracts/limits';
import { ApprovalBody, ChatBody, CreateSessionBody, PostMessageBody } from '../contracts/rest';
import { DEV_TOKEN, startStack, type Stack } from './support/stack';
import { JSON_BODY_TYPES } from '../api/errors';

/**
 * Property-based fuzz of the two client inputs: WebSocket frames and REST bodies. Every
 * generated input is checked against the real validators first and only sent when they
 * reject it, so the fuzz never starts a turn. Every answer must be exactly one well-formed
 * error envelope with a stable code, never INTERNAL_ERROR, never echoing what was sent, and
 * the processes, the sockets and the sessions must survive.
 *
 * KEEL_FUZZ_SEED=<int> replays a run; KEEL_FUZZ_WS_RUNS / KEEL_FUZZ_REST_RUNS change the counts.
 */

const SEED = Number.parseInt(process.env.KEEL_FUZZ_SEED ?? '20260427', 10);
const WS_RUNS = Number.parseInt(process.env.KEEL_FUZZ_WS_RUNS ?? '10000', 10);
const REST_RUNS = Number.parseInt(process.env.KEEL_FUZZ_REST_RUNS ?? '10000', 10);
const WS_LANES = 8;
const REST_LANES = 16;
/** Put into every generated string the server might echo; it must never come back. */
const MARKER = 'QZXMARKQZX';
/** Defaults of config/settings.ts, which the stack below does not override. */
const FRAME_LIMITS = { maxFrameBytes: MAX_FRAME_BYTES, maxContentChars: MAX_CONTENT_CHARS };
const REST_BODY_LIMIT = 64 * 1024;
const STACK_TRACE = /\n\s+at /;
/** A lane that runs (or shrinks) longer than this fails instead of hitting jest's timeout. */
const LANE_TIME_LIMIT_MS = 150_000;

const StrictEnvelope = z.object({ error: ErrorBody.strict() }).strict();
/** A WebSocket error frame: the error body plus, for frames that got past validation, context. */
const WsErrorFrame = z
  .object({
    type: z.literal('error'),
    sessionId: z.string(),
    data: ErrorBody.extend({ clientMessageId: z.string().optional(), toolCallId: z.string().optional() }).strict(),
  })
  .strict();

let stack: Stack;
const sessions: string[] = [];

beforeAll(async () => {
  stack = await startStack({
    env: { KEEL_RATE_REQUESTS_PER_TOKEN: '1000000', KEEL_RATE_MESSAGES_PER_SESSION: '1000000', KEEL_MAX_SOCKETS_PER_USER: '1000' },
  });
  sessions.push(await stack.createSession({ title: 'fuzz-a' }), await stack.createSession({ title: 'fuzz-b' }));
}, 120_000);

afterAll(async () => {
  await Promise.all(sockets.map((s) => s.close()));
  await stack?.stop();
});

// ---------------------------------------------------------------------------------------------
// Generators shared by frames and bodies

const loneSurrogate = fc.integer({ min: 0xd800, max: 0xdfff }).map((c) => String.fromCharCode(c));
const trickyChar = fc.constantFrom('"', '\\', '{', '}', '[', ']', ':', ',', '\u0000', '\n', ' ', '\u2028', '\ufeff', '\u00a0', '%', '\u0085', '😀', 'é');
const anyChar = fc.oneof(
  { weight: 5, arbitrary: fc.string({ unit: 'binary', minLength: 1, maxLength: 1 }) },
  { weight: 2, arbitrary: fc.string({ unit: 'grapheme-ascii', minLength: 1, maxLength: 1 }) },
  { weight: 1, arbitrary: loneSurrogate },
  { weight: 2, arbitrary: trickyChar },
);
const wildString = fc.string({ unit: anyChar, maxLength: 40 });
/** A random string that carries the marker somewhere in it. */
const marked = fc.tuple(wildString, wildString).map(([a, b]) => `${a}${MARKER}${b}`);
const plainMarked = fc.stringMatching(/^[a-zA-Z0-9 _-]{0,20}$/).map((s) => `${s} ${MARKER}`);
const whitespace = fc.string({ unit: fc.constantFrom(' ', '\t', '\n', '\r', '\u000b', '\u000c', '\u00a0', '\u1680', '\u2000', '\u2028', '\u2029', '\u3000', '\ufeff'), maxLength: 30 });
const tooLong = (min: number, max: number) =>
  fc.tuple(fc.integer({ min, max }), fc.constantFrom('x', 'é', '😀', ' ', '\u0000')).map(([n, c]) => (MARKER + c.repeat(n)).slice(0, Math.max(n, MARKER.length + 1)));
const validId = fc.stringMatching(/^[a-zA-Z0-9_-]{1,32}$/);
const idChars = fc.stringMatching(/^[a-zA-Z0-9_-]{0,20}$/);
const badIdString = fc.oneof(
  fc.constant(''),
  fc.integer({ min: 129, max: 400 }).map((n) => (MARKER + 'a'.repeat(n)).slice(0, n)),
  fc
    .tuple(idChars, fc.constantFrom(' ', '!', '/', '.', '%', '+', '=', '#', '?', '&', '\u00e9', '\u0000', '\n', '\t', '\ud800', '😀', '"', "'", '<', '..'), idChars)
    .map(([a, c, b]) => `${a}${c}${MARKER}${b}`),
  fc.constant(`${MARKER}\n`),
);
const wrongType = fc.oneof(
  fc.integer(),
  fc.double(),
  fc.boolean(),
  fc.constant(null),
  fc.array(fc.jsonValue({ maxDepth: 1 }), { maxLength: 3 }),
  fc.dictionary(fc.string({ maxLength: 5 }), fc.jsonValue({ maxDepth: 1 }), { maxKeys: 3 }),
  fc.constant([MARKER]),
  fc.constant({ content: MARKER }),
);
const badId = fc.oneof({ weight: 3, arbitrary: badIdString }, { weight: 1, arbitrary: wrongType });
const scalarJson = fc.oneof(
  fc.constantFrom('null', 'true', 'false', '0', '-1', '1e999', '""', `"${MARKER}"`, '[]', '[null]', '{', '['),
  fc.jsonValue({ maxDepth: 2 }).filter((v) => typeof v !== 'object' || v === null || Array.isArray(v)).map((v) => JSON.stringify(v)),
  fc.array(fc.record({ type: fc.constant('message'), content: plainMarked })).map((v) => JSON.stringify(v)),
);
/** A JSON object text with a prototype-pollution key spliced in front of the given object's keys. */
const withProtoKey = (objectJson: fc.Arbitrary<string>) =>
  fc
    .tuple(fc.constantFrom('__proto__', 'constructor', 'prototype', '__defineGetter__', 'hasOwnProperty', 'toString'), fc.oneof(fc.constant({ polluted: MARKER }), fc.constant({ prototype: { polluted: MARKER } }), wrongType), objectJson)
    .map(([key, value, json]) => `{${JSON.stringify(key)}:${JSON.stringify(value)}${json.length > 2 ? `,${json.slice(1)}` : '}'}`);
/** Extra keys: unknown names, duplicated known names (the last one wins in JSON.parse). */
const extraKeys = fc.dictionary(fc.oneof(fc.string({ maxLength: 12 }), fc.constantFrom('type', 'content', 'extra', 'attachments', 'stream', 'approved')), fc.oneof(wrongType, plainMarked), { maxKeys: 3 });
const truncate = (json: fc.Arbitrary<string>) => fc.tuple(json, fc.nat()).map(([s, n]) => s.slice(0, n % s.length));
const huge = (min: number, max: number) =>
  fc.tuple(fc.integer({ min, max }), fc.constantFrom('message', 'nope')).map(([n, type]) => {
    const prefix = `{"type":"${type}","content":"${MARKER}`;
    return `${prefix}${'y'.repeat(Math.max(0, n - prefix.length - 2))}"}`;
  });

// ---------------------------------------------------------------------------------------------
// WebSocket frames

interface WsCase {
  kind: string;
  text?: string;
  bytes?: Uint8Array;
}

const contentValue = fc.oneof(plainMarked, marked, whitespace, tooLong(MAX_CONTENT_CHARS + 1, MAX_CONTENT_CHARS + 500), wrongType);
const frameType = fc.oneof(
  { weight: 4, arbitrary: fc.constantFrom('message', 'ping', 'approval', 'cancel') },
  { weight: 2, arbitrary: fc.constantFrom('Message', 'MESSAGE', ' message', 'message ', 'msg', 'error', 'pong', 'connected', 'turn.done', 'approval.accepted', '', 'constructor', '__proto__', 'toString') },
  { weight: 1, arbitrary: marked },
  { weight: 2, arbitrary: wrongType },
);
const frameObject = fc
  .tuple(
    fc.record(
      {
        type: frameType,
        content: contentValue,
        clientMessageId: fc.oneof(validId, badId),
        toolCallId: fc.oneof(validId, badId),
        approved: fc.oneof(fc.boolean(), wrongType, fc.constantFrom('true', 'false', 0, 1)),
        feedback: fc.oneof(plainMarked, tooLong(2001, 2100), wrongType),
        digest: fc.oneof(plainMarked, tooLong(129, 200), wrongType),
      },
      { requiredKeys: [] },
    ),
    extraKeys,
  )
  .map(([frame, extra]) => JSON.stringify({ ...extra, ...frame }));

const wsCase: fc.Arbitrary<WsCase> = fc.oneof(
  { weight: 3, arbitrary: fc.oneof(marked, wildString).map((text) => ({ kind: 'non-json', text })) },
  { weight: 3, arbitrary: truncate(fc.oneof(frameObject, fc.record({ type: fc.constant('message'), content: plainMarked }).map((f) => JSON.stringify(f)))).map((text) => ({ kind: 'truncated-json', text })) },
  { weight: 2, arbitrary: scalarJson.map((text) => ({ kind: 'json-scalar-or-array', text })) },
  { weight: 10, arbitrary: frameObject.map((text) => ({ kind: 'wrong-types', text })) },
  {
    weight: 2,
    arbitrary: fc.record({ type: fc.oneof(marked, fc.constantFrom('shout', 'messages', 'approve', 'cancel_turn', 'PING')), content: plainMarked }).map((f) => ({ kind: 'unknown-type', text: JSON.stringify(f) })),
  },
  { weight: 2, arbitrary: whitespace.map((content) => ({ kind: 'empty-content', text: JSON.stringify({ type: 'message', content }) })) },
  { weight: 1, arbitrary: tooLong(MAX_CONTENT_CHARS + 1, MAX_CONTENT_CHARS + 2000).map((content) => ({ kind: 'too-long-content', text: JSON.stringify({ type: 'message', content }) })) },
  {
    weight: 2,
    arbitrary: fc
      .oneof(
        fc.record({ type: fc.constant('message'), content: plainMarked, clientMessageId: badId }),
        fc.record({ type: fc.constant('approval'), toolCallId: badId, approved: fc.boolean() }),
        fc.record({ type: fc.constantFrom('ping', 'cancel'), clientMessageId: badId }),
      )
      .map((f) => ({ kind: 'bad-id', text: JSON.stringify(f) })),
  },
  { weight: 2, arbitrary: withProtoKey(fc.oneof(frameObject, fc.constant('{"type":"message","content":"hi"}'))).map((text) => ({ kind: 'proto-keys', text })) },
  { weight: 1, arbitrary: huge(MAX_FRAME_BYTES + 1, MAX_FRAME_BYTES + 8000).map((text) => ({ kind: 'huge-frame', text })) },
  {
    weight: 2,
    arbitrary: fc
      .oneof(fc.uint8Array({ maxLength: 64 }), fc.constant(new TextEncoder().encode(JSON.stringify({ type: 'message', content: MARKER }))))
      .map((bytes) => ({ kind: 'binary', bytes })),
  },
  {
    weight: 2,
    arbitrary: fc
      .tuple(marked, fc.constantFrom('message', 'approval', 'ping'))
      .map(([s, type]) => ({ kind: 'raw-unicode', text: `{"type":"${type}","content":"${s}","clientMessageId":"${s}"}` })),
  },
);

/** What the server will see: ws sends strings as UTF-8, which replaces lone surrogates. */
function serverText(text: string): string {
  return Buffer.from(text, 'utf8').toString('utf8');
}

/** The code the API must answer with, or null when the frame is valid (and so not sent). */
function expectedWsCode(c: WsCase): ErrorCode | null {
  if (c.bytes) return 'INVALID_JSON';
  const check = checkClientFrame(serverText(c.text!), FRAME_LIMITS);
  return check.ok ? null : check.code;
}

const malformedWsCase = wsCase.filter((c) => expectedWsCode(c) !== null);

/** A raw socket that keeps every frame as text and remembers how it was closed. */
class FuzzSocket {
  readonly received: string[] = [];
  private cursor = 0;
  private waiter: (() => void) | undefined;
  closedWith: { code: number; reason: string } | undefined;
  sent = 0;

  private constructor(readonly ws: WebSocket) {
    ws.on('message', (raw: RawData) => {
      this.received.push(raw.toString());
      this.waiter?.();
    });
    ws.on('close', (code, reason) => {
      this.closedWith = { code, reason: reason.toString() };
      this.waiter?.();
    });
    ws.on('error', () => undefined);
  }

  static async open(sessionId: string): Promise<FuzzSocket> {
    const ws = new WebSocket(`${stack.base.replace(/^http/, 'ws')}/api/v1/sessions/${sessionId}/ws?token=${DEV_TOKEN}`);
    const socket = new FuzzSocket(ws);
    await new Promise<void>((resolve, reject) => {
      ws.once('open', () => resolve());
      ws.once('error', reject);
    });
    const first = JSON.parse(await socket.next()) as { type: string };
    if (first.type !== 'connected') throw new Error(`first frame was ${first.type}`);
    return socket;
  }

  /** The next frame not yet read. */
  async next(timeoutMs = 5_000): Promise<string> {
    const deadline = Date.now() + timeoutMs;
    while (this.cursor >= this.received.length) {
      if (this.closedWith) throw new Error(`socket closed (${this.closedWith.code} ${this.closedWith.reason})`);
      const left = deadline - Date.now();
      if (left <= 0) throw new Error('no frame within timeout');
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, left);
        this.waiter = () => (clearTimeout(timer), resolve());
      });
      this.waiter = undefined;
    }
    return this.received[this.cursor++]!;
  }

  send(c: WsCase): void {
    this.sent++;
    if (c.bytes) this.ws.send(c.bytes, { binary: true });
    else this.ws.send(c.text!);
  }

  close(): Promise<void> {
    if (this.ws.readyState === WebSocket.CLOSED) return Promise.resolve();
    return new Promise((resolve) => {
      this.ws.once('close', () => resolve());
      this.ws.close();
    });
  }
}

const sockets: FuzzSocket[] = [];

function fail(message: string, answer?: string): never {
  throw new Error(answer === undefined ? message : `${message}; answer: ${answer.slice(0, 500)}`);
}

function checkWsAnswer(c: WsCase, sessionId: string, answer: string, expected: ErrorCode): ErrorCode {
  if (answer.includes(MARKER)) fail('error frame echoes the submitted content', answer);
  if (STACK_TRACE.test(answer)) fail('error frame contains a stack trace', answer);
  let json: unknown;
  try {
    json = JSON.parse(answer);
  } catch {
    fail('answer is not JSON', answer);
  }
  const frame = WsErrorFrame.safeParse(json);
  if (!frame.success) fail(`answer is not an error frame: ${JSON.stringify(frame.error.issues)}`, answer);
  const { data } = frame.data;
  if (frame.data.sessionId !== sessionId) fail(`error frame names session ${frame.data.sessionId}`, answer);
  if (data.code === 'INTERNAL_ERROR') fail('INTERNAL_ERROR', answer);
  if (data.code !== expected) fail(`expected ${expected} for a ${c.kind} frame, got ${data.code}`, answer);
  if (data.recoverable !== isRecoverable(data.code)) fail(`recoverable is ${data.recoverable} for ${data.code}`, answer);
  return data.code;
}

// ---------------------------------------------------------------------------------------------
// REST bodies

type Target = 'sessions' | 'messages' | 'chat' | 'approvals';
const JSON_TYPES = ['application/json', 'application/json; charset=utf-8', 'application/vnd.api+json', 'APPLICATION/JSON'];
const CONTENT_TYPES = [...JSON_TYPES, 'text/plain', 'text/plain; charset=utf-8', 'application/x-www-form-urlencoded', 'application/octet-stream', 'multipart/form-data; boundary=x', 'application/jsonx', ''];

interface RestCase {
  kind: string;
  target: Target;
  /** The session id path segment; `raw` ones are sent without encoding. */
  session: { kind: 'real' | 'unknown' | 'bad' | 'raw'; value: string };
  toolCall: { kind: 'valid' | 'bad' | 'raw'; value: string };
  contentType: string;
  body: string;
  /** Send it a second time: the answer must not change. */
  repeat: boolean;
}

const restObject = fc
  .tuple(
    fc.record(
      {
        content: contentValue,
        clientMessageId: fc.oneof(validId, badId),
        stream: fc.oneof(fc.boolean(), wrongType, fc.constantFrom('true', 1)),
        attachments: fc.oneof(fc.constant([]), fc.array(fc.jsonValue({ maxDepth: 1 }), { minLength: 1, maxLength: 3 }), wrongType),
        title: fc.oneof(plainMarked, tooLong(201, 300), wrongType),
        agentId: fc.oneof(validId, badId),
        approved: fc.oneof(fc.boolean(), wrongType, fc.constantFrom('true', 'false', 0, 1)),
        feedback: fc.oneof(plainMarked, tooLong(2001, 2100), wrongType),
        digest: fc.oneof(plainMarked, tooLong(129, 200), wrongType),
        approver: fc.oneof(plainMarked, tooLong(129, 200), wrongType),
      },
      { requiredKeys: [] },
    ),
    fc.oneof({ weight: 3, arbitrary: fc.constant({}) }, { weight: 1, arbitrary: extraKeys }),
  )
  .map(([body, extra]) => JSON.stringify({ ...extra, ...body }));

const restBody: fc.Arbitrary<{ kind: string; body: string }> = fc.oneof(
  { weight: 3, arbitrary: fc.oneof(marked, wildString).map((body) => ({ kind: 'non-json', body })) },
  { weight: 3, arbitrary: truncate(fc.oneof(restObject, fc.record({ content: plainMarked }).map((b) => JSON.stringify(b)))).map((body) => ({ kind: 'truncated-json', body })) },
  { weight: 2, arbitrary: scalarJson.map((body) => ({ kind: 'json-scalar-or-array', body })) },
  { weight: 10, arbitrary: restObject.map((body) => ({ kind: 'wrong-types', body })) },
  { weight: 2, arbitrary: whitespace.map((content) => ({ kind: 'empty-content', body: JSON.stringify({ content }) })) },
  { weight: 1, arbitrary: tooLong(MAX_CONTENT_CHARS + 1, MAX_CONTENT_CHARS + 2000).map((content) => ({ kind: 'too-long-content', body: JSON.stringify({ content }) })) },
  {
    weight: 2,
    arbitrary: fc
      .oneof(fc.record({ content: plainMarked, clientMessageId: badId }), fc.record({ agentId: badId }), fc.record({ approved: fc.boolean(), approver: tooLong(129, 200) }))
      .map((b) => ({ kind: 'bad-id', body: JSON.stringify(b) })),
  },
  { weight: 2, arbitrary: withProtoKey(fc.oneof(restObject, fc.constant('{"content":"hi"}'), fc.constant('{"approved":true}'), fc.constant('{}'))).map((body) => ({ kind: 'proto-keys', body })) },
  { weight: 1, arbitrary: huge(REST_BODY_LIMIT + 1, REST_BODY_LIMIT + 16_000).map((body) => ({ kind: 'huge-body', body })) },
  { weight: 1, arbitrary: fc.constantFrom('', ' ', '\n', '\ufeff{}', '\ufeff\ufeff{}', '{}\u0000', '{"content":"hi"}{}').map((body) => ({ kind: 'edge-body', body })) },
  { weight: 2, arbitrary: marked.map((s) => ({ kind: 'raw-unicode', body: `{"content":"${s}","title":"${s}"}` })) },
);

const restCase: fc.Arbitrary<RestCase> = fc
  .record({
    body: restBody,
    target: fc.constantFrom<Target>('sessions', 'messages', 'chat', 'approvals'),
    session: fc.oneof(
      { weight: 12, arbitrary: fc.nat({ max: 1 }).map((i) => ({ kind: 'real' as const, value: String(i) })) },
      { weight: 1, arbitrary: validId.map((v) => ({ kind: 'unknown' as const, value: `unknown-${v}` })) },
      { weight: 2, arbitrary: badIdString.map((v) => ({ kind: 'bad' as const, value: v })) },
      { weight: 1, arbitrary: fc.constantFrom('', '%', '%zz', '%E0%A4%A', '%00', '%2F', 'a%2Fb', '%C0%AF', '%ED%A0%80').map((v) => ({ kind: 'raw' as const, value: v })) },
    ),
    toolCall: fc.oneof(
      { weight: 6, arbitrary: validId.map((v) => ({ kind: 'valid' as const, value: `call_${v}` })) },
      { weight: 2, arbitrary: badIdString.map((v) => ({ kind: 'bad' as const, value: v })) },
      { weight: 1, arbitrary: fc.constantFrom('', '%', '%zz', '%FF', '%2F').map((v) => ({ kind: 'raw' as const, value: v })) },
    ),
    contentType: fc.oneof({ weight: 6, arbitrary: fc.constantFrom(...JSON_TYPES) }, { weight: 4, arbitrary: fc.constantFrom(...CONTENT_TYPES) }),
    repeat: fc.nat({ max: 9 }).map((n) => n === 0),
  })
  .map(({ body, ...rest }) => ({ ...rest, kind: body.kind, body: body.body }));

const SCHEMAS: Record<Target, z.ZodTypeAny> = { sessions: CreateSessionBody, messages: PostMessageBody, chat: ChatBody, approvals: ApprovalBody };
const STRICT_JSON_START = /^[\x20\x09\x0a\x0d]*(\[|\{)/;

function isJsonType(contentType: string): boolean {
  return JSON_BODY_TYPES.includes(contentType.split(';')[0]!.trim().toLowerCase());
}

/**
 * How the API reads a body (api/app.ts: @koa/bodyparser, JSON only, strict, 64 kB): what
 * the route sees, or the error the body parser raises first. A body of another content type
 * is refused (415) before anything reads it; no body at all is read as `{}`.
 */
function bodyAsServerSees(c: RestCase): { error: ErrorCode } | { value: unknown; protoKey: boolean } {
  if (!isJsonType(c.contentType)) return Buffer.byteLength(c.body) === 0 ? { value: {}, protoKey: false } : { error: 'UNSUPPORTED_MEDIA_TYPE' };
  const bytes = Buffer.from(c.body, 'utf8');
  if (bytes.length > REST_BODY_LIMIT) return { error: 'PAYLOAD_TOO_LARGE' };
  // raw-body decodes with iconv-lite, which drops a leading byte order mark.
  const text = bytes.toString('utf8').replace(/^\ufeff/, '');
  if (text === '') return { value: {}, protoKey: false };
  if (!STRICT_JSON_START.test(text)) return { error: 'INVALID_JSON' };
  try {
    // @hapi/bourne refuses "__proto__" keys (and constructor.prototype) anywhere: maybe INVALID_JSON.
    return { value: JSON.parse(text) as unknown, protoKey: /"(__proto__|constructor)"/.test(text) };
  } catch {
    return { error: 'INVALID_JSON' };
  }
}

function segmentOf(c: RestCase, which: 'session' | 'toolCall'): string {
  const seg = c[which];
  if (seg.kind === 'raw') return seg.value;
  if (which === 'session' && seg.kind === 'real') return sessions[Number(seg.value)]!;
  // Lone surrogates cannot be percent-encoded; UTF-8 turns them into U+FFFD anyway.
  return encodeURIComponent(serverText(seg.value));
}

function pathOf(c: RestCase): string {
  if (c.target === 'sessions') return '/api/v1/sessions';
  const session = segmentOf(c, 'session');
  if (c.target === 'approvals') return `/api/v1/sessions/${session}/approvals/${segmentOf(c, 'toolCall')}`;
  return `/api/v1/sessions/${session}/${c.target}`;
}

/** The codes the route may answer with for a parsed body, or null when it would accept it. */
function routeCodes(c: RestCase, value: unknown): ErrorCode[] | null {
  if (c.target === 'sessions') return SCHEMAS.sessions.safeParse(value).success ? null : ['VALIDATION_ERROR'];
  const segments = [c.session, ...(c.target === 'approvals' ? [c.toolCall] : [])];
  // Empty segments and broken escapes may route elsewhere (404) or fail the id check (422).
  if (segments.some((s) => s.kind === 'raw' || s.value === '')) return ['VALIDATION_ERROR', 'NOT_FOUND'];
  const idsValid = segments.every((s) => s.kind === 'real' || ID_PATTERN.test(s.value));
  if (!idsValid) return ['VALIDATION_ERROR'];
  return SCHEMAS[c.target].safeParse(value).success ? null : ['VALIDATION_ERROR'];
}

/** The codes the API may answer with, or null when the request is valid (and so not sent). */
function expectedRestCodes(c: RestCase): ErrorCode[] | null {
  const seen = bodyAsServerSees(c);
  if ('error' in seen) return [seen.error];
  const codes = routeCodes(c, seen.value);
  return seen.protoKey ? ['INVALID_JSON', ...(codes ?? [])] : codes;
}

const malformedRestCase = restCase.filter((c) => expectedRestCodes(c) !== null);

async function sendRest(c: RestCase): Promise<{ status: number; text: string; headers: Headers }> {
  const headers: Record<string, string> = { authorization: `Bearer ${DEV_TOKEN}` };
  if (c.contentType) headers['content-type'] = c.contentType;
  // A Uint8Array body, so fetch adds no content type of its own.
  const res = await fetch(`${stack.base}${pathOf(c)}`, { method: 'POST', headers, body: Buffer.from(c.body, 'utf8') });
  return { status: res.status, text: await res.text(), headers: res.headers };
}

function checkRestAnswer(c: RestCase, res: { status: number; text: string; headers: Headers }, expected: ErrorCode[]): ErrorCode {
  const where = `POST ${pathOf(c).slice(0, 200)} (${c.contentType || 'no content type'}, ${c.kind}) -> ${res.status}`;
  if (res.text.includes(MARKER)) fail(`${where}: answer echoes the submitted content`, res.text);
  if (STACK_TRACE.test(res.text)) fail(`${where}: answer contains a stack trace`, res.text);
  if (res.status >= 500) fail(`${where}: server error`, res.text);
  if (!/^application\/json\b/.test(res.headers.get('content-type') ?? '')) fail(`${where}: content type ${res.headers.get('content-type')}`, res.text);
  let json: unknown;
  try {
    json = JSON.parse(res.text);
  } catch {
    fail(`${where}: answer is not JSON`, res.text);
  }
  const envelope = StrictEnvelope.safeParse(json);
  if (!envelope.success) fail(`${where}: not an error envelope: ${JSON.stringify(envelope.error.issues)}`, res.text);
  const { error } = envelope.data;
  if (!ErrorEnvelope.safeParse(json).success) fail(`${where}: ErrorEnvelope refuses the answer`, res.text);
  if (error.code === 'INTERNAL_ERROR') fail(`${where}: INTERNAL_ERROR`, res.text);
  if (res.status !== httpStatusOf(error.code)) fail(`${where}: status ${res.status} but code ${error.code} means ${httpStatusOf(error.code)}`, res.text);
  if (!expected.includes(error.code)) fail(`${where}: expected ${expected.join(' or ')}, got ${error.code}`, res.text);
  if (error.recoverable !== isRecoverable(error.code)) fail(`${where}: recoverable is ${error.recoverable} for ${error.code}`, res.text);
  if (!error.requestId || error.requestId !== res.headers.get('x-request-id')) fail(`${where}: requestId ${error.requestId} does not match the x-request-id header`, res.text);
  return error.code;
}

// ---------------------------------------------------------------------------------------------
// Running lanes of properties concurrently

function describeValue(value: unknown): string {
  const text = JSON.stringify(value, (_k, v: unknown) => (v instanceof Uint8Array ? `<${v.length} bytes: ${Buffer.from(v).toString('hex').slice(0, 64)}>` : v));
  return text.length > 1500 ? `${text.slice(0, 1500)}… (${text.length} chars)` : text;
}

/** Runs `runs` checks of the property in `lanes` concurrent lanes, each with its own seed derived from SEED. */
async function runLanes<T>(name: string, runs: number, lanes: number, property: (lane: number) => fc.IAsyncProperty<[T]>): Promise<void> {
  const results = await Promise.all(
    Array.from({ length: lanes }, async (_, lane) => {
      const numRuns = Math.floor(runs / lanes) + (lane < runs % lanes ? 1 : 0);
      const seed = (SEED + lane) | 0;
      return { lane, seed, details: await fc.check(property(lane), { seed, numRuns, interruptAfterTimeLimit: LANE_TIME_LIMIT_MS, markInterruptAsFailure: true }) };
    }),
  );
  const failed = results.filter((r) => r.details.failed || r.details.interrupted);
  if (failed.length === 0) return;
  const report = failed.map(({ lane, seed, details }) => {
    const error = details.errorInstance instanceof Error ? details.errorInstance.message : String(details.errorInstance);
    if (details.interrupted && !details.counterexample) return `lane ${lane} (seed ${seed}): interrupted after ${details.numRuns} runs (${LANE_TIME_LIMIT_MS} ms)`;
    return `lane ${lane} (seed ${seed}, path ${details.counterexamplePath}, after ${details.numRuns} runs and ${details.numShrinks} shrinks):\n  ${error}\n  input: ${describeValue(details.counterexample?.[0])}`;
  });
  throw new Error(`${name} fuzz failed; rerun with KEEL_FUZZ_SEED=${SEED}\n${report.join('\n')}`);
}

function tally(counts: Map<string, number>, key: string) {
  counts.set(key, (counts.get(key) ?? 0) + 1);
}

// ---------------------------------------------------------------------------------------------

const timings: Record<string, number> = {};

test(`${WS_RUNS} malformed WebSocket frames each get exactly one error frame and the sockets stay open`, async () => {
  const started = Date.now();
  for (let lane = 0; lane < WS_LANES; lane++) sockets.push(await FuzzSocket.open(sessions[lane % sessions.length]!));
  const kinds = new Map<string, number>();
  const codes = new Map<string, number>();
  await runLanes('WebSocket', WS_RUNS, WS_LANES, (lane) =>
    fc.asyncProperty(malformedWsCase, async (c) => {
      const socket = sockets[lane]!;
      const sessionId = sessions[lane % sessions.length]!;
      const expected = expectedWsCode(c)!;
      socket.send(c);
      const code = checkWsAnswer(c, sessionId, await socket.next(), expected);
      tally(kinds, c.kind);
      tally(codes, code);
    }),
  );
  // A ping behind everything: its pong must be the next frame, so no frame got two answers.
  for (const socket of sockets) {
    socket.ws.send(JSON.stringify({ type: 'ping' }));
    const pong = JSON.parse(await socket.next()) as { type: string };
    expect(pong.type).toBe('pong');
    expect(socket.received).toHaveLength(socket.sent + 2);
    expect(socket.closedWith).toBeUndefined();
    expect(socket.ws.readyState).toBe(WebSocket.OPEN);
  }
  timings.ws = Date.now() - started;
  console.log(`WebSocket fuzz: ${WS_RUNS} frames in ${timings.ws} ms (seed ${SEED})\n  kinds ${JSON.stringify(Object.fromEntries(kinds))}\n  codes ${JSON.stringify(Object.fromEntries(codes))}`);
  // Every family of generator contributed, and every validation path answered.
  expect([...kinds.keys()].sort()).toEqual(
    ['binary', 'bad-id', 'empty-content', 'huge-frame', 'json-scalar-or-array', 'non-json', 'proto-keys', 'raw-unicode', 'too-long-content', 'truncated-json', 'unknown-type', 'wrong-types'].sort(),
  );
  expect([...codes.keys()].sort()).toEqual(['INVALID_JSON', 'PAYLOAD_TOO_LARGE', 'UNKNOWN_FRAME_TYPE', 'VALIDATION_ERROR']);
}, 240_000);

test(`${REST_RUNS} malformed REST bodies each get one error envelope with a stable code`, async () => {
  const started = Date.now();
  const kinds = new Map<string, number>();
  const codes = new Map<string, number>();
  const targets = new Map<string, number>();
  await runLanes('REST', REST_RUNS, REST_LANES, () =>
    fc.asyncProperty(malformedRestCase, async (c) => {
      const expected = expectedRestCodes(c)!;
      const code = checkRestAnswer(c, await sendRest(c), expected);
      if (c.repeat) {
        const again = checkRestAnswer(c, await sendRest(c), expected);
        if (again !== code) fail(`the same request got ${code}, then ${again}`);
        tally(kinds, 'repeated');
      }
      tally(kinds, c.kind);
      tally(codes, code);
      tally(targets, `${c.target} ${c.contentType || '(none)'}`);
    }),
  );
  timings.rest = Date.now() - started;
  console.log(
    `REST fuzz: ${REST_RUNS} bodies in ${timings.rest} ms (seed ${SEED})\n  kinds ${JSON.stringify(Object.fromEntries(kinds))}\n  codes ${JSON.stringify(Object.fromEntries(codes))}\n  targets ${JSON.stringify(Object.fromEntries(targets))}`,
  );
  expect([...kinds.keys()].sort()).toEqual(
    ['bad-id', 'edge-body', 'empty-content', 'huge-body', 'json-scalar-or-array', 'non-json', 'proto-keys', 'raw-unicode', 'repeated', 'too-long-content', 'truncated-json', 'wrong-types'].sort(),
  );
  expect([...codes.keys()].sort()).toEqual(['INVALID_JSON', 'NOT_FOUND', 'PAYLOAD_TOO_LARGE', 'UNSUPPORTED_MEDIA_TYPE', 'VALIDATION_ERROR']);
  for (const target of ['sessions', 'messages', 'chat', 'approvals']) expect([...targets.keys()].some((k) => k.startsWith(`${target} `))).toBe(true);
}, 240_000);

test('frames the WebSocket protocol itself refuses close only their own socket', async () => {
  // Past ws's hard limit (1 MiB) ws closes with 1009; a text frame that is not UTF-8 gets 1007 (RFC 6455).
  const cases: [string | Buffer, number][] = [
    [`{"type":"message","content":"${MARKER}${'z'.repeat(1024 * 1024)}"}`, 1009],
    [Buffer.from([0x7b, 0x22, 0xff, 0xfe, 0xed, 0xa0, 0x80, 0x22, 0x7d]), 1007],
  ];
  for (const [payload, closeCode] of cases) {
    const socket = await FuzzSocket.open(sessions[0]!);
    socket.ws.send(payload, { binary: false });
    await expect(socket.next()).rejects.toThrow(/socket closed/);
    expect(socket.closedWith?.code).toBe(closeCode);
    expect(socket.received.join('')).not.toContain(MARKER);
  }
  for (const socket of sockets) expect(socket.ws.readyState).toBe(WebSocket.OPEN);
}, 60_000);

test('after the fuzz: both processes are alive, no turn was started, and the sessions answer normally', async () => {
  expect([stack.api.child.exitCode, stack.api.child.signalCode]).toEqual([null, null]);
  expect([stack.worker.child.exitCode, stack.worker.child.signalCode]).toEqual([null, null]);
  // The API logs unexpected failures at level error (50) or fatal (60).
  expect(stack.api.lines.filter((l) => /"level":(50|60)/.test(l)).slice(0, 5)).toEqual([]);
  expect(stack.model.requests().length).toBe(0);
  for (const sessionId of sessions) {
    const messages = await stack.request('GET', `/api/v1/sessions/${sessionId}/messages`);
    expect([messages.status, messages.body.messages]).toEqual([200, []]);
  }

  for (const [i, sessionId] of sessions.entries()) {
    const socket = sockets[i]!;
    expect(socket.ws.readyState).toBe(WebSocket.OPEN);
    socket.ws.send(JSON.stringify({ type: 'message', content: `hello after the fuzz ${i}`, clientMessageId: `after-fuzz-${i}` }));
    const frames: { type: string; data: { status?: string } }[] = [];
    for (;;) {
      const frame = JSON.parse(await socket.next(30_000)) as { type: string; data: { status?: string } };
      frames.push(frame);
      if (frame.type === 'turn.done') break;
    }
    expect(frames.filter((f) => f.type === 'error')).toEqual([]);
    expect(frames.at(-1)!.data.status).toBe('completed');

    const chat = await stack.request('POST', `/api/v1/sessions/${sessionId}/chat`, { content: `and over REST ${i}` });
    expect(chat.status).toBe(200);
    expect(chat.body.content).toContain(`and over REST ${i}`);
  }
  for (const socket of sockets) expect([socket.closedWith, socket.ws.readyState]).toEqual([undefined, WebSocket.OPEN]);
  const health = await stack.request('GET', '/api/v1/health');
  expect(health.body.status).toBe('ok');
  console.log(`timings: ${JSON.stringify(timings)}`);
}, 120_000);
