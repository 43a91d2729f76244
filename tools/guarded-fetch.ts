import { lookup as dnsLookup } from 'node:dns/promises';
import type { LookupAddress } from 'node:dns';
import http, { type IncomingHttpHeaders, type IncomingMessage } from 'node:http';
import https from 'node:https';
import { isIP, type LookupFunction } from 'node:net';
import { ToolInputError, ToolRefusedError, ToolTimeoutError } from './tool';

/**
 * The one HTTP client for URLs Keel does not control (docs/tools.md, "SSRF rules"): the
 * `http_request` tool, OpenAPI spec fetching and the tools generated from a spec all go
 * through `guardedFetch`. Every hop's URL is checked (scheme, no credentials), its host is
 * resolved and refused when any address is not public (unless allow-listed), and the
 * connection is pinned to the checked address. Redirects are followed by hand, at most
 * MAX_REDIRECTS, each hop checked again; credentials are dropped when a redirect leaves the origin.
 */

/** Headers the guarded client owns: framing, routing and encoding must match what it does with the connection. */
export const CLIENT_OWNED_HEADERS: ReadonlySet<string> = new Set([
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

export const MAX_REDIRECTS = 5;
const REDIRECT_STATUSES = new Set([301, 302, 303, 307, 308]);
/** Dropped when a redirect leaves the origin the caller gave them for. */
const CREDENTIAL_HEADERS = new Set(['authorization', 'cookie', 'proxy-authorization']);

/** Which rule refused a URL or an answer: callers that report their own codes (spec fetching) branch on it. */
export type GuardRefusal = 'scheme' | 'credentials' | 'address';
export type GuardFailure = 'bad_url' | 'host_not_found' | 'too_many_redirects' | 'too_large';

/** The guard refused to connect: a scheme, credentials in the URL, or an address that is not public. */
export class GuardRefusedError extends ToolRefusedError {
  constructor(
    message: string,
    readonly reason: GuardRefusal,
  ) {
    super(message);
  }
}

/** A failure retrying will not fix: a bad URL, an unknown host, too many redirects, a body over the limit. */
export class GuardInputError extends ToolInputError {
  constructor(
    message: string,
    readonly reason: GuardFailure,
  ) {
    super(message);
  }
}

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
    throw new GuardRefusedError(`scheme "${url.protocol.replace(/:$/, '')}" is not allowed: only http and https URLs`, 'scheme');
  }
  if (url.username || url.password) throw new GuardRefusedError('URLs with credentials (user:password@) are not allowed', 'credentials');
}

async function resolveHost(hostname: string, lookup: LookupAll): Promise<LookupAddress[]> {
  const family = isIP(hostname);
  if (family !== 0) return [{ address: hostname, family }];
  try {
    return await lookup(hostname);
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code;
    if (code === 'ENOTFOUND' || code === 'ENODATA') throw new GuardInputError(`host "${hostname}" not found`, 'host_not_found');
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
  if (!first) throw new GuardInputError(`host "${hostname}" has no address`, 'host_not_found');
  if (!allowListed) {
    for (const { address } of addresses) {
      const rule = blockedAddressRule(address);
      if (rule) throw new GuardRefusedError(`host "${hostname}" is refused: it resolves to a ${rule} address`, 'address');
    }
  }
  return { hostname, address: first.address, family: first.family, allowListed };
}

/** A lookup that answers with the checked address, so a second DNS answer (rebinding) is never used. */
export function pinnedLookup(target: PinnedTarget): LookupFunction {
  return (_hostname, options, callback) => {
    if (options.all) callback(null, [{ address: target.address, family: target.family }]);
    else callback(null, target.address, target.family);
  };
}

/** An absolute URL, or a GuardInputError naming the text (cut at 200 characters). */
export function parseHttpUrl(text: string, base?: URL): URL {
  try {
    return new URL(text, base);
  } catch {
    throw new GuardInputError(`"${text.slice(0, 200)}" is not a valid absolute URL`, 'bad_url');
  }
}

// ---------------------------------------------------------------------------------------------
// The request

export interface GuardedRequest {
  url: string;
  /** Default GET. */
  method?: string;
  /** Header names in lower case. `host`, `content-length` and `accept-encoding` are set here. */
  headers?: Record<string, string>;
  body?: string | Uint8Array;
  /** `host` or `host:port` entries that skip the address rule (the other rules still apply). */
  allowHosts: readonly string[];
  /** The whole exchange, redirects included; over it, ToolTimeoutError. */
  timeoutMs: number;
  /** Bytes of the answer's body read. */
  maxBytes: number;
  /** What a longer body does: cut at maxBytes (`truncate`, the default) or fail (`refuse`: GuardInputError 'too_large'). */
  overflow?: 'truncate' | 'refuse';
  /** Default MAX_REDIRECTS; 0 follows none. */
  maxRedirects?: number;
  /** The caller's cancel (a tool call's signal). */
  signal?: AbortSignal;
  /** DNS, for tests. */
  lookup?: LookupAll;
  userAgent?: string;
}

export interface GuardedResponse {
  /** The URL that answered, after redirects. */
  url: string;
  status: number;
  headers: IncomingHttpHeaders;
  /** UTF-8 text; empty for HEAD. */
  body: string;
  truncated: boolean;
  redirects: number;
}

interface Hop {
  url: URL;
  method: string;
  headers: Record<string, string>;
  body: Uint8Array | undefined;
}

function send(hop: Hop, target: PinnedTarget, signal: AbortSignal): Promise<IncomingMessage> {
  const transport = hop.url.protocol === 'https:' ? https : http;
  const headers = { ...hop.headers, 'accept-encoding': 'identity', ...(hop.body ? { 'content-length': String(hop.body.byteLength) } : {}) };
  return new Promise((resolve, reject) => {
    const request = transport.request(
      {
        protocol: hop.url.protocol,
        hostname: target.hostname,
        port: effectivePort(hop.url),
        path: `${hop.url.pathname}${hop.url.search}`,
        method: hop.method,
        headers,
        lookup: pinnedLookup(target),
        // A fresh connection per request: a pooled socket would skip the lookup, and so the pin.
        agent: false,
        signal,
      },
      resolve,
    );
    request.once('error', reject);
    request.end(hop.body);
  });
}

function tooLarge(maxBytes: number): GuardInputError {
  return new GuardInputError(`the response is larger than ${maxBytes} bytes`, 'too_large');
}

async function readBody(response: IncomingMessage, method: string, maxBytes: number, overflow: 'truncate' | 'refuse'): Promise<{ body: string; truncated: boolean }> {
  if (method === 'HEAD') {
    response.resume();
    return { body: '', truncated: false };
  }
  const declared = Number(response.headers['content-length']);
  if (overflow === 'refuse' && Number.isFinite(declared) && declared > maxBytes) {
    response.destroy();
    throw tooLarge(maxBytes);
  }
  const chunks: Buffer[] = [];
  let size = 0;
  let truncated = false;
  for await (const chunk of response) {
    const buffer = chunk as Buffer;
    if (size + buffer.length > maxBytes) {
      if (overflow === 'refuse') {
        response.destroy();
        throw tooLarge(maxBytes);
      }
      chunks.push(buffer.subarray(0, maxBytes - size));
      truncated = true;
      break;
    }
    chunks.push(buffer);
    size += buffer.length;
  }
  if (truncated) response.destroy();
  // stream: true holds back a multi-byte character cut in half by the truncation.
  return { body: new TextDecoder().decode(Buffer.concat(chunks), { stream: truncated }), truncated };
}

/** The next hop of a redirect: 303 (and 301/302 after a POST) become a GET without a body, as browsers do. */
function nextHop(response: IncomingMessage, hop: Hop): Hop | undefined {
  const status = response.statusCode ?? 0;
  const location = response.headers.location;
  if (!REDIRECT_STATUSES.has(status) || !location) return undefined;
  const url = parseHttpUrl(location, hop.url);
  const toGet = (status === 303 && hop.method !== 'HEAD') || ((status === 301 || status === 302) && hop.method === 'POST');
  let headers = hop.headers;
  if (url.origin !== hop.url.origin) headers = Object.fromEntries(Object.entries(headers).filter(([name]) => !CREDENTIAL_HEADERS.has(name)));
  if (toGet) headers = Object.fromEntries(Object.entries(headers).filter(([name]) => name !== 'content-type'));
  return { url, method: toGet ? 'GET' : hop.method, headers, body: toGet ? undefined : hop.body };
}

async function checkHop(url: URL, hop: number, allowHosts: readonly string[], lookup: LookupAll): Promise<PinnedTarget> {
  try {
    return await resolveAndCheck(url, allowHosts, lookup);
  } catch (error) {
    if (hop === 0) throw error;
    const where = `redirect ${hop} to ${url.origin === 'null' ? `a ${url.protocol} URL` : url.origin}`;
    if (error instanceof GuardRefusedError) throw new GuardRefusedError(`${where}: ${error.message}`, error.reason);
    if (error instanceof GuardInputError) throw new GuardInputError(`${where}: ${error.message}`, error.reason);
    throw error;
  }
}

async function followRedirects(request: GuardedRequest, signal: AbortSignal): Promise<GuardedResponse> {
  const lookup = request.lookup ?? systemLookup;
  const maxRedirects = request.maxRedirects ?? MAX_REDIRECTS;
  const body = typeof request.body === 'string' ? Buffer.from(request.body, 'utf8') : request.body;
  const headers = { 'user-agent': request.userAgent ?? 'keel/1', accept: '*/*', ...request.headers };
  let hop: Hop = { url: parseHttpUrl(request.url), method: (request.method ?? 'GET').toUpperCase(), headers, body };
  for (let redirects = 0; ; redirects++) {
    const target = await checkHop(hop.url, redirects, request.allowHosts, lookup);
    const response = await send(hop, target, signal);
    const next = nextHop(response, hop);
    if (!next) {
      const read = await readBody(response, hop.method, request.maxBytes, request.overflow ?? 'truncate');
      return { url: hop.url.href, status: response.statusCode ?? 0, headers: response.headers, ...read, redirects };
    }
    response.destroy();
    if (redirects === maxRedirects) throw new GuardInputError(`more than ${maxRedirects} redirects`, 'too_many_redirects');
    hop = next;
  }
}

/**
 * Sends one request under the rules above and reads the answer. Any status is an answer (the
 * caller classifies it, e.g. with throwForHttpStatus). Throws GuardRefusedError, GuardInputError,
 * ToolTimeoutError after `timeoutMs`, the caller's abort as it is, and network errors as they are.
 */
export async function guardedFetch(request: GuardedRequest): Promise<GuardedResponse> {
  const timeout = AbortSignal.timeout(request.timeoutMs);
  const signal = request.signal ? AbortSignal.any([request.signal, timeout]) : timeout;
  try {
    return await followRedirects(request, signal);
  } catch (error) {
    if (timeout.aborted) throw new ToolTimeoutError(`request to ${originOf(request.url)} timed out after ${request.timeoutMs} ms`, { cause: error });
    throw error;
  }
}

function originOf(url: string): string {
  try {
    return new URL(url).origin;
  } catch {
    return 'the URL';
  }
}
