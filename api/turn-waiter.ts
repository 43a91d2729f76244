import type { DurableEvent, StreamDeltaData } from '../contracts/events';
import { ErrorCode, KeelError, type ErrorBody } from '../contracts/errors';
import type { ChatReply, ChatToolCall } from '../contracts/rest';
import { toolEventsOfTurn, turnOf, turnOutcome } from '../db/events';
import type { PendingApproval } from '../db/tool-calls';
import type { ApiDeps } from './deps';

export interface TurnCallbacks {
  delta?(text: string): void;
  /** Every delta of the turn's streams, with its stream, attempt and offset. */
  streamDelta?(delta: StreamDeltaData): void;
  restart?(attempt: number): void;
  /** The turn's tool.call, approval.required, approval.resolved and tool.result events, as they happen. */
  toolEvent?(event: DurableEvent): void;
  /**
   * Every durable event of the turn, in log order: message.accepted, route and agent events,
   * stream.start/stream.end, the tool and approval events, an error of the turn, turn.done.
   */
  event?(event: DurableEvent): void;
}

export type { PendingApproval } from '../db/tool-calls';

export interface TurnWait {
  sessionId: string;
  /** The message whose turn is awaited. */
  replyTo: string;
  /**
   * The turn, when it is already known (following a turn that started earlier). Its tool and
   * approval events so far are read from the log, so a pause is recognised at once.
   */
  turn?: number;
  /** Replay the session's events after this seq before going live (undefined: live only). */
  after?: number;
  /** Characters of the reply in progress the caller already has (with `after`). */
  streamOffset?: number;
  /**
   * Sends the message, or decides approvals (then it returns the tool calls it decided, so the
   * wait does not take them for pending before their approval.resolved arrives). Called once the
   * wait is subscribed, and not at all when the turn is already over.
   */
  send(): Promise<void | { decided: string[] }>;
  callbacks?: TurnCallbacks;
  timeoutMs: number;
  /** Bytes the caller's client has not taken yet (a streaming response); over KEEL_MAX_BUFFERED_BYTES for too long ends the wait with CONSUMER_TOO_SLOW. */
  backlog?(): number;
  /**
   * End the wait as soon as the turn can go no further without a person: an approval is pending
   * and no tool of the turn is running. `sequential(agentId)` says whether an agent's calls run in
   * order (a call behind a pending approval then waits too); agentId is the router member that
   * took the turn, undefined for the session's own agent.
   */
  pauseOnApproval?: { sequential(agentId: string | undefined): boolean };
  /** Aborted when the caller stops listening (its client went away): the wait ends at once with SERVICE_UNAVAILABLE; the turn goes on. */
  signal?: AbortSignal;
}

/** How a followed turn ended, or stopped for a person. */
export type TurnEnd = { kind: 'done'; done: DurableEvent } | { kind: 'paused'; turn: number; approvals: PendingApproval[]; lastSeq: number };

const TOOL_EVENTS = new Set(['tool.call', 'approval.required', 'approval.resolved', 'tool.result']);
/** Refusals of a message: written by the session for each refused send, with no turn. */
const REFUSALS = new Set<string>(['SESSION_BUSY', 'SESSION_EXPIRED']);
const TIMED_OUT = Symbol('timed out');

/**
 * What a turn's tool and approval events say about it. Kept as sets, so events read from the log
 * and live ones may be applied in any order.
 */
class TurnToolState {
  /** Tool calls in the order the model asked for them (tool.call seq), with whether each waits for a person. */
  private readonly calls = new Map<string, { seq: number; requiresApproval: boolean }>();
  private readonly results = new Set<string>();
  private readonly required = new Map<string, PendingApproval>();
  private readonly resolved = new Set<string>();
  agent: string | undefined;

  apply(event: DurableEvent): void {
    const data = event.data as Record<string, unknown>;
    const id = data.toolCallId as string;
    if (event.type === 'tool.call') this.calls.set(id, { seq: event.seq, requiresApproval: data.requiresApproval === true });
    else if (event.type === 'tool.result') this.results.add(id);
    else if (event.type === 'approval.required') this.required.set(id, data as unknown as PendingApproval);
    else if (event.type === 'approval.resolved') this.resolved.add(id);
    else if (event.type === 'agent.started') this.agent = data.agent as string;
  }

  /** Decided by this caller, before the event that says so. */
  decided(toolCallIds: string[]): void {
    for (const id of toolCallIds) this.resolved.add(id);
  }

  pending(): PendingApproval[] {
    return [...this.required.values()].filter((a) => !this.resolved.has(a.toolCallId));
  }

  /** An approval is pending and nothing of the turn runs: in order, the first open call waits for it; else every open call does. */
  paused(sequential: boolean): PendingApproval[] | null {
    const pending = this.pending();
    if (pending.length === 0) return null;
    const waiting = new Set(pending.map((a) => a.toolCallId));
    const open = [...this.calls.entries()].filter(([id]) => !this.results.has(id)).sort((a, b) => a[1].seq - b[1].seq);
    const stalled = sequential ? open.length === 0 || waiting.has(open[0]![0]) : open.every(([id]) => waiting.has(id));
    return stalled ? pending : null;
  }
}

/**
 * Follows the session's events for the turn that answers one message: its deltas and events
 * while it runs, then turn.done, or the pause on an approval when asked to stop there. A refusal
 * of the message, a stopped feed or a wait that runs out is thrown: APPROVAL_PENDING when the
 * turn waits on a human, CHAT_TIMEOUT otherwise; the turn goes on.
 */
export async function followTurn(deps: ApiDeps, wait: TurnWait): Promise<TurnEnd> {
  const { sessionId, replyTo, callbacks = {} } = wait;
  let settle!: (outcome: TurnEnd | KeelError | typeof TIMED_OUT) => void;
  let settled = false;
  const outcome = new Promise<TurnEnd | KeelError | typeof TIMED_OUT>((resolve) => (settle = (value) => ((settled = true), resolve(value))));
  /** Events up to this seq were delivered before the message was sent: a refusal among them answers an earlier send. */
  let sentAfter = Number.MAX_SAFE_INTEGER;
  let turn = wait.turn;
  let lastSeq = 0;
  const ourStreams = new Set<string>();
  const ourToolCalls = new Set<string>();
  const tools = new TurnToolState();
  /**
   * False while the log is replayed and until the message is sent: a replayed approval.required
   * is not pending when its approval.resolved is further on (or was decided by send()).
   */
  let live = false;
  const checkPause = () => {
    if (!live || !wait.pauseOnApproval || turn === undefined || settled) return;
    const approvals = tools.paused(wait.pauseOnApproval.sequential(tools.agent));
    if (approvals) settle({ kind: 'paused', turn, approvals, lastSeq });
  };
  // A model step's calls and approvals are written in one transaction but handed on one by one:
  // the pause is judged once the events at hand are applied (a parallel call's approval.required
  // may follow the first one's), not after each.
  let pauseCheck: NodeJS.Immediate | undefined;
  const checkPauseSoon = () => {
    pauseCheck ??= setImmediate(() => {
      pauseCheck = undefined;
      checkPause();
    });
  };

  const belongs = (event: DurableEvent, data: Record<string, unknown>): boolean => {
    if (data.replyTo === replyTo && (event.type === 'message.accepted' || event.type === 'stream.start' || event.type === 'turn.done' || (event.type === 'error' && data.turn !== undefined))) return true;
    if (event.type === 'message.accepted') return data.messageId === replyTo;
    if (turn === undefined) return false;
    if (event.type === 'stream.end') return ourStreams.has(`${data.streamId}#${data.attempt}`);
    if (TOOL_EVENTS.has(event.type)) return data.turn === turn || ourToolCalls.has(data.toolCallId as string);
    return data.turn === turn && event.type !== 'turn.done';
  };

  const onEvent = (event: DurableEvent) => {
    if (settled) return;
    lastSeq = event.seq;
    const data = event.data as Record<string, unknown>;
    if (event.type === 'error' && data.replyTo === replyTo && data.turn === undefined && REFUSALS.has(data.code as string)) {
      if (event.seq > sentAfter) settle(new KeelError(data.code as ErrorCode, data.message as string));
      return;
    }
    if (event.type === 'message.accepted' && data.messageId === replyTo) turn = data.turn as number;
    if (event.type === 'stream.start' && data.replyTo === replyTo) turn = data.turn as number;
    if (!belongs(event, data)) return;
    if (event.type === 'stream.start') {
      ourStreams.add(`${data.streamId}#${data.attempt}`);
      if ((data.attempt as number) > 1) callbacks.restart?.(data.attempt as number);
    }
    if (event.type === 'tool.call') ourToolCalls.add(data.toolCallId as string);
    callbacks.event?.(event);
    if (TOOL_EVENTS.has(event.type)) callbacks.toolEvent?.(event);
    if (event.type === 'turn.done') return settle({ kind: 'done', done: event });
    tools.apply(event);
    checkPauseSoon();
  };
  const onDelta = (delta: StreamDeltaData) => {
    if (settled || !ourStreams.has(`${delta.streamId}#${delta.attempt}`)) return;
    callbacks.streamDelta?.(delta);
    callbacks.delta?.(delta.text);
  };

  // A known turn's calls so far: a replayed tool.result (it names no turn) must be known as the turn's.
  const seed = async () => {
    if (turn === undefined) return;
    for (const event of await toolEventsOfTurn(deps.pool, sessionId, turn)) {
      if (event.type === 'tool.call') ourToolCalls.add((event.data as { toolCallId: string }).toolCallId);
      tools.apply(event);
    }
  };
  if (wait.turn !== undefined) await seed();
  const subscription = deps.feed.open(
    { sessionId, ...(wait.after === undefined ? {} : { after: wait.after }), ...(wait.streamOffset === undefined ? {} : { streamOffset: wait.streamOffset }) },
    { event: onEvent, delta: onDelta, backlog: wait.backlog ?? (() => 0), stopped: (error) => settle(error) },
  );
  const timer = setTimeout(() => settle(TIMED_OUT), wait.timeoutMs);
  const onAbort = () => settle(new KeelError('SERVICE_UNAVAILABLE', 'The wait was stopped: its client went away'));
  if (wait.signal?.aborted) onAbort();
  wait.signal?.addEventListener('abort', onAbort, { once: true });
  try {
    // A replayed turn.done (or a stop) may settle the wait before the replay is over: no need to read the rest.
    await Promise.race([subscription.ready, outcome]);
    const after = subscription.lastSeq();
    if (lastSeq === 0) lastSeq = after;
    // A repeated request for a turn that already ended is answered from the log, with nothing sent (and no message budget spent).
    const done = settled ? undefined : (await turnOutcome(deps.pool, sessionId, replyTo)).find((e) => e.type === 'turn.done');
    if (done) {
      // Ended before this wait's cursor: answered from the log. Ended after it: the feed hands it on, with the turn's events before it.
      if (done.seq <= subscription.lastSeq()) settle({ kind: 'done', done });
    } else if (!settled) {
      // What the turn did up to the live cursor: its calls and approvals (applying one twice changes nothing).
      if (wait.pauseOnApproval) await seed();
      sentAfter = subscription.lastSeq();
      const sent = await wait.send();
      if (sent) tools.decided(sent.decided);
      live = true;
      checkPause();
    }
    const result = await outcome;
    if (result === TIMED_OUT) throw await timedOut(deps, sessionId, replyTo, after);
    if (result instanceof KeelError) throw result;
    return result;
  } finally {
    clearTimeout(timer);
    if (pauseCheck) clearImmediate(pauseCheck);
    wait.signal?.removeEventListener('abort', onAbort);
    subscription.close();
  }
}

/** The reply to one message, once its turn is over (POST /chat). */
export async function waitForTurn(deps: ApiDeps, wait: TurnWait): Promise<ChatReply> {
  const end = await followTurn(deps, wait);
  if (end.kind !== 'done') throw new KeelError('APPROVAL_PENDING', 'The turn is waiting for an approval', { turn: end.turn, toolCallIds: end.approvals.map((a) => a.toolCallId) });
  return replyOf(deps, end.done);
}

/** The error that ended a turn that did not complete (its `error` event), as a KeelError. */
export async function turnFailure(deps: ApiDeps, done: DurableEvent): Promise<KeelError> {
  const data = done.data as { turn: number; replyTo: string; status: string };
  const failure = (await turnOutcome(deps.pool, done.sessionId, data.replyTo)).find((e) => e.type === 'error' && (e.data as { turn?: number }).turn === data.turn);
  const body = failure?.data as ErrorBody | undefined;
  if (body) return new KeelError(body.code, body.message, body.details);
  return data.status === 'cancelled' ? new KeelError('TURN_CANCELLED', 'The turn was cancelled') : new KeelError('INTERNAL_ERROR', 'The turn failed');
}

async function replyOf(deps: ApiDeps, done: DurableEvent): Promise<ChatReply> {
  const data = done.data as { turn: number; replyTo: string; status: string; messageId: string | null; content: string | null };
  if (data.status !== 'completed') throw await turnFailure(deps, done);
  return { messageId: data.messageId ?? '', content: data.content ?? '', toolCalls: toolCallsOf(await toolEventsOfTurn(deps.pool, done.sessionId, data.turn)) };
}
/** Each tool call of a turn with its outcome, in the order the model asked for them. */
export function toolCallsOf(events: DurableEvent[]): ChatToolCall[] {
  const calls = new Map<string, ChatToolCall>();
  for (const event of events) {
    const data = event.data as Record<string, unknown>;
    const toolCallId = data.toolCallId as string;
    if (event.type === 'tool.call') {
      calls.set(toolCallId, { toolCallId, name: data.name as string, arguments: data.arguments, status: 'pending' });
    } else if (event.type === 'tool.result') {
      const call = calls.get(toolCallId);
      if (!call) continue;
      call.status = data.status as ChatToolCall['status'];
      if (data.result !== undefined) call.result = data.result;
      if (data.error !== undefined) call.error = data.error as ChatToolCall['error'];
    }
  }
  return [...calls.values()];
}

async function timedOut(deps: ApiDeps, sessionId: string, replyTo: string, after: number): Promise<KeelError> {
  const turn = await turnOf(deps.pool, sessionId, replyTo);
  if (turn !== null) {
    const events = await toolEventsOfTurn(deps.pool, sessionId, turn);
    const resolved = new Set(events.filter((e) => e.type === 'approval.resolved').map((e) => (e.data as { toolCallId: string }).toolCallId));
    const pending = events.filter((e) => e.type === 'approval.required' && !resolved.has((e.data as { toolCallId: string }).toolCallId)).map((e) => e.data as { toolCallId: string; expiresAt: string });
    if (pending.length > 0) {
      const expiresAt = pending.map((p) => p.expiresAt).sort()[0]!;
      return new KeelError('APPROVAL_PENDING', 'The turn is waiting for an approval; it goes on once a decision is made', { after, turn, toolCallIds: pending.map((p) => p.toolCallId), expiresAt });
    }
  }
  return new KeelError('CHAT_TIMEOUT', 'The reply did not finish in time; the turn goes on and its events follow `after` in the log', { after, ...(turn === null ? {} : { turn }) });
}
