import { z } from 'zod';
import { BUILTIN_TOOL_NAMES } from './builtin-tools';
import { MAX_MODEL_TOOL_NAME, modelToolName, ToolPermission, type ToolDefinition } from './tools';

export const AGENT_ID_PATTERN = /^[a-zA-Z0-9_-]{1,64}$/;
export const DEFAULT_AGENT_ID = 'default';
export const DEFAULT_APPROVAL_TTL_MS = 30 * 60_000;
export const DEFAULT_MAX_STEPS_PER_TURN = 8;

const MIN_APPROVAL_TTL_MS = 1_000;
const approvalTtlMs = z.number().int().min(MIN_APPROVAL_TTL_MS);

/** What a session does with a message that arrives while a turn is running. */
export const BusyPolicy = z.enum(['queue', 'interrupt', 'reject']);
export type BusyPolicy = z.infer<typeof BusyPolicy>;

export const AgentModel = z
  .object({
    name: z.string().min(1).optional(),
    temperature: z.number().min(0).max(2).optional(),
  })
  .strict();
export type AgentModel = z.infer<typeof AgentModel>;

export const ToolPolicy = z
  .object({
    requiresApproval: z.boolean().optional(),
    approvalTtlMs: approvalTtlMs.optional(),
    timeoutMs: z.number().int().positive().optional(),
    /** The tool's calls may be sent twice with one idempotency key and take effect once (docs/tools.md, "Effects"). */
    idempotent: z.boolean().optional(),
  })
  .strict();
export type ToolPolicy = z.infer<typeof ToolPolicy>;

/**
 * Limits on what one turn may spend (per agent in its definition, per run in POST /runs). A turn
 * that reaches one pauses for an approver: approve gives it another allowance of the same size,
 * reject ends it with BUDGET_EXCEEDED (docs/budgets.md).
 */
export const Budget = z
  .object({
    /** Input plus output tokens of every model call in the turn. */
    maxTokens: z.number().int().positive().optional(),
    maxCostUsd: z.number().positive().optional(),
    /** Tool calls the model may make in the turn. */
    maxToolCalls: z.number().int().positive().optional(),
  })
  .strict();
export type Budget = z.infer<typeof Budget>;

/**
 * A synthetic probe turn the release health check runs against a version: the prompt, and what
 * a healthy answer looks like. At least one expectation is required.
 */
export const HealthCheckProbe = z
  .object({
    name: z.string().min(1).max(64),
    prompt: z.string().min(1).max(4_000),
    expect: z
      .object({
        /** A regular expression (case-insensitive) the final reply must match. */
        replyMatches: z
          .string()
          .min(1)
          .refine((p) => {
            try {
              new RegExp(p, 'i');
              return true;
            } catch {
              return false;
            }
          }, 'must be a valid regular expression')
          .optional(),
        /** A tool the model must call while answering. */
        toolCalled: z.string().min(1).optional(),
        /** The whole probe (every model call and read tool) must finish within this many ms. */
        withinMs: z.number().int().min(100).max(600_000).optional(),
      })
      .strict()
      .refine((e) => e.replyMatches !== undefined || e.toolCalled !== undefined || e.withinMs !== undefined, 'needs at least one of replyMatches, toolCalled, withinMs'),
  })
  .strict();
export type HealthCheckProbe = z.infer<typeof HealthCheckProbe>;

/** How an agent speaks (docs/agents.md): its tone goes into the system prompt; the greeting and escalation message are its words. */
export const Personality = z
  .object({
    tone: z.string().min(1).max(500).optional(),
    /** Opens the agent's first answer in a session (routers, issue 10). */
    greeting: z.string().min(1).max(1_000).optional(),
    /** What the user is told when the conversation goes to a person. */
    escalationMessage: z.string().min(1).max(1_000).optional(),
  })
  .strict();
export type Personality = z.infer<typeof Personality>;

/** How the calls of one model reply run: in the model's order, each after the one before, or all at once. */
export const ToolExecution = z.enum(['sequential', 'parallel']);
export type ToolExecution = z.infer<typeof ToolExecution>;

/** What an outside event (POST /sessions/:id/external-events) does: wake a turn the agent answers, or wait for the next message. */
export const ExternalEventsPolicy = z
  .object({
    mode: z.enum(['wake', 'wait']).default('wait'),
    /** Whether the session gets its own token for posting events (returned once, at session creation). */
    sessionToken: z.boolean().default(false),
  })
  .strict();
export type ExternalEventsPolicy = z.infer<typeof ExternalEventsPolicy>;

/** What makes a stored agent a router: its members and how it picks them (the YAML's `routers:`). */
export const RouterSpec = z
  .object({
    agents: z.array(z.string().regex(AGENT_ID_PATTERN)).min(1).max(20),
    threshold: z.number().min(0).max(1),
    /** Words that point at a member, given to the classifier (and all the offline model reads). */
    keywords: z.record(z.string(), z.array(z.string().min(1)).max(50)).optional(),
    /** Handoffs one turn may make before the next is refused (a loop between two agents). */
    maxHandoffs: z.number().int().min(0).max(10),
  })
  .strict();
export type RouterSpec = z.infer<typeof RouterSpec>;

export const AgentDefinition = z
  .object({
    id: z.string().regex(AGENT_ID_PATTERN, 'must be 1 to 64 letters, digits, "_" or "-"'),
    name: z.string().min(1),
    description: z.string().optional(),
    systemPrompt: z.string(),
    model: AgentModel.optional(),
    tools: z.array(z.string().min(1)).default([]),
    toolPolicy: z.record(z.string(), ToolPolicy).optional(),
    approvalTtlMs: approvalTtlMs.default(DEFAULT_APPROVAL_TTL_MS),
    maxStepsPerTurn: z.number().int().min(1).max(50).default(DEFAULT_MAX_STEPS_PER_TURN),
    busyPolicy: BusyPolicy.default('queue'),
    /** `write`: every tool needs approval unless its toolPolicy says otherwise. `read`: write tools are refused. */
    permission: ToolPermission.optional(),
    personality: Personality.optional(),
    budget: Budget.optional(),
    /** Probe turns the release health check runs against this version (docs/releases.md). */
    healthChecks: z.array(HealthCheckProbe).max(20).optional(),
    /** Default: sequential when any of the agent's tools needs approval, else parallel. */
    toolExecution: ToolExecution.optional(),
    /** Offer the built-in `escalate` tool (always offered to a router's members). */
    escalate: z.boolean().optional(),
    externalEvents: ExternalEventsPolicy.optional(),
    /** Set on routers only (written from the YAML's `routers:` section, never by hand). */
    router: RouterSpec.optional(),
  })
  .strict()
  .superRefine((def, ctx) => {
    def.healthChecks?.forEach((probe, i) => {
      if (probe.expect.toolCalled !== undefined && !def.tools.includes(probe.expect.toolCalled)) {
        ctx.addIssue({ code: 'custom', path: ['healthChecks', i, 'expect', 'toolCalled'], message: `"${probe.expect.toolCalled}" is not in tools` });
      }
    });
    def.tools.forEach((tool, i) => {
      if (def.tools.indexOf(tool) !== i) ctx.addIssue({ code: 'custom', path: ['tools', i], message: `"${tool}" is listed twice` });
      if (BUILTIN_TOOL_NAMES.includes(tool)) ctx.addIssue({ code: 'custom', path: ['tools', i], message: `"${tool}" is a built-in tool (offered by routers and \`escalate: true\`), not one to list` });
    });
    for (const tool of Object.keys(def.toolPolicy ?? {})) {
      if (!def.tools.includes(tool)) ctx.addIssue({ code: 'custom', path: ['toolPolicy', tool], message: `"${tool}" is not in tools` });
    }
  });
export type AgentDefinition = z.infer<typeof AgentDefinition>;

/** A tool as one agent may use it: the agent's policy applied on top of the tool's own definition. */
export type ResolvedTool = ToolDefinition & { approvalTtlMs: number };

/** An agent definition at one stored version, with its tools resolved against the registry. */
export interface ResolvedAgent {
  id: string;
  version: number;
  digest: string;
  name: string;
  description?: string;
  systemPrompt: string;
  /** Unset fields fall back to the deployment's settings (KEEL_MODEL). */
  model: AgentModel;
  tools: ResolvedTool[];
  approvalTtlMs: number;
  maxStepsPerTurn: number;
  busyPolicy: BusyPolicy;
  permission?: ToolPermission;
  personality?: Personality;
  budget?: Budget;
  healthChecks: HealthCheckProbe[];
  toolExecution: ToolExecution;
  escalate: boolean;
  externalEvents?: ExternalEventsPolicy;
  router?: RouterSpec;
}

function own<T>(record: Record<string, T> | undefined, key: string): T | undefined {
  return record && Object.hasOwn(record, key) ? record[key] : undefined;
}

/**
 * Precedence for each setting: the agent's per-tool policy, then the agent (a `write` agent's
 * tools all need approval), then the tool's default.
 */
function applyPolicy(def: AgentDefinition, name: string, tool: ToolDefinition): ResolvedTool {
  const policy = own(def.toolPolicy, name) ?? {};
  return {
    ...tool,
    requiresApproval: policy.requiresApproval ?? (def.permission === 'write' ? true : tool.requiresApproval),
    timeoutMs: policy.timeoutMs ?? tool.timeoutMs,
    approvalTtlMs: policy.approvalTtlMs ?? def.approvalTtlMs,
    ...((policy.idempotent ?? tool.idempotent) === undefined ? {} : { idempotent: policy.idempotent ?? tool.idempotent }),
  };
}

export function resolveAgent(def: AgentDefinition, version: number, digest: string, tools: Record<string, ToolDefinition>): ResolvedAgent {
  const resolvedTools = def.tools.map((name) => {
    const tool = own(tools, name);
    if (!tool) {
      const known = Object.keys(tools).sort().join(', ') || 'none';
      throw new Error(`agent "${def.id}": unknown tool "${name}" (registered tools: ${known})`);
    }
    if (def.permission === 'read' && tool.permission === 'write') {
      throw new Error(`agent "${def.id}": tools: "${name}" is a write tool, and the agent's permission is read`);
    }
    return applyPolicy(def, name, tool);
  });
  checkModelToolNames(def.id, [...resolvedTools.map((t) => t.name), ...BUILTIN_TOOL_NAMES]);
  return {
    id: def.id,
    version,
    digest,
    name: def.name,
    ...(def.description === undefined ? {} : { description: def.description }),
    systemPrompt: def.systemPrompt,
    model: { ...def.model },
    tools: resolvedTools,
    approvalTtlMs: def.approvalTtlMs,
    maxStepsPerTurn: def.maxStepsPerTurn,
    busyPolicy: def.busyPolicy,
    ...(def.permission === undefined ? {} : { permission: def.permission }),
    ...(def.personality === undefined ? {} : { personality: { ...def.personality } }),
    ...(def.budget === undefined ? {} : { budget: { ...def.budget } }),
    healthChecks: def.healthChecks ?? [],
    toolExecution: def.toolExecution ?? (resolvedTools.some((t) => t.requiresApproval) ? 'sequential' : 'parallel'),
    escalate: def.escalate ?? false,
    ...(def.externalEvents === undefined ? {} : { externalEvents: { ...def.externalEvents } }),
    ...(def.router === undefined ? {} : { router: { ...def.router } }),
  };
}

/** Every tool name must reach the model as a distinct, valid function name (docs/tools.md, "MCP servers"). */
function checkModelToolNames(agentId: string, names: readonly string[]): void {
  const seen = new Map<string, string>();
  for (const name of names) {
    const sent = modelToolName(name);
    if (sent.length > MAX_MODEL_TOOL_NAME) throw new Error(`agent "${agentId}": tools: "${name}" is sent to the model as "${sent}", longer than ${MAX_MODEL_TOOL_NAME} characters`);
    const other = seen.get(sent);
    if (other !== undefined) throw new Error(`agent "${agentId}": tools: "${other}" and "${name}" reach the model under the same name "${sent}"`);
    seen.set(sent, name);
  }
}

/** The system message the model gets: the agent's prompt, then its personality's tone when it has one. */
export function systemPromptOf(agent: Pick<ResolvedAgent, 'systemPrompt' | 'personality'>): string {
  const tone = agent.personality?.tone;
  return tone ? `${agent.systemPrompt}\n\nTone: ${tone}` : agent.systemPrompt;
}

/** The YAML's `routers:` entries (docs/routers.md): a session may start with one instead of an agent. */
export const RouterDefinition = z
  .object({
    id: z.string().regex(AGENT_ID_PATTERN, 'must be 1 to 64 letters, digits, "_" or "-"'),
    name: z.string().min(1),
    description: z.string().optional(),
    /** The member agents, each defined under `agents:`. */
    agents: z.array(z.string().min(1)).min(1).max(20),
    classifier: z
      .object({
        prompt: z.string().min(1),
        model: z.string().min(1).optional(),
        /** Intents below this confidence do not run; when none is left the user is asked to clarify. */
        threshold: z.number().min(0).max(1).default(0.5),
        keywords: z.record(z.string(), z.array(z.string().min(1)).max(50)).optional(),
      })
      .strict(),
    maxHandoffs: z.number().int().min(0).max(10).default(3),
    busyPolicy: BusyPolicy.default('queue'),
    approvalTtlMs: approvalTtlMs.default(DEFAULT_APPROVAL_TTL_MS),
    budget: Budget.optional(),
  })
  .strict()
  .superRefine((def, ctx) => {
    def.agents.forEach((agent, i) => {
      if (def.agents.indexOf(agent) !== i) ctx.addIssue({ code: 'custom', path: ['agents', i], message: `"${agent}" is listed twice` });
    });
    for (const agent of Object.keys(def.classifier.keywords ?? {})) {
      if (!def.agents.includes(agent)) ctx.addIssue({ code: 'custom', path: ['classifier', 'keywords', agent], message: `"${agent}" is not in agents` });
    }
  });
export type RouterDefinition = z.infer<typeof RouterDefinition>;

/** A router is stored as an agent version (so it is versioned and released like one) whose prompt is the classifier's. */
export function routerAsAgent(def: RouterDefinition): AgentDefinition {
  return AgentDefinition.parse({
    id: def.id,
    name: def.name,
    ...(def.description === undefined ? {} : { description: def.description }),
    systemPrompt: def.classifier.prompt,
    ...(def.classifier.model === undefined ? {} : { model: { name: def.classifier.model } }),
    tools: [],
    busyPolicy: def.busyPolicy,
    approvalTtlMs: def.approvalTtlMs,
    ...(def.budget === undefined ? {} : { budget: def.budget }),
    router: {
      agents: def.agents,
      threshold: def.classifier.threshold,
      ...(def.classifier.keywords === undefined ? {} : { keywords: def.classifier.keywords }),
      maxHandoffs: def.maxHandoffs,
    },
  });
}
