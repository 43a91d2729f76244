import { readFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { sql } from 'slonik';
import { z } from 'zod';
import { analytics } from '../db/analytics';
import { listConversations } from '../db/conversations';
import { appendEvent } from '../db/events';
import { migrate } from '../db/migrate';
import { openPool, type DatabasePool } from '../db/pool';
import { startEmbeddedPostgres } from '../scripts/services';
import { round, summarize } from './stats';

/**
 * The analytics and conversation list queries at scale (docs/benchmarks.md): a fresh embedded
 * Postgres, CONVERSATIONS conversations seeded in bulk (sessions, conversations, messages,
 * tool_calls, spread over a year, 1,000 owners), then each query RUNS times, p50/p95. Then what
 * the conversations trigger adds to event writes: the same turns written with it and without it.
 *
 *   npx tsx bench/analytics.ts [--conversations 100000] [--runs 20] [--turns 600]
 */

const log = (s: string) => console.error(`[bench:analytics] ${s}`);

/** Everything in SQL: which rows exist is a pure function of the row number g. */
export async function seed(pool: DatabasePool, N: number): Promise<void> {
  await pool.query(sql.unsafe`ALTER TABLE sessions DISABLE TRIGGER conversations_open`);
  // Created at g·7919 minutes (mod one year) ago; owner g mod 1000; every fifth a router session.
  await pool.query(sql.unsafe`
    INSERT INTO sessions (id, title, agent_id, agent_version, owner_id, status, created_at, ended_at)
    SELECT 'c' || g, NULL, CASE WHEN g % 5 = 0 THEN 'router' ELSE 'default' END, 1, 'user' || (g % 1000),
           CASE WHEN (g * 7919) % 525600 < 1440 THEN 'active' ELSE 'expired' END,
           now() - ((g * 7919) % 525600) * interval '1 minute',
           CASE WHEN (g * 7919) % 525600 < 1440 THEN NULL ELSE now() - ((g * 7919) % 525600 - 60) * interval '1 minute' END
    FROM generate_series(1, ${N}) AS g`);
  await pool.query(sql.unsafe`
    INSERT INTO conversations (session_id, owner_id, agent_id, created_at, session_status, ended_at, user_messages, turns, failed_turns,
      replies, input_tokens, output_tokens, cost_usd, tool_calls, approvals, escalations, agents_used, agent_turns, escalated_at,
      current_turn, last_accepted_turn, last_done_turn, last_turn_status, first_message_at, first_response_at, last_activity_at)
    SELECT s.id, s.owner_id, s.agent_id, s.created_at, s.status, s.ended_at, t.turns, t.turns, CASE WHEN g % 11 = 0 THEN 1 ELSE 0 END,
           t.turns * 2, t.turns * 900, t.turns * 60, t.turns * 0.0004, g % 3, CASE WHEN g % 3 > 0 AND g % 5 = 1 THEN 1 ELSE 0 END,
           CASE WHEN g % 17 = 0 THEN 1 ELSE 0 END,
           CASE WHEN g % 5 = 0 THEN ARRAY['router', 'billing', 'shipping'] ELSE ARRAY['default'] END,
           CASE WHEN g % 5 = 0 THEN jsonb_build_object('billing', t.turns - t.turns / 2, 'shipping', t.turns / 2)
                ELSE jsonb_build_object('default', t.turns) END,
           CASE WHEN g % 17 = 0 THEN s.created_at + interval '2 minutes' END,
           t.turns, t.turns, t.turns, CASE WHEN t.turns = 0 THEN NULL WHEN g % 11 = 0 THEN 'failed' ELSE 'completed' END,
           s.created_at + interval '1 second', s.created_at + interval '2 seconds', s.created_at + t.turns * interval '1 minute'
    FROM generate_series(1, ${N}) AS g
    JOIN sessions s ON s.id = 'c' || g
    CROSS JOIN LATERAL (SELECT 1 + g % 6 AS turns) t`);
  await pool.query(sql.unsafe`ALTER TABLE sessions ENABLE TRIGGER conversations_open`);
  // A user message and a reply (with its time to first token) per turn.
  await pool.query(sql.unsafe`
    INSERT INTO messages (id, session_id, turn, position, role, content, input_tokens, output_tokens, cost_usd, ttft_ms, created_at)
    SELECT c.session_id || '-t' || t || '-' || p, c.session_id, t, p, CASE WHEN p = 0 THEN 'user' ELSE 'assistant' END, 'text',
           CASE WHEN p = 1 THEN 900 END, CASE WHEN p = 1 THEN 60 END, CASE WHEN p = 1 THEN 0.0004 END,
           CASE WHEN p = 1 THEN 150 + (hashint4(t * 7 + length(c.session_id)) & 1023) END,
           c.created_at + t * interval '1 minute'
    FROM conversations c, generate_series(1, c.turns) AS t, generate_series(0, 1) AS p`);
  // g mod 3 tool calls per conversation; a fifth of them need an approval, decided after 5–65 s.
  await pool.query(sql.unsafe`
    INSERT INTO tool_calls (id, model_call_id, session_id, turn, step, name, arguments, status, digest, requires_approval,
      approval_outcome, decided_at, created_at)
    SELECT c.session_id || '-k' || k, 'call' || k, c.session_id, 1, k, CASE WHEN a THEN 'create_note' ELSE 'calculator' END, '{}',
           CASE WHEN a AND c.created_at > now() - interval '1 hour' THEN 'pending_approval' WHEN k = 2 AND NOT a THEN 'failed' ELSE 'succeeded' END,
           'd', a,
           CASE WHEN NOT a OR c.created_at > now() - interval '1 hour' THEN NULL ELSE (ARRAY['approved', 'approved', 'rejected', 'expired'])[1 + length(c.session_id) % 4] END,
           CASE WHEN a THEN c.created_at + interval '1 minute' + (5 + length(c.session_id) * 7 % 60) * interval '1 second' END,
           c.created_at + interval '1 minute'
    FROM conversations c, generate_series(1, c.tool_calls) AS k, LATERAL (SELECT k = 1 AND c.approvals = 1 AS a) x`);
  await pool.query(sql.unsafe`VACUUM ANALYZE`);
}

/** CPU time (user + system) a process has used, in ms: /proc/<pid>/stat counts clock ticks of 10 ms. */
function backendCpuMs(pid: number): number {
  const fields = readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1]!.split(' ');
  return (Number(fields[11]) + Number(fields[12])) * 10;
}

async function time(runs: number, fn: () => Promise<unknown>) {
  await fn(); // warm-up, not measured
  const ms: number[] = [];
  for (let i = 0; i < runs; i++) {
    const started = performance.now();
    await fn();
    ms.push(performance.now() - started);
  }
  const s = summarize(ms);
  return { p50: round(s.p50, 1), p95: round(s.p95, 1) };
}

/** One turn as the runtime writes it: message.accepted + stream.start, then stream.end + turn.done, each pair in one transaction. */
async function writeTurns(pool: DatabasePool, prefix: string, turns: number): Promise<number> {
  const started = performance.now();
  for (let i = 0; i < turns; i++) {
    const sessionId = `${prefix}-${i}`;
    await pool.query(sql.unsafe`INSERT INTO sessions (id, agent_id, owner_id) VALUES (${sessionId}, 'default', 'bench')`);
    await pool.transaction(async (tx) => {
      await appendEvent(tx, { sessionId, key: 'accepted:m1', type: 'message.accepted', data: { messageId: 'm1', turn: 1, content: 'hello' } });
      await appendEvent(tx, { sessionId, key: 't1-s1:start:1', type: 'stream.start', data: { streamId: 't1-s1', turn: 1, replyTo: 'm1', attempt: 1 } });
    });
    await pool.transaction(async (tx) => {
      const usage = { inputTokens: 900, outputTokens: 60, costUsd: 0.0004 };
      await appendEvent(tx, { sessionId, key: 't1-s1:end', type: 'stream.end', data: { streamId: 't1-s1', attempt: 1, messageId: 'r1', content: 'hi', finishReason: 'stop', usage } });
      await appendEvent(tx, { sessionId, key: 'turn:1:done', type: 'turn.done', data: { turn: 1, replyTo: 'm1', status: 'completed', messageId: 'r1', content: 'hi', usage } });
    });
  }
  return performance.now() - started;
}

async function main() {
  const { values: args } = parseArgs({
    options: {
      conversations: { type: 'string', default: '100000' },
      runs: { type: 'string', default: '20' },
      turns: { type: 'string', default: '600' },
    },
  });
  const N = Number(args.conversations);
  const RUNS = Number(args.runs);
  const TURNS = Number(args.turns);
  const dataDir = path.join(os.tmpdir(), `keel-bench-analytics-${process.pid}`);
  const pg = await startEmbeddedPostgres({ dataDir, port: 0, persistent: false, log: () => undefined });
  let pool: DatabasePool | undefined;
  try {
    await migrate(pg.url);
    pool = await openPool(pg.url, 10);
    const db = pool;
    log(`seeding ${N} conversations`);
    const seedStarted = performance.now();
    await seed(db, N);
    const counts = await db.one(sql.unsafe`
      SELECT (SELECT count(*) FROM conversations)::int AS conversations, (SELECT count(*) FROM messages)::int AS messages,
             (SELECT count(*) FROM tool_calls)::int AS tool_calls`);
    log(`seeded in ${round((performance.now() - seedStarted) / 1000, 1)} s: ${JSON.stringify(counts)}`);

    const results: Record<string, { p50: number; p95: number }> = {};
    for (const days of [7, 30, 365]) results[`analytics admin ${days}d`] = await time(RUNS, () => analytics(db, { days, ownerId: null }));
    results['analytics one user 365d'] = await time(RUNS, () => analytics(db, { days: 365, ownerId: 'user42' }));
    results['list admin, first page'] = await time(RUNS, () => listConversations(db, { ownerId: null, limit: 50 }));
    results['list admin, status=escalated'] = await time(RUNS, () => listConversations(db, { ownerId: null, resolution: 'escalated', limit: 50 }));
    results['list admin, agent=shipping'] = await time(RUNS, () => listConversations(db, { ownerId: null, agent: 'shipping', limit: 50 }));
    results['list one user, status=abandoned'] = await time(RUNS, () => listConversations(db, { ownerId: 'user42', resolution: 'abandoned', limit: 50 }));
    const sample = await analytics(db, { days: 7, ownerId: null });
    log(`7d sample: ${JSON.stringify(sample.conversations)}`);

    // The trigger's cost on event writes: the same turns with and without it, alternately, on one
    // connection, timed at the client and as the CPU its Postgres backend used (/proc, Linux).
    const writer = await openPool(pg.url, 1);
    const backend = await writer.oneFirst(sql.type(z.object({ pid: z.number() }))`SELECT pg_backend_pid() AS pid`);
    const perEvent = { with: [] as number[], without: [] as number[] };
    const cpuPerEvent = { with: [] as number[], without: [] as number[] };
    try {
      await writeTurns(writer, 'warm', TURNS);
      for (let r = 0; r < 6; r++) {
        for (const mode of r % 2 ? (['without', 'with'] as const) : (['with', 'without'] as const)) {
          await db.query(sql.unsafe`ALTER TABLE session_events ${mode === 'with' ? sql.fragment`ENABLE` : sql.fragment`DISABLE`} TRIGGER conversations_follow_event`);
          const cpuBefore = backendCpuMs(backend);
          const ms = await writeTurns(writer, `w${r}${mode}`, TURNS);
          cpuPerEvent[mode].push(((backendCpuMs(backend) - cpuBefore) * 1000) / (TURNS * 4));
          perEvent[mode].push((ms * 1000) / (TURNS * 4));
        }
      }
    } finally {
      await db.query(sql.unsafe`ALTER TABLE session_events ENABLE TRIGGER conversations_follow_event`);
      await writer.end();
    }
    const median = (xs: number[]) => round(summarize(xs).p50, 0);
    const eventWrites = {
      turns: TURNS * 6,
      wallUsPerEvent: { with: median(perEvent.with), without: median(perEvent.without) },
      backendCpuUsPerEvent: { with: median(cpuPerEvent.with), without: median(cpuPerEvent.without) },
    };

    console.log(JSON.stringify({ conversations: N, runs: RUNS, seeded: counts, queryMs: results, eventWrites }, null, 2));
  } finally {
    await pool?.end();
    await pg.stop();
  }
}

if (require.main === module) {
  main().catch((error) => {
    console.error(error);
    process.exit(1);
  });
}
