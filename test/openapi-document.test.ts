import type Router from '@koa/router';
import { validate, compileErrors } from '@readme/openapi-parser';
import type { ApiDeps } from '../api/deps';
import { createApp } from '../api/app';
import { buildOpenApiDocument, OPENAPI_DOCUMENT_PATH, WEBSOCKET_PATHS } from '../api/openapi-document';
import { loadSettings } from '../config/settings';
import { ErrorCode } from '../contracts/errors';
import { startStack, type Stack } from './support/stack';

/**
 * A stand-in for every dependency but settings: building the routers only captures their deps
 * (no route runs here), so any property or call answers another stand-in.
 */
function standIn(): unknown {
  const proxy: unknown = new Proxy(function () {}, { get: (_t, key) => (key === 'then' ? undefined : proxy), apply: () => proxy, construct: () => proxy as object });
  return proxy;
}

/** Every route of the routers createApp mounts, read from the routers themselves (koa-router layers), as `METHOD /path/{param}`. */
function registeredRoutes(): string[] {
  const deps = new Proxy({ settings: loadSettings({}) }, { get: (target, key) => (key in target ? target[key as keyof typeof target] : standIn()) }) as unknown as ApiDeps;
  const app = createApp(deps);
  // koa-router's routes() middleware carries its router; the stand-ins' middleware carries only stand-ins.
  const routers = app.middleware.map((m) => (m as { router?: Router }).router).filter((r): r is Router => Array.isArray(r?.stack));
  expect(routers.length).toBeGreaterThanOrEqual(15);
  return routers.flatMap((router) =>
    router.stack
      .filter((layer) => layer.methods.length > 0) // router.use() layers have no methods
      .flatMap((layer) => {
        // koa-router matches with and without a trailing slash; OpenAPI paths have none.
        const path = String(layer.path).replace(/:(\w+)/g, '{$1}').replace(/(.)\/$/, '$1');
        return layer.methods.filter((m) => m !== 'HEAD').map((m) => `${m} ${path}`);
      }),
  );
}

function documentedRoutes(doc: ReturnType<typeof buildOpenApiDocument>): string[] {
  return Object.entries(doc.paths ?? {}).flatMap(([path, item]) => Object.keys(item as object).map((method) => `${method.toUpperCase()} ${path}`));
}

test('the document is valid OpenAPI 3.1 to a standard validator, which does refuse a broken one', async () => {
  const doc = buildOpenApiDocument();
  expect(doc.openapi).toBe('3.1.0');
  const result = await validate(structuredClone(doc) as never);
  if (!result.valid) throw new Error(compileErrors(result));
  expect(result.valid).toBe(true);

  const broken: Partial<typeof doc> = structuredClone(doc);
  delete broken.info;
  expect((await validate(broken as never)).valid).toBe(false);
});

test('every route the Koa routers register is in the document with its method, and nothing else but the WebSocket upgrades', () => {
  const registered = registeredRoutes();
  expect(registered).toEqual(expect.arrayContaining(['GET /api/v1/sessions/{id}', 'POST /api/v1/admin/tokens', 'GET /metrics', `GET ${OPENAPI_DOCUMENT_PATH}`, 'PUT /api/v1/openapi/imports/{id}/classifications/{operationId}']));
  const documented = documentedRoutes(buildOpenApiDocument());
  expect([...documented].sort()).toEqual([...new Set([...registered, ...WEBSOCKET_PATHS.map((p) => `GET ${p}`)])].sort());
});

test('errors are the ErrorEnvelope component, whose code is the ErrorCode enum, and every operation refers to it', () => {
  const doc = buildOpenApiDocument() as any;
  const schemas = doc.components.schemas;
  expect(schemas.ErrorCode.enum).toEqual(ErrorCode.options);
  expect(schemas.ErrorCode.enum).toContain('SESSION_NOT_FOUND');
  expect(schemas.ErrorEnvelope.properties.error).toEqual({ $ref: '#/components/schemas/ErrorBody' });
  expect(schemas.ErrorBody.properties.code).toEqual({ $ref: '#/components/schemas/ErrorCode' });
  expect(doc.components.responses.Error.content['application/json'].schema).toEqual({ $ref: '#/components/schemas/ErrorEnvelope' });
  for (const item of Object.values(doc.paths) as Record<string, { responses: Record<string, unknown> }>[]) {
    for (const op of Object.values(item)) expect(op.responses['4XX']).toEqual({ $ref: '#/components/responses/Error' });
  }
});

test('bodies are the contracts: a validated body is described from its zod schema', () => {
  const doc = buildOpenApiDocument() as any;
  const body = (path: string, method = 'post') => doc.paths[path][method].requestBody.content['application/json'].schema;
  expect(body('/api/v1/sessions/{id}/chat')).toMatchObject({ type: 'object', required: ['content'], additionalProperties: false, properties: { content: { type: 'string' }, stream: { type: 'boolean', default: false } } });
  expect(body('/api/v1/agents/{id}/rollback').required).toEqual(['reason']);
  expect(body('/api/v1/openapi/imports/{id}/classifications/{operationId}', 'put').properties.access).toEqual({ type: 'string', enum: ['read', 'write'] });
  expect(doc.paths['/api/v1/admin/tokens'].post.security).toEqual([{ apiKey: [] }]);
  expect(doc.paths['/api/v1/health'].get.security).toEqual([]);
  expect(doc.security).toEqual([{ bearerAuth: [] }]);
});

describe('over HTTP', () => {
  let stack: Stack;
  beforeAll(async () => {
    stack = await startStack();
  });
  afterAll(async () => {
    await stack?.stop();
  });

  test('GET /api/v1/openapi.json needs no token and answers the document; the imports API beside it still does', async () => {
    const res = await stack.request('GET', OPENAPI_DOCUMENT_PATH, undefined, { authorization: '' });
    expect(res.status).toBe(200);
    expect(res.headers.get('content-type')).toMatch(/^application\/json/);
    expect(res.body.openapi).toBe('3.1.0');
    expect(Object.keys(res.body.paths)).toEqual(expect.arrayContaining(['/api/v1/sessions', '/api/v1/openapi/imports', OPENAPI_DOCUMENT_PATH]));
    expect((await validate(res.body)).valid).toBe(true);

    const imports = await stack.request('GET', '/api/v1/openapi/imports/imp_x', undefined, { authorization: '' });
    expect(imports.status).toBe(401);
    expect(imports.body.error.code).toBe('UNAUTHORIZED');
    // Another method falls through to the authenticated routes (koa-router answers 405 after them): with a token, 405.
    const post = await stack.request('POST', OPENAPI_DOCUMENT_PATH, {});
    expect(post.status).toBe(405);
    expect(post.body.error.code).toBe('METHOD_NOT_ALLOWED');
  });
});
