import { z } from 'zod';
import { parseArgs, ToolInputError, type Tool } from './tool';

const Args = z.object({ timezone: z.string().trim().min(1).max(64).optional() }).strict();
interface Args {
  timezone: string;
}

function formatterFor(timezone: string): Intl.DateTimeFormat {
  try {
    return new Intl.DateTimeFormat('en-US', {
      timeZone: timezone,
      year: 'numeric',
      month: '2-digit',
      day: '2-digit',
      hour: '2-digit',
      minute: '2-digit',
      second: '2-digit',
      hourCycle: 'h23',
      weekday: 'long',
      timeZoneName: 'longOffset',
    });
  } catch {
    throw new ToolInputError(`unknown time zone "${timezone}": use an IANA name such as "Europe/Paris" or "UTC"`);
  }
}

/** The wall-clock time of `date` in `timezone`, as ISO 8601 with the zone's offset (e.g. 2025-03-01T09:30:00+01:00). */
export function localTime(date: Date, timezone: string): { local: string; weekday: string } {
  const parts = Object.fromEntries(formatterFor(timezone).formatToParts(date).map((p) => [p.type, p.value]));
  // longOffset reads "GMT+05:30", or just "GMT" at offset zero.
  const offset = (parts.timeZoneName ?? 'GMT').replace(/^GMT/, '') || '+00:00';
  return {
    local: `${parts.year}-${parts.month}-${parts.day}T${parts.hour}:${parts.minute}:${parts.second}${offset}`,
    weekday: parts.weekday ?? '',
  };
}

export const currentTime: Tool<Args> = {
  definition: {
    name: 'current_time',
    description: 'Returns the current date and time, in UTC and in the given time zone.',
    parameters: {
      type: 'object',
      properties: {
        timezone: { type: 'string', description: 'IANA time zone, e.g. "Europe/Paris". Default: "UTC".' },
      },
      additionalProperties: false,
    },
    permission: 'read',
    requiresApproval: false,
    timeoutMs: 2_000,
    retry: { maxAttempts: 1 },
  },
  parse(args) {
    const { timezone = 'UTC' } = parseArgs(Args, args);
    const resolved = formatterFor(timezone).resolvedOptions().timeZone;
    // ICU resolves some current names to legacy ones (Asia/Kolkata to Asia/Calcutta): keep the caller's unless only the case differs.
    return { timezone: resolved.toLowerCase() === timezone.toLowerCase() ? resolved : timezone };
  },
  async execute({ timezone }) {
    const now = new Date();
    return { iso: now.toISOString(), timezone, ...localTime(now, timezone) };
  },
};
