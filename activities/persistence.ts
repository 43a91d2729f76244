import { Context } from '@temporalio/activity';
import type { DatabasePool, DatabaseTransactionConnection } from 'slonik';
import {
  AcceptMessagesInput,
  ExpireSessionInput,
  RejectMessagesInput,
  TurnFailureInput,
  type MessageRef,
} from '../contracts/turn';
import { SESSION_EXPIRED_MESSAGE } from '../contracts/errors';
import { appendEvent } from '../db/events';
import { acceptMessage } from '../db/messages';
import { markSessionEnded } from '../db/sessions';
import type { Logger } from '../config/logger';
import type { Metrics } from '../config/metrics';
import { classifyingPersistenceErrors, parseActivityInput } from './persistence-errors';

const SESSION_BUSY_MESSAGE = 'The session is busy; the message was not accepted. Send it again when the current turn is done.';

/**
 * Gives stored user messages their turns and writes message.accepted for each; a repeat is a
 * no-op. The content comes from the row the API stored on arrival. A message ID with no row
 * (a signal sent by something other than the API) is skipped: its turn fails on its own, and
 * the messages accepted with it are not held back.
 */
export async function acceptMessagesIn(tx: DatabaseTransactionConnection, sessionId: string, messages: MessageRef[]): Promise<void> {
  for (const m of messages) {
    const accepted = await acceptMessage(tx, sessionId, m.messageId, m.turn);
    // An outside event was announced (external.event) when it was stored.
    if (accepted.outcome !== 'accepted' || accepted.role === 'event') continue;
    await appendEvent(tx, {
      sessionId,
      key: `accepted:${m.messageId}`,
      type: 'message.accepted',
      data: { messageId: m.messageId, turn: m.turn, content: accepted.content, ...(accepted.clientMessageId ? { clientMessageId: accepted.clientMessageId } : {}) },
    });
  }
}

/** What every turn log line carries: the request that sent the message, the session and the workflow run. */
export function turnLogIds(input: { sessionId: string; requestId?: string | undefined; turn: number }) {
  const run = Context.current().info.workflowExecution;
  return { requestId: input.requestId, sessionId: input.sessionId, workflowId: run?.workflowId, runId: run?.runId, turn: input.turn };
}

/** The session's writes outside the model call; every one is idempotent under retry. */
export function createPersistenceActivities(deps: { pool: DatabasePool; metrics: Metrics; log: Logger }) {
  const { pool } = deps;

  async function acceptMessages(raw: AcceptMessagesInput): Promise<void> {
    const input = parseActivityInput(AcceptMessagesInput, raw);
    await pool.transaction((tx) => acceptMessagesIn(tx, input.sessionId, input.messages));
  }

  /** Tells senders their message was not taken (session expired, or busy); each refusal is its own event. */
  async function rejectMessages(raw: RejectMessagesInput): Promise<void> {
    const input = parseActivityInput(RejectMessagesInput, raw);
    await pool.transaction(async (tx) => {
      for (const m of input.messages) {
        await appendEvent(tx, {
          sessionId: input.sessionId,
          key: `refused:${m.messageId}:${m.refusal}`,
          type: 'error',
          data: {
            code: m.code,
            message: m.code === 'SESSION_EXPIRED' ? SESSION_EXPIRED_MESSAGE : SESSION_BUSY_MESSAGE,
            recoverable: m.code === 'SESSION_BUSY',
            replyTo: m.messageId,
            ...(m.clientMessageId ? { clientMessageId: m.clientMessageId } : {}),
          },
        });
      }
    });
    for (const m of input.messages) deps.metrics.errors.inc({ code: m.code });
  }

  async function recordTurnFailure(raw: TurnFailureInput): Promise<void> {
    const input = parseActivityInput(TurnFailureInput, raw);
    const inserted = await pool.transaction(async (tx) => {
      await appendEvent(tx, {
        sessionId: input.sessionId,
        key: `turn:${input.turn}:error`,
        type: 'error',
        data: { ...input.error, turn: input.turn, replyTo: input.replyTo, ...(input.requestId ? { requestId: input.requestId } : {}) },
      });
      const done = await appendEvent(tx, {
        sessionId: input.sessionId,
        key: `turn:${input.turn}:done`,
        type: 'turn.done',
        data: {
          turn: input.turn,
          replyTo: input.replyTo,
          status: input.status,
          messageId: null,
          content: null,
          usage: null,
          ...(input.cancelledBy ? { cancelledBy: input.cancelledBy } : {}),
          ...(input.agentVersion === undefined ? {} : { agentVersion: input.agentVersion }),
          ...(input.status === 'failed' ? { errorCode: input.error.code } : {}),
        },
      });
      return done.inserted;
    });
    if (inserted) {
      deps.metrics.turns.inc({ status: input.status });
      deps.metrics.errors.inc({ code: input.error.code });
      deps.log.warn({ ...turnLogIds(input), code: input.error.code, status: input.status, ...(input.cancelledBy ? { cancelledBy: input.cancelledBy } : {}) }, 'turn failed');
    }
  }

  async function expireSession(raw: ExpireSessionInput): Promise<void> {
    const input = parseActivityInput(ExpireSessionInput, raw);
    await pool.transaction(async (tx) => {
      await markSessionEnded(tx, input.sessionId, 'expired');
      await appendEvent(tx, { sessionId: input.sessionId, key: 'session:expired', type: 'session.expired', data: { idleMs: input.idleMs } });
    });
  }

  return classifyingPersistenceErrors({ acceptMessages, rejectMessages, recordTurnFailure, expireSession });
}

export type PersistenceActivities = ReturnType<typeof createPersistenceActivities>;
