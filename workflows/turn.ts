import { CancellationScope, condition, isCancellation, workflowInfo } from '@temporalio/workflow';
import type { PlannedToolCall, ToolOutcome } from '../activities/tool-activities';
import type { ErrorBody } from '../contracts/errors';
import type { ApprovalOutcome, ToolResultStatus } from '../contracts/events';
import type { PendingMessage } from '../contracts/session';
import { sessionActivities, toolActivities, type SessionActivityProxies } from './activities';
import type { SessionState } from './session-state';
import { turnErrorOf } from './turn-errors';
import { workflowNow } from './clock';
import { reflectInSearchAttributes } from './search-attributes';

interface TurnContext {
  state: SessionState;
  acts: SessionActivityProxies;
  message: PendingMessage;
  /** Tool calls of this turn that have no result yet; each gets one before the turn ends. */
  open: Map<string, PlannedToolCall>;
  /** Calls whose approval decision is already stored: a later cancel must not record another. */
  decided: Set<string>;
}

/**
 * One turn: the model answers, asks for tools, gets their results (after approval where the
 * policy says so), and answers again, up to the agent's step limit. Cancelling the scope
 * (cancel frame, interrupting message) stops it at the next safe point and leaves a
 * conversation in which every tool call has a result.
 */
export async function runTurn(state: SessionState, scope: CancellationScope, message: PendingMessage, unrecorded: PendingMessage[]): Promise<void> {
  const ctx: TurnContext = { state, acts: sessionActivities(state.config), message, open: new Map(), decided: new Set() };
  const base = { sessionId: state.sessionId, turn: message.turn, replyTo: message.messageId, ...(message.requestId ? { requestId: message.requestId } : {}) };
  try {
    await scope.run(() => steps(ctx, unrecorded));
  } catch (error) {
    await CancellationScope.nonCancellable(async () => {
      // The reply may have failed before it recorded the messages it carried: record them now.
      if (unrecorded.length > 0) await ctx.acts.recordUserMessages({ sessionId: state.sessionId, messages: unrecorded });
      const cancelled = isCancellation(error);
      await closeOpenCalls(ctx, cancelled ? 'cancelled' : 'failed');
      const body: ErrorBody = cancelled
        ? { code: 'TURN_CANCELLED', message: 'The turn was cancelled.', recoverable: true }
        : (error as { turnError?: ErrorBody }).turnError ?? turnErrorOf(error);
      await ctx.acts.recordTurnFailure({ ...base, error: body, status: cancelled ? 'cancelled' : 'failed' });
    });
  }
}

async function steps(ctx: TurnContext, unrecorded: PendingMessage[]): Promise<void> {
  const { state, acts, message } = ctx;
  const agent = state.config.agent;
  for (let step = 1; step <= agent.maxStepsPerTurn; step++) {
    const reply = await acts.streamReply({
      sessionId: state.sessionId,
      ...(message.requestId ? { requestId: message.requestId } : {}),
      turn: message.turn,
      step,
      replyTo: message.messageId,
      content: message.content,
      record: step === 1 ? unrecorded : [],
      model: agent.model.name ?? state.config.llm.model,
      ...(agent.model.temperature === undefined ? {} : { temperature: agent.model.temperature }),
      systemPrompt: agent.systemPrompt,
      tools: agent.tools.map(({ name, description, parameters }) => ({ name, description, parameters })),
      completesTurn: true,
    });
    state.recordReply(reply.usage);
    if (reply.toolCalls.length === 0) return;
    // Not cancellable: the reply asking for these calls is stored, so the calls must be known
    // here (in ctx.open) before a cancel can land, or they would be left without results.
    const planned = await CancellationScope.nonCancellable(() => acts.recordToolCalls({
      sessionId: state.sessionId,
      turn: message.turn,
      step,
      agent: { id: agent.id, version: agent.version },
      calls: reply.toolCalls,
      policies: agent.tools.map(({ name, requiresApproval, approvalTtlMs }) => ({ name, requiresApproval, approvalTtlMs })),
      nowMs: workflowNow(),
    }));
    for (const call of planned) ctx.open.set(call.toolCallId, call);
    // allSettled, not all: on a cancel, every sibling's in-flight write finishes before the
    // turn closes the calls still open, so none is settled twice.
    const results = await Promise.allSettled(planned.map((call) => runToolCall(ctx, call)));
    const failed = results.find((r): r is PromiseRejectedResult => r.status === 'rejected');
    if (failed) throw failed.reason;
  }
  throw Object.assign(new Error('step limit'), {
    turnError: { code: 'STEP_LIMIT_REACHED', message: `The agent used its ${agent.maxStepsPerTurn} steps for this turn without a final answer.`, recoverable: true },
  });
}

async function runToolCall(ctx: TurnContext, call: PlannedToolCall): Promise<void> {
  if (!call.known) {
    return settle(ctx, call, { status: 'failed', error: { code: 'TOOL_NOT_FOUND', message: `No tool named '${call.name}' is available to this agent.` } });
  }
  if (call.requiresApproval) {
    const outcome = await awaitApproval(ctx, call);
    if (outcome.outcome !== 'approved') {
      const status: ToolResultStatus = outcome.outcome;
      return settle(ctx, call, { status, approval: outcome });
    }
    ctx.decided.add(call.toolCallId);
    await CancellationScope.nonCancellable(() => ctx.acts.settleToolCall({ ...settleBase(ctx, call), approval: outcome }));
  }
  await execute(ctx, call);
  ctx.open.delete(call.toolCallId);
}

async function execute(ctx: TurnContext, call: PlannedToolCall): Promise<ToolOutcome> {
  try {
    return await toolActivities(call).executeTool({ ...settleBase(ctx, call), arguments: call.arguments, idempotencyKey: `${workflowInfo().workflowId}:${call.toolCallId}` });
  } catch (error) {
    if (isCancellation(error)) throw error;
    const code = timedOut(error) ? 'TOOL_TIMEOUT' : 'TOOL_EXECUTION_ERROR';
    const outcome: ToolOutcome = { status: 'failed', error: { code, message: code === 'TOOL_TIMEOUT' ? `The tool '${call.name}' timed out.` : `The tool '${call.name}' failed.` } };
    await settle(ctx, call, outcome);
    return outcome;
  }
}

function timedOut(error: unknown): boolean {
  const cause = (error as { cause?: { name?: string; type?: string } }).cause;
  return cause?.name === 'TimeoutFailure' || cause?.type === 'TOOL_TIMEOUT';
}

async function awaitApproval(ctx: TurnContext, call: PlannedToolCall): Promise<{ outcome: ApprovalOutcome; decidedBy: string | null; feedback: string | null }> {
  const expiresAtMs = new Date(call.expiresAt!).getTime();
  ctx.state.approvals.set(call.toolCallId, { toolCallId: call.toolCallId, name: call.name, digest: call.digest, expiresAt: call.expiresAt!, expiresAtMs });
  reflectInSearchAttributes(ctx.state, false);
  try {
    const decided = await condition(() => ctx.state.approvals.get(call.toolCallId)?.decision !== undefined, Math.max(1, expiresAtMs - workflowNow()));
    const decision = ctx.state.approvals.get(call.toolCallId)?.decision;
    if (!decided || !decision) {
      ctx.state.settle(call.toolCallId, 'expired');
      return { outcome: 'expired', decidedBy: null, feedback: null };
    }
    ctx.state.settle(call.toolCallId, 'decided');
    return { outcome: decision.approved ? 'approved' : 'rejected', decidedBy: decision.decidedBy, feedback: decision.feedback ?? null };
  } catch (error) {
    if (isCancellation(error)) ctx.state.settle(call.toolCallId, 'cancelled');
    throw error;
  } finally {
    reflectInSearchAttributes(ctx.state, true);
  }
}

function settleBase(ctx: TurnContext, call: PlannedToolCall) {
  return { sessionId: ctx.state.sessionId, toolCallId: call.toolCallId, modelCallId: call.modelCallId, name: call.name, turn: ctx.message.turn, position: call.position };
}

async function settle(ctx: TurnContext, call: PlannedToolCall, outcome: Omit<Parameters<SessionActivityProxies['settleToolCall']>[0], keyof ReturnType<typeof settleBase>>): Promise<void> {
  // A stored result is never half-known: a cancel waits for the write to finish.
  await CancellationScope.nonCancellable(() => ctx.acts.settleToolCall({ ...settleBase(ctx, call), ...outcome }));
  ctx.open.delete(call.toolCallId);
}

/** Gives every call still open a result, so the next model request is well formed. */
async function closeOpenCalls(ctx: TurnContext, why: 'cancelled' | 'failed'): Promise<void> {
  for (const call of [...ctx.open.values()]) {
    const pending = !ctx.decided.has(call.toolCallId) && (ctx.state.approvals.has(call.toolCallId) || (call.requiresApproval && why === 'cancelled'));
    ctx.state.settle(call.toolCallId, 'cancelled');
    await settle(ctx, call, {
      status: why === 'cancelled' ? 'cancelled' : 'failed',
      ...(pending ? { approval: { outcome: 'cancelled' as const, decidedBy: null, feedback: null } } : {}),
      ...(why === 'failed' ? { error: { code: 'TOOL_EXECUTION_ERROR', message: 'The turn failed before this tool ran.' } } : {}),
    });
  }
}
