import http, { type IncomingMessage, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { setTimeout as delay } from 'node:timers/promises';
import { z } from 'zod';
import { misbehaviourOf, WRONG_REPLY, type Misbehaviour } from './misbehave';
import { brainReply, ChatRequest, conversationProblem, promptTokens, splitArguments, tokenize, type Reply, type ToolCallSpec } from './reply';

export type { ToolCallSpec } from './reply';

export interface ModelScript {
  reply?: string;
  firstTokenDelayMs?: number;
  tokenDelayMs?: number;
  failNext?: { count: number; status: number; message?: string; code?: string; retryAfterSeconds?: number };
  hangNext?: number;
  contentFilter?: boolean;
  toolCalls?: ToolCallSpec[];
  failMidStreamNext?: number;
}

export interface RecordedRequest {
  scope: string;
  body: any;
  at: number;
}

const MODEL_ID = 'keel-local';
const ALL = '*';
const MAX_BODY_BYTES = 8 * 1024 * 1024;
const CHUNKS_BEFORE_MID_STREAM_FAILURE = 3;

type FailSpec = NonNullable<ModelScript['failNext']>;
type Delta = Record<string, unknown>;

interface Completion {
  message: Record<string, unknown>;
  deltas: Delta[];
  finishReason: 'stop' | 'tool_calls';
}

class HttpError extends Error {
  constructor(
    readonly status: number,
    message: string,
    readonly type: string,
    readonly code: string | null = null,
    readonly param: string | null = null,
    readonly headers: Record<string, string> = {},
  ) {
    super(message);
  }

  body() {
    return { error: { message: this.message, type: this.type, param: this.param, code: this.code } };
  }
}

const invalidRequest = (message: string, param: string | null = null, code: string | null = null) => new HttpError(400, message, 'invalid_request_error', code, param);

const count = z.number().int().nonnegative();
const ScriptFields = z
  .object({
    reply: z.string().nullish(),
    firstTokenDelayMs: count.nullish(),
    tokenDelayMs: count.nullish(),
    failNext: z
      .object({ count, status: z.number().int().min(400).max(599), message: z.string().optional(), code: z.string().optional(), retryAfterSeconds: z.number().nonnegative().optional() })
      .nullish(),
    hangNext: count.nullish(),
    contentFilter: z.boolean().nullish(),
    toolCalls: z.array(z.object({ id: z.string().min(1).optional(), name: z.string().min(1), arguments: z.string() })).nullish(),
    failMidStreamNext: count.nullish(),
  })
  .strict();
const ControlScript = ScriptFields.extend({ scope: z.string().min(1).default(ALL) });

/** Over HTTP, `null` clears a field, as `undefined` does in code. */
function withoutNulls(fields: Record<string, unknown>): ModelScript {
  return Object.fromEntries(Object.entries(fields).map(([k, v]) => [k, v ?? undefined])) as ModelScript;
}

/** A validated deep copy: scripts are consumed in place, so callers' objects must not be shared. */
function parseScript(script: ModelScript): ModelScript {
  const parsed = ScriptFields.safeParse(script);
  if (!parsed.success) throw new TypeError(`Invalid model script: ${describeZodError(parsed.error).message}`);
  return withoutNulls(parsed.data);
}

function describeZodError(error: z.ZodError): HttpError {
  const issue = error.issues[0];
  const param = issue?.path.map((p) => (typeof p === 'number' ? `[${p}]` : p)).join('.') || null;
  return invalidRequest(`Invalid value${param ? ` for '${param}'` : ''}: ${issue?.message ?? 'invalid request'}`, param);
}

function defaultFailure(status: number): { type: string; code: string | null; message: string } {
  if (status === 429) return { type: 'requests', code: 'rate_limit_exceeded', message: 'Rate limit reached for keel-local (scripted).' };
  if (status === 401) return { type: 'invalid_request_error', code: 'invalid_api_key', message: 'Incorrect API key provided (scripted).' };
  if (status >= 500) return { type: 'server_error', code: null, message: `The server had an error while processing your request (scripted ${status}).` };
  return { type: 'invalid_request_error', code: null, message: `Scripted failure (HTTP ${status}).` };
}

function scriptedFailure(f: FailSpec): HttpError {
  const base = defaultFailure(f.status);
  const headers: Record<string, string> = f.retryAfterSeconds === undefined ? {} : { 'retry-after': String(f.retryAfterSeconds) };
  return new HttpError(f.status, f.message ?? base.message, base.type, f.code ?? base.code, null, headers);
}

const contentFiltered = () =>
  invalidRequest("The response was filtered due to the prompt triggering OpenAI's content management policy.", 'prompt', 'content_filter');

const misbehavingFailure = () =>
  new HttpError(500, 'The server had an error while processing your request (keel-misbehave: error).', 'server_error');

/**
 * Scripts by scope, plus the constructor defaults. A request sees the most specific value of
 * each field: its own scope, then '*', then the defaults. Counted fields are consumed from
 * the scope that supplied them.
 */
class ScriptBook {
  private readonly scopes = new Map<string, ModelScript>();
  private base: ModelScript;

  constructor(private readonly defaults: ModelScript) {
    this.base = parseScript(defaults);
  }

  set(scope: string, script: ModelScript): void {
    this.scopes.set(scope, { ...this.scopes.get(scope), ...parseScript(script) });
  }

  reset(): void {
    this.scopes.clear();
    this.base = parseScript(this.defaults);
  }

  private layers(scope: string): ModelScript[] {
    const own = scope === ALL ? undefined : this.scopes.get(scope);
    return [own, this.scopes.get(ALL), this.base].filter((s): s is ModelScript => s !== undefined);
  }

  value<K extends 'reply' | 'firstTokenDelayMs' | 'tokenDelayMs' | 'contentFilter'>(scope: string, key: K): ModelScript[K] {
    return this.layers(scope).find((s) => s[key] !== undefined)?.[key];
  }

  takeCount(scope: string, key: 'hangNext' | 'failMidStreamNext'): boolean {
    const layer = this.layers(scope).find((s) => (s[key] ?? 0) > 0);
    if (layer) layer[key] = (layer[key] ?? 1) - 1;
    return layer !== undefined;
  }

  takeFailure(scope: string): FailSpec | undefined {
    const layer = this.layers(scope).find((s) => (s.failNext?.count ?? 0) > 0);
    const failure = layer?.failNext;
    if (layer && failure) layer.failNext = { ...failure, count: failure.count - 1 };
    return failure;
  }

  takeToolCalls(scope: string): ToolCallSpec[] | undefined {
    const layer = this.layers(scope).find((s) => s.toolCalls?.length);
    const calls = layer?.toolCalls;
    if (layer) layer.toolCalls = undefined;
    return calls;
  }
}

function textCompletion(text: string): Completion {
  return {
    message: { role: 'assistant', content: text, refusal: null },
    deltas: tokenize(text).map((content) => ({ content })),
    finishReason: 'stop',
  };
}

function toolCallDeltas(call: Required<ToolCallSpec>, index: number): Delta[] {
  const opening = { tool_calls: [{ index, id: call.id, type: 'function', function: { name: call.name, arguments: '' } }] };
  const pieces = splitArguments(call.arguments).map((piece) => ({ tool_calls: [{ index, function: { arguments: piece } }] }));
  return [opening, ...pieces];
}

function toolCallCompletion(calls: Required<ToolCallSpec>[]): Completion {
  return {
    message: {
      role: 'assistant',
      content: null,
      refusal: null,
      tool_calls: calls.map((c) => ({ id: c.id, type: 'function', function: { name: c.name, arguments: c.arguments } })),
    },
    deltas: calls.flatMap(toolCallDeltas),
    finishReason: 'tool_calls',
  };
}

function sendJson(res: ServerResponse, status: number, body: unknown, headers: Record<string, string> = {}): void {
  if (res.headersSent || res.destroyed) return;
  res.writeHead(status, { 'content-type': 'application/json', ...headers });
  res.end(JSON.stringify(body));
}

async function readBody(req: IncomingMessage): Promise<string> {
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of req as AsyncIterable<Buffer>) {
    size += chunk.length;
    if (size > MAX_BODY_BYTES) throw new HttpError(413, `Request body exceeds ${MAX_BODY_BYTES} bytes`, 'invalid_request_error', null, null, { connection: 'close' });
    chunks.push(chunk);
  }
  return Buffer.concat(chunks).toString('utf8');
}

function parseJson(text: string): unknown {
  try {
    return JSON.parse(text);
  } catch {
    throw invalidRequest('We could not parse the JSON body of your request. The body must be valid JSON.');
  }
}

function scopeOf(body: unknown): string {
  const user = typeof body === 'object' && body !== null ? (body as { user?: unknown }).user : undefined;
  return typeof user === 'string' && user !== '' ? user : ALL;
}

interface Pacing {
  firstTokenDelayMs: number;
  tokenDelayMs: number;
}

/** How an answer is sent, beyond its content. */
interface Delivery {
  pacing: Pacing;
  /** False for `no-usage`: the answer carries no usage, even when the request asks for it. */
  usage: boolean;
}

/** One chat completion exchange: aborted when the client goes away or the server stops. */
interface Exchange {
  res: ServerResponse;
  signal: AbortSignal;
  serial: number;
}

/**
 * An OpenAI-compatible chat completions server with deterministic replies, scriptable per
 * scope (the request's `user` field, where callers put the session ID): delays, failures,
 * hangs, content filtering, tool calls and broken streams. A request can also ask to misbehave
 * itself (misbehave.ts). Used by the offline demo and tests; see docs/model-server.md.
 */
export class LocalModelServer {
  private server: http.Server | undefined;
  private readonly scripts: ScriptBook;
  private recorded: RecordedRequest[] = [];
  private readonly inflight = new Set<AbortController>();
  private sequence = 0;

  constructor(private readonly opts: { port?: number; host?: string; defaults?: ModelScript } = {}) {
    this.scripts = new ScriptBook(opts.defaults ?? {});
  }

  async start(): Promise<{ url: string; port: number }> {
    if (this.server) throw new Error('LocalModelServer is already started');
    const host = this.opts.host ?? '127.0.0.1';
    const server = http.createServer((req, res) => void this.handle(req, res));
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(this.opts.port ?? 0, host, () => {
        server.off('error', reject);
        resolve();
      });
    });
    this.server = server;
    const { port } = server.address() as AddressInfo;
    return { url: `http://${host}:${port}/v1`, port };
  }

  async stop(): Promise<void> {
    const server = this.server;
    this.server = undefined;
    for (const controller of this.inflight) controller.abort();
    this.inflight.clear();
    if (!server) return;
    const closed = new Promise<void>((resolve) => server.close(() => resolve()));
    server.closeAllConnections();
    await closed;
  }

  script(scope: string, s: ModelScript): void {
    this.scripts.set(scope, s);
  }

  requests(scope?: string): RecordedRequest[] {
    if (scope === undefined || scope === ALL) return [...this.recorded];
    return this.recorded.filter((r) => r.scope === scope);
  }

  reset(): void {
    this.scripts.reset();
    this.recorded = [];
  }

  private async handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const controller = new AbortController();
    this.inflight.add(controller);
    res.once('close', () => {
      controller.abort();
      this.inflight.delete(controller);
    });
    try {
      await this.route(req, res, controller.signal);
    } catch (error) {
      try {
        this.fail(res, error, controller.signal);
      } catch {
        res.destroy();
      }
    }
  }

  private fail(res: ServerResponse, error: unknown, signal: AbortSignal): void {
    if (signal.aborted || res.headersSent) {
      res.destroy();
      return;
    }
    // A bug of its own, not a scripted failure: say what it was, or a test only sees the 500.
    if (!(error instanceof HttpError)) console.error('local model server: unexpected error', error);
    const failure = error instanceof HttpError ? error : new HttpError(500, 'The local model server failed on this request.', 'server_error');
    sendJson(res, failure.status, failure.body(), failure.headers);
  }

  private async route(req: IncomingMessage, res: ServerResponse, signal: AbortSignal): Promise<void> {
    const url = new URL(req.url ?? '/', 'http://local');
    const route = `${req.method} ${url.pathname.replace(/\/+$/, '')}`;
    switch (route) {
      case 'GET /v1/models':
        return sendJson(res, 200, { object: 'list', data: [{ id: MODEL_ID, object: 'model', created: 0, owned_by: 'keel' }] });
      case 'POST /v1/chat/completions':
        return this.chatCompletion(parseJson(await readBody(req)), { res, signal, serial: ++this.sequence });
      case 'POST /_control/script':
        return this.controlScript(parseJson(await readBody(req)), res);
      case 'GET /_control/requests':
        return sendJson(res, 200, { requests: this.requests(url.searchParams.get('scope') || undefined) });
      case 'POST /_control/reset':
        this.reset();
        return sendJson(res, 200, { ok: true });
      default:
        throw new HttpError(404, `Unknown request URL: ${req.method} ${url.pathname}.`, 'invalid_request_error', 'unknown_url');
    }
  }

  private controlScript(body: unknown, res: ServerResponse): void {
    const parsed = ControlScript.safeParse(body);
    if (!parsed.success) throw describeZodError(parsed.error);
    const { scope, ...fields } = parsed.data;
    this.script(scope, withoutNulls(fields));
    sendJson(res, 200, { ok: true, scope });
  }

  private async chatCompletion(body: unknown, exchange: Exchange): Promise<void> {
    const scope = scopeOf(body);
    this.recorded.push({ scope, body, at: Date.now() });
    const { request, misbehaviour } = validate(body);
    // Scripted outcomes come before a misbehaving one, and scripted content and pacing win over it.
    if (this.scripts.takeCount(scope, 'hangNext')) return hang(exchange);
    const failure = this.scripts.takeFailure(scope);
    if (failure) throw scriptedFailure(failure);
    if (this.scripts.value(scope, 'contentFilter')) throw contentFiltered();
    if (misbehaviour.error) throw misbehavingFailure();
    const completion = this.complete(scope, request, exchange.serial, misbehaviour);
    const delivery: Delivery = { pacing: this.pacing(scope, misbehaviour), usage: !misbehaviour.noUsage };
    if (!request.stream) return respond(exchange, request, completion, delivery);
    return stream(exchange, request, completion, delivery, this.scripts.takeCount(scope, 'failMidStreamNext'));
  }

  private complete(scope: string, request: ChatRequest, serial: number, misbehaviour: Misbehaviour): Completion {
    const misbehaving: Reply | undefined = misbehaviour.wrong ? { kind: 'text', text: WRONG_REPLY } : undefined;
    const reply: Reply = this.scriptedReply(scope) ?? misbehaving ?? brainReply(request);
    if (reply.kind === 'text') return textCompletion(reply.text);
    return toolCallCompletion(reply.calls.map((c, i) => ({ ...c, id: c.id ?? `call_keel${serial}_${i}` })));
  }

  private scriptedReply(scope: string): Reply | undefined {
    const calls = this.scripts.takeToolCalls(scope);
    if (calls) return { kind: 'tool_calls', calls };
    const text = this.scripts.value(scope, 'reply');
    return text === undefined ? undefined : { kind: 'text', text };
  }

  private pacing(scope: string, misbehaviour: Misbehaviour): Pacing {
    return {
      firstTokenDelayMs: this.scripts.value(scope, 'firstTokenDelayMs') ?? misbehaviour.slowMs ?? 0,
      tokenDelayMs: this.scripts.value(scope, 'tokenDelayMs') ?? 0,
    };
  }
}

function validate(body: unknown): { request: ChatRequest; misbehaviour: Misbehaviour } {
  const parsed = ChatRequest.safeParse(body);
  if (!parsed.success) throw describeZodError(parsed.error);
  const problem = conversationProblem(parsed.data.messages);
  if (problem) throw invalidRequest(problem.message, problem.param);
  const asked = misbehaviourOf(parsed.data);
  if ('problem' in asked) throw invalidRequest(asked.problem.message, asked.problem.param);
  return { request: parsed.data, misbehaviour: asked.misbehaviour };
}

function usageOf(request: ChatRequest, completion: Completion) {
  const prompt = promptTokens(request.messages);
  const generated = completion.deltas.length;
  return { prompt_tokens: prompt, completion_tokens: generated, total_tokens: prompt + generated };
}

async function pause(ms: number, signal: AbortSignal): Promise<void> {
  if (ms > 0) await delay(ms, undefined, { signal });
  signal.throwIfAborted();
}

/** Answers nothing until the client gives up or the server stops. */
async function hang({ res, signal }: Exchange): Promise<void> {
  if (!signal.aborted) await new Promise((resolve) => signal.addEventListener('abort', resolve, { once: true }));
  res.destroy();
}

async function respond({ res, signal, serial }: Exchange, request: ChatRequest, completion: Completion, { pacing, usage }: Delivery): Promise<void> {
  await pause(pacing.firstTokenDelayMs + pacing.tokenDelayMs * Math.max(0, completion.deltas.length - 1), signal);
  const body = {
    id: `chatcmpl-keel${serial}`,
    object: 'chat.completion',
    created: Math.floor(Date.now() / 1000),
    model: request.model,
    choices: [{ index: 0, message: completion.message, logprobs: null, finish_reason: completion.finishReason }],
    ...(usage ? { usage: usageOf(request, completion) } : {}),
  };
  sendJson(res, 200, body, { 'x-request-id': `req_keel${serial}` });
}

function chunkWriter(res: ServerResponse, serial: number, request: ChatRequest, usage: boolean) {
  const includeUsage = usage && request.stream_options?.include_usage === true;
  const base = { id: `chatcmpl-keel${serial}`, object: 'chat.completion.chunk', created: Math.floor(Date.now() / 1000), model: request.model };
  const write = (choices: object[], usage: object | null) => {
    res.write(`data: ${JSON.stringify({ ...base, choices, ...(includeUsage ? { usage } : {}) })}\n\n`);
  };
  return {
    delta: (delta: Delta, finishReason: string | null = null) => write([{ index: 0, delta, logprobs: null, finish_reason: finishReason }], null),
    end: (usage: object) => {
      if (includeUsage) write([], usage);
      res.end('data: [DONE]\n\n');
    },
  };
}

/** How many deltas a broken stream sends: some, but never the whole reply. */
function deltasBeforeBreak(total: number): number {
  return Math.min(CHUNKS_BEFORE_MID_STREAM_FAILURE, Math.max(1, total - 1));
}

async function stream(exchange: Exchange, request: ChatRequest, completion: Completion, { pacing, usage }: Delivery, breaks: boolean): Promise<void> {
  const { res, signal, serial } = exchange;
  res.writeHead(200, { 'content-type': 'text/event-stream; charset=utf-8', 'cache-control': 'no-cache', connection: 'keep-alive', 'x-request-id': `req_keel${serial}` });
  res.flushHeaders();
  const chunks = chunkWriter(res, serial, request, usage);
  await pause(pacing.firstTokenDelayMs, signal);
  chunks.delta({ role: 'assistant', content: completion.finishReason === 'tool_calls' ? null : '', refusal: null });
  const deltas = breaks ? completion.deltas.slice(0, deltasBeforeBreak(completion.deltas.length)) : completion.deltas;
  for (const [i, delta] of deltas.entries()) {
    if (i > 0) await pause(pacing.tokenDelayMs, signal);
    chunks.delta(delta);
  }
  if (breaks) return breakConnection(res);
  chunks.delta({}, completion.finishReason);
  chunks.end(usageOf(request, completion));
}

/** Destroys the socket once the chunks already written have been flushed to it. */
function breakConnection(res: ServerResponse): void {
  res.write('', () => res.socket?.destroy());
}
