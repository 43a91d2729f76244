import { modelToolName } from './tool-names';
import type OpenAI from 'openai';
import type { MessageRow } from '../../db/messages';

function toChatMessage(m: MessageRow): OpenAI.ChatCompletionMessageParam {
  if (m.role === 'tool') return { role: 'tool', tool_call_id: m.tool_call_id ?? '', content: m.content };
  if (m.role === 'system') return { role: 'system', content: m.content };
  if (m.role === 'user') return { role: 'user', content: m.content };
  // The model answers after an operator hands back: it reads what the person said as the team's.
  if (m.role === 'operator') return { role: 'assistant', content: `[A person on the team wrote:] ${m.content}` };
  if (m.role === 'event') return { role: 'system', content: m.content };
  if (!m.tool_calls?.length) return { role: 'assistant', content: m.content };
  return {
    role: 'assistant',
    content: m.content || null,
    tool_calls: m.tool_calls.map((c) => ({ id: c.id, type: 'function' as const, function: { name: modelToolName(c.name), arguments: c.arguments } })),
  };
}

/** What the model reads for a call whose result was never stored (a write of it failed for good). */
export const NO_RESULT = 'No result was recorded for this call.';

/**
 * Stored messages as the model reads them, after the agent's system prompt. Every tool call gets
 * an answer before the next non-tool message, as providers require: a call whose result could not
 * be stored is answered with NO_RESULT instead of making every later request fail.
 */
export function toChatMessages(rows: MessageRow[], systemPrompt: string): OpenAI.ChatCompletionMessageParam[] {
  const messages: OpenAI.ChatCompletionMessageParam[] = systemPrompt ? [{ role: 'system', content: systemPrompt }] : [];
  let unanswered: string[] = [];
  const answerTheRest = () => {
    for (const id of unanswered) messages.push({ role: 'tool', tool_call_id: id, content: NO_RESULT });
    unanswered = [];
  };
  for (const row of rows) {
    if (row.role === 'tool') unanswered = unanswered.filter((id) => id !== row.tool_call_id);
    else answerTheRest();
    messages.push(toChatMessage(row));
    if (row.role === 'assistant' && row.tool_calls?.length) unanswered = row.tool_calls.map((c) => c.id);
  }
  answerTheRest();
  return messages;
}
