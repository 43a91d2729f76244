import type { DatabasePool } from 'slonik';
import { durableFrame, type DurableEvent } from '../contracts/events';
import { USER_FEED_EVENT_TYPES, type AgentStatusData } from '../contracts/presence';
import type { Logger } from '../config/logger';
import { eventsAfter } from '../db/events';
import { escalatedAsOf, sessionOwnerOf } from '../db/presence';
import { AgentStatusTracker } from './agent-status';
import type { AllSessionsListener, EventHub } from './event-hub';

/** A frame of the per-user socket: a durable event (with its seq) or an agent.status, each naming its session. */
export type UserFeedFrame = { type: string; sessionId: string; seq: number; data: unknown } | { type: 'agent.status'; sessionId: string; data: AgentStatusData };

/** One per-user socket. */
export interface UserSink {
  userId: string;
  /** Admins get every session's frames. */
  admin: boolean;
  frame(frame: UserFeedFrame): void;
  /** Frames may have been lost (the API's LISTEN connection was replaced): the sink is dropped after this call. */
  lost(): void;
}

const FORWARDED = new Set<string>(USER_FEED_EVENT_TYPES);
/** Events that move a session's agent.status (api/agent-status.ts), besides the forwarded ones. */
const STATUS_ONLY = new Set<string>(['stream.start', 'tool.call', 'agent.started']);

const relevant = (event: DurableEvent) => FORWARDED.has(event.type) || STATUS_ONLY.has(event.type);

interface SessionState {
  owner: string | null;
  status: AgentStatusTracker;
}

/**
 * The per-user sockets' feed: one listener on the event hub for the whole API process, fanned out
 * by session owner (admins get all). Live only: nothing is replayed, so it holds no queue; a
 * session's owner and its agent.status tracker are cached (at most `cacheSessions`, least
 * recently used dropped; an owner never changes). Events of one session are handed out in seq
 * order: while its owner is being looked up (or an event too large for NOTIFY is read), its
 * later events wait behind it.
 */
export class UserFeed implements AllSessionsListener {
  private readonly byUser = new Map<string, Set<UserSink>>();
  private readonly admins = new Set<UserSink>();
  private readonly sessions = new Map<string, SessionState>();
  private readonly chains = new Map<string, Promise<void>>();
  private unsubscribe: (() => void) | undefined;
  private sinks = 0;

  constructor(
    private readonly hub: EventHub,
    private readonly pool: DatabasePool,
    private readonly log: Logger,
    private readonly cacheSessions: number,
  ) {}

  /** Registers a sink; the returned function removes it (once). The feed follows the hub only while it has sinks. */
  add(sink: UserSink): () => void {
    if (sink.admin) this.admins.add(sink);
    else {
      let set = this.byUser.get(sink.userId);
      if (!set) this.byUser.set(sink.userId, (set = new Set()));
      set.add(sink);
    }
    if (this.sinks++ === 0) this.unsubscribe = this.hub.subscribeAll(this);
    return () => this.remove(sink);
  }

  /** Removes a sink once (a resync removes sinks whose sockets then remove themselves too). */
  private remove(sink: UserSink): void {
    let had: boolean;
    if (sink.admin) had = this.admins.delete(sink);
    else {
      const set = this.byUser.get(sink.userId);
      had = set?.delete(sink) ?? false;
      if (set?.size === 0) this.byUser.delete(sink.userId);
    }
    if (!had) return;
    if (--this.sinks === 0) {
      this.unsubscribe?.();
      this.unsubscribe = undefined;
      // Nobody follows: what is cached would go stale.
      this.sessions.clear();
    }
  }

  onEvent(event: DurableEvent): void {
    if (this.sinks === 0) return;
    if (event.type === 'session.deleted') {
      this.inOrder(event.sessionId, () => {
        this.sessions.delete(event.sessionId);
      });
    } else if (relevant(event)) {
      this.inOrder(event.sessionId, () => this.handle(event));
    }
  }

  onNotified(sessionId: string, seq: number): void {
    if (this.sinks === 0) return;
    this.inOrder(sessionId, async () => {
      const [event] = await eventsAfter(this.pool, sessionId, seq - 1, 1);
      if (event?.seq === seq && relevant(event)) await this.handle(event);
    });
  }

  /** Notifications may have been lost: the sockets say so (their clients re-read what they watch) and the cache starts over. */
  onResync(): void {
    this.sessions.clear();
    for (const sink of [...this.admins, ...[...this.byUser.values()].flatMap((set) => [...set])]) {
      this.remove(sink);
      sink.lost();
    }
  }

  /** Runs `job` now when the session has nothing pending, else after what is pending. */
  private inOrder(sessionId: string, job: () => Promise<void> | void): void {
    const pending = this.chains.get(sessionId);
    let next: Promise<void> | void;
    try {
      next = pending ? pending.then(job) : job();
    } catch (error) {
      this.log.error({ err: error, sessionId }, 'user feed delivery failed');
      return;
    }
    if (!next) return;
    const chained: Promise<void> = next
      .catch((error: unknown) => this.log.warn({ err: error, sessionId }, 'user feed could not follow a session event'))
      .finally(() => {
        if (this.chains.get(sessionId) === chained) this.chains.delete(sessionId);
      });
    this.chains.set(sessionId, chained);
  }

  private handle(event: DurableEvent): Promise<void> | void {
    const state = this.cached(event.sessionId);
    if (state) return this.deliver(event, state);
    return this.load(event).then((loaded) => {
      if (loaded) this.deliver(event, loaded);
    });
  }

  private cached(sessionId: string): SessionState | undefined {
    const state = this.sessions.get(sessionId);
    if (state) {
      // Least recently used goes first.
      this.sessions.delete(sessionId);
      this.sessions.set(sessionId, state);
    }
    return state;
  }

  /** The session's owner, and its escalation state just before `event` (the tracker's starting point). */
  private async load(event: DurableEvent): Promise<SessionState | undefined> {
    const [found, escalated] = await Promise.all([sessionOwnerOf(this.pool, event.sessionId), escalatedAsOf(this.pool, event.sessionId, event.seq - 1)]);
    if (!found || found.deleted || this.sinks === 0) return undefined;
    const state = { owner: found.owner, status: new AgentStatusTracker(escalated) };
    this.sessions.set(event.sessionId, state);
    if (this.sessions.size > this.cacheSessions) this.sessions.delete(this.sessions.keys().next().value!);
    return state;
  }

  private deliver(event: DurableEvent, state: SessionState): void {
    const status = state.status.next(event);
    const frames: UserFeedFrame[] = [];
    if (FORWARDED.has(event.type)) frames.push(durableFrame(event) as UserFeedFrame);
    if (status) frames.push({ type: 'agent.status', sessionId: event.sessionId, data: status });
    if (frames.length === 0) return;
    const owners = state.owner === null ? undefined : this.byUser.get(state.owner);
    for (const sink of [...(owners ?? []), ...this.admins]) {
      for (const frame of frames) {
        try {
          sink.frame(frame);
        } catch (error) {
          this.log.error({ err: error, sessionId: event.sessionId }, 'user socket send failed');
        }
      }
    }
  }
}
