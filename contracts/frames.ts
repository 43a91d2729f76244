import { z } from 'zod';
import { Id } from './ids';
import { MAX_CONTENT_CHARS } from './limits';

/** Message text: not blank, at most `maxChars` characters (exactly `maxChars` is accepted). */
export function messageContent(maxChars: number) {
  return z
    .string()
    .refine((s) => s.trim().length > 0, 'must not be empty')
    .refine((s) => s.length <= maxChars, `must be at most ${maxChars} characters`);
}

/**
 * The deployment's content limit (KEEL_MAX_CONTENT_CHARS) for REST bodies. Contracts do not
 * read settings, so the API sets it once at start; it can only lower the protocol maximum.
 */
let restContent = messageContent(MAX_CONTENT_CHARS);
export function limitMessageContent(maxChars: number): void {
  restContent = messageContent(Math.min(maxChars, MAX_CONTENT_CHARS));
}
export const MessageContent = z.lazy(() => restContent);

function clientFrameOf(maxContentChars: number) {
  const MessageFrame = z.object({
    type: z.literal('message'),
    content: messageContent(maxContentChars),
    clientMessageId: Id.optional(),
  });
  const PingFrame = z.object({ type: z.literal('ping') });
  const ApprovalFrame = z.object({
    type: z.literal('approval'),
    toolCallId: Id,
    approved: z.boolean(),
    feedback: z.string().max(2000).optional(),
    digest: z.string().max(128).optional(),
  });
  /** `turn` names the turn to stop; without it, whatever turn is running. */
  const CancelFrame = z.object({ type: z.literal('cancel'), turn: z.number().int().positive().optional() });
  /** Relayed to the session's other sockets, never stored (docs/presence.md); `active` defaults to true. */
  const TypingFrame = z.object({ type: z.literal('typing'), active: z.boolean().default(true) });
  return z.discriminatedUnion('type', [MessageFrame, PingFrame, ApprovalFrame, CancelFrame, TypingFrame]);
}

export const ClientFrame = clientFrameOf(MAX_CONTENT_CHARS);
export type ClientFrame = z.infer<typeof ClientFrame>;
export const CLIENT_FRAME_TYPES = ClientFrame.options.map((o) => o.shape.type.value);

const clientFrames = new Map<number, typeof ClientFrame>([[MAX_CONTENT_CHARS, ClientFrame]]);
function clientFrameSchema(maxContentChars: number): typeof ClientFrame {
  let schema = clientFrames.get(maxContentChars);
  if (!schema) clientFrames.set(maxContentChars, (schema = clientFrameOf(maxContentChars)));
  return schema;
}

/** Fields every frame may carry, checked before the frame's type. */
const FrameEnvelope = z.object({ clientMessageId: Id.optional() });

export type FrameCheck = { ok: true; frame: ClientFrame } | { ok: false; code: 'PAYLOAD_TOO_LARGE' | 'INVALID_JSON' | 'VALIDATION_ERROR' | 'UNKNOWN_FRAME_TYPE'; message: string; field?: string };

function invalid(error: z.ZodError): FrameCheck {
  const issue = error.issues[0];
  const field = issue?.path.join('.') || '(root)';
  return { ok: false, code: 'VALIDATION_ERROR', message: `${field}: ${issue?.message ?? 'invalid frame'}`, field };
}

/**
 * Validates a client frame in a fixed order (size, JSON, object, id, empty content, length,
 * unknown type, the frame's other fields) so the same bad frame always gets the same error
 * code. Content checks apply to `message` frames only, so checking the type before the frame's
 * schema keeps that order. The schemas decide every field check.
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
  const envelope = FrameEnvelope.safeParse(value);
  if (!envelope.success) return invalid(envelope.error);
  const type = (value as { type?: unknown }).type;
  if (typeof type !== 'string' || !(CLIENT_FRAME_TYPES as string[]).includes(type)) {
    return { ok: false, code: 'UNKNOWN_FRAME_TYPE', message: `type must be one of: ${CLIENT_FRAME_TYPES.join(', ')}`, field: 'type' };
  }
  const parsed = clientFrameSchema(Math.min(limits.maxContentChars, MAX_CONTENT_CHARS)).safeParse(value);
  return parsed.success ? { ok: true, frame: parsed.data } : invalid(parsed.error);
}
