import type { ServerFrame, Usage } from '../api/types';

/**
 * A conversation as the chat page shows it, built from the session's frames (docs/protocol.md):
 * durable events are applied once each, in `seq` order; token deltas follow the offset rule, and a
 * retried stream (a higher `attempt`) replaces the text of the earlier attempt.
 */

export interface UserItem {
  kind: 'user';
  key: string;
  turn: number | null;
  content: string;
  clientMessageId?: string;
  /** Sent, not yet accepted by the session (it may wait behind a running turn). */
  pending: boolean;
  refused?: string;
}

export interface AssistantItem {
  kind: 'assistant';
  key: string;
  streamId: string;
  turn: number | null;
  attempt: number;
  text: string;
  done: boolean;
  /** A retried model call replaced the text of an earlier attempt. */
  restarted: boolean;
  usage?: Usage;
}

export interface ApprovalState {
  digest: string;
  expiresAt: string;
  outcome?: 'approved' | 'rejected' | 'expired' | 'cancelled';
  decidedBy?: string | null;
  feedback?: string | null;
}

export interface ToolItem {
  kind: 'tool';
  key: string;
  toolCallId: string;
  turn: number | null;
  name: string;
  arguments: unknown;
  requiresApproval: boolean;
  approval?: ApprovalState;
  result?: { status: string; result?: unknown; error?: { code: string; message: string }; ran?: boolean };
}

export interface NoticeItem {
  kind: 'notice';
  key: string;
  tone: 'info' | 'error';
  text: string;
}

export type ChatItem = UserItem | AssistantItem | ToolItem | NoticeItem;

export interface ConversationState {
  /** The last durable event applied: a reconnect resumes after it. */
  lastSeq: number;
  items: ChatItem[];
  /** The turn running now, as far as the events tell. */
  runningTurn: number | null;
  agentStatus: string | null;
  ended: string | null;
}

export const emptyConversation: ConversationState = { lastSeq: 0, items: [], runningTurn: null, agentStatus: null, ended: null };

const str = (v: unknown): string => (typeof v === 'string' ? v : '');
const num = (v: unknown): number | null => (typeof v === 'number' ? v : null);

/** A local frame: the user sent a message (shown at once, marked pending until `message.accepted`). */
export function sentFrame(content: string, clientMessageId: string): ServerFrame {
  return { type: 'local.sent', data: { content, clientMessageId } };
}

/** Characters of the reply in progress, for `?streamOffset=` on a reconnect (undefined: none in progress). */
export function streamOffsetOf(state: ConversationState): number | undefined {
  for (let i = state.items.length - 1; i >= 0; i--) {
    const item = state.items[i]!;
    if (item.kind === 'assistant') return item.done ? undefined : item.text.length;
  }
  return undefined;
}

/** Applies one delta: keep text per (stream, attempt); only what lies past the text we have is new. */
export function applyDelta(text: string, offset: number, delta: string): string {
  if (offset > text.length) return text; // a gap: never paint text at the wrong place (stream.end brings the whole reply)
  const fresh = delta.slice(text.length - offset);
  return text + fresh;
}

function replaceItem<T extends ChatItem>(state: ConversationState, index: number, item: T): ConversationState {
  const items = state.items.slice();
  items[index] = item;
  return { ...state, items };
}

function findIndex(state: ConversationState, pred: (item: ChatItem) => boolean): number {
  for (let i = state.items.length - 1; i >= 0; i--) if (pred(state.items[i]!)) return i;
  return -1;
}

function push(state: ConversationState, item: ChatItem): ConversationState {
  return { ...state, items: [...state.items, item] };
}

function notice(state: ConversationState, key: string, text: string, tone: NoticeItem['tone'] = 'info'): ConversationState {
  return push(state, { kind: 'notice', key, tone, text });
}

function streamItem(state: ConversationState, streamId: string): number {
  return findIndex(state, (i) => i.kind === 'assistant' && i.streamId === streamId);
}

/** The stream's item at `attempt`: created when missing, reset (restarted) when the attempt is newer. Undefined for an older attempt. */
function atAttempt(state: ConversationState, streamId: string, attempt: number, turn: number | null): [ConversationState, number] | undefined {
  const index = streamItem(state, streamId);
  if (index < 0) {
    const next = push(state, { kind: 'assistant', key: `stream-${streamId}`, streamId, turn, attempt, text: '', done: false, restarted: false });
    return [next, next.items.length - 1];
  }
  const item = state.items[index] as AssistantItem;
  if (attempt < item.attempt) return undefined;
  if (attempt > item.attempt) return [replaceItem(state, index, { ...item, attempt, text: '', done: false, restarted: true }), index];
  return [state, index];
}

function withTool(state: ConversationState, toolCallId: string, data: Record<string, unknown>, change: (item: ToolItem) => ToolItem): ConversationState {
  const index = findIndex(state, (i) => i.kind === 'tool' && i.toolCallId === toolCallId);
  if (index >= 0) return replaceItem(state, index, change(state.items[index] as ToolItem));
  const created: ToolItem = { kind: 'tool', key: `tool-${toolCallId}`, toolCallId, turn: num(data.turn), name: str(data.name), arguments: data.arguments, requiresApproval: false };
  return push(state, change(created));
}

export function reduce(state: ConversationState, frame: ServerFrame): ConversationState {
  // Durable events are applied once each: a resume starts after lastSeq, and a repeat changes nothing.
  if (typeof frame.seq === 'number') {
    if (frame.seq <= state.lastSeq) return state;
    state = { ...state, lastSeq: frame.seq };
  }
  const d = frame.data ?? {};
  switch (frame.type) {
    case 'local.sent':
      return push(state, { kind: 'user', key: `local-${str(d.clientMessageId)}`, turn: null, content: str(d.content), clientMessageId: str(d.clientMessageId), pending: true });

    case 'message.accepted': {
      const turn = num(d.turn);
      const accepted: UserItem = { kind: 'user', key: `msg-${str(d.messageId)}`, turn, content: str(d.content), pending: false, ...(d.clientMessageId ? { clientMessageId: str(d.clientMessageId) } : {}) };
      const local = d.clientMessageId ? findIndex(state, (i) => i.kind === 'user' && i.pending && i.clientMessageId === d.clientMessageId) : -1;
      // Pending local copies are moved to where the session took the message.
      const items = local >= 0 ? state.items.filter((_, i) => i !== local) : state.items;
      return { ...state, items: [...items, accepted], runningTurn: turn ?? state.runningTurn };
    }

    case 'stream.start': {
      const r = atAttempt(state, str(d.streamId), num(d.attempt) ?? 1, num(d.turn));
      return r ? { ...r[0], runningTurn: num(d.turn) ?? r[0].runningTurn } : state;
    }

    case 'stream.delta': {
      const r = atAttempt(state, str(d.streamId), num(d.attempt) ?? 1, state.runningTurn);
      if (!r) return state;
      const [next, index] = r;
      const item = next.items[index] as AssistantItem;
      if (item.done) return next;
      const text = applyDelta(item.text, num(d.offset) ?? 0, str(d.text));
      return text === item.text ? next : replaceItem(next, index, { ...item, text });
    }

    case 'stream.end': {
      const r = atAttempt(state, str(d.streamId), num(d.attempt) ?? 1, state.runningTurn);
      if (!r) return state;
      const [next, index] = r;
      const item = next.items[index] as AssistantItem;
      return replaceItem(next, index, { ...item, text: str(d.content), done: true, ...(d.usage ? { usage: d.usage as Usage } : {}) });
    }

    case 'tool.call':
      return withTool(state, str(d.toolCallId), d, (t) => ({ ...t, name: str(d.name), arguments: d.arguments, turn: num(d.turn), requiresApproval: d.requiresApproval === true }));

    case 'approval.required':
      return withTool(state, str(d.toolCallId), d, (t) => ({ ...t, requiresApproval: true, approval: { digest: str(d.digest), expiresAt: str(d.expiresAt) } }));

    case 'approval.resolved':
      return withTool(state, str(d.toolCallId), d, (t) => ({
        ...t,
        approval: { digest: t.approval?.digest ?? '', expiresAt: t.approval?.expiresAt ?? '', outcome: d.outcome as ApprovalState['outcome'], decidedBy: (d.decidedBy as string | null) ?? null, feedback: (d.feedback as string | null) ?? null },
      }));

    case 'tool.result':
      return withTool(state, str(d.toolCallId), d, (t) => ({
        ...t,
        result: { status: str(d.status), result: d.result, ...(d.error ? { error: d.error as { code: string; message: string } } : {}), ...(typeof d.ran === 'boolean' ? { ran: d.ran } : {}) },
      }));

    case 'turn.done': {
      const turn = num(d.turn);
      // A cancelled or failed turn may leave a stream without its end: it is over all the same.
      const items = state.items.map((i) => (i.kind === 'assistant' && !i.done && (i.turn === turn || i.turn === null) ? { ...i, done: true } : i));
      let next: ConversationState = { ...state, items, runningTurn: state.runningTurn === turn ? null : state.runningTurn };
      if (d.status === 'cancelled') next = notice(next, `turn-${turn}-done`, `Turn ${turn} was cancelled${d.cancelledBy ? ` by ${str(d.cancelledBy)}` : ''}.`);
      if (d.status === 'failed') next = notice(next, `turn-${turn}-done`, `Turn ${turn} failed${d.errorCode ? ` (${str(d.errorCode)})` : ''}.`, 'error');
      return next;
    }

    case 'error': {
      const key = frame.seq ? `error-${frame.seq}` : `error-${str(d.code)}-${state.items.length}`;
      const local = d.clientMessageId ? findIndex(state, (i) => i.kind === 'user' && i.pending && i.clientMessageId === d.clientMessageId) : -1;
      if (local >= 0) state = replaceItem(state, local, { ...(state.items[local] as UserItem), pending: false, refused: `${str(d.code)}: ${str(d.message)}` });
      return notice(state, key, `${str(d.code)}: ${str(d.message)}`, 'error');
    }

    case 'clarification':
      return push(state, { kind: 'assistant', key: `clarification-${frame.seq}`, streamId: `clarification-${frame.seq}`, turn: num(d.turn), attempt: 1, text: str(d.question), done: true, restarted: false });

    case 'operator.message':
      return push(state, { kind: 'assistant', key: `operator-${str(d.messageId)}`, streamId: `operator-${str(d.messageId)}`, turn: null, attempt: 1, text: `${str(d.operator)} (operator): ${str(d.content)}`, done: true, restarted: false });

    case 'session.escalated':
      return notice(state, `seq-${frame.seq}`, `The conversation went to a person (${str(d.reason)}).`);
    case 'session.handed_back':
      return notice(state, `seq-${frame.seq}`, `Handed back to the agents by ${str(d.by)}.`);
    case 'agent.handoff':
      return notice(state, `seq-${frame.seq}`, `${str(d.from)} handed the conversation to ${str(d.to)}.`);
    case 'external.event':
      return notice(state, `seq-${frame.seq}`, `Outside event: ${str(d.type)}`);
    case 'session.expired':
      return { ...notice(state, `seq-${frame.seq}`, 'The session ended after being idle.'), ended: 'expired', runningTurn: null };
    case 'session.deleted':
      return { ...notice(state, `seq-${frame.seq}`, `The session was deleted by ${str(d.deletedBy)}.`), ended: 'deleted', runningTurn: null };

    case 'agent.status':
      return { ...state, agentStatus: str(d.status) || null };

    default:
      // connected, pong, typing, run.progress, route.decided, agent.started, answers to client frames: nothing to show.
      return state;
  }
}
