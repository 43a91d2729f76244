import path from 'node:path';
import { randomUUID } from 'node:crypto';
import { HttpAgent, type AgentSubscriber } from '@ag-ui/client';
import { EventType, type BaseEvent, type Interrupt, type Message, type ResumeEntry } from '@ag-ui/core';
import { AguiApprovalAnswer } from '../contracts/agui';
import { ApprovalBody } from '../contracts/rest';
import { AguiEventMapper } from '../api/agui/event-mapper';
import { DEV_TOKEN, eventually, startStack, type Stack } from './support/stack';

/**
 * The AG-UI endpoint (docs/agui.md), driven by the real @ag-ui/client HttpAgent, whose pipeline
 * verifies every event it receives (verifyEvents: ordering rules, one run at a time) and applies
 * them to its messages.
 */

let stack: Stack;
beforeAll(async () => {
  stack = await startStack({ env: { KEEL_AGENTS_FILE: path.join(__dirname, 'fixtures/agents.yaml') } });
});
afterAll(async () => {
  await stack?.stop();
});
afterEach(() => jest.restoreAllMocks());

const newId = () => randomUUID();
const note = (title: string) => ({ name: 'create_note', arguments: JSON.stringify({ title, body: `body of ${title}` }) });

function agentFor(threadId: string, opts: { agentId?: string; token?: string } = {}) {
  return new HttpAgent({ url: `${stack.base}/api/v1/agui/${opts.agentId ?? 'default'}`, headers: { authorization: `Bearer ${opts.token ?? DEV_TOKEN}` }, threadId });
}

/** One run: the events the client accepted (after its own verification), and what runAgent answered. */
async function run(agent: HttpAgent, opts: { text?: string; resume?: ResumeEntry[]; runId?: string } = {}) {
  if (opts.text !== undefined) agent.addMessage({ id: newId(), role: 'user', content: opts.text });
  const events: BaseEvent[] = [];
  const subscriber: AgentSubscriber = { onEvent: ({ event }) => void events.push(event) };
  const result = await agent.runAgent({ ...(opts.runId ? { runId: opts.runId } : {}), ...(opts.resume ? { resume: opts.resume } : {}) }, subscriber);
  const types = events.map((e) => e.type);
  const last = events[events.length - 1] as BaseEvent & Record<string, any>;
  return { events, types, last, result };
}

const assistantText = (messages: Message[]) =>
  messages
    .filter((m) => m.role === 'assistant' && typeof m.content === 'string' && m.content.length > 0)
    .map((m) => m.content as string);
const ofType = (events: BaseEvent[], type: EventType) => events.filter((e) => e.type === type) as (BaseEvent & Record<string, any>)[];

test('a plain turn streams text in a model step and finishes with usage; a retried run is the same message', async () => {
  const threadId = newId();
  const agent = agentFor(threadId);
  const runId = newId();
  const first = await run(agent, { text: 'hello there', runId });
  expect(first.types[0]).toBe(EventType.RUN_STARTED);
  expect(first.types).toEqual(expect.arrayContaining([EventType.STEP_STARTED, EventType.TEXT_MESSAGE_START, EventType.TEXT_MESSAGE_CONTENT, EventType.TEXT_MESSAGE_END, EventType.STEP_FINISHED]));
  expect(first.last).toMatchObject({ type: EventType.RUN_FINISHED, threadId, runId, outcome: { type: 'success' } });
  expect(first.last.usage).toEqual([{ inputTokens: expect.any(Number), outputTokens: 4, totalTokens: expect.any(Number) }]);
  expect(assistantText(agent.messages)).toEqual(['You said: hello there.']);
  const sessionId = first.last.result.sessionId as string;

  // The same run again (a retry after a lost answer): nothing is sent twice, the reply is streamed again in place of the old one.
  const again = await run(agent, { runId });
  expect(again.last).toMatchObject({ type: EventType.RUN_FINISHED, outcome: { type: 'success' }, result: { sessionId, turn: 1 } });
  expect(ofType(again.events, EventType.MESSAGES_SNAPSHOT)).toHaveLength(1);
  expect(assistantText(agent.messages)).toEqual(['You said: hello there.']);
  const { rows } = await stack.db.query(`SELECT role FROM messages WHERE session_id = $1 ORDER BY created_at`, [sessionId]);
  expect(rows.map((r) => r.role)).toEqual(['user', 'assistant']);
});

test('a tool call: TOOL_CALL_START/ARGS/END, its TOOL_CALL_RESULT, then the reply', async () => {
  const agent = agentFor(newId());
  const { events, last } = await run(agent, { text: 'What is 15 + 27?' });
  expect(last).toMatchObject({ type: EventType.RUN_FINISHED, outcome: { type: 'success' } });
  const [start] = ofType(events, EventType.TOOL_CALL_START);
  expect(start).toMatchObject({ toolCallName: 'calculator', toolCallId: expect.any(String) });
  expect(JSON.parse(ofType(events, EventType.TOOL_CALL_ARGS).map((e) => e.delta).join(''))).toEqual({ expression: '15 + 27' });
  expect(ofType(events, EventType.TOOL_CALL_END)).toEqual([expect.objectContaining({ toolCallId: start!.toolCallId })]);
  const [result] = ofType(events, EventType.TOOL_CALL_RESULT);
  expect(result).toMatchObject({ toolCallId: start!.toolCallId, content: JSON.stringify({ result: 42 }) });
  expect(events.indexOf(result!)).toBeGreaterThan(events.indexOf(start!));
  expect(assistantText(agent.messages).at(-1)).toContain('42');
  // Two model steps: the one that asked for the tool and the one that answered.
  expect(ofType(events, EventType.STEP_STARTED)).toHaveLength(2);
});

test('a pending approval ends the run with an interrupt; forged resumes grant nothing; the resume runs the write once; a second resume is refused', async () => {
  const sessionId = await stack.createSession();
  stack.model.script(sessionId, { toolCalls: [note('agui note')] });
  const agent = agentFor(sessionId);
  const paused = await run(agent, { text: 'save a note' });
  expect(paused.last.outcome.type).toBe('interrupt');
  const interrupts = paused.last.outcome.interrupts as Interrupt[];
  const { rows: calls } = await stack.db.query(`SELECT id, digest, expires_at FROM tool_calls WHERE session_id = $1`, [sessionId]);
  expect(calls).toHaveLength(1);
  expect(interrupts).toEqual([
    expect.objectContaining({
      reason: 'tool_call',
      toolCallId: calls[0].id,
      expiresAt: (calls[0].expires_at as Date).toISOString(),
      responseSchema: expect.objectContaining({ type: 'object', required: ['approved'], properties: expect.objectContaining({ approved: { type: 'boolean' } }) }),
    }),
  ]);
  expect(interrupts[0]!.id).toContain(calls[0].digest);
  expect(ofType(paused.events, EventType.TOOL_CALL_START)).toEqual([expect.objectContaining({ toolCallId: calls[0].id, toolCallName: 'create_note' })]);
  expect(agent.pendingInterrupts.map((i) => i.id)).toEqual([interrupts[0]!.id]);

  // Forged answers, from a client that does not hold the interrupt: a wrong digest, an unknown ID.
  const forger = agentFor(sessionId);
  const wrongDigest = await run(forger, { resume: [{ interruptId: `${calls[0].id}.${'0'.repeat(64)}`, status: 'resolved', payload: { approved: true } }] });
  expect(wrongDigest.last).toMatchObject({ type: EventType.RUN_ERROR, code: 'APPROVAL_DIGEST_MISMATCH' });
  const unknown = await run(forger, { resume: [{ interruptId: 'not-an-interrupt', status: 'resolved', payload: { approved: true } }] });
  expect(unknown.last).toMatchObject({ type: EventType.RUN_ERROR, code: 'APPROVAL_NOT_FOUND' });
  const pending = await stack.db.query(`SELECT status FROM tool_calls WHERE id = $1`, [calls[0].id]);
  expect(pending.rows[0].status).toBe('pending_approval');

  const resumed = await run(agent, { resume: [{ interruptId: interrupts[0]!.id, status: 'resolved', payload: { approved: true, feedback: 'go ahead' } }] });
  expect(resumed.last).toMatchObject({ type: EventType.RUN_FINISHED, outcome: { type: 'success' } });
  const [result] = ofType(resumed.events, EventType.TOOL_CALL_RESULT);
  expect(result!.toolCallId).toBe(calls[0].id);
  expect(JSON.parse(result!.content)).toMatchObject({ applied: 'now' });
  expect(agent.pendingInterrupts).toEqual([]);
  // The tool ran once, decided by the caller with its feedback.
  const notes = await stack.db.query(`SELECT title FROM notes WHERE session_id = $1`, [sessionId]);
  expect(notes.rows).toEqual([{ title: 'agui note' }]);
  const decided = await stack.db.query(`SELECT status, decided_by, feedback FROM tool_calls WHERE id = $1`, [calls[0].id]);
  expect(decided.rows[0]).toEqual({ status: 'succeeded', decided_by: 'dev', feedback: 'go ahead' });

  const twice = await run(agent, { resume: [{ interruptId: interrupts[0]!.id, status: 'resolved', payload: { approved: true } }] });
  expect(twice.last).toMatchObject({ type: EventType.RUN_ERROR, code: 'APPROVAL_ALREADY_DECIDED' });
  expect((await stack.db.query(`SELECT count(*)::int AS n FROM notes WHERE session_id = $1`, [sessionId])).rows[0].n).toBe(1);
}, 30_000);

test('an expired interrupt answers RUN_ERROR APPROVAL_EXPIRED; cancelling it keeps the thread usable', async () => {
  const sessionId = await stack.createSession({ agentId: 'quick' });
  stack.model.script(sessionId, { toolCalls: [note('too late')] });
  const agent = agentFor(sessionId, { agentId: 'quick' });
  const paused = await run(agent, { text: 'save a note' });
  const [interrupt] = paused.last.outcome.interrupts as Interrupt[];
  await eventually(async () => (await stack.db.query(`SELECT 1 FROM tool_calls WHERE id = $1 AND status = 'expired'`, [interrupt!.toolCallId])).rowCount, 10_000, 'the approval to expire');
  const approve: ResumeEntry = { interruptId: interrupt!.id, status: 'resolved', payload: { approved: true } };

  // The client itself refuses to answer an interrupt past its expiresAt; another client's answer gets the server's refusal.
  await expect(agent.runAgent({ resume: [approve] })).rejects.toThrow(/expired/);
  const late = await run(agentFor(sessionId, { agentId: 'quick' }), { resume: [approve] });
  expect(late.last).toMatchObject({ type: EventType.RUN_ERROR, code: 'APPROVAL_EXPIRED' });
  expect((await stack.db.query(`SELECT count(*)::int AS n FROM notes WHERE session_id = $1`, [sessionId])).rows[0].n).toBe(0);

  // The client cancels the interrupt (its own rule for an expired one) with its next message; the thread goes on.
  const next = await run(agent, { text: 'hello again', resume: [{ interruptId: interrupt!.id, status: 'cancelled' }] });
  expect(next.last).toMatchObject({ type: EventType.RUN_FINISHED, outcome: { type: 'success' } });
  expect(agent.pendingInterrupts).toEqual([]);
  expect(assistantText(agent.messages).at(-1)).toContain('You said: hello again.');
  const plain = await run(agent, { text: 'and once more' });
  expect(plain.last).toMatchObject({ type: EventType.RUN_FINISHED, outcome: { type: 'success' } });
}, 30_000);

test('two threads are two sessions with their own history; another user\'s thread ID never reaches the first user\'s session', async () => {
  const one = agentFor(newId());
  const two = agentFor(newId());
  const a = await run(one, { text: 'first of one' });
  const b = await run(two, { text: 'first of two' });
  expect(a.last.result.sessionId).not.toBe(b.last.result.sessionId);
  await run(one, { text: 'second of one' });
  expect(assistantText(one.messages).at(-1)).toContain('Earlier you said: "first of one"');
  expect(assistantText(two.messages)).toEqual(['You said: first of two.']);

  // Another user names the first user's session as its thread: it gets a session of its own.
  const otherToken = await stack.issueToken('someone-else');
  const firstSession = a.last.result.sessionId as string;
  const stranger = agentFor(firstSession, { token: otherToken });
  const c = await run(stranger, { text: 'who is here' });
  expect(c.last.type).toBe(EventType.RUN_FINISHED);
  expect(c.last.result.sessionId).not.toBe(firstSession);
  expect(assistantText(stranger.messages)).toEqual(['You said: who is here.']);
  const { rows } = await stack.db.query(`SELECT count(*)::int AS n FROM messages WHERE session_id = $1`, [firstSession]);
  expect(rows[0].n).toBe(4);
  const owner = await stack.db.query(`SELECT owner_id FROM sessions WHERE id = $1`, [c.last.result.sessionId]);
  expect(owner.rows[0].owner_id).toBe('someone-else');
});

test('a retried model stream: the failed attempt\'s text is ended and retracted by a snapshot, the new attempt streams a new message', async () => {
  const sessionId = await stack.createSession();
  const reply = Array.from({ length: 40 }, (_, i) => `word${i}`).join(' ');
  stack.model.script(sessionId, { reply, tokenDelayMs: 30, failMidStreamNext: 1 });
  const agent = agentFor(sessionId);
  const { events, last } = await run(agent, { text: 'tell me something long' });
  expect(last).toMatchObject({ type: EventType.RUN_FINISHED, outcome: { type: 'success' } });
  const starts = ofType(events, EventType.TEXT_MESSAGE_START);
  expect(starts).toHaveLength(2);
  const [failed, retried] = starts.map((s) => s.messageId as string);
  // The race this test is about happened: text of the failed attempt reached the client first.
  expect(ofType(events, EventType.TEXT_MESSAGE_CONTENT).filter((e) => e.messageId === failed).length).toBeGreaterThan(0);
  const snapshot = ofType(events, EventType.MESSAGES_SNAPSHOT);
  expect(snapshot).toHaveLength(1);
  expect((snapshot[0]!.messages as Message[]).map((m) => m.id)).not.toContain(failed);
  expect(events.indexOf(snapshot[0]!)).toBeLessThan(events.indexOf(starts[1]!));
  expect(agent.messages.map((m) => m.id)).not.toContain(failed);
  expect(agent.messages.find((m) => m.id === retried)?.content).toBe(reply);
  expect(assistantText(agent.messages)).toEqual([reply]);
}, 30_000);

test('refused before the run: no user message and nothing to resume, a thread of another agent', async () => {
  // HttpAgent logs the HTTP failures it rethrows.
  jest.spyOn(console, 'error').mockImplementation(() => undefined);
  const empty = agentFor(newId());
  await expect(empty.runAgent()).rejects.toThrow(/HTTP 422/);
  const sessionId = await stack.createSession();
  await expect(run(agentFor(sessionId, { agentId: 'quick' }), { text: 'hi' })).rejects.toThrow(/HTTP 422.*another agent/);
  const res = await stack.request('POST', '/api/v1/agui/default', { threadId: 't', runId: 'r', messages: [{ id: 'm', role: 'user', content: 'hi' }] }, { authorization: '' });
  expect(res.status).toBe(401);
});

test('the client example of docs/agui.md: a note saved after the approval its interrupt asks for', async () => {
  const out: string[] = [];
  const agent = new HttpAgent({ url: `${stack.base}/api/v1/agui/default`, headers: { authorization: `Bearer ${DEV_TOKEN}` }, threadId: randomUUID() });
  agent.addMessage({ id: randomUUID(), role: 'user', content: 'Save a note: buy milk' });
  const errors: BaseEvent[] = [];
  await agent.runAgent({}, { onTextMessageContentEvent: ({ event }) => void out.push(event.delta), onRunErrorEvent: ({ event }) => void errors.push(event) });
  expect(agent.pendingInterrupts).toHaveLength(1);
  for (const interrupt of agent.pendingInterrupts) {
    expect(interrupt.metadata).toMatchObject({ name: 'create_note', arguments: expect.objectContaining({ title: expect.any(String) }) });
    await agent.runAgent(
      { resume: [{ interruptId: interrupt.id, status: 'resolved', payload: { approved: true } }] },
      { onToolCallResultEvent: ({ event }) => void out.push(`result ${String(event.content)}`), onTextMessageContentEvent: ({ event }) => void out.push(event.delta), onRunErrorEvent: ({ event }) => void errors.push(event) },
    );
  }
  expect(out.join('')).toContain('result {');
  expect(errors).toEqual([]);
  expect(agent.pendingInterrupts).toEqual([]);
  expect(agent.messages.at(-1)).toMatchObject({ role: 'assistant', content: expect.stringContaining('Tool results') });
}, 30_000);

/** A raw AG-UI POST (for what HttpAgent itself would refuse to send): the HTTP status and the SSE events. */
async function post(agentId: string, body: Record<string, unknown>, opts: { token?: string; signal?: AbortSignal } = {}) {
  const res = await fetch(`${stack.base}/api/v1/agui/${agentId}`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', accept: 'text/event-stream', authorization: `Bearer ${opts.token ?? DEV_TOKEN}` },
    body: JSON.stringify({ runId: newId(), state: {}, tools: [], context: [], forwardedProps: {}, messages: [], ...body }),
    ...(opts.signal ? { signal: opts.signal } : {}),
  });
  const text = await res.text();
  if (!res.headers.get('content-type')?.includes('text/event-stream')) return { status: res.status, body: JSON.parse(text || 'null'), events: [] as any[] };
  const events = text
    .split('\n\n')
    .map((frame) => frame.split('\n').find((l) => l.startsWith('data:')))
    .filter((l): l is string => l !== undefined)
    .map((l) => JSON.parse(l.slice(5)) as Record<string, any>);
  return { status: res.status, body: undefined, events };
}

/** A run through HttpAgent, with its RUN_ERROR events collected explicitly. */
async function runCollecting(agent: HttpAgent, opts: { text?: string; resume?: ResumeEntry[] } = {}) {
  const errors: BaseEvent[] = [];
  if (opts.text !== undefined) agent.addMessage({ id: newId(), role: 'user', content: opts.text });
  const events: BaseEvent[] = [];
  await agent.runAgent(opts.resume ? { resume: opts.resume } : {}, { onEvent: ({ event }) => void events.push(event), onRunErrorEvent: ({ event }) => void errors.push(event) });
  return { events, errors, last: events[events.length - 1] as BaseEvent & Record<string, any> };
}

const sessionsOf = async (owner: string) => (await stack.db.query(`SELECT count(*)::int AS n FROM sessions WHERE owner_id = $1`, [owner])).rows[0].n as number;
const statusOf = async (toolCallId: string) => (await stack.db.query(`SELECT status FROM tool_calls WHERE id = $1`, [toolCallId])).rows[0].status as string;

test('approving and sending a new message in one run streams the approved turn to its end, then the new message\'s turn', async () => {
  const sessionId = await stack.createSession();
  stack.model.script(sessionId, { toolCalls: [note('both in one')] });
  const agent = agentFor(sessionId);
  const paused = await runCollecting(agent, { text: 'save a note' });
  const [interrupt] = paused.last.outcome.interrupts as Interrupt[];
  expect(await statusOf(interrupt!.toolCallId!)).toBe('pending_approval');

  const both = await runCollecting(agent, { text: 'and now something else', resume: [{ interruptId: interrupt!.id, status: 'resolved', payload: { approved: true } }] });
  expect(both.errors).toEqual([]);
  expect(both.last).toMatchObject({ type: EventType.RUN_FINISHED, outcome: { type: 'success' }, result: { sessionId, turn: 2 } });
  // Turn 1's continuation: the tool's result and its reply; then turn 2's reply, in that order.
  const [result] = ofType(both.events, EventType.TOOL_CALL_RESULT);
  expect(result).toMatchObject({ toolCallId: interrupt!.toolCallId });
  const texts = ofType(both.events, EventType.TEXT_MESSAGE_CONTENT).map((e) => e.delta as string).join('');
  expect(texts).toContain('Tool results');
  expect(texts.indexOf('Tool results')).toBeLessThan(texts.indexOf('and now something else'));
  expect(both.events.indexOf(result!)).toBeLessThan(both.events.findIndex((e) => e.type === EventType.TEXT_MESSAGE_CONTENT && (e as any).delta.includes('and now')));
  const { rows } = await stack.db.query(`SELECT turn, role FROM messages WHERE session_id = $1 AND role IN ('user', 'assistant') ORDER BY created_at`, [sessionId]);
  expect(rows.filter((r) => r.role === 'user').map((r) => r.turn)).toEqual([1, 2]);
  expect((await stack.db.query(`SELECT count(*)::int AS n FROM notes WHERE session_id = $1`, [sessionId])).rows[0].n).toBe(1);
}, 30_000);

test('parallel interrupts: several at once; a bad entry or a duplicate decides none; the pending refusal names them; all answered, the turn goes on', async () => {
  const sessionId = await stack.createSession({ agentId: 'parallel' });
  stack.model.script(sessionId, { toolCalls: [note('first'), note('second')] });
  const agent = agentFor(sessionId, { agentId: 'parallel' });
  const paused = await runCollecting(agent, { text: 'save two notes' });
  const interrupts = paused.last.outcome.interrupts as Interrupt[];
  expect(interrupts).toHaveLength(2);
  expect(interrupts.map((i) => i.reason)).toEqual(['tool_call', 'tool_call']);
  const [a, b] = interrupts as [Interrupt, Interrupt];
  const approve = (i: Interrupt, id = i.id): ResumeEntry => ({ interruptId: id, status: 'resolved', payload: { approved: true } });

  // One good entry and one with a forged digest; a duplicated entry; too many entries: nothing is decided.
  const bad = await post('parallel', { threadId: sessionId, resume: [approve(a), approve(b, `${b.toolCallId}.${'0'.repeat(64)}`)] });
  expect(bad.events.at(-1)).toMatchObject({ type: EventType.RUN_ERROR, code: 'APPROVAL_DIGEST_MISMATCH' });
  const dup = await post('parallel', { threadId: sessionId, resume: [approve(a), approve(a), approve(b)] });
  expect(dup.events.at(-1)).toMatchObject({ type: EventType.RUN_ERROR, code: 'VALIDATION_ERROR' });
  const many = await post('parallel', { threadId: sessionId, resume: [approve(a), ...Array.from({ length: 32 }, (_, i) => approve(b, `call_${i}.${'0'.repeat(64)}`))] });
  expect(many.events.at(-1)).toMatchObject({ type: EventType.RUN_ERROR, code: 'VALIDATION_ERROR', metadata: { details: [{ field: 'resume' }] } });
  expect([await statusOf(a.toolCallId!), await statusOf(b.toolCallId!)]).toEqual(['pending_approval', 'pending_approval']);

  // A new message that leaves one interrupt open is refused before anything is decided, naming the open ones.
  const partial = await post('parallel', { threadId: sessionId, messages: [{ id: newId(), role: 'user', content: 'next' }], resume: [approve(a)] });
  expect(partial.events.at(-1)).toMatchObject({ type: EventType.RUN_ERROR, code: 'APPROVAL_PENDING', metadata: { details: { interrupts: [expect.objectContaining({ id: b.id })] } } });
  expect(await statusOf(a.toolCallId!)).toBe('pending_approval');

  const resumed = await runCollecting(agent, { resume: [approve(a), { interruptId: b.id, status: 'cancelled' }] });
  expect(resumed.errors).toEqual([]);
  expect(resumed.last).toMatchObject({ type: EventType.RUN_FINISHED, outcome: { type: 'success' } });
  expect(ofType(resumed.events, EventType.TOOL_CALL_RESULT).map((e) => e.toolCallId).sort()).toEqual([a.toolCallId, b.toolCallId].sort());
  expect([await statusOf(a.toolCallId!), await statusOf(b.toolCallId!)]).toEqual(['succeeded', 'rejected']);
}, 30_000);

test('forged resumes naming a call of another session of the same user, or of another user, grant nothing', async () => {
  const victim = await stack.createSession();
  stack.model.script(victim, { toolCalls: [note('not yours')] });
  const paused = await runCollecting(agentFor(victim), { text: 'save a note' });
  const [interrupt] = paused.last.outcome.interrupts as Interrupt[];
  const entry: ResumeEntry = { interruptId: interrupt!.id, status: 'resolved', payload: { approved: true } };

  const mine = await runCollecting(agentFor(newId()), { text: 'hello' });
  expect(mine.errors).toEqual([]);
  const sameUser = await post('default', { threadId: mine.last.result.sessionId, resume: [entry] });
  expect(sameUser.events.at(-1)).toMatchObject({ type: EventType.RUN_ERROR, code: 'APPROVAL_NOT_FOUND' });

  const otherToken = await stack.issueToken('forger');
  const theirs = await runCollecting(agentFor(newId(), { token: otherToken }), { text: 'hello' });
  const otherUser = await post('default', { threadId: theirs.last.result.sessionId, resume: [entry] }, { token: otherToken });
  expect(otherUser.events.at(-1)).toMatchObject({ type: EventType.RUN_ERROR, code: 'APPROVAL_NOT_FOUND' });
  // Naming the victim's session as the thread does not reach it either: that thread is new to them, and a resume never creates one.
  const named = await post('default', { threadId: victim, resume: [entry] }, { token: otherToken });
  expect(named).toMatchObject({ status: 404, body: { error: { code: 'APPROVAL_NOT_FOUND' } } });
  expect(await statusOf(interrupt!.toolCallId!)).toBe('pending_approval');
}, 30_000);

test('refused with no session created: a resume on an unknown thread, a thread ID that is no ID; a reused message ID with other content', async () => {
  const token = await stack.issueToken('thread-checker');
  const resume = [{ interruptId: `call_x.${'0'.repeat(64)}`, status: 'resolved', payload: { approved: true } }];
  const unknown = await post('default', { threadId: newId(), resume }, { token });
  expect(unknown).toMatchObject({ status: 404, body: { error: { code: 'APPROVAL_NOT_FOUND' } } });
  for (const threadId of ['nul\u0000here', 'x'.repeat(200)]) {
    const res = await post('default', { threadId, messages: [{ id: newId(), role: 'user', content: 'hi' }] }, { token });
    expect(res).toMatchObject({ status: 422, body: { error: { code: 'VALIDATION_ERROR' } } });
  }
  expect(await sessionsOf('thread-checker')).toBe(0);

  const threadId = newId();
  const messageId = newId();
  const first = await post('default', { threadId, messages: [{ id: messageId, role: 'user', content: 'original' }] }, { token });
  expect(first.events.at(-1)).toMatchObject({ type: EventType.RUN_FINISHED, outcome: { type: 'success' } });
  const reused = await post('default', { threadId, messages: [{ id: messageId, role: 'user', content: 'something else' }] }, { token });
  expect(reused.events.at(-1)).toMatchObject({ type: EventType.RUN_ERROR, code: 'IDEMPOTENCY_KEY_REUSED' });
  const { rows } = await stack.db.query(`SELECT content FROM messages WHERE session_id = $1 AND role = 'user'`, [first.events.at(-1)!.result.sessionId]);
  expect(rows).toEqual([{ content: 'original' }]);
});

test('a history over 64 KB is accepted; re-running an old message streams that turn only', async () => {
  const agent = agentFor(newId());
  const firstId = newId();
  agent.addMessage({ id: firstId, role: 'user', content: 'the first one' });
  const first = await runCollecting(agent);
  await runCollecting(agent, { text: 'the second one' });
  const padding: Message[] = Array.from({ length: 40 }, (_, i) => ({ id: `old-${i}`, role: 'assistant', content: 'x'.repeat(2000) }));
  const big = await post('default', { threadId: agent.threadId, messages: [...padding, { id: firstId, role: 'user', content: 'the first one' }] });
  expect(big.status).toBe(200);
  expect(big.events.at(-1)).toMatchObject({ type: EventType.RUN_FINISHED, outcome: { type: 'success' }, result: { sessionId: first.last.result.sessionId, turn: 1 } });
  const text = big.events.filter((e) => e.type === EventType.TEXT_MESSAGE_CONTENT).map((e) => e.delta).join('');
  expect(text).toBe('You said: the first one.');
});

test('a budget pause is a `budget` interrupt with no tool call; approved, the turn goes on', async () => {
  const agent = agentFor(newId(), { agentId: 'budgeted' });
  const paused = await runCollecting(agent, { text: 'What is 15 + 27?' });
  const [interrupt] = paused.last.outcome.interrupts as Interrupt[];
  expect(interrupt).toMatchObject({ reason: 'budget', metadata: { name: 'budget' } });
  expect(interrupt).not.toHaveProperty('toolCallId');
  const resumed = await runCollecting(agent, { resume: [{ interruptId: interrupt!.id, status: 'resolved', payload: { approved: true } }] });
  expect(resumed.errors).toEqual([]);
  expect(resumed.last).toMatchObject({ type: EventType.RUN_FINISHED, outcome: { type: 'success' } });
  expect(ofType(resumed.events, EventType.TOOL_CALL_RESULT)[0]!.content).toContain('42');
}, 30_000);

test('a client that goes away mid-run: the turn completes, and a later run on the thread works', async () => {
  const sessionId = await stack.createSession();
  const reply = Array.from({ length: 30 }, (_, i) => `w${i}`).join(' ');
  stack.model.script(sessionId, { reply, tokenDelayMs: 20 });
  const abort = new AbortController();
  const going = post('default', { threadId: sessionId, messages: [{ id: newId(), role: 'user', content: 'talk slowly' }] }, { signal: abort.signal });
  await eventually(async () => (await stack.db.query(`SELECT 1 FROM session_events WHERE session_id = $1 AND type = 'stream.start'`, [sessionId])).rowCount, 10_000, 'the stream to start');
  abort.abort();
  await expect(going).rejects.toThrow();
  await eventually(async () => (await stack.request('GET', `/api/v1/sessions/${sessionId}/messages`)).body.messages?.some((m: { role: string; content: string }) => m.role === 'assistant' && m.content === reply), 10_000, 'the turn to complete');
  stack.model.script(sessionId, {});
  const later = await runCollecting(agentFor(sessionId), { text: 'still there?' });
  expect(later.errors).toEqual([]);
  expect(later.last).toMatchObject({ type: EventType.RUN_FINISHED, outcome: { type: 'success' }, result: { turn: 2 } });
}, 30_000);

test('the mapper skips a delta that starts past the text it has (stream.end brings the whole text)', () => {
  const emitted: (BaseEvent & Record<string, any>)[] = [];
  const mapper = new AguiEventMapper({ threadId: 't', runId: 'r', messages: [], tools: [], context: [], state: {}, forwardedProps: {} }, (e) => void emitted.push(e as any));
  const at = { sessionId: 's', createdAt: new Date().toISOString() };
  mapper.event({ ...at, seq: 1, type: 'stream.start', data: { streamId: 'st', attempt: 1, turn: 1, replyTo: 'm' } } as any);
  mapper.delta({ streamId: 'st', attempt: 1, offset: 0, text: 'Hello' } as any);
  mapper.delta({ streamId: 'st', attempt: 1, offset: 9, text: 'lost' } as any);
  mapper.delta({ streamId: 'st', attempt: 1, offset: 3, text: 'lo there' } as any);
  const content = () => emitted.filter((e) => e.type === EventType.TEXT_MESSAGE_CONTENT).map((e) => e.delta).join('');
  expect(content()).toBe('Hello there');
  mapper.event({ ...at, seq: 2, type: 'stream.end', data: { streamId: 'st', attempt: 1, content: 'Hello there, all', messageId: 'x', finishReason: 'stop', usage: { inputTokens: 1, outputTokens: 1 } } } as any);
  expect(content()).toBe('Hello there, all');
});

test('the resume payload schema (zod v4, for responseSchema) accepts and refuses what the REST approval body does', () => {
  const samples: unknown[] = [
    { approved: true },
    { approved: false, feedback: 'no' },
    { approved: true, feedback: 'x'.repeat(2000) },
    { approved: true, feedback: 'x'.repeat(2001) },
    { approved: 'yes' },
    { feedback: 'only' },
    { approved: true, extra: 1 },
    null,
    'approved',
  ];
  expect(samples.map((s) => AguiApprovalAnswer.safeParse(s).success)).toEqual(samples.map((s) => ApprovalBody.safeParse(s).success));
  expect(samples.map((s) => AguiApprovalAnswer.safeParse(s).success)).toEqual([true, true, true, false, false, false, false, false, false]);
});

test("a threadId that is the caller's own deleted session answers 404: a deleted conversation never starts over", async () => {
  const token = await stack.issueToken('deleter');
  const created = await stack.request('POST', '/api/v1/sessions', {}, { authorization: `Bearer ${token}` });
  expect(created.status).toBe(201);
  const deleted = await stack.request('DELETE', `/api/v1/sessions/${created.body.id}`, undefined, { authorization: `Bearer ${token}` });
  expect(deleted.status).toBe(204);
  const res = await post('default', { threadId: created.body.id, messages: [{ id: newId(), role: 'user', content: 'hello again' }] }, { token });
  expect(res).toMatchObject({ status: 404, body: { error: { code: 'SESSION_NOT_FOUND' } } });
  expect(await sessionsOf('deleter')).toBe(1);
});
