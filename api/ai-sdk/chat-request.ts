import { createHash } from 'node:crypto';
import { isToolUIPart, safeValidateUIMessages, type UIMessage } from 'ai';
import type { AiSdkChatBody } from '../../contracts/ai-sdk';
import { KeelError } from '../../contracts/errors';
import { MessageContent } from '../../contracts/frames';
import { ID_PATTERN } from '../../contracts/ids';
import { ApprovalBody } from '../../contracts/rest';

/** An approval answered in the client's last (assistant) message: a claim, checked against the server's approval when it is decided. */
export interface ApprovalResponse {
  toolCallId: string;
  approvalId: string;
  approved: boolean;
  reason?: string;
}

/**
 * What a POST asks for, read from one message only: the client's history is never trusted
 * (Keel holds the conversation). A user message is sent to the session; an assistant message
 * carrying approval responses decides those approvals. That message is the last one, or the
 * assistant message `messageId` names on a submit (useChat answers approvals in the message
 * that asked, which a refused user message may follow).
 */
export type ChatRequest =
  | {
      kind: 'message';
      content: string;
      /** The message's key; a plain regenerate (no messageId) is keyed by the server: regenerateKey. */
      clientMessageId: string | { regenerateOf: string };
    }
  | {
      kind: 'approvals';
      /** The assistant UI message the answers are in: the stream continues it. */
      uiMessageId: string;
      responses: ApprovalResponse[];
      /** Tool calls that message has a part for, so the stream may update them. */
      toolCallIds: string[];
    };

export async function readChatRequest(body: AiSdkChatBody): Promise<ChatRequest> {
  const index = answeringIndex(body) ?? body.messages.length - 1;
  const field = `messages.${index}`;
  const validated = await safeValidateUIMessages({ messages: [body.messages[index]] });
  if (!validated.success) throw new KeelError('VALIDATION_ERROR', 'The last message is not a UI message of the AI SDK', [{ field, problem: problemOf(validated.error) }]);
  const message = validated.data[0]!;
  if (message.role === 'user') {
    return { kind: 'message', content: contentOf(message, field), clientMessageId: clientMessageIdOf(body, message) };
  }
  const responses = message.role === 'assistant' && body.trigger === 'submit-message' ? approvalResponsesOf(message, field) : [];
  if (responses.length === 0) {
    throw new KeelError('VALIDATION_ERROR', 'The last message must be the new user message, or an assistant message answering approvals', [{ field: `${field}.role`, problem: 'expected a user message or approval responses' }]);
  }
  return { kind: 'approvals', uiMessageId: message.id, responses, toolCallIds: message.parts.filter(isToolUIPart).map((p) => p.toolCallId) };
}

/** The index of the assistant message a submit's `messageId` names, if the body has one. */
function answeringIndex(body: AiSdkChatBody): number | undefined {
  if (body.trigger !== 'submit-message' || body.messageId === undefined) return undefined;
  const index = body.messages.findIndex((m) => (m as { id?: unknown; role?: unknown } | null)?.id === body.messageId && (m as { role?: unknown }).role === 'assistant');
  return index === -1 ? undefined : index;
}

function contentOf(message: UIMessage, field: string): string {
  if (message.parts.some((p) => p.type === 'file')) throw new KeelError('VALIDATION_ERROR', 'The request is invalid', [{ field: `${field}.parts`, problem: 'file parts are not supported' }]);
  const text = message.parts.flatMap((p) => (p.type === 'text' ? [p.text] : [])).join('\n');
  const parsed = MessageContent.safeParse(text);
  if (!parsed.success) throw new KeelError('VALIDATION_ERROR', 'The request is invalid', [{ field: `${field}.parts`, problem: `the text ${parsed.error.issues[0]?.message ?? 'is invalid'}` }]);
  return parsed.data;
}

/**
 * The user message's own ID, so a repeated POST is the same message (a UI message ID that is
 * not a Keel ID is hashed into one). A regenerate asks again: a new message, keyed by the
 * reply it replaces (useChat's `messageId`), or, for a plain `regenerate()` that names none, by
 * the session's last finished turn (regenerateKey), so that a retried regenerate is still one message.
 */
function clientMessageIdOf(body: AiSdkChatBody, message: UIMessage): string | { regenerateOf: string } {
  const own = ID_PATTERN.test(message.id) ? message.id : `ui_${hash(message.id)}`;
  if (body.trigger === 'submit-message') return own;
  return body.messageId === undefined ? { regenerateOf: own } : `rg_${hash(`${own}\0${body.messageId}`)}`;
}

/** The key of a regenerate of user message `own` that names no reply: the session's last finished turn is the reply it replaces. */
export function regenerateKey(own: string, lastDoneTurn: number): string {
  return `rg_${hash(`${own}\0after-turn:${lastDoneTurn}`)}`;
}

function approvalResponsesOf(message: UIMessage, field: string): ApprovalResponse[] {
  const responses: ApprovalResponse[] = [];
  for (const [index, part] of message.parts.entries()) {
    // One answer per call: a second part of the same call is not a second decision.
    if (!isToolUIPart(part) || part.state !== 'approval-responded' || responses.some((r) => r.toolCallId === part.toolCallId)) continue;
    const { id, approved, reason } = part.approval;
    // The reason is stored as the decision's feedback: the approvals API's limit holds.
    const checked = ApprovalBody.shape.feedback.safeParse(reason);
    if (!checked.success) throw new KeelError('VALIDATION_ERROR', 'The request is invalid', [{ field: `${field}.parts.${index}.approval.reason`, problem: checked.error.issues[0]?.message ?? 'invalid' }]);
    responses.push({ toolCallId: part.toolCallId, approvalId: id, approved, ...(reason ? { reason } : {}) });
  }
  return responses;
}

function hash(text: string): string {
  return createHash('sha256').update(text).digest('hex').slice(0, 32);
}

/** The validator's complaint without the value it was given (errors never echo input). */
function problemOf(error: Error): string {
  const issues = (error.cause as { issues?: { path?: PropertyKey[]; message?: string }[] } | undefined)?.issues;
  const first = issues?.[0];
  if (!first) return 'invalid';
  const path = (first.path ?? []).slice(1).map(String).join('.');
  return `${path ? `${path}: ` : ''}${first.message ?? 'invalid'}`;
}
