import { ActivityFailure, ApplicationFailure, proxyActivities } from '@temporalio/workflow';
import type { OpenapiImportActivities } from '../activities/openapi-import';
import { FailureType } from '../contracts/failure-types';
import type { OpenapiImportInput, OpenapiImportResult } from '../contracts/openapi';
import { IMPORT_DISCARDED, SPEC_FAILURE_CODES } from '../contracts/openapi-failures';

/** Time for the steps that only read, check and write the spec (the fetch gets its own time-out on top). */
const STEP_MARGIN_MS = 60_000;
/** Classification calls the model once or twice per operation; the heartbeat shows it is alive. */
const CLASSIFY_TIMEOUT_MS = 30 * 60_000;
const CLASSIFY_HEARTBEAT_MS = 30_000;
const NON_RETRYABLE = [...SPEC_FAILURE_CODES, IMPORT_DISCARDED, FailureType.persistenceInvalid, FailureType.activityInputInvalid];

/**
 * An OpenAPI import (docs/tools.md, "OpenAPI import"): fetching → validating → parsing →
 * classifying → ready, or failed with the stable code of the step that refused the spec. Each
 * step is an activity that records its state first and keeps its work in Postgres, so nothing of
 * the spec enters the history. Approving or discarding the result is the API's (a person's) part.
 */
export async function openapiImportWorkflow(input: OpenapiImportInput): Promise<OpenapiImportResult> {
  const retry = { initialInterval: '1 second', maximumInterval: '10 seconds', maximumAttempts: 3, nonRetryableErrorTypes: NON_RETRYABLE };
  const { fetchOpenapiSpec, validateOpenapiSpec, parseOpenapiSpec } = proxyActivities<OpenapiImportActivities>({
    startToCloseTimeout: input.fetchTimeoutMs + STEP_MARGIN_MS,
    retry,
  });
  // The import's outcome is written whatever it takes (a database outage must not leave it half way).
  const { finishOpenapiImport } = proxyActivities<OpenapiImportActivities>({
    startToCloseTimeout: STEP_MARGIN_MS,
    retry: { initialInterval: '1 second', backoffCoefficient: 2, maximumInterval: '30 seconds', nonRetryableErrorTypes: [FailureType.persistenceInvalid, FailureType.activityInputInvalid] },
  });
  const { classifyOpenapiOperations } = proxyActivities<OpenapiImportActivities>({
    startToCloseTimeout: CLASSIFY_TIMEOUT_MS,
    heartbeatTimeout: CLASSIFY_HEARTBEAT_MS,
    retry,
  });
  const step = { importId: input.importId };
  let failedAt = 'fetching';
  try {
    await fetchOpenapiSpec(step);
    failedAt = 'validating';
    await validateOpenapiSpec(step);
    failedAt = 'parsing';
    await parseOpenapiSpec(step);
    failedAt = 'classifying';
    await classifyOpenapiOperations(step);
  } catch (error) {
    if (!(error instanceof ActivityFailure)) throw error;
    const cause = error.cause instanceof ApplicationFailure ? error.cause : undefined;
    if (cause?.type === IMPORT_DISCARDED) return { status: 'discarded' };
    const failure = failureOf(cause, failedAt);
    await finishOpenapiImport({ ...step, status: 'failed', error: failure });
    return { status: 'failed', error: failure };
  }
  await finishOpenapiImport({ ...step, status: 'ready' });
  return { status: 'ready' };
}

/** The import's error: the step's own code, or (attempts used up) a fetch failure or an internal one. */
function failureOf(cause: ApplicationFailure | undefined, failedAt: string): { code: string; message: string } {
  const type = cause?.type ?? '';
  if ((SPEC_FAILURE_CODES as readonly string[]).includes(type)) return { code: type, message: cause!.message };
  if (failedAt === 'fetching') return { code: 'SPEC_FETCH_FAILED', message: cause?.message ?? 'The spec could not be fetched' };
  return { code: 'INTERNAL_ERROR', message: `The import failed while ${failedAt}; try again` };
}
