import { DEFAULTS, KINDS, passed, runChaos, summary } from '../bench/chaos/harness';
import { idempotencyKeyOf, verify, type ChaosRecord, type SessionRecord } from '../bench/chaos/verify';

/**
 * The short chaos run (issue 13; `npm run chaos` is the long one, docs/benchmarks.md "Chaos"): 100
 * turns, 20 of them background runs, through two APIs and two workers while a seeded schedule
 * SIGKILLs and restarts a worker, an API, the Temporal dev server, PostgreSQL, the model server,
 * and a worker whose write the receiving service holds unanswered. It starts its own processes (file-backed
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
  // A run's session: the run's message (client message ID run-<runId>) is answered like a chat turn.
  const runSession: SessionRecord = {
    id: 's2',
    sent: [],
    events: [
      { seq: 1, type: 'message.accepted', data: { clientMessageId: 'run-r1', messageId: 'mr1', turn: 1 } },
      { seq: 2, type: 'stream.end', data: { streamId: 'st3' } },
      { seq: 3, type: 'turn.done', data: { turn: 1, replyTo: 'mr1', status: 'completed' } },
    ],
    messages: [
      { id: 'mr1', turn: 1, role: 'user', clientMessageId: 'run-r1', hasToolCalls: false },
      { id: 'ar1', turn: 1, role: 'assistant', clientMessageId: null, hasToolCalls: false },
    ],
    toolCalls: [],
    delivered: [],
  };
  return {
    sessions: [s, runSession],
    runs: [{ key: 'k1', sessionId: 's2', runIds: ['r1'], created: 1, submits: 2, refusals: [], status: 'done' }],
    deliveries: [{ deliveryId: 'webhook-run-r1', runId: 'r1', attempts: 2, statuses: ['done', 'done'], badSignatures: 0 }],
    writeKills: [{ key: idempotencyKeyOf('s1', 'tc1') }],
    writeTool: 'chaos_write',
    serviceEffects: [{ key: idempotencyKeyOf('s1', 'tc1'), marker: 's1/2', requests: 2 }],
    decisions: [{ toolCallId: 'tc1', accepted: 1, refusedAsDecided: 1 }],
  };
}

const session = (r: ChaosRecord) => r.sessions[0]!;

describe('the chaos verifier', () => {
  test('a clean record passes, a repeated request under one key is not a duplicate effect', () => {
    expect(verify(cleanRecord())).toMatchObject({ turns: 3, lost: 0, duplicated: 0, duplicatedEffects: 0, effects: 1, repeatedRequests: 1, approvals: 1, runs: 1, repeatedWebhookAttempts: 1, writeKillsLanded: 1, problems: [] });
  });

  test('a killed write that was never sent again and did not succeed is no landed kill (a note, not a failure)', () => {
    const record = cleanRecord();
    record.serviceEffects[0]!.requests = 1;
    session(record).toolCalls[0]!.status = 'failed';
    const verdict = verify(record);
    expect(verdict).toMatchObject({ lost: 0, duplicated: 0, writeKillsLanded: 0 });
    expect(verdict.problems).toEqual([expect.stringMatching(/^note: the write .* 1 requests at the service/)]);
  });

  test.each<[string, (r: ChaosRecord) => void, { lost?: number; duplicated?: number; duplicatedEffects?: number }]>([
    ['a turn with no turn.done', (r) => void session(r).events.splice(9, 1), { lost: 1 }],
    ['a second turn.done', (r) => void session(r).events.push({ seq: 11, type: 'turn.done', data: { turn: 2, replyTo: 'm2', status: 'completed' } }), { duplicated: 1 }],
    ['an acknowledged message never accepted', (r) => void session(r).sent.push({ clientMessageId: 'c3', acknowledged: true, sends: 1 }), { lost: 1 }],
    ['a second assistant reply', (r) => void session(r).messages.push({ id: 'a4', turn: 1, role: 'assistant', clientMessageId: null, hasToolCalls: false }), { duplicated: 1 }],
    ['a seq gap', (r) => void session(r).events.splice(4, 1), { lost: 1 }],
    ['one action under two keys', (r) => void r.serviceEffects.push({ key: 'session-s1:tc9', marker: 's1/2', requests: 1 }), { duplicatedEffects: 1 }],
    ['a succeeded write the service never saw', (r) => void ((r.serviceEffects = []), (r.writeKills = [])), { lost: 1 }],
    ['an approval resolved twice', (r) => void session(r).events.push({ seq: 11, type: 'approval.resolved', data: { toolCallId: 'tc1', outcome: 'approved' } }), { duplicated: 1 }],
    ['an approval the API accepted twice', (r) => void (r.decisions[0]!.accepted = 2), { duplicated: 1 }],
    ['an event delivered twice to the client', (r) => void session(r).delivered.push(10), { duplicated: 1 }],
    ['an event the client never got', (r) => void session(r).delivered.splice(3, 1), { lost: 1 }],
    ['a run key never answered with a run', (r) => void (Object.assign(r.runs[0]!, { runIds: [], sessionId: null }), r.sessions.splice(1, 1)), { lost: 1 }],
    ['a run key answered with two runs', (r) => void r.runs[0]!.runIds.push('r2'), { duplicated: 1 }],
    ['a run created twice', (r) => void (r.runs[0]!.created = 2), { duplicated: 1 }],
    ['a run that never ended', (r) => void (r.runs[0]!.status = null), { lost: 1 }],
    ['a run whose webhook never came', (r) => void (r.deliveries = []), { lost: 1 }],
    ['a webhook with a bad signature', (r) => void (r.deliveries[0]!.badSignatures = 1), { lost: 1 }],
    ['a webhook that told another status', (r) => void (r.deliveries[0]!.statuses = ['done', 'error']), { lost: 1 }],
    ['a run whose message was never accepted', (r) => void (r.sessions[1]!.events = r.sessions[1]!.events.slice(1).map((e, i) => ({ ...e, seq: i + 1 }))), { lost: 1 }],
    ['a run whose turn was answered twice', (r) => void r.sessions[1]!.events.push({ seq: 4, type: 'turn.done', data: { turn: 1, replyTo: 'mr1', status: 'completed' } }), { duplicated: 1 }],
    ['a run whose session was not recorded', (r) => void r.sessions.splice(1, 1), { lost: 1 }],
    ['a repeat of a run refused', (r) => void r.runs[0]!.refusals.push('409 IDEMPOTENCY_KEY_REUSED'), { lost: 1 }],
    ['a write that succeeded though its worker was killed before the receipt and it was never sent again', (r) => void (r.serviceEffects[0]!.requests = 1), { lost: 1 }],
    ['a write kill with no tool call behind it', (r) => void r.writeKills.push({ key: idempotencyKeyOf('s1', 'tc-none') }), { lost: 1 }],
    ['a run with two webhook deliveries', (r) => void r.deliveries.push({ deliveryId: 'webhook-run-r1-again', runId: 'r1', attempts: 1, statuses: ['done'], badSignatures: 0 }), { duplicated: 1 }],
  ])('%s fails the run', (_what, doctor, expected) => {
    const record = cleanRecord();
    doctor(record);
    const verdict = verify(record);
    expect(verdict).toMatchObject({ lost: 0, duplicated: 0, duplicatedEffects: 0, ...expected });
    expect(verdict.problems.length).toBeGreaterThan(0);
  });
});

test('100 turns and runs while workers, APIs, Temporal, PostgreSQL and the model server are SIGKILLed, and a worker mid-write: nothing lost, nothing twice', async () => {
  const lines: string[] = [];
  const result = await runChaos({
    ...DEFAULTS,
    sessions: 10,
    turnsPerSession: 8,
    runClients: 2,
    runsPerClient: 10,
    seed: 7,
    // Clients that pause between turns and short gaps between kills, so that 100 turns see every kind of kill.
    thinkMs: [2_000, 5_000],
    killGapMs: [1_500, 3_000],
    turnTimeoutMs: 120_000,
    log: (line) => lines.push(line),
  });
  const report = `${summary(result)}\n${result.verdict.problems.join('\n')}\n${lines.join('\n')}`;
  const v = result.verdict;
  expect({ turns: v.turns, runs: v.runs, lost: v.lost, duplicated: v.duplicated, duplicatedEffects: v.duplicatedEffects, report }).toEqual({ turns: 100, runs: 20, lost: 0, duplicated: 0, duplicatedEffects: 0, report });
  expect(passed(result)).toBe(true);
  // The run did what it claims: every kind was killed, one worker between a write's request and its
  // receipt (the write was sent again, reached the service once and succeeded), and writes went
  // through approvals to the service.
  for (const kind of KINDS) expect({ kind, kills: result.killsByKind[kind] > 0, report }).toEqual({ kind, kills: true, report });
  expect({ writeKillsLanded: v.writeKillsLanded > 0, report }).toEqual({ writeKillsLanded: true, report });
  expect(v.approvals).toBeGreaterThan(0);
  expect(v.effects).toBeGreaterThan(0);
  expect(result.reconnects).toBeGreaterThan(0);
}, 240_000);
