import { isIP } from 'node:net';
import { setTimeout as sleep } from 'node:timers/promises';
import { isSpanContextValid, trace } from '@opentelemetry/api';
import { digestOf } from '../contracts/canonical';
import { getRelease } from '../db/releases';
import { KeelError, type ErrorCode } from '../contracts/errors';
import { isFinalRunStatus, runClientMessageId, type RunStatus, type SubmitRunBody } from '../contracts/runs';
import { appendEvent } from '../db/events';
import {
  attachSession,
  claimRun,
  endQueuedRun,
  findRun,
  listRuns,
  markSent,
  randomRunId,
  releaseSendLease,
  setMessageId,
  takeSendLease,
  type RunRecord,
} from '../db/runs';
import { blockedAddressRule } from '../tools/http-request';
import type { Caller } from './auth';
import type { ApiDeps } from './deps';
import { toKeelError } from './errors';
import { messageIdFor } from '../contracts/ids';

/**
 * Refusals that say the message did not reach the session (and never will as sent): the run
 * ends `error` with the code, and stops answering repeats, so a retry after the refusal makes a
 * new run. Any other failure (SERVICE_UNAVAILABLE, INTERNAL_ERROR) may have reached it: the run
 * stays queued and the next repeat sends again.
 */
const REFUSALS = new Set<ErrorCode>(['RATE_LIMIT_EXCEEDED', 'SESSION_BUSY', 'SESSION_EXPIRED', 'SESSION_NOT_FOUND', 'AGENT_NOT_FOUND', 'VALIDATION_ERROR', 'FORBIDDEN']);
/** How often a repeat looks again while the first request is still sending the run's message. */
const REPEAT_POLL_MS = 25;

/** The trace ID of the request's active span, else a random ID of the same shape. */
function traceIdOrRandom(): string {
  const context = trace.getActiveSpan()?.spanContext();
  return context && isSpanContextValid(context) ? context.traceId : randomRunId();
}

/** The same failure, naming the run it happened to (its details, when they are an object, keep their fields). */
function naming(error: KeelError, runId: string): KeelError {
  const details = error.details;
  if (details !== undefined && (typeof details !== 'object' || details === null || Array.isArray(details))) return error;
  return new KeelError(error.code, error.message, { ...(details as object | undefined), runId }, { cause: error.cause ?? error });
}

/**
 * Background runs: each is an ordinary turn of its session, sent through SessionService, so
 * tools, approvals, retries and the session's queue behave exactly as in a chat. Its status
 * follows the session's events (db/runs.ts); this class submits, reads and cancels.
 */
export class RunService {
  constructor(private readonly deps: ApiDeps) {}

  async submit(caller: Caller, body: SubmitRunBody, requestId: string): Promise<{ run: RunRecord; created: boolean }> {
    const { deps } = this;
    const session = body.sessionId === undefined ? null : await deps.sessions.require(body.sessionId, caller);
    if (session && body.agentId !== undefined && body.agentId !== session.agent_id) {
      throw new KeelError('VALIDATION_ERROR', 'The request is invalid', [{ field: 'agentId', problem: "must be the session's agent, or left out" }]);
    }
    const agentId = session?.agent_id ?? body.agentId ?? deps.agents.defaultId;
    // Checked before a run exists: a request naming no real agent is bad input, not a run that failed.
    if (!session && !(await getRelease(deps.pool, agentId))) throw new KeelError('AGENT_NOT_FOUND', 'No such agent', { agentId });
    if (body.webhookUrl !== undefined) this.checkWebhookUrl(body.webhookUrl);
    const inputDigest = digestOf({ agentId, sessionId: session?.id ?? null, input: body.input, ...(body.budget === undefined ? {} : { budget: body.budget }) });
    const { run, created } = await claimRun(deps.pool, {
      id: traceIdOrRandom(),
      ownerId: caller.userId,
      agentId,
      sessionId: session?.id ?? null,
      inputDigest,
      input: body.input,
      ...(body.idempotencyKey === undefined ? {} : { idempotencyKey: body.idempotencyKey }),
      ...(body.webhookUrl === undefined ? {} : { webhookUrl: body.webhookUrl }),
      ...(body.budget === undefined ? {} : { budget: body.budget }),
      dedupeWindowMs: deps.settings.runs.dedupeWindowMs,
      leaseMs: deps.settings.runs.sendLeaseMs,
    });
    if (!created && run.input_digest !== inputDigest) {
      throw new KeelError('IDEMPOTENCY_KEY_REUSED', 'This idempotency key was used for another run (another input, agent or session); use a new key', { runId: run.id });
    }
    const answered = created ? await this.send(caller, run, body.input) : await this.repeat(caller, run, body.input);
    deps.log.info({ requestId, runId: run.id, traceId: run.id, sessionId: answered.session_id, created, status: answered.status }, created ? 'run submitted' : 'run repeated');
    return { run: answered, created };
  }

  /**
   * A repeat answers the existing run. If that run's message is not sent yet, its first request
   * is still sending it (wait), or died before it could (its lease ran out: send it here).
   */
  private async repeat(caller: Caller, found: RunRecord, input: string): Promise<RunRecord> {
    let run = found;
    for (;;) {
      if (run.status !== 'queued' || run.sent_at !== null) return run;
      const taken = await takeSendLease(this.deps.pool, run.id, this.deps.settings.runs.sendLeaseMs);
      if (taken) return this.send(caller, taken, input);
      await sleep(REPEAT_POLL_MS);
      run = (await findRun(this.deps.pool, run.id)) ?? run;
    }
  }

  /** Makes the run's session when it has none, then sends its input as the run's message (a resend is a no-op). */
  private async send(caller: Caller, claimed: RunRecord, input: string): Promise<RunRecord> {
    const { deps } = this;
    let run = claimed;
    // An earlier attempt named the message, so it may have stored and signalled it: it is sent
    // again as admitted then, never refused now (its turn may already be coming).
    const resend = claimed.message_id !== null;
    try {
      if (run.session_id === null) {
        const session = await deps.sessions.create(caller, { agentId: run.agent_id, title: `run ${run.id}` });
        run = await attachSession(deps.pool, run.id, session.id);
      }
      const sessionId = run.session_id!;
      const clientMessageId = runClientMessageId(run.id);
      if (run.message_id === null) run = await setMessageId(deps.pool, run.id, messageIdFor(sessionId, clientMessageId));
      // Cancelled (or ended by the worker's outbox) while this request was getting here: not sent.
      const current = await findRun(deps.pool, run.id);
      if (current && current.status !== 'queued') return current;
      // The run ID is the request ID of its turn: the worker's log lines for the turn carry it.
      await deps.sessions.sendMessage(caller, sessionId, input, clientMessageId, 'run', run.id, { budget: run.budget ?? undefined, resend });
      await markSent(deps.pool, run.id);
    } catch (raw) {
      const error = toKeelError(raw);
      if (REFUSALS.has(error.code)) await endQueuedRun(deps.pool, appendEvent, run.id, { status: 'error', code: error.code, message: error.message });
      else await releaseSendLease(deps.pool, run.id).catch(() => undefined);
      throw naming(error, run.id);
    }
    return (await findRun(deps.pool, run.id)) ?? run;
  }

  /**
   * http and https only (the schema); and no private, loopback or link-local address written
   * as an IP or `localhost` unless KEEL_WEBHOOK_ALLOW_HOSTS names the host. Names are resolved
   * and checked again at each delivery (a name can point anywhere later).
   */
  private checkWebhookUrl(text: string): void {
    const settings = this.deps.settings.webhooks;
    const refuse = (problem: string) => new KeelError('VALIDATION_ERROR', 'The request is invalid', [{ field: 'webhookUrl', problem }]);
    if (!settings.secret) throw refuse('webhooks are not configured on this server (KEEL_WEBHOOK_SECRET is not set)');
    const url = new URL(text);
    const port = url.port || (url.protocol === 'https:' ? '443' : '80');
    if ([url.hostname, `${url.hostname}:${port}`].some((name) => settings.allowHosts.includes(name.toLowerCase()))) return;
    const host = url.hostname.replace(/^\[(.*)\]$/, '$1').toLowerCase();
    if (host === 'localhost' || host.endsWith('.localhost')) throw refuse('must not name a loopback host');
    const rule = isIP(host) ? blockedAddressRule(host) : undefined;
    if (rule) throw refuse(`must not name a ${rule} address`);
  }

  /** The run, or RUN_NOT_FOUND, also when it is someone else's (admins see every run). */
  async get(caller: Caller, runId: string): Promise<RunRecord> {
    const run = await findRun(this.deps.pool, runId);
    if (!run || (!caller.isAdmin && run.owner_id !== caller.userId)) throw new KeelError('RUN_NOT_FOUND', 'No such run');
    return run;
  }

  async list(caller: Caller, query: { status?: RunStatus; limit: number }): Promise<RunRecord[]> {
    return listRuns(this.deps.pool, { ...(caller.isAdmin ? {} : { ownerId: caller.userId }), ...query });
  }

  /**
   * A running run's turn is cancelled through the session (as a chat's cancel is). A queued run
   * ends `cancelled` at once; if its message is already in the session's queue, its turn still
   * comes and is cancelled by the worker's outbox as soon as it starts.
   */
  async cancel(caller: Caller, runId: string, requestId: string): Promise<RunRecord> {
    const { deps } = this;
    let run = await this.get(caller, runId);
    // A run moves on while it is being cancelled (it starts, or ends): look again, a few times.
    for (let tries = 0; tries < 3; tries++) {
      if (isFinalRunStatus(run.status)) throw new KeelError('RUN_ALREADY_FINISHED', `The run has already ended (${run.status})`, { status: run.status });
      if (run.status === 'queued') {
        const cancelled = await endQueuedRun(deps.pool, appendEvent, run.id, { status: 'cancelled', cancelledBy: caller.userId });
        if (cancelled) {
          deps.log.info({ requestId, runId: run.id, sessionId: run.session_id, requestedBy: caller.userId }, 'queued run cancelled');
          return cancelled;
        }
      } else if (run.session_id !== null && run.turn !== null) {
        // Answers once the turn has ended: its turn.done has moved the run by then.
        const { cancelled } = await deps.sessions.cancelTurn(caller, run.session_id, { turn: run.turn, requestId });
        if (cancelled) return (await findRun(deps.pool, run.id)) ?? run;
      }
      run = (await findRun(deps.pool, run.id)) ?? run;
    }
    throw new KeelError('SERVICE_UNAVAILABLE', 'The run could not be cancelled now; try again');
  }
}
