import { randomUUID } from 'node:crypto';
import { Writable } from 'node:stream';
import { MockActivityEnvironment } from '@temporalio/testing';
import { DefaultLogger } from '@temporalio/worker';
import OpenAI from 'openai';
import pino from 'pino';
import { sql } from 'slonik';
import { z } from 'zod';
import { createStreamReplyActivities } from '../activities';
import { AgentVersions } from '../agents/versions';
import { createMetrics } from '../config/metrics';
import type { PriceTable } from '../config/pricing';
import { AgentDefinition } from '../contracts/agents';
import type { StreamReplyInput, StreamReplyResult } from '../contracts/turn';
import { syncAgents } from '../db/agents';
import { storeIncomingMessage, usageTotals } from '../db/messages';
import { migrate } from '../db/migrate';
import { openPool, type DatabasePool } from '../db/pool';
import { LocalModelServer } from '../model-server/server';
import { createTestDatabase, dropTestDatabase } from './support/database';
import { startStack, type Stack } from './support/stack';

/**
 * A provider that streams a reply but never its usage (the local model's `no-usage` mode):
 * the reply is committed, logged as a warning, stored with NULL tokens and cost, flagged in
 * its events, and counted apart in the session's usage totals.
 */

const databaseName = `keel_usage_missing_${process.pid}`;
let pool: DatabasePool;
let model: LocalModelServer;
let openai: OpenAI;
const logLines: Record<string, unknown>[] = [];
const log = pino(
  { level: 'info' },
  new Writable({
    write(chunk: Buffer, _encoding, done) {
      logLines.push(JSON.parse(chunk.toString()) as Record<string, unknown>);
      done();
    },
  }),
);
// Both models are priced: a cost of 0 could not tell "free" from "unknown".
const PRICES: PriceTable = { 'keel-local': { inputPerMTok: 1_000, outputPerMTok: 2_000 }, 'keel-misbehave-no-usage': { inputPerMTok: 1_000, outputPerMTok: 2_000 } };

beforeAll(async () => {
  const databaseUrl = await createTestDatabase(databaseName);
  await migrate(databaseUrl);
  pool = await openPool(databaseUrl, 5);
  model = new LocalModelServer();
  openai = new OpenAI({ baseURL: (await model.start()).url, apiKey: 'test-key', maxRetries: 0, timeout: 10_000 });
});

afterAll(async () => {
  await model?.stop();
  await pool?.end();
  await dropTestDatabase(databaseName);
});

const MessageTokens = z.object({ role: z.string(), input_tokens: z.number().nullable(), output_tokens: z.number().nullable(), cost_usd: z.string().nullable() });
const EventRow = z.object({ type: z.string(), data: z.any() });

describe('streamReply when the provider sends no usage', () => {
  const sessionId = `s${randomUUID().replace(/-/g, '')}`;
  let agentVersion: number;
  const activities = () =>
    createStreamReplyActivities({ pool, openai, agents: new AgentVersions(pool, {}), streamCoalesceMs: 20, contextMaxTurns: 100, prices: PRICES, metrics: createMetrics('worker'), log });
  const run = (input: StreamReplyInput, attempt = 1): Promise<StreamReplyResult> =>
    new MockActivityEnvironment({ attempt }, { logger: new DefaultLogger('ERROR') }).run(activities().streamReply, input);

  async function turn(n: number, modelName: string): Promise<StreamReplyInput> {
    const messageId = `${sessionId}-m${n}`;
    await storeIncomingMessage(pool, { id: messageId, sessionId, content: `question ${n}` });
    return { sessionId, turn: n, step: 1, replyTo: messageId, accept: [{ messageId, turn: n }], agent: { id: 'plain', version: agentVersion }, model: modelName };
  }

  beforeAll(async () => {
    const [synced] = await syncAgents(pool, [AgentDefinition.parse({ id: 'plain', name: 'Plain', systemPrompt: 'You answer briefly.' })]);
    agentVersion = synced!.version;
    await pool.query(sql.unsafe`INSERT INTO sessions (id, agent_id, agent_version, owner_id) VALUES (${sessionId}, 'plain', ${agentVersion}, 'user-1')`);
  });

  test('a reply with usage, then one without in the same session: NULL tokens and cost, flagged events, a warning, totals that say so', async () => {
    const first = await run(await turn(1, 'keel-local'));
    expect(first.usage.usageMissing).toBeUndefined();
    expect(first.usage.inputTokens).toBeGreaterThan(0);

    const secondInput = await turn(2, 'keel-misbehave-no-usage');
    const second = await run(secondInput);
    const flagged = { inputTokens: 0, outputTokens: 0, costUsd: 0, usageMissing: true };
    expect(second).toMatchObject({ finishReason: 'stop', usage: flagged });
    // The provider was asked for usage and did not send it.
    expect(model.requests(sessionId).at(-1)!.body).toMatchObject({ model: 'keel-misbehave-no-usage', stream_options: { include_usage: true } });

    const rows = await pool.any(sql.type(MessageTokens)`
      SELECT role, input_tokens, output_tokens, cost_usd::text FROM messages WHERE session_id = ${sessionId} AND role = 'assistant' ORDER BY turn`);
    expect(rows[0]).toMatchObject({ input_tokens: first.usage.inputTokens, output_tokens: first.usage.outputTokens });
    expect(Number(rows[0]!.cost_usd)).toBeGreaterThan(0);
    expect(rows[1]).toEqual({ role: 'assistant', input_tokens: null, output_tokens: null, cost_usd: null });

    const events = await pool.any(sql.type(EventRow)`SELECT type, data FROM session_events WHERE session_id = ${sessionId} AND type IN ('stream.end', 'turn.done') ORDER BY seq`);
    expect(events.map((e) => [e.type, e.data.usage])).toEqual([
      ['stream.end', first.usage],
      ['turn.done', first.usage],
      ['stream.end', flagged],
      ['turn.done', flagged],
    ]);

    const warnings = logLines.filter((l) => l.level === 40);
    expect(warnings).toEqual([
      expect.objectContaining({ sessionId, turn: 2, model: 'keel-misbehave-no-usage', messageId: second.messageId, msg: expect.stringContaining('without usage') }),
    ]);

    expect(await usageTotals(pool, sessionId)).toEqual({
      messages: 2,
      without_usage: 1,
      input_tokens: first.usage.inputTokens,
      output_tokens: first.usage.outputTokens,
      cost_usd: first.usage.costUsd,
    });

    // A later attempt finds the committed reply, flag included, and asks the model nothing.
    const asked = model.requests(sessionId).length;
    await expect(run(secondInput, 2)).resolves.toMatchObject({ messageId: second.messageId, usage: flagged });
    expect(model.requests(sessionId)).toHaveLength(asked);
  });
});

describe('the whole stack on a model that sends no usage', () => {
  let stack: Stack;
  beforeAll(async () => {
    stack = await startStack({ env: { KEEL_MODEL: 'keel-misbehave-no-usage' } });
  });
  afterAll(async () => {
    await stack?.stop();
  });

  test('clients see the flag on the reply, the message and the session usage; the worker logs a warning', async () => {
    const sessionId = await stack.createSession();
    const ws = await stack.ws(sessionId);
    ws.send({ type: 'message', content: 'hello there' });
    const done = await ws.waitFor((f) => f.type === 'turn.done');
    const flagged = { inputTokens: 0, outputTokens: 0, costUsd: 0, usageMissing: true };
    expect(done.data).toMatchObject({ status: 'completed', content: 'You said: hello there.', usage: flagged });
    expect(ws.frames.find((f) => f.type === 'stream.end')!.data.usage).toEqual(flagged);

    const messages = await stack.request('GET', `/api/v1/sessions/${sessionId}/messages`);
    expect(messages.body.messages.find((m: { role: string }) => m.role === 'assistant').usage).toEqual(flagged);
    const usage = await stack.request('GET', `/api/v1/sessions/${sessionId}/usage`);
    expect(usage.body).toEqual({ sessionId, assistantMessages: 1, repliesWithoutUsage: 1, inputTokens: 0, outputTokens: 0, costUsd: 0 });

    const warning = await stack.worker.waitForLine(/"level":40.*model reply came without usage/);
    expect(JSON.parse(warning.input!)).toMatchObject({ sessionId, turn: 1, model: 'keel-misbehave-no-usage' });
  });
});
