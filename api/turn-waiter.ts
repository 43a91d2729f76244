import type { DurableEvent, StreamDeltaData } from '../contracts/events';
import { KeelError, type ErrorBody } from '../contracts/errors';
import { turnOutcome } from '../db/events';
import type { ApiDeps } from './deps';
import { openSessionStream } from './session-stream';

export interface TurnResult {
  messageId: string;
  content: string;
  toolCalls: unknown[];
}

export interface TurnCallbacks {
  delta?(text: string): void;
  restart?(attempt: number): void;
}

/**
 * Follows the session's events for the turn that answers one message: its deltas while it
 * streams, then the reply or the error that ended it.
 */
export async function waitForTurn(deps: ApiDeps, sessionId: string, replyTo: string, send: () => Promise<void>, callbacks: TurnCallbacks, timeoutMs: number): Promise<TurnResult> {
  const ours = new Set<string>();
  let failure: ErrorBody | null = null;
  let settle!: (result: TurnResult | KeelError) => void;
  const outcome = new Promise<TurnResult | KeelError>((resolve) => (settle = resolve));

  const onEvent = (event: DurableEvent) => {
    const data = event.data as Record<string, unknown>;
    if (event.type === 'stream.start' && data.replyTo === replyTo) {
      ours.add(`${data.streamId}#${data.attempt}`);
      if ((data.attempt as number) > 1) callbacks.restart?.(data.attempt as number);
    } else if (event.type === 'error' && data.replyTo === replyTo) {
      failure = data as unknown as ErrorBody;
      if (failure.code === 'SESSION_EXPIRED') settle(new KeelError('SESSION_EXPIRED', failure.message));
    } else if (event.type === 'turn.done' && data.replyTo === replyTo) {
      if (data.status === 'completed') settle({ messageId: data.messageId as string, content: data.content as string, toolCalls: [] });
      else settle(new KeelError(failure?.code ?? 'INTERNAL_ERROR', failure?.message ?? 'The turn failed'));
    }
  };
  const onDelta = (delta: StreamDeltaData) => {
    if (ours.has(`${delta.streamId}#${delta.attempt}`)) callbacks.delta?.(delta.text);
  };

  const stream = await openSessionStream(deps.hub, deps.pool, { sessionId }, { event: onEvent, delta: onDelta }, (e) => deps.log.warn({ err: e }, 'chat stream failed'));
  const timer = setTimeout(() => settle(new KeelError('LLM_TIMEOUT', 'The reply did not finish in time')), timeoutMs);
  try {
    await stream.ready();
    // A repeated request for a turn that already ended is answered from the log.
    const logged = await turnOutcome(deps.pool, sessionId, replyTo);
    for (const event of logged) onEvent(event);
    // Its turn is over: nothing to send (and no message budget to spend).
    if (!logged.some((e) => e.type === 'turn.done')) await send();
    const result = await outcome;
    if (result instanceof KeelError) throw result;
    return result;
  } finally {
    clearTimeout(timer);
    stream.close();
  }
}
