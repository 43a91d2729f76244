import type { Client } from '@temporalio/client';
import { MockActivityEnvironment } from '@temporalio/testing';
import OpenAI from 'openai';
import pino from 'pino';
import { sql } from 'slonik';
import { createReleaseActivities } from '../activities/release-activities';
import { AgentVersions } from '../agents/versions';
import { createMetrics } from '../config/metrics';
import { loadSettings } from '../config/settings';
import type { ReleaseEvaluation } from '../contracts/releases';
import { syncAgents } from '../db/agents';
import { activateVersion, listAudit } from '../db/releases';
import { builtinTools, toolDefinitions } from '../tools';
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
  async function turn(sessionId: string, n: number, status: 'completed' | 'failed' | 'cancelled', ttftMs: number | null, opts: { ageMs?: number; version?: number; errorCode?: string } = {}) {
    const age = sql.fragment`now() - make_interval(secs => ${(opts.ageMs ?? 0) / 1000})`;
    const data = { turn: n, status, ...(opts.version === undefined ? {} : { agentVersion: opts.version }), ...(opts.errorCode ? { errorCode: opts.errorCode } : {}) };
    await pool.query(sql.unsafe`INSERT INTO session_events (session_id, seq, event_key, type, version, data, created_at)
      VALUES (${sessionId}, ${n}, ${`turn:${n}:done`}, 'turn.done', 1, ${sql.jsonb(data)}, ${age})`);
    if (ttftMs !== null) {
      await pool.query(sql.unsafe`INSERT INTO messages (id, session_id, turn, position, role, content, ttft_ms, agent_version, created_at)
        VALUES (${`${sessionId}-${n}`}, ${sessionId}, ${n}, 1000, 'assistant', 'x', ${ttftMs}, ${opts.version ?? null}, ${age})`);
    }
  }

  test('rates over the window, cancelled turns left out; below the minimum sample a rate is null', async () => {
    await session('s1', 1);
    await turn('s1', 1, 'completed', 100);
    await turn('s1', 2, 'failed', null);
    await turn('s1', 3, 'cancelled', 300);
    await turn('s1', 4, 'completed', 900);
    // Outside the window.
    await turn('s1', 5, 'failed', 5_000, { ageMs: 120_000 });
    // Not the version's fault: an approver refused to raise the budget.
    await turn('s1', 6, 'failed', null, { errorCode: 'BUDGET_EXCEEDED' });
    const live = await liveSignals(pool, 'ag', 1, 60_000, 3);
    expect(live).toMatchObject({ turns: 4, failedTurns: 1, replies: 3, toolCalls: 0, toolFailureRate: null });
    expect(live.turnErrorRate).toBeCloseTo(1 / 4);
    // percentile_cont(0.95) over 100, 300, 900.
    expect(live.ttftP95Ms).toBe(840);
    expect((await liveSignals(pool, 'ag', 1, 60_000, 5)).turnErrorRate).toBeNull();
  });

  test('each turn and reply counts for the version that ran it, whatever version its session is on now', async () => {
    await session('s2', 2);
    await turn('s2', 1, 'failed', 50, { version: 2 });
    await turn('s2', 2, 'failed', 60, { version: 2 });
    expect(await moveSessions(pool, ['s2'], 'ag', 2, 3)).toBe(1);
    // A turn that was running on version 2 when the session moved ends after the move.
    await turn('s2', 3, 'failed', null, { version: 2 });
    await turn('s2', 4, 'completed', 70, { version: 3 });
    expect(await liveSignals(pool, 'ag', 3, 60_000, 1)).toMatchObject({ turns: 1, failedTurns: 0, turnErrorRate: 0, replies: 1, ttftP95Ms: 70 });
    expect(await liveSignals(pool, 'ag', 2, 60_000, 1)).toMatchObject({ turns: 3, failedTurns: 3, replies: 2 });
  });


  describe('the rollback activity', () => {
    const settings = loadSettings({});
    const acts = () =>
      createReleaseActivities({
        pool,
        // No probes run here (the agents have none) and no session is moved (none is on the version).
        openai: new OpenAI({ apiKey: 'unused', baseURL: 'http://127.0.0.1:9' }),
        client: {} as Client,
        versions: new AgentVersions(pool, toolDefinitions(settings.tools)),
        tools: builtinTools,
        settings,
        metrics: createMetrics('worker'),
        log: pino({ level: 'silent' }),
      });
    const evaluation = (checkId: string, version: number): ReleaseEvaluation => ({
      checkId,
      target: { agentId: 'rb', version, role: 'active' },
      healthy: false,
      startedAt: new Date().toISOString(),
      checkedAt: new Date().toISOString(),
      probes: [],
      live: quiet,
      verdicts: [{ rule: 'turn_error_rate', failed: true, observed: 1, threshold: 0.2 }],
    });
    const run = (e: ReleaseEvaluation) => new MockActivityEnvironment().run(acts().rollbackRelease, { evaluation: e, decidedAt: new Date().toISOString() });

    test('a retry finds the rollback its check made; the other checker of the same version finds it gone; one incident', async () => {
      const defs = [1, 2].map((n) => ({ id: 'rb', name: 'RB', systemPrompt: `v${n}`, tools: [], approvalTtlMs: 60_000, maxStepsPerTurn: 8, busyPolicy: 'queue' as const }));
      for (const def of defs) {
        const [synced] = await syncAgents(pool, [def]);
        await activateVersion(pool, { agentId: 'rb', version: synced!.version, actor: 'test' });
      }
      const first = await run(evaluation('chk-watch', 2));
      expect(first).toMatchObject({ rolledBack: true, toVersion: 1 });
      // The same check again (its activity retried after a crash): the same rollback and incident.
      expect(await run(evaluation('chk-watch', 2))).toEqual(first);
      // The Schedule checked the same version at the same time: no second rollback, no incident.
      expect(await run(evaluation('chk-schedule', 2))).toMatchObject({ rolledBack: false, skipped: 'the version is no longer active or canary', incidentId: null });
      expect((await listAudit(pool, 'rb', 10)).filter((a) => a.action === 'auto_rollback')).toHaveLength(1);
      const { rows } = await pool.query(sql.unsafe`SELECT kind FROM incidents WHERE agent_id = 'rb'`);
      expect(rows).toEqual([{ kind: 'release_rolled_back' }]);
    });
  });
});
