import { sql, type CommonQueryMethods } from 'slonik';
import { z } from 'zod';
import type { AnalyticsReport } from '../contracts/conversations';
import { BUDGET_APPROVAL_NAME, OUTCOME_UNKNOWN_APPROVAL_NAME } from '../contracts/turn';

/**
 * The figures of GET /api/v1/analytics (docs/replay-analytics.md), one query per group, all run
 * at once. Conversation figures cover the conversations created in the range; tool call,
 * approval and time-to-first-token figures cover the calls, approvals and replies made in it.
 * `ownerId` null: every user's (an admin); otherwise that user's sessions only.
 */
export interface AnalyticsScope {
  days: number;
  ownerId: string | null;
}

const MICROSECONDS = 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"';
const num = z.coerce.number();
const nullableNum = z.coerce.number().nullable();

const ConversationFigures = z.object({
  total: z.number(),
  open: z.number(),
  resolved: z.number(),
  escalated: z.number(),
  abandoned: z.number(),
  average_turns: nullableNum,
  average_cost_usd: nullableNum,
  input_tokens: num,
  output_tokens: num,
  cost_usd: num,
});
const AgentFigures = z.object({ agent: z.string(), conversations: z.number(), turns: num });
const ToolFigures = z.object({ tool: z.string(), status: z.string(), calls: z.number() });
const ApprovalFigures = z.object({
  requested: z.number(),
  approved: z.number(),
  rejected: z.number(),
  expired: z.number(),
  cancelled: z.number(),
  pending: z.number(),
  median_decision_ms: nullableNum,
});
const TtftFigures = z.object({ replies: z.number(), p95_ms: nullableNum });

type Report = Omit<AnalyticsReport, 'range' | 'scope'>;

export async function analytics(db: CommonQueryMethods, scope: AnalyticsScope): Promise<Report> {
  // The range, read once on the database clock (to the microsecond) so that every figure covers the same window.
  const window = await db.one(sql.type(z.object({ from: z.string(), to: z.string() }))`
    SELECT to_char((now() - ${scope.days * 24} * interval '1 hour') AT TIME ZONE 'UTC', ${MICROSECONDS}) AS from,
           to_char(now() AT TIME ZONE 'UTC', ${MICROSECONDS}) AS to`);
  const inRange = sql.fragment`created_at >= ${window.from}::timestamptz AND created_at <= ${window.to}::timestamptz`;
  const ownConversations = scope.ownerId === null ? sql.fragment`true` : sql.fragment`owner_id = ${scope.ownerId}`;
  // Calls and replies of the caller's sessions: found by the owner's conversations (indexed by owner).
  const ownSessions = scope.ownerId === null ? sql.fragment`true` : sql.fragment`session_id IN (SELECT session_id FROM conversations WHERE owner_id = ${scope.ownerId})`;

  const [c, agents, tools, approvals, ttft] = await Promise.all([
    db.one(sql.type(ConversationFigures)`
      SELECT count(*)::int AS total,
             count(*) FILTER (WHERE resolution = 'open')::int AS open,
             count(*) FILTER (WHERE resolution = 'resolved')::int AS resolved,
             count(*) FILTER (WHERE resolution = 'escalated')::int AS escalated,
             count(*) FILTER (WHERE resolution = 'abandoned')::int AS abandoned,
             avg(turns)::float8 AS average_turns,
             avg(cost_usd)::text AS average_cost_usd,
             COALESCE(sum(input_tokens), 0)::text AS input_tokens,
             COALESCE(sum(output_tokens), 0)::text AS output_tokens,
             COALESCE(sum(cost_usd), 0)::text AS cost_usd
      FROM conversations WHERE ${inRange} AND ${ownConversations}`),
    db.any(sql.type(AgentFigures)`
      SELECT agent, count(*)::int AS conversations, COALESCE(sum((agent_turns ->> agent)::int), 0)::text AS turns
      FROM (SELECT unnest(agents_used) AS agent, agent_turns FROM conversations WHERE ${inRange} AND ${ownConversations}) used
      GROUP BY agent ORDER BY conversations DESC, agent`),
    db.any(sql.type(ToolFigures)`
      SELECT name AS tool, status, count(*)::int AS calls FROM tool_calls
      WHERE ${inRange} AND name <> ${BUDGET_APPROVAL_NAME} AND name <> ${OUTCOME_UNKNOWN_APPROVAL_NAME} AND ${ownSessions}
      GROUP BY name, status ORDER BY name, status`),
    db.one(sql.type(ApprovalFigures)`
      SELECT count(*)::int AS requested,
             count(*) FILTER (WHERE approval_outcome = 'approved')::int AS approved,
             count(*) FILTER (WHERE approval_outcome = 'rejected')::int AS rejected,
             count(*) FILTER (WHERE approval_outcome = 'expired')::int AS expired,
             count(*) FILTER (WHERE approval_outcome = 'cancelled')::int AS cancelled,
             count(*) FILTER (WHERE approval_outcome IS NULL)::int AS pending,
             round(extract(epoch FROM percentile_disc(0.5) WITHIN GROUP (ORDER BY decided_at - created_at)
               FILTER (WHERE approval_outcome IN ('approved', 'rejected'))) * 1000)::float8 AS median_decision_ms
      FROM tool_calls WHERE requires_approval AND ${inRange} AND ${ownSessions}`),
    db.one(sql.type(TtftFigures)`
      SELECT count(*)::int AS replies, percentile_disc(0.95) WITHIN GROUP (ORDER BY ttft_ms)::float8 AS p95_ms
      FROM messages WHERE role = 'assistant' AND ttft_ms IS NOT NULL AND ${inRange} AND ${ownSessions}`),
  ]);

  const decided = c.total - c.open;
  return {
    from: window.from,
    to: window.to,
    conversations: {
      total: c.total,
      open: c.open,
      resolved: c.resolved,
      escalated: c.escalated,
      abandoned: c.abandoned,
      resolutionRate: decided === 0 ? null : c.resolved / decided,
      escalationRate: c.total === 0 ? null : c.escalated / c.total,
      averageTurns: c.average_turns,
      averageCostUsd: c.average_cost_usd,
    },
    tokens: { input: c.input_tokens, output: c.output_tokens },
    costUsd: c.cost_usd,
    agents: agents.map((a) => ({ agent: a.agent, conversations: a.conversations, turns: a.turns })),
    toolCalls: tools.map((t) => ({ tool: t.tool, status: t.status, calls: t.calls })),
    approvals: {
      requested: approvals.requested,
      approved: approvals.approved,
      rejected: approvals.rejected,
      expired: approvals.expired,
      cancelled: approvals.cancelled,
      pending: approvals.pending,
      medianDecisionMs: approvals.median_decision_ms,
    },
    ttft: { replies: ttft.replies, p95Ms: ttft.p95_ms },
  };
}
