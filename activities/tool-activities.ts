import { createHash } from 'node:crypto';
import { ApplicationFailure, CancelledFailure } from '@temporalio/common';
import { Context } from '@temporalio/activity';
import { sql, type DatabasePool, type DatabaseTransactionConnection } from 'slonik';
import { canonicalJson } from '../contracts/canonical';
import {
  assistantPosition,
  BUDGET_APPROVAL_NAME,
  CloseUnknownEffectInput,
  ExecuteToolInput,
  ReconcileEffectInput,
  type ReconcileEffectResult,
  OUTCOME_UNKNOWN_APPROVAL_NAME,
  RequestEffectDecisionInput,
  RecordToolCallsInput,
  RequestBudgetApprovalInput,
  SettleInput,
  type BudgetApprovalRequest,
  type PlannedToolCall,
  type ToolOutcome,
} from '../contracts/turn';
import type { Metrics } from '../config/metrics';
import type { ToolCatalog } from '../tools/catalog';
import { appendEvent } from '../db/events';
import { insertMessage } from '../db/messages';
import { findToolCall, insertToolCall, recordApproval, recordToolStatus } from '../db/tool-calls';
import { claimEffect, EFFECT_COLUMNS, EffectRow, recordEffect } from '../db/effects';
import { ToolAuthError, ToolInputError, ToolRefusedError, ToolTimeoutError, ToolTransientError, ToolValidationError, type Tool, type ToolSettings } from '../tools';
import { classifyingPersistenceErrors, parseActivityInput, storableJson } from './persistence-errors';

export function toolCallIdOf(sessionId: string, turn: number, step: number, modelCallId: string): string {
  return `tc_${createHash('sha256').update(`${sessionId}\0${turn}\0${step}\0${modelCallId}`).digest('hex').slice(0, 32)}`;
}

function parsedArguments(text: string): unknown {
  try {
    return JSON.parse(text) as unknown;
  } catch {
    return text;
  }
}

/** Binds an approval to this exact call: tool name, arguments and the policy (agent version) that asked for it. */
export function approvalDigest(name: string, args: string, agent: { id: string; version: number }): string {
  return createHash('sha256').update(canonicalJson([name, parsedArguments(args), agent.id, agent.version])).digest('hex');
}

/** The text the model reads as the tool's answer. */
function modelContent(input: SettleInput): string {
  const status = input.status;
  if (status === 'rejected') return `Rejected by the approver${input.approval?.feedback ? `: ${input.approval.feedback}` : ''}. The tool did not run.`;
  if (status === 'expired') return 'The approval request expired; the tool did not run. Offer the user to try again.';
  if (status === 'skipped') return 'Skipped: an earlier action of this request was rejected or its approval expired, so this one was not performed. Tell the user.';
  if (status === 'cancelled') {
    if (input.ran === true) return 'Cancelled while running: the tool was stopped before it finished, and its result is unknown.';
    if (input.ran === false) return 'Cancelled: the tool did not run.';
    return 'Cancelled between attempts: an earlier attempt ran and failed; no further attempt was made.';
  }
  if (status === 'failed') return JSON.stringify({ error: input.error ?? { code: 'TOOL_EXECUTION_ERROR', message: 'failed' } });
  return JSON.stringify(input.result ?? null);
}

/** How a run of the tool ended (an unknown outcome is decided before anything runs). */
type RanOutcome = ToolOutcome & { status: 'succeeded' | 'failed' | 'cancelled' };

/**
 * What the workflow is told of a call it ran: the status and error, never the result. The result
 * is stored (the tool message, the tool.result event) before this returns, so however large it is
 * it stays out of the workflow history (Temporal refuses payloads over a few MB).
 */
function forWorkflow(outcome: RanOutcome): ToolOutcome {
  return { status: outcome.status, ...(outcome.error ? { error: outcome.error } : {}) };
}

/** How often a running tool reports life (the workflow's heartbeat time-out is a few of these). */
const TOOL_HEARTBEAT_MS = 1_000;

export function createToolActivities(deps: {
  pool: DatabasePool;
  tools: Readonly<Record<string, Tool>>;
  /** Loads catalog tools (MCP, OpenAPI) this process has not seen yet into `tools`. */
  catalog?: Pick<ToolCatalog, 'ensure'>;
  toolSettings: ToolSettings;
  metrics: Metrics;
}) {
  const { pool } = deps;

  /** Stores the model's calls with the policy the session resolved for each; nothing is re-derived here. */
  async function recordToolCalls(raw: RecordToolCallsInput): Promise<PlannedToolCall[]> {
    const input = parseActivityInput(RecordToolCallsInput, raw);
    const planned = input.calls.map((call, index): PlannedToolCall => {
      const policy = input.policies.find((p) => p.name === call.name) ?? null;
      return {
        ...call,
        toolCallId: toolCallIdOf(input.sessionId, input.turn, input.step, call.modelCallId),
        position: assistantPosition(input.step) + index + 1,
        policy,
        digest: approvalDigest(call.name, call.arguments, input.agent),
        expiresAt: policy?.requiresApproval ? new Date(input.nowMs + policy.approvalTtlMs).toISOString() : null,
      };
    });
    await pool.transaction(async (tx) => {
      for (const call of planned) {
        const args = parsedArguments(call.arguments);
        const requiresApproval = call.policy?.requiresApproval === true;
        await insertToolCall(tx, {
          id: call.toolCallId,
          modelCallId: call.modelCallId,
          sessionId: input.sessionId,
          turn: input.turn,
          step: input.step,
          name: call.name,
          arguments: args,
          status: requiresApproval ? 'pending_approval' : 'requested',
          digest: call.digest,
          requiresApproval,
          expiresAt: call.expiresAt,
          agentVersion: input.agent.version,
        });
        const ids = { sessionId: input.sessionId };
        await appendEvent(tx, { ...ids, key: `toolcall:${call.toolCallId}`, type: 'tool.call', data: { toolCallId: call.toolCallId, name: call.name, arguments: args, turn: input.turn, step: input.step, requiresApproval } });
        if (requiresApproval) {
          await appendEvent(tx, { ...ids, key: `approval:${call.toolCallId}`, type: 'approval.required', data: { toolCallId: call.toolCallId, name: call.name, arguments: args, digest: call.digest, expiresAt: call.expiresAt!, turn: input.turn } });
        }
      }
    });
    return planned;
  }

  async function settleIn(tx: DatabaseTransactionConnection, input: SettleInput): Promise<void> {
    if (input.approval) {
      await recordApproval(tx, input.toolCallId, input.approval);
      await appendEvent(tx, { sessionId: input.sessionId, key: `approved:${input.toolCallId}`, type: 'approval.resolved', data: { toolCallId: input.toolCallId, turn: input.turn, ...input.approval } });
    }
    if (!input.status) return;
    // The first result recorded is the one that stands: a later close of the same call is a no-op.
    await recordToolStatus(tx, input.toolCallId, { status: input.status, result: input.result, ...(input.error ? { errorCode: input.error.code } : {}) });
    await insertMessage(tx, { id: `${input.toolCallId}-result`, sessionId: input.sessionId, turn: input.turn, position: input.position, role: 'tool', content: modelContent(input), toolCallId: input.modelCallId });
    await appendEvent(tx, {
      sessionId: input.sessionId,
      key: `toolresult:${input.toolCallId}`,
      type: 'tool.result',
      data: {
        toolCallId: input.toolCallId,
        name: input.name,
        status: input.status,
        ...(input.result === undefined ? {} : { result: input.result }),
        ...(input.error ? { error: input.error } : {}),
        ...(input.status === 'cancelled' && input.ran !== undefined ? { ran: input.ran } : {}),
      },
    });
  }

  /**
   * Pauses a turn over its budget: an approval request in the approvals table (so the approvals
   * API, its list and the WebSocket decide it as any other), a budget.exceeded event and the
   * approval.required that names it. The ID comes from the session, turn and pause number, so a
   * retry writes nothing twice and returns the same request.
   */
  async function requestBudgetApproval(raw: RequestBudgetApprovalInput): Promise<BudgetApprovalRequest> {
    const input = parseActivityInput(RequestBudgetApprovalInput, raw);
    const approvalId = `bud_${createHash('sha256').update(`${input.sessionId}\0${input.turn}\0${input.pause}`).digest('hex').slice(0, 32)}`;
    return requestApproval(input, approvalId, BUDGET_APPROVAL_NAME, { overruns: input.overruns }, (tx, expiresAt) =>
      appendEvent(tx, { sessionId: input.sessionId, key: `budget:${approvalId}`, type: 'budget.exceeded', data: { turn: input.turn, approvalId, overruns: input.overruns, expiresAt } }),
    );
  }

  /**
   * An approval that is not a tool call's own (a budget's, an unknown outcome's): a row in the
   * approvals table, so the approvals API, its list and the WebSocket decide it as any other, and
   * its approval.required (after `announce`, when given). Keyed by `approvalId`: a retry writes
   * nothing twice and returns the stored request (a retry on another day must not move its expiry).
   */
  async function requestApproval(
    input: { sessionId: string; turn: number; step: number; agent: { id: string; version: number }; ttlMs: number; nowMs: number },
    approvalId: string,
    name: string,
    args: Record<string, unknown>,
    announce?: (tx: DatabaseTransactionConnection, expiresAt: string) => Promise<unknown>,
  ): Promise<BudgetApprovalRequest> {
    const digest = approvalDigest(name, JSON.stringify(args), input.agent);
    const expiresAt = new Date(input.nowMs + input.ttlMs).toISOString();
    await pool.transaction(async (tx) => {
      await insertToolCall(tx, { id: approvalId, modelCallId: approvalId, sessionId: input.sessionId, turn: input.turn, step: input.step, name, arguments: args, status: 'pending_approval', digest, requiresApproval: true, expiresAt });
      await announce?.(tx, expiresAt);
      await appendEvent(tx, { sessionId: input.sessionId, key: `approval:${approvalId}`, type: 'approval.required', data: { toolCallId: approvalId, name, arguments: args, digest, expiresAt, turn: input.turn } });
    });
    const stored = await findToolCall(pool, approvalId);
    return { approvalId, digest: stored?.digest ?? digest, expiresAt: stored?.expires_at ? new Date(stored.expires_at).toISOString() : expiresAt };
  }

  /** Records an approval decision and/or a result. Idempotent. */
  async function settleToolCall(raw: SettleInput): Promise<void> {
    const input = parseActivityInput(SettleInput, raw);
    await pool.transaction((tx) => settleIn(tx, input));
    if (input.approval) deps.metrics.approvals.inc({ outcome: input.approval.outcome });
    if (input.status) deps.metrics.toolCalls.inc({ tool: deps.tools[input.name] ? input.name : 'unknown', status: input.status });
    if (input.error) deps.metrics.errors.inc({ code: input.error.code });
  }

  /**
   * Runs a tool and records what happened before reporting back. Its idempotency key comes from
   * the workflow and tool call IDs, so a retry after a crash finds the effect already applied.
   * It heartbeats, so a cancel reaches it: a read tool's signal is aborted, and a tool that stops
   * is recorded as cancelled while running; one that finishes anyway keeps its real result.
   * A write tool is not told of a cancel. Refusals, bad arguments and a service's refusal of
   * the request (TOOL_VALIDATION_ERROR) are results the model reads. A service's refusal of the
   * credentials (TOOL_AUTH_ERROR) is recorded, then thrown as a non-retryable failure of that
   * type, so the workflow can escalate. Other failures are thrown for Temporal to retry, and
   * recorded by the workflow once the attempts run out.
   */
  async function executeTool(raw: ExecuteToolInput): Promise<ToolOutcome> {
    const input = parseActivityInput(ExecuteToolInput, raw);
    await deps.catalog?.ensure([input.name]);
    const tool = deps.tools[input.name];
    const ctx = Context.current();
    if (!tool) throw ApplicationFailure.nonRetryable(`No tool named ${input.name}`, 'TOOL_NOT_FOUND');
    // Writes go through the effect ledger: an intent before, a receipt after (db/effects.ts).
    const write = tool.definition.permission === 'write';
    let attempt: number | undefined;
    if (write) {
      const claim = await pool.transaction((tx) =>
        claimEffect(tx, { toolCallId: input.toolCallId, sessionId: input.sessionId, name: input.name, idempotencyKey: input.idempotencyKey, idempotent: input.idempotent ?? tool.definition.idempotent === true, force: input.force === true }),
      );
      if (claim.kind === 'unknown') return { status: 'outcome_unknown' };
      if (claim.kind === 'receipt') return settleFromReceipt(input, claim.row);
      attempt = claim.attempt;
    }
    await recordToolStatus(pool, input.toolCallId, { status: 'running' });
    const beat = setInterval(() => ctx.heartbeat(), TOOL_HEARTBEAT_MS);
    const timeout = AbortSignal.timeout(input.timeoutMs);
    // A write that has started runs to completion whatever the turn does: only its time-out stops it.
    const cancellation = tool.definition.permission === 'write' ? undefined : ctx.cancellationSignal;
    let outcome: RanOutcome;
    try {
      const args = tool.parse(parsedArguments(input.arguments));
      const signal = cancellation ? AbortSignal.any([timeout, cancellation]) : timeout;
      const result = await tool.execute(args, { sessionId: input.sessionId, toolCallId: input.toolCallId, idempotencyKey: input.idempotencyKey, pool, signal, settings: deps.toolSettings });
      outcome = { status: 'succeeded', result: storableJson(result) };
    } catch (error) {
      try {
        outcome = outcomeOfFailure(error, input.name, timeout, cancellation);
      } catch (thrown) {
        // Retried by Temporal: the next attempt may run again only if this one cannot have acted.
        if (write) await recordEffect(pool, input.toolCallId, { status: mayHaveActed(error) ? 'unknown' : 'retryable', errorCode: (thrown as ApplicationFailure).type ?? 'TOOL_EXECUTION_ERROR' }, attempt);
        throw thrown;
      }
    } finally {
      clearInterval(beat);
    }
    if (write && outcome.status !== 'cancelled') {
      await recordEffect(pool, input.toolCallId, { status: outcome.status === 'succeeded' ? 'done' : 'failed', ...(outcome.result === undefined ? {} : { result: outcome.result }), ...(outcome.error ? { errorCode: outcome.error.code, errorMessage: outcome.error.message } : {}) }, attempt);
    }
    await settleToolCall({ ...input, status: outcome.status, ran: true, ...(outcome.result === undefined ? {} : { result: outcome.result }), ...(outcome.error ? { error: outcome.error } : {}) });
    if (outcome.status === 'cancelled') throw new CancelledFailure(`${input.name} was cancelled while running`);
    if (outcome.error?.code === 'TOOL_AUTH_ERROR') throw ApplicationFailure.nonRetryable(outcome.error.message, 'TOOL_AUTH_ERROR');
    return forWorkflow(outcome);
  }

  /** An earlier attempt's receipt: its result (settled again, in case it died before that) is the call's. */
  async function settleFromReceipt(input: ExecuteToolInput, row: EffectRow): Promise<ToolOutcome> {
    const outcome: RanOutcome =
      row.status === 'failed'
        ? { status: 'failed', error: { code: row.error_code ?? 'TOOL_EXECUTION_ERROR', message: row.error_message ?? `The tool '${input.name}' failed.` } }
        : { status: 'succeeded', result: row.result };
    await settleToolCall({ ...input, status: outcome.status, ran: true, ...(outcome.result === undefined ? {} : { result: outcome.result }), ...(outcome.error ? { error: outcome.error } : {}) });
    return forWorkflow(outcome);
  }

  /**
   * A write whose outcome is unknown waits for a person (docs/tools.md, "Effects"): an approval
   * request — approve sends it again with the same key, reject marks it done — in the approvals
   * API like any other, keyed by the call so a retry asks once.
   */
  async function requestEffectDecision(raw: RequestEffectDecisionInput): Promise<BudgetApprovalRequest> {
    const input = parseActivityInput(RequestEffectDecisionInput, raw);
    const round = input.round === undefined ? '' : `\0${input.round}`;
    const approvalId = `eff_${createHash('sha256').update(`${input.sessionId}\0${input.toolCallId}${round}`).digest('hex').slice(0, 32)}`;
    const question = 'The outcome of this call is unknown (its worker stopped after sending it). Approve to send it again, reject to mark it done.';
    return requestApproval(input, approvalId, OUTCOME_UNKNOWN_APPROVAL_NAME, { toolCallId: input.toolCallId, tool: input.name, question });
  }

  /**
   * A write's last attempt failed: what the ledger holds decides. A receipt (the tool answered,
   * then its worker died) is settled as the result; an intent or an unknown outcome (it may have
   * acted) is marked unknown for a person; anything else (it cannot have acted) leaves the
   * failure as it is.
   */
  async function reconcileEffect(raw: ReconcileEffectInput): Promise<ReconcileEffectResult> {
    const input = parseActivityInput(ReconcileEffectInput, raw);
    const row = await pool.maybeOne(sql.type(EffectRow)`SELECT ${EFFECT_COLUMNS} FROM effects WHERE tool_call_id = ${input.toolCallId}`);
    if (!row) return { kind: 'none' };
    if (row.status === 'done' || row.status === 'failed' || row.status === 'marked_done') {
      return { kind: 'settled', outcome: await settleFromReceipt({ ...input, arguments: '{}', idempotencyKey: row.idempotency_key, timeoutMs: 1 }, row) };
    }
    if (row.status === 'intent' || row.status === 'unknown') {
      await recordEffect(pool, input.toolCallId, { status: 'unknown' });
      return { kind: 'unknown' };
    }
    return { kind: 'none' };
  }

  /** A person said the call happened (or no one decided): the ledger and the call's result say so. */
  async function closeUnknownEffect(raw: CloseUnknownEffectInput): Promise<void> {
    const input = parseActivityInput(CloseUnknownEffectInput, raw);
    const done = input.decision === 'marked_done';
    await pool.transaction(async (tx) => {
      await recordEffect(tx, input.toolCallId, done ? { status: 'marked_done', decidedBy: input.decidedBy ?? 'unknown' } : { status: 'failed', errorCode: 'OUTCOME_UNKNOWN' });
      await settleIn(tx, {
        sessionId: input.sessionId,
        toolCallId: input.toolCallId,
        modelCallId: input.modelCallId,
        name: input.name,
        turn: input.turn,
        position: input.position,
        ...(done
          ? { status: 'succeeded' as const, result: { markedDoneBy: input.decidedBy } }
          : { status: 'failed' as const, error: { code: 'OUTCOME_UNKNOWN', message: `Whether '${input.name}' took effect is unknown, and no one decided in time. It was not sent again.` } }),
      });
    });
  }

  return classifyingPersistenceErrors({ recordToolCalls, settleToolCall, executeTool, requestBudgetApproval, requestEffectDecision, closeUnknownEffect, reconcileEffect });
}

/**
 * A failure the model reads (bad arguments, a refusal, the service's 4xx), a cancel the workflow
 * asked for, or an error to retry (a ToolTransientError among them: 408, 429, 5xx). An abort by
 * a worker shutdown is not the workflow's cancel: it is retried.
 */
function outcomeOfFailure(error: unknown, name: string, timeout: AbortSignal, cancellation: AbortSignal | undefined): RanOutcome {
  if (error instanceof ToolInputError) return { status: 'failed', error: { code: 'TOOL_EXECUTION_ERROR', message: error.message } };
  if (error instanceof ToolRefusedError) return { status: 'failed', error: { code: 'TOOL_PERMISSION_DENIED', message: error.message } };
  if (error instanceof ToolValidationError) return { status: 'failed', error: { code: 'TOOL_VALIDATION_ERROR', message: error.message } };
  if (error instanceof ToolAuthError) return { status: 'failed', error: { code: 'TOOL_AUTH_ERROR', message: error.message } };
  if (cancellation?.aborted && isWorkflowCancel(cancellation.reason)) return { status: 'cancelled' };
  if (error instanceof ApplicationFailure) throw error;
  if (timeout.aborted || error instanceof ToolTimeoutError) throw ApplicationFailure.retryable(`${name} timed out`, 'TOOL_TIMEOUT');
  if (cancellation?.aborted) throw ApplicationFailure.retryable(`${name} was interrupted (${String((cancellation.reason as Error | undefined)?.message ?? 'worker stopping')})`, 'TOOL_INTERRUPTED');
  throw ApplicationFailure.retryable(`${name} failed: ${(error as Error).message}`, 'TOOL_EXECUTION_ERROR');
}

/** A failure after which the tool may have acted: it timed out or the worker stopped it mid-way. A service's 408/429/5xx answer says it did not. */
function mayHaveActed(error: unknown): boolean {
  if (error instanceof ToolTransientError) return !error.notActed;
  // Nothing was sent: the connection was never made.
  const code = (error as { code?: unknown; cause?: { code?: unknown } }).code ?? (error as { cause?: { code?: unknown } }).cause?.code;
  return !(code === 'ECONNREFUSED' || code === 'ENOTFOUND' || code === 'EAI_AGAIN');
}

function isWorkflowCancel(reason: unknown): boolean {
  return reason instanceof CancelledFailure && reason.message === 'CANCELLED';
}

export type ToolActivities = ReturnType<typeof createToolActivities>;
