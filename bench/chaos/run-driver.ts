import { postScript, type Rng } from './driver';
import type { RunRecord } from './verify';

/**
 * One client of background runs in the chaos run: it submits runs one after another to one
 * session (the first run makes it) over either API, each with an idempotency key and a webhook,
 * repeats a submit until it gets its 202 (and sometimes once more, to check a repeat answers the
 * same run), decides the run's approvals, and polls the run until it ends.
 */

export interface RunDriverContext {
  apiPorts: number[];
  token: string;
  modelUrl: string;
  webhookUrl: string;
  writeTool: string;
  writeShare: number;
  turnTimeoutMs: number;
  /** Decides an approval of the run's turn (the chaos approver). */
  onApproval: (sessionId: string, toolCallId: string, digest: string) => void;
  log: (line: string) => void;
}

const FINAL = new Set(['done', 'error', 'cancelled']);
const POLL_MS = 250;
const REQUEST_TIMEOUT_MS = 10_000;

export class RunDriver {
  readonly runs: RunRecord[] = [];
  sessionId: string | undefined;

  constructor(readonly index: number, private readonly ctx: RunDriverContext, private readonly rng: Rng) {}

  private async request(method: string, route: string, body?: unknown): Promise<{ status: number; body: any } | undefined> {
    const port = this.ctx.apiPorts[Math.floor(this.rng() * this.ctx.apiPorts.length)]!;
    try {
      const res = await fetch(`http://127.0.0.1:${port}${route}`, {
        method,
        headers: { authorization: `Bearer ${this.ctx.token}`, ...(body === undefined ? {} : { 'content-type': 'application/json' }) },
        ...(body === undefined ? {} : { body: JSON.stringify(body) }),
        signal: AbortSignal.timeout(REQUEST_TIMEOUT_MS),
      });
      const text = await res.text();
      return { status: res.status, body: text ? JSON.parse(text) : null };
    } catch {
      return undefined; // that API is down or did not answer in time
    }
  }

  /** Submits until a 202; returns the run's ID, or undefined if none came before the deadline or a refusal. */
  private async submit(record: RunRecord, body: Record<string, unknown>, deadline: number): Promise<string | undefined> {
    while (Date.now() < deadline) {
      record.submits++;
      const res = await this.request('POST', '/api/v1/runs', body);
      if (res?.status === 202) {
        const runId = res.body.runId as string;
        if (!record.runIds.includes(runId)) record.runIds.push(runId);
        if (res.body.created === true) record.created++;
        this.sessionId ??= res.body.sessionId as string;
        record.sessionId = res.body.sessionId as string;
        return runId;
      }
      if (res && res.status < 500) {
        record.refusals.push(`${res.status} ${JSON.stringify(res.body?.error ?? res.body)}`);
        return undefined;
      }
      await new Promise((r) => setTimeout(r, POLL_MS));
    }
    return undefined;
  }

  async run(n: number): Promise<void> {
    const deadline = Date.now() + this.ctx.turnTimeoutMs;
    const key = `chaos-run-${this.index}-${n}`;
    // A write needs the session (its scope at the model server): the first run makes it.
    const write = this.sessionId !== undefined && this.rng() < this.ctx.writeShare;
    const marker = `run-${this.index}/${n}`;
    if (write) await postScript(this.ctx.modelUrl, { scope: this.sessionId, toolCalls: [{ name: this.ctx.writeTool, arguments: JSON.stringify({ body: { marker } }) }] }, deadline);
    const record: RunRecord = { key, sessionId: null, runIds: [], created: 0, submits: 0, refusals: [], status: null };
    this.runs.push(record);
    const body = { input: write ? `Record action ${marker}` : `Chaos run ${n}`, idempotencyKey: key, webhookUrl: this.ctx.webhookUrl, ...(this.sessionId ? { sessionId: this.sessionId } : {}) };
    const runId = await this.submit(record, body, deadline);
    if (!runId) {
      this.ctx.log(`run ${key}: no 202 (${record.refusals.join('; ') || 'timed out'})`);
      return;
    }
    // A repeat of a request that was answered: it must answer the same run.
    if (this.rng() < 0.3) await this.submit(record, body, deadline);
    while (Date.now() < deadline) {
      const res = await this.request('GET', `/api/v1/runs/${runId}`);
      const status = res?.status === 200 ? (res.body.status as string) : undefined;
      if (status && FINAL.has(status)) {
        record.status = status;
        return;
      }
      if (status === 'waiting_approval') {
        const list = await this.request('GET', '/api/v1/approvals?limit=100');
        for (const a of (list?.body?.approvals ?? []) as { sessionId: string; toolCallId: string; digest: string }[]) {
          if (a.sessionId === record.sessionId) this.ctx.onApproval(a.sessionId, a.toolCallId, a.digest);
        }
      }
      await new Promise((r) => setTimeout(r, POLL_MS));
    }
    this.ctx.log(`run ${key} (${runId}) did not end within ${this.ctx.turnTimeoutMs} ms`);
  }
}
