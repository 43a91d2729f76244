import { createServer, type AddressInfo } from 'node:net';
import { randomUUID } from 'node:crypto';
import { ApplicationFailure, CancelledFailure } from '@temporalio/common';
import { MockActivityEnvironment } from '@temporalio/testing';
import { DefaultLogger } from '@temporalio/worker';
import OpenAI from 'openai';
import pino from 'pino';
import { createPool, sql } from 'slonik';
import { z } from 'zod';
import { createPersistenceActivities, createStreamReplyActivities, createToolActivities } from '../activities';
import { toChatMessages } from '../activities/llm/conversation';
import { DeltaCoalescer } from '../activities/llm/delta-coalescer';
import { classifyLlmError } from '../activities/llm/llm-errors';
import { AgentVersions } from '../agents/versions';
import { createMetrics } from '../config/metrics';
import type { PriceTable } from '../config/pricing';
import type { StreamDeltaData } from '../contracts/events';
import type { ToolDefinition } from '../contracts/tools';
import type { ExecuteToolInput, PlannedToolCall, RecordToolCallsInput, StreamReplyInput, ToolPolicy } from '../contracts/turn';
import { syncAgents } from '../db/agents';
import { appendEvent } from '../db/events';
import { insertMessage, storeIncomingMessage, type MessageRow } from '../db/messages';
import { migrate } from '../db/migrate';
import { openPool, type DatabasePool } from '../db/pool';
import { LocalModelServer } from '../model-server/server';
import { DEFAULT_TOOL_SETTINGS, type Tool } from '../tools';
import { switchableProxy } from './support/tcp-proxy';
import { createTestDatabase, dropTestDatabase } from './support/database';

/**
 * The activities on their own, in Temporal's MockActivityEnvironment (attempt numbers,
 * cancellation, heartbeats), against a real Postgres database and the real `openai` client
 * talking to the project's LocalModelServer. No workflow, no worker.
 */

const databaseName = `keel_activities_${process.pid}`;
let databaseUrl: string;
let pool: DatabasePool;
let model: LocalModelServer;
let openai: OpenAI;
const metrics = createMetrics('worker');
const log = pino({ level: 'silent' });
/** The SDK's own "Activity failed" lines are expected here: only errors are shown. */
const sdkLogger = new DefaultLogger('ERROR');

beforeAll(async () => {
  databaseUrl = await createTestDatabase(databaseName);
  await migrate(databaseUrl);
  pool = await openPool(databaseUrl, 5);
  model = new LocalModelServer();
  const { url: modelUrl } = await model.start();
  openai = new OpenAI({ baseURL: modelUrl, apiKey: 'test-key', maxRetries: 0, timeout: 10_000 });
});

afterAll(async () => {
  await model?.stop();
  await pool?.end();
  await dropTestDatabase(databaseName);
});

function environment(info: { attempt?: number; heartbeatTimeoutMs?: number } = {}): MockActivityEnvironment {
  return new MockActivityEnvironment({ attempt: 1, ...info }, { logger: sdkLogger });
}

/** What a promise rejected with; fails the test if it resolved. */
async function rejectionOf(promise: Promise<unknown>): Promise<any> {
  return promise.then(
    (value) => {
      throw new Error(`expected a rejection, got ${JSON.stringify(value)}`);
    },
    (error: unknown) => error,
  );
}

/** Waits for a condition the test can observe, failing after `timeoutMs`. */
async function until(check: () => boolean, what: string, timeoutMs = 5_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!check()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 5));
  }
}

function gate<T = void>() {
  let open!: (value: T) => void;
  const opened = new Promise<T>((resolve) => (open = resolve));
  return { open, opened };
}

/** A port nothing listens on. */
async function closedPort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as AddressInfo;
  await new Promise<void>((resolve) => server.close(() => resolve()));
  return port;
}

const newSessionId = () => `s${randomUUID().replace(/-/g, '')}`;

async function insertSessionRow(id: string): Promise<void> {
  await pool.query(sql.unsafe`INSERT INTO sessions (id, agent_id, agent_version, owner_id) VALUES (${id}, 'orders', 1, 'user-1')`);
}

const EventRow = z.object({ type: z.string(), key: z.string(), data: z.any() });

async function eventsOf(sessionId: string): Promise<z.infer<typeof EventRow>[]> {
  const rows = await pool.any(sql.type(EventRow)`SELECT type, event_key AS key, data FROM session_events WHERE session_id = ${sessionId} ORDER BY seq`);
  return [...rows];
}

const MessageRowLite = z.object({ id: z.string(), turn: z.number().nullable(), position: z.number().nullable(), role: z.string(), content: z.string(), tool_call_id: z.string().nullable() });

async function messagesOf(sessionId: string) {
  return [...(await pool.any(sql.type(MessageRowLite)`SELECT id, turn, position, role, content, tool_call_id FROM messages WHERE session_id = ${sessionId} ORDER BY id`))];
}

async function toolCallRow(id: string) {
  return pool.one(sql.type(z.object({ status: z.string(), result: z.any(), error_code: z.string().nullable() }))`SELECT status, result, error_code FROM tool_calls WHERE id = ${id}`);
}

// ---------------------------------------------------------------------------------------------
// executeTool
// ---------------------------------------------------------------------------------------------

function definition(name: string, permission: 'read' | 'write'): ToolDefinition {
  return {
    name,
    description: `test tool ${name}`,
    parameters: { type: 'object', properties: {}, additionalProperties: false },
    permission,
    requiresApproval: false,
    // The definition's own limit: far longer than any call in these tests is given.
    timeoutMs: 10_000,
    retry: { maxAttempts: 1 },
  };
}

function policyOf(def: ToolDefinition): ToolPolicy {
  return { name: def.name, permission: def.permission, requiresApproval: false, approvalTtlMs: 60_000, timeoutMs: def.timeoutMs, maxAttempts: 1 };
}

/** A read tool that runs until its signal is aborted, then rejects with the abort reason, as a well-behaved tool does. */
function stopsOnAbort(started: () => void): Tool {
  return {
    definition: definition('stops_on_abort', 'read'),
    parse: (args) => args,
    execute: (_args, ctx) =>
      new Promise((_resolve, reject) => {
        started();
        if (ctx.signal.aborted) reject(ctx.signal.reason);
        ctx.signal.addEventListener('abort', () => reject(ctx.signal.reason), { once: true });
      }),
  };
}

/** A write tool that finishes when the test lets it, and says whether its signal was aborted. */
function ignoresAbort(started: () => void, finish: Promise<unknown>): Tool {
  return {
    definition: definition('ignores_abort', 'write'),
    parse: (args) => args,
    execute: async (_args, ctx) => {
      started();
      const result = await finish;
      return { ...(result as object), sawAbort: ctx.signal.aborted };
    },
  };
}

/** Stores the session, and the model's call through the real recordToolCalls activity; returns executeTool's input. */
async function plannedCall(activities: ReturnType<typeof createToolActivities>, tool: Tool, timeoutMs: number): Promise<ExecuteToolInput> {
  const sessionId = newSessionId();
  await insertSessionRow(sessionId);
  const record: RecordToolCallsInput = {
    sessionId,
    turn: 1,
    step: 1,
    agent: { id: 'orders', version: 1 },
    calls: [{ modelCallId: 'call_1', name: tool.definition.name, arguments: '{}' }],
    policies: [policyOf(tool.definition)],
    nowMs: Date.now(),
  };
  const plannedCalls: PlannedToolCall[] = await environment().run(activities.recordToolCalls, record);
  const planned = plannedCalls[0]!;
  return {
    sessionId,
    toolCallId: planned.toolCallId,
    modelCallId: planned.modelCallId,
    name: planned.name,
    turn: 1,
    position: planned.position,
    arguments: planned.arguments,
    idempotencyKey: `wf-${sessionId}/${planned.toolCallId}`,
    timeoutMs,
  };
}

/** A tool that stops on its abort signal, planned and running: what a cancel test starts from. */
async function runningTool(make: (started: () => void) => Tool) {
  const started = gate();
  const tool = make(() => started.open());
  const activities = toolActivities({ [tool.definition.name]: tool });
  const input = await plannedCall(activities, tool, 10_000);
  const env = environment();
  const running = env.run(activities.executeTool, input);
  await started.opened;
  return { input, env, running };
}

function toolActivities(tools: Record<string, Tool>) {
  return createToolActivities({ pool, tools, toolSettings: DEFAULT_TOOL_SETTINGS, metrics });
}

describe('executeTool', () => {
  test('a workflow cancel stops a running tool: CancelledFailure, and the call is recorded as cancelled while running', async () => {
    const { input, env, running } = await runningTool(stopsOnAbort);
    expect((await toolCallRow(input.toolCallId)).status).toBe('running');
    env.cancel('CANCELLED');

    const error = await rejectionOf(running);
    expect(error).toBeInstanceOf(CancelledFailure);
    expect(error.message).toBe('stops_on_abort was cancelled while running');
    expect(await toolCallRow(input.toolCallId)).toEqual({ status: 'cancelled', result: null, error_code: null });
    const [message] = (await messagesOf(input.sessionId)).filter((m) => m.role === 'tool');
    expect(message).toEqual({
      id: `${input.toolCallId}-result`,
      turn: 1,
      position: 1001,
      role: 'tool',
      content: 'Cancelled while running: the tool was stopped before it finished, and its result is unknown.',
      tool_call_id: 'call_1',
    });
    const results = (await eventsOf(input.sessionId)).filter((e) => e.type === 'tool.result');
    expect(results.map((e) => e.data)).toEqual([{ toolCallId: input.toolCallId, name: 'stops_on_abort', status: 'cancelled', ran: true }]);
  });

  test('a write tool that has started is not told of the cancel: it finishes and its real result is recorded', async () => {
    const started = gate();
    const finish = gate<unknown>();
    const tool = ignoresAbort(() => started.open(), finish.opened);
    const activities = toolActivities({ [tool.definition.name]: tool });
    const input = await plannedCall(activities, tool, 10_000);
    const env = environment();

    const running = env.run(activities.executeTool, input);
    await started.opened;
    env.cancel('CANCELLED');
    finish.open({ orderId: 7, written: true });

    // The workflow hears the status; the result is stored (and stays out of its history).
    await expect(running).resolves.toEqual({ status: 'succeeded' });
    expect(await toolCallRow(input.toolCallId)).toEqual({ status: 'succeeded', result: { orderId: 7, written: true, sawAbort: false }, error_code: null });
    const [message] = (await messagesOf(input.sessionId)).filter((m) => m.role === 'tool');
    expect(message?.content).toBe('{"orderId":7,"written":true,"sawAbort":false}');
    const results = (await eventsOf(input.sessionId)).filter((e) => e.type === 'tool.result');
    expect(results.map((e) => e.data)).toEqual([
      { toolCallId: input.toolCallId, name: 'ignores_abort', status: 'succeeded', result: { orderId: 7, written: true, sawAbort: false } },
    ]);
  });

  test("the call's timeoutMs bounds the tool, not its definition's 10 s: TOOL_TIMEOUT in well under a second", async () => {
    const tool = stopsOnAbort(() => undefined);
    expect(tool.definition.timeoutMs).toBe(10_000);
    const activities = toolActivities({ [tool.definition.name]: tool });
    const input = await plannedCall(activities, tool, 200);

    const startedAt = Date.now();
    const error = await rejectionOf(environment().run(activities.executeTool, input));
    const elapsed = Date.now() - startedAt;

    expect(error).toBeInstanceOf(ApplicationFailure);
    expect(error).toMatchObject({ type: 'TOOL_TIMEOUT', nonRetryable: false, message: 'stops_on_abort timed out' });
    expect(elapsed).toBeGreaterThanOrEqual(190);
    expect(elapsed).toBeLessThan(1_000);
    // A time-out is retried: nothing is settled yet.
    expect((await toolCallRow(input.toolCallId)).status).toBe('running');
    expect((await eventsOf(input.sessionId)).map((e) => e.type)).toEqual(['tool.call']);
  });

  test('a cancel by a worker shutdown is not recorded as cancelled: it is a retryable TOOL_INTERRUPTED', async () => {
    const { input, env, running } = await runningTool(stopsOnAbort);
    env.cancel('WORKER_SHUTDOWN');

    const error = await rejectionOf(running);
    expect(error).toBeInstanceOf(ApplicationFailure);
    expect(error).toMatchObject({ type: 'TOOL_INTERRUPTED', nonRetryable: false });
    expect(error.message).toBe('stops_on_abort was interrupted (WORKER_SHUTDOWN)');
    expect((await toolCallRow(input.toolCallId)).status).toBe('running');
    expect((await messagesOf(input.sessionId)).filter((m) => m.role === 'tool')).toEqual([]);
    expect((await eventsOf(input.sessionId)).map((e) => e.type)).toEqual(['tool.call']);
  });

  test('heartbeats while the tool runs', async () => {
    const started = gate();
    const finish = gate<unknown>();
    const tool = ignoresAbort(() => started.open(), finish.opened);
    const activities = toolActivities({ [tool.definition.name]: tool });
    const input = await plannedCall(activities, tool, 10_000);
    const env = environment({ heartbeatTimeoutMs: 5_000 });
    let beats = 0;
    env.on('heartbeat', () => beats++);

    const running = env.run(activities.executeTool, input);
    await started.opened;
    expect(beats).toBe(0);
    await until(() => beats >= 2, 'two heartbeats from the running tool');
    finish.open({ done: true });
    await expect(running).resolves.toEqual({ status: 'succeeded' });
    expect((await toolCallRow(input.toolCallId)).result).toEqual({ done: true, sawAbort: false });
  });

  test('a result Postgres cannot store as it is (a NUL character) is stored with U+FFFD, not retried forever', async () => {
    const nul = String.fromCharCode(0);
    const tool: Tool = { definition: definition('nul_result', 'read'), parse: (args) => args, execute: async () => ({ body: `a${nul}b`, [`k${nul}`]: 1 }) };
    const activities = toolActivities({ nul_result: tool });
    const input = await plannedCall(activities, tool, 5_000);
    await expect(environment().run(activities.executeTool, input)).resolves.toEqual({ status: 'succeeded' });
    expect(await toolCallRow(input.toolCallId)).toMatchObject({ status: 'succeeded', result: { body: 'a\uFFFDb', 'k\uFFFD': 1 } });
  });

  test('executeTool input that breaks its contract is a non-retryable ACTIVITY_INPUT_INVALID', async () => {
    const bad = { sessionId: 's', toolCallId: 'tc', modelCallId: 'c', name: 'x', turn: 1, position: 1001, arguments: '{}', idempotencyKey: 'k', timeoutMs: 0 };
    expect(await rejectionOf(environment().run(toolActivities({}).executeTool, bad))).toMatchObject({ type: 'ACTIVITY_INPUT_INVALID', nonRetryable: true });
  });

  test('an unknown tool name is a non-retryable TOOL_NOT_FOUND', async () => {
    const activities = toolActivities({});
    const error = await rejectionOf(
      environment().run(activities.executeTool, {
        sessionId: newSessionId(),
        toolCallId: 'tc_x',
        modelCallId: 'call_x',
        name: 'rm_rf',
        turn: 1,
        position: 1001,
        arguments: '{}',
        idempotencyKey: 'k',
        timeoutMs: 1_000,
      }),
    );
    expect(error).toMatchObject({ type: 'TOOL_NOT_FOUND', nonRetryable: true });
  });
});

// ---------------------------------------------------------------------------------------------
// Persistence: how failures are classified
// ---------------------------------------------------------------------------------------------

const persistence = () => createPersistenceActivities({ pool, metrics, log });

const failureInput = (sessionId: string) => ({
  sessionId,
  turn: 1,
  replyTo: 'm1',
  error: { code: 'LLM_API_ERROR' as const, message: 'The model provider failed (HTTP 500)', recoverable: true },
  status: 'failed' as const,
});

const settleInput = (sessionId: string) => ({
  sessionId,
  toolCallId: 'tc_missing_session',
  modelCallId: 'call_1',
  name: 'lookup_order',
  turn: 1,
  position: 1001,
  status: 'succeeded' as const,
  result: { ok: true },
});

function expectPersistenceInvalid(error: any): void {
  expect(error).toBeInstanceOf(ApplicationFailure);
  expect(error).toMatchObject({ type: 'PERSISTENCE_INVALID', nonRetryable: true });
}

describe('persistence failures', () => {
  const noSuchSession = 'no-such-session';

  test('rejectMessages for a session with no row (foreign key) is a non-retryable PERSISTENCE_INVALID', async () => {
    const error = await rejectionOf(environment().run(persistence().rejectMessages, { sessionId: noSuchSession, messages: [{ messageId: 'm1', code: 'SESSION_BUSY' as const, refusal: 0 }] }));
    expectPersistenceInvalid(error);
  });

  test('recordTurnFailure for a session with no row (foreign key) is a non-retryable PERSISTENCE_INVALID', async () => {
    const error = await rejectionOf(environment().run(persistence().recordTurnFailure, failureInput(noSuchSession)));
    expectPersistenceInvalid(error);
    expect(error.message).toMatch(/^write refused: /);
  });

  test('settleToolCall for a session with no row (foreign key) is a non-retryable PERSISTENCE_INVALID', async () => {
    const error = await rejectionOf(environment().run(toolActivities({}).settleToolCall, settleInput(noSuchSession)));
    expectPersistenceInvalid(error);
    expect(error.message).toMatch(/^write refused: /);
  });

  test.each([
    ['acceptMessages with turn 0', () => environment().run(persistence().acceptMessages, { sessionId: 's', messages: [{ messageId: 'm1', turn: 0 }] })],
    ['recordTurnFailure with an unknown error code', () => environment().run(persistence().recordTurnFailure, { ...failureInput('s'), error: { code: 'NOPE' as never, message: 'x', recoverable: false } })],
    ['settleToolCall with no toolCallId', () => environment().run(toolActivities({}).settleToolCall, { ...settleInput('s'), toolCallId: undefined as never })],
    ['rejectMessages with a negative refusal number', () => environment().run(persistence().rejectMessages, { sessionId: 's', messages: [{ messageId: 'm1', code: 'SESSION_BUSY' as const, refusal: -1 }] })],
  ])('input that breaks the contract is a non-retryable ACTIVITY_INPUT_INVALID (a workflow bug, not a failed write): %s', async (_what, run) => {
    expect(await rejectionOf(run())).toMatchObject({ type: 'ACTIVITY_INPUT_INVALID', nonRetryable: true });
  });

  test('an unreachable database is NOT a non-retryable failure: Temporal retries it', async () => {
    // slonik reads type OIDs when the pool is made, so the pool is made through a proxy that is
    // then closed: every connection the activities ask for meets a closed port.
    const proxy = await switchableProxy(new URL(databaseUrl));
    const deadPool = await createPool(proxy.url, { connectionTimeout: 500, connectionRetryLimit: 0 });
    deadPool.on('error', () => undefined);
    await proxy.close();
    try {
      const dead = createPersistenceActivities({ pool: deadPool, metrics, log });
      const deadTools = createToolActivities({ pool: deadPool, tools: {}, toolSettings: DEFAULT_TOOL_SETTINGS, metrics });
      const startedAt = Date.now();
      const errors = [
        await rejectionOf(environment().run(dead.acceptMessages, { sessionId: 's', messages: [{ messageId: 'm1', turn: 1 }] })),
        await rejectionOf(environment().run(dead.recordTurnFailure, failureInput('s'))),
        await rejectionOf(environment().run(deadTools.settleToolCall, settleInput('s'))),
      ];
      expect(Date.now() - startedAt).toBeLessThan(5_000);
      for (const error of errors) {
        expect(error.message).toMatch(/ECONNREFUSED|connect/i);
        expect(error instanceof ApplicationFailure && error.nonRetryable).toBe(false);
        expect((error as { type?: string }).type).not.toBe('PERSISTENCE_INVALID');
      }
    } finally {
      await deadPool.end();
    }
  });
});

// ---------------------------------------------------------------------------------------------
// acceptMessages / rejectMessages
// ---------------------------------------------------------------------------------------------

describe('acceptMessages', () => {
  test('gives a stored message its turn and writes exactly one message.accepted with its content, also when run twice', async () => {
    const sessionId = newSessionId();
    await insertSessionRow(sessionId);
    const messageId = `${sessionId}-m1`;
    await storeIncomingMessage(pool, { id: messageId, sessionId, content: 'Where is order 7?', clientMessageId: 'c-1' });
    const input = { sessionId, messages: [{ messageId, turn: 3, clientMessageId: 'c-1' }] };

    await environment().run(persistence().acceptMessages, input);
    await environment({ attempt: 2 }).run(persistence().acceptMessages, input);

    expect(await messagesOf(sessionId)).toEqual([{ id: messageId, turn: 3, position: 0, role: 'user', content: 'Where is order 7?', tool_call_id: null }]);
    expect(await eventsOf(sessionId)).toEqual([
      { type: 'message.accepted', key: `accepted:${messageId}`, data: { messageId, turn: 3, content: 'Where is order 7?', clientMessageId: 'c-1' } },
    ]);
  });

  test('a message ID that is not stored is skipped: the messages with it are still accepted', async () => {
    const sessionId = newSessionId();
    await insertSessionRow(sessionId);
    await storeIncomingMessage(pool, { id: `${sessionId}-m1`, sessionId, content: 'first' });
    await environment().run(persistence().acceptMessages, { sessionId, messages: [{ messageId: `${sessionId}-lost`, turn: 1 }, { messageId: `${sessionId}-m1`, turn: 2 }] });
    expect((await eventsOf(sessionId)).map((e) => [e.type, e.data.messageId])).toEqual([['message.accepted', `${sessionId}-m1`]]);
    expect((await messagesOf(sessionId)).map((m) => m.turn)).toEqual([2]);
  });
});

describe('rejectMessages', () => {
  test('two refusals of one message with different refusal numbers write two events; the same refusal twice writes one', async () => {
    const sessionId = newSessionId();
    await insertSessionRow(sessionId);
    const first = { messageId: 'm9', clientMessageId: 'c-9', code: 'SESSION_BUSY' as const, refusal: 4 };
    const busy = 'The session is busy; the message was not accepted. Send it again when the current turn is done.';

    await environment().run(persistence().rejectMessages, { sessionId, messages: [first] });
    await environment({ attempt: 2 }).run(persistence().rejectMessages, { sessionId, messages: [first] });
    await environment().run(persistence().rejectMessages, { sessionId, messages: [{ ...first, refusal: 5 }] });

    expect(await eventsOf(sessionId)).toEqual([
      { type: 'error', key: 'refused:m9:4', data: { code: 'SESSION_BUSY', message: busy, recoverable: true, replyTo: 'm9', clientMessageId: 'c-9' } },
      { type: 'error', key: 'refused:m9:5', data: { code: 'SESSION_BUSY', message: busy, recoverable: true, replyTo: 'm9', clientMessageId: 'c-9' } },
    ]);
  });
});

// ---------------------------------------------------------------------------------------------
// streamReply
// ---------------------------------------------------------------------------------------------

const LOOKUP_ORDER: ToolDefinition = {
  name: 'lookup_order',
  description: 'Looks up an order by its number.',
  parameters: { type: 'object', properties: { id: { type: 'integer' } }, required: ['id'], additionalProperties: false },
  permission: 'read',
  requiresApproval: false,
  timeoutMs: 5_000,
  retry: { maxAttempts: 2 },
};
const SYSTEM_PROMPT = 'You answer questions about orders.';
const PRICES: PriceTable = { 'test-model': { inputPerMTok: 1_000, outputPerMTok: 2_000 } };

describe('streamReply', () => {
  let agentVersion: number;
  let agents: AgentVersions;

  beforeAll(async () => {
    const [synced] = await syncAgents(pool, [
      { id: 'orders', name: 'Orders', systemPrompt: SYSTEM_PROMPT, tools: ['lookup_order'], approvalTtlMs: 60_000, maxStepsPerTurn: 4, busyPolicy: 'queue' },
    ]);
    agentVersion = synced!.version;
    agents = new AgentVersions(pool, { lookup_order: LOOKUP_ORDER });
  });

  const activities = () => createStreamReplyActivities({ pool, openai, agents, streamCoalesceMs: 20, contextMaxTurns: 100, prices: PRICES, metrics, log });

  async function turnInput(sessionId: string, content = 'Where is order 7?'): Promise<StreamReplyInput> {
    await insertSessionRow(sessionId);
    await storeIncomingMessage(pool, { id: `${sessionId}-m1`, sessionId, content });
    return {
      sessionId,
      turn: 1,
      step: 1,
      replyTo: `${sessionId}-m1`,
      accept: [{ messageId: `${sessionId}-m1`, turn: 1 }],
      agent: { id: 'orders', version: agentVersion },
      model: 'test-model',
      temperature: 0.3,
    };
  }

  test.each([1, 3])('with a stream.end already committed for its stream, attempt %d returns that reply without calling the model', async (attempt) => {
    const sessionId = newSessionId();
    const input = await turnInput(sessionId);
    const messageId = `${sessionId}-t1-r1`;
    await pool.transaction(async (tx) => {
      await insertMessage(tx, {
        id: messageId,
        sessionId,
        turn: 1,
        position: 1000,
        role: 'assistant',
        content: '',
        toolCalls: [{ id: 'call_earlier', name: 'lookup_order', arguments: '{"id":7}' }],
      });
      await appendEvent(tx, {
        sessionId,
        key: 't1-s1:end',
        type: 'stream.end',
        data: { streamId: 't1-s1', attempt: 1, messageId, content: '', finishReason: 'tool_calls', usage: { inputTokens: 11, outputTokens: 4, costUsd: 0.000019 } },
      });
    });

    const result = await environment({ attempt }).run(activities().streamReply, input);

    expect(result).toEqual({
      messageId,
      finishReason: 'tool_calls',
      usage: { inputTokens: 11, outputTokens: 4, costUsd: 0.000019 },
      toolCalls: [{ modelCallId: 'call_earlier', name: 'lookup_order', arguments: '{"id":7}' }],
    });
    expect(model.requests(sessionId)).toEqual([]);
    expect((await eventsOf(sessionId)).map((e) => e.type)).toEqual(['stream.end']);
  });

  test('streams a reply from the model with the stored agent version: system prompt and tool schemas in the request, events written', async () => {
    const sessionId = newSessionId();
    const input = await turnInput(sessionId);
    model.script(sessionId, { reply: 'Order 7 ships on Monday.' });

    const result = await environment({ heartbeatTimeoutMs: 3_000 }).run(activities().streamReply, input);

    // The local model counts ceil(chars / 4) prompt tokens: (34 + 17) / 4 -> 13; one token per word: 5.
    const usage = { inputTokens: 13, outputTokens: 5, costUsd: 0.023 };
    const messageId = `${sessionId}-t1-r1`;
    expect(result).toEqual({ messageId, finishReason: 'stop', usage, toolCalls: [] });

    const requests = model.requests(sessionId);
    expect(requests).toHaveLength(1);
    expect(requests[0]!.body).toMatchObject({
      model: 'test-model',
      stream: true,
      user: sessionId,
      temperature: 0.3,
      messages: [
        { role: 'system', content: 'You answer questions about orders.' },
        { role: 'user', content: 'Where is order 7?' },
      ],
      tools: [
        {
          type: 'function',
          function: {
            name: 'lookup_order',
            description: 'Looks up an order by its number.',
            parameters: { type: 'object', properties: { id: { type: 'integer' } }, required: ['id'], additionalProperties: false },
          },
        },
      ],
    });

    expect(await eventsOf(sessionId)).toEqual([
      { type: 'message.accepted', key: `accepted:${sessionId}-m1`, data: { messageId: `${sessionId}-m1`, turn: 1, content: 'Where is order 7?' } },
      { type: 'stream.start', key: 't1-s1:start:1', data: { streamId: 't1-s1', turn: 1, replyTo: `${sessionId}-m1`, attempt: 1 } },
      { type: 'stream.end', key: 't1-s1:end', data: { streamId: 't1-s1', attempt: 1, messageId, content: 'Order 7 ships on Monday.', finishReason: 'stop', usage } },
      { type: 'turn.done', key: 'turn:1:done', data: { turn: 1, replyTo: `${sessionId}-m1`, status: 'completed', messageId, content: 'Order 7 ships on Monday.', usage, agentVersion } },
    ]);
    expect(await messagesOf(sessionId)).toEqual([
      { id: `${sessionId}-m1`, turn: 1, position: 0, role: 'user', content: 'Where is order 7?', tool_call_id: null },
      { id: messageId, turn: 1, position: 1000, role: 'assistant', content: 'Order 7 ships on Monday.', tool_call_id: null },
    ]);
  });

  test('a reply with a NUL character is committed with U+FFFD in its place, not retried', async () => {
    const sessionId = newSessionId();
    const input = await turnInput(sessionId);
    model.script(sessionId, { reply: `bad${String.fromCharCode(0)}byte` });
    await expect(environment().run(activities().streamReply, input)).resolves.toMatchObject({ finishReason: 'stop' });
    expect((await messagesOf(sessionId)).find((m) => m.role === 'assistant')!.content).toBe('bad\uFFFDbyte');
  });

  test('a turn whose message is not stored fails non-retryably without calling the model', async () => {
    const sessionId = newSessionId();
    const input = { ...(await turnInput(sessionId)), replyTo: `${sessionId}-lost`, accept: [] };
    expectPersistenceInvalid(await rejectionOf(environment().run(activities().streamReply, input)));
    expect(model.requests(sessionId)).toEqual([]);
  });

  test('an attempt that loses the commit to another attempt of the same step returns the winner\'s reply, and writes no turn.done', async () => {
    const sessionId = newSessionId();
    const input = await turnInput(sessionId);
    model.script(sessionId, { reply: 'the slow attempt', tokenDelayMs: 150 });
    const env = environment({ attempt: 1, heartbeatTimeoutMs: 10_000 });
    const slow = env.run(activities().streamReply, input);
    await until(() => model.requests(sessionId).length === 1, 'the slow attempt to reach the model');
    // Another attempt of the same step commits first, with a reply that asks for a tool.
    const messageId = `${sessionId}-t1-r1`;
    await pool.transaction(async (tx) => {
      await appendEvent(tx, {
        sessionId,
        key: 't1-s1:end',
        type: 'stream.end',
        data: { streamId: 't1-s1', attempt: 2, messageId, content: '', finishReason: 'tool_calls', usage: { inputTokens: 5, outputTokens: 2, costUsd: 0 } },
      });
      await insertMessage(tx, { id: messageId, sessionId, turn: 1, position: 1000, role: 'assistant', content: '', toolCalls: [{ id: 'call_w', name: 'lookup_order', arguments: '{"id":7}' }] });
    });
    await expect(slow).resolves.toEqual({
      messageId,
      finishReason: 'tool_calls',
      usage: { inputTokens: 5, outputTokens: 2, costUsd: 0 },
      toolCalls: [{ modelCallId: 'call_w', name: 'lookup_order', arguments: '{"id":7}' }],
    });
    expect((await eventsOf(sessionId)).map((e) => e.type)).not.toContain('turn.done');
    expect((await messagesOf(sessionId)).filter((m) => m.role === 'assistant').map((m) => m.content)).toEqual(['']);
  });

  test('a stream that stalls keeps heartbeating (a cancel still reaches it) and ends as a retryable LLM_TIMEOUT', async () => {
    const sessionId = newSessionId();
    const input = await turnInput(sessionId);
    model.script(sessionId, { reply: 'one two three four', tokenDelayMs: 5_000 });
    const env = environment({ attempt: 1, heartbeatTimeoutMs: 900 });
    let beats = 0;
    env.on('heartbeat', () => beats++);
    const startedAt = Date.now();
    const error = await rejectionOf(env.run(activities().streamReply, input));
    expect(error).toMatchObject({ type: 'LLM_TIMEOUT', nonRetryable: false });
    // Ended by its own stall limit (the heartbeat time-out), long before the next token in 5 s.
    expect(Date.now() - startedAt).toBeLessThan(4_000);
    expect(beats).toBeGreaterThanOrEqual(2);
  });

  test('a cancel reaches a stalled stream: it ends as cancelled, not as a time-out', async () => {
    const sessionId = newSessionId();
    const input = await turnInput(sessionId);
    model.script(sessionId, { reply: 'one two three four', tokenDelayMs: 5_000 });
    const env = environment({ attempt: 1, heartbeatTimeoutMs: 3_000 });
    const running = env.run(activities().streamReply, input);
    await until(() => model.requests(sessionId).length === 1, 'the request');
    env.cancel('CANCELLED');
    expect(await rejectionOf(running)).toBeInstanceOf(CancelledFailure);
  });

  test('a provider 401 is a non-retryable LLM_AUTH_ERROR and commits no reply', async () => {
    const sessionId = newSessionId();
    const input = await turnInput(sessionId);
    model.script(sessionId, { failNext: { count: 1, status: 401 } });

    const error = await rejectionOf(environment().run(activities().streamReply, input));

    expect(error).toBeInstanceOf(ApplicationFailure);
    expect(error).toMatchObject({ type: 'LLM_AUTH_ERROR', nonRetryable: true, message: 'The model provider refused the credentials (HTTP 401)' });
    expect(model.requests(sessionId)).toHaveLength(1);
    expect((await eventsOf(sessionId)).map((e) => e.type)).not.toContain('stream.end');
    expect((await messagesOf(sessionId)).map((m) => m.role)).toEqual(['user']);
  });
});

// ---------------------------------------------------------------------------------------------
// classifyLlmError, with errors made by the real client against the local model server
// ---------------------------------------------------------------------------------------------

describe('classifyLlmError', () => {
  /** The error the real client throws for one request, scripted by scope. */
  async function clientError(script: Parameters<LocalModelServer['script']>[1]): Promise<unknown> {
    const scope = newSessionId();
    model.script(scope, script);
    return rejectionOf(openai.chat.completions.create({ model: 'test-model', messages: [{ role: 'user', content: 'hi' }], user: scope }));
  }

  test.each([401, 403])('%d is a non-retryable LLM_AUTH_ERROR', async (status) => {
    const failure = classifyLlmError(await clientError({ failNext: { count: 1, status } }));
    expect(failure).toBeInstanceOf(ApplicationFailure);
    expect(failure).toMatchObject({ type: 'LLM_AUTH_ERROR', nonRetryable: true, message: `The model provider refused the credentials (HTTP ${status})` });
  });

  test('429 with retry-after is LLM_RATE_LIMIT, retryable after the delay it names', async () => {
    const failure = classifyLlmError(await clientError({ failNext: { count: 1, status: 429, retryAfterSeconds: 3 } }));
    expect(failure).toMatchObject({ type: 'LLM_RATE_LIMIT', nonRetryable: false, nextRetryDelay: 3_000 });
  });

  test('429 without retry-after leaves the delay to the retry policy', async () => {
    const failure = classifyLlmError(await clientError({ failNext: { count: 1, status: 429 } }));
    expect(failure).toMatchObject({ type: 'LLM_RATE_LIMIT', nonRetryable: false });
    expect((failure as ApplicationFailure).nextRetryDelay).toBeUndefined();
  });

  test('408 is a retryable LLM_TIMEOUT', async () => {
    const failure = classifyLlmError(await clientError({ failNext: { count: 1, status: 408 } }));
    expect(failure).toMatchObject({ type: 'LLM_TIMEOUT', nonRetryable: false });
  });

  test('500 is a retryable LLM_API_ERROR', async () => {
    const failure = classifyLlmError(await clientError({ failNext: { count: 1, status: 500 } }));
    expect(failure).toMatchObject({ type: 'LLM_API_ERROR', nonRetryable: false, message: 'The model provider failed (HTTP 500)' });
  });

  test('a client connection time-out is a retryable LLM_TIMEOUT', () => {
    // Made by hand: under jest the client's own time-out (a DOMException from Node's realm, not
    // jest's) reaches the client as a plain APIConnectionError; outside jest it throws this one.
    expect(classifyLlmError(new OpenAI.APIConnectionTimeoutError())).toMatchObject({ type: 'LLM_TIMEOUT', nonRetryable: false, message: 'The model did not answer in time' });
  });

  test('a connection that fails (nothing listening) is a retryable LLM_API_ERROR', async () => {
    const nowhere = new OpenAI({ baseURL: `http://127.0.0.1:${await closedPort()}/v1`, apiKey: 'test-key', maxRetries: 0 });
    const error = await rejectionOf(nowhere.chat.completions.create({ model: 'test-model', messages: [{ role: 'user', content: 'hi' }] }));
    expect(error).toBeInstanceOf(OpenAI.APIConnectionError);
    expect(classifyLlmError(error)).toMatchObject({ type: 'LLM_API_ERROR', nonRetryable: false, message: 'The connection to the model provider failed' });
  });

  test('an ApplicationFailure passes through unchanged', () => {
    const original = ApplicationFailure.nonRetryable('already classified', 'LLM_CONTENT_FILTER');
    expect(classifyLlmError(original)).toBe(original);
  });
});

// ---------------------------------------------------------------------------------------------
// DeltaCoalescer
// ---------------------------------------------------------------------------------------------

describe('DeltaCoalescer', () => {
  function recorder(fail: (delta: StreamDeltaData) => boolean = () => false) {
    const published: (StreamDeltaData & { at: number })[] = [];
    const failures: unknown[] = [];
    const publish = async (delta: StreamDeltaData) => {
      if (fail(delta)) throw new Error(`publish of offset ${delta.offset} failed`);
      published.push({ ...delta, at: Date.now() });
    };
    return { published, failures, publish, onFailure: (error: unknown) => failures.push(error) };
  }

  test('sends the first delta at once and coalesces later ones, with contiguous offsets', async () => {
    const r = recorder();
    const coalescer = new DeltaCoalescer('t2-s1', 2, 100, r.publish, r.onFailure);
    try {
      const pushedAt = Date.now();
      coalescer.push('Order ');
      await until(() => r.published.length === 1, 'the first delta');
      expect(r.published[0]!.at - pushedAt).toBeLessThan(50);
      coalescer.push('7 ');
      coalescer.push('ships ');
      coalescer.push('');
      await until(() => r.published.length === 2, 'the coalesced delta');
      expect(r.published[1]!.at - r.published[0]!.at).toBeGreaterThanOrEqual(95);
      coalescer.push('on Monday.');
      const last = await coalescer.drain();
      expect([...r.published.map(({ at: _at, ...delta }) => delta), ...(last ? [last] : [])]).toEqual([
        { streamId: 't2-s1', attempt: 2, offset: 0, text: 'Order ' },
        { streamId: 't2-s1', attempt: 2, offset: 6, text: '7 ships ' },
        { streamId: 't2-s1', attempt: 2, offset: 14, text: 'on Monday.' },
      ]);
      expect(r.failures).toEqual([]);
    } finally {
      coalescer.dispose();
    }
  });

  test('a failed publish calls the failure callback and later deltas still go out', async () => {
    const r = recorder((delta) => delta.offset === 0);
    const coalescer = new DeltaCoalescer('t1-s1', 1, 10, r.publish, r.onFailure);
    try {
      coalescer.push('lost ');
      await until(() => r.failures.length === 1, 'the failure callback');
      expect((r.failures[0] as Error).message).toBe('publish of offset 0 failed');
      coalescer.push('kept');
      const last = await coalescer.drain();
      expect([...r.published.map(({ at: _at, ...delta }) => delta), ...(last ? [last] : [])]).toEqual([{ streamId: 't1-s1', attempt: 1, offset: 5, text: 'kept' }]);
    } finally {
      coalescer.dispose();
    }
  });

  test('drain waits for the deltas already sent, then hands back the pending text instead of sending it', async () => {
    const published: StreamDeltaData[] = [];
    let release!: () => void;
    const held = new Promise<void>((resolve) => (release = resolve));
    const coalescer = new DeltaCoalescer('t1-s1', 1, 1_000, async (delta) => {
      await held;
      published.push(delta);
    }, () => undefined);
    coalescer.push('sent ');
    coalescer.push('pending');
    let drained: StreamDeltaData | null | undefined;
    const draining = coalescer.drain().then((d) => (drained = d));
    await new Promise((resolve) => setImmediate(resolve));
    expect(drained).toBeUndefined();
    release();
    await draining;
    expect(published).toEqual([{ streamId: 't1-s1', attempt: 1, offset: 0, text: 'sent ' }]);
    expect(drained).toEqual({ streamId: 't1-s1', attempt: 1, offset: 5, text: 'pending' });
    expect(await coalescer.drain()).toBeNull();
  });
});

describe('toChatMessages', () => {
  const row = (r: Partial<MessageRow> & Pick<MessageRow, 'id' | 'role' | 'content'>): MessageRow => ({
    session_id: 's',
    turn: 1,
    position: 0,
    client_message_id: null,
    input_tokens: null,
    output_tokens: null,
    tool_calls: null,
    tool_call_id: null,
    cost_usd: null,
    created_at: 0,
    ...r,
  });

  test('a tool call whose result was never stored is answered with NO_RESULT before the next message', () => {
    const messages = toChatMessages(
      [
        row({ id: 'u1', role: 'user', content: 'do two things' }),
        row({ id: 'a1', role: 'assistant', content: '', position: 1000, tool_calls: [{ id: 'c1', name: 't', arguments: '{}' }, { id: 'c2', name: 't', arguments: '{}' }] }),
        row({ id: 'r2', role: 'tool', content: 'two', position: 1002, tool_call_id: 'c2' }),
        row({ id: 'u2', role: 'user', content: 'next', turn: 2 }),
      ],
      'be brief',
    );
    expect(messages).toEqual([
      { role: 'system', content: 'be brief' },
      { role: 'user', content: 'do two things' },
      { role: 'assistant', content: null, tool_calls: [{ id: 'c1', type: 'function', function: { name: 't', arguments: '{}' } }, { id: 'c2', type: 'function', function: { name: 't', arguments: '{}' } }] },
      { role: 'tool', tool_call_id: 'c2', content: 'two' },
      { role: 'tool', tool_call_id: 'c1', content: 'No result was recorded for this call.' },
      { role: 'user', content: 'next' },
    ]);
  });
});
