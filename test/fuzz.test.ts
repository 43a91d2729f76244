import { readFileSync } from 'node:fs';
import path from 'node:path';
import fc from 'fast-check';
import WebSocket, { type RawData } from 'ws';
import { z } from 'zod';
import { ErrorBody, ErrorEnvelope, type ErrorCode } from '../contracts/errors';
import { MAX_CONTENT_CHARS, MAX_FRAME_BYTES } from '../contracts/limits';
import { DEV_TOKEN, eventually, startStack, type Stack } from './support/stack';

/**
 * Property-based fuzz of the two client inputs: WebSocket frames and REST bodies. The answer
 * each input must get comes from an oracle written from the docs (docs/protocol.md and the
 * README's limits; see "The oracle" below), not from the server's own validators. Only inputs
 * the oracle says must be refused are sent, so the fuzz never starts a turn. Every answer must
 * be exactly one well-formed error envelope with a code the oracle allows, the HTTP status and
 * `recoverable` that docs/protocol.md lists for it, never INTERNAL_ERROR, never echoing what
 * was sent, and the processes, the sockets and the sessions must survive.
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
/** KEEL_REST_BODY_LIMIT's documented default, 64kb (docs/configuration.md). */
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
/** The deployment's agents: a session created with one of these is valid, any other ID is AGENT_NOT_FOUND. */
const knownAgents: string[] = [];

beforeAll(async () => {
  stack = await startStack({
    env: { KEEL_RATE_REQUESTS_PER_TOKEN: '1000000', KEEL_RATE_MESSAGES_PER_SESSION: '1000000', KEEL_MAX_SOCKETS_PER_USER: '1000' },
  });
  sessions.push(await stack.createSession({ title: 'fuzz-a' }), await stack.createSession({ title: 'fuzz-b' }));
  const agents = await stack.request('GET', '/api/v1/agents');
  knownAgents.push(...(agents.body.agents as { id: string }[]).map((a) => a.id));
  expect(knownAgents).toContain('default');
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
// The oracle: which answers the docs allow
//
// Written from docs/protocol.md and the README's limits, apart from the server's validators
// (contracts/frames.ts, contracts/rest.ts, api/errors.ts). Only the numeric limits come from
// contracts/limits.ts; JSON syntax is JSON.parse's (ECMA-404, which RFC 8259 follows).
//
// An input passes through checks. Each check passes, fails (with its code), or, where the docs
// leave the rule open, may do either (OPEN). Where the docs fix an order (WebSocket frames)
// each check comes after the ones before it; where they do not (REST), a check comes only
// after what it needs (a body is read before its fields are checked; input is checked before
// anything is looked up). The allowed answers are the codes of the failing checks whose
// prerequisites can all pass, and 'acted' when every check can pass: the server would act
// (start a turn, answer a ping, create a session), so such an input is never sent.
//
// What the docs leave open, and the oracle therefore allows either way:
// - a leading byte order mark (RFC 8259 lets a parser ignore it or refuse it);
// - an object member named "__proto__" or "constructor" (valid JSON; a hardened parser may
//   refuse it as INVALID_JSON);
// - members the docs do not list (refused or ignored), and null for an optional member
//   (refused or taken as absent);
// - strings with no documented maximum (title, feedback, digest, approver): one longer than
//   UNDOCUMENTED_TEXT_MAX may be refused;
// - a REST body that is JSON but not an object: INVALID_JSON or VALIDATION_ERROR;
// - an `application/<name>+json` media type other than application/json, and charset "utf8";
// - `stream` left out of a /chat body (docs/protocol.md shows it without "?");
// - which code a binary WebSocket frame gets (the docs describe text frames only);
// - the order of the REST checks beyond what each check needs, and which code a path with an
//   empty or undecodable segment gets (NOT_FOUND or VALIDATION_ERROR).

type Outcome = ErrorCode | 'acted';

interface Verdict {
  pass: boolean;
  fail: boolean;
}
const PASS: Verdict = { pass: true, fail: false };
const FAIL: Verdict = { pass: false, fail: true };
const OPEN: Verdict = { pass: true, fail: true };
const failsIf = (failed: boolean): Verdict => (failed ? FAIL : PASS);
const allOf = (...verdicts: Verdict[]): Verdict => ({ pass: verdicts.every((v) => v.pass), fail: verdicts.some((v) => v.fail) });

interface Check {
  name: string;
  verdict: Verdict;
  codes: ErrorCode[];
  /** Checks that must pass before this one is made. */
  after: string[];
}

/** Every answer some admissible order of the checks gives. */
function answersOf(checks: Check[]): Set<Outcome> {
  const byName = new Map(checks.map((c) => [c.name, c]));
  const canAllPass = (names: string[]): boolean =>
    names.every((name) => {
      const check = byName.get(name);
      if (!check) throw new Error(`oracle: no check named ${name}`);
      return check.verdict.pass && canAllPass(check.after);
    });
  const answers = new Set<Outcome>();
  for (const check of checks) if (check.verdict.fail && canAllPass(check.after)) check.codes.forEach((code) => answers.add(code));
  if (checks.every((c) => c.verdict.pass)) answers.add('acted');
  return answers;
}

/** In order: each check comes after every check before it. */
function inOrder(checks: Omit<Check, 'after'>[]): Check[] {
  return checks.map((check, i) => ({ ...check, after: checks.slice(0, i).map((c) => c.name) }));
}

/** docs/protocol.md: IDs match ^[a-zA-Z0-9_-]{1,128}$. */
const DOC_ID = /^[a-zA-Z0-9_-]{1,128}$/;
/** docs/protocol.md, "Client frames". */
const DOC_FRAME_TYPES = ['message', 'ping', 'approval', 'cancel'];
/** "Empty" content: nothing but white space (ECMAScript's WhiteSpace and LineTerminator). */
const BLANK = /^[\t\n\v\f\r \u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000\ufeff]*$/;
/** Below this, a string field the docs give no maximum for must be taken (IDs may be this long). */
const UNDOCUMENTED_TEXT_MAX = 128;

type JsonObject = Record<string, unknown>;
const isObject = (value: unknown): value is JsonObject => typeof value === 'object' && value !== null && !Array.isArray(value);
const hasOwn = (object: JsonObject, key: string) => Object.prototype.hasOwnProperty.call(object, key);

const idRule = (value: unknown) => failsIf(typeof value !== 'string' || !DOC_ID.test(value));
const booleanRule = (value: unknown) => failsIf(typeof value !== 'boolean');
/** Message content: a string, not empty, at most MAX_CONTENT_CHARS characters (UTF-16 code units, as docs/protocol.md counts them). */
const contentRule = (value: unknown) => failsIf(typeof value !== 'string' || BLANK.test(value) || value.length > MAX_CONTENT_CHARS);
const textRule = (value: unknown): Verdict => (typeof value !== 'string' ? FAIL : value.length > UNDOCUMENTED_TEXT_MAX ? OPEN : PASS);

/** A member checked by `rule`; an optional one may be absent (and null on it is OPEN). */
function member(object: JsonObject, key: string, rule: (value: unknown) => Verdict, optional: boolean): Verdict {
  if (!hasOwn(object, key)) return optional ? PASS : FAIL;
  if (object[key] === null && optional) return OPEN;
  return rule(object[key]);
}
const onlyKnownKeys = (object: JsonObject, known: string[]): Verdict => (Object.keys(object).some((k) => !known.includes(k)) ? OPEN : PASS);

/** Any object member named __proto__ or constructor, at any depth. */
function hasPollutionKey(value: unknown): boolean {
  if (Array.isArray(value)) return value.some(hasPollutionKey);
  if (!isObject(value)) return false;
  return Object.keys(value).some((k) => k === '__proto__' || k === 'constructor' || hasPollutionKey(value[k]));
}

/** A JSON text as a parser may read it: the verdict on its syntax and, when it can pass, its value. */
function readJson(text: string): { verdict: Verdict; value: unknown } {
  const parse = (t: string): { ok: true; value: unknown } | { ok: false } => {
    try {
      return { ok: true, value: JSON.parse(t) as unknown };
    } catch {
      return { ok: false };
    }
  };
  let result = parse(text);
  let verdict = failsIf(!result.ok);
  if (!result.ok && text.startsWith('\ufeff')) {
    // OPEN: a parser may ignore one leading byte order mark.
    result = parse(text.slice(1));
    verdict = result.ok ? OPEN : FAIL;
  }
  if (!result.ok) return { verdict, value: undefined };
  // OPEN: a hardened parser may refuse prototype-pollution keys.
  if (hasPollutionKey(result.value)) verdict = allOf(verdict, OPEN);
  return { verdict, value: result.value };
}

/** What the server will see: ws and fetch send strings as UTF-8, which replaces lone surrogates. */
function serverText(text: string): string {
  return Buffer.from(text, 'utf8').toString('utf8');
}

/**
 * A WebSocket frame, in the order docs/protocol.md fixes: size, JSON, object, clientMessageId,
 * empty content, content length, unknown type, then the frame's own checks; an approval then
 * names a tool call that does not exist (APPROVAL_NOT_FOUND, docs/approvals.md).
 */
function wsAnswers(c: WsCase): Set<Outcome> {
  if (c.bytes) return new Set<Outcome>(['INVALID_JSON', 'VALIDATION_ERROR', 'UNKNOWN_FRAME_TYPE']);
  const text = serverText(c.text!);
  const json = readJson(text);
  const frame = isObject(json.value) ? json.value : {};
  const type = frame.type;
  const known = ['type', 'clientMessageId'];
  let own = PASS;
  if (type === 'message') own = onlyKnownKeys(frame, [...known, 'content']);
  else if (type === 'ping' || type === 'cancel') own = onlyKnownKeys(frame, known);
  else if (type === 'approval') {
    own = allOf(
      member(frame, 'toolCallId', idRule, false),
      member(frame, 'approved', booleanRule, false),
      member(frame, 'feedback', textRule, true),
      member(frame, 'digest', textRule, true),
      onlyKnownKeys(frame, [...known, 'toolCallId', 'approved', 'feedback', 'digest']),
    );
  }
  return answersOf(
    inOrder([
      { name: 'size', verdict: failsIf(Buffer.byteLength(text, 'utf8') > MAX_FRAME_BYTES), codes: ['PAYLOAD_TOO_LARGE'] },
      { name: 'json', verdict: json.verdict, codes: ['INVALID_JSON'] },
      { name: 'object', verdict: failsIf(!isObject(json.value)), codes: ['VALIDATION_ERROR'] },
      { name: 'clientMessageId', verdict: member(frame, 'clientMessageId', idRule, true), codes: ['VALIDATION_ERROR'] },
      { name: 'content', verdict: type === 'message' ? member(frame, 'content', contentRule, false) : PASS, codes: ['VALIDATION_ERROR'] },
      { name: 'type', verdict: failsIf(typeof type !== 'string' || !DOC_FRAME_TYPES.includes(type)), codes: ['UNKNOWN_FRAME_TYPE'] },
      { name: 'own', verdict: own, codes: ['VALIDATION_ERROR'] },
      { name: 'toolCall', verdict: failsIf(type === 'approval'), codes: ['APPROVAL_NOT_FOUND'] },
    ]),
  );
}

/** docs/protocol.md: "Request bodies are JSON in UTF-8: a body with another Content-Type (or charset) gets 415". */
function mediaVerdict(contentType: string, bodyBytes: number): Verdict {
  // "A request without a body is read as {}", whatever it says its type is.
  if (bodyBytes === 0) return PASS;
  const [essence = '', ...params] = contentType.split(';');
  const mediaType = essence.trim().toLowerCase();
  const type = mediaType === 'application/json' ? PASS : /^application\/[^/\s]+\+json$/.test(mediaType) ? OPEN : FAIL;
  const charsets = params
    .map((p) => p.split('='))
    .filter(([name]) => name!.trim().toLowerCase() === 'charset')
    .map(([, value = '']) => value.trim().replace(/^"(.*)"$/, '$1').toLowerCase());
  return allOf(type, ...charsets.map((cs) => (cs === 'utf-8' ? PASS : cs === 'utf8' ? OPEN : FAIL)));
}

/** Body members per route, as docs/protocol.md lists them. */
function bodyMembers(target: Target, body: JsonObject): Verdict {
  switch (target) {
    case 'sessions':
      return allOf(member(body, 'title', textRule, true), member(body, 'agentId', idRule, true), onlyKnownKeys(body, ['title', 'agentId']));
    case 'messages':
      return allOf(member(body, 'content', contentRule, false), member(body, 'clientMessageId', idRule, true), onlyKnownKeys(body, ['content', 'clientMessageId']));
    case 'chat':
      return allOf(
        member(body, 'content', contentRule, false),
        member(body, 'clientMessageId', idRule, true),
        // OPEN when left out: docs/protocol.md writes `{content, clientMessageId?, stream}`.
        hasOwn(body, 'stream') ? member(body, 'stream', booleanRule, true) : OPEN,
        onlyKnownKeys(body, ['content', 'clientMessageId', 'stream']),
      );
    case 'approvals':
      return allOf(
        member(body, 'approved', booleanRule, false),
        member(body, 'feedback', textRule, true),
        member(body, 'digest', textRule, true),
        member(body, 'approver', textRule, true),
        onlyKnownKeys(body, ['approved', 'feedback', 'digest', 'approver']),
      );
  }
}

/** A POST: its body is read, its path and body are checked, and only then is anything looked up. */
function restAnswers(c: RestCase): Set<Outcome> {
  const bytes = Buffer.from(c.body, 'utf8');
  const json = bytes.length === 0 ? { verdict: PASS, value: {} } : readJson(bytes.toString('utf8'));
  const body = isObject(json.value) ? json.value : {};
  const segments = c.target === 'sessions' ? [] : [c.session, ...(c.target === 'approvals' ? [c.toolCall] : [])];
  const read = ['media', 'size', 'json'];
  const input = [...read, 'route', 'path', 'shape', 'members'];
  const agentId = body.agentId;
  const notAnObject = failsIf(!isObject(json.value));
  const answers = new Set<Outcome>();
  // OPEN: JSON that is not an object may be refused by the body reader (INVALID_JSON, before
  // the route is looked at) or by the route's validation (VALIDATION_ERROR).
  for (const refusedBy of ['reader', 'route'] as const) {
    const checks: Check[] = [
      { name: 'media', verdict: mediaVerdict(c.contentType, bytes.length), codes: ['UNSUPPORTED_MEDIA_TYPE'], after: [] },
      { name: 'size', verdict: failsIf(bytes.length > REST_BODY_LIMIT), codes: ['PAYLOAD_TOO_LARGE'], after: [] },
      // A body refused for its type or size is not read, so not parsed.
      { name: 'json', verdict: refusedBy === 'reader' ? allOf(json.verdict, notAnObject) : json.verdict, codes: ['INVALID_JSON'], after: ['media', 'size'] },
      { name: 'route', verdict: failsIf(segments.some((s) => s.kind === 'raw' || s.value === '')), codes: ['NOT_FOUND', 'VALIDATION_ERROR'], after: [] },
      { name: 'path', verdict: failsIf(segments.some((s) => s.kind !== 'real' && !DOC_ID.test(serverText(s.value)))), codes: ['VALIDATION_ERROR'], after: ['route'] },
      { name: 'shape', verdict: refusedBy === 'route' ? notAnObject : PASS, codes: ['VALIDATION_ERROR'], after: [...read, 'route'] },
      { name: 'members', verdict: bodyMembers(c.target, body), codes: ['VALIDATION_ERROR'], after: [...read, 'route', 'shape'] },
      { name: 'session', verdict: failsIf(c.target !== 'sessions' && c.session.kind === 'unknown'), codes: ['SESSION_NOT_FOUND'], after: input },
      { name: 'agent', verdict: failsIf(c.target === 'sessions' && typeof agentId === 'string' && !knownAgents.includes(agentId)), codes: ['AGENT_NOT_FOUND'], after: input },
      { name: 'toolCall', verdict: failsIf(c.target === 'approvals'), codes: ['APPROVAL_NOT_FOUND'], after: [...input, 'session'] },
    ];
    answersOf(checks).forEach((a) => answers.add(a));
  }
  return answers;
}

/** docs/protocol.md's "Error codes" table: every code a client can get, its HTTP status and whether it is recoverable. */
const DOCUMENTED_CODES = new Map(
  [...readFileSync(path.join(__dirname, '..', 'docs', 'protocol.md'), 'utf8').matchAll(/^\| `([A-Z_]+)` \| (\d{3}) \| (yes|no) \|$/gm)].map(([, code, status, recoverable]) => [
    code!,
    { status: Number(status), recoverable: recoverable === 'yes' },
  ]),
);

function documented(code: string, answer: string): { status: number; recoverable: boolean } {
  const entry = DOCUMENTED_CODES.get(code);
  if (!entry) fail(`${code} is not in docs/protocol.md's error code table`, answer);
  return entry;
}

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
    // Mostly well-formed decisions on tool calls that do not exist.
    weight: 2,
    arbitrary: fc
      .record(
        {
          type: fc.constant('approval'),
          toolCallId: fc.oneof({ weight: 4, arbitrary: validId }, { weight: 1, arbitrary: badId }),
          approved: fc.oneof({ weight: 4, arbitrary: fc.boolean() }, { weight: 1, arbitrary: wrongType }),
          feedback: fc.oneof(plainMarked, marked, tooLong(2001, 2100), fc.constant(null)),
          digest: fc.oneof(plainMarked, fc.stringMatching(/^[0-9a-f]{64}$/), tooLong(129, 200), fc.constant(null)),
        },
        { requiredKeys: ['type', 'toolCallId', 'approved'] },
      )
      .map((f) => ({ kind: 'approval', text: JSON.stringify(f) })),
  },
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

/** Only frames the oracle says must be refused are sent. */
const malformedWsCase = wsCase.filter((c) => !wsAnswers(c).has('acted'));

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

function checkWsAnswer(c: WsCase, sessionId: string, answer: string, expected: Set<Outcome>): ErrorCode {
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
  if (!expected.has(data.code)) fail(`expected ${[...expected].join(' or ')} for a ${c.kind} frame, got ${data.code}`, answer);
  if (data.recoverable !== documented(data.code, answer).recoverable) fail(`recoverable is ${data.recoverable} for ${data.code}`, answer);
  return data.code;
}

// ---------------------------------------------------------------------------------------------
// REST bodies

type Target = 'sessions' | 'messages' | 'chat' | 'approvals';
const JSON_TYPES = ['application/json', 'application/json; charset=utf-8', 'application/json; charset="UTF-8"', 'APPLICATION/JSON', 'application/vnd.api+json', 'application/merge-patch+json'];
const CONTENT_TYPES = [
  ...JSON_TYPES,
  'application/json; charset=iso-8859-1',
  'application/json; charset=utf-16',
  'text/plain',
  'text/plain; charset=utf-8',
  'text/json',
  'application/x-www-form-urlencoded',
  'application/octet-stream',
  'multipart/form-data; boundary=x',
  'application/jsonx',
  '',
];

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
  {
    // Bodies a route takes, so that what comes after validation answers: an unknown session,
    // agent or tool call (whichever the target is; on a real session a message is never sent).
    weight: 3,
    arbitrary: fc
      .oneof(
        fc.record({ content: plainMarked, clientMessageId: validId, stream: fc.boolean() }, { requiredKeys: ['content'] }),
        fc.record({ approved: fc.boolean(), feedback: plainMarked, digest: fc.stringMatching(/^[0-9a-f]{64}$/) }, { requiredKeys: ['approved'] }),
        fc.record({ agentId: validId, title: plainMarked }, { requiredKeys: ['agentId'] }),
      )
      .map((b) => ({ kind: 'well-formed', body: JSON.stringify(b) })),
  },
);

const restCase: fc.Arbitrary<RestCase> = fc
  .record({
    body: restBody,
    target: fc.constantFrom<Target>('sessions', 'messages', 'chat', 'approvals'),
    session: fc.oneof(
      { weight: 12, arbitrary: fc.nat({ max: 1 }).map((i) => ({ kind: 'real' as const, value: String(i) })) },
      { weight: 3, arbitrary: validId.map((v) => ({ kind: 'unknown' as const, value: `unknown-${v}` })) },
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

/** Only requests the oracle says must be refused are sent. */
const malformedRestCase = restCase.filter((c) => !restAnswers(c).has('acted'));

async function sendRest(c: RestCase): Promise<{ status: number; text: string; headers: Headers }> {
  const headers: Record<string, string> = { authorization: `Bearer ${DEV_TOKEN}` };
  if (c.contentType) headers['content-type'] = c.contentType;
  // A Uint8Array body, so fetch adds no content type of its own.
  const res = await fetch(`${stack.base}${pathOf(c)}`, { method: 'POST', headers, body: Buffer.from(c.body, 'utf8') });
  return { status: res.status, text: await res.text(), headers: res.headers };
}

function checkRestAnswer(c: RestCase, res: { status: number; text: string; headers: Headers }, expected: Set<Outcome>): ErrorCode {
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
  const doc = documented(error.code, res.text);
  if (res.status !== doc.status) fail(`${where}: status ${res.status} but docs/protocol.md gives ${error.code} ${doc.status}`, res.text);
  if (!expected.has(error.code)) fail(`${where}: expected ${[...expected].join(' or ')}, got ${error.code}`, res.text);
  if (error.recoverable !== doc.recoverable) fail(`${where}: recoverable is ${error.recoverable} for ${error.code}`, res.text);
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

test('the oracle gives the answers the docs spell out', () => {
  const ws = (text: string) => [...wsAnswers({ kind: 'example', text })].sort();
  // A ping padded with JSON white space to exactly `bytes` bytes.
  const frameOf = (bytes: number) => `{"type":"ping"${' '.repeat(bytes - 15)}}`;
  expect(ws(frameOf(MAX_FRAME_BYTES))).toEqual(['acted']);
  expect(ws(frameOf(MAX_FRAME_BYTES + 1))).toEqual(['PAYLOAD_TOO_LARGE']);
  expect(ws('{"type":"message"')).toEqual(['INVALID_JSON']);
  expect(ws('[{"type":"ping"}]')).toEqual(['VALIDATION_ERROR']);
  // The fixed order: the id before the content, the content before the type.
  expect(ws('{"type":"nope","clientMessageId":"no spaces"}')).toEqual(['VALIDATION_ERROR']);
  expect(ws('{"type":"message","content":" \\n\\t\\u00a0"}')).toEqual(['VALIDATION_ERROR']);
  expect(ws(JSON.stringify({ type: 'message', content: 'x'.repeat(MAX_CONTENT_CHARS) }))).toEqual(['acted']);
  expect(ws(JSON.stringify({ type: 'message', content: 'x'.repeat(MAX_CONTENT_CHARS + 1) }))).toEqual(['VALIDATION_ERROR']);
  expect(ws('{"type":"Message","content":""}')).toEqual(['UNKNOWN_FRAME_TYPE']);
  expect(ws('{"content":"hi"}')).toEqual(['UNKNOWN_FRAME_TYPE']);
  expect(ws('{"type":"approval","toolCallId":"call_1","approved":"yes"}')).toEqual(['VALIDATION_ERROR']);
  expect(ws('{"type":"approval","toolCallId":"call_1","approved":true}')).toEqual(['APPROVAL_NOT_FOUND']);
  // Open: a member the docs do not list.
  expect(ws('{"type":"ping","extra":1}')).toEqual(['VALIDATION_ERROR', 'acted']);

  const rest = (target: Target, body: string, contentType = 'application/json', session: RestCase['session'] = { kind: 'real', value: '0' }) =>
    [...restAnswers({ kind: 'example', target, session, toolCall: { kind: 'valid', value: 'call_1' }, contentType, body, repeat: false })].sort();
  expect(rest('messages', '{"content":"hi"}')).toEqual(['acted']);
  expect(rest('messages', '{"content":"hi"}', 'text/plain')).toEqual(['UNSUPPORTED_MEDIA_TYPE']);
  expect(rest('messages', '{"content":"hi"}', 'application/json; charset=iso-8859-1')).toEqual(['UNSUPPORTED_MEDIA_TYPE']);
  expect(rest('sessions', '', 'text/plain')).toEqual(['acted']);
  expect(rest('messages', '{"content":"   "}')).toEqual(['VALIDATION_ERROR']);
  expect(rest('messages', '{"content":"hi"', 'application/json')).toEqual(['INVALID_JSON']);
  expect(rest('messages', JSON.stringify({ content: 'x'.repeat(REST_BODY_LIMIT) }))).toEqual(['PAYLOAD_TOO_LARGE']);
  // Input is checked before anything is looked up.
  expect(rest('messages', '{"content":"hi"}', 'application/json', { kind: 'unknown', value: 'unknown-1' })).toEqual(['SESSION_NOT_FOUND']);
  expect(rest('messages', '{"content":""}', 'application/json', { kind: 'unknown', value: 'unknown-1' })).toEqual(['VALIDATION_ERROR']);
  expect(rest('sessions', '{"agentId":"no-such-agent"}')).toEqual(['AGENT_NOT_FOUND']);
  expect(rest('approvals', '{"approved":false}')).toEqual(['APPROVAL_NOT_FOUND']);
  // Open: a body that is JSON but not an object.
  expect(rest('messages', 'null')).toEqual(['INVALID_JSON', 'VALIDATION_ERROR']);

  expect(DOCUMENTED_CODES.get('VALIDATION_ERROR')).toEqual({ status: 422, recoverable: false });
  expect(DOCUMENTED_CODES.size).toBeGreaterThan(30);
});

test(`${WS_RUNS} malformed WebSocket frames each get exactly one error frame and the sockets stay open`, async () => {
  const started = Date.now();
  for (let lane = 0; lane < WS_LANES; lane++) sockets.push(await FuzzSocket.open(sessions[lane % sessions.length]!));
  const kinds = new Map<string, number>();
  const codes = new Map<string, number>();
  await runLanes('WebSocket', WS_RUNS, WS_LANES, (lane) =>
    fc.asyncProperty(malformedWsCase, async (c) => {
      const socket = sockets[lane]!;
      const sessionId = sessions[lane % sessions.length]!;
      const expected = wsAnswers(c);
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
    ['approval', 'binary', 'bad-id', 'empty-content', 'huge-frame', 'json-scalar-or-array', 'non-json', 'proto-keys', 'raw-unicode', 'too-long-content', 'truncated-json', 'unknown-type', 'wrong-types'].sort(),
  );
  expect([...codes.keys()]).toEqual(expect.arrayContaining(['APPROVAL_NOT_FOUND', 'INVALID_JSON', 'PAYLOAD_TOO_LARGE', 'UNKNOWN_FRAME_TYPE', 'VALIDATION_ERROR']));
}, 240_000);

test(`${REST_RUNS} malformed REST bodies each get one error envelope with a stable code`, async () => {
  const started = Date.now();
  const kinds = new Map<string, number>();
  const codes = new Map<string, number>();
  const targets = new Map<string, number>();
  await runLanes('REST', REST_RUNS, REST_LANES, () =>
    fc.asyncProperty(malformedRestCase, async (c) => {
      const expected = restAnswers(c);
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
    ['bad-id', 'edge-body', 'empty-content', 'huge-body', 'json-scalar-or-array', 'non-json', 'proto-keys', 'raw-unicode', 'repeated', 'too-long-content', 'truncated-json', 'well-formed', 'wrong-types'].sort(),
  );
  expect([...codes.keys()]).toEqual(
    expect.arrayContaining(['AGENT_NOT_FOUND', 'APPROVAL_NOT_FOUND', 'INVALID_JSON', 'PAYLOAD_TOO_LARGE', 'SESSION_NOT_FOUND', 'UNSUPPORTED_MEDIA_TYPE', 'VALIDATION_ERROR']),
  );
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

  // Each request, refused or not, has one `request` log line with its ID and final status.
  const refused = await stack.request('POST', `/api/v1/sessions/${sessions[0]}/messages`, { content: ' ' });
  const linesOf = (requestId: string | null) =>
    stack.api.lines.flatMap((l) => (l.startsWith('{') ? [JSON.parse(l) as Record<string, unknown>] : [])).filter((l) => l.msg === 'request' && l.requestId === requestId);
  // The child's stdout may reach us after its answer did.
  await eventually(async () => linesOf(refused.headers.get('x-request-id')).length > 0, 5_000, 'the request log line');
  expect(linesOf(refused.headers.get('x-request-id'))).toEqual([
    expect.objectContaining({ method: 'POST', path: `/api/v1/sessions/${sessions[0]}/messages`, status: 422, sessionId: sessions[0] }),
  ]);
  console.log(`timings: ${JSON.stringify(timings)}`);
}, 120_000);
