/**
 * The built-in tools of router sessions (and of agents that may escalate): offered to the model
 * by the model activity, carried out by the workflow itself, never by a tool activity. No zod
 * here: the workflow bundle imports these.
 */
export const HANDOFF_TOOL = 'handoff';
export const ESCALATE_TOOL = 'escalate';
export const BUILTIN_TOOL_NAMES: readonly string[] = [HANDOFF_TOOL, ESCALATE_TOOL];

/** The name an unknown-outcome decision goes by in the approvals API and its events (docs/tools.md, "Effects"). */
export const OUTCOME_UNKNOWN_APPROVAL_NAME = 'outcome_unknown';
