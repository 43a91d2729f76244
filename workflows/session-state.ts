import type { Usage } from '../contracts/events';
import type {
  ApprovalDecision,
  SessionAgent,
  PendingApprovalView,
  QueuedMessage,
  SessionSnapshot,
  SessionStateView,
  SessionWorkflowInput,
  UserMessageSignal,
} from '../contracts/session';
import type { MessageRef, RefusedMessage } from '../contracts/turn';
import { LEGACY_RECENT_CLIENT_ID_LIMIT } from '../contracts/workflow-messages';

export type ApprovalProblem = 'APPROVAL_NOT_FOUND' | 'APPROVAL_ALREADY_DECIDED' | 'APPROVAL_EXPIRED' | 'APPROVAL_DIGEST_MISMATCH';
/** Why a turn stopped early: a user's cancel, a message under the `interrupt` policy, or the session's deletion. */
export interface TurnStop {
  reason: 'cancel' | 'interrupt' | 'deleted';
  by: string | null;
}
export type TurnOutcome = 'completed' | 'failed' | 'cancelled';
const OUTCOME_MEMORY = 16;
/** Sessions started before the waiting-events limit was carried in their config. */
const LEGACY_MAX_WAITING_EVENTS = 100;
type PendingApproval = PendingApprovalView & { expiresAtMs: number; decision?: ApprovalDecision };

/** Recently settled approvals remembered, so a second decision is told it came too late rather than "unknown". */
const SETTLED_MEMORY = 500;

/** The session's state and the rules that change it; no I/O, so it is safe in workflow code. */
export class SessionState {
  private current: QueuedMessage | null = null;
  /** Why the current turn was stopped, and by whom, once it has been. */
  private stopped: TurnStop | null = null;
  /** Messages whose acceptance an activity is writing now. Empty between turns, so never carried. */
  private readonly accepting = new Set<string>();
  private readonly leftToTurn = new Set<string>();
  /** How the last few turns ended, for cancel requests waiting on them. Never carried: a cancel waits within one run. */
  private readonly outcomes = new Map<number, TurnOutcome>();
  /** Approvals the current turn waits for. Turns never span continue-as-new, so these are not carried. */
  private readonly approvals = new Map<string, PendingApproval>();
  private readonly settled = new Map<string, 'decided' | 'expired' | 'cancelled'>();
  /** A version switch that waits for the running turn to end. Applied before any snapshot, so never carried. */
  private nextAgent: SessionAgent | null = null;
  /** Outside events the current turn attaches (they waited for it). */
  private turnEvents: MessageRef[] = [];
  /** What this run last upserted as search attributes (workflows/search-attributes.ts); a new run starts over. */
  publishedSearchAttributes: { status: string; pendingApprovals: number; touchedAtMs: number } | null = null;

  constructor(private readonly s: SessionSnapshot) {}

  static fromInput(input: SessionWorkflowInput): SessionState {
    if (input.resume) return new SessionState({ ...input.resume, generation: input.resume.generation + 1 });
    return new SessionState({
      sessionId: input.sessionId,
      config: input.config,
      status: 'active',
      queue: [],
      refused: [],
      refusals: 0,
      nextTurn: 1,
      messageCount: 0,
      usage: { inputTokens: 0, outputTokens: 0, costUsd: 0 },
      recentClientIds: [],
      generation: 0,
    });
  }

  get sessionId() {
    return this.s.sessionId;
  }
  get config() {
    return this.s.config;
  }
  get status() {
    return this.s.status;
  }

  /**
   * Takes a user message once per message and client message ID. A message the session cannot
   * take (ended, busy under the `reject` policy, or a full queue) is refused and told so.
   */
  accept(m: UserMessageSignal): 'taken' | 'repeat' | 'refused' {
    if (this.knows(m)) return 'repeat';
    if (this.s.status !== 'active') return this.refuse(m, 'SESSION_EXPIRED');
    const busy = this.s.config.agent.busyPolicy === 'reject' && !this.isIdle();
    if (busy || this.s.queue.length >= this.s.config.maxQueuedMessages) return this.refuse(m, 'SESSION_BUSY');
    if (m.clientMessageId) {
      this.s.recentClientIds.push(m.clientMessageId);
      const limit = this.s.config.recentClientIdLimit ?? LEGACY_RECENT_CLIENT_ID_LIMIT;
      if (this.s.recentClientIds.length > limit) this.s.recentClientIds.splice(0, this.s.recentClientIds.length - limit);
    }
    // A refusal of an earlier send of this message, not yet written, would now answer the wrong send.
    this.s.refused = this.s.refused.filter((r) => r.messageId !== m.messageId);
    // Only the known fields: a signal from another client carrying more (content) stays out of the state.
    this.s.queue.push({
      messageId: m.messageId,
      ...(m.clientMessageId === undefined ? {} : { clientMessageId: m.clientMessageId }),
      ...(m.requestId === undefined ? {} : { requestId: m.requestId }),
      ...(m.budget === undefined ? {} : { budget: m.budget }),
      turn: this.s.nextTurn++,
      accepted: false,
    });
    this.s.messageCount += 1;
    return 'taken';
  }

  private knows(m: UserMessageSignal): boolean {
    if (m.clientMessageId && this.s.recentClientIds.includes(m.clientMessageId)) return true;
    return this.current?.messageId === m.messageId || this.s.queue.some((q) => q.messageId === m.messageId);
  }

  private refuse(m: UserMessageSignal, code: RefusedMessage['code']): 'refused' {
    this.s.refused.push({ messageId: m.messageId, ...(m.clientMessageId ? { clientMessageId: m.clientMessageId } : {}), code, refusal: this.s.refusals++ });
    return 'refused';
  }

  isIdle(): boolean {
    return this.s.queue.length === 0 && this.current === null;
  }
  inTurn(): boolean {
    return this.current !== null;
  }

  /**
   * Claims the messages (the current one and the queued ones) whose acceptance is not yet
   * written and not already being written, for one activity to write.
   */
  claimUnaccepted(by: 'turn' | 'recorder'): MessageRef[] {
    const claimed = this.unclaimed(by);
    for (const m of claimed) this.accepting.add(m.messageId);
    return claimed.map(({ accepted: _accepted, budget: _budget, external: _external, ...ref }) => ref);
  }

  hasUnclaimed(by: 'turn' | 'recorder'): boolean {
    return this.unclaimed(by).length > 0;
  }

  /**
   * Messages whose acceptance failed once are left to their own turn: no one else claims them,
   * so one that can never be accepted fails only its own turn.
   */
  private unclaimed(by: 'turn' | 'recorder'): QueuedMessage[] {
    const own = by === 'turn' && this.current && !this.current.accepted && !this.accepting.has(this.current.messageId) ? [this.current] : [];
    const others = (by === 'recorder' ? this.pending() : this.s.queue).filter(
      (m) => !m.accepted && !this.accepting.has(m.messageId) && !this.leftToTurn.has(m.messageId),
    );
    return [...own, ...others];
  }

  /** The message being answered, then the queue. */
  private pending(): QueuedMessage[] {
    return this.current ? [this.current, ...this.s.queue] : this.s.queue;
  }

  markAccepted(messages: MessageRef[]): void {
    const ids = new Set(messages.map((m) => m.messageId));
    for (const m of this.pending()) if (ids.has(m.messageId)) m.accepted = true;
    for (const id of ids) this.accepting.delete(id);
  }

  /** A claim whose write failed: the messages are left to their own turns. */
  releaseClaims(messages: MessageRef[]): void {
    for (const m of messages) {
      this.accepting.delete(m.messageId);
      this.leftToTurn.add(m.messageId);
    }
  }

  takeRefused(): RefusedMessage[] {
    return this.s.refused.splice(0);
  }
  hasRefused(): boolean {
    return this.s.refused.length > 0;
  }

  beginNextTurn(): QueuedMessage | null {
    this.current = this.s.queue.shift() ?? null;
    this.stopped = null;
    const waiting = this.s.waitingEvents ?? [];
    if (this.current && waiting.length > 0) {
      const turn = this.current.turn;
      this.turnEvents = waiting.map((messageId) => ({ messageId, turn }));
      this.s.waitingEvents = [];
    }
    return this.current;
  }

  /** The outside events that waited for this turn, claimed once by the turn that attaches them. */
  takeTurnEvents(): MessageRef[] {
    return this.turnEvents.splice(0);
  }

  /**
   * An outside event that wakes a turn is queued like a message (it is the turn's "message");
   * one that waits is attached to the next turn. A repeat, or one for an ended session, is dropped:
   * it stays stored and announced.
   */
  takeExternalEvent(e: { messageId: string; wake: boolean }): void {
    if (this.s.status !== 'active') return;
    if (this.current?.messageId === e.messageId || this.s.queue.some((q) => q.messageId === e.messageId) || (this.s.waitingEvents ?? []).includes(e.messageId)) return;
    if (e.wake && this.s.queue.length < this.s.config.maxQueuedMessages) {
      this.s.queue.push({ messageId: e.messageId, turn: this.s.nextTurn++, accepted: false, external: true });
      return;
    }
    const waiting = (this.s.waitingEvents ??= []);
    waiting.push(e.messageId);
    if (waiting.length > (this.s.config.maxWaitingEvents ?? LEGACY_MAX_WAITING_EVENTS)) waiting.shift();
  }

  get escalated(): boolean {
    return this.s.escalated === true;
  }

  /**
   * The conversation is with a person from now on: turns are held until it is handed back. Returns
   * the new escalation's ID, numbered per session, so a second one (after a hand-back) is its own.
   */
  escalate(): string {
    this.s.escalated = true;
    delete this.s.operatorEscalation;
    this.s.escalations = (this.s.escalations ?? 0) + 1;
    return `e${this.s.escalations}`;
  }

  handBack(): void {
    this.s.escalated = false;
    delete this.s.operatorEscalation;
  }

  /** Carried across continue-as-new: a take-over asked for during a turn is done once it ends. */
  requestOperatorEscalation(e: { by: string; reason: string }): void {
    if (this.s.status === 'active' && !this.escalated) this.s.operatorEscalation ??= { by: e.by, reason: e.reason };
  }

  takeOperatorEscalation(): { by: string; reason: string } | null {
    const e = this.s.operatorEscalation ?? null;
    delete this.s.operatorEscalation;
    return e;
  }

  hasOperatorEscalation(): boolean {
    return this.s.operatorEscalation !== undefined;
  }

  /** The last turn number given out (0 before the first message). */
  get lastTurn(): number {
    return this.s.nextTurn - 1;
  }

  hasGreeted(agentId: string): boolean {
    return (this.s.greeted ?? []).includes(agentId);
  }

  markGreeted(agentId: string): void {
    if (!this.hasGreeted(agentId)) (this.s.greeted ??= []).push(agentId);
  }

  /** Whether turn `turn` (or, without it, any turn) is running. */
  runs(turn?: number): boolean {
    return this.current !== null && (turn === undefined || turn === this.current.turn);
  }

  /** Marks turn `turn` (or the current one) as stopped; false when that turn is not running. */
  stopTurn(stop: TurnStop, turn?: number): boolean {
    if (!this.runs(turn)) return false;
    this.stopped ??= stop;
    return true;
  }
  get currentTurn(): number | null {
    return this.current?.turn ?? null;
  }
  get turnStop(): TurnStop | null {
    return this.stopped;
  }

  recordReply(usage: Usage): void {
    this.s.messageCount += 1;
    this.addUsage(usage);
  }

  /** Model spending that is not a reply (a router's classification). */
  addUsage(usage: Usage): void {
    this.s.usage = {
      inputTokens: this.s.usage.inputTokens + usage.inputTokens,
      outputTokens: this.s.usage.outputTokens + usage.outputTokens,
      costUsd: this.s.usage.costUsd + usage.costUsd,
    };
  }

  endTurn(outcome: TurnOutcome): void {
    if (this.current) this.outcomes.set(this.current.turn, outcome);
    if (this.outcomes.size > OUTCOME_MEMORY) this.outcomes.delete(this.outcomes.keys().next().value!);
    this.current = null;
    this.applyAgentSwitch();
  }

  /**
   * Moves the session to another version of its agent (a release was rolled back): at once when
   * no turn runs, else when the running turn ends, so a turn never changes version halfway.
   */
  switchAgent(agent: SessionAgent): void {
    if (agent.id !== this.s.config.agent.id) return;
    this.nextAgent = agent;
    if (!this.inTurn()) this.applyAgentSwitch();
  }

  private applyAgentSwitch(): void {
    if (!this.nextAgent) return;
    this.s.config = { ...this.s.config, agent: this.nextAgent };
    this.nextAgent = null;
  }

  /** How a recent turn ended; undefined while it runs (or when it is too old to remember). */
  outcomeOf(turn: number): TurnOutcome | undefined {
    return this.outcomes.get(turn);
  }

  expire(): void {
    this.s.status = 'expired';
  }

  /** The session was deleted: it takes nothing more, and what waits in the queue is dropped with it. */
  end(): void {
    this.s.status = 'deleted';
    this.s.queue = [];
  }

  /** Registers an approval the turn waits for; registering it again keeps a decision already taken. */
  awaitApproval(view: PendingApprovalView): void {
    if (this.approvals.has(view.toolCallId)) return;
    this.approvals.set(view.toolCallId, { ...view, expiresAtMs: new Date(view.expiresAt).getTime() });
  }

  decisionFor(toolCallId: string): ApprovalDecision | undefined {
    return this.approvals.get(toolCallId)?.decision;
  }

  isAwaitingApproval(toolCallId: string): boolean {
    return this.approvals.has(toolCallId);
  }

  /** Why a decision cannot be taken, or null when it can. */
  approvalProblem(d: ApprovalDecision, nowMs: number): ApprovalProblem | null {
    const pending = this.approvals.get(d.toolCallId);
    if (!pending) {
      const settled = this.settled.get(d.toolCallId);
      if (settled === 'expired') return 'APPROVAL_EXPIRED';
      return settled ? 'APPROVAL_ALREADY_DECIDED' : 'APPROVAL_NOT_FOUND';
    }
    if (pending.decision) return 'APPROVAL_ALREADY_DECIDED';
    if (nowMs >= pending.expiresAtMs) return 'APPROVAL_EXPIRED';
    if (d.digest !== undefined && d.digest !== pending.digest) return 'APPROVAL_DIGEST_MISMATCH';
    return null;
  }

  /** Stores a decision that approvalProblem allowed. */
  decide(d: ApprovalDecision): void {
    this.approvals.get(d.toolCallId)!.decision = d;
  }

  settleApproval(toolCallId: string, how: 'decided' | 'expired' | 'cancelled'): void {
    this.approvals.delete(toolCallId);
    this.settled.set(toolCallId, how);
    if (this.settled.size > SETTLED_MEMORY) this.settled.delete(this.settled.keys().next().value!);
  }

  snapshot(): SessionSnapshot {
    // A turn interrupted by continue-as-new never happens: the loop only continues between turns.
    return JSON.parse(JSON.stringify(this.s)) as SessionSnapshot;
  }

  view(): SessionStateView {
    const agent = this.s.config.agent;
    return {
      sessionId: this.s.sessionId,
      status: this.s.status,
      agent: { id: agent.id, version: agent.version, busyPolicy: agent.busyPolicy },
      pendingApprovals: [...this.approvals.values()].filter((a) => !a.decision).map(({ toolCallId, name, digest, expiresAt }) => ({ toolCallId, name, digest, expiresAt })),
      turnInProgress: this.current ? { turn: this.current.turn, replyTo: this.current.messageId } : null,
      queued: this.s.queue.map((m) => ({ messageId: m.messageId, turn: m.turn })),
      messageCount: this.s.messageCount,
      usage: { ...this.s.usage },
      generation: this.s.generation,
      ...(this.s.escalated ? { escalated: true } : {}),
    };
  }
}
