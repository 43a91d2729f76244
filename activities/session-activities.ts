import { Context } from '@temporalio/activity';
import type OpenAI from 'openai';
import { sql, type DatabasePool, type DatabaseTransactionConnection } from 'slonik';
import { z } from 'zod';
import type { ErrorBody } from '../contracts/errors';
import type { StreamDeltaData, Usage } from '../contracts/events';
import type { PendingMessage } from '../contracts/session';
import { appendEvent, notify } from '../db/events';
import { conversationUpTo, insertMessage, MessageRow } from '../db/messages';
import { markSessionEnded } from '../db/sessions';
import { DeltaCoalescer } from './delta-coalescer';
import type { Logger } from '../config/logger';
import type { Metrics } from '../config/metrics';
import { costOf, type PriceTable } from '../config/pricing';
import { classifyLlmError, contentFilterFailure } from './llm-errors';
import { assistantPosition, type ModelToolCall } from './tool-activities';

export interface ActivityDeps {
  pool: DatabasePool;
  openai: OpenAI;
  streamCoalesceMs: number;
  llmTimeoutMs: number;
  prices: PriceTable;
  metrics: Metrics;
  log: Logger;
}

export interface StreamReplyInput {
  sessionId: string;
  /** The API request that sent the message this turn answers; for log lines only. */
  requestId?: string;
  turn: number;
  step: number;
  replyTo: string;
  /** The user message this turn answers. */
  content: string;
  /** Accepted messages not yet stored: written, with message.accepted, before stream.start. */
  record: PendingMessage[];
  model: string;
  temperature?: number;
  systemPrompt?: string;
  tools?: { name: string; description: string; parameters: Record<string, unknown> }[];
  /** Write turn.done with the reply when the model finishes without asking for tools. */
  completesTurn: boolean;
}

export interface StreamReplyResult {
  messageId: string;
  content: string;
  finishReason: string;
  usage: Usage;
  toolCalls: ModelToolCall[];
}

export interface TurnFailureInput {
  sessionId: string;
  requestId?: string;
  turn: number;
  replyTo: string;
  error: ErrorBody;
  status?: 'failed' | 'cancelled';
}

export const streamIdOf = (turn: number, step: number) => `t${turn}-s${step}`;
export const replyMessageIdOf = (sessionId: string, turn: number, step: number) => `${sessionId}-t${turn}-r${step}`;

const StreamEndRow = z.object({ data: z.unknown() });

/** NOTIFY payloads are limited to 8000 bytes; 1,000 UTF-16 units stay under it even when every one is a 6-byte JSON escape. */
const MAX_DELTA_CHARS = 1_000;

function splitDelta(delta: StreamDeltaData): StreamDeltaData[] {
  if (delta.text.length <= MAX_DELTA_CHARS) return [delta];
  const pieces: StreamDeltaData[] = [];
  for (let at = 0; at < delta.text.length; at += MAX_DELTA_CHARS) {
    pieces.push({ ...delta, offset: delta.offset + at, text: delta.text.slice(at, at + MAX_DELTA_CHARS) });
  }
  return pieces;
}

function toChatMessage(m: MessageRow): OpenAI.ChatCompletionMessageParam {
  if (m.role === 'tool') return { role: 'tool', tool_call_id: m.tool_call_id ?? '', content: m.content };
  if (m.role === 'system') return { role: 'system', content: m.content };
  if (m.role === 'user') return { role: 'user', content: m.content };
  if (!m.tool_calls?.length) return { role: 'assistant', content: m.content };
  return {
    role: 'assistant',
    content: m.content || null,
    tool_calls: m.tool_calls.map((c) => ({ id: c.id, type: 'function' as const, function: { name: c.name, arguments: c.arguments } })),
  };
}

function toChatMessages(rows: MessageRow[], systemPrompt?: string): OpenAI.ChatCompletionMessageParam[] {
  const messages = rows.map(toChatMessage);
  return systemPrompt ? [{ role: 'system', content: systemPrompt }, ...messages] : messages;
}

/** Joins streamed tool-call fragments by index, as the OpenAI stream sends them. */
class ToolCallAssembler {
  private readonly calls: { id: string; name: string; arguments: string }[] = [];

  add(deltas: OpenAI.ChatCompletionChunk.Choice.Delta.ToolCall[] | undefined): void {
    for (const d of deltas ?? []) {
      const call = (this.calls[d.index] ??= { id: '', name: '', arguments: '' });
      if (d.id) call.id = d.id;
      if (d.function?.name) call.name += d.function.name;
      if (d.function?.arguments) call.arguments += d.function.arguments;
    }
  }

  result(): ModelToolCall[] {
    return this.calls.filter(Boolean).map((c, i) => ({ modelCallId: c.id || `call_${i}`, name: c.name, arguments: c.arguments || '{}' }));
  }
}

function pendingUserRow(input: StreamReplyInput): MessageRow {
  return {
    id: input.replyTo,
    session_id: input.sessionId,
    turn: input.turn,
    position: 0,
    role: 'user',
    content: input.content,
    client_message_id: null,
    input_tokens: null,
    output_tokens: null,
    tool_calls: null,
    tool_call_id: null,
    cost_usd: null,
    created_at: 0,
  };
}

/** Stores accepted user messages with their message.accepted events; a repeat is a no-op. */
async function recordMessagesIn(tx: DatabaseTransactionConnection, sessionId: string, messages: PendingMessage[]): Promise<void> {
  for (const m of messages) {
    const clientId = m.clientMessageId ? { clientMessageId: m.clientMessageId } : {};
    await insertMessage(tx, { id: m.messageId, sessionId, turn: m.turn, position: 0, role: 'user', content: m.content, ...clientId });
    await appendEvent(tx, {
      sessionId,
      key: `accepted:${m.messageId}`,
      type: 'message.accepted',
      data: { messageId: m.messageId, turn: m.turn, content: m.content, ...clientId },
    });
  }
}

/** What every turn log line carries: the request that sent the message, the session and the workflow run. */
function turnLogIds(input: { sessionId: string; requestId?: string; turn: number }) {
  const run = Context.current().info.workflowExecution;
  return { requestId: input.requestId, sessionId: input.sessionId, workflowId: run?.workflowId, runId: run?.runId, turn: input.turn };
}

/** Built by the worker with its dependencies; every activity is idempotent under retry. */
export function createSessionActivities(deps: ActivityDeps) {
  const { pool } = deps;

  async function recordUserMessages(input: { sessionId: string; messages: PendingMessage[] }): Promise<void> {
    await pool.transaction((tx) => recordMessagesIn(tx, input.sessionId, input.messages));
  }

  async function completedReply(sessionId: string, streamId: string): Promise<StreamReplyResult | null> {
    const row = await pool.maybeOne(sql.type(StreamEndRow)`
      SELECT data FROM session_events WHERE session_id = ${sessionId} AND event_key = ${`${streamId}:end`}`);
    if (!row) return null;
    const data = row.data as StreamReplyResult;
    const message = await pool.maybeOne(sql.type(z.object({ tool_calls: MessageRow.shape.tool_calls }))`
      SELECT tool_calls FROM messages WHERE id = ${data.messageId}`);
    const toolCalls = (message?.tool_calls ?? []).map((c) => ({ modelCallId: c.id, name: c.name, arguments: c.arguments }));
    return { messageId: data.messageId, content: data.content, finishReason: data.finishReason, usage: data.usage, toolCalls };
  }

  async function streamReply(input: StreamReplyInput): Promise<StreamReplyResult> {
    const ctx = Context.current();
    const activityStartedAt = performance.now();
    // Time on the task queue: how long the turn waited for a worker (same clock when co-located).
    const scheduleToStartMs = Math.max(0, Date.now() - ctx.info.currentAttemptScheduledTimestampMs);
    const attempt = ctx.info.attempt;
    const streamId = streamIdOf(input.turn, input.step);
    // An earlier attempt may have committed its reply and died before reporting completion.
    const done = attempt > 1 ? await completedReply(input.sessionId, streamId) : null;
    if (done) return done;

    // Written while the model request is in flight: it only has to land before the first delta.
    const started = pool.transaction(async (tx) => {
      await recordMessagesIn(tx, input.sessionId, input.record);
      await appendEvent(tx, {
        sessionId: input.sessionId,
        key: `${streamId}:start:${attempt}`,
        type: 'stream.start',
        data: { streamId, turn: input.turn, replyTo: input.replyTo, attempt },
      });
    });
    started.catch(() => undefined);
    const history = await conversationUpTo(pool, input.sessionId, input.turn);
    // The user message may still be on its way into the table; the model sees it either way.
    if (!history.some((m) => m.id === input.replyTo)) history.push(pendingUserRow(input));
    const coalescer = new DeltaCoalescer(streamId, attempt, deps.streamCoalesceMs, async (delta) => {
      await started;
      for (const piece of splitDelta(delta)) await notify(pool, { k: 'd', sessionId: input.sessionId, ...piece });
    });
    // The model may be slow to start; keep the attempt alive while the request is pending.
    // Heartbeats go out on a timer, not per chunk (each one crosses into the native bridge), and
    // only while the model shows life: before its first chunk, or with a chunk since the last beat.
    // A stream that stalls stops heartbeating, and Temporal retries the attempt.
    let chunkSinceBeat = true;
    let awaitingFirstChunk = true;
    const beat = setInterval(() => {
      if (!awaitingFirstChunk && !chunkSinceBeat) return;
      chunkSinceBeat = false;
      ctx.heartbeat();
    }, Math.max(200, (ctx.info.heartbeatTimeoutMs ?? 30_000) / 3));
    let content = '';
    const requestedAt = performance.now();
    let firstTokenAt: number | null = null;
    const toolCalls = new ToolCallAssembler();
    let finishReason: string | null = null;
    let usage: Usage = { inputTokens: 0, outputTokens: 0, costUsd: 0 };
    try {
      const stream = await deps.openai.chat.completions.create(
        {
          model: input.model,
          messages: toChatMessages(history, input.systemPrompt),
          stream: true,
          stream_options: { include_usage: true },
          user: input.sessionId,
          ...(input.temperature === undefined ? {} : { temperature: input.temperature }),
          ...(input.tools?.length ? { tools: input.tools.map((t) => ({ type: 'function' as const, function: t })) } : {}),
        },
        { signal: ctx.cancellationSignal, timeout: deps.llmTimeoutMs },
      );
      for await (const chunk of stream) {
        awaitingFirstChunk = false;
        chunkSinceBeat = true;
        const choice = chunk.choices[0];
        const text = choice?.delta?.content ?? '';
        if (text) {
          firstTokenAt ??= performance.now();
          content += text;
          coalescer.push(text);
        }
        toolCalls.add(choice?.delta?.tool_calls);
        if (choice?.finish_reason) finishReason = choice.finish_reason;
        if (chunk.usage) {
          const tokens = { inputTokens: chunk.usage.prompt_tokens, outputTokens: chunk.usage.completion_tokens };
          usage = { ...tokens, costUsd: costOf(deps.prices, input.model, tokens) };
        }
      }
    } catch (error) {
      await started.catch(() => undefined);
      // Cancelled by the workflow (cancel, interrupt): report it as a cancellation, never as a failure to retry.
      if (ctx.cancellationSignal.aborted) throw ctx.cancellationSignal.reason;
      const failure = classifyLlmError(error);
      deps.metrics.errors.inc({ code: (failure as { type?: string }).type ?? 'LLM_API_ERROR' });
      throw failure;
    } finally {
      clearInterval(beat);
      coalescer.dispose();
    }
    // An aborted stream can end without an error; a cancelled attempt must not commit a partial reply.
    if (ctx.cancellationSignal.aborted) throw ctx.cancellationSignal.reason;
    // So can a connection cut by the provider: no finish reason means the reply is incomplete.
    if (finishReason === null) throw classifyLlmError(new Error('The model stream ended before the reply was complete'));
    await started;
    await coalescer.flush();
    if (finishReason === 'content_filter') throw contentFilterFailure();

    const calls = toolCalls.result();
    const messageId = replyMessageIdOf(input.sessionId, input.turn, input.step);
    await pool.transaction(async (tx) => {
      await insertMessage(tx, {
        id: messageId,
        sessionId: input.sessionId,
        turn: input.turn,
        position: assistantPosition(input.step),
        role: 'assistant',
        content,
        inputTokens: usage.inputTokens,
        outputTokens: usage.outputTokens,
        costUsd: usage.costUsd,
        ...(calls.length ? { toolCalls: calls.map((c) => ({ id: c.modelCallId, name: c.name, arguments: c.arguments })) } : {}),
      });
      await appendEvent(tx, {
        sessionId: input.sessionId,
        key: `${streamId}:end`,
        type: 'stream.end',
        data: { streamId, attempt, messageId, content, finishReason, usage },
      });
      if (input.completesTurn && calls.length === 0) {
        await appendEvent(tx, {
          sessionId: input.sessionId,
          key: `turn:${input.turn}:done`,
          type: 'turn.done',
          data: { turn: input.turn, replyTo: input.replyTo, status: 'completed', messageId, content, usage },
        });
      }
    });
    const { metrics } = deps;
    metrics.modelCallDuration.observe((performance.now() - requestedAt) / 1000);
    if (firstTokenAt !== null) metrics.timeToFirstToken.observe((firstTokenAt - requestedAt) / 1000);
    metrics.tokens.inc({ direction: 'input' }, usage.inputTokens);
    metrics.tokens.inc({ direction: 'output' }, usage.outputTokens);
    metrics.costUsd.inc(usage.costUsd);
    if (input.completesTurn && calls.length === 0) metrics.turns.inc({ status: 'completed' });
    deps.log.info(
      {
        ...turnLogIds(input),
        step: input.step,
        attempt,
        finishReason,
        toolCalls: calls.length,
        inputTokens: usage.inputTokens,
        outputTokens: usage.outputTokens,
        scheduleToStartMs,
        beforeRequestMs: Math.round(requestedAt - activityStartedAt),
        ...(firstTokenAt === null ? {} : { ttftMs: Math.round(firstTokenAt - requestedAt) }),
        ms: Math.round(performance.now() - requestedAt),
      },
      'model reply committed',
    );
    return { messageId, content, finishReason, usage, toolCalls: calls };
  }

  async function recordTurnFailure(input: TurnFailureInput): Promise<void> {
    const inserted = await pool.transaction(async (tx) => {
      await appendEvent(tx, {
        sessionId: input.sessionId,
        key: `turn:${input.turn}:error`,
        type: 'error',
        data: { ...input.error, turn: input.turn, replyTo: input.replyTo, ...(input.requestId ? { requestId: input.requestId } : {}) },
      });
      const done = await appendEvent(tx, {
        sessionId: input.sessionId,
        key: `turn:${input.turn}:done`,
        type: 'turn.done',
        data: { turn: input.turn, replyTo: input.replyTo, status: input.status ?? 'failed', messageId: null, content: null, usage: null },
      });
      return done.inserted;
    });
    if (inserted) {
      deps.metrics.turns.inc({ status: input.status ?? 'failed' });
      deps.metrics.errors.inc({ code: input.error.code });
      deps.log.warn({ ...turnLogIds(input), code: input.error.code, status: input.status ?? 'failed' }, 'turn failed');
    }
  }

  async function expireSession(input: { sessionId: string; idleMs: number }): Promise<void> {
    await pool.transaction(async (tx) => {
      await markSessionEnded(tx, input.sessionId, 'expired');
      await appendEvent(tx, { sessionId: input.sessionId, key: 'session:expired', type: 'session.expired', data: { idleMs: input.idleMs } });
    });
  }

  /** Answers messages the session will not take (expired, or busy under the `reject` policy). */
  async function rejectMessages(input: { sessionId: string; messages: { messageId: string; clientMessageId?: string }[]; code: 'SESSION_EXPIRED' | 'SESSION_BUSY' }): Promise<void> {
    const message = input.code === 'SESSION_EXPIRED' ? 'Session expired. Please start a new conversation.' : 'The session is busy; the message was not accepted. Send it again when the current turn is done.';
    await pool.transaction(async (tx) => {
      for (const m of input.messages) {
        await appendEvent(tx, {
          sessionId: input.sessionId,
          key: `refused:${m.messageId}`,
          type: 'error',
          data: { code: input.code, message, recoverable: input.code === 'SESSION_BUSY', replyTo: m.messageId, ...(m.clientMessageId ? { clientMessageId: m.clientMessageId } : {}) },
        });
      }
    });
  }

  return { recordUserMessages, streamReply, recordTurnFailure, expireSession, rejectMessages };
}

export type SessionActivities = ReturnType<typeof createSessionActivities>;
