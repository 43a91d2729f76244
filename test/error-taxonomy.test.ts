import path from 'node:path';
import { randomUUID } from 'node:crypto';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { ApplicationFailure } from '@temporalio/common';
import { MockActivityEnvironment } from '@temporalio/testing';
import { DefaultLogger } from '@temporalio/worker';
import { sql } from 'slonik';
import { z } from 'zod';
import { createToolActivities } from '../activities';
import { createMetrics } from '../config/metrics';
import type { ExecuteToolInput, PlannedToolCall, RecordToolCallsInput } from '../contracts/turn';
import { migrate } from '../db/migrate';
import { openPool, type DatabasePool } from '../db/pool';
import { builtinTools, classifyHttpStatus, ToolAuthError, ToolTransientError, ToolValidationError, type ToolContext, type ToolSettings } from '../tools';
import { createTestDatabase, dropTestDatabase } from './support/database';
import { startStack, type Stack } from './support/stack';
import type { WsClient } from './support/ws-client';
import type { Frame } from './support/ws-client';

/**
 * Issue 10 item 4: how tool HTTP failures and the model provider's refusals are classified.
 * The classification itself, the http_request tool against a real local server, executeTool in
 * Temporal's MockActivityEnvironment on a real Postgres (what each attempt records), and whole
 * sessions on the real stack, where Temporal's retry policy does the retrying.
 */

interface Hit {
  path: string;
}

/**
 * A real service on 127.0.0.1. `/s/<key>` answers with the statuses scripted for `key`, in turn
 * (200 once they run out); status 0 never answers (a time-out). Every request is recorded.
 */
class Service {
  readonly hits: Hit[] = [];
  private readonly scripts = new Map<string, number[]>();
  private readonly server = http.createServer((req, res) => {
    const path = new URL(req.url ?? '/', 'http://x').pathname;
    this.hits.push({ path });
    const status = this.scripts.get(path)?.shift() ?? 200;
    if (status === 0) return;
    const body = status === 404 ? JSON.stringify({ error: 'order 7 does not exist', hint: 'x'.repeat(2_000) }) : status === 200 ? 'all good' : `status ${status}`;
    res.writeHead(status, { 'content-type': 'text/plain' }).end(body);
  });
  port = 0;

  async start(): Promise<void> {
    await new Promise<void>((resolve) => this.server.listen(0, '127.0.0.1', resolve));
    this.port = (this.server.address() as AddressInfo).port;
  }

  /** A fresh path answering `statuses` in turn; returns its URL. */
  script(statuses: number[]): string {
    const path = `/s/${randomUUID()}`;
    this.scripts.set(path, [...statuses]);
    return `http://127.0.0.1:${this.port}${path}`;
  }

  hitsOf(url: string): number {
    const path = new URL(url).pathname;
    return this.hits.filter((h) => h.path === path).length;
  }

  stop(): Promise<void> {
    this.server.closeAllConnections();
    return new Promise((resolve) => this.server.close(() => resolve()));
  }
}

const service = new Service();
beforeAll(() => service.start());
afterAll(() => service.stop());

const settings = (): ToolSettings => ({ httpAllowHosts: [`127.0.0.1:${service.port}`], httpTimeoutMs: 2_000, httpMaxBytes: 64 * 1024 });

/** What a promise rejected with; fails the test if it resolved. */
async function rejectionOf(promise: Promise<unknown>): Promise<any> {
  return promise.then(
    (value) => {
      throw new Error(`expected a rejection, got ${JSON.stringify(value)}`);
    },
    (error: unknown) => error,
  );
}

describe('classifyHttpStatus', () => {
  test.each([
    [200, 'ok'],
    [204, 'ok'],
    [304, 'ok'],
    [408, 'transient'],
    [429, 'transient'],
    [500, 'transient'],
    [502, 'transient'],
    [503, 'transient'],
    [504, 'transient'],
    [401, 'auth'],
    [403, 'auth'],
    [400, 'validation'],
    [404, 'validation'],
    [409, 'validation'],
    [422, 'validation'],
  ])('%d is %s', (status, kind) => {
    expect(classifyHttpStatus(status)).toBe(kind);
  });
});

describe('http_request against a real service', () => {
  const httpRequest = builtinTools.http_request!;
  const context = (): ToolContext => ({
    sessionId: 's',
    toolCallId: 'c',
    idempotencyKey: 'k',
    pool: undefined as unknown as DatabasePool,
    signal: new AbortController().signal,
    settings: settings(),
  });
  const run = (url: string) => httpRequest.execute(httpRequest.parse({ url: `${url}?token=secret` }), context());

  test('retries up to 4 attempts in all (1 try + 3 retries)', () => {
    expect(httpRequest.definition.retry.maxAttempts).toBe(4);
  });

  test('a 503 is a ToolTransientError', async () => {
    const error = await rejectionOf(run(service.script([503])));
    expect(error).toBeInstanceOf(ToolTransientError);
    expect(error.message).toMatch(/^GET http:\/\/127\.0\.0\.1:\d+\/s\/[\w-]+ answered 503 Service Unavailable$/);
  });

  test.each([401, 403])('a %d is a ToolAuthError', async (status) => {
    const error = await rejectionOf(run(service.script([status])));
    expect(error).toBeInstanceOf(ToolAuthError);
    expect(error.message).toContain(`answered ${status}`);
  });

  test("a 404 is a ToolValidationError quoting the start of the service's answer, without the query string", async () => {
    const error = await rejectionOf(run(service.script([404])));
    expect(error).toBeInstanceOf(ToolValidationError);
    expect(error.message).toMatch(/^GET http:\/\/127\.0\.0\.1:\d+\/s\/[\w-]+ answered 404 Not Found: \{"error":"order 7 does not exist","hint":"x+…$/);
    // 500 characters of the body, then the ellipsis.
    const quoted = error.message.slice(error.message.indexOf(': {') + 2);
    expect(quoted).toHaveLength(501);
    expect(error.message).not.toContain('token=secret');
  });

  test('a 200 is the result, as before', async () => {
    await expect(run(service.script([]))).resolves.toMatchObject({ status: 200, body: 'all good' });
  });
});

describe('executeTool records what each attempt ends with', () => {
  const databaseName = `keel_taxonomy_${process.pid}`;
  let pool: DatabasePool;
  const metrics = createMetrics('worker');
  const sdkLogger = new DefaultLogger('ERROR');

  beforeAll(async () => {
    const url = await createTestDatabase(databaseName);
    await migrate(url);
    pool = await openPool(url, 5);
  });
  afterAll(async () => {
    await pool?.end();
    await dropTestDatabase(databaseName);
  });

  const activities = () => createToolActivities({ pool, tools: builtinTools, toolSettings: settings(), metrics });
  const environment = (attempt = 1) => new MockActivityEnvironment({ attempt, heartbeatTimeoutMs: 5_000 }, { logger: sdkLogger });

  /** A session and the model's http_request call to `url`, stored by the real recordToolCalls; returns executeTool's input. */
  async function plannedCall(url: string): Promise<ExecuteToolInput> {
    const sessionId = `s${randomUUID().replace(/-/g, '')}`;
    await pool.query(sql.unsafe`INSERT INTO sessions (id, agent_id, agent_version, owner_id) VALUES (${sessionId}, 'default', 1, 'user-1')`);
    const record: RecordToolCallsInput = {
      sessionId,
      turn: 1,
      step: 1,
      agent: { id: 'default', version: 1 },
      calls: [{ modelCallId: 'call_1', name: 'http_request', arguments: JSON.stringify({ url }) }],
      policies: [{ name: 'http_request', permission: 'read', requiresApproval: false, approvalTtlMs: 60_000, timeoutMs: 5_000, maxAttempts: 4 }],
      nowMs: Date.now(),
    };
    const [planned]: PlannedToolCall[] = await environment().run(activities().recordToolCalls, record);
    return {
      sessionId,
      toolCallId: planned!.toolCallId,
      modelCallId: planned!.modelCallId,
      name: planned!.name,
      turn: 1,
      position: planned!.position,
      arguments: planned!.arguments,
      idempotencyKey: `wf-${sessionId}/${planned!.toolCallId}`,
      timeoutMs: 5_000,
    };
  }

  const row = (id: string) => pool.one(sql.type(z.object({ status: z.string(), error_code: z.string().nullable() }))`SELECT status, error_code FROM tool_calls WHERE id = ${id}`);
  const results = async (sessionId: string) =>
    [...(await pool.anyFirst(sql.type(z.object({ data: z.any() }))`SELECT data FROM session_events WHERE session_id = ${sessionId} AND type = 'tool.result'`))];
  const toolMessage = (sessionId: string) => pool.maybeOneFirst(sql.type(z.object({ content: z.string() }))`SELECT content FROM messages WHERE session_id = ${sessionId} AND role = 'tool'`);

  test('a 401 is recorded as TOOL_AUTH_ERROR and thrown as a non-retryable failure of that type', async () => {
    const input = await plannedCall(service.script([401]));
    const error = await rejectionOf(environment().run(activities().executeTool, input));
    expect(error).toBeInstanceOf(ApplicationFailure);
    expect(error).toMatchObject({ type: 'TOOL_AUTH_ERROR', nonRetryable: true });
    expect(await row(input.toolCallId)).toEqual({ status: 'failed', error_code: 'TOOL_AUTH_ERROR' });
    expect(await results(input.sessionId)).toEqual([expect.objectContaining({ status: 'failed', error: { code: 'TOOL_AUTH_ERROR', message: expect.stringContaining('answered 401 Unauthorized') } })]);
    // The conversation stays well formed: the model's call has its answer.
    expect(JSON.parse((await toolMessage(input.sessionId))!)).toMatchObject({ error: { code: 'TOOL_AUTH_ERROR' } });
  });

  test('a 404 is recorded as TOOL_VALIDATION_ERROR and returned for the model to read', async () => {
    const input = await plannedCall(service.script([404]));
    const outcome = await environment().run(activities().executeTool, input);
    expect(outcome).toEqual({ status: 'failed', error: { code: 'TOOL_VALIDATION_ERROR', message: expect.stringContaining('answered 404 Not Found: {"error":"order 7 does not exist"') } });
    expect(await row(input.toolCallId)).toEqual({ status: 'failed', error_code: 'TOOL_VALIDATION_ERROR' });
    expect(await toolMessage(input.sessionId)).toContain('order 7 does not exist');
  });

  test('a 503 is thrown to be retried and records no outcome: the call is still running', async () => {
    const input = await plannedCall(service.script([503]));
    const error = await rejectionOf(environment().run(activities().executeTool, input));
    expect(error).toBeInstanceOf(ApplicationFailure);
    expect(error).toMatchObject({ type: 'TOOL_EXECUTION_ERROR', nonRetryable: false });
    expect(error.message).toContain('answered 503');
    expect(await row(input.toolCallId)).toEqual({ status: 'running', error_code: null });
    expect(await results(input.sessionId)).toEqual([]);
    expect(await toolMessage(input.sessionId)).toBeNull();
  });
});

describe('whole sessions: Temporal retries the transient failures only', () => {
  let stack: Stack;
  beforeAll(async () => {
    stack = await startStack({ env: { KEEL_AGENTS_FILE: path.join(__dirname, 'fixtures/agents.yaml'), KEEL_HTTP_ALLOW_HOSTS: `127.0.0.1:${service.port}`, KEEL_HTTP_TIMEOUT_MS: '500' } });
  });
  afterAll(async () => {
    await stack?.stop();
  });

  const of = (type: string) => (f: Frame) => f.type === type;

  /** A session whose model calls http_request on `url`; resolves with the call's tool.result and the turn's turn.done. */
  async function fetchThrough(url: string, agentId = 'default'): Promise<{ sessionId: string; result: Frame; done: Frame; ws: WsClient }> {
    const sessionId = await stack.createSession({ agentId });
    const ws = await stack.ws(sessionId);
    stack.model.script(sessionId, { toolCalls: [{ name: 'http_request', arguments: JSON.stringify({ url }) }] });
    ws.send({ type: 'message', content: 'fetch it' });
    const result = await ws.waitFor(of('tool.result'), 30_000);
    const done = await ws.waitFor(of('turn.done'), 30_000);
    return { sessionId, result, done, ws };
  }

  test('401 in an agent that may escalate: the conversation goes to a person, and no model call follows', async () => {
    const url = service.script([401]);
    const { sessionId, done, ws } = await fetchThrough(url, 'escalating');
    expect(ws.frames.find(of('session.escalated'))!.data).toMatchObject({ source: 'tool_auth', agent: 'escalating' });
    expect(done.data).toMatchObject({ status: 'completed', content: 'A person from our team will take it from here.' });
    expect(stack.model.requests(sessionId)).toHaveLength(1);
    // Held for the operator from now on.
    ws.send({ type: 'message', content: 'hello?' });
    const held = await ws.waitForCount(of('turn.done'), 2);
    expect(held[1]!.data).toMatchObject({ awaitingOperator: true });
    expect(stack.model.requests(sessionId)).toHaveLength(1);
  });

  test("the provider's 401 in an agent that may escalate: the turn fails with LLM_AUTH_ERROR, then the conversation goes to a person", async () => {
    const sessionId = await stack.createSession({ agentId: 'escalating' });
    stack.model.script(sessionId, { failNext: { count: 1, status: 401 } });
    const ws = await stack.ws(sessionId);
    ws.send({ type: 'message', content: 'hi' });
    expect((await ws.waitFor(of('turn.done'))).data).toMatchObject({ status: 'failed', errorCode: 'LLM_AUTH_ERROR' });
    expect((await ws.waitFor(of('session.escalated'))).data).toMatchObject({ source: 'llm_auth', agent: 'escalating' });
    // The user is told, in the agent's words, though the turn itself failed.
    const { rows } = await stack.db.query("SELECT content FROM messages WHERE session_id = $1 AND id LIKE '%-esc-%'", [sessionId]);
    expect(rows).toEqual([{ content: 'A person from our team will take it from here.' }]);
  });

  test('503, 503, then 200: the call succeeds on its third attempt', async () => {
    const url = service.script([503, 503]);
    const { result } = await fetchThrough(url);
    expect(result.data).toMatchObject({ name: 'http_request', status: 'succeeded', result: { status: 200, body: 'all good' } });
    expect(service.hitsOf(url)).toBe(3);
  });

  test('always 503: four attempts, then TOOL_EXECUTION_ERROR', async () => {
    const url = service.script([503, 503, 503, 503, 503]);
    const { result } = await fetchThrough(url);
    expect(result.data).toMatchObject({ status: 'failed', error: { code: 'TOOL_EXECUTION_ERROR' } });
    expect(service.hitsOf(url)).toBe(4);
  });

  test('401: TOOL_AUTH_ERROR is recorded and the service is asked once', async () => {
    const url = service.script([401, 401, 401, 401]);
    const { sessionId, result } = await fetchThrough(url);
    expect(result.data).toMatchObject({ status: 'failed', error: { code: 'TOOL_AUTH_ERROR' } });
    expect(service.hitsOf(url)).toBe(1);
    const { rows } = await stack.db.query("SELECT error_code FROM tool_calls WHERE session_id = $1 AND name = 'http_request'", [sessionId]);
    expect(rows).toEqual([{ error_code: 'TOOL_AUTH_ERROR' }]);
  });

  test('404: TOOL_VALIDATION_ERROR, the service is asked once, and the model reads what it said', async () => {
    const url = service.script([404, 404, 404, 404]);
    const { sessionId, result, done } = await fetchThrough(url);
    expect(result.data).toMatchObject({ status: 'failed', error: { code: 'TOOL_VALIDATION_ERROR' } });
    expect(done.data.status).toBe('completed');
    expect(service.hitsOf(url)).toBe(1);
    const requests = stack.model.requests(sessionId);
    const messages = requests[requests.length - 1]!.body.messages as { role: string; content: string }[];
    expect(messages.find((m) => m.role === 'tool')!.content).toContain('answered 404 Not Found: {\\"error\\":\\"order 7 does not exist');
  });

  test('a time-out is retried: the second attempt gets the answer', async () => {
    const url = service.script([0]);
    const { result } = await fetchThrough(url);
    expect(result.data).toMatchObject({ status: 'succeeded', result: { status: 200 } });
    expect(service.hitsOf(url)).toBe(2);
  });

  test.each([401, 403])("the model provider's %d fails the turn with LLM_AUTH_ERROR, not recoverable and not retried", async (status) => {
    const sessionId = await stack.createSession();
    stack.model.script(sessionId, { failNext: { count: 1, status } });
    const ws = await stack.ws(sessionId);
    ws.send({ type: 'message', content: 'hi' });
    const error = await ws.waitFor(of('error'));
    expect(error.data).toMatchObject({ code: 'LLM_AUTH_ERROR', recoverable: false, turn: 1 });
    // The turn is over once the model activity has failed for good: any retry would have asked again before it.
    expect((await ws.waitFor(of('turn.done'))).data).toMatchObject({ status: 'failed', errorCode: 'LLM_AUTH_ERROR' });
    expect(stack.model.requests(sessionId)).toHaveLength(1);
  });
});
