import { z } from 'zod';

export const ID_PATTERN = /^[a-zA-Z0-9_-]{1,128}$/;
export const Id = z.string().regex(ID_PATTERN, 'must match ^[a-zA-Z0-9_-]{1,128}$');

export function sessionWorkflowId(sessionId: string): string {
  return `session-${sessionId}`;
}
