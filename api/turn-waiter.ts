import type { DurableEvent, StreamDeltaData } from '../contracts/events';
import { ErrorCode, KeelError, type ErrorBody } from '../contracts/errors';
import type { ChatReply, ChatToolCall } from '../contracts/rest';
import { toolEventsOfTurn, turnOf, turnOutcome } from '../db/events';
import type { ApiDeps } from './deps';

export interface TurnCallbacks {
  delta?(text: string): void;
  restart?(attempt: number): void;
  /** The turn's tool.call, approval.required, approval.resolved and tool.result events, as they happen. */
  toolEvent?(event: DurableEvent): void;
}

export interface TurnWait {
  sessionId: string;
  /** The message whose turn is awaited. */
  replyTo: string;
  /** Sends the message; called once the wait is subscribed, and not at all when the turn is already over. */
  send(): Promise<void>;
  callbacks?: TurnCallbacks;
  timeoutMs: number;
  /** Bytes the caller's client has not taken yet (a streaming response); over KEEL_MAX_BUFFERED_BYTES for too long ends the wait with CONSUMER_TOO_SLOW. */
  backlog?(): number;
}

const TOOL_EVENTS = new Set(['tool.call', 'approval.required', 'approval.resolved', 'tool.result']);
/** Refusals of a message: written by the session for each refused send, with no turn. */
const REFUSALS = new Set<string>(['SESSION_BUSY', 'SESSION_EXPIRED']);
const TIMED_OUT = Symbol('timed out');

/**
 * Follows the session's events for the turn that answers one message: its deltas and tool
 * events while it runs, then the reply or the error that ended it. A wait that runs out is
 * APPROVAL_PENDING when the turn waits on a human, CHAT_TIMEOUT otherwise; the turn goes on.
 */
export async function waitForTurn(deps: ApiDeps, wait: TurnWait): Promise<ChatReply> {
  const { sessionId, replyTo, callbacks = {} } = wait;
  let settle!: (outcome: DurableEvent | KeelError | typeof TIMED_OUT) => void;
  const outcome = new Promise<DurableEvent | KeelError | typeof TIMED_OUT>((resolve) => (settle = resolve));
  /** Events up to this seq were delivered before the message was sent: a refusal among them answers an earlier send. */
  let sentAfter = Number.MAX_SAFE_INTEGER;
  let turn: number | undefined;
  const ourStreams = new Set<string>();
  const ourToolCalls = new Set<string>();

  const onEvent = (event: DurableEvent) => {
    const data = event.data as Record<string, unknown>;
    if (event.type === 'stream.start' && data.replyTo === replyTo) {
      turn = data.turn as number;
      ourStreams.add(`${data.streamId}#${data.attempt}`);
      if ((data.attempt as number) > 1) callbacks.restart?.(data.attempt as number);
    } else if (event.type === 'error' && data.replyTo === replyTo && data.turn === undefined && REFUSALS.has(data.code as string)) {
      if (event.seq > sentAfter) settle(new KeelError(data.code as ErrorCode, data.message as string));
    } else if (event.type === 'turn.done' && data.replyTo === replyTo) {
      settle(event);
    } else if (TOOL_EVENTS.has(event.type) && turn !== undefined) {
      const toolCallId = data.toolCallId as string;
      if (data.turn === turn) ourToolCalls.add(toolCallId);
      if (ourToolCalls.has(toolCallId)) callbacks.toolEvent?.(event);
    }
  };
  const onDelta = (delta: StreamDeltaData) => {
    if (ourStreams.has(`${delta.streamId}#${delta.attempt}`)) callbacks.delta?.(delta.text);
  };

  const subscription = deps.feed.open({ sessionId }, { event: onEvent, delta: onDelta, backlog: wait.backlog ?? (() => 0), stopped: (error) => settle(error) });
  const timer = setTimeout(() => settle(TIMED_OUT), wait.timeoutMs);
  try {
    await subscription.ready;
    const after = subscription.lastSeq();
    // A repeated request for a turn that already ended is answered from the log, with nothing sent (and no message budget spent).
    const done = (await turnOutcome(deps.pool, sessionId, replyTo)).find((e) => e.type === 'turn.done');
    if (done) settle(done);
    else {
      sentAfter = subscription.lastSeq();
      await wait.send();
    }
    const result = await outcome;
    if (result === TIMED_OUT) throw await timedOut(deps, sessionId, replyTo, after);
    if (result instanceof KeelError) throw result;
    return await replyOf(deps, result);
  } finally {
    clearTimeout(timer);
    subscription.close();
  }
}

async function replyOf(deps: ApiDeps, done: DurableEvent): Promise<ChatReply> {
  const data = done.data as { turn: number; replyTo: string; status: string; messageId: string | null; content: string | null };
  if (data.status !== 'completed') {
    const failure = (await turnOutcome(deps.pool, done.sessionId, data.replyTo)).find((e) => e.type === 'error' && (e.data as { turn?: number }).turn === data.turn);
    const body = failure?.data as ErrorBody | undefined;
    if (body) throw new KeelError(body.code, body.message, body.details);
    throw data.status === 'cancelled' ? new KeelError('TURN_CANCELLED', 'The turn was cancelled') : new KeelError('INTERNAL_ERROR', 'The turn failed');
  }
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
