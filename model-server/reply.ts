/** The local model's deterministic "brain": what it answers depends only on the conversation. */

export interface ChatMessage {
  role: string;
  content?: string | null | { type: string; text?: string }[];
  tool_calls?: { id: string; type?: string; function: { name: string; arguments: string } }[];
  tool_call_id?: string;
}

export interface ToolCallSpec {
  id?: string;
  name: string;
  arguments: string;
}

export type Answer = { kind: 'text'; text: string } | { kind: 'tools'; calls: ToolCallSpec[] };

export function textOf(content: ChatMessage['content']): string {
  if (typeof content === 'string') return content;
  if (Array.isArray(content)) return content.map((p) => p.text ?? '').join('');
  return '';
}

const ARITHMETIC = /(-?\d+(?:\.\d+)?)\s*([+\-*/x×])\s*(-?\d+(?:\.\d+)?)/;

/** OpenAI rejects a conversation in which a tool call has no answer; so does this server. */
export function unansweredToolCall(messages: ChatMessage[]): string | null {
  for (let i = 0; i < messages.length; i++) {
    const calls = messages[i]!.tool_calls ?? [];
    if (messages[i]!.role !== 'assistant' || calls.length === 0) continue;
    const answered = new Set<string>();
    for (let j = i + 1; j < messages.length && messages[j]!.role === 'tool'; j++) answered.add(messages[j]!.tool_call_id ?? '');
    const missing = calls.find((c) => !answered.has(c.id));
    if (missing) return missing.id;
  }
  return null;
}

function toolResultReply(results: ChatMessage[]): string {
  const texts = results.map((m) => textOf(m.content));
  if (texts.some((t) => /rejected|expired|cancelled|canceled|declined/i.test(t))) {
    return `The action was not performed: ${texts.join('; ')}`;
  }
  const values = texts.map((t) => {
    try {
      const parsed = JSON.parse(t) as unknown;
      if (parsed && typeof parsed === 'object' && 'result' in parsed) return String((parsed as { result: unknown }).result);
      return typeof parsed === 'object' ? JSON.stringify(parsed) : String(parsed);
    } catch {
      return t;
    }
  });
  if (values.length === 1 && /^-?\d+(\.\d+)?$/.test(values[0]!)) return `The result is ${values[0]}.`;
  return `Tool results: ${values.join('; ')}`;
}

export function answer(messages: ChatMessage[], tools: { function?: { name?: string } }[] | undefined): Answer {
  const trailingTools: ChatMessage[] = [];
  for (let i = messages.length - 1; i >= 0 && messages[i]!.role === 'tool'; i--) trailingTools.unshift(messages[i]!);
  if (trailingTools.length > 0) return { kind: 'text', text: toolResultReply(trailingTools) };

  const users = messages.filter((m) => m.role === 'user').map((m) => textOf(m.content));
  const last = users[users.length - 1] ?? '';
  const offersCalculator = (tools ?? []).some((t) => t.function?.name === 'calculator');
  const arithmetic = ARITHMETIC.exec(last);
  if (offersCalculator && arithmetic) {
    const expression = `${arithmetic[1]} ${arithmetic[2] === 'x' || arithmetic[2] === '×' ? '*' : arithmetic[2]} ${arithmetic[3]}`;
    return { kind: 'tools', calls: [{ name: 'calculator', arguments: JSON.stringify({ expression }) }] };
  }
  let text = `You said: ${last}.`;
  if (users.length > 1) text += ` Earlier you said: "${users[0]}". This is turn ${users.length}.`;
  return { kind: 'text', text };
}

/** Word-sized tokens whose concatenation is exactly `text`. */
export function tokenize(text: string): string[] {
  return text.match(/\S+\s*|\s+/g) ?? [];
}

export function promptTokens(messages: ChatMessage[]): number {
  const chars = messages.reduce((n, m) => n + textOf(m.content).length + JSON.stringify(m.tool_calls ?? '').length, 0);
  return Math.ceil(chars / 4);
}
