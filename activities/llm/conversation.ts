import type OpenAI from 'openai';
import type { MessageRow } from '../../db/messages';

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

/** Stored messages as the model reads them, after the agent's system prompt. */
export function toChatMessages(rows: MessageRow[], systemPrompt: string): OpenAI.ChatCompletionMessageParam[] {
  const messages = rows.map(toChatMessage);
  return systemPrompt ? [{ role: 'system', content: systemPrompt }, ...messages] : messages;
}
