import { lookup as dnsLookup } from 'node:dns/promises';
import type { LookupAddress } from 'node:dns';
import http, { type IncomingHttpHeaders, type IncomingMessage } from 'node:http';
import https from 'node:https';
import { isIP, type LookupFunction } from 'node:net';
import { z } from 'zod';
import { throwForHttpStatus } from './http-failures';
import { DEFAULT_TOOL_SETTINGS, parseArgs, ToolInputError, ToolRefusedError, ToolTimeoutError, type Tool, type ToolContext } from './tool';

const MAX_REDIRECTS = 5;
const MAX_HEADERS = 20;
const REDIRECT_STATUSES = new Set([301, 302, 303, 307, 308]);
const RETURNED_HEADERS = ['content-type', 'content-length', 'content-language', 'last-modified', 'etag', 'cache-control', 'expires', 'date', 'location'];
/** Headers the runtime owns: framing, routing and encoding must match what this module does with the connection. */
const FORBIDDEN_HEADERS = new Set([
  'host',
  'connection',
  'content-length',
  'transfer-encoding',
  'te',
  'trailer',
  'upgrade',
  'keep-alive',
  'expect',
  'accept-encoding',
  'proxy-authorization',
  'proxy-connection',
]);
/** Dropped when a redirect leaves the origin the caller gave them for. */
const CREDENTIAL_HEADERS = new Set(['authorization', 'cookie']);
const HEADER_NAME = /^[!#$%&'*+.^_`|~0-9A-Za-z-]+$/;
const HEADER_VALUE = /^[^\u0000-\u0008\u000a-\u001f\u007f]*$/;

// ---------------------------------------------------------------------------------------------
// Address rules

interface Block {
  cidr: string;
  label: string;
}

const IPV4_BLOCKS: Block[] = [
  { cidr: '0.0.0.0/8', label: 'unspecified ("this network")' },
  { cidr: '10.0.0.0/8', label: 'private' },
  { cidr: '100.64.0.0/10', label: 'carrier-grade NAT' },
  { cidr: '127.0.0.0/8', label: 'loopback' },
  { cidr: '169.254.0.0/16', label: 'link-local' },
  { cidr: '172.16.0.0/12', label: 'private' },
  { cidr: '192.0.0.0/24', label: 'IETF protocol assignments' },
  { cidr: '192.0.2.0/24', label: 'documentation' },
  { cidr: '192.168.0.0/16', label: 'private' },
  { cidr: '198.18.0.0/15', label: 'benchmarking' },
  { cidr: '198.51.100.0/24', label: 'documentation' },
  { cidr: '203.0.113.0/24', label: 'documentation' },
  { cidr: '224.0.0.0/4', label: 'multicast' },
  { cidr: '255.255.255.255/32', label: 'broadcast' },
  { cidr: '240.0.0.0/4', label: 'reserved' },
];

const IPV6_BLOCKS: Block[] = [
  { cidr: '::/128', label: 'unspecified' },
  { cidr: '::1/128', label: 'loopback' },
  { cidr: '::/96', label: 'IPv4-compatible (deprecated)' },
  { cidr: '100::/64', label: 'discard-only' },
  { cidr: '64:ff9b:1::/48', label: 'local-use NAT64' },
  { cidr: '2001::/32', label: 'Teredo' },
  { cidr: '2001:db8::/32', label: 'documentation' },
  { cidr: 'fc00::/7', label: 'unique-local' },
  { cidr: 'fe80::/10', label: 'link-local' },
  { cidr: 'fec0::/10', label: 'site-local (deprecated)' },
  { cidr: 'ff00::/8', label: 'multicast' },
];

/** IPv6 ranges that carry an IPv4 address, which is then checked against the IPv4 rules. */
const IPV4_CARRIERS: (Block & { shift: bigint })[] = [
  { cidr: '::ffff:0:0/96', label: 'IPv4-mapped', shift: 0n },
  { cidr: '64:ff9b::/96', label: 'NAT64', shift: 0n },
  { cidr: '2002::/16', label: '6to4', shift: 80n },
];

function ipv4ToBigInt(ip: string): bigint {
  return ip.split('.').reduce((acc, octet) => (acc << 8n) | BigInt(Number(octet)), 0n);
}

/** Expects a valid IPv6 address (net.isIPv6) without brackets or zone. */
function ipv6ToBigInt(ip: string): bigint {
  let text = ip;
  if (text.includes('.')) {
    const lastColon = text.lastIndexOf(':');
    const v4 = ipv4ToBigInt(text.slice(lastColon + 1));
    text = `${text.slice(0, lastColon + 1)}${(v4 >> 16n).toString(16)}:${(v4 & 0xffffn).toString(16)}`;
  }
  const [head = '', tail] = text.split('::');
  const groups = (s: string) => (s === '' ? [] : s.split(':'));
  const all = tail === undefined ? groups(head) : [...groups(head), ...Array<string>(8 - groups(head).length - groups(tail).length).fill('0'), ...groups(tail)];
  return all.reduce((acc, group) => (acc << 16n) | BigInt(parseInt(group, 16)), 0n);
}

function inBlock(value: bigint, bits: 32 | 128, { cidr }: Block): boolean {
  const [base = '', prefix = ''] = cidr.split('/');
  const hostBits = BigInt(bits - Number(prefix));
  const baseValue = bits === 32 ? ipv4ToBigInt(base) : ipv6ToBigInt(base);
  return value >> hostBits === baseValue >> hostBits;
}

function describe(block: Block): string {
  return `${block.label} (${block.cidr})`;
}

function ipv4Rule(value: bigint): string | undefined {
  const block = IPV4_BLOCKS.find((b) => inBlock(value, 32, b));
  return block && describe(block);
}

function ipv6Rule(value: bigint): string | undefined {
  for (const carrier of IPV4_CARRIERS) {
    if (!inBlock(value, 128, carrier)) continue;
    const inner = ipv4Rule((value >> carrier.shift) & 0xffffffffn);
    return inner && `${describe(carrier)} form of ${inner}`;
  }
  const block = IPV6_BLOCKS.find((b) => inBlock(value, 128, b));
  return block && describe(block);
}

/**
 * The rule that forbids connecting to `ip` (e.g. "loopback (127.0.0.0/8)"), or undefined when
 * it is a public address. Anything that is not a valid IP address is refused too.
 */
export function blockedAddressRule(ip: string): string | undefined {
  const bare = ip.replace(/%.*$/, '');
  const family = isIP(bare);
  if (family === 4) return ipv4Rule(ipv4ToBigInt(bare));
  if (family === 6) return ipv6Rule(ipv6ToBigInt(bare));
  return 'not an IP address';
}

// ---------------------------------------------------------------------------------------------
// Resolution and pinning

export type LookupAll = (hostname: string) => Promise<LookupAddress[]>;

const systemLookup: LookupAll = (hostname) => dnsLookup(hostname, { all: true });

/** The address a request connects to: checked once, then pinned for the connection. */
export interface PinnedTarget {
  /** The URL's host name without IPv6 brackets; still what SNI and the Host header carry. */
  hostname: string;
  address: string;
  family: number;
  allowListed: boolean;
}

function effectivePort(url: URL): string {
  return url.port || (url.protocol === 'https:' ? '443' : '80');
}

function isAllowListed(url: URL, allowHosts: readonly string[]): boolean {
  const names = new Set([url.hostname, `${url.hostname}:${effectivePort(url)}`]);
  return allowHosts.some((entry) => names.has(entry.trim().toLowerCase()));
}

function checkUrlShape(url: URL): void {
  if (url.protocol !== 'http:' && url.protocol !== 'https:') {
    throw new ToolRefusedError(`scheme "${url.protocol.replace(/:$/, '')}" is not allowed: only http and https URLs`);
  }
  if (url.username || url.password) throw new ToolRefusedError('URLs with credentials (user:password@) are not allowed');
}

async function resolveHost(hostname: string, lookup: LookupAll): Promise<LookupAddress[]> {
  const family = isIP(hostname);
  if (family !== 0) return [{ address: hostname, family }];
  try {
    return await lookup(hostname);
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code;
    if (code === 'ENOTFOUND' || code === 'ENODATA') throw new ToolInputError(`host "${hostname}" not found`);
    throw new Error(`could not resolve host "${hostname}": ${code ?? String(error)}`, { cause: error });
  }
}

/**
 * Applies the URL rules, resolves the host and refuses it when ANY of its addresses is not
 * public (a name with one public and one private address could be made to connect to either),
 * unless `allowHosts` names the host. Returns the address to pin the connection to.
 */
export async function resolveAndCheck(url: URL, allowHosts: readonly string[], lookup: LookupAll = systemLookup): Promise<PinnedTarget> {
  checkUrlShape(url);
  // WHATWG URL has already normalised odd IPv4 forms (2130706433, 0x7f.1) to dotted quads.
  const hostname = url.hostname.replace(/^\[(.*)\]$/, '$1');
  const allowListed = isAllowListed(url, allowHosts);
  const addresses = await resolveHost(hostname, lookup);
  const first = addresses[0];
  if (!first) throw new ToolInputError(`host "${hostname}" has no address`);
  if (!allowListed) {
    for (const { address } of addresses) {
      const rule = blockedAddressRule(address);
      if (rule) throw new ToolRefusedError(`host "${hostname}" is refused: it resolves to a ${rule} address`);
    }
  }
  return { hostname, address: first.address, family: first.family, allowListed };
}

/** A lookup that answers with the checked address, so a second DNS answer (rebinding) is never used. */
function pinnedLookup(target: PinnedTarget): LookupFunction {
  return (_hostname, options, callback) => {
    if (options.all) callback(null, [{ address: target.address, family: target.family }]);
    else callback(null, target.address, target.family);
  };
}

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

function parseUrl(text: string, base?: URL): URL {
  try {
    return new URL(text, base);
  } catch {
    throw new ToolInputError(`"${text.slice(0, 200)}" is not a valid absolute URL`);
  }
}

function send(url: URL, target: PinnedTarget, method: string, headers: Record<string, string>, signal: AbortSignal): Promise<IncomingMessage> {
  const transport = url.protocol === 'https:' ? https : http;
  return new Promise((resolve, reject) => {
    const request = transport.request(
      {
        protocol: url.protocol,
        hostname: target.hostname,
        port: effectivePort(url),
        path: `${url.pathname}${url.search}`,
        method,
        headers: { 'user-agent': 'keel-http-request/1', accept: '*/*', ...headers, 'accept-encoding': 'identity' },
        lookup: pinnedLookup(target),
        // A fresh connection per request: a pooled socket would skip the lookup, and so the pin.
        agent: false,
        signal,
      },
      resolve,
    );
    request.once('error', reject);
    request.end();
  });
}

async function readBody(response: IncomingMessage, method: string, maxBytes: number): Promise<{ body: string; truncated: boolean }> {
  if (method === 'HEAD') {
    response.resume();
    return { body: '', truncated: false };
  }
  const chunks: Buffer[] = [];
  let size = 0;
  let truncated = false;
  for await (const chunk of response) {
    const buffer = chunk as Buffer;
    if (size + buffer.length > maxBytes) {
      chunks.push(buffer.subarray(0, maxBytes - size));
      truncated = true;
      break;
    }
    chunks.push(buffer);
    size += buffer.length;
  }
  // stream: true holds back a multi-byte character cut in half by the truncation.
  return { body: new TextDecoder().decode(Buffer.concat(chunks), { stream: truncated }), truncated };
}

function pickHeaders(headers: IncomingHttpHeaders): Record<string, string> {
  const picked: Record<string, string> = {};
  for (const name of RETURNED_HEADERS) {
    const value = headers[name];
    if (value !== undefined) picked[name] = Array.isArray(value) ? value.join(', ') : value;
  }
  return picked;
}

function nextHop(response: IncomingMessage, from: URL): URL | undefined {
  const location = response.headers.location;
  if (!REDIRECT_STATUSES.has(response.statusCode ?? 0) || !location) return undefined;
  return parseUrl(location, from);
}

function withoutCredentials(headers: Record<string, string>): Record<string, string> {
  return Object.fromEntries(Object.entries(headers).filter(([name]) => !CREDENTIAL_HEADERS.has(name)));
}

async function checkHop(url: URL, hop: number, allowHosts: readonly string[], lookup: LookupAll): Promise<PinnedTarget> {
  try {
    return await resolveAndCheck(url, allowHosts, lookup);
  } catch (error) {
    if (hop === 0 || !(error instanceof ToolRefusedError || error instanceof ToolInputError)) throw error;
    const Kind = error instanceof ToolRefusedError ? ToolRefusedError : ToolInputError;
    throw new Kind(`redirect ${hop} to ${url.origin === 'null' ? `a ${url.protocol} URL` : url.origin}: ${error.message}`);
  }
}

async function fetchFollowingRedirects(args: HttpRequestArgs, ctx: ToolContext, signal: AbortSignal, lookup: LookupAll): Promise<HttpRequestResult> {
  const maxBytes = ctx.settings.httpMaxBytes > 0 ? ctx.settings.httpMaxBytes : DEFAULT_TOOL_SETTINGS.httpMaxBytes;
  let url = parseUrl(args.url);
  let headers = args.headers;
  for (let hop = 0; ; hop++) {
    const target = await checkHop(url, hop, ctx.settings.httpAllowHosts, lookup);
    const response = await send(url, target, args.method, headers, signal);
    const next = nextHop(response, url);
    if (!next) {
      const { body, truncated } = await readBody(response, args.method, maxBytes);
      return { url: url.href, status: response.statusCode ?? 0, headers: pickHeaders(response.headers), body, truncated };
    }
    response.destroy();
    if (hop === MAX_REDIRECTS) throw new ToolInputError(`more than ${MAX_REDIRECTS} redirects`);
    if (next.origin !== url.origin) headers = withoutCredentials(headers);
    url = next;
  }
}

/** Builds the tool; tests inject `lookup` to play DNS. */
/** How much longer than its own request time-out the http_request tool may run. */
export const HTTP_TIMEOUT_MARGIN_MS = 2_000;

export function createHttpRequestTool(deps: { lookup?: LookupAll } = {}): Tool<HttpRequestArgs> {
  const lookup = deps.lookup ?? systemLookup;
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
      return { url: parseUrl(parsed.url).href, method: parseMethod(parsed.method), headers: parseHeaders(parsed.headers) };
    },
    async execute(args, ctx) {
      const ms = ctx.settings.httpTimeoutMs > 0 ? ctx.settings.httpTimeoutMs : DEFAULT_TOOL_SETTINGS.httpTimeoutMs;
      const timeout = AbortSignal.timeout(ms);
      let result: HttpRequestResult;
      try {
        result = await fetchFollowingRedirects(args, ctx, AbortSignal.any([ctx.signal, timeout]), lookup);
      } catch (error) {
        if (timeout.aborted) throw new ToolTimeoutError(`request to ${new URL(args.url).origin} timed out after ${ms} ms`, { cause: error });
        throw error;
      }
      const answered = new URL(result.url);
      throwForHttpStatus(result.status, `${args.method} ${answered.origin}${answered.pathname}`, result.body);
      return result;
    },
  };
}

export const httpRequest = createHttpRequestTool();
