import { ActivityFailure, ApplicationFailure, CancellationScope, CancelledFailure, condition, isCancellation, log, patched, workflowInfo } from '@temporalio/workflow';
import type { ErrorBody } from '../contracts/errors';
import type { ApprovalOutcome, BudgetOverrun, ToolResultStatus } from '../contracts/events';
import type { ApprovalDecision, QueuedMessage, SessionAgent } from '../contracts/session';
import type { ExecuteToolInput, MessageRef, PlannedToolCall, SettleInput, ToolOutcome, ToolPolicy } from '../contracts/turn';
import { OUTCOME_UNKNOWN_APPROVAL_NAME } from '../contracts/builtin-tools';
import { ESCALATE_TOOL, HANDOFF_TOOL } from '../contracts/builtin-tools';
import type { EscalationSource } from '../contracts/events';
import { routedSteps } from './routing';
import { toolActivities, type SessionActivityProxies } from './activities';
import type { SessionState, TurnOutcome } from './session-state';
import { FailureType } from '../contracts/failure-types';
import { BudgetRefused, StepLimitReached, turnErrorOf } from './turn-errors';
import { TurnBudget } from './budget';
import { workflowNow } from './clock';
import { reflectInSearchAttributes } from './search-attributes';

export interface TurnContext {
  state: SessionState;
  acts: SessionActivityProxies;
  message: QueuedMessage;
  /** The turn's last step number: steps are numbered across every agent that answers in the turn. */
  step: number;
  /** The turn's budget, shared by every agent that answers in it. */
  budget: TurnBudget | null;
  /** Set by a built-in tool call (or a tool's auth failure): what ends the agent's part of the turn. */
  ending: AgentEnd | null;
  /** An action of an ordered step was rejected or expired: the rest of the request is skipped. */
  refused: 'rejected' | 'expired' | null;
  /** Tool calls of this turn that have no result yet; each gets one before the turn ends. */
  open: Map<string, PlannedToolCall>;
  /** Calls whose approval decision is already stored: a later cancel must not record another. */
  decided: Set<string>;
  /** The first reply accepted the turn's claimed messages: a failure after it has none to accept. */
  acceptedByReply: boolean;
  /** Calls whose tool activity was scheduled: a close cannot say they never ran. */
  scheduled: Set<string>;
}

type Settlement = Omit<SettleInput, 'sessionId' | 'toolCallId' | 'modelCallId' | 'name' | 'turn' | 'position'>;

/** How an agent's part of a turn ended, when not with a plain reply. */
export type AgentEnd =
  | { kind: 'handoff'; to: string; reason: string; toolCallId: string }
  | { kind: 'escalate'; source: 'tool' | 'tool_auth'; reason: string };

/** What an agent's steps are told besides the agent: set in router sessions (and for agents that may escalate). */
export interface AgentOptions {
  member: boolean;
  /** Another agent answers after this one in the same turn. */
  continues: boolean;
  greet: boolean;
  handoffTo: SessionAgent[];
}

/** The built-in tools as policies: never approved, never run by a tool activity (the workflow carries them out). */
function builtinPolicy(name: string): ToolPolicy {
  return { name, permission: 'read', requiresApproval: false, approvalTtlMs: 60_000, timeoutMs: 1_000, maxAttempts: 1 };
}

/**
 * One turn: the model answers, asks for tools, gets their results (after approval where the
 * policy says so), and answers again, up to the agent's step limit. Cancelling the scope
 * (cancel, interrupting message, deletion) stops it at the next safe point and leaves a
 * conversation in which every tool call has a truthful result. Anything that is not a failure
 * of an activity, a cancellation or the step limit is a bug in workflow code: it is rethrown, so
 * the workflow task fails and waits for fixed code instead of ending the turn with a wrong code.
 */
export async function runTurn(state: SessionState, acts: SessionActivityProxies, scope: CancellationScope, message: QueuedMessage): Promise<TurnOutcome> {
  const ctx: TurnContext = {
    state,
    acts,
    message,
    open: new Map(),
    decided: new Set(),
    acceptedByReply: false,
    scheduled: new Set(),
    step: 0,
    budget: TurnBudget.of(state.config.agent.budget, message.budget),
    ending: null,
    refused: null,
  };
  const base = { sessionId: state.sessionId, turn: message.turn, replyTo: message.messageId, ...(message.requestId ? { requestId: message.requestId } : {}) };
  const accept = [...state.takeTurnEvents(), ...state.claimUnaccepted('turn')];
  try {
    await scope.run(() => turnSteps(ctx, accept));
    return 'completed';
  } catch (error) {
    if (isContractViolation(error)) throw asWorkflowBug(error);
    // A turn someone stopped ends as cancelled even when its activity reported a time-out first.
    const cancelled = isCancellation(error) || (state.turnStop !== null && error instanceof ActivityFailure);
    if (!cancelled && !(error instanceof ActivityFailure) && !(error instanceof StepLimitReached) && !(error instanceof BudgetRefused)) throw error;
    await CancellationScope.nonCancellable(async () => {
      // Each step is contained: a write that cannot be made (a non-retryable failure) must not
      // fail the whole session; the next steps and turns still run.
      // The reply may have failed before it accepted the messages it carried: accept them now.
      if (!ctx.acceptedByReply) await contained('accept the turn\'s messages', () => acceptMessages(state, acts, accept), () => state.releaseClaims(accept));
      await closeOpenCalls(ctx, cancelled ? 'cancelled' : 'failed');
      const stop = state.turnStop;
      const body: ErrorBody = cancelled ? { code: 'TURN_CANCELLED', message: cancelMessage(stop?.reason), recoverable: true } : turnErrorOf(error);
      await contained('record the turn\'s failure', () =>
        acts.recordTurnFailure({
          ...base,
          error: body,
          status: cancelled ? 'cancelled' : 'failed',
          agentVersion: state.config.agent.version,
          ...(cancelled && stop ? { cancelledBy: stop.by ?? stop.reason } : {}),
        }),
      );
      // The provider refused the deployment's credentials: no agent can answer, so a person must.
      if (!cancelled && body.code === 'LLM_AUTH_ERROR' && mayEscalate(state)) {
        await contained('escalate the conversation', () => escalateConversation(ctx, { source: 'llm_auth', reason: body.message, agent: state.config.router ? null : state.config.agent, endsTurn: false }));
      }
    });
    return cancelled ? 'cancelled' : 'failed';
  }
}

/** Runs a write; an activity failure is logged (and `onFailure` run) instead of ending the session. */
export async function contained(what: string, write: () => Promise<unknown>, onFailure?: () => void): Promise<void> {
  try {
    await write();
  } catch (error) {
    if (!(error instanceof ActivityFailure) || isContractViolation(error)) throw asWorkflowBug(error);
    log.error(`could not ${what}`, { error: error.cause?.message ?? error.message });
    onFailure?.();
  }
}

/** An activity refused its input: the workflow sent what the contract does not allow, a bug in workflow code. */
function isContractViolation(error: unknown): boolean {
  return error instanceof ActivityFailure && error.cause instanceof ApplicationFailure && error.cause.type === FailureType.activityInputInvalid;
}

/** A plain error fails the workflow task (retried until fixed code is deployed); a TemporalFailure would fail the session. */
function asWorkflowBug(error: unknown): unknown {
  return isContractViolation(error) ? new Error(`workflow bug: ${(error as ActivityFailure).cause?.message ?? 'an activity refused its input'}`) : error;
}

function cancelMessage(reason: 'cancel' | 'interrupt' | 'deleted' | undefined): string {
  if (reason === 'interrupt') return 'The turn was interrupted by a new message.';
  if (reason === 'deleted') return 'The turn was stopped because the session was deleted.';
  return 'The turn was cancelled.';
}

/** Writes the acceptance of claimed messages, then marks them accepted. */
export async function acceptMessages(state: SessionState, acts: SessionActivityProxies, claimed: MessageRef[]): Promise<void> {
  if (claimed.length === 0) return;
  await acts.acceptMessages({ sessionId: state.sessionId, messages: claimed });
  state.markAccepted(claimed);
}

/** A turn: held for the operator, routed to members (routers), or answered by the session's agent. */
async function turnSteps(ctx: TurnContext, accept: MessageRef[]): Promise<void> {
  const { state } = ctx;
  if (state.escalated) return holdForOperator(ctx, accept);
  if (state.config.router) return routedSteps(ctx, accept);
  const agent = state.config.agent;
  const end = await agentSteps(ctx, agent, accept, agent.escalate ? { member: false, continues: false, greet: false, handoffTo: [] } : null);
  if (end?.kind === 'escalate') await escalateConversation(ctx, { source: end.source, reason: end.reason, agent, endsTurn: true });
}

/** Whether a failure the agents cannot handle goes to a person: router sessions, and agents that may escalate. */
export function mayEscalate(state: SessionState): boolean {
  return state.config.router !== undefined || state.config.agent.escalate === true;
}

/** The conversation goes to a person (docs/escalation.md): the activity tells the user and posts the webhook. */
export async function escalateConversation(
  ctx: TurnContext,
  e: { source: EscalationSource; reason: string; agent: SessionAgent | null; endsTurn: boolean },
): Promise<void> {
  const { state, message } = ctx;
  // Decided here, before it is recorded: a hand-back that lands while the activity runs wins.
  const escalationId = state.escalate();
  await CancellationScope.nonCancellable(() =>
    ctx.acts.escalate({
      sessionId: state.sessionId,
      escalationId,
      turn: message.turn,
      replyTo: message.messageId,
      reason: e.reason.slice(0, 2_000),
      source: e.source,
      agent: e.agent ? { id: e.agent.id, version: e.agent.version } : null,
      endsTurn: e.endsTurn,
    }),
  ).catch((error: unknown) => {
    // Not recorded, so the user was never told: the agents keep the conversation.
    state.handBack();
    throw error;
  });
}

/** An escalated conversation: the message is accepted and the turn ends at once; the operator answers. */
async function holdForOperator(ctx: TurnContext, accept: MessageRef[]): Promise<void> {
  const { state, message } = ctx;
  await ctx.acts.closeTurn({ sessionId: state.sessionId, turn: message.turn, replyTo: message.messageId, accept, why: { kind: 'operator' } });
  state.markAccepted(accept);
  ctx.acceptedByReply = true;
}

/**
 * One agent's part of a turn: the model answers, asks for tools, gets their results, and answers
 * again, up to the agent's step limit. Ends with null on a reply that asks for nothing, or with
 * what a built-in tool (a handoff, an escalation) or a tool's auth failure decided. `options` is
 * null for a plain agent, which gets exactly the commands it always got.
 */
export async function agentSteps(ctx: TurnContext, agent: SessionAgent, accept: MessageRef[], options: AgentOptions | null): Promise<AgentEnd | null> {
  const { state, acts, message } = ctx;
  const budget = ctx.budget;
  const builtins = [
    ...(options?.handoffTo.length ? [builtinPolicy(HANDOFF_TOOL)] : []),
    ...(options && agent.escalate ? [builtinPolicy(ESCALATE_TOOL)] : []),
  ];
  for (let own = 1; own <= agent.maxStepsPerTurn; own++) {
    const step = ++ctx.step;
    const reply = await acts.streamReply({
      sessionId: state.sessionId,
      ...(message.requestId ? { requestId: message.requestId } : {}),
      turn: message.turn,
      step,
      replyTo: message.messageId,
      accept: step === 1 ? accept : [],
      agent: { id: agent.id, version: agent.version },
      model: agent.model,
      ...(agent.temperature === undefined ? {} : { temperature: agent.temperature }),
      ...(options?.member ? { member: true, sessionAgentVersion: state.config.agent.version } : {}),
      ...(options?.continues ? { continues: true } : {}),
      ...(options?.greet && own === 1 ? { greet: true } : {}),
      ...(options?.handoffTo.length ? { handoffTo: options.handoffTo.map((m) => ({ id: m.id, version: m.version })) } : {}),
      ...(options && agent.escalate ? { escalate: true } : {}),
    });
    if (step === 1) {
      ctx.state.markAccepted(accept);
      ctx.acceptedByReply = true;
    }
    if (options?.greet && own === 1) state.markGreeted(agent.id);
    state.recordReply(reply.usage);
    budget?.addReply(reply.usage);
    if (reply.toolCalls.length === 0) return null;
    // Not cancellable: the reply asking for these calls is stored, so the calls must be known
    // here (in ctx.open) before a cancel can land, or they would be left without results.
    const record = async () => {
      const planned = await CancellationScope.nonCancellable(() =>
        acts.recordToolCalls({
          sessionId: state.sessionId,
          turn: message.turn,
          step,
          agent: { id: agent.id, version: agent.version },
          calls: reply.toolCalls,
          policies: builtins.length ? [...agent.tools, ...builtins] : agent.tools,
          nowMs: workflowNow(),
        }),
      );
      for (const call of planned) ctx.open.set(call.toolCallId, call);
      return planned;
    };
    // Before the calls are recorded: their approvals' time-to-live starts only once the turn may go on.
    if (budget) {
      await staysWithinBudget(ctx, budget, reply.toolCalls.length, step, record);
      budget.addToolCalls(reply.toolCalls.length);
    }
    const planned = await record();
    if (agent.toolExecution === 'sequential') {
      await runInOrder(ctx, agent, planned, options);
    } else {
      // allSettled, not all: on a cancel, every sibling's in-flight write finishes before the
      // turn closes the calls still open, so none is settled twice.
      const results = await Promise.allSettled(planned.map((call) => runToolCall(ctx, agent, call, options)));
      const failed = results.find((r): r is PromiseRejectedResult => r.status === 'rejected');
      if (failed) throw failed.reason;
    }
    if (ctx.ending) {
      const end = ctx.ending;
      ctx.ending = null;
      return end;
    }
  }
  throw new StepLimitReached(agent.maxStepsPerTurn);
}

/**
 * Ordered actions: each call runs after the one before it. Every approval was announced with the
 * step, so each is registered at once (a decision may come for a later call first); a rejected
 * or expired one skips the rest, each with a `skipped` result the model reads.
 */
async function runInOrder(ctx: TurnContext, agent: SessionAgent, planned: PlannedToolCall[], options: AgentOptions | null): Promise<void> {
  for (const call of planned) {
    if (call.policy?.requiresApproval) ctx.state.awaitApproval({ toolCallId: call.toolCallId, name: call.name, digest: call.digest, expiresAt: call.expiresAt! });
  }
  for (const [index, call] of planned.entries()) {
    const outcome = await runToolCall(ctx, agent, call, options);
    if (outcome !== 'rejected' && outcome !== 'expired') continue;
    ctx.refused = outcome;
    for (const later of planned.slice(index + 1)) await skip(ctx, later);
    return;
  }
}

type ApprovalRecord = NonNullable<Settlement['approval']>;
const CANCELLED_APPROVAL: ApprovalRecord = { outcome: 'cancelled', decidedBy: null, feedback: null };

/** A decision taken before its call could use it, as the call's record keeps it. */
function approvalOf(decision: ApprovalDecision): ApprovalRecord {
  return { outcome: decision.approved ? 'approved' : 'rejected', decidedBy: decision.decidedBy, feedback: decision.feedback ?? null };
}

/** A call after a refused one: it never runs; a decision already taken for it is kept on record. */
async function skip(ctx: TurnContext, call: PlannedToolCall): Promise<void> {
  let approval: Settlement['approval'];
  if (call.policy?.requiresApproval) {
    const decision = ctx.state.decisionFor(call.toolCallId);
    approval = decision ? approvalOf(decision) : CANCELLED_APPROVAL;
    ctx.state.settleApproval(call.toolCallId, decision ? 'decided' : 'cancelled');
    ctx.decided.add(call.toolCallId);
  }
  await settle(ctx, call, { status: 'skipped', ...(approval ? { approval } : {}) });
}

/** The agent's approval time-to-live, for sessions started before it was carried (never in practice: it comes with the budget). */
const FALLBACK_APPROVAL_TTL_MS = 30 * 60_000;

/**
 * Before the tool calls of a step are recorded: a turn over its budget pauses for an approver,
 * through the approvals that tool calls use. Approved, it goes on with the limits raised; rejected or
 * expired, it ends with BUDGET_EXCEEDED (its open calls are closed as failed, as on any failure).
 */
async function staysWithinBudget(ctx: TurnContext, budget: TurnBudget, plannedToolCalls: number, step: number, recordCalls: () => Promise<unknown>): Promise<void> {
  const { state, acts, message } = ctx;
  const agent = state.config.agent;
  for (let over: BudgetOverrun[] = budget.overruns(plannedToolCalls); over.length > 0; over = budget.overruns(plannedToolCalls)) {
    const request = await CancellationScope.nonCancellable(() =>
      acts.requestBudgetApproval({
        sessionId: state.sessionId,
        turn: message.turn,
        step,
        pause: budget.nextPause(),
        overruns: over,
        agent: { id: agent.id, version: agent.version },
        ttlMs: agent.approvalTtlMs ?? FALLBACK_APPROVAL_TTL_MS,
        nowMs: workflowNow(),
      }),
    );
    const ids = { sessionId: state.sessionId, toolCallId: request.approvalId, modelCallId: request.approvalId, name: 'budget', turn: message.turn, position: 0 };
    let decision: Awaited<ReturnType<typeof awaitApproval>>;
    try {
      decision = await awaitApproval(ctx, { toolCallId: request.approvalId, name: 'budget', digest: request.digest, expiresAt: request.expiresAt });
    } catch (error) {
      if (isCancellation(error)) {
        await CancellationScope.nonCancellable(() => contained('close the budget approval', () => acts.settleToolCall({ ...ids, approval: { outcome: 'cancelled', decidedBy: null, feedback: null } })));
        // The stored reply asked for them: recorded, they are closed with the turn like any open call.
        await recordCalls();
      }
      throw error;
    }
    await CancellationScope.nonCancellable(() => acts.settleToolCall({ ...ids, approval: decision }));
    if (decision.outcome !== 'approved') {
      await recordCalls();
      throw new BudgetRefused(over.map((o) => o.limit), decision.outcome === 'rejected' ? 'rejected' : 'expired');
    }
    budget.raise(over);
  }
}

/** Runs one call: its approval first when the policy says so. Says how it ended when it did not run for want of one. */
async function runToolCall(ctx: TurnContext, agent: SessionAgent, call: PlannedToolCall, options: AgentOptions | null): Promise<'ran' | 'rejected' | 'expired'> {
  const policy = call.policy;
  if (!policy) {
    await settle(ctx, call, { status: 'failed', error: { code: 'TOOL_NOT_FOUND', message: `No tool named '${call.name}' is available to this agent.` } });
    return 'ran';
  }
  if (options && (call.name === HANDOFF_TOOL || call.name === ESCALATE_TOOL)) {
    await builtinCall(ctx, call, options);
    return 'ran';
  }
  if (policy.requiresApproval) {
    const outcome = await awaitApproval(ctx, call);
    if (outcome.outcome !== 'approved') {
      const status: ToolResultStatus = outcome.outcome;
      await settle(ctx, call, { status, approval: outcome });
      return outcome.outcome === 'rejected' || outcome.outcome === 'expired' ? outcome.outcome : 'ran';
    }
    ctx.decided.add(call.toolCallId);
    await CancellationScope.nonCancellable(() => ctx.acts.settleToolCall({ ...settleBase(ctx, call), approval: outcome }));
  }
  const authFailure = await execute(ctx, call, policy);
  // The reason reaches the customer's stream: the service's own answer stays in the call's record.
  if (authFailure && options && agent.escalate) ctx.ending ??= { kind: 'escalate', source: 'tool_auth', reason: `The service behind '${call.name}' refused our credentials.` };
  return 'ran';
}

/**
 * A handoff or an escalation asked for by the model: checked and recorded here (the result the
 * model reads), then carried out once the step's calls are done.
 */
async function builtinCall(ctx: TurnContext, call: PlannedToolCall, options: AgentOptions): Promise<void> {
  const args = parseJsonObject(call.arguments);
  const reason = typeof args?.reason === 'string' && args.reason.trim() ? args.reason.trim().slice(0, 1_000) : 'no reason given';
  if (call.name === ESCALATE_TOOL) {
    await settle(ctx, call, { status: 'succeeded', result: { escalated: true } });
    ctx.ending ??= { kind: 'escalate', source: 'tool', reason };
    return;
  }
  const to = typeof args?.to === 'string' ? args.to : '';
  const refusal =
    ctx.ending !== null
      ? 'Another handoff or escalation was already asked for in this step.'
      : !options.handoffTo.some((m) => m.id === to)
        ? `'${to}' is not an agent you can hand off to (${options.handoffTo.map((m) => m.id).join(', ')}).`
        : null;
  if (refusal) {
    await settle(ctx, call, { status: 'failed', error: { code: 'HANDOFF_REFUSED', message: refusal } });
    return;
  }
  await settle(ctx, call, { status: 'succeeded', result: { handedOffTo: to } });
  ctx.ending = { kind: 'handoff', to, reason, toolCallId: call.toolCallId };
}

function parseJsonObject(text: string): Record<string, unknown> | null {
  try {
    const value: unknown = JSON.parse(text);
    return typeof value === 'object' && value !== null && !Array.isArray(value) ? (value as Record<string, unknown>) : null;
  } catch {
    return null;
  }
}

/**
 * Runs the tool. The activity records its own outcome (succeeded, failed, or cancelled while
 * running) before it reports back, so the workflow never writes "did not run" for a tool that
 * ran. A write tool that has started ignores the cancel: it finishes and its real result is kept;
 * the cancel still stops any attempt that has not started (a retry waiting for its back-off).
 * A tool whose turn was cancelled before it started never starts.
 */
async function execute(ctx: TurnContext, call: PlannedToolCall, policy: ToolPolicy): Promise<string | null> {
  // Before this patch a write tool was started even when the cancel had already landed.
  if (CancellationScope.current().consideredCancelled) throw new CancelledFailure('the turn was cancelled before the tool started');
  const input = {
    ...settleBase(ctx, call),
    arguments: call.arguments,
    idempotencyKey: `${workflowInfo().workflowId}:${call.toolCallId}`,
    timeoutMs: policy.timeoutMs,
    ...(policy.idempotent === undefined ? {} : { idempotent: policy.idempotent }),
  };
  try {
    ctx.scheduled.add(call.toolCallId);
    let outcome: ToolOutcome | null = await toolActivities(policy).executeTool(input);
    // An earlier attempt may have acted and the tool cannot be repeated safely: a person decides.
    if (outcome.status === 'outcome_unknown') outcome = await resolveUnknownOutcome(ctx, call, policy, input);
    if (!outcome) return null;
    ctx.open.delete(call.toolCallId);
    return outcome.error?.code === 'TOOL_AUTH_ERROR' ? outcome.error.message : null;
  } catch (error) {
    // Cancelled while running: the activity has recorded it, and the later close is a no-op.
    // Cancelled before an attempt started: closeOpenCalls records it (an earlier attempt may have run).
    if (isCancellation(error)) throw error;
    const type = failureType(error);
    if (type === 'TOOL_AUTH_ERROR') {
      await settle(ctx, call, { status: 'failed', error: { code: 'TOOL_AUTH_ERROR', message: `The service behind '${call.name}' refused the credentials.` } });
      return failureMessage(error);
    }
    // The last attempt of a write failed: the ledger says whether it may have acted (its worker died, it timed out).
    if (policy.permission === 'write' && patched(EFFECT_LEDGER_PATCH)) {
      const found = await CancellationScope.nonCancellable(() => ctx.acts.reconcileEffect(settleBase(ctx, call)));
      if (found.kind === 'settled') {
        ctx.open.delete(call.toolCallId);
        return null;
      }
      if (found.kind === 'unknown') {
        const outcome = await resolveUnknownOutcome(ctx, call, policy, input);
        if (outcome) ctx.open.delete(call.toolCallId);
        return null;
      }
    }
    const code = timedOut(error) ? 'TOOL_TIMEOUT' : 'TOOL_EXECUTION_ERROR';
    await settle(ctx, call, { status: 'failed', error: { code, message: code === 'TOOL_TIMEOUT' ? `The tool '${call.name}' timed out.` : `The tool '${call.name}' failed.` } });
    return null;
  }
}

/** Before it, a write whose last attempt failed was closed as failed whatever the effect ledger held. */
const EFFECT_LEDGER_PATCH = 'effect-ledger-reconcile';

/**
 * A write whose outcome is unknown (docs/tools.md, "Effects"): an approval asks a person.
 * Approved, it is sent again with the same key, in one attempt (an approval allows one re-send:
 * if that one fails in a way that may have acted, a person is asked again); rejected, it is
 * marked done; expired or cancelled, it is closed as OUTCOME_UNKNOWN. It never runs on a guess.
 * Returns the outcome of a re-send, or null when the call was closed without one.
 */
async function resolveUnknownOutcome(ctx: TurnContext, call: PlannedToolCall, policy: ToolPolicy, input: ExecuteToolInput): Promise<ToolOutcome | null> {
  for (let round = 1; ; round++) {
    if (!(await askAboutUnknownOutcome(ctx, call, policy, round))) return null;
    try {
      // Approved: the re-send is not cancellable (a write that has started finishes).
      const outcome = await CancellationScope.nonCancellable(() => toolActivities(policy, { single: true }).executeTool({ ...input, force: true }));
      if (outcome.status !== 'outcome_unknown') return outcome;
    } catch (error) {
      if (isCancellation(error)) throw error;
      const found = await CancellationScope.nonCancellable(() => ctx.acts.reconcileEffect(settleBase(ctx, call)));
      if (found.kind === 'settled') return found.outcome;
      if (found.kind === 'none') throw error;
    }
  }
}

/** One round of asking: true when approved; else the call is closed (marked done, or unknown) and false. */
async function askAboutUnknownOutcome(ctx: TurnContext, call: PlannedToolCall, policy: ToolPolicy, round: number): Promise<boolean> {
  const { state, acts, message } = ctx;
  const agent = state.config.agent;
  const request = await CancellationScope.nonCancellable(() =>
    acts.requestEffectDecision({
      sessionId: state.sessionId,
      toolCallId: call.toolCallId,
      name: call.name,
      turn: message.turn,
      step: Math.max(1, Math.floor(call.position / 1000)),
      agent: { id: agent.id, version: agent.version },
      ttlMs: policy.approvalTtlMs,
      nowMs: workflowNow(),
      ...(round > 1 ? { round } : {}),
    }),
  );
  const ids = { sessionId: state.sessionId, toolCallId: request.approvalId, modelCallId: request.approvalId, name: OUTCOME_UNKNOWN_APPROVAL_NAME, turn: message.turn, position: 0 };
  const close = (decision: 'marked_done' | 'undecided', decidedBy: string | null) =>
    CancellationScope.nonCancellable(async () => {
      await acts.closeUnknownEffect({ ...settleBase(ctx, call), decision, decidedBy });
      ctx.open.delete(call.toolCallId);
    });
  let decision: Awaited<ReturnType<typeof awaitApproval>>;
  try {
    decision = await awaitApproval(ctx, { toolCallId: request.approvalId, name: OUTCOME_UNKNOWN_APPROVAL_NAME, digest: request.digest, expiresAt: request.expiresAt });
  } catch (error) {
    if (isCancellation(error)) {
      // The turn stopped while a person was asked: the call's result says its outcome is unknown, truthfully.
      await CancellationScope.nonCancellable(() => contained('close the unknown-outcome approval', () => acts.settleToolCall({ ...ids, approval: { outcome: 'cancelled', decidedBy: null, feedback: null } })));
      await contained('close the unknown-outcome call', () => close('undecided', null));
    }
    throw error;
  }
  await CancellationScope.nonCancellable(() => acts.settleToolCall({ ...ids, approval: decision }));
  if (decision.outcome === 'approved') return true;
  await close(decision.outcome === 'rejected' ? 'marked_done' : 'undecided', decision.decidedBy);
  return false;
}

function failureType(error: unknown): string | undefined {
  return (error as { cause?: { type?: string } }).cause?.type;
}

function failureMessage(error: unknown): string {
  return (error as { cause?: { message?: string } }).cause?.message ?? 'refused';
}

function timedOut(error: unknown): boolean {
  const cause = (error as { cause?: { name?: string; type?: string } }).cause;
  return cause?.name === 'TimeoutFailure' || cause?.type === 'TOOL_TIMEOUT';
}

async function awaitApproval(ctx: TurnContext, call: Pick<PlannedToolCall, 'toolCallId' | 'name' | 'digest' | 'expiresAt'>): Promise<{ outcome: ApprovalOutcome; decidedBy: string | null; feedback: string | null }> {
  const expiresAtMs = new Date(call.expiresAt!).getTime();
  ctx.state.awaitApproval({ toolCallId: call.toolCallId, name: call.name, digest: call.digest, expiresAt: call.expiresAt! });
  reflectInSearchAttributes(ctx.state, false);
  try {
    const decided = await condition(() => ctx.state.decisionFor(call.toolCallId) !== undefined, Math.max(1, expiresAtMs - workflowNow()));
    const decision = ctx.state.decisionFor(call.toolCallId);
    if (!decided || !decision) {
      ctx.state.settleApproval(call.toolCallId, 'expired');
      return { outcome: 'expired', decidedBy: null, feedback: null };
    }
    ctx.state.settleApproval(call.toolCallId, 'decided');
    return { outcome: decision.approved ? 'approved' : 'rejected', decidedBy: decision.decidedBy, feedback: decision.feedback ?? null };
  } catch (error) {
    if (isCancellation(error)) ctx.state.settleApproval(call.toolCallId, 'cancelled');
    throw error;
  } finally {
    reflectInSearchAttributes(ctx.state, true);
  }
}

function settleBase(ctx: TurnContext, call: PlannedToolCall) {
  return { sessionId: ctx.state.sessionId, toolCallId: call.toolCallId, modelCallId: call.modelCallId, name: call.name, turn: ctx.message.turn, position: call.position };
}

async function settle(ctx: TurnContext, call: PlannedToolCall, outcome: Settlement): Promise<void> {
  // A stored result is never half-known: a cancel waits for the write to finish.
  await CancellationScope.nonCancellable(() => ctx.acts.settleToolCall({ ...settleBase(ctx, call), ...outcome }));
  ctx.open.delete(call.toolCallId);
}

/**
 * Gives every call still open a result, so the next model request is well formed; each on its
 * own, so one that cannot be written does not leave the others without one.
 */
async function closeOpenCalls(ctx: TurnContext, why: 'cancelled' | 'failed'): Promise<void> {
  for (const call of [...ctx.open.values()]) {
    // An ordered step's later call may have been decided while an earlier one waited: that decision stands.
    const taken = ctx.decided.has(call.toolCallId) ? undefined : ctx.state.decisionFor(call.toolCallId);
    const pending = !ctx.decided.has(call.toolCallId) && (ctx.state.isAwaitingApproval(call.toolCallId) || (call.policy?.requiresApproval === true && why === 'cancelled'));
    ctx.state.settleApproval(call.toolCallId, taken ? 'decided' : 'cancelled');
    // A scheduled tool whose activity did not record its own outcome was stopped between attempts.
    await contained(`close tool call ${call.toolCallId}`, () => settle(ctx, call, {
      status: why === 'cancelled' ? 'cancelled' : 'failed',
      ...(ctx.scheduled.has(call.toolCallId) ? {} : { ran: false }),
      ...(taken ? { approval: approvalOf(taken) } : pending ? { approval: CANCELLED_APPROVAL } : {}),
      ...(why === 'failed' ? { error: { code: 'TOOL_EXECUTION_ERROR', message: 'The turn failed before this tool ran.' } } : {}),
    }));
  }
}
