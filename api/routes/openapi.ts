import { randomBytes } from 'node:crypto';
import Router from '@koa/router';
import { KeelError } from '../../contracts/errors';
import { ApproveBody, ClassificationEdit, CreateImportBody } from '../../contracts/openapi';
import { openapiImportWorkflowId } from '../../contracts/openapi-failures';
import { getRelease } from '../../db/releases';
import { editClassification, finishImport, getImport, insertImport, listClassifications, lockImport, markDecided, type ClassificationRow, type ImportRow } from '../../db/openapi-imports';
import type { openapiImportWorkflow } from '../../workflows';
import { adminCallerOf } from '../auth';
import type { ApiDeps } from '../deps';
import { parseInput } from '../errors';
import { approveImport, requireReady } from '../openapi-approve';

const iso = (ms: number | null) => (ms === null ? null : new Date(ms).toISOString());

function importView(r: ImportRow) {
  return {
    id: r.id,
    status: r.status,
    agentId: r.agent_id,
    sourceUrl: r.source_url,
    serverUrl: r.server_url,
    authSecret: r.auth_secret,
    authHeader: r.auth_secret ? (r.auth_header ?? 'authorization') : null,
    toolPrefix: r.tool_prefix,
    title: r.title,
    openapi: r.spec_version,
    error: r.error_code ? { code: r.error_code, message: r.error_message } : null,
    skipped: r.skipped,
    agentVersion: r.agent_version,
    tools: r.tools,
    createdBy: r.created_by,
    createdAt: iso(r.created_at),
    updatedAt: iso(r.updated_at),
    decidedBy: r.decided_by,
    decidedAt: iso(r.decided_at),
  };
}

function classificationView(c: ClassificationRow) {
  return {
    operationId: c.operation_id,
    method: c.method,
    path: c.path,
    summary: c.summary,
    parameters: c.operation.parameters,
    hasBody: c.operation.body !== undefined,
    access: c.access,
    requiresApproval: c.requires_approval,
    agentGroup: c.agent_group,
    customerParameters: c.customer_parameters,
    idempotent: c.idempotent,
    timeoutMs: c.timeout_ms,
    enabled: c.enabled,
    classifiedBy: c.classified_by,
    classifiedAt: iso(c.classified_at),
    edited: c.edited,
    editedBy: c.edited_by,
    editedAt: iso(c.edited_at),
  };
}

async function importOf(deps: ApiDeps, id: string): Promise<ImportRow> {
  const row = await getImport(deps.pool, id);
  if (!row) throw new KeelError('IMPORT_NOT_FOUND', 'No such OpenAPI import', { importId: id });
  return row;
}

/** OpenAPI imports (docs/tools.md, "OpenAPI import"): start one, follow it, review its classifications, approve or discard it. Admins only. */
export function openapiRoutes(deps: ApiDeps): Router {
  const router = new Router({ prefix: '/api/v1/openapi/imports' });

  router.post('/', async (ctx) => {
    const caller = adminCallerOf(ctx);
    const body = parseInput(CreateImportBody, ctx.request.body);
    if (!(await getRelease(deps.pool, body.agentId))) throw new KeelError('AGENT_NOT_FOUND', 'No such agent', { agentId: body.agentId });
    const specText = body.spec === undefined ? null : typeof body.spec === 'string' ? body.spec : JSON.stringify(body.spec);
    if (specText !== null && Buffer.byteLength(specText) > deps.settings.openapi.maxBytes) {
      throw new KeelError('SPEC_TOO_LARGE', `The spec is larger than ${deps.settings.openapi.maxBytes} bytes (KEEL_OPENAPI_MAX_BYTES)`);
    }
    const row = await insertImport(deps.pool, {
      id: `imp_${randomBytes(16).toString('hex')}`,
      sourceUrl: body.url ?? null,
      specText: specText?.replaceAll('\u0000', '\uFFFD') ?? null,
      agentId: body.agentId,
      serverUrl: body.serverUrl ?? null,
      authSecret: body.authSecret ?? null,
      authHeader: body.authHeader ?? null,
      toolPrefix: body.toolPrefix ?? null,
      createdBy: caller.userId,
    });
    try {
      await deps.sessions.temporal.workflow.start<typeof openapiImportWorkflow>('openapiImportWorkflow', {
        taskQueue: deps.settings.temporal.taskQueue,
        workflowId: openapiImportWorkflowId(row.id),
        args: [{ importId: row.id, fetchTimeoutMs: deps.settings.openapi.fetchTimeoutMs }],
      });
    } catch (error) {
      // No workflow will ever move it: the import ends here, and the caller may try again.
      await finishImport(deps.pool, row.id, 'failed', { code: 'SERVICE_UNAVAILABLE', message: 'The import could not be started' });
      throw new KeelError('SERVICE_UNAVAILABLE', 'The import could not be started; try again', { importId: row.id }, { cause: error });
    }
    // The URL's origin only: a query string may carry a token.
    deps.log.info({ importId: row.id, agentId: row.agent_id, from: row.source_url ? new URL(row.source_url).origin : 'inline', by: caller.userId }, 'openapi import started');
    ctx.status = 202;
    ctx.body = importView(row);
  });

  router.get('/:id', async (ctx) => {
    adminCallerOf(ctx);
    ctx.body = importView(await importOf(deps, ctx.params.id!));
  });

  router.get('/:id/classifications', async (ctx) => {
    adminCallerOf(ctx);
    const row = await importOf(deps, ctx.params.id!);
    ctx.body = { importId: row.id, status: row.status, classifications: (await listClassifications(deps.pool, row.id)).map(classificationView) };
  });

  router.put('/:id/classifications/:operationId', async (ctx) => {
    const caller = adminCallerOf(ctx);
    const edit = parseInput(ClassificationEdit, ctx.request.body);
    const importId = ctx.params.id!;
    const operationId = ctx.params.operationId!;
    const edited = await deps.pool.transaction(async (tx) => {
      requireReady(await lockImport(tx, importId), importId);
      const row = await editClassification(tx, importId, operationId, edit, caller.userId);
      if (!row) throw new KeelError('OPERATION_NOT_FOUND', 'The import has no such operation', { importId, operationId });
      return row;
    });
    deps.log.info({ importId, operationId, edit, by: caller.userId }, 'openapi classification edited');
    ctx.body = classificationView(edited);
  });

  router.post('/:id/approve', async (ctx) => {
    const caller = adminCallerOf(ctx);
    const body = parseInput(ApproveBody, ctx.request.body ?? {});
    const approval = await approveImport(deps, ctx.params.id!, body, caller.userId);
    ctx.body = { ...importView(approval.import), agentId: approval.agentId, agentVersion: approval.version, tools: approval.tools };
  });

  router.post('/:id/discard', async (ctx) => {
    const caller = adminCallerOf(ctx);
    const importId = ctx.params.id!;
    const row = await deps.pool.transaction(async (tx) => {
      const current = await lockImport(tx, importId);
      if (!current) throw new KeelError('IMPORT_NOT_FOUND', 'No such OpenAPI import', { importId });
      if (current.status === 'approved' || current.status === 'discarded') throw new KeelError('IMPORT_ALREADY_DECIDED', `The import was ${current.status} already`, { importId, status: current.status });
      // A running import may be discarded too: its next step finds it so, and the workflow stops.
      return markDecided(tx, importId, { status: 'discarded', by: caller.userId });
    });
    deps.log.info({ importId, by: caller.userId }, 'openapi import discarded');
    ctx.body = importView(row);
  });

  return router;
}
