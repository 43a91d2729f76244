import { createHash, randomUUID } from 'node:crypto';
import { z } from 'zod';

export const ID_PATTERN = /^[a-zA-Z0-9_-]{1,128}$/;
export const Id = z.string().regex(ID_PATTERN, 'must match ^[a-zA-Z0-9_-]{1,128}$');

export function sessionWorkflowId(sessionId: string): string {
  return `session-${sessionId}`;
}

/** A message ID derived from the client's ID, so a repeated send names the same message. */
export function messageIdFor(sessionId: string, clientMessageId?: string): string {
  if (!clientMessageId) return `m_${randomUUID().replace(/-/g, '')}`;
  return `m_${createHash('sha256').update(`${sessionId}\0${clientMessageId}`).digest('hex').slice(0, 32)}`;
}
