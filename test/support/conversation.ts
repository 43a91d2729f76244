import type { RecordedRequest } from '../../model-server/server';

/** Tool call IDs the last model request asked for, and those its tool messages answered. */
export function toolCallsAskedAndAnswered(requests: RecordedRequest[]): { asked: string[]; answered: string[] } {
  const messages = requests[requests.length - 1]!.body.messages as { role: string; tool_calls?: { id: string }[]; tool_call_id?: string }[];
  const asked = messages.flatMap((m) => m.tool_calls?.map((c) => c.id) ?? []).sort();
  const answered = messages.filter((m) => m.role === 'tool').map((m) => m.tool_call_id ?? '').sort();
  return { asked, answered };
}
