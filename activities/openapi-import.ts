import { Context } from '@temporalio/activity';
import { ApplicationFailure } from '@temporalio/common';
import type OpenAI from 'openai';
import { zodResponseFormat } from 'openai/helpers/zod';
import type { DatabasePool } from 'slonik';
import type { Logger } from '../config/logger';
import type { Settings } from '../config/settings';
import { KeelError } from '../contracts/errors';
import { CLASSIFY_FORMAT_NAME, FinishImportInput, ImportStepInput, OperationClassification, type ParsedOperation } from '../contracts/openapi';
import { IMPORT_DISCARDED, SPEC_FAILURE_CODES } from '../contracts/openapi-failures';
import { enterStep, finishImport, listClassifications, specTextOf, storeClassification, storeOperations, storeSpecText, storeSpecVersion, type ImportRow } from '../db/openapi-imports';
import type { LookupAll } from '../tools/guarded-fetch';
import { acceptedClassification, CLASSIFIER_PROMPT, defaultIdempotent, fallbackClassification, operationSummary, requiresApprovalOf } from '../tools/openapi/classify';
import { fetchSpecText, SpecFetchTransientError } from '../tools/openapi/fetch-spec';
import { parseOperations } from '../tools/openapi/operations';
import { checkRefs, checkVersion, isObject, parseSpecText, type Json } from '../tools/openapi/spec';
import { classifyingPersistenceErrors, parseActivityInput } from './persistence-errors';

export interface OpenapiImportDeps {
  pool: DatabasePool;
  openai: OpenAI;
  /** The model that classifies operations (KEEL_MODEL). */
  model: string;
  settings: Settings['openapi'];
  log: Logger;
  /** DNS for spec fetching (tests). */
  lookup?: LookupAll;
}

const HEARTBEAT_MS = 1_000;
/** Model answers per operation before the fallback: an unusable one is asked again once. */
const CLASSIFY_ATTEMPTS = 2;
const classifyFormat = zodResponseFormat(OperationClassification, CLASSIFY_FORMAT_NAME);
const isSpecCode = (code: string): boolean => (SPEC_FAILURE_CODES as readonly string[]).includes(code);

/**
 * A refusal of the spec (a KeelError with a SPEC_* code) fails the step for good, with its code
 * as the failure type the workflow records; a fetch that may work later is retried.
 */
async function asStepFailure<T>(step: () => Promise<T>): Promise<T> {
  try {
    return await step();
  } catch (error) {
    if (error instanceof KeelError && isSpecCode(error.code)) throw ApplicationFailure.nonRetryable(error.message, error.code);
    if (error instanceof SpecFetchTransientError) throw ApplicationFailure.retryable(error.message, 'SPEC_FETCH_FAILED');
    throw error;
  }
}

function discarded(importId: string): ApplicationFailure {
  return ApplicationFailure.nonRetryable(`import ${importId} was discarded`, IMPORT_DISCARDED);
}

/**
 * The steps of an OpenAPI import (workflows/openapi-import.ts). Each moves the import to its
 * state first, reads what the step before stored and stores what it made, so a retried step
 * redoes only its own work; a step finds an import that was discarded meanwhile and stops.
 */
export function createOpenapiImportActivities(deps: OpenapiImportDeps) {
  const { pool } = deps;

  async function enter(importId: string, status: Parameters<typeof enterStep>[2]): Promise<ImportRow> {
    const row = await enterStep(pool, importId, status);
    if (!row) throw discarded(importId);
    return row;
  }

  async function fetchOpenapiSpec(raw: ImportStepInput): Promise<void> {
    const { importId } = parseActivityInput(ImportStepInput, raw);
    const row = await enter(importId, 'fetching');
    if (!row.source_url || (await specTextOf(pool, importId)) !== null) return;
    const text = await asStepFailure(() =>
      fetchSpecText(row.source_url!, {
        allowHosts: deps.settings.allowHosts,
        timeoutMs: deps.settings.fetchTimeoutMs,
        maxBytes: deps.settings.maxBytes,
        signal: Context.current().cancellationSignal,
        ...(deps.lookup ? { lookup: deps.lookup } : {}),
      }),
    );
    await storeSpecText(pool, importId, text.replaceAll('\u0000', '\uFFFD'));
  }

  async function validateOpenapiSpec(raw: ImportStepInput): Promise<void> {
    const { importId } = parseActivityInput(ImportStepInput, raw);
    await enter(importId, 'validating');
    const text = await specTextOf(pool, importId);
    await asStepFailure(async () => {
      if (text === null) throw new KeelError('SPEC_INVALID', 'The import has no spec');
      if (Buffer.byteLength(text) > deps.settings.maxBytes) throw new KeelError('SPEC_TOO_LARGE', `The spec is larger than ${deps.settings.maxBytes} bytes (KEEL_OPENAPI_MAX_BYTES)`);
      const doc = parseSpecText(text);
      const version = checkVersion(doc);
      checkRefs(doc as Json);
      await storeSpecVersion(pool, importId, version);
    });
  }

  async function parseOpenapiSpec(raw: ImportStepInput): Promise<void> {
    const { importId } = parseActivityInput(ImportStepInput, raw);
    const row = await enter(importId, 'parsing');
    const text = await specTextOf(pool, importId);
    await asStepFailure(async () => {
      // Parsed again from the text, checked by the step before: the spec's order is the operations' order.
      const doc = text === null || row.spec_version === null ? undefined : parseSpecText(text);
      if (!isObject(doc)) throw new KeelError('SPEC_INVALID', 'The import has no validated spec');
      const parsed = parseOperations(doc, { sourceUrl: row.source_url ?? undefined, serverUrl: row.server_url ?? undefined, authHeader: row.auth_header ?? (row.auth_secret ? 'authorization' : undefined), maxOperations: deps.settings.maxOperations });
      const operations = parsed.operations.map((op) => ({ ...op, idempotent: defaultIdempotent(op.method) }));
      await pool.transaction((tx) => storeOperations(tx, importId, { ...parsed, operations }));
      deps.log.info({ importId, operations: operations.length, skipped: parsed.skipped.length }, 'openapi spec parsed');
    });
  }

  async function classifyOne(importId: string, op: ParsedOperation, signal: AbortSignal): Promise<OperationClassification & { by: 'model' | 'fallback' }> {
    for (let attempt = 1; attempt <= CLASSIFY_ATTEMPTS; attempt++) {
      try {
        const completion = await deps.openai.chat.completions.create(
          {
            model: deps.model,
            messages: [
              { role: 'system', content: CLASSIFIER_PROMPT },
              { role: 'user', content: JSON.stringify(operationSummary(op)) },
            ],
            response_format: classifyFormat,
            user: importId,
            temperature: 0,
          },
          { signal },
        );
        const accepted = acceptedClassification(completion.choices[0]?.message?.content, op);
        if (accepted) return { ...accepted, by: 'model' };
        deps.log.warn({ importId, operationId: op.operationId, attempt }, 'the model classified an operation with unusable output');
      } catch (error) {
        if (signal.aborted) throw error;
        deps.log.warn({ importId, operationId: op.operationId, attempt, err: error }, 'the model could not classify an operation');
      }
    }
    return { ...fallbackClassification(op), by: 'fallback' };
  }

  /** Classifies every operation not classified yet, a few at a time (KEEL_OPENAPI_CLASSIFY_CONCURRENCY). */
  async function classifyOpenapiOperations(raw: ImportStepInput): Promise<void> {
    const { importId } = parseActivityInput(ImportStepInput, raw);
    await enter(importId, 'classifying');
    const ctx = Context.current();
    const todo = (await listClassifications(pool, importId)).filter((r) => r.classified_at === null);
    const beat = setInterval(() => ctx.heartbeat(), HEARTBEAT_MS);
    try {
      let next = 0;
      const lane = async () => {
        while (next < todo.length) {
          const row = todo[next++]!;
          const c = await classifyOne(importId, row.operation, ctx.cancellationSignal);
          await storeClassification(pool, importId, row.operation_id, { ...c, requiresApproval: requiresApprovalOf(c) });
        }
      };
      await Promise.all(Array.from({ length: Math.min(deps.settings.classifyConcurrency, todo.length) }, lane));
    } finally {
      clearInterval(beat);
    }
  }

  async function finishOpenapiImport(raw: FinishImportInput): Promise<void> {
    const input = parseActivityInput(FinishImportInput, raw);
    const row = await finishImport(pool, input.importId, input.status, input.error);
    deps.log.info({ importId: input.importId, status: row?.status ?? 'discarded', error: input.error?.code }, 'openapi import finished');
  }

  return classifyingPersistenceErrors({ fetchOpenapiSpec, validateOpenapiSpec, parseOpenapiSpec, classifyOpenapiOperations, finishOpenapiImport });
}

export type OpenapiImportActivities = ReturnType<typeof createOpenapiImportActivities>;
