import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import net from 'node:net';
import readline from 'node:readline';
import { AgentConfigError, loadAgentFile, loadMcpServers, parseAgentFile } from '../agents/load';
import { ROOT, spawnEntry } from './support/processes';
import { startStack, eventually, type Stack } from './support/stack';
import type { Frame, WsClient } from './support/ws-client';

/**
 * MCP tools end to end (docs/tools.md, "MCP servers"): the shipped demo server (mcp-server/)
 * over stdio, spawned by the worker and the API themselves, and over streamable HTTP, run here
 * as its own process so the test can kill it; the offline model calls the tools
 * (model-server/mcp-demo.ts).
 */

interface DemoServer {
  child: ChildProcess;
  lines: string[];
  url: string;
  port: number;
  waitForLine(pattern: RegExp, timeoutMs?: number): Promise<string>;
  kill(signal?: NodeJS.Signals): Promise<void>;
}

async function startDemoServer(args: string[]): Promise<DemoServer> {
  const child = spawn(process.execPath, ['--import', 'tsx', path.join(ROOT, 'mcp-server/main.ts'), '--http', ...args], { cwd: ROOT, stdio: ['ignore', 'ignore', 'pipe'] });
  const lines: string[] = [];
  const waiters: { pattern: RegExp; resolve: (line: string) => void }[] = [];
  readline.createInterface({ input: child.stderr! }).on('line', (line) => {
    lines.push(line);
    for (const w of [...waiters]) {
      if (w.pattern.test(line)) {
        waiters.splice(waiters.indexOf(w), 1);
        w.resolve(line);
      }
    }
  });
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  const waitForLine = (pattern: RegExp, timeoutMs = 20_000) => {
    const seen = lines.find((l) => pattern.test(l));
    if (seen) return Promise.resolve(seen);
    return new Promise<string>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`demo MCP server: no line matching ${pattern}\n${lines.join('\n')}`)), timeoutMs);
      waiters.push({ pattern, resolve: (line) => (clearTimeout(timer), resolve(line)) });
    });
  };
  const url = (JSON.parse(await waitForLine(/"event":"listening"/)) as { url: string }).url;
  return {
    child,
    lines,
    url,
    port: Number(new URL(url).port),
    waitForLine,
    async kill(signal = 'SIGKILL') {
      if (child.exitCode !== null || child.signalCode !== null) return;
      child.kill(signal);
      await exited;
    },
  };
}

/** A loopback port nothing listens on. */
async function closedPort(): Promise<number> {
  const server = net.createServer();
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as net.AddressInfo;
  await new Promise<void>((resolve) => server.close(() => resolve()));
  return port;
}

/** The processes `parent` started whose command line holds `match` (Linux /proc). */
async function childProcesses(parent: number, match: string): Promise<number[]> {
  const found: number[] = [];
  for (const entry of await readdir('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    const [stat, cmdline] = await Promise.all([readFile(`/proc/${entry}/stat`, 'utf8').catch(() => ''), readFile(`/proc/${entry}/cmdline`, 'utf8').catch(() => '')]);
    // The parent PID is the 4th field, after the command name in parentheses (which may hold spaces).
    const ppid = Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]);
    if (ppid === parent && cmdline.includes(match)) found.push(Number(entry));
  }
  return found;
}

const of = (type: string) => (f: Frame) => f.type === type;
/** A reservation the demo server recorded, with the `_meta.idempotencyKey` of the call that made it. */
type Reservation = { reservationId: string; sku: string; quantity: number; idempotencyKey: string | null };

let dir: string;
let http: DemoServer;
let stack: Stack;
let stdioState: string;
/** The HTTP server's reservations survive its restarts. */
let httpState: string;

beforeAll(async () => {
  dir = await mkdtemp(path.join(os.tmpdir(), 'keel-mcp-'));
  stdioState = path.join(dir, 'stdio-state.json');
  // Slow enough to be killed mid-call.
  httpState = path.join(dir, 'http-state.json');
  http = await startDemoServer(['--port', '0', '--delay-ms', '1000', '--state', httpState]);
  const file = path.join(dir, 'agents.yaml');
  await writeFile(
    file,
    `
mcpServers:
  - name: shop
    transport: stdio
    command: ${JSON.stringify(process.execPath)}
    args: [--import, tsx, mcp-server/main.ts, --stdio, --state, ${JSON.stringify(stdioState)}]
    allow: [lookup_stock, reserve_stock]
    idempotent: [reserve_stock]
    readOnly: [lookup_stock]
  - name: warehouse
    transport: http
    url: ${http.url}
    # list_reservations says readOnlyHint too, and is a write here: the hint alone is not trusted.
    readOnly: [lookup_stock]
    headers: { X-Demo-Key: DEMO_KEY }
    # Only its list-changed notification can make a new tool appear during the test.
    refreshMs: 3600000
    maxAttempts: 2
  - name: ghost
    transport: http
    url: http://127.0.0.1:${await closedPort()}/mcp
agents:
  - id: default
    name: Shop
    systemPrompt: You sell mugs.
    tools: [shop.lookup_stock, shop.reserve_stock]
  - id: remote
    name: Warehouse
    systemPrompt: You run the warehouse.
    tools: [warehouse.lookup_stock, warehouse.reserve_stock]
    toolPolicy:
      warehouse.lookup_stock: { timeoutMs: 15000 }
`,
  );
  stack = await startStack({ env: { KEEL_AGENTS_FILE: file, KEEL_SECRET_DEMO_KEY: 'demo-secret', KEEL_MCP_CONNECT_TIMEOUT_MS: '5000' } });
});

afterAll(async () => {
  await stack?.stop();
  await http?.kill();
  if (dir) await rm(dir, { recursive: true, force: true });
});

async function session(agentId: string): Promise<{ sessionId: string; ws: WsClient }> {
  const sessionId = await stack.createSession({ agentId });
  return { sessionId, ws: await stack.ws(sessionId) };
}

/** Sends a message and waits for the turn that answers it. */
async function turn(ws: WsClient, content: string): Promise<Frame[]> {
  const before = ws.frames.length;
  ws.send({ type: 'message', content });
  await ws.waitForCount(of('turn.done'), ws.frames.slice(0, before).filter(of('turn.done')).length + 1, 30_000);
  return ws.frames.slice(before);
}

async function catalogRow(name: string) {
  const { rows } = await stack.db.query('SELECT name, kind, source, definition, target FROM tool_catalog WHERE name = $1', [name]);
  return rows[0] as { name: string; kind: string; source: string; definition: Record<string, unknown>; target: unknown } | undefined;
}

async function stdioReservations(): Promise<Reservation[]> {
  const text = await readFile(stdioState, 'utf8').catch(() => '{"reservations":[]}');
  return (JSON.parse(text) as { reservations: Reservation[] }).reservations;
}

async function httpReservations(): Promise<Reservation[]> {
  const res = await fetch(`http://127.0.0.1:${http.port}/reservations`);
  return ((await res.json()) as { reservations: Reservation[] }).reservations;
}

describe('configuration', () => {
  test("the demo's agents file (README, \"Tools over MCP\") is valid", async () => {
    expect((await loadMcpServers(path.join(ROOT, 'mcp-server/agents.yaml'))).map((s) => [s.name, s.transport])).toEqual([['inventory', 'stdio']]);
    expect((await loadAgentFile(path.join(ROOT, 'mcp-server/agents.yaml'))).map((a) => a.tools)).toEqual([['calculator', 'inventory.lookup_stock', 'inventory.reserve_stock', 'inventory.list_reservations']]);
  });

  const agents = `
agents:
  - id: default
    name: A
    systemPrompt: p
    tools: [shop.lookup_stock, shop.reserve_stock]
`;

  test('an agent may not list a tool its server\'s allow list leaves out: the file names the agent, the field and the line', () => {
    const text = `mcpServers:\n  - { name: shop, transport: stdio, command: node, allow: [lookup_stock] }\n${agents}`;
    expect(() => parseAgentFile(text, 'agents.yaml')).toThrow('agents.yaml: agent "default": agents[0].tools[1] (line 8): "reserve_stock" is not in the allow list of MCP server "shop"');
  });

  test('header values name secrets, never hold them; server names are unique and hold no "."', () => {
    const text = `mcpServers:
  - { name: shop, transport: http, url: "http://127.0.0.1:9/mcp", headers: { Authorization: "Bearer abc" } }
  - { name: shop, transport: stdio, command: node }
  - { name: a.b, transport: stdio, command: node }
  - { name: c, transport: ftp, url: "ftp://x" }
${agents}`;
    const error = (() => {
      try {
        parseAgentFile(text, 'agents.yaml');
      } catch (e) {
        return e as AgentConfigError;
      }
      throw new Error('the file was accepted');
    })();
    expect(error.problems.map((p) => `${p.field}: ${p.message}`)).toEqual([
      'mcpServers[0].headers.Authorization: must name a secret setting: capitals, digits and "_" (KEEL_SECRET_<NAME>)',
      'mcpServers[2].name: must be 1 to 64 letters, digits, "_" or "-"',
      "mcpServers[3].transport: Invalid discriminator value. Expected 'stdio' | 'http'",
    ]);
  });
});

describe('a deployment with MCP servers', () => {
  test('discovery over stdio and streamable HTTP stores each allowed tool as <server>.<tool>: read when the config lists it readOnly, else write with approval', async () => {
    expect(await catalogRow('shop.lookup_stock')).toMatchObject({
      kind: 'mcp',
      source: 'shop',
      target: { server: 'shop', tool: 'lookup_stock' },
      definition: { permission: 'read', requiresApproval: false, timeoutMs: 30_000, maxAttempts: 3, parameters: { type: 'object', required: ['sku'] } },
    });
    const reserve = await catalogRow('shop.reserve_stock');
    expect(reserve?.definition).toMatchObject({ permission: 'write', requiresApproval: true, idempotent: true });
    expect(reserve?.definition.description).toMatch(/^Reserves units of a product/);
    // Not in shop's allow list; warehouse has none, so all of its tools are stored.
    expect(await catalogRow('shop.list_reservations')).toBeUndefined();
    expect(await catalogRow('warehouse.list_reservations')).toMatchObject({ source: 'warehouse', definition: { permission: 'write', requiresApproval: true, maxAttempts: 2 } });
    const warehouseReserve = await catalogRow('warehouse.reserve_stock');
    expect(warehouseReserve?.definition).toMatchObject({ permission: 'write', requiresApproval: true });
    expect(warehouseReserve?.definition).not.toHaveProperty('idempotent');
    // A server that never answers blocked neither process: both started, and the worker says why it has no tools from it.
    await stack.worker.waitForLine(/"mcpServer":"ghost".*MCP tool discovery failed/);
  });

  test.each([
    ['stdio', 'default', 'shop'],
    ['streamable HTTP', 'remote', 'warehouse'],
  ])('over %s: a read call runs at once; a write call waits for approval, then runs once with the call\'s idempotency key', async (_transport, agentId, server) => {
    const { sessionId, ws } = await session(agentId);
    const read = await turn(ws, 'How many SKU-2 are in stock?');
    expect(read.find(of('tool.call'))!.data).toMatchObject({ name: `${server}.lookup_stock`, arguments: { sku: 'SKU-2' }, requiresApproval: false });
    expect(read.find(of('tool.result'))!.data).toMatchObject({ status: 'succeeded', result: { sku: 'SKU-2', name: 'Red kettle', available: 3 } });
    expect(read.find(of('turn.done'))!.data).toMatchObject({ status: 'completed' });
    // The provider sees names OpenAI accepts (no dots), in the tools it is offered and in the history it reads back.
    const asked = stack.model.requests(sessionId).at(-1)!.body as { tools?: { function: { name: string } }[]; messages: { tool_calls?: { function: { name: string } }[] }[] };
    const names = [...(asked.tools ?? []).map((t) => t.function.name), ...asked.messages.flatMap((m) => (m.tool_calls ?? []).map((c) => c.function.name))];
    expect(names).toContain(`${server}__lookup_stock`);
    for (const name of names) expect(name).toMatch(/^[a-zA-Z0-9_-]{1,64}$/);

    const reservations = server === 'shop' ? stdioReservations : httpReservations;
    ws.send({ type: 'message', content: 'Please reserve 2 of SKU-1' });
    const required = await ws.waitFor(of('approval.required'));
    expect(required.data).toMatchObject({ name: `${server}.reserve_stock`, arguments: { sku: 'SKU-1', quantity: 2 } });
    expect(await reservations()).toEqual([]);
    ws.send({ type: 'approval', toolCallId: required.data.toolCallId, approved: true, digest: required.data.digest });
    const result = await ws.waitFor((f) => f.type === 'tool.result' && f.data.toolCallId === required.data.toolCallId);
    expect(result.data).toMatchObject({ name: `${server}.reserve_stock`, status: 'succeeded', result: { sku: 'SKU-1', quantity: 2, available: 10, applied: 'now' } });
    await ws.waitForCount(of('turn.done'), 2);
    const stored = await reservations();
    expect(stored).toEqual([expect.objectContaining({ sku: 'SKU-1', quantity: 2, reservationId: result.data.result.reservationId })]);
    expect(stored[0]!.idempotencyKey).toContain(required.data.toolCallId);
    expect(stored[0]!.idempotencyKey).toContain(sessionId);
  });

  test('an MCP tool error is a result the model reads; it is not retried', async () => {
    const { ws } = await session('default');
    const frames = await turn(ws, 'How many SKU-404 are in stock?');
    expect(frames.find(of('tool.result'))!.data).toMatchObject({
      status: 'failed',
      error: { code: 'TOOL_EXECUTION_ERROR', message: 'shop.lookup_stock failed: No product has the SKU "SKU-404" (known: SKU-1, SKU-2, SKU-3)' },
    });
    expect(frames.find(of('turn.done'))!.data).toMatchObject({ status: 'completed' });
  });

  test('the HTTP server killed mid-call: the call fails with a recoverable TOOL_EXECUTION_ERROR; the next call works once it is back', async () => {
    const { sessionId, ws } = await session('remote');
    const callsBefore = http.lines.filter((l) => l.includes('"event":"call"')).length;
    ws.send({ type: 'message', content: 'How many SKU-3 are in stock?' });
    await eventually(async () => http.lines.filter((l) => l.includes('"event":"call"')).length > callsBefore, 20_000, 'the call to reach the server');
    await http.kill('SIGKILL');
    const result = await ws.waitFor(of('tool.result'), 30_000);
    expect(result.data).toMatchObject({ name: 'warehouse.lookup_stock', status: 'failed', error: { code: 'TOOL_EXECUTION_ERROR' } });
    expect(result.data.error.message).toContain('warehouse.lookup_stock');
    expect((await ws.waitFor(of('turn.done'))).data).toMatchObject({ status: 'completed' });
    const { rows } = await stack.db.query('SELECT status, error_code FROM tool_calls WHERE session_id = $1', [sessionId]);
    expect(rows).toEqual([{ status: 'failed', error_code: 'TOOL_EXECUTION_ERROR' }]);

    // Back, and still slow for the next test.
    http = await startDemoServer(['--port', String(http.port), '--delay-ms', '1000', '--state', httpState]);
    const again = await turn(ws, 'How many SKU-3 are in stock now?');
    expect(again.find(of('tool.result'))!.data).toMatchObject({ name: 'warehouse.lookup_stock', status: 'succeeded', result: { sku: 'SKU-3', available: 0 } });
  });

  test('a write whose server dies after receiving it is not sent again on its own: its outcome is unknown and a person decides', async () => {
    const { sessionId, ws } = await session('remote');
    ws.send({ type: 'message', content: 'Please reserve 1 of SKU-2' });
    const required = await ws.waitFor(of('approval.required'));
    const callsBefore = http.lines.filter((l) => l.includes('"tool":"reserve_stock"')).length;
    ws.send({ type: 'approval', toolCallId: required.data.toolCallId, approved: true, digest: required.data.digest });
    await eventually(async () => http.lines.filter((l) => l.includes('"tool":"reserve_stock"')).length > callsBefore, 20_000, 'the write to reach the server');
    await http.kill('SIGKILL');
    // Had the lost connection been taken for "never sent", the attempts would have run out into a failed result instead.
    const asked = await ws.waitFor((f) => f.type === 'approval.required' && f.data.name === 'outcome_unknown', 30_000);
    expect(asked.data.arguments).toMatchObject({ toolCallId: required.data.toolCallId, tool: 'warehouse.reserve_stock' });
    expect(ws.frames.filter(of('tool.result'))).toEqual([]);

    // The server died before recording it; approved, the call is sent again with its key, and takes effect once.
    http = await startDemoServer(['--port', String(http.port), '--state', httpState]);
    const decided = await stack.request('POST', `/api/v1/sessions/${sessionId}/approvals/${asked.data.toolCallId}`, { approved: true, digest: asked.data.digest });
    expect(decided.status).toBe(200);
    const result = await ws.waitFor(of('tool.result'), 30_000);
    expect(result.data).toMatchObject({ name: 'warehouse.reserve_stock', status: 'succeeded', result: { sku: 'SKU-2', quantity: 1, applied: 'now' } });
    const mine = (await httpReservations()).filter((r) => r.idempotencyKey?.includes(required.data.toolCallId));
    expect(mine).toEqual([expect.objectContaining({ sku: 'SKU-2', quantity: 1 })]);
    expect(http.lines.filter((l) => l.includes('"tool":"reserve_stock"'))).toHaveLength(1);
  });

  test('a stdio server that exits is started again: the next call works', async () => {
    const [first] = await eventually(async () => (await childProcesses(stack.worker.child.pid!, 'mcp-server/main.ts')).length === 1 && childProcesses(stack.worker.child.pid!, 'mcp-server/main.ts'), 10_000, "the worker's stdio server");
    process.kill(first!, 'SIGKILL');
    await eventually(async () => !(await childProcesses(stack.worker.child.pid!, 'mcp-server/main.ts')).includes(first!), 10_000, 'the stdio server to exit');
    const { ws } = await session('default');
    const frames = await turn(ws, 'Look up SKU-2 please');
    expect(frames.find(of('tool.result'))!.data).toMatchObject({ name: 'shop.lookup_stock', status: 'succeeded', result: { sku: 'SKU-2', available: 3 } });
    const now = await childProcesses(stack.worker.child.pid!, 'mcp-server/main.ts');
    expect(now).toHaveLength(1);
    expect(now[0]).not.toBe(first);
  });

  test("a tool added on the running server is stored on its list-changed notification, long before the refresh interval", async () => {
    expect(await catalogRow('warehouse.warehouse_status')).toBeUndefined();
    // The worker's connection is open again since the last test's call.
    const res = await fetch(`http://127.0.0.1:${http.port}/extra-tool`, { method: 'POST' });
    expect(((await res.json()) as { sessions: number }).sessions).toBeGreaterThan(0);
    await stack.worker.waitForLine(/"mcpServer":"warehouse".*"msg":"MCP server says its tools changed/);
    const row = await eventually(() => catalogRow('warehouse.warehouse_status'), 10_000, 'the new tool in the catalog');
    // Not in warehouse's readOnly list: a write, whatever the server's hints say.
    expect(row).toMatchObject({ kind: 'mcp', source: 'warehouse', definition: { permission: 'write', requiresApproval: true } });
  });

  test('an API starts while a server is down when its tools were discovered before', async () => {
    const file = path.join(dir, 'down-agents.yaml');
    await writeFile(
      file,
      `
mcpServers:
  - { name: warehouse, transport: http, url: "http://127.0.0.1:${await closedPort()}/mcp" }
agents:
  - id: default
    name: A
    systemPrompt: p
    tools: [warehouse.lookup_stock, warehouse.reserve_stock]
`,
    );
    const api = spawnEntry('api/main.ts', { ...stack.env, KEEL_AGENTS_FILE: file });
    try {
      await api.waitForLine(/"mcpServer":"warehouse".*MCP tool discovery failed/);
      await api.waitForLine(/api listening on/);
    } finally {
      await api.kill();
    }
  });

  test('an API whose agents list an MCP tool never discovered refuses to start, naming the agent, the server, the tool and why', async () => {
    const file = path.join(dir, 'bad-agents.yaml');
    await writeFile(
      file,
      `
mcpServers:
  - { name: shop, transport: stdio, command: ${JSON.stringify(process.execPath)}, args: [--import, tsx, mcp-server/main.ts, --stdio] }
  - { name: ghost, transport: http, url: "http://127.0.0.1:${await closedPort()}/mcp" }
  - { name: locked, transport: http, url: "${http.url}", headers: { Authorization: NOT_SET } }
agents:
  - id: default
    name: A
    systemPrompt: p
    tools: [shop.lookup_stok, ghost.lookup_stock, locked.lookup_stock]
`,
    );
    const api = spawnEntry('api/main.ts', { ...stack.env, KEEL_AGENTS_FILE: file });
    await api.waitForLine(/agent "default": agents\[0\]\.tools: "shop\.lookup_stok" has never been discovered: the MCP server "shop" has no tool "lookup_stok" \(it offers: lookup_stock, reserve_stock, list_reservations\)/);
    await api.waitForLine(/agent "default": agents\[0\]\.tools: "ghost\.lookup_stock" has never been discovered: MCP server "ghost" is unreachable: fetch failed \(ECONNREFUSED\) \(restart once it answers, or remove the tool\)/);
    await api.waitForLine(/agent "default": agents\[0\]\.tools: "locked\.lookup_stock" has never been discovered: MCP server "locked": header Authorization needs the secret KEEL_SECRET_NOT_SET, which is not set/);
    await new Promise<void>((resolve) => (api.child.exitCode !== null ? resolve() : api.child.once('exit', () => resolve())));
    expect(api.child.exitCode).toBe(1);
  });
});
