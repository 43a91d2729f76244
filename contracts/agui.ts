import { z } from 'zod/v4';
import { ApprovalBody } from './rest';

/**
 * What a resume entry of an AG-UI run carries as its `payload` for a tool approval interrupt
 * (docs/agui.md). zod v4, as @ag-ui/core's own schemas are, so that the interrupt's
 * `responseSchema` is generated from it; the feedback limit is the REST approval body's.
 */
export const AguiApprovalAnswer = z
  .object({
    approved: z.boolean(),
    feedback: z.string().max(ApprovalBody.shape.feedback.unwrap().maxLength ?? 2000).optional(),
  })
  .strict();
export type AguiApprovalAnswer = z.infer<typeof AguiApprovalAnswer>;

/** The JSON Schema of AguiApprovalAnswer, sent as each approval interrupt's `responseSchema`. */
export const AGUI_APPROVAL_RESPONSE_SCHEMA: Record<string, unknown> = (() => {
  const { $schema: _dialect, ...schema } = z.toJSONSchema(AguiApprovalAnswer);
  return schema;
})();
