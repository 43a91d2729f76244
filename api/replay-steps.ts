import { REPLAY_STEP_OF_EVENT, type ReplayStep } from '../contracts/conversations';
import type { DurableEventData } from '../contracts/events';
import type { TimedEvent } from '../db/conversations';

type StepEventType = keyof typeof REPLAY_STEP_OF_EVENT;

/**
 * Turns a replay page's events into steps, one per event, in seq order. `openers` are the earlier
 * events the page's closing steps are measured from (db/conversations.ts replayEvents).
 */
export function replaySteps(page: TimedEvent[], openers: TimedEvent[]): ReplayStep[] {
  const all = [...openers, ...page];
  const startsOf = new Map<string, TimedEvent[]>();
  const callOf = new Map<string, TimedEvent>();
  const requestOf = new Map<string, TimedEvent>();
  const turnStartOf = new Map<number, number>();
  const turnErrorOf = new Map<number, DurableEventData<'error'>>();
  for (const e of all) {
    const data = e.event.data as Record<string, unknown>;
    switch (e.event.type) {
      case 'stream.start': {
        const id = data.streamId as string;
        startsOf.set(id, [...(startsOf.get(id) ?? []), e]);
        break;
      }
      case 'tool.call':
        callOf.set(data.toolCallId as string, e);
        break;
      case 'approval.required':
        requestOf.set(data.toolCallId as string, e);
        break;
      case 'error':
        if (typeof data.turn === 'number') turnErrorOf.set(data.turn, data as DurableEventData<'error'>);
        break;
    }
    if ((e.event.type === 'message.accepted' || e.event.type === 'stream.start' || e.event.type === 'route.decided') && typeof data.turn === 'number') {
      turnStartOf.set(data.turn, Math.min(turnStartOf.get(data.turn) ?? Infinity, e.atMs));
    }
  }
  const since = (from: number | undefined, to: number) => (from === undefined || !Number.isFinite(from) ? null : Math.max(0, Math.round(to - from)));
  const turnOf = (e: TimedEvent | undefined): number | null => {
    const turn = (e?.event.data as { turn?: unknown } | undefined)?.turn;
    return typeof turn === 'number' ? turn : null;
  };

  return page.map((e): ReplayStep => {
    const base = { seq: e.event.seq, at: e.event.createdAt };
    const type = e.event.type as StepEventType;
    switch (type) {
      case 'stream.end': {
        const data = e.event.data as DurableEventData<'stream.end'>;
        const starts = startsOf.get(data.streamId) ?? [];
        const first = starts[0];
        // A reply committed without a stream.start of its own attempt still took that attempt.
        const attempts = Math.max(starts.length, data.attempt, 1);
        return { ...base, type: 'agent_reply', turn: turnOf(first), durationMs: since(first?.atMs, e.atMs), data, attempts };
      }
      case 'tool.result': {
        const data = e.event.data as DurableEventData<'tool.result'>;
        const call = callOf.get(data.toolCallId);
        return { ...base, type: 'tool_result', turn: turnOf(call), durationMs: since(call?.atMs, e.atMs), data };
      }
      case 'approval.resolved': {
        const data = e.event.data as DurableEventData<'approval.resolved'>;
        const request = requestOf.get(data.toolCallId);
        return { ...base, type: 'approval_decision', turn: turnOf(request), durationMs: since(request?.atMs, e.atMs), data };
      }
      case 'turn.done': {
        const data = e.event.data as DurableEventData<'turn.done'>;
        return { ...base, type: 'turn_end', turn: data.turn, durationMs: since(turnStartOf.get(data.turn), e.atMs), data, error: turnErrorOf.get(data.turn) ?? null };
      }
      default: {
        const data = e.event.data as { turn?: number };
        // Every other step is an event that needs nothing else: its type and data as written.
        return { ...base, type: REPLAY_STEP_OF_EVENT[type], turn: typeof data.turn === 'number' ? data.turn : null, durationMs: null, data } as ReplayStep;
      }
    }
  });
}
