import { randomUUID } from 'node:crypto';
import Router from '@koa/router';
import type { Context } from 'koa';
import { z } from 'zod';
import { KeelError, SESSION_EXPIRED_MESSAGE } from '../../contracts/errors';
import { Id } from '../../contracts/ids';
import { EscalateBody, ExternalEventBody, OperatorMessageBody, externalEventMessageIdOf, externalEventText, operatorMessageIdOf } from '../../contracts/presence';
import { escalateSignal, externalEventSignal, handBackSignal } from '../../contracts/workflow-messages';
import { escalatedAsOf, storeExternalEvent, storeOperatorMessage, writeHandBack } from '../../db/presence';
import { findSession, type SessionRow } from '../../db/sessions';
import { adminCallerOf } from '../auth';
import type { ApiDeps } from '../deps';
import { parseInput } from '../errors';
import { externalEventsPolicyOf, requireEventsToken } from '../events-token';

/** POST …/hand-back takes no fields. */
const EmptyBody = z.object({}).strict();

const notEscalated = () => new KeelError('SESSION_NOT_ESCALATED', 'The session is not escalated: an operator writes into it, and hands it back, only while it waits for one');

function refuseExpired(row: SessionRow): void {
  if (row.status === 'expired') throw new KeelError('SESSION_EXPIRED', SESSION_EXPIRED_MESSAGE);
}

/** Operators and outside systems (docs/presence.md): operator messages, hand-back, escalation and external events. */
export function presenceRoutes(deps: ApiDeps): Router {
  const router = new Router({ prefix: '/api/v1' });

  /** An admin writes into an escalated conversation; the model reads it once the session is handed back. */
  router.post('/sessions/:id/operator-messages', async (ctx) => {
    const caller = adminCallerOf(ctx);
    const sessionId = parseInput(Id, ctx.params.id);
    const body = parseInput(OperatorMessageBody, ctx.request.body);
    refuseExpired(await deps.sessions.require(sessionId, caller));
    const messageId = body.clientMessageId === undefined ? `op_${randomUUID().replace(/-/g, '')}` : operatorMessageIdOf(sessionId, body.clientMessageId);
    const result = await storeOperatorMessage(deps.pool, { sessionId, messageId, operator: caller.userId, content: body.content });
    if (result.outcome === 'not_escalated') throw notEscalated();
    deps.log.info({ requestId: ctx.state.requestId, sessionId, messageId, operator: caller.userId, outcome: result.outcome }, 'operator message');
    ctx.status = result.outcome === 'stored' ? 201 : 200;
    ctx.body = { messageId, turn: result.turn, seq: result.event.seq, operator: result.event.data.operator };
  });

  /**
   * The operator gives the conversation back to the agents: `session.handed_back` is written at
   * once (clients see it before any turn it lets run), then the workflow is told. A session
   * already handed back answers that hand-back and tells the workflow again (a retry after a
   * failed signal); one never escalated is refused.
   */
  router.post('/sessions/:id/hand-back', async (ctx) => {
    const caller = adminCallerOf(ctx);
    const sessionId = parseInput(Id, ctx.params.id);
    parseInput(EmptyBody, ctx.request.body ?? {});
    refuseExpired(await deps.sessions.require(sessionId, caller));
    const result = await writeHandBack(deps.pool, sessionId, caller.userId);
    if (result.outcome === 'never_escalated') throw notEscalated();
    await deps.sessions.signal(sessionId, handBackSignal, { by: caller.userId });
    deps.log.info({ requestId: ctx.state.requestId, sessionId, by: caller.userId, outcome: result.outcome }, 'session handed back');
    ctx.body = { handedBack: true, seq: result.event.seq, by: result.event.data.by, alreadyHandedBack: result.outcome === 'already' };
  });

  /** An operator takes the conversation over: the workflow runs the escalation (session.escalated follows on the stream). */
  router.post('/sessions/:id/escalate', async (ctx) => {
    const caller = adminCallerOf(ctx);
    const sessionId = parseInput(Id, ctx.params.id);
    const body = parseInput(EscalateBody, ctx.request.body);
    refuseExpired(await deps.sessions.require(sessionId, caller));
    if (await escalatedAsOf(deps.pool, sessionId)) {
      ctx.body = { escalated: true, alreadyEscalated: true };
      return;
    }
    await deps.sessions.signal(sessionId, escalateSignal, { by: caller.userId, reason: body.reason });
    deps.log.info({ requestId: ctx.state.requestId, sessionId, by: caller.userId }, 'escalation requested');
    ctx.status = 202;
    ctx.body = { escalated: false, requested: true };
  });

  /**
   * Something happened outside the conversation. Admin tokens, or the session's own events token
   * when its agent enables one. Stored as a message (role `event`, no turn: the session gives it
   * one), streamed as `external.event`, then signalled; `eventId` makes a repeat answer the first result.
   */
  router.post('/sessions/:id/external-events', async (ctx) => {
    const sessionId = parseInput(Id, ctx.params.id);
    const row = await externalEventsCaller(deps, ctx, sessionId);
    const body = parseInput(ExternalEventBody, ctx.request.body);
    const maxBytes = deps.settings.presence.externalEventMaxBytes;
    if (body.data !== undefined && Buffer.byteLength(JSON.stringify(body.data)) > maxBytes) {
      throw new KeelError('PAYLOAD_TOO_LARGE', `data exceeds ${maxBytes} bytes of JSON`, { field: 'data', maxBytes });
    }
    refuseExpired(row);
    const policy = await externalEventsPolicyOf(deps, row);
    const eventId = body.eventId ?? `ev_${randomUUID().replace(/-/g, '')}`;
    const messageId = externalEventMessageIdOf(sessionId, eventId);
    const result = await storeExternalEvent(deps.pool, {
      sessionId,
      eventId,
      messageId,
      type: body.type,
      data: body.data,
      wake: policy.mode === 'wake',
      content: externalEventText(body.type, body.data),
    });
    if (result.outcome === 'conflict') throw new KeelError('IDEMPOTENCY_KEY_REUSED', 'This eventId was already used with another type or data', { field: 'eventId' });
    const { wake } = result.event.data;
    // Until the session gives the event's message a turn it may not have heard of it (a signal lost to a crash): tell it (again).
    if (result.messageTurn === null) await deps.sessions.signal(sessionId, externalEventSignal, { messageId, eventId, wake });
    deps.log.info({ requestId: ctx.state.requestId, sessionId, eventId, type: body.type, wake, outcome: result.outcome }, 'external event');
    ctx.status = result.outcome === 'stored' ? 201 : 200;
    ctx.body = { eventId, messageId, seq: result.event.seq, wake, duplicate: result.outcome === 'repeated' };
  });

  return router;
}

/** The session an external event is for, after checking the caller: its events token (401 when wrong), else an admin token (403 otherwise). */
async function externalEventsCaller(deps: ApiDeps, ctx: Context, sessionId: string): Promise<SessionRow> {
  const token = ctx.state.eventsToken as string | undefined;
  if (token === undefined) return deps.sessions.require(sessionId, adminCallerOf(ctx));
  await requireEventsToken(deps, sessionId, token);
  const row = await findSession(deps.pool, sessionId);
  if (!row || row.status === 'deleted') throw new KeelError('SESSION_NOT_FOUND', 'No such session');
  return row;
}
