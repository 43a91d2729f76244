import { z } from 'zod';
import { Id } from './ids';
import { MessageContent } from './frames';
import { MAX_PAGE_SIZE } from './limits';
import { Budget } from './agents';

/**
 * Background runs (POST /api/v1/runs): one turn of a session, submitted without a connection
 * and followed to its end. See docs/runs.md.
 */

export const RunStatus = z.enum(['queued', 'running', 'waiting_approval', 'done', 'error', 'cancelled']);
export type RunStatus = z.infer<typeof RunStatus>;

export const FINAL_RUN_STATUSES: readonly RunStatus[] = ['done', 'error', 'cancelled'];
export const isFinalRunStatus = (status: RunStatus) => FINAL_RUN_STATUSES.includes(status);

/** A run ID is a trace ID: 32 lowercase hex digits. */
export const RunId = z.string().regex(/^[0-9a-f]{32}$/, 'must be a run ID (32 hex digits)');

/** The client message ID a run's input is sent with: a resend of it names the same message. */
export const runClientMessageId = (runId: string) => `run-${runId}`;

/** Error codes that count against availability: the platform (model provider, Temporal, Keel) failed the run. */
export const PLATFORM_FAILURE_CODES = ['LLM_TIMEOUT', 'LLM_RATE_LIMIT', 'LLM_API_ERROR', 'LLM_AUTH_ERROR', 'SERVICE_UNAVAILABLE', 'INTERNAL_ERROR'] as const;

const MAX_WEBHOOK_URL_CHARS = 2048;

/** The shape of a webhook URL; which hosts it may name is checked against the settings (api/run-service.ts). */
export const WebhookUrl = z
  .string()
  .max(MAX_WEBHOOK_URL_CHARS)
  .superRefine((text, ctx) => {
    let url: URL;
    try {
      url = new URL(text);
    } catch {
      ctx.addIssue({ code: z.ZodIssueCode.custom, message: 'must be an absolute http or https URL' });
      return;
    }
    if (url.protocol !== 'http:' && url.protocol !== 'https:') ctx.addIssue({ code: z.ZodIssueCode.custom, message: 'must be an http or https URL' });
    if (url.username || url.password) ctx.addIssue({ code: z.ZodIssueCode.custom, message: 'must not carry credentials (user:password@)' });
  });

export const SubmitRunBody = z
  .object({
    input: MessageContent,
    agentId: Id.optional(),
    sessionId: Id.optional(),
    idempotencyKey: Id.optional(),
    webhookUrl: WebhookUrl.optional(),
    /** Limits for the run's turn; each field replaces the agent's (docs/budgets.md). */
    budget: Budget.optional(),
  })
  .strict();
export type SubmitRunBody = z.infer<typeof SubmitRunBody>;

export const RunListQuery = z.object({
  status: RunStatus.optional(),
  limit: z.coerce.number().int().min(1).max(MAX_PAGE_SIZE).default(50),
});

const DURATION = /^(\d{1,9})(s|m|h|d)$/;
const UNIT_MS = { s: 1_000, m: 60_000, h: 3_600_000, d: 86_400_000 } as const;

/** A duration like `90s`, `15m`, `1h` or `7d`, in milliseconds. */
export const Duration = z
  .string()
  .regex(DURATION, 'must be a duration like 15m, 1h or 24h (s, m, h, d)')
  .transform((text) => {
    const [, amount, unit] = DURATION.exec(text)!;
    return { text, ms: Number(amount) * UNIT_MS[unit as keyof typeof UNIT_MS] };
  })
  .refine((d) => d.ms > 0, 'must be longer than zero');

export const SloQuery = z.object({ window: Duration.default('1h') });
