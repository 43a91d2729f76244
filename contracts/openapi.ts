import { z } from 'zod';
import { AGENT_ID_PATTERN } from './agents';
import { HttpOperationTarget, SECRET_NAME_PATTERN } from './tools';

/**
 * OpenAPI import (docs/tools.md, "OpenAPI import"): the API's bodies, what the import's
 * activities pass and store, and what the model answers when it classifies an operation.
 */

export const ImportStatus = z.enum(['pending', 'fetching', 'validating', 'parsing', 'classifying', 'ready', 'failed', 'approved', 'discarded']);
export type ImportStatus = z.infer<typeof ImportStatus>;

const HEADER_NAME_PATTERN = /^[!#$%&'*+.^_`|~0-9A-Za-z-]{1,128}$/;
/** Starts every generated tool's name: `<prefix>_<operation>`. */
export const TOOL_PREFIX_PATTERN = /^[a-z][a-z0-9_]{0,23}$/;

const httpUrl = z
  .string()
  .max(4096)
  .url()
  .refine((u) => /^https?:$/.test(new URL(u).protocol), 'must be an http or https URL');

export const CreateImportBody = z
  .object({
    /** Where to fetch the spec (the SSRF rules apply). */
    url: httpUrl.optional(),
    /** The spec itself: JSON or YAML text, or the JSON document. */
    spec: z.union([z.string().min(1), z.record(z.string(), z.unknown())]).optional(),
    /** The agent that gets the generated tools (a new version of it, activated on approve). */
    agentId: z.string().regex(AGENT_ID_PATTERN, 'must be 1 to 64 letters, digits, "_" or "-"'),
    /** Used instead of the spec's servers. */
    serverUrl: httpUrl.optional(),
    /** The credentials setting: KEEL_SECRET_<authSecret> is sent as `authHeader`. Never taken from the spec. */
    authSecret: z.string().regex(SECRET_NAME_PATTERN, 'must be capitals, digits and "_" (the NAME of KEEL_SECRET_<NAME>)').optional(),
    authHeader: z.string().regex(HEADER_NAME_PATTERN, 'must be a header name').optional(),
    toolPrefix: z.string().regex(TOOL_PREFIX_PATTERN, 'must be a lower-case letter, then up to 23 lower-case letters, digits or "_"').optional(),
  })
  .strict()
  .superRefine((body, ctx) => {
    if ((body.url === undefined) === (body.spec === undefined)) ctx.addIssue({ code: 'custom', path: ['url'], message: 'give exactly one of url and spec' });
    if (body.authHeader !== undefined && body.authSecret === undefined) ctx.addIssue({ code: 'custom', path: ['authHeader'], message: 'needs authSecret' });
  });
export type CreateImportBody = z.infer<typeof CreateImportBody>;

/** An operator's change to one operation's classification (and the policy of the tool it becomes). */
export const ClassificationEdit = z
  .object({
    access: z.enum(['read', 'write']).optional(),
    requiresApproval: z.boolean().optional(),
    agentGroup: z.string().trim().min(1).max(64).optional(),
    customerParameters: z.array(z.string().min(1).max(128)).max(100).optional(),
    idempotent: z.boolean().optional(),
    timeoutMs: z.number().int().min(100).max(600_000).optional(),
    /** False leaves the operation out of the generated tools. */
    enabled: z.boolean().optional(),
  })
  .strict()
  .refine((edit) => Object.keys(edit).length > 0, 'change at least one field');
export type ClassificationEdit = z.infer<typeof ClassificationEdit>;

export const ApproveBody = z
  .object({ toolPrefix: z.string().regex(TOOL_PREFIX_PATTERN, 'must be a lower-case letter, then up to 23 lower-case letters, digits or "_"').optional() })
  .strict();
export type ApproveBody = z.infer<typeof ApproveBody>;

/** The name of the structured output the classifier asks for (the local model answers it by name). */
export const CLASSIFY_FORMAT_NAME = 'openapi_operation';

/** What the model answers for one operation (structured output). */
export const OperationClassification = z.object({
  access: z.enum(['read', 'write']),
  needsApproval: z.boolean(),
  /** Which kind of agent the operation belongs with (e.g. "orders", "billing"). */
  agentGroup: z.string(),
  /** The parameters whose values come from the customer (an order number), not from the agent or the system. */
  customerParameters: z.array(z.string()),
});
export type OperationClassification = z.infer<typeof OperationClassification>;

/** What the classifier is shown of an operation (the user message, as JSON). */
export interface OperationSummary {
  operationId: string;
  method: string;
  path: string;
  summary: string | null;
  description: string | null;
  tags: string[];
  parameters: { name: string; in: string; required: boolean; description: string | null }[];
  hasBody: boolean;
}

/** One operation as parsed from the spec: everything its tool is generated from. */
export const ParsedOperation = z.object({
  operationId: z.string().min(1),
  method: HttpOperationTarget.shape.method,
  path: z.string().startsWith('/'),
  summary: z.string().nullable(),
  description: z.string().nullable(),
  tags: z.array(z.string()),
  serverUrl: z.string().url(),
  parameters: HttpOperationTarget.shape.parameters,
  body: z.object({ required: z.boolean() }).optional(),
  /** The tool's arguments as JSON Schema: one property per parameter, and `body`. */
  argumentsSchema: z.record(z.string(), z.unknown()),
  /** Parameter descriptions, for the classifier. */
  parameterDescriptions: z.record(z.string(), z.string()),
});
export type ParsedOperation = z.infer<typeof ParsedOperation>;

/** An operation the import leaves out, and why (a cookie parameter, a body that is not JSON, …). */
export const SkippedOperation = z.object({ operationId: z.string(), method: z.string(), path: z.string(), reason: z.string() });
export type SkippedOperation = z.infer<typeof SkippedOperation>;

/** Every step activity's input. */
export const ImportStepInput = z.object({ importId: z.string().min(1).max(128) });
export type ImportStepInput = z.infer<typeof ImportStepInput>;

export const FinishImportInput = z.object({
  importId: z.string().min(1).max(128),
  status: z.enum(['ready', 'failed']),
  error: z.object({ code: z.string(), message: z.string() }).optional(),
});
export type FinishImportInput = z.infer<typeof FinishImportInput>;

/** The workflow's input: the import, and how long its fetch may take. */
export interface OpenapiImportInput {
  importId: string;
  fetchTimeoutMs: number;
}

export interface OpenapiImportResult {
  status: 'ready' | 'failed' | 'discarded';
  error?: { code: string; message: string };
}
