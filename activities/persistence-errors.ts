import { ApplicationFailure } from '@temporalio/common';
import { DataIntegrityError, InputSyntaxError, IntegrityConstraintViolationError, InvalidInputError, SchemaValidationError } from 'slonik';
import { ZodError, type z } from 'zod';
import { FailureType } from '../contracts/failure-types';

/**
 * A write that failed because of what it tried to write (a constraint, a schema, bad input)
 * fails the same way on every retry: it becomes a non-retryable PERSISTENCE_INVALID, so the turn
 * ends with a clear error instead of retrying forever. Anything else (the database is down, a
 * connection was cut, a statement timed out) is thrown as it is, for Temporal to retry.
 */
export function classifyPersistenceError(error: unknown): unknown {
  const deterministic =
    error instanceof IntegrityConstraintViolationError ||
    error instanceof SchemaValidationError ||
    error instanceof DataIntegrityError ||
    error instanceof InvalidInputError ||
    error instanceof InputSyntaxError ||
    error instanceof ZodError ||
    isDataOrIntegrityError(error);
  if (!deterministic) return error;
  return ApplicationFailure.create({ type: FailureType.persistenceInvalid, message: `write refused: ${(error as Error).message}`, nonRetryable: true, cause: error as Error });
}

/**
 * Parses an activity's input with its contract schema. Input the contract refuses was sent by
 * workflow code: a non-retryable ACTIVITY_INPUT_INVALID, which the workflow treats as its own
 * bug (its task fails until fixed code is deployed) rather than as a failed write.
 */
export function parseActivityInput<S extends z.ZodTypeAny>(schema: S, raw: unknown): z.output<S> {
  const parsed = schema.safeParse(raw);
  if (parsed.success) return parsed.data as z.output<S>;
  throw ApplicationFailure.create({ type: FailureType.activityInputInvalid, message: `input breaks the activity contract: ${parsed.error.issues.map((i) => `${i.path.join('.') || '(root)'}: ${i.message}`).join('; ')}`, nonRetryable: true });
}

/** Postgres SQLSTATE classes 22 (data exception) and 23 (integrity): the value itself is refused. */
function isDataOrIntegrityError(error: unknown): boolean {
  for (let e = error as { code?: unknown; cause?: unknown } | undefined, depth = 0; e && depth < 4; e = e.cause as typeof e, depth++) {
    if (typeof e.code === 'string' && /^2[23][0-9A-Z]{3}$/.test(e.code)) return true;
  }
  return false;
}

/**
 * Postgres cannot store U+0000 in text or jsonb: a model reply or a tool result carrying one is
 * stored with U+FFFD in its place rather than failing the write (and the turn) every time.
 */
export function storableText(text: string): string {
  return text.includes('\u0000') ? text.replaceAll('\u0000', '\uFFFD') : text;
}

/** The same for a JSON value (a tool's result), as JSON would carry it. */
export function storableJson(value: unknown): unknown {
  if (value === undefined) return undefined;
  const clean = (v: unknown): unknown => {
    if (typeof v === 'string') return storableText(v);
    if (Array.isArray(v)) return v.map(clean);
    if (v && typeof v === 'object') return Object.fromEntries(Object.entries(v).map(([k, x]) => [storableText(k), clean(x)]));
    return v;
  };
  return clean(JSON.parse(JSON.stringify(value)) as unknown);
}

/** Wraps each activity so its failures are classified as above. */
export function classifyingPersistenceErrors<T extends Record<string, (...args: never[]) => Promise<unknown>>>(activities: T): T {
  const wrapped: Record<string, unknown> = {};
  for (const [name, fn] of Object.entries(activities)) {
    wrapped[name] = async (...args: never[]) => {
      try {
        return await fn(...args);
      } catch (error) {
        throw classifyPersistenceError(error);
      }
    };
  }
  return wrapped as T;
}
