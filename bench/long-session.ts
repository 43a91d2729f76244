import os from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { Client, Connection } from '@temporalio/client';
import { Pool } from 'pg';
import { sessionWorkflowId } from '../contracts/ids';
import { MAX_CONTENT_CHARS } from '../contracts/limits';
import { LocalModelServer } from '../model-server/server';
import { keelEnv } from './keel-env';
import { startEmbeddedPostgres, startTemporalDevServer } from '../scripts/services';
import { spawnEntry } from '../test/support/processes';
import { WsClient } from '../test/support/ws-client';
import { checkConversation, driveSession, measureRuns, slope } from './long-session-lib';
import { rssMb } from './proc-cpu';
import { percentile, round } from './stats';

/**
 * One session through many turns (issue 13, "histories that stay small"; docs/benchmarks.md,
 * "Long sessions"): every workflow run's history (events, bytes), the carried state, the
 * conversation in PostgreSQL, the worker's RSS, turns/s.
 *
 *   npm run bench:long-session -- [--turns 10000] [--tool-every 50] [--long-every 250] [--sample-every 500]
 *
 * The worker and API get the caller's environment: KEEL_CONTINUE_AS_NEW_EVENTS applies.
 */

const { values: args } = parseArgs({
  options: {
    turns: { type: 'string', default: '10000' },
    'tool-every': { type: 'string', default: '50' },
    'long-every': { type: 'string', default: '250' },
    'sample-every': { type: 'string', default: '500' },
  },
});
const TURNS = Number(args.turns);
const TOOL_EVERY = Number(args['tool-every']);
const LONG_EVERY = Number(args['long-every']);
const SAMPLE_EVERY = Number(args['sample-every']);
const LONG_CHARS = Number(process.env.KEEL_MAX_CONTENT_CHARS ?? MAX_CONTENT_CHARS);
const log = (s: string) => console.error(`[bench:long-session] ${s}`);
const ADMIN_KEY = 'bench-admin-key';

async function main() {
  const dataDir = path.join(os.tmpdir(), `keel-bench-long-${process.pid}`);
  log('starting Temporal and Postgres');
  const temporalServer = await startTemporalDevServer({ port: 0, headless: true, log });
  const pg = await startEmbeddedPostgres({ dataDir, port: 0, persistent: false, log });
  const model = new LocalModelServer({ defaults: { reply: 'ok', firstTokenDelayMs: 0, tokenDelayMs: 0 } });
  const { url: modelUrl } = await model.start();
  const env = {
    ...(await keelEnv({ temporalAddress: temporalServer.address, databaseUrl: pg.url, modelUrl, taskQueue: 'bench-long-session', adminKey: ADMIN_KEY })),
    KEEL_HEALTH_CHECKS_ENABLED: 'false',
    // One user sends every message as soon as the last one is answered: far more than the per-session rate lets through.
    KEEL_RATE_MESSAGES_PER_SESSION: '0',
    KEEL_RATE_REQUESTS_PER_TOKEN: '0',
  };
  const continueAsNewEvents = process.env.KEEL_CONTINUE_AS_NEW_EVENTS ?? '4000 (default)';
  const worker = spawnEntry('worker/main.ts', env);
  const api = spawnEntry('api/main.ts', env);
  const db = new Pool({ connectionString: pg.url, max: 2 });
  let connection: Connection | undefined;
  let ws: WsClient | undefined;
  try {
    await worker.waitForLine(/worker started/, 60_000);
    const port = Number((await api.waitForLine(/api listening on http:\/\/127\.0\.0\.1:(\d+)/, 60_000))[1]);
    const base = `http://127.0.0.1:${port}`;
    const issued = await fetch(`${base}/api/v1/admin/tokens`, { method: 'POST', headers: { 'content-type': 'application/json', 'x-api-key': ADMIN_KEY }, body: JSON.stringify({ userId: 'long-user' }) });
    const { token } = (await issued.json()) as { token: string };
    const created = await fetch(`${base}/api/v1/sessions`, { method: 'POST', headers: { 'content-type': 'application/json', authorization: `Bearer ${token}` }, body: '{}' });
    const sessionId = ((await created.json()) as { id: string }).id;
    ws = await WsClient.connect(`ws://127.0.0.1:${port}/api/v1/sessions/${sessionId}/ws?token=${token}`);

    const workerPid = worker.child.pid!;
    const rss: { turn: number; mb: number }[] = [{ turn: 0, mb: rssMb(workerPid) }];
    log(`${TURNS} turns, a calculator call every ${TOOL_EVERY}, a ${LONG_CHARS}-char message every ${LONG_EVERY}, KEEL_CONTINUE_AS_NEW_EVENTS=${continueAsNewEvents}`);
    const started = performance.now();
    let last = started;
    const { toolTurns, longTurns } = await driveSession({
      client: ws,
      model,
      sessionId,
      turns: TURNS,
      toolEvery: TOOL_EVERY,
      longEvery: LONG_EVERY,
      longChars: LONG_CHARS,
      clientMessageIds: true,
      afterTurn: (turn) => {
        if (turn % SAMPLE_EVERY !== 0) return;
        const now = performance.now();
        rss.push({ turn, mb: rssMb(workerPid) });
        log(`turn ${turn}: worker RSS ${round(rss.at(-1)!.mb)} MiB, ${round((SAMPLE_EVERY * 1000) / (now - last), 1)} turns/s over the last ${SAMPLE_EVERY}`);
        last = now;
      },
    });
    const elapsed = (performance.now() - started) / 1000;

    connection = await Connection.connect({ address: temporalServer.address });
    const runs = await measureRuns(new Client({ connection }), sessionWorkflowId(sessionId));
    const conversation = await checkConversation(db, sessionId, TURNS);
    const events = runs.map((r) => r.events).sort((a, b) => a - b);
    const bytes = runs.map((r) => r.bytes).sort((a, b) => a - b);
    const secondHalf = rss.filter((s) => s.turn >= TURNS / 2).map((s) => ({ x: s.turn, y: s.mb }));
    const carried = runs.slice(1);
    const report = {
      command: `${process.env.KEEL_CONTINUE_AS_NEW_EVENTS ? `KEEL_CONTINUE_AS_NEW_EVENTS=${process.env.KEEL_CONTINUE_AS_NEW_EVENTS} ` : ''}npm run bench:long-session -- --turns ${TURNS} --tool-every ${TOOL_EVERY} --long-every ${LONG_EVERY} --sample-every ${SAMPLE_EVERY}`,
      machine: `${os.cpus().length} cores, ${round(os.totalmem() / 2 ** 30)} GiB, node ${process.version}`,
      turns: TURNS,
      toolTurns,
      longTurns,
      seconds: round(elapsed, 1),
      turnsPerSecond: round(TURNS / elapsed, 2),
      continueAsNewEvents,
      runs: runs.length,
      historyEvents: { max: events.at(-1), p50: percentile(events, 50), ofCompletedRunsMin: Math.min(...runs.filter((r) => r.continuedAsNew).map((r) => r.events)) },
      historyBytes: { max: bytes.at(-1), p50: percentile(bytes, 50), serverMax: Math.max(...runs.map((r) => r.serverBytes ?? 0)) },
      inputBytes: { firstRun: runs[0]!.inputBytes, secondRun: runs[1]?.inputBytes ?? null, lastRun: runs.at(-1)!.inputBytes },
      carriedStateBytes: {
        firstContinueAsNew: carried[0]?.carriedBytes ?? null,
        last: carried.at(-1)?.carriedBytes ?? null,
        perRun: carried.map((r) => r.carriedBytes),
      },
      carriedArraysAtLast: carried.at(-1) ? arrayLengths(carried.at(-1)!.carried!) : null,
      conversation: {
        ...conversation,
        turnsWithoutExactlyOneDone: conversation.turnsWithoutExactlyOneDone.slice(0, 20),
        expectedMessages: 2 * TURNS + 2 * toolTurns,
      },
      workerRssMb: {
        first: round(rss[0]!.mb),
        max: round(Math.max(...rss.map((s) => s.mb))),
        last: round(rss.at(-1)!.mb),
        secondHalfSlopeMbPer1000Turns: round(slope(secondHalf) * 1000, 2),
        samples: rss.map((s) => [s.turn, round(s.mb)]),
      },
      perRun: runs.map((r) => [r.events, r.bytes, r.inputBytes]),
    };
    console.log(JSON.stringify(report, null, 2));
    const intact =
      conversation.seqGapFree &&
      conversation.turnsWithoutExactlyOneDone.length === 0 &&
      conversation.notCompleted === 0 &&
      conversation.messages === 2 * TURNS + 2 * toolTurns &&
      conversation.userTurnsDistinct === TURNS;
    if (!intact) throw new Error('the conversation is not intact (see "conversation" above)');
  } finally {
    await ws?.close().catch(() => undefined);
    await connection?.close();
    await db.end();
    await Promise.all([worker.kill(), api.kill()]);
    await model.stop();
    await pg.stop();
    await temporalServer.stop();
  }
}

/** The length of every array in the carried state: whatever grows with turns shows here. */
function arrayLengths(value: Record<string, unknown>, prefix = ''): Record<string, number> {
  const out: Record<string, number> = {};
  for (const [key, v] of Object.entries(value)) {
    if (Array.isArray(v)) out[prefix + key] = v.length;
    else if (v && typeof v === 'object') Object.assign(out, arrayLengths(v as Record<string, unknown>, `${prefix}${key}.`));
  }
  return out;
}

main().catch((error: unknown) => {
  console.error(error);
  process.exit(1);
});
