import { allHandlersFinished, ApplicationFailure, CancellationScope, condition, makeContinueAsNewFunc, patched, setHandler, workflowInfo } from '@temporalio/workflow';
import type { SessionWorkflowInput, SessionWorkflowResult } from '../contracts/session';
import {
  cancelTurnSignal,
  cancelTurnUpdate,
  decideApprovalUpdate,
  endSessionSignal,
  escalateSignal,
  externalEventSignal,
  handBackSignal,
  sessionStateQuery,
  switchAgentSignal,
  userMessageSignal,
} from '../contracts/workflow-messages';
import { FailureType } from '../contracts/failure-types';
import { sessionActivities } from './activities';
import { workflowNow } from './clock';
import { IdleClock } from './idle-clock';
import { SessionState } from './session-state';
import { reflectInSearchAttributes } from './search-attributes';
import { acceptMessages, contained, runTurn } from './turn';
import { MessageTraces } from './trace-context';

const APPROVAL_REPLAY_GRACE_MS = 10_000;
/** Before it, every wait between turns started its own idle timer; after it, one IdleClock timer spans the turns. */
const IDLE_CLOCK_PATCH = 'idle-clock';

/**
 * One chat session. Messages arrive by signal as IDs (their content is already in Postgres), are
 * accepted in the event log by a background loop while a turn runs, and are answered one turn
 * at a time, in order.
 */
export async function sessionWorkflow(input: SessionWorkflowInput): Promise<SessionWorkflowResult> {
  const state = SessionState.fromInput(input);
  const acts = sessionActivities(state.config);
  let turnScope: CancellationScope | null = null;
  const traces = new MessageTraces();
  const refuse = (problem: string) => ApplicationFailure.create({ type: problem, message: problem.toLowerCase().replace(/_/g, ' '), nonRetryable: true });

  setHandler(userMessageSignal, (m) => {
    const interrupting = state.config.agent.busyPolicy === 'interrupt' && state.inTurn();
    const taken = state.accept(m) === 'taken';
    if (taken) traces.remember(m.messageId);
    if (taken && interrupting && state.stopTurn({ reason: 'interrupt', by: null })) turnScope?.cancel();
  });
  // Answers once the turn has ended, with whether the cancel is what ended it: a turn that
  // finished in the meantime (its reply was already committed) was not cancelled.
  setHandler(
    cancelTurnUpdate,
    async ({ turn, requestedBy }) => {
      const target = turn ?? state.currentTurn;
      if (target === null || !state.stopTurn({ reason: 'cancel', by: requestedBy }, turn)) return { cancelled: false, turn: target };
      turnScope?.cancel();
      await condition(() => state.outcomeOf(target) !== undefined);
      return { cancelled: state.outcomeOf(target) === 'cancelled', turn: target };
    },
    {
      // A cancel that can change nothing is refused here, so it leaves no trace in history and
      // spends none of the run's update budget; the API answers it with cancelled: false.
      validator: ({ turn }) => {
        if (!state.runs(turn)) throw refuse(FailureType.nothingToCancel);
      },
    },
  );
  setHandler(cancelTurnSignal, ({ turn, requestedBy }) => {
    if (state.stopTurn({ reason: 'cancel', by: requestedBy }, turn)) turnScope?.cancel();
  });
  setHandler(endSessionSignal, ({ requestedBy }) => {
    state.stopTurn({ reason: 'deleted', by: requestedBy });
    state.end();
    turnScope?.cancel();
  });
  setHandler(switchAgentSignal, ({ agent }) => state.switchAgent(agent));
  setHandler(handBackSignal, () => state.handBack());
  setHandler(escalateSignal, (e) => state.requestOperatorEscalation(e));
  setHandler(externalEventSignal, (e) => state.takeExternalEvent(e));
  setHandler(sessionStateQuery, () => state.view());
  setHandler(
    decideApprovalUpdate,
    async (decision) => {
      // A decision can reach a worker that is still replaying the turn that asked for it (a
      // restart while the approval was pending): wait briefly for the request to reappear.
      await condition(() => state.approvalProblem(decision, workflowNow()) !== 'APPROVAL_NOT_FOUND', APPROVAL_REPLAY_GRACE_MS);
      const problem = state.approvalProblem(decision, workflowNow());
      if (problem) throw refuse(problem);
      state.decide(decision);
      return { toolCallId: decision.toolCallId, outcome: decision.approved ? 'approved' : 'rejected' };
    },
    {
      // Definite refusals happen in the validator, so they leave no trace in history.
      validator: (decision) => {
        const problem = state.approvalProblem(decision, workflowNow());
        if (problem && problem !== 'APPROVAL_NOT_FOUND') throw refuse(problem);
      },
    },
  );

  // Tells refused senders, and accepts messages that arrive during a turn at once (a message
  // that arrives while the session is idle is accepted by the turn that answers it, saving a hop).
  let recording = false;
  let stopRecording = false;
  const work = () => state.hasRefused() || (state.inTurn() && state.hasUnclaimed('recorder'));
  const recorder = (async () => {
    for (;;) {
      await condition(() => work() || stopRecording);
      if (!work()) return;
      recording = true;
      const refused = state.takeRefused();
      if (refused.length > 0) await contained('tell refused senders', () => acts.rejectMessages({ sessionId: state.sessionId, messages: refused }));
      const batch = state.inTurn() ? state.claimUnaccepted('recorder') : [];
      if (batch.length > 0) await contained('accept messages', () => acceptMessages(state, acts, batch), () => state.releaseClaims(batch));
      recording = false;
    }
  })();

  const wake = () => !state.isIdle() || state.status !== 'active' || state.hasOperatorEscalation();
  const idleClock = patched(IDLE_CLOCK_PATCH) ? new IdleClock(state.config.idleTtlMs, wake) : null;
  for (;;) {
    let woke: boolean;
    if (idleClock) {
      idleClock.restart();
      await condition(() => wake() || idleClock.hasExpired);
      // Only the clock ends the wait as idle: a wake that was undone in the same activation (an
      // escalation and its hand-back) goes round the loop again, as the old timer's wait did.
      woke = wake() || !idleClock.hasExpired;
    } else {
      woke = await condition(wake, state.config.idleTtlMs);
    }
    if (!woke || state.status !== 'active') break;
    await condition(() => !recording);
    // A deletion may have landed while the recorder finished: it emptied the queue.
    if (state.status !== 'active') break;
    const taken = state.takeOperatorEscalation();
    if (taken) await contained('escalate for the operator', () => escalateForOperator(state, acts, taken));
    const message = state.beginNextTurn();
    if (!message) continue;
    reflectInSearchAttributes(state, true);
    const scope = (turnScope = new CancellationScope());
    const outcome = await traces.runTurn(message.messageId, () => runTurn(state, acts, scope, message));
    turnScope = null;
    state.endTurn(outcome);
    if (state.status !== 'active') break;
    if (shouldContinueAsNew(state)) {
      stopRecording = true;
      await recorder;
      await condition(allHandlersFinished);
      // A deletion may have landed while the handlers finished: end here instead of continuing.
      if (state.status !== 'active') break;
      await continueAsNewOntoTarget({ sessionId: state.sessionId, config: state.config, resume: state.snapshot() });
    }
  }

  const deleted = state.status === 'deleted';
  if (!deleted) state.expire();
  stopRecording = true;
  await recorder;
  if (!deleted) await contained('record the expiry', () => acts.expireSession({ sessionId: state.sessionId, idleMs: state.config.idleTtlMs }));
  reflectInSearchAttributes(state, false);
  // Completion fails while new signals are pending, so every late message gets its answer here.
  for (let late = state.takeRefused(); late.length > 0; late = state.takeRefused()) {
    if (!deleted) await contained('tell late senders', () => acts.rejectMessages({ sessionId: state.sessionId, messages: late }));
  }
  return { status: deleted ? 'deleted' : 'expired' };
}

/** An operator took the conversation over between turns: told to the user like any escalation, without ending a turn. */
async function escalateForOperator(state: SessionState, acts: ReturnType<typeof sessionActivities>, e: { by: string; reason: string }): Promise<void> {
  const turn = Math.max(1, state.lastTurn);
  // Decided before it is recorded: a hand-back that lands while the activity runs wins.
  const escalationId = state.escalate();
  await acts.escalate({
    sessionId: state.sessionId,
    escalationId,
    turn,
    replyTo: '',
    reason: `${e.reason} (taken over by ${e.by})`.slice(0, 2_000),
    source: 'operator',
    agent: null,
    endsTurn: false,
  }).catch((error: unknown) => {
    state.handBack();
    throw error;
  });
}

/**
 * Between turns: when the history is long, and when a new build became current while this run is
 * pinned to an older one. With Worker Versioning on (KEEL_DEPLOYMENT_NAME), every run is pinned to
 * the build that started it (the worker's default behavior, worker/create-worker.ts), so a turn
 * waiting on an approval resumes on the code that asked for it, and the session moves to the
 * current build here, at the end of its next turn (docs/operations.md, "Worker Versioning"). The
 * flag is only ever set for versioned workers: histories from unversioned ones replay unchanged.
 */
function shouldContinueAsNew(state: SessionState): boolean {
  const info = workflowInfo();
  return info.continueAsNewSuggested || info.historyLength >= state.config.continueAsNewAfterEvents || info.targetWorkerDeploymentVersionChanged;
}

/**
 * On a versioned worker the next run starts on the current build (and is pinned there), whatever
 * made this run continue; a pinned run continuing without AUTO_UPGRADE would stay on its build.
 * An unversioned worker runs its tasks with no deployment name, and sends no versioning option
 * (the server refuses them from unversioned workers).
 */
function continueAsNewOntoTarget(input: SessionWorkflowInput): Promise<never> {
  const versioned = Boolean(workflowInfo().currentDeploymentVersion?.deploymentName);
  return makeContinueAsNewFunc<typeof sessionWorkflow>(versioned ? { initialVersioningBehavior: 'AUTO_UPGRADE' } : {})(input);
}
