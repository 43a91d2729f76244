import type { Client } from '@temporalio/client';
import type { CommonQueryMethods } from 'slonik';
import type { Budget } from '../contracts/agents';
import { sessionWorkflowId } from '../contracts/ids';
import { userMessageSignal } from '../contracts/workflow-messages';
import { storeIncomingMessage, type IncomingMessage } from '../db/messages';
import { unhit, type RateDecision, type RateLimit } from '../db/rate-limits';

/**
 * Stores a user message, then tells the session's workflow its ID (never its content): how the
 * API sends every message, and how the worker's outbox sends a run's message its request never
 * sent. A message already answered in a turn is not signalled again. With a rate limit, the hit
 * is counted as the message is stored (one statement), a refused one stores nothing, and a send
 * whose signal then fails gives its hit back. Temporal's errors are the caller's to map.
 */
export async function deliverUserMessage(
  pool: CommonQueryMethods,
  client: Client,
  m: { sessionId: string; messageId: string; content: string; clientMessageId?: string; requestId: string; budget?: Budget },
  rate: RateLimit | null = null,
): Promise<IncomingMessage | { refused: RateDecision }> {
  const stored = await storeIncomingMessage(pool, { id: m.messageId, sessionId: m.sessionId, content: m.content, ...(m.clientMessageId ? { clientMessageId: m.clientMessageId } : {}) }, rate);
  if (stored === 'accepted' || typeof stored === 'object') return stored;
  try {
    await client.workflow.getHandle(sessionWorkflowId(m.sessionId)).signal(userMessageSignal, {
      messageId: m.messageId,
      requestId: m.requestId,
      ...(m.clientMessageId ? { clientMessageId: m.clientMessageId } : {}),
      ...(m.budget ? { budget: m.budget } : {}),
    });
  } catch (error) {
    if (rate) await unhit(pool, rate.key, rate.windowMs).catch(() => undefined);
    throw error;
  }
  return stored;
}
