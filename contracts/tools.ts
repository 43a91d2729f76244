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
}
