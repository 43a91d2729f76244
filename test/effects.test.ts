import { MockActivityEnvironment } from '@temporalio/testing';
import { DefaultLogger } from '@temporalio/worker';
import { sql } from 'slonik';
import { z } from 'zod';
import { createToolActivities } from '../activities/tool-activities';
import { createMetrics } from '../config/metrics';
import type { ExecuteToolInput } from '../contracts/turn';
import { migrate } from '../db/migrate';
import { openPool, type DatabasePool } from '../db/pool';
import { insertSession } from '../db/sessions';
import { insertToolCall } from '../db/tool-calls';
import { DEFAULT_TOOL_SETTINGS, ToolInputError, ToolTransientError, type Tool } from '../tools';
import { createTestDatabase, dropTestDatabase } from './support/database';

/**
 * The effect ledger at the activity: executeTool in Temporal's MockActivityEnvironment against a
 * real Postgres, with a write tool that counts how often it really acts. A "crash" is an intent
 * left without a receipt, as a worker that died after sending leaves it.
 */

const databaseName = `keel_effects_${process.pid}`;
const sdkLogger = new DefaultLogger('ERROR');
let pool: DatabasePool;
let sessionId: string;

/** A write tool whose effects the test counts, by idempotency key. */
function countingTool(opts: { idempotent?: boolean; fail?: () => Error | undefined } = {}) {
  const effects: string[] = [];
  const tool: Tool = {
    definition: {
      name: 'charge',
      description: 'charges a card',
      parameters: { type: 'object', properties: {}, additionalProperties: false },
      permission: 'write',
      requiresApproval: false,
      timeoutMs: 2_000,
      retry: { maxAttempts: 3 },
      ...(opts.idempotent === undefined ? {} : { idempotent: opts.idempotent }),
    },
    parse: () => ({}),
    async execute(_args, ctx) {
      const failure = opts.fail?.();
      if (failure) throw failure;
      effects.push(ctx.idempotencyKey);
      return { charged: true, key: ctx.idempotencyKey };
    },
  };
  return { tool, effects };
}

let nextCall = 0;
async function newCall(): Promise<ExecuteToolInput> {
  const toolCallId = `tc_effect_${++nextCall}`;
  await insertToolCall(pool, { id: toolCallId, modelCallId: `m${nextCall}`, sessionId, turn: 1, step: 1, name: 'charge', arguments: {}, status: 'requested', digest: 'd', requiresApproval: false, expiresAt: null });
  return { sessionId, toolCallId, modelCallId: `m${nextCall}`, name: 'charge', turn: 1, position: 1001, arguments: '{}', idempotencyKey: `wf:${toolCallId}`, timeoutMs: 2_000 };
}

function run(tool: Tool, input: ExecuteToolInput) {
  const acts = createToolActivities({ pool, tools: { charge: tool }, toolSettings: DEFAULT_TOOL_SETTINGS, metrics: createMetrics('worker') });
  return new MockActivityEnvironment({ attempt: 1 }, { logger: sdkLogger }).run(acts.executeTool, input);
}

const Ledger = z.object({ status: z.string(), attempts: z.number(), error_code: z.string().nullable() });
const ledgerOf = (toolCallId: string) => pool.one(sql.type(Ledger)`SELECT status, attempts, error_code FROM effects WHERE tool_call_id = ${toolCallId}`);

const storedResult = (toolCallId: string) => pool.oneFirst(sql.type(z.object({ result: z.unknown() }))`SELECT result FROM effects WHERE tool_call_id = ${toolCallId}`);

/** What a worker that died right after sending leaves behind: the intent, no receipt. */
async function crashAfterSending(input: ExecuteToolInput, idempotent: boolean) {
  await pool.query(sql.unsafe`
    INSERT INTO effects (tool_call_id, session_id, name, idempotency_key, idempotent, status)
    VALUES (${input.toolCallId}, ${sessionId}, 'charge', ${input.idempotencyKey}, ${idempotent}, 'intent')`);
}

beforeAll(async () => {
  const url = await createTestDatabase(databaseName);
  await migrate(url);
  pool = await openPool(url, 3);
  sessionId = 'effects-session';
  await insertSession(pool, { id: sessionId, title: null, agentId: 'default', agentVersion: 1, ownerId: 'dev' });
});

afterAll(async () => {
  await pool?.end();
  await dropTestDatabase(databaseName);
});

test('a write records its intent, then its receipt; a retry after the receipt reports it without acting again', async () => {
  const { tool, effects } = countingTool();
  const input = await newCall();
  // The workflow hears the status only: the result is stored (and stays out of its history).
  expect(await run(tool, input)).toEqual({ status: 'succeeded' });
  expect(await ledgerOf(input.toolCallId)).toEqual({ status: 'done', attempts: 1, error_code: null });
  expect(await storedResult(input.toolCallId)).toEqual({ charged: true, key: input.idempotencyKey });
  // The worker died after recording, before reporting: Temporal runs the activity again.
  expect(await run(tool, input)).toEqual({ status: 'succeeded' });
  expect(await storedResult(input.toolCallId)).toEqual({ charged: true, key: input.idempotencyKey });
  expect(effects).toHaveLength(1);
});

test('an intent without a receipt, not idempotent: nothing runs, the outcome is unknown', async () => {
  const { tool, effects } = countingTool({ idempotent: false });
  const input = await newCall();
  await crashAfterSending(input, false);
  expect(await run(tool, input)).toEqual({ status: 'outcome_unknown' });
  expect(effects).toEqual([]);
  expect((await ledgerOf(input.toolCallId)).status).toBe('unknown');
  // Asked again (another retry), it still does not guess.
  expect(await run(tool, input)).toEqual({ status: 'outcome_unknown' });
  expect(effects).toEqual([]);
  // A person asked to send it again: it runs, once, with the same key.
  expect(await run(tool, { ...input, force: true })).toMatchObject({ status: 'succeeded' });
  expect(effects).toEqual([input.idempotencyKey]);
  expect(await ledgerOf(input.toolCallId)).toEqual({ status: 'done', attempts: 2, error_code: null });
});

test('an intent without a receipt, idempotent (by the tool, or by the call\'s policy): sent again with the same key', async () => {
  for (const [toolSays, policySays] of [[true, undefined], [false, true]] as const) {
    const { tool, effects } = countingTool({ idempotent: toolSays });
    const input = await newCall();
    await crashAfterSending(input, false);
    expect(await run(tool, { ...input, ...(policySays === undefined ? {} : { idempotent: policySays }) })).toMatchObject({ status: 'succeeded' });
    expect(effects).toEqual([input.idempotencyKey]);
    expect(await ledgerOf(input.toolCallId)).toEqual({ status: 'done', attempts: 2, error_code: null });
  }
});

test('a failure known not to have acted (the service answered 503) may run again; one that may have (a 500, a dropped connection) may not', async () => {
  let failNext: Error | undefined = new ToolTransientError('the service answered 503', true);
  const { tool, effects } = countingTool({ idempotent: false, fail: () => failNext });
  const input = await newCall();
  await expect(run(tool, input)).rejects.toThrow(/503/);
  expect(await ledgerOf(input.toolCallId)).toMatchObject({ status: 'retryable' });
  failNext = undefined;
  expect(await run(tool, input)).toMatchObject({ status: 'succeeded' });
  expect(effects).toHaveLength(1);

  for (const failure of [new Error('socket hang up'), new ToolTransientError('the service answered 500')]) {
    const { tool: slow, effects: slowEffects } = countingTool({ idempotent: false, fail: () => failure });
    const second = await newCall();
    await expect(run(slow, second)).rejects.toThrow(failure.message);
    expect(await ledgerOf(second.toolCallId)).toMatchObject({ status: 'unknown' });
    expect(await run(slow, second)).toEqual({ status: 'outcome_unknown' });
    expect(slowEffects).toEqual([]);
  }
});

test('a failed receipt replayed keeps what the service said, so the model can still fix its arguments', async () => {
  const { tool, effects } = countingTool({ fail: () => new ToolInputError('order 7 does not exist') });
  const input = await newCall();
  const first = await run(tool, input);
  expect(first).toEqual({ status: 'failed', error: { code: 'TOOL_EXECUTION_ERROR', message: 'order 7 does not exist' } });
  // The worker died after the receipt, before reporting: the retry reports the same failure without running.
  expect(await run(tool, input)).toEqual(first);
  expect(effects).toEqual([]);
});

test('read tools are not in the ledger', async () => {
  const { tool } = countingTool();
  const read: Tool = { ...tool, definition: { ...tool.definition, permission: 'read' } };
  const input = await newCall();
  expect(await run(read, input)).toMatchObject({ status: 'succeeded' });
  expect(await pool.maybeOne(sql.unsafe`SELECT 1 FROM effects WHERE tool_call_id = ${input.toolCallId}`)).toBeNull();
});
