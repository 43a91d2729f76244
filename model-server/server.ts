import { randomUUID } from 'node:crypto';
import http, { type IncomingMessage, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { answer, promptTokens, tokenize, unansweredToolCall, type Answer, type ChatMessage, type ToolCallSpec } from './reply';

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

interface ChatRequest {
  model?: string;
  messages?: ChatMessage[];
  stream?: boolean;
  stream_options?: { include_usage?: boolean };
  tools?: { function?: { name?: string } }[];
  user?: string;
}

const MODEL_ID = 'keel-local';

/**
 * An OpenAI-compatible chat completions server with deterministic replies, scriptable per
 * scope (the request's `user` field; callers put the session ID there): delays, failures,
 * hangs, content filtering and tool calls. Used by the offline demo and every test.
 */
export class LocalModelServer {
  private server: http.Server | null = null;
  private readonly scripts = new Map<string, ModelScript>();
  private recorded: RecordedRequest[] = [];
  private readonly timers = new Set<NodeJS.Timeout>();
  private readonly hanging = new Set<ServerResponse>();

  constructor(private readonly opts: { port?: number; host?: string; defaults?: ModelScript } = {}) {}

  async start(): Promise<{ url: string; port: number }> {
    const server = http.createServer((req, res) => {
      this.handle(req, res).catch(() => {
        if (!res.headersSent) this.sendError(res, 500, 'internal error', 'server_error');
        else res.destroy();
      });
    });
    server.keepAliveTimeout = 60_000;
    const host = this.opts.host ?? '127.0.0.1';
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(this.opts.port ?? 0, host, () => resolve());
    });
    this.server = server;
    const port = (server.address() as AddressInfo).port;
    return { url: `http://${host}:${port}/v1`, port };
  }

  async stop(): Promise<void> {
    for (const t of this.timers) clearTimeout(t);
    this.timers.clear();
    for (const res of this.hanging) res.destroy();
    this.hanging.clear();
    const server = this.server;
    this.server = null;
    if (!server) return;
    await new Promise<void>((resolve) => {
      server.close(() => resolve());
      server.closeAllConnections();
    });
  }

  script(scope: string, s: ModelScript): void {
    this.scripts.set(scope, { ...this.scripts.get(scope), ...s });
  }

  requests(scope?: string): RecordedRequest[] {
    return scope === undefined ? [...this.recorded] : this.recorded.filter((r) => r.scope === scope);
  }

  reset(): void {
    this.scripts.clear();
    this.recorded = [];
  }

  private scriptFor(scope: string): ModelScript {
    return { ...this.opts.defaults, ...this.scripts.get('*'), ...this.scripts.get(scope) };
  }

  /** Consumes one use of a counted script entry in the most specific scope that has it. */
  private consume(scope: string, key: 'failNext' | 'hangNext' | 'failMidStreamNext' | 'toolCalls'): void {
    const target = this.scripts.get(scope)?.[key] !== undefined ? scope : '*';
    const s = this.scripts.get(target);
    if (!s) return;
    if (key === 'failNext' && s.failNext) s.failNext = s.failNext.count > 1 ? { ...s.failNext, count: s.failNext.count - 1 } : undefined;
    else if (key === 'hangNext' || key === 'failMidStreamNext') s[key] = Math.max(0, (s[key] ?? 0) - 1);
    else if (key === 'toolCalls') s.toolCalls = undefined;
  }

  private async handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const url = new URL(req.url ?? '/', 'http://localhost');
    const body = req.method === 'POST' ? await readBody(req) : '';
    if (req.method === 'GET' && url.pathname === '/v1/models') {
      return sendJson(res, 200, { object: 'list', data: [{ id: MODEL_ID, object: 'model', created: 0, owned_by: 'keel' }] });
    }
    if (req.method === 'POST' && url.pathname === '/v1/chat/completions') return this.chat(body, res);
    if (url.pathname.startsWith('/_control/')) return this.control(req.method ?? 'GET', url, body, res);
    this.sendError(res, 404, `no route ${req.method} ${url.pathname}`, 'invalid_request_error');
  }

  private control(method: string, url: URL, body: string, res: ServerResponse): void {
    if (method === 'POST' && url.pathname === '/_control/script') {
      const parsed = parseJson(body) as (ModelScript & { scope?: string }) | null;
      if (!parsed || typeof parsed !== 'object') return this.sendError(res, 400, 'invalid JSON', 'invalid_request_error');
      const { scope = '*', ...script } = parsed;
      this.script(scope, script);
      return sendJson(res, 200, { ok: true });
    }
    if (method === 'GET' && url.pathname === '/_control/requests') return sendJson(res, 200, { requests: this.requests(url.searchParams.get('scope') ?? undefined) });
    if (method === 'POST' && url.pathname === '/_control/reset') {
      this.reset();
      return sendJson(res, 200, { ok: true });
    }
    this.sendError(res, 404, 'no such control route', 'invalid_request_error');
  }

  private async chat(raw: string, res: ServerResponse): Promise<void> {
    const body = parseJson(raw) as ChatRequest | null;
    if (!body || typeof body !== 'object' || !Array.isArray(body.messages)) {
      return this.sendError(res, 400, 'The request body must be JSON with a messages array', 'invalid_request_error');
    }
    const scope = typeof body.user === 'string' ? body.user : '*';
    this.recorded.push({ scope, body, at: Date.now() });
    const script = this.scriptFor(scope);

    if (script.hangNext) {
      this.consume(scope, 'hangNext');
      this.hanging.add(res);
      res.on('close', () => this.hanging.delete(res));
      return;
    }
    if (script.failNext && script.failNext.count > 0) {
      const f = script.failNext;
      this.consume(scope, 'failNext');
      if (f.retryAfterSeconds !== undefined) res.setHeader('retry-after', String(f.retryAfterSeconds));
      return this.sendError(res, f.status, f.message ?? `scripted failure ${f.status}`, f.status === 429 ? 'rate_limit_exceeded' : 'server_error', f.code);
    }
    if (script.contentFilter) return this.sendError(res, 400, 'The response was filtered due to the content management policy', 'invalid_request_error', 'content_filter');
    const missing = unansweredToolCall(body.messages);
    if (missing) {
      return this.sendError(res, 400, `An assistant message with 'tool_calls' must be followed by tool messages responding to each 'tool_call_id'. The following tool_call_ids did not have response messages: ${missing}`, 'invalid_request_error');
    }

    let reply: Answer;
    if (script.toolCalls?.length) {
      reply = { kind: 'tools', calls: script.toolCalls };
      this.consume(scope, 'toolCalls');
    } else if (script.reply !== undefined) reply = { kind: 'text', text: script.reply };
    else reply = answer(body.messages, body.tools);
    const calls = reply.kind === 'tools' ? reply.calls.map((c) => ({ ...c, id: c.id ?? `call_${randomUUID().replace(/-/g, '').slice(0, 24)}` })) : [];
    const tokens = reply.kind === 'text' ? tokenize(reply.text) : [];
    const usage = { prompt_tokens: promptTokens(body.messages), completion_tokens: reply.kind === 'text' ? tokens.length : calls.length * 8, total_tokens: 0 };
    usage.total_tokens = usage.prompt_tokens + usage.completion_tokens;
    const id = `chatcmpl-${randomUUID()}`;
    const created = Math.floor(Date.now() / 1000);
    const model = body.model ?? MODEL_ID;
    const finish = reply.kind === 'tools' ? 'tool_calls' : 'stop';

    await this.sleep(script.firstTokenDelayMs ?? 0);
    if (res.destroyed) return;
    if (!body.stream) {
      const message =
        reply.kind === 'text'
          ? { role: 'assistant', content: reply.text }
          : { role: 'assistant', content: null, tool_calls: calls.map((c) => ({ id: c.id, type: 'function', function: { name: c.name, arguments: c.arguments } })) };
      return sendJson(res, 200, { id, object: 'chat.completion', created, model, choices: [{ index: 0, message, finish_reason: finish, logprobs: null }], usage });
    }

    res.writeHead(200, { 'content-type': 'text/event-stream', 'cache-control': 'no-cache', connection: 'keep-alive' });
    const chunk = (delta: object, finishReason: string | null = null) =>
      res.write(`data: ${JSON.stringify({ id, object: 'chat.completion.chunk', created, model, choices: [{ index: 0, delta, finish_reason: finishReason, logprobs: null }] })}\n\n`);
    const failMidStream = (script.failMidStreamNext ?? 0) > 0;
    if (failMidStream) this.consume(scope, 'failMidStreamNext');
    chunk({ role: 'assistant', content: '' });
    const pieces: object[] =
      reply.kind === 'text'
        ? tokens.map((t) => ({ content: t }))
        : calls.flatMap((c, index) => {
            const half = Math.ceil(c.arguments.length / 2);
            return [
              { tool_calls: [{ index, id: c.id, type: 'function', function: { name: c.name, arguments: '' } }] },
              { tool_calls: [{ index, function: { arguments: c.arguments.slice(0, half) } }] },
              { tool_calls: [{ index, function: { arguments: c.arguments.slice(half) } }] },
            ];
          });
    for (let i = 0; i < pieces.length; i++) {
      if (res.destroyed) return;
      if (i > 0) await this.sleep(script.tokenDelayMs ?? 0);
      if (failMidStream && i >= Math.min(3, pieces.length - 1)) {
        res.destroy();
        return;
      }
      chunk(pieces[i]!);
    }
    chunk({}, finish);
    if (body.stream_options?.include_usage) res.write(`data: ${JSON.stringify({ id, object: 'chat.completion.chunk', created, model, choices: [], usage })}\n\n`);
    res.end('data: [DONE]\n\n');
  }

  private sleep(ms: number): Promise<void> {
    if (ms <= 0) return Promise.resolve();
    return new Promise((resolve) => {
      const t = setTimeout(() => {
        this.timers.delete(t);
        resolve();
      }, ms);
      this.timers.add(t);
    });
  }

  private sendError(res: ServerResponse, status: number, message: string, type: string, code?: string): void {
    sendJson(res, status, { error: { message, type, param: null, code: code ?? null } });
  }
}

function sendJson(res: ServerResponse, status: number, body: unknown): void {
  if (res.destroyed) return;
  res.writeHead(status, { 'content-type': 'application/json' });
  res.end(JSON.stringify(body));
}

function parseJson(text: string): unknown {
  try {
    return JSON.parse(text);
  } catch {
    return null;
  }
}

function readBody(req: IncomingMessage): Promise<string> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => resolve(Buffer.concat(chunks).toString('utf8')));
    req.on('error', reject);
  });
}
