import type { z } from 'zod';

/** Model output that must be JSON of `schema` (structured output): the parsed value, or null when it is not. */
export function parseJsonText<S extends z.ZodTypeAny>(schema: S, text: string | null | undefined): z.output<S> | null {
  if (!text) return null;
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch {
    return null;
  }
  const parsed = schema.safeParse(value);
  return parsed.success ? (parsed.data as z.output<S>) : null;
}
