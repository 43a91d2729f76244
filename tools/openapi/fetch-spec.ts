import { STATUS_CODES } from 'node:http';
import { KeelError } from '../../contracts/errors';
import { classifyHttpStatus } from '../http-failures';
import { GuardInputError, GuardRefusedError, guardedFetch, MAX_REDIRECTS, type LookupAll } from '../guarded-fetch';
import { ToolTimeoutError } from '../tool';

export interface SpecFetchOptions {
  /** KEEL_OPENAPI_ALLOW_HOSTS. */
  allowHosts: readonly string[];
  timeoutMs: number;
  maxBytes: number;
  signal?: AbortSignal;
  lookup?: LookupAll;
}

/**
 * A spec fetch that may work on another attempt (the host is down, answered 5xx, 408 or 429, or
 * too slowly): thrown as is, for the activity's retries; after the last one the import fails
 * with SPEC_FETCH_FAILED.
 */
export class SpecFetchTransientError extends Error {
  override readonly name = 'SpecFetchTransientError';
}

/**
 * Fetches a spec's text under the SSRF rules (docs/tools.md): every refusal is a KeelError with
 * its own code, and a refused address is never connected to.
 */
export async function fetchSpecText(url: string, options: SpecFetchOptions): Promise<string> {
  let answer;
  try {
    answer = await guardedFetch({
      url,
      headers: { accept: 'application/json, application/yaml, application/x-yaml, text/yaml, text/plain;q=0.5, */*;q=0.1' },
      allowHosts: options.allowHosts,
      timeoutMs: options.timeoutMs,
      maxBytes: options.maxBytes,
      overflow: 'refuse',
      maxRedirects: MAX_REDIRECTS,
      userAgent: 'keel-openapi-import/1',
      ...(options.signal ? { signal: options.signal } : {}),
      ...(options.lookup ? { lookup: options.lookup } : {}),
    });
  } catch (error) {
    throw specFetchError(error, options);
  }
  const status = answer.status;
  if (status >= 300) {
    const message = `GET ${new URL(answer.url).origin}${new URL(answer.url).pathname} answered ${status}${STATUS_CODES[status] ? ` ${STATUS_CODES[status]}` : ''}`;
    if (classifyHttpStatus(status) === 'transient') throw new SpecFetchTransientError(message);
    throw new KeelError('SPEC_FETCH_FAILED', message);
  }
  return answer.body;
}

function specFetchError(error: unknown, options: SpecFetchOptions): unknown {
  if (error instanceof GuardRefusedError) return new KeelError('SPEC_FETCH_REFUSED', `The spec URL is refused: ${error.message}`);
  if (error instanceof GuardInputError) {
    switch (error.reason) {
      case 'too_many_redirects':
        return new KeelError('SPEC_TOO_MANY_REDIRECTS', `Fetching the spec took ${error.message}`);
      case 'too_large':
        return new KeelError('SPEC_TOO_LARGE', `The spec is larger than ${options.maxBytes} bytes (KEEL_OPENAPI_MAX_BYTES)`);
      default:
        return new KeelError('SPEC_FETCH_FAILED', `The spec could not be fetched: ${error.message}`);
    }
  }
  if (error instanceof ToolTimeoutError) return new SpecFetchTransientError(`Fetching the spec ${error.message.replace(/^request to /, 'from ')}`);
  if (options.signal?.aborted) return error;
  return new SpecFetchTransientError(`The spec could not be fetched: ${(error as Error).message}`);
}
