import { createHash } from 'node:crypto';
import type { ParsedOperation } from '../../contracts/openapi';
import type { CatalogTool, HttpOperationTarget } from '../../contracts/tools';
import { snakeCase } from './classify';

/**
 * The catalog rows (kind `http`) an approved import becomes: one tool per enabled operation,
 * named `<prefix>_<operation_id>` (the model's tool names allow letters, digits, `_` and `-`,
 * at most 64: no dots), with the reviewed policy.
 */

export const TOOL_NAME_PATTERN = /^[a-zA-Z0-9_-]{1,64}$/;
const MAX_NAME = 64;
const MAX_DESCRIPTION = 1_024;
const PREFIX_MAX = 24;
/** Attempts of a tool whose calls are idempotent: a transient failure (408, 429, 5xx, time-out) is sent again with the same key. */
const IDEMPOTENT_ATTEMPTS = 3;

/** The import's default prefix: its spec's title in snake case (`Shop Orders API` → `shop_orders_api`). */
export function defaultToolPrefix(title: string | null): string {
  const prefix = snakeCase(title ?? '').replace(/^[^a-z]+/, '').slice(0, PREFIX_MAX).replace(/_+$/, '');
  return prefix || 'api';
}

/** `<prefix>_<snake operationId>`; a name over 64 characters is cut and ends with a hash of the whole. */
export function toolNameOf(prefix: string, operationId: string): string {
  const name = `${prefix}_${snakeCase(operationId) || 'operation'}`;
  if (name.length <= MAX_NAME) return name;
  const hash = createHash('sha256').update(name).digest('hex').slice(0, 8);
  return `${name.slice(0, MAX_NAME - 9).replace(/_+$/, '')}_${hash}`;
}

/** One reviewed operation, as stored (db/openapi-imports.ts). */
export interface ReviewedOperation {
  operation: ParsedOperation;
  access: 'read' | 'write';
  requiresApproval: boolean;
  customerParameters: string[];
  idempotent: boolean;
  timeoutMs: number | null;
}

function descriptionOf(r: ReviewedOperation): string {
  const op = r.operation;
  const head = [op.summary, op.description].filter((t): t is string => t !== null && t !== '').join('. ') || op.operationId;
  const asks = r.customerParameters.length > 0 ? ` Ask the customer for: ${r.customerParameters.join(', ')}.` : '';
  const tail = ` (${op.method} ${op.path})${asks}`;
  return `${head.slice(0, MAX_DESCRIPTION - tail.length)}${tail}`;
}

export function catalogRowOf(
  r: ReviewedOperation,
  name: string,
  importId: string,
  auth: { header: string; secret: string } | undefined,
  defaultTimeoutMs: number,
): CatalogTool {
  const op = r.operation;
  const target: HttpOperationTarget = {
    method: op.method,
    serverUrl: op.serverUrl,
    path: op.path,
    parameters: op.parameters,
    ...(op.body ? { body: op.body } : {}),
    ...(auth ? { auth } : {}),
    operationId: op.operationId,
  };
  return {
    name,
    kind: 'http',
    source: importId,
    definition: {
      description: descriptionOf(r),
      parameters: op.argumentsSchema,
      permission: r.access,
      requiresApproval: r.requiresApproval,
      timeoutMs: r.timeoutMs ?? defaultTimeoutMs,
      // A call that may not be sent twice gets one attempt: the effect ledger decides what a lost answer means.
      maxAttempts: r.idempotent ? IDEMPOTENT_ATTEMPTS : 1,
      idempotent: r.idempotent,
    },
    target,
  };
}

/** Names for the operations, unique within the import (a clash after snake-casing gets `_2`, `_3`…). */
export function toolNames(prefix: string, operationIds: string[]): string[] {
  const used = new Set<string>();
  return operationIds.map((id) => {
    let name = toolNameOf(prefix, id);
    for (let n = 2; used.has(name); n++) name = toolNameOf(prefix, `${id}_${n}`);
    used.add(name);
    return name;
  });
}
