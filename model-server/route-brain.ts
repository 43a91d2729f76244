import type { ChatMessage, ChatRequest, Reply } from './reply';

/**
 * The local model's routing: a classifier request (structured output named `route`) is answered
 * by keywords, deterministically, from the agent lines Keel's router writes in the system prompt
 * (`- <agent>: <description> (keywords: a, b)`). Intents come in the order the user's text names
 * them; nothing matched is ambiguous; asking for a person routes to `human`.
 */

const AGENT_LINE = /^- ([A-Za-z0-9_-]+): .*?(?: \(keywords: (.*)\))?$/gm;
const ASKS_FOR_PERSON = /\b(human|real person|a person|representative|operator|someone real)\b/i;
const KEYWORD_CONFIDENCE = 0.9;

function text(content: ChatMessage['content']): string {
  if (typeof content === 'string') return content;
  return (content ?? []).map((part) => part.text ?? '').join('');
}

export function isRouteRequest(request: ChatRequest): boolean {
  const format = (request as { response_format?: { type?: unknown; json_schema?: { name?: unknown } } }).response_format;
  return format?.type === 'json_schema' && format.json_schema?.name === 'route';
}

/** Where a keyword first appears in the text: a word start for words, anywhere for symbols ("% off"). */
function positionOf(haystack: string, keyword: string): number {
  const word = keyword.toLowerCase().trim();
  if (!word) return -1;
  if (/^[a-z0-9]/.test(word)) {
    const match = new RegExp(`\\b${word.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}`).exec(haystack);
    return match ? match.index : -1;
  }
  return haystack.indexOf(word);
}

export function routeReply(request: ChatRequest): Reply {
  const system = request.messages.filter((m) => m.role === 'system' || m.role === 'developer').map((m) => text(m.content)).join('\n');
  const last = [...request.messages].reverse().find((m) => m.role === 'user');
  const said = last ? text(last.content).toLowerCase() : '';
  const agents: { id: string; keywords: string[] }[] = [];
  for (const line of system.matchAll(AGENT_LINE)) {
    const keywords = (line[2] ?? '').split(',').map((k) => k.trim()).filter(Boolean);
    if (keywords.length) agents.push({ id: line[1]!, keywords });
  }
  if (ASKS_FOR_PERSON.test(said)) {
    return answer({ intents: [{ agent: 'human', confidence: 0.95, reasoning: 'The user asked to talk to a person.' }], isAmbiguous: false, clarificationQuestion: null });
  }
  const found = agents
    .map((agent) => {
      const hits = agent.keywords.map((k) => ({ k, at: positionOf(said, k) })).filter((h) => h.at >= 0);
      const first = hits.sort((a, b) => a.at - b.at)[0];
      return first ? { agent: agent.id, at: first.at, keyword: first.k } : null;
    })
    .filter((f): f is { agent: string; at: number; keyword: string } => f !== null)
    .sort((a, b) => a.at - b.at);
  if (found.length === 0) {
    const names = agents.map((a) => a.id.replace(/_/g, ' ')).join(', ');
    return answer({ intents: [], isAmbiguous: true, clarificationQuestion: `Could you tell me more? I can help with: ${names}.` });
  }
  return answer({
    intents: found.map((f) => ({ agent: f.agent, confidence: KEYWORD_CONFIDENCE, reasoning: `The message mentions "${f.keyword}".` })),
    isAmbiguous: false,
    clarificationQuestion: null,
  });
}

function answer(value: unknown): Reply {
  return { kind: 'text', text: JSON.stringify(value) };
}

/** "hand me over to discount" / "transfer me to order_lookup": the handoff the user asked for, once per message. */
export function handoffAsked(request: ChatRequest, lastUserText: string): { to: string; reason: string } | undefined {
  const match = /\b(?:hand (?:me )?(?:off|over)|transfer(?: me)?|pass (?:me )?(?:on|over)?)\s+to\s+(?:the\s+)?([a-z0-9_-]+)/i.exec(lastUserText);
  if (!match) return undefined;
  const lastUser = request.messages.map((m) => m.role).lastIndexOf('user');
  const handedOff = request.messages.slice(lastUser + 1).some((m) => m.role === 'assistant' && (m.tool_calls ?? []).some((c) => c.function.name === 'handoff'));
  return handedOff ? undefined : { to: match[1]!.toLowerCase(), reason: `The user asked for ${match[1]}.` };
}

/** The user asks for a person, in an agent that may escalate. */
export function escalationAsked(lastUserText: string): string | undefined {
  return ASKS_FOR_PERSON.test(lastUserText) || /\bescalate\b/i.test(lastUserText) ? 'The user asked to talk to a person.' : undefined;
}

/** Tool results that only say a handoff happened: the next agent answers the user's message as if fresh. */
export function onlyHandoffResults(contents: string[]): boolean {
  return contents.length > 0 && contents.every((c) => c.includes('"handedOffTo"'));
}
