import { LeanSocket } from './lean-socket';
import { rssMb, treePssMb } from './proc-cpu';
import { summarize } from './stats';

/**
 * The idle-scale load generator (`npm run bench -- --idle N`), a process of its own: it opens N
 * sessions, each with one finished turn and an open WebSocket, leaves them idle, measures the
 * memory of every process, then wakes W random sessions one at a time (most of them evicted from
 * the worker's cache) and the same sessions again (cached now). Prints `RESULT <json>`.
 */

export interface IdleConfig {
  sessions: number;
  wake: number;
  ttftMs: number;
  tokenDelayMs: number;
  baseUrl: string;
  modelUrl: string;
  adminKey: string;
  /** Processes whose resident memory is read (PostgreSQL with its backends). */
  rssPids: Record<string, { pid: number; tree?: boolean }>;
}

/** What the generator prints as `RESULT <json>`. */
export interface IdleResult {
  sessions: number;
  setupS: number;
  idleMemoryMb: Record<string, number>;
  afterMemoryMb: Record<string, number>;
  wokenOverhead: ReturnType<typeof summarize>;
  cachedOverhead: ReturnType<typeof summarize>;
}

const SETUP_CONCURRENCY = 100;
const SETTLE_MS = 10_000;

/** From the send to the first delta. */
const firstTokenMs = ([sentAt, deltaAt]: [number, number]) => deltaAt - sentAt;

const memory = (config: IdleConfig) =>
  Object.fromEntries([...Object.entries(config.rssPids).map(([k, p]) => [k, Math.round(p.tree ? treePssMb(p.pid) : rssMb(p.pid))]), ['generator', Math.round(rssMb(process.pid))]]);

/** The model server's pacing for every scope (its control routes sit beside the OpenAI-compatible /v1). */
async function pacing(modelUrl: string, firstTokenDelayMs: number, tokenDelayMs: number): Promise<void> {
  const res = await fetch(`${modelUrl.replace(/\/v1\/?$/, '')}/_control/script`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ scope: '*', firstTokenDelayMs, tokenDelayMs }) });
  if (!res.ok) throw new Error(`model pacing: ${res.status}`);
}

async function openSession(config: IdleConfig, i: number): Promise<LeanSocket> {
  const headers = { 'content-type': 'application/json' };
  const issued = await fetch(`${config.baseUrl}/api/v1/admin/tokens`, { method: 'POST', headers: { ...headers, 'x-api-key': config.adminKey }, body: JSON.stringify({ userId: `idle-user-${i}` }) });
  const { token } = (await issued.json()) as { token: string };
  const res = await fetch(`${config.baseUrl}/api/v1/sessions`, { method: 'POST', headers: { ...headers, authorization: `Bearer ${token}` }, body: '{}' });
  const { id } = (await res.json()) as { id: string };
  const socket = await LeanSocket.open(`${config.baseUrl.replace(/^http/, 'ws')}/api/v1/sessions/${id}/ws?token=${token}`);
  await socket.turn('hello');
  return socket;
}

async function main() {
  const config = JSON.parse(process.argv[2]!) as IdleConfig;
  const log = (s: string) => console.error(s);
  // The setup turns go fast; the wake-ups get the configured model pacing.
  await pacing(config.modelUrl, 0, 0);
  const started = performance.now();
  const sockets: LeanSocket[] = [];
  let next = 0;
  await Promise.all(Array.from({ length: SETUP_CONCURRENCY }, async () => {
    while (next < config.sessions) {
      const i = next++;
      sockets.push(await openSession(config, i));
      if (sockets.length % 1000 === 0) log(`${sockets.length} sessions open, ${Math.round((performance.now() - started) / 1000)} s`);
    }
  }));
  const setupS = (performance.now() - started) / 1000;
  await new Promise((r) => setTimeout(r, SETTLE_MS));
  const idleMemoryMb = memory(config);
  await pacing(config.modelUrl, config.ttftMs, config.tokenDelayMs);
  // Random sessions, one at a time: with the cache smaller than the sessions, most were evicted.
  const picked = [...sockets].sort(() => Math.random() - 0.5).slice(0, config.wake);
  const evicted: number[] = [];
  for (const s of picked) evicted.push(firstTokenMs(await s.turn('wake up')) - config.ttftMs);
  // The same sessions again, now in the cache: the difference is what a wake-up from eviction costs.
  const cached: number[] = [];
  for (const s of picked) cached.push(firstTokenMs(await s.turn('again')) - config.ttftMs);
  const afterMemoryMb = memory(config);
  sockets.forEach((s) => s.close());
  const result: IdleResult = { sessions: sockets.length, setupS, idleMemoryMb, afterMemoryMb, wokenOverhead: summarize(evicted), cachedOverhead: summarize(cached) };
  console.log(`RESULT ${JSON.stringify(result)}`);
}

main().catch((error: unknown) => {
  console.error(error);
  process.exit(1);
});
