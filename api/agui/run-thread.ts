import { AguiApprovalAnswer } from '../../contracts/agui';
import { KeelError, type ErrorCode } from '../../contracts/errors';
import type { DurableEvent, StreamDeltaData } from '../../contracts/events';
import { messageIdFor } from '../../contracts/ids';
import type { Caller } from '../auth';
import type { ApiDeps } from '../deps';
import { recordFailure, toKeelError } from '../errors';
import { PauseRule } from '../pause-rule';
import { refuseSettled } from '../session-service';
import { followTurn, turnFailure, type TurnEnd, type TurnWait } from '../turn-waiter';
import type { AguiEventMapper } from './event-mapper';
import { approvalInterrupt, parseInterruptId } from './interrupts';
import type { AguiRunRequest } from './run-input';
import { eventsBetween, lastSeq, turnDone, turnStart } from '../../db/events';
import { storedMessage } from '../../db/messages';
import { findToolCall, sessionPendingApprovals } from '../../db/tool-calls';

export interface ThreadRun {
  deps: ApiDeps;
  caller: Caller;
  sessionId: string;
  /** The session's agent (a router's members name themselves in agent.started). */
  agentId: string;
  /** The version of it the session runs (null: the deployed definition). */
  agentVersion: number | null;
  request: AguiRunRequest;
  requestId: string;
  mapper: AguiEventMapper;
  /** Aborted when the client goes away: the run stops following (the turn goes on). */
  signal: AbortSignal;
  backlog(): number;
}

/** A resume entry, checked: the approval it answers and what it says. */
interface ResumeAnswer {
  toolCallId: string;
  digest: string;
  turn: number;
  /** The approval still waits for a decision (when checked): a cancelled entry for one that is over decides nothing. */
  live: boolean;
  /** `cancelled`: the client abandons the interrupt (a rejection while it is pending, nothing once it is not). */
  answer: AguiApprovalAnswer | 'cancelled';
}

const CANCELLED_FEEDBACK = 'The client cancelled the interrupt';

const refuse = (code: ErrorCode, message: string): never => {
  throw new KeelError(code, message);
};

/**
 * Checks every resume entry against the stored approvals before anything is decided, so a run
 * whose entries are not all acceptable decides none: at most KEEL_AGUI_MAX_RESUME_ENTRIES, each
 * interrupt once, each an approval of this session with the digest Keel issued; a resolved one
 * pending (not expired, not decided) and with a valid answer. A cancelled one may name an
 * approval that is over (it then decides nothing). A resolved one is refused as the REST
 * decision would be (refuseSettled: expired, decided, digest).
 */
async function checkResume(deps: ApiDeps, sessionId: string, request: AguiRunRequest): Promise<ResumeAnswer[]> {
  const max = deps.settings.api.aguiMaxResumeEntries;
  if (request.resume.length > max) throw new KeelError('VALIDATION_ERROR', 'The request is invalid', [{ field: 'resume', problem: `at most ${max} entries (KEEL_AGUI_MAX_RESUME_ENTRIES)` }]);
  const seen = new Set<string>();
  const answers: ResumeAnswer[] = [];
  const now = Date.now();
  for (const [index, entry] of request.resume.entries()) {
    if (seen.has(entry.interruptId)) throw new KeelError('VALIDATION_ERROR', 'The request is invalid', [{ field: `resume.${index}.interruptId`, problem: 'an interrupt is answered once per run' }]);
    seen.add(entry.interruptId);
    const named = parseInterruptId(entry.interruptId);
    const call = named ? await findToolCall(deps.pool, named.toolCallId) : null;
    if (!named || !call || call.session_id !== sessionId || !call.requires_approval) throw new KeelError('APPROVAL_NOT_FOUND', 'No such interrupt in this thread');
    const expired = call.approval_outcome === 'expired' || (call.status === 'pending_approval' && call.expires_at !== null && call.expires_at <= now);
    const live = !expired && call.approval_outcome === null && call.status === 'pending_approval';
    if (entry.status === 'cancelled') {
      if (named.digest !== call.digest) refuse('APPROVAL_DIGEST_MISMATCH', 'The interrupt does not name the approval as it was issued');
      answers.push({ ...named, turn: call.turn, live, answer: 'cancelled' });
      continue;
    }
    refuseSettled(call, { digest: named.digest });
    const answer = AguiApprovalAnswer.safeParse(entry.payload);
    if (!answer.success) throw new KeelError('VALIDATION_ERROR', 'The request is invalid', answer.error.issues.map((i) => ({ field: [`resume.${index}.payload`, ...i.path.map(String)].join('.'), problem: i.message })));
    answers.push({ ...named, turn: call.turn, live, answer: answer.data });
  }
  return answers;
}

/**
 * Decides the checked answers in order, each digest-bound and exactly once (the session
 * workflow refuses a second decision). A cancelled entry whose approval is over (when checked,
 * or by the time it is decided) is no refusal: it only clears the client's interrupt. Answers
 * the tool calls decided. Only a decision racing this run (another client's, an expiry in the
 * moment between the check and the decision) can refuse an entry after an earlier one counted.
 */
async function decide(run: ThreadRun, answers: ResumeAnswer[]): Promise<string[]> {
  const decided: string[] = [];
  for (const { toolCallId, digest, answer, live } of answers) {
    if (answer === 'cancelled' && !live) continue;
    const decision = answer === 'cancelled' ? { approved: false, feedback: CANCELLED_FEEDBACK } : answer;
    try {
      await run.deps.sessions.decideApproval(run.caller, run.sessionId, { toolCallId, digest, decidedBy: run.caller.userId, approved: decision.approved, ...(decision.feedback === undefined ? {} : { feedback: decision.feedback }) });
      decided.push(toolCallId);
    } catch (error) {
      const over = error instanceof KeelError && (error.code === 'APPROVAL_ALREADY_DECIDED' || error.code === 'APPROVAL_EXPIRED');
      if (!(answer === 'cancelled' && over)) throw error;
    }
  }
  return decided;
}

/**
 * One AG-UI run on the thread's session (docs/agui.md "What a run does"): the resume entries are
 * checked (all of them, before any is decided) and decided, and the turn they continue is
 * followed to its end; then a new user message is sent and its turn followed, unless the
 * continued turn paused again (its interrupts end the run, the message waits for the next run)
 * or failed. With no resume entries and no new message, the turn of the (already sent) last
 * user message is streamed again. Ends with RUN_FINISHED (success, interrupt or cancelled) or
 * RUN_ERROR; never throws.
 */
export async function runThread(run: ThreadRun): Promise<void> {
  const { deps, sessionId, request, mapper } = run;
  try {
    const answers = await checkResume(deps, sessionId, request);
    const user = request.userMessage;
    const userReplyTo = user ? messageIdFor(sessionId, user.clientMessageId) : undefined;
    const stored = userReplyTo ? await storedMessage(deps.pool, userReplyTo) : null;
    if (user && stored && stored.content !== user.content) {
      throw new KeelError('IDEMPOTENCY_KEY_REUSED', 'This message ID was already sent with other content; use a new message ID', { field: 'messages.id' });
    }
    const isNew = user !== undefined && stored?.turn == null;
    if (isNew) {
      // A new message waits for every open interrupt to be answered in this run: checked before anything is decided.
      const answered = new Set(answers.filter((a) => a.live).map((a) => a.toolCallId));
      const open = (await sessionPendingApprovals(deps.pool, sessionId)).filter((a) => !answered.has(a.toolCallId));
      if (open.length > 0) throw new KeelError('APPROVAL_PENDING', 'The thread has open interrupts: answer them (resume) before sending a message', { interrupts: open.map(approvalInterrupt) });
    }
    const pause = await PauseRule.forSession(deps, run.agentId, run.agentVersion);
    const base = {
      sessionId,
      timeoutMs: deps.settings.api.chatTimeoutMs,
      signal: run.signal,
      backlog: run.backlog,
      pauseOnApproval: { sequential: (agentId: string | undefined) => pause.sequential(agentId) },
      callbacks: {
        event: (e: DurableEvent) => {
          void pause.started(e);
          mapper.event(e);
        },
        streamDelta: (d: StreamDeltaData) => mapper.delta(d),
      },
    } satisfies Partial<TurnWait>;

    let continued: TurnEnd | undefined;
    if (answers.length > 0) {
      // The continuation of the interrupted turn: everything after the log's end before the decision. Deciding
      // first (not in send) makes a refused answer a RUN_ERROR even when the turn has ended meanwhile.
      const turn = Math.max(...answers.map((a) => a.turn));
      const start = await turnStart(deps.pool, sessionId, turn);
      if (!start) throw new KeelError('APPROVAL_NOT_FOUND', 'No such interrupt in this thread');
      const before = await lastSeq(deps.pool, sessionId);
      if (answers.some((a) => a.live)) {
        // The turn waits for these approvals, so it is the session's last: its events so far say which member runs it.
        for (const e of await eventsBetween(deps.pool, sessionId, start.before, before, deps.settings.api.replayPageEvents)) {
          if (e.type === 'agent.started' && (e.data as { turn: number }).turn === turn) await pause.started(e);
        }
      }
      const decided = await decide(run, answers);
      // With a new message and nothing decided (the entries only cleared interrupts that were over), there is nothing to continue.
      if (decided.length > 0 || !isNew) {
        continued = await followTurn(deps, { ...base, replyTo: start.replyTo, turn, after: before, send: async () => ({ decided }) });
        // A turn that paused again, or failed, ends the run: the new message is not sent (the next run sends it).
        if (isNew && (continued.kind === 'paused' || (continued.done.data as { status: string }).status === 'failed')) return await finish(run, continued);
      }
    }
    let end: TurnEnd;
    if (isNew) {
      end = await followTurn(deps, { ...base, replyTo: userReplyTo!, send: async () => void (await deps.sessions.sendMessage(run.caller, sessionId, user.content, user.clientMessageId, 'chat', run.requestId)) });
    } else if (continued) {
      end = continued;
    } else {
      // The same message again (a retried run): its turn, streamed from its start; a paused turn gives its interrupts again.
      const turn = stored?.turn ?? null;
      const start = turn === null ? null : await turnStart(deps.pool, sessionId, turn);
      if (!user || turn === null || !start) throw new KeelError('VALIDATION_ERROR', 'A run needs a new user message or resume entries');
      mapper.replayFromLastUserMessage();
      end = await replayTurn(run, base, turn, start);
    }
    await finish(run, end);
  } catch (raw) {
    if (run.signal.aborted) return;
    await failed(run, toKeelError(raw));
  }
}

/**
 * A turn streamed again from its start. A finished one is read from the log, its events only
 * (from its message.accepted to its turn.done), never what the session did after it; one still
 * going is followed live from its start.
 */
async function replayTurn(run: ThreadRun, base: Omit<TurnWait, 'replyTo' | 'send'>, turn: number, start: { before: number; replyTo: string }): Promise<TurnEnd> {
  const { deps, sessionId } = run;
  const done = await turnDone(deps.pool, sessionId, turn);
  if (!done) return followTurn(deps, { ...base, replyTo: start.replyTo, after: start.before, send: async () => undefined });
  const streams = new Set<string>();
  const calls = new Set<string>();
  for (const event of await eventsBetween(deps.pool, sessionId, start.before, done.seq - 1, deps.settings.api.replayPageEvents)) {
    const data = event.data as Record<string, unknown>;
    const ours =
      event.type === 'stream.end' ? streams.has(data.streamId as string) : event.type === 'tool.result' ? calls.has(data.toolCallId as string) : data.turn === turn;
    if (!ours) continue;
    if (event.type === 'stream.start') streams.add(data.streamId as string);
    if (event.type === 'tool.call') calls.add(data.toolCallId as string);
    base.callbacks?.event?.(event);
  }
  return { kind: 'done', done };
}

async function finish(run: ThreadRun, end: TurnEnd): Promise<void> {
  if (end.kind === 'paused') return run.mapper.finishInterrupt(end.approvals.map(approvalInterrupt));
  const done = end.done.data as { turn: number; status: string; messageId: string | null; usage?: unknown; cancelledBy?: string };
  const result = { sessionId: run.sessionId, turn: done.turn, messageId: done.messageId, ...(done.usage === undefined ? {} : { turnUsage: done.usage }) };
  if (done.status === 'completed') return run.mapper.finishSuccess(result);
  if (done.status === 'cancelled') return run.mapper.finishCancelled({ ...result, cancelledBy: done.cancelledBy ?? null });
  await failed(run, await turnFailure(run.deps, end.done));
}

async function failed(run: ThreadRun, error: KeelError): Promise<void> {
  const { deps, mapper } = run;
  // The wait ran out while the turn waits for a person: that is an interrupt, not a failure.
  if (error.code === 'APPROVAL_PENDING' && Array.isArray((error.details as { toolCallIds?: unknown } | undefined)?.toolCallIds)) {
    const pending = await sessionPendingApprovals(deps.pool, run.sessionId, (error.details as { toolCallIds: string[] }).toolCallIds).catch(() => []);
    if (pending.length > 0) return mapper.finishInterrupt(pending.map(approvalInterrupt));
  }
  recordFailure(deps, error, error, { requestId: run.requestId }, 'AG-UI run failed');
  const body = error.toBody(run.requestId);
  mapper.runError(body.code, body.message, { recoverable: body.recoverable, requestId: run.requestId, ...(body.details === undefined ? {} : { details: body.details }) });
}
