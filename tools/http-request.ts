import type { IncomingHttpHeaders } from 'node:http';
import { z } from 'zod';
import { CLIENT_OWNED_HEADERS, guardedFetch, parseHttpUrl, type LookupAll } from './guarded-fetch';
import { throwForHttpStatus } from './http-failures';
import { DEFAULT_TOOL_SETTINGS, parseArgs, ToolInputError, ToolRefusedError, type Tool } from './tool';

// The address rules live in guarded-fetch.ts; these names stay importable from here.
export { blockedAddressRule, resolveAndCheck, type LookupAll, type PinnedTarget } from './guarded-fetch';

const MAX_HEADERS = 20;
const RETURNED_HEADERS = ['content-type', 'content-length', 'content-language', 'last-modified', 'etag', 'cache-control', 'expires', 'date', 'location'];
/** Headers the runtime owns (the guarded client's). */
const FORBIDDEN_HEADERS = CLIENT_OWNED_HEADERS;
const HEADER_NAME = /^[!#$%&'*+.^_`|~0-9A-Za-z-]+$/;
const HEADER_VALUE = /^[^\u0000-\u0008\u000a-\u001f\u007f]*$/;

// ---------------------------------------------------------------------------------------------
// The request

const Args = z
  .object({
    url: z.string().min(1).max(4096),
    method: z.string().optional(),
    headers: z.record(z.string().max(4096)).optional(),
  })
  .strict();

export interface HttpRequestArgs {
  url: string;
  method: 'GET' | 'HEAD';
  headers: Record<string, string>;
}

export interface HttpRequestResult {
  /** The URL that answered, after redirects. */
  url: string;
  status: number;
  headers: Record<string, string>;
  body: string;
  truncated: boolean;
}

function parseMethod(method: string | undefined): 'GET' | 'HEAD' {
  const upper = (method ?? 'GET').toUpperCase();
  if (upper === 'GET' || upper === 'HEAD') return upper;
  throw new ToolRefusedError(`method ${upper} is refused: http_request is a read tool, only GET and HEAD are allowed`);
}

function parseHeaders(headers: Record<string, string> = {}): Record<string, string> {
  const entries = Object.entries(headers);
  if (entries.length > MAX_HEADERS) throw new ToolInputError(`headers: at most ${MAX_HEADERS} are allowed`);
  for (const [name, value] of entries) {
    if (!HEADER_NAME.test(name)) throw new ToolInputError(`headers: "${name}" is not a valid header name`);
    if (FORBIDDEN_HEADERS.has(name.toLowerCase())) throw new ToolInputError(`headers: "${name}" is set by the tool and cannot be given`);
    if (!HEADER_VALUE.test(value)) throw new ToolInputError(`headers: the value of "${name}" contains control characters`);
  }
  return Object.fromEntries(entries.map(([name, value]) => [name.toLowerCase(), value]));
}

function pickHeaders(headers: IncomingHttpHeaders): Record<string, string> {
  const picked: Record<string, string> = {};
  for (const name of RETURNED_HEADERS) {
    const value = headers[name];
    if (value !== undefined) picked[name] = Array.isArray(value) ? value.join(', ') : value;
  }
  return picked;
}

/** How much longer than its own request time-out the http_request tool may run. */
export const HTTP_TIMEOUT_MARGIN_MS = 2_000;

/** Builds the tool; tests inject `lookup` to play DNS. */
export function createHttpRequestTool(deps: { lookup?: LookupAll } = {}): Tool<HttpRequestArgs> {
  return {
    definition: {
      name: 'http_request',
      description:
        'Fetches a public http(s) URL with GET or HEAD and returns the status, a few response headers and the body as text (truncated when large). Private and internal addresses are refused. A 4xx answer is reported as an error quoting what the service said.',
      parameters: {
        type: 'object',
        properties: {
          url: { type: 'string', description: 'Absolute http or https URL.', maxLength: 4096 },
          method: { type: 'string', enum: ['GET', 'HEAD'], description: 'Default: GET.' },
          headers: { type: 'object', additionalProperties: { type: 'string' }, description: 'Extra request headers, e.g. {"accept": "application/json"}.' },
        },
        required: ['url'],
        additionalProperties: false,
      },
      permission: 'read',
      requiresApproval: false,
      // Above the request's own time-out (settings.httpTimeoutMs), which ends the call first with a
      // clearer message; toolDefinitions() raises it with KEEL_HTTP_TIMEOUT_MS.
      timeoutMs: DEFAULT_TOOL_SETTINGS.httpTimeoutMs + HTTP_TIMEOUT_MARGIN_MS,
      // One try and three retries of a transient failure (408, 429, 5xx, a time-out), with exponential back-off.
      retry: { maxAttempts: 4 },
    },
    parse(args) {
      const parsed = parseArgs(Args, args);
      return { url: parseHttpUrl(parsed.url).href, method: parseMethod(parsed.method), headers: parseHeaders(parsed.headers) };
    },
    async execute(args, ctx) {
      const timeoutMs = ctx.settings.httpTimeoutMs > 0 ? ctx.settings.httpTimeoutMs : DEFAULT_TOOL_SETTINGS.httpTimeoutMs;
      const maxBytes = ctx.settings.httpMaxBytes > 0 ? ctx.settings.httpMaxBytes : DEFAULT_TOOL_SETTINGS.httpMaxBytes;
      const answer = await guardedFetch({
        url: args.url,
        method: args.method,
        headers: args.headers,
        allowHosts: ctx.settings.httpAllowHosts,
        timeoutMs,
        maxBytes,
        signal: ctx.signal,
        userAgent: 'keel-http-request/1',
        ...(deps.lookup ? { lookup: deps.lookup } : {}),
      });
      const result: HttpRequestResult = { url: answer.url, status: answer.status, headers: pickHeaders(answer.headers), body: answer.body, truncated: answer.truncated };
      const answered = new URL(result.url);
      throwForHttpStatus(result.status, `${args.method} ${answered.origin}${answered.pathname}`, result.body);
      return result;
    },
  };
}

export const httpRequest = createHttpRequestTool();
