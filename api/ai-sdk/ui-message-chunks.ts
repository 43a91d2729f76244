import type { UIMessageChunk } from 'ai';
import type { DurableEvent, DurableEventData, StreamDeltaData } from '../../contracts/events';
import type { KeelError } from '../../contracts/errors';
import type { PendingApproval } from '../turn-waiter';
import { approvalIdOf } from './approval-id';

/**
 * The data part that marks a retried model call: the text part of the earlier attempt (its
 * `providerMetadata.keel` names the stream and attempt) is superseded. ai 6 has no
 * `reset-step` chunk, and its reader refuses chunk types it does not know (docs/ai-sdk.md).
 */
export const RESTART_PART = 'data-keel-restart';

/** The assistant UI message that answers Keel message `replyTo`: the same on the POST and on a resumed stream. */
export function replyUiMessageId(replyTo: string): string {
  return `${replyTo}_reply`;
}

interface StreamState {
  streamId: string;
  attempt: number;
  /** The text of this attempt the client has. */
  text: string;
  /** A text part is open (text-start sent, no text-end yet). */
  open: boolean;
  ended: boolean;
}

/**
 * Turns one Keel turn (its durable events and token deltas, as followTurn hands them on) into
 * the AI SDK's UI message stream chunks: one step per model call, its text, the tool calls with
 * their results, the approvals the turn waits for. Every chunk that updates a tool part is sent
 * only for a call the client has a part for (one this stream announced, or one in the client's
 * message it continues), since the reader fails on a tool call it does not know.
 */
export class UiMessageChunks {
  private stepOpen = false;
  private stream: StreamState | undefined;
  private readonly toolParts: Set<string>;
  private readonly asked = new Set<string>();
  /** The whole text of the last model call that ended: a turn.done with other content (a router's clarification) is shown as its own text. */
  private lastReply: string | undefined;

  constructor(
    private readonly write: (chunk: UIMessageChunk) => void,
    knownToolCalls: Iterable<string> = [],
  ) {
    this.toolParts = new Set(knownToolCalls);
  }

  start(messageId: string, sessionId: string): void {
    this.write({ type: 'start', messageId, messageMetadata: { keel: { sessionId } } });
  }

  event(event: DurableEvent): void {
    switch (event.type) {
      case 'stream.start':
        return this.streamStarted(event.data as DurableEventData<'stream.start'>);
      case 'stream.end':
        return this.streamEnded(event.data as DurableEventData<'stream.end'>);
      case 'tool.call': {
        const data = event.data as DurableEventData<'tool.call'>;
        return this.toolInput(data.toolCallId, data.name, data.arguments);
      }
      case 'approval.required': {
        // Only the call: the request is made when the turn pauses on it (paused), so a replay of a decided approval asks nothing.
        const data = event.data as DurableEventData<'approval.required'>;
        return this.toolInput(data.toolCallId, data.name, data.arguments);
      }
      case 'tool.result':
        return this.toolResult(event.data as DurableEventData<'tool.result'>);
      default:
        return;
    }
  }

  delta(delta: StreamDeltaData): void {
    const stream = this.streamOf(delta.streamId, delta.attempt);
    if (stream && !stream.ended) this.appendText(stream, delta.offset, delta.text);
  }

  /** The turn waits for a person: the approvals it waits on (each asked once), and the message is finished for now. */
  paused(approvals: PendingApproval[], metadata: Record<string, unknown>): void {
    for (const approval of approvals) this.askApproval(approval);
    this.closeStep();
    this.write({ type: 'finish', finishReason: 'tool-calls', messageMetadata: { keel: metadata } });
  }

  completed(done: DurableEventData<'turn.done'>, metadata: Record<string, unknown>): void {
    if (done.content && done.content !== this.lastReply) {
      this.openStep();
      const id = `txt_turn_${done.turn}`;
      this.write({ type: 'text-start', id });
      this.write({ type: 'text-delta', id, delta: done.content });
      this.write({ type: 'text-end', id });
    }
    this.closeStep();
    this.write({ type: 'finish', finishReason: 'stop', messageMetadata: { keel: metadata } });
  }

  failed(error: KeelError): void {
    this.closeText();
    this.write({ type: 'error', errorText: `${error.code}: ${error.message}` });
  }

  private streamStarted(data: DurableEventData<'stream.start'>): void {
    if (this.stream?.streamId === data.streamId) {
      this.streamOf(data.streamId, data.attempt);
      return;
    }
    this.closeStep();
    this.openStep();
    this.stream = { streamId: data.streamId, attempt: data.attempt, text: '', open: false, ended: false };
  }

  private streamEnded(data: DurableEventData<'stream.end'>): void {
    const stream = this.streamOf(data.streamId, data.attempt);
    if (!stream || stream.ended) return;
    // The whole reply: whatever deltas this client missed (a replay sends none for a finished call).
    if (data.content.startsWith(stream.text)) this.appendText(stream, 0, data.content);
    this.closeText();
    stream.ended = true;
    this.lastReply = data.content;
  }

  /** The current model call's state for this attempt; a later attempt starts over (RESTART_PART), an earlier one is stale. */
  private streamOf(streamId: string, attempt: number): StreamState | undefined {
    const stream = this.stream;
    if (!stream || stream.streamId !== streamId || attempt < stream.attempt) return undefined;
    if (attempt === stream.attempt) return stream;
    const shown = stream.open || stream.text.length > 0;
    this.closeText();
    if (shown) this.write({ type: RESTART_PART, data: { streamId, attempt, superseded: stream.attempt } });
    this.stream = { streamId, attempt, text: '', open: false, ended: false };
    return this.stream;
  }

  /** Applies a delta at `offset` of the attempt's text (docs/protocol.md, "Applying deltas"); a gap waits for stream.end. */
  private appendText(stream: StreamState, offset: number, text: string): void {
    const have = stream.text.length;
    if (offset > have) return;
    const fresh = text.slice(have - offset);
    if (!fresh) return;
    const id = textPartId(stream);
    if (!stream.open) {
      this.openStep();
      this.write({ type: 'text-start', id, providerMetadata: { keel: { streamId: stream.streamId, attempt: stream.attempt } } });
      stream.open = true;
    }
    this.write({ type: 'text-delta', id, delta: fresh });
    stream.text += fresh;
  }

  private toolInput(toolCallId: string, toolName: string, input: unknown): void {
    if (this.toolParts.has(toolCallId)) return;
    this.openStep();
    this.write({ type: 'tool-input-start', toolCallId, toolName });
    this.write({ type: 'tool-input-available', toolCallId, toolName, input: input ?? {} });
    this.toolParts.add(toolCallId);
  }

  /** An approval without a tool call of its own (a budget's, an unknown outcome's) is shown as a call of its name. */
  private askApproval(approval: { toolCallId: string; name: string; arguments?: unknown; digest: string; expiresAt: string }): void {
    if (this.asked.has(approval.toolCallId)) return;
    this.toolInput(approval.toolCallId, approval.name, approval.arguments);
    this.write({ type: 'tool-approval-request', approvalId: approvalIdOf(approval.toolCallId, approval.digest), toolCallId: approval.toolCallId, approvalDescriptor: { expiresAt: approval.expiresAt } });
    this.asked.add(approval.toolCallId);
  }

  private toolResult(data: DurableEventData<'tool.result'>): void {
    const { toolCallId } = data;
    if (!this.toolParts.has(toolCallId)) return;
    if (data.status === 'succeeded') this.write({ type: 'tool-output-available', toolCallId, output: data.result ?? null });
    else if (data.status === 'rejected') this.write({ type: 'tool-output-denied', toolCallId });
    else this.write({ type: 'tool-output-error', toolCallId, errorText: data.error ? `${data.error.code}: ${data.error.message}` : `The tool call was ${data.status}` });
  }

  private closeText(): void {
    const stream = this.stream;
    if (!stream?.open) return;
    this.write({ type: 'text-end', id: textPartId(stream) });
    stream.open = false;
  }

  private openStep(): void {
    if (this.stepOpen) return;
    this.write({ type: 'start-step' });
    this.stepOpen = true;
  }

  private closeStep(): void {
    this.closeText();
    if (!this.stepOpen) return;
    this.write({ type: 'finish-step' });
    this.stepOpen = false;
  }
}

function textPartId(stream: StreamState): string {
  return `txt_${stream.streamId}_${stream.attempt}`;
}
