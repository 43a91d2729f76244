import { sql, type CommonQueryMethods } from 'slonik';
import { z } from 'zod';
import type { LiveSignals } from '../contracts/releases';

const Counts = z.object({ total: z.number(), failed: z.number() });
const Ttft = z.object({ replies: z.number(), p95: z.number().nullable() });

/**
 * What the last `windowMs` of real traffic says about one agent version: turn error rate, TTFT
 * p95 and tool failure rate. A session moved to this version by a rollback counts only from the
 * move on, so the bad version's failures are never blamed on the good one. A rate below
 * `minSample` observations is null: too little traffic to judge.
 */
export async function liveSignals(db: CommonQueryMethods, agentId: string, version: number, windowMs: number, minSample: number): Promise<LiveSignals> {
  const since = sql.fragment`GREATEST(now() - make_interval(secs => ${windowMs / 1000}), COALESCE(s.agent_version_since, '-infinity'::timestamptz))`;
  const [turns, ttft, tools] = await Promise.all([
    db.one(sql.type(Counts)`
      SELECT count(*) FILTER (WHERE e.data->>'status' <> 'cancelled')::int AS total,
             count(*) FILTER (WHERE e.data->>'status' = 'failed')::int AS failed
      FROM session_events e JOIN sessions s ON s.id = e.session_id
      WHERE e.type = 'turn.done' AND s.agent_id = ${agentId} AND s.agent_version = ${version} AND e.created_at > ${since}`),
    db.one(sql.type(Ttft)`
      SELECT count(*)::int AS replies, percentile_cont(0.95) WITHIN GROUP (ORDER BY m.ttft_ms)::float8 AS p95
      FROM messages m JOIN sessions s ON s.id = m.session_id
      WHERE m.role = 'assistant' AND m.ttft_ms IS NOT NULL AND s.agent_id = ${agentId} AND s.agent_version = ${version} AND m.created_at > ${since}`),
    db.one(sql.type(Counts)`
      SELECT count(*) FILTER (WHERE t.status IN ('succeeded', 'failed'))::int AS total,
             count(*) FILTER (WHERE t.status = 'failed')::int AS failed
      FROM tool_calls t JOIN sessions s ON s.id = t.session_id
      WHERE s.agent_id = ${agentId} AND s.agent_version = ${version} AND t.updated_at > ${since}`),
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
