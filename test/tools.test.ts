import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { createTestDatabase, dropTestDatabase } from './support/database';
import { sql } from 'slonik';
import { z } from 'zod';
import { migrate } from '../db/migrate';
import { openPool, type DatabasePool } from '../db/pool';
import { demoTools } from '../tools/demo';
import { builtinTools, DEFAULT_TOOL_SETTINGS, toolDefinitions, ToolInputError, ToolRefusedError, type Tool, type ToolContext } from '../tools';
import { sessionAgentOf } from '../agents/session-agent';
import { AgentDefinition, resolveAgent } from '../contracts/agents';
import { evaluate } from '../tools/calculator';
import { localTime } from '../tools/current-time';
import { blockedAddressRule, createHttpRequestTool, resolveAndCheck, type LookupAll } from '../tools/http-request';

function context(overrides: Partial<ToolContext> = {}): ToolContext {
  return {
    sessionId: 'session-1',
    toolCallId: 'call-1',
    idempotencyKey: 'wf-1/call-1',
    // Only create_note touches the pool; its tests pass a real one.
    pool: undefined as unknown as DatabasePool,
    signal: new AbortController().signal,
    settings: { httpAllowHosts: [], httpTimeoutMs: 5_000, httpMaxBytes: 1_024 },
    ...overrides,
  };
}

async function run(tool: Tool, args: unknown, ctx: ToolContext = context()): Promise<any> {
  return tool.execute(tool.parse(args), ctx);
}

async function failure(promise: Promise<unknown>): Promise<Error> {
  const error = await promise.then(
    () => undefined,
    (e: unknown) => e,
  );
  // Not `instanceof Error`: errors made by Node itself come from another realm than jest's test context.
  if (typeof error !== 'object' || error === null || !('message' in error)) throw new Error(`expected a rejection, got ${String(error)}`);
  return error as Error;
}

async function thrown(fn: () => unknown): Promise<Error> {
  return failure(Promise.resolve().then(fn));
}

describe('registry', () => {
  test('holds the four built-in tools and the templates\' demo tools, with hand-written, closed parameter schemas', () => {
    const demo = demoTools.map((t) => t.definition.name);
    expect(Object.keys(builtinTools).filter((n) => !demo.includes(n)).sort()).toEqual(['calculator', 'create_note', 'current_time', 'http_request']);
    expect(demo.length).toBeGreaterThan(0);
    for (const [name, tool] of Object.entries(builtinTools)) {
      expect(tool.definition.name).toBe(name);
      expect(tool.definition.parameters).toMatchObject({ type: 'object', additionalProperties: false });
      expect(tool.definition.requiresApproval).toBe(tool.definition.permission === 'write');
    }
    expect(builtinTools.create_note!.definition.permission).toBe('write');
  });

  test("http_request's own limit follows KEEL_HTTP_TIMEOUT_MS above 12 s, and an agent's policy carries it to the activity", () => {
    expect(toolDefinitions({ ...DEFAULT_TOOL_SETTINGS, httpTimeoutMs: 20_000 }).http_request!.timeoutMs).toBe(22_000);
    expect(toolDefinitions({ ...DEFAULT_TOOL_SETTINGS, httpTimeoutMs: 1_000 }).http_request!.timeoutMs).toBe(12_000);
    const def = AgentDefinition.parse({ id: 'a', name: 'A', systemPrompt: '', tools: ['http_request', 'calculator'], toolPolicy: { calculator: { timeoutMs: 700 } } });
    const agent = sessionAgentOf(resolveAgent(def, 3, 'd', toolDefinitions({ ...DEFAULT_TOOL_SETTINGS, httpTimeoutMs: 20_000 })), 'm');
    expect(agent.tools.map((t) => [t.name, t.timeoutMs, t.maxAttempts])).toEqual([
      ['http_request', 22_000, 4],
      ['calculator', 700, 1],
    ]);
  });

});

describe('calculator', () => {
  const calculator = builtinTools.calculator!;

  test('"15 + 27" gives 42', async () => {
    await expect(run(calculator, { expression: '15 + 27' })).resolves.toEqual({ result: 42 });
  });

  test.each([
    ['2 + 3 * 4', 14],
    ['(2 + 3) * 4', 20],
    ['10 - 4 - 3', 3],
    ['100 / 10 / 5', 2],
    ['17 % 5', 2],
    ['2 ^ 3 ^ 2', 512],
    ['2 ** 10', 1024],
    ['-2 ^ 2', -4],
    ['2 ^ -1', 0.5],
    ['-(3 + 4) * -2', 14],
    ['--3', 3],
    ['((1 + 2) * (3 + 4))', 21],
    ['1.5e3 / .5', 3000],
    ['0.1 + 0.2', 0.3],
  ])('%s = %d', (expression, expected) => {
    expect(evaluate(expression)).toBe(expected);
  });

  test.each([
    ['1 / 0', /division by zero/],
    ['5 % (2 - 2)', /division by zero/],
    ['1 +', /unexpected end/],
    ['(1 + 2', /missing '\)'/],
    ['1 + 2)', /unexpected '\)' at position 6/],
    ['2 3', /unexpected '3'/],
    ['process.exit(1)', /unexpected character 'p'/],
    ['0 ^ -1', /not a finite number/],
    [`${'-'.repeat(100)}1`, /nested more than/],
  ])('%s is a ToolInputError', async (expression, message) => {
    const error = await failure(run(calculator, { expression }));
    expect(error).toBeInstanceOf(ToolInputError);
    expect(error.message).toMatch(message);
  });

  test('rejects arguments that do not match the schema', async () => {
    for (const args of [{}, { expression: '' }, { expression: 42 }, { expression: '1', extra: true }, { expression: 'x'.repeat(501) }, 'a string']) {
      expect(await thrown(() => calculator.parse(args))).toBeInstanceOf(ToolInputError);
    }
  });
});

describe('current_time', () => {
  const currentTime = builtinTools.current_time!;

  test('reports the time in the given zone', async () => {
    const before = Date.now();
    const result = await run(currentTime, { timezone: 'Asia/Tokyo' });
    expect(result.timezone).toBe('Asia/Tokyo');
    expect(Date.parse(result.iso)).toBeGreaterThanOrEqual(before - 1);
    expect(result.local).toMatch(/^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+09:00$/);
    expect(Math.abs(Date.parse(result.local) - Date.parse(result.iso))).toBeLessThan(1_000);
  });

  test('defaults to UTC', async () => {
    const result = await run(currentTime, {});
    expect(result.timezone).toBe('UTC');
    expect(result.local).toMatch(/\+00:00$/);
  });

  test('formats the local time with the offset in force on that date', () => {
    expect(localTime(new Date('2025-01-15T12:00:00Z'), 'Europe/Paris')).toEqual({ local: '2025-01-15T13:00:00+01:00', weekday: 'Wednesday' });
    expect(localTime(new Date('2025-07-15T00:30:00Z'), 'America/Los_Angeles')).toEqual({ local: '2025-07-14T17:30:00-07:00', weekday: 'Monday' });
  });

  test('an unknown zone is a ToolInputError', async () => {
    const error = await thrown(() => currentTime.parse({ timezone: 'Mars/Olympus_Mons' }));
    expect(error).toBeInstanceOf(ToolInputError);
    expect(error.message).toMatch(/unknown time zone/);
  });
});

describe('http_request address rules', () => {
  test.each([
    ['127.0.0.1', /loopback/],
    ['10.1.2.3', /private/],
    ['172.31.255.255', /private/],
    ['192.168.0.10', /private/],
    ['100.64.0.1', /carrier-grade NAT/],
    ['169.254.169.254', /link-local/],
    ['0.0.0.0', /unspecified/],
    ['192.0.0.8', /IETF/],
    ['198.18.5.5', /benchmarking/],
    ['203.0.113.7', /documentation/],
    ['224.0.0.251', /multicast/],
    ['255.255.255.255', /broadcast/],
    ['250.1.1.1', /reserved/],
    ['::', /unspecified/],
    ['::1', /loopback/],
    ['fd00:ec2::254', /unique-local/],
    ['fe80::1%eth0', /link-local/],
    ['ff02::1', /multicast/],
    ['2001:db8::1', /documentation/],
    ['::ffff:127.0.0.1', /IPv4-mapped .* loopback/],
    ['::ffff:a9fe:a9fe', /IPv4-mapped .* link-local/],
    ['64:ff9b::a00:1', /NAT64 .* private/],
    ['2002:c0a8:101::1', /6to4 .* private/],
    ['::127.0.0.1', /IPv4-compatible/],
    ['not-an-ip', /not an IP address/],
  ])('%s is refused', (ip, rule) => {
    expect(blockedAddressRule(ip)).toMatch(rule);
  });

  test.each(['8.8.8.8', '1.1.1.1', '172.32.0.1', '100.128.0.1', '192.0.3.1', '2606:4700:4700::1111', '::ffff:8.8.8.8', '64:ff9b::808:808'])('%s is public', (ip) => {
    expect(blockedAddressRule(ip)).toBeUndefined();
  });

  test('a name is refused when ANY of its addresses is internal, and pinned to a checked address otherwise', async () => {
    const answers: Record<string, string[]> = { 'mixed.test': ['93.184.215.14', '127.0.0.1'], 'public.test': ['93.184.215.14', '2606:2800:21f:cb07:6820:80da:af6b:8b2c'] };
    const lookup: LookupAll = async (name) => (answers[name] ?? []).map((address) => ({ address, family: address.includes(':') ? 6 : 4 }));
    const refused = await failure(resolveAndCheck(new URL('http://mixed.test/'), [], lookup));
    expect(refused).toBeInstanceOf(ToolRefusedError);
    expect(refused.message).toBe('host "mixed.test" is refused: it resolves to a loopback (127.0.0.0/8) address');
    await expect(resolveAndCheck(new URL('https://public.test/x'), [], lookup)).resolves.toEqual({
      hostname: 'public.test',
      address: '93.184.215.14',
      family: 4,
      allowListed: false,
    });
    await expect(resolveAndCheck(new URL('http://mixed.test/'), ['mixed.test'], lookup)).resolves.toMatchObject({ address: '93.184.215.14', allowListed: true });
    expect(await failure(resolveAndCheck(new URL('http://nothing.test/'), [], lookup))).toBeInstanceOf(ToolInputError);
  });

  test('literal addresses are checked without DNS', async () => {
    const lookup = jest.fn<ReturnType<LookupAll>, Parameters<LookupAll>>();
    await expect(resolveAndCheck(new URL('http://[::ffff:127.0.0.1]/'), [], lookup)).rejects.toThrow(/IPv4-mapped/);
    await expect(resolveAndCheck(new URL('http://8.8.8.8/'), [], lookup)).resolves.toMatchObject({ address: '8.8.8.8' });
    expect(lookup).not.toHaveBeenCalled();
  });
});

interface TestServer {
  port: number;
  hits: { url: string; headers: http.IncomingHttpHeaders }[];
  close(): Promise<void>;
}

function route(req: http.IncomingMessage, res: http.ServerResponse): void {
  const url = new URL(req.url ?? '/', 'http://x');
  if (url.pathname === '/ok') {
    res.writeHead(200, { 'content-type': 'text/plain; charset=utf-8', 'content-length': '25', 'x-internal-token': 'secret' }).end('hello from a local server');
  } else if (url.pathname === '/big') {
    res.writeHead(200, { 'content-type': 'text/plain' }).end('a'.repeat(5_000));
  } else if (url.pathname === '/redirect') {
    res.writeHead(302, { location: url.searchParams.get('to') ?? '/' }).end('moved');
  } else if (url.pathname === '/loop') {
    res.writeHead(307, { location: '/loop' }).end();
  } else if (url.pathname === '/hang') {
    // Never answers: the tool's time-out has to end the call.
  } else {
    res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify({ host: req.headers.host, authorization: req.headers.authorization ?? null }));
  }
}

async function startServer(): Promise<TestServer> {
  const hits: TestServer['hits'] = [];
  const server = http.createServer((req, res) => {
    hits.push({ url: req.url ?? '', headers: req.headers });
    route(req, res);
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return {
    port: (server.address() as AddressInfo).port,
    hits,
    close: () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
}

/** A string no other test sends: a request's hits are found by it, whatever ran before. */
let probes = 0;
const probe = () => `probe-${process.pid}-${++probes}`;
const hitsWith = (server: TestServer, marker: string) => server.hits.filter((h) => h.url.includes(marker));

describe('http_request', () => {
  const httpRequest = builtinTools.http_request!;
  let a: TestServer;
  let b: TestServer;
  let allowA: ToolContext;

  beforeAll(async () => {
    [a, b] = await Promise.all([startServer(), startServer()]);
    allowA = context({ settings: { httpAllowHosts: [`127.0.0.1:${a.port}`], httpTimeoutMs: 5_000, httpMaxBytes: 1_024 } });
  });
  afterAll(async () => {
    await Promise.all([a.close(), b.close()]);
  });

  test.each([
    ['http://127.0.0.1/', /loopback/],
    ['http://10.0.0.1/', /private/],
    ['http://169.254.169.254/latest/meta-data', /link-local/],
    ['http://[::1]/', /loopback/],
    ['http://2130706433/', /loopback/],
    ['http://0x7f.1/', /loopback/],
    ['http://017700000001/', /loopback/],
    ['http://[::ffff:127.0.0.1]/', /IPv4-mapped/],
    ['http://0/', /unspecified/],
    ['http://[fd00::1]/', /unique-local/],
    ['ftp://x', /scheme "ftp" is not allowed/],
    ['file:///etc/passwd', /scheme "file" is not allowed/],
    ['http://user:pass@example.com/', /credentials/],
  ])('refuses %s', async (url, rule) => {
    const error = await failure(run(httpRequest, { url }, allowA));
    expect(error).toBeInstanceOf(ToolRefusedError);
    expect(error.message).toMatch(rule);
  });

  test('refuses a host name that resolves to loopback, even on an allow-listed port of 127.0.0.1', async () => {
    const marker = probe();
    const error = await failure(run(httpRequest, { url: `http://localhost:${a.port}/ok?probe=${marker}` }, allowA));
    expect(error).toBeInstanceOf(ToolRefusedError);
    expect(error.message).toMatch(/host "localhost" is refused: it resolves to a loopback/);
    expect(hitsWith(a, marker)).toEqual([]);
  });

  test('refuses methods other than GET and HEAD', async () => {
    for (const method of ['POST', 'put', 'DELETE']) {
      const error = await thrown(() => httpRequest.parse({ url: `http://127.0.0.1:${a.port}/ok`, method }));
      expect(error).toBeInstanceOf(ToolRefusedError);
      expect(error.message).toMatch(/only GET and HEAD/);
    }
  });

  test('rejects bad arguments as input errors', async () => {
    for (const args of [{}, { url: 'not a url' }, { url: '/relative' }, { url: 'http://x/', headers: { host: 'evil' } }, { url: 'http://x/', headers: { 'x-a': 'b\r\nc: d' } }, { url: 'http://x/', body: 'x' }]) {
      expect(await thrown(() => httpRequest.parse(args))).toBeInstanceOf(ToolInputError);
    }
  });

  test('fetches from an allow-listed server and returns status, safe headers and body', async () => {
    const result = await run(httpRequest, { url: `http://127.0.0.1:${a.port}/ok` }, allowA);
    expect(result).toEqual({
      url: `http://127.0.0.1:${a.port}/ok`,
      status: 200,
      headers: expect.objectContaining({ 'content-type': 'text/plain; charset=utf-8', 'content-length': '25' }),
      body: 'hello from a local server',
      truncated: false,
    });
    expect(result.headers['x-internal-token']).toBeUndefined();
  });

  test('truncates the body at httpMaxBytes', async () => {
    const result = await run(httpRequest, { url: `http://127.0.0.1:${a.port}/big` }, allowA);
    expect(result.body).toBe('a'.repeat(1_024));
    expect(result.truncated).toBe(true);
  });

  test('HEAD returns no body', async () => {
    const result = await run(httpRequest, { url: `http://127.0.0.1:${a.port}/ok`, method: 'HEAD' }, allowA);
    expect(result).toMatchObject({ status: 200, body: '', truncated: false });
  });

  test('follows a redirect on the same allow-listed host', async () => {
    const result = await run(httpRequest, { url: `http://127.0.0.1:${a.port}/redirect?to=/ok` }, allowA);
    expect(result).toMatchObject({ url: `http://127.0.0.1:${a.port}/ok`, status: 200, body: 'hello from a local server' });
  });

  test.each([
    ['a host name resolving to loopback', (marker: string) => `http://localhost:${b.port}/?probe=${marker}`, /^redirect 1 to http:\/\/localhost:\d+: host "localhost" is refused: .*loopback/],
    ['the metadata address', () => 'http://169.254.169.254/latest/meta-data', /^redirect 1 to http:\/\/169\.254\.169\.254: host "169\.254\.169\.254" is refused: .*link-local/],
    ['a non-http scheme', () => 'file:///etc/passwd', /^redirect 1 to a file: URL: scheme "file" is not allowed/],
  ])('re-checks every hop: a redirect to %s is refused', async (_what, target, rule) => {
    const marker = probe();
    const error = await failure(run(httpRequest, { url: `http://127.0.0.1:${a.port}/redirect?probe=${marker}&to=${encodeURIComponent(target(marker))}` }, allowA));
    expect(error).toBeInstanceOf(ToolRefusedError);
    expect(error.message).toMatch(rule);
    expect(error.message).not.toMatch(/moved/);
    // The first hop reached a, once; the refused second hop reached nothing.
    expect(hitsWith(a, marker).map((h) => new URL(h.url, 'http://x').pathname)).toEqual(['/redirect']);
    expect(hitsWith(b, marker)).toEqual([]);
  });

  test('stops after 5 redirects', async () => {
    const error = await failure(run(httpRequest, { url: `http://127.0.0.1:${a.port}/loop` }, allowA));
    expect(error).toBeInstanceOf(ToolInputError);
    expect(error.message).toMatch(/more than 5 redirects/);
  });

  test('drops credentials when a redirect leaves the origin, keeps them on the same origin', async () => {
    const ctx = context({ settings: { httpAllowHosts: [`127.0.0.1:${a.port}`, `127.0.0.1:${b.port}`], httpTimeoutMs: 5_000, httpMaxBytes: 1_024 } });
    const headers = { authorization: 'Bearer t0ken' };
    const same = await run(httpRequest, { url: `http://127.0.0.1:${a.port}/redirect?to=/echo`, headers }, ctx);
    expect(JSON.parse(same.body)).toEqual({ host: `127.0.0.1:${a.port}`, authorization: 'Bearer t0ken' });
    const cross = await run(httpRequest, { url: `http://127.0.0.1:${a.port}/redirect?to=${encodeURIComponent(`http://127.0.0.1:${b.port}/echo`)}`, headers }, ctx);
    expect(JSON.parse(cross.body)).toEqual({ host: `127.0.0.1:${b.port}`, authorization: null });
  });

  test('connects to the address it checked, with the host name kept for the Host header (no second lookup)', async () => {
    // A rebinding resolver: the first answer is the local server, every later one an unreachable address.
    const answers = ['127.0.0.1'];
    const lookup = jest.fn<ReturnType<LookupAll>, Parameters<LookupAll>>(async () => [{ address: answers.shift() ?? '192.0.2.1', family: 4 }]);
    const tool = createHttpRequestTool({ lookup });
    const ctx = context({ settings: { httpAllowHosts: ['rebind.test'], httpTimeoutMs: 2_000, httpMaxBytes: 1_024 } });
    const result = await run(tool, { url: `http://rebind.test:${a.port}/echo` }, ctx);
    expect(JSON.parse(result.body)).toEqual({ host: `rebind.test:${a.port}`, authorization: null });
    expect(lookup).toHaveBeenCalledTimes(1);
  });

  test('times out after httpTimeoutMs', async () => {
    const ctx = context({ settings: { httpAllowHosts: [`127.0.0.1:${a.port}`], httpTimeoutMs: 200, httpMaxBytes: 1_024 } });
    const error = await failure(run(httpRequest, { url: `http://127.0.0.1:${a.port}/hang` }, ctx));
    expect(error.message).toMatch(/timed out after 200 ms/);
  });

  test('stops when the call is cancelled', async () => {
    const controller = new AbortController();
    const call = run(httpRequest, { url: `http://127.0.0.1:${a.port}/hang` }, { ...allowA, signal: controller.signal });
    setTimeout(() => controller.abort(), 50);
    const error = await failure(call);
    expect(error.name).toBe('AbortError');
  });
});

describe('create_note', () => {
  const createNote = builtinTools.create_note!;
  const databaseName = `keel_tools_${process.pid}`;
  let pool: DatabasePool;

  beforeAll(async () => {
    const url = await createTestDatabase(databaseName);
    await migrate(url);
    pool = await openPool(url, 5);
  });
  afterAll(async () => {
    await pool?.end();
    await dropTestDatabase(databaseName);
  });

  const countNotes = (key: string) => pool.oneFirst(sql.type(z.object({ n: z.number() }))`SELECT count(*)::int AS n FROM notes WHERE idempotency_key = ${key}`);

  test('a retried call with the same idempotency key inserts one note', async () => {
    const ctx = context({ pool, idempotencyKey: 'wf-notes/call-1' });
    const first = await run(createNote, { title: 'Groceries', body: 'eggs, milk' }, ctx);
    const second = await run(createNote, { title: 'Groceries', body: 'eggs, milk' }, ctx);
    expect(first).toEqual({ noteId: expect.any(String), title: 'Groceries', createdAt: expect.any(String), applied: 'now' });
    expect(second).toEqual({ ...first, applied: 'already' });
    expect(await countNotes('wf-notes/call-1')).toBe(1);
  });

  test('concurrent attempts of one call still apply it once', async () => {
    const ctx = context({ pool, idempotencyKey: 'wf-notes/call-2' });
    const results = await Promise.all(Array.from({ length: 5 }, () => run(createNote, { title: 'Race', body: '' }, ctx)));
    expect(results.filter((r) => r.applied === 'now')).toHaveLength(1);
    expect(new Set(results.map((r) => r.noteId)).size).toBe(1);
    expect(await countNotes('wf-notes/call-2')).toBe(1);
  });

  test('another call makes another note', async () => {
    const first = await run(createNote, { title: 'One', body: 'x' }, context({ pool, idempotencyKey: 'wf-notes/call-3' }));
    const second = await run(createNote, { title: 'Two', body: 'y' }, context({ pool, idempotencyKey: 'wf-notes/call-4' }));
    expect(second.noteId).not.toBe(first.noteId);
    expect(second.applied).toBe('now');
  });

  test('validates title and body', async () => {
    for (const args of [{ title: '', body: 'x' }, { title: '   ', body: 'x' }, { title: 't'.repeat(201), body: 'x' }, { title: 't', body: 'b'.repeat(5_001) }, { title: 't' }, { title: 't', body: 'b', extra: 1 }]) {
      expect(await thrown(() => createNote.parse(args))).toBeInstanceOf(ToolInputError);
    }
    expect(createNote.parse({ title: 't'.repeat(200), body: 'b'.repeat(5_000) })).toBeDefined();
  });
});
