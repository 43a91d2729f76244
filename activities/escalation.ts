import { Context } from '@temporalio/activity';
import { CancelledFailure } from '@temporalio/common';
import { sql, type DatabasePool } from 'slonik';
import { z } from 'zod';
import { EscalateInput, ESCALATION_POSITION, ESCALATIONS_PER_TURN, escalationMessageIdOf, type EscalateResult } from '../contracts/turn';
import { WEBHOOK_HEADERS } from '../contracts/webhooks';
import type { AgentVersions } from '../agents/versions';
import type { Logger } from '../config/logger';
import type { Metrics } from '../config/metrics';
import type { Settings } from '../config/settings';
import { countEscalationAttempt, insertEscalation, recentConversation, recordEscalationOutcome, type EscalationRow } from '../db/escalations';
import { appendEvent } from '../db/events';
import { insertMessage } from '../db/messages';
import { findSession } from '../db/sessions';
import { checkWebhookAddress, postWebhook, RETRYABLE_STATUS, signedHeaders, WebhookRefused } from '../notify/post-webhook';
import { classifyingPersistenceErrors, parseActivityInput } from './persistence-errors';

export interface EscalationDeps {
  pool: DatabasePool;
  /** Where the escalating agent's personality.escalationMessage is read. */
  agents: Pick<AgentVersions, 'get'>;
  settings: Settings['escalation'];
  /** KEEL_WEBHOOK_ALLOW_HOSTS: private or loopback hosts the webhook URL may still name. */
  allowHosts: readonly string[];
  metrics: Metrics;
  log: Logger;
}

/** How often the activity reports life, through its POSTs and back-off waits alike. */
const HEARTBEAT_MS = 1_000;

interface Delivery {
  success: boolean;
  statusCode: number | null;
  error: string | null;
}

const ZERO_USAGE = { inputTokens: 0, outputTokens: 0, costUsd: 0 };

/** `role: content` lines, oldest first, cut from the start to `maxChars` (the latest text is kept). */
export function conversationSummaryOf(messages: { role: string; content: string }[], maxChars: number): string {
  const text = messages.map((m) => `${m.role}: ${m.content}`).join('\n');
  return text.length <= maxChars ? text : `…${text.slice(text.length - maxChars + 1)}`;
}

/**
 * The `escalate` activity (docs/escalation.md). The user is told first, in one transaction (the
 * escalation message, `session.escalated`, the `escalations` row and, when the escalation ends
 * the turn, `turn.done`); then the webhook is POSTed, up to maxAttempts times with a doubling
 * back-off, and its answer recorded (`escalations`, `escalation.delivered`). Every write is keyed
 * by the escalation, and the attempts are counted in its row before each is made: a retried
 * activity writes nothing twice, goes on from the attempts already made, and never posts again
 * once an outcome is recorded.
 */
export function createEscalationActivities(deps: EscalationDeps) {
  const { pool, settings } = deps;

  async function escalationMessageOf(agent: EscalateInput['agent']): Promise<string> {
    const stored = agent ? await deps.agents.get(agent.id, agent.version) : null;
    return stored?.personality?.escalationMessage ?? settings.defaultMessage;
  }

  async function tellUser(input: EscalateInput, messageId: string): Promise<EscalationRow> {
    const text = await escalationMessageOf(input.agent);
    return pool.transaction(async (tx) => {
      const ids = { sessionId: input.sessionId };
      // A turn can hold more than one escalation (an operator's take-over, handed back, taken again).
      const position = await tx.oneFirst(sql.type(z.object({ position: z.number() }))`
        SELECT COALESCE(MAX(position) + 1, ${ESCALATION_POSITION})::int AS position FROM messages
        WHERE session_id = ${input.sessionId} AND turn = ${input.turn} AND position >= ${ESCALATION_POSITION} AND position < ${ESCALATION_POSITION + ESCALATIONS_PER_TURN}`);
      await insertMessage(tx, {
        id: messageId,
        sessionId: input.sessionId,
        turn: input.turn,
        position,
        role: 'assistant',
        content: text,
        ...(input.agent ? { agentId: input.agent.id, agentVersion: input.agent.version } : {}),
      });
      // A retry tells the user what the first attempt stored, whatever the settings say now.
      const content = await tx.oneFirst(sql.type(z.object({ content: z.string() }))`SELECT content FROM messages WHERE id = ${messageId}`);
      await appendEvent(tx, {
        ...ids,
        key: `escalation:${input.escalationId}`,
        type: 'session.escalated',
        data: { turn: input.turn, reason: input.reason, source: input.source, agent: input.agent?.id ?? null, messageId },
      });
      const row = await insertEscalation(tx, { ...ids, escalationId: input.escalationId, turn: input.turn, reason: input.reason, source: input.source, agentId: input.agent?.id ?? null });
      if (input.endsTurn) {
        await appendEvent(tx, {
          ...ids,
          key: `turn:${input.turn}:done`,
          type: 'turn.done',
          data: {
            turn: input.turn,
            replyTo: input.replyTo,
            status: 'completed',
            messageId,
            content,
            usage: ZERO_USAGE,
            ...(input.agent ? { agent: input.agent.id } : {}),
          },
        });
      }
      return row;
    });
  }

  async function bodyOf(input: EscalateInput, messageId: string, row: EscalationRow): Promise<string> {
    const [session, recent] = await Promise.all([
      findSession(pool, input.sessionId),
      recentConversation(pool, input.sessionId, input.turn, messageId, settings.summaryMessages),
    ]);
    return JSON.stringify({
      sessionId: input.sessionId,
      escalationId: input.escalationId,
      reason: input.reason,
      source: input.source,
      agent: input.agent?.id ?? null,
      conversationSummary: conversationSummaryOf(recent, settings.summaryChars),
      metadata: {
        turn: input.turn,
        agentVersion: input.agent?.version ?? null,
        ownerId: session?.owner_id ?? null,
        // The row's time, so every attempt (and every retry of the activity) sends the same body.
        escalatedAt: new Date(row.created_at).toISOString(),
      },
    });
  }

  /** The attempts left, each counted in the row before it is made; resolves with the last answer. */
  async function deliver(input: EscalateInput, body: string): Promise<Delivery> {
    if (!settings.webhookUrl) return { success: false, statusCode: null, error: 'no escalation webhook configured' };
    if (!settings.secret) return { success: false, statusCode: null, error: 'no escalation webhook secret configured (KEEL_ESCALATION_WEBHOOK_SECRET or KEEL_WEBHOOK_SECRET)' };
    const ctx = Context.current();
    const url = new URL(settings.webhookUrl);
    const key = `${input.sessionId}:${input.escalationId}`;
    let last: Delivery = { success: false, statusCode: null, error: 'the attempts ran out before an answer was recorded' };
    for (;;) {
      const attempt = await countEscalationAttempt(pool, input.sessionId, input.escalationId, settings.maxAttempts);
      if (attempt === null) return last;
      try {
        const pinned = await checkWebhookAddress(url, deps.allowHosts);
        const status = await postWebhook(
          url,
          body,
          { ...signedHeaders(settings.secret, body), 'idempotency-key': key, [WEBHOOK_HEADERS.delivery]: key, [WEBHOOK_HEADERS.attempt]: String(attempt) },
          settings.timeoutMs,
          pinned,
          ctx.cancellationSignal,
        );
        const ok = status >= 200 && status < 300;
        deps.metrics.webhookDeliveries.inc({ kind: 'escalation', outcome: ok ? 'delivered' : RETRYABLE_STATUS(status) ? 'failed' : 'refused' });
        if (ok) return { success: true, statusCode: status, error: null };
        last = { success: false, statusCode: status, error: `the receiver answered ${status}` };
        if (!RETRYABLE_STATUS(status)) return last;
      } catch (error) {
        if (ctx.cancellationSignal.aborted) throw cancellationOf(ctx.cancellationSignal);
        const refused = error instanceof WebhookRefused;
        deps.metrics.webhookDeliveries.inc({ kind: 'escalation', outcome: refused ? 'refused' : 'failed' });
        last = { success: false, statusCode: null, error: (error as Error).message };
        if (refused) return last;
      }
      deps.log.warn({ sessionId: input.sessionId, escalationId: input.escalationId, attempt, statusCode: last.statusCode, error: last.error }, 'escalation webhook attempt failed');
      if (attempt >= settings.maxAttempts) return last;
      // 2 s, then 4 s, …: Context.sleep ends at once with a CancelledFailure when the activity is cancelled.
      await ctx.sleep(settings.backoffMs * 2 ** (attempt - 1));
    }
  }

  async function escalate(raw: EscalateInput): Promise<EscalateResult> {
    const input = parseActivityInput(EscalateInput, raw);
    const ctx = Context.current();
    const messageId = escalationMessageIdOf(input.sessionId, input.escalationId);
    const beat = setInterval(() => ctx.heartbeat(), HEARTBEAT_MS);
    try {
      const row = await tellUser(input, messageId);
      if (row.success !== null) return resultOf(messageId, row);
      const delivery = await deliver(input, await bodyOf(input, messageId, row));
      const stored = await pool.transaction(async (tx) => {
        const recorded = await recordEscalationOutcome(tx, input.sessionId, input.escalationId, delivery);
        await appendEvent(tx, {
          sessionId: input.sessionId,
          key: `escalation:${input.escalationId}:delivered`,
          type: 'escalation.delivered',
          // The session's stream is the customer's: the details (hosts, network errors) stay in the escalations row.
          data: { turn: input.turn, success: recorded.success === true, statusCode: recorded.status_code, attempts: recorded.attempts, error: publicDeliveryError(recorded) },
        });
        return recorded;
      });
      const ids = { sessionId: input.sessionId, escalationId: input.escalationId, source: input.source, attempts: stored.attempts, statusCode: stored.status_code };
      if (stored.success) deps.log.info(ids, 'escalation delivered');
      else deps.log.warn({ ...ids, error: stored.error }, 'escalation not delivered');
      return resultOf(messageId, stored);
    } finally {
      clearInterval(beat);
    }
  }

  return classifyingPersistenceErrors({ escalate });
}

function resultOf(messageId: string, row: EscalationRow): EscalateResult {
  return { messageId, success: row.success === true, statusCode: row.status_code, attempts: row.attempts, error: row.error };
}

function cancellationOf(signal: AbortSignal): Error {
  return signal.reason instanceof Error ? signal.reason : new CancelledFailure('the escalation was cancelled');
}

export type EscalationActivities = ReturnType<typeof createEscalationActivities>;

/** What `escalation.delivered` says of a failed delivery: its class only. */
export function publicDeliveryError(recorded: { success: boolean | null; status_code: number | null; error: string | null }): string | null {
  if (recorded.success === true || recorded.error === null) return null;
  if (recorded.error.startsWith('no escalation webhook')) return recorded.error.split(' (')[0]!;
  return recorded.status_code !== null ? `the receiver answered ${recorded.status_code}` : 'the receiver could not be reached';
}
