import { createHash } from 'node:crypto';
import { ApplicationFailure } from '@temporalio/common';
import { Context } from '@temporalio/activity';
import type { DatabasePool, DatabaseTransactionConnection } from 'slonik';
import type { ApprovalOutcome, ToolResultStatus } from '../contracts/events';
import type { Metrics } from '../config/metrics';
import { appendEvent } from '../db/events';
import { insertMessage } from '../db/messages';
import { insertToolCall, recordApproval, recordToolStatus } from '../db/tool-calls';
import { ToolInputError, ToolRefusedError, ToolTimeoutError, type Tool, type ToolSettings } from '../tools';

export interface ModelToolCall {
  modelCallId: string;
  name: string;
  /** The model's JSON text, exactly as it sent it. */
  arguments: string;
}

export interface PlannedToolCall extends ModelToolCall {
  toolCallId: string;
  /** Where the tool's result message sits in the turn's conversation. */
  position: number;
  known: boolean;
  requiresApproval: boolean;
  digest: string;
  expiresAt: string | null;
  timeoutMs: number;
  maxAttempts: number;
}

export interface ToolOutcome {
  status: 'succeeded' | 'failed';
  result?: unknown;
  error?: { code: string; message: string };
}

export interface SettleInput {
  sessionId: string;
  toolCallId: string;
  modelCallId: string;
  name: string;
  turn: number;
  position: number;
  approval?: { outcome: ApprovalOutcome; decidedBy: string | null; feedback: string | null };
  status?: ToolResultStatus;
  result?: unknown;
  error?: { code: string; message: string };
}

/** Assistant messages sit at step * 1000 within a turn; their tool results right after. */
export const assistantPosition = (step: number) => step * 1000;

export function toolCallIdOf(sessionId: string, turn: number, step: number, modelCallId: string): string {
  return `tc_${createHash('sha256').update(`${sessionId}\0${turn}\0${step}\0${modelCallId}`).digest('hex').slice(0, 32)}`;
}

function canonical(value: unknown): unknown {
  if (Array.isArray(value)) return value.map(canonical);
  if (value && typeof value === 'object') {
    return Object.fromEntries(Object.keys(value).sort().map((k) => [k, canonical((value as Record<string, unknown>)[k])]));
  }
  return value;
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
  return createHash('sha256').update(JSON.stringify([name, canonical(parsedArguments(args)), agent.id, agent.version])).digest('hex');
}

/** The text the model reads as the tool's answer. */
function modelContent(input: SettleInput): string {
  const status = input.status;
  if (status === 'rejected') return `Rejected by the approver${input.approval?.feedback ? `: ${input.approval.feedback}` : ''}. The tool did not run.`;
  if (status === 'expired') return 'The approval request expired; the tool did not run. Offer the user to try again.';
  if (status === 'cancelled') return 'Cancelled: the tool did not run.';
  if (status === 'failed') return JSON.stringify({ error: input.error ?? { code: 'TOOL_EXECUTION_ERROR', message: 'failed' } });
  return JSON.stringify(input.result ?? null);
}

export function createToolActivities(deps: { pool: DatabasePool; tools: Readonly<Record<string, Tool>>; toolSettings: ToolSettings; metrics: Metrics }) {
  const { pool } = deps;

  async function recordToolCalls(input: {
    sessionId: string;
    turn: number;
    step: number;
    agent: { id: string; version: number };
    calls: ModelToolCall[];
    policies: { name: string; requiresApproval: boolean; approvalTtlMs: number }[];
    nowMs: number;
  }): Promise<PlannedToolCall[]> {
    const planned = input.calls.map((call, index): PlannedToolCall => {
      const policy = input.policies.find((p) => p.name === call.name);
      const tool = policy ? deps.tools[call.name] : undefined;
      const requiresApproval = Boolean(tool && policy?.requiresApproval);
      return {
        ...call,
        toolCallId: toolCallIdOf(input.sessionId, input.turn, input.step, call.modelCallId),
        position: assistantPosition(input.step) + index + 1,
        known: Boolean(tool),
        requiresApproval,
        digest: approvalDigest(call.name, call.arguments, input.agent),
        expiresAt: requiresApproval ? new Date(input.nowMs + policy!.approvalTtlMs).toISOString() : null,
        timeoutMs: tool?.definition.timeoutMs ?? 1000,
        maxAttempts: tool?.definition.retry.maxAttempts ?? 1,
      };
    });
    await pool.transaction(async (tx) => {
      for (const call of planned) {
        const args = parsedArguments(call.arguments);
        await insertToolCall(tx, {
          id: call.toolCallId,
          modelCallId: call.modelCallId,
          sessionId: input.sessionId,
          turn: input.turn,
          step: input.step,
          name: call.name,
          arguments: args,
          status: call.requiresApproval ? 'pending_approval' : 'requested',
          digest: call.digest,
          requiresApproval: call.requiresApproval,
          expiresAt: call.expiresAt,
        });
        const ids = { sessionId: input.sessionId };
        await appendEvent(tx, { ...ids, key: `toolcall:${call.toolCallId}`, type: 'tool.call', data: { toolCallId: call.toolCallId, name: call.name, arguments: args, turn: input.turn, step: input.step, requiresApproval: call.requiresApproval } });
        if (call.requiresApproval) {
          await appendEvent(tx, { ...ids, key: `approval:${call.toolCallId}`, type: 'approval.required', data: { toolCallId: call.toolCallId, name: call.name, arguments: args, digest: call.digest, expiresAt: call.expiresAt!, turn: input.turn } });
        }
      }
    });
    return planned;
  }

  async function settleIn(tx: DatabaseTransactionConnection, input: SettleInput): Promise<void> {
    if (input.approval) {
      await recordApproval(tx, input.toolCallId, input.approval);
      await appendEvent(tx, { sessionId: input.sessionId, key: `approved:${input.toolCallId}`, type: 'approval.resolved', data: { toolCallId: input.toolCallId, ...input.approval } });
    }
    if (!input.status) return;
    await recordToolStatus(tx, input.toolCallId, { status: input.status, result: input.result, ...(input.error ? { errorCode: input.error.code } : {}) });
    await insertMessage(tx, { id: `${input.toolCallId}-result`, sessionId: input.sessionId, turn: input.turn, position: input.position, role: 'tool', content: modelContent(input), toolCallId: input.modelCallId });
    await appendEvent(tx, {
      sessionId: input.sessionId,
      key: `toolresult:${input.toolCallId}`,
      type: 'tool.result',
      data: { toolCallId: input.toolCallId, name: input.name, status: input.status, ...(input.result === undefined ? {} : { result: input.result }), ...(input.error ? { error: input.error } : {}) },
    });
  }

  /** Records an approval decision and/or a result that needs no execution. Idempotent. */
  async function settleToolCall(input: SettleInput): Promise<void> {
    await pool.transaction((tx) => settleIn(tx, input));
    if (input.approval) deps.metrics.approvals.inc({ outcome: input.approval.outcome });
    if (input.status) deps.metrics.toolCalls.inc({ tool: deps.tools[input.name] ? input.name : 'unknown', status: input.status });
    if (input.error) deps.metrics.errors.inc({ code: input.error.code });
  }

  /**
   * Runs a tool. Its idempotency key is derived from the workflow and tool call IDs, so a
   * retry after a crash finds the effect already applied. Refusals and bad arguments are
   * results the model reads; anything else is thrown for Temporal to retry.
   */
  async function executeTool(input: Omit<SettleInput, 'approval' | 'status' | 'result' | 'error'> & { arguments: string; idempotencyKey: string }): Promise<ToolOutcome> {
    const tool = deps.tools[input.name];
    const ctx = Context.current();
    let outcome: ToolOutcome;
    try {
      if (!tool) throw ApplicationFailure.nonRetryable(`No tool named ${input.name}`, 'TOOL_NOT_FOUND');
      await recordToolStatus(pool, input.toolCallId, { status: 'running' });
      const args = tool.parse(parsedArguments(input.arguments));
      const timeout = AbortSignal.timeout(tool.definition.timeoutMs);
      const signal = AbortSignal.any([timeout, ctx.cancellationSignal]);
      const result = await tool.execute(args, { sessionId: input.sessionId, toolCallId: input.toolCallId, idempotencyKey: input.idempotencyKey, pool, signal, settings: deps.toolSettings });
      if (timeout.aborted) throw ApplicationFailure.retryable(`${input.name} timed out`, 'TOOL_TIMEOUT');
      outcome = { status: 'succeeded', result };
    } catch (error) {
      if (error instanceof ToolInputError) outcome = { status: 'failed', error: { code: 'TOOL_EXECUTION_ERROR', message: error.message } };
      else if (error instanceof ToolRefusedError) outcome = { status: 'failed', error: { code: 'TOOL_PERMISSION_DENIED', message: error.message } };
      else if (error instanceof ApplicationFailure) throw error;
      else if (error instanceof ToolTimeoutError || (error as Error).name === 'TimeoutError' || (error as Error).name === 'AbortError') throw ApplicationFailure.retryable(`${input.name} timed out`, 'TOOL_TIMEOUT');
      else throw ApplicationFailure.retryable(`${input.name} failed: ${(error as Error).message}`, 'TOOL_EXECUTION_ERROR');
    }
    await settleToolCall({ ...input, status: outcome.status, ...(outcome.result === undefined ? {} : { result: outcome.result }), ...(outcome.error ? { error: outcome.error } : {}) });
    return outcome;
  }

  return { recordToolCalls, settleToolCall, executeTool };
}

export type ToolActivities = ReturnType<typeof createToolActivities>;
