import type { ActivityInterceptorsFactory, WorkerInterceptors } from '@temporalio/worker';
import type { Metrics } from '../config/metrics';

/** The session and turn an activity works for, when its input names them (streamReply, the tool activities, recordTurnFailure). */
function turnKeyOf(args: readonly unknown[]): string | undefined {
  const input = args[0] as { sessionId?: unknown; turn?: unknown } | null | undefined;
  if (typeof input !== 'object' || input === null) return undefined;
  if (typeof input.sessionId !== 'string' || typeof input.turn !== 'number') return undefined;
  return `${input.sessionId}\0${input.turn}`;
}

/**
 * What the heartbeat reports about turns on this worker.
 *
 * In flight: turns with at least one of their activities running on this worker now (a turn
 * waiting for an approval, or between two activities, is in flight nowhere). Completed: turns
 * whose turn.done this worker wrote, read from this process's `keel_turns_total`, which
 * streamReply and recordTurnFailure increment exactly when their write of turn.done commits.
 */
export class TurnTracker {
  private readonly running = new Map<string, number>();

  constructor(private readonly metrics: Metrics) {}

  get inFlight(): number {
    return this.running.size;
  }

  async completed(): Promise<number> {
    const { values } = await this.metrics.turns.get();
    return values.reduce((sum, v) => sum + v.value, 0);
  }

  /** Counts the turn of every activity this worker runs while the activity runs. */
  readonly interceptor: ActivityInterceptorsFactory = () => ({
    inbound: {
      execute: async (input, next) => {
        const key = turnKeyOf(input.args);
        if (key === undefined) return next(input);
        this.running.set(key, (this.running.get(key) ?? 0) + 1);
        try {
          return await next(input);
        } finally {
          const left = (this.running.get(key) ?? 1) - 1;
          if (left > 0) this.running.set(key, left);
          else this.running.delete(key);
        }
      },
    },
  });

  /** `interceptors` with this tracker's activity interceptor added (first, so it counts the whole execution). */
  with(interceptors: WorkerInterceptors): WorkerInterceptors {
    return { ...interceptors, activity: [this.interceptor, ...(interceptors.activity ?? [])] };
  }
}
