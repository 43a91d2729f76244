import { Context } from '@temporalio/activity';
import type OpenAI from 'openai';
import { sql, type DatabasePool } from 'slonik';
import { z } from 'zod';
import { FailureType } from '../../contracts/failure-types';
import { systemPromptOf, type ResolvedAgent } from '../../contracts/agents';
import type { ChannelMessage } from '../../contracts/channel';
import { Usage, type StreamDeltaData } from '../../contracts/events';
import { ESCALATE_TOOL, HANDOFF_TOOL } from '../../contracts/builtin-tools';
import { assistantPosition, replyMessageIdOf, StreamReplyInput, streamIdOf, type StreamReplyResult } from '../../contracts/turn';
import { appendEvent, notify } from '../../db/events';
import { conversationAndEvent, conversationUpTo, insertMessage, MessageRow } from '../../db/messages';
import type { Logger } from '../../config/logger';
import type { Metrics } from '../../config/metrics';
import { costOf, type PriceTable } from '../../config/pricing';
import { ApplicationFailure } from '@temporalio/common';
import type { AgentVersions } from '../../agents/versions';
import { acceptMessagesIn, turnLogIds } from '../persistence';
import { classifyingPersistenceErrors, parseActivityInput, storableText } from '../persistence-errors';
import { toChatMessages } from './conversation';
import { modelToolName, toolNameReader } from './tool-names';
import { DeltaCoalescer } from './delta-coalescer';
import { classifyLlmError, contentFilterFailure } from './llm-errors';
import { ToolCallAssembler } from './tool-call-assembler';

export interface StreamReplyDeps {
  pool: DatabasePool;
  openai: OpenAI;
  agents: AgentVersions;
  streamCoalesceMs: number;
  /** Turns of the conversation the model is sent (KEEL_CONTEXT_MAX_TURNS). */
  contextMaxTurns: number;
  prices: PriceTable;
  metrics: Metrics;
  log: Logger;
}

const StreamEndRow = z.object({ data: z.object({ messageId: z.string(), finishReason: z.string(), usage: Usage }) });

/** What a router's member is told: others may answer parts of the same message before or after it. */
const MEMBER_NOTE = 'You are one of several specialists in this conversation. Answer only the part of the user\'s latest message that is yours; another specialist handles the rest.';

/** NOTIFY payloads are limited to 8000 bytes; 1,000 UTF-16 units stay under it even when every one is a 6-byte JSON escape. */
const MAX_DELTA_CHARS = 1_000;
/** How often a running model call heartbeats (at most; a third of its heartbeat time-out when that is shorter). */
const HEARTBEAT_EVERY_MS = 1_000;

function stallFailure(stallMs: number): ApplicationFailure {
  return ApplicationFailure.create({ type: 'LLM_TIMEOUT', message: `The model stream sent nothing for ${stallMs} ms`, nonRetryable: false });
}

function splitDelta(delta: StreamDeltaData): StreamDeltaData[] {
  if (delta.text.length <= MAX_DELTA_CHARS) return [delta];
  const pieces: StreamDeltaData[] = [];
  for (let at = 0; at < delta.text.length; at += MAX_DELTA_CHARS) {
    pieces.push({ ...delta, offset: delta.offset + at, text: delta.text.slice(at, at + MAX_DELTA_CHARS) });
  }
  return pieces;
}

/** The streaming model call: the one activity that talks to the model provider. */
export function createStreamReplyActivities(deps: StreamReplyDeps) {
  const { pool } = deps;

  /**
   * The reply an earlier attempt (or an earlier run, before a `workflow reset`) already committed,
   * from its stream.end's data when the caller has read it.
   */
  async function committedReply(sessionId: string, streamId: string, endData?: unknown): Promise<StreamReplyResult | null> {
    const end = endData
      ? StreamEndRow.shape.data.parse(endData)
      : (await pool.maybeOne(sql.type(StreamEndRow)`SELECT data FROM session_events WHERE session_id = ${sessionId} AND event_key = ${`${streamId}:end`}`))?.data;
    if (!end) return null;
    const message = await pool.maybeOne(sql.type(z.object({ tool_calls: MessageRow.shape.tool_calls }))`
      SELECT tool_calls FROM messages WHERE id = ${end.messageId}`);
    const toolCalls = (message?.tool_calls ?? []).map((c) => ({ modelCallId: c.id, name: c.name, arguments: c.arguments }));
    return { messageId: end.messageId, finishReason: end.finishReason, usage: end.usage, toolCalls };
  }

  async function streamReply(raw: StreamReplyInput): Promise<StreamReplyResult> {
    const input = parseActivityInput(StreamReplyInput, raw);
    const ctx = Context.current();
    const activityStartedAt = performance.now();
    // Time on the task queue: how long the turn waited for a worker (same clock when co-located).
    const scheduleToStartMs = Math.max(0, Date.now() - ctx.info.currentAttemptScheduledTimestampMs);
    const attempt = ctx.info.attempt;
    const streamId = streamIdOf(input.turn, input.step);
    // Checked on every attempt: an earlier attempt may have committed and died before reporting,
    // and a `workflow reset` re-runs a committed step as attempt 1. Read with the conversation.
    const [read, stored] = await Promise.all([
      conversationAndEvent(pool, input.sessionId, input.turn, input.replyTo, deps.contextMaxTurns, `${streamId}:end`),
      deps.agents.get(input.agent.id, input.agent.version),
    ]);
    const done = read.eventData ? await committedReply(input.sessionId, streamId, read.eventData) : null;
    if (done) return done;

    // Written while the model request is in flight: it only has to land before the first delta.
    const started = pool.transaction(async (tx) => {
      await acceptMessagesIn(tx, input.sessionId, input.accept);
      await appendEvent(tx, {
        sessionId: input.sessionId,
        key: `${streamId}:start:${attempt}`,
        type: 'stream.start',
        data: { streamId, turn: input.turn, replyTo: input.replyTo, attempt },
      });
    });
    started.catch(() => undefined);
    const { history, agent } = await (async () => {
      if (!stored) throw ApplicationFailure.nonRetryable(`agent ${input.agent.id} version ${input.agent.version} is not stored`, FailureType.persistenceInvalid);
      // An outside event that waited for this turn joins it with this acceptance: read the conversation after it.
      const joined = input.accept.some((m) => m.turn === input.turn && m.messageId !== input.replyTo);
      const rows = joined ? await started.then(() => conversationUpTo(pool, input.sessionId, input.turn, input.replyTo, deps.contextMaxTurns)) : read.rows;
      if (!rows.some((m) => m.id === input.replyTo)) throw ApplicationFailure.nonRetryable(`message ${input.replyTo} is not stored`, FailureType.persistenceInvalid);
      return { history: rows, agent: stored };
    })().catch(async (error: unknown) => {
      // The attempt ends only once the acceptance written meanwhile has landed (or failed).
      await started.catch(() => undefined);
      throw error;
    });
    const coalescer = new DeltaCoalescer(
      streamId,
      attempt,
      deps.streamCoalesceMs,
      async (delta) => {
        await started;
        for (const piece of splitDelta(delta)) await notify(pool, { k: 'd', sessionId: input.sessionId, ...piece });
      },
      () => deps.metrics.deltaPublishFailures.inc(),
    );
    // Heartbeats go out on a timer, not per chunk (each one crosses into the native bridge), for
    // as long as the attempt runs: a heartbeat is also how a cancel reaches it, stalled or not.
    // A stream that stops sending chunks for the heartbeat time-out is ended here, as a retryable
    // LLM_TIMEOUT. Before the first chunk the wait is bounded by the client's time-out
    // (KEEL_LLM_TIMEOUT_MS) until the response headers arrive, then by the activity's
    // start-to-close time-out (KEEL_LLM_TIMEOUT_MS + 5 s): a model may think before it streams.
    const stallMs = ctx.info.heartbeatTimeoutMs ?? 30_000;
    const stalled = new AbortController();
    let awaitingFirstChunk = true;
    let lastChunkAt = performance.now();
    const beat = setInterval(() => {
      if (!awaitingFirstChunk && performance.now() - lastChunkAt > stallMs) stalled.abort();
      else ctx.heartbeat();
    }, Math.max(100, Math.min(HEARTBEAT_EVERY_MS, stallMs / 3)));
    let content = '';
    const requestedAt = performance.now();
    let firstTokenAt: number | null = null;
    const toolCalls = new ToolCallAssembler();
    let finishReason: string | null = null;
    let reported: Usage | null = null;
    const handoffTargets = input.handoffTo?.length ? await Promise.all(input.handoffTo.map((m) => deps.agents.get(m.id, m.version))) : [];
    const tools = [
      ...agent.tools.map(({ name, description, parameters }) => ({ type: 'function' as const, function: { name: modelToolName(name), description, parameters } })),
      ...builtinToolsFor(input, handoffTargets),
    ];
    // The greeting opens the reply: streamed first, stored with it, so the model reads it later too.
    const greeting = input.greet && agent.personality?.greeting ? `${agent.personality.greeting}\n\n` : '';
    if (greeting) {
      content += greeting;
      coalescer.push(greeting);
    }
    try {
      // The client's own time-out (KEEL_LLM_TIMEOUT_MS, set on the client) bounds the wait for the response headers.
      const stream = await deps.openai.chat.completions.create(
        {
          model: input.model,
          messages: toChatMessages(history, input.member ? `${systemPromptOf(agent)}\n\n${MEMBER_NOTE}` : systemPromptOf(agent)),
          stream: true,
          stream_options: { include_usage: true },
          user: input.sessionId,
          ...(input.temperature === undefined ? {} : { temperature: input.temperature }),
          ...(tools.length ? { tools } : {}),
        },
        { signal: AbortSignal.any([ctx.cancellationSignal, stalled.signal]) },
      );
      for await (const chunk of stream) {
        awaitingFirstChunk = false;
        lastChunkAt = performance.now();
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
          reported = { ...tokens, costUsd: costOf(deps.prices, input.model, tokens) };
        }
      }
    } catch (error) {
      await started.catch(() => undefined);
      // Cancelled by the workflow (cancel, interrupt): report it as a cancellation, never as a failure to retry.
      if (ctx.cancellationSignal.aborted) throw ctx.cancellationSignal.reason;
      const failure = stalled.signal.aborted ? stallFailure(stallMs) : classifyLlmError(error);
      deps.metrics.errors.inc({ code: (failure as { type?: string }).type ?? 'LLM_API_ERROR' });
      throw failure;
    } finally {
      clearInterval(beat);
      coalescer.dispose();
    }
    // An aborted stream can end without an error; a cancelled attempt must not commit a partial reply.
    if (ctx.cancellationSignal.aborted) throw ctx.cancellationSignal.reason;
    if (stalled.signal.aborted) throw stallFailure(stallMs);
    // So can a connection cut by the provider: no finish reason means the reply is incomplete.
    if (finishReason === null) throw classifyLlmError(new Error('The model stream ended before the reply was complete'));
    await started;
    // The text still pending goes out with the stream.end below, in its statement (one round trip
    // fewer); NOTIFYs queued in a transaction are delivered at its commit, in order.
    const drained = await coalescer.drain();
    const lastDeltas = drained ? splitDelta(drained).map((piece): ChannelMessage => ({ k: 'd', sessionId: input.sessionId, ...piece })) : [];
    if (finishReason === 'content_filter') {
      for (const delta of lastDeltas) await notify(pool, delta).catch(() => deps.metrics.deltaPublishFailures.inc());
      throw contentFilterFailure();
    }
    // A provider that sent no usage: the message stores NULL tokens and cost, the events carry the flag.
    const usage: Usage = reported ?? { inputTokens: 0, outputTokens: 0, costUsd: 0, usageMissing: true };

    content = storableText(content);
    const keelName = toolNameReader([...agent.tools.map((t) => t.name), HANDOFF_TOOL, ESCALATE_TOOL]);
    const calls = toolCalls.result().map((c) => ({ ...c, name: storableText(keelName(c.name)), arguments: storableText(c.arguments) }));
    const messageId = replyMessageIdOf(input.sessionId, input.turn, input.step);
    // Another attempt of this step may have committed first (one that stalled, then resumed):
    // the stream.end key decides, under the session's row lock, and the loser returns the winner's reply.
    const committed = await pool
      .transaction(async (tx) => {
        const end = await appendEvent(
          tx,
          { sessionId: input.sessionId, key: `${streamId}:end`, type: 'stream.end', data: { streamId, attempt, messageId, content, finishReason, usage } },
          { notifyFirst: lastDeltas },
        );
        if (!end.inserted) return false;
        await insertMessage(tx, {
          id: messageId,
          sessionId: input.sessionId,
          turn: input.turn,
          position: assistantPosition(input.step),
          role: 'assistant',
          content,
          ...(reported ? { inputTokens: reported.inputTokens, outputTokens: reported.outputTokens, costUsd: reported.costUsd } : {}),
          ...(firstTokenAt === null ? {} : { ttftMs: Math.round(firstTokenAt - requestedAt) }),
          agentVersion: input.agent.version,
          ...(input.member ? { agentId: input.agent.id } : {}),
          ...(calls.length ? { toolCalls: calls.map((c) => ({ id: c.modelCallId, name: c.name, arguments: c.arguments })) } : {}),
        });
        // A reply that asks for no tools ends the turn, unless another agent answers after it.
        if (calls.length === 0 && !input.continues) {
          await appendEvent(tx, {
            sessionId: input.sessionId,
            key: `turn:${input.turn}:done`,
            type: 'turn.done',
            data: { turn: input.turn, replyTo: input.replyTo, status: 'completed', messageId, content, usage, agentVersion: input.sessionAgentVersion ?? input.agent.version, ...(input.member ? { agent: input.agent.id } : {}) },
          });
        }
        return true;
      });
    if (!committed) {
      const winner = await committedReply(input.sessionId, streamId);
      // The winner's stream.end is there (it stopped this commit); only a deletion could hide it.
      if (!winner) throw ApplicationFailure.create({ type: 'LLM_API_ERROR', message: 'another attempt committed this step, and its reply could not be read', nonRetryable: false });
      return winner;
    }
    const { metrics } = deps;
    metrics.modelCallDuration.observe((performance.now() - requestedAt) / 1000);
    if (firstTokenAt !== null) metrics.timeToFirstToken.observe((firstTokenAt - requestedAt) / 1000);
    metrics.tokens.inc({ direction: 'input' }, usage.inputTokens);
    metrics.tokens.inc({ direction: 'output' }, usage.outputTokens);
    metrics.costUsd.inc(usage.costUsd);
    if (calls.length === 0 && !input.continues) metrics.turns.inc({ status: 'completed' });
    if (!reported) deps.log.warn({ ...turnLogIds(input), step: input.step, attempt, model: input.model, messageId }, 'model reply came without usage: tokens and cost stored as unknown');
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
    return { messageId, finishReason, usage, toolCalls: calls };
  }

  // Failures of its writes are classified (retryable or not) by the wrapper.
  return classifyingPersistenceErrors({ streamReply });
}

export type StreamReplyActivities = ReturnType<typeof createStreamReplyActivities>;

/** The handoff and escalate tools of router sessions, as the model sees them (the workflow carries them out). */
function builtinToolsFor(input: StreamReplyInput, targets: (ResolvedAgent | null)[]) {
  const tools = [];
  const known = targets.filter((t): t is ResolvedAgent => t !== null);
  if (known.length) {
    tools.push({
      type: 'function' as const,
      function: {
        name: HANDOFF_TOOL,
        description: `Hand the conversation to another specialist when the request is theirs; they see the whole conversation. Specialists: ${known.map((t) => `${t.id} (${t.description ?? t.name})`).join('; ')}.`,
        parameters: {
          type: 'object',
          properties: { to: { type: 'string', enum: known.map((t) => t.id) }, reason: { type: 'string', description: 'Why they should take over.' } },
          required: ['to', 'reason'],
          additionalProperties: false,
        },
      },
    });
  }
  if (input.escalate) {
    tools.push({
      type: 'function' as const,
      function: {
        name: ESCALATE_TOOL,
        description: 'Pass the conversation to a person on the team: when the user asks for one, or when you cannot help.',
        parameters: { type: 'object', properties: { reason: { type: 'string', description: 'What the person needs to know.' } }, required: ['reason'], additionalProperties: false },
      },
    });
  }
  return tools;
}
