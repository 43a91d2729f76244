import { sql } from 'slonik';
import { migrate } from '../db/migrate';
import { openPool, type DatabasePool } from '../db/pool';
import { moveSessions } from '../db/releases';
import { isHealthy, verdictsFor } from '../releases/decide';
import { liveSignals } from '../releases/live-signals';
import type { LiveSignals, ProbeResult } from '../contracts/releases';
import { createTestDatabase, dropTestDatabase } from './support/database';

/** The health check's rules, and the live signals they read, on real Postgres. */

const thresholds = { maxTurnErrorRate: 0.2, maxTtftP95Ms: 1_000, maxToolFailureRate: 0.5 };
const quiet: LiveSignals = { windowMs: 60_000, turns: 0, failedTurns: 0, turnErrorRate: null, replies: 0, ttftP95Ms: null, toolCalls: 0, failedToolCalls: 0, toolFailureRate: null };
const probe = (name: string, passed: boolean): ProbeResult => ({ name, passed, durationMs: 1, toolsCalled: [], reply: '', failures: passed ? [] : ['x'] });

test('every probe must pass and every judged rate stay at or under its threshold; unjudged rates pass', () => {
  expect(isHealthy(verdictsFor([probe('a', true)], quiet, thresholds))).toBe(true);
  expect(verdictsFor([probe('a', true), probe('b', false)], quiet, thresholds).filter((v) => v.failed).map((v) => v.rule)).toEqual(['probe:b']);
  const busy = { ...quiet, turnErrorRate: 0.2, ttftP95Ms: 1_001, toolFailureRate: 0.6 };
  expect(verdictsFor([], busy, thresholds).filter((v) => v.failed).map((v) => [v.rule, v.observed, v.threshold])).toEqual([
    ['ttft_p95_ms', 1_001, 1_000],
    ['tool_failure_rate', 0.6, 0.5],
  ]);
});

describe('live signals', () => {
  const name = `keel_rules_${process.pid}`;
  let pool: DatabasePool;
  beforeAll(async () => {
    const url = await createTestDatabase(name);
    await migrate(url);
    pool = await openPool(url, 2);
  });
  afterAll(async () => {
    await pool?.end();
    await dropTestDatabase(name);
  });

  async function session(id: string, version: number) {
    await pool.query(sql.unsafe`INSERT INTO agents (id, version, digest, definition) VALUES ('ag', ${version}, ${`d${version}`}, '{"id":"ag","name":"A","systemPrompt":"x"}') ON CONFLICT DO NOTHING`);
    await pool.query(sql.unsafe`INSERT INTO sessions (id, agent_id, agent_version, owner_id) VALUES (${id}, 'ag', ${version}, 'u')`);
  }
  async function turn(sessionId: string, n: number, status: 'completed' | 'failed' | 'cancelled', ttftMs: number | null, ageMs = 0) {
    await pool.query(sql.unsafe`INSERT INTO session_events (session_id, seq, event_key, type, version, data, created_at)
      VALUES (${sessionId}, ${n}, ${`turn:${n}:done`}, 'turn.done', 1, ${sql.jsonb({ turn: n, status })}, now() - make_interval(secs => ${ageMs / 1000}))`);
    if (ttftMs !== null) {
      await pool.query(sql.unsafe`INSERT INTO messages (id, session_id, turn, position, role, content, ttft_ms, created_at)
        VALUES (${`${sessionId}-${n}`}, ${sessionId}, ${n}, 1000, 'assistant', 'x', ${ttftMs}, now() - make_interval(secs => ${ageMs / 1000}))`);
    }
  }

  test('rates over the window, cancelled turns left out; below the minimum sample a rate is null', async () => {
    await session('s1', 1);
    await turn('s1', 1, 'completed', 100);
    await turn('s1', 2, 'failed', null);
    await turn('s1', 3, 'cancelled', 300);
    await turn('s1', 4, 'completed', 900);
    // Outside the window.
    await turn('s1', 5, 'failed', 5_000, 120_000);
    const live = await liveSignals(pool, 'ag', 1, 60_000, 3);
    expect(live).toMatchObject({ turns: 3, failedTurns: 1, replies: 3, toolCalls: 0, toolFailureRate: null });
    expect(live.turnErrorRate).toBeCloseTo(1 / 3);
    // percentile_cont(0.95) over 100, 300, 900.
    expect(live.ttftP95Ms).toBe(840);
    expect((await liveSignals(pool, 'ag', 1, 60_000, 4)).turnErrorRate).toBeNull();
  });

  test('a session moved to a version counts for it only from the move on', async () => {
    await session('s2', 2);
    await turn('s2', 1, 'failed', null);
    await turn('s2', 2, 'failed', null);
    expect(await moveSessions(pool, ['s2'], 'ag', 2, 3)).toBe(1);
    await turn('s2', 3, 'completed', 50);
    const moved = await liveSignals(pool, 'ag', 3, 60_000, 1);
    expect(moved).toMatchObject({ turns: 1, failedTurns: 0, turnErrorRate: 0 });
    expect((await liveSignals(pool, 'ag', 2, 60_000, 1)).turns).toBe(0);
  });
});
