import { context, type Context } from '@opentelemetry/api';

/**
 * Carries each message's trace into the turn that answers it. The signal handler runs in the
 * trace of the API request that sent the message (workflows/interceptors.ts continues it); the
 * turn runs later, from the main loop, and would otherwise join the trace of the request that
 * started the session. Nothing here is durable or makes commands: after a continue-as-new a
 * queued message has no context and its turn is traced under the workflow run.
 */
export class MessageTraces {
  private readonly byMessage = new Map<string, Context>();

  /** Call in the signal handler, for a message that will get a turn. */
  remember(messageId: string): void {
    this.byMessage.set(messageId, context.active());
  }

  runTurn<T>(messageId: string, turn: () => Promise<T>): Promise<T> {
    const remembered = this.byMessage.get(messageId);
    this.byMessage.delete(messageId);
    return remembered ? context.with(remembered, turn) : turn();
  }
}
