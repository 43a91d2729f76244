import { z } from 'zod';
import { Id } from './ids';
import { MAX_CONTENT_CHARS } from './limits';

export const MessageContent = z
  .string()
  .refine((s) => s.trim().length > 0, 'must not be empty')
  .refine((s) => s.length <= MAX_CONTENT_CHARS, `must be at most ${MAX_CONTENT_CHARS} characters`);

export const MessageFrame = z.object({
  type: z.literal('message'),
  content: MessageContent,
  clientMessageId: Id.optional(),
});

export const PingFrame = z.object({ type: z.literal('ping') });

export const ApprovalFrame = z.object({
  type: z.literal('approval'),
  toolCallId: Id,
  approved: z.boolean(),
  feedback: z.string().max(2000).optional(),
  digest: z.string().max(128).optional(),
});

export const CancelFrame = z.object({ type: z.literal('cancel') });

export const ClientFrame = z.discriminatedUnion('type', [MessageFrame, PingFrame, ApprovalFrame, CancelFrame]);
export type ClientFrame = z.infer<typeof ClientFrame>;
export const CLIENT_FRAME_TYPES = ClientFrame.options.map((o) => o.shape.type.value);

export type FrameCheck = { ok: true; frame: ClientFrame } | { ok: false; code: 'PAYLOAD_TOO_LARGE' | 'INVALID_JSON' | 'VALIDATION_ERROR' | 'UNKNOWN_FRAME_TYPE'; message: string; field?: string };

/**
 * Validates a client frame in a fixed order (size, JSON, object, id, empty content, length,
 * unknown type) so the same bad frame always gets the same error code.
 */
export function checkClientFrame(raw: string, limits: { maxFrameBytes: number; maxContentChars: number }): FrameCheck {
  if (Buffer.byteLength(raw) > limits.maxFrameBytes) return { ok: false, code: 'PAYLOAD_TOO_LARGE', message: `Frame exceeds ${limits.maxFrameBytes} bytes` };
  let value: unknown;
  try {
    value = JSON.parse(raw);
  } catch {
    return { ok: false, code: 'INVALID_JSON', message: 'Frame is not valid JSON' };
  }
  if (typeof value !== 'object' || value === null || Array.isArray(value)) return { ok: false, code: 'VALIDATION_ERROR', message: 'Frame must be a JSON object', field: '(root)' };
  const obj = value as Record<string, unknown>;
  if ('clientMessageId' in obj && !Id.safeParse(obj.clientMessageId).success) {
    return { ok: false, code: 'VALIDATION_ERROR', message: 'clientMessageId must match ^[a-zA-Z0-9_-]{1,128}$', field: 'clientMessageId' };
  }
  if (obj.type === 'message') {
    if (typeof obj.content !== 'string' || obj.content.trim() === '') return { ok: false, code: 'VALIDATION_ERROR', message: 'content must be a non-empty string', field: 'content' };
    if (obj.content.length > limits.maxContentChars) {
      return { ok: false, code: 'VALIDATION_ERROR', message: `content must be at most ${limits.maxContentChars} characters`, field: 'content' };
    }
  }
  if (typeof obj.type !== 'string' || !(CLIENT_FRAME_TYPES as string[]).includes(obj.type)) {
    return { ok: false, code: 'UNKNOWN_FRAME_TYPE', message: `type must be one of: ${CLIENT_FRAME_TYPES.join(', ')}`, field: 'type' };
  }
  const parsed = ClientFrame.safeParse(obj);
  if (!parsed.success) {
    const issue = parsed.error.issues[0];
    return { ok: false, code: 'VALIDATION_ERROR', message: issue?.message ?? 'invalid frame', field: issue?.path.join('.') || '(root)' };
  }
  return { ok: true, frame: parsed.data };
}
