import { randomUUID } from 'node:crypto';
import { Client, Connection, WorkflowNotFoundError, WorkflowUpdateFailedError, type SignalDefinition } from '@temporalio/client';
import { ApplicationFailure } from '@temporalio/common';
import type { AgentRegistry } from '../agents/registry';
import type { Caller } from './auth';
import type { RateLimiter } from './rate-limiter';
import { ErrorCode } from '../contracts/errors';
import { findToolCall, type ToolCallRow } from '../db/tool-calls';
import type { DatabasePool } from 'slonik';
import { KeelError, SESSION_EXPIRED_MESSAGE } from '../contracts/errors';
import { FailureType } from '../contracts/failure-types';
import { messageIdFor, sessionWorkflowId } from '../contracts/ids';
import { AgentIdKey, LastActivityKey, OwnerKey, PendingApprovalsKey, SessionStatusKey } from '../contracts/search-attributes';
import type { ApprovalDecision, ApprovalDecisionResult, CancelTurnResult, SessionStateView } from '../contracts/session';
import { cancelTurnUpdate, decideApprovalUpdate, endSessionSignal, sessionStateQuery } from '../contracts/workflow-messages';
import type { Metrics } from '../config/metrics';
import type { Logger } from '../config/logger';
import { temporalAddressOf, type Settings } from '../config/settings';
import { tracingClientInterceptors } from './tracing';
import { messageAccepted } from '../db/messages';
import { deliverUserMessage } from '../sessions/deliver-message';
import { turnOutcome } from '../db/events';
import { deleteSessionRow, findSession, insertSession, softDeleteSession, type SessionRow } from '../db/sessions';
import { sessionAgentOf, sessionRouterOf } from '../agents/session-agent';
import { AgentVersions } from '../agents/versions';
import { pickVersion } from '../agents/release-picker';
import { getRelease } from '../db/releases';
import type { Budget } from '../contracts/agents';
import { toolDefinitions } from '../tools';
import type { ToolDefinitionSource } from '../tools/catalog';
import type { sessionWorkflow } from '../workflows';

/** How long a send under the `reject` policy waits for a turn whose turn.done is written to end in the workflow too. */
const TURN_END_GRACE_MS = 2_000;
const TURN_END_POLL_MS = 25;


/** Session operations shared by REST, WebSocket and SSE: the one place that talks to Temporal. */
export class SessionService {
  private constructor(
    private readonly client: Client,
    private readonly connection: Connection,
    private readonly pool: DatabasePool,
    private readonly settings: Settings,
    private readonly agents: AgentRegistry,
    private readonly metrics: Metrics,
    private readonly limiter: RateLimiter,
    private readonly log: Logger,
    /** Stored agent versions, resolved against this deployment's tools. */
    readonly versions: AgentVersions,
  ) {}

  /**
   * Runs Temporal calls under KEEL_TEMPORAL_RPC_TIMEOUT_MS (retries included): an unreachable
   * Temporal is SERVICE_UNAVAILABLE in that time, not a request that hangs (docs/operations.md, "Outages").
   */
  private bounded<T>(fn: () => Promise<T>): Promise<T> {
    return this.connection.withDeadline(Date.now() + this.settings.temporalRpcTimeoutMs, fn);
  }

  /** For the release routes, which start watch workflows and move sessions. */
  get temporal(): Client {
    return this.client;
  }

  static async connect(settings: Settings, pool: DatabasePool, agents: AgentRegistry, metrics: Metrics, limiter: RateLimiter, log: Logger, tools?: ToolDefinitionSource): Promise<SessionService> {
    const connection = await Connection.connect({ address: temporalAddressOf(settings) });
    const client = new Client({ connection, namespace: settings.temporal.namespace, interceptors: tracingClientInterceptors(settings) });
    return new SessionService(client, connection, pool, settings, agents, metrics, limiter, log, new AgentVersions(pool, tools ?? toolDefinitions(settings.tools)));
  }

  async create(caller: Caller, input: { title?: string; agentId?: string }): Promise<SessionRow> {
    const id = randomUUID();
    const agentId = input.agentId ?? this.agents.defaultId;
    const release = await getRelease(this.pool, agentId);
    const agent = release ? await this.versions.get(agentId, pickVersion(release, id)) : null;
    if (!agent) throw new KeelError('AGENT_NOT_FOUND', 'No such agent', { agentId });
    const router = await sessionRouterOf(agent, (member) => this.memberVersion(member, id), this.settings.llm.model);
    const row = await insertSession(this.pool, { id, title: input.title ?? null, agentId, agentVersion: agent.version, ownerId: caller.userId });
    try {
      await this.bounded(() => this.client.workflow.start<typeof sessionWorkflow>('sessionWorkflow', {
        taskQueue: this.settings.temporal.taskQueue,
        workflowId: sessionWorkflowId(id),
        args: [{ sessionId: id, config: { ...this.settings.session, agent: sessionAgentOf(agent, this.settings.llm.model), ...(router ? { router } : {}) } }],
        typedSearchAttributes: [
          { key: SessionStatusKey, value: 'active' },
          { key: AgentIdKey, value: agentId },
          { key: OwnerKey, value: caller.userId },
          { key: PendingApprovalsKey, value: 0 },
          { key: LastActivityKey, value: new Date() },
        ],
        memo: { title: input.title ?? '', agentVersion: agent.version },
      }));
    } catch (error) {
      // A start can fail after the server took it (a timeout on the answer): keep the row then.
      if (await this.workflowExists(id)) return row;
      await deleteSessionRow(this.pool, id).catch(() => undefined);
      throw new KeelError('SERVICE_UNAVAILABLE', 'Could not start the session', undefined, { cause: error });
    }
    return row;
  }

  /** A router member at the version its release gives this session. */
  private async memberVersion(agentId: string, sessionId: string) {
    const release = await getRelease(this.pool, agentId);
    return release ? this.versions.get(agentId, pickVersion(release, sessionId)) : null;
  }

  private async workflowExists(sessionId: string): Promise<boolean> {
    try {
      await this.bounded(() => this.client.workflow.getHandle(sessionWorkflowId(sessionId)).describe());
      return true;
    } catch {
      return false;
    }
  }

  /** The session row, or SESSION_NOT_FOUND, also when it belongs to someone else (no existence leak). */
  async require(sessionId: string, caller: Caller): Promise<SessionRow> {
    const row = await findSession(this.pool, sessionId);
    if (!row || row.status === 'deleted' || (!caller.isAdmin && row.owner_id !== caller.userId)) throw new KeelError('SESSION_NOT_FOUND', 'No such session');
    return row;
  }

  /**
   * Stores the message, then tells the session workflow its ID (never its content). A resend of
   * a message already answered in a turn is not signalled again and costs nothing; a resend of
   * one stored but not taken (refused as busy, or still on its way) is signalled again.
   */
  async sendMessage(
    caller: Caller,
    sessionId: string,
    content: string,
    clientMessageId: string | undefined,
    channel: 'websocket' | 'rest' | 'chat' | 'run',
    requestId: string,
    opts: {
      /** A run's own turn limits, carried by the signal (IDs and decisions, never content). */
      budget?: Budget;
      /**
       * The message may already be stored and signalled by an earlier attempt (a run's repeat):
       * it was admitted then, so the busy check and the rate limit are not applied again (a
       * refusal now would refuse a message whose turn may already be coming).
       */
      resend?: boolean;
    } = {},
  ): Promise<{ messageId: string }> {
    const { budget, resend = false } = opts;
    const startedAt = performance.now();
    const row = await this.require(sessionId, caller);
    if (row.status === 'expired') throw expired();
    const messageId = messageIdFor(sessionId, clientMessageId);
    if (clientMessageId !== undefined && (await messageAccepted(this.pool, messageId))) return { messageId };
    if (!resend && (await this.policyOf(row)) === 'reject') await this.refuseWhenBusy(sessionId);
    const rate = resend ? null : this.limiter.messageToSession(sessionId);
    const checkedAt = performance.now();
    const stored = await this.bounded(() => deliverUserMessage(this.pool, this.client, { sessionId, messageId, content, requestId, ...(clientMessageId ? { clientMessageId } : {}), ...(budget ? { budget } : {}) }, rate)).catch(
      async (error: unknown) => {
        throw error instanceof KeelError ? error : await this.mapTemporalError(sessionId, error);
      },
    );
    if (typeof stored === 'object') throw this.limiter.messageRefused(stored.refused);
    this.metrics.messagesAccepted.inc({ channel });
    this.log.info({ requestId, sessionId, messageId, channel, checksMs: Math.round(checkedAt - startedAt), signalMs: Math.round(performance.now() - checkedAt) }, 'message accepted');
    return { messageId };
  }

  /** The busy policy of the agent version the session runs (not the file's current one). */
  private async policyOf(row: SessionRow): Promise<string | undefined> {
    if (!row.agent_id) return undefined;
    if (row.agent_version === null) return this.agents.get(row.agent_id)?.busyPolicy;
    return (await this.versions.get(row.agent_id, row.agent_version))?.busyPolicy;
  }

  /** The `reject` policy answers at once; the workflow enforces it too, for the sends that race this check. */
  private async refuseWhenBusy(sessionId: string): Promise<void> {
    let state = await this.state(sessionId);
    // A turn whose turn.done is written is over for the client, which may send at once; the
    // workflow learns it when the activity's completion reaches it, moments later. Wait for
    // that instead of refusing (and so the workflow, too, takes the message as idle).
    const deadline = Date.now() + TURN_END_GRACE_MS;
    while (state?.turnInProgress && state.queued.length === 0 && Date.now() < deadline && (await turnOutcome(this.pool, sessionId, state.turnInProgress.replyTo)).some((e) => e.type === 'turn.done')) {
      await new Promise((resolve) => setTimeout(resolve, TURN_END_POLL_MS));
      state = await this.state(sessionId);
    }
    if (state && (state.turnInProgress || state.queued.length > 0)) {
      throw new KeelError('SESSION_BUSY', 'The session is busy; send the message again when the current turn is done.');
    }
  }

  /**
   * Cancels turn `turn`, or the turn running now when it is left out. A turn that has already
   * ended is not cancelled, and neither is the next one: the answer says what happened.
   */
  async cancelTurn(caller: Caller, sessionId: string, opts: { turn?: number; requestId: string }): Promise<CancelTurnResult> {
    const row = await this.require(sessionId, caller);
    if (row.status === 'expired') throw expired();
    try {
      const result = await this.client.workflow
        .getHandle(sessionWorkflowId(sessionId))
        .executeUpdate(cancelTurnUpdate, { args: [{ requestedBy: caller.userId, ...(opts.turn === undefined ? {} : { turn: opts.turn }) }] });
      this.log.info({ requestId: opts.requestId, sessionId, requestedBy: caller.userId, ...result }, 'cancel requested');
      return result;
    } catch (error) {
      // The workflow's validator refuses a cancel that can change nothing (no turn, or not that one).
      const cause = error instanceof WorkflowUpdateFailedError ? error.cause : undefined;
      if (cause instanceof ApplicationFailure && cause.type === FailureType.nothingToCancel) return { cancelled: false, turn: opts.turn ?? null };
      throw await this.mapTemporalError(sessionId, error);
    }
  }

  /** Checks the stored lifecycle first (cheap, and right after the workflow ended), then asks the workflow. */
  async decideApproval(caller: Caller, sessionId: string, decision: ApprovalDecision): Promise<ApprovalDecisionResult> {
    await this.require(sessionId, caller);
    const call = await findToolCall(this.pool, decision.toolCallId);
    if (!call || call.session_id !== sessionId || !call.requires_approval) throw new KeelError('APPROVAL_NOT_FOUND', 'No such approval request');
    refuseSettled(call, decision);
    try {
      return await this.client.workflow.getHandle(sessionWorkflowId(sessionId)).executeUpdate(decideApprovalUpdate, { args: [decision] });
    } catch (error) {
      const cause = error instanceof WorkflowUpdateFailedError ? error.cause : undefined;
      if (cause instanceof ApplicationFailure && ErrorCode.safeParse(cause.type).success) {
        throw new KeelError(cause.type as ErrorCode, approvalMessages[cause.type as ErrorCode] ?? 'The decision was refused');
      }
      throw await this.mapTemporalError(sessionId, error);
    }
  }

  /**
   * Marks the session and its messages deleted, then tells its workflow to end: the turn stops,
   * pending approvals are cancelled and its search attributes say `deleted`. Afterwards the
   * session answers 404 everywhere.
   */
  async delete(caller: Caller, sessionId: string): Promise<void> {
    await this.require(sessionId, caller);
    if (!(await softDeleteSession(this.pool, sessionId, caller.userId))) throw new KeelError('SESSION_NOT_FOUND', 'No such session');
    try {
      await this.bounded(() => this.client.workflow.getHandle(sessionWorkflowId(sessionId)).signal(endSessionSignal, { reason: 'deleted', requestedBy: caller.userId }));
    } catch (error) {
      // Already ended (expired): nothing left to stop. Otherwise the deletion stands (the row is
      // gone for every reader) and the workflow ends at its idle time-out at the latest.
      if (!(error instanceof WorkflowNotFoundError)) this.log.error({ err: error, sessionId }, 'deleted session: its workflow could not be told to end');
    }
  }

  /** Signals the session's workflow (hand-back, escalate, external events), Temporal's failures mapped to the session codes. */
  async signal<Args extends unknown[]>(sessionId: string, def: SignalDefinition<Args>, ...args: Args): Promise<void> {
    try {
      await this.bounded(() => this.client.workflow.getHandle(sessionWorkflowId(sessionId)).signal(def, ...args));
    } catch (error) {
      throw await this.mapTemporalError(sessionId, error);
    }
  }

  async state(sessionId: string): Promise<SessionStateView | null> {
    try {
      return await this.bounded(() => this.client.workflow.getHandle(sessionWorkflowId(sessionId)).query(sessionStateQuery));
    } catch {
      return null;
    }
  }

  private async mapTemporalError(sessionId: string, error: unknown): Promise<KeelError> {
    if (error instanceof WorkflowNotFoundError) {
      const row = await findSession(this.pool, sessionId);
      if (row?.status === 'expired') return expired();
      return new KeelError('SESSION_NOT_FOUND', 'No such session', undefined, { cause: error });
    }
    return new KeelError('SERVICE_UNAVAILABLE', 'The session service is unavailable', undefined, { cause: error });
  }

  /** Whether a worker polled the session task queue within the last minute. */
  async checkWorkerPolling(): Promise<boolean> {
    try {
      const { pollers } = await this.bounded(() =>
        this.connection.workflowService.describeTaskQueue({
          namespace: this.settings.temporal.namespace,
          taskQueue: { name: this.settings.temporal.taskQueue },
        }),
      );
      const cutoff = Date.now() - 60_000;
      return (pollers ?? []).some((p) => Number(p.lastAccessTime?.seconds ?? 0) * 1000 >= cutoff);
    } catch {
      return false;
    }
  }

  async checkTemporal(): Promise<boolean> {
    try {
      await this.bounded(() => this.connection.workflowService.getSystemInfo({}));
      return true;
    } catch {
      return false;
    }
  }

  async close(): Promise<void> {
    await this.connection.close();
  }
}

const approvalMessages: Partial<Record<ErrorCode, string>> = {
  APPROVAL_NOT_FOUND: 'No such approval request',
  APPROVAL_ALREADY_DECIDED: 'This approval was already decided',
  APPROVAL_EXPIRED: 'This approval request has expired',
  APPROVAL_DIGEST_MISMATCH: 'The decision does not match the tool call awaiting approval',
};

/** Why a decision on this call would be refused now (expired, decided, another digest), in the order every channel reports it; nothing when it would count. */
export function refuseSettled(call: ToolCallRow, decision: { digest?: string | undefined }): void {
  const fail = (code: ErrorCode) => {
    throw new KeelError(code, approvalMessages[code]!);
  };
  if (call.approval_outcome === 'expired' || (call.status === 'pending_approval' && call.expires_at !== null && call.expires_at <= Date.now())) fail('APPROVAL_EXPIRED');
  if (call.approval_outcome !== null || call.status !== 'pending_approval') fail('APPROVAL_ALREADY_DECIDED');
  if (decision.digest !== undefined && decision.digest !== call.digest) fail('APPROVAL_DIGEST_MISMATCH');
}

function expired(): KeelError {
  return new KeelError('SESSION_EXPIRED', SESSION_EXPIRED_MESSAGE);
}
