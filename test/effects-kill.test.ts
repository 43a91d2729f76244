import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { eventually, startStack, type Stack } from './support/stack';
import type { Frame } from './support/ws-client';

/**
 * Exactly once, with a real worker killed at the worst moment: right after a write tool sent its
 * HTTP request, while the service holds its answer. The service counts requests and effects
 * (one per Idempotency-Key).
 */
class ChargeService {
  readonly requests: { key: string | undefined; path: string }[] = [];
  readonly effects = new Set<string>();
  private held: ServerResponse[] = [];
  hold = true;
  private readonly server = createServer((req: IncomingMessage, res: ServerResponse) => {
    req.resume();
    req.on('end', () => {
      const key = req.headers['idempotency-key'] as string | undefined;
      this.requests.push({ key, path: req.url ?? '' });
      if (key) this.effects.add(key);
      if (this.hold) this.held.push(res);
      else res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify({ charged: true, key }));
    });
  });
  port = 0;
  async start() {
    await new Promise<void>((resolve) => this.server.listen(0, '127.0.0.1', resolve));
    this.port = (this.server.address() as AddressInfo).port;
  }
  stop() {
    this.server.closeAllConnections();
    return new Promise((resolve) => this.server.close(resolve));
  }
}

const service = new ChargeService();
let stack: Stack;
let admin: Record<string, string>;
const of = (type: string) => (f: Frame) => f.type === type;

beforeAll(async () => {
  await service.start();
  stack = await startStack({ env: { KEEL_HTTP_ALLOW_HOSTS: `127.0.0.1:${service.port}` } });
  admin = { authorization: `Bearer ${await stack.issueToken('ops', true)}` };
  // Two generated HTTP tools for the same operation, one idempotent, one not (as an approved OpenAPI import stores them).
  for (const [name, idempotent] of [['charge_idempotent', true], ['charge_once', false]] as const) {
    await stack.db.query(
      `INSERT INTO tool_catalog (name, kind, source, definition, target) VALUES ($1, 'http', 'test', $2, $3)`,
      [
        name,
        JSON.stringify({ description: 'Charges the card on file.', parameters: { type: 'object', properties: { body: { type: 'object' } }, additionalProperties: false }, permission: 'write', requiresApproval: false, timeoutMs: 30_000, // What an import gives them: 3 attempts when idempotent, 1 when not (tools/openapi/generate.ts).
          maxAttempts: idempotent ? 3 : 1, idempotent }),
        JSON.stringify({ method: 'POST', serverUrl: `http://127.0.0.1:${service.port}`, path: '/charges', parameters: [], body: { required: false }, operationId: name }),
      ],
    );
  }
  const current = (await stack.request('GET', '/api/v1/agents/default/versions', undefined, admin)).body;
  const definition = current.versions.find((v: { version: number }) => v.version === current.release.activeVersion).definition;
  const published = await stack.request('POST', '/api/v1/agents/default/versions', { ...definition, tools: [...definition.tools, 'charge_idempotent', 'charge_once'] }, admin);
  expect(published.status).toBeLessThan(300);
  const activated = await stack.request('POST', '/api/v1/agents/default/activate', { version: published.body.version, watch: false }, admin);
  expect(activated.status).toBeLessThan(300);
}, 60_000);

afterAll(async () => {
  await stack?.stop();
  await service.stop();
});

/** A session whose model calls `tool` once; resolves when the service holds its request. */
async function callAndKill(tool: string) {
  service.hold = true;
  const sessionId = await stack.createSession();
  const ws = await stack.ws(sessionId);
  stack.model.script(sessionId, { toolCalls: [{ name: tool, arguments: JSON.stringify({ body: { amount: 42 } }) }] });
  const before = service.requests.length;
  ws.send({ type: 'message', content: 'charge me' });
  await eventually(async () => service.requests.length > before, 20_000, 'the request at the service');
  // The request was sent and acted on; the answer is held: the worker dies now.
  await stack.killWorker('SIGKILL');
  service.hold = false;
  const key = service.requests.at(-1)!.key!;
  expect(key).toMatch(new RegExp(`^session-${sessionId}:tc_`));
  await stack.startWorker();
  return { sessionId, ws, key, before };
}

test('an idempotent write is sent again with the same key: the service sees two requests and makes one effect', async () => {
  const { sessionId, ws, key, before } = await callAndKill('charge_idempotent');
  const done = await ws.waitFor(of('turn.done'), 60_000);
  expect(done.data.status).toBe('completed');
  const sent = service.requests.slice(before);
  expect(sent.map((r) => r.key)).toEqual([key, key]);
  expect([...service.effects].filter((k) => k === key)).toHaveLength(1);
  expect(ws.frames.filter(of('tool.result')).map((f) => f.data.status)).toEqual(['succeeded']);
  const effects = (await stack.request('GET', `/api/v1/sessions/${sessionId}/effects`)).body.effects;
  expect(effects).toEqual([expect.objectContaining({ tool: 'charge_idempotent', idempotencyKey: key, idempotent: true, status: 'done', attempts: 2 })]);
}, 90_000);

test('a write that is not idempotent is not sent again: outcome_unknown asks a person, who marks it done', async () => {
  const { sessionId, ws, key, before } = await callAndKill('charge_once');
  const asked = await ws.waitFor((f) => f.type === 'approval.required' && f.data.name === 'outcome_unknown', 60_000);
  expect(asked.data.arguments).toMatchObject({ tool: 'charge_once' });
  // Nothing more reached the service: no guess.
  expect(service.requests.slice(before)).toHaveLength(1);
  const decided = await stack.request('POST', `/api/v1/sessions/${sessionId}/approvals/${asked.data.toolCallId}`, { approved: false, digest: asked.data.digest });
  expect(decided.status).toBe(200);
  const done = await ws.waitFor(of('turn.done'), 30_000);
  expect(done.data.status).toBe('completed');
  expect(service.requests.slice(before).map((r) => r.key)).toEqual([key]);
  expect(ws.frames.filter(of('tool.result')).map((f) => [f.data.name, f.data.status])).toEqual([['charge_once', 'succeeded']]);
  const effects = (await stack.request('GET', `/api/v1/sessions/${sessionId}/effects`)).body.effects;
  expect(effects).toEqual([expect.objectContaining({ tool: 'charge_once', status: 'marked_done', decidedBy: 'dev', attempts: 1 })]);
}, 90_000);
