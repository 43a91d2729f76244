import { DEFAULTS, passed, runChaos, summary } from '../bench/chaos/harness';
import { idempotencyKeyOf, verify, type ChaosRecord, type SessionRecord } from '../bench/chaos/verify';

/**
 * The short chaos run (issue 13; `npm run chaos` is the long one, docs/benchmarks.md "Chaos"): 100
 * turns through two APIs and two workers while a seeded schedule SIGKILLs and restarts a worker,
 * an API, the Temporal dev server and PostgreSQL. It starts its own processes (file-backed
 * Temporal, a PostgreSQL that survives a crash), not the test run's shared servers. First, the
 * verifier on doctored records: it must be able to say no.
 */

/** A clean record of one session: two turns, the second with an approved write that reached the service once. */
function cleanRecord(): ChaosRecord {
  const s: SessionRecord = {
    id: 's1',
    sent: [
      { clientMessageId: 'c1', acknowledged: true, sends: 1 },
      { clientMessageId: 'c2', acknowledged: true, sends: 2 },
    ],
    events: [
      { seq: 1, type: 'message.accepted', data: { clientMessageId: 'c1', messageId: 'm1', turn: 1 } },
      { seq: 2, type: 'stream.end', data: { streamId: 'st1' } },
      { seq: 3, type: 'turn.done', data: { turn: 1, replyTo: 'm1', status: 'completed' } },
      { seq: 4, type: 'message.accepted', data: { clientMessageId: 'c2', messageId: 'm2', turn: 2 } },
      { seq: 5, type: 'tool.call', data: { toolCallId: 'tc1' } },
      { seq: 6, type: 'approval.required', data: { toolCallId: 'tc1', digest: 'd' } },
      { seq: 7, type: 'approval.resolved', data: { toolCallId: 'tc1', outcome: 'approved' } },
      { seq: 8, type: 'tool.result', data: { toolCallId: 'tc1', status: 'succeeded' } },
      { seq: 9, type: 'stream.end', data: { streamId: 'st2' } },
      { seq: 10, type: 'turn.done', data: { turn: 2, replyTo: 'm2', status: 'completed' } },
    ],
    messages: [
      { id: 'm1', turn: 1, role: 'user', clientMessageId: 'c1', hasToolCalls: false },
      { id: 'a1', turn: 1, role: 'assistant', clientMessageId: null, hasToolCalls: false },
      { id: 'm2', turn: 2, role: 'user', clientMessageId: 'c2', hasToolCalls: false },
      { id: 'a2', turn: 2, role: 'assistant', clientMessageId: null, hasToolCalls: true },
      { id: 'a3', turn: 2, role: 'assistant', clientMessageId: null, hasToolCalls: false },
    ],
    toolCalls: [{ id: 'tc1', name: 'chaos_write', status: 'succeeded', approvalOutcome: 'approved' }],
    delivered: [1, 2, 3, 4, 5, 6, 7, 8, 9, 10],
  };
  return {
    sessions: [s],
    writeTool: 'chaos_write',
    serviceEffects: [{ key: idempotencyKeyOf('s1', 'tc1'), marker: 's1/2', requests: 2 }],
    decisions: [{ toolCallId: 'tc1', accepted: 1, refusedAsDecided: 1 }],
  };
}

const session = (r: ChaosRecord) => r.sessions[0]!;

describe('the chaos verifier', () => {
  test('a clean record passes, a repeated request under one key is not a duplicate effect', () => {
    expect(verify(cleanRecord())).toMatchObject({ turns: 2, lost: 0, duplicated: 0, duplicatedEffects: 0, effects: 1, repeatedRequests: 1, approvals: 1, problems: [] });
  });

  test.each<[string, (r: ChaosRecord) => void, { lost?: number; duplicated?: number; duplicatedEffects?: number }]>([
    ['a turn with no turn.done', (r) => void session(r).events.splice(9, 1), { lost: 1 }],
    ['a second turn.done', (r) => void session(r).events.push({ seq: 11, type: 'turn.done', data: { turn: 2, replyTo: 'm2', status: 'completed' } }), { duplicated: 1 }],
    ['an acknowledged message never accepted', (r) => void session(r).sent.push({ clientMessageId: 'c3', acknowledged: true, sends: 1 }), { lost: 1 }],
    ['a second assistant reply', (r) => void session(r).messages.push({ id: 'a4', turn: 1, role: 'assistant', clientMessageId: null, hasToolCalls: false }), { duplicated: 1 }],
    ['a seq gap', (r) => void session(r).events.splice(4, 1), { lost: 1 }],
    ['one action under two keys', (r) => void r.serviceEffects.push({ key: 'session-s1:tc9', marker: 's1/2', requests: 1 }), { duplicatedEffects: 1 }],
    ['a succeeded write the service never saw', (r) => void (r.serviceEffects = []), { lost: 1 }],
    ['an approval resolved twice', (r) => void session(r).events.push({ seq: 11, type: 'approval.resolved', data: { toolCallId: 'tc1', outcome: 'approved' } }), { duplicated: 1 }],
    ['an approval the API accepted twice', (r) => void (r.decisions[0]!.accepted = 2), { duplicated: 1 }],
    ['an event delivered twice to the client', (r) => void session(r).delivered.push(10), { duplicated: 1 }],
    ['an event the client never got', (r) => void session(r).delivered.splice(3, 1), { lost: 1 }],
  ])('%s fails the run', (_what, doctor, expected) => {
    const record = cleanRecord();
    doctor(record);
    const verdict = verify(record);
    expect(verdict).toMatchObject({ lost: 0, duplicated: 0, duplicatedEffects: 0, ...expected });
    expect(verdict.problems.length).toBeGreaterThan(0);
  });
});

test('100 turns while workers, APIs, Temporal and PostgreSQL are SIGKILLed: nothing lost, nothing twice', async () => {
  const lines: string[] = [];
  const result = await runChaos({
    ...DEFAULTS,
    sessions: 10,
    turnsPerSession: 10,
    seed: 7,
    // Shorter gaps than the long run's, so 100 turns see every kind of kill.
    killGapMs: [2_000, 4_000],
    turnTimeoutMs: 120_000,
    log: (line) => lines.push(line),
  });
  const report = `${summary(result)}\n${result.verdict.problems.join('\n')}\n${lines.join('\n')}`;
  expect({ turns: result.verdict.turns, lost: result.verdict.lost, duplicated: result.verdict.duplicated, duplicatedEffects: result.verdict.duplicatedEffects, report }).toEqual({ turns: 100, lost: 0, duplicated: 0, duplicatedEffects: 0, report });
  expect(passed(result)).toBe(true);
  // The run did what it claims: every kind was killed, and writes went through approvals to the service.
  for (const kind of ['worker', 'api', 'temporal', 'postgres'] as const) expect(result.killsByKind[kind]).toBeGreaterThan(0);
  expect(result.verdict.approvals).toBeGreaterThan(0);
  expect(result.verdict.effects).toBeGreaterThan(0);
  expect(result.reconnects).toBeGreaterThan(0);
}, 180_000);
