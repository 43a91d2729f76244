import type { LiveSignals, ProbeResult, RuleVerdict } from '../contracts/releases';

/** The release health rules' thresholds (settings KEEL_HEALTH_*; docs/releases.md). */
export interface HealthThresholds {
  maxTurnErrorRate: number;
  maxTtftP95Ms: number;
  maxToolFailureRate: number;
}

/**
 * One verdict per rule: every probe must pass, and each live rate must stay at or under its
 * threshold. A rate with too little traffic to judge (null) passes: probes still catch a
 * version nobody uses yet.
 */
export function verdictsFor(probes: ProbeResult[], live: LiveSignals, t: HealthThresholds): RuleVerdict[] {
  const over = (rule: string, observed: number | null, threshold: number): RuleVerdict => ({ rule, observed, threshold, failed: observed !== null && observed > threshold });
  return [
    ...probes.map((p) => ({ rule: `probe:${p.name}`, observed: p.passed ? 1 : 0, threshold: 1, failed: !p.passed })),
    over('turn_error_rate', live.turnErrorRate, t.maxTurnErrorRate),
    over('ttft_p95_ms', live.ttftP95Ms, t.maxTtftP95Ms),
    over('tool_failure_rate', live.toolFailureRate, t.maxToolFailureRate),
  ];
}

export const isHealthy = (verdicts: RuleVerdict[]) => verdicts.every((v) => !v.failed);
