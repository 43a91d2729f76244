import { ApplicationFailure } from '@temporalio/common';
import { DataIntegrityError, InputSyntaxError, IntegrityConstraintViolationError, InvalidInputError, SchemaValidationError } from 'slonik';
import { ZodError } from 'zod';
import { PERSISTENCE_INVALID } from '../contracts/turn';

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
    error instanceof ZodError;
  if (!deterministic) return error;
  return ApplicationFailure.create({ type: PERSISTENCE_INVALID, message: `write refused: ${(error as Error).message}`, nonRetryable: true, cause: error as Error });
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
