import { createHmac, randomUUID, timingSafeEqual } from 'node:crypto';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { MockActivityEnvironment } from '@temporalio/testing';
import { DefaultLogger } from '@temporalio/worker';
import pino from 'pino';
import { sql } from 'slonik';
import { z } from 'zod';
import { conversationSummaryOf, createEscalationActivities } from '../activities/escalation';
import { AgentVersions } from '../agents/versions';
import { createMetrics } from '../config/metrics';
import { loadSettings, type Settings } from '../config/settings';
import { AgentDefinition } from '../contracts/agents';
import type { EscalateInput } from '../contracts/turn';
import { syncAgents } from '../db/agents';
import { acceptMessage, insertMessage, storeIncomingMessage } from '../db/messages';
import { migrate } from '../db/migrate';
import { openPool, type DatabasePool } from '../db/pool';
import { insertSession } from '../db/sessions';
import { DEFAULT_TOOL_SETTINGS, toolDefinitions } from '../tools';
import { createTestDatabase, dropTestDatabase } from './support/database';

/**
 * The escalate activity on its own, in Temporal's MockActivityEnvironment (heartbeats,
 * cancellation), against a real Postgres database and a real receiver on 127.0.0.1.
 */

const SECRET = 'escalation-test-secret';
const AGENT_MESSAGE = 'A colleague from support will take over from here.';
const DEFAULT_MESSAGE = "I'm passing this conversation to a member of our team. Someone will reply here shortly.";
const databaseName = `keel_escalation_${process.pid}`;
const metrics = createMetrics('worker');
const log = pino({ level: 'silent' });
const sdkLogger = new DefaultLogger('ERROR');

interface Received {
  at: number;
  headers: http.IncomingHttpHeaders;
  body: string;
}

/** A real receiver: answers with its scripted statuses in turn, 200 once they run out. */
class Receiver {
  readonly received: Received[] = [];
  statuses: number[] = [];
  private readonly server = http.createServer((req, res) => {
    let body = '';
    req.setEncoding('utf8');
    req.on('data', (chunk: string) => (body += chunk));
    req.on('end', () => {
      this.received.push({ at: performance.now(), headers: req.headers, body });
      res.writeHead(this.statuses.shift() ?? 200, { 'content-type': 'application/json' }).end('{}');
    });
  });
  url = '';

  async start(): Promise<void> {
    await new Promise<void>((resolve) => this.server.listen(0, '127.0.0.1', resolve));
    this.url = `http://127.0.0.1:${(this.server.address() as AddressInfo).port}/escalations`;
  }

  reset(statuses: number[]): void {
    this.received.length = 0;
    this.statuses = statuses;
  }

  stop(): Promise<void> {
    this.server.closeAllConnections();
    return new Promise((resolve) => this.server.close(() => resolve()));
  }
}

/** The receiver's check, written here from the documented scheme (docs/escalation.md), not with the server's code. */
function signatureIsValid(r: Received): boolean {
  const timestamp = String(r.headers['x-keel-timestamp']);
  const expected = Buffer.from(`sha256=${createHmac('sha256', SECRET).update(`${timestamp}.${r.body}`).digest('hex')}`);
  const given = Buffer.from(String(r.headers['x-keel-signature']));
  return expected.length === given.length && timingSafeEqual(expected, given) && Math.abs(Date.now() / 1000 - Number(timestamp)) < 300;
}

let pool: DatabasePool;
let agents: AgentVersions;
let agentVersion: number;
const receiver = new Receiver();

beforeAll(async () => {
  const url = await createTestDatabase(databaseName);
  await migrate(url);
  pool = await openPool(url, 5);
  const [synced] = await syncAgents(pool, [
    AgentDefinition.parse({ id: 'support', name: 'Support', systemPrompt: 'Help.', tools: [], personality: { escalationMessage: AGENT_MESSAGE } }),
  ]);
  agentVersion = synced!.version;
  agents = new AgentVersions(pool, toolDefinitions(DEFAULT_TOOL_SETTINGS));
  await receiver.start();
});

afterAll(async () => {
  await receiver.stop();
  await pool?.end();
  await dropTestDatabase(databaseName);
});

/** The documented defaults, with the webhook at the receiver and the given changes. */
function escalationSettings(overrides: Partial<Settings['escalation']> = {}): Settings['escalation'] {
  const defaults = loadSettings({}).escalation;
  return { ...defaults, webhookUrl: receiver.url, secret: SECRET, ...overrides };
}

function activities(overrides: Partial<Settings['escalation']> = {}, allowHosts: string[] = ['127.0.0.1']) {
  return createEscalationActivities({ pool, agents, settings: escalationSettings(overrides), allowHosts, metrics, log });
}

function environment(): MockActivityEnvironment {
  return new MockActivityEnvironment({ attempt: 1, heartbeatTimeoutMs: 5_000 }, { logger: sdkLogger });
}

/** A session of user "owner-1" with one answered turn and the user message of turn 2 (the one that escalates). */
async function sessionWithConversation(): Promise<{ sessionId: string; replyTo: string }> {
  const sessionId = `s${randomUUID().replace(/-/g, '')}`;
  await insertSession(pool, { id: sessionId, title: null, agentId: 'support', agentVersion, ownerId: 'owner-1' });
  await storeIncomingMessage(pool, { id: `${sessionId}-u1`, sessionId, content: 'Where is my order?' });
  await acceptMessage(pool, sessionId, `${sessionId}-u1`, 1);
  await insertMessage(pool, { id: `${sessionId}-t1-r1`, sessionId, turn: 1, position: 1000, role: 'assistant', content: 'It left the warehouse yesterday.' });
  await storeIncomingMessage(pool, { id: `${sessionId}-u2`, sessionId, content: 'I want to talk to a person.' });
  await acceptMessage(pool, sessionId, `${sessionId}-u2`, 2);
  return { sessionId, replyTo: `${sessionId}-u2` };
}

function inputOf(sessionId: string, replyTo: string, overrides: Partial<EscalateInput> = {}): EscalateInput {
  return { sessionId, escalationId: '2', turn: 2, replyTo, reason: 'the user asked for a person', source: 'tool', agent: { id: 'support', version: agentVersion }, endsTurn: true, ...overrides };
}

const EventRow = z.object({ type: z.string(), key: z.string(), data: z.any() });
async function eventsOf(sessionId: string) {
  return [...(await pool.any(sql.type(EventRow)`SELECT type, event_key AS key, data FROM session_events WHERE session_id = ${sessionId} ORDER BY seq`))];
}

async function escalationRow(sessionId: string) {
  return pool.one(
    sql.type(z.object({ success: z.boolean().nullable(), status_code: z.number().nullable(), attempts: z.number(), error: z.string().nullable(), delivered: z.boolean(), agent_id: z.string().nullable(), source: z.string() }))`
      SELECT success, status_code, attempts, error, delivered_at IS NOT NULL AS delivered, agent_id, source FROM escalations WHERE session_id = ${sessionId}`,
  );
}

async function escalationMessage(sessionId: string) {
  return pool.one(
    sql.type(z.object({ id: z.string(), role: z.string(), turn: z.number(), position: z.number(), content: z.string(), agent_id: z.string().nullable() }))`
      SELECT id, role, turn, position, content, agent_id FROM messages WHERE session_id = ${sessionId} AND id LIKE '%-esc-%'`,
  );
}

test('a receiver that fails twice gets three signed POSTs of the same body, the back-off and twice it apart, and the escalation is recorded as delivered', async () => {
  const backoffMs = 500;
  receiver.reset([500, 500]);
  const { sessionId, replyTo } = await sessionWithConversation();
  const env = environment();
  let beats = 0;
  env.on('heartbeat', () => beats++);
  const result = await env.run(activities({ backoffMs }).escalate, inputOf(sessionId, replyTo));

  expect(result).toEqual({ messageId: `${sessionId}-esc-2`, success: true, statusCode: 200, attempts: 3, error: null });
  const posts = receiver.received;
  expect(posts).toHaveLength(3);
  // 500 ms after the first failure, 1 s after the second.
  expect(posts[1]!.at - posts[0]!.at).toBeGreaterThanOrEqual(backoffMs);
  expect(posts[2]!.at - posts[1]!.at).toBeGreaterThanOrEqual(2 * backoffMs);
  // The activity heartbeats every second, through its back-off waits: 1.5 s of them pass at least one beat.
  expect(beats).toBeGreaterThanOrEqual(1);
  for (const [i, post] of posts.entries()) {
    expect(signatureIsValid(post)).toBe(true);
    expect(post.headers['idempotency-key']).toBe(`${sessionId}:2`);
    expect(post.headers['x-keel-attempt']).toBe(String(i + 1));
    expect(post.headers['content-type']).toBe('application/json');
    expect(post.body).toBe(posts[0]!.body);
  }
  const body = JSON.parse(posts[0]!.body);
  expect(body).toEqual({
    sessionId,
    escalationId: '2',
    reason: 'the user asked for a person',
    source: 'tool',
    agent: 'support',
    conversationSummary: 'user: Where is my order?\nassistant: It left the warehouse yesterday.\nuser: I want to talk to a person.',
    metadata: { turn: 2, agentVersion, ownerId: 'owner-1', escalatedAt: expect.stringMatching(/^\d{4}-\d\d-\d\dT/) },
  });

  expect(await escalationRow(sessionId)).toEqual({ success: true, status_code: 200, attempts: 3, error: null, delivered: true, agent_id: 'support', source: 'tool' });
  expect(await escalationMessage(sessionId)).toEqual({ id: `${sessionId}-esc-2`, role: 'assistant', turn: 2, position: 900_000, content: AGENT_MESSAGE, agent_id: 'support' });
  const events = await eventsOf(sessionId);
  expect(events.map((e) => [e.type, e.key])).toEqual([
    ['session.escalated', 'escalation:2'],
    ['turn.done', 'turn:2:done'],
    ['escalation.delivered', 'escalation:2:delivered'],
  ]);
  expect(events.find((e) => e.type === 'session.escalated')!.data).toEqual({ turn: 2, reason: 'the user asked for a person', source: 'tool', agent: 'support', messageId: `${sessionId}-esc-2` });
  expect(events.find((e) => e.type === 'turn.done')!.data).toEqual({
    turn: 2,
    replyTo,
    status: 'completed',
    messageId: `${sessionId}-esc-2`,
    content: AGENT_MESSAGE,
    usage: { inputTokens: 0, outputTokens: 0, costUsd: 0 },
    agent: 'support',
  });
  expect(events.find((e) => e.type === 'escalation.delivered')!.data).toEqual({ turn: 2, success: true, statusCode: 200, attempts: 3, error: null });
});

test('a receiver that always fails: three attempts, recorded as not delivered, and the user was still told', async () => {
  receiver.reset([503, 503, 503, 503]);
  const { sessionId, replyTo } = await sessionWithConversation();
  const result = await environment().run(activities({ backoffMs: 10 }).escalate, inputOf(sessionId, replyTo));

  expect(result).toEqual({ messageId: `${sessionId}-esc-2`, success: false, statusCode: 503, attempts: 3, error: 'the receiver answered 503' });
  expect(receiver.received).toHaveLength(3);
  expect(await escalationRow(sessionId)).toMatchObject({ success: false, status_code: 503, attempts: 3, delivered: false });
  expect((await escalationMessage(sessionId)).content).toBe(AGENT_MESSAGE);
  const types = (await eventsOf(sessionId)).map((e) => e.type);
  expect(types).toEqual(['session.escalated', 'turn.done', 'escalation.delivered']);
});

test('a repeated call after an outcome is recorded posts nothing and writes nothing again', async () => {
  receiver.reset([]);
  const { sessionId, replyTo } = await sessionWithConversation();
  const escalate = activities({ backoffMs: 10 }).escalate;
  const first = await environment().run(escalate, inputOf(sessionId, replyTo));
  expect(receiver.received).toHaveLength(1);
  const eventsBefore = await eventsOf(sessionId);

  const again = await environment().run(escalate, inputOf(sessionId, replyTo));
  expect(again).toEqual(first);
  expect(again).toMatchObject({ success: true, attempts: 1 });
  expect(receiver.received).toHaveLength(1);
  expect(await eventsOf(sessionId)).toEqual(eventsBefore);
});

test('without a webhook URL: recorded as not delivered after 0 attempts; the classifier escalation gets the default message', async () => {
  receiver.reset([]);
  const { sessionId, replyTo } = await sessionWithConversation();
  const result = await environment().run(activities({ webhookUrl: undefined }).escalate, inputOf(sessionId, replyTo, { agent: null, source: 'classifier', endsTurn: false }));

  expect(result).toEqual({ messageId: `${sessionId}-esc-2`, success: false, statusCode: null, attempts: 0, error: 'no escalation webhook configured' });
  expect(receiver.received).toHaveLength(0);
  expect(await escalationMessage(sessionId)).toMatchObject({ content: DEFAULT_MESSAGE, agent_id: null });
  const events = await eventsOf(sessionId);
  // endsTurn false: the turn's own turn.done is someone else's to write.
  expect(events.map((e) => e.type)).toEqual(['session.escalated', 'escalation.delivered']);
  expect(events.find((e) => e.type === 'session.escalated')!.data).toMatchObject({ source: 'classifier', agent: null });
});

test('a 4xx answer is final after one attempt', async () => {
  receiver.reset([400]);
  const { sessionId, replyTo } = await sessionWithConversation();
  const result = await environment().run(activities({ backoffMs: 10 }).escalate, inputOf(sessionId, replyTo));
  expect(result).toMatchObject({ success: false, statusCode: 400, attempts: 1, error: 'the receiver answered 400' });
  expect(receiver.received).toHaveLength(1);
});

test('a loopback receiver that KEEL_WEBHOOK_ALLOW_HOSTS does not name is refused without a POST', async () => {
  receiver.reset([]);
  const { sessionId, replyTo } = await sessionWithConversation();
  const result = await environment().run(activities({ backoffMs: 10 }, []).escalate, inputOf(sessionId, replyTo));
  expect(result).toMatchObject({ success: false, statusCode: null, attempts: 1, error: expect.stringMatching(/is refused: it resolves to a loopback/) });
  expect(receiver.received).toHaveLength(0);
});

test('a cancel during the back-off stops at once; a retried activity goes on from the attempts already made', async () => {
  receiver.reset([500]);
  const { sessionId, replyTo } = await sessionWithConversation();
  const env = environment();
  const running = env.run(activities({ backoffMs: 60_000 }).escalate, inputOf(sessionId, replyTo));
  const deadline = Date.now() + 5_000;
  while (receiver.received.length === 0 && Date.now() < deadline) await new Promise((resolve) => setTimeout(resolve, 10));
  expect(receiver.received).toHaveLength(1);
  const cancelledAt = performance.now();
  env.cancel();
  await expect(running).rejects.toMatchObject({ name: 'CancelledFailure' });
  expect(performance.now() - cancelledAt).toBeLessThan(2_000);
  expect(await escalationRow(sessionId)).toMatchObject({ success: null, attempts: 1 });

  // The retry: one attempt counted already, the receiver answers 200 to the second.
  const result = await environment().run(activities({ backoffMs: 10 }).escalate, inputOf(sessionId, replyTo));
  expect(result).toMatchObject({ success: true, statusCode: 200, attempts: 2 });
  expect(receiver.received).toHaveLength(2);
  expect((await eventsOf(sessionId)).filter((e) => e.type === 'session.escalated')).toHaveLength(1);
});

test('the conversation summary keeps the latest text within its cap', () => {
  const messages = [
    { role: 'user', content: 'first question' },
    { role: 'assistant', content: 'first answer' },
    { role: 'user', content: 'second question' },
  ];
  expect(conversationSummaryOf(messages, 1_000)).toBe('user: first question\nassistant: first answer\nuser: second question');
  const cut = conversationSummaryOf(messages, 30);
  expect(cut).toHaveLength(30);
  expect(cut).toBe('… answer\nuser: second question');
});

test('the settings: 3 attempts of 10 s, 2 s then 4 s apart; the secret falls back to KEEL_WEBHOOK_SECRET', () => {
  const defaults = loadSettings({}).escalation;
  expect(defaults).toMatchObject({ webhookUrl: undefined, secret: undefined, timeoutMs: 10_000, maxAttempts: 3, backoffMs: 2_000, defaultMessage: DEFAULT_MESSAGE, summaryMessages: 10, summaryChars: 4_000 });
  // 30 s of attempts, 6 s of waits and 15 s for the rest: what the workflow's startToCloseTimeout must exceed.
  expect(defaults.activityTimeoutMs).toBe(51_000);
  expect(loadSettings({ KEEL_WEBHOOK_SECRET: 'shared' }).escalation.secret).toBe('shared');
  expect(loadSettings({ KEEL_WEBHOOK_SECRET: 'shared', KEEL_ESCALATION_WEBHOOK_SECRET: 'own' }).escalation.secret).toBe('own');
});
