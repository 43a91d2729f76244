import { z } from 'zod';

/**
 * Agent releases: versions, the active and canary version, rollbacks and the scheduled health
 * check that watches them. API bodies and the health-check workflow–activity contract.
 */

/** A version's standing; `rolled_back` versions are never picked for new sessions again unless activated on purpose. */
export const VersionStatus = z.enum(['published', 'active', 'canary', 'retired', 'rolled_back']);
export type VersionStatus = z.infer<typeof VersionStatus>;

export const ActivateBody = z
  .object({
    version: z.number().int().positive(),
    /** With a percentage below 100 the version becomes the canary; without one (or 100) it becomes active. */
    canaryPercent: z.number().int().min(1).max(100).optional(),
    reason: z.string().max(500).optional(),
    /** Whether a watch checks the version at a faster pace for its probation period (default true). */
    watch: z.boolean().default(true),
  })
  .strict();
export type ActivateBody = z.infer<typeof ActivateBody>;

export const RollbackBody = z
  .object({
    reason: z.string().min(1).max(500),
    /** The version to take out: the canary or the active one. Default: the canary when there is one, else the active version. */
    version: z.number().int().positive().optional(),
  })
  .strict();
export type RollbackBody = z.infer<typeof RollbackBody>;

export const IncidentListQuery = z.object({
  limit: z.coerce.number().int().min(1).max(200).default(50),
  kind: z.string().max(64).optional(),
  agentId: z.string().max(64).optional(),
});

/** Which version a health check looks at, and in what role. */
export const ReleaseTarget = z.object({
  agentId: z.string(),
  version: z.number().int().positive(),
  role: z.enum(['active', 'canary']),
});
export type ReleaseTarget = z.infer<typeof ReleaseTarget>;

export const ProbeResult = z.object({
  name: z.string(),
  passed: z.boolean(),
  durationMs: z.number().nonnegative(),
  toolsCalled: z.array(z.string()),
  /** The first 200 characters of the final reply. */
  reply: z.string(),
  failures: z.array(z.string()),
});
export type ProbeResult = z.infer<typeof ProbeResult>;

/** Live traffic of one version over the check's window. Rates are null below the minimum sample. */
export const LiveSignals = z.object({
  windowMs: z.number().int().positive(),
  turns: z.number().int().nonnegative(),
  failedTurns: z.number().int().nonnegative(),
  turnErrorRate: z.number().nullable(),
  replies: z.number().int().nonnegative(),
  ttftP95Ms: z.number().nullable(),
  toolCalls: z.number().int().nonnegative(),
  failedToolCalls: z.number().int().nonnegative(),
  toolFailureRate: z.number().nullable(),
});
export type LiveSignals = z.infer<typeof LiveSignals>;

/** One rule's verdict, kept as evidence. */
export const RuleVerdict = z.object({ rule: z.string(), failed: z.boolean(), observed: z.number().nullable(), threshold: z.number() });
export type RuleVerdict = z.infer<typeof RuleVerdict>;

export const ReleaseEvaluation = z.object({
  checkId: z.string(),
  target: ReleaseTarget,
  healthy: z.boolean(),
  /** When the check finished: a failing version's detection time (the incident's detectedAt). */
  checkedAt: z.string(),
  /** When the check began. */
  startedAt: z.string(),
  probes: z.array(ProbeResult),
  live: LiveSignals,
  verdicts: z.array(RuleVerdict),
});
export type ReleaseEvaluation = z.infer<typeof ReleaseEvaluation>;

export const EvaluateReleaseInput = z.object({ target: ReleaseTarget, trigger: z.enum(['schedule', 'watch']) });
export type EvaluateReleaseInput = z.infer<typeof EvaluateReleaseInput>;

export const RollbackReleaseInput = z.object({ evaluation: ReleaseEvaluation, decidedAt: z.string() });
export type RollbackReleaseInput = z.infer<typeof RollbackReleaseInput>;

export const RollbackOutcome = z.object({
  rolledBack: z.boolean(),
  /** Why nothing changed: the version is no longer active or canary, or there is nothing to go back to. */
  skipped: z.string().optional(),
  toVersion: z.number().int().positive().nullable(),
  incidentId: z.string().nullable(),
  affectedSessions: z.number().int().nonnegative(),
  movedSessions: z.number().int().nonnegative(),
});
export type RollbackOutcome = z.infer<typeof RollbackOutcome>;

/** The watch that follows an activation: checks the version at a faster pace for a probation period. */
export const ReleaseWatchInput = z.object({
  target: ReleaseTarget,
  probationMs: z.number().int().positive(),
  intervalMs: z.number().int().positive(),
});
export type ReleaseWatchInput = z.infer<typeof ReleaseWatchInput>;

export const releaseWatchWorkflowId = (taskQueue: string, agentId: string, version: number, auditId: number) =>
  `release-watch-${taskQueue}-${agentId}-v${version}-${auditId}`;
export const releaseHealthScheduleId = (taskQueue: string) => `keel-release-health-${taskQueue}`;
