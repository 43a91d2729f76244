/**
 * What an OpenAPI import's workflow needs of its failures: the stable codes (contracts/errors.ts)
 * its activities fail with, non-retryable, and which it records as the import's error. No zod
 * here: the workflow bundle imports this module.
 */
export const SPEC_FAILURE_CODES = [
  'SPEC_FETCH_REFUSED',
  'SPEC_FETCH_FAILED',
  'SPEC_TOO_LARGE',
  'SPEC_TOO_MANY_REDIRECTS',
  'SPEC_UNSUPPORTED_VERSION',
  'SPEC_INVALID',
  'SPEC_REMOTE_REF',
] as const;
export type SpecFailureCode = (typeof SPEC_FAILURE_CODES)[number];

/** The import was discarded while it ran: its steps stop, and nothing more is recorded. */
export const IMPORT_DISCARDED = 'IMPORT_DISCARDED';

/** The workflow ID of an import: one workflow per import. */
export const openapiImportWorkflowId = (importId: string) => `openapi-import-${importId}`;
