import { sql, type CommonQueryMethods } from 'slonik';
import { z } from 'zod';
import type { LiveSignals } from '../contracts/releases';

const Counts = z.object({ total: z.number(), failed: z.number() });
const Ttft = z.object({ replies: z.number(), p95: z.number().nullable() });

/** Turn failures that say nothing about the version: an approver refused to raise the turn's budget. */
const NOT_THE_VERSIONS_FAULT = ['BUDGET_EXCEEDED'];

/**
 * What the last `windowMs` of real traffic says about one agent version: turn error rate, TTFT
 * p95 and tool failure rate. Each turn, reply and tool call counts for the version that ran it
 * (recorded on its turn.done, message and tool call row), so a session moved off a bad version
 * never blames the bad version's failures on its replacement; rows written before versions were
 * recorded count for the session's current version. A rate below `minSample` observations is
 * null: too little traffic to judge. Each query starts from the time range (indexed).
 */
export async function liveSignals(db: CommonQueryMethods, agentId: string, version: number, windowMs: number, minSample: number): Promise<LiveSignals> {
  const since = sql.fragment`now() - make_interval(secs => ${windowMs / 1000})`;
  const [turns, ttft, tools] = await Promise.all([
    db.one(sql.type(Counts)`
      SELECT count(*) FILTER (WHERE e.data->>'status' <> 'cancelled')::int AS total,
             count(*) FILTER (WHERE e.data->>'status' = 'failed' AND COALESCE(e.data->>'errorCode', '') <> ALL(${sql.array(NOT_THE_VERSIONS_FAULT, 'text')}))::int AS failed
      FROM session_events e JOIN sessions s ON s.id = e.session_id
      WHERE e.type = 'turn.done' AND e.created_at > ${since}
        AND s.agent_id = ${agentId} AND COALESCE((e.data->>'agentVersion')::int, s.agent_version) = ${version}`),
    db.one(sql.type(Ttft)`
      SELECT count(*)::int AS replies, percentile_cont(0.95) WITHIN GROUP (ORDER BY m.ttft_ms)::float8 AS p95
      FROM messages m JOIN sessions s ON s.id = m.session_id
      WHERE m.role = 'assistant' AND m.ttft_ms IS NOT NULL AND m.created_at > ${since}
        AND s.agent_id = ${agentId} AND COALESCE(m.agent_version, s.agent_version) = ${version}`),
    db.one(sql.type(Counts)`
      SELECT count(*) FILTER (WHERE t.status IN ('succeeded', 'failed'))::int AS total,
             count(*) FILTER (WHERE t.status = 'failed')::int AS failed
      FROM tool_calls t JOIN sessions s ON s.id = t.session_id
      WHERE t.updated_at > ${since} AND s.agent_id = ${agentId} AND COALESCE(t.agent_version, s.agent_version) = ${version}`),
  ]);
  const rate = (c: z.infer<typeof Counts>) => (c.total >= minSample ? c.failed / c.total : null);
  return {
    windowMs,
    turns: turns.total,
    failedTurns: turns.failed,
    turnErrorRate: rate(turns),
    replies: ttft.replies,
    ttftP95Ms: ttft.replies >= minSample && ttft.p95 !== null ? Math.round(ttft.p95) : null,
    toolCalls: tools.total,
    failedToolCalls: tools.failed,
    toolFailureRate: rate(tools),
  };
}
