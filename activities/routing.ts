import { Context } from '@temporalio/activity';
import { ApplicationFailure } from '@temporalio/common';
import type OpenAI from 'openai';
import { zodResponseFormat } from 'openai/helpers/zod';
import { sql, type DatabasePool, type DatabaseTransactionConnection } from 'slonik';
import { z } from 'zod';
import type { AgentVersions } from '../agents/versions';
import type { Logger } from '../config/logger';
import { costOf, type PriceTable } from '../config/pricing';
import type { ResolvedAgent } from '../contracts/agents';
import { RouteDecidedData, type RouteIntent, type Usage } from '../contracts/events';
import { FailureType } from '../contracts/failure-types';
import { parseJsonText } from '../contracts/json-text';
import { chooseRoute, ClassifierOutput, HUMAN_AGENT, REPHRASE_REQUEST, type RouteChoice } from '../contracts/routing';
import { assistantPosition, CloseTurnInput, RouteMessageInput, StartAgentInput, type RouteDecision } from '../contracts/turn';
import { appendEvent } from '../db/events';
import { conversationUpTo, insertMessage, type MessageRow } from '../db/messages';
import { acceptMessagesIn, turnLogIds } from './persistence';
import { classifyingPersistenceErrors, parseActivityInput, storableText } from './persistence-errors';
import { classifyLlmError } from './llm/llm-errors';

export interface RoutingDeps {
  pool: DatabasePool;
  openai: OpenAI;
  agents: AgentVersions;
  /** Turns of the conversation read (KEEL_CONTEXT_MAX_TURNS); the classifier looks at a few of them. */
  contextMaxTurns: number;
  prices: PriceTable;
  log: Logger;
}

/** How much of the conversation the classifier reads: the message to route and a few before it. */
const CLASSIFIER_CONTEXT_MESSAGES = 12;
const HEARTBEAT_MS = 1_000;
/** The classifier's reply (and a router's own turn messages) sit before step 1's reply at 1000. */
const ROUTE_REPLY_POSITION = 500;

const routeFormat = zodResponseFormat(ClassifierOutput, 'route');
const StoredRoute = z.object({ data: RouteDecidedData });

export const routeReplyIdOf = (sessionId: string, turn: number) => `${sessionId}-t${turn}-route`;
export const skippedReplyIdOf = (sessionId: string, turn: number) => `${sessionId}-t${turn}-skipped`;

/** The classifier's instructions: the router's prompt, its members (with their keywords) and the answer's shape. */
function classifierPrompt(router: ResolvedAgent, members: ResolvedAgent[]): string {
  const keywords = router.router?.keywords ?? {};
  const lines = members.map((m) => {
    const words = Object.hasOwn(keywords, m.id) ? keywords[m.id] : undefined;
    return `- ${m.id}: ${m.description ?? m.name}${words?.length ? ` (keywords: ${words.join(', ')})` : ''}`;
  });
  return [
    router.systemPrompt.trim(),
    '',
    'Agents:',
    ...lines,
    `- ${HUMAN_AGENT}: a person on the team, when the user asks for one or no agent can help.`,
    '',
    'Classify the last user message. List one intent per request it makes, in the order the user made them, each with the agent that handles it,',
    'a confidence from 0 to 1 and a short reasoning. Set isAmbiguous and ask a clarificationQuestion when you cannot tell what the user needs.',
  ].join('\n');
}

function classifierMessages(rows: MessageRow[], replyTo: string): OpenAI.ChatCompletionMessageParam[] {
  const readable = rows.filter((m) => m.id === replyTo || ((m.role === 'user' || m.role === 'assistant' || m.role === 'event') && m.content.trim() !== '' && !m.tool_calls?.length));
  return readable.slice(-CLASSIFIER_CONTEXT_MESSAGES).map((m) => (m.role === 'assistant' ? { role: 'assistant', content: m.content } : { role: 'user', content: m.content }));
}

type Classified = { output: ClassifierOutput; attempts: number; usage: Usage } | { output: null; attempts: number; usage: Usage };

/**
 * The routing step of a router session's turn. Its record (route.decided, keyed by turn) is
 * written once: an attempt that finds it returns the stored decision, so a worker that died
 * after routing never routes the same message twice.
 */
export function createRoutingActivities(deps: RoutingDeps) {
  const { pool } = deps;

  async function storedDecision(sessionId: string, turn: number): Promise<RouteDecision | null> {
    const row = await pool.maybeOne(sql.type(StoredRoute)`SELECT data FROM session_events WHERE session_id = ${sessionId} AND event_key = ${`route:${turn}`}`);
    return row ? decisionOf(row.data) : null;
  }

  async function classify(input: RouteMessageInput, prompt: string, messages: OpenAI.ChatCompletionMessageParam[]): Promise<Classified> {
    const ctx = Context.current();
    const usage: Usage = { inputTokens: 0, outputTokens: 0, costUsd: 0 };
    // A malformed answer is asked again once; a second one is given up on (the user is asked to rephrase).
    for (let attempt = 1; attempt <= 2; attempt++) {
      const beat = setInterval(() => ctx.heartbeat(), HEARTBEAT_MS);
      let completion: OpenAI.ChatCompletion;
      try {
        completion = await deps.openai.chat.completions.create(
          { model: input.model, messages: [{ role: 'system', content: prompt }, ...messages], response_format: routeFormat, user: input.sessionId, temperature: 0 },
          { signal: ctx.cancellationSignal },
        );
      } catch (error) {
        if (ctx.cancellationSignal.aborted) throw ctx.cancellationSignal.reason;
        throw classifyLlmError(error);
      } finally {
        clearInterval(beat);
      }
      if (completion.usage) {
        const tokens = { inputTokens: completion.usage.prompt_tokens, outputTokens: completion.usage.completion_tokens };
        usage.inputTokens += tokens.inputTokens;
        usage.outputTokens += tokens.outputTokens;
        usage.costUsd += costOf(deps.prices, input.model, tokens);
      }
      const output = parseClassifierAnswer(completion.choices[0]?.message?.content ?? null);
      if (output) return { output, attempts: attempt, usage };
      deps.log.warn({ ...turnLogIds(input), attempt }, 'router classifier answered with malformed output');
      if (attempt === 2) return { output: null, attempts: attempt, usage };
    }
    return { output: null, attempts: 2, usage };
  }

  async function routeMessage(raw: RouteMessageInput): Promise<RouteDecision> {
    const input = parseActivityInput(RouteMessageInput, raw);
    const done = await storedDecision(input.sessionId, input.turn);
    if (done) return done;
    await pool.transaction((tx) => acceptMessagesIn(tx, input.sessionId, input.accept));
    const [rows, router, ...members] = await Promise.all([
      conversationUpTo(pool, input.sessionId, input.turn, input.replyTo, deps.contextMaxTurns),
      deps.agents.get(input.router.id, input.router.version),
      ...input.members.map((m) => deps.agents.get(m.id, m.version)),
    ]);
    if (!router || members.some((m) => !m)) throw ApplicationFailure.nonRetryable(`router ${input.router.id} or one of its members is not stored`, FailureType.persistenceInvalid);
    if (!rows.some((m) => m.id === input.replyTo)) throw ApplicationFailure.nonRetryable(`message ${input.replyTo} is not stored`, FailureType.persistenceInvalid);
    const classified = await classify(input, classifierPrompt(router, members as ResolvedAgent[]), classifierMessages(rows, input.replyTo));
    const ids = input.members.map((m) => m.id);
    const choice: RouteChoice = classified.output ? chooseRoute(classified.output, ids, input.threshold) : { outcome: 'rephrase', chosen: [], question: REPHRASE_REQUEST };
    const intents: RouteIntent[] = (classified.output?.intents ?? []).map((i) => ({ agent: storableText(i.agent).slice(0, 64), confidence: i.confidence, reasoning: storableText(i.reasoning).slice(0, 1_000) }));
    const data = {
      turn: input.turn,
      router: input.router.id,
      intents,
      chosen: choice.chosen,
      outcome: choice.outcome,
      isAmbiguous: classified.output?.isAmbiguous ?? false,
      attempts: classified.attempts,
      usage: classified.usage,
    };
    const written = await pool.transaction(async (tx) => {
      const decided = await appendEvent(tx, { sessionId: input.sessionId, key: `route:${input.turn}`, type: 'route.decided', data });
      if (!decided.inserted) return false;
      if (choice.question !== undefined) await askUser(tx, input, choice.question, choice.clarification ?? 'unreadable', classified.usage);
      return true;
    });
    deps.log.info({ ...turnLogIds(input), outcome: choice.outcome, chosen: choice.chosen, attempts: classified.attempts }, 'message routed');
    // Another attempt wrote the decision first: it is the one that stands.
    if (!written) return (await storedDecision(input.sessionId, input.turn)) ?? decisionOf(data);
    return decisionOf(data);
  }

  /** The router's question is the turn's reply: stored as an assistant message, a clarification event and turn.done. */
  async function askUser(tx: DatabaseTransactionConnection, input: RouteMessageInput, question: string, reason: 'ambiguous' | 'low_confidence' | 'unreadable', usage: Usage): Promise<void> {
    const messageId = routeReplyIdOf(input.sessionId, input.turn);
    await insertMessage(tx, { id: messageId, sessionId: input.sessionId, turn: input.turn, position: ROUTE_REPLY_POSITION, role: 'assistant', content: question, agentVersion: input.router.version });
    await appendEvent(tx, { sessionId: input.sessionId, key: `turn:${input.turn}:clarification`, type: 'clarification', data: { turn: input.turn, question, reason, messageId } });
    await appendEvent(tx, {
      sessionId: input.sessionId,
      key: `turn:${input.turn}:done`,
      type: 'turn.done',
      data: { turn: input.turn, replyTo: input.replyTo, status: 'completed', messageId, content: question, usage, agentVersion: input.router.version, agent: input.router.id },
    });
  }

  async function startAgent(raw: StartAgentInput): Promise<void> {
    const input = parseActivityInput(StartAgentInput, raw);
    await pool.transaction(async (tx) => {
      if (input.handoff) {
        await appendEvent(tx, {
          sessionId: input.sessionId,
          key: `turn:${input.turn}:handoff:${input.index}`,
          type: 'agent.handoff',
          data: { turn: input.turn, from: input.handoff.from, to: input.agent.id, reason: input.handoff.reason, toolCallId: input.handoff.toolCallId },
        });
      }
      await appendEvent(tx, {
        sessionId: input.sessionId,
        key: `turn:${input.turn}:agent:${input.index}`,
        type: 'agent.started',
        data: { turn: input.turn, agent: input.agent.id, version: input.agent.version, reason: input.handoff ? 'handoff' : 'route', index: input.index },
      });
    });
  }

  /** Ends a turn no agent answers: held for the operator, or the rest skipped after a refused action. */
  async function closeTurn(raw: CloseTurnInput): Promise<void> {
    const input = parseActivityInput(CloseTurnInput, raw);
    await pool.transaction(async (tx) => {
      await acceptMessagesIn(tx, input.sessionId, input.accept);
      if (input.why.kind === 'operator') {
        await appendEvent(tx, {
          sessionId: input.sessionId,
          key: `turn:${input.turn}:done`,
          type: 'turn.done',
          data: { turn: input.turn, replyTo: input.replyTo, status: 'completed', messageId: null, content: null, usage: null, awaitingOperator: true },
        });
        return;
      }
      const messageId = skippedReplyIdOf(input.sessionId, input.turn);
      const content = skippedNotice(input.why.agents, input.why.outcome);
      await insertMessage(tx, { id: messageId, sessionId: input.sessionId, turn: input.turn, position: assistantPosition(input.why.afterStep + 1), role: 'assistant', content });
      await appendEvent(tx, {
        sessionId: input.sessionId,
        key: `turn:${input.turn}:done`,
        type: 'turn.done',
        data: { turn: input.turn, replyTo: input.replyTo, status: 'completed', messageId, content, usage: { inputTokens: 0, outputTokens: 0, costUsd: 0 } },
      });
    });
  }

  return classifyingPersistenceErrors({ routeMessage, startAgent, closeTurn });
}

export type RoutingActivities = ReturnType<typeof createRoutingActivities>;

function decisionOf(data: z.infer<typeof RouteDecidedData>): RouteDecision {
  const human = data.outcome === 'escalate' ? data.intents.find((i) => i.agent === HUMAN_AGENT) : undefined;
  return { outcome: data.outcome, chosen: data.chosen, usage: data.usage, ...(data.outcome === 'escalate' ? { reason: human?.reasoning || 'The user asked for a person.' } : {}) };
}

/** The model's JSON answer, checked against the schema; null when it is not one. */
export function parseClassifierAnswer(content: string | null): ClassifierOutput | null {
  return parseJsonText(ClassifierOutput, content);
}

/** What the user reads when the rest of a request was not done because an earlier action was refused. */
export function skippedNotice(agents: string[], outcome: 'rejected' | 'expired'): string {
  const why = outcome === 'rejected' ? 'was rejected' : 'was not approved in time';
  return `I stopped there: an earlier action of your request ${why}, so I did not go on with the rest (skipped: ${agents.join(', ')}). Ask again if you still want it.`;
}
