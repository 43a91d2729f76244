import { Context } from '@temporalio/activity';
import { WorkflowUpdateStage, type WorkflowHandle } from '@temporalio/client';
import { ApplicationFailure, CancelledFailure } from '@temporalio/common';
import type { ExecuteToolInput, PlannedToolCall, RecordToolCallsInput, StreamReplyInput, StreamReplyResult, ToolOutcome, ReconcileEffectResult } from '../contracts/turn';
import { cancelTurnUpdate, decideApprovalUpdate, endSessionSignal, sessionStateQuery, switchAgentSignal, userMessageSignal } from '../contracts/workflow-messages';
import { LastActivityKey, SessionStatusKey } from '../contracts/search-attributes';
import { eventually, gate, READ_TOOL, sessionConfig, startWorkflowHarness, until, WRITE_TOOL, type Call, type SessionActivityDoubles } from './support/workflow-harness';

/**
 * The session workflow against the real Temporal server with typed activity doubles: each
 * test holds an activity at the point it wants (a gate) to force the race it is about.
 */

interface Script {
  streamReply?: (input: StreamReplyInput) => Promise<StreamReplyResult>;
  recordToolCalls?: (input: RecordToolCallsInput, planned: PlannedToolCall[]) => Promise<PlannedToolCall[]>;
  executeTool?: (input: ExecuteToolInput) => Promise<ToolOutcome>;
  reconcileEffect?: (input: { toolCallId: string }) => Promise<ReconcileEffectResult>;
}

const scripts = new Map<string, Script>();
/** Runs inside acceptMessages, to hold it where a test wants. */
const acceptHooks = new Map<string, () => Promise<void>>();
/** Sessions whose persistence writes (accept, refuse, settle, record failure) fail non-retryably. */
const failingWrites = new Set<string>();
/** Tool calls whose settle fails non-retryably. */
const failingSettles = new Set<string>();

async function write(name: Call['name'], input: { sessionId: string } & Record<string, unknown>): Promise<void> {
  record(name, input);
  if (failingWrites.has(input.sessionId)) {
    throw refusal('PERSISTENCE_INVALID', `${name} refused`);
  }
}
const calls = new Map<string, Call[]>();
const seen = (sessionId: string) => calls.get(sessionId) ?? [];
const named = (sessionId: string, name: Call['name']) => seen(sessionId).filter((c) => c.name === name).map((c) => c.input as Record<string, any>);

function record(name: Call['name'], input: { sessionId: string } & Record<string, unknown>) {
  const list = calls.get(input.sessionId) ?? [];
  list.push({ name, input });
  calls.set(input.sessionId, list);
}

const reply = (input: StreamReplyInput, toolCalls: StreamReplyResult['toolCalls'] = []): StreamReplyResult => ({
  messageId: `${input.sessionId}-t${input.turn}-r${input.step}`,
  finishReason: toolCalls.length ? 'tool_calls' : 'stop',
  usage: { inputTokens: 1, outputTokens: 1, costUsd: 0 },
  toolCalls,
});

function plan(input: RecordToolCallsInput): PlannedToolCall[] {
  return input.calls.map((c, i) => {
    const policy = input.policies.find((p) => p.name === c.name) ?? null;
    return { ...c, toolCallId: `tc-${input.turn}-${i}`, position: 1000 * input.step + i + 1, policy, digest: 'dg', expiresAt: policy?.requiresApproval ? new Date(input.nowMs + policy.approvalTtlMs).toISOString() : null };
  });
}

const doubles: SessionActivityDoubles = {
  async acceptMessages(input) {
    await acceptHooks.get(input.sessionId)?.();
    await write('acceptMessages', input);
  },
  async rejectMessages(input) {
    await write('rejectMessages', input);
  },
  async recordTurnFailure(input) {
    await write('recordTurnFailure', input);
  },
  async expireSession(input) {
    record('expireSession', input);
  },
  async settleToolCall(input) {
    if (failingSettles.has(input.toolCallId)) {
      throw refusal('PERSISTENCE_INVALID', 'settle refused');
    }
    await write('settleToolCall', input);
  },
  async streamReply(input) {
    record('streamReply', input);
    const script = scripts.get(input.sessionId)?.streamReply;
    return script ? script(input) : reply(input);
  },
  async recordToolCalls(input) {
    record('recordToolCalls', input);
    const planned = plan(input);
    const script = scripts.get(input.sessionId)?.recordToolCalls;
    return script ? script(input, planned) : planned;
  },
  async executeTool(input) {
    record('executeTool', input);
    const script = scripts.get(input.sessionId)?.executeTool;
    const outcome = script ? await script(input) : { status: 'succeeded' as const, result: 'ok' };
    record('executeTool', { ...input, finished: outcome.status });
    return outcome;
  },
  async requestBudgetApproval(input) {
    record('requestBudgetApproval', input);
    return { approvalId: `bud-${input.turn}-${input.pause}`, digest: 'bd', expiresAt: new Date(input.nowMs + input.ttlMs).toISOString() };
  },
  async requestEffectDecision(input) {
    record('requestEffectDecision', input);
    return { approvalId: `eff-${input.toolCallId}${input.round ? `-${input.round}` : ''}`, digest: 'ed', expiresAt: new Date(input.nowMs + input.ttlMs).toISOString() };
  },
  async closeUnknownEffect(input) {
    record('closeUnknownEffect', input);
  },
  async reconcileEffect(input) {
    record('reconcileEffect', input);
    return scripts.get(input.sessionId)?.reconcileEffect?.(input) ?? { kind: 'none' };
  },
};

let harness: Awaited<ReturnType<typeof startWorkflowHarness>>;
beforeAll(async () => {
  harness = await startWorkflowHarness(doubles);
});
afterAll(async () => {
  await harness?.stop();
});

const toolCall = (name: string) => ({ modelCallId: `m-${name}`, name, arguments: '{}' });

/** A non-retryable failure of the given type, as an activity throws it. */
const refusal = (type: string, message: string) => ApplicationFailure.create({ type, message, nonRetryable: true });

/** A session of its own, on the harness's worker. */
async function startSession(config = sessionConfig()) {
  const handle = await harness.start(config);
  return { handle, sessionId: handle.workflowId.slice(3) };
}

/** Sends a cancel and returns once the workflow has accepted it (its answer comes when the turn ends). */
function cancelAccepted(handle: WorkflowHandle, request: { turn?: number; requestedBy: string }) {
  return handle.startUpdate(cancelTurnUpdate, { args: [request], waitForStage: WorkflowUpdateStage.ACCEPTED });
}

/** recordToolCalls tells `started` it runs, then waits for `release`: the window before the workflow knows the calls. */
function holdRecording(started: { open: () => void }, release: { opened: Promise<void> }): Script['recordToolCalls'] {
  return async (_input, planned) => {
    started.open();
    await release.opened;
    return planned;
  };
}

/** Turn `turn`'s model call tells `started` it runs, then waits for `release`. */
function holdTurn(turn: number, started: { open: () => void }, release: { opened: Promise<void> }): Script['streamReply'] {
  return async (input) => {
    if (input.turn === turn) {
      started.open();
      await release.opened;
    }
    return reply(input);
  };
}

/**
 * A session whose model asks for `tools`, cancelled while the calls are being recorded (the reply
 * asking for them is stored, the workflow does not know them yet); returns the cancel's answer.
 */
async function cancelWhileRecording(...tools: string[]) {
  const recording = gate();
  const release = gate();
  const { handle, sessionId } = await startSession(sessionConfig());
  scripts.set(sessionId, { streamReply: askTools(...tools), recordToolCalls: holdRecording(recording, release) });
  await handle.signal(userMessageSignal, { messageId: 'm1' });
  await recording.opened;
  const cancel = await cancelAccepted(handle, { requestedBy: 'u1' });
  release.open();
  return { handle, sessionId, cancelled: await cancel.result() };
}

/** The first step asks for `tools`; the next answers in text. */
function askTools(...tools: string[]): Script['streamReply'] {
  return async (input) => reply(input, input.step === 1 ? tools.map(toolCall) : []);
}

test('a cancel that lands while the tool calls are being recorded still gives every call a result', async () => {
  const { handle, sessionId, cancelled } = await cancelWhileRecording('lookup', 'publish');
  expect(cancelled).toEqual({ cancelled: true, turn: 1 });
  await until(() => named(sessionId, 'recordTurnFailure').length === 1, 'the turn to end');
  const settled = named(sessionId, 'settleToolCall');
  expect(settled.map((s) => [s.toolCallId, s.status, s.ran]).sort()).toEqual([
    ['tc-1-0', 'cancelled', false],
    ['tc-1-1', 'cancelled', false],
  ]);
  expect(settled.find((s) => s.toolCallId === 'tc-1-1')!.approval).toEqual({ outcome: 'cancelled', decidedBy: null, feedback: null });
  expect(named(sessionId, 'executeTool')).toHaveLength(0);
  expect(named(sessionId, 'recordTurnFailure')[0]).toMatchObject({ status: 'cancelled', cancelledBy: 'u1', error: { code: 'TURN_CANCELLED' } });
  await handle.signal(endSessionSignal, { reason: 'deleted', requestedBy: 'u1' });
});

test('a write tool that has started is not cancelled: it finishes and the workflow records no second result', async () => {
  const started = gate();
  const finish = gate();
  const { handle, sessionId } = await startSession(sessionConfig());
  scripts.set(sessionId, {
    streamReply: askTools('save'),
    executeTool: async () => {
      started.open();
      await finish.opened;
      return { status: 'succeeded', result: 'saved' };
    },
  });
  await handle.signal(userMessageSignal, { messageId: 'm1' });
  await started.opened;
  const cancel = await cancelAccepted(handle, { turn: 1, requestedBy: 'u1' });
  finish.open();
  expect(await cancel.result()).toEqual({ cancelled: true, turn: 1 });
  await until(() => named(sessionId, 'recordTurnFailure').length === 1, 'the turn to end');
  expect(named(sessionId, 'executeTool').map((c) => c.finished)).toEqual([undefined, 'succeeded']);
  // The tool's own result stands: the workflow closed nothing on top of it.
  expect(named(sessionId, 'settleToolCall')).toHaveLength(0);
  expect(named(sessionId, 'recordTurnFailure')[0]).toMatchObject({ status: 'cancelled' });
  await handle.signal(endSessionSignal, { reason: 'deleted', requestedBy: 'u1' });
});

test('a read tool cancelled while running stops, and the turn ends only after the activity has recorded it', async () => {
  const started = gate();
  const { handle, sessionId } = await startSession(sessionConfig());
  scripts.set(sessionId, {
    streamReply: askTools('lookup'),
    executeTool: async () => {
      started.open();
      const ctx = Context.current();
      const beat = setInterval(() => ctx.heartbeat(), 100);
      try {
        await ctx.cancelled;
      } catch {
        // The real activity records `cancelled, ran: true` here, then reports the cancellation.
        record('settleToolCall', { sessionId, toolCallId: 'tc-1-0', status: 'cancelled', ran: true });
        throw new CancelledFailure('CANCELLED');
      } finally {
        clearInterval(beat);
      }
      return { status: 'succeeded' };
    },
  });
  await handle.signal(userMessageSignal, { messageId: 'm1' });
  await started.opened;
  await handle.executeUpdate(cancelTurnUpdate, { args: [{ requestedBy: 'u1' }] });
  await until(() => named(sessionId, 'recordTurnFailure').length === 1, 'the turn to end');
  const order = seen(sessionId).map((c) => `${c.name}${(c.input as { ran?: boolean }).ran === undefined ? '' : `:${String((c.input as { ran?: boolean }).ran)}`}`);
  // The activity's own record comes first; the workflow's close (ran: false) comes after and is a no-op in Postgres.
  expect(order.indexOf('settleToolCall:true')).toBeGreaterThan(-1);
  expect(order.indexOf('settleToolCall:true')).toBeLessThan(order.indexOf('recordTurnFailure'));
  await handle.signal(endSessionSignal, { reason: 'deleted', requestedBy: 'u1' });
});

test('a cancel naming a turn that has ended does not cancel the next one', async () => {
  const second = gate();
  const hold = gate();
  const { handle, sessionId } = await startSession(sessionConfig());
  scripts.set(sessionId, { streamReply: holdTurn(2, second, hold) });
  await handle.signal(userMessageSignal, { messageId: 'm1' });
  await handle.signal(userMessageSignal, { messageId: 'm2' });
  await second.opened;
  // Refused by the update's validator: nothing to cancel, and nothing written to history.
  await expect(handle.executeUpdate(cancelTurnUpdate, { args: [{ turn: 1, requestedBy: 'u1' }] })).rejects.toMatchObject({ cause: { type: 'NOTHING_TO_CANCEL' } });
  hold.open();
  await eventually(async () => (await handle.query(sessionStateQuery)).turnInProgress === null, 'turn 2 to finish');
  expect(named(sessionId, 'streamReply').map((s) => s.turn)).toEqual([1, 2]);
  expect(named(sessionId, 'recordTurnFailure')).toHaveLength(0);
  await expect(handle.executeUpdate(cancelTurnUpdate, { args: [{ requestedBy: 'u1' }] })).rejects.toMatchObject({ cause: { type: 'NOTHING_TO_CANCEL' } });
  const history = await handle.fetchHistory();
  expect(history.events!.filter((e) => e.workflowExecutionUpdateAcceptedEventAttributes)).toHaveLength(0);
  await handle.signal(endSessionSignal, { reason: 'deleted', requestedBy: 'u1' });
});

test('beyond the queue bound a message is refused with SESSION_BUSY, and a refused resend is told again', async () => {
  const hold = gate();
  const { handle, sessionId } = await startSession(sessionConfig({ maxQueuedMessages: 2 }));
  const running = gate();
  scripts.set(sessionId, { streamReply: holdTurn(1, running, hold) });
  await handle.signal(userMessageSignal, { messageId: 'm1' });
  await running.opened;
  for (const id of ['m2', 'm3', 'm4', 'm5']) await handle.signal(userMessageSignal, { messageId: id, clientMessageId: `c-${id}` });
  await handle.signal(userMessageSignal, { messageId: 'm5', clientMessageId: 'c-m5' });
  await until(() => named(sessionId, 'rejectMessages').flatMap((r) => r.messages).length === 3, 'three refusals');
  const refused = named(sessionId, 'rejectMessages').flatMap((r) => r.messages);
  expect(refused.map((m: { messageId: string; code: string }) => [m.messageId, m.code])).toEqual([
    ['m4', 'SESSION_BUSY'],
    ['m5', 'SESSION_BUSY'],
    ['m5', 'SESSION_BUSY'],
  ]);
  // Each refusal has its own number, so its event is written again for the resend.
  expect(new Set(refused.map((m: { refusal: number }) => m.refusal)).size).toBe(3);
  expect((await handle.query(sessionStateQuery)).queued.map((q) => q.messageId)).toEqual(['m2', 'm3']);
  hold.open();
  await until(() => named(sessionId, 'streamReply').length === 3, 'the queued turns');
  expect(named(sessionId, 'streamReply').map((s) => s.replyTo)).toEqual(['m1', 'm2', 'm3']);
  await handle.signal(endSessionSignal, { reason: 'deleted', requestedBy: 'u1' });
});

test.each([
  ['config.recentClientIdLimit 2: the oldest client ID is forgotten, the workflow takes its resend as new', 2, ['m1', 'm2', 'm3', 'm1', 'm4']],
  ['no recentClientIdLimit (a session started before it was carried): 1,000 remembered, the resend is a repeat', undefined, ['m1', 'm2', 'm3', 'm4']],
])('%s', async (_what, recentClientIdLimit, replies) => {
  const { handle, sessionId } = await startSession(sessionConfig(recentClientIdLimit === undefined ? {} : { recentClientIdLimit }));
  const answered = (n: number) => until(() => named(sessionId, 'streamReply').length === n, `${n} replies`);
  for (let i = 1; i <= 3; i++) {
    await handle.signal(userMessageSignal, { messageId: `m${i}`, clientMessageId: `c${i}` });
    await answered(i);
  }
  // Resends of answered messages: c3 is remembered under either limit, c1 only under the legacy
  // one. m4 comes after them, so once it is answered every resend has been decided.
  await handle.signal(userMessageSignal, { messageId: 'm3', clientMessageId: 'c3' });
  await handle.signal(userMessageSignal, { messageId: 'm1', clientMessageId: 'c1' });
  await handle.signal(userMessageSignal, { messageId: 'm4', clientMessageId: 'c4' });
  await eventually(async () => {
    const view = await handle.query(sessionStateQuery);
    return named(sessionId, 'streamReply').length >= replies.length && view.turnInProgress === null && view.queued.length === 0;
  }, 'the resends settled');
  expect(named(sessionId, 'streamReply').map((s) => s.replyTo)).toEqual(replies);
  await handle.signal(endSessionSignal, { reason: 'deleted', requestedBy: 'u1' });
});

test.each([
  ['within config.lastActivityResolutionMs, turns after the first upsert no search attributes', 60_000, 1],
  ['with a resolution of 0, every turn upserts its last activity', 0, 3],
])('%s', async (_what, lastActivityResolutionMs, upserts) => {
  const { handle, sessionId } = await startSession(sessionConfig({ lastActivityResolutionMs }));
  for (let i = 1; i <= 3; i++) {
    await handle.signal(userMessageSignal, { messageId: `m${i}` });
    await until(() => named(sessionId, 'streamReply').length === i, `reply ${i}`);
  }
  await eventually(async () => (await handle.query(sessionStateQuery)).turnInProgress === null, 'the last turn ended');
  const events = (await handle.fetchHistory()).events ?? [];
  // The patch marker's own upsert (TemporalChangeVersion, once per run) is not the session's.
  const upserted = events.filter((e) => e.upsertWorkflowSearchAttributesEventAttributes?.searchAttributes?.indexedFields?.[LastActivityKey.name]);
  expect(upserted).toHaveLength(upserts);
  expect((await handle.describe()).typedSearchAttributes.get(LastActivityKey)).toBeInstanceOf(Date);
  await handle.signal(endSessionSignal, { reason: 'deleted', requestedBy: 'u1' });
});

test('continue-as-new carries queued messages and pending refusals as IDs, and answers every one', async () => {
  const hold = gate();
  const running = gate();
  const { handle, sessionId } = await startSession(sessionConfig({ continueAsNewAfterEvents: 10, maxQueuedMessages: 3 }));
  scripts.set(sessionId, { streamReply: holdTurn(1, running, hold) });
  await handle.signal(userMessageSignal, { messageId: 'm1' });
  await running.opened;
  // A client other than ours may send more than the contract's fields: none of it may enter the state.
  const extra = { content: 'secret text' } as object;
  for (let i = 2; i <= 6; i++) await handle.signal(userMessageSignal, { messageId: `m${i}`, clientMessageId: `c${i}`, ...extra });
  hold.open();
  await eventually(async () => {
    const view = await handle.query(sessionStateQuery);
    return view.turnInProgress === null && view.queued.length === 0 && view.messageCount === 8;
  }, 'every queued turn answered, across continue-as-new');
  expect(named(sessionId, 'streamReply').map((s) => [s.replyTo, s.turn])).toEqual([
    ['m1', 1],
    ['m2', 2],
    ['m3', 3],
    ['m4', 4],
  ]);
  expect(named(sessionId, 'rejectMessages').flatMap((r) => r.messages).map((m: { messageId: string }) => m.messageId)).toEqual(['m5', 'm6']);
  const state = await handle.query(sessionStateQuery);
  expect(state.generation).toBeGreaterThan(0);
  expect(state.messageCount).toBe(8);
  // Every accepted message was accepted once, before or inside its own turn's reply.
  const acceptedIds = [...named(sessionId, 'acceptMessages').flatMap((a) => a.messages), ...named(sessionId, 'streamReply').flatMap((s) => s.accept)].map((m: { messageId: string }) => m.messageId);
  expect(acceptedIds.sort()).toEqual(['m1', 'm2', 'm3', 'm4']);
  // A continued run starts from IDs: its input is small and holds no message content.
  const started = (await harness.client.workflow.getHandle(handle.workflowId).fetchHistory()).events![0]!.workflowExecutionStartedEventAttributes!;
  expect(started.continuedExecutionRunId).toBeTruthy();
  const input = Buffer.concat(started.input!.payloads!.map((p) => Buffer.from(p.data!))).toString();
  expect(input.length).toBeLessThan(4096);
  expect(input).not.toContain('content');
  expect(input).not.toContain('secret');
  await handle.signal(endSessionSignal, { reason: 'deleted', requestedBy: 'u1' });
});

test('a bug in workflow code fails the workflow task; the turn is not ended with a model error', async () => {
  const { handle, sessionId } = await startSession(sessionConfig());
  // A reply that breaks the contract: the workflow's code throws a TypeError reading it.
  scripts.set(sessionId, { streamReply: async (input) => ({ ...reply(input), toolCalls: undefined as never }) });
  await handle.signal(userMessageSignal, { messageId: 'm1' });
  await until(() => named(sessionId, 'streamReply').length >= 1, 'the model call');
  await eventually(async () => (await handle.fetchHistory()).events?.some((e) => e.workflowTaskFailedEventAttributes) ?? false, 'a failed workflow task');
  expect(named(sessionId, 'recordTurnFailure')).toHaveLength(0);
  await handle.terminate('test done');
});

test('deleting a session ends its workflow: the turn stops, approvals are cancelled, search attributes say deleted', async () => {
  const { handle, sessionId } = await startSession(sessionConfig());
  scripts.set(sessionId, { streamReply: askTools('publish') });
  await handle.signal(userMessageSignal, { messageId: 'm1' });
  await eventually(async () => (await handle.query(sessionStateQuery)).pendingApprovals.length === 1, 'the approval request');
  await handle.signal(endSessionSignal, { reason: 'deleted', requestedBy: 'owner' });
  expect(await handle.result()).toEqual({ status: 'deleted' });
  expect(named(sessionId, 'settleToolCall')[0]).toMatchObject({ status: 'cancelled', approval: { outcome: 'cancelled' } });
  expect(named(sessionId, 'recordTurnFailure')[0]).toMatchObject({ status: 'cancelled', cancelledBy: 'owner' });
  const description = await handle.describe();
  expect(description.typedSearchAttributes.get(SessionStatusKey)).toBe('deleted');
  expect(named(sessionId, 'expireSession')).toHaveLength(0);
});

test('a failed write that retrying cannot fix ends the turn with INTERNAL_ERROR instead of retrying forever', async () => {
  const { handle, sessionId } = await startSession(sessionConfig());
  scripts.set(sessionId, {
    streamReply: async () => {
      throw refusal('PERSISTENCE_INVALID', 'write refused');
    },
  });
  await handle.signal(userMessageSignal, { messageId: 'm1' });
  await until(() => named(sessionId, 'recordTurnFailure').length === 1, 'the turn to fail');
  expect(named(sessionId, 'recordTurnFailure')[0]).toMatchObject({ status: 'failed', error: { code: 'INTERNAL_ERROR', recoverable: true } });
  expect(named(sessionId, 'streamReply')).toHaveLength(1);
  await handle.signal(endSessionSignal, { reason: 'deleted', requestedBy: 'u1' });
});

test('turns faster than the idle time-out share one idle timer (not one each), and the session still expires a whole time-out after its last turn', async () => {
  const idleTtlMs = 1_500;
  const { handle, sessionId } = await startSession(sessionConfig({ idleTtlMs }));
  const repliedAt: number[] = [];
  scripts.set(sessionId, { streamReply: async (input) => (repliedAt.push(Date.now()), reply(input)) });
  for (let i = 1; i <= 6; i++) {
    await handle.signal(userMessageSignal, { messageId: `m${i}` });
    await until(() => repliedAt.length === i, `reply ${i}`);
    await new Promise((r) => setTimeout(r, 200)); // spread over more than one time-out
  }
  await expect(handle.result()).resolves.toEqual({ status: 'expired' });
  const expiredAfterMs = Date.now() - repliedAt.at(-1)!;
  const events = (await handle.fetchHistory()).events ?? [];
  const timers = events.filter((e) => e.timerStartedEventAttributes).length;
  // Six waits between turns: the old code started six timers; one clock re-armed once or twice now.
  expect(timers).toBeLessThanOrEqual(3);
  expect(expiredAfterMs).toBeGreaterThanOrEqual(idleTtlMs);
  expect(expiredAfterMs).toBeLessThan(idleTtlMs + 3_000);
  expect(named(sessionId, 'expireSession')).toEqual([{ sessionId, idleMs: idleTtlMs }]);
});

test('an idle session expires once, with its refusals written', async () => {
  const { handle, sessionId } = await startSession(sessionConfig({ idleTtlMs: 300 }));
  await expect(handle.result()).resolves.toEqual({ status: 'expired' });
  expect(named(sessionId, 'expireSession')).toEqual([{ sessionId, idleMs: 300 }]);
  await expect(handle.signal(userMessageSignal, { messageId: 'late' })).rejects.toThrow();
});

test('a write tool whose turn was cancelled before it started never starts, and is recorded as not run', async () => {
  const { handle, sessionId, cancelled } = await cancelWhileRecording('save');
  expect(cancelled).toEqual({ cancelled: true, turn: 1 });
  expect(named(sessionId, 'executeTool')).toHaveLength(0);
  expect(named(sessionId, 'settleToolCall')).toEqual([expect.objectContaining({ name: 'save', status: 'cancelled', ran: false })]);
  await handle.signal(endSessionSignal, { reason: 'deleted', requestedBy: 'u1' });
});

test('a deletion that lands while the recorder accepts messages at a turn boundary ends the workflow cleanly', async () => {
  const accepting = gate();
  const finishAccepting = gate();
  const running = gate();
  const hold = gate();
  const { handle, sessionId } = await startSession(sessionConfig());
  scripts.set(sessionId, { streamReply: holdTurn(1, running, hold) });
  acceptHooks.set(sessionId, async () => {
    accepting.open();
    await finishAccepting.opened;
  });
  await handle.signal(userMessageSignal, { messageId: 'm1' });
  await running.opened;
  await handle.signal(userMessageSignal, { messageId: 'm2' });
  await accepting.opened;
  // Turn 1 ends while m2's acceptance is still being written; then the session is deleted.
  hold.open();
  await eventually(async () => (await handle.query(sessionStateQuery)).turnInProgress === null, 'turn 1 to end');
  await handle.signal(endSessionSignal, { reason: 'deleted', requestedBy: 'owner' });
  finishAccepting.open();
  expect(await handle.result()).toEqual({ status: 'deleted' });
  expect(named(sessionId, 'streamReply').map((c) => c.replyTo)).toEqual(['m1']);
});

test('a message the store does not know, or a write that cannot be made, fails its turn but never the session', async () => {
  const { handle, sessionId } = await startSession(sessionConfig());
  scripts.set(sessionId, {
    streamReply: async (input) => {
      if (input.replyTo === 'unknown') throw refusal('PERSISTENCE_INVALID', 'write refused');
      return reply(input);
    },
  });
  // Every write of the failed turn's cleanup fails too.
  failingWrites.add(sessionId);
  await handle.signal(userMessageSignal, { messageId: 'unknown' });
  await until(() => named(sessionId, 'recordTurnFailure').length === 1, 'the failed turn to try to record its failure');
  failingWrites.delete(sessionId);
  await handle.signal(userMessageSignal, { messageId: 'm2' });
  await eventually(async () => (await handle.query(sessionStateQuery)).messageCount === 3, 'the next turn to be answered');
  expect(named(sessionId, 'streamReply').map((c) => c.replyTo)).toEqual(['unknown', 'm2']);
  const { status } = await handle.describe();
  expect(status.name).toBe('RUNNING');
  await handle.signal(endSessionSignal, { reason: 'deleted', requestedBy: 'u1' });
});

test('a write tool whose attempt fails after a cancel is not tried again', async () => {
  const started = gate();
  const fail = gate();
  const { handle, sessionId } = await startSession(sessionConfig({ agent: { tools: [{ ...WRITE_TOOL, maxAttempts: 3 }] } }));
  scripts.set(sessionId, {
    streamReply: askTools('save'),
    executeTool: async () => {
      started.open();
      await fail.opened;
      throw new Error('the service answered 503');
    },
  });
  await handle.signal(userMessageSignal, { messageId: 'm1' });
  await started.opened;
  const cancel = await cancelAccepted(handle, { requestedBy: 'u1' });
  fail.open();
  expect(await cancel.result()).toEqual({ cancelled: true, turn: 1 });
  // One attempt only: the cancel stopped the retries the policy would have made.
  expect(named(sessionId, 'executeTool').filter((c) => c.finished === undefined)).toHaveLength(1);
  // Scheduled, so the close does not claim it never ran.
  expect(named(sessionId, 'settleToolCall')).toEqual([expect.not.objectContaining({ ran: false })]);
  await handle.signal(endSessionSignal, { reason: 'deleted', requestedBy: 'u1' });
});

test('one tool call whose close cannot be written does not leave the others without a result', async () => {
  failingSettles.add('tc-1-0');
  const { handle, sessionId, cancelled } = await cancelWhileRecording('publish', 'publish');
  expect(cancelled).toEqual({ cancelled: true, turn: 1 });
  expect(named(sessionId, 'settleToolCall').map((c) => c.toolCallId)).toEqual(['tc-1-1']);
  expect(named(sessionId, 'recordTurnFailure')).toHaveLength(1);
  failingSettles.delete('tc-1-0');
  await handle.signal(endSessionSignal, { reason: 'deleted', requestedBy: 'u1' });
});

test('an activity refusing its input (a contract the workflow broke) fails the workflow task, not the session', async () => {
  const { handle, sessionId } = await startSession(sessionConfig());
  scripts.set(sessionId, {
    streamReply: async () => {
      throw refusal('ACTIVITY_INPUT_INVALID', 'input breaks the activity contract');
    },
  });
  await handle.signal(userMessageSignal, { messageId: 'm1' });
  await eventually(async () => (await handle.fetchHistory()).events?.some((e) => e.workflowTaskFailedEventAttributes) ?? false, 'a failed workflow task');
  expect(named(sessionId, 'recordTurnFailure')).toHaveLength(0);
  expect((await handle.describe()).status.name).toBe('RUNNING');
  await handle.terminate('test done');
});

test('a switch of agent version during a turn applies from the next turn: no turn changes version halfway', async () => {
  const running = gate();
  const hold = gate();
  const { handle, sessionId } = await startSession(sessionConfig({ agent: { version: 2, model: 'model-v2' } }));
  // Turn 1 asks for a tool in step 1 and is held in step 2, after the switch arrived.
  scripts.set(sessionId, {
    streamReply: async (input) => {
      if (input.turn === 1 && input.step === 2) {
        running.open();
        await hold.opened;
      }
      return reply(input, input.turn === 1 && input.step === 1 ? [toolCall(READ_TOOL.name)] : []);
    },
  });
  await handle.signal(userMessageSignal, { messageId: 'm1' });
  await running.opened;
  const v1 = sessionConfig({ agent: { version: 1, model: 'model-v1', busyPolicy: 'reject' } }).agent;
  await handle.signal(switchAgentSignal, { agent: v1, reason: 'version 2 was rolled back', requestedBy: 'health-check' });
  // Another agent's version is ignored.
  await handle.signal(switchAgentSignal, { agent: { ...v1, id: 'other', version: 9 }, reason: 'wrong agent', requestedBy: 'x' });
  expect((await handle.query(sessionStateQuery)).agent).toEqual({ id: 'a', version: 2, busyPolicy: 'queue' });
  hold.open();
  await eventually(async () => (await handle.query(sessionStateQuery)).agent.version === 1, 'the switch after turn 1');
  await handle.signal(userMessageSignal, { messageId: 'm2' });
  await eventually(async () => named(sessionId, 'streamReply').some((s) => s.turn === 2), 'turn 2');
  expect(named(sessionId, 'streamReply').map((s) => [s.turn, s.step, s.agent.version, s.model])).toEqual([
    [1, 1, 2, 'model-v2'],
    [1, 2, 2, 'model-v2'],
    [2, 1, 1, 'model-v1'],
  ]);
  expect((await handle.query(sessionStateQuery)).agent).toEqual({ id: 'a', version: 1, busyPolicy: 'reject' });
  await handle.signal(endSessionSignal, { reason: 'deleted', requestedBy: 'u1' });
});

describe('budgets', () => {
  const budgeted = (budget: Record<string, number>) => sessionConfig({ agent: { budget, approvalTtlMs: 60_000 } });
  const decide = (handle: WorkflowHandle, toolCallId: string, approved: boolean) =>
    handle.executeUpdate(decideApprovalUpdate, { args: [{ toolCallId, approved, decidedBy: 'approver', digest: 'bd' }] });

  test('a turn over its tool-call budget pauses for an approver; approved, it goes on with the limit raised', async () => {
    const { handle, sessionId } = await startSession(budgeted({ maxToolCalls: 1 }));
    scripts.set(sessionId, { streamReply: askTools(READ_TOOL.name, READ_TOOL.name) });
    await handle.signal(userMessageSignal, { messageId: 'm1' });
    await eventually(async () => (await handle.query(sessionStateQuery)).pendingApprovals.length === 1, 'the budget approval');
    // Paused before any tool ran.
    expect(named(sessionId, 'executeTool')).toHaveLength(0);
    expect(named(sessionId, 'requestBudgetApproval')).toEqual([expect.objectContaining({ turn: 1, step: 1, pause: 1, overruns: [{ limit: 'toolCalls', used: 2, max: 1 }], ttlMs: 60_000 })]);
    expect(await decide(handle, 'bud-1-1', true)).toEqual({ toolCallId: 'bud-1-1', outcome: 'approved' });
    await eventually(async () => (await handle.query(sessionStateQuery)).turnInProgress === null, 'the turn to finish');
    expect(named(sessionId, 'executeTool').filter((c) => c.finished)).toHaveLength(2);
    expect(named(sessionId, 'settleToolCall').find((c) => c.toolCallId === 'bud-1-1')).toMatchObject({ name: 'budget', approval: { outcome: 'approved', decidedBy: 'approver' } });
    expect(named(sessionId, 'recordTurnFailure')).toHaveLength(0);
    // The raise (2 allowed now) is the turn's; the next turn starts from the agent's limit again.
    await handle.signal(userMessageSignal, { messageId: 'm2' });
    await eventually(async () => named(sessionId, 'requestBudgetApproval').length === 2, 'the second turn\'s pause');
    expect(named(sessionId, 'requestBudgetApproval')[1]).toMatchObject({ turn: 2, pause: 1, overruns: [{ limit: 'toolCalls', used: 2, max: 1 }] });
    await handle.signal(endSessionSignal, { reason: 'deleted', requestedBy: 'u1' });
  });

  test('rejected, the turn ends with BUDGET_EXCEEDED and its calls are closed without running', async () => {
    const { handle, sessionId } = await startSession(budgeted({ maxTokens: 1 }));
    scripts.set(sessionId, { streamReply: askTools(READ_TOOL.name) });
    await handle.signal(userMessageSignal, { messageId: 'm1' });
    await eventually(async () => (await handle.query(sessionStateQuery)).pendingApprovals.length === 1, 'the budget approval');
    expect(named(sessionId, 'requestBudgetApproval')[0]).toMatchObject({ overruns: [{ limit: 'tokens', used: 2, max: 1 }] });
    await decide(handle, 'bud-1-1', false);
    await eventually(async () => named(sessionId, 'recordTurnFailure').length === 1, 'the turn failure');
    expect(named(sessionId, 'recordTurnFailure')[0]).toMatchObject({ status: 'failed', error: { code: 'BUDGET_EXCEEDED', recoverable: false } });
    expect(named(sessionId, 'executeTool')).toHaveLength(0);
    expect(named(sessionId, 'settleToolCall').find((c) => c.toolCallId === 'tc-1-0')).toMatchObject({ status: 'failed' });
    await handle.signal(endSessionSignal, { reason: 'deleted', requestedBy: 'u1' });
  });

  test('a message\'s own budget can only tighten the agent\'s, field by field', async () => {
    const { handle, sessionId } = await startSession(budgeted({ maxToolCalls: 2, maxTokens: 1000 }));
    scripts.set(sessionId, { streamReply: askTools(READ_TOOL.name, READ_TOOL.name) });
    // A run cannot raise the agent's limit: 2 tool calls are within the agent's 2, and 5 changes nothing.
    await handle.signal(userMessageSignal, { messageId: 'm1', budget: { maxToolCalls: 5 } });
    await eventually(async () => (await handle.query(sessionStateQuery)).turnInProgress === null && named(sessionId, 'streamReply').length === 2, 'turn 1');
    expect(named(sessionId, 'requestBudgetApproval')).toHaveLength(0);
    await handle.signal(userMessageSignal, { messageId: 'm2', budget: { maxTokens: 1, maxToolCalls: 1 } });
    await eventually(async () => named(sessionId, 'requestBudgetApproval').length === 1, 'turn 2\'s pause');
    // Both tightened: both over, and paused before the calls were recorded.
    expect(named(sessionId, 'requestBudgetApproval')[0]).toMatchObject({ overruns: [{ limit: 'tokens', max: 1 }, { limit: 'toolCalls', max: 1 }] });
    expect(named(sessionId, 'recordToolCalls').filter((c) => c.turn === 2)).toHaveLength(0);
    await handle.signal(endSessionSignal, { reason: 'deleted', requestedBy: 'u1' });
    await eventually(async () => named(sessionId, 'settleToolCall').some((c) => c.toolCallId === 'bud-2-1' && c.approval?.outcome === 'cancelled'), 'the budget approval closed as cancelled');
  });

  test('a budget approval nobody decides expires: the turn ends BUDGET_EXCEEDED; a cancel while paused closes it cancelled', async () => {
    const { handle, sessionId } = await startSession(sessionConfig({ agent: { budget: { maxTokens: 1 }, approvalTtlMs: 1_000 } }));
    scripts.set(sessionId, { streamReply: askTools(READ_TOOL.name) });
    await handle.signal(userMessageSignal, { messageId: 'm1' });
    await eventually(async () => named(sessionId, 'recordTurnFailure').length === 1, 'the expiry to end the turn', 15_000);
    expect(named(sessionId, 'recordTurnFailure')[0]).toMatchObject({ error: { code: 'BUDGET_EXCEEDED', message: expect.stringContaining('in time') } });
    expect(named(sessionId, 'settleToolCall').find((c) => c.toolCallId === 'bud-1-1')).toMatchObject({ approval: { outcome: 'expired' } });

    await handle.signal(userMessageSignal, { messageId: 'm2' });
    await eventually(async () => (await handle.query(sessionStateQuery)).pendingApprovals.some((a) => a.toolCallId === 'bud-2-1'), 'turn 2\'s pause');
    expect(await handle.executeUpdate(cancelTurnUpdate, { args: [{ requestedBy: 'u1' }] })).toEqual({ cancelled: true, turn: 2 });
    expect(named(sessionId, 'settleToolCall').find((c) => c.toolCallId === 'bud-2-1')).toMatchObject({ approval: { outcome: 'cancelled' } });
    // The reply's call was recorded and closed, so the conversation stays well formed.
    expect(named(sessionId, 'settleToolCall').find((c) => c.toolCallId === 'tc-2-0')).toMatchObject({ status: 'cancelled', ran: false });
    await handle.signal(endSessionSignal, { reason: 'deleted', requestedBy: 'u1' });
  });
});

describe('effects whose outcome is unknown', () => {
  const decide = (handle: WorkflowHandle, toolCallId: string, approved: boolean) =>
    handle.executeUpdate(decideApprovalUpdate, { args: [{ toolCallId, approved, decidedBy: 'approver', digest: 'ed' }] });

  /** executeTool answers outcome_unknown until a person forces it. */
  const unknownUntilForced: Script['executeTool'] = async (input) => (input.force ? { status: 'succeeded', result: 'sent again' } : { status: 'outcome_unknown' });

  test('the last attempt of a write fails and the ledger says it may have acted: a person is asked; an approved re-send that fails the same way asks again', async () => {
    const { handle, sessionId } = await startSession(sessionConfig({ agent: { tools: [WRITE_TOOL] } }));
    let forced = 0;
    scripts.set(sessionId, {
      streamReply: askTools(WRITE_TOOL.name),
      // Every attempt times out (refused non-retryably here, as the last attempt's failure reaches the workflow).
      executeTool: async (input) => {
        if (input.force) forced += 1;
        if (input.force && forced === 2) return { status: 'succeeded', result: 'sent at last' };
        throw refusal('TOOL_TIMEOUT', 'timed out');
      },
      reconcileEffect: async () => ({ kind: 'unknown' }),
    });
    await handle.signal(userMessageSignal, { messageId: 'm1' });
    await eventually(async () => (await handle.query(sessionStateQuery)).pendingApprovals.length === 1, 'the first question');
    expect(named(sessionId, 'reconcileEffect')).toHaveLength(1);
    await decide(handle, 'eff-tc-1-0', true);
    await eventually(async () => named(sessionId, 'requestEffectDecision').length === 2, 'the second question');
    expect(named(sessionId, 'requestEffectDecision')[1]).toMatchObject({ round: 2 });
    // One approval, one re-send: the failed forced attempt was not retried on its own.
    expect(forced).toBe(1);
    await decide(handle, 'eff-tc-1-0-2', true);
    await eventually(async () => (await handle.query(sessionStateQuery)).turnInProgress === null, 'the turn to finish');
    expect(forced).toBe(2);
    // The re-send's result stands: the call is not closed as failed.
    expect(named(sessionId, 'settleToolCall').filter((c) => c.toolCallId === 'tc-1-0' && c.status === 'failed')).toEqual([]);
    expect(named(sessionId, 'executeTool').filter((c) => c.finished).map((c) => c.finished)).toEqual(['succeeded']);
    expect(named(sessionId, 'recordTurnFailure')).toHaveLength(0);
    await handle.signal(endSessionSignal, { reason: 'deleted', requestedBy: 'u1' });
  });

  test('approved, the call is sent again (forced) and its result stands; rejected, it is marked done; neither runs on a guess', async () => {
    for (const approved of [true, false]) {
      const { handle, sessionId } = await startSession(sessionConfig({ agent: { tools: [WRITE_TOOL] } }));
      scripts.set(sessionId, { streamReply: askTools(WRITE_TOOL.name), executeTool: unknownUntilForced });
      await handle.signal(userMessageSignal, { messageId: 'm1' });
      await eventually(async () => (await handle.query(sessionStateQuery)).pendingApprovals.length === 1, 'the decision to ask for');
      const asked = named(sessionId, 'requestEffectDecision');
      expect(asked).toEqual([expect.objectContaining({ toolCallId: 'tc-1-0', name: WRITE_TOOL.name, turn: 1, step: 1 })]);
      expect(named(sessionId, 'executeTool').filter((c) => c.finished)).toHaveLength(1);
      await decide(handle, 'eff-tc-1-0', approved);
      await eventually(async () => (await handle.query(sessionStateQuery)).turnInProgress === null, 'the turn to finish');
      const runs = named(sessionId, 'executeTool').filter((c) => c.finished);
      expect(runs.map((c) => [c.force ?? false, c.finished])).toEqual(approved ? [[false, 'outcome_unknown'], [true, 'succeeded']] : [[false, 'outcome_unknown']]);
      expect(named(sessionId, 'closeUnknownEffect')).toEqual(approved ? [] : [expect.objectContaining({ toolCallId: 'tc-1-0', decision: 'marked_done', decidedBy: 'approver' })]);
      expect(named(sessionId, 'settleToolCall').find((c) => c.toolCallId === 'eff-tc-1-0')).toMatchObject({ approval: { outcome: approved ? 'approved' : 'rejected' } });
      expect(named(sessionId, 'recordTurnFailure')).toHaveLength(0);
      await handle.signal(endSessionSignal, { reason: 'deleted', requestedBy: 'u1' });
    }
  });
});
