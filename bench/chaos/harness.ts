import { chmod, mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { Pool } from 'pg';
import { bundleWorkflows } from '../../scripts/bundle-workflows';
import { Cluster, type Part } from './cluster';
import { seededRng, SessionDriver, type DriverContext, type Rng } from './driver';
import { EffectService } from './effect-service';
import { RunDriver } from './run-driver';
import { pidOwningConnection } from './socket-owner';
import { verify, type ChaosRecord, type SessionRecord, type Verdict, type WriteKill } from './verify';

/**
 * The chaos suite (issue 13): S sessions × T turns and background runs through two APIs and two
 * workers while a seeded schedule SIGKILLs and restarts a worker, an API, the Temporal dev server,
 * PostgreSQL, the model server, or the worker whose write the receiving service has taken and not
 * yet answered; then a verdict from the database, the clients' event streams, the receiving
 * service and the webhook receiver (verify.ts).
 */

/** What the schedule kills: a part, or (`write`) the worker that sent a write the service holds. */
export type Kind = Part | 'write';
export const KINDS: Kind[] = ['worker', 'api', 'temporal', 'postgres', 'model', 'write'];

export interface ChaosOptions {
  sessions: number;
  turnsPerSession: number;
  /** Clients of background runs, each submitting `runsPerClient` runs to a session of its own. */
  runClients: number;
  runsPerClient: number;
  seed: number;
  /** Pause before each kill, uniform in [min, max] ms. */
  killGapMs: [number, number];
  /** How long a killed part stays down before it is started again, uniform in [min, max] ms. */
  downMs: [number, number];
  writeShare: number;
  /** A client's pause between two of its turns (or runs), uniform in [min, max] ms: a short run can last long enough for every kind of kill. */
  thinkMs: [number, number];
  turnTimeoutMs: number;
  log: (line: string) => void;
}

export const DEFAULTS: Omit<ChaosOptions, 'log'> = {
  // 900 chat turns and 100 runs.
  sessions: 20,
  turnsPerSession: 45,
  runClients: 4,
  runsPerClient: 25,
  seed: 13,
  killGapMs: [3_000, 8_000],
  downMs: [300, 2_500],
  writeShare: 0.3,
  thinkMs: [0, 0],
  turnTimeoutMs: 240_000,
};

export interface KillRecord {
  atMs: number;
  kind: Kind;
  index: number;
  downMs: number;
  /** A `write` kill: the idempotency key of the write whose answer was held. */
  key?: string;
  /** From the kill until the part served again. */
  recoveredMs: number;
}

export interface ChaosResult {
  verdict: Verdict;
  kills: KillRecord[];
  killsByKind: Record<Kind, number>;
  unexpectedExits: string[];
  reconnects: number;
  approverRequests: number;
  timings: { setupS: number; driveS: number; turnsPerS: number; verifyS: number };
}

const WRITE_TOOL = 'chaos_write';
const ADMIN_KEY = 'chaos-admin-key';
const DEV_TOKEN = 'chaos-dev-token';
const WEBHOOK_SECRET = 'chaos-webhook-secret';
/** How long a `write` kill waits for a write to be in flight before it kills a worker anyway. */
const WRITE_KILL_WAIT_MS = 20_000;
/** After the drive, how long ended runs may take to get their webhooks. */
const WEBHOOK_DRAIN_MS = 60_000;
/** A model stream that takes a moment, so kills land in the middle of replies too; posted again each time the model server starts. */
const MODEL_SCRIPT = { scope: '*', firstTokenDelayMs: 50, tokenDelayMs: 15 };

const between = (rng: Rng, [min, max]: [number, number]) => min + rng() * (max - min);

/** What the deployment runs with: small retry and failover times, no rate limits (one user drives every session). */
function appEnv(effectPort: number, bundle: string): Record<string, string> {
  return {
    KEEL_TASK_QUEUE: 'chaos',
    KEEL_WORKFLOW_BUNDLE: bundle,
    OPENAI_API_KEY: 'chaos',
    KEEL_MODEL: 'keel-local',
    KEEL_API_HOST: '127.0.0.1',
    KEEL_LOG_LEVEL: 'info',
    KEEL_DB_POOL_SIZE: '5',
    KEEL_DB_CONNECT_TIMEOUT_MS: '2000',
    KEEL_TEMPORAL_RPC_TIMEOUT_MS: '3000',
    KEEL_LLM_HEARTBEAT_TIMEOUT_MS: '2000',
    KEEL_LLM_RETRY_INITIAL_MS: '200',
    KEEL_LLM_RETRY_MAX_MS: '2000',
    // The reply activity also stores the turn: a PostgreSQL outage is retried within the model call's budget.
    KEEL_LLM_MAX_ATTEMPTS: '60',
    KEEL_STICKY_QUEUE_TIMEOUT_MS: '1000',
    KEEL_WORKER_METRICS_PORT: '0',
    KEEL_ADMIN_API_KEY: ADMIN_KEY,
    KEEL_DEV_TOKEN: DEV_TOKEN,
    KEEL_RATE_MESSAGES_PER_SESSION: '0',
    KEEL_RATE_REQUESTS_PER_TOKEN: '0',
    KEEL_MAX_SOCKETS_PER_USER: '10000',
    KEEL_HEALTH_CHECKS_ENABLED: 'false',
    KEEL_HTTP_ALLOW_HOSTS: `127.0.0.1:${effectPort}`,
    KEEL_WEBHOOK_SECRET: WEBHOOK_SECRET,
    KEEL_WEBHOOK_ALLOW_HOSTS: `127.0.0.1:${effectPort}`,
    KEEL_WEBHOOK_RETRY_INITIAL_MS: '200',
    KEEL_WEBHOOK_RETRY_MAX_MS: '2000',
    KEEL_WEBHOOK_MAX_ATTEMPTS: '30',
    KEEL_OUTBOX_POLL_MS: '500',
    KEEL_OUTBOX_LEASE_MS: '5000',
    KEEL_RUN_SEND_LEASE_MS: '2000',
    KEEL_RUN_UNSENT_GRACE_MS: '3000',
  };
}

async function api(port: number, method: string, route: string, body?: unknown, headers: Record<string, string> = { authorization: `Bearer ${DEV_TOKEN}` }) {
  const res = await fetch(`http://127.0.0.1:${port}${route}`, {
    method,
    headers: { ...headers, ...(body === undefined ? {} : { 'content-type': 'application/json' }) },
    ...(body === undefined ? {} : { body: JSON.stringify(body) }),
  });
  const text = await res.text();
  return { status: res.status, body: text ? (JSON.parse(text) as any) : null };
}

/** The write tool: an HTTP tool in the catalog, idempotent, behind an approval, added to the default agent. */
async function installWriteTool(pool: Pool, port: number, effectPort: number): Promise<void> {
  await pool.query(`INSERT INTO tool_catalog (name, kind, source, definition, target) VALUES ($1, 'http', 'chaos', $2, $3)`, [
    WRITE_TOOL,
    JSON.stringify({ description: 'Records an action at the chaos service.', parameters: { type: 'object', properties: { body: { type: 'object' } }, additionalProperties: false }, permission: 'write', requiresApproval: true, timeoutMs: 30_000, maxAttempts: 3, idempotent: true }),
    JSON.stringify({ method: 'POST', serverUrl: `http://127.0.0.1:${effectPort}`, path: '/actions', parameters: [], body: { required: false }, operationId: WRITE_TOOL }),
  ]);
  const issued = await api(port, 'POST', '/api/v1/admin/tokens', { userId: 'chaos-ops', admin: true }, { 'x-api-key': ADMIN_KEY });
  const admin = { authorization: `Bearer ${issued.body.token as string}` };
  const current = (await api(port, 'GET', '/api/v1/agents/default/versions', undefined, admin)).body;
  const definition = current.versions.find((v: { version: number }) => v.version === current.release.activeVersion).definition;
  const published = await api(port, 'POST', '/api/v1/agents/default/versions', { ...definition, tools: [...definition.tools, WRITE_TOOL] }, admin);
  if (published.status >= 300) throw new Error(`publishing the agent: ${published.status} ${JSON.stringify(published.body)}`);
  const activated = await api(port, 'POST', '/api/v1/agents/default/activate', { version: published.body.version, watch: false }, admin);
  if (activated.status >= 300) throw new Error(`activating the agent: ${activated.status} ${JSON.stringify(activated.body)}`);
}

/** Decides every approval once over REST with its digest; retries what did not get an answer. */
class Approver {
  readonly outcomes = new Map<string, { accepted: number; refusedAsDecided: number }>();
  requests = 0;
  private readonly inFlight = new Set<string>();
  constructor(private readonly ports: number[], private readonly rng: Rng, private readonly log: (l: string) => void) {}

  decide(sessionId: string, toolCallId: string, digest: string): void {
    if (this.inFlight.has(toolCallId) || this.outcomes.has(toolCallId)) return;
    this.inFlight.add(toolCallId);
    const approved = this.rng() < 0.85;
    void this.until(sessionId, toolCallId, { approved, digest, feedback: approved ? undefined : 'chaos says no' }).finally(() => this.inFlight.delete(toolCallId));
  }

  private async until(sessionId: string, toolCallId: string, body: Record<string, unknown>): Promise<void> {
    const outcome = { accepted: 0, refusedAsDecided: 0 };
    const deadline = Date.now() + 300_000;
    for (let attempt = 0; Date.now() < deadline; attempt++) {
      this.requests++;
      try {
        const res = await api(this.ports[attempt % this.ports.length]!, 'POST', `/api/v1/sessions/${sessionId}/approvals/${toolCallId}`, body);
        if (res.status === 200) outcome.accepted++;
        else if (res.body?.error?.code === 'APPROVAL_ALREADY_DECIDED') outcome.refusedAsDecided++;
        if (res.status === 200 || res.status === 409) {
          this.outcomes.set(toolCallId, outcome);
          if (res.status === 409 && res.body?.error?.code !== 'APPROVAL_ALREADY_DECIDED') this.log(`approval ${toolCallId}: ${JSON.stringify(res.body)}`);
          return;
        }
      } catch {
        // the API is down: the other one, or this one again after a moment
      }
      await new Promise((r) => setTimeout(r, 250));
    }
    this.outcomes.set(toolCallId, outcome);
  }
}

/** Kills and restarts one part at a time from the seeded schedule until `stop()`. */
class KillSchedule {
  readonly kills: KillRecord[] = [];
  private stopped = false;
  private wake: (() => void) | undefined;
  private readonly running: Promise<void>;
  private readonly started = Date.now();

  constructor(private readonly cluster: Cluster, private readonly service: EffectService, private readonly rng: Rng, private readonly opts: ChaosOptions) {
    this.running = this.loop();
  }

  private pause(ms: number): Promise<void> {
    return new Promise((resolve) => {
      const timer = setTimeout(resolve, ms);
      this.wake = () => (clearTimeout(timer), resolve());
    });
  }

  /** Each kind once per round, in a seeded order, so every kind is hit in any run of six kills or more. */
  private *kinds(): Generator<Kind> {
    for (;;) {
      const round = [...KINDS];
      for (let i = round.length - 1; i > 0; i--) {
        const j = Math.floor(this.rng() * (i + 1));
        [round[i], round[j]] = [round[j]!, round[i]!];
      }
      yield* round;
    }
  }

  /**
   * A `write` kill: the service holds the answer to the next write; the worker that sent it (found
   * by its connection) is killed before the answer is let go. No write in time: a worker anyway.
   */
  private async killMidWrite(fallbackIndex: number): Promise<{ index: number; key?: string; at: number }> {
    const held = await Promise.race([this.service.holdNextWrite(WRITE_KILL_WAIT_MS), new Promise<undefined>((r) => (this.wake = () => r(undefined)))]);
    if (!held) {
      this.service.cancelHold();
      return { index: fallbackIndex, at: Date.now() };
    }
    // Whatever happens here, the held answer is let go (to a dead socket once its worker is killed).
    try {
      const workers = this.cluster.workerPids();
      const pid = await pidOwningConnection(held.remotePort, this.service.port, [...workers.keys()]);
      if (pid === undefined) {
        this.opts.log(`write ${held.key}: no worker holds its connection; answered`);
        return { index: fallbackIndex, at: Date.now() };
      }
      const index = workers.get(pid)!;
      const at = Date.now();
      await this.cluster.kill('worker', index);
      return { index, key: held.key, at };
    } finally {
      await held.release();
    }
  }

  private async loop(): Promise<void> {
    const kinds = this.kinds();
    for (;;) {
      const gap = between(this.rng, this.opts.killGapMs);
      const kind = kinds.next().value as Kind;
      const index = kind === 'worker' || kind === 'api' || kind === 'write' ? Math.floor(this.rng() * 2) : 0;
      const down = between(this.rng, this.opts.downMs);
      await this.pause(gap);
      if (this.stopped) return;
      const part: Part = kind === 'write' ? 'worker' : kind;
      // A write kill is timed from the kill, not from the wait for a write to hold.
      let killed: { index: number; key?: string; at: number } = { index, at: Date.now() };
      if (kind === 'write') {
        killed = await this.killMidWrite(index);
        if (this.stopped && killed.key === undefined) return;
        if (killed.key === undefined) await this.cluster.kill('worker', killed.index);
      } else {
        await this.cluster.kill(kind, index);
      }
      const at = killed.at;
      const numbered = part === 'worker' || part === 'api';
      this.opts.log(`kill ${kind}${numbered ? ` ${killed.index}` : ''}${killed.key ? ` (mid-write ${killed.key})` : ''} at ${((Date.now() - this.started) / 1000).toFixed(1)} s, down ${Math.round(down)} ms`);
      await new Promise((r) => setTimeout(r, down));
      for (let attempt = 1; ; attempt++) {
        try {
          await this.cluster.restart(part, killed.index);
          break;
        } catch (error) {
          this.opts.log(`restart of ${part} failed (attempt ${attempt}): ${error instanceof Error ? error.message.split('\n')[0] : String(error)}`);
          if (attempt >= 5) throw error;
        }
      }
      this.kills.push({ atMs: at - this.started, kind, index: killed.index, downMs: Math.round(down), recoveredMs: Date.now() - at, ...(killed.key ? { key: killed.key } : {}) });
    }
  }

  writeKills(): WriteKill[] {
    return this.kills.flatMap((k) => (k.key ? [{ key: k.key }] : []));
  }

  async stop(): Promise<void> {
    this.stopped = true;
    this.wake?.();
    await this.running;
  }
}

/** One session's stored record, with what its clients sent and received. */
async function sessionRecord(pool: Pool, id: string, sent: SessionRecord['sent'], delivered: number[]): Promise<SessionRecord> {
  const [events, messages, calls] = await Promise.all([
    pool.query('SELECT seq, type, data FROM session_events WHERE session_id = $1 ORDER BY seq', [id]),
    pool.query('SELECT id, turn, role, client_message_id, tool_calls IS NOT NULL AS has_tool_calls FROM messages WHERE session_id = $1 AND deleted_at IS NULL', [id]),
    pool.query('SELECT id, name, status, approval_outcome FROM tool_calls WHERE session_id = $1', [id]),
  ]);
  return {
    id,
    sent,
    delivered,
    events: events.rows.map((r) => ({ seq: Number(r.seq), type: r.type as string, data: r.data as Record<string, any> })),
    messages: messages.rows.map((r) => ({ id: r.id as string, turn: r.turn === null ? null : Number(r.turn), role: r.role as string, clientMessageId: r.client_message_id as string | null, hasToolCalls: r.has_tool_calls as boolean })),
    toolCalls: calls.rows.map((r) => ({ id: r.id as string, name: r.name as string, status: r.status as string, approvalOutcome: r.approval_outcome as string | null })),
  };
}

async function collect(pool: Pool, drivers: SessionDriver[], runDrivers: RunDriver[], service: EffectService, approver: Approver, writeKills: WriteKill[]): Promise<ChaosRecord> {
  const sessions: SessionRecord[] = [];
  for (const d of drivers) sessions.push(await sessionRecord(pool, d.id, d.sent, d.delivered));
  // The runs' sessions: verify() adds each run's message to its session; run clients read no stream.
  const runSessions = new Set(runDrivers.flatMap((r) => r.runs.map((run) => run.sessionId)).filter((id): id is string => id !== null));
  for (const id of runSessions) sessions.push(await sessionRecord(pool, id, [], []));
  return {
    sessions,
    runs: runDrivers.flatMap((r) => r.runs),
    deliveries: [...service.deliveries].map(([deliveryId, d]) => ({ deliveryId, ...d })),
    writeKills,
    writeTool: WRITE_TOOL,
    serviceEffects: [...service.effects].map(([key, e]) => ({ key, marker: e.marker, requests: e.requests })),
    decisions: [...approver.outcomes].map(([toolCallId, o]) => ({ toolCallId, ...o })),
  };
}

/** Waits until every ended run's webhook has come (or the drain time is over). */
async function drainWebhooks(runDrivers: RunDriver[], service: EffectService): Promise<void> {
  const expected = runDrivers.flatMap((r) => r.runs).filter((run) => run.status !== null && run.runIds.length > 0).map((run) => `webhook-run-${run.runIds[0]!}`);
  const deadline = Date.now() + WEBHOOK_DRAIN_MS;
  while (Date.now() < deadline && !expected.every((id) => service.deliveries.has(id))) await new Promise((r) => setTimeout(r, 200));
}

export async function runChaos(opts: ChaosOptions): Promise<ChaosResult> {
  const t0 = Date.now();
  const dir = await mkdtemp(path.join(os.tmpdir(), 'keel-chaos-'));
  // Postgres runs as its own user when we are root: it must be able to reach its data directory.
  await chmod(dir, 0o755);
  const service = new EffectService(WEBHOOK_SECRET);
  await service.start();
  const cluster = new Cluster({ dir, log: opts.log, appEnv: appEnv(service.port, await bundleWorkflows()), modelScript: MODEL_SCRIPT });
  let pool: Pool | undefined;
  try {
    opts.log(`starting Temporal (file-backed), PostgreSQL, the model server, 2 workers and 2 APIs in ${dir}`);
    await cluster.start();
    pool = new Pool({ connectionString: cluster.databaseUrl, max: 3 });
    pool.on('error', () => undefined);
    await installWriteTool(pool, cluster.apiPorts[0]!, service.port);

    const rng = seededRng(opts.seed);
    const driverRng = seededRng(opts.seed ^ 0x5eed);
    const approver = new Approver(cluster.apiPorts, seededRng(opts.seed ^ 0xa11), opts.log);
    const ctx: DriverContext = {
      apiPorts: cluster.apiPorts,
      token: DEV_TOKEN,
      modelUrl: cluster.modelUrl,
      writeTool: WRITE_TOOL,
      writeShare: opts.writeShare,
      turnTimeoutMs: opts.turnTimeoutMs,
      onApproval: (s, id, digest) => approver.decide(s, id, digest),
      log: opts.log,
    };
    const drivers: SessionDriver[] = [];
    for (let i = 0; i < opts.sessions; i++) {
      const created = await api(cluster.apiPorts[i % 2]!, 'POST', '/api/v1/sessions', { title: `chaos ${i}` });
      if (created.status !== 201) throw new Error(`create session: ${created.status} ${JSON.stringify(created.body)}`);
      drivers.push(new SessionDriver(created.body.id as string, ctx, seededRng(Math.floor(driverRng() * 2 ** 32))));
    }
    drivers.forEach((d) => d.start());
    const runDriverRng = seededRng(opts.seed ^ 0x7e57);
    const runDrivers = Array.from({ length: opts.runClients }, (_, i) => new RunDriver(i, {
      apiPorts: cluster.apiPorts,
      token: DEV_TOKEN,
      modelUrl: cluster.modelUrl,
      webhookUrl: `http://127.0.0.1:${service.port}/hooks`,
      writeTool: WRITE_TOOL,
      writeShare: opts.writeShare,
      turnTimeoutMs: opts.turnTimeoutMs,
      onApproval: (s, id, digest) => approver.decide(s, id, digest),
      log: opts.log,
    }, seededRng(Math.floor(runDriverRng() * 2 ** 32))));
    const setupS = (Date.now() - t0) / 1000;
    opts.log(`set up in ${setupS.toFixed(1)} s; driving ${opts.sessions} sessions x ${opts.turnsPerSession} turns and ${opts.runClients} x ${opts.runsPerClient} runs (seed ${opts.seed})`);

    const driveStart = Date.now();
    const schedule = new KillSchedule(cluster, service, rng, opts);
    const total = opts.sessions * opts.turnsPerSession;
    const thinkRng = seededRng(opts.seed ^ 0x7417);
    const think = () => new Promise((r) => setTimeout(r, between(thinkRng, opts.thinkMs)));
    const runsDone = () => runDrivers.reduce((n, r) => n + r.runs.filter((run) => run.status !== null).length, 0);
    const progress = setInterval(() => opts.log(`${drivers.reduce((n, d) => n + d.turnsDone, 0)}/${total} turns, ${runsDone()}/${opts.runClients * opts.runsPerClient} runs done, ${schedule.kills.length} kills`), 15_000);
    try {
      await Promise.all([
        ...drivers.map(async (d) => {
          for (let n = 1; n <= opts.turnsPerSession; n++) await d.turn(n).then(think);
        }),
        ...runDrivers.map(async (r) => {
          for (let n = 1; n <= opts.runsPerClient; n++) await r.run(n).then(think);
        }),
      ]);
    } finally {
      clearInterval(progress);
      await schedule.stop();
    }
    const driveS = (Date.now() - driveStart) / 1000;
    await Promise.all(drivers.map((d) => d.close()));
    await drainWebhooks(runDrivers, service);

    const verifyStart = Date.now();
    const verdict = verify(await collect(pool, drivers, runDrivers, service, approver, schedule.writeKills()));
    if (service.requestsWithoutKey > 0) verdict.problems.push(`note: ${service.requestsWithoutKey} requests reached the service without an Idempotency-Key`);
    const killsByKind = Object.fromEntries(KINDS.map((k) => [k, schedule.kills.filter((x) => x.kind === k).length])) as Record<Kind, number>;
    return {
      verdict,
      kills: schedule.kills,
      killsByKind,
      unexpectedExits: cluster.unexpectedExits,
      reconnects: drivers.reduce((n, d) => n + d.reconnects, 0),
      approverRequests: approver.requests,
      timings: { setupS, driveS, turnsPerS: verdict.turns / driveS, verifyS: (Date.now() - verifyStart) / 1000 },
    };
  } finally {
    await pool?.end().catch(() => undefined);
    await cluster.stop();
    await service.stop();
    await rm(dir, { recursive: true, force: true });
  }
}

/** The summary line: turns, kills by kind, lost, duplicated, duplicated effects. */
export function summary(result: ChaosResult): string {
  const v = result.verdict;
  const kills = Object.entries(result.killsByKind).map(([k, n]) => `${k} ${n}`).join(', ');
  return `turns ${v.turns} (${v.runs} of them runs), kills ${result.kills.length} (${kills}), lost ${v.lost}, duplicated ${v.duplicated}, duplicated effects ${v.duplicatedEffects}`;
}

export function passed(result: ChaosResult): boolean {
  return result.verdict.lost === 0 && result.verdict.duplicated === 0 && result.verdict.duplicatedEffects === 0;
}
