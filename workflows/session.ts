import {
  allHandlersFinished,
  ApplicationFailure,
  CancellationScope,
  condition,
  continueAsNew,
  setHandler,
  workflowInfo,
} from '@temporalio/workflow';
import { cancelTurnSignal, decideApprovalUpdate, sessionStateQuery, userMessageSignal, type SessionWorkflowInput } from '../contracts/session';
import { sessionActivities } from './activities';
import { workflowNow } from './clock';
import { SessionState } from './session-state';
import { reflectInSearchAttributes } from './search-attributes';
import { runTurn } from './turn';
import { MessageTraces } from './trace-context';

const APPROVAL_REPLAY_GRACE_MS = 10_000;

export interface SessionWorkflowResult {
  status: 'expired';
}

/**
 * One chat session. Messages arrive by signal, are recorded by a background loop (so they are
 * acknowledged while a turn runs), and are answered one turn at a time, in order.
 */
export async function sessionWorkflow(input: SessionWorkflowInput): Promise<SessionWorkflowResult> {
  const state = SessionState.fromInput(input);
  const acts = sessionActivities(state.config);
  let turnScope: CancellationScope | null = null;
  const traces = new MessageTraces();

  setHandler(userMessageSignal, (m) => {
    const interrupting = state.config.agent.busyPolicy === 'interrupt' && state.inTurn();
    const accepted = state.accept(m);
    if (accepted) traces.remember(m.messageId);
    if (accepted && interrupting) turnScope?.cancel();
  });
  setHandler(cancelTurnSignal, () => turnScope?.cancel());
  setHandler(sessionStateQuery, () => state.view());
  const refuse = (problem: string) => ApplicationFailure.create({ type: problem, message: problem.toLowerCase().replace(/_/g, ' '), nonRetryable: true });
  setHandler(
    decideApprovalUpdate,
    async (decision) => {
      // A decision can reach a worker that is still replaying the turn that asked for it (a
      // restart while the approval was pending): wait briefly for the request to reappear.
      await condition(() => state.approvalProblem(decision, workflowNow()) !== 'APPROVAL_NOT_FOUND', APPROVAL_REPLAY_GRACE_MS);
      const problem = state.approvalProblem(decision, workflowNow());
      if (problem) throw refuse(problem);
      state.approvals.get(decision.toolCallId)!.decision = decision;
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

  // Messages that arrive during a turn are acknowledged at once by this loop; a message that
  // arrives while the session is idle is recorded by the turn that answers it, saving a hop.
  let recording = false;
  let stopRecording = false;
  const recorder = (async () => {
    for (;;) {
      await condition(() => (state.hasUnrecorded() && state.inTurn()) || state.hasRefused() || stopRecording);
      if (stopRecording) return;
      recording = true;
      const refused = state.takeRefused();
      if (refused.length > 0) await acts.rejectMessages({ sessionId: state.sessionId, messages: refused, code: 'SESSION_BUSY' });
      const batch = state.takeUnrecorded();
      if (batch.length > 0) await acts.recordUserMessages({ sessionId: state.sessionId, messages: batch });
      state.markRecorded(batch);
      recording = false;
    }
  })();

  for (;;) {
    const woke = await condition(() => !state.isIdle(), state.config.idleTtlMs);
    if (!woke) break;
    const unrecorded = state.takeUnrecorded();
    state.markRecorded(unrecorded);
    const message = state.beginNextTurn();
    reflectInSearchAttributes(state, true);
    if (message) {
      const scope = (turnScope = new CancellationScope());
      await traces.runTurn(message.messageId, () => runTurn(state, scope, message, unrecorded));
      turnScope = null;
    }
    state.endTurn();
    if (shouldContinueAsNew(state)) {
      stopRecording = true;
      await condition(() => !recording);
      await recorder;
      await condition(allHandlersFinished);
      await continueAsNew<typeof sessionWorkflow>({ sessionId: state.sessionId, config: state.config, resume: state.snapshot() });
    }
  }

  state.expire();
  stopRecording = true;
  await recorder;
  await acts.expireSession({ sessionId: state.sessionId, idleMs: state.config.idleTtlMs });
  reflectInSearchAttributes(state, false);
  // Completion fails while new signals are pending, so every late message gets its answer here.
  for (let late = state.takeLateArrivals(); late.length > 0; late = state.takeLateArrivals()) {
    await acts.rejectMessages({ sessionId: state.sessionId, messages: late, code: 'SESSION_EXPIRED' });
  }
  return { status: 'expired' };
}

function shouldContinueAsNew(state: SessionState): boolean {
  const info = workflowInfo();
  return info.continueAsNewSuggested || info.historyLength >= state.config.continueAsNewAfterEvents;
}
