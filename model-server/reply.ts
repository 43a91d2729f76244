import { demoToolCall } from './demo-tools';
import { mcpDemoCall } from './mcp-demo';
import { escalationAsked, handoffAsked, isRouteRequest, onlyHandoffResults, routeReply } from './route-brain';
import { isOpenapiClassifyRequest, openapiClassifyReply } from './openapi-brain';
import { z } from 'zod';

export interface ToolCallSpec {
  id?: string;
  name: string;
  /** JSON text, as OpenAI sends it. */
  arguments: string;
}

const TextPart = z.object({ type: z.string(), text: z.string().optional() }).passthrough();
const Content = z.union([z.string(), z.array(TextPart)]);
const ToolCall = z
  .object({ id: z.string().min(1), type: z.string().optional(), function: z.object({ name: z.string(), arguments: z.string() }).passthrough() })
  .passthrough();

const Message = z.discriminatedUnion('role', [
  z.object({ role: z.enum(['system', 'developer', 'user']), content: Content }).passthrough(),
  z.object({ role: z.literal('assistant'), content: Content.nullish(), tool_calls: z.array(ToolCall).nullish() }).passthrough(),
  z.object({ role: z.literal('tool'), content: Content, tool_call_id: z.string().min(1) }).passthrough(),
]);
export type ChatMessage = z.infer<typeof Message>;

const Tool = z.object({ type: z.string(), function: z.object({ name: z.string() }).passthrough().optional() }).passthrough();

/** The part of a chat completion request the local model reads; everything else is accepted and ignored. */
export const ChatRequest = z
  .object({
    model: z.string().min(1),
    messages: z.array(Message).min(1),
    stream: z.boolean().nullish(),
    stream_options: z.object({ include_usage: z.boolean().nullish() }).passthrough().nullish(),
    user: z.string().nullish(),
    tools: z.array(Tool).nullish(),
    tool_choice: z.unknown().optional(),
  })
  .passthrough();
export type ChatRequest = z.infer<typeof ChatRequest>;

export type Reply = { kind: 'text'; text: string } | { kind: 'tool_calls'; calls: ToolCallSpec[] };

export interface ConversationProblem {
  message: string;
  param: string;
}

export function textOf(content: ChatMessage['content']): string {
  if (typeof content === 'string') return content;
  return (content ?? []).map((part) => part.text ?? '').join('');
}

export function promptTokens(messages: ChatMessage[]): number {
  const chars = messages.reduce((sum, m) => sum + textOf(m.content).length, 0);
  return Math.ceil(chars / 4);
}

/** Word-sized tokens that keep their whitespace, so joining them gives back `text` exactly. */
export function tokenize(text: string): string[] {
  return text.match(/\s*\S+\s*/g) ?? (text ? [text] : []);
}

/** Splits tool call arguments into several deltas, as OpenAI streams them. */
export function splitArguments(args: string, size = 6): string[] {
  const pieces: string[] = [];
  for (let i = 0; i < args.length; i += size) pieces.push(args.slice(i, i + size));
  return pieces.length ? pieces : [''];
}

function unansweredProblem(index: number, ids: Iterable<string>): ConversationProblem {
  return {
    message: `An assistant message with 'tool_calls' must be followed by tool messages responding to each 'tool_call_id'. The following tool_call_ids did not have response messages: ${[...ids].join(', ')}`,
    param: `messages.[${index}].role`,
  };
}

function orphanToolProblem(index: number): ConversationProblem {
  return {
    message: "Invalid parameter: messages with role 'tool' must be a response to a preceeding message with 'tool_calls'.",
    param: `messages.[${index}].role`,
  };
}

/** The checks OpenAI makes on tool call pairing, with its wording. */
export function conversationProblem(messages: ChatMessage[]): ConversationProblem | null {
  let answerable = new Set<string>();
  let unanswered = new Set<string>();
  let openedAt = -1;
  for (const [index, message] of messages.entries()) {
    if (message.role === 'tool') {
      if (!answerable.has(message.tool_call_id)) return orphanToolProblem(index);
      unanswered.delete(message.tool_call_id);
      continue;
    }
    if (unanswered.size) return unansweredProblem(openedAt, unanswered);
    const ids = message.role === 'assistant' ? (message.tool_calls ?? []).map((call) => call.id) : [];
    answerable = new Set(ids);
    unanswered = new Set(ids);
    openedAt = index;
  }
  return unanswered.size ? unansweredProblem(openedAt, unanswered) : null;
}

/** How Keel writes an outside event for the model (a system message). */
const EXTERNAL_EVENT_PREFIX = 'External event';

function sentence(text: string): string {
  return /[.!?]$/.test(text.trimEnd()) ? text : `${text}.`;
}

/** Keel's own texts for a call that did not run (activities/tool-activities.ts modelContent), not a tool's data that says "cancelled". */
function isRefusal(content: string): boolean {
  return /^(Rejected by the approver|The approval request expired|Cancelled|Skipped)\b/.test(content);
}

function numericResult(content: string): number | undefined {
  let value: unknown;
  try {
    value = JSON.parse(content);
  } catch {
    return undefined;
  }
  if (typeof value === 'number') return value;
  const result = typeof value === 'object' && value !== null ? (value as { result?: unknown }).result : undefined;
  return typeof result === 'number' ? result : undefined;
}

function toolResultsReply(contents: string[]): string {
  const refused = contents.filter(isRefusal);
  if (refused.length) return `The action was not performed: ${sentence(refused.join('; '))}`;
  const only = contents.length === 1 ? numericResult(contents[0] ?? '') : undefined;
  if (only !== undefined) return `The result is ${only}.`;
  return `Tool results: ${sentence(contents.join('; '))}`;
}

function echoReply(userTexts: string[]): string {
  const last = userTexts.at(-1);
  if (last === undefined) return 'Hello from the Keel local model.';
  const reply = `You said: ${last}.`;
  if (userTexts.length === 1) return reply;
  return `${reply} Earlier you said: "${userTexts[0]}". This is turn ${userTexts.length}.`;
}

export function offers(request: ChatRequest, name: string): boolean {
  if (request.tool_choice === 'none') return false;
  return (request.tools ?? []).some((tool) => tool.function?.name === name);
}

/** "Save a note: buy milk" or "remember that …" asks for the demo write tool. */
function noteIn(text: string): { title: string; body: string } | undefined {
  const match = /^(?:please\s+)?(?:save|take|make|write)\s+a\s+note\s*[:,-]?\s*(.+)$|^remember\s+(?:that\s+)?(.+)$/is.exec(text.trim());
  const body = (match?.[1] ?? match?.[2])?.trim();
  return body ? { title: body.slice(0, 60), body } : undefined;
}

function arithmeticIn(text: string): string | undefined {
  const match = /(-?\d+(?:\.\d+)?)\s*([-+*/])\s*(-?\d+(?:\.\d+)?)/.exec(text);
  return match ? `${match[1]} ${match[2]} ${match[3]}` : undefined;
}

function trailingToolMessages(messages: ChatMessage[]): ChatMessage[] {
  let start = messages.length;
  while (start > 0 && messages[start - 1]?.role === 'tool') start--;
  return messages.slice(start);
}

/**
 * The default brain: a pure function of the conversation, so tests can predict every reply
 * and see from it which context the runtime sent.
 */
export function brainReply(request: ChatRequest): Reply {
  const { messages } = request;
  if (isRouteRequest(request)) return routeReply(request);
  if (isOpenapiClassifyRequest(request)) return openapiClassifyReply(request);
  const toolResults = trailingToolMessages(messages);
  const results = toolResults.map((m) => textOf(m.content));
  if (toolResults.length && !onlyHandoffResults(results)) return { kind: 'text', text: toolResultsReply(results) };
  // After tool results that only hand over, or another agent's answer (a router's next member), the user's message is the one to answer.
  const last = toolResults.length || messages.at(-1)?.role === 'assistant' ? [...messages].reverse().find((m) => m.role === 'user') : messages.at(-1);
  if (last?.role === 'system' && textOf(last.content).startsWith(EXTERNAL_EVENT_PREFIX)) {
    return { kind: 'text', text: `An update just came in for you: ${textOf(last.content).slice(EXTERNAL_EVENT_PREFIX.length).trim()}` };
  }
  const lastText = last?.role === 'user' ? textOf(last.content) : '';
  const handoff = lastText && offers(request, 'handoff') ? handoffAsked(request, lastText) : undefined;
  if (handoff) return { kind: 'tool_calls', calls: [{ name: 'handoff', arguments: JSON.stringify(handoff) }] };
  const escalation = lastText && offers(request, 'escalate') ? escalationAsked(lastText) : undefined;
  if (escalation) return { kind: 'tool_calls', calls: [{ name: 'escalate', arguments: JSON.stringify({ reason: escalation }) }] };
  const demo = lastText ? (demoToolCall(request, lastText) ?? mcpDemoCall(request, lastText)) : undefined;
  if (demo) return demo;
  const expression = lastText && offers(request, 'calculator') ? arithmeticIn(lastText) : undefined;
  if (expression) return { kind: 'tool_calls', calls: [{ name: 'calculator', arguments: JSON.stringify({ expression }) }] };
  const note = lastText && offers(request, 'create_note') ? noteIn(lastText) : undefined;
  if (note) return { kind: 'tool_calls', calls: [{ name: 'create_note', arguments: JSON.stringify(note) }] };
  const userTexts = messages.filter((m) => m.role === 'user').map((m) => textOf(m.content));
  return { kind: 'text', text: echoReply(userTexts) };
}
