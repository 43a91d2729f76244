import { createHash } from 'node:crypto';
import { ApplicationFailure, CancelledFailure } from '@temporalio/common';
import { Context } from '@temporalio/activity';
import type { DatabasePool, DatabaseTransactionConnection } from 'slonik';
import { canonicalJson } from '../contracts/canonical';
import {
  assistantPosition,
  BUDGET_APPROVAL_NAME,
  ExecuteToolInput,
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
import { ToolAuthError, ToolInputError, ToolRefusedError, ToolTimeoutError, ToolValidationError, type Tool, type ToolSettings } from '../tools';
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
    const args = { overruns: input.overruns };
    const digest = approvalDigest(BUDGET_APPROVAL_NAME, JSON.stringify(args), input.agent);
    const expiresAt = new Date(input.nowMs + input.ttlMs).toISOString();
    await pool.transaction(async (tx) => {
      await insertToolCall(tx, {
        id: approvalId,
        modelCallId: approvalId,
        sessionId: input.sessionId,
        turn: input.turn,
        step: input.step,
        name: BUDGET_APPROVAL_NAME,
        arguments: args,
        status: 'pending_approval',
        digest,
        requiresApproval: true,
        expiresAt,
      });
      await appendEvent(tx, { sessionId: input.sessionId, key: `budget:${approvalId}`, type: 'budget.exceeded', data: { turn: input.turn, approvalId, overruns: input.overruns, expiresAt } });
      await appendEvent(tx, { sessionId: input.sessionId, key: `approval:${approvalId}`, type: 'approval.required', data: { toolCallId: approvalId, name: BUDGET_APPROVAL_NAME, arguments: args, digest, expiresAt, turn: input.turn } });
    });
    // The stored request is the one that stands (a retry on another day must not move its expiry).
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
    await recordToolStatus(pool, input.toolCallId, { status: 'running' });
    const beat = setInterval(() => ctx.heartbeat(), TOOL_HEARTBEAT_MS);
    const timeout = AbortSignal.timeout(input.timeoutMs);
    // A write that has started runs to completion whatever the turn does: only its time-out stops it.
    const cancellation = tool.definition.permission === 'write' ? undefined : ctx.cancellationSignal;
    let outcome: ToolOutcome;
    try {
      const args = tool.parse(parsedArguments(input.arguments));
      const signal = cancellation ? AbortSignal.any([timeout, cancellation]) : timeout;
      const result = await tool.execute(args, { sessionId: input.sessionId, toolCallId: input.toolCallId, idempotencyKey: input.idempotencyKey, pool, signal, settings: deps.toolSettings });
      outcome = { status: 'succeeded', result: storableJson(result) };
    } catch (error) {
      outcome = outcomeOfFailure(error, input.name, timeout, cancellation);
    } finally {
      clearInterval(beat);
    }
    await settleToolCall({ ...input, status: outcome.status, ran: true, ...(outcome.result === undefined ? {} : { result: outcome.result }), ...(outcome.error ? { error: outcome.error } : {}) });
    if (outcome.status === 'cancelled') throw new CancelledFailure(`${input.name} was cancelled while running`);
    if (outcome.error?.code === 'TOOL_AUTH_ERROR') throw ApplicationFailure.nonRetryable(outcome.error.message, 'TOOL_AUTH_ERROR');
    return outcome;
  }

  return classifyingPersistenceErrors({ recordToolCalls, settleToolCall, executeTool, requestBudgetApproval });
}

/**
 * A failure the model reads (bad arguments, a refusal, the service's 4xx), a cancel the workflow
 * asked for, or an error to retry (a ToolTransientError among them: 408, 429, 5xx). An abort by
 * a worker shutdown is not the workflow's cancel: it is retried.
 */
function outcomeOfFailure(error: unknown, name: string, timeout: AbortSignal, cancellation: AbortSignal | undefined): ToolOutcome {
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

function isWorkflowCancel(reason: unknown): boolean {
  return reason instanceof CancelledFailure && reason.message === 'CANCELLED';
}

export type ToolActivities = ReturnType<typeof createToolActivities>;
