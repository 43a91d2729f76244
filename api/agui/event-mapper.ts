import { createHash } from 'node:crypto';
import { EventType, PROTOCOL_VERSION, type AssistantMessage, type BaseEvent, type Interrupt, type Message, type RunAgentInput, type TokenUsage, type ToolMessage } from '@ag-ui/core';
import type { DurableEvent, StreamDeltaData } from '../../contracts/events';

interface StreamState {
  attempt: number;
  /** The text of this attempt so far. */
  text: string;
  /** The text message of this attempt, once it has text. */
  message: AssistantMessage | undefined;
  messageOpen: boolean;
  stepOpen: boolean;
}

const stepNameOf = (streamId: string) => `model:${streamId}`;

/**
 * Turns one run's Keel events (docs/protocol.md) into AG-UI 1.0 events (docs/agui.md): a model
 * stream is a step holding one assistant text message per attempt; a tool call is
 * TOOL_CALL_START/ARGS/END, its result TOOL_CALL_RESULT. A retried stream (a higher attempt)
 * ends the text message of the failed attempt and retracts it with a MESSAGES_SNAPSHOT that
 * leaves it out; the new attempt streams into a new message.
 *
 * Keeps the AG-UI messages it produced (as the client builds them from the events), so that a
 * snapshot holds the client's input messages and this run's, minus the retracted one.
 */
export class AguiEventMapper {
  private readonly streams = new Map<string, StreamState>();
  private readonly produced: Message[] = [];
  /** The text message of the last finished model step: the parent of the tool calls it asked for. */
  private parentMessageId: string | undefined;
  private readonly usage = { inputTokens: 0, outputTokens: 0, reported: false };
  /** The client's messages this run builds on (its input, or less after replaceHistory). */
  private base: Message[];
  /** Makes the IDs of the messages a run mints its own: a run that streams a turn again never reuses an earlier run's IDs. */
  private readonly runTag: string;

  constructor(
    private readonly input: RunAgentInput,
    private readonly emit: (event: BaseEvent) => void,
  ) {
    this.base = input.messages;
    this.runTag = createHash('sha256').update(input.runId).digest('hex').slice(0, 8);
  }

  /**
   * The run streams the turn of its last user message again from its start: whatever the client
   * holds after that message (what an earlier, broken run of it showed) is dropped by a snapshot.
   */
  replayFromLastUserMessage(): void {
    const last = this.base.map((m) => m.role).lastIndexOf('user');
    if (last < 0 || last === this.base.length - 1) return;
    this.base = this.base.slice(0, last + 1);
    this.emit({ type: EventType.MESSAGES_SNAPSHOT, messages: [...this.base] } as BaseEvent);
  }

  runStarted(): void {
    this.emit({ type: EventType.RUN_STARTED, threadId: this.input.threadId, runId: this.input.runId, protocolVersion: PROTOCOL_VERSION } as BaseEvent);
  }

  event(event: DurableEvent): void {
    const data = event.data as Record<string, unknown>;
    switch (event.type) {
      case 'stream.start':
        return this.streamStart(data.streamId as string, data.attempt as number);
      case 'stream.end':
        return this.streamEnd(data as { streamId: string; attempt: number; content: string | null; usage?: { inputTokens: number; outputTokens: number; usageMissing?: boolean } });
      case 'tool.call':
        return this.toolCall(data.toolCallId as string, data.name as string, data.arguments);
      case 'tool.result':
        return this.toolResult(data as { toolCallId: string; status: string; result?: unknown; error?: unknown });
      default:
        return;
    }
  }

  delta(delta: StreamDeltaData): void {
    const stream = this.streams.get(delta.streamId);
    if (!stream || delta.attempt < stream.attempt) return;
    if (delta.attempt > stream.attempt) this.restart(stream, delta.attempt);
    // docs/protocol.md "Applying deltas": only the part past what this attempt has is new; a delta
    // that starts past it (one in between was lost) is skipped: stream.end brings the whole text.
    if (delta.offset > stream.text.length) return;
    const fresh = delta.text.slice(Math.max(0, stream.text.length - delta.offset));
    this.appendText(delta.streamId, stream, fresh);
  }

  /** RUN_FINISHED, success: the turn's reply is complete. */
  finishSuccess(result: unknown): void {
    this.closeAll();
    this.emit({ type: EventType.RUN_FINISHED, threadId: this.input.threadId, runId: this.input.runId, outcome: { type: 'success' }, result, ...this.usageField() } as BaseEvent);
  }

  /** RUN_FINISHED, interrupt: the turn waits for these approvals. */
  finishInterrupt(interrupts: Interrupt[]): void {
    this.closeAll();
    this.emit({ type: EventType.RUN_FINISHED, threadId: this.input.threadId, runId: this.input.runId, outcome: { type: 'interrupt', interrupts }, ...this.usageField() } as BaseEvent);
  }

  /**
   * RUN_FINISHED, cancelled: the turn was cancelled (it did not fail). AG-UI 1.0 says a cancelled
   * run produced nothing, so there is no `result`: what Keel knows of the turn is in `metadata.keel`.
   */
  finishCancelled(keel: Record<string, unknown>): void {
    this.closeAll();
    this.emit({ type: EventType.RUN_FINISHED, threadId: this.input.threadId, runId: this.input.runId, outcome: { type: 'cancelled' }, metadata: { keel }, ...this.usageField() } as BaseEvent);
  }

  runError(code: string, message: string, metadata?: Record<string, unknown>): void {
    this.closeAll();
    this.emit({ type: EventType.RUN_ERROR, code, message, ...(metadata ? { metadata } : {}), ...this.usageField() } as BaseEvent);
  }

  private streamStart(streamId: string, attempt: number): void {
    const known = this.streams.get(streamId);
    if (known) {
      if (attempt > known.attempt) this.restart(known, attempt);
      return;
    }
    this.parentMessageId = undefined;
    this.streams.set(streamId, { attempt, text: '', message: undefined, messageOpen: false, stepOpen: true });
    this.emit({ type: EventType.STEP_STARTED, stepName: stepNameOf(streamId) } as BaseEvent);
  }

  private streamEnd(data: { streamId: string; attempt: number; content: string | null; usage?: { inputTokens: number; outputTokens: number; usageMissing?: boolean } }): void {
    let stream = this.streams.get(data.streamId);
    if (!stream) {
      // Its start was before this run's events (never the case for the events a run follows, but harmless).
      stream = { attempt: data.attempt, text: '', message: undefined, messageOpen: false, stepOpen: false };
      this.streams.set(data.streamId, stream);
    }
    if (data.attempt > stream.attempt) this.restart(stream, data.attempt);
    const content = data.content ?? '';
    if (content.startsWith(stream.text)) this.appendText(data.streamId, stream, content.slice(stream.text.length));
    else {
      // What was streamed is not the stored reply (not expected): the stored reply replaces it.
      this.retract(stream);
      this.appendText(data.streamId, stream, content);
    }
    if (stream.messageOpen) this.emit({ type: EventType.TEXT_MESSAGE_END, messageId: stream.message!.id } as BaseEvent);
    stream.messageOpen = false;
    if (stream.stepOpen) this.emit({ type: EventType.STEP_FINISHED, stepName: stepNameOf(data.streamId) } as BaseEvent);
    stream.stepOpen = false;
    this.parentMessageId = stream.message?.id;
    if (data.usage && !data.usage.usageMissing) {
      this.usage.inputTokens += data.usage.inputTokens;
      this.usage.outputTokens += data.usage.outputTokens;
      this.usage.reported = true;
    }
  }

  private appendText(streamId: string, stream: StreamState, text: string): void {
    if (!text) return;
    if (!stream.message) {
      stream.message = { id: `${streamId}-${stream.attempt}-${this.runTag}`, role: 'assistant', content: '' };
      this.produced.push(stream.message);
      stream.messageOpen = true;
      this.emit({ type: EventType.TEXT_MESSAGE_START, messageId: stream.message.id, role: 'assistant' } as BaseEvent);
    }
    stream.text += text;
    stream.message.content = stream.text;
    this.emit({ type: EventType.TEXT_MESSAGE_CONTENT, messageId: stream.message.id, delta: text } as BaseEvent);
  }

  /** A new attempt of the stream: the failed attempt's text is withdrawn. */
  private restart(stream: StreamState, attempt: number): void {
    this.retract(stream);
    stream.attempt = attempt;
  }

  private retract(stream: StreamState): void {
    const message = stream.message;
    stream.text = '';
    stream.message = undefined;
    if (!message) return;
    if (stream.messageOpen) this.emit({ type: EventType.TEXT_MESSAGE_END, messageId: message.id } as BaseEvent);
    stream.messageOpen = false;
    this.produced.splice(this.produced.indexOf(message), 1);
    this.emit({ type: EventType.MESSAGES_SNAPSHOT, messages: [...this.base, ...this.produced] } as BaseEvent);
  }

  private toolCall(toolCallId: string, name: string, args: unknown): void {
    const parentMessageId = this.parentMessageId;
    this.emit({ type: EventType.TOOL_CALL_START, toolCallId, toolCallName: name, ...(parentMessageId ? { parentMessageId } : {}) } as BaseEvent);
    this.emit({ type: EventType.TOOL_CALL_ARGS, toolCallId, delta: JSON.stringify(args ?? {}) } as BaseEvent);
    this.emit({ type: EventType.TOOL_CALL_END, toolCallId } as BaseEvent);
    // As the client files it: on its parent message, else on an assistant message named after the call.
    const call = { id: toolCallId, type: 'function' as const, function: { name, arguments: JSON.stringify(args ?? {}) } };
    const parent = this.produced.find((m): m is AssistantMessage => m.role === 'assistant' && m.id === parentMessageId);
    if (parent) parent.toolCalls = [...(parent.toolCalls ?? []), call];
    else this.produced.push({ id: parentMessageId ?? toolCallId, role: 'assistant', toolCalls: [call] });
  }

  private toolResult(data: { toolCallId: string; status: string; result?: unknown; error?: unknown }): void {
    const content = data.status === 'succeeded' ? JSON.stringify(data.result ?? null) : JSON.stringify({ status: data.status, ...(data.error === undefined ? {} : { error: data.error }) });
    const message: ToolMessage = { id: `${data.toolCallId}-result-${this.runTag}`, role: 'tool', toolCallId: data.toolCallId, content };
    this.produced.push(message);
    this.emit({ type: EventType.TOOL_CALL_RESULT, messageId: message.id, toolCallId: data.toolCallId, role: 'tool', content } as BaseEvent);
  }

  /** Open text messages and steps end before the run does (AG-UI's ordering rules). */
  private closeAll(): void {
    for (const [streamId, stream] of this.streams) {
      if (stream.messageOpen) this.emit({ type: EventType.TEXT_MESSAGE_END, messageId: stream.message!.id } as BaseEvent);
      if (stream.stepOpen) this.emit({ type: EventType.STEP_FINISHED, stepName: stepNameOf(streamId) } as BaseEvent);
      stream.messageOpen = false;
      stream.stepOpen = false;
    }
  }

  /** The model calls this run saw end, in AG-UI's accounting (absent when the provider reported none). */
  private usageField(): { usage?: TokenUsage[] } {
    if (!this.usage.reported) return {};
    const { inputTokens, outputTokens } = this.usage;
    return { usage: [{ inputTokens, outputTokens, totalTokens: inputTokens + outputTokens }] };
  }
}
