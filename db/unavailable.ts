import { BackendTerminatedError, BackendTerminatedUnexpectedlyError, ConnectionError } from 'slonik';

/** Network errors of a connection that cannot be made or was cut. */
const NETWORK_CODES = new Set(['ECONNREFUSED', 'ECONNRESET', 'ETIMEDOUT', 'EPIPE', 'EHOSTUNREACH', 'ENETUNREACH', 'ENOTFOUND']);
/** Postgres' own: admin shutdown, crash shutdown, cannot connect now, connection exceptions (class 08). */
const SERVER_CODES = /^(57P0[123]|08...)$/;
/** gRPC's UNAVAILABLE and DEADLINE_EXCEEDED: Temporal could not be reached in time. */
const GRPC_CODES = new Set([14, 4]);

/**
 * Whether a failure means Postgres or Temporal cannot be reached (down, restarting, cut off)
 * rather than a bug or bad input: the API answers SERVICE_UNAVAILABLE for it, never 500.
 */
export function isDependencyUnavailable(error: unknown): boolean {
  for (let e = error, depth = 0; e && depth < 5; e = (e as { cause?: unknown }).cause, depth++) {
    if (e instanceof ConnectionError || e instanceof BackendTerminatedError || e instanceof BackendTerminatedUnexpectedlyError) return true;
    const code = (e as { code?: unknown }).code;
    if (typeof code === 'string' && (NETWORK_CODES.has(code) || SERVER_CODES.test(code))) return true;
    if (typeof code === 'number' && GRPC_CODES.has(code) && (e as { metadata?: unknown }).metadata !== undefined) return true;
    const message = (e as { message?: unknown }).message;
    if (typeof message === 'string' && /timeout exceeded when trying to connect|Connection terminated|connect ECONNREFUSED/i.test(message)) return true;
  }
  return false;
}
