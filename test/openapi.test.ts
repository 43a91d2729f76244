import http from 'node:http';
import type { AddressInfo } from 'node:net';
import type { DatabasePool } from 'slonik';
import { KeelError } from '../contracts/errors';
import type { CatalogTool } from '../contracts/tools';
import { createHttpOperationExecutor } from '../tools/http-operation';
import { fetchSpecText } from '../tools/openapi/fetch-spec';
import { parseOperations } from '../tools/openapi/operations';
import { checkRefs, checkVersion, parseSpecText, type Json, type JsonObject } from '../tools/openapi/spec';
import type { LookupAll } from '../tools/guarded-fetch';
import { ToolAuthError, ToolInputError, ToolTransientError, ToolValidationError, type ToolContext } from '../tools';
import { eventually, startStack, type Stack } from './support/stack';
import type { Frame } from './support/ws-client';

// ---------------------------------------------------------------------------------------------
// Local servers: one the deployment may reach (allow-listed: specs and the API the tools call),
// one it must not (every request to it is a failure of the SSRF rules).

interface Hit {
  method: string;
  url: string;
  headers: http.IncomingHttpHeaders;
  body: string;
}

interface Server {
  port: number;
  url(path: string): string;
  hits: Hit[];
  close(): Promise<void>;
}

async function startServer(route: (req: http.IncomingMessage, res: http.ServerResponse, body: string, server: Server) => void): Promise<Server> {
  const hits: Hit[] = [];
  const server = http.createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      const body = Buffer.concat(chunks).toString('utf8');
      hits.push({ method: req.method ?? '', url: req.url ?? '', headers: req.headers, body });
      route(req, res, body, self);
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const port = (server.address() as AddressInfo).port;
  const self: Server = {
    port,
    url: (path) => `http://127.0.0.1:${port}${path}`,
    hits,
    close: () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
  return self;
}

const json = (res: http.ServerResponse, status: number, value: unknown) => res.writeHead(status, { 'content-type': 'application/json' }).end(JSON.stringify(value));

/** A YAML spec (OpenAPI 3.0) whose parameters, request body and schemas are all behind local $refs. */
const shopYaml = (apiBase: string) => `
openapi: 3.0.3
info: { title: Shop Orders, version: '1.0' }
servers:
  - url: ${apiBase}
paths:
  /orders/{orderId}:
    parameters:
      - $ref: '#/components/parameters/OrderId'
    get:
      operationId: getOrder
      summary: Look up an order
      tags: [orders]
      parameters:
        - name: expand
          in: query
          description: What to include
          schema: { type: string, enum: [items, customer] }
        - name: X-Trace
          in: header
          schema: { type: string }
        - name: Authorization
          in: header
          schema: { type: string }
      responses:
        '200':
          description: the order
          content:
            application/json:
              schema: { $ref: '#/components/schemas/Order' }
  /orders/{orderId}/refunds:
    post:
      operationId: createRefund
      summary: Refund an order
      tags: [billing]
      parameters:
        - $ref: '#/components/parameters/OrderId'
      requestBody: { $ref: '#/components/requestBodies/Refund' }
      responses: { '201': { description: created } }
  /slow:
    get:
      operationId: slowReport
      summary: A report that takes a second
      responses: { '200': { description: ok } }
components:
  parameters:
    OrderId: { name: orderId, in: path, required: true, description: The order number, schema: { type: string } }
  requestBodies:
    Refund:
      required: true
      content:
        application/json:
          schema: { $ref: '#/components/schemas/Refund' }
  schemas:
    Refund:
      type: object
      required: [amount, refundId]
      additionalProperties: false
      properties:
        amount: { type: number, minimum: 0, exclusiveMinimum: true }
        reason: { type: string, nullable: true }
        refundId: { type: string, readOnly: true }
    Order:
      type: object
      properties:
        orderId: { type: string }
`;

/** A JSON spec (OpenAPI 3.1) with $refs, one of them recursive. */
const billingSpec = (apiBase: string) => ({
  openapi: '3.1.0',
  info: { title: 'Billing', version: '2' },
  servers: [{ url: apiBase }],
  paths: {
    '/invoices': {
      get: { operationId: 'listInvoices', summary: 'List invoices', parameters: [{ $ref: '#/components/parameters/Limit' }], responses: { '200': { description: 'ok' } } },
      post: {
        operationId: 'createInvoice',
        summary: 'Create an invoice',
        requestBody: { required: true, content: { 'application/json': { schema: { $ref: '#/components/schemas/Invoice' } } } },
        responses: { '201': { description: 'created' } },
      },
    },
  },
  components: {
    parameters: { Limit: { name: 'limit', in: 'query', schema: { type: 'integer', maximum: 100 } } },
    schemas: {
      Invoice: { type: 'object', required: ['lines'], properties: { lines: { type: 'array', items: { $ref: '#/components/schemas/Line' } }, correction: { $ref: '#/components/schemas/Invoice' } } },
      Line: { type: ['object'], required: ['sku'], properties: { sku: { type: 'string' }, quantity: { type: 'integer', minimum: 1 } } },
    },
  },
});

const swagger = { swagger: '2.0', info: { title: 'Old', version: '1' }, paths: { '/x': { get: { responses: { '200': { description: 'ok' } } } } } };

const remoteRefYaml = (remote: string) => `
openapi: 3.1.0
info: { title: Remote, version: '1' }
servers: [{ url: http://api.example.com }]
paths:
  /things:
    get:
      operationId: listThings
      responses:
        '200':
          description: ok
          content:
            application/json:
              schema: { $ref: '${remote}' }
`;

let allowed: Server;
let blocked: Server;
let stack: Stack;
let adminToken: string;

beforeAll(async () => {
  blocked = await startServer((_req, res) => res.writeHead(200, { 'content-type': 'application/yaml' }).end('openapi: 3.1.0'));
  allowed = await startServer((req, res, body, self) => {
    const url = new URL(req.url ?? '/', 'http://x');
    const p = url.pathname;
    if (p === '/specs/shop.yaml') return void res.writeHead(200, { 'content-type': 'application/yaml' }).end(shopYaml(self.url('/api')));
    if (p === '/specs/swagger.json') return json(res, 200, swagger);
    if (p === '/specs/remote-ref.yaml') return void res.writeHead(200, { 'content-type': 'application/yaml' }).end(remoteRefYaml(blocked.url('/schemas.yaml#/Thing')));
    if (p === '/specs/big') {
      // 20 MB without a content-length: the limit must cut the read itself.
      res.writeHead(200, { 'content-type': 'application/yaml' });
      const chunk = Buffer.alloc(1024 * 1024, 'a');
      let sent = 0;
      const more = () => {
        while (sent < 20 && !res.destroyed) {
          sent++;
          if (!res.write(chunk)) return void res.once('drain', more);
        }
        res.end();
      };
      res.on('error', () => undefined);
      return more();
    }
    if (p === '/redirect') return void res.writeHead(302, { location: url.searchParams.get('to') ?? '/' }).end();
    if (p === '/loop') return void res.writeHead(302, { location: '/loop' }).end();
    const order = /^\/api\/orders\/([^/]+)$/.exec(p);
    if (order && req.method === 'GET') return json(res, 200, { orderId: decodeURIComponent(order[1]!), expand: url.searchParams.get('expand') });
    const refund = /^\/api\/orders\/([^/]+)\/refunds$/.exec(p);
    if (refund && req.method === 'POST') return json(res, 201, { refundId: 'r-1', orderId: decodeURIComponent(refund[1]!), ...(JSON.parse(body) as object) });
    if (p === '/api/slow') return void setTimeout(() => json(res, 200, { report: 'done' }), 1_000);
    if (p === '/api/invoices') return json(res, req.method === 'POST' ? 201 : 200, { ok: true });
    if (p === '/api/status') return json(res, Number(url.searchParams.get('code') ?? 200), { said: `status ${url.searchParams.get('code')}` });
    json(res, 404, { error: 'not found' });
  });
  stack = await startStack({
    env: {
      KEEL_OPENAPI_ALLOW_HOSTS: `127.0.0.1:${allowed.port}`,
      KEEL_HTTP_ALLOW_HOSTS: `127.0.0.1:${allowed.port}`,
      KEEL_SECRET_SHOP_API: 'Bearer shop-s3cret',
    },
  });
  adminToken = await stack.issueToken('importer', true);
});

afterAll(async () => {
  await stack?.stop();
  await Promise.all([allowed?.close(), blocked?.close()]);
});

const admin = (method: string, path: string, body?: unknown) => stack.request(method, `/api/v1${path}`, body, { authorization: `Bearer ${adminToken}` });
const of = (type: string) => (f: Frame) => f.type === type;
const call = (name: string, args: object) => ({ name, arguments: JSON.stringify(args) });

/** Starts an import and waits for it to end its run (ready or failed). */
async function importSpec(body: Record<string, unknown>): Promise<any> {
  const started = await admin('POST', '/openapi/imports', { agentId: 'default', ...body });
  expect(started.status).toBe(202);
  expect(started.body).toMatchObject({ id: expect.stringMatching(/^imp_/), status: 'pending' });
  return eventually(
    async () => {
      const res = await admin('GET', `/openapi/imports/${started.body.id}`);
      return ['ready', 'failed'].includes(res.body.status) ? res.body : null;
    },
    30_000,
    `import ${started.body.id} to end`,
  );
}

async function classifications(importId: string): Promise<Record<string, any>> {
  const res = await admin('GET', `/openapi/imports/${importId}/classifications`);
  expect(res.status).toBe(200);
  return Object.fromEntries(res.body.classifications.map((c: { operationId: string }) => [c.operationId, c]));
}

const hitsTo = (server: Server, path: string) => server.hits.filter((h) => new URL(h.url, 'http://x').pathname === path);

// ---------------------------------------------------------------------------------------------

describe('an OpenAPI import, reviewed and approved, gives an agent tools it calls at once', () => {
  let shop: any;

  test('a YAML spec with local $refs is fetched, parsed and classified by the model; the classifications are stored', async () => {
    shop = await importSpec({ url: allowed.url('/specs/shop.yaml'), authSecret: 'SHOP_API' });
    expect(shop).toMatchObject({ status: 'ready', title: 'Shop Orders', openapi: '3.0.3', error: null, authHeader: 'authorization', skipped: [] });
    const byId = await classifications(shop.id);
    expect(Object.keys(byId)).toEqual(['getOrder', 'createRefund', 'slowReport']);
    expect(byId.getOrder).toMatchObject({
      method: 'GET',
      path: '/orders/{orderId}',
      access: 'read',
      requiresApproval: false,
      agentGroup: 'orders',
      customerParameters: ['orderId'],
      // The model's answer, not the fallback's.
      classifiedBy: 'model',
      idempotent: true,
      edited: false,
      // The $ref'd path parameter, the query one and a plain header; the spec's Authorization header is never a parameter.
      parameters: [
        { name: 'orderId', in: 'path', required: true },
        { name: 'expand', in: 'query', required: false },
        { name: 'X-Trace', in: 'header', required: false },
      ],
    });
    expect(byId.createRefund).toMatchObject({ method: 'POST', access: 'write', requiresApproval: true, agentGroup: 'billing', classifiedBy: 'model', idempotent: false, hasBody: true });
    // The model was asked once per operation, with structured output named for the schema.
    const asked = stack.model.requests(shop.id);
    expect(asked).toHaveLength(3);
    expect(asked.map((r) => r.body.response_format?.json_schema?.name)).toEqual(['openapi_operation', 'openapi_operation', 'openapi_operation']);
  });

  test('an operator edits a classification; approval publishes and activates a new agent version with the tools', async () => {
    const before = await admin('GET', '/agents/default/versions');
    const edited = await admin('PUT', `/openapi/imports/${shop.id}/classifications/createRefund`, { requiresApproval: false, idempotent: true });
    expect(edited.status).toBe(200);
    expect(edited.body).toMatchObject({ operationId: 'createRefund', requiresApproval: false, idempotent: true, access: 'write', edited: true, editedBy: 'importer' });
    expect((await classifications(shop.id)).createRefund).toMatchObject({ requiresApproval: false, edited: true });

    const approved = await admin('POST', `/openapi/imports/${shop.id}/approve`, {});
    expect(approved.status).toBe(200);
    expect(approved.body).toMatchObject({ status: 'approved', decidedBy: 'importer', agentId: 'default', tools: ['shop_orders_get_order', 'shop_orders_create_refund', 'shop_orders_slow_report'] });
    const after = await admin('GET', '/agents/default/versions');
    expect(after.body.release.activeVersion).toBe(approved.body.agentVersion);
    expect(approved.body.agentVersion).toBe(before.body.release.activeVersion + 1);
    const active = after.body.versions.find((v: { version: number }) => v.version === approved.body.agentVersion);
    expect(active.definition.tools).toEqual([...before.body.versions.find((v: { version: number }) => v.version === before.body.release.activeVersion).definition.tools, ...approved.body.tools]);
    // The API resolves the new version with the generated definitions (its own catalog, no restart).
    const listed = (await stack.request('GET', '/api/v1/agents')).body.agents.find((a: { id: string }) => a.id === 'default');
    expect(listed.tools.find((t: { name: string }) => t.name === 'shop_orders_create_refund')).toMatchObject({ permission: 'write', requiresApproval: false });
    expect(listed.tools.find((t: { name: string }) => t.name === 'shop_orders_get_order')).toMatchObject({ permission: 'read', requiresApproval: false });

    const again = await admin('POST', `/openapi/imports/${shop.id}/approve`, {});
    expect(again.status).toBe(409);
    expect(again.body.error.code).toBe('IMPORT_ALREADY_DECIDED');
    const late = await admin('PUT', `/openapi/imports/${shop.id}/classifications/getOrder`, { enabled: false });
    expect(late.body.error.code).toBe('IMPORT_ALREADY_DECIDED');
  });

  test('a new session of the agent calls the generated tools against the service, which sees the parameters, the credentials and the Idempotency-Key', async () => {
    const sessionId = await stack.createSession({ agentId: 'default' });
    const ws = await stack.ws(sessionId);
    const marker = `A/${process.pid}`;
    stack.model.script(sessionId, {
      toolCalls: [
        call('shop_orders_get_order', { orderId: marker, expand: 'items', 'X-Trace': 't-1' }),
        call('shop_orders_create_refund', { orderId: marker, body: { amount: 12.5, reason: null } }),
      ],
    });
    ws.send({ type: 'message', content: 'look up my order and refund it' });
    const done = await ws.waitFor(of('turn.done'), 30_000);
    expect(done.data.status).toBe('completed');
    const calls = Object.fromEntries(ws.frames.filter(of('tool.call')).map((f) => [f.data.name, f.data.toolCallId]));
    const results = Object.fromEntries(ws.frames.filter(of('tool.result')).map((f) => [f.data.name, f.data]));
    expect(results.shop_orders_get_order).toMatchObject({ status: 'succeeded', result: { status: 200, body: { orderId: marker, expand: 'items' } } });
    expect(results.shop_orders_create_refund).toMatchObject({ status: 'succeeded', result: { status: 201, body: { refundId: 'r-1', orderId: marker, amount: 12.5 } } });

    const encoded = encodeURIComponent(marker);
    const [get] = allowed.hits.filter((h) => h.method === 'GET' && h.url.startsWith(`/api/orders/${encoded}`));
    const [post] = allowed.hits.filter((h) => h.method === 'POST' && h.url === `/api/orders/${encoded}/refunds`);
    expect(get?.url).toBe(`/api/orders/${encoded}?expand=items`);
    expect(get?.headers).toMatchObject({ 'x-trace': 't-1', authorization: 'Bearer shop-s3cret', 'idempotency-key': `session-${sessionId}:${calls.shop_orders_get_order}` });
    expect(post?.headers).toMatchObject({ 'content-type': 'application/json', authorization: 'Bearer shop-s3cret', 'idempotency-key': `session-${sessionId}:${calls.shop_orders_create_refund}` });
    expect(JSON.parse(post!.body)).toEqual({ amount: 12.5, reason: null });
  });

  test('arguments that break the schema from the spec are refused before any request', async () => {
    const sessionId = await stack.createSession({ agentId: 'default' });
    const ws = await stack.ws(sessionId);
    const before = allowed.hits.length;
    stack.model.script(sessionId, { toolCalls: [call('shop_orders_create_refund', { orderId: 'B-1', body: { amount: 0 } })] });
    ws.send({ type: 'message', content: 'refund nothing' });
    await ws.waitFor(of('turn.done'), 30_000);
    const result = ws.frames.find(of('tool.result'))!.data;
    expect(result).toMatchObject({ status: 'failed', error: { code: 'TOOL_EXECUTION_ERROR' } });
    expect(result.error.message).toMatch(/invalid arguments: body\.amount: must be > 0/);
    expect(allowed.hits.length).toBe(before);
  });

  test('a JSON spec given inline (3.1, recursive $ref) is classified by the fallback when the model fails, and approved under a prefix', async () => {
    // Two operations, two attempts each: every classifier call fails.
    stack.model.script('*', { failNext: { count: 4, status: 500 } });
    const billing = await importSpec({ spec: billingSpec(allowed.url('/api')), toolPrefix: 'billing_v2' });
    expect(billing).toMatchObject({ status: 'ready', title: 'Billing', openapi: '3.1.0', sourceUrl: null });
    expect(stack.model.requests(billing.id)).toHaveLength(4);
    const byId = await classifications(billing.id);
    expect(byId.listInvoices).toMatchObject({ access: 'read', requiresApproval: false, classifiedBy: 'fallback', agentGroup: 'invoices', customerParameters: [] });
    expect(byId.createInvoice).toMatchObject({ access: 'write', requiresApproval: true, classifiedBy: 'fallback', agentGroup: 'invoices', idempotent: false });

    const approved = await admin('POST', `/openapi/imports/${billing.id}/approve`, {});
    expect(approved.body).toMatchObject({ status: 'approved', toolPrefix: 'billing_v2', tools: ['billing_v2_list_invoices', 'billing_v2_create_invoice'] });
    const rows = await stack.db.query('SELECT name, kind, source, definition, target FROM tool_catalog WHERE source = $1 ORDER BY name', [billing.id]);
    const create = rows.rows.find((r) => r.name === 'billing_v2_create_invoice');
    expect(create).toMatchObject({ kind: 'http', definition: { permission: 'write', requiresApproval: true, idempotent: false, maxAttempts: 1 }, target: { method: 'POST', path: '/invoices', body: { required: true } } });
    // The recursive $ref is cut where it recurs; the rest is inlined.
    expect(create.definition.parameters.properties.body.properties.lines.items).toMatchObject({ required: ['sku'], properties: { quantity: { type: 'integer', minimum: 1 } } });
    expect(create.definition.parameters.properties.body.properties.correction.description).toMatch(/^Recursive/);
  });

  test(`a generated tool whose policy sets timeoutMs: 200 against a service that answers in 1 s fails with TOOL_TIMEOUT`, async () => {
    const versions = (await admin('GET', '/agents/default/versions')).body;
    const current = versions.versions.find((v: { version: number }) => v.version === versions.release.activeVersion).definition;
    const published = await admin('POST', '/agents/default/versions', { ...current, toolPolicy: { ...current.toolPolicy, shop_orders_slow_report: { timeoutMs: 200 } } });
    expect(published.status).toBe(201);
    expect((await admin('POST', '/agents/default/activate', { version: published.body.version })).status).toBe(200);
    const sessionId = await stack.createSession({ agentId: 'default' });
    const ws = await stack.ws(sessionId);
    const before = hitsTo(allowed, '/api/slow').length;
    stack.model.script(sessionId, { toolCalls: [call('shop_orders_slow_report', {})] });
    ws.send({ type: 'message', content: 'the slow report please' });
    await ws.waitFor(of('turn.done'), 30_000);
    expect(ws.frames.find(of('tool.result'))!.data).toMatchObject({ name: 'shop_orders_slow_report', status: 'failed', error: { code: 'TOOL_TIMEOUT' } });
    // The request went out (and was given up on); a read tool is tried again, up to its attempts.
    expect(hitsTo(allowed, '/api/slow').length - before).toBeGreaterThanOrEqual(1);
  });
});

describe('refusals: each with its own code, nothing fetched from a refused address', () => {
  test.each([
    ['a spec URL on a private (loopback) address', () => blocked.url('/spec.yaml'), 'SPEC_FETCH_REFUSED', /loopback/],
    ['a redirect to a private address', () => allowed.url(`/redirect?to=${encodeURIComponent(blocked.url('/spec.yaml'))}`), 'SPEC_FETCH_REFUSED', /redirect 1 to .*loopback/],
    ['more than 5 redirects', () => allowed.url('/loop'), 'SPEC_TOO_MANY_REDIRECTS', /more than 5 redirects/],
    ['a 20 MB body', () => allowed.url('/specs/big'), 'SPEC_TOO_LARGE', /larger than 10485760 bytes/],
    ['a Swagger 2.0 spec', () => allowed.url('/specs/swagger.json'), 'SPEC_UNSUPPORTED_VERSION', /Swagger "2\.0" is not supported/],
    ['a remote $ref', () => allowed.url('/specs/remote-ref.yaml'), 'SPEC_REMOTE_REF', /points outside the spec/],
  ])('%s', async (_what, url, code, message) => {
    const failed = await importSpec({ url: url() });
    expect(failed).toMatchObject({ status: 'failed', error: { code } });
    expect(failed.error.message).toMatch(message);
    expect(blocked.hits).toEqual([]);
  });

  test('the redirect loop is followed exactly 5 times, then given up on', async () => {
    const before = hitsTo(allowed, '/loop').length;
    const failed = await importSpec({ url: allowed.url('/loop') });
    expect(failed.error.code).toBe('SPEC_TOO_MANY_REDIRECTS');
    expect(hitsTo(allowed, '/loop').length - before).toBe(6);
  });

  test('a failed import cannot be approved or edited; it can be discarded, once', async () => {
    const failed = await importSpec({ spec: JSON.stringify(swagger) });
    expect(failed.error.code).toBe('SPEC_UNSUPPORTED_VERSION');
    expect((await admin('POST', `/openapi/imports/${failed.id}/approve`, {})).body.error.code).toBe('IMPORT_NOT_READY');
    expect((await admin('PUT', `/openapi/imports/${failed.id}/classifications/x`, { enabled: false })).body.error.code).toBe('IMPORT_NOT_READY');
    const discarded = await admin('POST', `/openapi/imports/${failed.id}/discard`, {});
    expect(discarded.body).toMatchObject({ status: 'discarded', decidedBy: 'importer' });
    expect((await admin('POST', `/openapi/imports/${failed.id}/discard`, {})).body.error.code).toBe('IMPORT_ALREADY_DECIDED');
  });

  test('bad requests: not an admin, unknown import or operation, url and spec both or neither, an unknown agent', async () => {
    expect((await stack.request('POST', '/api/v1/openapi/imports', { agentId: 'default', url: allowed.url('/specs/shop.yaml') })).body.error.code).toBe('FORBIDDEN');
    const unknown = await admin('GET', '/openapi/imports/imp_nope');
    expect([unknown.status, unknown.body.error.code]).toEqual([404, 'IMPORT_NOT_FOUND']);
    expect((await admin('POST', '/openapi/imports', { agentId: 'default' })).body.error.code).toBe('VALIDATION_ERROR');
    expect((await admin('POST', '/openapi/imports', { agentId: 'default', url: allowed.url('/x'), spec: '{}' })).body.error.code).toBe('VALIDATION_ERROR');
    expect((await admin('POST', '/openapi/imports', { agentId: 'default', url: 'file:///etc/passwd' })).body.error.code).toBe('VALIDATION_ERROR');
    expect((await admin('POST', '/openapi/imports', { agentId: 'nobody', spec: '{}' })).body.error.code).toBe('AGENT_NOT_FOUND');
    const ready = await importSpec({ spec: billingSpec(allowed.url('/api')), toolPrefix: 'billing_v3' });
    const edit = await admin('PUT', `/openapi/imports/${ready.id}/classifications/noSuchOperation`, { enabled: false });
    expect([edit.status, edit.body.error.code]).toEqual([404, 'OPERATION_NOT_FOUND']);
    // billing_v2's names are another import's: this one must pick another prefix.
    const clash = await admin('POST', `/openapi/imports/${ready.id}/approve`, { toolPrefix: 'billing_v2' });
    expect([clash.status, clash.body.error.code]).toEqual([409, 'TOOL_NAME_TAKEN']);
  });
});

// ---------------------------------------------------------------------------------------------
// Unit level: the resolver cases (a custom lookup plays DNS), the spec checks and the executor.

describe('spec fetching resolves every host and refuses any private answer', () => {
  const answers: Record<string, string[]> = { 'specs.internal.test': ['127.0.0.1'], 'mixed.test': ['93.184.215.14', '10.1.2.3'], 'specs.allowed.test': ['127.0.0.1'] };
  const lookup: LookupAll = async (name) => (answers[name] ?? []).map((address) => ({ address, family: 4 }));
  const options = () => ({ allowHosts: [`specs.allowed.test:${allowed.port}`], timeoutMs: 5_000, maxBytes: 1_024, lookup });

  async function refusal(url: string): Promise<KeelError> {
    const error = await fetchSpecText(url, options()).then(
      () => undefined,
      (e: unknown) => e,
    );
    expect(error).toBeInstanceOf(KeelError);
    return error as KeelError;
  }

  test('a host that resolves to a private address is refused before any connection', async () => {
    const before = blocked.hits.length;
    const error = await refusal(`http://specs.internal.test:${blocked.port}/spec.yaml`);
    expect([error.code, error.message]).toEqual(['SPEC_FETCH_REFUSED', 'The spec URL is refused: host "specs.internal.test" is refused: it resolves to a loopback (127.0.0.0/8) address']);
    expect((await refusal('http://mixed.test/spec.yaml')).message).toMatch(/private \(10\.0\.0\.0\/8\)/);
    expect(blocked.hits.length).toBe(before);
  });

  test('an allow-listed name is fetched from the address it resolved to', async () => {
    const before = allowed.hits.length;
    await expect(fetchSpecText(`http://specs.allowed.test:${allowed.port}/specs/swagger.json`, options())).resolves.toBe(JSON.stringify(swagger));
    expect(allowed.hits.slice(before).map((h) => h.headers.host)).toEqual([`specs.allowed.test:${allowed.port}`]);
  });

  test('an unknown host, a non-http scheme and credentials in the URL', async () => {
    const error = await refusal('http://nowhere.test/spec.yaml');
    expect(error.code).toBe('SPEC_FETCH_FAILED');
    expect((await refusal('ftp://specs.allowed.test/spec.yaml')).code).toBe('SPEC_FETCH_REFUSED');
    expect((await refusal('http://u:p@specs.allowed.test/spec.yaml')).code).toBe('SPEC_FETCH_REFUSED');
  });
});

describe('spec checks', () => {
  const codeOf = (fn: () => unknown) => {
    try {
      fn();
    } catch (error) {
      return (error as KeelError).code;
    }
    return 'none';
  };

  test('versions: 3.0 and 3.1 pass; Swagger 2.0, 3.2 and documents that are not OpenAPI are refused', () => {
    const doc = (fields: object) => ({ info: { title: 't' }, paths: { '/a': {} }, ...fields });
    expect(checkVersion(doc({ openapi: '3.0.3' }))).toBe('3.0.3');
    expect(checkVersion(doc({ openapi: '3.1.0' }))).toBe('3.1.0');
    expect(codeOf(() => checkVersion(doc({ swagger: '2.0' })))).toBe('SPEC_UNSUPPORTED_VERSION');
    expect(codeOf(() => checkVersion(doc({ openapi: '3.2.0' })))).toBe('SPEC_UNSUPPORTED_VERSION');
    expect(codeOf(() => checkVersion(doc({})))).toBe('SPEC_INVALID');
    expect(codeOf(() => checkVersion(['a']))).toBe('SPEC_INVALID');
    expect(codeOf(() => parseSpecText('key: [unclosed'))).toBe('SPEC_INVALID');
  });

  test('refs: remote ones (a URL, another file) are refused, a dangling local one is invalid', () => {
    expect(codeOf(() => checkRefs({ a: { $ref: 'https://evil.example/schema.json' } }))).toBe('SPEC_REMOTE_REF');
    expect(codeOf(() => checkRefs({ a: [{ b: { $ref: 'other.yaml#/X' } }] }))).toBe('SPEC_REMOTE_REF');
    expect(codeOf(() => checkRefs({ a: { $ref: '#/components/schemas/Missing' } }))).toBe('SPEC_INVALID');
    expect(codeOf(() => checkRefs({ components: { schemas: { 'a/b': {} } }, a: { $ref: '#/components/schemas/a~1b' } }))).toBe('none');
  });

  test('operations a tool cannot call are left out with the reason; a relative server URL is resolved against the spec URL', () => {
    const doc = parseSpecText(
      JSON.stringify({
        openapi: '3.0.0',
        info: { title: 'Mixed' },
        servers: [{ url: '/v1' }],
        paths: {
          '/upload': { post: { operationId: 'upload', requestBody: { required: true, content: { 'multipart/form-data': { schema: {} } } } } },
          '/session': { get: { operationId: 'whoami', parameters: [{ name: 'sid', in: 'cookie', required: true }] } },
          '/items/{id}': { get: { operationId: 'getItem', parameters: [{ name: 'id', in: 'path', required: true, schema: { type: 'integer' } }] } },
        },
      }),
    ) as JsonObject;
    checkRefs(doc as Json);
    const parsed = parseOperations(doc, { sourceUrl: 'https://api.example.com/specs/openapi.json', maxOperations: 10 });
    expect(parsed.operations.map((o) => [o.operationId, o.serverUrl])).toEqual([['getItem', 'https://api.example.com/v1']]);
    expect(parsed.skipped).toEqual([
      { operationId: 'upload', method: 'POST', path: '/upload', reason: 'its request body is not JSON (multipart/form-data)' },
      { operationId: 'whoami', method: 'GET', path: '/session', reason: 'its required cookie parameter "sid" cannot be sent by a tool' },
    ]);
    expect(codeOf(() => parseOperations(doc, { maxOperations: 2 }))).toBe('SPEC_TOO_LARGE');
  });

  test('with credentials, an operation the spec sends to another server is left out: the secret goes to the import\'s server only', () => {
    const doc = parseSpecText(
      JSON.stringify({
        openapi: '3.0.0',
        info: { title: 'Split' },
        servers: [{ url: 'https://api.example.com' }],
        paths: {
          '/orders': { get: { operationId: 'listOrders' } },
          '/collect': { post: { operationId: 'collect', servers: [{ url: 'https://collector.example.net' }] } },
        },
      }),
    ) as JsonObject;
    const withAuth = parseOperations(doc, { authHeader: 'x-api-key', maxOperations: 10 });
    expect(withAuth.operations.map((o) => o.operationId)).toEqual(['listOrders']);
    expect(withAuth.skipped).toEqual([expect.objectContaining({ operationId: 'collect', reason: expect.stringContaining('the credentials are not sent there') })]);
    // Without credentials there is nothing to leak: both are tools, each on its own server.
    expect(parseOperations(doc, { maxOperations: 10 }).operations.map((o) => [o.operationId, o.serverUrl])).toEqual([
      ['listOrders', 'https://api.example.com'],
      ['collect', 'https://collector.example.net'],
    ]);
  });
});

describe('the http executor', () => {
  const context = (overrides: Partial<ToolContext> = {}): ToolContext => ({
    sessionId: 's-1',
    toolCallId: 'tc-1',
    idempotencyKey: 'session-s-1:tc-1',
    pool: undefined as unknown as DatabasePool,
    signal: new AbortController().signal,
    settings: { httpAllowHosts: [`127.0.0.1:${allowed.port}`], httpTimeoutMs: 5_000, httpMaxBytes: 4_096 },
    ...overrides,
  });
  const row = (target: Record<string, unknown>, parameters: object): CatalogTool => ({
    name: 'svc_op',
    kind: 'http',
    source: 'imp_unit',
    definition: { description: 'd', parameters: { type: 'object', additionalProperties: false, ...parameters }, permission: 'read', requiresApproval: false, timeoutMs: 2_000, maxAttempts: 1 },
    target: { method: 'GET', serverUrl: allowed.url('/api'), path: '/status', parameters: [{ name: 'code', in: 'query', required: true }], operationId: 'op', ...target },
  });
  const statusTool = (secrets: Record<string, string> = {}, auth?: { header: string; secret: string }) =>
    createHttpOperationExecutor({ secrets })(row(auth ? { auth } : {}, { properties: { code: { type: 'integer' } }, required: ['code'] }));
  const run = async (tool: ReturnType<typeof statusTool>, args: unknown, ctx = context()) => tool.execute(tool.parse(args), ctx);
  const failure = (p: Promise<unknown>) => p.then(() => new Error('no failure'), (e: Error) => e);

  test('maps the service\'s answers: 2xx result, 401/403 auth, other 4xx validation, 5xx and 429 transient', async () => {
    const tool = statusTool();
    await expect(run(tool, { code: 200 })).resolves.toEqual({ status: 200, body: { said: 'status 200' }, truncated: false });
    expect(await failure(run(tool, { code: 401 }))).toBeInstanceOf(ToolAuthError);
    expect(await failure(run(tool, { code: 403 }))).toBeInstanceOf(ToolAuthError);
    const invalid = await failure(run(tool, { code: 422 }));
    expect(invalid).toBeInstanceOf(ToolValidationError);
    expect(invalid.message).toBe(`GET http://127.0.0.1:${allowed.port}/api/status answered 422 Unprocessable Entity: {"said":"status 422"}`);
    expect(await failure(run(tool, { code: 503 }))).toBeInstanceOf(ToolTransientError);
    expect(await failure(run(tool, { code: 429 }))).toBeInstanceOf(ToolTransientError);
  });

  test('checks arguments against the schema, and refuses a dot segment for a path parameter', async () => {
    const tool = statusTool();
    expect(await failure(Promise.resolve().then(() => tool.parse({ code: 'x' })))).toBeInstanceOf(ToolInputError);
    expect((await failure(Promise.resolve().then(() => tool.parse({ code: 1, extra: true })))).message).toMatch(/must NOT have additional properties \(extra\)/);
    const byPath = createHttpOperationExecutor({ secrets: {} })(row({ path: '/orders/{id}', parameters: [{ name: 'id', in: 'path', required: true }] }, { properties: { id: { type: 'string' } }, required: ['id'] }));
    const before = allowed.hits.length;
    expect((await failure(run(byPath, { id: '..' }))).message).toMatch(/not a usable path segment/);
    expect(allowed.hits.length).toBe(before);
  });

  test('sends the named secret as the auth header; a secret that is not set is an auth failure before any request', async () => {
    const withSecret = statusTool({ SVC: 'Token abc' }, { header: 'X-Api-Key', secret: 'SVC' });
    await run(withSecret, { code: 200 });
    expect(allowed.hits.at(-1)!.headers).toMatchObject({ 'x-api-key': 'Token abc', 'idempotency-key': 'session-s-1:tc-1' });
    const before = allowed.hits.length;
    const missing = await failure(run(statusTool({}, { header: 'X-Api-Key', secret: 'SVC' }), { code: 200 }));
    expect(missing).toBeInstanceOf(ToolAuthError);
    expect(missing.message).toMatch(/KEEL_SECRET_SVC is not set/);
    expect(allowed.hits.length).toBe(before);
  });

  test('the SSRF rules hold for generated tools too: a server URL that is not allow-listed is refused', async () => {
    const tool = createHttpOperationExecutor({ secrets: {} })(row({ serverUrl: blocked.url('/api') }, { properties: { code: { type: 'integer' } } }));
    const before = blocked.hits.length;
    const error = await failure(run(tool, { code: 200 }));
    expect(error.message).toMatch(/loopback/);
    expect(blocked.hits.length).toBe(before);
  });
});
