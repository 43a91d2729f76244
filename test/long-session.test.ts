import { Client, Connection } from '@temporalio/client';
import { sessionWorkflowId } from '../contracts/ids';
import { checkConversation, driveSession, LONG_FILL, measureRuns, type RunMeasure } from '../bench/long-session-lib';
import { startStack, type Stack } from './support/stack';

// Issue 13, "histories that stay small", at a CI size: bench/long-session.ts runs the same at 10,000 turns (docs/benchmarks.md).

/** KEEL_CONTINUE_AS_NEW_EVENTS for this stack: low, so that the session continues-as-new many times in a few hundred turns. */
const CONTINUE_AS_NEW_EVENTS = 200;
const TURNS = 240;
const TOOL_EVERY = 10;
const LONG_EVERY = 40;
/**
 * The workflow continues-as-new only between turns, once its history holds the setting's number
 * of events: a run ends with at most that many, plus one turn and the continue-as-new itself
 * (~14 events per turn on average; never more than 25 past the setting over 10,000 turns,
 * docs/benchmarks.md "Long sessions").
 */
const ONE_TURN_AND_CONTINUE = 60;
/** No event carries content (messages and results are in PostgreSQL, the history holds IDs): on average well under this. */
const MAX_BYTES_PER_EVENT = 1024;
/** The carried state holds counters, whose digits grow with the turns (nextTurn 20 → 240, the usage totals). */
const COUNTER_DIGITS = 64;

let stack: Stack;
let temporal: Client;

beforeAll(async () => {
  stack = await startStack({ env: { KEEL_CONTINUE_AS_NEW_EVENTS: String(CONTINUE_AS_NEW_EVENTS), KEEL_RATE_MESSAGES_PER_SESSION: '0', KEEL_RATE_REQUESTS_PER_TOKEN: '0' } });
  temporal = new Client({ connection: await Connection.connect({ address: process.env.KEEL_TEST_TEMPORAL_ADDRESS! }) });
}, 60_000);

afterAll(async () => {
  await stack?.stop();
  await temporal?.connection.close();
});

/** The lengths of the carried state's arrays, by path: what would grow with turns. */
function arrays(value: unknown, prefix = ''): Record<string, number> {
  if (Array.isArray(value)) return { [prefix]: value.length };
  if (!value || typeof value !== 'object') return {};
  return Object.assign({}, ...Object.entries(value).map(([k, v]) => arrays(v, prefix ? `${prefix}.${k}` : k)));
}

function withoutQueue(carried: Record<string, unknown>): Record<string, unknown> {
  const { queue: _queue, ...rest } = carried;
  return rest;
}

test(`${TURNS} turns: every run's history stays bounded by KEEL_CONTINUE_AS_NEW_EVENTS, the carried state does not grow, the conversation is intact`, async () => {
  const sessionId = await stack.createSession();
  const ws = await stack.ws(sessionId);
  const { toolTurns, longTurns } = await driveSession({
    client: ws,
    model: stack.model,
    sessionId,
    turns: TURNS,
    toolEvery: TOOL_EVERY,
    longEvery: LONG_EVERY,
    longChars: 10_000,
    clientMessageIds: false,
    turnTimeoutMs: 20_000,
  });
  expect(toolTurns).toBe(TURNS / TOOL_EVERY);
  expect(longTurns).toBe(TURNS / LONG_EVERY);

  const runs = await measureRuns(temporal, sessionWorkflowId(sessionId), LONG_FILL.repeat(3));
  // Several continue-as-new happened, each run but the last ended by one.
  expect(runs.length).toBeGreaterThanOrEqual(5);
  expect(runs.slice(0, -1).every((r) => r.continuedAsNew)).toBe(true);
  const over = (r: RunMeasure) => r.events > CONTINUE_AS_NEW_EVENTS + ONE_TURN_AND_CONTINUE || r.bytes > (CONTINUE_AS_NEW_EVENTS + ONE_TURN_AND_CONTINUE) * MAX_BYTES_PER_EVENT;
  expect(runs.filter(over).map((r) => ({ events: r.events, bytes: r.bytes }))).toEqual([]);
  // A continued run reached the setting: the bound is what ends runs, not something else.
  expect(runs.slice(0, -1).every((r) => r.events >= CONTINUE_AS_NEW_EVENTS)).toBe(true);
  // The long messages stayed in PostgreSQL.
  expect(runs.filter((r) => r.markerFound).length).toBe(0);

  // The state carried into the second run and into the last one: same arrays, same size but for counters' digits.
  // Its queue holds the next message when it arrived before the continue-as-new (this driver sends one at a time).
  const carried = runs.slice(1);
  expect(carried.every((r) => (r.carried!.queue as unknown[]).length <= 1)).toBe(true);
  const [first, last] = [withoutQueue(carried[0]!.carried!), withoutQueue(carried.at(-1)!.carried!)];
  expect(arrays(last)).toEqual(arrays(first));
  expect(Buffer.byteLength(JSON.stringify(last))).toBeLessThanOrEqual(Buffer.byteLength(JSON.stringify(first)) + COUNTER_DIGITS);

  const conversation = await checkConversation(stack.db, sessionId, TURNS);
  expect(conversation.seqGapFree).toBe(true);
  expect(conversation.turnsWithoutExactlyOneDone).toEqual([]);
  expect(conversation.notCompleted).toBe(0);
  expect(conversation.userTurnsDistinct).toBe(TURNS);
  // A turn is a user message and a reply; a tool turn adds the call's assistant message and the tool's result.
  expect(conversation.byRole).toEqual({ user: TURNS, assistant: TURNS + TURNS / TOOL_EVERY, tool: TURNS / TOOL_EVERY });
}, 120_000);
