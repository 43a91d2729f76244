import type { Usage } from '../contracts/events';
import {
  RECENT_CLIENT_ID_LIMIT,
  type ApprovalDecision,
  type PendingApprovalView,
  type PendingMessage,
  type SessionSnapshot,
  type SessionStateView,
  type SessionWorkflowInput,
  type UserMessageSignal,
} from '../contracts/session';

/** The session's state and the rules that change it; no I/O, so it is safe in workflow code. */
export class SessionState {
  private current: PendingMessage | null = null;
  /** Messages that arrived after the session expired: each is answered with SESSION_EXPIRED. */
  private lateArrivals: UserMessageSignal[] = [];
  /** Messages refused by the agent's `reject` busy policy: each is answered with SESSION_BUSY. */
  private refused: UserMessageSignal[] = [];
  /** Approvals the current turn waits for. Turns never span continue-as-new, so these are not carried. */
  readonly approvals = new Map<string, PendingApprovalView & { expiresAtMs: number; decision?: ApprovalDecision }>();
  /** Recently settled approvals, so a second decision is told it came too late rather than "unknown". */
  private readonly settled = new Map<string, 'decided' | 'expired' | 'cancelled'>();

  constructor(private readonly s: SessionSnapshot) {}

  static fromInput(input: SessionWorkflowInput): SessionState {
    if (input.resume) return new SessionState({ ...input.resume, generation: input.resume.generation + 1 });
    return new SessionState({
      sessionId: input.sessionId,
      config: input.config,
      status: 'active',
      queue: [],
      unrecorded: [],
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

  /** Accepts a user message once per client message ID; returns false for a repeat. */
  accept(m: UserMessageSignal): boolean {
    if (this.s.status !== 'active') {
      this.lateArrivals.push(m);
      return false;
    }
    if (this.s.config.agent.busyPolicy === 'reject' && !this.isIdle() && !this.knows(m.messageId)) {
      if (!m.clientMessageId || !this.s.recentClientIds.includes(m.clientMessageId)) this.refused.push(m);
      return false;
    }
    if (m.clientMessageId) {
      if (this.s.recentClientIds.includes(m.clientMessageId)) return false;
      this.s.recentClientIds.push(m.clientMessageId);
      if (this.s.recentClientIds.length > RECENT_CLIENT_ID_LIMIT) this.s.recentClientIds.shift();
    }
    if (this.knows(m.messageId)) return false;
    this.s.unrecorded.push({ ...m, turn: this.s.nextTurn++ });
    this.s.messageCount += 1;
    return true;
  }

  private knows(messageId: string): boolean {
    return [...this.s.unrecorded, ...this.s.queue].some((p) => p.messageId === messageId) || this.current?.messageId === messageId;
  }

  hasUnrecorded(): boolean {
    return this.s.unrecorded.length > 0;
  }
  hasQueued(): boolean {
    return this.s.queue.length > 0;
  }
  isIdle(): boolean {
    return !this.hasUnrecorded() && !this.hasQueued() && this.current === null;
  }

  takeUnrecorded(): PendingMessage[] {
    return [...this.s.unrecorded];
  }

  /** Recorded messages become answerable, in turn order. Marking a message twice is harmless. */
  markRecorded(batch: PendingMessage[]): void {
    const ids = new Set(batch.map((m) => m.messageId));
    const moving = this.s.unrecorded.filter((m) => ids.has(m.messageId));
    this.s.unrecorded = this.s.unrecorded.filter((m) => !ids.has(m.messageId));
    this.s.queue.push(...moving);
    this.s.queue.sort((a, b) => a.turn - b.turn);
  }

  inTurn(): boolean {
    return this.current !== null;
  }

  beginNextTurn(): PendingMessage | null {
    this.current = this.s.queue.shift() ?? null;
    return this.current;
  }

  recordReply(usage: Usage): void {
    this.s.messageCount += 1;
    this.s.usage = {
      inputTokens: this.s.usage.inputTokens + usage.inputTokens,
      outputTokens: this.s.usage.outputTokens + usage.outputTokens,
      // Sessions continued from before cost was tracked carry no costUsd.
      costUsd: (this.s.usage.costUsd ?? 0) + (usage.costUsd ?? 0),
    };
  }

  endTurn(): void {
    this.current = null;
  }

  expire(): void {
    this.s.status = 'expired';
  }

  takeLateArrivals(): UserMessageSignal[] {
    return this.lateArrivals.splice(0);
  }

  takeRefused(): UserMessageSignal[] {
    return this.refused.splice(0);
  }

  hasRefused(): boolean {
    return this.refused.length > 0;
  }

  /** Why a decision cannot be taken, or null when it can. */
  approvalProblem(d: ApprovalDecision, nowMs: number): 'APPROVAL_NOT_FOUND' | 'APPROVAL_ALREADY_DECIDED' | 'APPROVAL_EXPIRED' | 'APPROVAL_DIGEST_MISMATCH' | null {
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

  settle(toolCallId: string, how: 'decided' | 'expired' | 'cancelled'): void {
    this.approvals.delete(toolCallId);
    this.settled.set(toolCallId, how);
    if (this.settled.size > 500) this.settled.delete(this.settled.keys().next().value!);
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
      queued: [...this.s.unrecorded, ...this.s.queue].map((m) => ({ messageId: m.messageId, turn: m.turn })),
      messageCount: this.s.messageCount,
      usage: { ...this.s.usage },
      generation: this.s.generation,
    };
  }
}
