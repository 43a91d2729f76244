import { z } from 'zod';
import { Id } from './ids';

/** What a POST of useChat's default transport asks for (`resume-stream` is the GET of the stream instead). */
export const AiSdkTrigger = z.enum(['submit-message', 'regenerate-message']);
export type AiSdkTrigger = z.infer<typeof AiSdkTrigger>;

/**
 * The body useChat's DefaultChatTransport (ai 6) POSTs to `/api/v1/ai-sdk/chat`: the chat `id`
 * (mapped to a session of the caller), its `messages` (UIMessage[]: only the last one is read,
 * and it is validated with the ai package's own `validateUIMessages`, so its shape is not
 * written here a second time), the `trigger`, the `messageId` it concerns, and Keel's `agentId`
 * for a new chat (sent through the transport's `body` option). docs/ai-sdk.md.
 */
export const AiSdkChatBody = z
  .object({
    id: Id,
    messages: z.array(z.unknown()).min(1),
    trigger: AiSdkTrigger,
    messageId: z.string().max(256).optional(),
    agentId: Id.optional(),
  })
  .strict();
export type AiSdkChatBody = z.infer<typeof AiSdkChatBody>;

/** `GET /api/v1/ai-sdk/chat/:id/stream`: the chat whose running reply is resumed. */
export const AiSdkChatParams = z.object({ id: Id });
