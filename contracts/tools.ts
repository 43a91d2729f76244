import { z } from 'zod';

export const ToolPermission = z.enum(['read', 'write']);
export type ToolPermission = z.infer<typeof ToolPermission>;

/** What the model sees and the runtime enforces for one tool. */
export interface ToolDefinition {
  name: string;
  description: string;
  /** JSON Schema of the arguments object, sent to the model as-is. */
  parameters: Record<string, unknown>;
  permission: ToolPermission;
  /** Write tools need approval unless a policy says otherwise. */
  requiresApproval: boolean;
  timeoutMs: number;
  retry: { maxAttempts: number };
  /**
   * Sending the same call twice (same idempotency key) has one effect: a write whose outcome is
   * unknown (its worker died after sending) is sent again. Otherwise it is not re-run, and a
   * person decides (docs/tools.md, "Effects"). Read tools are always safe to repeat.
   */
  idempotent?: boolean;
}

/** Where a catalog tool comes from (tool_catalog.kind). */
export const CatalogKind = z.enum(['mcp', 'http']);
export type CatalogKind = z.infer<typeof CatalogKind>;

/** A tool stored in the catalog: its definition, and what its kind's executor needs to call it (`target`). */
export const CatalogTool = z.object({
  name: z.string().min(1).max(128),
  kind: CatalogKind,
  source: z.string().min(1),
  definition: z.object({
    description: z.string(),
    parameters: z.record(z.string(), z.unknown()),
    permission: ToolPermission,
    requiresApproval: z.boolean(),
    timeoutMs: z.number().int().positive(),
    maxAttempts: z.number().int().positive(),
    idempotent: z.boolean().optional(),
  }),
  target: z.unknown(),
});
export type CatalogTool = z.infer<typeof CatalogTool>;
