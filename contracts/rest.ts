import { z } from 'zod';
import { Id } from './ids';
import { ToolResultStatus } from './events';
import { MessageContent } from './frames';
import { MAX_PAGE_SIZE } from './limits';
import { AGENT_ID_PATTERN } from './agents';
import { ConversationCursor } from './conversations';

export const CreateSessionBody = z
  .object({
    title: z.string().max(200).optional(),
    agentId: Id.optional(),
  })
  .strict();

export const PostMessageBody = z
  .object({
    content: MessageContent,
    clientMessageId: Id.optional(),
  })
  .strict();

export const ChatBody = z
  .object({
    content: MessageContent,
    clientMessageId: Id.optional(),
    stream: z.boolean().default(false),
    attachments: z.array(z.unknown()).max(0, 'attachments are not supported yet').optional(),
  })
  .strict();

/** One tool call of a /chat turn, from its `tool.call` and `tool.result` events; `pending` until it has a result. */
export const ChatToolCall = z.object({
  toolCallId: z.string(),
  name: z.string(),
  arguments: z.unknown(),
  status: z.union([ToolResultStatus, z.literal('pending')]),
  result: z.unknown().optional(),
  error: z.object({ code: z.string(), message: z.string() }).optional(),
});
export type ChatToolCall = z.infer<typeof ChatToolCall>;

/** The answer of `/chat` (`stream:false`), and the data of its `done` SSE event. `messageId` is the reply's ID. */
export const ChatReply = z.object({ messageId: z.string(), content: z.string(), toolCalls: z.array(ChatToolCall) });
export type ChatReply = z.infer<typeof ChatReply>;

/**
 * Details of a /chat wait that ran out (CHAT_TIMEOUT, APPROVAL_PENDING): the turn goes on, and
 * its events follow `after` in the log (GET …/events?after=). APPROVAL_PENDING adds the calls
 * waiting for a decision and the earliest time one of them expires.
 */
export const ChatWaitDetails = z.object({
  after: z.number().int().nonnegative(),
  turn: z.number().int().positive().optional(),
  toolCallIds: z.array(z.string()).optional(),
  expiresAt: z.string().optional(),
});
export type ChatWaitDetails = z.infer<typeof ChatWaitDetails>;

export const PageQuery = z.object({
  limit: z.coerce.number().int().min(1).max(MAX_PAGE_SIZE).default(50),
  after: z.coerce.number().int().min(0).default(0),
});

/** GET /sessions: the caller's sessions (all for an admin), newest first; `cursor` is a `nextCursor` (a conversation is a session, so its cursor). */
export const SessionListQuery = z.object({
  status: z.enum(['active', 'expired']).optional(),
  agent: z.string().regex(AGENT_ID_PATTERN, 'must be an agent ID (1 to 64 letters, digits, "_" or "-")').optional(),
  limit: PageQuery.shape.limit,
  cursor: ConversationCursor.optional(),
});
export type SessionListQuery = z.infer<typeof SessionListQuery>;

export const AfterSeqQuery = z.object({
  after: z.coerce.number().int().min(0).optional(),
  streamOffset: z.coerce.number().int().min(0).optional(),
});

export const ApprovalBody = z
  .object({
    approved: z.boolean(),
    feedback: z.string().max(2000).optional(),
    digest: z.string().max(128).optional(),
    approver: z.string().max(128).optional(),
  })
  .strict();

export const ApprovalListQuery = z.object({
  status: z.enum(['pending']).default('pending'),
  limit: z.coerce.number().int().min(1).max(MAX_PAGE_SIZE).default(50),
});

/** POST …/cancel: which turn to stop; without `turn`, the one running when the request arrives. */
export const CancelBody = z
  .object({
    turn: z.number().int().positive().optional(),
  })
  .strict();

/** POST /api/v1/admin/tokens (X-API-Key): a token for a user, admin or not. */
export const IssueTokenBody = z.object({ userId: Id, admin: z.boolean().default(false), label: z.string().max(200).optional() }).strict();
