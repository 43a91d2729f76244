import { sleep } from '@temporalio/workflow';
import { workflowNow } from './clock';

/**
 * The session's idle deadline with one timer per idle period instead of one per turn. A busy
 * session used to start a timer at every wait and cancel it when the next message came (two
 * history events and a timer on the server per turn); this one is started once, and when it
 * fires during a turn or early (the session was busy since) it is started again for what is left.
 */
export class IdleClock {
  private since = workflowNow();
  private armed = false;
  private expired = false;

  constructor(
    private readonly ttlMs: number,
    /** True while something keeps the session from being idle (a turn, a queued message, an escalation, its end). */
    private readonly busy: () => boolean,
  ) {}

  /** The session is idle from now: the idle period starts again. */
  restart(): void {
    this.since = workflowNow();
    this.expired = false;
    // Busy already (a message came during the turn): the next restart, once idle, arms it.
    if (!this.armed && !this.busy()) this.arm(this.ttlMs);
  }

  /** The session has been idle for the whole time-out. */
  get hasExpired(): boolean {
    return this.expired;
  }

  private arm(ms: number): void {
    this.armed = true;
    sleep(Math.max(1, ms)).then(
      () => {
        this.armed = false;
        // Busy now: the end of the turn restarts the clock (and arms it again).
        if (this.busy()) return;
        const left = this.since + this.ttlMs - workflowNow();
        if (left <= 0) this.expired = true;
        else this.arm(left);
      },
      () => {
        // Cancelled with the workflow: nothing waits on it.
        this.armed = false;
      },
    );
  }
}
