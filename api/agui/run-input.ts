import { createHash } from 'node:crypto';
import { contentHasMedia, contentToText, type ResumeEntry, type RunAgentInput } from '@ag-ui/core';
import { RunAgentInputSchema } from '@ag-ui/core/schemas';
import type { z } from 'zod/v4';
import { KeelError } from '../../contracts/errors';
import { MessageContent } from '../../contracts/frames';

/** The user message a run carries: the last `user` message of its input. */
export interface RunUserMessage {
  /** The client's message ID. */
  id: string;
  content: string;
  /** Keel's idempotency key for it, derived from the client's ID: a retried run is the same message. */
  clientMessageId: string;
}

export interface AguiRunRequest {
  input: RunAgentInput;
  userMessage: RunUserMessage | undefined;
  resume: ResumeEntry[];
}

/** Names fields, never echoes values (as contracts/errors.ts describeIssues does for zod 3). */
function describeIssues(error: z.core.$ZodError): { field: string; problem: string }[] {
  return error.issues.slice(0, 20).map((issue) => ({
    field: issue.path.map(String).join('.') || '(root)',
    problem: issue.code === 'unrecognized_keys' ? 'unknown fields are not allowed' : issue.message,
  }));
}

/** A Keel clientMessageId (^[a-zA-Z0-9_-]{1,128}$) for an AG-UI message ID, which may be any string. */
export function clientMessageIdOf(messageId: string): string {
  return `agui-${createHash('sha256').update(messageId).digest('hex').slice(0, 40)}`;
}

/**
 * Validates a RunAgentInput with @ag-ui/core's own schema and takes from it what Keel uses: the
 * last user message (the only part of the client's history that is read: the session's own
 * history is what the model sees) and the resume entries. Its text is held to the limits of
 * every other message (KEEL_MAX_CONTENT_CHARS); media parts are refused.
 */
export function parseRunInput(body: unknown): AguiRunRequest {
  const parsed = RunAgentInputSchema.safeParse(body);
  if (!parsed.success) throw new KeelError('VALIDATION_ERROR', 'The request is not an AG-UI RunAgentInput', describeIssues(parsed.error));
  const input = parsed.data as RunAgentInput;
  const last = [...input.messages].reverse().find((m) => m.role === 'user');
  let userMessage: RunUserMessage | undefined;
  if (last && last.role === 'user') {
    if (contentHasMedia(last.content)) throw new KeelError('VALIDATION_ERROR', 'The request is invalid', [{ field: 'messages.content', problem: 'only text content is supported' }]);
    const text = MessageContent.safeParse(contentToText(last.content));
    if (!text.success) throw new KeelError('VALIDATION_ERROR', 'The request is invalid', text.error.issues.map((i) => ({ field: 'messages.content', problem: i.message })));
    const content = text.data as string;
    userMessage = { id: last.id, content, clientMessageId: clientMessageIdOf(last.id) };
  }
  return { input, userMessage, resume: input.resume ?? [] };
}
