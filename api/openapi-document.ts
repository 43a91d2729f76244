import { extendZodWithOpenApi, OpenApiGeneratorV31, OpenAPIRegistry, type ResponseConfig, type RouteConfig } from '@asteasolutions/zod-to-openapi';
import { z } from 'zod';
import { AGENT_ID_PATTERN, AgentDefinition } from '../contracts/agents';
import { AiSdkChatBody, AiSdkChatParams } from '../contracts/ai-sdk';
import { AnalyticsQuery, AnalyticsReport, ConversationList, ConversationListQuery, ReplayPage, ReplayQuery } from '../contracts/conversations';
import { ErrorBody, ErrorCode, ErrorEnvelope, httpStatusOf, isRecoverable } from '../contracts/errors';
import { Id } from '../contracts/ids';
import { ApproveBody, ClassificationEdit, CreateImportBody } from '../contracts/openapi';
import { EscalateBody, ExternalEventBody, OperatorMessageBody } from '../contracts/presence';
import { ActivateBody, IncidentListQuery, RollbackBody } from '../contracts/releases';
import { AfterSeqQuery, ApprovalBody, ApprovalListQuery, CancelBody, ChatBody, ChatReply, CreateSessionBody, PageQuery, PostMessageBody, SessionListQuery, IssueTokenBody } from '../contracts/rest';
import { RunId, RunListQuery, SloQuery, SubmitRunBody } from '../contracts/runs';
import { USER_WS_PATH } from './user-socket';
import { AguiAgentParam } from './routes/agui';
import { RunAgentInputSchema } from '@ag-ui/core/schemas';
import { z as z4 } from 'zod/v4';

// Adds `.openapi()` to zod's prototypes (what the registry uses to name components). It does not change parsing.
extendZodWithOpenApi(z);

export const OPENAPI_DOCUMENT_PATH = '/api/v1/openapi.json';

/** The WebSocket upgrade paths (api/ws.ts): not Koa routes, listed as GET with a 101 answer. */
export const WEBSOCKET_PATHS = ['/api/v1/sessions/{id}/ws', USER_WS_PATH] as const;

type Auth = 'bearer' | 'apiKey' | 'public';
/** A schema that is not zod: only for a body whose zod schema is private to its route module. */
type PlainObject = { type: 'object'; description: string };
type Body = { schema: z.ZodTypeAny | PlainObject; required?: boolean };
/** `json: 'object'`: an answer with no zod schema, described as an object (no second schema is written for it). */
type Answer = { description: string; json?: z.ZodTypeAny | 'object'; sse?: boolean; text?: boolean };

interface Route {
  method: 'get' | 'post' | 'put' | 'delete';
  /** OpenAPI form: `{id}`. */
  path: string;
  summary: string;
  tag: string;
  auth: Auth;
  params?: z.AnyZodObject;
  query?: z.ZodTypeAny;
  body?: Body;
  responses: Record<number, Answer>;
  description?: string;
}

/** AG-UI's RunAgentInput as JSON Schema (without its dialect: OpenAPI 3.1's is the same, 2020-12). */
function aguiRunAgentInput(): PlainObject {
  const { $schema: _dialect, ...schema } = z4.toJSONSchema(RunAgentInputSchema, { unrepresentable: 'any', io: 'input' });
  return { ...schema, description: "AG-UI 1.0 RunAgentInput (@ag-ui/core's RunAgentInputSchema)" } as PlainObject;
}

const anObject = (description: string): Answer => ({ description, json: 'object' });
const noContent: Answer = { description: 'Done; no body' };

const sessionId = z.object({ id: Id });
const agentId = z.object({ id: z.string().regex(AGENT_ID_PATTERN) });
const runId = z.object({ id: RunId });
const importId = z.object({ id: z.string() });

/** Every REST route of createApp (api/app.ts), once. test/openapi-document.test.ts checks it against the routers. */
const ROUTES: Route[] = [
  // api/routes/sessions.ts
  { method: 'post', path: '/api/v1/sessions', tag: 'sessions', summary: 'Create a session', auth: 'bearer', body: { schema: CreateSessionBody, required: false }, responses: { 201: anObject('The session (and, once, its events token when its agent enables one)') } },
  { method: 'get', path: '/api/v1/sessions', tag: 'sessions', summary: "The caller's sessions (all for admins), newest first", auth: 'bearer', query: SessionListQuery, responses: { 200: anObject('`{ sessions, nextCursor }`') } },
  { method: 'get', path: '/api/v1/sessions/{id}', tag: 'sessions', summary: 'Read a session, its last seq and state', auth: 'bearer', params: sessionId, responses: { 200: anObject('The session') } },
  { method: 'post', path: '/api/v1/sessions/{id}/messages', tag: 'sessions', summary: 'Send a message', auth: 'bearer', params: sessionId, body: { schema: PostMessageBody }, responses: { 202: anObject('Accepted: `{ messageId }`') } },
  { method: 'get', path: '/api/v1/sessions/{id}/messages', tag: 'sessions', summary: 'List the messages of a session', auth: 'bearer', params: sessionId, query: PageQuery, responses: { 200: anObject('`{ messages, nextAfter }`') } },
  { method: 'get', path: '/api/v1/sessions/{id}/usage', tag: 'sessions', summary: 'Token and cost totals of a session', auth: 'bearer', params: sessionId, responses: { 200: anObject('Usage totals') } },
  { method: 'delete', path: '/api/v1/sessions/{id}', tag: 'sessions', summary: 'Delete a session', auth: 'bearer', params: sessionId, responses: { 204: noContent } },
  { method: 'get', path: '/api/v1/health', tag: 'operations', summary: 'Liveness and dependency checks', auth: 'public', responses: { 200: anObject('Up (`ok` or `degraded`)'), 503: anObject('Down') } },
  { method: 'get', path: '/api/v1/ready', tag: 'operations', summary: 'Readiness (Temporal, Postgres, a polling worker)', auth: 'public', responses: { 200: anObject('Ready'), 503: anObject('Not ready') } },
  // api/routes/streams.ts
  { method: 'get', path: '/api/v1/sessions/{id}/events', tag: 'streams', summary: "Follow a session's events (SSE, resumable with Last-Event-ID or ?after=)", auth: 'bearer', params: sessionId, query: AfterSeqQuery, responses: { 200: { description: 'An SSE stream of durable events', sse: true } } },
  { method: 'post', path: '/api/v1/sessions/{id}/chat', tag: 'streams', summary: 'Send a message and wait for the reply (JSON, or SSE with `stream: true`)', auth: 'bearer', params: sessionId, body: { schema: ChatBody }, responses: { 200: { description: 'The reply (`stream: false`), or an SSE stream of content, restart, tool events, done and error', json: ChatReply, sse: true } } },
  // api/routes/agents.ts
  { method: 'get', path: '/api/v1/approvals', tag: 'approvals', summary: "Pending approvals (the caller's; all for admins)", auth: 'bearer', query: ApprovalListQuery, responses: { 200: anObject('`{ approvals }`') } },
  { method: 'post', path: '/api/v1/sessions/{id}/approvals/{toolCallId}', tag: 'approvals', summary: 'Approve or reject a tool call', auth: 'bearer', params: z.object({ id: Id, toolCallId: Id }), body: { schema: ApprovalBody }, responses: { 200: anObject('The decision') } },
  { method: 'post', path: '/api/v1/sessions/{id}/cancel', tag: 'sessions', summary: 'Cancel the running turn', auth: 'bearer', params: sessionId, body: { schema: CancelBody, required: false }, responses: { 200: anObject('What was cancelled') } },
  // api/routes/releases.ts
  { method: 'get', path: '/api/v1/agents', tag: 'agents', summary: 'Agents with their active version and release', auth: 'bearer', responses: { 200: anObject('`{ agents }`') } },
  { method: 'post', path: '/api/v1/agents/{id}/versions', tag: 'agents', summary: 'Publish an agent version (admin)', auth: 'bearer', params: agentId, body: { schema: AgentDefinition }, description: '`id` may be left out: it is the agent of the path.', responses: { 201: anObject('A new version'), 200: anObject('The same definition was published already') } },
  { method: 'get', path: '/api/v1/agents/{id}/versions', tag: 'agents', summary: "An agent's versions, release and audit (admin)", auth: 'bearer', params: agentId, responses: { 200: anObject('`{ agentId, release, versions, audit }`') } },
  { method: 'post', path: '/api/v1/agents/{id}/activate', tag: 'agents', summary: 'Activate a version, or make it the canary (admin)', auth: 'bearer', params: agentId, body: { schema: ActivateBody }, responses: { 200: anObject('The release after the change') } },
  { method: 'post', path: '/api/v1/agents/{id}/rollback', tag: 'agents', summary: 'Roll a version back (admin)', auth: 'bearer', params: agentId, body: { schema: RollbackBody }, responses: { 200: anObject('The release after the rollback') } },
  { method: 'get', path: '/api/v1/incidents', tag: 'agents', summary: 'Release incidents (admin)', auth: 'bearer', query: IncidentListQuery, responses: { 200: anObject('`{ incidents }`') } },
  // api/metrics.ts
  { method: 'get', path: '/metrics', tag: 'operations', summary: 'Prometheus metrics', auth: 'public', responses: { 200: { description: 'Prometheus text exposition', text: true } } },
  // api/routes/admin.ts
  { method: 'post', path: '/api/v1/admin/tokens', tag: 'admin', summary: 'Issue a token', auth: 'apiKey', body: { schema: IssueTokenBody }, responses: { 201: anObject('`{ tokenId, token, userId, admin }`') } },
  { method: 'delete', path: '/api/v1/admin/tokens/{id}', tag: 'admin', summary: 'Revoke a token', auth: 'apiKey', params: importId, responses: { 204: noContent } },
  // api/routes/workers.ts
  { method: 'get', path: '/api/v1/workers', tag: 'operations', summary: 'The worker fleet from its heartbeats (admin)', auth: 'bearer', responses: { 200: anObject('`{ workers, windowMs, staleAfterMs }`') } },
  // api/routes/runs.ts
  { method: 'post', path: '/api/v1/runs', tag: 'runs', summary: 'Submit a run', auth: 'bearer', body: { schema: SubmitRunBody }, responses: { 202: anObject('`{ runId, sessionId, created, status }`') } },
  { method: 'get', path: '/api/v1/runs', tag: 'runs', summary: "The caller's runs", auth: 'bearer', query: RunListQuery, responses: { 200: anObject('`{ runs }`') } },
  { method: 'get', path: '/api/v1/runs/{id}', tag: 'runs', summary: 'A run with its transitions and webhook attempts', auth: 'bearer', params: runId, responses: { 200: anObject('The run') } },
  { method: 'post', path: '/api/v1/runs/{id}/cancel', tag: 'runs', summary: 'Cancel a run', auth: 'bearer', params: runId, responses: { 200: anObject('The run') } },
  { method: 'get', path: '/api/v1/runs/{id}/events', tag: 'runs', summary: "A run's share of its session's events (SSE)", auth: 'bearer', params: runId, query: AfterSeqQuery, responses: { 200: { description: 'An SSE stream ending after the run', sse: true } } },
  // api/routes/slo.ts
  { method: 'get', path: '/api/v1/slo', tag: 'runs', summary: 'Run SLOs over a window', auth: 'bearer', query: SloQuery, responses: { 200: anObject('The SLO report') } },
  // api/routes/presence.ts
  { method: 'post', path: '/api/v1/sessions/{id}/operator-messages', tag: 'presence', summary: 'Write into an escalated conversation (admin)', auth: 'bearer', params: sessionId, body: { schema: OperatorMessageBody }, responses: { 201: anObject('Stored'), 200: anObject('A repeat of a stored message') } },
  { method: 'post', path: '/api/v1/sessions/{id}/hand-back', tag: 'presence', summary: 'Hand an escalated conversation back to the agents (admin)', auth: 'bearer', params: sessionId, description: 'Takes no fields (an empty object or no body).', responses: { 200: anObject('`{ handedBack, seq, by, alreadyHandedBack }`') } },
  { method: 'post', path: '/api/v1/sessions/{id}/escalate', tag: 'presence', summary: 'Escalate a conversation to a person (admin)', auth: 'bearer', params: sessionId, body: { schema: EscalateBody }, responses: { 202: anObject('Requested'), 200: anObject('Already escalated') } },
  { method: 'post', path: '/api/v1/sessions/{id}/external-events', tag: 'presence', summary: 'Post an external event (admin token, or the session events token)', auth: 'bearer', params: sessionId, body: { schema: ExternalEventBody }, responses: { 201: anObject('Stored'), 200: anObject('A repeat of a stored event') } },
  // api/routes/conversations.ts
  { method: 'get', path: '/api/v1/conversations', tag: 'conversations', summary: 'Conversation records', auth: 'bearer', query: ConversationListQuery, responses: { 200: { description: 'A page of conversations', json: ConversationList } } },
  { method: 'get', path: '/api/v1/conversations/{id}/replay', tag: 'conversations', summary: 'The step timeline of a conversation', auth: 'bearer', params: sessionId, query: ReplayQuery, responses: { 200: { description: 'A page of replay steps', json: ReplayPage } } },
  // api/routes/analytics.ts
  { method: 'get', path: '/api/v1/analytics', tag: 'conversations', summary: 'Analytics over a range of days', auth: 'bearer', query: AnalyticsQuery, responses: { 200: { description: 'The analytics report', json: AnalyticsReport } } },
  // api/routes/openapi.ts (imports of other services' specs)
  { method: 'post', path: '/api/v1/openapi/imports', tag: 'openapi-imports', summary: 'Start an OpenAPI import (admin)', auth: 'bearer', body: { schema: CreateImportBody }, responses: { 202: anObject('The import') } },
  { method: 'get', path: '/api/v1/openapi/imports/{id}', tag: 'openapi-imports', summary: 'An import (admin)', auth: 'bearer', params: importId, responses: { 200: anObject('The import') } },
  { method: 'get', path: '/api/v1/openapi/imports/{id}/classifications', tag: 'openapi-imports', summary: "An import's operation classifications (admin)", auth: 'bearer', params: importId, responses: { 200: anObject('`{ importId, status, classifications }`') } },
  { method: 'put', path: '/api/v1/openapi/imports/{id}/classifications/{operationId}', tag: 'openapi-imports', summary: 'Edit a classification (admin)', auth: 'bearer', params: z.object({ id: z.string(), operationId: z.string() }), body: { schema: ClassificationEdit }, responses: { 200: anObject('The classification') } },
  { method: 'post', path: '/api/v1/openapi/imports/{id}/approve', tag: 'openapi-imports', summary: 'Approve an import: publish and activate its tools (admin)', auth: 'bearer', params: importId, body: { schema: ApproveBody, required: false }, responses: { 200: anObject('The import with the agent version') } },
  { method: 'post', path: '/api/v1/openapi/imports/{id}/discard', tag: 'openapi-imports', summary: 'Discard an import (admin)', auth: 'bearer', params: importId, responses: { 200: anObject('The import') } },
  // api/routes/effects.ts
  { method: 'get', path: '/api/v1/sessions/{id}/effects', tag: 'sessions', summary: "A session's effect ledger", auth: 'bearer', params: sessionId, query: PageQuery, responses: { 200: anObject('`{ effects, nextAfter }`') } },
  // api/routes/ai-sdk.ts (docs/ai-sdk.md)
  { method: 'post', path: '/api/v1/ai-sdk/chat', tag: 'ai-sdk', summary: "The AI SDK's chat endpoint (useChat's DefaultChatTransport): a chat's new message or its approval answers", auth: 'bearer', body: { schema: AiSdkChatBody }, responses: { 200: { description: 'The UI message stream (SSE, `x-vercel-ai-ui-message-stream: v1`)', sse: true } } },
  { method: 'get', path: '/api/v1/ai-sdk/chat/{id}/stream', tag: 'ai-sdk', summary: "Resume a chat's reply in progress, replayed from its start", auth: 'bearer', params: AiSdkChatParams, responses: { 200: { description: 'The UI message stream (SSE)', sse: true }, 204: { description: 'No reply is running' } } },
  // api/routes/agui.ts (docs/agui.md): the body is AG-UI's RunAgentInput, as JSON Schema from @ag-ui/core's own (zod 4) schema.
  { method: 'post', path: '/api/v1/agui/{agentId}', tag: 'agui', summary: 'An AG-UI 1.0 run on the thread\'s session: a new user message or resume entries answering interrupts', auth: 'bearer', params: z.object({ agentId: AguiAgentParam }), body: { schema: aguiRunAgentInput() }, responses: { 200: { description: 'AG-UI events (SSE): RUN_STARTED … RUN_FINISHED or RUN_ERROR', sse: true } } },
  // api/routes/openapi-document.ts
  { method: 'get', path: OPENAPI_DOCUMENT_PATH, tag: 'operations', summary: 'This document', auth: 'public', responses: { 200: anObject('An OpenAPI 3.1 document') } },
];

/**
 * zod-to-openapi 7 cannot describe z.lazy, and MessageContent (contracts/frames.ts) is lazy so
 * that the API can lower its limit at start: a body field of it is described as what it resolves to.
 */
function resolvingLazyFields(schema: z.ZodTypeAny | PlainObject): z.ZodTypeAny | PlainObject {
  if (!(schema instanceof z.ZodObject)) return schema;
  const shape = schema.shape as z.ZodRawShape;
  const resolved = Object.entries(shape).filter(([, field]) => field instanceof z.ZodLazy);
  return resolved.length ? schema.extend(Object.fromEntries(resolved.map(([key, field]) => [key, (field as z.ZodLazy<z.ZodTypeAny>).schema]))) : schema;
}

const SECURITY: Record<Auth, RouteConfig['security']> = { bearer: [{ bearerAuth: [] }], apiKey: [{ apiKey: [] }], public: [] };

function content(answer: Answer): ResponseConfig['content'] | undefined {
  const out: NonNullable<ResponseConfig['content']> = {};
  if (answer.json) out['application/json'] = { schema: answer.json === 'object' ? { type: 'object' } : answer.json };
  if (answer.sse) out['text/event-stream'] = { schema: { type: 'string' } };
  if (answer.text) out['text/plain'] = { schema: { type: 'string' } };
  return Object.keys(out).length ? out : undefined;
}

/** The OpenAPI 3.1 document of the REST API, from the zod schemas the routes validate with. */
export function buildOpenApiDocument(): ReturnType<OpenApiGeneratorV31['generateDocument']> {
  const registry = new OpenAPIRegistry();
  registry.registerComponent('securitySchemes', 'bearerAuth', { type: 'http', scheme: 'bearer', description: 'A user token (POST /api/v1/admin/tokens), or a session events token for POST …/external-events' });
  registry.registerComponent('securitySchemes', 'apiKey', { type: 'apiKey', in: 'header', name: 'X-API-Key', description: "The deployment's admin API key (KEEL_ADMIN_API_KEY)" });

  // Registered copies of the contracts' own schemas, so that the envelope refers to the code enum by $ref.
  const codes = ErrorCode.options.map((code) => `${code} (${httpStatusOf(code)}${isRecoverable(code) ? ', recoverable' : ''})`).join('; ');
  const code = registry.register('ErrorCode', ErrorCode.openapi({ description: `Stable error codes, with their HTTP status: ${codes}` }));
  const body = registry.register('ErrorBody', ErrorBody.extend({ code }));
  registry.register('ErrorEnvelope', ErrorEnvelope.extend({ error: body }));
  registry.registerComponent('responses', 'Error', { description: 'A failure: the one error envelope (docs/protocol.md)', content: { 'application/json': { schema: { $ref: '#/components/schemas/ErrorEnvelope' } } } });
  const error = { $ref: '#/components/responses/Error' };

  for (const route of ROUTES) {
    const responses: RouteConfig['responses'] = {};
    for (const [status, answer] of Object.entries(route.responses)) {
      const c = content(answer);
      responses[status] = { description: answer.description, ...(c ? { content: c } : {}) };
    }
    responses['4XX'] = error;
    responses['5XX'] = error;
    registry.registerPath({
      method: route.method,
      path: route.path,
      summary: route.summary,
      tags: [route.tag],
      ...(route.description ? { description: route.description } : {}),
      security: SECURITY[route.auth],
      request: {
        ...(route.params ? { params: route.params } : {}),
        ...(route.query ? { query: route.query as z.AnyZodObject } : {}),
        ...(route.body ? { body: { required: route.body.required ?? true, content: { 'application/json': { schema: resolvingLazyFields(route.body.schema) } } } } : {}),
      },
      responses,
    });
  }

  for (const path of WEBSOCKET_PATHS) {
    registry.registerPath({
      method: 'get',
      path,
      tags: ['streams'],
      summary: path === USER_WS_PATH ? "WebSocket: every session's events of the caller" : "WebSocket: a session's frames",
      description: 'A WebSocket upgrade (docs/protocol.md), not a REST call. The token goes in `?token=`, the `bearer, <token>` subprotocol pair, or Authorization.',
      security: SECURITY.bearer,
      ...(path === USER_WS_PATH ? {} : { request: { params: sessionId } }),
      responses: { 101: { description: 'Switching Protocols: WebSocket frames follow' }, '4XX': error, '5XX': error },
    });
  }

  return new OpenApiGeneratorV31(registry.definitions).generateDocument({
    openapi: '3.1.0',
    info: { title: 'Keel API', version: 'v1', description: 'Durable agent runtime. Errors are always the ErrorEnvelope (docs/protocol.md).' },
    security: SECURITY.bearer!,
  });
}
