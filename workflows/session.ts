import {
  allHandlersFinished,
  condition,
  continueAsNew,
  setHandler,
  upsertSearchAttributes,
  workflowInfo,
} from '@temporalio/workflow';
import { SessionStatusKey } from '../contracts/search-attributes';
import { sessionStateQuery, userMessageSignal, type PendingMessage, type SessionWorkflowInput } from '../contracts/session';
import { sessionActivities, type SessionActivityProxies } from './activities';
import { SessionState } from './session-state';
import { turnErrorOf } from './turn-errors';

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
  setHandler(userMessageSignal, (m) => void state.accept(m));
  setHandler(sessionStateQuery, () => state.view());

  // Messages that arrive during a turn are acknowledged at once by this loop; a message that
  // arrives while the session is idle is recorded by the turn that answers it, saving a hop.
  let recording = false;
  let stopRecording = false;
  const recorder = (async () => {
    for (;;) {
      await condition(() => (state.hasUnrecorded() && state.inTurn()) || stopRecording);
      if (stopRecording) return;
      recording = true;
      const batch = state.takeUnrecorded();
      await acts.recordUserMessages({ sessionId: state.sessionId, messages: batch });
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
    if (message) await runTurn(state, acts, message, unrecorded);
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
  upsertSearchAttributes([{ key: SessionStatusKey, value: 'expired' }]);
  // Completion fails while new signals are pending, so every late message gets its answer here.
  for (let late = state.takeLateArrivals(); late.length > 0; late = state.takeLateArrivals()) {
    await acts.rejectLateMessages({ sessionId: state.sessionId, messageIds: late.map((m) => m.messageId) });
  }
  return { status: 'expired' };
}

async function runTurn(state: SessionState, acts: SessionActivityProxies, message: PendingMessage, unrecorded: PendingMessage[]) {
  const base = { sessionId: state.sessionId, turn: message.turn, replyTo: message.messageId };
  try {
    const reply = await acts.streamReply({ ...base, step: 1, content: message.content, record: unrecorded, model: state.config.llm.model, completesTurn: true });
    state.recordReply(reply.usage);
  } catch (error) {
    // The reply failed, perhaps before it recorded the messages it carried: record them now.
    if (unrecorded.length > 0) await acts.recordUserMessages({ sessionId: state.sessionId, messages: unrecorded });
    await acts.recordTurnFailure({ ...base, error: turnErrorOf(error) });
  }
}

function shouldContinueAsNew(state: SessionState): boolean {
  const info = workflowInfo();
  return info.continueAsNewSuggested || info.historyLength >= state.config.continueAsNewAfterEvents;
}
