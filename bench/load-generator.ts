import { Client, Connection } from '@temporalio/client';
import { Client as PgClient } from 'pg';
import { wallClockMs } from './bare-activities';
import { bareTurn } from './bare-workflow';
import { LeanSocket } from './lean-socket';
import { cpuBetween, sampleCpu, type Sampled } from './proc-cpu';
import { summarize } from './stats';

/**
 * The benchmark's load generator, a process of its own so that its CPU is not the runtime's:
 * `tsx bench/load-generator.ts '<json GeneratorConfig>'`. It drives Keel over WebSocket or the
 * bare loop over Temporal updates, and prints `RESULT <json>` on stdout.
 */

export interface GeneratorConfig {
  mode: 'keel' | 'bare';
  sessions: number;
  turns: number;
  thinkMs: number;
  ttftMs: number;
  /** Processes whose CPU is sampled around the measured turns (the generator adds itself). */
  cpuPids: Record<string, Sampled>;
  /** Sessions are spread over the API processes: session i is made and driven through baseUrls[i % n]. */
  keel?: { baseUrls: string[]; adminKey: string; databaseUrl: string };
  bare?: { temporalAddress: string; taskQueue: string };
}

export interface GeneratorResult {
  turns: number;
  elapsedS: number;
  overhead: ReturnType<typeof summarize>;
  /** CPU seconds each process used over the measured turns, and per second of an idle window just before them. */
  cpuSeconds: Record<string, number>;
  idleCpuPerS: Record<string, number>;
  /** Workflow IDs driven, for their histories. */
  workflowIds: string[];
  /** Keel only: rows in messages and session_events, and PostgreSQL transactions, over the measured turns. */
  rowsWritten?: number;
  pg?: {
    /** Statements and writing transactions over the measured turns, and per second of the idle window (pollers, heartbeats). */
    statements: number;
    writeTransactions: number;
    idleStatementsPerS: number;
    idleWriteTransactionsPerS: number;
    /** The statements run most over the measured turns: [statement, calls]. */
    top: [string, number][];
  };
}

/** The idle window before the measured turns: what every process does with no turn running. */
const IDLE_WINDOW_MS = 3_000;

/** What the warm-up leaves running (the last writes, garbage collection) is let finish before the idle window. */
const IDLE_SETTLE_MS = 2_000;

/** CPU seconds per second of each process while nothing is driven. */
async function idleCpu(cpuPids: Record<string, Sampled>): Promise<Record<string, number>> {
  await new Promise((r) => setTimeout(r, IDLE_SETTLE_MS));
  const before = sampleCpu(cpuPids);
  await new Promise((r) => setTimeout(r, IDLE_WINDOW_MS));
  return Object.fromEntries(Object.entries(cpuBetween(before, sampleCpu(cpuPids))).map(([k, v]) => [k, v / (IDLE_WINDOW_MS / 1000)]));
}

const think = (ms: number) => new Promise((r) => setTimeout(r, Math.random() * ms));

interface PgSnapshot {
  rows: number;
  /** The next transaction ID: only writing transactions take one. */
  nextXid: number;
  /** Calls per normalised statement (pg_stat_statements, updated as each statement ends). */
  calls: Map<string, number>;
}

async function pgSnapshot(databaseUrl: string): Promise<PgSnapshot> {
  const pg = new PgClient({ connectionString: databaseUrl });
  await pg.connect();
  try {
    const counts = await pg.query(`SELECT (SELECT count(*) FROM messages) + (SELECT count(*) FROM session_events) AS n,
      pg_snapshot_xmax(pg_current_snapshot())::text AS xid`);
    const statements = await pg.query(`SELECT query, calls FROM pg_stat_statements WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database())`);
    const calls = new Map<string, number>();
    for (const r of statements.rows) calls.set(r.query as string, (calls.get(r.query as string) ?? 0) + Number(r.calls));
    return { rows: Number(counts.rows[0].n), nextXid: Number(counts.rows[0].xid), calls };
  } finally {
    await pg.end();
  }
}

/** Statement calls between two snapshots. */
function callsBetween(before: PgSnapshot, after: PgSnapshot): Map<string, number> {
  const out = new Map<string, number>();
  for (const [query, n] of after.calls) {
    const d = n - (before.calls.get(query) ?? 0);
    if (d > 0) out.set(query, d);
  }
  return out;
}

const total = (calls: Map<string, number>) => [...calls.values()].reduce((a, b) => a + b, 0);

async function driveKeel(config: GeneratorConfig, cpuPids: Record<string, Sampled>): Promise<GeneratorResult> {
  const { baseUrls, adminKey, databaseUrl } = config.keel!;
  // Each session belongs to a user of its own, as in production: every limit stays at its default.
  const sessions = await Promise.all(
    Array.from({ length: config.sessions }, async (_, i) => {
      const baseUrl = baseUrls[i % baseUrls.length]!;
      const issued = await fetch(`${baseUrl}/api/v1/admin/tokens`, { method: 'POST', headers: { 'content-type': 'application/json', 'x-api-key': adminKey }, body: JSON.stringify({ userId: `bench-user-${i}` }) });
      const { token } = (await issued.json()) as { token: string };
      const res = await fetch(`${baseUrl}/api/v1/sessions`, { method: 'POST', headers: { 'content-type': 'application/json', authorization: `Bearer ${token}` }, body: '{}' });
      return { id: ((await res.json()) as { id: string }).id, token, wsBase: baseUrl.replace(/^http/, 'ws') };
    }),
  );
  const sockets = await Promise.all(sessions.map(({ id, token, wsBase }) => LeanSocket.open(`${wsBase}/api/v1/sessions/${id}/ws?token=${token}`)));
  // One warm-up turn per session, not measured: JIT, pools and caches.
  await Promise.all(sockets.map((s) => s.turn('warm up')));
  const pgIdle = await pgSnapshot(databaseUrl);
  const idleCpuPerS = await idleCpu(cpuPids);
  const pgBefore = await pgSnapshot(databaseUrl);
  const idleS = IDLE_WINDOW_MS / 1000;
  const cpuBefore = sampleCpu(cpuPids);
  const overheads: number[] = [];
  const started = performance.now();
  await Promise.all(sockets.map(async (s) => {
    for (let turn = 2; turn <= config.turns + 1; turn++) {
      await think(config.thinkMs);
      const [sentAt, deltaAt] = await s.turn(`turn ${turn}`);
      overheads.push(deltaAt - sentAt - config.ttftMs);
    }
  }));
  const elapsedS = (performance.now() - started) / 1000;
  const cpuAfter = sampleCpu(cpuPids);
  const pgAfter = await pgSnapshot(databaseUrl);
  const turnCalls = callsBetween(pgBefore, pgAfter);
  sockets.forEach((s) => s.close());
  return {
    turns: config.sessions * config.turns,
    elapsedS,
    overhead: summarize(overheads),
    cpuSeconds: cpuBetween(cpuBefore, cpuAfter),
    idleCpuPerS,
    workflowIds: sessions.map((s) => `session-${s.id}`),
    rowsWritten: pgAfter.rows - pgBefore.rows,
    pg: {
      statements: total(turnCalls),
      writeTransactions: pgAfter.nextXid - pgBefore.nextXid,
      idleStatementsPerS: total(callsBetween(pgIdle, pgBefore)) / idleS,
      idleWriteTransactionsPerS: (pgBefore.nextXid - pgIdle.nextXid) / idleS,
      top: [...turnCalls].sort((a, b) => b[1] - a[1]).slice(0, 15).map(([q, n]) => [q.replace(/\s+/g, ' ').slice(0, 160), n]),
    },
  };
}

async function driveBare(config: GeneratorConfig, cpuPids: Record<string, Sampled>): Promise<GeneratorResult> {
  const { temporalAddress, taskQueue } = config.bare!;
  const connection = await Connection.connect({ address: temporalAddress });
  const client = new Client({ connection });
  const prefix = `bare-${Date.now()}`;
  const handles = await Promise.all(Array.from({ length: config.sessions }, (_, i) => client.workflow.start('bareSession', { taskQueue, workflowId: `${prefix}-${i}`, args: [] })));
  await Promise.all(handles.map((h) => h.executeUpdate(bareTurn, { args: ['warm up'] })));
  const idleCpuPerS = await idleCpu(cpuPids);
  const cpuBefore = sampleCpu(cpuPids);
  const overheads: number[] = [];
  const started = performance.now();
  await Promise.all(handles.map(async (h) => {
    for (let turn = 0; turn < config.turns; turn++) {
      await think(config.thinkMs);
      const sentAt = wallClockMs();
      const { firstTokenAtMs } = await h.executeUpdate(bareTurn, { args: [`turn ${turn}`] });
      overheads.push(firstTokenAtMs - sentAt - config.ttftMs);
    }
  }));
  const elapsedS = (performance.now() - started) / 1000;
  const cpuAfter = sampleCpu(cpuPids);
  // The bare sessions are left running (the server is thrown away): a shutdown update would count in their histories as a turn's.
  await connection.close();
  return { turns: config.sessions * config.turns, elapsedS, overhead: summarize(overheads), cpuSeconds: cpuBetween(cpuBefore, cpuAfter), idleCpuPerS, workflowIds: handles.map((h) => h.workflowId) };
}

async function main() {
  const config = JSON.parse(process.argv[2]!) as GeneratorConfig;
  const cpuPids = { ...config.cpuPids, generator: { pid: process.pid } };
  const result = config.mode === 'keel' ? await driveKeel(config, cpuPids) : await driveBare(config, cpuPids);
  console.log(`RESULT ${JSON.stringify(result)}`);
}

main().catch((error: unknown) => {
  console.error(error);
  process.exit(1);
});
