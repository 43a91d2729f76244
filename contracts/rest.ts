import { z } from 'zod';
import { Id } from './ids';
import { MessageContent } from './frames';
import { MAX_PAGE_SIZE } from './limits';

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

export const PageQuery = z.object({
  limit: z.coerce.number().int().min(1).max(MAX_PAGE_SIZE).default(50),
  after: z.coerce.number().int().min(0).default(0),
});

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
